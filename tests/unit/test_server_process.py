"""What the server and batch runs write to their logs, and how the server sets up BLAS threads.

Each test runs a real Python process with stderr piped (as a log file or a service manager sees
it) and reads what it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, NNVITALS_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300
    )


def test_server_log_lines_are_written_once_when_a_library_logs_through_the_root(tmp_path):
    """Bokeh logs a dropped patch with the module function ``logging.debug``, which gives the
    root logger a handler of its own when it has none: every nnvitals line was then doubled."""
    code = (
        "import logging\n"
        "from dashboard.app import configure_logging\n"
        "configure_logging()\n"
        "log = logging.getLogger('nnvitals.app')\n"
        "log.info('first line')\n"
        "logging.debug('Dropping a patch because it contains a previously known reference')\n"
        "log.info('second line')\n"
        "logging.getLogger('tornado.application').error('a library error')\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert err.count("first line") == 1 and err.count("second line") == 1, err
    assert err.count("a library error") == 1, err
    assert "Dropping a patch" not in err
    assert "INFO:nnvitals" not in err  # no line in logging's bare default format


def test_a_run_with_stderr_piped_writes_a_few_plain_progress_lines(tmp_path):
    """A script's run with the default progress bar, its stderr going to a log: no redrawn bar
    (carriage returns), at most a few plain lines."""
    code = (
        "from analyses.spectra.analysis import SpectralAnalysis\n"
        "r = SpectralAnalysis(model='cnn', cache=False).run()\n"
        "print(len(r.table))\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr, repr(out.stderr[:500])
    lines = [ln for ln in out.stderr.splitlines() if "tasks (" in ln]
    assert 1 <= len(lines) <= 4, out.stderr
    assert lines[-1].startswith("spectra cnn: 4/4 tasks (100%)"), lines


def test_cli_with_stderr_piped_writes_no_progress_bar(tmp_path):
    exe = Path(sys.executable).with_name("nnvitals")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dashboard.cli"]
    environ = dict(os.environ, NNVITALS_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [*cmd, "spectra", "cnn", "--out", str(tmp_path / "out"), "--no-cache"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr, repr(out.stderr[:500])
    assert len([ln for ln in out.stderr.splitlines() if "tasks (" in ln]) <= 4, out.stderr


def test_server_runs_numpy_and_scipy_blas_on_one_thread(tmp_path):
    """The server limits OpenBLAS (NumPy's and SciPy's) to one thread: BLAS called from its many
    threads next to PyTorch's OpenMP pool runs in the calling thread, never in OpenBLAS's pool."""
    code = (
        "import numpy, scipy.linalg\n"
        "from threadpoolctl import threadpool_info\n"
        "before = [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas']\n"
        "from dashboard.app import limit_blas_threads\n"
        "limit_blas_threads()\n"
        "after = [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas']\n"
        "print(before, after)\n"
    )
    out = _python(code, tmp_path, OPENBLAS_NUM_THREADS="2")
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().split("] [")
    assert after.strip("[]") and set(after.strip("[]").split(", ")) == {"1"}, out.stdout
    assert "OpenBLAS" not in out.stderr


SERVE_AND_WORK = """
import json, os, socket, sys, threading, time

port = int(sys.argv[1])
numpy_before = "numpy" in sys.modules


def work():
    end = time.time() + 120
    while time.time() < end:  # until the server answers
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    import numpy
    import scipy.linalg
    from threadpoolctl import threadpool_info

    from analyses.orbits.analysis import OrbitAnalysis

    def blas():
        a = numpy.random.default_rng(0).random((150, 150))
        for _ in range(15):
            a @ a
            scipy.linalg.svd(a)

    def orbits():
        OrbitAnalysis(
            model="cnn", data="digits8", steps=12, max_samples=40, cache=False, show_progress=False
        ).run()

    threads = [threading.Thread(target=blas) for _ in range(3)] + [threading.Thread(target=orbits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]
    import panel as pn

    out = dict(
        env=os.environ.get("OPENBLAS_NUM_THREADS"), openblas=info, numpy_before=numpy_before,
        panel_threads=pn.config.nthreads, panel_pool=pn.state._thread_pool is not None,
        write_queue=pn.io.document._dispatch_msgs.__module__,
    )  # fmt: skip
    print("RESULT " + json.dumps(out), flush=True)
    sys.stderr.flush()
    os._exit(0)


threading.Thread(target=work, daemon=True).start()
from dashboard.serve import main

sys.exit(main(["--port", str(port), "--address", "127.0.0.1"]))
"""


def test_served_app_runs_blas_from_threads_on_one_openblas_thread(tmp_path):
    """``nnvitals serve`` started without OPENBLAS_NUM_THREADS: while it serves, BLAS from several
    threads next to an Orbits run (PyTorch's OpenMP pool) prints no OpenBLAS "may hang" warning,
    and every OpenBLAS (NumPy's, SciPy's) in the server process has one thread, set before NumPy
    loaded (the server's own setting of OPENBLAS_NUM_THREADS=1). Panel runs its callbacks on the
    event loop (no thread pool), and writes queued changes with dashboard.write_queue."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = dict(os.environ, NNVITALS_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    environ.pop("OPENBLAS_NUM_THREADS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_AND_WORK, str(port)],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    got = json.loads(line.removeprefix("RESULT "))
    assert got["numpy_before"] is False  # the setting counts: NumPy had not loaded its OpenBLAS yet
    assert got["env"] == "1", got
    assert got["openblas"] and set(got["openblas"]) == {1}, got
    assert "may hang" not in err and "OpenBLAS Warning" not in err, err[-3000:]
    # Panel's callbacks on the event loop, none on a thread pool: changes from pool threads reached
    # the browser out of order ("reference p… isn't known") when several pages updated at once
    assert got["panel_threads"] is None and got["panel_pool"] is False, got
    # queued changes are written by nnvitals' drain (Panel's could leave them queued for good)
    assert got["write_queue"] == "dashboard.write_queue", got


def test_server_start_up_leaves_the_collector_only_what_sessions_make(tmp_path):
    """After the warm-up every start-up object is frozen (gc.freeze): the full collections that
    follow each closed session no longer rescan them."""
    code = (
        "import gc\n"
        "from dashboard.server import freeze_startup\n"
        "import panel, holoviews\n"
        "freeze_startup()\n"
        "print(gc.get_freeze_count())\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 100000, out.stdout


def test_the_server_uses_the_speedups_unless_told_to_use_bokehs_own_methods(tmp_path):
    """``serve`` installs dashboard.speedups and pins Bokeh's per-model settings;
    ``NNVITALS_BOKEH_OWN=1`` (to rule them out, and bench_serve's comparison) leaves Bokeh as it is
    and says so in the log."""
    code = (
        "from bokeh.core.has_props import HasProps\n"
        "from bokeh.settings import settings\n"
        "from dashboard import speedups\n"
        "from dashboard.server import serve\n"
        "server = serve(port=0, start=False, warm=False)\n"
        "print('speedups', HasProps.__init__ is speedups._has_props_init)\n"
        "print('pinned', settings.simple_ids._user_value is True)\n"
        "server.stop()\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "speedups True" in out.stdout and "pinned True" in out.stdout, out.stdout
    assert "NNVITALS_BOKEH_OWN" not in out.stderr

    out = _python(code, tmp_path, NNVITALS_BOKEH_OWN="1")
    assert out.returncode == 0, out.stderr
    assert "speedups False" in out.stdout and "pinned False" in out.stdout, out.stdout
    assert "NNVITALS_BOKEH_OWN=1: Bokeh's own methods" in out.stderr


def test_a_sessions_frame_leaves_holoviews_matplotlib_backend_to_the_views_that_need_it(tmp_path):
    """The server's first page request waited ~0.5 s for HoloViews' matplotlib backend (imported
    by every new session's frame, which needs bokeh's only); the first view with matplotlib
    options still loads it, keeping bokeh the current backend."""
    code = (
        "import sys\n"
        "from dashboard.app import _canvas_plots\n"
        "_canvas_plots()\n"
        "import holoviews as hv\n"
        "print('frame', 'holoviews.plotting.mpl' in sys.modules, hv.Store.current_backend)\n"
        "from analyses.core.plotting import apply_opts\n"
        "apply_opts(hv.Curve([1, 2]), mpl={'fig_inches': (3, 2)})\n"
        "print('view', 'holoviews.plotting.mpl' in sys.modules, hv.Store.current_backend)\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "frame False bokeh" in out.stdout, out.stdout
    assert "view True bokeh" in out.stdout, out.stdout

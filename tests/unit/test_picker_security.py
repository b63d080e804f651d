"""The app's model picker under attack, without a browser: ``--allow-dir`` escapes through
directories, FIFOs, odd typed paths, forged chunked uploads, upload folders left behind by a
stopped server, and uploads whose check fails with something other than a clear refusal.

Browser versions of these (and the load measurements) are in tests/ui/test_upload_security.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("panel")

from analyses.core.errors import NNVitalsError  # noqa: E402
from dashboard.components import model_picker as mp  # noqa: E402
from dashboard.components.model_picker import (  # noqa: E402
    ModelPicker,
    UploadSink,
    list_model_files,
    resolve_allowed,
)

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = "resolves outside the directories this server allows"


def _model(path: Path, rows: int = 24, cols: int = 12) -> Path:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file(
        {"a.weight": torch.randn(rows, cols, generator=g), "b.weight": torch.randn(6, rows, generator=g)},
        path,
    )
    return path


def _state_dict(path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).state_dict(), path)
    return path


def _export(path: Path) -> Path:
    from evil_pt2 import write_plain

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_plain(path)


@pytest.fixture
def tree(tmp_path):
    """An allowed directory and, outside it, real models a link inside points at."""
    allowed, outside = (tmp_path / "allowed").resolve(), (tmp_path / "outside").resolve()
    allowed.mkdir()
    _model(allowed / "m.safetensors")
    _model(outside / "secret.safetensors")
    _model(outside / "shard2.safetensors", rows=10)
    _state_dict(outside / "secret.bin")
    _export(outside / "secret.pt2")
    return allowed, outside


def _picker(tmp_path, allowed) -> ModelPicker:
    return ModelPicker(allow_dirs=[allowed], upload_dir=tmp_path / "up")


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and all(c.isprintable() for c in message)


# --------------------------------------------------------------------------- --allow-dir escapes
def _hf_dir(allowed: Path, outside: Path, kind: str) -> Path:
    """A Hugging Face style directory inside ``allowed`` whose weights link to ``outside``."""
    hf = allowed / f"hf_{kind}"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    if kind == "safetensors":
        os.symlink(outside / "secret.safetensors", hf / "model.safetensors")
    elif kind == "shard":  # one honest shard, one linking out
        _model(hf / "model-00001-of-00002.safetensors")
        os.symlink(outside / "shard2.safetensors", hf / "model-00002-of-00002.safetensors")
    elif kind == "bin":
        os.symlink(outside / "secret.bin", hf / "pytorch_model.bin")
    elif kind == "pt2":
        os.symlink(outside / "secret.pt2", hf / "model.pt2")
    elif kind == "config":  # honest weights, the config read from outside
        (hf / "config.json").unlink()
        (outside / "config.json").write_text('{"model_type": "gpt2"}')
        os.symlink(outside / "config.json", hf / "config.json")
        _model(hf / "model.safetensors")
    return hf


@pytest.mark.parametrize("kind", ["safetensors", "shard", "bin", "pt2", "config"])
def test_hf_directory_cannot_read_files_outside(tree, tmp_path, kind):
    allowed, outside = tree
    hf = _hf_dir(allowed, outside, kind)
    picker = _picker(tmp_path, allowed)
    # the listing does not offer it: the files that make it a model lie outside
    assert f"allowed/hf_{kind}/" not in picker.sources, picker.sources
    for typed in (str(hf), f"hf_{kind}", f"hf_{kind}/"):
        picker.select(typed)
        assert OUTSIDE in picker.message, (typed, picker.message)
        assert picker.model == "mlp" and _one_line(picker.message)
    picker.close()


def test_picking_the_allowed_directory_itself_follows_no_link_out(tree, tmp_path):
    allowed, outside = tree
    os.symlink(outside / "secret.safetensors", allowed / "link-out.safetensors")
    picker = _picker(tmp_path, allowed)
    picker.select("link-out.safetensors")  # refused when picked alone ...
    assert "outside the allowed directories" in picker.message and picker.model == "mlp"
    picker.select(str(allowed))  # ... and when the directory holding it is picked
    assert OUTSIDE in picker.message and picker.model == "mlp", picker.message
    picker.close()


def test_listing_follows_no_link_out_of_hf_directories(tree):
    allowed, outside = tree
    for kind in ("safetensors", "bin"):
        _hf_dir(allowed, outside, kind)
    honest = allowed / "hf_ok"
    honest.mkdir()
    (honest / "config.json").write_text("{}")
    _model(honest / "model.safetensors")
    listed = list_model_files([allowed])
    assert "allowed/hf_ok/" in listed, listed
    assert not [k for k in listed if "hf_safetensors" in k or "hf_bin" in k], listed
    assert all(Path(v).resolve().is_relative_to(allowed) for v in listed.values())


def _within(seconds: float, fn, *args):
    """Run ``fn(*args)`` in a thread; (finished in time, its result or exception, elapsed)."""
    out: dict = {}

    def run():
        t = time.perf_counter()
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["value"] = e
        out["elapsed"] = time.perf_counter() - t

    th = threading.Thread(target=run, daemon=True)  # a hang must fail the test, not stall it
    th.start()
    th.join(seconds)
    return not th.is_alive(), out.get("value"), out.get("elapsed")


@pytest.mark.parametrize("fifo", ["pytorch_model.bin", "model.safetensors", "config.json", "model.pt2"])
def test_fifo_in_hf_directory_is_refused_at_once(tree, tmp_path, fifo):
    allowed, _ = tree
    hf = allowed / "hf_fifo"
    hf.mkdir()
    if fifo != "config.json":
        (hf / "config.json").write_text("{}")
    else:
        _model(hf / "model.safetensors")
    os.mkfifo(hf / fifo)
    os.mkfifo(allowed / "pipe.safetensors")
    done, listed, took = _within(5, list_model_files, [allowed])
    assert done and took < 1, "listing the allowed directory blocked on a FIFO"
    assert not [k for k in listed if "pipe" in k], listed
    picker = _picker(tmp_path, allowed)
    for typed in (str(hf), "pipe.safetensors", str(allowed)):
        done, _, took = _within(5, picker.select, typed)
        assert done and took < 1, f"picking {typed} blocked on a FIFO"
        if fifo == "config.json" and typed == str(hf):  # no config: the honest weights are read
            assert picker.model == str(hf), picker.message
            picker.select("mlp")
            continue
        assert picker.model == "mlp" and _one_line(picker.message), (typed, picker.message)
        assert "regular file" in picker.message or "no model" in picker.message, (typed, picker.message)
    picker.close()


# --------------------------------------------------------------------------- odd typed paths
@pytest.mark.parametrize(
    "typed, expected",
    [
        ("m.safe\x00tensors", "NUL"),
        ("\x00", "NUL"),
        ("m\x07.safetensors", "control character"),
        ("sub\ndir/m.safetensors", "control character"),
        ("m\x1b[31m.safetensors", "control character"),
        ("a" * 5000, "longer than"),
        ("d/" * 3000 + "m.safetensors", "longer than"),
        ("x" * 300 + ".safetensors", "no such file"),
        ("~/m.safetensors", "no such file"),
        ("~", "no such file"),
        ("/etc/passwd", "outside the allowed directories"),
        ("/", "outside the allowed directories"),
        ("../outside/secret.safetensors", "'..' is not allowed"),
        ("/../../etc/passwd", "'..' is not allowed"),
        ("m\ud800.safetensors", "no such file"),
        ("   ", "empty"),
    ],
)
def test_odd_typed_paths_get_one_line_messages(tree, tmp_path, typed, expected):
    allowed, _ = tree
    with pytest.raises(NNVitalsError, match=expected):
        resolve_allowed(typed, [allowed])
    picker = _picker(tmp_path, allowed)
    picker._path.value = typed  # what the text box does: no exception escapes the callback
    assert expected in picker.message, picker.message
    assert picker.model == "mlp" and _one_line(picker.message), repr(picker.message)
    assert len(picker.message) < 600, len(picker.message)
    picker.close()


# --------------------------------------------------------------------------- forged uploads
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_forged_partial_uploads_are_bounded(tmp_path):
    """60 uploads that each send one chunk of many: at most a few open files and bytes held."""
    chunk, limit = 4000, 40_000
    sink = UploadSink(tmp_path, max_bytes=limit, chunk_bytes=chunk)
    before = _open_fds()
    refused = 0
    for i in range(60):
        try:
            assert sink.receive(f"part{i}.safetensors", 1, 10, b"x" * chunk) is None
        except NNVitalsError as e:
            refused += 1
            assert "uploads in progress" in str(e) and _one_line(str(e))
    held = _open_fds() - before
    assert held <= mp.MAX_PARTIAL_UPLOADS, f"{held} file handles held by partial uploads"
    assert refused >= 60 - mp.MAX_PARTIAL_UPLOADS
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= mp.MAX_PARTIAL_UPLOADS * chunk
    sink.close()
    assert _open_fds() - before <= 0


def test_session_byte_budget(tmp_path):
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10, session_bytes=250)
    for name in ("a.pt", "b.pt"):  # two full-size uploads fit
        for c in range(1, 11):
            path = sink.receive(name, c, 10, b"z" * 10)
        assert path == tmp_path / name
    sink.receive("c.pt", 1, 3, b"z" * 10)  # 30 bytes declared: fits in the 50 left
    with pytest.raises(NNVitalsError, match="this session's uploads"):
        sink.receive("d.pt", 1, 10, b"z" * 10)  # 100 more would pass 250
    assert not (tmp_path / "d.pt").exists()
    sink.close()


def test_idle_partial_uploads_are_dropped(tmp_path):
    # idle for 1 s (0.3 s lapsed under a loaded CI run before the first check saw the upload open)
    sink = UploadSink(tmp_path, max_bytes=1000, chunk_bytes=10, idle_s=1.0)
    before = _open_fds()
    sink.receive("slow.safetensors", 1, 5, b"x" * 10)
    assert _open_fds() == before + 1 and list(tmp_path.iterdir())
    end = time.time() + 5
    while time.time() < end and (list(tmp_path.iterdir()) or _open_fds() > before):
        time.sleep(0.05)
    assert not list(tmp_path.iterdir()), "an idle partial upload was kept"
    assert _open_fds() == before, "an idle partial upload kept its file handle"
    # its late chunks are dropped; a fresh upload of the same name starts over
    with pytest.raises(NNVitalsError, match="stalled"):
        sink.receive("slow.safetensors", 2, 5, b"x" * 10)
    for c in range(1, 3):
        path = sink.receive("slow.safetensors", c, 2, b"y" * 10)
    assert path is not None and path.read_bytes() == b"y" * 20
    sink.close()


@pytest.mark.parametrize(
    "chunk, total, data, expected",
    [
        (0, 3, b"x", "chunk 0 of 3"),
        (-1, 3, b"x", "chunk -1 of 3"),
        (-(10**12), 3, b"x", "chunk"),
        (4, 3, b"x", "chunk 4 of 3"),
        (1, 0, b"x", "chunk 1 of 0"),
        (1, -5, b"x", "chunk 1 of -5"),
        (1, 1, b"x" * 11, "larger than a chunk"),
    ],
)
def test_malformed_chunks_are_refused(tmp_path, chunk, total, data, expected):
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10)
    with pytest.raises(NNVitalsError, match=expected) as e:
        sink.receive("m.safetensors", chunk, total, data)
    assert _one_line(str(e.value))
    assert not [p for p in tmp_path.iterdir() if p.is_file()]
    # an honest upload still works afterwards
    assert sink.receive("m.safetensors", 1, 1, b"12345") == tmp_path / "m.safetensors"
    sink.close()


def test_absurd_totals_are_refused(tmp_path):
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10)
    for total in (10**18, 2**63, 2**64 + 1):
        with pytest.raises(NNVitalsError, match="upload limit"):
            sink.receive(f"t{total}.pt", 1, total, b"x")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "data",
    [
        {"name": "m.pt", "chunk": "x", "total_chunks": 1, "data": b"1"},
        {"name": "m.pt", "chunk": 1, "total_chunks": None, "data": b"1"},
        {"name": "m.pt", "chunk": 1.5, "total_chunks": 2, "data": b"1"},
        {"name": "m.pt", "chunk": True, "total_chunks": 1, "data": b"1"},
        {"name": "m.pt", "chunk": 1, "total_chunks": 1, "data": "text"},
        {"name": "m.pt", "chunk": 1, "total_chunks": 1, "data": None},
        {"name": 5, "chunk": 1, "total_chunks": 1, "data": b"1"},
        {"name": "m.pt", "chunk": 1},
        ["not", "a", "dict"],
        {"name": "m.pt", "chunk": 0, "total_chunks": 1, "data": b"1"},
        {"name": "m.pt", "chunk": 2**70, "total_chunks": 2**70, "data": b"1"},
        {"name": "m.pt\x00.txt", "chunk": 1, "total_chunks": 1, "data": b"1"},
    ],
)
def test_malformed_upload_events_get_a_message(tmp_path, data):
    """What a forged client may send as an upload event: a message, never an exception."""
    picker = ModelPicker(max_upload_mb=1, upload_dir=tmp_path / "up")
    picker._dropper._process_event(SimpleNamespace(event_name="upload_event", data=data))
    assert picker.message and _one_line(picker.message), repr(picker.message)
    assert picker.model == "mlp"
    assert not [p for p in (tmp_path / "up").rglob("*") if p.is_file()]
    picker.close()


def test_refused_upload_resets_the_drop_area(tmp_path):
    """The green "Upload complete" of the drop area goes with a refused file (a fresh dropper)."""
    picker = ModelPicker(max_upload_mb=1, upload_dir=tmp_path / "up")
    first = picker._dropper
    junk = b"\0" * 64
    picker._dropper._process_event(
        SimpleNamespace(
            event_name="upload_event",
            data={"name": "junk.safetensors", "chunk": 1, "total_chunks": 1, "data": junk},
        )
    )
    assert "junk.safetensors" in picker.message and not (tmp_path / "up" / "junk.safetensors").exists()
    assert picker._dropper is not first and picker._dropper in picker._layout.objects
    assert first not in picker._layout.objects
    # the new drop area takes uploads as the old one did
    good = _model(tmp_path / "good.safetensors").read_bytes()
    picker._dropper._process_event(
        SimpleNamespace(
            event_name="upload_event",
            data={"name": "good.safetensors", "chunk": 1, "total_chunks": 1, "data": good},
        )
    )
    assert picker.message.startswith("Uploaded good.safetensors"), picker.message
    picker.close()


# --------------------------------------------------------------------------- a failing check
def test_upload_check_failing_with_any_exception_deletes_the_file(tmp_path, monkeypatch, caplog):
    """No reader is known to raise anything but NNVitalsError today; if one ever does, the file
    goes, the user sees a line and the operator the traceback."""

    def broken(*_a, **_k):
        raise TypeError("unexpected header type")

    picker = ModelPicker(max_upload_mb=1, upload_dir=tmp_path / "up")
    up = _model(tmp_path / "up" / "odd.safetensors")
    monkeypatch.setattr(mp, "load_subject", broken)
    with caplog.at_level(logging.WARNING, logger="nnvitals.app"):
        picker._uploaded_file(up, "odd.safetensors")
    assert picker.message == "could not read odd.safetensors as a model (TypeError)", picker.message
    assert not up.exists() and picker.model == "mlp"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.exc_info]
    assert warned and "odd.safetensors" in warned[0].getMessage()
    assert "TypeError" in caplog.text and "unexpected header type" in caplog.text
    picker.close()


# --------------------------------------------------------------------------- upload folders
def test_uploads_live_under_one_root_per_process(tmp_path):
    a, b = ModelPicker(), ModelPicker()
    try:
        root = mp.upload_root()
        assert a.upload_dir.parent == root == b.upload_dir.parent and a.upload_dir != b.upload_dir
        assert root.name.startswith(f"nnvitals-uploads-{os.getpid()}-")
        assert (root.stat().st_mode & 0o777) == 0o700
    finally:
        a.close()
        b.close()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_roots_are_removed_when_a_root_is_made(tmp_path):
    stale = tmp_path / f"nnvitals-uploads-{_dead_pid()}-abc123"
    (stale / "session").mkdir(parents=True)
    (stale / "session" / "m.safetensors").write_bytes(b"x" * 100)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"nnvitals-uploads-{sleeper.pid}-def456"
        live.mkdir()
        other = tmp_path / "nnvitals-uploads-notapid"
        other.mkdir()
        target = tmp_path / "keep"
        target.mkdir()
        (target / "precious").write_text("keep me")
        link = tmp_path / f"nnvitals-uploads-{_dead_pid()}-link"
        os.symlink(target, link)
        root = mp.make_upload_root(tmp_path)
        assert root.is_dir() and root.name.startswith(f"nnvitals-uploads-{os.getpid()}-")
        assert not stale.exists(), "the upload folder of a dead server was left"
        assert live.exists() and other.exists()
        assert (target / "precious").exists()  # a link is never followed, only removed or left
    finally:
        sleeper.kill()
        sleeper.wait()


_CHILD = """
import sys, time
from pathlib import Path
from dashboard.components.model_picker import ModelPicker
p = ModelPicker()
(p.upload_dir / "m.safetensors").write_bytes(b"x" * 1000)
print(p.upload_dir, flush=True)
if sys.argv[1] == "wait":
    time.sleep(120)
"""


def _child(tmp_path: Path, how: str) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-c", _CHILD, how], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    line = p.stdout.readline().strip()
    assert line, "the child did not start"
    return p, Path(line)


def test_upload_folders_do_not_survive_the_server(tmp_path):
    # a normal exit removes the process's root
    p, session = _child(tmp_path, "exit")
    assert p.wait(120) == 0
    assert not session.exists() and not session.parent.exists()
    # SIGKILL leaves it; the next root made on this machine removes it
    p, session = _child(tmp_path, "wait")
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert (session / "m.safetensors").exists()
    mp.make_upload_root(tmp_path)
    assert not session.parent.exists(), "the upload folder of a killed server was left"

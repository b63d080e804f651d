"""Benchmark of the web app: start-up, linked-selection latency, and load from concurrent sessions.

Run: ``python tests/benchmarks/bench_serve.py [--quick] [--sessions 10] [--crowd 10] [--burst 30]
[--skip PARTS] [--out FILE]`` (parts: startup, selection, concurrent, session, crowd, burst,
floor)

1. **Start-up**: wall time from launching ``nnvitals serve`` (a fresh process and an empty
   result store) until the server answers, and until the first page shows a rendered plot in
   headless Chromium (the browser is started beforehand). Target: first page < 5 s.
2. **Selection, server side**: time for ``SpectraPage.select(layer)`` in a rendered page —
   the stream event, the linked ESD and KS plots re-rendered into their bokeh models, the
   table selection and the text — measured in-process, per layer, many repeats. Target < 200 ms.
3. **Concurrent sessions**: ``--sessions`` browser sessions each run the Spectra analysis on a
   real workload at the same time (a checkpoint of 12 layers of 1024 x 1024 with the shuffled
   ESDs, each session with its own seed, so nothing comes from the result store), while one
   more, idle session clicks through layers in its table; reported: the idle session's
   click -> updated page latency (median, p95, max) measured in the browser, and how long the
   busy sessions' runs took.

4. **Cost of a new session**: server CPU time (all its threads) per browser session opened one
   after another, from the request until the page shows its first plot: in all (target <= 0.4 s)
   and the part spent answering the page request itself (the event loop's share before the first
   byte). Measured from the server process's CPU counters. Every Spectra measurement opens
   ``?page=spectra``; when the app's landing page is another page, its own cost per session
   (until it is shown) is reported on a separate line. The Spectra sessions alternate with
   sessions of a second server that uses Bokeh's own methods (``NNVITALS_BOKEH_OWN=1``, without
   ``dashboard/speedups.py``): the ratio of the two medians is what the speedups save. Each
   session starts once the server has torn down and collected its previous one (its release
   line), and that teardown's CPU is reported apart: before, it fell into the next session's
   window or not, by chance.
5. **A crowd**: ``--crowd`` browsers (default 10) open the app at the same moment while one more,
   already connected, clicks through its layer table. Reported: each page's time to its first
   plot (target: every one within 10 s), the connected user's click -> update latency (target:
   p95 < 1 s), the server event loop's worst lag meanwhile (how long any message waited for
   it), and whether any page asked another host for anything (never). The crowd's browsers run
   at a low CPU priority, the connected user's in a browser of its own at normal priority (on
   their own machine, the user's page would not wait for ten others to be drawn).
6. **A burst of page requests**: ``--burst`` (default 30) plain ``GET /`` at once; time to the
   whole answer (p50, p95, max).
7. **Memory**: the server's resident memory before the crowd, at its peak, and once every session
   has closed (after the server's collection of what they left; target: within 50 MB of before).
8. **The framework's floor**: ``--crowd`` browsers open at once, with no connected user, first the
   app's Spectra page and then a bare Panel page with one HoloViews plot (no template, no table,
   no upload; ``panel serve`` of :data:`FLOOR_APP`), in the same low-priority browser. Their first
   plots side by side, and the ratio of the slowest: how much of the crowd's wait is the app's and
   how much is what Panel and Bokeh need for any page on this machine.

``NNV_KEEP=1`` keeps the servers' logs (their folder is printed); with ``PYTHONASYNCIODEBUG=1``
they name every event loop callback that took over 0.1 s.

Prints one line per measurement, a line per target met or missed, and ends with one JSON line
(``benchmark``, ``mode``, ``results``, ``targets_missed``, ``targets_met``, ``machine``), as the
other benchmarks do. Uses Debian's ``chromium`` (Playwright, never a downloaded browser), run at a
low CPU priority: the simulated users' browsers would run on their own machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, emit_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: the page the Spectra measurements open (``?page=spectra``)
SPECTRA = "spectra"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cmd(port: int, *options: str) -> list[str]:
    exe = Path(sys.executable).with_name("nnvitals")
    if exe.exists():
        out = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True).stdout
        if "--allow-dir" in out:
            return [str(exe), "serve", "--port", str(port), "--address", "127.0.0.1", *options]
    return [sys.executable, "-m", "dashboard.serve", "--port", str(port), "--address", "127.0.0.1", *options]


class Server:
    def __init__(self, tmp: Path, *options: str, env: dict[str, str] | None = None):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}/"
        #: the Spectra page, named: the measurements stay comparable whichever page is the landing page
        self.spectra = f"{self.url}?page={SPECTRA}"
        self.log = tmp / f"serve-{self.port}.log"
        env = dict(
            os.environ, NNVITALS_CACHE=str(tmp / f"cache-{self.port}"), PYTHONUNBUFFERED="1",
            NNVITALS_LOG_LEVEL="DEBUG", **(env or {}),
        )  # fmt: skip
        self.t0 = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                _serve_cmd(self.port, *options), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_up(self, timeout: float = 120) -> float:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return time.perf_counter() - self.t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _stats(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(_q(ms, 0.95), 1),
        "max_ms": round(max(ms), 1),
    }


# --------------------------------------------------------------------------- 1. start-up
def bench_startup(tmp: Path, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    up, first = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        for _ in range(repeats):
            srv = Server(tmp)
            try:
                up.append(srv.wait_up())
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                # as a user would: open the page as soon as the port answers (the request waits
                # for the app; no earlier request builds a session first)
                page.goto(srv.spectra, wait_until="commit", timeout=60000)
                page.locator(".bk-Canvas, canvas").first.wait_for(timeout=60000)
                first.append(time.perf_counter() - srv.t0)
                page.close()
            finally:
                srv.stop()
        browser.close()
    return {
        "server_answers_s": [round(v, 2) for v in up],
        "first_rendered_page_s": [round(v, 2) for v in first],
        "first_rendered_page_median_s": round(statistics.median(first), 2),
        "target_s": 5.0,
    }


# --------------------------------------------------------------------------- 2. selection (server)
def bench_selection(repeats: int) -> dict:
    os.environ.setdefault("NNVITALS_CACHE", tempfile.mkdtemp(prefix="nnv-bench-"))
    import panel as pn
    import torch

    torch.set_num_threads(THREADS)
    from bokeh.document import Document

    from dashboard.pages.spectra import SpectraPage

    out = {}
    for model in ("mlp", "cnn"):
        page = SpectraPage(model=model)
        pn.panel(page).get_root(Document())  # the plots exist as bokeh models, as in a session
        names = page.explorer.names
        page.select(names[-1])  # first render of every code path
        times = []
        for i in range(repeats):
            name = names[i % len(names)]
            t = time.perf_counter()
            page.select(name)
            times.append(time.perf_counter() - t)
        out[model] = _stats(times) | {"layers": len(names)}
    out["target_ms"] = 200
    return out


# --------------------------------------------------------------------------- 3. concurrent sessions
def _workload(directory: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    path = directory / "load.safetensors"
    save_file({f"l{i:02d}.weight": torch.randn(1024, 1024, generator=g).half() for i in range(12)}, path)
    return path


async def _open(browser, url):
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(120000)
    await page.goto(url, wait_until="networkidle")
    await page.get_by_text("Selected:").first.wait_for()
    return ctx, page


async def _busy(browser, url, seed: int, ready: asyncio.Barrier, go: asyncio.Event) -> float:
    """A session set up for its run (shuffled ESDs, its own seed); picks the model (starting the
    run) once every session is ready; returns how long the run took to show its result."""
    ctx, page = await _open(browser, url)
    try:
        await page.get_by_text("Also the shuffled-matrix ESD").first.click()
        # the seed is an advanced setting: open the sidebar's Advanced card, then find it by its label
        await page.get_by_text("Advanced", exact=True).first.click()
        seed_box = page.locator(".bk-Spinner").filter(has_text="Seed").locator("input").first
        await seed_box.fill(str(seed))
        await seed_box.press("Enter")
        select = page.locator("select").first
        label = next(
            t for t in await select.locator("option").all_inner_texts() if t.endswith("load.safetensors")
        )
        await ready.wait()
        await go.wait()
        t = time.perf_counter()
        await select.select_option(label=label)
        await page.get_by_text("load.safetensors (safetensors): 12 weights").first.wait_for(timeout=600000)
        return time.perf_counter() - t
    except BaseException:
        await ready.abort()  # the other sessions stop waiting for this one (the bench once hung here)
        raise
    finally:
        await ctx.close()


async def _idle(browser, url, ready: asyncio.Barrier, go: asyncio.Event, clicks: int) -> list[float]:
    """The idle session: once the others' runs have started, click through its layer table."""
    ctx, page = await _open(browser, url)
    try:
        await ready.wait()
        await go.wait()
        await page.wait_for_timeout(2000)  # the runs are under way by now
        names = ["fc1.weight", "fc2.weight", "fc3.weight"]
        times = []
        for i in range(clicks):
            name = names[(i + 1) % 3]
            t = time.perf_counter()
            # a click event on the cell itself: under load the table's header can sit over a row
            # for a moment while it lays out, and a mouse click would then sort instead
            await page.locator(".tabulator-cell", has_text=name).first.dispatch_event("click")
            await page.get_by_text(f"Selected: {name}").first.wait_for()
            times.append(time.perf_counter() - t)
            await page.wait_for_timeout(200)
        return times
    finally:
        await ctx.close()


def _niced_chromium(tmp: Path) -> str:
    """Chromium at a low CPU priority: the simulated users' browsers would run on their own
    machines, so on this one they must not take the cores from the server they measure."""
    wrapper = tmp / "chromium-niced"
    # Playwright starts each browser in a session of its own, and Linux's scheduler gives each
    # session an autogroup of its own: the groups share the cores equally and a process's nice
    # value only counts inside its group (and Chromium, run as root, raises its main process's
    # priority anyway). Ten browsers were ten groups against the server's one: the server got a
    # sixth of a core. The wrapper lowers the browser's whole group instead (where the kernel has
    # autogroups; elsewhere nice alone).
    wrapper.write_text(
        "#!/bin/sh\n"
        "[ -w /proc/self/autogroup ] && echo 19 > /proc/self/autogroup 2>/dev/null\n"
        f'exec nice -n 15 {shutil.which("chromium")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


async def _concurrent(url: str, sessions: int, clicks: int, log: Path | None = None) -> dict:
    """All sessions open first; then the busy ones start their runs at once and the idle one clicks."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        exe = _niced_chromium(Path(tempfile.mkdtemp(prefix="nnv-chromium-")))
        browser = await p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        ready, go = asyncio.Barrier(sessions + 2), asyncio.Event()
        idle_task = asyncio.create_task(_idle(browser, url, ready, go, clicks))
        busy = [asyncio.create_task(_busy(browser, url, 100 + i, ready, go)) for i in range(sessions)]
        await ready.wait()
        lag_mark = len(_loop_lag_ms(log)) if log else 0
        go.set()
        idle_times = await idle_task
        run_times = await asyncio.gather(*busy)
        await browser.close()
    return {
        "idle_click_to_update": _stats(idle_times),
        "busy_run_s": [round(t, 1) for t in run_times],
        "lag_mark": lag_mark,
    }


def bench_concurrent(tmp: Path, sessions: int, clicks: int) -> dict:
    work = _workload(tmp / "models")
    srv = Server(tmp, "--allow-dir", str(work.parent))
    try:
        srv.wait_up()
        while True:
            try:
                urllib.request.urlopen(srv.url, timeout=30)
                break
            except OSError:
                time.sleep(0.1)
        # the same clicks without load, for reference
        quiet = asyncio.run(_concurrent(srv.spectra, 0, clicks))["idle_click_to_update"]
        n_quiet = len(_server_selection_ms(srv.log))
        loaded = asyncio.run(_concurrent(srv.spectra, sessions, clicks, srv.log))
        server_ms = _server_selection_ms(srv.log)
        lags = _loop_lag_ms(srv.log)[loaded.pop("lag_mark") :]
    finally:
        srv.stop()
    return {
        "sessions": sessions,
        "idle_without_load": quiet,
        "idle_without_load_server": _stats([v / 1000 for v in server_ms[:n_quiet]]) if n_quiet else None,
        **loaded,
        "idle_server_side": _stats([v / 1000 for v in server_ms[n_quiet:]]) if server_ms[n_quiet:] else None,
        # worst delay of a 100 ms event-loop timer in each 5 s window, from the start of the runs
        "event_loop_lag_worst_ms": lags,
    }


# --------------------------------------------------------------------------- 4. cost of a session
def _server_cpu(pid: int) -> float:
    """CPU seconds the server process has used so far (user + system, every thread)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class _BrowserCPU:
    """CPU seconds used by every Chromium process while it runs (sampled every 0.2 s: a process's
    last fraction of a sample before it exits is missed), to tell the browsers' share of a crowd
    from the server's on a machine that runs both."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            for proc in psutil.process_iter(["name"]):
                if "chrom" in (proc.info["name"] or ""):
                    try:
                        t = proc.cpu_times()
                        self._seen[proc.pid] = t.user + t.system
                    except psutil.Error:
                        pass
            time.sleep(0.2)

    def __enter__(self) -> _BrowserCPU:
        self._stop.clear()
        self._thread.start()
        time.sleep(0.3)
        self.before = sum(self._seen.values())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self._seen.values()) - self.before


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def _settle(pid: int, quiet_s: float = 0.6, timeout: float = 30) -> None:
    """Wait until the server has used (almost) no CPU for ``quiet_s`` (its work for a session is done)."""
    end = time.time() + timeout
    last = _server_cpu(pid)
    while time.time() < end:
        time.sleep(quiet_s)
        now = _server_cpu(pid)
        if now - last < 0.03 * quiet_s:
            return
        last = now


def _spectra_shown(page) -> None:
    """The Spectra page shows its first plot and its selected layer."""
    page.locator(".bk-Canvas, canvas").first.wait_for(timeout=120000)
    page.get_by_text("Selected:").first.wait_for(timeout=120000)


def _page_shown(page) -> None:
    """Any page: the frame's "Opening …" note has given way to the page."""
    page.locator(".nnv-opening").first.wait_for(state="detached", timeout=120000)


def landing_page() -> str:
    """The slug of the app's landing page (the first of its navigation)."""
    sys.path.insert(0, str(ROOT))
    from dashboard.app import page_specs

    return page_specs()[0].slug


#: what the server logs once the sessions that closed have been collected (dashboard.server)
RELEASED = "memory after sessions closed: 0 open"


def _wait_log(srv: Server, done: Callable[[str], bool], timeout: float, mark: int = 0) -> str:
    """Poll the server's log (from character ``mark``) until ``done(text)`` or ``timeout`` seconds;
    returns the text last read."""
    end = time.time() + timeout
    text = srv.log.read_text(errors="replace")[mark:]
    while time.time() < end and not done(text):
        time.sleep(0.2)
        text = srv.log.read_text(errors="replace")[mark:]
    return text


def _released(srv: Server, count: int, timeout: float = 120) -> float:
    """Wait until the server has logged ``count`` releases (each closed session was torn down and
    collected); returns its CPU counter then."""
    _wait_log(srv, lambda text: text.count(RELEASED) >= count, timeout)
    return _server_cpu(srv.proc.pid)


def _session_cpu(browser, srv: Server, slug: str, shown: Callable[[Any], None]) -> tuple[float, float, float]:
    """One browser session of page ``slug``: the server's CPU until the page is shown and the
    server idle again, the part spent before the page request was answered, and the server's
    CPU counter once the session is closed."""
    _settle(srv.proc.pid)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    c0 = _server_cpu(srv.proc.pid)
    page.goto(f"{srv.url}?page={slug}", wait_until="commit", timeout=120000)
    c1 = _server_cpu(srv.proc.pid)  # the request answered: the session is built
    shown(page)
    _settle(srv.proc.pid)
    c2 = _server_cpu(srv.proc.pid)
    ctx.close()
    return c2 - c0, c1 - c0, _server_cpu(srv.proc.pid)


def bench_session_cost(tmp: Path, sessions: int, slug: str = SPECTRA, compare: bool = False) -> dict:
    """Server CPU per browser session of page ``slug`` opened one after another (after one session
    warmed the server up): from the request until the page is shown and the server is idle again,
    and, apart, the teardown once the browser closed (Bokeh drops the session a few seconds later,
    Panel cleans up, the server collects what it left: until the server's release line). Each
    session starts once the server's previous one was torn down, so no teardown is counted in a
    session's cost.

    With ``compare``, a second server runs with Bokeh's own methods (``NNVITALS_BOKEH_OWN=1``: no
    ``dashboard.speedups``) and the sessions alternate between the two servers (one is torn down
    while the other is measured; CPU counters are per process), so that both medians come from
    the same minutes of this (noisy, shared) machine."""
    from playwright.sync_api import sync_playwright

    shown = _spectra_shown if slug == SPECTRA else _page_shown
    servers = {"nnvitals": Server(tmp)}
    if compare:
        servers["bokeh_own"] = Server(tmp, env={"NNVITALS_BOKEH_OWN": "1"})
    total: dict[str, list[float]] = {name: [] for name in servers}
    request: dict[str, list[float]] = {name: [] for name in servers}
    teardown: dict[str, list[float]] = {name: [] for name in servers}
    closed_at: dict[str, float | None] = {name: None for name in servers}
    try:
        for srv in servers.values():
            srv.wait_up()
            urllib.request.urlopen(srv.url + "assets/logo.svg", timeout=60).read()
        with sync_playwright() as p:
            exe = _niced_chromium(Path(tempfile.mkdtemp(prefix="nnv-chromium-")))
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            for i in range(sessions + 2):
                for name, srv in servers.items():
                    if closed_at[name] is not None:  # the previous session torn down first
                        released = _released(srv, i)
                        if i > 1:  # the first (warm-up) session's teardown refreezes: left out
                            teardown[name].append(released - closed_at[name])
                    if i > sessions:
                        continue
                    t, r, closed_at[name] = _session_cpu(browser, srv, slug, shown)
                    if i:  # the first session warms the server up
                        total[name].append(t)
                        request[name].append(r)
            browser.close()
    finally:
        for srv in servers.values():
            srv.stop()

    def summary(name: str) -> dict:
        return {
            "server_cpu_per_session_s": [round(v, 3) for v in total[name]],
            "server_cpu_per_session_median_s": round(statistics.median(total[name]), 3),
            "server_cpu_page_request_s": [round(v, 3) for v in request[name]],
            "server_cpu_page_request_median_s": round(statistics.median(request[name]), 3),
            "server_cpu_teardown_s": [round(v, 3) for v in teardown[name]],
            "server_cpu_teardown_median_s": round(statistics.median(teardown[name]), 3),
        }

    out = {"page": slug, "sessions": sessions, **summary("nnvitals"), "target_s": 0.4}
    if compare:
        out["bokeh_own"] = summary("bokeh_own")
        out["ratio_to_bokeh_own"] = round(
            out["server_cpu_per_session_median_s"] / out["bokeh_own"]["server_cpu_per_session_median_s"], 3
        )
    return out


# --------------------------------------------------------------------------- 5. a crowd, 6. a burst, 7. memory
async def _crowd_member(browser, url: str, go: asyncio.Event) -> dict:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await ctx.new_page()
        outside: list[str] = []
        page.on(
            "request",
            lambda r: (
                not r.url.startswith(("blob:", "data:"))  # made in the page itself, not fetched
                and urllib.parse.urlparse(r.url).hostname not in ("127.0.0.1", "localhost")
                and outside.append(r.url)
            ),
        )
        await go.wait()
        t = time.perf_counter()
        await page.goto(url, wait_until="commit", timeout=300000)
        await page.locator(".bk-Canvas, canvas").first.wait_for(timeout=300000)
        first_plot = time.perf_counter() - t
        await page.get_by_text("Selected:").first.wait_for(timeout=300000)
        return {"first_plot_s": first_plot, "outside": len(outside), "outside_urls": outside[:3]}
    finally:
        await ctx.close()


async def _crowd(url: str, n: int, connected: bool = True) -> dict:
    """One connected user clicks through its layer table while ``n`` browsers open the app at once
    (``connected=False``: the ``n`` browsers only)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        exe = _niced_chromium(Path(tempfile.mkdtemp(prefix="nnv-chromium-")))
        browser = await p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        go = asyncio.Event()
        members = [asyncio.create_task(_crowd_member(browser, url, go)) for _ in range(n)]
        if not connected:
            await asyncio.sleep(1.0)  # the members' contexts are ready
            go.set()
            results = await asyncio.gather(*members)
            await browser.close()
            firsts = sorted(r["first_plot_s"] for r in results)
            return {
                "browsers": n,
                "first_plot_s": [round(v, 1) for v in firsts],
                "first_plot_max_s": firsts[-1],
            }
        # the connected user's own browser, at normal priority: on their own machine it would not
        # wait for the crowd's ten browsers to lay out and draw their pages
        own = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        ctx, page = await _open(own, url)
        await asyncio.sleep(1.0)  # the members' contexts are ready
        went = time.time()
        go.set()
        names = ["fc1.weight", "fc2.weight", "fc3.weight"]
        taps: list[float] = []
        i = 0
        while not all(m.done() for m in members) or len(taps) < 5:
            name = names[(i + 1) % 3]
            i += 1
            t = time.perf_counter()
            await page.locator(".tabulator-cell", has_text=name).first.dispatch_event("click")
            await page.get_by_text(f"Selected: {name}").first.wait_for(timeout=120000)
            taps.append(time.perf_counter() - t)
            await page.wait_for_timeout(300)
        results = [m.result() for m in members]
        await ctx.close()
        await own.close()
        await browser.close()
    firsts = [r["first_plot_s"] for r in results]
    return {
        "browsers": n,
        "went_at": went,
        "first_plot_s": [round(v, 1) for v in sorted(firsts)],
        "first_plot_max_s": round(max(firsts), 1),
        "connected_user_click": _stats(taps),
        "requests_to_other_hosts": sum(r["outside"] for r in results),
        "other_hosts_asked_for": sorted({u for r in results for u in r["outside_urls"]})[:5],
        "targets": {"first_plot_max_s": 10.0, "click_p95_ms": 1000},
    }


#: the framework's floor: a page of Panel alone, no template, with one HoloViews plot and the text
#: the crowd's browsers wait for; served by ``panel serve`` in a process of its own
FLOOR_APP = """
import holoviews as hv
import numpy as np
import panel as pn

hv.extension("bokeh")
curve = hv.Curve(np.sin(np.linspace(0, 6, 200))).opts(responsive=True, height=300)
pn.Column(pn.pane.Markdown("Selected: floor"), pn.pane.HoloViews(curve, sizing_mode="stretch_width")).servable()
"""


def bench_floor(tmp: Path, crowd: int) -> dict:
    """``crowd`` browsers open, at once, (1) the app's Spectra page and (2) the framework's floor
    (:data:`FLOOR_APP`), one after the other, in the same low-priority browser and with no
    connected user: how far the app's first plots are from what Panel and Bokeh need at all."""
    app = tmp / "floor_app.py"
    app.write_text(FLOOR_APP)
    port = _port()
    log = tmp / f"floor-{port}.log"
    out: dict = {}
    srv = Server(tmp)
    with open(log, "w") as sink:
        floor = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", str(app), "--port", str(port), "--address", "127.0.0.1",
             "--allow-websocket-origin", f"127.0.0.1:{port}"],
            cwd=tmp, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    floor_url = f"http://127.0.0.1:{port}/floor_app"
    try:
        srv.wait_up()
        end = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(floor_url, timeout=60).read()
                break
            except OSError:
                if floor.poll() is not None or time.time() > end:
                    raise RuntimeError(f"the floor server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        for url in (srv.spectra, floor_url):  # warm up: one session of each opened and closed
            asyncio.run(_crowd(url, 1, connected=False))
        out["app"] = asyncio.run(_crowd(srv.spectra, crowd, connected=False))
        out["floor"] = asyncio.run(_crowd(floor_url, crowd, connected=False))
        out["ratio_max"] = round(out["app"]["first_plot_max_s"] / out["floor"]["first_plot_max_s"], 2)
    finally:
        srv.stop()
        try:
            os.killpg(floor.pid, signal.SIGTERM)
            floor.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    return out


def _burst(url: str, n: int) -> dict:
    """``n`` plain page requests at once; seconds to each whole answer."""
    times: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(n)

    def get() -> None:
        start.wait()
        t = time.perf_counter()
        try:
            urllib.request.urlopen(url, timeout=600).read()
            times.append(time.perf_counter() - t)
        except OSError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=get) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = sorted(times) or [float("nan")]
    return {
        "requests": n,
        "p50_s": round(statistics.median(s), 2),
        "p95_s": round(_q(s, 0.95), 2),
        "max_s": round(max(s), 2),
        "errors": len(errors),
    }


def _wait_released(srv: Server, mark: int, timeout: float = 120) -> str | None:
    """The server's "memory after sessions closed: 0 open" line written after ``mark`` (None if none)."""
    text = _wait_log(srv, lambda text: RELEASED in text, timeout, mark)
    done = [ln for ln in text.splitlines() if RELEASED in ln]
    return done[-1] if done else None


def _pages_shown(log: str, went: float) -> list[float]:
    """Seconds from ``went`` (a wall-clock time) to each Spectra page the server showed (its log's
    "spectra page shown" lines): when the server had done its part of each first plot."""
    import datetime as dt

    out = []
    for stamp in re.findall(r"^(\S+ \S+) nnvitals\.app DEBUG: spectra page shown", log, flags=re.M):
        at = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append(round(at - went, 1))
    return sorted(v for v in out if v >= 0)


def bench_crowd(tmp: Path, crowd: int, burst: int, skip: set[str]) -> dict:
    srv = Server(tmp)
    out: dict = {}
    try:
        srv.wait_up()
        urllib.request.urlopen(srv.url + "assets/logo.svg", timeout=60).read()
        asyncio.run(_crowd(srv.spectra, 1))  # warm up: one session opened and closed
        mark = len(srv.log.read_text(errors="replace"))
        _wait_released(srv, 0, timeout=60)
        # the event loop's lag is logged per 5 s window: one window after the warm-up's release (a
        # collection, and once per server the sessions frozen with start-up objects) before the
        # crowd, so that the crowd's windows hold the crowd's work only
        _wait_log(
            srv, lambda text: "event loop lag: worst" in text, 30, len(srv.log.read_text(errors="replace"))
        )
        base = _rss_mb(srv.proc.pid)
        peak = [base]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak.append(_rss_mb(srv.proc.pid))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if "crowd" not in skip:
            start = len(srv.log.read_text(errors="replace"))
            c0 = _server_cpu(srv.proc.pid)
            with _BrowserCPU() as browsers:
                out["crowd"] = asyncio.run(_crowd(srv.spectra, crowd))
            out["crowd"]["server_cpu_s"] = round(_server_cpu(srv.proc.pid) - c0, 1)
            out["crowd"]["browsers_cpu_s"] = round(browsers.seconds, 1)
            lags = [
                int(v)
                for v in re.findall(
                    r"event loop lag: worst (\d+) ms", srv.log.read_text(errors="replace")[start:]
                )
            ]
            out["crowd"]["event_loop_worst_lag_ms"] = max(lags, default=None)
            out["crowd"]["server_pages_shown_s"] = _pages_shown(
                srv.log.read_text(errors="replace")[start:], out["crowd"].pop("went_at")
            )
        if "burst" not in skip:
            out["burst"] = _burst(srv.spectra, burst)
        mark = len(srv.log.read_text(errors="replace"))
        line = _wait_released(srv, mark, timeout=180)
        stop.set()
        watcher.join()
        after = _rss_mb(srv.proc.pid)
        out["memory"] = {
            "rss_before_mb": round(base, 0),
            "rss_peak_mb": round(max(peak), 0),
            "rss_after_closed_mb": round(after, 0),
            "above_before_mb": round(after - base, 0),
            "server_line": line,
            "target_above_before_mb": 50,
        }
    finally:
        srv.stop()
    return out


def _loop_lag_ms(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r"event loop lag: worst (\d+) ms", log.read_text())]


def _server_selection_ms(log: Path) -> list[float]:
    """Server-side times of table selections, from the server's debug log."""
    return [float(m) for m in re.findall(r"selection \S+ from the table: (\d+) ms", log.read_text())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and 4 busy sessions (about a minute)")
    ap.add_argument("--sessions", type=int, default=None, help="busy sessions (default 10; 4 with --quick)")
    ap.add_argument("--crowd", type=int, default=10, help="browsers opening the app at once (default 10)")
    ap.add_argument("--burst", type=int, default=30, help="plain page requests at once (default 30)")
    ap.add_argument(
        "--skip", default="",
        help="comma-separated parts to skip: startup,selection,concurrent,session,crowd,burst,floor",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON line to this file")
    args = ap.parse_args()
    quick = args.quick
    sessions = args.sessions or (4 if quick else 10)
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="nnv-bench-serve-"))
    results: dict = {}
    missed: list[str] = []
    met: list[str] = []

    def target(ok: bool, text: str) -> None:
        (met if ok else missed).append(text)
        print(f"  target {'met' if ok else 'MISSED'}: {text}", flush=True)

    try:
        if "startup" not in skip:
            r = results["startup"] = bench_startup(tmp, 1 if quick else 3)
            first = r["first_rendered_page_median_s"]
            print(
                f"serve start-up: server answers after {statistics.median(r['server_answers_s']):.2f} s, "
                f"first rendered page after {first:.2f} s (median of {len(r['first_rendered_page_s'])}; target < 5 s)",
                flush=True,
            )
            target(first < 5.0, "serve: first rendered page < 5 s")
        if "selection" not in skip:
            r = results["selection_server"] = bench_selection(20 if quick else 60)
            for model in ("mlp", "cnn"):
                m = r[model]
                print(
                    f"layer selection -> linked ESD, server side ({model}): median {m['median_ms']} ms, "
                    f"p95 {m['p95_ms']} ms (n={m['n']}; target < 200 ms)",
                    flush=True,
                )
                target(m["median_ms"] < 200, f"serve: selection median < 200 ms ({model})")
        if "concurrent" not in skip:
            r = results["concurrent"] = bench_concurrent(tmp, sessions, 8 if quick else 20)
            q, c = r["idle_without_load"], r["idle_click_to_update"]
            print(
                f"idle session click -> updated page, in the browser: alone median {q['median_ms']} ms, "
                f"p95 {q['p95_ms']} ms; with {sessions} sessions running analyses median {c['median_ms']} ms, "
                f"p95 {c['p95_ms']} ms (their runs took {min(r['busy_run_s'])}-{max(r['busy_run_s'])} s)",
                flush=True,
            )
            if r.get("event_loop_lag_worst_ms"):
                lags = r["event_loop_lag_worst_ms"]
                print(
                    f"  server event loop under load: worst lag per 5 s window median "
                    f"{statistics.median(lags):.0f} ms, max {max(lags):.0f} ms",
                    flush=True,
                )
            if r.get("idle_server_side"):
                sq, sc = r.get("idle_without_load_server") or {}, r["idle_server_side"]
                print(
                    f"  of which server side (the selection callback): alone median {sq.get('median_ms')} ms, "
                    f"under load median {sc['median_ms']} ms, p95 {sc['p95_ms']} ms",
                    flush=True,
                )
        if "session" not in skip:
            r = results["session_cost"] = bench_session_cost(tmp, 4 if quick else 10, compare=True)
            own = r["bokeh_own"]
            print(
                f"new session, server CPU from the request to its first plot: median "
                f"{r['server_cpu_per_session_median_s']:.2f} s {r['server_cpu_per_session_s']}; of which "
                f"answering the page request {r['server_cpu_page_request_median_s']:.2f} s; its teardown once "
                f"closed (apart) {r['server_cpu_teardown_median_s']:.2f} s\n"
                f"  same sessions, alternating, on a server with Bokeh's own methods (NNVITALS_BOKEH_OWN=1): "
                f"median {own['server_cpu_per_session_median_s']:.2f} s, of which the page request "
                f"{own['server_cpu_page_request_median_s']:.2f} s, teardown "
                f"{own['server_cpu_teardown_median_s']:.2f} s; ratio {r['ratio_to_bokeh_own']:.2f}",
                flush=True,
            )
            target(r["server_cpu_per_session_median_s"] <= 0.4, "serve: server CPU per new session <= 0.4 s")
            target(
                r["server_cpu_page_request_median_s"] <= 0.4,
                "serve: server CPU to answer a new session's page request <= 0.4 s",
            )
            landing = landing_page()
            if landing != SPECTRA:  # the landing page's own cost, reported beside Spectra's
                r = results["session_cost_landing"] = bench_session_cost(tmp, 3 if quick else 6, landing)
                print(
                    f"new session of the landing page ({landing}), server CPU until it is shown: median "
                    f"{r['server_cpu_per_session_median_s']:.2f} s {r['server_cpu_per_session_s']}; of which "
                    f"answering the page request {r['server_cpu_page_request_median_s']:.2f} s; its teardown "
                    f"once closed (apart) {r['server_cpu_teardown_median_s']:.2f} s",
                    flush=True,
                )
        if not {"crowd", "burst"} <= skip:
            r = results["crowd"] = bench_crowd(tmp, args.crowd, args.burst, skip)
            if "crowd" in r:
                c = r["crowd"]
                tap = c["connected_user_click"]
                print(
                    f"{c['browsers']} browsers opening at once: first plot after {c['first_plot_s']} s; "
                    f"a connected user's click -> update meanwhile: median {tap['median_ms']} ms, "
                    f"p95 {tap['p95_ms']} ms, max {tap['max_ms']} ms (n={tap['n']}); requests to other "
                    f"hosts: {c['requests_to_other_hosts']}; the server's event loop at worst "
                    f"{c['event_loop_worst_lag_ms']} ms late meanwhile; the server had shown the pages "
                    f"after {c['server_pages_shown_s']} s; CPU meanwhile: server {c['server_cpu_s']} s, "
                    f"browsers {c['browsers_cpu_s']} s",
                    flush=True,
                )
                target(
                    c["first_plot_max_s"] <= 10.0, f"serve: {c['browsers']} at once, every first plot <= 10 s"
                )
                target(tap["p95_ms"] < 1000, "serve: a connected user's click p95 < 1 s under the crowd")
                target(c["requests_to_other_hosts"] == 0, "serve: nothing requested from other hosts")
            if "burst" in r:
                b = r["burst"]
                print(
                    f"{b['requests']} page requests at once: answered after p50 {b['p50_s']} s, "
                    f"p95 {b['p95_s']} s, max {b['max_s']} s ({b['errors']} errors)",
                    flush=True,
                )
            m = r["memory"]
            print(
                f"server memory: {m['rss_before_mb']:.0f} MB before, {m['rss_peak_mb']:.0f} MB at the peak, "
                f"{m['rss_after_closed_mb']:.0f} MB once every session closed "
                f"({m['above_before_mb']:+.0f} MB)",
                flush=True,
            )
            target(m["above_before_mb"] <= 50, "serve: memory back within 50 MB once sessions closed")
        if "floor" not in skip:
            r = results["floor"] = bench_floor(tmp, args.crowd)
            print(
                f"{args.crowd} browsers at once, no connected user: the app's Spectra page, first plot "
                f"after {r['app']['first_plot_s']} s; the framework's floor (a bare Panel page with one "
                f"HoloViews plot) after {r['floor']['first_plot_s']} s; ratio of the slowest {r['ratio_max']}",
                flush=True,
            )
    finally:
        if os.environ.get("NNV_KEEP"):  # the servers' logs (e.g. with PYTHONASYNCIODEBUG=1) stay
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    payload = {
        "benchmark": "serve",
        "mode": "quick" if quick else "full",
        "results": results,
        "targets_missed": missed,
        "targets_met": met,
    }
    if args.out:
        args.out.write_text(json.dumps(payload) + "\n")
    emit_json(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

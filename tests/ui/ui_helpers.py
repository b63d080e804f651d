"""Helpers of the browser tests: start/stop ``nnvitals serve``, test models, page probes.

Used by conftest.py (fixtures) and the tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = ("127.0.0.1", "localhost", None, "")
#: the upload limit the test server runs with (MB)
UPLOAD_LIMIT_MB = 1
#: layers of the slow model (4096 x 4096 each: a few seconds of eigensolves per layer and core, so a
#: run lasts well beyond the server's 4-6 s detection of a closed session)
SLOW_LAYERS = 8
SLOW_SIZE = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, *options: str) -> list[str]:
    """``nnvitals serve`` when the CLI has the app wired in, else the same entry point by module."""
    exe = Path(sys.executable).with_name("nnvitals")
    if exe.exists():
        help_text = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True).stdout
        if "--allow-dir" in help_text:
            return [str(exe), "serve", "--port", str(port), "--address", "127.0.0.1", *options]
    return [sys.executable, "-m", "dashboard.serve", "--port", str(port), "--address", "127.0.0.1", *options]


@dataclass
class Server:
    url: str
    log: Path
    proc: subprocess.Popen
    allow_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            out = self.log_text()
            if text in out:
                return out
            time.sleep(0.25)
        raise AssertionError(f"{text!r} not in the server log after {timeout} s:\n{self.log_text()[-3000:]}")


def start_server(tmp: Path, *options: str, env: dict | None = None, timeout: float = 90) -> Server:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    environ = dict(os.environ, NNVITALS_CACHE=str(tmp / "cache"), PYTHONUNBUFFERED="1")
    environ.update(env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(port, *options), cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:  # a static file: polling "/" would build a whole app session per try
            urllib.request.urlopen(url + "assets/logo.svg", timeout=5)
            return Server(url, log, proc)
        except urllib.error.HTTPError:  # answering (e.g. a login redirect refused)
            return Server(url, log, proc)
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def write_models(directory: Path) -> dict[str, Path]:
    """A small model (three linear layers) and a slow one (big square layers) as safetensors."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    small = directory / "small.safetensors"
    save_file(
        {
            "enc.weight": torch.randn(96, 48, generator=g),
            "mid.weight": torch.randn(64, 96, generator=g),
            "head.weight": torch.randn(10, 64, generator=g),
        },
        small,
    )
    slow = directory / "slow.safetensors"
    save_file(
        {
            f"block{i:02d}.weight": torch.randn(SLOW_SIZE, SLOW_SIZE, generator=g).half()
            for i in range(SLOW_LAYERS)
        },
        slow,
    )
    return {"small": small, "slow": slow}


class PageProbe:
    """What a page did: console errors and requests that left the machine."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.outside: list[str] = []
        #: every console message and websocket event, timed (shown with a failed test's report)
        self.events: list[str] = []
        page.on("console", self._console)
        page.on("websocket", self._websocket)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "request",
            lambda r: urllib.parse.urlparse(r.url).hostname not in LOCAL_HOSTS and self.outside.append(r.url),
        )

    def _note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text[:300]}")

    def _console(self, message) -> None:
        self._note(f"console {message.type}: {message.text}")
        if message.type == "error":
            self.errors.append(message.text)

    def _websocket(self, ws) -> None:
        self._note(f"websocket opened {ws.url}")
        ws.on("close", lambda _ws: self._note(f"websocket closed {ws.url}"))
        ws.on("socketerror", lambda err: self._note(f"websocket error {err}"))

    def assert_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors[:3]}"
        assert not self.outside, f"requests left the machine: {self.outside[:3]}"


#: the text of an element and of every shadow root under it (Panel panes draw in shadow DOM),
#: without stylesheets and scripts
DEEP_TEXT_JS = """
(el) => {
  const walk = (root) => {
    let out = "";
    for (const n of root.childNodes) {
      if (n.nodeType === 3) out += n.textContent;
      else if (n.nodeType === 1 && n.tagName !== "STYLE" && n.tagName !== "SCRIPT") { out += (n.shadowRoot ? walk(n.shadowRoot) : "") + walk(n); if (n.tagName === "LI" || n.tagName === "P") out += "\\n"; }
    }
    return out;
  };
  return walk(el.shadowRoot || el) + walk(el);
}
"""


def open_page(page, url: str, ready, timeout: float = 90) -> None:
    """Load ``url`` and wait until the ``ready`` locator is visible.

    No reload and no second chance: a page that does not show its first result fails the test
    (a failed browser test reports the server log, the page's console, websocket events and
    text). Pages used to stall here about once in 50-100 loads under load, and this helper
    reloaded them once: the server had made the change, but Panel left its message queued
    (fixed by :mod:`dashboard.write_queue`).
    """
    page.goto(url, wait_until="networkidle", timeout=60000)
    ready.first.wait_for(timeout=1000 * timeout)


def open_trajectory(page, url: str) -> None:
    """Load a Trajectory page (``url`` may carry a link's query) and wait for the zoo series."""
    open_page(page, url, page.get_by_text(re.compile(r"8 checkpoints of .*cnn-train")), timeout=60)


def open_app(probe: PageProbe, url: str, query: str = "?page=spectra"):
    """Load the app (the Spectra page unless ``query`` names another; the landing page is Vitals,
    tests/ui/test_vitals.py) and wait until the Spectra page shows a result."""
    page = probe.page
    open_page(page, url + query, page.get_by_text("Selected:", exact=False))
    return page


def start_long_orbits_run(page):
    """On an open Orbits page, start a run of several seconds (72 angles x 1000 samples of three
    models) over the 36-angle result; returns the Cancel button, once the run is under way."""
    inputs = page.locator(".nnv-controls input")
    for i, value in ((1, "72"), (2, "1000")):
        inputs.nth(i).fill(value)
        inputs.nth(i).press("Enter")
    page.wait_for_timeout(500)
    page.locator(".nnv-run").get_by_role("button").first.click()
    cancel = page.get_by_role("button", name="Cancel")
    cancel.wait_for(state="visible", timeout=15000)
    page.get_by_text("Showing the previous result — running Orbits", exact=False).first.wait_for()
    return cancel


def click_row(page, name: str, ctrl: bool = False) -> None:
    """Click the layer table's row of ``name`` (ctrl-click with ``ctrl``).

    The click event goes to the cell itself: a mouse click at its position can land on the
    table's sticky header when the page has scrolled the row to the top of the view.
    """
    cell = page.locator(".tabulator-cell", has_text=name).first
    cell.wait_for()
    cell.dispatch_event("click", {"ctrlKey": ctrl})


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def drawn_fraction(png: bytes) -> float:
    """Share of the pixels of a screenshot that are not (near) white: a drawn plot has many."""
    import io

    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    return float((np.abs(img - 1.0).max(axis=-1) > 0.1).mean())


def wait_drawn(locator, minimum: float = 0.04, timeout: float = 20) -> float:
    """Wait until the element's screenshot shows a drawn plot; returns the drawn share."""
    from playwright.sync_api import Error as PlaywrightError

    end = time.time() + timeout
    frac = 0.0
    while time.time() < end:
        try:
            frac = drawn_fraction(locator.screenshot())
        except PlaywrightError as e:  # the pane re-rendered under the screenshot: look again
            if "not attached" not in str(e):
                raise
            time.sleep(0.5)
            continue
        if frac >= minimum:
            return frac
        time.sleep(0.5)
    raise AssertionError(f"plot not drawn: only {frac:.1%} of its pixels are not white")


#: the first bokeh glyph renderer whose data source has every ``required`` column: its columns,
#: and the screen positions of the data points (xs[j], ys[j]) on its plot (null when not found)
GLYPH_JS = """
([required, xs, ys]) => {
  const find = (view, model, seen) => {
    if (!view || seen.has(view)) return null;
    seen.add(view);
    if (view.model === model) return view;
    const kids = [];
    if (view.child_views) kids.push(...view.child_views);
    if (view.renderer_views) kids.push(...view.renderer_views.values());
    for (const k of kids) { const r = find(k, model, seen); if (r) return r; }
    return null;
  };
  for (const m of Bokeh.documents[0].all_models) {
    if (m.type !== "GlyphRenderer") continue;
    const ds = m.data_source;
    if (!ds || !ds.get_column || !required.every((c) => ds.get_column(c))) continue;
    for (const root of Bokeh.index.roots) {
      const view = find(root, m, new Set());
      if (!view) continue;
      const plot = view.parent, r = plot.canvas_view.el.getBoundingClientRect();
      const columns = {};
      for (const k of ds.columns()) columns[k] = Array.from(ds.get_column(k), (v) => (typeof v === "number" ? v : String(v)));
      const points = xs.map((x, j) => [r.left + plot.frame.x_scale.compute(x), r.top + plot.frame.y_scale.compute(ys[j])]);
      return {columns, points};
    }
  }
  return null;
}
"""


def glyph(page, required: list[str], xs=(), ys=()) -> dict | None:
    """Columns of the first plotted glyph whose data has ``required`` columns, and the screen
    positions of the data points ``(xs[j], ys[j])`` on its plot (to click them); None if absent."""
    return page.evaluate(GLYPH_JS, [list(required), [float(x) for x in xs], [float(y) for y in ys]])

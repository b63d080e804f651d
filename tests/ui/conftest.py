"""Fixtures of the real-browser tests (see ui_helpers for what they start).

- ``server``: one app server for the whole session (free port, result store in a temporary
  directory, ``--allow-dir`` holding a small model and a slow one, a 1 MB upload limit);
- ``browser``: one headless Chromium (Debian's ``chromium``, never a downloaded browser);
- ``probe``: a fresh browser context and page per test that records console errors and every
  request to a host other than this machine; the test fails if there were any.

Skipped when Playwright or Chromium is missing (``make test`` installs Chromium).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ui_helpers import (
    CHROMIUM_ARGS,
    DEEP_TEXT_JS,
    UPLOAD_LIMIT_MB,
    PageProbe,
    start_server,
    stop_server,
    write_models,
)


@pytest.fixture(scope="session")
def ui_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="session")
def server(ui_tmp):
    pytest.importorskip("playwright")
    allow = ui_tmp / "models"
    files = write_models(allow)
    srv = start_server(
        ui_tmp, "--allow-dir", str(allow), "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--num-threads", "4"
    )
    srv.allow_dir, srv.files = allow, files
    yield srv
    stop_server(srv.proc)


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def probe(browser):
    """A fresh context and page; fails the test on console errors or outside requests."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(30000)
    p = PageProbe(page)
    yield p
    ctx.close()
    p.assert_clean()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test carries the server log's tail and the busiest processes: a page that
    timed out under CI's load says whether the server was queueing runs, stalled or starved."""
    report = yield
    if report.when == "call" and report.failed:
        srv = item.funcargs.get("server")
        if srv is not None:
            report.sections.append(
                ("server log (last 40 lines)", "\n".join(srv.log_text().splitlines()[-40:]))
            )
        probe = item.funcargs.get("probe")
        if probe is not None:
            report.sections.append(("browser console and websocket (last 30)", "\n".join(probe.events[-30:])))
            try:  # what the page said: a job's status line tells a queued run from a lost result
                text = probe.page.locator("body").evaluate(DEEP_TEXT_JS)
                report.sections.append(("page text (last 1500 characters)", text[-1500:]))
            except Exception as e:  # the page is gone or hung
                report.sections.append(("page text", f"not readable: {e}"))
        top = subprocess.run(["top", "-b", "-n", "1", "-c", "-w", "200"], capture_output=True, text=True)
        report.sections.append(("busiest processes (top)", "\n".join(top.stdout.splitlines()[:14])))
    return report

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
from pathlib import Path

import pytest
from ui_helpers import CHROMIUM_ARGS, UPLOAD_LIMIT_MB, PageProbe, start_server, stop_server, write_models


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

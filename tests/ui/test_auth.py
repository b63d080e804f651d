"""``--basic-auth``: an anonymous visitor gets the login page and nothing else; a user gets the app."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from ui_helpers import start_server, stop_server

pytestmark = pytest.mark.browser

USER, PASSWORD = "ada", "lovelace-1815"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _status(url: str) -> tuple[int, str]:
    """HTTP status and Location of an anonymous GET, without following redirects."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        r = opener.open(url, timeout=10)
        return r.status, r.headers.get("Location", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", "")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    pytest.importorskip("playwright")
    tmp = tmp_path_factory.mktemp("auth")
    users = tmp / "users.json"
    users.write_text(json.dumps({USER: PASSWORD}))
    srv = start_server(tmp, "--basic-auth", str(users), "--cookie-secret", "test-secret-0123456789")
    yield srv
    stop_server(srv.proc)


def test_anonymous_requests_reach_only_the_login_page(auth_server):
    base = auth_server.url
    for path in ("", "?page=orbits", "assets/logo.svg", "assets/nnvitals.css", "assets/zoo/mlp.safetensors"):
        status, location = _status(base + path)
        assert status in (302, 303, 401, 403), (path, status)
        if status in (302, 303):
            assert "login" in location, (path, location)
    status, _ = _status(base + "ws")
    assert status in (302, 303, 401, 403, 405), status
    status, _ = _status(base + "login")
    assert status == 200


def test_browser_login(auth_server, probe):
    page = probe.page
    page.goto(auth_server.url, wait_until="networkidle")
    assert "/login" in page.url
    assert page.locator(".bk-Canvas, canvas").count() == 0
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.get_by_text("Invalid username or password", exact=False).wait_for()
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.get_by_text("Selected:", exact=False).first.wait_for(timeout=60000)
    assert page.locator(".bk-Canvas, canvas").count() >= 1

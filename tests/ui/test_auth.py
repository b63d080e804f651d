"""``--basic-auth``: an anonymous visitor gets the login page and nothing else; a user gets the app."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from test_http_hardening import COMPONENT_CSS, TRAVERSALS, Client, assert_hardened, assert_no_traceback
from ui_helpers import start_server, stop_server

from dashboard.auth import SESSION_COOKIE

pytestmark = pytest.mark.browser

USER, PASSWORD = "ada", "lovelace-1815"
REDIRECT = (302, 303)


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
    page.goto(auth_server.url + "?page=spectra", wait_until="networkidle")
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


# --------------------------------------------------------------------------- hardening (issue 10)
def _login(page, user: str, password: str) -> None:
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def _get(url: str, cookies: dict[str, str]) -> tuple[int, str]:
    """Status and Location of a GET sending ``cookies`` (urllib, no redirects followed)."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    try:
        r = opener.open(req, timeout=10)
        return r.status, r.headers.get("Location", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", "")


def test_login_keeps_the_requested_page(auth_server, probe):
    page = probe.page
    page.goto(auth_server.url + "?page=orbits", wait_until="networkidle")
    assert "/login" in page.url and "next=" in page.url
    _login(page, USER, "wrong")
    page.get_by_text("Invalid username or password", exact=False).wait_for()
    assert "next=" in page.url  # still on its way to the Orbits page
    _login(page, USER, PASSWORD)
    page.get_by_text("Orbit settings", exact=False).first.wait_for(timeout=60000)
    url = urllib.parse.urlsplit(page.url)
    assert (url.path, url.query) == ("/", "page=orbits"), page.url


def test_login_follows_only_same_site_targets(auth_server):
    c = Client(auth_server.url, "127.0.0.10")
    target = "/?page=lipschitz"
    form = c.login_form("?" + urllib.parse.urlencode({"next": target}))
    assert form.status == 200 and f'name="next" value="{target}"' in form.body
    r = c.request("POST", "login", {"_xsrf": c.token, "username": USER, "password": "wrong", "next": target})
    assert r.status in REDIRECT, r.status
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.location).query)
    assert query == {"error": ["invalid"], "next": [target]}, r.location
    form = c.get("login?" + urllib.parse.urlsplit(r.location).query)
    assert "Invalid username or password" in form.body and f'name="next" value="{target}"' in form.body
    r = c.request("POST", "login", {"_xsrf": c.token, "username": USER, "password": PASSWORD, "next": target})
    assert r.status in REDIRECT and r.location == target, (r.status, r.location)
    for evil in ("//evil.com/", "https://evil.com/x", "javascript:alert(1)", "/\\evil.com", "/\t/evil.com"):
        c = Client(auth_server.url, "127.0.0.10")
        form = c.login_form("?" + urllib.parse.urlencode({"next": evil}))
        assert form.status == 200 and 'name="next" value=""' in form.body, evil
        fields = {"_xsrf": c.token, "username": USER, "password": PASSWORD, "next": evil}
        r = c.request("POST", "login", fields)
        assert r.status in REDIRECT and r.location == "./", (evil, r.location)


def test_header_names_the_user_and_logs_out(auth_server, probe):
    page = probe.page
    page.goto(auth_server.url + "?page=spectra", wait_until="networkidle")
    _login(page, USER, PASSWORD)
    page.get_by_text("Selected:", exact=False).first.wait_for(timeout=60000)
    assert page.locator(".nnv-user").inner_text() == USER
    old = page.context.cookies()
    page.locator("a.nnv-logout").click()
    page.get_by_text("You are logged out", exact=False).wait_for()
    page.goto(auth_server.url, wait_until="networkidle")
    assert "/login" in page.url
    page.context.add_cookies(old)  # the cookies of the ended login, replayed
    page.goto(auth_server.url, wait_until="networkidle")
    assert "/login" in page.url


def test_logout_revokes_the_login_cookie(auth_server):
    c = Client(auth_server.url, "127.0.0.6")
    assert c.login(USER, PASSWORD).status in REDIRECT
    cookies = dict(c.cookies)
    assert "user" in cookies
    assert _get(auth_server.url + "assets/logo.svg", cookies)[0] == 200
    assert c.get("logout").status == 200
    for path in ("", "?page=orbits", "assets/logo.svg"):
        status, location = _get(auth_server.url + path, cookies)
        assert status in (302, 303) and "login" in location, (path, status)
    assert c.login(USER, PASSWORD).status in REDIRECT  # a new login works


def test_login_needs_the_form_token(auth_server):
    data = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        r = opener.open(urllib.request.Request(auth_server.url + "login", data=data), timeout=10)
        status, cookies = r.status, r.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as e:
        status, cookies = e.code, e.headers.get_all("Set-Cookie") or []
    assert status == 403, status
    assert not any(c.startswith(("user=", SESSION_COOKIE)) for c in cookies), cookies
    c, other = Client(auth_server.url, "127.0.0.5"), Client(auth_server.url, "127.0.0.5")
    form = c.login_form()
    xsrf_cookie = [v for v in form.headers.get_all("Set-Cookie") if v.startswith("_xsrf=")]
    assert xsrf_cookie and "httponly" in xsrf_cookie[0].lower() and "samesite=lax" in xsrf_cookie[0].lower()
    other.login_form()
    # no token, a forged one, another browser's
    for token in ("", "2|00000000|" + "0" * 32 + "|1700000000", other.token):
        r = c.request("POST", "login", {"_xsrf": token, "username": USER, "password": PASSWORD})
        assert r.status == 403 and "log in again" in r.body, (token, r.status)
        assert "user" not in c.cookies and SESSION_COOKIE not in c.cookies
    r = c.request("POST", "login", {"_xsrf": c.token, "username": USER, "password": PASSWORD})
    assert r.status in REDIRECT and "user" in c.cookies and SESSION_COOKIE in c.cookies


def test_wrong_passwords_lock_out_only_that_client(auth_server):
    a, b = Client(auth_server.url, "127.0.0.7"), Client(auth_server.url, "127.0.0.8")
    free, locks = 0, []
    for _ in range(20):
        r = a.login(USER, "wrong")
        if r.status == 429:
            assert "Too many failed logins" in r.body
            locks.append(int(r.headers["Retry-After"]))
            if locks[-1] >= 4:
                break
            time.sleep(locks[-1])  # wait the lockout out, then fail again
        else:
            assert r.status in REDIRECT, r.status
            free += not locks
    assert free == 5 and locks[-1] >= 4 and locks == sorted(locks), (free, locks)
    r = a.login(USER, PASSWORD)  # the right password does not help while locked out
    assert r.status == 429 and "user" not in a.cookies, r.status
    start = time.monotonic()
    assert b.login(USER, PASSWORD).status in REDIRECT  # another client logs in, at once
    assert time.monotonic() - start < 3
    time.sleep(int(r.headers["Retry-After"]) + 0.3)
    assert a.login(USER, PASSWORD).status in REDIRECT
    assert "locked out" in auth_server.log_text()


def test_anonymous_autoload_js_is_refused_without_a_traceback(auth_server):
    for query in ("?bokeh-autoload-element=x", "?bokeh-autoload-element=x&bokeh-app-path=/", ""):
        status, location = _status(auth_server.url + "autoload.js" + query)
        assert status in (400, 401, 403) or (status in (302, 303) and "login" in location), (query, status)
    log = auth_server.wait_log("refused anonymous GET /autoload.js", timeout=5)
    assert_no_traceback(log)


def test_security_headers_with_login(auth_server):
    anon, user = Client(auth_server.url, "127.0.0.9"), Client(auth_server.url, "127.0.0.9")
    paths = ["", "?page=orbits", "login", "assets/logo.svg", "static/js/bokeh.min.js", "nope", COMPONENT_CSS]
    for path in [*paths, "autoload.js?bokeh-autoload-element=x", "logout", TRAVERSALS[0]]:
        assert_hardened(anon.get(path), path)
    assert_hardened(anon.request("POST", "login", {"username": USER, "password": PASSWORD}), "refused login")
    r = user.login(USER, PASSWORD)
    assert r.status in REDIRECT
    assert_hardened(r, "login")
    for path in paths:
        r = user.get(path)
        assert r.status in (200, 404) and (r.status == 404) == (path == "nope"), (path, r.status)
        assert_hardened(r, path)


def test_file_routes_refuse_traversals_with_login(auth_server):
    anon, user = Client(auth_server.url, "127.0.0.11"), Client(auth_server.url, "127.0.0.11")
    assert user.login(USER, PASSWORD).status in REDIRECT
    for path in TRAVERSALS:
        r = anon.get(path)
        refused = r.status in (401, 403, 404) or (r.status in (302, 303) and "login" in r.location)
        assert refused, (path, r.status)
        r = user.get(path)
        assert r.status in (403, 404), (path, r.status)
        assert "root:" not in r.body and "[project]" not in r.body, path
    assert_no_traceback(auth_server.log_text())


def test_behind_a_proxy_the_lockout_counts_forwarded_addresses(tmp_path):
    """``--use-xheaders``: clients behind one reverse proxy (one source address) are told apart by
    X-Forwarded-For, so one guessing client does not lock the others out."""
    users = tmp_path / "users.json"
    users.write_text(json.dumps({USER: PASSWORD}))
    srv = start_server(tmp_path, "--basic-auth", str(users), "--use-xheaders")
    try:
        attacker = Client(srv.url, "127.0.0.1", headers={"X-Forwarded-For": "203.0.113.9"})
        colleague = Client(srv.url, "127.0.0.1", headers={"X-Forwarded-For": "198.51.100.4"})
        statuses = [attacker.login(USER, "wrong").status for _ in range(6)]
        assert statuses[-1] == 429, statuses
        assert colleague.login(USER, PASSWORD).status in REDIRECT
    finally:
        stop_server(srv.proc)

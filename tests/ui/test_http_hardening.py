"""HTTP hardening of ``nnvitals serve``: security headers on every response, Panel's file routes
refuse encoded traversals with 403/404 (no traceback), and the parts of the login machinery
that need no server (``next`` targets, the lockout's backoff, login sessions, credentials).

The login itself (CSRF, lockout over HTTP, logout revocation) is tested in test_auth.py, which
uses :class:`Client` from here.
"""

from __future__ import annotations

import http.client
import http.cookies
import json
import re
import urllib.parse
from dataclasses import dataclass

import pytest
from ui_helpers import start_server, stop_server

from dashboard.auth import SECURITY_HEADERS, Credentials, LoginSessions, LoginThrottle, safe_next

#: a file that Panel's ``/components/`` route serves (the template's own stylesheet)
COMPONENT_CSS = "components/panel.template.bootstrap/BootstrapTemplate/_css/bootstrap.css"
#: encoded path traversals (and other malformed paths) under Panel's and Bokeh's file routes
TRAVERSALS = [
    "components/..%2f..%2fetc%2fpasswd",
    "components/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "components/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "components/panel/..%2f..%2f..%2fetc%2fpasswd",
    "components/panel%2f..%2f..%2f..%2fetc/x/y/passwd",
    "components/..%5c..%5cetc%5cpasswd/x/y/z",
    "components//BootstrapTemplate/_css/x",
    "components/.panel/x/_css/y",
    "components/panel/%00/_css/x",
    "components/panel.template/BootstrapTemplate/_resources/",
    "components/panel.template/BootstrapTemplate/_resources/css/..%2f..%2f..%2fetc%2fpasswd",
    "components/panel.template.bootstrap/BootstrapTemplate/_css/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "static/..%2f..%2fetc%2fpasswd",
    "static/%2e%2e/%2e%2e/etc/passwd",
    "static/extensions/..%2f..%2fetc%2fpasswd",
    "static/extensions/panel/..%2f..%2f..%2fetc%2fpasswd",
    "static/extensions/panel/%2e%2e%2f%2e%2e%2fsetup.py",
    "assets/..%2f..%2fetc%2fpasswd",
    "assets/%2e%2e/%2e%2e/pyproject.toml",
    "assets/..%5c..%5cpyproject.toml",
    "panel_dist/..%2f..%2fetc%2fpasswd",
]


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class Client:
    """An HTTP client of one server from one source address (127.0.0.x: the server sees another
    client per address), keeping cookies, following no redirects."""

    def __init__(self, url: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.source = parts.hostname, parts.port, source
        self.cookies: dict[str, str] = {}
        self.headers = dict(headers or {})

    def request(self, method: str, path: str, form: dict | None = None, cookies: bool = True) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, source_address=(self.source, 0), timeout=30)
        headers = dict(self.headers)
        if cookies and self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, "/" + path, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for raw in r.headers.get_all("Set-Cookie") or []:
            for name, morsel in http.cookies.SimpleCookie(raw).items():
                if morsel.value in ("", '""'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.coded_value
        return Response(r.status, r.headers, text)

    def get(self, path: str = "") -> Response:
        return self.request("GET", path)

    def login_form(self, query: str = "") -> Response:
        """GET the login page (sets the CSRF cookie); ``.token`` holds the form's token."""
        r = self.get("login" + query)
        m = re.search(r'name="_xsrf" value="([^"]+)"', r.body)
        self.token = m.group(1) if m else ""
        return r

    def login(self, user: str, password: str, next_target: str | None = None) -> Response:
        """Open the login form, then post it."""
        self.login_form()
        form = {"_xsrf": self.token, "username": user, "password": password}
        if next_target is not None:
            form["next"] = next_target
        return self.request("POST", "login", form)


def assert_hardened(r: Response, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (what, r.status, name, r.headers.get(name))


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log and "Uncaught exception" not in log, log[-3000:]


# --------------------------------------------------------------------------- no server
@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "//evil.com/?page=orbits",
        "https://evil.com/",
        "http:/evil.com",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "/\\evil.com",
        "\\\\evil.com",
        "/\t/evil.com",
        "/\n/evil.com",
        " /x",
        "evil.com",
        "?page=orbits",
        "/é",
        "/" + "a" * 5000,
        "",
        None,
    ],
)
def test_next_refuses_other_hosts_and_odd_text(target):
    assert safe_next(target) is None


@pytest.mark.parametrize("target", ["/", "/?page=orbits", "/app?page=lipschitz&x=1", "/%2F%2Fevil.com"])
def test_next_keeps_same_site_paths(target):
    assert safe_next(target) == target


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_backs_off_exponentially_per_client():
    clock = Clock()
    t = LoginThrottle(free=3, base_s=1.0, max_s=30.0, forget_s=600.0, clock=clock)
    locks = []
    for _ in range(9):
        locks.append(t.failed("10.0.0.1"))
        clock.now += locks[-1] + 0.01  # the client waits out each lock
    assert locks == [0, 0, 1, 2, 4, 8, 16, 30, 30]
    clock.now -= locks[-1] + 0.01 - 10  # 10 s after the last failure
    assert t.retry_after("10.0.0.1") == pytest.approx(20.0)
    assert t.retry_after("10.0.0.2") == 0  # another client is not locked out
    t.failed("10.0.0.2")
    assert t.retry_after("10.0.0.2") == 0
    t.succeeded("10.0.0.1")  # a login clears the count
    assert t.retry_after("10.0.0.1") == 0
    assert [t.failed("10.0.0.1") for _ in range(3)] == [0, 0, 1]


def test_throttle_forgets_old_failures_and_bounds_its_memory():
    clock = Clock()
    t = LoginThrottle(free=2, base_s=1.0, forget_s=60.0, max_clients=100, clock=clock)
    assert t.failed("a") == 0
    clock.now += 61
    assert t.failed("a") == 0  # the first failure was forgotten
    for i in range(1000):
        t.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(t) == 100


def test_login_sessions_end_and_expire():
    clock = Clock()
    s = LoginSessions(lifetime_s=100, max_sessions=3, clock=clock)
    a, b = s.start("ada"), s.start("ada")
    assert a != b and len(a) >= 32
    assert s.user(a) == s.user(b) == "ada"
    assert s.end(a) and not s.end(a)
    assert s.user(a) is None and s.user(b) == "ada"
    assert s.user("forged") is None and s.user("") is None and s.user(None) is None
    clock.now += 101
    assert s.user(b) is None
    for _ in range(5):
        s.start("bob")
    assert len(s) == 3


def test_credentials(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"ada": "pw-1", "bob": "pw-2"}))
    c = Credentials(str(users))
    assert c.check("ada", "pw-1") and c.check("bob", "pw-2")
    assert not c.check("ada", "pw-2") and not c.check("eve", "pw-1") and not c.check("eve", "")
    users.write_text(json.dumps({"ada": "new"}))  # edits apply at the next login
    assert c.check("ada", "new") and not c.check("bob", "pw-2")
    users.write_text("{broken")
    assert not c.check("ada", "new")
    one = Credentials("only-password")
    assert one.check("anyone", "only-password") and not one.check("anyone", "x") and not one.check("", "")


# --------------------------------------------------------------------------- a server without login
@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("open"))
    yield srv
    stop_server(srv.proc)


def test_every_response_carries_the_security_headers(open_server):
    c = Client(open_server.url)
    page = c.get("")
    assert page.status == 200
    resources = re.findall(r'(?:src|href)="(?:\./)?((?:static)/[^"?]+)', page.body)
    assert any(p.startswith("static/js/") for p in resources), resources
    assert any(p.startswith("static/extensions/") for p in resources), resources
    resources.append(COMPONENT_CSS)  # a file Panel's /components/ route serves (the page loads none)
    for path in ["", "assets/logo.svg", "assets/nnvitals.css", "favicon.ico", "nope", "login", "logout"]:
        assert_hardened(c.get(path), path)
    for path in resources:
        r = c.get(path)
        assert r.status == 200, (path, r.status)
        assert_hardened(r, path)
    assert_hardened(c.get(TRAVERSALS[0]), "a refused traversal")
    assert_hardened(c.request("POST", "assets/logo.svg", {}), "a refused method")


def test_file_routes_refuse_encoded_traversals(open_server):
    c = Client(open_server.url)
    for path in TRAVERSALS:
        r = c.get(path)
        assert r.status in (403, 404), (path, r.status)
        assert "root:" not in r.body and "[project]" not in r.body, path
        assert_hardened(r, path)
    assert_no_traceback(open_server.log_text())


def test_component_urls_never_import_modules(open_server):
    c = Client(open_server.url)
    r = c.get("components/this/x/_css/y.css")  # `import this` prints the Zen of Python
    assert r.status == 404
    r = c.get("components/panel.tests.conftest/x/_css/y.css")
    assert r.status == 404
    log = open_server.log_text()
    assert "Beautiful is better than ugly" not in log
    assert_no_traceback(log)

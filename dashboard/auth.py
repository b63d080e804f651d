"""Login, logout and HTTP hardening of ``nnvitals serve`` (wired in by :func:`dashboard.server.serve`).

With ``--basic-auth`` the server takes :class:`PasswordAuth` as its auth provider (Panel's
:class:`~panel.auth.BasicAuthProvider` with our own login and logout handlers):

- the login form carries a CSRF token (Tornado's ``_xsrf`` double-submit cookie); a POST without
  a valid token is refused with 403 and a fresh form;
- wrong passwords are throttled per client address (:class:`LoginThrottle`): after a few
  failures the address is locked out for an exponentially growing time and its POSTs get 429
  (nothing sleeps on the event loop, and one address never locks out another);
- a login starts a server-side session (:class:`LoginSessions`): a random id in a signed cookie
  next to Panel's ``user`` cookie, valid only while the server holds it; logout ends it, so a
  replayed cookie gets the login page;
- the page the visitor asked for (``next``) survives the login form, wrong passwords and the
  redirects; only a same-site path is followed (:func:`safe_next`), never another host;
- an anonymous ``/autoload.js`` (a script: it cannot follow a redirect to the login page) is
  refused with 403 and one log line.

Clients are told apart by ``request.remote_ip``: behind a reverse proxy that is the proxy's
address unless the server trusts the proxy's ``X-Forwarded-For`` (Bokeh's ``use_xheaders``).

With or without a login, every response carries :data:`SECURITY_HEADERS` (:class:`SecurityHeaders`),
and Panel's ``/components/`` route answers malformed or traversing paths with 404 instead of an
uncaught exception (:class:`ComponentHandler`).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import tornado.web
from bokeh.server.views.autoload_js_handler import AutoloadJsHandler as _BokehAutoloadJsHandler
from panel.auth import BasicAuthProvider, BasicLoginHandler
from panel.config import config
from panel.io.resources import COMPONENT_PATH
from panel.io.server import ComponentResourceHandler
from tornado.web import HTTPError

log = logging.getLogger("nnvitals.auth")

#: headers every response carries: no framing by other sites, no MIME sniffing, no full URLs in
#: the Referer sent elsewhere. The CSP holds only ``frame-ancestors``: Bokeh and Panel need
#: inline scripts, so a script policy would break the app.
SECURITY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: the signed cookie holding the id of a login session (:class:`LoginSessions`)
SESSION_COOKIE = "nnvitals_session"
#: messages of the login page, by the ``error`` code in its URL (never text taken from the URL)
LOGIN_ERRORS = {
    "invalid": "Invalid username or password!",
    "expired": "The login form expired; please log in again.",
}
#: cookies a logout clears (ours and those Panel's login handlers set)
LOGOUT_COOKIES = ("user", "id_token", "access_token", "refresh_token", "oauth_expiry", "is_guest")
#: longest ``next`` target honoured (characters)
MAX_NEXT = 2048


class SecurityHeaders(tornado.web.OutputTransform):
    """Adds :data:`SECURITY_HEADERS` to every response of the server (pages, files, errors, the login page).

    An output transform runs on the first chunk of every response Tornado sends, whichever
    handler (or error path) wrote it; a CSP a handler set itself keeps its directives and gains
    ``frame-ancestors``.
    """

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        for name, value in SECURITY_HEADERS.items():
            present = headers.get(name)
            if present is None:
                headers[name] = value
            elif name == "Content-Security-Policy" and "frame-ancestors" not in present:
                headers[name] = f"{present.rstrip('; ')}; {value}"
        return status_code, headers, chunk


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a path on this site (``/...``), else None.

    Refused: anything with a scheme or host (``https://evil.com``, ``javascript:...``), a
    protocol-relative ``//host`` or ``/\\host``, control characters or spaces (browsers drop
    tabs and newlines, turning ``/\\t/host`` into ``//host``), non-ASCII text, and very long values.
    """
    if not target or len(target) > MAX_NEXT or not target.startswith("/"):
        return None
    if any(not 0x21 <= ord(c) <= 0x7E or c == "\\" for c in target):
        return None
    if target.startswith("//"):
        return None
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


class LoginThrottle:
    """Per-client lockout after failed logins, with exponential backoff.

    The first ``free`` failures of a client pass; failure number ``free + k`` (k >= 0) locks the
    client out for ``min(base_s * 2**k, max_s)`` seconds, during which its login attempts are
    refused without checking the password. A client's count is forgotten ``forget_s`` seconds
    after its last failure (or at a successful login). Clients are counted by address, one
    entry each, at most ``max_clients`` of them (the oldest are forgotten first), so a flood of
    addresses cannot exhaust the server's memory and no client can lock out another.
    Thread-safe; never sleeps.
    """

    def __init__(
        self,
        free: int = 5,
        base_s: float = 1.0,
        max_s: float = 900.0,
        forget_s: float = 3600.0,
        max_clients: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free, self.base_s, self.max_s, self.forget_s = free, base_s, max_s, forget_s
        self.max_clients = max_clients
        self.clock = clock
        #: client -> (failures, time of the last failure, locked until)
        self._clients: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, client: str, now: float) -> tuple[int, float, float]:
        entry = self._clients.get(client)
        if entry is not None and now - entry[1] > self.forget_s and now >= entry[2]:
            del self._clients[client]
            return (0, now, now)
        return entry or (0, now, now)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            now = self.clock()
            return max(0.0, self._entry(client, now)[2] - now)

    def failed(self, client: str) -> float:
        """Count a failed login of ``client``; returns how long it is now locked out (seconds, 0: not)."""
        with self._lock:
            now = self.clock()
            failures = self._entry(client, now)[0] + 1
            lock = 0.0
            if failures >= self.free:
                lock = min(self.base_s * 2.0 ** min(failures - self.free, 64), self.max_s)
            self._clients[client] = (failures, now, now + lock)
            self._clients.move_to_end(client)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return lock

    def succeeded(self, client: str) -> None:
        """Forget the failures of ``client`` (it logged in)."""
        with self._lock:
            self._clients.pop(client, None)

    def __len__(self) -> int:
        return len(self._clients)


class LoginSessions:
    """The live logins of the server: random session id -> (user, expiry time).

    A login cookie is honoured only while its id is here: logging out removes it, so the
    signed cookie, replayed later, no longer logs anyone in. Ids live ``lifetime_s`` seconds
    (the cookies' lifetime); at most ``max_sessions`` are held (the oldest end first). Held in
    memory: a restarted server asks everybody to log in again.
    """

    def __init__(self, lifetime_s: float, max_sessions: int = 100000, clock: Callable[[], float] = time.time):
        self.lifetime_s, self.max_sessions, self.clock = lifetime_s, max_sessions, clock
        self._live: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        """A new session of ``user``; returns its id."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            for old in [k for k, (_, end) in self._live.items() if end <= now]:
                del self._live[old]
            self._live[sid] = (user, now + self.lifetime_s)
            while len(self._live) > self.max_sessions:
                self._live.popitem(last=False)
        return sid

    def user(self, sid: str | None) -> str | None:
        """The user of the live session ``sid`` (None: unknown, ended or expired)."""
        if not sid:
            return None
        with self._lock:
            entry = self._live.get(sid)
            if entry is None:
                return None
            if entry[1] <= self.clock():
                del self._live[sid]
                return None
            return entry[0]

    def end(self, sid: str | None) -> bool:
        """End the session ``sid``; True when it was live."""
        with self._lock:
            return self._live.pop(sid, None) is not None if sid else False

    def __len__(self) -> int:
        return len(self._live)


class Credentials:
    """The users ``--basic-auth`` allows: a JSON file ``{user: password}`` (read at each login, so
    edits apply at once), or one password for any user name. Compared in constant time."""

    def __init__(self, basic_auth: str):
        self.basic_auth = basic_auth
        self.path = Path(basic_auth) if os.path.isfile(basic_auth) else None

    def _users(self) -> dict[str, str] | None:
        if self.path is None:
            return None
        try:
            users = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.error(
                "--basic-auth %s: cannot read the users (%s); refusing logins", self.path, type(e).__name__
            )
            return {}
        return users if isinstance(users, dict) else {}

    def check(self, username: str, password: str) -> bool:
        """Whether ``username`` may log in with ``password``."""
        users = self._users()
        if users is None:
            expected: Any = self.basic_auth
        else:
            expected = users.get(username)
        known = isinstance(expected, str) and bool(expected)
        # compare even for an unknown user, so the answer takes as long
        same = hmac.compare_digest(password.encode("utf-8"), (expected if known else "\0").encode("utf-8"))
        return known and same


def _template(path: str | os.PathLike | None, default: str) -> jinja2.Template:
    """A page template (HTML-escaping every variable)."""
    env = jinja2.Environment(autoescape=True)
    text = Path(path).read_text(encoding="utf-8") if path else default
    return env.from_string(text)


_DEFAULT_LOGIN = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Log in</title></head><body>
<form action=".{{ login_endpoint }}" method="post"><p>{{ errormessage }}</p>{{ xsrf_form_html }}
<input type="hidden" name="next" value="{{ next }}"><input name="username" placeholder="username">
<input name="password" type="password" placeholder="password"><button type="submit">Log in</button></form>
</body></html>"""
_DEFAULT_LOGOUT = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Logged out</title></head>
<body><p>You are logged out.</p><a href=".{{ LOGIN_ENDPOINT }}">Log in again</a></body></html>"""


def _client(handler: tornado.web.RequestHandler) -> str:
    return handler.request.remote_ip or "unknown"


class LoginHandler(BasicLoginHandler):
    """``/login``: the form (GET) and the check of a user name and password (POST).

    A subclass per provider carries it as ``provider``.
    """

    provider: PasswordAuth

    def _next(self, source: Callable[..., Any]) -> str | None:
        target = safe_next(source("next", None))
        if target is not None:
            path = urllib.parse.urlsplit(target).path.rstrip("/")
            endpoints = (self.provider.login_url, self.provider.logout_url)
            if any(path.endswith(e) for e in endpoints if e):
                return None
        return target

    def _page(self, message: str, target: str | None, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.write(
            self.provider.login_template.render(
                login_endpoint=self.provider.login_url,
                errormessage=message,
                next=target or "",
                xsrf_form_html=markupsafe.Markup(self.xsrf_form_html()),
            )
        )

    def _locked_message(self, wait: float) -> str:
        return f"Too many failed logins from your address; try again in {math.ceil(wait)} s."

    def get(self) -> None:
        wait = self.provider.throttle.retry_after(_client(self))
        code = self.get_query_argument("error", "")
        message = self._locked_message(wait) if wait else LOGIN_ERRORS.get(code, "")
        self._page(message, self._next(self.get_query_argument))

    def post(self) -> None:
        client = _client(self)
        target = self._next(self.get_body_argument)
        try:
            self.check_xsrf_cookie()
        except HTTPError as e:
            log.warning("refused a login from %s: %s", client, e.log_message)
            self._page(LOGIN_ERRORS["expired"], target, status=403)
            return
        wait = self.provider.throttle.retry_after(client)
        if wait:
            log.warning("refused a login from %s: locked out for %.0f s more", client, wait)
            self.set_header("Retry-After", str(math.ceil(wait)))
            self._page(self._locked_message(wait), target, status=429)
            return
        username = self.get_body_argument("username", "")
        password = self.get_body_argument("password", "")
        if not self.provider.credentials.check(username, password):
            lock = self.provider.throttle.failed(client)
            log.warning("failed login from %s%s", client, f" (locked out for {lock:.0f} s)" if lock else "")
            query = {"error": "invalid", **({"next": target} if target else {})}
            self.redirect(f".{self.provider.login_url}?{urllib.parse.urlencode(query)}", status=303)
            return
        self.provider.throttle.succeeded(client)
        self.set_current_user(username)
        sid = self.provider.sessions.start(username)
        self.set_signed_cookie(
            SESSION_COOKIE,
            sid,
            expires_days=config.oauth_expiry,
            httponly=True,
            samesite="Lax",
            secure=self.request.protocol == "https",
            path=config.cookie_path,
        )
        log.info("login of %s from %s", username, client)
        self.redirect(target or "./", status=303)


class LogoutHandler(tornado.web.RequestHandler):
    """``/logout``: ends the login session server-side (its cookie is dead from then on), clears
    the login cookies and shows the logout page. A subclass per provider carries it as ``provider``."""

    provider: PasswordAuth

    def get(self) -> None:
        sid = self.get_signed_cookie(SESSION_COOKIE, max_age_days=config.oauth_expiry)
        if sid is not None and self.provider.sessions.end(sid.decode("utf-8", "replace")):
            log.info("logout from %s", _client(self))
        for name in (SESSION_COOKIE, *LOGOUT_COOKIES):
            self.clear_cookie(name, path=config.cookie_path)
        self.set_header("Cache-Control", "no-store")
        self.write(self.provider.logout_template.render(LOGIN_ENDPOINT=self.provider.login_url))


class PasswordAuth(BasicAuthProvider):
    """Panel's basic-auth provider with the nnvitals login/logout handlers (see the module doc).

    ``basic_auth``: the path of a JSON file ``{user: password}``, or one password.
    """

    def __init__(
        self,
        basic_auth: str,
        *,
        login_template: str | os.PathLike | None = None,
        logout_template: str | os.PathLike | None = None,
        throttle: LoginThrottle | None = None,
        sessions: LoginSessions | None = None,
    ):
        self.credentials = Credentials(basic_auth)
        self.throttle = throttle or LoginThrottle()
        self.sessions = sessions or LoginSessions(lifetime_s=float(config.oauth_expiry) * 86400)
        self.login_template = _template(login_template, _DEFAULT_LOGIN)
        self.logout_template = _template(logout_template, _DEFAULT_LOGOUT)
        attrs = {"provider": self, "__module__": __name__}
        self._login_cls = type("NNVitalsLoginHandler", (LoginHandler,), attrs)
        self._logout_cls = type("NNVitalsLogoutHandler", (LogoutHandler,), attrs)
        super().__init__()

    def session_user(self, handler: tornado.web.RequestHandler) -> str | None:
        """The user of the live login session whose cookies ``handler``'s request carries (or None)."""
        days = config.oauth_expiry
        sid, user = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=days), None
        if sid is not None:
            user = self.sessions.user(sid.decode("utf-8", "replace"))
        cookie_user = handler.get_signed_cookie("user", max_age_days=days)
        if user is None or cookie_user is None or cookie_user.decode("utf-8", "replace") != user:
            return None
        return user

    @property
    def get_user(self):
        panel_get_user = super().get_user

        def get_user(handler):
            if self.session_user(handler) is None:
                if isinstance(handler, _BokehAutoloadJsHandler):
                    # a script cannot follow a redirect to the login page (Bokeh's handler would
                    # crash on it): refuse it instead
                    log.warning("refused anonymous %s %s from %s", handler.request.method,
                                handler.request.path, _client(handler))  # fmt: skip
                    raise HTTPError(403)
                return None
            return panel_get_user(handler)

        return get_user

    @property
    def login_handler(self):
        return self._login_cls

    @property
    def logout_handler(self):
        return self._logout_cls


class ComponentHandler(ComponentResourceHandler):
    """Panel's ``/components/<module>/<class>/<attribute>/<file>`` route, refusing what no page asks for.

    Answers 404 (one log line, no traceback) for empty, ``.``/``..`` or backslash segments, a
    module name that is not a dotted identifier or not imported yet (a URL never imports code),
    and anything Panel's resolver fails on; with a login, anonymous visitors get 403.
    """

    def _check(self, path: str) -> None:
        provider = self.application.auth_provider
        if isinstance(provider, PasswordAuth) and provider.session_user(self) is None:
            raise HTTPError(403)
        parts = path.split("/")
        bad = len(parts) < 4 or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts)
        module = parts[0]
        if bad or not all(s.isidentifier() for s in module.split(".")) or module not in sys.modules:
            log.warning("refused %s %s: not a component resource", self.request.method, self.request.path)
            raise HTTPError(404)

    async def get(self, path: str, include_body: bool = True) -> None:
        self._check(path)
        try:
            await super().get(path, include_body=include_body)
        except HTTPError:
            raise
        except Exception as e:
            log.warning("refused %s %s: %s", self.request.method, self.request.path, type(e).__name__)
            raise HTTPError(404) from None


def component_route() -> tuple[str, type, dict]:
    """The route serving ``/components/`` through :class:`ComponentHandler` (put before Panel's own)."""
    return (rf"/{COMPONENT_PATH}(.*)", ComponentHandler, {})


def server_options(
    basic_auth: str | None,
    *,
    login_template: str | os.PathLike | None = None,
    logout_template: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``pn.serve`` that harden the server: security headers, the
    ``/components/`` route, and with ``basic_auth`` the :class:`PasswordAuth` provider."""
    opts: dict[str, Any] = {
        "transforms": [SecurityHeaders],
        "extra_patterns": [component_route()],
        # the login form's CSRF cookie: not readable by scripts, not sent along cross-site requests
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Lax"},
    }
    if basic_auth:
        opts["auth_provider"] = PasswordAuth(
            basic_auth, login_template=login_template, logout_template=logout_template
        )
    return opts

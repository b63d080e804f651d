"""The server around the app: sessions under load, and serving.

Sessions under load: the page builder thread (pages are built off the event loop), a few
pages built ahead of their browsers and the rest once their browsers connect (:class:`PagesAhead`),
every stylesheet served by this server whatever the load (:func:`serve_locally`), a new session
kept until its browser connects, and memory handed back once sessions close. Serving: :func:`serve`
runs :func:`dashboard.app.build_app` with Panel's server, its logging, BLAS threads, warm-up and
hardening (:mod:`dashboard.auth`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import re
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bokeh
import panel as pn
from tornado.ioloop import IOLoop

from . import page_resources, speedups, turns, write_queue
from .components import jobs
from .settings import AppSettings

log = logging.getLogger("nnvitals.app")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
TEMPLATES = Path(__file__).resolve().parent / "templates"

# --------------------------------------------------------------------------- sessions under load
#: seconds a session built for a page request is kept for its browser's websocket: a busy server
#: sends the page's scripts late, and the unused-session reaper (4 s) would otherwise drop the
#: session before the browser connects (Bokeh then builds another one for the websocket)
CONNECT_GRACE_S = 30.0
#: longest wait of the page builder for the event loop to show a page it built
ATTACH_WAIT_S = 30.0
#: seconds after the last session closed before unreachable objects are collected and freed
#: memory handed back to the system
RELEASE_AFTER_S = 5.0

_builder: ThreadPoolExecutor | None = None
_builder_lock = threading.Lock()


def page_builder() -> ThreadPoolExecutor:
    """The thread that builds the sessions' pages (their Param objects, results and HoloViews
    objects), one session after another, off the server's event loop. One thread: building is
    Python work that holds the interpreter lock; more threads would only take turns with the event
    loop and the sessions' clicks."""
    global _builder
    with _builder_lock:
        if _builder is None:
            _builder = ThreadPoolExecutor(1, thread_name_prefix="nnvitals-page")
        return _builder


def _once(lock: threading.Lock, action: Callable[[], None]) -> Callable[[], None]:
    """A function that runs ``action`` under ``lock`` the first time it is called, from any
    thread, and does nothing after (a session may end a count twice: shown, then closed)."""
    done = False

    def once() -> None:
        nonlocal done
        with lock:
            if not done:
                done = True
                action()

    return once


class PagesAhead:
    """How many pages are built before their browsers connect, at most :attr:`limit` at once.

    A session's page is built as soon as its request arrives, while the browser loads the
    scripts: the page is then ready when the browser connects. A request whose browser never
    connects (a burst of plain page requests, a link preview, a tab closed while loading) would
    hold its built page until the session is dropped (:data:`CONNECT_GRACE_S`): thirty at once
    left the server's resident memory ~110 MB above where it was once they were dropped (the
    small-object allocator keeps the arenas of a peak that a few survivors pin), ~38 MB with the
    limit. Beyond the limit, a new session's page is built when its browser connects instead,
    which costs that browser the build (~0.3 s) and bounds what unconnected sessions hold to
    their frames.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ahead = 0
        self._lock = threading.Lock()

    @property
    def ahead(self) -> int:
        """Pages built (or being built) whose browsers have not connected yet."""
        return self._ahead

    def claim(self) -> Callable[[], None] | None:
        """A place for one page built ahead, and the function that gives it back (once, from
        any thread, however often it is called); None when :attr:`limit` pages are ahead."""
        with self._lock:
            if self._ahead >= self.limit:
                return None
            self._ahead += 1
        return _once(self._lock, self._give_back)

    def _give_back(self) -> None:
        self._ahead -= 1


#: pages built ahead of their browsers, at most this many at once (see :class:`PagesAhead`)
PAGES_AHEAD = PagesAhead(3)


class Loading:
    """The sessions between their page request and their page shown; the warm-up waits while
    there are any (:meth:`wait_quiet`).

    The warm-up (:func:`_warm`) imports and computes for ~3 s after the server first answers,
    holding the interpreter most of that time: a user who came as the server started had their
    page built, its scripts served and the page shown in between, each slowed by it. Now the
    warm-up steps aside while any page is on its way, for a bounded time: a session whose
    browser never connects holds the warm-up back by :data:`WARM_WAIT_S` at most.
    """

    def __init__(self) -> None:
        self._open = 0
        self._lock = threading.Lock()
        self._quiet = threading.Event()
        self._quiet.set()

    @property
    def loading(self) -> int:
        """Sessions whose page is on its way."""
        return self._open

    def begin(self) -> Callable[[], None]:
        """A session's page is on its way; returns the function that says it arrived or will not
        (once, from any thread, however often it is called)."""
        with self._lock:
            self._open += 1
            self._quiet.clear()
        return _once(self._lock, self._end)

    def _end(self) -> None:
        self._open -= 1
        if self._open == 0:
            self._quiet.set()

    def wait_quiet(self, timeout: float) -> bool:
        """Wait until no page is on its way (True), or ``timeout`` seconds (False)."""
        return self._quiet.wait(timeout)


#: sessions whose page is on its way (see :class:`Loading`)
LOADING = Loading()
#: the longest the warm-up waits for pages on their way, in all
WARM_WAIT_S = 10.0


def serve_locally(doc: Any) -> None:
    """Have every stylesheet of this session's document served by this server.

    Panel writes its stylesheet URLs for the CDN and rewrites them to this server's ``static/``
    folder with the ``dist_url`` of the session's document; that value is set only when the
    session's HTML page is rendered. A document built any other way (Bokeh builds a new session
    when a websocket arrives for one it no longer has) has none, and Panel then points every
    stylesheet at ``cdn.holoviz.org``, unreachable offline. Set here, before anything is built,
    it holds for every document whatever other sessions or threads do meanwhile.
    """
    from panel.io.resources import LOCAL_DIST

    rel = pn.state.rel_path
    doc._template_variables["dist_url"] = f"{rel}/{LOCAL_DIST}" if rel else LOCAL_DIST


def keep_until_connected(doc: Any) -> None:
    """Keep this new session until its browser connects (or :data:`CONNECT_GRACE_S` passed).

    Bokeh drops a session nobody is connected to after ``unused_session_lifetime`` (4 s here, so
    closed tabs free their work quickly); a session whose browser is still loading the page's
    scripts from a busy server would be dropped too, then built a second time for its websocket.
    """
    ctx = doc.session_context
    state: dict[str, Any] = {}

    def release() -> None:
        session = state.pop("session", None)
        state["done"] = True
        if session is not None and session.expiration_blocked:
            session.unblock_expiration()

    def block() -> None:  # the next tick: the session exists now
        session = getattr(ctx, "_session", None)
        if session is None or state.get("done") or session.connection_count > 0:
            return
        session.block_expiration()
        state["session"] = session
        IOLoop.current().call_later(CONNECT_GRACE_S, release)

    loop = IOLoop.current()
    doc.add_next_tick_callback(block)
    pn.state.onload(lambda: loop.add_callback(release))  # on the event loop, as block() ran


class _Sessions:
    """The open sessions' apps (weakly), and handing memory back once sessions close."""

    def __init__(self) -> None:
        self.apps: weakref.WeakSet = weakref.WeakSet()
        self.open = 0
        self._release: Any = None
        #: the server's Bokeh application contexts (their sessions, pending or open)
        self.contexts: list[Any] = []
        #: sessions were open when start-up objects were frozen: freeze again once none is
        self.refreeze = False

    def watch(self, server: Any) -> None:
        """Know the sessions of this (Panel/Bokeh) server, also those still being built."""
        self.contexts = list(server._tornado._applications.values())

    def busy(self) -> bool:
        """Whether any session exists, open or still being built (Bokeh lists a session as
        pending before it makes the session's document)."""
        return self.open > 0 or any(c._sessions or c._pending_sessions for c in self.contexts)

    def frozen(self) -> None:
        """Start-up objects were just frozen (:func:`freeze_startup`, on the warm-up thread): any
        session that existed then, with its document, was frozen with them."""
        self.refreeze = self.busy()
        if self.refreeze:
            log.debug("sessions open while start-up objects were frozen: frozen again once all close")

    def opened(self, app: Any, doc: Any) -> None:
        self.apps.add(app)
        self.open += 1
        loop = IOLoop.current()
        log.info("session opened (%d open)", self.open)

        def closed(_ctx: Any) -> None:
            app.close()
            self.open -= 1
            log.info("session closed (%d open)", self.open)
            loop.add_callback(self._release_later, loop)

        doc.on_session_destroyed(closed)

    def _release_later(self, loop: Any) -> None:
        if self._release is not None:
            loop.remove_timeout(self._release)
        self._release = loop.call_later(RELEASE_AFTER_S, self.release)

    def release(self) -> None:
        """Collect what closed sessions left (their documents, plots and pages form reference
        cycles that the collector's rare full passes would keep for long; :func:`collect_all`)
        and hand freed memory back to the system. At DEBUG, also logs how many Panel objects
        are still alive (:func:`panel_objects`; 0 once every session has closed)."""
        self._release = None
        t0 = time.process_time()
        found = collect_all()
        if self.refreeze and not self.busy():
            found += self._refreeze()
        drop_caches()
        t1 = time.process_time()
        _malloc_trim()
        t2 = time.process_time()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Panel objects alive after sessions closed: %d (%d open)", panel_objects(), self.open)
        log.info(
            "memory after sessions closed: %d open, %d apps alive, %.0f MB resident",
            self.open, len(self.apps), _rss_mb(),
        )  # fmt: skip
        log.debug(
            "collected %d objects in %.0f ms, memory handed back in %.0f ms (CPU)",
            found, 1000 * (t1 - t0), 1000 * (t2 - t1),
        )  # fmt: skip

    def _refreeze(self) -> int:
        """Collect the sessions frozen with start-up objects (a session opened while the server
        warmed up: in the permanent generation, the collector never looked at it again, and it
        stayed for good), then freeze start-up objects again. Once, with no session left."""
        self.refreeze = False
        gc.unfreeze()
        found = collect_all()
        gc.freeze()
        log.debug(
            "sessions frozen with start-up objects collected (%d objects); frozen again: %d",
            found, gc.get_freeze_count(),
        )  # fmt: skip
        return found


SESSIONS = _Sessions()


def collect_all(passes: int = 4) -> int:
    """Collect until a pass finds nothing more (at most ``passes``); returns what was found.

    One pass is not enough for what sessions leave: it runs the finalizers and weak-reference
    callbacks of what it frees, and those let go of more cycles (a closed session's link field
    and its watchers, one per session that never connected), which only the next pass finds.
    Left for the interpreter's next full collection (rare: start-up's objects are frozen), they
    stayed among the sessions' freed memory and kept the allocator from handing it back."""
    found = 0
    for _ in range(passes):
        n = gc.collect()
        found += n
        if n == 0:
            break
    return found


def drop_caches() -> None:
    """Empty the interpreter's caches that keep small objects sessions made: the type attribute
    cache (the names looked up last, 4,096 entries, many made by sessions: Param looks up
    ``f"_{name}__abstract"`` on every class it checks) and the ``re`` module's compiled patterns.

    Each such survivor keeps the whole 1 MiB block of the allocator it sits in (Python's small
    object allocator hands a block back only once every object in it is gone): the memory a crowd
    of sessions took stayed pinned by a few hundred of them. Both caches refill as they are used.
    """
    sys._clear_type_cache()
    re.purge()


def panel_objects() -> int:
    """How many Panel components are alive, those made at start-up left out (frozen by
    :func:`freeze_startup`, they are not in ``gc.get_objects()``): what sessions left behind
    once every session has closed (a DEBUG line after each collection)."""
    from panel.viewable import Viewable

    return sum(1 for o in gc.get_objects() if isinstance(o, Viewable))


def _malloc_trim() -> None:
    """Return the C heap's free pages to the system (glibc; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return float("nan")


# --------------------------------------------------------------------------- serving
def configure_logging() -> None:
    """nnvitals' log lines on stderr, each once: INFO, or the level in ``$NNVITALS_LOG_LEVEL``.

    The "nnvitals" logger writes with its own handler and does not pass its lines on to the root
    logger: a library that logs through the root logger's module functions (Bokeh's
    ``logging.debug(...)`` when a browser's patch names a model already gone) would otherwise have
    ``logging.basicConfig`` give the root a handler, and every line would then be printed twice.
    The root gets a handler of its own first (warnings and errors of other libraries, once, in the
    same format), so that implicit ``basicConfig`` never adds another.
    """
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    logger = logging.getLogger("nnvitals")
    if not any(getattr(h, "_nnvitals", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h._nnvitals = True
        logger.addHandler(h)
    logger.propagate = False
    level = os.environ.get("NNVITALS_LOG_LEVEL", "INFO").upper()
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h.setLevel(logging.WARNING)
        root.addHandler(h)


def limit_blas_threads() -> None:
    """One thread for NumPy's and SciPy's OpenBLAS in the server process.

    The server calls BLAS from many threads at once (analysis tasks, the page builder, Panel's
    callbacks) while PyTorch's OpenMP threads run the kernels. OpenBLAS's own thread pool (its
    pthreads build, as NumPy and SciPy ship it) is then used from OpenMP-busy threads, which it
    reports with "OpenBLAS Warning : Detect OpenMP Loop and this application may hang", and it
    oversubscribes the cores. With one thread each call runs in its caller's thread: no pool, no
    warning, no hang; the server's parallelism comes from the sessions and the runner's tasks.
    ``nnvitals serve`` also sets ``OPENBLAS_NUM_THREADS=1`` before NumPy loads (no pool is started
    at all), unless it is set already.
    """
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS so the limit covers it)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - dependencies of the package
        pass


def _warm(settings: AppSettings) -> None:
    """Compute the Spectra page's result and import the plotting code while the server starts,
    then make what start-up left permanent for the garbage collector (:func:`freeze_startup`).
    Each step waits while pages are on their way to browsers (:class:`Loading`)."""
    end = time.monotonic() + WARM_WAIT_S

    def step_aside() -> None:
        if not LOADING.wait_quiet(max(0.0, end - time.monotonic())):
            log.debug("warm-up goes on with %d pages on their way", LOADING.loading)

    try:
        step_aside()
        from analyses.core.export import ensure_backends
        from analyses.spectra import views
        from analyses.spectra.analysis import SpectralAnalysis

        res = SpectralAnalysis(
            model=settings.default_model, show_progress=False, runner=settings.runner
        ).run()
        step_aside()
        import holoviews as hv

        ensure_backends()
        hv.render(views.metric_by_layer(res), backend="bokeh")
        step_aside()
        from .pages import vitals

        vitals.warm(
            settings.default_model
        )  # the landing page's store keys: its first session fills from memory
        log.info("warmed up: %s result in the store", settings.default_model)
    except Exception as e:  # the page runs it again and shows any error
        log.warning("warm-up failed: %s", e)
    freeze_startup()


def freeze_startup() -> None:
    """Move every object alive after start-up (modules, classes, caches of PyTorch, Bokeh, Panel,
    HoloViews: ~400,000 here) into the collector's permanent generation (``gc.freeze``).

    Each closed session is followed by full collections (Panel's own after a document is
    destroyed, and :meth:`_Sessions.release`): on the event loop, each scanned every one of those
    objects again, 0.1-0.2 s each on this 2-core machine, and the interpreter's automatic full
    collections did the same while pages were built. Frozen, they are never scanned again; the
    collections see what sessions made, and still free it. Done once, after the warm-up; a
    session open at that moment (a user who came as the server started) is frozen too, and
    collected once every session has closed (:meth:`_Sessions._refreeze`).
    """
    gc.collect()
    gc.freeze()
    log.debug("start-up objects frozen for the collector: %d", gc.get_freeze_count())
    SESSIONS.frozen()


def _watch_loop_lag(io_loop, every_ms: int = 100, report_s: float = 5.0) -> None:
    """DEBUG log of how late the event loop runs a 100 ms timer (how long other work blocked it)."""

    from tornado.ioloop import PeriodicCallback as TornadoPeriodic

    state = {"last": time.perf_counter(), "worst": 0.0, "since": time.perf_counter()}

    def tick() -> None:
        now = time.perf_counter()
        state["worst"] = max(state["worst"], now - state["last"] - every_ms / 1000)
        state["last"] = now
        if now - state["since"] >= report_s:
            log.debug("event loop lag: worst %.0f ms in the last %.0f s", 1000 * state["worst"], report_s)
            state["worst"], state["since"] = 0.0, now

    io_loop.add_callback(lambda: TornadoPeriodic(tick, every_ms).start())


def quiet_closed_connections(asyncio_loop: Any) -> None:
    """A browser that goes away while a message is on its way to it is not an error of the server:
    Panel writes some patches as tasks of their own (``panel.io.document.dispatch_tornado``) and a
    closed tab leaves their ``WebSocketClosedError`` unretrieved, which asyncio logs as an error
    with a traceback. Those become one INFO line; every other exception keeps asyncio's handling."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    def handler(loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, WebSocketClosedError | StreamClosedError):
            log.info("a browser went away while a message was on its way to it (%s)", type(exc).__name__)
            return
        loop.default_exception_handler(context)

    asyncio_loop.set_exception_handler(handler)


def _hardening(basic_auth: str | None, server_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``pn.serve`` options of :mod:`dashboard.auth` (security headers, the ``/components/`` route,
    the password login), merged with the caller's own ``extra_patterns``/``transforms`` (popped)."""
    from . import auth

    opts = auth.server_options(
        basic_auth,
        login_template=TEMPLATES / "login.html",
        logout_template=TEMPLATES / "logout.html",
    )
    for key in ("extra_patterns", "transforms"):
        opts[key] = [*opts[key], *(server_kwargs.pop(key, None) or [])]
    return opts


def serve(
    settings: AppSettings | None = None,
    *,
    port: int = 5006,
    address: str | None = None,
    show: bool = False,
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    oauth: dict[str, Any] | None = None,
    allow_websocket_origin: list[str] | None = None,
    start: bool = True,
    warm: bool = True,
    **server_kwargs: Any,
):
    """Serve the app (blocks while ``start``); returns the Panel/Bokeh server.

    ``basic_auth``: a password, or the path of a JSON file mapping user -> password.
    ``oauth``: Panel's OAuth options without the ``oauth_`` prefix (``provider``, ``key``,
    ``secret``, ``redirect_uri``, ``extra_params``, ``encryption_key``, ...).
    """
    settings = settings or AppSettings()
    configure_logging()
    limit_blas_threads()
    if os.environ.get("NNVITALS_BOKEH_OWN") == "1":  # to rule the speedups out, or compare
        log.info("NNVITALS_BOKEH_OWN=1: Bokeh's own methods, no speedups (dashboard/speedups.py)")
    elif speedups.install():
        speedups.pin_settings()
    else:
        log.info("Bokeh %s: its own methods (dashboard/speedups.py was written for 3.x)", bokeh.__version__)
    page_resources.install()
    write_queue.install()  # a change queued behind another is written, never left queued
    # Panel's callbacks run on the event loop, never on a thread pool: a change made from a pool
    # thread reaches the document as one scheduled tick per model, Bokeh sends a tick's new models
    # only once the tick ends, and a change sent at once in between (Panel's usual path) named
    # models the browser had not been sent yet ("reference p… isn't known": the page stopped
    # updating). Heavy work runs on the jobs' executor and the page builder thread instead.
    pn.config.nthreads = None
    jobs.configure(settings.runs_at_once)
    if settings.runner != "threads" and not settings.dask_dashboard:
        from analyses.core.runner import Runner

        settings = dataclasses.replace(settings, dask_dashboard=Runner(settings.runner).dashboard_link)
    auth: dict[str, Any] = {}
    if basic_auth or (oauth and oauth.get("provider")):
        auth["cookie_secret"] = cookie_secret or secrets.token_hex(32)
        if not cookie_secret:
            log.info("no --cookie-secret: a random one is used to sign cookies")
        if basic_auth:
            log.info("logins are held in this server's memory: they end when the server restarts")
        for k, v in (oauth or {}).items():
            if v not in (None, "", {}):
                auth[f"oauth_{k}"] = v
    elif cookie_secret:
        auth["cookie_secret"] = cookie_secret
    chunk = 4 * 1000 * 1000
    kwargs: dict[str, Any] = dict(
        port=port,
        address=address,
        show=show,
        start=False,
        title=settings.title,
        static_dirs={"assets": str(ASSETS)},
        websocket_max_message_size=max(64 * 1024 * 1024, 4 * chunk),
        check_unused_sessions_milliseconds=2000,
        unused_session_lifetime_milliseconds=4000,
        **auth,
    )
    if allow_websocket_origin:
        kwargs["websocket_origin"] = allow_websocket_origin
    kwargs.update(_hardening(basic_auth, server_kwargs))
    kwargs.update(server_kwargs)
    if warm:
        threading.Thread(target=_warm, args=(settings,), name="nnvitals-warm", daemon=True).start()
    from .app import build_app

    server = pn.serve({"/": lambda: build_app(settings)}, **kwargs)
    SESSIONS.watch(server)
    turns.install(server)  # new sessions take turns, leaving the event loop to clicks between
    quiet_closed_connections(server.io_loop.asyncio_loop)
    where = address or "localhost"
    log.info(
        "nnvitals serving on http://%s:%s/ (runner: %s%s)",
        where,
        server.port,
        settings.runner_text,
        f", Dask dashboard {settings.dask_dashboard}" if settings.dask_dashboard else "",
    )
    if log.isEnabledFor(logging.DEBUG):
        _watch_loop_lag(server.io_loop)
    if start:
        server.start()
        try:
            server.io_loop.start()
        except KeyboardInterrupt:
            pass
        finally:
            jobs.executor().shutdown(wait=False, cancel_futures=True)
    return server

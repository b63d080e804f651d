"""The nnvitals web app: one session's shell (template, sidebar, pages) and the server around it.

:func:`build_app` makes what one browser session sees: a Bootstrap template whose sidebar holds
the navigation between the five analysis pages, the model picker and the current page's
settings, and whose main area shows the current page. Pages are built the first time they
are opened; ``?page=<slug>`` in the URL opens (and follows) the current page.

:func:`serve` runs it with Panel's server: every JavaScript and CSS file comes from the app
itself (Panel's ``server`` resources, a template without web fonts, our own login page), the
analyses run on a shared thread pool (or Dask) so the event loop stays free, sessions share
nothing but the content-addressed result store, and a closed session cancels its work and
deletes its uploads. With ``basic_auth`` nothing but the login page is served to anonymous
visitors, and the header names the user with a "Log out" link. :mod:`dashboard.auth` hardens the
server: the login form (CSRF token, per-client lockout, the requested page kept), logouts that
end the login server-side, security headers on every response, Panel's file routes.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import panel as pn
import param

from .components import jobs
from .components.model_picker import ModelPicker
from .settings import AppSettings

log = logging.getLogger("nnvitals.app")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
TEMPLATES = Path(__file__).resolve().parent / "templates"
LOGO = ASSETS / "logo.svg"
CSS = ASSETS / "nnvitals.css"
#: Panel extensions every session may need (loaded up front: pages are built lazily)
EXTENSIONS = ("tabulator", "filedropper")


@dataclass(frozen=True)
class PageSpec:
    """One entry of the navigation: URL slug, title, and how to build the page.

    ``page_of``: the slug of another entry whose page this one shows (one page object per
    session), opened on its tab ``tab`` (the Bounds page holds IBP tightness and Lipschitz).
    """

    slug: str
    title: str
    factory: Callable[..., Any]
    page_of: str | None = None
    tab: str | None = None


def _lazy(module: str, cls: str) -> Callable[..., Any]:
    """A page constructor that imports its module on first use (a session loads only the pages it opens)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        mod = importlib.import_module(f"{__package__}.pages.{module}")
        return getattr(mod, cls)(*args, **kwargs)

    make.__name__ = cls
    return make


def page_specs() -> list[PageSpec]:
    """The analysis pages, in navigation order (Spectra first: the landing page)."""
    return [
        PageSpec("spectra", "Spectra", _lazy("spectra", "SpectraPage")),
        PageSpec("orbits", "Orbits", _lazy("orbits", "OrbitsPage")),
        PageSpec("bounds", "IBP tightness", _lazy("bounds", "BoundsPage"), tab="ibp"),
        PageSpec("lipschitz", "Lipschitz", _lazy("bounds", "BoundsPage"), page_of="bounds", tab="lipschitz"),
        PageSpec("connectivity", "Connectivity", _lazy("connectivity", "ConnectivityPage")),
    ]


def runner_markdown(settings: AppSettings) -> str:
    """The sidebar's line saying which runner executes the analyses (with the Dask dashboard link)."""
    text = f"**Runner**: {settings.runner_text}"
    if settings.dask_dashboard:
        text += f" · [Dask dashboard]({settings.dask_dashboard})"
    return text


def extension() -> None:
    """Load the Panel extensions the app uses (call once in a notebook before displaying pages)."""
    pn.extension(*EXTENSIONS, notifications=True)


class NNVitalsApp(pn.viewable.Viewer):
    """One session's app: navigation, model picker, the current page."""

    page = param.Selector(default="spectra", objects=["spectra"], doc="Slug of the page shown.")

    def __init__(self, settings: AppSettings | None = None, **params: Any):
        self.specs = {s.slug: s for s in page_specs()}
        self.param.page.objects = list(self.specs)
        super().__init__(**params)
        self.settings = settings or AppSettings()
        self.picker = ModelPicker(
            allow_dirs=self.settings.allow_dirs,
            max_upload_mb=self.settings.max_upload_mb,
            default=self.settings.default_model,
        )
        self.pages: dict[str, Any] = {}
        self._nav = pn.widgets.RadioButtonGroup(
            options={s.title: s.slug for s in self.specs.values()},
            value=self.page,
            orientation="vertical",
            button_type="primary",
            button_style="outline",
            sizing_mode="stretch_width",
            css_classes=["nnv-nav"],
        )
        self._nav.link(self, value="page", bidirectional=True)
        self._controls = pn.Column(sizing_mode="stretch_width")
        self._main = pn.Column(sizing_mode="stretch_width", css_classes=["nnv-main"])
        self._show()
        self.param.watch(self._show, "page")

    # ------------------------------------------------------------------ pages
    def get_page(self, slug: str):
        """The page ``slug`` of this session (built on first use; shared pages open on their tab)."""
        spec = self.specs[slug]
        if spec.page_of is not None:
            page = self.get_page(spec.page_of)
        else:
            if slug not in self.pages:
                self.pages[slug] = spec.factory(picker=self.picker, settings=self.settings)
            page = self.pages[slug]
        if spec.tab is not None and hasattr(page, "show_tab"):
            page.show_tab(spec.tab)
        return page

    def _show(self, *_: Any) -> None:
        page = self.get_page(self.page)
        self._controls.objects = [page.controls]
        self._main.objects = [page.main]

    # ------------------------------------------------------------------ layout
    def runner_pane(self) -> pn.pane.Markdown:
        from .style import RUNNER

        return pn.pane.Markdown(
            runner_markdown(self.settings),
            css_classes=["nnv-runner"],
            styles=RUNNER,
            sizing_mode="stretch_width",
        )

    def sidebar(self) -> list[Any]:
        return [
            pn.pane.Markdown("#### Analyses", margin=(0, 10)),
            self._nav,
            pn.pane.Markdown("#### Model", margin=(10, 10, 0, 10)),
            self.picker,
            self._controls,
            self.runner_pane(),
        ]

    def template(self) -> pn.template.BootstrapTemplate:
        """The served page: Bootstrap template (no web fonts, everything from this server)."""
        in_server = jobs.in_server()
        tpl = pn.template.BootstrapTemplate(
            title=self.settings.title,
            logo="assets/logo.svg" if in_server else str(LOGO),
            favicon=str(LOGO),
            sidebar=self.sidebar(),
            main=[self._main],
            sidebar_width=300,
            header_background="#1f4e79",
        )
        account = account_pane()
        if account is not None:
            tpl.header.append(account)
        if in_server:
            tpl.config.css_files = ["assets/nnvitals.css"]
        else:
            tpl.config.raw_css = [CSS.read_text()]
        return tpl

    def __panel__(self):
        return pn.Row(pn.Column(*self.sidebar(), width=300), self._main, sizing_mode="stretch_width")

    def close(self) -> None:
        """Cancel every running job and delete the uploads (a served session does this itself)."""
        for page in self.pages.values():
            for name in ("jobs", "compare_jobs"):
                panel = getattr(page, name, None)
                if panel is not None:
                    panel.close("app closed")
        self.picker.close()


def account_pane() -> pn.pane.HTML | None:
    """The header's "user · Log out" (a served session with a login; None otherwise)."""
    user = pn.state.user
    ctx = pn.state.curdoc.session_context if pn.state.curdoc is not None else None
    logout = getattr(ctx, "logout_url", None)
    if not user or user == "guest" or not logout:
        return None
    return pn.pane.HTML(
        f'<span class="nnv-user" title="logged in as {html.escape(user)}">{html.escape(user)}</span>'
        f' · <a class="nnv-logout" href="{html.escape(logout)}" style="color: inherit">Log out</a>',
        styles={"color": "white", "margin-left": "auto", "font-size": "0.95em"},
        css_classes=["nnv-account"],
        margin=(0, 10),
    )


def build_app(settings: AppSettings | None = None) -> pn.template.BootstrapTemplate:
    """One session's app (what :func:`serve` serves at ``/``)."""
    extension()
    _canvas_plots()
    app = NNVitalsApp(settings)  # its job panels and picker clean up when the session closes
    if jobs.in_server():
        loc = pn.state.location
        if loc is not None:
            loc.sync(app, {"page": "page"})
    return app.template()


def _canvas_plots() -> None:
    """Draw bokeh plots on a 2D canvas, not WebGL: with a few hundred points it is faster to
    start, and headless or GPU-less browsers (software GL) do not stall on it."""
    import holoviews as hv

    from analyses.core.export import ensure_backends

    ensure_backends()
    hv.Store.renderers["bokeh"].webgl = False


# --------------------------------------------------------------------------- serving
def _configure_logging() -> None:
    """nnvitals' log lines on stderr: INFO, or the level in ``$NNVITALS_LOG_LEVEL`` (e.g. DEBUG)."""
    logger = logging.getLogger("nnvitals")
    if not logger.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(h)
    level = os.environ.get("NNVITALS_LOG_LEVEL", "INFO").upper()
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


def _warm(settings: AppSettings) -> None:
    """Compute the landing page's result and import the plotting code while the server starts."""
    try:
        from analyses.core.export import ensure_backends
        from analyses.spectra import views
        from analyses.spectra.analysis import SpectralAnalysis

        res = SpectralAnalysis(
            model=settings.default_model, show_progress=False, runner=settings.runner
        ).run()
        import holoviews as hv

        ensure_backends()
        hv.render(views.metric_by_layer(res), backend="bokeh")
        log.info("warmed up: %s result in the store", settings.default_model)
    except Exception as e:  # the page runs it again and shows any error
        log.warning("warm-up failed: %s", e)


def _watch_loop_lag(io_loop, every_ms: int = 100, report_s: float = 5.0) -> None:
    """DEBUG log of how late the event loop runs a 100 ms timer (how long other work blocked it)."""
    import time

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
    _configure_logging()
    pn.config.nthreads = settings.num_threads
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
    server = pn.serve({"/": lambda: build_app(settings)}, **kwargs)
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

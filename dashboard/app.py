"""The nnvitals web app: one session's shell (template, sidebar, pages).

:func:`build_app` makes what one browser session sees: a Bootstrap template whose sidebar holds
the navigation between the five analysis pages, the model picker and the current page's
settings, and whose main area shows the current page. Pages are built the first time they
are opened; ``?page=<slug>`` in the URL opens (and follows) the current page.

:func:`dashboard.server.serve` (also named ``dashboard.app.serve``) runs it with Panel's server: every JavaScript and CSS file comes from the app
itself (Panel's ``server`` resources, a template without web fonts, our own login page), the
analyses run on a shared thread pool (or Dask) so the event loop stays free, sessions share
nothing but the content-addressed result store, and a closed session cancels its work and
deletes its uploads. With ``basic_auth`` nothing but the login page is served to anonymous
visitors, and the header names the user with a "Log out" link. :mod:`dashboard.auth` hardens the
server: the login form (CSRF token, per-client lockout, the requested page kept), logouts that
end the login server-side, security headers on every response, Panel's file routes.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import panel as pn
import param
from panel.io.state import set_curdoc
from tornado.ioloop import IOLoop

from analyses import registry

from .components import jobs, links, timer
from .components.model_picker import ModelPicker
from .components.on_loop import next_tick
from .server import (  # noqa: F401  (serve and the server's helpers, also named from here)
    ATTACH_WAIT_S,
    LOADING,
    PAGES_AHEAD,
    SESSIONS,
    configure_logging,
    keep_until_connected,
    limit_blas_threads,
    page_builder,
    serve,
    serve_locally,
)
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
    view: bool = False


def _lazy(path: str) -> Callable[..., Any]:
    """A constructor of the page class at ``"module:Class"`` that imports its module on first use
    (a session loads only the pages it opens)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        return registry.resolve(path)(*args, **kwargs)

    make.__name__ = path.rpartition(":")[2]
    return make


def page_specs() -> list[PageSpec]:
    """The navigation, from the registry's entries (:mod:`analyses.registry`): each entry's title,
    page and tab. An entry with a page of its own has its family's slug (``?page=bounds``), one shown
    on another entry's page its command's (``?page=lipschitz``). Analyses of one model come first,
    in the registry's order, then those of a pair of models; an entry without a page (a command-line
    analysis) has no entry. The registry's views (pages reading several analyses) come first: the
    first page is the landing page."""
    # one model, then a pair of models, then a series of checkpoints (the trajectory)
    entries = sorted(
        (e for e in registry.ENTRIES if e.page),
        key=lambda e: (e.positional[0].param == "series", len(e.positional)),
    )
    slugs = {e.command: e.command if e.page_of else e.family for e in entries}
    views = [PageSpec(v.slug, v.title, _lazy(v.page), view=True) for v in registry.VIEWS]
    return views + [
        PageSpec(
            slugs[e.command],
            e.title,
            _lazy(e.page),
            page_of=slugs[e.page_of] if e.page_of else None,
            tab=e.tab,
        )
        for e in entries
    ]


def runner_markdown(settings: AppSettings) -> str:
    """The sidebar's plain line saying where the analyses run (with the Dask dashboard link)."""
    text = settings.runner_plain
    if settings.dask_dashboard:
        text += f" · [Dask dashboard]({settings.dask_dashboard})"
    return text


def extension() -> None:
    """Load the Panel extensions the app uses (call once in a notebook before displaying pages)."""
    pn.extension(*EXTENSIONS, notifications=True)


class NNVitalsApp(pn.viewable.Viewer):
    """One session's app: navigation, model picker, the current page.

    ``defer``: start with the frame only (navigation, picker, an "opening" note) and build the
    current page later with :meth:`load` (what a served session does: the page is built off the
    server's event loop); otherwise the page is built now.
    """

    page = param.Selector(
        default=None, objects=[], check_on_set=True, doc="Slug of the page shown (default: the landing page)."
    )

    def __init__(
        self,
        settings: AppSettings | None = None,
        defer: bool = False,
        link: links.Link | str | None = None,
        link_base: str = "",
        **params: Any,
    ):
        self.specs = {s.slug: s for s in page_specs()}
        self.param.page.objects = list(self.specs)
        self.param.page.default = next(iter(self.specs))
        if isinstance(link, str):
            link = links.read_link(link, {s.slug: s.title for s in self.specs.values()})
        if link is not None and link.page is not None:
            params.setdefault("page", link.page)
        params.setdefault("page", self.param.page.default)
        super().__init__(**params)
        self.settings = settings or AppSettings()
        self.picker = ModelPicker(
            allow_dirs=self.settings.allow_dirs,
            max_upload_mb=self.settings.max_upload_mb,
            default=self.settings.default_model,
        )
        #: the "Copy link" button and field; the start of this session's address (links are relative without)
        self.link_bar = links.LinkBar()
        self.link_base = link_base
        self._link: links.Link | None = None
        self._link_notes: list[str] = []
        if link is not None:
            self._open_link(link)
        self.pages: dict[str, Any] = {}
        self._pages_lock = threading.RLock()
        self._closed = False
        self._give_back: Callable[[], None] = lambda: None  # a page built ahead (load)
        self._arrived: Callable[[], None] = lambda: None  # the page on its way is shown (load)
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
        if defer:
            title = self.specs[self.page].title
            self._main.objects = [
                pn.pane.Markdown(f"*Opening {title} …*", css_classes=["nnv-opening"], margin=(10, 10))
            ]
        else:
            self._show()
        self.param.watch(self._show, "page")
        self.param.watch(self._update_link, "page")
        self.picker.param.watch(self._update_link, "model")
        self._update_link()

    # ------------------------------------------------------------------ links
    def _open_link(self, link: links.Link) -> None:
        """Open a link (see :mod:`dashboard.components.links`): its model now (through the picker), its
        settings and selection when its page is built; what is ignored or refused is noted."""
        self._link_notes = list(link.notes)
        if link.model is not None:
            picked, problem = links.check_model(link.model, self.picker)
            if problem:
                self._link_notes.append(problem)
            else:
                link.model_picked = picked
                self.picker.chosen = True  # a page opens on the link's model, never a demo of its own
                self.picker.select(picked)
        spec = self.specs[link.page or self.param.page.default]
        if spec.view and (link.settings or link.selection):
            keys = ", ".join([*link.settings, *link.selection])
            self._link_notes.append(
                f"Link: the {spec.title} page has no settings or selection ({keys} ignored)."
            )
        elif link.settings or link.selection:
            self._link = link

    def _link_for(self, slug: str) -> dict[str, Any]:
        """The link for the page ``slug`` being built (once: the page the link opened)."""
        link = self._link
        if link is None:
            return {}
        spec = self.specs[link.page or self.param.page.default]
        if (spec.page_of or spec.slug) != slug:
            return {}
        self._link = None
        return {"link": link}

    def _report_link(self, line: str) -> None:
        self._link_notes.append(line)
        self._update_link()

    def shown_page(self) -> Any:
        """The current page's object when it is built (None while it is being built)."""
        spec = self.specs[self.page]
        return self.pages.get(spec.page_of or spec.slug)

    def link(self) -> str:
        """The link to the view on show now (relative, ``?page=…``, outside a served session)."""
        query, _notes = links.view_query(self)
        return self.link_base + query

    def _update_link(self, *_: Any) -> None:
        if self._closed:
            return
        query, notes = links.view_query(self)
        self.link_bar.set_link(self.link_base + query)
        self.link_bar.show_notes([*self._link_notes, *notes])

    # ------------------------------------------------------------------ pages
    def get_page(self, slug: str):
        """The page ``slug`` of this session (built on first use; shared pages open on their tab)."""
        spec = self.specs[slug]
        with self._pages_lock:  # the page builder thread and a click may ask at the same time
            if spec.page_of is not None:
                page = self.get_page(spec.page_of)
            else:
                if slug not in self.pages:
                    extra = {"app": self} if spec.view else self._link_for(slug)
                    page = spec.factory(picker=self.picker, settings=self.settings, **extra)
                    if hasattr(page, "link_report"):
                        page.link_report = self._report_link
                    self._link_notes += getattr(page, "link_notes", [])
                    self.pages[slug] = page
                page = self.pages[slug]
        if spec.tab is not None and hasattr(page, "show_tab"):
            page.show_tab(spec.tab)
        return page

    def _show(self, *_: Any) -> None:
        self._attach(self.get_page(self.page))

    def _attach(self, page: Any) -> None:
        """Show ``page``: its settings in the sidebar, its main column in the main area."""
        from .components.page import wire_stale

        jobs_panel = getattr(page, "jobs", None)
        if jobs_panel is not None:
            wire_stale(page.main, jobs_panel)  # pages whose main column is not page_main's
        self._controls.objects = [page.controls]
        self._main.objects = [page.main]
        if hasattr(page, "watch_link"):
            page.watch_link(self._update_link)
        self._update_link()

    def load(self, doc: Any) -> Future | None:
        """Build the current page of this (served) session on the page builder thread, then show it
        from the event loop once the browser has loaded the frame (see :func:`page_builder`);
        returns the builder's future. Call it on the event loop thread, while the session is built.

        The page is built at once, while the browser loads the scripts, unless
        :data:`PAGES_AHEAD` pages already wait for their browsers: then it is built when this
        session's browser connects, and this returns None.

        The page is shown only after the browser loaded: changes made between the browser's
        fetch of the document and its "ready" message are dropped by Panel (it serializes the
        whole document on connection), and the page would never arrive.
        """
        slug = self.page
        loop = IOLoop.current()
        lock = threading.Lock()
        timer.hold(doc)  # the page's first results wait for the page (see timer.hold)
        state: dict[str, Any] = {"built": False, "loaded": False}

        def show_and_wait(page: Any, problem: str | None, built: float) -> None:
            shown = threading.Event()

            def attach() -> None:  # a tick of the session, holding its document's lock
                try:
                    if self._closed or self.page != slug:
                        return  # gone, or another page was picked meanwhile (and shown)
                    if page is not None:
                        self._attach(page)
                    else:
                        self._main.objects = [pn.pane.Alert(problem, alert_type="danger")]
                finally:
                    # after the ticks it queued: then the session's timers may show results
                    if not next_tick(doc, shown_now):  # the session has just gone
                        shown_now()

            def shown_now() -> None:
                timer.release(doc)
                self._arrived()
                shown.set()

            def schedule() -> None:  # on the event loop (Bokeh's session callbacks are its own)
                if self._closed:
                    shown.set()
                    return
                try:
                    with set_curdoc(doc):
                        pn.state.execute(attach, schedule=True)
                except Exception:  # the session has just gone
                    shown.set()

            loop.add_callback(schedule)
            # one page at a time on the event loop: others' clicks wait for one page at most
            end = time.monotonic() + ATTACH_WAIT_S
            while not shown.wait(0.25) and not self._closed and time.monotonic() < end:
                pass
            log.debug("%s page shown %.0f ms after it was built", slug, 1000 * (time.perf_counter() - built))

        def build() -> None:
            if self._closed:
                return
            t0 = time.perf_counter()
            page, problem = None, None
            try:
                with set_curdoc(doc):
                    page = self.get_page(slug)
            except Exception as e:  # a bug: the session says so, the log has the traceback
                log.error("building the %s page failed", slug, exc_info=e)
                problem = f"internal error, a bug in nnvitals ({type(e).__name__}: {e})"
            built = time.perf_counter()
            log.debug("%s page built in %.0f ms", slug, 1000 * (built - t0))
            if self._closed:  # the session ended while its page was built
                self.close()
                return
            with lock:
                state.update(built=True, page=page, problem=problem, at=built)
                ready = state["loaded"]
            if ready:
                show_and_wait(page, problem, built)

        def loaded() -> None:
            if ahead is None:  # built now, then shown at once: its browser is here
                page_builder().submit(build)
                return
            ahead()
            with lock:
                state["loaded"] = True
                ready = state["built"]
            if ready:
                page_builder().submit(show_and_wait, state["page"], state["problem"], state["at"])

        self._arrived = LOADING.begin()  # the warm-up steps aside until the page is shown
        ahead = PAGES_AHEAD.claim()
        pn.state.onload(loaded)
        if ahead is None:
            state["loaded"] = True  # by the time build() runs
            log.debug("%s page built when its browser connects (%d built ahead)", slug, PAGES_AHEAD.ahead)
            return None
        self._give_back = ahead  # a session that ends before its browser connected
        return page_builder().submit(build)

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
        from .components.page import section_heading

        return [
            self.link_bar,
            section_heading("Analyses", margin=(0, 10)),
            self._nav,
            section_heading("Model", margin=(10, 10, 0, 10)),
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
            main=[self.link_bar.note, self._main],
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
        main = pn.Column(self.link_bar.note, self._main, sizing_mode="stretch_width")
        return pn.Row(pn.Column(*self.sidebar(), width=300), main, sizing_mode="stretch_width")

    def close(self) -> None:
        """Cancel every running job and delete the uploads (a served session does this when it ends)."""
        self._closed = True
        self._give_back()
        self._arrived()
        with self._pages_lock:
            pages = list(self.pages.values())
        for page in pages:
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


def requested_page(app_specs: dict[str, PageSpec]) -> str | None:
    """The page named by ``?page=<slug>`` in this session's URL (None when absent or unknown)."""
    values = pn.state.session_args.get("page") if pn.state.curdoc is not None else None
    if not values:
        return None
    slug = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else str(values[0])
    return slug if slug in app_specs else None


def build_app(settings: AppSettings | None = None) -> pn.template.BootstrapTemplate:
    """One session's app (what :func:`serve` serves at ``/``).

    In a served session this builds the frame only (navigation, model picker): the page itself
    is built on the page builder thread and shown when ready (:meth:`NNVitalsApp.load`), so a
    new session costs the event loop little and the sessions already open stay responsive.
    """
    extension()
    _canvas_plots()
    served = jobs.in_server()
    link, base = None, ""
    if served:  # the URL's link: page, model, settings, selection (dashboard.components.links)
        args = pn.state.session_args if pn.state.curdoc is not None else {}
        link = links.read_link(args or {}, {s.slug: s.title for s in page_specs()})
        base = links.base_url()
    app = NNVitalsApp(settings, defer=served, link=link, link_base=base)
    if served:
        doc = pn.state.curdoc
        serve_locally(doc)
        keep_until_connected(doc)
        loc = pn.state.location
        if loc is not None:
            # an unknown ?page= is refused by the selector and noted by read_link: the session
            # opens on the landing page, never on a page that does not exist
            loc.sync(app, {"page": "page"}, on_error=lambda _refused: None)
        app.load(doc)
        SESSIONS.opened(app, doc)
    return app.template()


def _canvas_plots() -> None:
    """Draw bokeh plots on a 2D canvas, not WebGL: with a few hundred points it is faster to
    start, and headless or GPU-less browsers (software GL) do not stall on it. (Runs in every
    new session: the matplotlib backend is left to the views that need it, see ensure_backends.)"""
    import holoviews as hv

    from analyses.core.export import ensure_backends

    ensure_backends(matplotlib=False)
    hv.Store.renderers["bokeh"].webgl = False

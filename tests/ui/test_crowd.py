"""The app under a crowd: many sessions opened at once are each served everything by the app.

Every session's page must load its CSS and JavaScript from this server, however many sessions
the server builds at the same time and however late a browser connects its websocket after
fetching the page (a busy server answers the page, then the browser's resources, late).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
import urllib.request

import pytest
from ui_helpers import PageProbe, start_server, stop_server

from dashboard.server import PAGES_AHEAD

pytestmark = pytest.mark.browser

#: what the server logs for every session it builds
OPENED = "session opened"
#: the page the sessions open, named (the landing page is another one): it shows "Selected: <layer>"
SPECTRA = "?page=spectra"

#: JavaScript: whether the upload area is drawn as FilePond's drop area (its stylesheets loaded),
#: rather than a bare "Choose File" input, and whether a heading shows its "¶" anchor
STYLED_JS = """
() => {
  const all = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      all.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  const visible = (el) => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none' && s.opacity !== '0';
  };
  const inputs = all.filter((el) => el.tagName === 'INPUT' && el.type === 'file');
  const drops = all.filter((el) => el.classList && el.classList.contains('filepond--drop-label'));
  const anchors = all.filter((el) => el.tagName === 'A' && el.textContent.trim() === '¶');
  return {
    file_inputs_visible: inputs.filter(visible).length,
    file_inputs: inputs.length,
    drop_labels_visible: drops.filter(visible).length,
    anchors_visible: anchors.filter(visible).length,
  };
}
"""


def _assert_styled(page, who: str) -> None:
    state = page.evaluate(STYLED_JS)
    assert state["file_inputs"] >= 1, f"{who}: no upload input at all: {state}"
    assert state["file_inputs_visible"] == 0, f"{who}: a raw 'Choose File' box is shown: {state}"
    assert state["drop_labels_visible"] >= 1, f"{who}: the upload drop area is not styled: {state}"
    assert state["anchors_visible"] == 0, f"{who}: a heading shows its '¶' anchor: {state}"


def test_five_sessions_opened_at_once_load_nothing_from_elsewhere(server, browser):
    """Five browsers open the app at the same moment: every page is styled, none asks another
    host for anything, none logs a console error."""
    contexts, pages, probes = [], [], []
    try:
        for _ in range(5):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.set_default_timeout(120000)
            contexts.append(ctx)
            pages.append(page)
            probes.append(PageProbe(page))
        for page in pages:  # navigations start together; the browser runs them in parallel
            page.evaluate("url => { window.location.href = url; }", server.url + SPECTRA)
        for page in pages:
            page.get_by_text("Selected:", exact=False).first.wait_for(timeout=120000)
        for page in pages:
            page.wait_for_load_state("networkidle", timeout=60000)
        for i, (page, probe) in enumerate(zip(pages, probes)):
            probe.assert_clean()
            _assert_styled(page, f"session {i}")
    finally:
        for ctx in contexts:
            ctx.close()


def test_a_browser_that_connects_late_gets_its_own_styled_session(server, browser):
    """A page whose scripts arrive late (a busy server) connects its websocket long after the
    server built its session: the session is still there and everything comes from this server."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = ctx.new_page()
        page.set_default_timeout(60000)
        probe = PageProbe(page)
        delay_s = 9.0  # more than the server's unused-session lifetime plus its check interval

        def slow(route):
            time.sleep(delay_s)
            route.continue_()

        delayed = []

        def route(r):
            path = urllib.parse.urlparse(r.request.url).path
            if path.endswith("panel.min.js") and not delayed:
                delayed.append(path)
                slow(r)
            else:
                r.continue_()

        page.route("**/*.js*", route)
        before = server.log_text().count(OPENED)
        page.goto(server.url + SPECTRA, wait_until="commit", timeout=60000)
        page.get_by_text("Selected:", exact=False).first.wait_for(timeout=60000)
        page.wait_for_load_state("networkidle", timeout=60000)
        assert delayed, "the test did not delay the page's scripts"
        probe.assert_clean()
        _assert_styled(page, "late session")
        # the session built for the page was kept for its websocket: no second one was built
        assert server.log_text().count(OPENED) == before + 1, server.log_text()[-2000:]
    finally:
        ctx.close()


#: the server's DEBUG lines for a page built as its request arrived, and for one left for its browser
BUILT = "spectra page built in"
LEFT_FOR_BROWSER = "spectra page built when its browser connects"
#: the server's DEBUG line once every session has closed and been collected
ALIVE = re.compile(r"Panel objects alive after sessions closed: (\d+) \(0 open\)")


@pytest.fixture(scope="module")
def debug_server(ui_tmp):
    """A server of this module's own, logging at DEBUG: what it built, and what closed sessions left."""
    pytest.importorskip("playwright")
    tmp = ui_tmp / "crowd-debug"
    tmp.mkdir(exist_ok=True)
    srv = start_server(tmp, env={"NNVITALS_LOG_LEVEL": "DEBUG"}, timeout=300)
    srv.wait_log("warmed up", timeout=120)
    yield srv
    stop_server(srv.proc)


def _since(srv, mark: int) -> str:
    return srv.log_text()[mark:]


def _wait_count(srv, mark: int, text: str, n: int, timeout: float = 90) -> int:
    end = time.time() + timeout
    while time.time() < end and _since(srv, mark).count(text) < n:
        time.sleep(0.2)
    return _since(srv, mark).count(text)


def _open_and_close(srv, browser, queries: list[str]) -> None:
    """Browsers open these pages at once, wait for each page's first result, then close."""
    contexts = []
    try:
        for query in queries:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            contexts.append(ctx)
            page = ctx.new_page()
            page.set_default_timeout(120000)
            page.goto(srv.url + query, wait_until="commit")
        for ctx, query in zip(contexts, queries):
            page = ctx.pages[0]
            if "spectra" in query:
                page.get_by_text("Selected:", exact=False).first.wait_for()
            else:
                page.locator(".nnv-vital").first.wait_for()
    finally:
        for ctx in contexts:
            ctx.close()


def _alive_once_closed(srv, mark: int, timeout: float = 180) -> int:
    end = time.time() + timeout
    while time.time() < end:
        found = ALIVE.findall(_since(srv, mark))
        if found:
            return int(found[-1])
        time.sleep(0.5)
    raise AssertionError(f"the server never reported every session closed:\n{_since(srv, mark)[-3000:]}")


def _plain_requests(srv, n: int) -> None:
    """``n`` page requests at once, as a script or a link preview makes them: no browser connects."""
    errors: list[BaseException] = []

    def get() -> None:
        try:
            urllib.request.urlopen(srv.url + SPECTRA, timeout=120).read()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=get) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_closed_sessions_leave_no_panel_objects_behind(debug_server, browser):
    """Once every session has closed, nothing Panel made for them is alive: neither the sessions
    of browsers that came and went nor those of page requests no browser connected to. (A kept
    component keeps what it holds, and pins memory the allocator cannot hand back while it lives:
    a registry of Panel's kept every session's link button and field for good, and one pass of
    the collector left the link field of every session that never connected.)"""
    srv = debug_server
    mark = len(srv.log_text())
    _plain_requests(srv, 2)
    _open_and_close(srv, browser, [SPECTRA, "", SPECTRA])
    alive = _alive_once_closed(srv, mark)
    assert alive == 0, f"{alive} Panel objects left behind by 5 closed sessions"


def test_page_requests_that_never_connect_hold_few_built_pages(debug_server, browser):
    """Plain page requests whose browsers never connect (a burst, link previews, tabs closed while
    loading) each get a session, but only a few get a page built ahead of their browsers: the
    rest would hold a whole page each until dropped (30 s), and a burst of 30 left the server's
    memory ~110 MB higher once they were dropped. A browser arriving meanwhile gets its page built
    when it connects."""
    srv = debug_server
    mark = len(srv.log_text())
    requests = 8
    _plain_requests(srv, requests)
    assert _wait_count(srv, mark, OPENED, requests) == requests
    # every place ahead is free: those of earlier requests came back when their sessions ended
    ahead = PAGES_AHEAD.limit
    assert _wait_count(srv, mark, BUILT, ahead) == ahead, _since(srv, mark)[-3000:]
    time.sleep(1.0)  # the builder is idle now: nothing more is built for these requests
    log = _since(srv, mark)
    assert log.count(BUILT) == ahead, f"pages built for requests nobody connected to:\n{log[-3000:]}"
    assert log.count(LEFT_FOR_BROWSER) == requests - ahead, log[-3000:]

    # a browser now: every place ahead is held, so its page is built once it connects
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = ctx.new_page()
        page.set_default_timeout(120000)
        probe = PageProbe(page)
        page.goto(srv.url + SPECTRA, wait_until="commit")
        page.get_by_text("Selected:", exact=False).first.wait_for(timeout=120000)
        page.locator(".bk-Canvas, canvas").first.wait_for(timeout=60000)
        page.wait_for_load_state("networkidle", timeout=60000)
        probe.assert_clean()
        _assert_styled(page, "a browser after the burst")
    finally:
        ctx.close()
    log = _since(srv, mark)
    assert log.count(LEFT_FOR_BROWSER) == requests - ahead + 1, log[-3000:]
    assert log.count(BUILT) == ahead + 1, log[-3000:]


def test_a_session_opened_while_the_server_warms_up_is_freed_once_closed(ui_tmp, browser):
    """The warm-up ends by freezing every object alive for the collector (``gc.freeze``, so that
    full collections skip start-up's ~480,000 objects). A session opened before that, by a user
    who came as the server started, was frozen with them and never freed ("1 apps alive" after
    every session had closed, for the server's lifetime). The first collection with no session
    left unfreezes, collects and freezes again."""
    tmp = ui_tmp / "crowd-warming"
    tmp.mkdir(exist_ok=True)
    srv = start_server(tmp, env={"NNVITALS_LOG_LEVEL": "DEBUG"}, timeout=300)
    try:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.set_default_timeout(120000)
            page.goto(srv.url, wait_until="commit")  # at once: the warm-up has just begun
            page.locator(".nnv-vital").first.wait_for()
            srv.wait_log("start-up objects frozen", timeout=120)  # open while the warm-up froze
        finally:
            ctx.close()
        alive = _alive_once_closed(srv, 0)
        log = srv.log_text()
    finally:
        stop_server(srv.proc)
    opened, frozen = log.index("session opened (1 open)"), log.index("start-up objects frozen")
    assert opened < frozen, log[-3000:]  # the session was open when the warm-up froze
    assert "sessions frozen with start-up objects collected" in log[frozen:], log[-3000:]
    closed = log[log.index("memory after sessions closed: 0 open") :].splitlines()[0]
    assert "0 apps alive" in closed, f"{closed}\n{log[-3000:]}"
    assert alive == 0

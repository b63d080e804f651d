"""The sessions' timer (dashboard.components.timer) on a real Bokeh server session, without a browser.

The session is made by Bokeh's own ``ApplicationContext`` on a Tornado loop in a thread, as
``nnvitals serve`` makes one for a page request; the timer is started from another thread before
the browser connects, as a page's first run is (pages are built on the page builder thread).
"""

from __future__ import annotations

import asyncio
import threading
import time

import panel as pn
import pytest
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.contexts import ApplicationContext
from panel.io.state import set_curdoc
from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop

from dashboard.components.jobs import loop_timer


@pytest.fixture
def session():
    """A served session's document, its event loop's thread, and a count of the next-tick
    callbacks added to the document (each one a turn of the event loop spent on it)."""
    ready = threading.Event()
    box: dict = {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        box["loop"] = IOLoop.current()
        ready.set()
        box["loop"].start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    loop = box["loop"]
    context = ApplicationContext(Application(FunctionHandler(lambda doc: None)), io_loop=loop)
    request = HTTPServerRequest(method="GET", uri="/")  # Panel reads the page request's arguments
    made = asyncio.run_coroutine_threadsafe(
        context.create_session_if_needed("s1", request), loop.asyncio_loop
    )
    doc = made.result(10).document
    ticks = {"n": 0}
    add = doc.add_next_tick_callback

    def counted(callback):
        ticks["n"] += 1
        return add(callback)

    doc.add_next_tick_callback = counted
    yield doc, thread, ticks
    pn.state._connected.pop(doc, None)
    loop.add_callback(loop.stop)
    thread.join(5)


def _periodic(doc) -> list:
    """The document's periodic callbacks (Bokeh's, as the session's event loop runs them)."""
    return [c for c in doc.session_callbacks if type(c).__name__ == "PeriodicCallback"]


def _wait_for(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_timer_started_before_the_browser_connects_waits_quietly_then_ticks_on_the_loop(session):
    doc, loop_thread, ticks = session
    calls: list[int] = []
    timer = loop_timer(lambda: calls.append(threading.get_ident()), period=50)
    with set_curdoc(doc):  # as on the page builder thread
        timer.start()
    assert timer.running
    time.sleep(1.0)
    # not connected: no tick, and no turn of the event loop spent waiting (Panel's own timer
    # re-schedules its start on every turn: thousands in this second)
    assert calls == []
    assert ticks["n"] <= 2, f"{ticks['n']} next-tick callbacks while waiting for the browser"

    pn.state._connected[doc] = True  # what Panel records on the browser's "document ready"
    assert _wait_for(lambda: len(calls) >= 3, 3.0), f"{len(calls)} ticks in 3 s after connecting"
    assert set(calls) == {loop_thread.ident}, "a tick ran off the session's event loop"

    timer.stop()  # from this thread, as a session's close may
    assert not timer.running
    assert _wait_for(lambda: not _periodic(doc), 2.0)
    n = len(calls)
    time.sleep(0.3)
    assert len(calls) == n, "the timer ticked after it was stopped"


def test_a_stopped_timer_starts_again_and_a_second_start_adds_no_second_callback(session):
    doc, _loop_thread, _ticks = session
    pn.state._connected[doc] = True
    calls: list[float] = []
    timer = loop_timer(lambda: calls.append(time.monotonic()), period=100)
    with set_curdoc(doc):
        timer.start()
        timer.start()
    assert _wait_for(lambda: len(calls) >= 3, 3.0)
    periodic = _periodic(doc)
    assert len(periodic) == 1, f"{len(periodic)} periodic callbacks for one timer"
    timer.stop()
    assert _wait_for(lambda: not _periodic(doc), 2.0)
    with set_curdoc(doc):
        timer.start()
    n = len(calls)
    assert _wait_for(lambda: len(calls) >= n + 2, 3.0), "the timer did not tick again after a restart"
    timer.stop()


def test_a_run_submitted_while_the_page_is_built_shows_its_result_once_the_browser_connects(session):
    """A page's first run is submitted on the page builder thread, before the browser connects
    (the stall this timer fixes: its result was computed but never shown)."""
    from dashboard.components.jobs import JobPanel

    doc, loop_thread, ticks = session
    shown: list[tuple[int, int]] = []
    with set_curdoc(doc):
        panel = JobPanel()
        panel.submit(
            "sum", lambda progress, cancel: sum(range(10)), lambda r: shown.append((r, threading.get_ident()))
        )
    assert panel.running
    time.sleep(0.6)
    assert shown == [] and panel.running, "a result was shown before the browser connected"
    assert ticks["n"] <= 2
    pn.state._connected[doc] = True
    assert _wait_for(lambda: bool(shown), 3.0), "the finished run was never shown"
    assert shown == [(45, loop_thread.ident)]
    assert not panel.running and panel.status.startswith("Computed in")
    assert _wait_for(lambda: not _periodic(doc), 2.0)

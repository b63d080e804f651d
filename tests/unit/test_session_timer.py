"""The server's event-loop helpers on real Bokeh server sessions, without a browser: the sessions'
timer (dashboard.components.timer) and new sessions taking turns (dashboard.turns).

The session is made by Bokeh's own ``ApplicationContext`` on a Tornado loop in a thread, as
``nnvitals serve`` makes one for a page request; the timer is started from another thread before
the browser connects, as a page's first run is (pages are built on the page builder thread).
"""

from __future__ import annotations

import asyncio
import contextlib
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


@contextlib.contextmanager
def _event_loop():
    """A Tornado event loop running in a thread of its own, as the server's; stopped after."""
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
    try:
        yield box["loop"], thread
    finally:
        box["loop"].add_callback(box["loop"].stop)
        thread.join(5)


@pytest.fixture
def session():
    """A served session's document, its event loop's thread, and a count of the next-tick
    callbacks added to the document (each one a turn of the event loop spent on it)."""
    with _event_loop() as (loop, thread):
        doc, _context = _new_session(loop)  # the context holds the session
        ticks = {"n": 0}
        add = doc.add_next_tick_callback

        def counted(callback):
            ticks["n"] += 1
            return add(callback)

        doc.add_next_tick_callback = counted
        yield doc, thread, ticks
        pn.state._connected.pop(doc, None)


def _new_session(loop):
    """A new session made by Bokeh's ApplicationContext for a page request, and that context."""
    context = ApplicationContext(Application(FunctionHandler(lambda doc: None)), io_loop=loop)
    request = HTTPServerRequest(method="GET", uri="/")  # Panel reads the page request's arguments
    made = asyncio.run_coroutine_threadsafe(
        context.create_session_if_needed("s1", request), loop.asyncio_loop
    )
    return made.result(10).document, context


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


def _worst_loop_gap(loop, work) -> float:
    """Seconds of the longest stretch in which the event loop ran nothing else while ``work()``
    (a coroutine function) ran on it: a 10 ms timer's worst delay."""
    from tornado.ioloop import PeriodicCallback

    stamps: list[float] = []
    timer = PeriodicCallback(lambda: stamps.append(time.perf_counter()), 10)
    loop.add_callback(timer.start)
    time.sleep(0.1)
    asyncio.run_coroutine_threadsafe(work(), loop.asyncio_loop).result(30)
    time.sleep(0.1)
    loop.add_callback(timer.stop)
    time.sleep(0.05)
    return max(b - a for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize("turns", [False, True])
def test_new_sessions_take_turns_and_leave_the_event_loop_to_others_in_between(turns):
    """Three page requests at once, each session's shell taking 0.3 s on the loop: one after the
    other in one turn of the loop without TakeTurns (0.9 s in which nothing else ran), with it
    a gap for everyone else after each."""
    from dashboard.turns import TakeTurns

    def shell(doc) -> None:
        time.sleep(0.3)

    with _event_loop() as (loop, _thread):
        app = Application(FunctionHandler(shell))
        if turns:
            app.add(TakeTurns())
        context = ApplicationContext(app, io_loop=loop)

        async def three() -> None:
            requests = [HTTPServerRequest(method="GET", uri="/") for _ in range(3)]
            await asyncio.gather(
                *(context.create_session_if_needed(f"s{i}", r) for i, r in enumerate(requests))
            )

        gap = _worst_loop_gap(loop, three)
        assert len(context.sessions) == 3
    if turns:
        assert gap < 0.55, f"the event loop ran nothing else for {gap:.2f} s"
    else:  # the control: the measurement sees the back-to-back builds
        assert gap > 0.8, f"worst gap {gap:.2f} s without TakeTurns"


def test_a_failing_tick_or_a_session_gone_raises_nothing_into_bokeh(session, caplog):
    """An exception out of a Bokeh session callback leaves that session's document as the server's
    ``curdoc()`` for good (Bokeh's ``patch_curdoc`` pops it only on success): a later HTML export
    then failed on the destroyed document."""
    from bokeh.io import doc as bokeh_doc

    doc, _loop_thread, _ticks = session
    pn.state._connected[doc] = True
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug in a page")

    timer = loop_timer(broken, period=50)
    with set_curdoc(doc), caplog.at_level("ERROR", logger="nnvitals.app"):
        timer.start()
        assert _wait_for(lambda: len(calls) >= 3, 3.0)
    # this session's document is not left on Bokeh's stack (the stack is the process's: another
    # test's leftover server thread may have a document of its own on it for a moment)
    assert doc not in [r() for r in bokeh_doc._PATCHED_CURDOCS], "a tick's exception reached Bokeh"
    assert "session timer callback broken failed" in caplog.text
    # the session ends under the running timer (a closed tab), then the page stops it
    server_session = doc.session_context._session
    done = threading.Event()
    server_session._loop.add_callback(lambda: (server_session.destroy(), done.set()))
    assert done.wait(5)
    timer.stop()
    timer._sync()  # what a tick left over would do
    time.sleep(0.2)
    assert doc not in [r() for r in bokeh_doc._PATCHED_CURDOCS]


def test_a_held_session_ticks_only_once_released(session):
    """The app holds a new session's timers until its page is attached: a first result is shown in
    the page, never sent ahead of it."""
    from dashboard.components import timer as timers

    doc, _loop_thread, _ticks = session
    pn.state._connected[doc] = True
    calls: list[int] = []
    timers.hold(doc)
    timer = loop_timer(lambda: calls.append(1), period=50)
    with set_curdoc(doc):
        timer.start()
    time.sleep(0.5)
    assert calls == [], "a held session's timer ticked"
    timers.release(doc)
    assert _wait_for(lambda: len(calls) >= 2, 3.0), "the released timer did not tick"
    timer.stop()


class _DocumentChanges:
    """Listens to a document's changes the way Bokeh's ServerSession does
    (``on_change_dispatch_to``) and records the thread each "callback added" event came on."""

    def __init__(self, doc) -> None:
        self.added: list[int] = []
        doc.callbacks.on_change_dispatch_to(self)

    def _session_callback_added(self, event) -> None:
        self.added.append(threading.get_ident())


def test_callbacks_asked_for_off_the_loop_are_added_to_the_document_on_the_loop(session):
    """Bokeh's ``add_next_tick_callback`` called from another thread runs the document's change
    dispatch on that thread while the loop may be using the document (a half-made ServerSession,
    a held document, Bokeh's one stack of current documents). The timer, file checks and table
    clicks ask from other threads: each callback reaches the document on the event loop."""
    from dashboard.components.on_loop import next_tick, on_loop_thread

    doc, loop_thread, _ticks = session
    changes = _DocumentChanges(doc)
    ran: list[int] = []
    assert not on_loop_thread(doc)
    assert next_tick(doc, lambda: ran.append(threading.get_ident()))
    timer = loop_timer(lambda: None, period=50)
    with set_curdoc(doc):  # as on the page builder thread
        timer.start()
    assert _wait_for(lambda: ran and _periodic(doc), 3.0)
    timer.stop()
    assert _wait_for(lambda: not _periodic(doc), 3.0)
    assert ran == [loop_thread.ident]
    assert len(changes.added) >= 3  # next_tick's callback, the timer's _sync, its periodic callback
    assert set(changes.added) == {loop_thread.ident}, "a callback was added to the document off its loop"
    # on the loop itself it is added at once; a destroyed session's document takes nothing
    on_loop = {}
    doc.session_context._session._loop.add_callback(lambda: on_loop.update(here=on_loop_thread(doc)))
    assert _wait_for(lambda: on_loop, 3.0) and on_loop["here"]
    server_session = doc.session_context._session
    done = threading.Event()
    server_session._loop.add_callback(lambda: (server_session.destroy(), done.set()))
    assert done.wait(5)
    assert not next_tick(doc, lambda: ran.append(0))
    time.sleep(0.3)
    assert ran == [loop_thread.ident]


def test_a_browser_gone_mid_message_is_one_line_not_a_traceback(caplog):
    """Panel writes some patches as tasks of their own; a tab closed meanwhile leaves their
    ``WebSocketClosedError`` unretrieved, and asyncio logged it as an error with a traceback (a
    browser test failed on it in the server log). The server's loop says it in one line; any
    other unretrieved exception keeps asyncio's own report."""
    import gc

    from tornado.websocket import WebSocketClosedError

    from dashboard.server import quiet_closed_connections

    async def closed() -> None:
        raise WebSocketClosedError()

    async def bug() -> None:
        raise ValueError("a real bug")

    loop = asyncio.new_event_loop()
    try:
        quiet_closed_connections(loop)
        with caplog.at_level("INFO"):
            for coro in (closed, bug):
                task = loop.create_task(coro())
                loop.run_until_complete(asyncio.sleep(0.01))
                assert task.done()
                del task  # never retrieved: asyncio reports it when the task is collected
                gc.collect()
    finally:
        loop.close()
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelname == "INFO" and gone[0].exc_info is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "never retrieved" in errors[0].getMessage()
    assert "a real bug" in repr(errors[0].exc_info)

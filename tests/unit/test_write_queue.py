"""Queued changes of a served page are all written, in order (dashboard.write_queue).

Panel queues a document's changes while earlier ones are being written, and its drain task could
leave the last ones queued for good (a page stuck at "Opening Spectra ..." when several people
opened the app at once, issue 11). These tests drive Panel's own queueing function
(``schedule_write_events``) with real Bokeh patch messages, on a connection whose socket is of a
kind Panel lets applications add (``extra_socket_handlers``): it records each message and hands
back futures the test completes, so the interleaving that lost messages is reproduced exactly.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from bokeh.document import Document
from bokeh.models import Div
from bokeh.protocol import Protocol
from panel.io import document as pd
from tornado.locks import Lock

from dashboard import write_queue


class RecordingSocket:
    """A websocket stand-in: what was written to it, and the writes still in flight."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.in_flight: list[asyncio.Future] = []
        self.write_lock = Lock()

    def write(self, conn, msg=None, events=None):
        self.written.append(msg.content_json)
        future = asyncio.get_running_loop().create_future()
        self.in_flight.append(future)
        return [future]

    def finish_writes(self) -> int:
        done = 0
        while self.in_flight:
            self.in_flight.pop(0).set_result(None)
            done += 1
        return done


class Connection:
    def __init__(self, socket: RecordingSocket) -> None:
        self._socket = socket
        self.protocol = Protocol()


@pytest.fixture(autouse=True)
def recording_sockets():
    write_queue.install()
    pd.extra_socket_handlers[RecordingSocket] = lambda conn, msg=None, events=None: conn._socket.write(
        conn, msg=msg, events=events
    )
    yield
    pd.extra_socket_handlers.pop(RecordingSocket, None)


def _changes(n: int) -> tuple[Document, list[list]]:
    """A document and ``n`` batches of real change events (a Div's text set to "0", "1", ...)."""
    doc = Document()
    div = Div(text="")
    doc.add_root(div)
    batches = []
    for i in range(n):
        doc.hold("collect")
        div.text = str(i)
        batches.append(list(doc.callbacks._held_events))
        doc.callbacks._held_events = []
        doc.unhold()
    return doc, batches


def _texts(socket: RecordingSocket) -> list[str]:
    import json

    return [json.loads(m)["events"][0]["new"] for m in socket.written]


def _run(scenario):
    """Run ``scenario()`` on an event loop of its own, in a thread: the thread running the tests
    may already have one (Playwright's, when the browser tests ran first)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, scenario()).result(timeout=30)


async def _settle(socket: RecordingSocket, rounds: int = 20) -> None:
    """Let the loop run, completing every write as the network would."""
    for _ in range(rounds):
        socket.finish_writes()
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    socket.finish_writes()
    await asyncio.sleep(0)


def test_panel_uses_the_fixed_drain():
    assert write_queue.install() is True  # idempotent
    assert pd._dispatch_msgs is write_queue.drain


def test_a_change_queued_while_the_drain_finishes_is_written():
    """The lost-message interleaving: the drain's writes complete, and in the same loop turn a
    new change is queued behind them (before the drain has resumed)."""

    async def scenario():
        doc, (first, second) = _changes(2)
        socket = RecordingSocket()
        conn = Connection(socket)
        pd.schedule_write_events(doc, [conn], first)
        await asyncio.sleep(0)  # the drain writes the first change and waits for the network
        assert _texts(socket) == ["0"]
        socket.finish_writes()  # the drain may resume now ...
        pd.schedule_write_events(doc, [conn], second)  # ... but a new change is queued first
        await _settle(socket)
        return doc, socket

    doc, socket = _run(scenario)
    assert _texts(socket) == ["0", "1"], "the second change was left queued"
    assert doc not in pd._WRITE_MSGS and doc not in pd._WRITE_BLOCK


def test_changes_queued_while_writing_keep_their_order():
    async def scenario():
        doc, batches = _changes(6)
        socket = RecordingSocket()
        conn = Connection(socket)
        for batch in batches:  # each queued while the previous ones are still being written
            pd.schedule_write_events(doc, [conn], batch)
            await asyncio.sleep(0)
        await _settle(socket)
        return doc, socket

    doc, socket = _run(scenario)
    assert _texts(socket) == [str(i) for i in range(6)]
    assert doc not in pd._WRITE_BLOCK


def test_changes_wait_for_bokehs_own_write_then_go_in_order():
    """While Bokeh writes a message of its own (the socket's write lock is taken) queued changes
    wait; those queued meanwhile go after them."""

    async def scenario():
        doc, (first, second, third) = _changes(3)
        socket = RecordingSocket()
        conn = Connection(socket)
        await socket.write_lock.acquire()
        pd.schedule_write_events(doc, [conn], first)
        await asyncio.sleep(0.03)
        pd.schedule_write_events(doc, [conn], second)
        await asyncio.sleep(0.03)
        held = list(socket.written)
        socket.write_lock.release()
        pd.schedule_write_events(doc, [conn], third)
        await _settle(socket)
        return doc, socket, held

    doc, socket, held = _run(scenario)
    assert held == [], "written while the socket was locked"
    assert _texts(socket) == ["0", "1", "2"]
    assert doc not in pd._WRITE_MSGS and doc not in pd._WRITE_BLOCK


def test_a_closed_connection_does_not_stop_the_others():
    class ClosedSocket(RecordingSocket):
        def write(self, conn, msg=None, events=None):
            raise ConnectionError("closed")

    pd.extra_socket_handlers[ClosedSocket] = lambda conn, msg=None, events=None: conn._socket.write(
        conn, msg=msg
    )

    async def scenario():
        doc, (first,) = _changes(1)
        gone, alive = ClosedSocket(), RecordingSocket()
        pd.schedule_write_events(doc, [Connection(gone), Connection(alive)], first)
        await _settle(alive)
        return doc, alive

    try:
        doc, alive = _run(scenario)
    finally:
        pd.extra_socket_handlers.pop(ClosedSocket, None)
    assert _texts(alive) == ["0"]
    assert doc not in pd._WRITE_MSGS and doc not in pd._WRITE_BLOCK

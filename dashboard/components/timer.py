"""A served session's timer: a callback every few hundred milliseconds on the server's event loop.

Why not Panel's :class:`~panel.io.callbacks.PeriodicCallback`: started before the session's browser
has connected (which is when a page's first run is submitted: pages are built on the page builder
thread while the browser loads), it re-schedules its own start on every turn of the event loop
until the connection is up — about 1,700 turns per new session here, event-loop CPU every other
session waits behind. In a page that never showed its first result under load, that timer never
fired once. (Such stalls went on with this timer, about once in 50-100 loads with two busy
cores, until starting and stopping went through the event loop: :mod:`.on_loop`.)

:class:`SessionTimer` instead asks Bokeh once for a periodic callback of the session's document,
added on the event loop (:func:`.on_loop.next_tick`: asked from the page builder thread, Bokeh's
own ``add_next_tick_callback`` could lose the callback) and skips its ticks until Panel has seen
the browser's "document ready" and the app has attached the session's page (:func:`hold`,
:func:`release`). Stopping it removes that callback from the event loop too. Outside a served session (a notebook) it falls
back on Panel's timer, which runs on the notebook's own event loop.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import panel as pn
from panel.io.callbacks import PeriodicCallback
from panel.io.state import set_curdoc

from .on_loop import next_tick

log = logging.getLogger("nnvitals.app")


#: documents whose page is built but not attached yet (:func:`hold`)
_held: weakref.WeakSet = weakref.WeakSet()


def hold(doc: Any) -> None:
    """Hold the ticks of every timer of ``doc`` until :func:`release`: the app holds a new session
    until its page is attached, so a first result computed while the browser connected is shown
    in the page, never sent ahead of it (the browser then failed on a patch of models it did not
    have yet: "Cannot read properties of null")."""
    _held.add(doc)


def release(doc: Any) -> None:
    """Let the timers of ``doc`` tick again (see :func:`hold`)."""
    _held.discard(doc)


#: when each document was first seen ready by a tick (:func:`_ready`)
_ready_since: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ready(doc: Any, settle_s: float) -> bool:
    """The session's browser has connected and rendered the document (Panel's own flag), its page
    is not held, and both have been so for ``settle_s`` (one period: the browser lays out the page
    it was just sent before a result changes it; with Panel's timer the first tick came one period
    after connecting, and a result sent at once after the page made the browser fail on it)."""
    if not pn.state._connected.get(doc) or doc in _held:
        _ready_since.pop(doc, None)
        return False
    now = time.monotonic()
    return now - _ready_since.setdefault(doc, now) >= settle_s


class SessionTimer:
    """Calls ``callback()`` every ``period`` ms on the event loop of the session current at
    :meth:`start` (from any thread), once its browser is connected; :meth:`stop` from any thread."""

    def __init__(self, callback: Callable[[], None], period: int):
        self.callback = callback
        self.period = int(period)
        self._lock = threading.Lock()
        self._wanted = False
        self._doc: Any = None
        self._cb: Any = None  # Bokeh's periodic callback; touched on the event loop only
        self._fallback: PeriodicCallback | None = None

    @property
    def running(self) -> bool:
        """Started and not stopped since (its first tick may still be to come)."""
        return self._wanted

    def start(self) -> None:
        doc = pn.state.curdoc
        if doc is None or getattr(doc, "session_context", None) is None:
            self._start_fallback()
            return
        with self._lock:
            if self._wanted and self._doc is doc:
                return
            self._wanted, self._doc = True, doc
        self._sync_later(doc)

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            doc = self._doc
        if self._fallback is not None and self._fallback.running:
            self._fallback.stop()
        if doc is not None:
            self._sync_later(doc)

    # ------------------------------------------------------------------ event loop side
    def _sync_later(self, doc: Any) -> None:
        next_tick(doc, self._sync)  # on the event loop, whichever thread asks (see on_loop)

    def _sync(self) -> None:
        """Make the event loop's callback match what was asked last (runs on the event loop).

        Never raises: an exception out of a Bokeh session callback leaves that session's document
        on Bokeh's stack of current documents for good (``bokeh.io.doc.patch_curdoc`` pops it only
        on success), and every later ``curdoc()`` of the server (an HTML export's) gets a document
        that was destroyed with its session."""
        with self._lock:
            wanted, doc = self._wanted, self._doc
        try:
            if getattr(doc, "_roots", None) is None:  # destroyed with its session
                self._cb = None
            elif wanted and self._cb is None:
                self._cb = doc.add_periodic_callback(self._tick, self.period)
            elif not wanted and self._cb is not None:
                cb, self._cb = self._cb, None
                doc.remove_periodic_callback(cb)
        except Exception as e:  # noqa: BLE001 - the session is going: Bokeh drops its callbacks
            log.debug("session timer: %s", e)

    def _tick(self) -> None:
        with self._lock:
            wanted, doc = self._wanted, self._doc
        if not wanted:
            self._sync()
            return
        if not _ready(doc, self.period / 1000):
            return  # changes before the browser's "ready" would not reach it
        try:
            with set_curdoc(doc):
                self.callback()
        except Exception as e:  # noqa: BLE001 - never out of a Bokeh callback (see _sync)
            log.error("session timer callback %s failed", getattr(self.callback, "__name__", "?"), exc_info=e)

    # ------------------------------------------------------------------ no session
    def _start_fallback(self) -> None:
        if self._fallback is None:

            async def tick() -> None:
                self.callback()

            self._fallback = PeriodicCallback(callback=tick, period=self.period, background=True)
        if not self._fallback.running:
            self._fallback.start()
        self._wanted = self._fallback.running

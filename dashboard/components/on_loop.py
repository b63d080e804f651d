"""Run something in a served session from any thread: on the server's event loop, never off it.

Bokeh's ``Document.add_next_tick_callback`` called from another thread (the page builder, an
analysis worker, a file check) is not safe, although it looks it: it runs Bokeh's change dispatch
on that thread, while the event loop may be using the same document.

- The new session's ``ServerSession`` may be half made: Bokeh registers the session for the
  document's changes before it creates its callback group.
- The document may be held by the loop (``doc.hold()``): the event is appended to a list that the
  loop is swapping out as it unholds, and is lost.
- Bokeh's stack of current documents (``bokeh.io.doc.patch_curdoc``) is one list for all threads:
  a push and pop from another thread can pop the loop's document.

A lost "callback added" event means the callback never runs. For a session's timer that is a page
that never shows its first result, although the server computed it: the first-load stall of
issue 11, about once in 50-100 loads under load. :func:`next_tick` hands the callback to the
session's Tornado loop with ``IOLoop.add_callback`` (thread-safe by design); the loop adds it to
the document, so every change to the document happens on the loop. (The stalls that were left,
about one page in a hundred, had another cause: a change the loop made, left queued by Panel's
writer; see :mod:`dashboard.write_queue`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

log = logging.getLogger("nnvitals.app")


def loop_of(doc: Any) -> IOLoop | None:
    """The event loop serving ``doc``'s session (None outside a server)."""
    ctx = getattr(doc, "session_context", None)
    try:
        return ctx.server_context.application_context.io_loop
    except AttributeError:
        return None


def on_loop_thread(doc: Any) -> bool:
    """True when called on the thread running ``doc``'s event loop (or outside a server)."""
    loop = loop_of(doc)
    return loop is None or IOLoop.current(instance=False) is loop


def next_tick(doc: Any, callback: Callable[[], None]) -> bool:
    """Run ``callback`` on the next tick of ``doc``'s session (on its event loop, holding the
    document's lock, with ``doc`` as the current document), from any thread.

    Returns False when the session is known to be gone (its document destroyed, or its loop
    closed); the callback then never runs.
    """
    if _destroyed(doc):
        return False
    if on_loop_thread(doc):
        return _add(doc, callback)
    try:
        loop_of(doc).add_callback(_add, doc, callback)
    except RuntimeError as e:  # the loop is closed: the server is stopping
        log.debug("session loop gone (%s)", e)
        return False
    return True


def _destroyed(doc: Any) -> bool:
    """Destroyed with its session (Bokeh dropped its callbacks and deleted its roots)."""
    return getattr(doc, "_roots", None) is None


def _add(doc: Any, callback: Callable[[], None]) -> bool:
    if _destroyed(doc):  # gone while the callback travelled to the loop
        return False
    try:
        doc.add_next_tick_callback(callback)
    except Exception as e:  # noqa: BLE001 - the session is going; nothing to run it on
        log.debug("session gone before its callback (%s)", e)
        return False
    return True

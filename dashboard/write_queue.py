"""Every change the server makes to a page reaches the browser: a fix of Panel's write queue.

Panel sends a session's changes straight to its websocket, except while earlier messages of the
same document wait to be written: then it queues the new ones (``schedule_write_events``: the
document is marked "write blocked" and a task is started to drain the queue). Panel's drain task
(``panel.io.document._dispatch_msgs``) has a race:

1. task A takes the queued messages, writes them and awaits the writes;
2. meanwhile a change queues new messages (the document is still blocked) and starts task B;
3. task A resumes, finds nothing *it* left over, and clears the block;
4. task B finds the document unblocked and returns without writing anything.

The new messages stay queued until the document changes again. A page whose last change was
caught this way never shows it: with five colleagues opening the app at once, about one page in
twenty stayed at "Opening Spectra ..." although the server had attached the page (issue 11; the
browser received no patch after its first render, and the server's queue still held three
messages). :func:`install` replaces the drain task with one that drains until the queue is empty,
one task per document at a time (so messages are written in the order they were made), and
clears the block only then.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger("nnvitals.app")

#: the names of ``panel.io.document`` the drain task uses (checked before replacing Panel's)
NEEDED = (
    "_dispatch_msgs",
    "_WRITE_MSGS",
    "_WRITE_BLOCK",
    "_WRITE_FUTURES",
    "_run_write_futures",
    "_dispatch_write_task",
    "dispatch_tornado",
    "dispatch_django",
    "extra_socket_handlers",
)

#: documents whose queue a task is draining now
_draining: weakref.WeakSet = weakref.WeakSet()

#: Panel's own drain once replaced (None: not installed)
_ORIGINAL: Any = None


def _write_locked(conn: Any) -> bool:
    """The connection's socket is writing a message of Bokeh's own (its write lock is taken)."""
    lock = getattr(conn._socket, "write_lock", None)
    return lock is not None and lock._block._value == 0


def _send(pd: Any, conn: Any, msg: Any) -> list:
    """Write one protocol message to one connection; the futures of its frames."""
    from tornado.websocket import WebSocketHandler

    socket = conn._socket
    if isinstance(socket, WebSocketHandler):
        return list(pd.dispatch_tornado(conn, msg=msg))
    handler = pd.extra_socket_handlers.get(type(socket))
    if handler is not None:
        return list(handler(conn, msg=msg))
    return list(pd.dispatch_django(conn, msg=msg))


async def drain(doc: Any) -> None:
    """Write the messages queued for ``doc``, and those queued while writing, in order; then
    unblock ``doc``. A second task for a document being drained leaves it to the first."""
    from panel.io import document as pd

    if doc in _draining:
        return
    _draining.add(doc)
    try:
        while True:
            queued = pd._WRITE_MSGS.pop(doc, None)
            if not queued:
                break
            waiting, futures = {}, []
            for conn, msgs in queued.items():
                if _write_locked(conn):
                    waiting[conn] = msgs
                    continue
                for msg in msgs:
                    try:
                        futures += _send(pd, conn, msg)
                    except Exception as e:  # noqa: BLE001 - that connection is going: skip it
                        log.debug("a queued message was not written (%s)", e)
                        break
            if futures:
                pd._WRITE_FUTURES.setdefault(doc, []).extend(futures)
                await pd._run_write_futures(doc)
            if waiting:  # ahead of anything queued meanwhile, for the same connection
                now = pd._WRITE_MSGS.setdefault(doc, {})
                for conn, msgs in waiting.items():
                    now[conn] = msgs + now.get(conn, [])
                await asyncio.sleep(0.01)
    finally:
        _draining.discard(doc)
        if not pd._WRITE_MSGS.get(doc):
            pd._WRITE_MSGS.pop(doc, None)
            pd._WRITE_BLOCK.pop(doc, None)
        else:  # left by a failure above (the task cancelled, the server stopping): try again
            try:
                pd._dispatch_write_task(doc, drain, doc)
            except Exception as e:  # noqa: BLE001 - no loop and no session left to write to
                log.debug("queued messages dropped (%s)", e)


def install() -> bool:
    """Use :func:`drain` for Panel's queued writes (idempotent). False, and Panel's own drain kept,
    when this Panel lacks the names it relies on."""
    global _ORIGINAL
    from panel.io import document as pd

    if _ORIGINAL is not None:
        return True
    missing = [name for name in NEEDED if not hasattr(pd, name)]
    if missing:
        log.warning(
            "Panel's write queue is not what nnvitals expects (no %s): left as it is", ", ".join(missing)
        )
        return False
    _ORIGINAL = pd._dispatch_msgs
    pd._dispatch_msgs = drain
    return True

"""New sessions take turns on the event loop, with a gap for everyone else between two.

Answering a page request builds the session's shell (template, sidebar, model picker) and its
HTML on the server's event loop: 0.3-0.4 s of CPU here, 0.5-1 s while other work runs. Ten
requests arriving together were answered back to back in one turn of the loop: it was 9-10 s
late, and every connected user's click, every stylesheet and script the new pages asked for,
waited behind all of them. With :class:`TakeTurns` among the application's handlers, Bokeh's
session creation waits for the previous one to end plus :data:`GAP_S`, during which the loop
reads and answers everything else. A request alone is no slower; a crowd's are spread out by at
most the gaps.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bokeh.application.handlers.handler import Handler

#: seconds the event loop is left to other work after each new session is built
GAP_S = 0.05


class TakeTurns(Handler):
    """A Bokeh application handler that admits one new session at a time (see the module)."""

    def __init__(self, gap_s: float = GAP_S) -> None:
        super().__init__()
        self.gap_s = float(gap_s)
        self._lock: asyncio.Lock | None = None

    def modify_document(self, doc: Any) -> None:  # the document is the app's: nothing to add
        return None

    async def on_session_created(self, session_context: Any) -> None:
        if self._lock is None:  # made on the event loop, the first time it is needed
            self._lock = asyncio.Lock()
        await self._lock.acquire()
        loop = asyncio.get_running_loop()
        # the session is built right after this returns, in this same turn of the loop; the gap
        # starts at the next turn, and the next session waits for its end
        loop.call_soon(loop.call_later, self.gap_s, self._lock.release)


def install(server: Any) -> None:
    """Add :class:`TakeTurns` to every application of a (not yet started) Panel/Bokeh server."""
    for context in server._tornado._applications.values():
        context.application.add(TakeTurns())

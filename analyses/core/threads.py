"""Threads: one intra-op thread per task while a pool runs, and one run at a time with a model.

Running several tasks at once while each kernel also spawns OpenMP/MKL threads
oversubscribes the cores: on two cores torch's CPU ``eigvalsh`` was measured 30x slower that
way, while one intra-op thread per task gave 1.85x over serial for matmul and eigvalsh.
The same holds for the BLAS that SciPy ships (used through :mod:`analyses.spectra.lapack`),
limited with threadpoolctl. Both settings are process-wide, so :func:`single_threaded_kernels` is
reference-counted: the first concurrent pool sets one thread, the last one restores the
caller's setting (overlapping runs from several app sessions are safe).

``torch.export`` is not thread-safe either: two traces at once in one process break each other
("ProxyTorchDispatchMode slot already occupied"), as two app sessions or a Trajectory's parallel
checkpoints would. Every ``torch.export.export`` call of nnvitals holds :data:`TRACE_LOCK`.

Taking turns for the traces alone is not enough: while torch.export traces in non-strict mode it
patches ``torch.nn.Module``'s call and the pre-dispatch mode stack for the whole process, and a
model called meanwhile from another thread breaks one of the two ("ProxyTorchDispatchMode slot
already occupied", "_EXPORT_MODULE_HIERARCHY must not be None", a stray ``SymInt``). So of the
runs that call or trace a model, one at a time holds :data:`MODEL_TURN` (:meth:`ModelTurn.hold`):
an analysis run does from the moment it computes (a result from the store waits for nobody) to
its end, and so does every export and every other call of a model outside a run. The threads of
the holder's own pool work for it (:meth:`ModelTurn.serving`, which the runner wraps every task
in) and pass, so its tasks trace and call as they did; the turn stays the run's until the last of
them has ended (a cancelled run returns at once, its running tasks stop at their next check).
Runs that read weights only (Spectra) never take the turn. The rest wait in the order they
asked, and a cancelled run stops waiting.
A holder must only wait for its own pool: nothing that waits for the turn may hold a lock a holder
needs.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch

_lock = threading.Lock()
#: held by every ``torch.export.export`` call (re-entrant: an export may export inside)
TRACE_LOCK = threading.RLock()
_users = 0
_saved: tuple[int, object] | None = None


@contextlib.contextmanager
def single_threaded_kernels():
    global _users, _saved
    with _lock:
        if _users == 0:
            import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS so the limit below covers it)
            from threadpoolctl import threadpool_limits

            _saved = (torch.get_num_threads(), threadpool_limits(limits=1, user_api="blas"))
            torch.set_num_threads(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                torch.set_num_threads(_saved[0])
                _saved[1].restore_original_limits()
                _saved = None


class ModelTurn:
    """Of the runs that call or trace a model, one at a time (see the module docstring).

    The turn is held by a run, not a thread: a token the holding thread carries, and the threads
    of its pool carry while they work for it (:meth:`serving`). Re-entrant for every thread that
    carries the holder's token; the others queue in the order they asked (first come, first
    served).
    """

    #: how often a waiting thread looks at its cancel token (seconds)
    POLL_S = 0.1

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: object | None = None
        self._depth = 0
        self._queue: deque[object] = deque()
        self._workers: dict[object, int] = {}  # tasks working for a run, by its token
        self._local = threading.local()

    def working_for(self) -> object | None:
        """The token of the run this thread works for (None: none)."""
        return getattr(self._local, "token", None)

    @property
    def holder(self) -> object | None:
        """The token of the run that holds the turn now (None: nobody)."""
        return self._owner

    def waiting(self) -> int:
        """How many runs wait for the turn."""
        with self._cond:
            return len(self._queue)

    def held_here(self) -> bool:
        """Whether this thread works for the run that holds the turn."""
        token = self.working_for()
        return token is not None and token is self._owner

    @contextlib.contextmanager
    def serving(self, token: object | None) -> Iterator[None]:
        """This thread works for the run ``token`` (a task on its pool) for the duration.

        While a task works for the holder, the turn stays the holder's even after its run has
        left :meth:`hold`: a cancelled run answers at once and leaves its running tasks to stop
        at their next check, and they may still call the model until then."""
        previous = self.working_for()
        self._local.token = token
        if token is not None:
            with self._cond:
                self._workers[token] = self._workers.get(token, 0) + 1
        try:
            yield
        finally:
            self._local.token = previous
            if token is not None:
                with self._cond:
                    self._workers[token] -= 1
                    if not self._workers[token]:
                        del self._workers[token]
                        self._release_locked(token)

    def _release_locked(self, token: object) -> None:
        """The turn is free once its holder has left :meth:`hold` and no task works for it."""
        if token is self._owner and self._depth == 0 and not self._workers.get(token):
            self._owner = None
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, cancel: Any = None, on_wait: Callable[[], None] | None = None) -> Iterator[object]:
        """Hold the turn for the duration (at once where this thread works for the holder).

        ``cancel``: a :class:`~analyses.core.runner.CancelToken`, looked at while waiting (a
        cancelled run stops waiting and raises :class:`~analyses.core.errors.Cancelled`);
        ``on_wait()`` is called once when the turn is someone else's (to say so).
        """
        token = self.working_for()
        with self._cond:
            if token is not None and token is self._owner:
                self._depth += 1
            else:
                token = object()
                self._wait_locked(token, cancel, on_wait)
        previous = self.working_for()
        self._local.token = token
        try:
            yield token
        finally:
            self._local.token = previous
            with self._cond:
                self._depth -= 1
                self._release_locked(token)

    def _wait_locked(self, token: object, cancel: Any, on_wait: Callable[[], None] | None) -> None:
        self._queue.append(token)
        told = False
        try:
            while self._owner is not None or self._queue[0] is not token:
                if cancel is not None and getattr(cancel, "cancelled", False):
                    from .errors import Cancelled

                    raise Cancelled()
                if not told and on_wait is not None:
                    told = True
                    self._cond.release()  # the callback may take a while: nobody waits on it
                    try:
                        on_wait()
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(self.POLL_S)
        except BaseException:
            self._queue.remove(token)
            self._cond.notify_all()
            raise
        self._queue.popleft()
        self._owner, self._depth = token, 1


#: held by the run that calls or traces a model now (one at a time; see the module docstring)
MODEL_TURN = ModelTurn()


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """What every ``torch.export.export`` call of nnvitals runs in: the model turn (no model is
    called meanwhile by another run), then :data:`TRACE_LOCK` (no other trace by the turn's own
    threads)."""
    with MODEL_TURN.hold(), TRACE_LOCK:
        yield

"""Kernel threading while a thread pool runs tasks: one intra-op thread per task.

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
"""

from __future__ import annotations

import contextlib
import threading

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

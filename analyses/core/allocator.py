"""Keep freed tensor memory for reuse instead of handing it back to the OS after every pass.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB, by default) with a
fresh ``mmap`` and gives it back with ``munmap`` on free, and trims the heap's top above 128 kB. A
pass over a batch of activations (a forward pass, IBP's two boxes, a Jacobian) therefore pays
page faults for every large tensor again, each time: on ResNet-18 at 32x32 with 256 samples on
this 2-core machine, IBP spent more CPU time in the kernel (7.7 min of system time over the
benchmark) than in its arithmetic. :func:`hold_freed_memory` raises both thresholds so that freed
blocks are reused: IBP 7.65 s -> 4.49 s, the forward pass 1.89 s -> 1.28 s
(``tests/benchmarks/bench_bounds_speed.py --allocator default|hold``).

The price is memory: a process keeps up to ``trim_mb`` of freed memory (and what fragmentation
holds) rather than returning it. The ``nnvitals`` command applies it to its batch commands, one
process per run; ``nnvitals serve`` does not (a long-lived server should give memory back after
sessions close). In Python, call it once at the start of a script or notebook.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: environment variable that turns it off (``NNVITALS_HOLD_MEMORY=0``)
ENV = "NNVITALS_HOLD_MEMORY"

_applied: tuple[int, int] | None = None


def hold_freed_memory(mmap_mb: int = 1024, trim_mb: int = 1024) -> bool:
    """Raise glibc's mmap threshold to ``mmap_mb`` and its trim threshold to ``trim_mb`` (MB);
    True when applied. Does nothing (False) off glibc, or with ``NNVITALS_HOLD_MEMORY=0``."""
    global _applied
    if os.environ.get(ENV, "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    if _applied == (mmap_mb, trim_mb):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, mmap_mb << 20) == 1 and mallopt(M_TRIM_THRESHOLD, trim_mb << 20) == 1
    if ok:
        _applied = (mmap_mb, trim_mb)
    else:
        log.debug("mallopt refused the thresholds (%s MB, %s MB)", mmap_mb, trim_mb)
    return ok

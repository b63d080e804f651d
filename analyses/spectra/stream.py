"""A prefetching reader: the next weight matrices are read while the current ones are analysed.

On a GPU the eigensolves are fast enough that reading a checkpoint from disk (and, without
care, converting fp16 to float32 on the host) would leave the device waiting. A
:class:`Prefetcher` reads the weights of a run in a background thread, in the order the tasks
will ask for them (a sharded checkpoint shard by shard, each from start to end), into
page-locked memory when the device is a GPU (so copies to it are asynchronous; the conversion to
float32 then happens on the device), and hints the kernel to read ahead the tensor after the one
it reads (:meth:`~analyses.core.formats.SafetensorsFile.readahead`).

Host memory stays bounded: the reader holds at most ``budget`` bytes of weights that no task has
taken yet (at least one tensor), and waits when it is full. It never makes a task wait on that
bound: a task asking for a tensor the reader has not started reads it itself, and a tensor the
reader is reading is waited for. So a task that fails, or tasks run out of order, can never
dead-lock it. The reader stops when closed, when it has read everything, or when nobody has taken a
tensor for ``idle`` seconds while it waited (a run that was abandoned).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import torch

from ..core.subject import Subject, WeightRef

#: bytes of read-ahead weights held for a GPU / for the CPU
GPU_BUDGET = 512 * 2**20
CPU_BUDGET = 256 * 2**20


def _nbytes(ref: WeightRef) -> int:
    itemsize = torch.empty((), dtype=getattr(torch, ref.dtype, torch.float32)).element_size()
    return math.prod(ref.shape) * itemsize


class Prefetcher:
    """Reads ``refs`` of ``subject`` ahead of the tasks, in that order (module docstring).

    ``get(name)`` returns the stored tensor (as :meth:`Subject.tensor` would; page-locked when
    ``pin``). Thread-safe; ``close()`` stops the reader and drops what it holds.
    """

    def __init__(
        self,
        subject: Subject,
        refs: Sequence[WeightRef],
        budget: int = CPU_BUDGET,
        pin: bool = False,
        idle: float = 120.0,
    ):
        self.subject = subject
        self.order = [r.name for r in refs]
        self.size = {r.name: _nbytes(r) for r in refs}
        self.budget, self.pin, self.idle = int(budget), bool(pin), float(idle)
        self._cond = threading.Condition()
        self._state = dict.fromkeys(self.order, "pending")  # pending, reading, ready, taken
        self._ready: dict[str, torch.Tensor | BaseException] = {}
        self._held = 0
        self._closed = False
        self._last_take = time.monotonic()
        #: statistics: tensors read by the reader, read by tasks themselves, seconds tasks waited
        self.stats = {"prefetched": 0, "direct": 0, "wait_s": 0.0, "peak_held": 0}
        self._thread = threading.Thread(target=self._run, name="nnvitals-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reading
    def _read(self, name: str) -> torch.Tensor:
        if self.pin:
            pinned = getattr(self.subject, "tensor_pinned", None)
            if pinned is not None:
                return pinned(name)
            t = self.subject.tensor(name)
            return t if t.is_pinned() or t.device.type != "cpu" else t.pin_memory()
        return self.subject.tensor(name)

    def _hint(self, i: int) -> None:
        ahead = getattr(self.subject, "readahead", None)
        if ahead is not None and i < len(self.order):
            try:
                ahead(self.order[i])
            except Exception:  # a hint only
                pass

    def _run(self) -> None:
        for i, name in enumerate(self.order):
            with self._cond:
                while (
                    not self._closed
                    and self._held > 0
                    and self._held + self.size[name] > self.budget
                    and self._state[name] == "pending"
                ):
                    self._cond.wait(timeout=1.0)
                    if time.monotonic() - self._last_take > self.idle:  # abandoned
                        self._closed = True
                if self._closed:
                    break
                if self._state[name] != "pending":  # a task took it and reads it itself
                    continue
                self._state[name] = "reading"
            self._hint(i + 1)
            try:
                t: torch.Tensor | BaseException = self._read(name)
            except BaseException as e:  # handed to the task that asks for it
                t = e
            with self._cond:
                if self._closed:
                    self._state[name] = "taken"
                    self._cond.notify_all()
                    break
                self._ready[name] = t
                self._state[name] = "ready"
                if isinstance(t, torch.Tensor):
                    self._held += self.size[name]
                    self.stats["peak_held"] = max(self.stats["peak_held"], self._held)
                self.stats["prefetched"] += 1
                self._cond.notify_all()
        with self._cond:
            for name, st in self._state.items():  # whatever was not read: tasks read it themselves
                if st == "reading":
                    self._state[name] = "pending"
            self._cond.notify_all()

    # ------------------------------------------------------------------ consuming
    def get(self, name: str) -> torch.Tensor:
        """The stored tensor ``name``: prefetched, being read (waited for), or read now."""
        t0 = time.perf_counter()
        with self._cond:
            self._last_take = time.monotonic()
            st = self._state.get(name)
            if st in ("reading",):
                while self._state.get(name) == "reading":
                    self._cond.wait()
                st = self._state.get(name)
                self.stats["wait_s"] += time.perf_counter() - t0
            if st == "ready":
                t = self._ready.pop(name)
                self._state[name] = "taken"
                if isinstance(t, torch.Tensor):
                    self._held -= self.size[name]
                self._cond.notify_all()
                if isinstance(t, BaseException):
                    raise t
                return t
            self._state[name] = "taken"  # not started (or unknown, or closed): read it here
            self.stats["direct"] += 1
            self._cond.notify_all()
        return self._read(name)

    def close(self) -> None:
        """Stop the reader and drop the tensors it holds."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._held = 0
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def __getstate__(self):  # pragma: no cover - never shipped: the thread runner shares memory
        raise TypeError("a Prefetcher is not picklable; Dask tasks read their own weights")

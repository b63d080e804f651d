"""What closed sessions may leave in the server: dashboard.server.collect_all."""

from __future__ import annotations

import gc
import weakref

from dashboard.server import collect_all


class _Node:
    """An object in a reference cycle of its own."""

    def __init__(self) -> None:
        self.me = self


def _cycle_let_go_by_a_finalizer() -> weakref.ref:
    """A cycle kept by the finalizer of another cycle: free only once that finalizer has run."""
    owner, held = _Node(), _Node()
    weakref.finalize(owner, lambda _held: None, held)
    return weakref.ref(held)


def test_one_collection_leaves_what_a_finalizer_let_go_and_collect_all_frees_it():
    gc.collect()
    kept = _cycle_let_go_by_a_finalizer()
    gc.collect()
    assert kept() is not None, "one pass freed it too: this test no longer shows the second pass"
    gc.collect()
    assert kept() is None
    freed = _cycle_let_go_by_a_finalizer()
    assert collect_all() >= 2
    assert freed() is None

"""What closed and unconnected sessions may hold in the server: dashboard.server.PagesAhead (how
many pages are built before their browsers connect), collect_all (what closed sessions left) and
when a session frozen with start-up objects is collected (_Sessions.busy)."""

from __future__ import annotations

import gc
import re
import sys
import threading
import weakref

from dashboard.server import PAGES_AHEAD, PagesAhead, _Sessions, collect_all, drop_caches


def test_places_run_out_at_the_limit_and_come_back_when_given_back():
    ahead = PagesAhead(2)
    first, second = ahead.claim(), ahead.claim()
    assert first is not None and second is not None
    assert ahead.ahead == 2
    assert ahead.claim() is None, "a third page was let ahead of its browser"
    assert ahead.ahead == 2
    first()
    assert ahead.ahead == 1
    third = ahead.claim()
    assert third is not None and ahead.ahead == 2


def test_a_place_is_given_back_once_however_often_its_session_gives_it_back():
    """A session gives its place back when its browser connects and again when it closes."""
    ahead = PagesAhead(2)
    give_back = ahead.claim()
    other = ahead.claim()
    give_back()
    give_back()
    give_back()
    assert ahead.ahead == 1, "one session's place was given back more than once"
    other()
    assert ahead.ahead == 0


def test_claims_from_many_threads_never_pass_the_limit():
    ahead = PagesAhead(3)
    start = threading.Barrier(16)
    got: list = []
    lock = threading.Lock()

    def take() -> None:
        start.wait()
        for _ in range(200):
            place = ahead.claim()
            if place is not None:
                with lock:
                    got.append(ahead.ahead)
                place()
                place()

    threads = [threading.Thread(target=take) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got, "no thread ever got a place"
    assert max(got) <= 3
    assert ahead.ahead == 0


def test_the_server_builds_a_few_pages_ahead_not_none_and_not_all():
    assert 1 <= PAGES_AHEAD.limit <= 4


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


def test_a_session_counts_from_the_moment_bokeh_lists_it_as_pending():
    """Bokeh lists a new session as pending before it makes its document: from then on the
    session's objects could be frozen with start-up's, and the refreeze waits for it to go."""

    class Context:  # what _Sessions reads of a Bokeh application context
        def __init__(self) -> None:
            self._sessions: dict = {}
            self._pending_sessions: dict = {}

    class FakeServer:
        def __init__(self, contexts) -> None:
            self._tornado = type("T", (), {"_applications": {f"/{i}": c for i, c in enumerate(contexts)}})()

    sessions, first, second = _Sessions(), Context(), Context()
    assert not sessions.busy()
    sessions.watch(FakeServer([first, second]))
    assert not sessions.busy()
    second._pending_sessions["id"] = object()
    assert sessions.busy()
    sessions.frozen()
    assert sessions.refreeze  # a session existed when start-up objects were frozen
    second._pending_sessions.clear()
    first._sessions["id"] = object()
    assert sessions.busy()
    first._sessions.clear()
    assert not sessions.busy()
    sessions.open = 1  # opened (our app), whatever Bokeh lists
    assert sessions.busy()


def test_dropping_caches_lets_go_of_names_and_patterns_sessions_made():
    """The type attribute cache and re's pattern cache hold strings made at run time (each one
    pins the allocator block it sits in, see drop_caches); after drop_caches they do not."""

    class Model:
        pass

    name = "".join(["_Model", "__abstract"])  # made at run time, as Param makes it
    getattr(Model, name, None)  # a failed lookup is cached too, with its name
    pattern = "".join(["p", "[0-9]+"])
    re.match(pattern, "p12")
    held = sys.getrefcount(name), sys.getrefcount(pattern)
    drop_caches()
    assert sys.getrefcount(name) < held[0]
    assert sys.getrefcount(pattern) < held[1]
    assert re.match(pattern, "p12") and getattr(Model, name, None) is None  # both work on

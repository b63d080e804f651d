"""The server's warm-up steps aside while pages are on their way to browsers
(dashboard.server.Loading), for a bounded time."""

from __future__ import annotations

import logging
import threading
import time

import pytest

pytest.importorskip("panel")

from dashboard import server  # noqa: E402
from dashboard.settings import AppSettings  # noqa: E402


def test_loading_is_quiet_once_every_page_arrived_each_counted_once():
    loading = server.Loading()
    assert loading.wait_quiet(0) and loading.loading == 0
    first, second = loading.begin(), loading.begin()
    assert loading.loading == 2 and not loading.wait_quiet(0.01)
    first()
    first()  # shown, then the session closed: counted once
    assert loading.loading == 1 and not loading.wait_quiet(0.01)
    second()
    assert loading.loading == 0 and loading.wait_quiet(0)


@pytest.fixture
def warm_up(tmp_path, monkeypatch):
    """_warm in a thread of its own, with a Loading of the test's and no gc.freeze at its end."""
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    loading = server.Loading()
    monkeypatch.setattr(server, "LOADING", loading)
    finished = threading.Event()
    monkeypatch.setattr(server, "freeze_startup", finished.set)  # the warm-up's last step

    def start() -> threading.Thread:
        thread = threading.Thread(target=server._warm, args=(AppSettings(),), daemon=True)
        thread.start()
        return thread

    return loading, finished, start


def test_the_warm_up_waits_for_the_page_on_its_way(warm_up, monkeypatch):
    loading, finished, start = warm_up
    monkeypatch.setattr(server, "WARM_WAIT_S", 120.0)
    arrived = loading.begin()  # a user came as the server started
    thread = start()
    time.sleep(1.5)
    assert thread.is_alive() and not finished.is_set()  # still waiting: nothing done
    arrived()
    thread.join(120)
    assert finished.is_set()


def test_a_page_that_never_arrives_holds_the_warm_up_back_a_bounded_time(warm_up, monkeypatch, caplog):
    loading, finished, start = warm_up
    monkeypatch.setattr(server, "WARM_WAIT_S", 0.5)
    loading.begin()  # a page request no browser follows
    log = logging.getLogger("nnvitals.app")  # its own handler, whether or not "nnvitals" propagates
    log.addHandler(caplog.handler)
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        start().join(120)
    finally:
        log.removeHandler(caplog.handler)
        log.setLevel(level)
    assert finished.is_set()
    assert "warm-up goes on with 1 pages on their way" in caplog.text

"""Cancel stops an Orbits run inside its task: the token is checked between batches, not only
between tasks (one task scores every element of up to thousands of samples)."""

from __future__ import annotations

import threading
import time

import pytest

from analyses.core.errors import Cancelled
from analyses.core.runner import CancelToken
from analyses.orbits.analysis import OrbitAnalysis, _orbit_task


def _long_run() -> OrbitAnalysis:
    # 72 angles x 1000 samples of 16 x 16 digits: one task, many seconds of forward passes on a CPU
    return OrbitAnalysis(
        model="rot-cnn", data="digits16", split="all", steps=72, max_samples=1000, cache=False,
        show_progress=False,
    )  # fmt: skip


def test_cancel_stops_a_long_orbit_run_within_a_second():
    analysis = _long_run()
    assert len(analysis._tasks(analysis.subject())) == 1  # the runner alone could only stop after it
    token = CancelToken()
    timer = threading.Timer(1.0, token.cancel)
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(Cancelled):
            analysis.run(cancel=token)
    finally:
        timer.cancel()
    took = time.perf_counter() - t0
    assert token.cancelled
    assert took < 1.6, f"the run went on {took - 1.0:.2f} s after Cancel"


def test_a_task_takes_a_cancel_callable_or_token():
    analysis = OrbitAnalysis(model="cnn", data="digits8", steps=8, max_samples=20, cache=False)
    task = analysis._tasks(analysis.subject())[0]
    args = task.args
    out = _orbit_task(*args)  # no token: runs through
    assert out["scores"].shape == (8, 20)
    with pytest.raises(Cancelled):
        _orbit_task(*args, cancel=lambda: True)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        _orbit_task(*args, cancel=token)
    assert _orbit_task(*args, cancel=lambda: False)["scores"].shape == (8, 20)

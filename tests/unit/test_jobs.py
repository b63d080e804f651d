"""Background runs: Cancel is honoured (a cancelled run never shows its result, long tasks stop
between batches), the result on show is marked stale while a new run goes on, and the status
line says in plain words how a result was obtained.

The job panels here run their jobs on the app's shared pool as in a served session
(``background=True``); the test calls :meth:`JobPanel.poll` where a session's timer would.
"""

from __future__ import annotations

import threading
import time

import pytest

from analyses.core.errors import Cancelled, NNVitalsError
from analyses.core.runner import CancelToken, Runner, Task, check_cancelled
from dashboard.components.jobs import FROM_CACHE, JobPanel, how_obtained
from dashboard.components.page import STALE_CLASS, page_main, summary_pane


def _wait_done(panel: JobPanel, timeout: float = 60) -> float:
    """Poll ``panel`` until its job is over; returns the seconds it took."""
    t = time.perf_counter()
    end = t + timeout
    while panel.running and time.perf_counter() < end:
        panel.poll()
        time.sleep(0.02)
    assert not panel.running, f"the job did not end within {timeout} s: {panel.status!r}"
    return time.perf_counter() - t


def test_a_cancelled_run_that_finishes_anyway_never_replaces_the_result():
    panel = JobPanel(background=True)
    shown: list = []
    go = threading.Event()

    def deaf(progress, cancel):  # never looks at its token: ends with a result after Cancel
        go.wait(10)
        return "late result"

    job = panel.submit("Deaf run", deaf, shown.append)
    assert panel.running
    # running, not queued: the shared pool may still be busy with other tests' runs (a queued job
    # is cancelled outright, never "Cancelling")
    end = time.monotonic() + 30
    while job.started is None and time.monotonic() < end:
        time.sleep(0.01)
    panel.cancel()
    assert panel.status == "Cancelling Deaf run …"
    go.set()
    _wait_done(panel)
    assert shown == [], "the result of a cancelled run was shown"
    assert panel.status == "Deaf run: cancelled" and panel.error == ""


def test_cancel_after_the_run_ended_but_before_it_was_shown_drops_it():
    panel = JobPanel(background=True)
    shown: list = []
    job = panel.submit("Quick run", lambda progress, cancel: "result", shown.append)
    job.future.result(timeout=10)  # done on the pool, not yet picked up by the session
    panel.cancel()
    _wait_done(panel)
    assert shown == [] and panel.status == "Quick run: cancelled"


def test_on_cancel_is_called_once_a_cancelled_job_has_ended_and_never_for_a_replaced_one():
    """A page that disabled a button for a job gets it back on Cancel (``on_cancel``), as it does on
    success (``on_done``) and failure (``on_error``); a job replaced by a new one calls nothing."""
    panel, calls = JobPanel(background=True), []
    go = threading.Event()
    panel.submit(
        "Save", lambda progress, cancel: go.wait(10), calls.append, on_cancel=lambda: calls.append("cancel")
    )
    panel.submit("Save again", lambda progress, cancel: go.wait(10) and "saved", calls.append,
                 on_cancel=lambda: calls.append("cancel 2"))  # fmt: skip
    panel.cancel()
    go.set()
    _wait_done(panel)
    assert calls == ["cancel 2"] and panel.status == "Save again: cancelled"
    here, calls = JobPanel(background=False), []

    def cancelled_here(progress, cancel):
        cancel.cancel()
        cancel.check()

    here.submit("Here", cancelled_here, calls.append, on_cancel=lambda: calls.append("cancel"))
    assert calls == ["cancel"] and here.status == "Here: cancelled"


def test_the_result_on_show_is_marked_stale_while_a_new_run_goes_on():
    panel = JobPanel(background=True)
    summary = summary_pane()
    main = page_main("x", "Heading", "text", panel, summary)
    shown: list = []
    panel.submit("First", lambda progress, cancel: "one", shown.append)
    _wait_done(panel)
    assert shown == ["one"] and not panel.stale
    assert panel.status.startswith("Computed in ")

    go = threading.Event()
    panel.submit("Second run", lambda progress, cancel: go.wait(10) and "two", shown.append)
    assert panel.stale
    assert panel._stale_note.visible
    assert panel._stale_note.object == "Showing the previous result — running Second run …"
    assert STALE_CLASS in summary.css_classes and summary.styles["opacity"] == "0.45"
    head = main.objects[0]
    assert STALE_CLASS not in head.css_classes  # the heading and the job panel stay as they are
    go.set()
    _wait_done(panel)
    assert shown == ["one", "two"]
    assert not panel.stale and not panel._stale_note.visible
    # undimmed with explicit values (a dropped style property stays as it was in the browser)
    assert STALE_CLASS not in summary.css_classes and summary.styles["opacity"] == "1"
    assert summary.styles["filter"] == "none"


def test_the_stale_mark_goes_when_the_run_is_cancelled_or_fails():
    panel = JobPanel(background=True)
    panel.submit("First", lambda progress, cancel: "one", lambda r: None)
    _wait_done(panel)
    go = threading.Event()
    panel.submit("Slow", lambda progress, cancel: go.wait(10), lambda r: None)
    assert panel.stale
    panel.cancel()
    assert not panel.stale  # the previous result is the one that stays: no longer stale
    go.set()
    _wait_done(panel)

    def fail(progress, cancel):
        go.wait(10)
        raise NNVitalsError("model x.pt: not a checkpoint")

    go.clear()
    panel.submit("Failing", fail, lambda r: None)
    assert panel.stale
    go.set()
    _wait_done(panel)
    assert not panel.stale and panel.error == "model x.pt: not a checkpoint"


def test_no_stale_mark_before_any_result_was_shown():
    panel = JobPanel(background=True)
    go = threading.Event()
    panel.submit("First", lambda progress, cancel: go.wait(10), lambda r: None)
    assert panel.running and not panel.stale
    go.set()
    _wait_done(panel)


def test_status_says_how_the_result_was_obtained(tmp_path):
    from analyses.spectra.analysis import SpectralAnalysis

    def run(progress, cancel):
        return SpectralAnalysis(model="mlp", cache_dir=str(tmp_path), show_progress=False).run(
            progress=progress, cancel=cancel
        )

    panel = JobPanel(background=True)
    panel.submit("Spectra of mlp", run, lambda r: None)
    _wait_done(panel)
    assert panel.status.startswith("Computed in ") and panel.status.endswith(" s")
    panel.submit("Spectra of mlp", run, lambda r: None)
    _wait_done(panel)
    assert panel.status == FROM_CACHE == "Loaded from the cache (computed earlier with the same settings)"


def test_how_obtained_of_results_returned_together():
    class R:
        def __init__(self, cached):
            self.meta = {"cached": cached}

    assert how_obtained((R(True), R(True)), 3.0) == FROM_CACHE
    assert how_obtained((R(True), R(False)), 3.0) == "Computed in 3.0 s"
    assert how_obtained(object(), 0.25) == "Computed in 0.2 s"


def test_cancel_stops_a_real_orbits_run_within_its_batches():
    """Orbits scores many batches inside one task: Cancel must stop it at the next batch, not when
    the task (here the whole run) ends, and nothing is shown."""
    from analyses.orbits.analysis import OrbitAnalysis

    analysis = OrbitAnalysis(
        model=["rot-cnn", "rot-cnn-aug", "rot-cnn-c4"], steps=72, max_samples=1000, cache=False,
        show_progress=False,
    )  # fmt: skip
    analysis.dataset()  # the data and models are ready: the run itself is what is cancelled
    panel = JobPanel(background=True)
    shown: list = []
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        return analysis.run(progress=progress, cancel=cancel)

    panel.submit("Orbits", work, shown.append)
    assert started.wait(30)
    time.sleep(1.5)  # well inside the run (several seconds here)
    assert panel.running
    panel.cancel()
    took = _wait_done(panel)
    assert shown == [] and panel.status == "Orbits: cancelled"
    assert took < 3.0, f"the run went on for {took:.1f} s after Cancel"


def _batches(n: int, seconds: float, checks: bool) -> int:
    for _ in range(n):
        if checks:
            check_cancelled()
        time.sleep(seconds)
    return n


def test_runner_tasks_check_the_token_between_their_batches():
    token = CancelToken()
    tasks = [Task(_batches, (100, 0.05, True), label=f"t{i}") for i in range(2)]
    threading.Timer(0.3, token.cancel).start()
    t = time.perf_counter()
    with pytest.raises(Cancelled):
        Runner("threads", num_workers=2).map(tasks, cancel=token)
    assert time.perf_counter() - t < 1.5
    check_cancelled()  # outside a task: nothing to check


def test_runner_answers_cancel_without_waiting_for_a_task_that_does_not_check():
    token = CancelToken()
    tasks = [
        Task(_batches, (1, 3.0, False)),
        Task(_batches, (1, 3.0, False)),
        Task(_batches, (1, 3.0, False)),
    ]
    threading.Timer(0.3, token.cancel).start()
    t = time.perf_counter()
    with pytest.raises(Cancelled):
        Runner("threads", num_workers=2).map(tasks, cancel=token)
    assert time.perf_counter() - t < 1.5, "Cancel waited for the running tasks to end"


def test_a_run_waiting_for_the_model_turn_says_so_and_cancel_stops_the_wait(turn_held_elsewhere):
    """Another session's run holds the model turn (analyses.core.threads): a run that calls its
    model says it waits, in the status line, and Cancel ends the wait at once."""
    from analyses.core.analysis import WAITING_STEP
    from analyses.core.threads import MODEL_TURN
    from analyses.orbits.analysis import OrbitAnalysis

    with turn_held_elsewhere():
        analysis = OrbitAnalysis(model="rot-cnn", steps=4, max_samples=8, cache=False, show_progress=False)
        panel, shown = JobPanel(background=True), []
        panel.submit(
            "Orbits", lambda progress, cancel: analysis.run(progress=progress, cancel=cancel), shown.append
        )
        end = time.time() + 30
        while WAITING_STEP not in panel.status and time.time() < end:
            panel.poll()
            time.sleep(0.05)
        assert panel.status == f"Orbits: {WAITING_STEP} …" and panel.running
        panel.cancel()
        took = _wait_done(panel)
        assert shown == [] and panel.status == "Orbits: cancelled" and took < 2.0
        assert MODEL_TURN.waiting() == 0

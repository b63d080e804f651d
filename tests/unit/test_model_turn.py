"""The model turn (analyses.core.threads.MODEL_TURN): of the runs that call or trace a model, one
at a time. torch.export's non-strict trace patches torch.nn.Module's call and the pre-dispatch
mode stack for the whole process: a model called from another thread meanwhile broke the trace
(two app sessions, one exporting for IBP while the other's Orbits ran its model)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from analyses import OrbitAnalysis, SpectralAnalysis
from analyses.core.analysis import WAITING_STEP
from analyses.core.errors import Cancelled
from analyses.core.graph import export_program
from analyses.core.runner import CancelToken, Runner, Task
from analyses.core.threads import MODEL_TURN, TRACE_LOCK, ModelTurn


def _thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_one_holder_at_a_time_in_the_order_asked():
    turn = ModelTurn()
    inside, overlap, order = [0], [], []
    first_in = threading.Event()

    def hold(name: str, pause: float) -> None:
        with turn.hold():
            inside[0] += 1
            overlap.append(inside[0])
            order.append(name)
            first_in.set()
            time.sleep(pause)
            inside[0] -= 1

    a = _thread(hold, "a", 0.3)
    first_in.wait(5)
    b = _thread(hold, "b", 0.05)
    while turn.waiting() < 1:
        time.sleep(0.01)
    c = _thread(hold, "c", 0.05)
    while turn.waiting() < 2:
        time.sleep(0.01)
    for t in (a, b, c):
        t.join(10)
    assert order == ["a", "b", "c"] and overlap == [1, 1, 1]
    assert turn.holder is None and turn.waiting() == 0


def test_reentrant_for_the_holder_and_its_pool_threads():
    """A run holding the turn submits tasks to its own pool: they work for it and pass (a task that
    exports, or runs a nested analysis, would otherwise wait for the run that waits for it)."""
    turn_seen = []

    def task(i: int) -> int:
        with MODEL_TURN.hold():  # as export_program does, on a pool thread
            turn_seen.append(MODEL_TURN.held_here())
            with MODEL_TURN.hold():
                return i * i

    done = threading.Event()
    out = []

    def run() -> None:
        with MODEL_TURN.hold() as token:
            out.extend(Runner("threads", 2).map([Task(task, (i,)) for i in range(6)]))
            out.append(MODEL_TURN.holder is token)
        done.set()

    _thread(run)
    assert done.wait(20), "the pool's tasks waited for the run that held the turn"
    assert out == [0, 1, 4, 9, 16, 25, True] and turn_seen == [True] * 6
    assert MODEL_TURN.holder is None and MODEL_TURN.working_for() is None


def test_a_cancelled_run_stops_waiting():
    turn = ModelTurn()
    release, started = threading.Event(), threading.Event()

    def holder() -> None:
        with turn.hold():
            started.set()
            release.wait(10)

    h = _thread(holder)
    started.wait(5)
    token, told, caught = CancelToken(), [], []

    def waiter() -> None:
        try:
            with turn.hold(token, on_wait=lambda: told.append(1)):
                caught.append("held")
        except Cancelled:
            caught.append("cancelled")

    w = _thread(waiter)
    while not told:
        time.sleep(0.01)
    token.cancel()
    w.join(5)
    assert caught == ["cancelled"] and told == [1] and turn.waiting() == 0
    release.set()
    h.join(5)
    with turn.hold(on_wait=lambda: told.append(2)):  # free again: nobody waits, nothing said
        assert turn.holder is not None
    assert told == [1]


class _Blocking(nn.Module):
    """A model whose trace stops halfway until ``go`` is set (a slow export, made reliable)."""

    def __init__(self, tracing: threading.Event, go: threading.Event):
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)
        self.tracing, self.go = tracing, go

    def forward(self, x):
        y = torch.relu(self.a(x.flatten(1)))
        self.tracing.set()
        self.go.wait(30)
        return self.b(y)


class _Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


def test_a_run_never_calls_its_model_while_another_thread_traces():
    """An Orbits run started while another session's export traces waits for the trace to end
    (and says so), then runs: its model is never called mid-trace. Spectra never waits."""
    tracing, go, traced = threading.Event(), threading.Event(), threading.Event()
    blocking = _Blocking(tracing, go)

    def export() -> None:
        try:
            export_program(blocking, torch.rand(2, 1, 8, 8), label="other", purpose="it")
        finally:
            traced.set()

    t = _thread(export)
    assert tracing.wait(10)
    cnn, own_turn = _Cnn(), []  # at each call of the model: whether its run held the turn
    cnn.register_forward_pre_hook(lambda *_: own_turn.append(MODEL_TURN.held_here()))
    # Spectra reads weights only: it runs now, beside the trace
    spectra = SpectralAnalysis(model=_Cnn(), cache=False, show_progress=False).run()
    assert not traced.is_set() and len(spectra.table) == 2
    steps = []
    orbits = OrbitAnalysis(
        model=cnn, data="digits8", steps=4, max_samples=16, cache=False, show_progress=False, num_workers=2
    )

    def progress(done: int, total: int, label: str) -> None:
        steps.append(label)
        if label == WAITING_STEP:  # it waits: let the trace end
            go.set()

    result = orbits.run(progress=progress)
    t.join(10)
    assert traced.is_set() and own_turn and all(own_turn), own_turn
    assert steps[0] == WAITING_STEP and len(result.table) == 16 * 4
    assert MODEL_TURN.holder is None and not TRACE_LOCK._is_owned()


def test_exports_wait_for_a_run_that_calls_its_model():
    """And the other way: an export asked for while a run holds the turn waits for the run."""
    order, holding = [], threading.Event()

    def run() -> None:
        with MODEL_TURN.hold():
            holding.set()
            time.sleep(0.3)
            order.append("run")

    t = _thread(run)
    holding.wait(5)
    export_program(_Cnn().eval(), torch.rand(2, 1, 8, 8), label="m", purpose="it")
    order.append("export")
    t.join(5)
    assert order == ["run", "export"]


@pytest.fixture(autouse=True)
def _turn_free():
    yield
    assert MODEL_TURN.holder is None and MODEL_TURN.waiting() == 0


def test_a_cancelled_run_keeps_the_turn_until_its_running_tasks_have_stopped():
    """Cancel answers at once (the runner does not wait for a task in the middle of a batch), but
    that task may still call the model: the next run gets the turn only once it has stopped."""
    token, in_task, events = CancelToken(), threading.Event(), []

    def task() -> None:
        in_task.set()
        time.sleep(0.6)  # a batch that does not look at the token
        events.append("task ended")

    def run() -> None:
        with MODEL_TURN.hold():
            try:
                Runner("threads", 2).map([Task(task, ()), Task(task, ())], cancel=token)
            except Cancelled:
                events.append("run cancelled")

    t = _thread(run)
    assert in_task.wait(10)
    token.cancel()
    t.join(5)
    assert events == ["run cancelled"] and MODEL_TURN.holder is not None
    with MODEL_TURN.hold():
        events.append("next run")
    assert events == ["run cancelled", "task ended", "task ended", "next run"]


def _fixed_batch_file(tmp_path) -> str:
    """A ``.pt2`` exported with a fixed batch of 4 (no dynamic shapes)."""
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(_Cnn().eval(), (torch.rand(4, 1, 8, 8),)), str(path))
    return str(path)


def test_pages_find_a_fixed_batch_programs_data_without_waiting_for_the_turn(tmp_path, turn_held_elsewhere):
    """Pages ask which built-in data a model takes while they are built: for a program exported
    with a fixed batch the recorded shape answers, without the re-export (which waits for the
    model turn, here held by another session's run for as long as it runs)."""
    from analyses.orbits.fitting import fitting_data

    path, got = _fixed_batch_file(tmp_path), []
    with turn_held_elsewhere():
        _thread(lambda: got.append(fitting_data(path))).join(5)
        assert got and got[0].data == "digits8" and got[0].source == "export", "the page waited for the turn"


def test_spectra_of_a_fixed_batch_program_neither_reexports_it_nor_waits(tmp_path, turn_held_elsewhere):
    """Spectra reads weights: a program exported with a fixed batch is not re-exported for the
    note on how its batches run (which waited for the model turn, and cost a trace)."""
    analysis, got = SpectralAnalysis(model=_fixed_batch_file(tmp_path), cache=False, show_progress=False), []
    with turn_held_elsewhere():
        _thread(lambda: got.append(analysis.run())).join(20)
        assert got, "Spectra waited for the model turn"
        assert len(got[0].table) == 2 and "notes" not in got[0].meta
        assert "_fix" not in analysis.subject().__dict__


def _waits_then_cancelled_then_saves(turn_held_elsewhere, save, file) -> None:
    """``save(file, progress, cancel)`` while another session's run holds the turn: it says it
    waits (Cancel is pressed then) and raises Cancelled, writing nothing; once free it saves."""
    steps, token = [], CancelToken()

    def progress(done: int, total: int, label: str) -> None:
        steps.append(label)
        token.cancel()  # Cancel pressed while it waits

    with turn_held_elsewhere():
        with pytest.raises(Cancelled):
            save(file, progress, token)
        assert steps == [WAITING_STEP] and not file.exists()
    assert save(file, None, None) == file and file.stat().st_size > 0


def test_saving_a_checkpoint_says_it_waits_for_the_turn_and_can_be_cancelled(tmp_path, turn_held_elsewhere):
    """The Trajectory page's "use this checkpoint" exports it: while another session's run holds
    the model turn, the job says it waits, Cancel ends the wait, and once free it saves."""
    from analyses import Trajectory
    from analyses.zoo import demo_series, series_names

    traj = Trajectory(series=demo_series(series_names()[0]), show_progress=False)
    step = traj.checkpoint_series().checkpoints[-1].step
    _waits_then_cancelled_then_saves(
        turn_held_elsewhere,
        lambda f, p, c: traj.export_checkpoint(step, f, p, c),
        tmp_path / "checkpoint.pt2",
    )


def test_saving_an_interpolated_model_says_it_waits_for_the_turn_and_can_be_cancelled(
    tmp_path, turn_held_elsewhere
):
    """The Connectivity page's "Analyse this interpolated model" traces theta(lam): while another
    session's run holds the model turn it says it waits, Cancel ends the wait, and once free it saves."""
    from analyses import ModeConnectivity

    analysis = ModeConnectivity("mlp", "mlp-untrained", points=3, cache=False, show_progress=False)
    result = analysis.run()
    _waits_then_cancelled_then_saves(
        turn_held_elsewhere,
        lambda f, p, c: analysis.export_interpolated(f, 0.5, "matched", result, p, c),
        tmp_path / "theta.pt2",
    )

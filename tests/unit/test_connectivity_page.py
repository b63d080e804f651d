"""The Connectivity page in Python (no browser): run, tap a point, hand it to the picker, export, errors."""

from __future__ import annotations

import time

import holoviews as hv
import panel as pn
import pytest
import torch
from bokeh.core.validation import check_integrity
from bokeh.document import Document

from analyses.core.errors import NNVitalsError
from dashboard.app import NNVitalsApp
from dashboard.pages.connectivity import ConnectivityPage, partner
from dashboard.settings import AppSettings


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def page():
    p = ConnectivityPage(model=["mlp", "mlp-untrained"], run=False)
    p.analysis.param.update(points=5)
    p.run()
    return p


def test_page_runs_and_draws(page):
    r = page.result
    assert r is not None and page.jobs.error == ""
    assert "**mlp** (A) vs **mlp-untrained** (B)" in page._summary.object
    assert "loss barrier on test" in page._summary.object
    assert (
        "result store" not in page._summary.object
        and "alignment by **weight matching**" in page._summary.object
    )
    # one pane per panel, filling a two-column grid (a bokeh grid plot in a hidden tab collapsed)
    assert len(page._paths.objects) == 2
    for grid in (page._paths, page._barriers, page._layers):
        assert len(grid.objects) == 2
        for pane in grid.objects:
            assert isinstance(pane, pn.pane.HoloViews) and not isinstance(pane.object, hv.Layout)
            assert pane.sizing_mode == "stretch_width"
    assert len(page._many.objects) == 2  # messages: two models only
    # the tables read in plain words on the page; their CSV keeps the column names
    assert "loss barrier" in page._barrier_table.object.columns
    assert not [c for c in page._layer_table.object.columns if "_" in c]
    # bokeh's layout checks pass: no "fixed sizing mode needs width and height" (W-1005), the
    # warning of the grid plots that collapsed in a hidden tab
    root = pn.panel(page).get_root(Document())
    warnings = check_integrity(list(root.references())).warning
    assert not [w for w in warnings if w.code == 1005], warnings


def test_tap_a_point_and_save_it(page, tmp_path):
    assert not page._analyse.visible
    page._streams[0].event(index=[7])  # as a tap on the loss plot does
    p = page.point
    assert p is not None and p["path"] in ("naive", "matched") and page._analyse.visible
    assert f"λ = {p['lam']:.3f}" in page._point_text.object
    path = page.analyse_point()
    assert path is not None and path.suffix == ".pt2" and page.picked == str(path)
    assert page.pick_jobs.status.startswith("Saved in ")  # a save, not a computation
    program = torch.export.load(str(path))
    assert set(program.state_dict) == set(page.result.permuted_b)
    # it computes theta(lam): the same as A's architecture with the interpolated weights loaded
    module = page._analysis().interpolated_module(p["lam"], p["path"], page.result)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(program.module()(x), module(x))


def _poll_until(panel, done, timeout: float) -> None:
    """Poll ``panel`` (what a session's timer does) until ``done()``; fails after ``timeout`` s."""
    end = time.perf_counter() + timeout
    while not done() and time.perf_counter() < end:
        panel.poll()
        time.sleep(0.02)
    assert done(), f"not within {timeout} s: {panel.status!r}"


def test_saving_a_point_says_it_waits_for_the_model_turn_and_can_be_cancelled(page, turn_held_elsewhere):
    """While another session's run calls its model, saving the tapped model (a trace) waits: the
    page's job line says so, with Cancel; Cancel ends the wait and gives the button back; once the
    turn is free the same point saves."""
    from analyses.core.analysis import WAITING_STEP
    from dashboard.components.jobs import JobPanel

    page.pick_jobs = JobPanel(background=True)  # as in a served session: the save runs on the pool
    page._streams[0].event(index=[6])
    with turn_held_elsewhere():
        assert page.analyse_point() is None  # not saved yet: it waits
        assert page._analyse.disabled
        _poll_until(page.pick_jobs, lambda: WAITING_STEP in page.pick_jobs.status, 20)
        name = f"interpolated-{page.point['path']}-lam{page.point['lam']:.3f}.pt2"
        assert page.pick_jobs.status == f"Saving {name}: {WAITING_STEP} …"
        assert page.pick_jobs._cancel.visible
        page.pick_jobs.cancel()
        _poll_until(page.pick_jobs, lambda: not page.pick_jobs.running, 10)
        assert page.pick_jobs.status == f"Saving {name}: cancelled"
        assert not page._analyse.disabled and page._picked_text.object == ""
        assert not (page._out_dir() / name).exists()
    page.analyse_point()
    _poll_until(page.pick_jobs, lambda: not page.pick_jobs.running, 60)
    assert page.picked == str(page._out_dir() / name) and "Saved" in page._picked_text.object
    assert page.pick_jobs.status.startswith("Saved in ")
    assert not page._analyse.disabled


def test_a_point_that_cannot_be_saved_says_why_in_one_line(page, tmp_path):
    """The file cannot be written (here a folder stands at its path): one line in the page, the
    button back, nothing picked."""
    from dashboard.components.jobs import JobPanel

    page.pick_jobs = JobPanel(background=False)
    page._streams[0].event(index=[2])
    picked, page._tmp = page.picked, tmp_path
    name = f"interpolated-{page.point['path']}-lam{page.point['lam']:.3f}.pt2"
    (tmp_path / name).mkdir()
    assert page.analyse_point() is None
    error = page.pick_jobs.error
    assert error == f"{page._tmp / name}: is a directory; expected a file name", error
    assert not page._analyse.disabled and page._picked_text.object == "" and page.picked == picked


def test_export_figures_and_tables(page, tmp_path):
    figs = list(page.figures())
    assert figs == ["Loss along the path", "Accuracy along the path", "Barriers", "Per-layer alignment"]
    svg = page.export("Loss along the path", tmp_path / "loss.svg")
    assert "<svg" in svg.read_text()[:2000]
    csv = page.export("barriers", tmp_path / "b.csv")
    assert csv.read_text().splitlines()[0].startswith("split,path,barrier")
    # downloads are named after the two models: two comparisons' files never overwrite each other
    page.export_panel.refresh()
    assert (
        page.export_panel._buttons["png"].filename
        == "connectivity_loss_along_the_path-mlp-vs-mlp-untrained.png"
    )
    with pytest.raises(NNVitalsError, match="nothing by that name"):
        page.export("nope", tmp_path / "x.svg")


def test_models_of_different_shapes_show_one_message():
    p = ConnectivityPage(model=["mlp", "cnn"])
    assert p.result is None and p.jobs.error
    assert "Traceback" not in p.jobs.error and "\n" not in p.jobs.error.strip()
    p = ConnectivityPage(model=["mlp"], run=False)  # a model with no partner among the sources
    p.set_models(["assets/zoo/cnn.safetensors", None])
    assert "Choose model B" in p._summary.object


def test_partner():
    assert partner("mlp-w64-a", ["mlp-w64-a", "mlp-w64-b"]) == "mlp-w64-b"
    assert partner("bn-cnn-b", ["bn-cnn-a"]) == "bn-cnn-a"
    assert partner("mlp", ["mlp", "mlp-untrained"]) == "mlp-untrained"
    assert partner("x.safetensors", ["mlp"]) is None


def test_in_the_app_the_point_becomes_the_picked_model():
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.page = "connectivity"
    page = app.pages["connectivity"]
    assert app._main.objects == [page.main]
    page.analysis.points = 5
    page.set_models(["mlp", "mlp-untrained"])
    assert page.result is not None, page.jobs.error
    page.select(3)
    path = page.analyse_point()
    assert app.picker.model == str(path) and path.parent == app.picker.upload_dir
    assert any(v == str(path) for v in app.picker.sources.values())
    assert page.models[0] != str(path)  # the page keeps comparing A and B
    app.page = "spectra"
    spectra = app.pages["spectra"]
    assert spectra.result is not None and spectra.result.meta["subject"]["label"] == path.name
    app.page = "lipschitz"  # a runnable program: the bounds run on it too
    bounds = app.pages["bounds"]
    assert bounds.jobs.error == "" and bounds.lip_result is not None, bounds.jobs.error
    app.close()


def test_in_the_app_model_a_is_the_sidebars_model():
    """One truth: model A is the picker's model, named as the sidebar names it, on the page's line;
    opened while nobody chose a model, the page's demo pair's A becomes the picker's model."""
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.page = "connectivity"
    page = app.pages["connectivity"]
    assert app.picker.model == "mlp-w64-a" and app.picker._select.value == "mlp-w64-a"
    assert page.models[:2] == ["mlp-w64-a", "mlp-w64-b"]
    assert page.analysing.object == "Model A: **mlp\\-w64\\-a** · Model B: **mlp\\-w64\\-b**"
    assert page.main.objects[1] is page.analysing
    controls = " ".join(str(getattr(o, "object", "")) for o in page.controls.objects)
    assert "Model A is the model picked above" not in controls
    page.analysis.points = 5
    app.picker._select.value = "mlp"  # chosen in the sidebar: A follows, B becomes A's partner
    assert page.models[:2] == ["mlp", "mlp-untrained"]
    assert page.analysing.object == "Model A: **mlp** · Model B: **mlp\\-untrained**"
    assert page.result is not None, page.jobs.error
    page.select(3)
    path = page.analyse_point()
    # the sidebar holds the interpolated model; the page keeps comparing A and B and says so
    name = app.picker.name_of(str(path))
    assert "(this session)" in name and page.models[0] == "mlp"
    assert (
        "the sidebar's model" in page.analysing.object
        and "interpolated between them" in page.analysing.object
    )
    app.page = "spectra"
    assert app.pages["spectra"].analysing.object.startswith("Analysing: **θ\\(λ=")
    app.close()

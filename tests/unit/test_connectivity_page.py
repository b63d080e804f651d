"""The Connectivity page in Python (no browser): run, tap a point, hand it to the picker, export, errors."""

from __future__ import annotations

import panel as pn
import pytest
import torch

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
    for pane in (page._loss, page._accuracy, page._barriers, page._layers):
        assert len(pane.objects) == 1
    assert len(page._many.objects) == 2  # messages: two models only
    pn.panel(page).get_root()


def test_tap_a_point_and_save_it(page, tmp_path):
    assert not page._analyse.visible
    page._streams[0].event(index=[7])  # as a tap on the loss plot does
    p = page.point
    assert p is not None and p["path"] in ("naive", "matched") and page._analyse.visible
    assert f"λ = {p['lam']:.3f}" in page._point_text.object
    path = page.analyse_point()
    assert path is not None and path.suffix == ".pt2" and page.picked == str(path)
    program = torch.export.load(str(path))
    assert set(program.state_dict) == set(page.result.permuted_b)
    # it computes theta(lam): the same as A's architecture with the interpolated weights loaded
    module = page._analysis().interpolated_module(p["lam"], p["path"], page.result)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(program.module()(x), module(x))


def test_export_figures_and_tables(page, tmp_path):
    figs = list(page.figures())
    assert figs == ["Loss along the path", "Accuracy along the path", "Barriers", "Per-layer alignment"]
    svg = page.export("Loss along the path", tmp_path / "loss.svg")
    assert "<svg" in svg.read_text()[:2000]
    csv = page.export("barriers", tmp_path / "b.csv")
    assert csv.read_text().splitlines()[0].startswith("split,path,barrier")
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

"""Data that fits the model: fitting_data / common_data, the Orbits analysis on flat-input models,
and the Orbits page picking the digits size of an interpolated .pt2 model (an 8x8 pair's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analyses.core.errors import NNVitalsError
from analyses.orbits.analysis import OrbitAnalysis
from analyses.orbits.fitting import DataFit, common_data, fitting_data, input_shape


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def interpolated(tmp_path_factory) -> str:
    """theta(0.5) of the mlp-w64 pair (8x8 digits) saved by Connectivity as a .pt2 program."""
    from analyses.connectivity.analysis import ModeConnectivity

    mc = ModeConnectivity(
        model_a="mlp-w64-a", model_b="mlp-w64-b", data="digits", points=3, show_progress=False, cache=False
    )
    path = tmp_path_factory.mktemp("interp") / "interpolated-matched-lam0.500.pt2"
    return str(mc.export_interpolated(path, 0.5, "matched", mc.run()))


def _flat_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _pooled_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).eval()  # fmt: skip


def test_demo_models_and_exports_say_their_size(interpolated):
    assert fitting_data("rot-cnn") == DataFit("digits16", 16, False, "demo")
    assert fitting_data("mlp-w64-a").data == "digits8"
    fit = fitting_data(interpolated)
    assert (fit.data, fit.side, fit.flatten, fit.source) == ("digits8", 8, False, "export")
    program = torch.export.load(interpolated)
    assert input_shape(program) == (1, 8, 8)
    assert input_shape(program.module()) == (1, 8, 8)  # ExportedProgram.module() keeps the record
    assert fitting_data(program.module()).data == "digits8"


def test_modules_without_a_record_are_tried_on_a_tiny_batch():
    fit = fitting_data(_flat_mlp())
    assert (fit.data, fit.flatten, fit.source) == ("digits8", True, "probe")
    assert "flattened to 64 features" in fit.describe()
    # a model that runs on any size gets the first candidate (16x16: rotations need room)
    assert fitting_data(_pooled_cnn()).data == "digits16"
    assert fitting_data(_pooled_cnn(), candidates=["digits32"]).data == "digits32"
    # a flat-input export records (N, 1024): digits32 flattened
    ep = torch.export.export(nn.Sequential(nn.Linear(1024, 10)).eval(), (torch.zeros(2, 1024),))
    assert fitting_data(ep) == DataFit("digits32", 32, True, "export")


def test_nothing_fits_is_one_line_naming_the_input():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    ep = torch.export.export(m, (torch.zeros(2, 3, 32, 32),))
    with pytest.raises(NNVitalsError, match=r"takes inputs of shape \(N, 3, 32, 32\)") as e:
        fitting_data(ep)
    assert "\n" not in str(e.value) and "S = 8, 16, 32" in str(e.value)
    with pytest.raises(NNVitalsError, match="runs on none of digits16, digits8, digits32") as e:
        fitting_data(m)
    assert "\n" not in str(e.value)
    # weights only: no answer (the analysis says why when it runs)
    assert fitting_data("assets/zoo/cnn.safetensors") is None
    with pytest.raises(NNVitalsError, match="candidates"):
        fitting_data("cnn", candidates=["mnist"])


def test_several_models_share_one_size(interpolated):
    assert common_data(["mlp", interpolated]).data == "digits8"
    assert common_data(["assets/zoo/cnn.safetensors"]) is None
    with pytest.raises(NNVitalsError, match=r"models: need different data \(rot-cnn takes digits16") as e:
        common_data(["rot-cnn", interpolated])
    assert "\n" not in str(e.value)


def test_orbits_run_a_flat_input_model_on_flattened_images():
    kw = dict(data="digits8", steps=8, max_samples=30, cache=False, show_progress=False)
    flat = OrbitAnalysis(model=_flat_mlp(), **kw).run()
    wrapped = nn.Sequential(nn.Flatten(), *_flat_mlp())
    ref = OrbitAnalysis(model=wrapped.eval(), **kw).run()
    assert flat.scores(0) == pytest.approx(ref.scores(0), abs=1e-6)
    # on 16x16 digits it fails in one line that names the data it needs
    with pytest.raises(NNVitalsError, match=r"failed on images of shape .*data 'digits8' fits it"):
        OrbitAnalysis(model=_flat_mlp(), **{**kw, "data": "digits16"}).run()


def test_orbits_failure_on_an_export_names_the_fitting_data(interpolated):
    with pytest.raises(
        NNVitalsError, match=r"failed on images of shape \(2, 1, 16, 16\).*data 'digits8' fits"
    ):
        OrbitAnalysis(model=interpolated, data="digits16", steps=4, max_samples=10, cache=False).run()


# --------------------------------------------------------------------------- the page
def test_page_runs_an_interpolated_model_on_the_digits_it_takes(interpolated):
    from dashboard.pages.orbits import OrbitsPage

    page = OrbitsPage(model=[interpolated], run=False)
    page.analysis.param.update(steps=8, max_samples=40)
    page.run()
    assert page.jobs.error == ""
    assert page.analysis.data == "digits8" and page._data.value == "digits8"
    assert page.result is not None and page.result.summary["data"].startswith("digits-")


def test_in_the_app_orbits_follows_connectivitys_interpolated_model(interpolated):
    """Orbits open, then Connectivity hands an interpolated 8x8 model to the sidebar: Orbits
    runs it on 8x8 digits (it ran it on 16x16 images and failed with a shape guard before)."""
    from dashboard.app import NNVitalsApp
    from dashboard.settings import AppSettings

    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.page = "orbits"
    orbits = app.pages["orbits"]
    orbits.analysis.param.update(steps=8, max_samples=40)
    app.picker.add_file(interpolated, "θ(λ=0.50) matched, mlp-w64-a – mlp-w64-b")
    assert orbits.models == [interpolated]
    assert orbits.jobs.error == "", orbits.jobs.error
    assert orbits._data.value == "digits8"
    assert orbits.result is not None and len(orbits.result.models) == 1
    # a page opened after the pick starts on the picked model, not on the demo trio
    app.close()
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.picker.add_file(interpolated, "θ(λ=0.50)")
    app.page = "orbits"
    assert app.pages["orbits"].models == [interpolated]
    app.close()


def test_page_says_when_models_need_different_data(interpolated):
    from dashboard.pages.orbits import OrbitsPage

    page = OrbitsPage(model=["rot-cnn", interpolated], run=False)
    page.run()
    assert page.result is None
    assert "models: need different data" in page.jobs.error

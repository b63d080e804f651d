"""Connectivity views: every figure builds, renders on both backends and says what is missing."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pytest
import torch
from torch import nn

from analyses.connectivity import views
from analyses.connectivity.analysis import ModeConnectivity
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.core.export import save_figure
from analyses.zoo.models import DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(seed: int, steps: int = 60) -> nn.Module:
    train = load_digits(split="train")
    torch.manual_seed(seed)
    model = DigitsMLP(64, (32,), 10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return [_train(s) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def pair(models):
    return ModeConnectivity(models[0], models[1], points=7, cache=False, show_progress=False).run()


@pytest.fixture(scope="module")
def three(models):
    return ModeConnectivity(models=models, points=5, plane_points=5, cache=False, show_progress=False).run()


def test_path_plot_has_four_curves_and_tappable_points(pair):
    plot = views.path_plot(pair, "loss")
    curves = [el for el in plot if isinstance(el, hv.Curve)]
    assert len(curves) == 4  # naive/matched x train/test
    pts = views.path_points(plot)
    frame = views.path_frame(pair)
    assert len(pts) == len(frame) == 2 * 2 * 7
    assert set(pts.data["path"]) == {"naive", "matched"}
    title = plot.opts.get().kwargs["title"]
    assert "barrier naive" in title and "matched" in title
    acc = views.path_plot(pair, "accuracy")
    assert hv.renderer("bokeh").get_plot(acc) is not None
    with pytest.raises(NNVitalsError, match="metric 'nope'"):
        views.path_plot(pair, "nope")


def test_barriers_layers_and_text(pair):
    table = views.barrier_table(pair)
    assert set(table["path"]) == {"naive", "matched"} and set(table["split"]) == {"train", "test"}
    row = table[(table["split"] == "test") & (table["path"] == "naive")].iloc[0]
    assert row["barrier"] == pytest.approx(pair.summary["barrier_naive"])
    assert isinstance(views.barrier_plot(pair), hv.Layout)
    assert isinstance(views.layer_plot(pair), hv.Layout)
    text = views.summary_text(pair)
    assert (
        "loss barrier on test: naive" in text and "matched (weight matching)" in text and "singular" in text
    )


def test_pairwise_and_plane_need_three_models(pair, three):
    msg = views.pairwise_heatmap(pair)
    assert isinstance(msg, hv.Overlay) and "three or more" in str(msg.get(1).text)
    hm = views.pairwise_heatmap(three, "barrier", "matched")
    assert isinstance(hm, hv.HeatMap) and len(hm) == 9
    plane = views.plane_plot(three)
    mesh = plane.get(0)
    assert isinstance(mesh, hv.QuadMesh) and mesh.dimension_values(2, flat=False).shape == (5, 5)
    assert "three or more" in str(views.plane_plot(pair).get(1).text)
    assert set(views.main_figures(three)) == {
        "path_loss",
        "path_accuracy",
        "barriers",
        "layers",
        "pairwise",
        "plane",
    }


def test_every_figure_saves_as_svg(three, tmp_path):
    figs = views.main_figures(three)
    for stem in ("path_loss", "layers", "plane"):  # one of each kind (curves, bars, mesh)
        fig = figs[stem]
        svg = save_figure(fig, tmp_path / f"{stem}.svg")
        assert "<svg" in svg.read_text()[:3000], stem


def test_interpolated_state_is_the_point_on_the_path(models, pair):
    mc = ModeConnectivity(models[0], models[1], points=7, cache=False, show_progress=False)
    st = mc.interpolated_state(0.5, "matched", pair)
    sa, sb = models[0].state_dict(), pair.permuted_b
    assert torch.allclose(st["fc1.weight"], 0.5 * sa["fc1.weight"] + 0.5 * sb["fc1.weight"], atol=1e-6)
    twin = DigitsMLP(64, (32,), 10)
    twin.load_state_dict(st, strict=True)
    x, y = load_digits(split="test").x, load_digits(split="test").y
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(twin(x), y))
    curve = pair.curve("matched", "test")
    assert loss == pytest.approx(float(curve.loc[np.isclose(curve["lam"], 0.5), "loss"].iloc[0]), rel=1e-4)
    with pytest.raises(NNVitalsError, match="needs|give the result"):
        mc.interpolated_state(0.5, "matched")
    with pytest.raises(NNVitalsError, match=r"\[0, 1\]"):
        mc.interpolated_state(1.5, "naive")


def test_views_refuse_other_results():
    with pytest.raises(NNVitalsError, match="expected a ConnectivityResult"):
        views.path_plot(object())

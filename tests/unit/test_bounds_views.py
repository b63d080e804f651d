"""Views of IBP tightness and Lipschitz results: elements, both backends, linked histogram, errors."""

from __future__ import annotations

import re

import holoviews as hv
import numpy as np
import pytest

from analyses.bounds import views as V
from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.bounds.ibp import tightness_at_init
from analyses.core.errors import NNVitalsError
from analyses.core.export import save_figure
from analyses.core.plotting import log_worthy

FAST = dict(cache=False, show_progress=False, max_samples=24)


@pytest.fixture(scope="module")
def ibp():
    return IBPTightness(model="mlp", eps=0.01, eps_sweep=[0.0, 0.003, 0.03], **FAST).run()


@pytest.fixture(scope="module")
def lip():
    return LipschitzBounds(model="mlp", mixes=8, **FAST).run()


def _opts(obj, backend="bokeh"):
    return hv.Store.lookup_options(backend, obj, "plot").kwargs


def test_ibp_views_elements_and_log_scale(ibp):
    t = V.tightness_plot(ibp)
    # a log axis only when the tightness spans decades; else linear from 0 (it lives in [0, 1])
    values = t.get(0).dimension_values("tightness")
    assert isinstance(t, hv.Overlay) and _opts(t)["logy"] == log_worthy(values)
    if not _opts(t)["logy"]:
        lo, hi = _opts(t)["ylim"]
        assert -0.1 * hi < lo <= 0  # 0 in view, padded: no point on the edge
    assert _opts(V.tightness_plot(ibp, log=True))["logy"]
    names = [n for _, n in _opts(t)["xticks"]]
    assert names == ["fc1", "relu1", "fc2", "relu2", "fc3"]  # the flatten is left out
    curve = t.get(0)
    assert np.allclose(curve.dimension_values("tightness"), ibp.layers["tightness"].to_numpy())
    both = V.tightness_plot({"a": ibp, "b": ibp})
    assert len(both) == 4 and {el.label for el in both} == {"a", "b"}
    ve = V.tightness_vs_eps(ibp)
    assert _opts(ve)["logx"] and np.allclose(
        ve.get(0).dimension_values("eps"), [0.003, 0.03]
    )  # eps 0 dropped
    bars = V.stability_bars(ibp)
    assert isinstance(bars, hv.Bars) and len(bars) == 2 * 3
    sums = bars.data.groupby("layer")["fraction"].sum()
    assert np.allclose(sums, 1.0)
    assert "output tightness" in V.ibp_summary_text(ibp)
    assert set(V.ibp_figures(ibp)) == {"tightness", "relu_stability", "tightness_vs_eps", "certified_vs_eps"}


def test_lipschitz_views_bounds_gap_and_histogram(lip):
    b = V.lipschitz_plot(lip)
    upper = b.get(1).dimension_values("upper")
    assert _opts(b)["logy"] == log_worthy(upper) and "gap" in _opts(b)["title"]
    area = next(el for el in b if isinstance(el, hv.Area))
    assert (area.dimension_values("upper") >= area.dimension_values("lower") * (1 - 1e-6)).all()
    g = V.gap_plot(lip)
    assert (g.get(0).dimension_values("ratio") >= 1 - 1e-6).all()
    h = V.jacobian_histogram(lip, bins=10)
    n = sum(len(lip.jacobian_norms(s)) for s in lip.splits)
    assert h.dimension_values("n_samples").sum() == n == 24 + 24 + 8
    # every sample falls in exactly one bar, and a bar's samples lie in its range
    edges = V.histogram_bins(lip, None, 10)
    total = 0
    for k in range(10):
        df = V.samples_in_bin(lip, k, None, 10)
        total += len(df)
        assert ((df["jacobian_norm"] >= edges[k] - 1e-9) & (df["jacobian_norm"] <= edges[k + 1] + 1e-9)).all()
    assert total == n
    top = V.samples_in_bin(lip, 9, None, 10)
    assert top["jacobian_norm"].max() == pytest.approx(lip.summary["lower"])
    img = V.bin_samples(lip, 9, bins=10)
    assert isinstance(img, hv.Image) and re.search(
        r"\d+ samples? with ‖J‖ [\d.]+–[\d.]+", _opts(img)["title"]
    )
    only_test = V.jacobian_histogram(lip, "test", bins=5)
    assert only_test.dimension_values("n_samples").sum() == 24
    with pytest.raises(NNVitalsError, match="split 'nope'"):
        V.jacobian_histogram(lip, "nope")
    assert "gap" in V.lipschitz_summary_text(lip)


def test_explorer_tap_selects_the_bar_samples(lip):
    ex = V.jacobian_explorer(lip, bins=10)
    counts = ex.histogram.dimension_values("n_samples")
    assert ex.bar == int(np.flatnonzero(counts)[-1])  # opens on the largest norms
    k = int(np.argmax(counts))
    ex.show(k)
    frame = ex.samples[()]
    assert ex.bar == k and f"{int(counts[k])} samples" in _opts(frame)["title"]


def test_wrong_results_and_missing_parts_give_messages(ibp, lip):
    with pytest.raises(NNVitalsError, match="expected an IBPResult"):
        V.tightness_plot(lip)
    with pytest.raises(NNVitalsError, match="expected a LipschitzResult"):
        V.lipschitz_plot(ibp)
    no_sweep = IBPTightness(model="mlp", **FAST).run()
    msg = V.tightness_vs_eps(no_sweep)
    assert isinstance(msg, hv.Overlay) and "eps sweep" in str(msg.get(1).text)
    assert "tightness_vs_eps" not in V.ibp_figures(no_sweep)
    bare = LipschitzBounds(model="mlp", mixes=0, keep_inputs=0, **FAST).run()
    assert bare.inputs("test") is None
    assert "did not keep its samples" in str(V.bin_samples(bare, 19).get(1).text)


def test_init_sweep_plot_and_both_backends(ibp, lip, tmp_path):
    rows = tightness_at_init([8, 32], [2, 3], samples=4)
    sweep = V.init_sweep_plot(rows)
    assert _opts(sweep)["logx"] and len(sweep) == 2 * 3
    figs = {**V.ibp_figures(ibp), **V.lipschitz_figures(lip), "init": sweep}
    figs["explorer"] = V.jacobian_explorer(lip).layout
    for name, fig in figs.items():
        svg = save_figure(fig, tmp_path / f"{name}.svg")
        assert "<svg" in svg.read_text()[:3000], name
        hv.render(fig, backend="bokeh")

"""Spectra views: every builder renders with bokeh and matplotlib, on real results of real models."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import holoviews as hv
import matplotlib
import numpy as np
import pytest
from bokeh.models import HoverTool, Span, TapTool
from bokeh.plotting import figure

from analyses.core.errors import NNVitalsError
from analyses.core.export import ensure_backends
from analyses.spectra import views as V

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def render_both(obj):
    """(bokeh model, matplotlib figure) of ``obj``; the figure is closed (its artists stay readable)."""
    model = hv.render(obj, backend="bokeh")
    fig = hv.render(obj, backend="matplotlib")
    plt.close(fig)
    return model, fig


def figures(model) -> list:
    return list(model.select({"type": figure}))


def glyphs(fig, kind: str) -> list:
    return [r for r in fig.renderers if type(getattr(r, "glyph", None)).__name__ == kind]


def data_glyphs(fig, kind: str) -> list:
    """Glyphs of ``kind`` that draw data (not the empty ones that only carry a legend entry)."""
    out = []
    for r in glyphs(fig, kind):
        cols = [np.asarray(v) for v in r.data_source.data.values()]
        if any(c.dtype.kind == "f" and np.isfinite(c).any() for c in cols):
            out.append(r)
    return out


def titles(model) -> list[str]:
    return sorted(f.title.text for f in figures(model))


# --------------------------------------------------------------------------- metric by layer
def test_metric_by_layer_alpha(spectra_cnn):
    ok = spectra_cnn.analysed
    obj = V.metric_by_layer(spectra_cnn)
    model, fig = render_both(obj)
    (scatter,) = data_glyphs(model, "Scatter")
    data = scatter.data_source.data
    finite = ok[np.isfinite(ok["alpha"].astype(float))]
    assert list(data["layer"]) == list(finite["name"])
    assert np.allclose(data["alpha"], finite["alpha"].astype(float))
    assert set(data["warning"]) <= {"ok", "over-trained", "under-trained", "no fit"}
    tools = {type(t) for t in model.tools}
    assert HoverTool in tools and TapTool in tools
    spans = sorted(s.location for s in model.renderers if isinstance(s, Span))
    assert spans == [2.0, 6.0]
    assert model.y_range.start < 2 and model.y_range.end > 6  # both guides in view
    legend = {str(item.label.value) for item in model.legend[0].items}
    # one legend: the warning categories present and the guides
    assert legend == {*data["warning"], V.GUIDE_LABEL}
    assert "alpha by layer" in model.title.text and "tap" not in model.title.text
    ax = fig.axes[0]
    assert ax.get_title().startswith("alpha by layer")
    assert ax.get_ylabel().startswith("alpha")
    assert ax.get_legend() is not None


def test_metric_by_layer_skips_and_other_metric(spectra_small):
    table = spectra_small.table
    assert (table["status"] == "skipped").sum() == 1  # the 96 x 4 layer
    model, _ = render_both(V.metric_by_layer(spectra_small, "log_norm"))
    (scatter,) = data_glyphs(model, "Scatter")
    assert list(scatter.data_source.data["layer"]) == list(spectra_small.analysed["name"])
    assert not [s for s in model.renderers if isinstance(s, Span)]  # guides only for alpha
    with pytest.raises(NNVitalsError, match="metric 'nope'"):
        V.metric_by_layer(spectra_small, "nope")


# --------------------------------------------------------------------------- ESD
def test_esd_plot_layers_and_fit(spectra_cnn):
    name = "conv2.weight"
    row = spectra_cnn.row(name)
    model, fig = render_both(V.esd_plot(spectra_cnn, name))
    assert name in model.title.text and "α=" in model.title.text and "D=" in model.title.text
    assert type(model.x_scale).__name__ == "LogScale" and type(model.y_scale).__name__ == "LogScale"
    (bars,) = glyphs(model, "Quad")
    lines = {str(item.label.value): item.renderers[0] for item in model.legend[0].items if item.renderers}
    assert {"ESD", "shuffled ESD", "power-law fit", "xmin", "MP bulk edge"} <= set(lines)
    # the histogram is a density: sum(height * width) = 1
    d = bars.data_source.data
    assert math.isclose(
        float(np.sum(np.asarray(d["top"]) * (np.asarray(d["right"]) - np.asarray(d["left"])))), 1.0
    )
    # vertical lines at xmin and at the MP bulk edge
    assert np.allclose(lines["xmin"].data_source.data["lambda"], row["xmin"])
    assert np.allclose(lines["MP bulk edge"].data_source.data["lambda"], row["bulk_max"])
    # the fit: p(l) = (alpha - 1) / xmin (l / xmin)^-alpha times the tail fraction
    fit = lines["power-law fit"].data_source.data
    lam, p = np.asarray(fit["lambda"]), np.asarray(fit["density"])
    n = int((spectra_cnn.esd(name) > 1e-5).sum())
    expect = (
        (row["alpha"] - 1) / row["xmin"] * (lam / row["xmin"]) ** -row["alpha"] * row["num_pl_spikes"] / n
    )
    assert lam.min() >= row["xmin"] * (1 - 1e-9) and np.allclose(p, expect)
    assert np.isfinite(lines["shuffled ESD"].data_source.data["density"]).any()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert name in ax.get_title()


def test_esd_plot_farms_sources(spectra_mlp_farms):
    name = "fc1.weight"
    row = spectra_mlp_farms.row(name)
    model, _ = render_both(V.esd_plot(spectra_mlp_farms, name))  # auto: the ESD alpha was fitted to
    assert model.title.text.startswith("FARMS ESD") and f"α={row['alpha']:.2f}" in model.title.text
    model, _ = render_both(V.esd_plot(spectra_mlp_farms, name, source="layer"))
    assert model.title.text.startswith("ESD") and f"α={row['alpha_plain']:.2f}" in model.title.text


def test_esd_plot_errors(spectra_cnn, spectra_small):
    with pytest.raises(NNVitalsError, match="no FARMS ESD"):
        V.esd_plot(spectra_cnn, "conv2.weight", source="farms")
    with pytest.raises(NNVitalsError, match="not in this result"):
        V.esd_plot(spectra_cnn, "nope.weight")
    skipped = spectra_small.table.loc[spectra_small.table["status"] == "skipped", "name"].iloc[0]
    model, fig = render_both(V.esd_plot(spectra_small, skipped))
    assert "ESD" in model.title.text
    assert any("skipped" in t.get_text() for t in fig.axes[0].texts)


# --------------------------------------------------------------------------- KS
def test_ks_plot_marks_chosen_xmin(spectra_cnn):
    name = "fc1.weight"
    row = spectra_cnn.row(name)
    xs, ds = spectra_cnn.ks_curve(name)
    model, fig = render_both(V.ks_plot(spectra_cnn, name))
    assert type(model.x_scale).__name__ == "LogScale"
    (star,) = glyphs(model, "Scatter")
    sx = float(star.data_source.data["xmin"][0])
    assert math.isclose(sx, float(xs[np.argmin(ds)])) and math.isclose(sx, row["xmin"])
    assert f"D={row['D']:.3f}" in model.title.text
    assert fig.axes[0].get_xscale() == "log"


# --------------------------------------------------------------------------- FARMS
def test_farms_vs_plain(spectra_mlp_farms, spectra_cnn):
    model, fig = render_both(V.farms_vs_plain(spectra_mlp_farms))
    (pts,) = data_glyphs(model, "Scatter")
    ok = spectra_mlp_farms.analysed
    assert np.allclose(sorted(pts.data_source.data["alpha_plain"]), sorted(ok["alpha_plain"].astype(float)))
    assert np.allclose(sorted(pts.data_source.data["alpha"]), sorted(ok["alpha"].astype(float)))
    (diag,) = glyphs(model, "Line")
    dx, dy = diag.data_source.data["alpha_plain"], diag.data_source.data["alpha"]
    assert np.allclose(dx, dy)  # y = x
    assert fig.axes[0].get_xlabel().startswith("plain alpha")
    # without FARMS: an empty panel that says how to get it, in plain words
    model, fig = render_both(V.farms_vs_plain(spectra_cnn))
    (text,) = glyphs(model, "Text")
    assert (
        "FARMS on" in text.data_source.data["text"][0]
        and "farms=True" not in text.data_source.data["text"][0]
    )
    assert any("FARMS on" in t.get_text() for t in fig.axes[0].texts)


def test_alpha_vs_aspect(spectra_mlp_farms, spectra_cnn):
    model, fig = render_both(V.alpha_vs_aspect(spectra_mlp_farms))
    labels = {str(i.label.value) for i in model.legend[0].items}
    assert labels == {"plain alpha", "FARMS alpha"}
    # Q from 2 to 12.8: less than a decade, so a linear axis (a log one crowds its few labels),
    # padded so that no point sits on the edge
    q = spectra_mlp_farms.analysed["Q"].astype(float)
    assert q.max() / q.min() < 10
    assert type(model.x_scale).__name__ == "LinearScale" and fig.axes[0].get_xscale() == "linear"
    assert model.x_range.start < q.min() and model.x_range.end > q.max()
    model, _ = render_both(V.alpha_vs_aspect(spectra_cnn))
    assert len(glyphs(model, "Scatter")) == 1


# --------------------------------------------------------------------------- comparison
def test_compare_models(spectra_mlp_farms, spectra_mlp_untrained):
    trained = spectra_mlp_farms
    tab = V.compare_table(trained, spectra_mlp_untrained)
    assert list(tab["name"]) == list(trained.analysed["name"])
    assert np.allclose(tab["alpha_delta"], tab["alpha_b"] - tab["alpha_a"])
    assert np.allclose(tab["alpha_a"], trained.analysed["alpha"].astype(float))
    obj = V.compare_models(trained, spectra_mlp_untrained, labels=("trained", "untrained"))
    model, fig = render_both(obj)
    top, bottom = sorted(figures(model), key=lambda f: "Δ" in f.title.text)
    assert {str(i.label.value) for i in top.legend[0].items} == {"trained", "untrained"}
    (dots,) = glyphs(bottom, "Scatter")
    assert np.allclose(sorted(dots.data_source.data["delta"]), sorted(tab["alpha_delta"]))
    assert len(fig.axes) == 2


# --------------------------------------------------------------------------- linked explorer
def test_linked_explorer_follows_the_selection(spectra_cnn):
    explorer = V.linked_explorer(spectra_cnn)
    layout, stream = explorer  # unpacks as (layout, stream)
    assert isinstance(layout, hv.Layout) and isinstance(stream, hv.streams.Selection1D)
    names = explorer.names
    assert names == list(spectra_cnn.analysed["name"]) and explorer.selected == names[0]

    # a live bokeh plot (what a notebook or Panel shows) follows stream events
    plot = hv.renderer("bokeh").get_plot(layout)
    figs = {f.title.text.split()[0]: f for f in plot.state.select({"type": figure})}
    esd = figs["ESD"]

    def shown():
        (bars,) = glyphs(esd, "Quad")
        return esd.title.text, np.asarray(bars.data_source.data["top"]).copy(), esd.x_range.end

    first = shown()
    assert names[0] in first[0]
    stream.event(index=[names.index("conv2.weight")])
    second = shown()
    assert "conv2.weight" in second[0] and second[0] != first[0]
    assert len(second[1]) != len(first[1]) or not np.allclose(second[1], first[1])
    assert second[2] != first[2]  # the axes follow the layer
    assert "conv2.weight" in figs["KS"].title.text

    explorer.select("fc1.weight")
    assert explorer.selected == "fc1.weight" and "fc1.weight" in esd.title.text
    # a new rendering (static export, re-display) shows the current selection, with both backends
    model, fig = render_both(layout)
    assert any(t.startswith("ESD fc1.weight") for t in titles(model))
    assert any(ax.get_title().startswith("ESD fc1.weight") for ax in fig.axes)
    with pytest.raises(NNVitalsError, match="not among"):
        explorer.select("nope")


def test_linked_explorer_default_and_other_metric(spectra_small):
    explorer = V.linked_explorer(spectra_small, metric="stable_rank")
    model, _ = render_both(explorer.layout)
    first = spectra_small.analysed["name"].iloc[0]
    assert any(t.startswith(f"ESD {first}") for t in titles(model))
    explorer.stream.event(index=[])  # nothing selected: the first layer
    assert explorer.selected == first


# --------------------------------------------------------------------------- CLI figures
def test_main_figures(spectra_cnn, spectra_mlp_farms):
    figs = V.main_figures(spectra_cnn)
    assert set(figs) == {"alpha_by_layer", "esd_grid"}
    grid = figs["esd_grid"]
    assert isinstance(grid, hv.Layout) and 1 <= len(grid) <= 6
    model, fig = render_both(grid)
    assert len(figures(model)) == len(grid) == len(fig.axes)
    figs = V.main_figures(spectra_mlp_farms)
    assert {"farms_vs_plain", "alpha_vs_aspect"} <= set(figs)


def test_current_backend_kept():
    prev = hv.Store.current_backend
    try:
        for backend in ("matplotlib", "bokeh"):
            hv.Store.set_current_backend(backend)
            ensure_backends()
            assert hv.Store.current_backend == backend
    finally:
        hv.Store.set_current_backend(prev)


def test_analyses_never_import_panel():
    files = sorted((REPO / "analyses").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # anywhere, functions included
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "panel" for a in node.names), rel
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "panel", rel

"""What a reader sees in every figure of Spectra, Orbits, IBP/Lipschitz and Connectivity, on both backends.

Each family's figures (the CLI's, the pages' extra ones) are rendered with bokeh and matplotlib
and checked for the traps a new user fell into: scrolling the page zoomed the plot, legends on
top of the data, points cut in half at the edge, a 0.05% change autoscaled into a cliff, hints
("tap a point") and internal field names (``point``, ``layer_id``) in titles and tooltips,
overlapping titles and tick labels in exports, digits drawn upside down.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess

import holoviews as hv
import matplotlib
import numpy as np
import pytest
from bokeh.models import CustomJSTickFormatter, FixedTicker, HoverTool, Legend, LogScale, Plot, WheelZoomTool

from analyses.bounds import views as BV
from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.connectivity import views as CV
from analyses.connectivity.analysis import ModeConnectivity
from analyses.core.export import ensure_backends
from analyses.core.plotting import PLAIN_TICK_JS, log_axis_ticks, log_worthy, style_panel, value_range
from analyses.orbits import views as OV
from analyses.orbits.analysis import OrbitAnalysis
from analyses.spectra import views as SV

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(cache=False, show_progress=False)


@pytest.fixture(scope="module")
def ibp():
    sweep = [0.001, 0.003, 0.01, 0.03, 0.1]
    return IBPTightness(model="mlp", eps=0.01, eps_sweep=sweep, max_samples=64, **FAST).run()


@pytest.fixture(scope="module")
def lip():
    return LipschitzBounds(model="mlp", mixes=32, max_samples=64, **FAST).run()


@pytest.fixture(scope="module")
def conn():
    return ModeConnectivity(model_a="mlp-w64-a", model_b="mlp-w64-b", points=9, **FAST).run()


@pytest.fixture(scope="module")
def orbits():
    """Rotation orbits of two models (polar plots, a legend), and the other groups' plots."""
    kw = dict(data="digits8", max_samples=30, **FAST)
    return {
        "rotation": OrbitAnalysis(model=["cnn", "mlp"], steps=12, **kw).run(),
        "margin": OrbitAnalysis(model=["cnn", "mlp"], steps=12, score="margin", **kw).run(),
        "shift": OrbitAnalysis(model="cnn", group="shift", shift_range=2.0, **kw).run(),
        "scale": OrbitAnalysis(
            model="cnn", group="scale", scale_range=(0.6, 1.4), scale_step=0.1, **kw
        ).run(),
        "flip": OrbitAnalysis(model="cnn", group="flip", **kw).run(),
    }


def orbit_figures(orbits: dict) -> dict:
    """Every figure the Orbits page shows or exports (and the CLI writes), by name."""
    figs = {}
    for group, r in orbits.items():
        figs.update({f"orbits {group} {k}": v for k, v in OV.main_figures(r).items()})
    r = orbits["rotation"]
    row = int(np.argmax(np.ptp(r.scores(0), axis=1)))
    figs["orbits aggregate of classes 1, 7"] = OV.aggregate_plot(r, classes=[1, 7])
    figs["orbits samples by variance"] = OV.sample_scatter(r, "mlp", color="variance")
    figs["orbits sample along the orbit"] = OV.individual_plot(r, row, 3)
    figs["orbits sample of mlp"] = OV.individual_plot(orbits["margin"], row, 3, models=["mlp"])
    figs["orbits detail"] = OV.detail_view(r, row, 3)
    figs["orbits class probabilities"] = OV.class_probabilities(r, row, 3, model="mlp")
    figs["orbits shift sample"] = OV.individual_plot(orbits["shift"], 0, 4)
    ex = OV.orbit_explorer(r)
    figs.update({f"orbits explorer {k}": v for k, v in ex.panels.items()})
    return figs


@pytest.fixture(scope="module")
def figures(spectra_mlp_farms, spectra_mlp_untrained, ibp, lip, conn, orbits) -> dict:
    """Every figure a page shows or exports, by name."""
    ensure_backends()
    s = spectra_mlp_farms
    figs = {f"spectra {k}": v for k, v in SV.main_figures(s).items()}
    figs["spectra esd"] = SV.esd_plot(s, "fc2.weight")
    figs["spectra ks"] = SV.ks_plot(s, "fc2.weight")
    figs["spectra log_norm"] = SV.metric_by_layer(s, "log_norm")
    figs["spectra explorer"] = SV.explorer_figure(s, "fc2.weight")
    figs["spectra compare"] = SV.compare_models(s, spectra_mlp_untrained, "alpha", ("mlp", "mlp-untrained"))
    figs.update({f"ibp {k}": v for k, v in BV.ibp_figures(ibp).items()})
    figs.update({f"lipschitz {k}": v for k, v in BV.lipschitz_figures(lip).items()})
    figs["lipschitz histogram"] = BV.jacobian_histogram(lip)
    figs.update({f"connectivity {k}": v for k, v in CV.main_figures(conn).items()})
    figs.update(orbit_figures(orbits))
    return figs


def bokeh_plots(obj) -> list[Plot]:
    return list(hv.render(obj, backend="bokeh").select({"type": Plot}))


def mpl_figure(obj):
    fig = hv.render(obj, backend="matplotlib")
    fig.canvas.draw()
    return fig


@pytest.fixture(scope="module")
def bokeh_rendered(figures) -> dict[str, list[Plot]]:
    """Every figure rendered once with bokeh (the checks only read the models)."""
    return {name: bokeh_plots(obj) for name, obj in figures.items()}


@pytest.fixture(scope="module")
def mpl_rendered(figures):
    """Every figure rendered and drawn once with matplotlib, closed when the module is done."""
    rendered = {name: mpl_figure(obj) for name, obj in figures.items()}
    yield rendered
    for fig in rendered.values():
        plt.close(fig)


def _overlap(a, b, slack: float = 1.0) -> bool:
    """Whether two display-space boxes overlap by more than ``slack`` pixels."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


# --------------------------------------------------------------------------- bokeh
#: plots with no zoom tools at all, by design (a few bars on a fixed axis: save and reset only)
NO_ZOOM = {
    "orbits flip aggregate",
    "orbits detail",
    "orbits class probabilities",
    "orbits explorer probabilities",
}


def test_wheel_zoom_is_there_but_not_active(bokeh_rendered):
    """Scrolling the page over a plot must scroll the page: the wheel zoom is opt-in."""
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            if plot.toolbar is None or not plot.tools:
                continue  # a plot without a toolbar (the sample mosaic)
            if name in NO_ZOOM:
                assert not any(isinstance(t, WheelZoomTool) for t in plot.tools), name
                continue
            assert any(isinstance(t, WheelZoomTool) for t in plot.tools), name
            assert not isinstance(plot.toolbar.active_scroll, WheelZoomTool), f"{name}: wheel zoom active"


def test_legends_outside_the_data_area(bokeh_rendered, mpl_rendered):
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            for legend in plot.select({"type": Legend}):
                if legend.items:
                    assert legend not in plot.center, f"{name}: legend drawn over the data"
    for name, fig in mpl_rendered.items():
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:  # clear of its own data and of the layout's other panels
                box = legend.get_window_extent()
                for other in fig.axes:
                    assert not _overlap(box, other.get_window_extent()), f"{name}: exported legend over data"


def test_titles_short_and_without_hints(bokeh_rendered, mpl_rendered):
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            title = plot.title.text if plot.title is not None else ""
            assert "tap" not in title.lower(), f"{name}: a hint in the title {title!r}"
            # a title wider than its plot is cut: about 8 px per character at the plots' font size
            assert len(title) * 8 <= (plot.width or plot.frame_width or 520), f"{name}: {title!r} is cut"
    for name, fig in mpl_rendered.items():
        titles = [ax.title for ax in fig.axes if ax.get_title()]
        assert not any("tap" in t.get_text().lower() for t in titles), name
        for a, b in itertools.combinations(titles, 2):
            assert not _overlap(a.get_window_extent(), b.get_window_extent()), f"{name}: titles overlap"


def test_tooltips_in_plain_words(bokeh_rendered):
    """Hovering shows layer names and values with their meaning, never internal fields."""
    internal = ("point", "layer_id", "index", "_")
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            for hover in plot.select({"type": HoverTool}):
                tips = hover.tooltips if isinstance(hover.tooltips, list) else []
                for label, _value in tips:
                    assert not any(w in label for w in internal), f"{name}: tooltip {label!r}"


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def test_y_ranges_make_small_changes_look_small(bokeh_rendered):
    """A linear axis spans at least 10% of its values, a log one at least a decade: an autoscaled
    0.14450-0.14457 drew a 0.05% change as a cliff (IBP's tightness vs eps)."""
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            start, end = plot.y_range.start, plot.y_range.end
            if start is None or end is None or not plot.renderers:
                continue
            start, end = sorted((float(start), float(end)))
            if isinstance(plot.y_scale, LogScale):
                assert end / start >= 10, f"{name}: log axis over {start:g}-{end:g}"
            elif (plot.yaxis[0].visible if plot.yaxis else False) and not plot.title.text.startswith(
                ("pairwise", "cross-entropy loss over")
            ):
                assert end - start >= 0.1 * max(abs(start), abs(end)) - 1e-12, f"{name}: {start:g}-{end:g}"


def test_points_not_cut_at_the_edges(bokeh_rendered):
    for name, plots in bokeh_rendered.items():
        for plot in plots:
            for r in plot.renderers:
                if type(getattr(r, "glyph", None)).__name__ != "Scatter":
                    continue
                data = r.data_source.data
                for field, rng, scale in (
                    (r.glyph.x.field if hasattr(r.glyph.x, "field") else None, plot.x_range, plot.x_scale),
                    (r.glyph.y.field if hasattr(r.glyph.y, "field") else None, plot.y_range, plot.y_scale),
                ):
                    if field is None or field not in data or getattr(rng, "factors", None):
                        continue
                    v = _finite(data[field])
                    lo, hi = sorted((float(rng.start), float(rng.end)))
                    if isinstance(scale, LogScale):
                        v, lo, hi = np.log10(v[v > 0]), math.log10(lo), math.log10(hi)
                    if v.size:
                        margin = 0.015 * (hi - lo)
                        assert v.min() >= lo + margin and v.max() <= hi - margin, (
                            f"{name}: a point on the edge"
                        )


def test_exported_tick_labels_do_not_overlap(mpl_rendered):
    for name, fig in mpl_rendered.items():
        for ax in fig.axes:
            frame = ax.get_window_extent()
            labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
            # the labels of ticks inside the axis (a locator also labels ticks beyond its ends)
            labels = [
                t for t in labels if frame.x0 - 1 <= np.mean(t.get_window_extent().intervalx) <= frame.x1 + 1
            ]
            boxes = [t.get_window_extent() for t in labels]
            for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels), 2):
                assert not _overlap(a, b), f"{name}: x labels {ta.get_text()!r} and {tb.get_text()!r} overlap"


# --------------------------------------------------------------------------- specific plots
def test_tightness_vs_eps_linear_from_zero(ibp):
    """Tightness lives in [0, 1]; over a narrow range the axis is linear and starts at 0 (padded)."""
    values = BV._sweep_frame(ibp)["tightness"].to_numpy()
    assert not log_worthy(values)
    (plot,) = bokeh_plots(BV.tightness_vs_eps(ibp))
    assert not isinstance(plot.y_scale, LogScale)
    start, end = plot.y_range.start, plot.y_range.end
    assert -0.1 * end < start <= 0 and end >= values.max()  # from 0 (padded: no point on the edge)


def test_value_range():
    lo, hi = value_range([0.14450, 0.14457])
    assert hi - lo >= 0.1 * 0.14457 and lo < 0.14450 and hi > 0.14457
    assert value_range([0.14450, 0.14457], include=(0.0,), floor=0.0)[0] == 0.0
    assert value_range([0.2, 0.9], include=(0.0,), floor=0.0, ceil=1.0) == (0.0, pytest.approx(0.954))
    assert value_range([np.nan]) is None
    lo, hi = value_range([0.0, 0.0])  # all equal to zero: still a range
    assert lo < 0 < hi


def test_bar_samples_square_pixels_upright_and_ranges_of_their_own(lip):
    counts = BV.jacobian_histogram(lip).dimension_values("n_samples")
    many = int(np.argmax(counts))
    for bar in (many, int(np.flatnonzero(counts)[-1])):
        img = BV.bin_samples(lip, bar)
        (plot,) = bokeh_plots(img)
        x0, y0, x1, y1 = img.bounds.lbrt()
        assert (plot.x_range.start, plot.x_range.end) == (x0, x1) and (
            plot.y_range.start,
            plot.y_range.end,
        ) == (y0, y1)
        # square input pixels: the frame has the mosaic's aspect ratio
        assert plot.frame_width / plot.frame_height == pytest.approx((x1 - x0) / (y1 - y0), rel=0.03)
        # the largest-norm sample is the top-left tile, upright (its first row at the top)
        first = BV.samples_in_bin(lip, bar).iloc[0]
        pic = BV._image_of(lip.inputs(first["split"])[int(first["row"])])
        h, w = pic.shape
        shown = np.array([[img[c + 0.5, y1 - r - 0.5] for c in range(w)] for r in range(h)])
        assert np.allclose(shown, pic)
    # in the notebook explorer, the samples' ranges follow each bar (framewise)
    ex = BV.jacobian_explorer(lip)
    frame = ex.samples[()]
    assert hv.Store.lookup_options("bokeh", frame, "norm").kwargs.get("framewise") is True


def test_connectivity_path_tooltips_and_loss_axis_from_zero(conn):
    (fig,) = bokeh_plots(CV.path_plot(conn, "loss"))
    assert -0.1 * fig.y_range.end < fig.y_range.start <= 0
    (hover,) = [h for h in fig.select({"type": HoverTool}) if h.tooltips]
    labels = [label for label, _ in hover.tooltips]
    assert "point" not in labels and "model" in labels


def _js_labels(code: str, ticks: list[float]) -> list[str]:
    """The labels a CustomJSTickFormatter's ``code`` gives ``ticks``: run by node where there is
    one, else its Python equivalent for the log axes' ``Number(tick.toPrecision(6)).toString()``."""
    node = shutil.which("node")
    if node is not None:
        js = f"const f = (tick) => {{ {code} }}; console.log(JSON.stringify({json.dumps(ticks)}.map(f)));"
        return json.loads(subprocess.run([node, "-e", js], capture_output=True, text=True, check=True).stdout)
    assert code == "return Number(tick.toPrecision(6)).toString();", code
    texts = [repr(float(f"{t:.6g}")) for t in ticks]
    return [t[:-2] if t.endswith(".0") else t for t in texts]


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize(
    "lo,hi", [(0.7, 1.1), (0.01, 1.0), (0.02, 3.0), (0.2, 1.2), (0.95, 1.05), (3e-5, 8e-5)]
)
def test_bokeh_log_axis_over_few_decades_has_few_distinct_labels(lo, hi, axis):
    """A log axis over fewer than 2.5 decades gets 3 to 8 labelled ticks, each label different
    (bokeh's own labelled 0.7 to 1.1 as "1.1 1 0.9 0.8 0.7" crowded on top of each other)."""
    ensure_backends()
    a, b = np.linspace(1.0, 2.0, 20), np.geomspace(lo, hi, 20)
    curve = hv.Curve((b, a) if axis == "x" else (a, b), "u", "v")
    (plot,) = bokeh_plots(style_panel(curve, "t", "u", "v", legend=None, **{f"log{axis}": True}))
    (ax,) = plot.xaxis if axis == "x" else plot.yaxis
    rng = plot.x_range if axis == "x" else plot.y_range
    start, end = sorted((float(rng.start), float(rng.end)))
    assert start <= lo and end >= hi and math.log10(end / start) < 2.5
    assert isinstance(ax.ticker, FixedTicker), f"{lo}-{hi}: {type(ax.ticker).__name__}"
    assert isinstance(ax.formatter, CustomJSTickFormatter) and "toPrecision(6)" in ax.formatter.code
    inside = [t for t in ax.ticker.ticks if start <= t <= end]
    labels = _js_labels(ax.formatter.code, inside)
    assert 3 <= len(inside) <= 8, f"{lo}-{hi}: {labels}"
    assert len(set(labels)) == len(labels), f"{lo}-{hi}: labels repeat {labels}"
    # the other axis is linear and keeps bokeh's ticks
    other = (plot.yaxis if axis == "x" else plot.xaxis)[0]
    assert not isinstance(other.ticker, FixedTicker)


def test_bokeh_log_axis_over_many_decades_keeps_log_ticks():
    ensure_backends()
    curve = hv.Curve((np.linspace(1, 2, 20), np.geomspace(1e-5, 1.0, 20)), "u", "v")
    (plot,) = bokeh_plots(style_panel(curve, "t", "u", "v", legend=None, logy=True))
    assert not isinstance(plot.yaxis[0].ticker, FixedTicker)
    assert log_axis_ticks(1e-5, 1.0) is None and log_axis_ticks(0.0, 1.0) is None
    # 3 to 8 different labels on every narrow range, whatever its start
    ranges = [(lo, lo * 10**d) for lo in np.geomspace(1e-6, 1e3, 37) for d in np.linspace(0.001, 2.49, 41)]
    inside = [[t for t in log_axis_ticks(lo, hi)[0] if lo <= t <= hi] for lo, hi in ranges]
    flat = _js_labels(PLAIN_TICK_JS, [t for ticks in inside for t in ticks])
    for (lo, hi), ticks in zip(ranges, inside):
        labels, flat = flat[: len(ticks)], flat[len(ticks) :]
        assert 3 <= len(labels) <= 8 and len(set(labels)) == len(labels), (lo, hi, labels)


def test_legend_columns_fit_the_widest_labels_side_by_side():
    from analyses.core.plotting import LEGEND_ROW_CHARS, legend_columns

    short = ["a", "bb", "ccc"]
    assert legend_columns(short) == 3  # one row
    # four entries, two long: one row is too wide, two columns of the widest labels fit
    four = ["gap", "upper: ∏ layer constants", "lower: max Jacobian norm", "mean Jacobian norm"]
    assert sum(len(t) + 5 for t in four) > LEGEND_ROW_CHARS
    assert legend_columns(four) == 2
    # filled row by row: column j holds labels j, j + cols, ...; its width is its widest label's
    assert legend_columns(["x" * 30, "y" * 30, "z", "w"]) == 1  # two columns: 35 + 35 chars
    assert legend_columns(["x" * 30, "y", "z" * 30, "w"]) == 2  # x above z, y above w: 35 + 6
    assert legend_columns(["x" * 20, "y" * 20, "z" * 20, "w"]) == 2
    assert legend_columns(["one label far too long to fit in any legend row at all, really"]) == 1

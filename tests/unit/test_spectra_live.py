"""The Spectra explorer as plain Bokeh figures (analyses/spectra/live.py), against the HoloViews views.

The live explorer must draw the numbers the HoloViews views draw (both come from esd_data /
ks_data), follow a tap or a stream event, highlight a selection made elsewhere without echoing it
back, and keep the views' reading aids (guides at alpha 2 and 6, readable log ticks, legends).
"""

from __future__ import annotations

import dataclasses

import holoviews as hv
import numpy as np
import pytest
from bokeh.models import FixedTicker, Span

from analyses.core.errors import NNVitalsError
from analyses.core.plotting import value_range
from analyses.spectra import live
from analyses.spectra import views as V


def _title(overlay) -> str:
    return hv.Store.lookup_options("bokeh", overlay, "plot").kwargs.get("title", "")


def _curve(overlay, label: str) -> tuple[np.ndarray, np.ndarray]:
    (el,) = [e for e in overlay if e.label == label]
    return el.dimension_values(0), el.dimension_values(1)


@pytest.mark.parametrize("fixture", ["spectra_cnn", "spectra_mlp_farms", "spectra_small"])
def test_every_layer_is_drawn_as_the_holoviews_views_draw_it(fixture, request):
    result = request.getfixturevalue(fixture)
    ex = live.LiveExplorer(result)
    assert ex.names == V.linked_explorer(result).names
    for name in ex.names:
        ex.select(name)
        assert ex.selected == name
        esd, ks = V.esd_plot(result, name), V.ks_plot(result, name)
        assert ex.esd_figure.title.text == _title(esd)
        assert ex.ks_figure.title.text == _title(ks)
        (hist,) = [e for e in esd if isinstance(e, hv.Rectangles)]
        for col, dim in zip(("left", "bottom", "right", "top"), hist.dimensions()[:4]):
            np.testing.assert_allclose(ex._bars.data[col], hist.dimension_values(dim))
        fit_x, fit_y = _curve(esd, "power-law fit")
        np.testing.assert_allclose(ex._fit.data["x"], fit_x)
        np.testing.assert_allclose(ex._fit.data["y"], fit_y)
        xmin_x, _ = _curve(esd, "xmin")
        np.testing.assert_allclose(ex._guides.data["xmin"], xmin_x)
        xs, ds = _curve(ks, "D(xmin)")
        np.testing.assert_allclose(ex._scan.data["xmin"], xs[np.isfinite(xs)])
        np.testing.assert_allclose(ex._scan.data["D"], ds[np.isfinite(ds)])
        # every bar and the chosen xmin inside the axes
        d = V.esd_data(result, name)
        lo, hi = ex.esd_figure.x_range.start, ex.esd_figure.x_range.end
        assert lo < min(d.bars[0]) and max(d.bars[2]) < hi
        assert (ex.esd_figure.y_range.start, ex.esd_figure.y_range.end) == pytest.approx(d.ylim)
        k = V.ks_data(result, name)
        if k.best is not None:
            assert ex.ks_figure.x_range.start < k.xs[k.best] < ex.ks_figure.x_range.end
            assert ex.ks_figure.y_range.start == 0 and ex.ks_figure.y_range.end > k.ds.max()


def test_the_legends_name_what_each_esd_shows(spectra_cnn, spectra_mlp_farms):
    def labels(ex) -> list[str]:
        return [str(getattr(i.label, "value", i.label)) for i in ex.esd_figure.legend[0].items]

    plain = live.LiveExplorer(spectra_cnn)  # randomize=True: the shuffled ESD is drawn too
    assert labels(plain) == ["ESD", "shuffled ESD", "power-law fit", "xmin", "MP bulk edge"]
    farms = live.LiveExplorer(spectra_mlp_farms)  # the FARMS window ESD has no MP bulk edge
    assert labels(farms) == ["FARMS ESD", "power-law fit", "xmin"]
    assert farms.esd_figure.title.text.startswith("FARMS ESD ")


def test_a_tap_drives_the_stream_and_a_stream_event_the_plots(spectra_cnn):
    ex = live.LiveExplorer(spectra_cnn)
    seen: list[list[int]] = []
    ex.stream.add_subscriber(lambda index=None, **_: seen.append(list(index)))
    last = ex.names[-1]
    ex.source.selected.indices = [len(ex.names) - 1]  # a tap in the browser
    assert seen == [[len(ex.names) - 1]] and ex.selected == last and last in ex.esd_figure.title.text
    ex.source.selected.indices = []  # a tap beside the points: the first layer again
    assert seen[-1] == [] and ex.selected == ex.names[0] and ex.names[0] in ex.ks_figure.title.text
    ex.stream.event(index=[1])  # a selection made by the page (a table click)
    assert ex.names[1] in ex.esd_figure.title.text
    with pytest.raises(NNVitalsError, match="not among the explorer's layers"):
        ex.select("nope")


def test_a_selection_made_elsewhere_is_highlighted_without_an_echo(spectra_cnn):
    scheduled: list = []
    ex = live.LiveExplorer(spectra_cnn, schedule=lambda fn: scheduled.append(fn) or fn())
    events: list = []
    ex.stream.add_subscriber(lambda index=None, **_: events.append(index))
    ex.stream.event(index=[0, 2])
    events.clear()
    ex.show_selection([0, 2])  # the plot highlights what the stream holds: no new stream event
    assert list(ex.source.selected.indices) == [0, 2] and events == []
    n = len(scheduled)
    ex.show_selection([0, 2])  # nothing to change: nothing scheduled
    assert len(scheduled) == n


def test_alpha_guides_log_ticks_and_wheel_zoom(spectra_cnn):
    ex = live.LiveExplorer(spectra_cnn)
    spans = [r for r in ex.metric_figure.center if isinstance(r, Span)]
    assert sorted(s.location for s in spans) == [2.0, 6.0]
    y = ex.metric_figure.y_range
    assert y.start < 2.0 and y.end > 6.0  # both guides always in view
    alphas = np.asarray(ex.source.data["alpha"], float)
    assert y.start < alphas.min() and alphas.max() < y.end
    legend = [str(getattr(i.label, "value", i.label)) for i in ex.metric_figure.legend[0].items]
    assert V.GUIDE_LABEL in legend and set(legend) - {V.GUIDE_LABEL} <= set(V.CATEGORY_COLORS)
    for fig in ex.figures:
        assert fig.toolbar.active_scroll is None  # the wheel scrolls the page, not the plot
    # a log axis over a few decades gets 1-2-5 ticks with plain labels (bokeh's own crowd them)
    d = V.esd_data(spectra_cnn, ex.selected)
    decades = np.log10(d.xlim[1] / d.xlim[0])
    if decades < 2.5:
        assert isinstance(ex.esd_figure.xaxis[0].ticker, FixedTicker)


def test_other_metrics_and_a_metric_without_values(spectra_cnn):
    ex = live.LiveExplorer(spectra_cnn, "log_norm")
    assert not [r for r in ex.metric_figure.center if isinstance(r, Span)]  # guides are alpha's
    vals = np.asarray(ex.source.data["log_norm"], float)
    lo, hi = value_range(vals)
    assert (ex.metric_figure.y_range.start, ex.metric_figure.y_range.end) == pytest.approx((lo, hi))
    assert ex.metric_figure.title.text.startswith("log_norm by layer")
    with pytest.raises(NNVitalsError, match="no analysed layer has a finite"):
        live.LiveExplorer(dataclasses.replace(spectra_cnn, table=spectra_cnn.table.assign(D=np.nan)), "D")

"""The Spectra explorer as plain Bokeh figures, for live pages (the app and a notebook's page).

The same three panels as :func:`analyses.spectra.views.linked_explorer` (a metric by layer; the
selected layer's ESD with its power-law fit, xmin and Marchenko-Pastur bulk edge; its KS scan),
from the same numbers (:func:`~analyses.spectra.views.esd_data`, :func:`~analyses.spectra.views.ks_data`),
but drawn without HoloViews: a new session builds them in a few tens of milliseconds instead of
a few hundred (issue 11: the server's CPU per new session), and a selection swaps the data of
the ESD and KS figures instead of re-rendering them.

HoloViews stays the interface everywhere else: notebooks' ``linked_explorer``, every export
(:func:`~analyses.spectra.views.explorer_figure` and the rest), the other tabs. The selection is
a :class:`holoviews.streams.Selection1D` here too, so a page drives either explorer the same way
(``explorer.stream.event(index=[i])``, ``explorer.names``, ``explorer.select(name)``).

No Panel import: the page wraps the figures in its panes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import holoviews as hv
import numpy as np

from ..core.errors import NNVitalsError
from ..core.plotting import BOKEH_SIZE, bokeh_axes, legend_columns, log_padded, value_range
from . import views as V

#: the toolbar of every panel (wheel zoom is there, inactive: scrolling the page scrolls it)
TOOLS = "pan,box_zoom,wheel_zoom,save,reset"
TITLE_FONT = "12pt"


def _figure(title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False, **kw: Any):
    from bokeh.models import Range1d
    from bokeh.plotting import figure

    fig = figure(
        title=title, x_axis_label=xlabel, y_axis_label=ylabel, tools=TOOLS, toolbar_location="right",
        x_axis_type="log" if logx else "linear", y_axis_type="log" if logy else "linear",
        x_range=Range1d(0, 1), y_range=Range1d(0, 1), height=BOKEH_SIZE["height"],
        width=BOKEH_SIZE["width"], min_border_right=12, **kw,
    )  # fmt: skip
    fig.title.text_font_size = TITLE_FONT
    for axis in (*fig.xaxis, *fig.yaxis):
        axis.axis_label_text_font_size = "11pt"
        axis.axis_label_text_font_style = "normal"
        axis.major_label_text_font_size = "10pt"
    return fig


def _legend(fig, items: list[tuple[str, list]]) -> Any:
    """A legend below the plot (it never hides a point): one row, or rows of as many entries as fit."""
    from bokeh.models import Legend, LegendItem

    legend = Legend(
        items=[LegendItem(label=label, renderers=rs) for label, rs in items],
        orientation="horizontal", location="center", margin=0, padding=4, spacing=14,
        background_fill_alpha=0.7, label_text_font_size="10pt", click_policy="none",
    )  # fmt: skip
    _legend_rows(legend)
    fig.add_layout(legend, "below")
    return legend


def _label(item) -> str:
    """A legend item's text (bokeh wraps a plain label as ``value(...)``)."""
    return str(getattr(item.label, "value", item.label))


def _legend_rows(legend) -> None:
    labels = [_label(i) for i in legend.items]
    cols = legend_columns(labels)
    legend.ncols = cols if cols < len(labels) else "auto"


def _empty() -> Any:
    from bokeh.models import ColumnDataSource

    return ColumnDataSource(dict(x=[], y=[]))


def _line(fig, source, x: str, y: str, color: str, width: float, dash: str = "solid", alpha: float = 1.0):
    """A line glyph without the selection and muted copies the plotting API adds to each."""
    from bokeh.models import Line

    glyph = Line(x=x, y=y, line_color=color, line_width=width, line_dash=dash, line_alpha=alpha)
    return fig.add_glyph(source, glyph)


def _set_range(rng, lo: float, hi: float) -> None:
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        rng.start, rng.end = lo, hi


class LiveExplorer:
    """Tap (or box-select) layers in the metric plot; the ESD and KS plots show the first of them.

    - ``figures``: the three bokeh figures (metric by layer, ESD, KS scan);
    - ``stream``: the selection, a :class:`holoviews.streams.Selection1D` whose ``index`` are row
      positions into ``names``; a tap sets it, and so does ``stream.event(index=[...])``;
    - ``source``: the metric plot's data (its ``selected.indices`` are what the plot highlights).

    ``schedule(fn)`` runs a change of the figures where the browser hears of it (a served page
    passes one that moves the change to its session's event loop; default: at once).
    """

    def __init__(
        self,
        result,
        metric: str = "alpha",
        schedule: Callable[[Callable[[], None]], Any] | None = None,
        rows: Any = None,
    ):
        # rows: the result's metric rows (views._metric_rows), when the caller has them already
        rows = V._metric_rows(result, metric) if rows is None else rows
        if rows.empty:
            raise NNVitalsError(f"metric {metric!r}: no analysed layer has a finite {metric}")
        self.result, self.metric = result, metric
        self.names = [str(n) for n in rows["name"]]
        self._schedule = schedule or (lambda fn: fn())
        self._drawn: str | None = None  # the layer the ESD and KS plots show
        self.stream = hv.streams.Selection1D(index=[0])
        self.metric_figure = self._metric_figure(rows)
        self.esd_figure = self._esd_figure()
        self.ks_figure = self._ks_figure()
        self.figures = [self.metric_figure, self.esd_figure, self.ks_figure]
        self._draw_layer(self.names[0])
        self.source.selected.indices = [0]
        self.source.selected.on_change("indices", self._on_tap)
        self.stream.add_subscriber(self._on_stream)

    # ------------------------------------------------------------------ the API of LinkedExplorer
    @property
    def selected(self) -> str | None:
        """The layer the ESD and KS plots show (the first selected, else the first layer)."""
        return V._pick(self.names, self.stream.index)

    def select(self, name: str) -> None:
        """Show layer ``name`` (as if its point had been tapped)."""
        if name not in self.names:
            raise NNVitalsError(f"layer {name!r}: not among the explorer's layers ({', '.join(self.names)})")
        self.stream.event(index=[self.names.index(name)])

    def show_selection(self, index: list[int]) -> None:
        """Highlight the points ``index`` in the metric plot (a selection made elsewhere)."""
        index = [int(i) for i in index]

        def push() -> None:
            if list(self.source.selected.indices) != index:
                self.source.selected.indices = index

        if list(self.source.selected.indices) != index:
            self._schedule(push)

    # ------------------------------------------------------------------ figures
    def _metric_figure(self, rows) -> Any:
        from bokeh.models import (
            BoxSelectTool,
            ColumnDataSource,
            FixedTicker,
            HoverTool,
            Scatter,
            Span,
            TapTool,
        )

        metric = self.metric
        data = rows[["layer_id", metric, "name", "layer_type", "N", "M", "category"]].rename(
            columns=V._PLOT_NAMES
        )
        data["color"] = [V.CATEGORY_COLORS.get(c, "#999999") for c in data["warning"]]
        self.source = ColumnDataSource(data)
        subject = self.result.meta.get("subject", {}).get("label", "")
        title = f"{metric} by layer" + (f": {subject}" if subject else "")
        fig = _figure(title, "layer (depth)", V.METRIC_LABELS.get(metric, metric))
        _line(fig, self.source, "layer_id", metric, "#888888", 1.0, alpha=0.7)
        style = dict(x="layer_id", y=metric, size=11, fill_color="color", line_color="white")
        points = fig.add_glyph(
            self.source, Scatter(**style),
            nonselection_glyph=Scatter(**style, fill_alpha=0.35, line_alpha=0.35),
            selection_glyph=Scatter(**(style | dict(line_color="black")), line_width=2.5),
        )  # fmt: skip
        hover = HoverTool(
            renderers=[points], tooltips=V._layer_tooltips(V.METRIC_LABELS.get(metric, metric), metric)
        )
        tap = TapTool(renderers=[points])
        fig.add_tools(hover, tap, BoxSelectTool(renderers=[points]))
        fig.toolbar.active_tap = tap
        # one legend entry per warning category present: a glyph in its colour over no data (one
        # shared empty source); the points themselves fade when another one is selected
        keys = ColumnDataSource(dict(x=[np.nan], y=[np.nan]))
        items = [
            (cat, [fig.add_glyph(keys, Scatter(x="x", y="y", size=11, fill_color=color, line_color="white"))])
            for cat, color in V.CATEGORY_COLORS.items() if cat in set(data["warning"])
        ]  # fmt: skip
        vals = data[metric].to_numpy(float)
        if metric in ("alpha", "alpha_plain"):
            for y in (2.0, 6.0):
                fig.add_layout(Span(location=y, dimension="width", line_color=V.GUIDE_COLOR, line_width=1.0,
                                    line_dash="dashed", line_alpha=0.8))  # fmt: skip
            key = _line(fig, _empty(), "x", "y", V.GUIDE_COLOR, 1.0, "dashed", 0.8)
            items.append((V.GUIDE_LABEL, [key]))
            lo, hi = min(float(vals.min()), 2.0), max(float(vals.max()), 6.0)
            pad = 0.06 * (hi - lo)
            ylim = (lo - pad, hi + pad)
        else:  # near-equal values must not fill the axis
            ylim = value_range(vals)
        _set_range(fig.y_range, *ylim)
        ids = data["layer_id"].to_numpy(float)
        span = float(ids.max() - ids.min()) or 1.0
        _set_range(fig.x_range, float(ids.min()) - 0.05 * span, float(ids.max()) + 0.05 * span)
        ticks = V._layer_ticks(ids).get("xticks")
        if ticks:
            fig.xaxis.ticker = FixedTicker(ticks=ticks)
        _legend(fig, items)
        bokeh_axes(fig)
        return fig

    def _esd_figure(self) -> Any:
        from bokeh.models import ColumnDataSource, Quad, Step

        fig = _figure("ESD", "eigenvalue λ", "density p(λ)", logx=True, logy=True)
        self._bars = ColumnDataSource(dict(left=[], bottom=[], right=[], top=[]))
        self._rand, self._fit = _empty(), _empty()
        self._guides = ColumnDataSource(dict(xmin=[], bulk=[], y=[]))  # the two vertical lines
        bars = fig.add_glyph(self._bars, Quad(
            left="left", right="right", bottom="bottom", top="top", fill_color=V.ESD_COLOR, fill_alpha=0.55,
            line_color=V.ESD_COLOR, line_alpha=0.9, line_width=0.5,
        ))  # fmt: skip
        rand = fig.add_glyph(
            self._rand,
            Step(x="x", y="y", mode="center", line_color=V.RAND_COLOR, line_width=1.4, line_alpha=0.85),
        )
        fit = _line(fig, self._fit, "x", "y", V.FIT_COLOR, 2.5)
        xmin = _line(fig, self._guides, "xmin", "y", V.XMIN_COLOR, 1.5, "dashed")
        bulk = _line(fig, self._guides, "bulk", "y", V.BULK_COLOR, 1.5, "dotted")
        self._esd_renderers = dict(bars=bars, rand=rand, fit=fit, xmin=xmin, bulk=bulk)
        self._esd_legend = _legend(fig, [])
        return fig

    def _ks_figure(self) -> Any:
        from bokeh.models import ColumnDataSource, HoverTool, Scatter

        fig = _figure("KS scan", "candidate xmin", "KS distance D", logx=True)
        self._scan = ColumnDataSource(dict(xmin=[], D=[]))
        self._chosen = ColumnDataSource(dict(xmin=[], D=[]))
        curve = _line(fig, self._scan, "xmin", "D", V.ESD_COLOR, 1.8)
        star = fig.add_glyph(self._chosen, Scatter(
            x="xmin", y="D", marker="star", size=18, fill_color=V.FIT_COLOR, line_color=V.FIT_COLOR
        ))  # fmt: skip
        fig.add_tools(HoverTool(renderers=[star], tooltips=V.KS_TOOLTIPS))
        _legend(fig, [("D(xmin)", [curve]), ("chosen xmin", [star])])
        return fig

    # ------------------------------------------------------------------ showing a layer
    def _draw_layer(self, name: str) -> None:
        from bokeh.models import LegendItem

        d = V.esd_data(self.result, name)
        r = self._esd_renderers
        self.esd_figure.title.text = d.title if d.message is None else f"{d.title} ({d.message})"
        if d.message is None:
            left, bottom, right, top = d.bars
            self._bars.data = dict(left=left, bottom=bottom, right=right, top=top)
            self._rand.data = dict(x=d.rand[0], y=d.rand[1])
            self._fit.data = dict(x=d.fit[0], y=d.fit[1])
            self._guides.data = dict(xmin=[d.xmin, d.xmin], bulk=[d.bulk, d.bulk], y=list(d.ylim))
            _set_range(self.esd_figure.x_range, *d.xlim)
            _set_range(self.esd_figure.y_range, *d.ylim)
            items = [(d.label, r["bars"]), (d.rand_label, r["rand"]), ("power-law fit", r["fit"]),
                     ("xmin", r["xmin"]), (d.bulk_label, r["bulk"])]  # fmt: skip
        else:
            for src in (self._bars, self._rand, self._fit, self._guides):
                src.data = {k: [] for k in src.data}
            items = []
        labels = [(label, rend) for label, rend in items if label]
        if [_label(i) for i in self._esd_legend.items] != [t for t, _ in labels]:
            self._esd_legend.items = [LegendItem(label=t, renderers=[rend]) for t, rend in labels]
            _legend_rows(self._esd_legend)

        k = V.ks_data(self.result, name)
        self.ks_figure.title.text = k.title
        good = np.isfinite(k.xs) & np.isfinite(k.ds)
        self._scan.data = dict(xmin=k.xs[good], D=k.ds[good])
        cx, cd = k.chosen
        self._chosen.data = dict(xmin=cx[np.isfinite(cx)], D=cd[np.isfinite(cd)])
        if good.any():
            _set_range(self.ks_figure.x_range, *log_padded(float(k.xs[good].min()), float(k.xs[good].max())))
            top = float(k.ds[good].max())
            _set_range(self.ks_figure.y_range, 0.0, 1.05 * top if top > 0 else 1.0)
        bokeh_axes(self.esd_figure)
        bokeh_axes(self.ks_figure)
        self._drawn = name

    def _on_stream(self, index=None, **_: Any) -> None:
        name = V._pick(self.names, index)
        if name is not None and name != self._drawn:
            self._schedule(lambda: self._draw_layer(name))

    def _on_tap(self, _attr: str, _old: Any, new: Any) -> None:
        index = [int(i) for i in new]
        if index != [int(i) for i in self.stream.index or []]:
            self.stream.event(index=index)

"""Plot styling shared by every family's views: one call sets bokeh and matplotlib options.

Every view builder in ``analyses/<family>/views.py`` styles its elements for both backends, so
the same object renders interactively (bokeh: hover, tap, linked streams) and statically
(matplotlib: SVG/PNG/PDF export). No Panel import here.

Defaults every panel gets from :func:`style_panel` (so no view has to remember them):

- the wheel-zoom tool is there but not active: scrolling a page over a plot scrolls the page
  (pick the tool in the toolbar to zoom with the wheel);
- legends sit outside the data area (below the plot in bokeh, right of it in matplotlib), so
  they never hide a point;
- log axes spanning few decades get 1-2-5 ticks instead of a crowded row of labels.

:func:`value_range` and :func:`log_worthy` choose y ranges that make small changes look small.
"""

from __future__ import annotations

import math
from typing import Any

import holoviews as hv

from .export import ensure_backends

#: default pixel / inch sizes for one panel
BOKEH_SIZE = dict(width=520, height=340)
MPL_SIZE = dict(fig_inches=(6.0, 3.6), aspect="auto")


def apply_opts(obj, common: dict | None = None, bokeh: dict | None = None, mpl: dict | None = None):
    """Apply options for both backends: ``common`` to each, then the backend-specific ones."""
    ensure_backends()
    common = common or {}
    obj = obj.opts(backend="bokeh", **common, **(bokeh or {}))
    return obj.opts(backend="matplotlib", **common, **(mpl or {}))


def _mpl_log_ticks(plot, element) -> None:
    """Matplotlib hook: readable ticks on log axes spanning few decades (1, 2, 5 x 10^k as plain numbers)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax = plot.handles.get("axis")
    if ax is None:
        return
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not (lim[0] > 0 and lim[1] > lim[0]):
            continue
        decades = math.log10(lim[1] / lim[0])
        subs = tuple(range(1, 10)) if decades < 0.8 else (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


#: characters (labels plus 5 per entry for the glyph) a one-row legend below a panel holds
LEGEND_ROW_CHARS = 60
#: log axes spanning fewer decades than this get 1-2-5 ticks (bokeh's own would crowd them)
FEW_DECADES = 2.5
#: every 1, 2, 5 x 10^k and every m x 10^k (m = 1..9) over the float range
_TICKS_125 = sorted(m * 10.0**k for k in range(-30, 31) for m in (1, 2, 5))
_TICKS_19 = sorted(m * 10.0**k for k in range(-30, 31) for m in range(1, 10))
#: a tick as a plain number (0.002, 50, 1e-7): no common precision, no 10^k superscripts
PLAIN_TICK_JS = "return Number(tick.toPrecision(6)).toString();"
#: fewest and most labelled ticks inside a narrow log axis (fewer: evenly spaced ticks, as on a
#: linear axis)
_MIN_LOG_TICKS, _MAX_LOG_TICKS = 3, 8


def legend_columns(labels: list[str]) -> int:
    """Columns of a legend below a panel, filled row by row: all of ``labels`` in one row when
    they fit (``len(labels)``), else the most columns whose widest labels fit side by side (a
    legend wider than its plot is cut at the plot's edge), at least one."""
    n = len(labels)
    for cols in range(n, 1, -1):
        widths = [max(len(t) for t in labels[j::cols]) + 5 for j in range(cols)]
        if sum(widths) <= LEGEND_ROW_CHARS:
            return cols
    return 1


def log_padded(lo: float, hi: float, pad: float = 0.05) -> tuple[float, float]:
    """The range ``lo``..``hi`` (> 0) padded by ``pad`` of its span on each side in log space (a
    single value widened to 1/1.5..1.5 times it first); ``(0.1, 10)`` without positive values."""
    if not (lo > 0 and hi >= lo):
        return 0.1, 10.0
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    a, b = math.log10(lo), math.log10(hi)
    return 10 ** (a - pad * (b - a)), 10 ** (b + pad * (b - a))


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least ``raw`` (> 0)."""
    k = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10.0**k >= raw * (1 - 1e-9):
            return m * 10.0**k
    return 10.0 ** (k + 1)


def log_axis_ticks(lo: float, hi: float) -> tuple[list[float], list[float]] | None:
    """Major and minor ticks of a log axis from ``lo`` to ``hi`` spanning fewer than
    :data:`FEW_DECADES` decades (None for wider ones: bokeh's own log ticks read well there).

    Every m x 10^k (m = 1..9) when 3 to 8 of them fall in the range (0.7 to 1.1: 0.7, 0.8, 0.9, 1),
    else 1, 2, 5 x 10^k when 3 to 8 of those do (0.01 to 1), and over a range so narrow that neither
    does (0.95 to 1.05) 3 to 8 evenly spaced 1, 2, 5 x 10^k steps (0.96, 0.98, 1, 1.02, 1.04).
    """
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return None
    decades = math.log10(hi / lo)
    if decades >= FEW_DECADES:
        return None
    for major in (_TICKS_19, _TICKS_125):
        if _MIN_LOG_TICKS <= sum(lo <= t <= hi for t in major) <= _MAX_LOG_TICKS:
            return major, _TICKS_19
    step = _nice_step((hi - lo) / 7.5)  # 3 to 8 steps in the range
    width = hi - lo  # ticks over three times the range: a little panning keeps them
    first, last = math.ceil((lo - width) / step), math.floor((hi + width) / step)
    ticks = [float(f"{k * step:.12g}") for k in range(max(first, 1), last + 1)]
    minor = [float(f"{k * step / 5:.12g}") for k in range(max(5 * first, 1), 5 * last + 1)]
    return ticks, minor


def _bokeh_axes_hook(plot, element) -> None:
    """Bokeh hook of every panel (run when drawn and on every DynamicMap frame).

    - Wheel zoom is opt-in: the tool stays in the toolbar, inactive, so scrolling the page over a
      plot scrolls the page.
    - A panel sized by its frame is laid out by it (no fixed sizing mode, which asks for an outer size).
    - A log axis over a narrow range gets readable ticks (:func:`log_axis_ticks`: 1, 2, 5 x 10^k,
      every m x 10^k below one decade, evenly spaced below a few of those) with plain numbers;
      over wider ranges bokeh's own log ticks.
    """
    bokeh_axes(plot.state, plot.handles.get("x_range"), plot.handles.get("y_range"))


def bokeh_axes(state, x_range=None, y_range=None) -> None:
    """What :func:`_bokeh_axes_hook` does, for any bokeh figure ``state`` (the app's plain bokeh
    plots call it themselves): wheel zoom opt-in, frame sizing, readable log ticks for the ranges
    ``x_range`` / ``y_range`` (default: the figure's own)."""
    from bokeh.models import CustomJSTickFormatter, FixedTicker, LogScale, LogTicker, LogTickFormatter

    x_range = getattr(state, "x_range", None) if x_range is None else x_range
    y_range = getattr(state, "y_range", None) if y_range is None else y_range
    toolbar = getattr(state, "toolbar", None)
    if toolbar is not None:
        toolbar.active_scroll = None
    if getattr(state, "frame_width", None) and getattr(state, "frame_height", None) and state.width is None:
        # a panel sized by its frame (e.g. square image pixels): no sizing mode, so bokeh lays it
        # out by the frame (an outer size would win over it) without its "fixed sizing mode needs
        # width and height" warning
        state.sizing_mode = None
    for scale, rng, axes in (
        (getattr(state, "x_scale", None), x_range, getattr(state, "xaxis", [])),
        (getattr(state, "y_scale", None), y_range, getattr(state, "yaxis", [])),
    ):
        if not isinstance(scale, LogScale) or rng is None:
            continue
        try:
            lo, hi = sorted((float(rng.start), float(rng.end)))
        except (TypeError, ValueError):
            continue
        if not (lo > 0 and hi > lo and math.isfinite(hi)):
            continue
        few = log_axis_ticks(lo, hi)
        for axis in axes:
            if few is not None:
                axis.ticker = FixedTicker(ticks=few[0], minor_ticks=few[1])
                axis.formatter = CustomJSTickFormatter(code=PLAIN_TICK_JS)
            elif isinstance(axis.ticker, FixedTicker):  # a frame spanning many decades again
                axis.ticker, axis.formatter = LogTicker(), LogTickFormatter()


def _own_axes(obj, **norm):
    """Set norm options (``framewise``: ranges follow each DynamicMap frame; ``axiswise``:
    ranges not shared with the other panels of a layout) on every element of a panel:
    HoloViews reads them from the overlaid elements, not from the overlay. The two are set
    separately: with both, bokeh stops updating the ranges of a DynamicMap.
    """
    if isinstance(obj, hv.Overlay):
        return hv.Overlay([apply_opts(el, norm) for el in obj])
    return apply_opts(obj, norm)


def _legend_labels(obj) -> list[str]:
    """The entries the panel's legend will have: labelled layers, or the categories of a colour."""
    elements = list(obj) if isinstance(obj, hv.Overlay) else [obj]
    labels = list(dict.fromkeys(el.label for el in elements if el.label))
    for el in elements:
        color = hv.Store.lookup_options("bokeh", el, "style").kwargs.get("color")
        if isinstance(color, str) and color in el.dimensions(label="name"):
            cats = [str(c) for c in dict.fromkeys(el.dimension_values(color))]
            labels = cats if len(cats) > len(labels) else labels
    return labels


def style_panel(
    obj,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    logx=False,
    logy=False,
    legend: bool | str | None = True,
    **extra,
):
    """Axes-level options shared by every panel (an Overlay or a single element).

    ``legend``: True (default) for a legend outside the data area (below the plot in bokeh,
    right of the axes in matplotlib: it never hides a point), a position name (bokeh and
    matplotlib agree for the corners, which lie inside the axes) or None/False for none.
    ``norm``: norm options for every element (see :func:`_own_axes`).
    Every panel also gets :func:`_bokeh_axes_hook` (wheel zoom opt-in, readable log ticks).
    """
    norm = extra.pop("norm", None)
    if norm:
        obj = _own_axes(obj, **norm)
    common = dict(
        title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, show_grid=True, padding=0.05
    )
    common.update(extra)
    bk = dict(BOKEH_SIZE, fontscale=1.05, toolbar="right", hooks=[_bokeh_axes_hook])
    mp = dict(MPL_SIZE, fontscale=1.25, hooks=[_mpl_log_ticks] if (logx or logy) else [])
    if legend:
        if legend is True:  # below the plot: one row, or rows of as many entries as fit
            labels = _legend_labels(obj)
            cols = legend_columns(labels)
            bk.update(
                legend_position="bottom", legend_cols=0 if cols >= len(labels) else cols, legend_offset=(0, 0)
            )
            bk_legend = {"margin": 0, "padding": 4, "spacing": 14, "orientation": "horizontal"}
            mp_pos = "right"
        else:
            bk["legend_position"] = mp_pos = legend
            bk_legend = {}
        bk.update(show_legend=True, legend_opts={"background_fill_alpha": 0.7, **bk_legend})
        mp.update(
            legend_position=mp_pos, show_legend=True, legend_opts={"framealpha": 0.7, "fontsize": "small"}
        )
    else:
        bk["show_legend"] = False
        mp["show_legend"] = False
    if legend is True and isinstance(obj, hv.Overlay):
        # matplotlib draws a colour-mapped element's legend itself, where that element says
        mpl_plots = hv.Store.registry.get("matplotlib", {})
        obj = hv.Overlay(
            [
                apply_opts(el, mpl=dict(legend_position="right"))
                if "legend_position" in getattr(mpl_plots.get(type(el)), "param", {})
                else el
                for el in obj
            ]
        )
    return apply_opts(obj, common, bk, mp)


def style_line(obj, color: str, width: float = 1.5, dash: str = "solid", alpha: float = 1.0):
    mpl_dash = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}[dash]
    return apply_opts(
        obj,
        dict(color=color, alpha=alpha),
        dict(line_width=width, line_dash=dash),
        dict(linewidth=width, linestyle=mpl_dash),
    )


def grid_layout(panels: list, cols: int, panel_inches: tuple[float, float] = (4.8, 3.5)) -> hv.Layout:
    """A grid of panels, ``cols`` per row; matplotlib gets a figure sized for the grid.

    Not for layouts holding DynamicMaps: options set on such a Layout give its DynamicMaps
    one shared option tree that then overrides every frame's own (titles included).
    """
    layout = hv.Layout(panels).cols(cols)
    ncols = min(cols, len(panels))
    nrows = math.ceil(len(panels) / cols)
    size = (panel_inches[0] * ncols, panel_inches[1] * nrows)
    return apply_opts(
        layout,
        bokeh=dict(shared_axes=False),
        mpl=dict(sublabel_format="", fig_inches=size, hspace=0.3, vspace=0.45),
    )


def text_label(x: float, y: float, text: str, size: int = 9, color: str = "#555555", **align) -> hv.Text:
    """A text annotation, ``size`` in points on both backends (``halign``/``valign`` as hv.Text)."""
    return apply_opts(hv.Text(x, y, text, fontsize=size, **align), dict(color=color))


def message_panel(title: str, text: str) -> hv.Overlay:
    """A blank panel carrying a message (what is missing and how to get it)."""
    blank = apply_opts(hv.Curve(([0.0, 1.0], [0.0, 1.0])), dict(alpha=0))
    text = "\n".join(p.strip() for p in text.split(": ", 1)) if len(text) > 40 else text
    msg = text_label(0.5, 0.5, text, 12, "#444444")
    over = style_panel(
        blank * msg,
        title,
        "",
        "",
        legend=None,
        xaxis=None,
        yaxis=None,
        xlim=(0, 1),
        ylim=(0, 1),
        show_grid=False,
    )
    return apply_opts(over, bokeh=dict(toolbar=None))


def format_number(x: Any, spec: str = ".2f") -> str:
    """``x`` formatted with ``spec``, or "n/a" when it is missing or not finite (titles, labels)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(x, spec) if math.isfinite(x) else "n/a"


def value_range(
    values: Any,
    *,
    include: tuple[float, ...] = (),
    floor: float | None = None,
    ceil: float | None = None,
    rel_span: float = 0.1,
    pad: float = 0.06,
) -> tuple[float, float] | None:
    """An axis range for ``values`` that makes small changes look small, or None without finite values.

    The range holds every finite value and every number in ``include`` (e.g. 0 for a quantity that
    starts there); it spans at least ``rel_span`` of the largest magnitude (autoscaling 0.14450 to
    0.14457 would draw a 0.05% change as a cliff), is padded by ``pad`` of its span on each side (no
    point cut in half at the edge) and clipped to ``[floor, ceil]`` (where the quantity lives).
    """
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    v = np.concatenate([v[np.isfinite(v)], np.asarray(include, dtype=float)])
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    need = rel_span * max(abs(lo), abs(hi)) or 1.0
    if hi - lo < need:
        mid = (lo + hi) / 2
        lo, hi = mid - need / 2, mid + need / 2
        if lo > float(v.min()) or hi < float(v.max()):  # (round-off) keep every value inside
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    margin = pad * (hi - lo)
    lo, hi = lo - margin, hi + margin
    if floor is not None:
        lo = max(lo, floor)
    if ceil is not None:
        hi = min(hi, ceil)
    return lo, hi


def log_worthy(values: Any, ratio: float = 30.0) -> bool:
    """Whether positive ``values`` spread over enough decades (max / min >= ``ratio``) for a log axis;
    over a narrow range a linear axis reads better (a log axis there crowds its labels)."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and float(v.max()) / float(v.min()) >= ratio

"""Plot styling shared by every family's views: one call sets bokeh and matplotlib options.

Every view builder in ``analyses/<family>/views.py`` styles its elements for both backends, so
the same object renders interactively (bokeh: hover, tap, linked streams) and statically
(matplotlib: SVG/PNG/PDF export). No Panel import here.
"""

from __future__ import annotations

import math
from typing import Any

import holoviews as hv

from .export import ensure_backends

#: default pixel / inch sizes for one panel
BOKEH_SIZE = dict(width=520, height=340)
MPL_SIZE = dict(fig_inches=(6.0, 3.6), aspect="auto")


def _opts(obj, common: dict | None = None, bokeh: dict | None = None, mpl: dict | None = None):
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


def _own_axes(obj, **norm):
    """Set norm options (``framewise``: ranges follow each DynamicMap frame; ``axiswise``:
    ranges not shared with the other panels of a layout) on every element of a panel:
    HoloViews reads them from the overlaid elements, not from the overlay. The two are set
    separately: with both, bokeh stops updating the ranges of a DynamicMap.
    """
    if isinstance(obj, hv.Overlay):
        return hv.Overlay([_opts(el, norm) for el in obj])
    return _opts(obj, norm)


def _panel(
    obj,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    logx=False,
    logy=False,
    legend: str | None = "top_right",
    **extra,
):
    """Axes-level options shared by every panel (an Overlay or a single element).

    ``legend``: its position (bokeh and matplotlib names agree for the corners), None for none.
    ``norm``: norm options for every element (see :func:`_own_axes`).
    """
    norm = extra.pop("norm", None)
    if norm:
        obj = _own_axes(obj, **norm)
    common = dict(
        title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, show_grid=True, padding=0.05
    )
    common.update(extra)
    bk = dict(BOKEH_SIZE, fontscale=1.05, toolbar="right")
    mp = dict(MPL_SIZE, fontscale=1.25, hooks=[_mpl_log_ticks] if (logx or logy) else [])
    if legend:
        bk.update(legend_position=legend, show_legend=True, legend_opts={"background_fill_alpha": 0.7})
        mp.update(
            legend_position=legend, show_legend=True, legend_opts={"framealpha": 0.7, "fontsize": "small"}
        )
    else:
        bk["show_legend"] = False
        mp["show_legend"] = False
    return _opts(obj, common, bk, mp)


def _line(obj, color: str, width: float = 1.5, dash: str = "solid", alpha: float = 1.0):
    mpl_dash = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}[dash]
    return _opts(
        obj,
        dict(color=color, alpha=alpha),
        dict(line_width=width, line_dash=dash),
        dict(linewidth=width, linestyle=mpl_dash),
    )


def _layout(panels: list, cols: int, panel_inches: tuple[float, float] = (4.8, 3.5)) -> hv.Layout:
    """A grid of panels, ``cols`` per row; matplotlib gets a figure sized for the grid.

    Not for layouts holding DynamicMaps: options set on such a Layout give its DynamicMaps
    one shared option tree that then overrides every frame's own (titles included).
    """
    layout = hv.Layout(panels).cols(cols)
    ncols = min(cols, len(panels))
    nrows = math.ceil(len(panels) / cols)
    size = (panel_inches[0] * ncols, panel_inches[1] * nrows)
    return _opts(
        layout,
        bokeh=dict(shared_axes=False),
        mpl=dict(sublabel_format="", fig_inches=size, hspace=0.3, vspace=0.45),
    )


def _text(x: float, y: float, text: str, size: int = 9, color: str = "#555555", **align) -> hv.Text:
    """A text annotation, ``size`` in points on both backends (``halign``/``valign`` as hv.Text)."""
    return _opts(hv.Text(x, y, text, fontsize=size, **align), dict(color=color))


def _message(title: str, text: str) -> hv.Overlay:
    """A blank panel carrying a message (what is missing and how to get it)."""
    blank = _opts(hv.Curve(([0.0, 1.0], [0.0, 1.0])), dict(alpha=0))
    text = "\n".join(p.strip() for p in text.split(": ", 1)) if len(text) > 40 else text
    msg = _text(0.5, 0.5, text, 12, "#444444")
    return _panel(blank * msg, title, "", "", legend=None, xaxis=None, yaxis=None, xlim=(0, 1), ylim=(0, 1))


def format_number(x: Any, spec: str = ".2f") -> str:
    """``x`` formatted with ``spec``, or "n/a" when it is missing or not finite (titles, labels)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(x, spec) if math.isfinite(x) else "n/a"

"""HoloViews views of a :class:`~analyses.spectra.analysis.SpectralResult`.

Functions from a result to HoloViews elements, styled for both plotting backends: bokeh
(interactive: hover, tap, linked selection in notebooks and the app) and matplotlib (static
SVG/PNG/PDF export). Every builder sets its options for both backends, so the same object
renders with ``hv.render(obj, backend="bokeh")`` and ``backend="matplotlib"`` whatever the
session's current backend is. No Panel import here: the app wraps these objects.

What the plots show (WeightWatcher's reading, Martin & Mahoney 2021):

- :func:`metric_by_layer`: a per-layer metric against depth, coloured by the alpha label
  (alpha < 2 "over-trained", alpha > 6 "under-trained"), with guides at alpha = 2 and 6.
- :func:`esd_plot`: the empirical spectral density on log-log axes with the fitted power law
  p(lambda) = (alpha - 1) / xmin (lambda / xmin)^-alpha for lambda >= xmin (scaled by the
  fraction of eigenvalues in the tail), xmin, the Marchenko-Pastur bulk edge, and the ESD of
  the element-wise shuffled matrix when the run had ``randomize=True``.
- :func:`ks_plot`: the KS distance D for every candidate xmin; the fit keeps the minimum.
- :func:`farms_vs_plain`, :func:`alpha_vs_aspect`: FARMS alpha against the plain alpha, and
  both against the aspect ratio Q = N / M (FARMS, ICML 2025, removes the Q dependence).
- :func:`compare_models`: a metric by layer for two results, matched by layer name, and the delta.
- :func:`linked_explorer`: tap a layer in the metric plot, its ESD and KS plots follow.
- :func:`main_figures`, :func:`summary_text`: the figures and the lines ``nnvitals spectra`` writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd

from ..core.errors import NNVitalsError
from ..core.plotting import (
    apply_opts,
    format_number,
    grid_layout,
    log_padded,
    log_worthy,
    message_panel,
    style_line,
    style_panel,
    text_label,
    value_range,
)

__all__ = [
    "CATEGORY_COLORS",
    "EsdData",
    "KsData",
    "LinkedExplorer",
    "alpha_vs_aspect",
    "compare_models",
    "compare_table",
    "esd_data",
    "esd_plot",
    "explorer_figure",
    "farms_vs_plain",
    "ks_data",
    "ks_plot",
    "linked_explorer",
    "main_figures",
    "metric_by_layer",
    "summary_text",
]

#: colour of each warning category (Paul Tol's colour-blind safe "bright" scheme)
CATEGORY_COLORS = {
    "ok": "#4477AA",
    "over-trained": "#EE6677",
    "under-trained": "#CCBB44",
    "no fit": "#999999",
}
#: the two models of :func:`compare_models`
PAIR_COLORS = ("#4477AA", "#EE7733")
FIT_COLOR, XMIN_COLOR, BULK_COLOR, ESD_COLOR, RAND_COLOR = (
    "#CC3311",
    "#CC3311",
    "#7B3294",
    "#4477AA",
    "#555555",
)

METRIC_LABELS = {
    "alpha": "alpha (power-law exponent)",
    "alpha_plain": "plain alpha",
    "alpha_weighted": "alpha_weighted (alpha log10 lambda_max)",
    "log_alpha_norm": "log_alpha_norm",
    "log_norm": "log10 Frobenius norm^2",
    "log_spectral_norm": "log10 lambda_max",
    "stable_rank": "stable rank",
    "entropy": "spectral entropy",
    "D": "KS distance D",
    "xmin": "xmin",
    "num_spikes": "spikes beyond the MP edge",
    "mp_softrank": "MP soft rank",
    "rand_distance": "distance to shuffled ESD",
}

#: the dashed alpha = 2 and alpha = 6 guides of the metric plots and their legend entry
GUIDE_COLOR = "#666666"
GUIDE_LABEL = "α = 2 and 6 (over- / under-trained)"

ESD_BINS = 60
#: hover lines of the KS scan's chosen xmin
KS_TOOLTIPS = [("chosen xmin", "@{xmin}{0.000}"), ("KS distance D", "@{D}{0.000}")]
EVALS_THRESH = 1e-5  # as analyses.spectra.kernels.EVALS_THRESH (zeros of rank-deficient matrices)


def _layer_ticks(layer_ids) -> dict:
    """Integer ticks on a layer-depth axis when there are few layers (else the backend's own)."""
    ids = sorted({int(i) for i in layer_ids if np.isfinite(i)})
    return {"xticks": ids} if 0 < len(ids) <= 16 else {}


# --------------------------------------------------------------------------- table helpers
#: table columns renamed in plot data: the layer name is the "layer" dimension of every plot
#: (no other dimension may be labelled "layer": HoloViews also finds dimensions by label)
_PLOT_NAMES = {"name": "layer", "category": "warning"}


def _check_result(result) -> None:
    if not hasattr(result, "table") or not hasattr(result, "esd"):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected a SpectralResult (SpectralAnalysis.run())"
        )


def _category(warning: Any, alpha: Any) -> str:
    w = "" if warning is None or (isinstance(warning, float) and math.isnan(warning)) else str(warning)
    if w in CATEGORY_COLORS:
        return w
    try:
        fit = math.isfinite(float(alpha))
    except (TypeError, ValueError):
        fit = False
    return "ok" if fit else "no fit"


def _analysed(result) -> pd.DataFrame:
    """The analysed rows (status ok), in layer order, with a ``category`` column."""
    _check_result(result)
    t = result.table
    ok = t[t["status"] == "ok"].copy() if "status" in t else t.copy()
    ok = ok.sort_values("layer_id", kind="stable").reset_index(drop=True)
    ok["category"] = [_category(w, a) for w, a in zip(ok.get("warning", [""] * len(ok)), ok.get("alpha", []))]
    return ok


def _has_farms(result) -> bool:
    t = result.table
    return "alpha_plain" in t and bool(np.isfinite(pd.to_numeric(t["alpha_plain"], errors="coerce")).any())


def _metric_rows(result, metric: str) -> pd.DataFrame:
    ok = _analysed(result)
    if metric not in result.table.columns:
        numeric = [c for c in result.table.columns if result.table[c].dtype.kind in "fiu" and c != "layer_id"]
        raise NNVitalsError(
            f"metric {metric!r}: not a column of this result; expected one of: {', '.join(numeric)}"
        )
    ok[metric] = pd.to_numeric(ok[metric], errors="coerce")
    return ok[np.isfinite(ok[metric].to_numpy(dtype=float))].reset_index(drop=True)


def _xmin_rule(result) -> str:
    return str(result.meta.get("params", {}).get("xmin_rule", "ks"))


# --------------------------------------------------------------------------- metric by layer
def _metric_scatter(rows: pd.DataFrame, metric: str) -> hv.Scatter:
    data = rows[["layer_id", metric, "name", "layer_type", "N", "M", "category"]].rename(columns=_PLOT_NAMES)
    vdims = [
        hv.Dimension(metric, label=metric),
        "layer",
        hv.Dimension("layer_type", label="type"),
        "N",
        "M",
        "warning",
    ]
    scatter = hv.Scatter(data, hv.Dimension("layer_id", label="layer index"), vdims)
    return apply_opts(
        scatter,
        dict(color=hv.dim("warning").categorize(CATEGORY_COLORS, default="#999999")),
        dict(size=11, line_color="white", tools=["hover", "tap"], nonselection_alpha=0.35,
             selection_line_color="black", selection_line_width=2.5,
             hover_tooltips=_layer_tooltips(METRIC_LABELS.get(metric, metric), metric)),
        dict(s=60, edgecolors="white"),
    )  # fmt: skip


def _category_keys(categories, kdim: str, vdim: str) -> list[hv.Scatter]:
    """Legend entries of the warning categories present: empty scatters in each category's colour
    (the points themselves are coloured by value, without a legend of their own)."""
    present = set(categories)
    return [
        apply_opts(hv.Scatter(([np.nan], [np.nan]), kdim, vdim, label=cat), dict(color=color),
              dict(size=11), dict(s=60))
        for cat, color in CATEGORY_COLORS.items() if cat in present
    ]  # fmt: skip


def _layer_tooltips(label: str, column: str) -> list[tuple[str, str]]:
    """Hover lines of a per-layer point: its name, kind, shape, the value shown and its label."""
    return [
        ("layer", "@{layer}"),
        ("kind", "@{layer_type}, @{N} × @{M}"),
        (label, f"@{{{column}}}{{0.000}}"),
        ("reading", "@{warning}"),
    ]


def _metric_panel(result, rows: pd.DataFrame, metric: str) -> tuple[hv.Overlay, hv.Scatter]:
    """The metric-by-layer overlay and its scatter (the selection source of the explorer)."""
    scatter = _metric_scatter(rows, metric)
    path = style_line(hv.Curve(rows[["layer_id", metric]], "layer_id", metric), "#888888", 1.0, alpha=0.7)
    # one legend for everything: an entry per warning category (the scatter colours its points
    # by value, with no legend of its own: matplotlib would draw that apart, on top of the other)
    over = hv.Overlay([path, scatter, *_category_keys(rows["category"], "layer_id", metric)])
    extra = _layer_ticks(rows["layer_id"])
    if metric in ("alpha", "alpha_plain"):
        for y in (2.0, 6.0):
            over = over * style_line(hv.HLine(y), GUIDE_COLOR, 1.0, "dashed", 0.8)
        # the guides are named in the legend (a text on the plot would sit on points at its end)
        key = hv.Curve(([np.nan], [np.nan]), "layer_id", metric, label=GUIDE_LABEL)
        over = over * style_line(key, GUIDE_COLOR, 1.0, "dashed", 0.8)
        # both guides always in view: they are the scale the values are read against
        vals = rows[metric].to_numpy(float)
        lo, hi = min(float(vals.min()), 2.0), max(float(vals.max()), 6.0)
        pad = 0.06 * (hi - lo)
        extra["ylim"] = (lo - pad, hi + pad)
    else:  # near-equal values must not fill the axis (a 0.1% difference drawn as a cliff)
        extra["ylim"] = value_range(rows[metric].to_numpy(float))
    subject = result.meta.get("subject", {}).get("label", "")
    title = f"{metric} by layer" + (f": {subject}" if subject else "")
    return style_panel(over, title, "layer (depth)", METRIC_LABELS.get(metric, metric), **extra), scatter


def metric_by_layer(result, metric: str = "alpha") -> hv.Overlay:
    """``metric`` against layer depth (``layer_id``), one point per analysed layer.

    Points are coloured by the alpha label (ok / over-trained / under-trained / no fit) with a
    legend; hovering shows the layer's name, type, N, M and value. For ``metric="alpha"`` the
    dashed guides mark alpha = 2 (below: over-trained) and alpha = 6 (above: under-trained).
    Skipped layers and layers without a value are left out.
    """
    rows = _metric_rows(result, metric)
    if rows.empty:
        return message_panel(f"{metric} by layer", f"no analysed layer has a finite {metric}")
    return _metric_panel(result, rows, metric)[0]


# --------------------------------------------------------------------------- ESD
@dataclass
class _Fit:
    alpha: float
    xmin: float
    D: float
    tail: int


def _layer_fit(result, name: str, row: pd.Series, source: str, evals: np.ndarray) -> _Fit:
    """The power-law fit that belongs to the ESD shown.

    The table's alpha/xmin/D are those of the FARMS pooled ESD when the run used FARMS; the
    full-matrix ESD's own fit is then recomputed here (the same kernel as the analysis, which
    stored its alpha as ``alpha_plain``).
    """
    farms_run = "alpha_plain" in row.index and np.isfinite(
        pd.to_numeric(row.get("alpha_plain"), errors="coerce")
    )
    if source == "layer" and farms_run:
        from .kernels import fit_power_law

        fit = fit_power_law(evals, _xmin_rule(result))
        return _Fit(fit.alpha, fit.xmin, fit.D, fit.num_pl_spikes)
    tail = row.get("num_pl_spikes", np.nan)
    return _Fit(
        float(row["alpha"]), float(row["xmin"]), float(row["D"]), int(tail) if np.isfinite(tail) else 0
    )


def _density(evals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(evals, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = counts / (max(evals.size, 1) * np.diff(edges))
    dens[counts == 0] = np.nan  # empty bins: nothing to draw on a log axis
    return dens


def _esd_source(result, name: str, source: str) -> str:
    if source not in ("auto", "layer", "farms"):
        raise NNVitalsError(f"source {source!r}: expected 'auto', 'layer' or 'farms'")
    has_farms = result.farms_esd(name).size > 0
    if source == "auto":
        return "farms" if has_farms else "layer"
    if source == "farms" and not has_farms:
        raise NNVitalsError(f"layer {name!r}: no FARMS ESD in this result; run the analysis with FARMS on")
    return source


@dataclass
class EsdData:
    """What :func:`esd_plot` draws for one layer, as arrays (shared with the app's live explorer,
    :mod:`analyses.spectra.live`). ``message`` says why there is nothing to draw (then the arrays
    are empty)."""

    name: str
    title: str
    message: str | None = None
    label: str = "ESD"
    bars: tuple[np.ndarray, ...] = ()  # left, bottom, right, top of each non-empty bin
    rand: tuple[np.ndarray, np.ndarray] = (np.array([np.nan]), np.array([np.nan]))
    rand_label: str = ""
    fit: tuple[np.ndarray, np.ndarray] = (np.array([np.nan]), np.array([np.nan]))
    xmin: float = np.nan
    bulk: float = np.nan
    bulk_label: str = ""
    xlim: tuple[float, float] = (np.nan, np.nan)
    ylim: tuple[float, float] = (np.nan, np.nan)


def esd_data(result, name: str, source: str = "auto") -> EsdData:
    """The histogram, fit, guides, ranges and title of layer ``name``'s ESD (see :func:`esd_plot`)."""
    row = result.row(name)
    if row.get("status", "ok") != "ok":
        return EsdData(name, f"ESD: {name}", f"skipped: {row.get('skip_reason', '')}")
    source = _esd_source(result, name, source)
    evals = np.asarray(result.farms_esd(name) if source == "farms" else result.esd(name), dtype=float)
    evals = evals[np.isfinite(evals) & (evals > EVALS_THRESH)]
    if evals.size < 2:
        return EsdData(name, f"ESD: {name}", "fewer than two nonzero eigenvalues")
    fit = _layer_fit(result, name, row, source, evals)
    rand = np.asarray(result.randomized_esd(name), dtype=float) if source == "layer" else np.empty(0)
    rand = rand[np.isfinite(rand) & (rand > EVALS_THRESH)]

    lo, hi = float(evals.min()), float(evals.max())
    if rand.size:
        lo, hi = min(lo, float(rand.min())), max(hi, float(rand.max()))
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    nbins = int(np.clip(round(1.5 * math.sqrt(evals.size)), 8, ESD_BINS))
    edges = np.logspace(math.log10(lo), math.log10(hi), nbins + 1)
    edges[0], edges[-1] = lo, hi  # exactly: round-off must not drop the extreme eigenvalues
    dens = _density(evals, edges)
    finite = dens[np.isfinite(dens)]
    ymin, ymax = float(finite.min()) / 3, float(finite.max()) * 3
    full = np.isfinite(dens)
    out = EsdData(name, "", label="FARMS ESD" if source == "farms" else "ESD", ylim=(ymin, ymax))
    out.bars = (edges[:-1][full], np.full(full.sum(), ymin), edges[1:][full], dens[full])
    if rand.size:
        out.rand = (np.sqrt(edges[:-1] * edges[1:]), _density(rand, edges))
        out.rand_label = "shuffled ESD"
    elif "max_rand_eval" in result.table.columns and source == "layer":
        out.rand_label = "shuffled ESD"

    if math.isfinite(fit.alpha) and math.isfinite(fit.xmin) and fit.xmin > 0 and fit.tail > 0:
        lam = np.logspace(math.log10(fit.xmin), math.log10(float(evals.max())), 50)
        p = (fit.alpha - 1) / fit.xmin * (lam / fit.xmin) ** (-fit.alpha) * (fit.tail / evals.size)
        inside = p >= ymin  # a steep fit would drag the axis far below the histogram
        if inside.sum() >= 2:
            out.fit = (lam[inside], p[inside])
        out.xmin = fit.xmin
    if source == "layer":
        out.bulk = float(pd.to_numeric(row.get("bulk_max", np.nan), errors="coerce"))
        out.bulk_label = "MP bulk edge"
    # the x range: the bins, and the guides and fit when they lie beyond (5% padding in log space)
    xs = [lo, hi, *[v for v in (out.xmin, out.bulk) if math.isfinite(v) and v > 0]]
    xs += [float(v) for v in out.fit[0] if np.isfinite(v)]
    out.xlim = log_padded(min(xs), max(xs))
    out.title = f"{out.label} {name}: α={format_number(fit.alpha)}, D={format_number(fit.D, '.3f')}"
    return out


def esd_plot(result, name: str, source: str = "auto", *, axiswise: bool = False) -> hv.Overlay:
    """The ESD of layer ``name`` on log-log axes with its power-law fit (WeightWatcher's reading).

    A density histogram of the eigenvalues on log-spaced bins; the fitted power law
    p(lambda) = (alpha - 1) / xmin (lambda / xmin)^-alpha for lambda >= xmin, scaled by the
    fraction of eigenvalues in the tail (so it lies on the histogram); vertical lines at xmin
    and at the Marchenko-Pastur bulk edge ``bulk_max``; the ESD of the element-wise shuffled
    matrix (grey steps) when the result has it.

    ``source``: ``"layer"`` the full matrix's ESD, ``"farms"`` the pooled ESD of the FARMS
    windows, ``"auto"`` (default) whichever the table's alpha was fitted to (FARMS when present).
    The overlay always has the same five layers (empty when absent), so it can be a
    :class:`holoviews.DynamicMap` frame, whose axis ranges then follow the layer shown.
    ``axiswise=True`` keeps its ranges independent of the other panels of a layout (as in
    :func:`esd_grid`); not for DynamicMap frames, where bokeh then stops following the layer.
    """
    d = esd_data(result, name, source)
    if d.message is not None:
        return message_panel(d.title, d.message)
    ymin, ymax = d.ylim
    xdim, ydim = hv.Dimension("lambda", label="eigenvalue λ"), hv.Dimension("density", label="density p(λ)")
    # bars as rectangles from the bottom of the axis: a Histogram on a log y axis has no
    # bottom in bokeh's static output
    hist = hv.Rectangles(d.bars, kdims=[xdim, ydim, "lambda_hi", "density_hi"], label=d.label)
    hist = apply_opts(
        hist,
        dict(color=ESD_COLOR, alpha=0.55),
        dict(line_color=ESD_COLOR, line_alpha=0.9, line_width=0.5),
        dict(edgecolor=ESD_COLOR, linewidth=0.4),
    )
    rcurve = hv.Curve(d.rand, xdim, ydim, label=d.rand_label)
    rcurve = apply_opts(style_line(rcurve, RAND_COLOR, 1.4, "solid", 0.85), dict(interpolation="steps-mid"))
    fitc = style_line(hv.Curve(d.fit, xdim, ydim, label="power-law fit"), FIT_COLOR, 2.5, "solid")
    xmin_line = style_line(
        hv.Curve(([d.xmin, d.xmin], [ymin, ymax]), xdim, ydim, label="xmin"), XMIN_COLOR, 1.5, "dashed"
    )
    bulk_line = style_line(
        hv.Curve(([d.bulk, d.bulk], [ymin, ymax]), xdim, ydim, label=d.bulk_label), BULK_COLOR, 1.5, "dotted"
    )
    over = hist * rcurve * fitc * xmin_line * bulk_line
    return style_panel(
        over, d.title, "eigenvalue λ", "density p(λ)", logx=True, logy=True, padding=(0.05, 0), norm=dict(axiswise=True) if axiswise else dict(framewise=True),
    )  # fmt: skip


# --------------------------------------------------------------------------- KS
@dataclass
class KsData:
    """What :func:`ks_plot` draws for one layer: the scan, the chosen xmin (``best``: its index,
    None without a scan) and the title."""

    title: str
    xs: np.ndarray
    ds: np.ndarray
    best: int | None

    @property
    def chosen(self) -> tuple[np.ndarray, np.ndarray]:
        if self.best is None:
            return np.array([np.nan]), np.array([np.nan])
        return self.xs[self.best : self.best + 1], self.ds[self.best : self.best + 1]


def ks_data(result, name: str) -> KsData:
    """The KS scan of layer ``name`` and its minimum (see :func:`ks_plot`)."""
    row = result.row(name)
    xs, ds = (np.asarray(a, dtype=float) for a in result.ks_curve(name))
    title = f"KS scan {name}"
    good = np.isfinite(xs) & np.isfinite(ds) & (xs > 0)
    if row.get("status", "ok") != "ok" or not good.any():
        reason = row.get("skip_reason", "") or "no KS scan stored for this layer"
        return KsData(f"{title} ({reason})", np.array([np.nan]), np.array([np.nan]), None)
    xs, ds = xs[good], ds[good]
    best = int(np.argmin(ds))
    title = f"{title}: xmin={format_number(xs[best], '.3g')}, D={format_number(ds[best], '.3f')}"
    return KsData(title, xs, ds, best)


def ks_plot(result, name: str) -> hv.Overlay:
    """KS distance D against the candidate xmin (log x) for layer ``name``; the star is the minimum.

    D = max |F_fit - F_empirical| over the tail (Clauset et al. 2009, §3.3); the ``ks`` rule keeps
    the xmin with the smallest D. The curve is that of the full matrix's ESD (with FARMS, the
    table's alpha comes from the window ESD: see :func:`esd_plot`). The overlay always has the
    same layers, so it can be a DynamicMap frame.
    """
    d = ks_data(result, name)
    # D lives in [0, 1]: the axis starts at 0, so a shallow scan does not look deep
    xdim = hv.Dimension("xmin", label="candidate xmin")
    ydim = hv.Dimension("D", label="KS distance D", range=(0, None))
    curve = style_line(hv.Curve((d.xs, d.ds), xdim, ydim, label="D(xmin)"), ESD_COLOR, 1.8)
    star = hv.Scatter(d.chosen, xdim, ydim, label="chosen xmin")
    star = apply_opts(
        star,
        dict(color=FIT_COLOR),
        dict(marker="star", size=18, tools=["hover"], hover_tooltips=KS_TOOLTIPS),
        dict(marker="*", s=220),
    )
    return style_panel(
        curve * star, d.title, "candidate xmin", "KS distance D", logx=True, norm=dict(framewise=True)
    )


# --------------------------------------------------------------------------- FARMS
def farms_vs_plain(result) -> hv.Overlay:
    """FARMS alpha against the plain (full-matrix) alpha, one point per layer, with y = x.

    Points off the diagonal are layers whose alpha the aspect ratio biased. Without FARMS in
    the result the panel says how to get it.
    """
    title = "FARMS alpha vs plain alpha"
    if not _has_farms(result):
        return message_panel(title, "no FARMS alpha in this result: run the analysis with FARMS on")
    rows = _analysed(result)
    rows["alpha_plain"] = pd.to_numeric(rows["alpha_plain"], errors="coerce")
    rows = rows[np.isfinite(rows["alpha"].astype(float)) & np.isfinite(rows["alpha_plain"])]
    if rows.empty:
        return message_panel(title, "no layer has both a FARMS and a plain alpha")
    vals = np.concatenate([rows["alpha"].to_numpy(float), rows["alpha_plain"].to_numpy(float)])
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.08 * max(hi - lo, 0.5)
    lo, hi = lo - pad, hi + pad
    diag = style_line(hv.Curve(([lo, hi], [lo, hi]), "alpha_plain", "alpha"), "#666666", 1.2, "dashed")
    note = text_label(hi, hi, "y = x ", 10, halign="right", valign="bottom")
    pts = hv.Scatter(
        rows[["alpha_plain", "alpha", "name", "layer_type", "Q", "category"]].rename(columns=_PLOT_NAMES),
        hv.Dimension("alpha_plain", label="plain alpha"),
        [hv.Dimension("alpha", label="FARMS alpha"), "layer",
         hv.Dimension("layer_type", label="type"), "Q", "warning"],
    )  # fmt: skip
    pts = apply_opts(
        pts,
        dict(color=hv.dim("warning").categorize(CATEGORY_COLORS, default="#999999")),
        dict(size=11, line_color="white", tools=["hover"], hover_tooltips=[
            ("layer", "@{layer} (@{layer_type})"), ("plain alpha", "@{alpha_plain}{0.00}"),
            ("FARMS alpha", "@{alpha}{0.00}"), ("aspect ratio Q", "@{Q}{0.0}"), ("reading", "@{warning}"),
        ]),
        dict(s=60, edgecolors="white"),
    )  # fmt: skip
    keys = _category_keys(rows["category"], "alpha_plain", "alpha")
    return style_panel(
        hv.Overlay([diag, note, pts, *keys]), title, "plain alpha (full matrix)", "FARMS alpha",
        xlim=(lo, hi), ylim=(lo, hi),
    )  # fmt: skip


def alpha_vs_aspect(result) -> hv.Overlay:
    """Alpha against the aspect ratio Q = N / M (log x), plain and FARMS when present.

    The plain alpha of random and trained matrices drifts with Q; FARMS's fixed-aspect-ratio
    windows remove that drift (FARMS, ICML 2025, §3).
    """
    rows = _analysed(result)
    title = "alpha vs aspect ratio Q"
    plain_col = "alpha_plain" if _has_farms(result) else "alpha"
    layers = []
    for col, label, color in (
        (plain_col, "plain alpha", PAIR_COLORS[0]),
        ("alpha", "FARMS alpha", PAIR_COLORS[1]),
    ):
        if col == "alpha" and plain_col == "alpha" and label == "FARMS alpha":
            continue
        sub = rows.assign(value=pd.to_numeric(rows[col], errors="coerce"))
        sub = sub[np.isfinite(sub["value"].to_numpy(float)) & np.isfinite(sub["Q"].to_numpy(float))]
        if sub.empty:
            continue
        sc = hv.Scatter(
            sub[["Q", "value", "name", "N", "M"]].rename(columns=_PLOT_NAMES),
            hv.Dimension("Q", label="Q = N / M"),
            [hv.Dimension("value", label="alpha"), "layer", "N", "M"],
            label=label,
        )
        tips = [
            ("layer", "@{layer}, @{N} × @{M}"),
            ("aspect ratio Q", "@{Q}{0.0}"),
            (label, "@{value}{0.00}"),
        ]
        layers.append(
            apply_opts(
                sc,
                dict(color=color),
                dict(size=10, line_color="white", tools=["hover"], hover_tooltips=tips),
                dict(s=50),
            )
        )
    if not layers:
        return message_panel(title, "no analysed layer has a finite alpha")
    over = hv.Overlay(layers)
    q = rows["Q"].to_numpy(float)
    alphas = np.concatenate([el.dimension_values("value") for el in layers])
    logx = log_worthy(q, 10.0)  # Q over less than a decade reads better on a linear axis
    extra = {"ylim": value_range(alphas)}
    if not logx:
        extra["xlim"] = value_range(q, rel_span=0.2)
    return style_panel(over, title, "aspect ratio Q = N / M", "alpha", logx=logx, **extra)


# --------------------------------------------------------------------------- comparison
COMPARE_METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "entropy")


def compare_table(result_a, result_b, metrics: tuple[str, ...] = COMPARE_METRICS) -> pd.DataFrame:
    """Per-layer metrics of two results matched by layer name, with deltas (B - A).

    Columns: name, layer_id (A's, else B's), layer_type, then ``<m>_a``, ``<m>_b``,
    ``<m>_delta`` for each metric, and ``warning_a``/``warning_b``. A layer analysed in only
    one result keeps its row with NaN on the other side.
    """
    a, b = _analysed(result_a), _analysed(result_b)
    cols = ["name", "layer_id", "layer_type", "category", *[m for m in metrics if m in a or m in b]]
    a = a.reindex(columns=cols)
    b = b.reindex(columns=cols)
    merged = a.merge(b, on="name", how="outer", suffixes=("_a", "_b"), sort=False)
    out = pd.DataFrame({"name": merged["name"]})
    out["layer_id"] = merged["layer_id_a"].fillna(merged["layer_id_b"])
    out["layer_type"] = merged["layer_type_a"].fillna(merged["layer_type_b"])
    for m in metrics:
        if f"{m}_a" not in merged:
            continue
        va = pd.to_numeric(merged[f"{m}_a"], errors="coerce")
        vb = pd.to_numeric(merged[f"{m}_b"], errors="coerce")
        out[f"{m}_a"], out[f"{m}_b"], out[f"{m}_delta"] = va, vb, vb - va
    out["warning_a"] = merged["category_a"].fillna("absent")
    out["warning_b"] = merged["category_b"].fillna("absent")
    return out.sort_values(["layer_id", "name"], kind="stable").reset_index(drop=True)


def compare_models(
    result_a, result_b, metric: str = "alpha", labels: tuple[str, str] = ("A", "B")
) -> hv.Layout:
    """``metric`` by layer for two models overlaid (matched by layer name), and B - A below.

    Typical use: a trained model against its untrained twin, or two checkpoints of one run.
    """
    for r in (result_a, result_b):
        _check_result(r)
        if metric not in r.table.columns:
            raise NNVitalsError(f"metric {metric!r}: not a column of both results")
    la, lb = (str(x) for x in labels)
    tab = compare_table(result_a, result_b, (metric,))
    top_title = f"{metric} by layer: {la} vs {lb}"
    if tab.empty:
        return grid_layout([message_panel(top_title, "no analysed layers in either result")], 1, (6.5, 3.8))
    layers = []
    for col, lab, color in ((f"{metric}_a", la, PAIR_COLORS[0]), (f"{metric}_b", lb, PAIR_COLORS[1])):
        sub = tab[np.isfinite(tab[col].to_numpy(float))]
        data = sub[["layer_id", col, "name", "layer_type"]].rename(columns={col: metric, **_PLOT_NAMES})
        kd, vd = (
            hv.Dimension("layer_id", label="layer index"),
            [metric, "layer", "layer_type"],
        )
        layers.append(style_line(hv.Curve(data, kd, vd, label=lab), color, 1.2, alpha=0.7))
        sc = hv.Scatter(data, kd, vd, label=lab)
        tips = [("model", lab), ("layer", "@{layer} (@{layer_type})"), (metric, f"@{{{metric}}}{{0.000}}")]
        layers.append(
            apply_opts(sc, dict(color=color), dict(size=9, tools=["hover"], hover_tooltips=tips), dict(s=40))
        )
    top = hv.Overlay(layers)
    if metric in ("alpha", "alpha_plain"):
        top = (
            top
            * style_line(hv.HLine(2.0), "#666666", 1.0, "dashed", 0.8)
            * style_line(hv.HLine(6.0), "#666666", 1.0, "dashed", 0.8)
        )
    ticks = _layer_ticks(tab["layer_id"])
    top = style_panel(top, top_title, "layer (depth)", metric, **ticks)
    both = tab[np.isfinite(tab[f"{metric}_delta"].to_numpy(float))]
    d_title = f"Δ {metric} ({lb} − {la}) per matched layer"
    if both.empty:
        bottom = message_panel(d_title, "no layer name is analysed in both results")
    else:
        ddata = both[["layer_id", f"{metric}_delta", "name"]].rename(
            columns={f"{metric}_delta": "delta", **_PLOT_NAMES}
        )
        kd = hv.Dimension("layer_id", label="layer index")
        vd = [hv.Dimension("delta", label=f"Δ {metric}"), "layer"]
        spikes = style_line(hv.Spikes(ddata, kd, vd), "#666666", 2.0)
        dots = hv.Scatter(ddata, kd, vd, label="")
        dots = apply_opts(
            dots,
            dict(color=PAIR_COLORS[1]),
            dict(size=9, tools=["hover"], hover_tooltips=[("layer", "@{layer}"), (f"Δ {metric}", "@{delta}{0.000}")]),
            dict(s=40),
        )  # fmt: skip
        zero = style_line(hv.HLine(0.0), "#333333", 1.0)
        bottom = style_panel(
            zero * spikes * dots, d_title, "layer (depth)", f"Δ {metric}", legend=None, **ticks
        )
    return grid_layout([top, bottom], 1, (6.5, 3.8))


# --------------------------------------------------------------------------- linked explorer
@dataclass
class LinkedExplorer:
    """A metric-by-layer plot whose selected layer drives its ESD and KS plots.

    - ``layout``: the :class:`holoviews.Layout` to display (metric plot, ESD, KS);
    - ``stream``: the :class:`holoviews.streams.Selection1D` attached to the metric scatter
      (``stream.index`` is a list of row positions into ``names``); tapping a point in bokeh
      sets it, and a page can drive it with ``stream.event(index=[i])`` or :meth:`select`;
    - ``names``: the layer name of each scatter point, in order.

    Unpacks as ``layout, stream = linked_explorer(result)``; displays itself in Jupyter
    (the layout's rich display) and in Panel (``__panel__``).
    """

    layout: hv.Layout
    stream: hv.streams.Selection1D
    names: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.layout, self.stream))

    @property
    def selected(self) -> str | None:
        """The layer currently shown (the first selected point, else the first layer)."""
        return _pick(self.names, self.stream.index)

    def select(self, name: str) -> None:
        """Show layer ``name`` (as if its point had been tapped)."""
        if name not in self.names:
            raise NNVitalsError(f"layer {name!r}: not among the explorer's layers ({', '.join(self.names)})")
        self.stream.event(index=[self.names.index(name)])

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.layout._repr_mimebundle_(include, exclude)

    def __panel__(self):
        return self.layout  # Panel renders a HoloViews layout itself; analyses/ never imports panel


def _pick(names: list[str], index: list[int] | None) -> str | None:
    if not names:
        return None
    for i in index or []:
        if 0 <= int(i) < len(names):
            return names[int(i)]
    return names[0]


def linked_explorer(result, metric: str = "alpha") -> LinkedExplorer:
    """Tap a layer in :func:`metric_by_layer`, see its :func:`esd_plot` and :func:`ks_plot`.

    A :class:`holoviews.streams.Selection1D` on the metric scatter feeds two
    :class:`holoviews.DynamicMap` objects; with nothing selected they show the first analysed
    layer. Works in a Jupyter notebook with the bokeh backend (a live kernel updates the
    plots) and in a Panel app; static exports show the current selection.

    >>> explorer = linked_explorer(result)
    >>> explorer.layout                 # display; or: layout, stream = linked_explorer(result)
    >>> explorer.select("fc1.weight")   # or explorer.stream.event(index=[2])
    """
    rows = _metric_rows(result, metric)
    names = [str(n) for n in rows["name"]]
    if not names:
        msg = message_panel(f"{metric} by layer", f"no analysed layer has a finite {metric}")
        stream = hv.streams.Selection1D(source=msg, index=[])
        return LinkedExplorer(hv.Layout([msg]).cols(1), stream, [])
    over, scatter = _metric_panel(result, rows, metric)
    stream = hv.streams.Selection1D(source=scatter, index=[0])

    def _esd(index):
        return esd_plot(result, _pick(names, index))

    def _ks(index):
        return ks_plot(result, _pick(names, index))

    esd = hv.DynamicMap(_esd, streams=[stream])
    ks = hv.DynamicMap(_ks, streams=[stream])

    def _forget(**_):
        # a plot created after a selection (re-display, static export) must evaluate the
        # current selection, not the frame cached by the first plot
        for dmap in (esd, ks):
            dmap.data.clear()

    stream.add_subscriber(_forget, precedence=10)
    # no options on this Layout: HoloViews gives the DynamicMaps of a Layout whose options are
    # set one shared option tree (the metric plot's), which then overrides every frame's title
    layout = hv.Layout([over, esd, ks]).cols(3)
    return LinkedExplorer(layout, stream, names)


def explorer_figure(result, name: str | None = None, metric: str = "alpha") -> hv.Layout:
    """What :func:`linked_explorer` shows with layer ``name`` selected (default: the first), as
    one static figure (metric by layer, that layer's ESD and KS scan): for export."""
    rows = _metric_rows(result, metric)
    names = [str(n) for n in rows["name"]]
    if not names:
        return grid_layout(
            [message_panel(f"{metric} by layer", f"no analysed layer has a finite {metric}")], 1
        )
    if name is not None and name not in names:
        raise NNVitalsError(
            f"layer {name!r}: not among the layers with a finite {metric} ({', '.join(names)})"
        )
    name = name or names[0]
    over, scatter = _metric_panel(result, rows, metric)
    apply_opts(scatter, bokeh=dict(selected=[names.index(name)]))
    # one column: each panel's legend sits right of it, clear of the others
    return grid_layout([over, esd_plot(result, name, axiswise=True), ks_plot(result, name)], 1, (6.0, 3.6))


# --------------------------------------------------------------------------- CLI figures
def _grid_layers(result, k: int = 6) -> list[str]:
    """Up to ``k`` analysed layers for the ESD grid: flagged layers first, then in depth order."""
    rows = _analysed(result)
    rows = rows[rows["category"] != "no fit"]
    flagged = [str(n) for n, c in zip(rows["name"], rows["category"]) if c != "ok"]
    rest = [str(n) for n, c in zip(rows["name"], rows["category"]) if c == "ok"]
    chosen = set((flagged + rest)[:k])
    return [str(n) for n in rows["name"] if n in chosen]


def short_name(name: str, parts: int = 4) -> str:
    """A layer name short enough for a panel title: its last ``parts`` components, no ``.weight``."""
    bits = str(name).removesuffix(".weight").split(".")
    return ".".join(bits[-parts:]) if len(bits) > parts else ".".join(bits)


def esd_grid(result, k: int = 6) -> hv.Layout | hv.Overlay:
    """The ESDs of up to ``k`` analysed layers (flagged ones first), three per row."""
    names = _grid_layers(result, k)
    if not names:
        return message_panel("ESDs", "no analysed layer has a power-law fit")
    plots = []
    for i, n in enumerate(names):
        p = esd_plot(result, n, axiswise=True)
        row = result.row(n)
        kind = " (FARMS)" if result.farms_esd(n).size else ""
        short = f"{short_name(n)}{kind}: α={format_number(row['alpha'])}, D={format_number(row['D'], '.3f')}"
        # one legend, on the last panel of the first row (right of the grid in an export)
        plots.append(
            apply_opts(p, dict(title=short, show_legend=i == min(2, len(names) - 1)), mpl=dict(fontscale=1.0))
        )
    return grid_layout(plots, 3)


def main_figures(result) -> dict[str, hv.Element | hv.Overlay | hv.Layout]:
    """The figures the CLI writes, by file stem.

    ``alpha_by_layer``: :func:`metric_by_layer` of alpha; ``esd_grid``: :func:`esd_grid`
    (up to 6 ESDs); with FARMS also ``farms_vs_plain`` and ``alpha_vs_aspect``.
    """
    _check_result(result)
    figs: dict[str, Any] = {"alpha_by_layer": metric_by_layer(result, "alpha"), "esd_grid": esd_grid(result)}
    if _has_farms(result):
        figs["farms_vs_plain"] = farms_vs_plain(result)
        figs["alpha_vs_aspect"] = alpha_vs_aspect(result)
    return figs


def summary_text(result, max_notable: int = 8) -> str:
    """A few lines a person reads after a run: counts, mean alpha, notable and skipped layers."""
    t = result.table
    ok = t[t["status"] == "ok"]
    skipped = t[t["status"] != "ok"]
    subject = result.meta.get("subject", {})
    params = result.meta.get("params", {})
    how = (
        "cached result"
        if result.meta.get("cached")
        else f"{format_number(result.meta.get('seconds'), '.1f')} s"
    )
    s = result.summary
    lines = [
        f"spectra of {subject.get('label', '?')} ({subject.get('source', '?')}): {len(t)} weights, "
        f"{len(ok)} analysed, {len(skipped)} skipped [{how}]",
        f"mean alpha {format_number(s.get('alpha'))} (xmin rule {params.get('xmin_rule', '?')}"
        + (", FARMS" if params.get("farms") else "")
        + f"), mean alpha_weighted {format_number(s.get('alpha_weighted'))}, "
        f"mean log_norm {format_number(s.get('log_norm'))}",
    ]
    notable = ok[ok["warning"].fillna("").astype(str) != ""]
    if len(notable):
        lines.append(f"notable layers ({len(notable)}; alpha < 2 over-trained, > 6 under-trained):")
        for _, r in notable.head(max_notable).iterrows():
            lines.append(f"  {r['name']}  alpha {format_number(r['alpha'])}  {r['warning']}")
        if len(notable) > max_notable:
            lines.append(f"  ... and {len(notable) - max_notable} more (see spectra.csv)")
    else:
        lines.append("notable layers: none (every fitted alpha is between 2 and 6)")
    if len(skipped):
        shown = ", ".join(f"{r['name']} ({r['skip_reason']})" for _, r in skipped.head(3).iterrows())
        more = f", ... and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        lines.append(f"skipped: {shown}{more}")
    return "\n".join(lines)

"""HoloViews views of :class:`~analyses.bounds.analysis.IBPResult` and ``LipschitzResult`` (sheet §3-4).

IBP tightness (Mao et al., ICLR 2024):

- :func:`tightness_plot`: mean local tightness per layer, log scale (1 = IBP exact); several
  results (e.g. IBP-trained vs standard) overlaid;
- :func:`tightness_vs_eps`: output tightness over the ``eps_sweep``, certified accuracy in the hover
  (:func:`certified_vs_eps` draws it on its own);
- :func:`stability_bars`: per ReLU layer, the shares of stable-active, stable-inactive and
  unstable units at ``eps``;
- :func:`init_sweep_plot`: tightness of Gaussian-initialised MLPs against width, one line per
  depth, with the closed-form prediction (:func:`analyses.bounds.ibp.tightness_at_init`).

Lipschitz bounds (Khromov & Singh, ICLR 2024):

- :func:`lipschitz_plot`: certified product upper bound vs the empirical Jacobian-norm lower
  bound per layer (log scale), the gap between them shaded; :func:`gap_plot`: upper / lower;
- :func:`jacobian_histogram`: per-sample Jacobian norms; :func:`bin_samples`: the samples in one
  bar; :func:`jacobian_explorer` links them (tap a bar, its samples show).

Styled for bokeh and matplotlib alike; no Panel import here.
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
    log_worthy,
    message_panel,
    style_line,
    style_panel,
    value_range,
)

__all__ = [
    "COLORS",
    "JacobianExplorer",
    "bin_samples",
    "certified_vs_eps",
    "gap_plot",
    "histogram_bins",
    "ibp_figures",
    "ibp_summary_text",
    "init_sweep_plot",
    "jacobian_explorer",
    "jacobian_histogram",
    "lipschitz_figures",
    "lipschitz_plot",
    "lipschitz_summary_text",
    "samples_in_bin",
    "stability_bars",
    "tightness_plot",
    "tightness_vs_eps",
]

#: Paul Tol's colour-blind safe "bright" scheme (as the other families)
COLORS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")
STATE_COLORS = {"stable active": "#228833", "stable inactive": "#BBBBBB", "unstable": "#EE6677"}
SPLIT_COLORS = {"train": "#4477AA", "test": "#228833", "data": "#4477AA", "mix": "#CCBB44", "sharpened": "#AA3377"}  # fmt: skip
#: how the probed sample sets are named to a reader
SPLIT_NAMES = {"mix": "midpoint", "sharpened": "sharpened", "train": "train", "test": "test", "data": "data"}
#: rows that repeat their input (reshapes) or carry no layer (scalar shifts) are left out of per-layer plots
SKIP_KINDS = ("reshape", "shift", "scale", "relayout")


def _check_ibp(result) -> None:
    if not (hasattr(result, "table") and "tightness" in result.table):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected an IBPResult (IBPTightness(...).run())"
        )


def _check_lip(result) -> None:
    if not (hasattr(result, "table") and "upper" in result.table):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected a LipschitzResult (LipschitzBounds(...).run())"
        )


def _as_dict(results) -> dict[str, Any]:
    if isinstance(results, dict):
        return dict(results)
    return {"": results}


def _layer_rows(result) -> pd.DataFrame:
    t = result.table
    rows = t[~t["kind"].isin(SKIP_KINDS)].reset_index(drop=True)
    rows = rows.assign(layer=np.arange(len(rows)))
    return rows


def _ticks(rows: pd.DataFrame) -> list[tuple[int, str]]:
    return [(int(i), str(n)) for i, n in zip(rows["layer"], rows["name"])]


def _tick_opts(rows: pd.DataFrame) -> dict[str, Any]:
    return dict(xticks=_ticks(rows), xrotation=30 if len(rows) > 4 else 0)


def _y_scale(values, include: tuple[float, ...] = (), ratio: float = 30.0) -> dict:
    """A log y axis when ``values`` span many decades, else a linear one whose range holds
    ``include`` (e.g. 0), spans at least 10% of the values and is padded so that no point sits on
    its edge (see :func:`value_range`)."""
    if log_worthy(values, ratio):
        return {"logy": True}
    return {"logy": False, "ylim": value_range(values, include=include)}


def _tips(*lines: tuple[str, str]) -> dict[str, Any]:
    """Bokeh options of a hoverable glyph: these tooltip lines (plain names, formatted values)."""
    return dict(tools=["hover"], hover_tooltips=list(lines))


# =========================================================================== IBP
def tightness_plot(results, log: bool | None = None) -> hv.Overlay:
    """Mean local tightness per layer (Mao et al. 2024, Def. 3.1), one line per result.

    ``results``: an IBPResult or ``{label: IBPResult}`` (same architecture, e.g. IBP-trained
    vs standard). 1 means interval bounds are exact up to that layer. ``log``: a log y axis;
    by default when the values span many decades (else linear from 0: tightness lives in [0, 1]).
    """
    res = _as_dict(results)
    parts, rows0 = [], None
    for i, (label, r) in enumerate(res.items()):
        _check_ibp(r)
        rows = _layer_rows(r)
        rows = rows[np.isfinite(rows["tightness"].astype(float)) & (rows["tightness"] > 0)]
        rows0 = rows if rows0 is None else rows0
        lab = label or f"eps {format_number(r.summary.get('eps'), 'g')}"
        color = COLORS[i % len(COLORS)]
        vd = ["tightness", "name", "kind", "box_width"]
        curve = hv.Curve(rows, "layer", "tightness", label=lab)
        pts = hv.Scatter(rows, "layer", vd, label=lab)
        parts.append(style_line(curve, color, 2.0))
        tips = [("layer", "@{name} (@{kind})"), ("tightness", "@{tightness}{0.000} (1 = exact)")]
        parts.append(_markers(pts, color, ([("result", lab)] if len(res) > 1 else []) + tips))
    if rows0 is None or not len(rows0):
        return message_panel("IBP tightness per layer", "no layer has a defined tightness")
    first = next(iter(res.values()))
    title = f"IBP tightness per layer (eps {format_number(first.summary.get('eps'), 'g')})"
    values = np.concatenate([el.dimension_values("tightness") for el in parts])
    scale = _y_scale(values, include=(0.0,)) if log is None else {"logy": bool(log)}
    return style_panel(
        hv.Overlay(parts), title, "layer", "tightness (1 = exact)", legend=len(res) > 1,
        **scale, **_tick_opts(rows0),
    )  # fmt: skip


def _markers(scatter: hv.Scatter, color: str, tips: list[tuple[str, str]] | None = None) -> hv.Scatter:
    """Hoverable point markers in ``color`` (both backends); ``tips``: the hover lines."""
    bk = dict(size=7, tools=["hover"])
    if tips:
        bk["hover_tooltips"] = tips
    return apply_opts(scatter, dict(color=color), bk, dict(s=25))


def _sweep_frame(r) -> pd.DataFrame | None:
    """The result's eps sweep (eps, tightness, certified, width), sorted by eps; None without one."""
    eps = r.arrays.get("sweep_eps")
    if eps is None or not len(eps):
        return None
    return pd.DataFrame(
        {
            "eps": np.asarray(eps, float),
            "tightness": np.asarray(r.arrays["sweep_tightness"], float),
            "certified": np.asarray(r.arrays["sweep_certified"], float),
            "width": np.asarray(r.arrays["sweep_width"], float),
        }
    ).sort_values("eps")


def tightness_vs_eps(results) -> hv.Overlay:
    """Output tightness against the input radius ``eps`` (the analysis's ``eps_sweep``)."""
    res = _as_dict(results)
    parts = []
    for i, (label, r) in enumerate(res.items()):
        _check_ibp(r)
        df = _sweep_frame(r)
        if df is None:
            continue
        df = df[(df["eps"] > 0) & np.isfinite(df["tightness"]) & (df["tightness"] > 0)]
        if not len(df):
            continue
        color = COLORS[i % len(COLORS)]
        lab = label or "output"
        parts.append(style_line(hv.Curve(df, "eps", "tightness", label=lab), color, 2.0))
        tips = [("eps", "@{eps}{0.0000}"), ("tightness", "@{tightness}{0.0000} (1 = exact)"),
                ("certified accuracy", "@{certified}{0.000}"), ("mean output box width", "@{width}{0.000}")]  # fmt: skip
        pts = hv.Scatter(df, "eps", ["tightness", "certified", "width"], label=lab)
        parts.append(_markers(pts, color, ([("result", lab)] if len(res) > 1 else []) + tips))
    if not parts:
        return message_panel("tightness vs eps", "no eps sweep with eps > 0: add radii to the eps sweep")
    eps = np.concatenate([el.dimension_values("eps") for el in parts])
    values = np.concatenate([el.dimension_values("tightness") for el in parts])
    # tightness lives in [0, 1]: a linear axis from 0 unless it spans decades (a 0.05% change
    # autoscaled over 0.14450-0.14457 looked like a cliff)
    return style_panel(
        hv.Overlay(parts), "Output tightness vs eps", "eps (input radius)", "tightness (1 = exact)",
        logx=log_worthy(eps, 10.0), legend=len(res) > 1, **_y_scale(values, include=(0.0,)),
    )  # fmt: skip


def certified_vs_eps(results) -> hv.Overlay:
    """IBP-certified accuracy against ``eps`` (from the ``eps_sweep``)."""
    res = _as_dict(results)
    parts = []
    for i, (label, r) in enumerate(res.items()):
        _check_ibp(r)
        df = _sweep_frame(r)
        if df is None:
            continue
        color = COLORS[i % len(COLORS)]
        lab = label or "IBP-certified"
        parts.append(style_line(hv.Curve(df, "eps", "certified", label=lab), color, 2.0))
        tips = [("eps", "@{eps}{0.0000}"), ("certified accuracy", "@{certified}{0.000}")]
        pts = hv.Scatter(df, "eps", "certified", label=lab)
        parts.append(_markers(pts, color, ([("result", lab)] if len(res) > 1 else []) + tips))
    if not parts:
        return message_panel("certified accuracy vs eps", "no eps sweep: add radii to the eps sweep")
    eps = np.concatenate([el.dimension_values("eps") for el in parts])
    positive = eps[eps > 0]
    logx = log_worthy(positive, 10.0)
    if logx:  # eps 0 has no place on a log axis
        parts = [el.select(eps=(float(positive.min()), None)) for el in parts]
    return style_panel(
        hv.Overlay(parts), "IBP-certified accuracy vs eps", "eps (input radius)", "certified accuracy",
        logx=logx, legend=len(res) > 1, ylim=(-0.04, 1.04),
    )  # fmt: skip


def stability_bars(result) -> hv.Bars:
    """Per ReLU layer: shares of stable-active, stable-inactive and unstable units at ``eps`` (stacked)."""
    _check_ibp(result)
    rows = _layer_rows(result)
    relu = rows[rows["kind"].isin(["relu", "leaky_relu"])]
    if not len(relu):
        return message_panel("ReLU stability", "the model has no ReLU")
    states = {"stable active": "stable_active", "stable inactive": "stable_inactive", "unstable": "unstable"}
    recs = [
        {"layer": str(r["name"]), "state": s, "fraction": float(r[col])}
        for _, r in relu.iterrows()
        for s, col in states.items()
    ]
    df = pd.DataFrame(recs)
    bars = hv.Bars(df, ["layer", "state"], "fraction")
    eps = format_number(result.summary.get("eps"), "g")
    bars = apply_opts(
        bars,
        dict(stacked=True, ylim=(0, 1.0)),
        dict(
            cmap=STATE_COLORS,
            color="state",
            line_color="white",
            **_tips(("ReLU layer", "@{layer}"), ("units", "@{state}"), ("share", "@{fraction}{0.0%}")),
        ),
        dict(color=hv.dim("state").categorize(STATE_COLORS)),
    )
    return style_panel(bars, f"ReLU stability at eps {eps}", "ReLU layer", "share of units")


def init_sweep_plot(rows: list[dict] | pd.DataFrame, relu: bool = True) -> hv.Overlay:
    """Tightness at Gaussian initialisation vs width, one line per depth (log-log), closed form dashed.

    ``rows``: :func:`analyses.bounds.ibp.tightness_at_init` output. Solid: measured (ReLU local
    tightness with ``relu``, else the deep-linear one); dashed: ``(pi/2)^((L-1)/2) / sqrt(n^(L-1))``.
    """
    df = pd.DataFrame(rows)
    col = "tightness_relu" if relu else "tightness_linear"
    parts = []
    for i, (depth, d) in enumerate(df.groupby("depth")):
        d = d.sort_values("width")
        color = COLORS[i % len(COLORS)]
        meas = hv.Curve(d, "width", col, label=f"depth {depth}")
        parts.append(style_line(meas, color, 2.0))
        vd = [col, "tightness_linear", "predicted_linear"]
        parts.append(apply_opts(hv.Scatter(d, "width", vd, label=f"depth {depth}"), dict(color=color), dict(size=6, tools=["hover"]), dict(s=20)))  # fmt: skip
        pred = hv.Curve(d, "width", "predicted_linear", label=f"depth {depth}, theory (linear)")
        parts.append(style_line(pred, color, 1.2, "dashed"))
    what = "ReLU local" if relu else "deep-linear"
    return style_panel(
        hv.Overlay(parts), f"Tightness at initialisation ({what})", "hidden width", "tightness",
        logx=True, logy=True,
    )  # fmt: skip


def ibp_summary_text(result) -> str:
    """Two lines: output tightness, accuracies, unstable share."""
    _check_ibp(result)
    s = result.summary
    bounds_on = "logit margins" if s.get("spec") == "margin" else "outputs"
    lines = [
        f"eps {format_number(s.get('eps'), 'g')}, {s.get('samples')} samples: output tightness "
        f"{format_number(s.get('tightness'), '.3g')} (bounds on the {bounds_on}, {s.get('relu')} ReLU tightness)",
        f"clean accuracy {format_number(s.get('clean_accuracy'), '.3f')}, IBP-certified accuracy "
        f"{format_number(s.get('certified_accuracy'), '.3f')}, unstable ReLUs "
        f"{format_number(100 * s['unstable_fraction'] if s.get('unstable_fraction') is not None else None, '.1f')}%",
    ]
    return "\n".join(lines)


def ibp_figures(result) -> dict[str, Any]:
    """The figures the CLI writes, by file stem."""
    _check_ibp(result)
    figs = {"tightness": tightness_plot(result), "relu_stability": stability_bars(result)}
    if result.arrays.get("sweep_eps") is not None and len(result.arrays["sweep_eps"]):
        figs["tightness_vs_eps"] = tightness_vs_eps(result)
        figs["certified_vs_eps"] = certified_vs_eps(result)
    return figs


# =========================================================================== Lipschitz
def lipschitz_plot(result) -> hv.Overlay:
    """Upper (product of layer constants) vs lower (max Jacobian norm) bound per layer, log scale.

    The band between the two is the gap; per-layer lower bounds exist with ``per_layer=True``
    (else only at the output).
    """
    _check_lip(result)
    rows = _layer_rows(result)
    parts = []
    has = rows[np.isfinite(rows["lower_max"].astype(float)) & (rows["lower_max"] > 0)]
    if len(has) > 1:
        band = hv.Area(
            (has["layer"], has["lower_max"], has["upper"]), "layer", ["lower", "upper"], label="gap"
        )
        parts.append(
            apply_opts(band, dict(color="#4477AA", alpha=0.15), dict(line_alpha=0), dict(linewidth=0))
        )
    vd = ["upper", "name", "kind", "constant", "method"]
    # a layer without a global constant (attention) leaves no finite upper bound after it: the
    # table gives the reason, the local bound (when computed) is drawn instead
    fin = rows[np.isfinite(rows["upper"].astype(float))]
    up = hv.Curve(fin, "layer", "upper", label="upper: ∏ layer constants")
    parts.append(style_line(up, "#4477AA", 2.2))
    tips = _tips(("up to layer", "@{name} (@{kind})"), ("upper bound", "@{upper}{0.00}"),
                 ("this layer's constant", "@{constant}{0.00} (@{method})"))  # fmt: skip
    parts.append(apply_opts(hv.Scatter(fin, "layer", vd, label="upper: ∏ layer constants"),
                       dict(color="#4477AA"), dict(size=6, **tips), dict(s=20)))  # fmt: skip
    loc = rows.iloc[0:0]
    if "local_upper" in rows:
        loc = rows[np.isfinite(rows["local_upper"].astype(float))]
        if len(loc):
            vdl = ["local_upper", "name", "local_constant", "local_method"]
            parts.append(style_line(hv.Curve(loc, "layer", "local_upper", label="upper: local (IBP boxes)"),
                                    "#228833", 1.6, "dashed"))  # fmt: skip
            tips = _tips(("up to layer", "@{name}"), ("local upper bound", "@{local_upper}{0.00}"),
                         ("this layer's local constant", "@{local_constant}{0.00} (@{local_method})"))  # fmt: skip
            parts.append(apply_opts(hv.Scatter(loc, "layer", vdl, label="upper: local (IBP boxes)"),
                                    dict(color="#228833"), dict(size=5, **tips), dict(s=16)))  # fmt: skip
    if len(has):
        vdl = ["lower_max", "name", "lower_mean", "ratio"]
        lo = hv.Curve(has, "layer", "lower_max", label="lower: max Jacobian norm")
        parts.append(style_line(lo, "#EE6677", 2.2))
        tips = _tips(("up to layer", "@{name}"), ("lower bound (max ‖J‖)", "@{lower_max}{0.00}"),
                     ("mean ‖J‖", "@{lower_mean}{0.00}"), ("gap upper / lower", "@{ratio}{0.00}x"))  # fmt: skip
        parts.append(apply_opts(hv.Scatter(has, "layer", vdl, label="lower: max Jacobian norm"),
                           dict(color="#EE6677"), dict(size=7, **tips), dict(s=25)))  # fmt: skip
        mean = hv.Curve(has, "layer", "lower_mean", label="mean Jacobian norm")
        parts.append(style_line(mean, "#EE6677", 1.2, "dashed"))
    ratio = format_number(result.summary.get("ratio"), ".2f")
    values = np.concatenate([
        fin["upper"].to_numpy(float), has["lower_mean"].to_numpy(float),
        loc["local_upper"].to_numpy(float) if len(loc) else np.empty(0),
    ])  # fmt: skip
    return style_panel(
        hv.Overlay(parts), f"Lipschitz bounds per layer (gap {ratio}x)", "layer",
        "Lipschitz constant (2-norm)", **_y_scale(values, include=(0.0,)), **_tick_opts(rows),
    )  # fmt: skip


def gap_plot(result) -> hv.Overlay:
    """The gap upper / lower per layer (1 = the bounds meet), log scale."""
    _check_lip(result)
    rows = _layer_rows(result)
    rows = rows[np.isfinite(rows["ratio"].astype(float))]
    if not len(rows):
        return message_panel("gap upper / lower", "no lower bound: run LipschitzBounds first")
    vd = ["ratio", "name", "upper", "lower_max"]
    curve = style_line(hv.Curve(rows, "layer", "ratio"), "#AA3377", 2.0)
    tips = _tips(("up to layer", "@{name}"), ("gap upper / lower", "@{ratio}{0.00}x"),
                 ("upper", "@{upper}{0.00}"), ("lower", "@{lower_max}{0.00}"))  # fmt: skip
    pts = apply_opts(hv.Scatter(rows, "layer", vd), dict(color="#AA3377"), dict(size=7, **tips), dict(s=25))
    one = style_line(hv.HLine(1.0), "#888888", 1.0, "dotted")
    # the gap is >= 1 (1: the bounds meet): the axis holds 1 and spans at least 10%
    return style_panel(
        curve * pts * one, "Gap: upper / lower bound per layer", "layer", "upper / lower",
        legend=None, **_y_scale(rows["ratio"].to_numpy(float), include=(1.0,)),
        **_tick_opts(_layer_rows(result)),
    )  # fmt: skip


def histogram_bins(result, split: str | None = None, bins: int = 20) -> np.ndarray:
    """Bin edges of :func:`jacobian_histogram` (shared by :func:`samples_in_bin`)."""
    vals = _norms(result, split)[1]
    if not len(vals):
        return np.array([0.0, 1.0])
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _norms(result, split: str | None) -> tuple[list[tuple[str, int]], np.ndarray]:
    """``([(split, row), ...], norms)`` of ``split`` or of every split (``None``)."""
    splits = result.splits if split is None else [split]
    if split is not None and split not in result.splits:
        raise NNVitalsError(f"split {split!r}: expected one of {', '.join(result.splits)}")
    ids, vals = [], []
    for s in splits:
        v = np.asarray(result.jacobian_norms(s), float)
        ids += [(s, i) for i in range(len(v))]
        vals.append(v)
    return ids, (np.concatenate(vals) if vals else np.empty(0))


def samples_in_bin(result, index: int, split: str | None = None, bins: int = 20) -> pd.DataFrame:
    """The samples whose Jacobian norm falls in bar ``index``: split, row, label, norm (largest first)."""
    _check_lip(result)
    edges = histogram_bins(result, split, bins)
    ids, vals = _norms(result, split)
    k = np.clip(np.searchsorted(edges, vals, side="right") - 1, 0, len(edges) - 2)
    keep = np.flatnonzero(k == int(index))
    recs = []
    for j in keep:
        s, row = ids[j]
        labels = result.labels(s) if hasattr(result, "labels") else None
        label = int(labels[row]) if labels is not None and row < len(labels) else -1
        recs.append({"split": s, "row": row, "label": label, "jacobian_norm": float(vals[j])})
    df = pd.DataFrame(recs, columns=["split", "row", "label", "jacobian_norm"])
    return df.sort_values("jacobian_norm", ascending=False).reset_index(drop=True)


def jacobian_histogram(result, split: str | None = None, bins: int = 20) -> hv.Histogram:
    """Histogram of per-sample input-Jacobian spectral norms (all probed sets, or one ``split``)."""
    _check_lip(result)
    edges = histogram_bins(result, split, bins)
    _, vals = _norms(result, split)
    counts, _ = np.histogram(vals, edges)
    hist = hv.Histogram((edges, counts), kdims=["jacobian_norm"], vdims=["n_samples"])
    hist = apply_opts(
        hist,
        dict(color="#4477AA", alpha=0.85),
        dict(tools=["tap", "hover"], line_color="white", nonselection_alpha=0.35,
             selection_color="#EE6677", selection_alpha=1.0,
             hover_tooltips=[("Jacobian norm", "@{left}{0.0} to @{right}{0.0}"), ("samples", "@{n_samples}")]),
        dict(edgecolor="white"),
    )  # fmt: skip
    top = format_number(vals.max() if len(vals) else None, ".3g")
    title = f"Jacobian norm per {split + ' ' if split else ''}sample (max {top})"
    return style_panel(hist, title, "input-Jacobian norm ‖J(x)‖₂", "samples", legend=None)


def _image_of(x: np.ndarray) -> np.ndarray:
    """A 2-D grayscale picture of one sample: images averaged over channels, square vectors folded."""
    x = np.asarray(x, float)
    if x.ndim == 3:
        return x.mean(axis=0)
    if x.ndim == 2:
        return x
    n = x.size
    side = int(round(math.sqrt(n)))
    return x.reshape(side, side) if side * side == n else x.reshape(1, n)


#: largest mosaic of :func:`bin_samples` on screen (frame pixels) and pixels per input pixel
MOSAIC_MAX = (460, 280)
MOSAIC_SCALE = 36


def _mosaic(pics: list[np.ndarray], pad: int = 1) -> np.ndarray:
    """Equal-sized pictures side by side (NaN between them), about twice as wide as tall."""
    h, w = pics[0].shape
    n = len(pics)
    cols = min(n, max(1, math.ceil(math.sqrt(2.0 * n * h / w))))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan)
    for i, p in enumerate(pics):
        r, c = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = p
    return grid


def bin_samples(
    result, index: int, split: str | None = None, bins: int = 20, max_samples: int = 16
) -> hv.Image:
    """The samples of histogram bar ``index`` (largest norm first) as one mosaic image.

    Every input pixel is drawn square (the plot's size follows the mosaic), and the axis ranges
    follow each bar's mosaic when the image is a DynamicMap frame (``framewise``).
    """
    _check_lip(result)
    edges = histogram_bins(result, split, bins)
    index = int(min(max(0, index), len(edges) - 2))
    df = samples_in_bin(result, index, split, bins)
    rng = f"‖J‖ {edges[index]:.3g}–{edges[index + 1]:.3g}"
    n = len(df)
    title = f"{n} sample{'s' if n != 1 else ''} with {rng}"
    if not n:
        return message_panel(title, "no sample in this bar: tap another one")
    pics = []
    for _, r in df.head(max_samples).iterrows():
        xs = result.inputs(r["split"]) if hasattr(result, "inputs") else None
        if xs is None:
            return message_panel(title, "the result did not keep its samples (keep_inputs)")
        pics.append(_image_of(xs[int(r["row"])]))
    grid = _mosaic(pics)
    H, W = grid.shape
    # an Image's first array row is its top row: the samples stand upright, in reading order
    img = hv.Image(grid, bounds=(0, 0, W, H), kdims=["x", "y"], vdims=["intensity"])
    img = apply_opts(img, dict(cmap="gray", xaxis=None, yaxis=None))
    shown = f"{max_samples} of {title}, largest first" if n > max_samples else title
    img = style_panel(
        img, shown, "", "", legend=None, padding=0, show_grid=False, xlim=(0, W), ylim=(0, H),
        norm=dict(framewise=True),
    )  # fmt: skip
    scale = min(MOSAIC_SCALE, MOSAIC_MAX[0] / W, MOSAIC_MAX[1] / H)
    inches = min(6.0 / W, 3.6 / H) * W, min(6.0 / W, 3.6 / H) * H
    return apply_opts(
        img,
        bokeh=dict(frame_width=round(scale * W), frame_height=round(scale * H), toolbar=None),
        mpl=dict(aspect=W / H, fig_inches=(max(inches[0], 2.0) + 0.4, inches[1] + 0.8)),
    )  # fmt: skip


@dataclass
class JacobianExplorer:
    """The Jacobian-norm histogram linked to the samples of the tapped bar.

    ``selection`` is a :class:`holoviews.streams.Selection1D` on the histogram (bar indices);
    :meth:`show` selects a bar as a tap does.
    """

    layout: hv.Layout
    selection: hv.streams.Selection1D
    histogram: hv.Histogram
    samples: hv.DynamicMap
    split: str | None = None
    bins: int = 20
    panels: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.layout, self.selection))

    @property
    def bar(self) -> int:
        return int((self.selection.index or [0])[0])

    def show(self, bar: int) -> None:
        self.selection.event(index=[int(bar)])

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.layout._repr_mimebundle_(include, exclude)

    def __panel__(self):
        return self.layout


def jacobian_explorer(result, split: str | None = None, bins: int = 20) -> JacobianExplorer:
    """Histogram of Jacobian norms + the samples of the tapped bar (starts on the largest norms)."""
    _check_lip(result)
    hist = jacobian_histogram(result, split, bins)
    counts = hist.dimension_values("n_samples")
    start = int(np.flatnonzero(counts)[-1]) if counts.any() else 0
    selection = hv.streams.Selection1D(source=hist, index=[start])

    def _samples(index):
        return bin_samples(result, (index or [start])[0], split, bins)

    dmap = hv.DynamicMap(_samples, streams=[selection])
    selection.add_subscriber(lambda **_: dmap.data.clear(), precedence=10)
    layout = hv.Layout([hist, dmap]).cols(2)
    return JacobianExplorer(layout, selection, hist, dmap, split, bins, {"histogram": hist, "samples": dmap})


def lipschitz_summary_text(result) -> str:
    """Two lines: the bounds at the output and the lower bound per sample set."""
    _check_lip(result)
    s = result.summary
    names = {"mix": "midpoints of pairs", "sharpened": "sharpened"}
    per = ", ".join(f"{names.get(k, k)} {format_number(s.get(f'lower_{k}'), '.4g')}" for k in result.splits)
    text = (
        f"upper bound {format_number(s.get('upper'), '.4g')}, lower bound {format_number(s.get('lower'), '.4g')}: "
        f"gap {format_number(s.get('ratio'), '.2f')}x\n"
        f"largest Jacobian norm ‖J(x)‖ by samples: {per}; mean over all {format_number(s.get('lower_mean'), '.4g')}"
    )
    if s.get("local_upper") is not None:
        why = "; ".join(f"{k}: {v}" for k, v in (s.get("no_global") or {}).items())
        text += (
            f"\nlocal upper bound {format_number(s.get('local_upper'), '.4g')} "
            f"(gap {format_number(s.get('local_ratio'), '.2f')}x): {s.get('local_meaning', '')}"
        )
        if why:
            text += f"\nno global bound at {why}"
    return text


def lipschitz_figures(result) -> dict[str, Any]:
    """The figures the CLI writes, by file stem."""
    _check_lip(result)
    figs = {
        "bounds": lipschitz_plot(result),
        "gap": gap_plot(result),
        "jacobian_norms": jacobian_histogram(result),
    }
    counts = figs["jacobian_norms"].dimension_values("n_samples")
    if counts.any() and result.splits and result.inputs(result.splits[0]) is not None:
        figs["largest_norm_samples"] = bin_samples(result, int(np.flatnonzero(counts)[-1]))
    return figs


def comparison_layout(panels: list, cols: int = 2) -> hv.Layout:
    """Several panels in a grid (notebooks: IBP-trained vs standard side by side)."""
    return grid_layout(panels, cols)

"""HoloViews views of a :class:`~analyses.connectivity.analysis.ConnectivityResult` (reference §5).

- :func:`path_plot`: loss or accuracy along the linear path ``theta(l)``, naive (dashed) and
  matched (solid), train and test; the points are tappable (:func:`path_points` finds them).
- :func:`barrier_plot`: the loss and error barriers, naive vs matched, per split.
- :func:`layer_plot`: per layer, what the alignment changed (Ito et al. 2024): relative L2
  distance and top singular-vector alignment, before vs after matching.
- :func:`pairwise_heatmap`: with three or more models, the barrier of every pair.
- :func:`plane_plot`: with three or more models, the loss over the plane through the first three.
- :func:`main_figures`, :func:`summary_text`, :func:`barrier_table`: what the CLI writes.

Styled for bokeh and matplotlib alike; no Panel import here.
"""

from __future__ import annotations

from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd

from ..core.errors import NNVitalsError
from ..core.plotting import (
    apply_opts,
    format_number,
    grid_layout,
    message_panel,
    style_line,
    style_panel,
    value_range,
)

__all__ = [
    "PATH_DASH",
    "SPLIT_COLORS",
    "barrier_plot",
    "barrier_table",
    "layer_plot",
    "main_figures",
    "pairwise_heatmap",
    "path_frame",
    "path_plot",
    "path_points",
    "plane_plot",
    "short_layer",
    "summary_text",
]

#: one colour per split (Paul Tol's bright scheme), one dash per path
SPLIT_COLORS = {"train": "#4477AA", "test": "#EE6677", "data": "#228833"}
PATH_DASH = {"naive": "dashed", "matched": "solid"}
PATH_COLORS = {"naive": "#BBBBBB", "matched": "#4477AA"}
METRIC_LABELS = {"loss": "cross-entropy loss", "accuracy": "accuracy"}
#: how the barrier and layer tables read on a page (their CSV keeps the column names)
BARRIER_TITLES = {
    "split": "data", "path": "path", "barrier": "loss barrier", "barrier_lam": "λ of the loss barrier",
    "barrier_mean": "mean loss rise", "acc_barrier": "error barrier", "acc_barrier_lam": "λ of the error barrier",
}  # fmt: skip
LAYER_TITLES = {
    "name": "layer", "shape": "shape", "group_out": "rows permuted by", "group_in": "columns permuted by",
    "l2_before": "L2 distance before", "l2_after": "L2 distance after",
    "rel_l2_before": "relative L2 before", "rel_l2_after": "relative L2 after",
    "sv_align_before": "alignment before", "sv_align_after": "alignment after",
}  # fmt: skip
#: how each alignment method is named on a page
MATCH_NAMES = {"weights": "weight matching", "activations": "activation matching", "none": "none"}


def short_layer(name: str) -> str:
    """A layer name as a plot shows it: without the ``.weight`` suffix."""
    return str(name).removesuffix(".weight")


def _check(result) -> None:
    if not hasattr(result, "curve") or not hasattr(result, "permuted_b"):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected a ConnectivityResult (ModeConnectivity.run())"
        )


def _metric(metric: str) -> str:
    if metric not in METRIC_LABELS:
        raise NNVitalsError(f"metric {metric!r}: expected 'loss' or 'accuracy'")
    return metric


def _paths(result) -> list[str]:
    return [p for p in ("naive", "matched") if p in set(result.table["path"])]


def _splits(result) -> list[str]:
    have = list(dict.fromkeys(result.table["split"]))
    return [s for s in ("train", "test") if s in have] + [s for s in have if s not in ("train", "test")]


# --------------------------------------------------------------------------- the path
def path_frame(result, pair: str = "0-1") -> pd.DataFrame:
    """Every evaluated point of the pair's paths: ``path, split, lam, loss, accuracy`` (one row each)."""
    _check(result)
    t = result.table
    sel = t[t["pair"] == pair]
    if sel.empty:
        raise NNVitalsError(f"pair {pair!r}: not in this result (have {sorted(set(t['pair']))})")
    return sel[["path", "split", "lam", "loss", "accuracy"]].reset_index(drop=True)


def path_plot(result, metric: str = "loss", pair: str = "0-1") -> hv.Overlay:
    """Loss (or accuracy) along the linear path: naive dashed, matched solid; colour = split.

    The last element of the overlay is a :class:`holoviews.Scatter` of every point (tap one:
    its row of :func:`path_frame` is the selection index).
    """
    metric = _metric(metric)
    df = path_frame(result, pair)
    curves = []
    for path in _paths(result):
        for split in _splits(result):
            part = df[(df["path"] == path) & (df["split"] == split)]
            if part.empty:
                continue
            c = hv.Curve(part, "lam", [metric], label=f"{path}, {split}")
            curves.append(style_line(c, SPLIT_COLORS.get(split, "#228833"), 2.0, PATH_DASH[path]))
    pts = hv.Scatter(df.assign(point=np.arange(len(df))), "lam", [metric, "path", "split", "point"])
    pts = apply_opts(
        pts,
        dict(color="#333333"),
        dict(
            size=7,
            alpha=0.55,
            tools=["tap", "hover"],
            nonselection_alpha=0.35,
            selection_color="#CC3311",
            selection_alpha=1.0,
            line_color="white",
            line_width=0.5,
            hover_tooltips=[
                ("model", "θ(λ = @{lam}{0.000}) on the @{path} path"),
                (what_label(metric), f"@{{{metric}}}{{0.0000}} on @{{split}} data"),
            ],
        ),  # fmt: skip
        dict(s=10, alpha=0.5),
    )
    s = result.summary
    what = METRIC_LABELS[metric]
    title = f"{what} along the path"
    if metric == "loss" and s.get("barrier_naive") is not None:  # short enough for a half-width plot
        title = f"loss (barrier naive {format_number(s['barrier_naive'], '.3f')}"
        if s.get("barrier_matched") is not None:
            title += f", matched {format_number(s['barrier_matched'], '.3f')}"
        title += ")"
    # accuracy lives in [0, 1]; the loss axis starts at 0, so a flat path does not look like a bump
    if metric == "accuracy":
        ylim = (-0.03, 1.03)
    else:
        ylim = value_range(df[metric].to_numpy(float), include=(0.0,))
    return style_panel(hv.Overlay([*curves, pts]), title, "λ (0 = model A, 1 = model B)", what, ylim=ylim)


def what_label(metric: str) -> str:
    """The name of ``metric`` in a tooltip."""
    return {"loss": "loss", "accuracy": "accuracy"}[metric]


def path_points(plot) -> hv.Scatter:
    """The tappable scatter of a :func:`path_plot` overlay."""
    for el in plot:
        if isinstance(el, hv.Scatter):
            return el
    raise NNVitalsError("path_points: this plot has no points (make it with path_plot)")


# --------------------------------------------------------------------------- barriers
def barrier_table(result) -> pd.DataFrame:
    """One row per split and path: loss barrier (both variants), its λ, error barrier, its λ."""
    _check(result)
    rows = []
    for split, by_path in result.summary.get("barriers", {}).items():
        for path, v in by_path.items():
            rows.append(
                dict(split=split, path=path, barrier=v["barrier"], barrier_lam=v["barrier_lam"],
                     barrier_mean=v["barrier_mean"], acc_barrier=v["acc_barrier"], acc_barrier_lam=v["acc_barrier_lam"])
            )  # fmt: skip
    cols = ["split", "path", "barrier", "barrier_lam", "barrier_mean", "acc_barrier", "acc_barrier_lam"]
    return pd.DataFrame(rows, columns=cols)


def _bars(df: pd.DataFrame, value: str, title: str, ylabel: str, lam: str):
    df = df.assign(color=[PATH_COLORS[p] for p in df["path"]])
    bars = hv.Bars(df, ["split", "path"], [value, "color", lam])
    tips = [
        ("path", "@{path} on @{split} data"),
        (title, f"@{{{value}}}{{0.0000}} at λ = @{{{lam}}}{{0.00}}"),
    ]
    bars = apply_opts(
        bars,
        None,
        dict(color=hv.dim("color"), tools=["hover"], hover_tooltips=tips),
        dict(color=hv.dim("color")),
    )
    return style_panel(bars, title, "data, path", ylabel, legend=None)


def barrier_plot(result) -> hv.Layout:
    """Loss barrier and error (accuracy) barrier, naive vs matched, for each split."""
    df = barrier_table(result)
    if df.empty:
        return grid_layout([message_panel("barriers", "no barriers in this result")], 1)
    loss = _bars(df, "barrier", "loss barrier", "loss rise above the straight line", "barrier_lam")
    err = _bars(df, "acc_barrier", "error barrier", "accuracy drop below the line", "acc_barrier_lam")
    return grid_layout([loss, err], 2, (4.6, 3.6))


# --------------------------------------------------------------------------- layers
def layer_plot(result) -> hv.Layout:
    """Per layer, before vs after matching: relative L2 distance to A, and alignment of the top
    singular vectors (Ito et al. 2024: matching barely moves the first, raises the second)."""
    _check(result)
    layers = result.layers
    if layers.empty:
        msg = "no permutable layers: the models were not aligned"
        return grid_layout(
            [message_panel("per-layer distance", msg), message_panel("singular vectors", msg)], 2
        )
    panels = []
    names = [short_layer(n) for n in layers["name"]]
    rotate = 30 if len(names) > 4 or max(len(n) for n in names) > 8 else 0
    for before, after, title, ylabel, what in (
        ("rel_l2_before", "rel_l2_after", "L2 distance to A (relative)", "‖W_A − W_B‖ / ‖W_A‖",
         "relative L2 distance"),
        ("sv_align_before", "sv_align_after", "alignment of top singular vectors",
         "alignment (1 = same directions)", "alignment"),
    ):  # fmt: skip
        df = pd.concat(
            [
                pd.DataFrame({"layer": names, "when": "before", "value": layers[before]}),
                pd.DataFrame({"layer": names, "when": "after", "value": layers[after]}),
            ],
            ignore_index=True,
        )
        df["color"] = np.where(df["when"] == "before", PATH_COLORS["naive"], PATH_COLORS["matched"])
        bars = hv.Bars(df, ["layer", "when"], ["value", "color"])
        tips = [("layer", "@{layer}"), (what, "@{value}{0.000} @{when} matching")]
        bars = apply_opts(
            bars,
            None,
            dict(color=hv.dim("color"), tools=["hover"], hover_tooltips=tips, xrotation=rotate),
            dict(color=hv.dim("color"), xrotation=rotate),
        )
        extra = {"ylim": (0, 1.04)} if before.startswith("sv") else {}
        panels.append(style_panel(bars, title, "layer: before, after matching", ylabel, legend=None, **extra))
    return grid_layout(panels, 2, (5.0, 3.8))


# --------------------------------------------------------------------------- 3+ models
def pairwise_heatmap(result, what: str = "barrier", path: str = "matched") -> hv.Overlay | hv.HeatMap:
    """The ``what`` barrier (``barrier`` or ``acc_barrier``) of every pair of models on ``path``."""
    _check(result)
    n = int(result.summary.get("models", 2))
    title = f"pairwise {'loss' if what == 'barrier' else 'error'} barrier, {path}"
    if n < 3:
        return message_panel(title, "needs three or more models: add models to compare")
    mat = result.pairwise(f"{what}_{path}")
    names = [f"model {i}" for i in range(n)]
    rows = [(names[j], names[i], float(mat[i, j])) for i in range(n) for j in range(n)]
    hm = hv.HeatMap(pd.DataFrame(rows, columns=["B", "A", "barrier"]), ["B", "A"], "barrier")
    hm = apply_opts(
        hm,
        dict(cmap="viridis", colorbar=True, clim=(0.0, max(float(mat.max()), 1e-9))),
        dict(
            tools=["hover"],
            invert_yaxis=True,
            hover_tooltips=[("models", "@{A} and @{B}"), ("barrier", "@{barrier}{0.0000}")],
        ),
        dict(invert_yaxis=True, fig_inches=(4.6, 4.0)),
    )
    return style_panel(hm, title, "", "", legend=None, padding=0)


def plane_plot(result, split: str | None = None, metric: str = "loss") -> hv.Overlay:
    """Loss (or accuracy) over the plane through the first three models (orthonormal coordinates;
    models 1 and 2 aligned to model 0 unless matching was off), the models marked."""
    _check(result)
    metric = _metric(metric)
    split = split or result.summary.get("split", "test")
    title = f"{METRIC_LABELS[metric]} over the plane through models 0, 1, 2 ({split})"
    plane = result.plane
    key = f"{metric}_{split}"
    if key not in plane:
        return message_panel(title, "needs three or more models: add models to compare")
    z = np.asarray(plane[key], dtype=np.float64)
    mesh = hv.QuadMesh(
        (plane["x"], plane["y"], z), ["x", "y"], [hv.Dimension(metric, label=METRIC_LABELS[metric])]
    )
    clim = (0.0, 1.0) if metric == "accuracy" else (float(np.nanmin(z)), float(np.nanpercentile(z, 95)))
    mesh = apply_opts(
        mesh,
        dict(cmap="viridis" if metric == "accuracy" else "viridis_r", colorbar=True, clim=clim),
        dict(tools=["hover"], hover_tooltips=[(METRIC_LABELS[metric], f"@{{{metric}}}{{0.000}}")]),
        dict(fig_inches=(5.0, 4.2)),
    )
    xy = np.asarray(plane["models_xy"], dtype=np.float64)
    marks = hv.Points(
        pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "model": ["0", "1", "2"]}), ["x", "y"], ["model"]
    )
    marks = apply_opts(
        marks, dict(color="white"), dict(size=10, line_color="black"), dict(s=60, edgecolors="black")
    )
    labels = hv.Labels(
        pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "text": [" model 0", " model 1", " model 2"]}),
        ["x", "y"],
        "text",
    )
    labels = apply_opts(
        labels,
        None,
        dict(text_color="white", text_font_size="9pt", text_align="left"),
        dict(color="white", size=9, horizontalalignment="left"),
    )
    return style_panel(
        mesh * marks * labels, title, "weight-space x", "weight-space y", legend=None, padding=0
    )


# --------------------------------------------------------------------------- text and CLI figures
def summary_text(result) -> str:
    """A few lines a person reads: barriers naive vs matched, distances, what the alignment did."""
    _check(result)
    s = result.summary
    split = s.get("split", "test")
    lines = []
    line = f"loss barrier on {split}: naive {format_number(s.get('barrier_naive'), '.3f')}"
    if s.get("barrier_matched") is not None:
        line += f", matched ({MATCH_NAMES.get(s.get('match'), s.get('match'))}) {format_number(s.get('barrier_matched'), '.3f')}"
    lines.append(line)
    line = f"error barrier on {split}: naive {format_number(s.get('acc_barrier_naive'), '.3f')}"
    if s.get("acc_barrier_matched") is not None:
        line += f", matched {format_number(s.get('acc_barrier_matched'), '.3f')}"
    lines.append(line)
    groups = ", ".join(f"{g} ({n} units)" for g, n in s.get("groups", {}).items()) or "none"
    lines.append(
        f"L2 distance A-B: {format_number(s.get('l2_before'), '.2f')} before, "
        f"{format_number(s.get('l2_after'), '.2f')} after matching "
        f"({s.get('match_iterations', 0)} rounds; units permuted in {groups})"
    )
    layers = result.layers
    if not layers.empty:
        lines.append(
            f"top singular-vector alignment (mean over layers): {layers['sv_align_before'].mean():.2f} before, "
            f"{layers['sv_align_after'].mean():.2f} after"
        )
    if s.get("bn_reset"):
        lines.append("BatchNorm statistics recomputed on train data at every point")
    if s.get("note"):
        lines.append(s["note"])
    if "merge" in s:
        m = s["merge"].get(split, {})
        lines.append(
            f"merged {s['models']} models: accuracy {format_number(m.get('merged_accuracy'), '.3f')} "
            f"(plain average {format_number(m.get('average_accuracy'), '.3f')})"
        )
    return "\n".join(lines)


def main_figures(result) -> dict[str, Any]:
    """The figures the CLI writes, by file stem: ``path_loss``, ``path_accuracy``, ``barriers``,
    ``layers``; with three or more models also ``pairwise`` and ``plane``."""
    _check(result)
    figs: dict[str, Any] = {
        "path_loss": path_plot(result, "loss"),
        "path_accuracy": path_plot(result, "accuracy"),
        "barriers": barrier_plot(result),
        "layers": layer_plot(result),
    }
    if int(result.summary.get("models", 2)) >= 3:
        path = "matched" if result.summary.get("match") != "none" else "naive"
        figs["pairwise"] = pairwise_heatmap(result, "barrier", path)
        figs["plane"] = plane_plot(result)
    return figs

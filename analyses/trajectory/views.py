"""HoloViews views of a :class:`~analyses.trajectory.result.TrajectoryResult`: readings over steps.

Every builder styles its elements for bokeh (hover; the step markers take the tap tool, so a page
can make the tapped checkpoint the model of its other pages with ``hv.streams.Selection1D``) and
matplotlib (static export). With a pinned baseline a dashed line marks its step, and
``relative=True`` draws each reading's difference to it. No Panel import here.

- :func:`alpha_heatmap`: per-layer alpha (or another per-layer reading) as a layer x step heatmap;
- :func:`mean_alpha_plot`: the mean alpha over the analysed layers, plain and FARMS;
- :func:`ibp_plot`: IBP-certified and clean accuracy; :func:`tightness_plot`: the output tightness;
- :func:`lipschitz_plot`: the certified upper and the empirical lower bound (log axis when they
  span decades); :func:`lipschitz_ratio_plot`: their ratio;
- :func:`nero_gap_plot`: the NERO gap (mean score at the best group element minus at the worst);
- :func:`barrier_plot`: the loss barrier to the next checkpoint and to the final one;
- :func:`main_figures` (what ``nnvitals track`` writes) and :func:`summary_text`.
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
    log_worthy,
    message_panel,
    style_line,
    style_panel,
    value_range,
)

__all__ = [
    "COLORS",
    "alpha_heatmap",
    "barrier_plot",
    "ibp_plot",
    "lipschitz_plot",
    "lipschitz_ratio_plot",
    "main_figures",
    "mean_alpha_plot",
    "metric_plot",
    "nero_gap_plot",
    "summary_text",
    "tightness_plot",
]

#: Paul Tol's colour-blind safe "bright" scheme (as the other families)
COLORS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")
#: how readings are named on axes and in legends
NAMES = {
    "alpha": "alpha (plain)",
    "alpha_farms": "alpha (FARMS)",
    "certified_accuracy": "IBP-certified accuracy",
    "clean_accuracy": "clean accuracy",
    "tightness": "output tightness",
    "upper": "upper bound (certified)",
    "lower": "lower bound (empirical)",
    "ratio": "upper / lower",
    "gap": "NERO gap (best - worst)",
    "barrier_matched_to_next": "to next, matched",
    "barrier_naive_to_next": "to next, naive",
    "barrier_matched_to_final": "to final, matched",
    "barrier_naive_to_final": "to final, naive",
}


def _check(result) -> None:
    if not (
        hasattr(result, "table") and {"step", "analysis", "metric", "value"} <= set(result.table.columns)
    ):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected a TrajectoryResult (Trajectory(...).run())"
        )


def _unit(result) -> str:
    return str(result.summary.get("unit", "step"))


def _base_step(result, relative: bool | int) -> int | None:
    """The baseline step a relative view draws against: the pinned one (``True``) or the step given."""
    if relative is False or relative is None:
        return None
    return result.baseline if relative is True else int(relative)


def _frame(result, analysis: str, metric: str, layer: str = "", relative: bool | int = False) -> pd.DataFrame:
    """step, checkpoint, value (the difference to the baseline with ``relative``) of one reading."""
    t = result.relative_to(_base_step(result, relative)) if relative is not False else result.table
    rows = t[(t["analysis"] == analysis) & (t["metric"] == metric) & (t["layer"] == layer)]
    col = "delta" if relative is not False else "value"
    out = pd.DataFrame(
        {
            "step": rows["step"].to_numpy(dtype=np.int64),
            "checkpoint": rows["checkpoint"].astype(str).to_numpy(),
            "value": rows[col].to_numpy(dtype=float),
        }
    ).sort_values("step", kind="stable")
    return out[np.isfinite(out["value"])].reset_index(drop=True)


def _baseline_line(result, relative: bool | int) -> list:
    b = _base_step(result, relative) if relative is not False else result.summary.get("baseline")
    if b is None:
        return []
    line = apply_opts(hv.VLine(float(b)), dict(color="#555555"), dict(line_dash="dashed", line_width=1.2),
                      dict(linestyle="--", linewidth=1.2))  # fmt: skip
    parts = [line]
    if relative is not False:
        parts.append(apply_opts(hv.HLine(0.0), dict(color="#999999"), dict(line_width=1), dict(linewidth=1)))
    return parts


def metric_plot(
    result,
    analysis: str,
    metrics: tuple[str, ...] | list[str],
    title: str,
    ylabel: str,
    *,
    relative: bool | int = False,
    logy: bool | None = None,
    include: tuple[float, ...] = (),
) -> hv.Overlay:
    """Model-wide readings of ``analysis`` over steps, one line with tappable markers per metric.

    ``relative``: each reading minus its value at the pinned baseline (``True``) or at the step given
    (a baseline picked after the run: nothing is recomputed). ``logy``: a log y axis
    (default: when positive values span many decades). ``include``: values the y range shows.
    """
    _check(result)
    relative = False if relative is None else relative
    unit = _unit(result)
    parts, values = [], []
    for i, metric in enumerate(metrics):
        rows = _frame(result, analysis, metric, relative=relative)
        if rows.empty:
            continue
        name = NAMES.get(metric, metric)
        color = COLORS[i % len(COLORS)]
        parts.append(style_line(hv.Curve(rows, "step", "value", label=name), color, 2.0))
        pts = hv.Scatter(rows, "step", ["value", "checkpoint"], label=name)
        tips = [(unit, "@{step}"), ("checkpoint", "@{checkpoint}"), (name, "@{value}{0.0000}")]
        parts.append(apply_opts(pts, dict(color=color), dict(size=7, tools=["hover", "tap"], hover_tooltips=tips),
                                dict(s=25)))  # fmt: skip
        values.append(rows["value"].to_numpy())
    if not parts:
        what = ", ".join(NAMES.get(m, m) for m in metrics)
        return message_panel(title, f"no {analysis} readings ({what}): run the trajectory with {analysis}")
    vals = np.concatenate(values)
    log = (relative is False and log_worthy(vals)) if logy is None else bool(logy)
    scale = {"logy": True} if log else {"logy": False, "ylim": value_range(vals, include=include)}
    if relative is not False:
        ylabel = f"{ylabel} - baseline ({unit} {_base_step(result, relative)})"
    return style_panel(hv.Overlay(parts + _baseline_line(result, relative)), title, unit, ylabel,
                       legend=len(values) > 1, **scale)  # fmt: skip


def alpha_heatmap(result, metric: str = "alpha") -> hv.HeatMap | hv.Overlay:
    """A per-layer spectral reading (default the plain alpha) as a layer x step heatmap.

    Columns are the checkpoints in step order (evenly spaced whatever the gaps between steps);
    WeightWatcher reads alpha in 2..6 as well trained, below 2 as over-trained, above 6 as under-trained.
    """
    _check(result)
    t = result.table
    rows = t[(t["analysis"] == "spectra") & (t["metric"] == metric) & (t["layer"] != "")]
    title = f"{NAMES.get(metric, metric)} per layer over training"
    if rows.empty:
        return message_panel(title, f"no per-layer {metric} readings: run the trajectory with spectra")
    unit = _unit(result)
    steps = sorted(set(rows["step"].astype(int)))
    layers = list(dict.fromkeys(rows["layer"]))
    data = pd.DataFrame(
        {
            unit: [str(s) for s in rows["step"].astype(int)],
            "layer": rows["layer"].astype(str).to_numpy(),
            metric: rows["value"].to_numpy(dtype=float),
            "checkpoint": rows["checkpoint"].astype(str).to_numpy(),
        }
    )
    heat = hv.HeatMap(data, [unit, "layer"], [metric, "checkpoint"])
    vals = data[metric].to_numpy()
    finite = vals[np.isfinite(vals)]
    clim = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    tips = [(unit, f"@{{{unit}}}"), ("layer", "@{layer}"), (metric, f"@{{{metric}}}{{0.00}}")]
    heat = apply_opts(
        heat,
        dict(cmap="viridis", colorbar=True, clim=clim),
        dict(tools=["hover", "tap"], hover_tooltips=tips, xrotation=45 if len(steps) > 8 else 0),
        dict(show_values=False),
    )
    height = dict(height=max(240, 90 + 22 * len(layers)))
    return apply_opts(style_panel(heat, title, unit, "layer", legend=None, show_grid=False), bokeh=height)


def mean_alpha_plot(result, relative: bool | int = False) -> hv.Overlay:
    """Mean alpha over the analysed layers, plain and FARMS (when the spectra fitted FARMS)."""
    return metric_plot(result, "spectra", ("alpha", "alpha_farms"), "Mean alpha over training", "mean alpha",
                       relative=relative, logy=False)  # fmt: skip


def ibp_plot(result, relative: bool | int = False) -> hv.Overlay:
    """IBP-certified accuracy (and the clean accuracy) at the run's eps over training."""
    eps = _param(result, "ibp", "eps")
    title = "Certified accuracy over training" + (
        f" (eps {format_number(eps, 'g')})" if eps is not None else ""
    )
    return metric_plot(result, "ibp", ("certified_accuracy", "clean_accuracy"), title, "accuracy",
                       relative=relative, logy=False, include=() if relative is not False else (0.0,))  # fmt: skip


def tightness_plot(result, relative: bool | int = False) -> hv.Overlay:
    """IBP output tightness (Mao et al. 2024; 1 = interval bounds exact) over training."""
    return metric_plot(result, "ibp", ("tightness",), "IBP tightness over training", "output tightness",
                       relative=relative)  # fmt: skip


def lipschitz_plot(result, relative: bool | int = False) -> hv.Overlay:
    """Lipschitz upper bound (product of layer norms) and lower bound (largest Jacobian norm)."""
    return metric_plot(result, "lipschitz", ("upper", "lower"), "Lipschitz bounds over training",
                       "Lipschitz constant", relative=relative)  # fmt: skip


def lipschitz_ratio_plot(result, relative: bool | int = False) -> hv.Overlay:
    """Upper / lower Lipschitz bound over training (1 = the certified bound is tight)."""
    return metric_plot(result, "lipschitz", ("ratio",), "Lipschitz bound ratio over training", "upper / lower",
                       relative=relative, include=() if relative is not False else (1.0,))  # fmt: skip


def nero_gap_plot(result, relative: bool | int = False) -> hv.Overlay:
    """NERO gap over training: mean score at the best group element minus at the worst (0 = invariant)."""
    group = _param(result, "orbits", "group")
    title = "NERO gap over training" + (f" ({group})" if group else "")
    return metric_plot(result, "orbits", ("gap",), title, "best - worst mean score", relative=relative,
                       logy=False, include=() if relative is not False else (0.0,))  # fmt: skip


def barrier_plot(result, relative: bool | int = False) -> hv.Overlay:
    """The loss barrier along training: from each checkpoint to the next and to the final one,
    after weight matching and as given (naive)."""
    metrics = ("barrier_matched_to_next", "barrier_matched_to_final", "barrier_naive_to_next",
               "barrier_naive_to_final")  # fmt: skip
    return metric_plot(result, "connectivity", metrics, "Loss barrier along training", "loss barrier",
                       relative=relative, logy=False, include=() if relative is not False else (0.0,))  # fmt: skip


def _param(result, analysis: str, name: str) -> Any:
    """A parameter the trajectory ran ``analysis`` with (None when not recorded)."""
    settings = result.meta.get("params", {}).get("settings") or {}
    return (settings.get(analysis) or {}).get(name)


def main_figures(result) -> dict[str, Any]:
    """The figures ``nnvitals track`` writes, by file stem (those with readings in the result)."""
    _check(result)
    have = set(result.table["analysis"])
    figs: dict[str, Any] = {}
    if "spectra" in have:
        figs["alpha_heatmap"] = alpha_heatmap(result)
        figs["mean_alpha"] = mean_alpha_plot(result)
    if "ibp" in have:
        figs["certified_accuracy"] = ibp_plot(result)
        figs["ibp_tightness"] = tightness_plot(result)
    if "lipschitz" in have:
        figs["lipschitz"] = lipschitz_plot(result)
        figs["lipschitz_ratio"] = lipschitz_ratio_plot(result)
    if "orbits" in have:
        figs["nero_gap"] = nero_gap_plot(result)
    if "connectivity" in have:
        figs["barrier"] = barrier_plot(result)
    if not figs:
        figs["trajectory"] = message_panel("Trajectory", "no readings: every checkpoint failed (see errors)")
    return figs


def summary_text(result) -> str:
    """A few lines a person reads: the series, each analysis's headline at the first and the last
    checkpoint (and against the baseline), what failed."""
    _check(result)
    s = result.summary
    unit = _unit(result)
    steps = s.get("steps", [])
    span = f"{unit}s {steps[0]} to {steps[-1]}" if steps else "no steps"
    runs = f"{s.get('computed', 0)} computed, {s.get('from_store', 0)} from the store"
    lines = [f"{len(steps)} checkpoints of {s.get('series', '?')} ({span}); {runs}"]
    base = s.get("baseline")
    for analysis, h in s.get("headline", {}).items():
        name = NAMES.get(h["metric"], h["metric"])
        line = (
            f"{analysis}: {name} {format_number(h['first'], '.3g')} at {unit} {h['first_step']} -> "
            f"{format_number(h['last'], '.3g')} at {unit} {h['last_step']}"
        )
        if base is not None:
            at = result.value(int(base), analysis, h["metric"])
            if np.isfinite(at):
                line += f" (baseline {unit} {base}: {format_number(at, '.3g')})"
        lines.append(line)
    for analysis, why in s.get("not_applicable", {}).items():
        lines.append(f"{analysis}: not run ({why})")
    errors = s.get("errors", [])
    if errors:
        lines.append(f"{len(errors)} failed:")
        for e in errors[:5]:
            what = f" {e['analysis']}" if e.get("analysis") else ""
            lines.append(f"  {e['checkpoint']}{what}: {e['message']}")
        if len(errors) > 5:
            lines.append(f"  ... and {len(errors) - 5} more (see summary.json)")
    return "\n".join(lines)

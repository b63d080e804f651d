"""The result of a :class:`~analyses.trajectory.analysis.Trajectory`: readings over training.

``table``: one row per reading, in long form: ``checkpoint`` (its name), ``step``, ``analysis``
(``spectra``, ``ibp``, ``lipschitz``, ``orbits``, ``connectivity``), ``metric``, ``layer`` (empty
for a model-wide reading) and ``value``; with a pinned baseline also ``delta`` (the value minus
the same reading at the baseline step). ``summary``: the series (steps, unit, checkpoint
names), the analyses run, the headline reading of each at the first and the last checkpoint
(:data:`HEADLINES`), the baseline, what failed (``errors``: checkpoint, step, analysis, message)
and how many single results were computed and how many came from the store. Saves and loads
as every result does (``.nnv``, no pickle).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import NNVitalsError
from ..core.result import Result

COLUMNS = ["checkpoint", "step", "analysis", "metric", "layer", "value"]

#: the headline metric of each analysis, in order of preference (the first one the result has)
HEADLINES: dict[str, tuple[str, ...]] = {
    "spectra": ("alpha", "alpha_farms"),
    "ibp": ("certified_accuracy", "tightness"),
    "lipschitz": ("ratio", "upper", "lower"),
    "orbits": ("gap",),
    "connectivity": (
        "barrier_matched_to_final",
        "barrier_naive_to_final",
        "barrier_matched_to_next",
        "barrier_naive_to_next",
    ),
}


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "checkpoint": pd.Series([], dtype=object),
            "step": pd.Series([], dtype=np.int64),
            "analysis": pd.Series([], dtype=object),
            "metric": pd.Series([], dtype=object),
            "layer": pd.Series([], dtype=object),
            "value": pd.Series([], dtype=np.float64),
        }
    )


def with_delta(table: pd.DataFrame, step: int) -> pd.DataFrame:
    """``table`` with a ``delta`` column: each value minus the same reading (analysis, metric,
    layer) at ``step`` (NaN where the baseline has no such reading)."""
    keys = ["analysis", "metric", "layer"]
    base = table[table["step"] == step][[*keys, "value"]].rename(columns={"value": "_base"})
    base = base.drop_duplicates(keys)
    out = table.merge(base, on=keys, how="left", sort=False)
    out["delta"] = out["value"] - out["_base"]
    return out.drop(columns="_base").reset_index(drop=True)


def headlines(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per analysis: its headline metric (:data:`HEADLINES`) at the first and the last checkpoint
    where it has a finite value (model-wide readings only)."""
    out: dict[str, dict[str, Any]] = {}
    wide = table[table["layer"] == ""]
    for analysis in dict.fromkeys(wide["analysis"]):
        rows = wide[wide["analysis"] == analysis]
        prefs = HEADLINES.get(analysis, ()) + tuple(dict.fromkeys(rows["metric"]))
        for metric in prefs:
            r = rows[(rows["metric"] == metric) & np.isfinite(rows["value"].to_numpy(dtype=float))]
            if r.empty:
                continue
            r = r.sort_values("step", kind="stable")
            first, last = r.iloc[0], r.iloc[-1]
            out[analysis] = {
                "metric": metric,
                "first": float(first["value"]),
                "last": float(last["value"]),
                "first_step": int(first["step"]),
                "last_step": int(last["step"]),
                "change": float(last["value"] - first["value"]),
            }
            break
    return out


class TrajectoryResult(Result):
    """Readings of several analyses over the checkpoints of a series (see module docstring)."""

    kind = "trajectory"

    @property
    def steps(self) -> list[int]:
        return [int(s) for s in self.summary.get("steps", [])]

    @property
    def unit(self) -> str:
        return str(self.summary.get("unit", "step"))

    @property
    def checkpoints(self) -> list[str]:
        return [str(c) for c in self.summary.get("checkpoints", [])]

    @property
    def analyses(self) -> list[str]:
        return [str(a) for a in self.summary.get("analyses", [])]

    @property
    def baseline(self) -> int | None:
        b = self.summary.get("baseline")
        return None if b is None else int(b)

    @property
    def errors(self) -> pd.DataFrame:
        """What could not be read or run: one row per (checkpoint, analysis) with its message."""
        rows = self.summary.get("errors", [])
        return pd.DataFrame(rows, columns=["checkpoint", "step", "analysis", "message"])

    def metrics(self, analysis: str) -> list[str]:
        return list(dict.fromkeys(self.table.loc[self.table["analysis"] == analysis, "metric"]))

    def over_steps(self, analysis: str, metric: str, layer: str = "") -> pd.DataFrame:
        """``step``, ``checkpoint`` and ``value`` of one reading, ordered by step."""
        t = self.table
        rows = t[(t["analysis"] == analysis) & (t["metric"] == metric) & (t["layer"] == layer)]
        return rows[["step", "checkpoint", "value"]].sort_values("step", kind="stable").reset_index(drop=True)

    def layer_grid(self, analysis: str, metric: str) -> pd.DataFrame:
        """A per-layer reading as a layer x step table (layers in the order they first appear)."""
        t = self.table
        rows = t[(t["analysis"] == analysis) & (t["metric"] == metric) & (t["layer"] != "")]
        if rows.empty:
            return pd.DataFrame()
        grid = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="first", dropna=False)
        order = list(dict.fromkeys(rows["layer"]))
        return grid.reindex(order)

    def relative_to(self, step: int | None = None) -> pd.DataFrame:
        """The table with ``delta`` against the reading at ``step`` (default: the pinned baseline)."""
        step = self.baseline if step is None else int(step)
        if step is None:
            raise NNVitalsError("baseline: none pinned; give a step")
        if step not in self.steps:
            shown = ", ".join(map(str, self.steps))
            raise NNVitalsError(
                f"baseline: {self.unit} {step} is not in this trajectory ({self.unit}s {shown})"
            )
        return with_delta(self.table.drop(columns=["delta"], errors="ignore"), step)

    def headline(self, analysis: str) -> dict[str, Any] | None:
        return self.summary.get("headline", {}).get(analysis)

    def value(self, step: int, analysis: str, metric: str, layer: str = "") -> float:
        """One reading (NaN when the trajectory has none)."""
        t = self.table
        hit = t[
            (t["step"] == step)
            & (t["analysis"] == analysis)
            & (t["metric"] == metric)
            & (t["layer"] == layer)
        ]
        return float(hit["value"].iloc[0]) if len(hit) else math.nan


__all__ = ["COLUMNS", "HEADLINES", "TrajectoryResult", "empty_table", "headlines", "with_delta"]

"""What to do with per-layer alphas: training and pruning schedules, model comparison.

- :func:`tempbalance_factors` — TempBalance ("Temperature Balancing, Layer-wise Weight
  Analysis, and Neural Network Training", NeurIPS 2023): each layer's learning rate is
  lr * f, with f mapped linearly from the layer's alpha onto [lr_min_ratio, lr_max_ratio]
  (larger alpha = less trained = larger learning rate).
- :func:`alphapruning_sparsity` — AlphaPruning ("AlphaPruning: Using Heavy-Tailed Self
  Regularization Theory for Improved Layer-wise Pruning of LLMs", NeurIPS 2024): alpha is
  averaged per transformer block and mapped linearly onto [1 - eps, 1 + eps]; the ratios are
  then rescaled so that the parameter-weighted sparsity equals the global target.
- :func:`compare` — two results layer by layer (matched by name).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..core.errors import NNVitalsError
from ..core.result import Result

_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers?|h|blocks?|block)\.(\d+)\.")


def _ok(result: Result) -> pd.DataFrame:
    t = result.table
    t = t[(t["status"] == "ok") & np.isfinite(t["alpha"].to_numpy(dtype=float))]
    if t.empty:
        raise NNVitalsError("result has no layer with a finite alpha")
    return t


def _linear_map(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = x.max() - x.min()
    if span == 0:
        return np.full_like(x, (lo + hi) / 2, dtype=float)
    return lo + (x - x.min()) / span * (hi - lo)


def tempbalance_factors(
    result: Result, lr: float = 1.0, lr_min_ratio: float = 0.5, lr_max_ratio: float = 1.5
) -> pd.DataFrame:
    """Per-layer learning-rate factors (TempBalance): columns name, alpha, lr_factor, lr."""
    if not 0 < lr_min_ratio <= lr_max_ratio:
        raise NNVitalsError(
            f"lr_min_ratio={lr_min_ratio}, lr_max_ratio={lr_max_ratio}: expected 0 < min <= max"
        )
    t = _ok(result)
    f = _linear_map(t["alpha"].to_numpy(dtype=float), lr_min_ratio, lr_max_ratio)
    return pd.DataFrame(
        {"name": t["name"].to_numpy(), "alpha": t["alpha"].to_numpy(), "lr_factor": f, "lr": lr * f}
    )


def block_of(name: str) -> str:
    """The transformer block a parameter belongs to ('encoder.layer.3.x' -> '3'); '' if none."""
    m = _BLOCK_RE.search(name)
    return m.group(1) if m else ""


def alphapruning_sparsity(result: Result, target: float = 0.7, epsilon: float = 0.2) -> pd.DataFrame:
    """Per-layer sparsity ratios (AlphaPruning), one block's layers sharing one ratio.

    Columns: name, block, alpha, block_alpha, params, sparsity. The parameter-weighted mean
    sparsity equals ``target`` (ratios are clipped to [0, 1]).
    """
    if not 0 < target < 1:
        raise NNVitalsError(f"target={target}: expected a sparsity strictly between 0 and 1")
    if not 0 <= epsilon < 1:
        raise NNVitalsError(f"epsilon={epsilon}: expected 0 <= epsilon < 1")
    t = _ok(result).copy()
    t["block"] = [block_of(n) or n for n in t["name"]]
    t["block_alpha"] = t.groupby("block", sort=False)["alpha"].transform("mean")
    t["params"] = [int(np.prod([int(v) for v in s.split("x")])) for s in t["shape"]]
    scores = _linear_map(t["block_alpha"].to_numpy(dtype=float), 1 - epsilon, 1 + epsilon)
    params = t["params"].to_numpy(dtype=float)
    ratios = scores * target * params.sum() / (params * scores).sum()
    t["sparsity"] = np.clip(ratios, 0.0, 1.0)
    return t[["name", "block", "alpha", "block_alpha", "params", "sparsity"]].reset_index(drop=True)


def compare(
    a: Result,
    b: Result,
    labels: tuple[str, str] = ("a", "b"),
    metrics=("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"),
) -> pd.DataFrame:
    """Two spectral results side by side, matched by layer name, with per-metric deltas (b - a)."""
    la, lb = labels
    ta, tb = a.table, b.table
    cols = ["name", "layer_id", "layer_type", "shape", "status", *metrics]
    merged = ta[cols].merge(
        tb[["name", "shape", "status", *metrics]], on="name", how="outer", suffixes=(f"_{la}", f"_{lb}")
    )
    if merged[f"status_{la}"].isna().all() or merged[f"status_{lb}"].isna().all():
        raise NNVitalsError("compare: the two models share no layer names")
    for m in metrics:
        merged[f"delta_{m}"] = merged[f"{m}_{lb}"] - merged[f"{m}_{la}"]
    return merged.sort_values("layer_id", kind="stable", na_position="last").reset_index(drop=True)

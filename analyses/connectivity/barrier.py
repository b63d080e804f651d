"""Loss and accuracy barriers along a linear path between two models.

For the path ``theta(l) = (1 - l) theta_A + l theta_B`` evaluated at ``l_0 = 0 < ... < l_K = 1``:

- loss barrier (Frankle et al. 2020; Entezari et al. 2022, Def. 1; Git Re-Basin Sec. 2):
  ``B = max_l [ L(theta(l)) - ((1 - l) L(theta_A) + l L(theta_B)) ]``, the largest rise of the
  loss above the straight line between the endpoint losses;
- the "mean" variant subtracts the mean of the endpoints instead:
  ``max_l L(theta(l)) - (L(theta_A) + L(theta_B)) / 2`` (Frankle et al. 2020's instability);
- the accuracy (error) barrier is the loss barrier of the error ``1 - acc``:
  ``max_l [ ((1 - l) acc_A + l acc_B) - acc(l) ]``.

Both are 0 at the endpoints, so with the endpoints included a barrier is never negative.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import NNVitalsError

__all__ = ["accuracy_barrier", "barrier_curve", "loss_barrier", "loss_barrier_mean"]


def _check(lams, values) -> tuple[np.ndarray, np.ndarray]:
    lam = np.asarray(lams, dtype=np.float64)
    val = np.asarray(values, dtype=np.float64)
    if lam.ndim != 1 or lam.shape != val.shape or lam.size < 2:
        raise NNVitalsError(
            f"barrier: lambdas and values must be 1-d of the same length >= 2, got {lam.shape} and {val.shape}"
        )
    if not (np.isclose(lam[0], 0.0) and np.isclose(lam[-1], 1.0)) or np.any(np.diff(lam) <= 0):
        raise NNVitalsError("barrier: lambdas must increase from 0 to 1, endpoints included")
    return lam, val


def barrier_curve(lams, values) -> np.ndarray:
    """``values(l) - ((1 - l) values(0) + l values(1))`` at every ``l`` (0 at the endpoints)."""
    lam, val = _check(lams, values)
    return val - ((1.0 - lam) * val[0] + lam * val[-1])


def loss_barrier(lams, losses) -> tuple[float, float]:
    """``(barrier, lambda at the maximum)`` of the loss along the path (see module docstring)."""
    lam, _ = _check(lams, losses)
    curve = barrier_curve(lam, losses)
    i = int(np.argmax(curve))
    return float(curve[i]), float(lam[i])


def loss_barrier_mean(lams, losses) -> float:
    """``max_l L(l) - (L(0) + L(1)) / 2`` (the variant subtracting the mean of the endpoints)."""
    _, val = _check(lams, losses)
    return float(val.max() - 0.5 * (val[0] + val[-1]))


def accuracy_barrier(lams, accuracies) -> tuple[float, float]:
    """``(barrier, lambda)`` of the error ``1 - acc``: ``max_l [(1-l) acc(0) + l acc(1) - acc(l)]``."""
    acc = np.asarray(accuracies, dtype=np.float64)
    return loss_barrier(lams, 1.0 - acc)

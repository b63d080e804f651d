"""Kernels behind Spectra at scale: the coarse stage of the KS branch and bound (256 tail points
per candidate) never changes the fit, on pools shaped like FARMS's and on heavy and light tails."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.spectra import kernels as K


def _exact(ev: np.ndarray) -> tuple[float, float, float]:
    """xmin, alpha, D from the full O(n^2) scan of every candidate."""
    logs = np.log(ev)
    alpha, m = K._alpha_all(logs)
    cand = np.arange(0, ev.size - 1)
    cand = cand[logs[-1] > logs[cand]]
    d = K._ks_rows(logs, alpha, m, cand)
    best = int(np.argmin(d))
    return float(ev[cand[best]]), float(alpha[cand[best]]), float(d[best])


def _mp(rng, n, m):
    w = rng.standard_normal((n, m)) / np.sqrt(n)
    return np.linalg.eigvalsh(w.T @ w)


@pytest.mark.parametrize("kind", ["pareto", "gamma+pareto", "mp-pooled", "lognormal", "two-scales"])
def test_coarse_bound_keeps_the_exact_fit(kind):
    rng = np.random.default_rng(7)
    ev = {
        "pareto": lambda: rng.pareto(2.5, 9000) + 1,
        "gamma+pareto": lambda: np.concatenate([rng.gamma(2.0, 1.0, 5000), (rng.pareto(2.5, 1000) + 1) * 6]),
        "mp-pooled": lambda: np.concatenate([_mp(rng, 300, 100) for _ in range(60)]),
        "lognormal": lambda: rng.lognormal(0, 1, 12000),
        "two-scales": lambda: np.concatenate([rng.lognormal(0, 0.2, 6000), rng.lognormal(3, 0.2, 3000)]),
    }[kind]()
    ev = np.sort(ev[ev > K.EVALS_THRESH])
    assert ev.size > K.KS_EXACT_LIMIT
    fit = K.fit_power_law(ev, "ks")
    xmin, alpha, d = _exact(ev)
    assert (fit.xmin, fit.alpha, fit.D) == (xmin, alpha, d)
    # the curve: exact where computed, never below the best D elsewhere
    assert fit.ks_D.min() == d and (fit.ks_D >= d).all()

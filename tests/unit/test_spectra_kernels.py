"""Spectral kernels against closed forms and straightforward independent references."""

import math

import numpy as np
import pytest
import torch

from analyses.spectra import kernels as K
from analyses.spectra.farms import farms_conv2d_blocks, farms_eigenvalues, window_grid


def naive_ks_fit(ev: np.ndarray):
    """The textbook O(n^2) loop: every eigenvalue but the largest as xmin, Hill MLE, KS distance."""
    ev = np.sort(ev[ev > K.EVALS_THRESH])
    best = (np.inf, None, None)
    for i in range(len(ev) - 1):
        tail = ev[i:]
        n = len(tail)
        if tail[-1] == tail[0]:
            continue
        alpha = 1 + n / np.sum(np.log(tail / tail[0]))
        fit_cdf = 1 - (tail / tail[0]) ** (1 - alpha)
        d = np.max(np.abs(fit_cdf - np.arange(n) / n))
        if d < best[0]:
            best = (d, alpha, tail[0])
    return best


def pareto(alpha: float, n: int, xmin: float = 1.0, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def test_eigenvalues_match_svd_squared():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 50, 20), (2, 20, 50), (1, 64, 64)]:
        w = torch.randn(*shape, generator=g, dtype=torch.float64)
        ours = K.batched_eigenvalues(w, torch.float64)
        ref = torch.sort(torch.linalg.svdvals(w) ** 2, dim=-1).values
        assert ours.shape == (shape[0], min(shape[1:]))
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_eigvalsh_large_path_matches_torch():
    a = torch.randn(2, 2100, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = a @ a.mT
    torch.testing.assert_close(K.eigvalsh_batch(g), torch.linalg.eigvalsh(g), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_fit_equals_naive_loop(seed):
    ev = np.concatenate([np.random.default_rng(seed).gamma(2.0, 1.0, 300), pareto(3.0, 60, 5.0, seed)])
    d, alpha, xmin = naive_ks_fit(ev)
    fit = K.fit_power_law(ev, "ks")
    assert fit.D == pytest.approx(d, rel=1e-9)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.num_pl_spikes == int((ev >= xmin).sum())


def test_ks_branch_and_bound_is_exact_on_large_esd():
    ev = np.concatenate([np.random.default_rng(5).gamma(2.0, 1.0, 5000), pareto(2.5, 1000, 6.0, 5)])
    assert ev.size > K.KS_EXACT_LIMIT
    d, alpha, _ = naive_ks_fit(ev)
    fit = K.fit_power_law(ev, "ks")
    assert fit.D == pytest.approx(d, rel=1e-9)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_mle_recovers_pareto_exponent(alpha):
    fit = K.fit_power_law(pareto(alpha, 20000, 1.0, seed=int(alpha * 10)), "ks")
    assert fit.alpha == pytest.approx(alpha, abs=0.1)


def test_median_rule_closed_form():
    ev = np.sort(np.random.default_rng(3).lognormal(0, 1, 101))
    i = len(ev) // 2
    expected = 1 + (len(ev) - i) / np.sum(np.log(ev[i:] / ev[i]))
    fit = K.fit_power_law(ev, "median")
    assert fit.alpha == pytest.approx(expected, rel=1e-12)
    assert fit.xmin == ev[i]
    assert fit.num_pl_spikes == len(ev) - i


def test_peak_rule_picks_xmin_near_histogram_peak():
    ev = np.concatenate([np.random.default_rng(4).lognormal(0, 0.3, 2000), pareto(2.5, 200, 3.0, 4)])
    fit = K.fit_power_law(ev, "peak")
    hist, edges = np.histogram(np.log10(ev), bins=100)
    peak = 10 ** edges[np.argmax(hist)]
    assert 0.95 * peak <= fit.xmin <= 1.5 * peak
    assert np.isfinite(fit.alpha) and fit.alpha > 1


def test_unknown_rule_and_degenerate_inputs():
    with pytest.raises(ValueError, match="xmin rule"):
        K.fit_power_law(np.arange(1.0, 10.0), "mode")
    assert math.isnan(K.fit_power_law(np.array([1.0]), "ks").alpha)
    assert math.isnan(K.fit_power_law(np.zeros(10), "ks").alpha)
    assert math.isnan(K.fit_power_law(np.ones(10), "ks").alpha)


def test_spectral_metrics_closed_form():
    ev = np.array([1.0, 2.0, 3.0, 4.0])
    m = K.spectral_metrics(ev, alpha=2.0)
    assert m["lambda_max"] == 4.0
    assert m["norm"] == 10.0
    assert m["log_norm"] == pytest.approx(1.0)
    assert m["log_spectral_norm"] == pytest.approx(math.log10(4))
    assert m["alpha_weighted"] == pytest.approx(2 * math.log10(4))
    assert m["log_alpha_norm"] == pytest.approx(math.log10(1 + 4 + 9 + 16))
    assert m["stable_rank"] == pytest.approx(2.5)
    p = ev / 10
    assert m["entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    flat = K.spectral_metrics(np.ones(16), 2.0)
    assert flat["entropy"] == pytest.approx(1.0)


def test_marchenko_pastur_edge_on_gaussian_matrix():
    n, m, sigma = 2000, 500, 0.7
    w = torch.randn(n, m, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    ev = K.batched_eigenvalues(w[None], torch.float64)[0]
    edge = K.mp_bulk_edge(n, m, sigma**2)
    assert edge == pytest.approx(n * sigma**2 * (1 + math.sqrt(m / n)) ** 2)
    assert float(ev.max()) == pytest.approx(edge, rel=0.03)
    # a planted rank-one spike sits far beyond the edge
    u = torch.randn(n, 1, dtype=torch.float64)
    v = torch.randn(1, m, dtype=torch.float64)
    spiked = w + 0.2 * u @ v
    ev2 = K.batched_eigenvalues(spiked[None], torch.float64)[0]
    assert int((ev2 > edge * 1.05).sum()) == 1


def test_shuffle_is_a_seeded_permutation():
    w = torch.arange(12.0).reshape(3, 4)
    a, b = K.shuffled(w, 1), K.shuffled(w, 1)
    assert torch.equal(a, b)
    assert torch.equal(torch.sort(a.reshape(-1)).values, w.reshape(-1))
    assert not torch.equal(a, w)


def test_warning_labels():
    assert K.warning_label(1.5) == "over-trained"
    assert K.warning_label(7.0) == "under-trained"
    assert K.warning_label(3.0) == ""
    assert K.warning_label(float("nan")) == "no fit"


# ----------------------------------------------------------------------------- FARMS
def test_window_grid_matches_farms_code_rule():
    r, c, rs, cs = window_grid(4096, 11008, 2000, 1.0, 10)
    assert (r, c) == (2000, 2000)
    assert rs == [k * ((4096 - 2000) // 9) for k in range(10)]
    assert cs == [k * ((11008 - 2000) // 9) for k in range(10)]
    r, c, rs, cs = window_grid(64, 300, 100, 2.0, 10)  # window larger than the matrix shrinks
    assert r <= 64 and c <= 300 and c == int(r * 2.0)


@pytest.mark.parametrize("q_ratio", [0.5, 1.0, 2.0])
def test_farms_eigenvalues_equal_per_window_svd(q_ratio):
    w = torch.randn(90, 130, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r, c, rs, cs = window_grid(90, 130, 30, q_ratio, 4)
    ref = torch.cat([torch.linalg.svdvals(w[a : a + r, b : b + c]) ** 2 for a in rs for b in cs])
    ours = farms_eigenvalues(w, 30, q_ratio, 4, torch.float64)
    torch.testing.assert_close(ours, torch.sort(ref).values, rtol=1e-8, atol=1e-8)


def test_farms_conv2d_blocks_pool_slices():
    s = torch.randn(9, 64, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    blocks = farms_conv2d_blocks(s, torch.float64)
    assert len(blocks) == 4
    ref = torch.sort((torch.linalg.svdvals(s[:, 16:32, :]) ** 2).reshape(-1)).values
    torch.testing.assert_close(torch.sort(blocks[1]).values, ref)


def test_farms_removes_aspect_ratio_dependence_of_alpha():
    """FARMS's claim (ICML 2025, Fig. 1): plain alpha of random matrices drifts with Q = N/M,
    FARMS alpha (fixed 64 x 64 windows) does not. Median xmin rule, as the paper's CV runs."""
    g = torch.Generator().manual_seed(0)
    plain, farms = [], []
    for q in (1, 2, 4, 8):
        w = torch.randn(256, 256 * q, generator=g, dtype=torch.float64)  # (out, in)
        ev = K.batched_eigenvalues(w[None], torch.float64)[0]
        plain.append(K.fit_power_law(ev, "median").alpha)
        farms.append(K.fit_power_law(farms_eigenvalues(w, 64, 1.0, 6, torch.float64), "median").alpha)
    assert max(plain) - min(plain) > 1.5  # drifts from ~2.1 to ~4.4
    assert max(farms) - min(farms) < 0.1  # stays put
    assert all(np.diff(plain) > 0)


def test_small_esd_fit_matches_weightwatcher():
    """Short ESDs (< 20 eigenvalues) use WeightWatcher 0.7.7's small-sample fit: same numbers."""
    import contextlib
    import io

    ww = pytest.importorskip("weightwatcher.WW_powerlaw")
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(3, 40))
        ev = np.sort(rng.lognormal(0, rng.uniform(0.2, 2), n))
        with contextlib.redirect_stdout(io.StringIO()):
            ref = ww.WWFit(ev)
        ours = K.fit_power_law(ev, "ks")
        assert ours.alpha == pytest.approx(ref.alpha, rel=1e-12), n
        assert ours.D == pytest.approx(ref.D, rel=1e-12), n
        assert ours.xmin == ref.xmin, n

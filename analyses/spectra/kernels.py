"""Spectral kernels: ESDs of weight matrices, power-law tail fits, and the metrics built on them.

Pure functions on tensors (no Param, no I/O). References:

- ESD and metrics: Martin & Mahoney, "Implicit Self-Regularization in Deep Neural Networks"
  (JMLR 2021) and "Predicting trends in the quality of state-of-the-art neural networks
  without access to training or testing data" (Nat. Commun. 2021); names as WeightWatcher's.
- Power-law MLE with KS-selected xmin: Clauset, Shalizi & Newman, SIAM Review 51 (2009), §3.
- FARMS: "Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias" (ICML 2025), §3.
- Marchenko-Pastur edge: Marchenko & Pastur (1967); for an N x M matrix (N >= M) with i.i.d.
  entries of variance sigma^2, the eigenvalues of W^T W fill [N sigma^2 (1 - 1/sqrt Q)^2,
  N sigma^2 (1 + 1/sqrt Q)^2] with Q = N / M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.device import prepare_device

#: eigenvalues at or below this are treated as zero (as WeightWatcher's EVALS_THRESH)
EVALS_THRESH = 1e-5
#: above this many eigenvalues the KS scan goes coarse-to-fine (see :func:`ks_scan`)
KS_EXACT_LIMIT = 4096
#: tail points per candidate in the coarse stage of :func:`ks_scan` (its lower bounds): measured on
#: FARMS pools of 10,000 eigenvalues (100 windows) 10-30x faster than 4,096 points (one fit 0.2 s ->
#: 15 ms), with the same xmin, alpha and D (the exact stage guarantees them whatever the bound)
KS_COARSE_POINTS = 256
#: below this many eigenvalues the "ks" rule uses the small-sample fit (see :func:`_small_n_fit`)
SMALL_N = 20
#: smallest tail the small-sample fit accepts
SMALL_N_MIN_TAIL = 8


# --------------------------------------------------------------------------- eigenvalues
#: largest |entry| of an ordinary weight matrix: past it (or with every entry below its inverse)
#: the matrix is extreme (a bit flip, a mis-scaled checkpoint) and is first scaled by a power of
#: two (see :func:`safe_exponent`)
SAFE_ABS = 2.0**32


def safe_exponent(max_abs: float, dtype: torch.dtype = torch.float32) -> int:
    """Exponent e of the power-of-two scale that makes the Gram matrix of W safe to form.

    ``max_abs`` = max |W_ij|. A finite float32 weight as large as 3e38 overflows W^T W (and
    LAPACK ``?syevr`` then fails on the infinities); weights near 1e-20 underflow it to
    denormals or zero. When max_abs lies outside [1 / SAFE_ABS, SAFE_ABS] (in any ``dtype``:
    no ordinary weight is that far from 1), e is chosen so that W * 2^-e has its largest entry
    in [0.5, 1); the eigenvalues of that matrix times 4^e are those of W: a power-of-two scale
    rounds no normal number, so the spectrum is the same (only entries 2^-126 below the
    largest, which add nothing to a float32 Gram matrix, can become denormal). Otherwise
    e = 0 and the matrix is used as it is.
    """
    if not math.isfinite(max_abs) or max_abs == 0 or 1 / SAFE_ABS <= max_abs <= SAFE_ABS:
        return 0
    return math.frexp(max_abs)[1]


def scale_by_power_of_two(mats: torch.Tensor, e: int) -> torch.Tensor:
    """``mats * 2^-e`` in two exact steps (each factor a normal number of the dtype)."""
    if e == 0:
        return mats
    half = -e // 2
    return mats * (2.0**half) * (2.0 ** (-e - half))


def unscale_eigenvalues(ev: torch.Tensor, e: int) -> torch.Tensor:
    """Eigenvalues of W^T W from those of the scaled matrix: ``ev * 4^e`` in float64 (CPU), exactly;
    past the float64 range the result is inf (the caller reports it)."""
    ev = ev.detach().double().cpu()
    if e == 0:
        return ev
    with np.errstate(over="ignore"):
        return torch.from_numpy(np.ldexp(ev.numpy(), 2 * e))


#: on CUDA, batches of symmetric matrices of side in (32, HOST_EIGH_MAX] are solved by the host's
#: LAPACK (:mod:`.lapack`, GIL released) instead of the GPU: torch's CUDA ``eigvalsh`` solves such a
#: batch one matrix at a time with Jacobi sweeps (only sides <= 32 get cuSOLVER's batched Jacobi),
#: which made the ~100 FARMS windows of 100 x 100 per matrix cost more than the matrix's own ESD.
#: tests/benchmarks/bench_gpu_spectra.py measures both ways (set False to keep them on the GPU).
SMALL_EIGH_ON_HOST = True
HOST_EIGH_MAX = 512


def eigvalsh_batch(grams: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of a batch of symmetric matrices ``(B, n, n)``, on ``grams``'s device.

    One batched ``torch.linalg.eigvalsh`` on accelerators (CUDA prepared once, under a lock, by
    :func:`analyses.core.device.prepare_device`: several threads making their first linalg call at
    once failed with ``RuntimeError: lazy wrapper should be called at most once``), except the
    mid-sized batches of :data:`SMALL_EIGH_ON_HOST`. On the CPU one LAPACK ``?syevr`` call per
    matrix (:mod:`.lapack`): torch's batched CPU path nests its batch loop inside MKL's threads and
    was measured 30x slower on two cores.
    """
    if grams.device.type != "cpu":
        prepare_device(grams.device)
        n, batch = grams.shape[-1], math.prod(grams.shape[:-2])
        if (
            SMALL_EIGH_ON_HOST
            and grams.device.type == "cuda"
            and batch > 1
            and 32 < n <= HOST_EIGH_MAX
            and grams.dtype in (torch.float32, torch.float64)
        ):
            return eigvalsh_batch(grams.detach().cpu()).to(grams.device)
        return torch.linalg.eigvalsh(grams)
    if grams.dtype in (torch.float32, torch.float64):
        from .lapack import symmetric_eigenvalues

        flat = grams.detach().reshape(-1, *grams.shape[-2:]).numpy()
        out = (
            np.stack([symmetric_eigenvalues(g) for g in flat])
            if len(flat)
            else np.empty((0, grams.shape[-1]))
        )
        return torch.from_numpy(out.astype(flat.dtype, copy=False)).reshape(grams.shape[:-1])
    return torch.stack([torch.linalg.eigvalsh(g) for g in grams])


def batched_eigenvalues(mats: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Squared singular values of a batch of matrices ``(B, N, M)``, ascending, shape ``(B, min(N, M))``.

    lambda = s^2 are the eigenvalues of the smaller Gram matrix (W^T W or W W^T): the same
    numbers as ``svdvals(W)**2`` at a fraction of the cost (measured 5x faster for 1536 x 384).
    On the CPU through :mod:`.lapack` (``?syrk`` + ``?syevr``, GIL released). Tiny negative
    round-off is clamped to zero.
    """
    mats = mats.to(dtype)
    if mats.device.type == "cpu" and dtype in (torch.float32, torch.float64):
        from .lapack import gram_eigenvalues

        arr = mats.detach().numpy()
        return torch.from_numpy(np.stack([gram_eigenvalues(m) for m in arr])).clamp_min_(0)
    gram = mats.mT @ mats if mats.shape[-2] >= mats.shape[-1] else mats @ mats.mT
    return eigvalsh_batch(gram).clamp_min_(0)


def shuffled(mat: torch.Tensor, seed: int) -> torch.Tensor:
    """The matrix with its entries permuted uniformly at random (seeded): same entries, no structure."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(mat.numel(), generator=g).to(mat.device)
    return mat.reshape(-1)[perm].reshape(mat.shape)


# --------------------------------------------------------------------------- power-law fits
@dataclass
class PowerLawFit:
    """Result of one tail fit: alpha, xmin, KS distance D, tail size, and the KS curve."""

    alpha: float
    xmin: float
    D: float
    num_pl_spikes: int
    xmin_index: int
    ks_xmins: np.ndarray  # candidate xmins scanned (for the KS-vs-xmin view)
    ks_D: np.ndarray  # their KS distances

    @classmethod
    def empty(cls) -> PowerLawFit:
        e = np.empty(0)
        return cls(math.nan, math.nan, math.nan, 0, -1, e, e)


def _alpha_all(logs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hill MLE for every candidate xmin index i over ascending log-eigenvalues ``logs``.

    alpha_i = 1 + m_i / sum_{j >= i} ln(lambda_j / lambda_i), m_i = n - i (Clauset et al. eq. 3.1).
    Returns (alpha, m) as float64 arrays of length n.
    """
    n = logs.size
    suffix = np.cumsum(logs[::-1])[::-1]
    m = np.arange(n, 0, -1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1 + m / (suffix - m * logs)
    return alpha, m


def _ks_rows(
    logs: np.ndarray, alpha: np.ndarray, m: np.ndarray, rows: np.ndarray, j_stride: int = 1
) -> np.ndarray:
    """KS distance for the candidate indices ``rows`` (ascending).

    For candidate i with tail lambda_i..lambda_{n-1}: fitted CDF F(x) = 1 - (x / x_min)^(1 - alpha),
    empirical CDF at the k-th tail point (k = 0..m-1) = k / m (the convention WeightWatcher
    uses), D = max_k |F - k/m|; D = 1 when alpha <= 1 (no normalisable fit). Vectorised over
    blocks of candidates, each block only over its own tails (the upper triangle).
    ``j_stride`` > 1 evaluates every j_stride-th tail point (a lower bound on D within
    j_stride / m, used only in the coarse stage of :func:`ks_scan`).
    """
    n = logs.size
    out = np.empty(rows.size, dtype=np.float64)
    block = max(8, (1 << 21) // max(1, n // j_stride))
    block = min(block, max(8, rows.size // 4))
    for s in range(0, rows.size, block):
        r = rows[s : s + block]
        cols = np.arange(r[0], n, j_stride)
        k = cols[None, :] - r[:, None]
        with np.errstate(over="ignore", invalid="ignore"):  # alpha <= 1 rows overflow; D = 1 below
            fit = -np.expm1(-(alpha[r, None] - 1) * (logs[cols][None, :] - logs[r, None]))
        diff = np.abs(fit - k / m[r, None])
        diff[k < 0] = 0.0
        out[s : s + block] = diff.max(axis=1)
    out[~(alpha[rows] > 1)] = 1.0
    return out


def ks_scan(logs: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KS distance D for each candidate xmin index; returns (candidates, D, alpha).

    Exact for every candidate when n <= KS_EXACT_LIMIT: O(n^2) work in one vectorised pass.
    Larger ESDs (FARMS pools 100 windows of 2000 eigenvalues) use branch and bound, still
    exact in the chosen xmin: D over every ``stride``-th tail point is a lower bound of D
    (a max over a subset), computed for all candidates cheaply; then exact D in increasing
    order of that bound until the bound exceeds the best exact D found. The returned curve
    holds exact D where it was computed and the lower bound elsewhere.
    """
    alpha, m = _alpha_all(logs)
    n = logs.size
    if n <= KS_EXACT_LIMIT or candidates.size <= 512:
        return candidates, _ks_rows(logs, alpha, m, candidates), alpha[candidates]
    bound = _ks_rows(logs, alpha, m, candidates, j_stride=max(1, n // KS_COARSE_POINTS))
    curve = bound.copy()
    order = np.argsort(bound, kind="stable")
    best_d, best_pos = np.inf, -1
    for s in range(0, order.size, 64):
        chunk = np.sort(order[s : s + 64])
        if bound[order[s]] > best_d:
            break
        d = _ks_rows(logs, alpha, m, candidates[chunk])
        curve[chunk] = d
        for pos, dv in zip(chunk.tolist(), d.tolist(), strict=True):
            if dv < best_d or (dv == best_d and pos < best_pos):
                best_d, best_pos = dv, pos
    # only exact values may win the argmin taken by the caller
    exact = np.zeros(candidates.size, dtype=bool)
    exact[order[: s + 64]] = True
    curve[~exact] = np.maximum(curve[~exact], np.nextafter(best_d, np.inf))
    return candidates, curve, alpha[candidates]


def fit_power_law(
    evals: torch.Tensor | np.ndarray,
    rule: str = "ks",
    *,
    thresh: float = EVALS_THRESH,
    xmax: float | None = None,
) -> PowerLawFit:
    """Fit p(lambda) ~ lambda^-alpha to the tail of an ESD.

    ``rule`` picks xmin:

    - ``"ks"``: every eigenvalue (but the largest) is a candidate; keep the one with the
      smallest KS distance (Clauset et al. 2009; WeightWatcher's default). With fewer than
      ``SMALL_N`` eigenvalues the small-sample variant of :func:`_small_n_fit` is used, as
      WeightWatcher 0.7.7 does.
    - ``"median"``: xmin = lambda_{floor(n/2)} of the ascending ESD (TempBalance; FARMS's
      ``xmin_mid``).
    - ``"peak"``: candidates within [0.95, 1.5] x the left edge of the highest bin of a
      100-bin histogram of log10 lambda, best KS among them (AlphaPruning / FARMS LLM). The
      reference code compares the lower bound on a log10 scale and the upper on a linear
      one; nnvitals applies both bounds on the linear scale, as the method describes.

    Eigenvalues <= ``thresh`` are dropped first (zeros of rank-deficient matrices).
    """
    ev = (
        evals.detach().cpu().double().numpy()
        if isinstance(evals, torch.Tensor)
        else np.asarray(evals, np.float64)
    )
    ev = np.sort(ev.reshape(-1))
    ev = ev[np.isfinite(ev) & (ev > thresh)]
    if xmax is not None:
        ev = ev[ev <= xmax]
    n = ev.size
    if n < 2:
        return PowerLawFit.empty()
    logs = np.log(ev)
    if rule == "median":
        i = n // 2
        alpha, m = _alpha_all(logs)
        d = _ks_rows(logs, alpha, m, np.array([i]))
        return PowerLawFit(float(alpha[i]), float(ev[i]), float(d[0]), n - i, i, ev[i : i + 1], d)
    if rule == "ks" and n < SMALL_N:
        return _small_n_fit(ev, logs)
    if rule == "ks":
        cand = np.arange(0, n - 1)
    elif rule == "peak":
        hist, edges = np.histogram(np.log10(ev), bins=100)
        peak = 10 ** edges[int(np.argmax(hist))]
        cand = np.nonzero((ev[:-1] >= 0.95 * peak) & (ev[:-1] <= 1.5 * peak))[0]
        if cand.size == 0:
            cand = np.array([min(int(np.searchsorted(ev, peak)), n - 2)])
    else:
        raise ValueError(f"xmin rule {rule!r}: expected 'ks', 'median' or 'peak'")
    # a candidate whose tail has identical values has an undefined fit; exclude it
    cand = cand[logs[-1] > logs[cand]]
    if cand.size == 0:
        return PowerLawFit.empty()
    cand, d, alpha = ks_scan(logs, cand)
    best = int(np.argmin(d))  # first index wins ties, as WeightWatcher
    i = int(cand[best])
    return PowerLawFit(float(alpha[best]), float(ev[i]), float(d[best]), n - i, i, ev[cand], d)


def _small_n_fit(ev: np.ndarray, logs: np.ndarray) -> PowerLawFit:
    """KS fit for a short ESD (n < SMALL_N), as WeightWatcher 0.7.7's small-N path.

    With so few points the plain MLE is biased and the KS minimum favours tiny tails, so:
    tails of at least SMALL_N_MIN_TAIL points only, the bias-corrected MLE
    alpha = 1 + (m - 1) / sum ln(lambda_j / lambda_i), and xmin the candidate with the smallest
    KS distance. (WeightWatcher's small-N code also computes J = D - 0.868 / sqrt(m), but its
    caller then re-selects by D alone; nnvitals follows what WeightWatcher reports.) When no
    candidate qualifies, the whole ESD is the tail; a tail of identical values has no fit.
    """
    n = ev.size
    idx = np.arange(0, n - 1)
    m = (n - idx).astype(np.float64)
    suffix = np.cumsum(logs[::-1])[::-1]
    sums = suffix[idx] - m * logs[idx]
    ok = (m >= SMALL_N_MIN_TAIL) & (sums > 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(ok, 1 + (m - 1) / sums, 0.0)
    ok &= alpha > 1
    d = np.ones(idx.size)
    if ok.any():
        d[ok] = _ks_rows(
            logs, alpha_full := np.concatenate([alpha, [0.0]]), np.concatenate([m, [1.0]]), idx[ok]
        )
        best = int(np.argmin(d))
    else:
        best = 0
        total = suffix[0] - n * logs[0]
        if total <= 1e-12:
            return PowerLawFit.empty()
        alpha_full = np.zeros(n)
        alpha_full[0] = 1 + (n - 1) / total
        alpha[0] = alpha_full[0]
        d[0] = _ks_rows(logs, alpha_full, np.arange(n, 0, -1, dtype=np.float64), np.array([0]))[0]
    return PowerLawFit(float(alpha[best]), float(ev[best]), float(d[best]), n - best, best, ev[idx], d)


# --------------------------------------------------------------------------- metrics
def spectral_metrics(
    evals: torch.Tensor | np.ndarray, alpha: float, n: int | None = None
) -> dict[str, float]:
    """WeightWatcher's norm metrics of one ESD (eigenvalues of W^T W, raw).

    lambda_max; log_spectral_norm = log10 lambda_max; norm = sum lambda (= ||W||_F^2);
    log_norm = log10 norm; alpha_weighted = alpha log10 lambda_max; log_alpha_norm =
    log10 sum lambda^alpha; stable_rank = sum lambda / lambda_max; entropy = the Shannon
    entropy of p = lambda / sum lambda divided by ln(rank) (1 for a flat spectrum, 0 for rank
    one), rank counting singular values above s_max * n * eps (numpy's matrix_rank rule, as
    WeightWatcher; ``n`` = the longer side, default the number of eigenvalues).
    """
    ev = np.sort(np.asarray(torch.as_tensor(evals).detach().cpu().double().reshape(-1)))
    ev = ev[np.isfinite(ev)]
    if ev.size == 0 or ev[-1] <= 0:
        nan = math.nan
        return dict(lambda_max=nan, log_spectral_norm=nan, norm=nan, log_norm=nan, alpha_weighted=nan,
                    log_alpha_norm=nan, stable_rank=nan, entropy=nan)  # fmt: skip
    lmax = float(ev[-1])
    total = float(ev.sum())
    pos = ev[ev > 0]
    p = pos / total
    sv = np.sqrt(pos)
    rank = int((sv > sv[-1] * (n or ev.size) * np.finfo(np.float64).eps).sum())
    entropy = float(-(p * np.log(p)).sum() / np.log(rank)) if rank > 1 else 0.0
    with np.errstate(over="ignore"):
        lan = float(np.log10(np.sum(pos**alpha))) if np.isfinite(alpha) else math.nan
    return dict(
        lambda_max=lmax,
        log_spectral_norm=math.log10(lmax),
        norm=total,
        log_norm=math.log10(total),
        alpha_weighted=alpha * math.log10(lmax) if np.isfinite(alpha) else math.nan,
        log_alpha_norm=lan,
        stable_rank=total / lmax,
        entropy=entropy,
    )


def mp_bulk_edge(n: int, m: int, sigma2: float) -> float:
    """Upper Marchenko-Pastur edge lambda_+ = N sigma^2 (1 + 1/sqrt(Q))^2, Q = N/M >= 1, raw evals."""
    n, m = max(n, m), min(n, m)
    return n * sigma2 * (1 + 1 / math.sqrt(n / m)) ** 2


def warning_label(alpha: float) -> str:
    """WeightWatcher's labels: alpha < 2 over-trained, alpha > 6 under-trained."""
    if not np.isfinite(alpha):
        return "no fit"
    if alpha < 2:
        return "over-trained"
    if alpha > 6:
        return "under-trained"
    return ""

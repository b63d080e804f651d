"""FARMS benchmark at the paper's LLM setting: our kernels vs a straightforward reference loop.

Setting (FARMS, ICML 2025, LLM pruning runs): 2000 x 2000 windows (``farms_rows=2000``,
``farms_q_ratio=1.0``), 10 windows per dimension (100 windows), xmin rule ``peak``, on seeded
random float32 matrices of LLaMA-7B shapes 4096 x 4096 and 4096 x 11008 (out x in).
``--quick``: 1000 x 1000 windows on 2048 x 2048 and 2048 x 5504.

- ours (kernel): ``farms_eigenvalues`` + ``fit_power_law(rule="peak")``, the fair comparison;
- ours (analysis): ``SpectralAnalysis(model=nn.Linear(...), farms=True, ...)``, reported only;
  it also computes the plain ESD of the whole matrix and the other metrics;
- reference: what a researcher would write, following the FARMS code: a Python loop over the
  100 windows calling ``torch.linalg.svdvals`` on each, squaring and concatenating; then the
  O(N^2) KS scan of ``net_esd_estimator``: for every candidate xmin in the peak window, the
  Hill alpha and the KS distance over the whole tail with numpy, keeping the smallest D.
  Peak window: [0.95, 1.5] x the left edge of the highest bin of a 100-bin histogram of
  log10 lambda, both bounds on the linear scale (as nnvitals; the FARMS code compares the
  lower bound on a log10 scale, which admits more candidates and would only make it slower).

Checks: both alphas agree within 0.01. Target: ours (kernel) >= 5x faster than the reference.
When the reference KS scan would take longer than its budget, it runs on every k-th candidate
and its time is extrapolated (x k); the output says so.

Run: ``python tests/benchmarks/bench_farms.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import _common as C
import numpy as np
import torch
from torch import nn

from analyses import SpectralAnalysis
from analyses.spectra.farms import farms_eigenvalues
from analyses.spectra.kernels import fit_power_law

torch.set_num_threads(C.THREADS)

SPEEDUP_TARGET = 5.0
ALPHA_TOL = 0.01
THRESH = 1e-5  # eigenvalues at or below are dropped, by both sides


def random_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) / math.sqrt(cols)


# --------------------------------------------------------------------------- ours
def ours_kernel(w: torch.Tensor, r: int, q: float, ops: int) -> dict:
    t0 = time.perf_counter()
    ev = farms_eigenvalues(w, r, q, ops)
    t1 = time.perf_counter()
    fit = fit_power_law(ev, "peak")
    t2 = time.perf_counter()
    return {
        "alpha": fit.alpha, "xmin": fit.xmin, "D": fit.D, "n_evals": ev.numel(), "eig_s": t1 - t0,
        "fit_s": t2 - t1, "ev": ev.double().numpy(),
    }  # fmt: skip


def ours_analysis(w: torch.Tensor, r: int, q: float, ops: int) -> float:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    res = SpectralAnalysis(
        model=layer, farms=True, farms_rows=r, farms_q_ratio=q, farms_windows=ops, xmin_rule="peak",
        cache=False, show_progress=False,
    ).run()  # fmt: skip
    return float(res.table["alpha"].iloc[0])


# --------------------------------------------------------------------------- the reference
def ref_window_eigs(w: torch.Tensor, r: int, q: float, ops: int) -> np.ndarray:
    """Squared singular values of every window, one ``svdvals`` per window, pooled and sorted."""
    rows, cols = w.shape
    c = int(r * q)

    def starts(dim: int, size: int) -> list[int]:
        stride = (dim - size) // (ops - 1)
        return [k * stride for k in range(ops)]

    eigs = []
    for r0 in starts(rows, r):
        for c0 in starts(cols, c):
            s = torch.linalg.svdvals(w[r0 : r0 + r, c0 : c0 + c])
            eigs.append(s**2)
    return torch.sort(torch.cat(eigs)).values.double().numpy()


def _candidate(ev: np.ndarray, logs: np.ndarray, i: int) -> tuple[float, float]:
    """Hill alpha and KS distance for xmin = ev[i], over the whole tail (as net_esd_estimator)."""
    xmin = ev[i]
    n = float(ev.size - i)
    alpha = 1 + n / (np.sum(logs[i:]) - n * logs[i])
    d = 1.0
    if alpha > 1:
        d = float(np.max(np.abs(1 - (ev[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n)))
    return float(alpha), d


def ref_peak_fit(eigs: np.ndarray, budget_s: float) -> dict:
    """The FARMS-code KS scan over the peak window; subsampled and extrapolated past ``budget_s``."""
    t0 = time.perf_counter()
    ev = eigs[eigs > THRESH]
    logs = np.log(ev)
    lo, hi = peak_window(ev)
    inside = np.nonzero((ev[:-1] >= lo) & (ev[:-1] <= hi))[0]
    n_cand = int(inside.size)
    # cost probe on evenly spaced candidates (the tail, hence the cost, shrinks along the window)
    probe = np.unique(np.linspace(inside[0], inside[-1], min(64, n_cand)).astype(int))
    setup = time.perf_counter() - t0  # log, histogram, peak window
    tp = time.perf_counter()
    for i in probe:
        _candidate(ev, logs, int(i))
    estimate = (time.perf_counter() - tp) * n_cand / probe.size
    step = max(1, math.ceil(estimate / budget_s))
    best = (math.inf, math.nan, math.nan)
    ts, cs = time.perf_counter(), time.process_time()
    for i in range(0, ev.size - 1, step):  # the reference loop: skip below, stop above the window
        if ev[i] < lo:
            continue
        if ev[i] > hi:
            break
        alpha, d = _candidate(ev, logs, i)
        if d < best[0]:
            best = (d, alpha, ev[i])
    scan, scan_cpu = time.perf_counter() - ts, time.process_time() - cs
    return {
        "alpha": best[1],
        "xmin": best[2],
        "D": best[0],
        "n_candidates": n_cand,
        "step": step,
        "scan_s": scan * step,  # extrapolated when step > 1
        "scan_cpu_s": scan_cpu * step,
        "setup_s": setup,
        "extrapolated": step > 1,
    }


def peak_window(ev: np.ndarray) -> tuple[float, float]:
    """[0.95, 1.5] x the left edge of the highest bin of a 100-bin histogram of log10 lambda."""
    counts, edges = np.histogram(np.log10(ev), bins=100)
    peak = 10 ** edges[int(np.argmax(counts))]
    return 0.95 * peak, 1.5 * peak


def cross_check(ours_ev: np.ndarray, ours_xmin: float, ref_eigs: np.ndarray, ref: dict) -> dict:
    """Where an alpha difference comes from: the eigenvalues, or the xmin search.

    - eigenvalues: max |lambda_ours - lambda_ref| / lambda_max; how many each keeps above the
      threshold and the smallest kept one, which sets the lower end of the peak rule's log10
      histogram and so the peak window;
    - the fit: our ``fit_power_law`` on the reference's eigenvalues, and the exact KS distance
      (reference formula) at its xmin and at our own xmin, next to the reference's minimum D.
    """
    ev = ref_eigs[ref_eigs > THRESH]
    mine_ev = ours_ev[ours_ev > THRESH]
    logs = np.log(ev)
    mine = fit_power_law(ref_eigs, "peak")
    _, d_exact = _candidate(ev, logs, int(np.searchsorted(ev, mine.xmin)))
    _, d_own = _candidate(ev, logs, min(int(np.searchsorted(ev, ours_xmin)), ev.size - 2))
    return {
        "eig_max_rel_diff": (
            float(np.max(np.abs(ours_ev - ref_eigs)) / ref_eigs[-1])
            if ours_ev.size == ref_eigs.size
            else math.nan
        ),
        "kept_ours": int(mine_ev.size),
        "kept_ref": int(ev.size),
        "smallest_kept_ours": float(mine_ev[0]),
        "smallest_kept_ref": float(ev[0]),
        "peak_window_ours": peak_window(mine_ev),
        "peak_window_ref": peak_window(ev),
        "fit_on_ref_eigs_alpha": mine.alpha,
        "fit_on_ref_eigs_D_exact": d_exact,
        "ours_xmin_D_exact_on_ref_eigs": d_own,
        "ref_min_D": ref["D"],
    }


# --------------------------------------------------------------------------- one matrix
def bench_matrix(
    rows: int,
    cols: int,
    seed: int,
    r: int,
    ops: int,
    reps: int,
    ks_budget: float,
    analysis: bool,
    quick: bool,
) -> dict:
    q = 1.0
    w = random_matrix(rows, cols, seed)
    label = f"farms {rows}x{cols} ({ops * ops} windows of {r}x{int(r * q)}, peak)"
    # interleaved so that load from elsewhere hits both sides: ours, reference, ours, ...
    ours_runs, ref_run = [], None
    for k in range(reps + 1):
        if k == 1:
            t_svd, c_svd, eigs = C.timed(lambda: ref_window_eigs(w, r, q, ops))
            ref_run = (t_svd, c_svd, eigs, ref_peak_fit(eigs, ks_budget))
        else:
            ours_runs.append(C.timed(lambda: ours_kernel(w, r, q, ops)))
    t_ours, c_ours, o = min(ours_runs, key=lambda x: x[0])
    t_svd, c_svd, eigs, ref = ref_run
    t_ref = t_svd + ref["setup_s"] + ref["scan_s"]
    c_ref = c_svd + ref["setup_s"] + ref["scan_cpu_s"]
    speedup, cpu_speedup = t_ref / t_ours, c_ref / c_ours
    met = None if quick else speedup >= SPEEDUP_TARGET  # the target is for the paper's 2000x2000 setting
    dalpha = abs(o["alpha"] - ref["alpha"])
    same = dalpha <= ALPHA_TOL and eigs.size == o["n_evals"]
    xc = cross_check(o.pop("ev"), o["xmin"], eigs, ref)
    note = (
        f"target >= {SPEEDUP_TARGET:.0f}x"
        + (" is for the full 2000x2000 setting" if quick else f": {'met' if met else 'MISSED'}")
        + f"; alpha ours {o['alpha']:.4f}, "
        f"reference {ref['alpha']:.4f}, |diff| {dalpha:.1e} ({'ok' if same else 'DIFFERENT'})"
    )
    print(C.ratio_line(f"{label} kernel", t_ours, "reference loop", t_ref, note), flush=True)
    extra = (
        f", EXTRAPOLATED from every {ref['step']}th candidate (x{ref['step']})" if ref["extrapolated"] else ""
    )
    print(
        f"  CPU time (all threads; less sensitive to load from elsewhere): ours {C.fmt_s(c_ours)}, "
        f"reference {C.fmt_s(c_ref)} -> {cpu_speedup:.1f}x",
        flush=True,
    )
    print(
        f"  breakdown: ours eigenvalues {C.fmt_s(o['eig_s'])} + fit {C.fmt_s(o['fit_s'])}; reference "
        f"svdvals loop {C.fmt_s(t_svd)} + KS scan {C.fmt_s(ref['scan_s'])} over {ref['n_candidates']} "
        f"candidates of {eigs.size} eigenvalues{extra}",
        flush=True,
    )
    print(
        f"  alpha cross-check: eigenvalues max |diff| {xc['eig_max_rel_diff']:.1e} x lambda_max; our fit on "
        f"the reference's eigenvalues: alpha {xc['fit_on_ref_eigs_alpha']:.4f}, exact D at its xmin "
        f"{xc['fit_on_ref_eigs_D_exact']:.5f} (at our own xmin {xc['ours_xmin_D_exact_on_ref_eigs']:.5f}) "
        f"vs the reference's minimum {ref['D']:.5f}",
        flush=True,
    )
    if not same:
        if abs(xc["fit_on_ref_eigs_alpha"] - ref["alpha"]) <= ALPHA_TOL:
            (a, b), (c, d) = xc["peak_window_ours"], xc["peak_window_ref"]
            why = (
                "the eigenvalues, not the fit: on the same eigenvalues our fit gives the reference's alpha. "
                f"Ours keep {xc['kept_ours']} above {THRESH:g} (smallest {xc['smallest_kept_ours']:.3g}), the "
                f"reference {xc['kept_ref']} (smallest {xc['smallest_kept_ref']:.3g}); the smallest sets the "
                f"histogram's range, the highest bin moves, and the peak window is [{a:.4g}, {b:.4g}] for ours, [{c:.4g}, {d:.4g}] "
                "for the reference, and the KS-vs-xmin curve is nearly flat across it"
            )
        else:
            why = "the xmin search: on the same eigenvalues our KS scan picks another xmin"
        print(f"  alpha difference comes from {why}", flush=True)
    t_an, alpha_an = math.nan, math.nan
    if analysis:
        t_an, _, alpha_an = C.timed(lambda: ours_analysis(w, r, q, ops))
        print(
            f"  {label} full SpectralAnalysis(farms=True): {C.fmt_s(t_an)} (adds the plain ESD of the "
            f"whole matrix and the other metrics; alpha {alpha_an:.4f})",
            flush=True,
        )
    return {
        "name": f"farms {rows}x{cols}",
        "windows": ops * ops,
        "window": [r, int(r * q)],
        "ours_s": t_ours,
        "ours_eig_s": o["eig_s"],
        "ours_fit_s": o["fit_s"],
        "ours_times": [t for t, _, _ in ours_runs],
        "ours_cpu_times": [c for _, c, _ in ours_runs],
        "ours_cpu_s": c_ours,
        "ref": "svdvals per window + O(N^2) KS scan (numpy)",
        "ref_s": t_ref,
        "ref_cpu_s": c_ref,
        "cpu_speedup": cpu_speedup,
        "ref_svdvals_s": t_svd,
        "ref_ks_scan_s": ref["scan_s"],
        "ref_ks_extrapolated": ref["extrapolated"],
        "ref_ks_step": ref["step"],
        "ref_candidates": ref["n_candidates"],
        "n_evals": int(eigs.size),
        "speedup": speedup,
        "target": f">= {SPEEDUP_TARGET}x",
        "target_met": met,
        "alpha_ours": o["alpha"],
        "alpha_ref": ref["alpha"],
        "alpha_abs_diff": dalpha,
        "alpha_match": same,
        "alpha_cross_check": xc,
        "analysis_s": t_an,
        "analysis_alpha": alpha_an,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1000x1000 windows on 2048x2048 and 2048x5504")
    args = ap.parse_args(argv)
    shapes = [(2048, 2048), (2048, 5504)] if args.quick else [(4096, 4096), (4096, 11008)]
    r = 1000 if args.quick else 2000
    reps = 1 if args.quick else 2  # ours: best of reps; the reference (the slow side) runs once
    ks_budget = 10.0 if args.quick else 300.0  # seconds for the reference KS scan before extrapolating
    ours_kernel(random_matrix(256, 256, 0), 100, 1.0, 10)  # warm-up: LAPACK pointers, thread pools
    results = [
        # --quick runs the full analysis on the first matrix only
        bench_matrix(
            rows, cols, i, r, 10, reps, ks_budget, analysis=not args.quick or i == 0, quick=args.quick
        )
        for i, (rows, cols) in enumerate(shapes)
    ]
    C.emit_json(
        {
            "benchmark": "farms",
            "mode": "quick" if args.quick else "full",
            "results": results,
            "targets_missed": [x["name"] for x in results if x["target_met"] is False],
            "alpha_mismatch": [x["name"] for x in results if not x["alpha_match"]],
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

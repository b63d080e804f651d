"""Trajectory: 8 checkpoints x all analyses, cold and warm store, serial vs the runner's parallelism.

The shipped demo series ``cnn-train`` (8 checkpoints of a 2,152-parameter CNN on 8x8 digits,
steps 0 to 1600) through :class:`~analyses.trajectory.Trajectory` with every analysis that
applies (spectra with FARMS, IBP, Lipschitz, orbits, connectivity to the next and to the final
checkpoint: 45 runs):

- **cold**: an empty result store, every run computed;
- **warm**: the same store again, every run read back (nothing computed);
- **serial**: the runner with one worker (the runs one after another);
- **parallel**: the runner's threads (``--workers``, default the runner's own choice), each run
  serial in its task, as ``Trajectory`` does.

Orbits take the 8x8 digits (the series' input size). Default: the analyses' own settings
otherwise; ``--quick``: the notebook's small settings and fewer repeats. Each cold run gets a
fresh store; every timing is the best of its repeats, interleaved (see ``_common.py``).

    python tests/benchmarks/bench_trajectory.py [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import THREADS, emit_json, fmt_s, race

#: the notebook's small settings (--quick)
QUICK = {
    "ibp": {"max_samples": 128},
    "lipschitz": {"max_samples": 128, "iters": 200},
    "orbits": {"data": "digits8", "steps": 24, "max_samples": 200},
    "connectivity": {"points": 11, "plane": False, "merge": False},
}
#: the analyses' defaults, but orbits on the series' own 8x8 inputs
FULL = {"orbits": {"data": "digits8"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the notebook's small settings, fewer repeats")
    ap.add_argument(
        "--workers", type=int, default=None, help="parallel runner threads (default: the runner's)"
    )
    args = ap.parse_args()
    if args.workers is not None and args.workers < 2:
        ap.error(f"--workers: expected 2 or more parallel threads, got {args.workers}")
    torch.set_num_threads(THREADS)
    from analyses.core.runner import Runner
    from analyses.trajectory import Trajectory
    from analyses.zoo import demo_series

    series = demo_series("cnn-train")
    overrides = QUICK if args.quick else FULL
    workers = Runner("threads", args.workers).num_workers
    tmp = Path(tempfile.mkdtemp(prefix="nnv-bench-trajectory-"))
    counter = iter(range(1_000_000))

    def run(store: Path, n_workers: int):
        traj = Trajectory(series=series, overrides=overrides, runner="threads", num_workers=n_workers,
                          cache_dir=str(store), show_progress=False)  # fmt: skip
        return traj.run()

    def cold(n_workers: int):
        def go():
            store = tmp / f"cold-{next(counter)}"
            try:
                return run(store, n_workers)
            finally:
                shutil.rmtree(store, ignore_errors=True)

        return go

    warm_store = tmp / "warm"

    def warm(n_workers: int):
        return lambda: run(warm_store, n_workers)

    # Untimed: imports, data sets, lazy library setup; it also fills the warm store.
    first = run(warm_store, workers)
    n_runs = first.summary["computed"] + first.summary["from_store"]
    reps_cold, reps_warm = (1, 3) if args.quick else (2, 5)
    t = race(
        {
            "cold_serial": (cold(1), reps_cold),
            "cold_parallel": (cold(workers), reps_cold),
            "warm_serial": (warm(1), reps_warm),
            "warm_parallel": (warm(workers), reps_warm),
        },
        warmup=False,
    )
    best = {k: v["best"] for k, v in t.items()}
    res = {k: v["value"] for k, v in t.items()}
    computed = {k: r.summary["computed"] for k, r in res.items()}
    errors = sum(len(r.summary["errors"]) for r in res.values())
    # the same readings whichever way they were run (and whether computed or read back)
    ref = res["cold_serial"].table.sort_values(["step", "analysis", "metric", "layer"]).reset_index(drop=True)
    diff = 0.0
    for r in res.values():
        other = r.table.sort_values(["step", "analysis", "metric", "layer"]).reset_index(drop=True)
        assert list(other["metric"]) == list(ref["metric"]), "the runs disagree on which readings they made"
        a, b = ref["value"].to_numpy(), other["value"].to_numpy()
        both = np.isfinite(a) & np.isfinite(b)
        assert (np.isfinite(a) == np.isfinite(b)).all(), "a reading is finite in one run only"
        diff = max(diff, float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0)
    per_analysis: dict[str, float] = {}
    for r in res["cold_serial"].meta["runs"]:
        kind = "connectivity" if r["analysis"].startswith("connectivity") else r["analysis"]
        per_analysis[kind] = per_analysis.get(kind, 0.0) + r["seconds"]
    shutil.rmtree(tmp, ignore_errors=True)

    steps = first.steps
    print(f"series cnn-train: {len(steps)} checkpoints (steps {steps[0]}..{steps[-1]}) x "
          f"{', '.join(first.analyses)} = {n_runs} runs; settings {'quick' if args.quick else 'defaults'}; "
          f"torch threads {THREADS}, parallel runner: threads ({workers})")  # fmt: skip
    for k in ("cold_serial", "cold_parallel", "warm_serial", "warm_parallel"):
        print(f"{k.replace('_', ' '):14s} {fmt_s(best[k]):>9s}  ({computed[k]} computed, "
              f"{n_runs - computed[k]} from the store)")  # fmt: skip
    par_cold = best["cold_serial"] / best["cold_parallel"]
    par_warm = best["warm_serial"] / best["warm_parallel"]
    store_serial = best["cold_serial"] / best["warm_serial"]
    store_parallel = best["cold_parallel"] / best["warm_parallel"]
    print(f"parallel vs serial: cold {par_cold:.2f}x, warm {par_warm:.2f}x")
    print(f"warm vs cold store: serial {store_serial:.1f}x, parallel {store_parallel:.1f}x")
    print("cold serial, seconds per analysis (all checkpoints): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_analysis.items()))  # fmt: skip
    print(f"max |reading difference| between the four ways: {diff:.1e}; errors: {errors}")
    targets = {
        "warm_computes_nothing": computed["warm_serial"] == computed["warm_parallel"] == 0,
        "cold_computes_all": computed["cold_serial"] == computed["cold_parallel"] == n_runs,
    }
    emit_json(
        {
            "benchmark": "trajectory",
            "mode": "quick" if args.quick else "full",
            "checkpoints": len(steps),
            "analyses": first.analyses,
            "runs": n_runs,
            "workers": workers,
            "results": {f"{k}_s": v for k, v in best.items()},
            "computed": computed,
            "speedup_parallel_cold": par_cold,
            "speedup_parallel_warm": par_warm,
            "speedup_warm_store_serial": store_serial,
            "speedup_warm_store_parallel": store_parallel,
            "cold_serial_s_per_analysis": per_analysis,
            "max_reading_diff": diff,
            "errors": errors,
            "targets": targets,
            "targets_missed": [k for k, ok in targets.items() if not ok],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Connectivity path evaluation on a GPU: the stacked engine against per-point (matching excluded).

25 points of the linear path between the zoo's pairs, train + test digits (1,797 samples), with
:class:`~analyses.connectivity.path.PathEvaluator` (``stacked``: all points in one pass;
``per-point``: one ``functional_call`` per point) on the device; the BatchNorm CNN also with the
running statistics reset at every point. Best of 3 after a warm-up. Target: stacked >= 3x
per-point. Also the whole ``ModeConnectivity`` run (matching included) on both devices.

    python tests/benchmarks/bench_gpu_connectivity.py [--small] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import bench_util as U  # noqa: E402

U.repo_on_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> int:
    ap = U.parser(__doc__)
    args = ap.parse_args(argv)
    from analyses import ModeConnectivity
    from analyses.connectivity.path import PathEvaluator, linear_path
    from analyses.core.data import load_digits
    from analyses.core.device import float32_mode, prepare_device
    from analyses.zoo import load_demo

    dev = str(prepare_device(args.device))
    points = 5 if args.small else 25
    reps = 1 if args.small else 3
    splits = {"train": load_digits(split="train"), "test": load_digits(split="test")}
    lams = np.linspace(0.0, 1.0, points)
    lam_t = torch.as_tensor(lams)
    coeffs = torch.stack([1 - lam_t, lam_t], 1)
    cases = [("mlp-w512", False), ("bn-cnn", False), ("bn-cnn", True)]
    if args.small:
        cases = [("mlp-w64", False), ("bn-cnn", True)]
    for name, reset in cases:
        a, b = load_demo(f"{name}-a").eval(), load_demo(f"{name}-b").eval()
        sa, sb = a.state_dict(), b.state_dict()

        def run(engine: str, a=a, sa=sa, sb=sb, reset=reset):
            ev = PathEvaluator(a, dev, batch_size=512, engine=engine)
            st = linear_path(sa, sb, lams)
            curves, _ = ev.evaluate_splits(
                st, splits, reset_on=splits["train"] if reset else None, endpoints=([sa, sb], coeffs)
            )
            return np.stack([np.stack(curves[k], axis=1) for k in ("train", "test")])

        times, vals = {}, {}
        with float32_mode(False):
            for engine in ("stacked", "per-point"):
                run(engine)  # warm-up (and the device copies of the data)
                best = float("inf")
                for _ in range(reps):
                    t, vals[engine] = U.timed(lambda engine=engine: run(engine), dev)
                    best = min(best, t)
                times[engine] = best
        ratio = times["per-point"] / times["stacked"]
        diff = float(np.abs(vals["stacked"] - vals["per-point"]).max())
        U.figure(f"connectivity path {name}{' with BN reset' if reset else ''}, {points} points: per-point / stacked",
                 ratio, "x", target=">= 3x", ok=ratio >= 3 if dev != "cpu" else None,
                 stacked_s=round(times["stacked"], 4), per_point_s=round(times["per-point"], 4), max_diff=diff)  # fmt: skip
    fast = dict(cache=False, show_progress=False, points=points)
    kw = (
        dict(model_a="mlp-w512-a", model_b="mlp-w512-b")
        if not args.small
        else dict(model_a="mlp-w64-a", model_b="mlp-w64-b")
    )
    ModeConnectivity(device=dev, **kw, **fast).run()  # warm
    t_gpu, rg = U.timed(lambda: ModeConnectivity(device=dev, **kw, **fast).run(), dev)
    t_cpu, rc = U.timed(lambda: ModeConnectivity(**kw, **fast).run())
    d = abs(rg.summary["barrier_matched"] - rc.summary["barrier_matched"])
    U.figure(f"ModeConnectivity {kw['model_a'][:-2]} whole run (matching included): CPU / GPU", t_cpu / t_gpu, "x",
             gpu_s=round(t_gpu, 4), cpu_s=round(t_cpu, 4), barrier_diff=d)  # fmt: skip
    U.write_json(args.json, {"benchmark": "gpu_connectivity", "device": dev})
    return 0


if __name__ == "__main__":
    sys.exit(main())

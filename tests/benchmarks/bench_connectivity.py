"""Connectivity: evaluating every point of a linear path at once, and weight matching.

- path evaluation: 25 points, train + test digits (1,797 samples), with :class:`PathEvaluator`
  (points stacked, ``torch.func.vmap`` over ``functional_call``; and its per-point
  ``functional_call`` mode) against the usual loop: for each lambda build the interpolated state
  dict, ``load_state_dict`` it into the model, run the data in batches of 512 (target >= 3x);
- weight matching of two trained MLPs 64-512-512-10 (three weight layers of width 512; the zoo's
  ``mlp-w512-a``/``-b``): wall and CPU time of :func:`weight_matching` (target < 1 s on CPU).

    python tests/benchmarks/bench_connectivity.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch
from _common import THREADS, emit_json, fmt_s, race, ratio_line
from torch import nn

POINTS = 25
BATCH = 512
TARGET_EVAL = 3.0
TARGET_MATCH_S = 1.0


def _loop(model: nn.Module, sa, sb, lams, splits):
    """The reference: one load_state_dict per point, then the data in batches."""
    m = copy.deepcopy(model).eval()
    out = np.zeros((len(splits), len(lams), 2))
    with torch.no_grad():
        for i, lam in enumerate(lams):
            m.load_state_dict(
                {k: ((1 - lam) * v + lam * sb[k]) if v.is_floating_point() else v for k, v in sa.items()}
            )
            for s, ds in enumerate(splits):
                loss = correct = 0.0
                for x, y in ds.batches(BATCH):
                    logits = m(x)
                    loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                    correct += float((logits.argmax(1) == y).sum())
                out[s, i] = loss / len(ds), correct / len(ds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    from analyses.connectivity.matching import weight_matching
    from analyses.connectivity.path import PathEvaluator, linear_path
    from analyses.connectivity.spec import infer_spec
    from analyses.core.data import load_digits
    from analyses.zoo import load_demo

    splits = [load_digits(split="train"), load_digits(split="test")]
    lams = np.linspace(0.0, 1.0, POINTS)
    reps = 1 if args.quick else 3
    payload: dict = {"benchmark": "connectivity", "points": POINTS, "samples": sum(len(s) for s in splits)}
    print(f"{POINTS} points x {payload['samples']} digits (train + test); torch threads {THREADS}")
    for pair in (("mlp-w64-a", "mlp-w64-b"), ("mlp-w512-a", "mlp-w512-b"), ("bn-cnn-a", "bn-cnn-b")):
        a, b = load_demo(pair[0]).eval(), load_demo(pair[1]).eval()
        sa, sb = a.state_dict(), b.state_dict()
        bn = pair[0].startswith("bn")

        def ours(vectorize: bool, a=a, sa=sa, sb=sb):
            ev = PathEvaluator(a, batch_size=BATCH, vectorize=vectorize)
            st = linear_path(sa, sb, lams)
            return np.stack([np.stack(ev.evaluate(st, ds), axis=1) for ds in splits])

        fns = {
            "vmap": (lambda: ours(True), reps),
            "per_point": (lambda: ours(False), reps),
            "loop": (lambda a=a, sa=sa, sb=sb: _loop(a, sa, sb, lams, splits), reps),
        }
        t = race(fns)
        diff = float(np.abs(t["vmap"]["value"] - t["loop"]["value"]).max())
        name = pair[0].removesuffix("-a")
        best = min(("vmap", "per_point"), key=lambda k: t[k]["best"])
        print(ratio_line(f"{name} path, stacked points (vmap)", t["vmap"]["best"], "load_state_dict loop",
                         t["loop"]["best"], f"max |diff| {diff:.1e}" + (", BN stats interpolated" if bn else "")))  # fmt: skip
        print(ratio_line(f"{name} path, per-point functional_call", t["per_point"]["best"], "load_state_dict loop",
                         t["loop"]["best"]))  # fmt: skip
        payload[name] = {
            "vmap_s": t["vmap"]["best"], "per_point_s": t["per_point"]["best"], "loop_s": t["loop"]["best"],
            "speedup_vmap": t["loop"]["best"] / t["vmap"]["best"],
            "speedup_per_point": t["loop"]["best"] / t["per_point"]["best"], "fastest": best, "max_diff": diff,
        }  # fmt: skip

    a, b = load_demo("mlp-w512-a").eval(), load_demo("mlp-w512-b").eval()
    spec, _ = infer_spec(a, splits[0].x[:8])
    sa, sb = a.state_dict(), b.state_dict()
    t = race({"match": (lambda: weight_matching(sa, sb, spec, seed=0), 2 if args.quick else 5)})
    res = t["match"]["value"]
    t_match, cpu = t["match"]["best"], t["match"]["cpu"]
    print(f"weight matching 64-512-512-10 (mlp-w512-a/b): {fmt_s(t_match)} wall, {fmt_s(cpu)} CPU, "
          f"{res.iterations} sweeps (target < {TARGET_MATCH_S} s)")  # fmt: skip
    payload["matching_w512"] = {"wall_s": t_match, "cpu_s": cpu, "sweeps": res.iterations}
    payload["targets"] = {
        "mlp-w512 vmap >= 3x loop": payload["mlp-w512"]["speedup_vmap"] >= TARGET_EVAL,
        "mlp-w64 vmap >= 3x loop": payload["mlp-w64"]["speedup_vmap"] >= TARGET_EVAL,
        "matching < 1 s": t_match < TARGET_MATCH_S,
    }
    emit_json(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

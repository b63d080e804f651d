"""Connectivity: evaluating every point of a linear path at once, and weight matching.

- path evaluation: 25 points, train + test digits (1,797 samples), the zoo's pairs
  (``mlp-w64``, ``mlp-w512``, ``bn-cnn``), with :class:`PathEvaluator`'s engines (``stacked``:
  all points in one pass, the default for these plain chains; ``per-point``: one
  ``functional_call`` per point; ``vmap``: ``torch.func.vmap`` over ``functional_call``) against
  the usual loop: for each lambda build the interpolated state dict, ``load_state_dict`` it into
  the model, run the data in batches of 512 (target >= 3x);
- the same path of the BatchNorm CNN with the running statistics reset at every point (what
  ``ModeConnectivity`` does for it by default): the stacked engine's fused reset against the
  loop's usual reset (train mode, ``momentum=None``, the training split in batches of 512, then
  an eval pass; Git Re-Basin's ``reset_bn_stats``) and against the per-point engine;
- the arithmetic floor: multiply-adds of the path evaluation divided by this machine's
  measured float32 matrix-product rate, so a ratio can be read against what is possible here;
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


def _reset_bn(m: nn.Module, train) -> None:
    """The loop's reset: train mode, cumulative averages over the training split in batches."""
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    for x, _ in train.batches(BATCH):
        m(x)
    m.eval()


def _loop(model: nn.Module, sa, sb, lams, splits, reset: bool = False):
    """The reference: one load_state_dict per point, then the data in batches."""
    m = copy.deepcopy(model).eval()
    out = np.zeros((len(splits), len(lams), 2))
    with torch.no_grad():
        for i, lam in enumerate(lams):
            m.load_state_dict(
                {k: ((1 - lam) * v + lam * sb[k]) if v.is_floating_point() else v for k, v in sa.items()}
            )
            if reset:
                _reset_bn(m, splits[0])
            for s, ds in enumerate(splits):
                loss = correct = 0.0
                for x, y in ds.batches(BATCH):
                    logits = m(x)
                    loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                    correct += float((logits.argmax(1) == y).sum())
                out[s, i] = loss / len(ds), correct / len(ds)
    return out


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of one sample through the weight layers."""
    total = 0

    def hook(m, _i, out):
        nonlocal total
        total += out[0].numel() * m.weight[0].numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return total


def _matmul_rate() -> float:
    """This machine's float32 matrix-product rate (multiply-adds per second), best of several."""
    a, b = torch.randn(1024, 512), torch.randn(512, 512)
    best = float("inf")
    for _ in range(20):
        t = race({"mm": (lambda: a @ b, 5)}, warmup=False)["mm"]["best"]
        best = min(best, t)
    return 1024 * 512 * 512 / best


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
    rate = _matmul_rate()
    payload["matmul_gmacs"] = rate / 1e9
    print(f"float32 matrix products here: {rate / 1e9:.1f} G multiply-adds/s (the floor below divides by it)")
    n_samples = payload["samples"]
    lam_t = torch.as_tensor(lams)
    coeffs = torch.stack([1 - lam_t, lam_t], 1)
    for pair in (("mlp-w64-a", "mlp-w64-b"), ("mlp-w512-a", "mlp-w512-b"), ("bn-cnn-a", "bn-cnn-b")):
        a, b = load_demo(pair[0]).eval(), load_demo(pair[1]).eval()
        sa, sb = a.state_dict(), b.state_dict()
        bn = pair[0].startswith("bn")
        name = pair[0].removesuffix("-a")
        floor = POINTS * n_samples * _macs(a, splits[0].x) / rate

        def ours(engine: str, reset: bool = False, a=a, sa=sa, sb=sb):
            ev = PathEvaluator(a, batch_size=BATCH, engine=engine)
            st = linear_path(sa, sb, lams)
            curves, _ = ev.evaluate_splits(
                st, {"train": splits[0], "test": splits[1]}, reset_on=splits[0] if reset else None,
                endpoints=([sa, sb], coeffs),
            )  # fmt: skip
            return np.stack([np.stack(curves[k], axis=1) for k in ("train", "test")])

        engines = ("stacked", "per-point") + (() if bn else ("vmap",))
        fns = {e: (lambda e=e: ours(e), reps) for e in engines}
        fns["loop"] = (lambda a=a, sa=sa, sb=sb: _loop(a, sa, sb, lams, splits), reps)
        t = race(fns)
        diff = float(np.abs(t["stacked"]["value"] - t["loop"]["value"]).max())
        rec = {"loop_s": t["loop"]["best"], "floor_s": floor, "max_diff": diff}
        for e in engines:
            note = (
                f"max |diff| {diff:.1e}" + (", BN stats interpolated" if bn else "") if e == "stacked" else ""
            )
            print(
                ratio_line(
                    f"{name} path, {e} engine", t[e]["best"], "load_state_dict loop", t["loop"]["best"], note
                )
            )
            rec[f"{e}_s"], rec[f"speedup_{e}"] = t[e]["best"], t["loop"]["best"] / t[e]["best"]
        print(f"  arithmetic floor {fmt_s(floor)}: the loop runs at {floor / t['loop']['best']:.0%} of this "
              f"machine's matrix-product rate, so at most {t['loop']['best'] / floor:.1f}x is left to gain")  # fmt: skip
        rec["max_possible_speedup"] = t["loop"]["best"] / floor
        payload[name] = rec
        if bn:
            fns = {
                "stacked": (lambda: ours("stacked", True), reps),
                "per-point": (lambda: ours("per-point", True), reps),
                "loop": (lambda a=a, sa=sa, sb=sb: _loop(a, sa, sb, lams, splits, reset=True), reps),
            }
            t = race(fns)
            diff = float(np.abs(t["stacked"]["value"] - t["loop"]["value"]).max())
            for e in ("stacked", "per-point"):
                note = (
                    f"max |diff| {diff:.1e} (population vs batch-averaged statistics)"
                    if e == "stacked"
                    else ""
                )
                print(ratio_line(f"{name} path with BN reset, {e} engine", t[e]["best"],
                                 "load_state_dict loop + train-mode reset", t["loop"]["best"], note))  # fmt: skip
            payload[f"{name}-reset"] = {
                "stacked_s": t["stacked"]["best"], "per_point_s": t["per-point"]["best"], "loop_s": t["loop"]["best"],
                "speedup_stacked": t["loop"]["best"] / t["stacked"]["best"], "max_diff": diff,
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
        **{
            f"{k} stacked >= 3x loop": payload[k]["speedup_stacked"] >= TARGET_EVAL
            for k in ("mlp-w64", "mlp-w512", "bn-cnn")
        },
        "bn-cnn with reset stacked >= 3x loop": payload["bn-cnn-reset"]["speedup_stacked"] >= TARGET_EVAL,
        "matching < 1 s": t_match < TARGET_MATCH_S,
    }
    emit_json(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

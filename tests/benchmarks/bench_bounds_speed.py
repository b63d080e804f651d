"""Bounds at speed (issue 13): IBP vs the model's own forward pass, Lipschitz upper bounds of ResNet-18.

For each model (32x32, 3 channels, random init, BatchNorm with non-trivial statistics), exported to a
``.pt2`` with a dynamic batch and loaded back as the analyses load it, in one run:

- the model's own forward pass over N samples vs IBP over the same samples (``propagate`` without
  tightness: clean pass, interval boxes, certified accuracy, ReLU stability); interleaved, best of
  ``reps``; target IBP <= 4x the forward pass;
- per-layer IBP tightness on a few samples (its cost per sample: the linearised network's Jacobian
  has one column per input feature, so it is ``d`` forward passes of the linear network);
- Lipschitz upper bounds (every step's operator norm in float64, as LipschitzBounds computes them,
  composed through the graph): cold (empty cache), then again (cached); target ResNet-18 <= 10 s.

Models: ResNet-18 (tests/gpu/models.py), VGG-11-BN, a MobileNetV2-style net (inverted residuals,
depthwise convolutions, ReLU6).

    python tests/benchmarks/bench_bounds_speed.py [--quick] [--models resnet18,vgg11bn,mobilenet]
        [--samples 256] [--tight-samples 1] [--allocator hold|default]

``--allocator hold`` (the default) keeps freed memory for reuse, as the ``nnvitals`` command does
(:mod:`analyses.core.allocator`); ``default`` leaves glibc's thresholds, under which every large
activation is mmapped and page-faulted again on every pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, THREADS, emit_json, fmt_s, race
from torch import nn

TARGET_IBP_RATIO = 4.0
TARGET_RESNET_LIPSCHITZ_S = 10.0


def _gpu_models():
    spec = importlib.util.spec_from_file_location("gpu_models", REPO / "tests" / "gpu" / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bn_stats(m: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return m.eval()


def vgg11_bn(classes: int = 10) -> nn.Module:
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015, configuration A), CIFAR head (one linear layer)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return _bn_stats(nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, classes)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand, 3x3 depthwise, 1x1 project, ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        h = cin * t
        self.skip = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


def mobilenet_v2(classes: int = 10) -> nn.Module:
    """MobileNetV2's layout at 32x32 (stride-1 stem, CIFAR form), width 1."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    c = 32
    for t, co, n, s in ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)):  # fmt: skip
        for i in range(n):
            layers.append(InvertedResidual(c, co, s if i == 0 else 1, t))
            c = co
    layers += [nn.Conv2d(c, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(1280, classes)]  # fmt: skip
    return _bn_stats(nn.Sequential(*layers))


def plain_ibp(graph, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The walk before issue 13's speedups (reference): every step's value kept to the end, every rule's
    own interval rule (ReLU through six fresh tensors), the clean pass alongside."""
    from analyses.bounds.graph import apply
    from analyses.bounds.ibp import input_box
    from analyses.core.graph import kind_rule

    c0, r0 = input_box(x, eps, 0.0, 1.0)
    lower, upper = c0 - r0, c0 + r0
    c, r = (upper + lower) / 2, (upper - lower) / 2  # as interval_bounds takes its box
    env = {graph.input_name: (x, c, r)}
    for s in graph.steps:
        ins = [env[i] for i in s.inputs]
        cc, rr = kind_rule(s.kind).ibp(s, [(v[1], v[2]) for v in ins])
        env[s.name] = (apply(s, [v[0] for v in ins]), cc, rr)
    _, c, r = env[graph.output_name]
    return c - r, c + r


def block_power_norm(
    weight: torch.Tensor, in_shape, iters: int = 1000, tol: float = 1e-7
) -> tuple[float, int]:
    """The conv operator norm before issue 13's speedups (reference): block power iteration (6 vectors,
    QR, Rayleigh-Ritz, the same residual test) on a zero-padded 3x3 stride-1 conv. (norm, products)."""
    import math

    import torch.nn.functional as F

    n, p = math.prod(in_shape), 6
    gen = torch.Generator().manual_seed(0)
    v = torch.linalg.qr(torch.randn((n, p), generator=gen, dtype=torch.float64)).Q.T.to(weight.dtype)
    best, steps = 0.0, 0
    while steps < iters:
        steps += 1
        u = F.conv2d(v.reshape(p, *in_shape), weight, None, 1, 1)
        uf = u.reshape(p, -1)
        w = F.conv_transpose2d(u, weight, None, 1, 1).reshape(p, -1)
        pl, sv, _ = torch.linalg.svd(uf @ uf.T)
        s2 = float(sv[0])
        best = max(best, math.sqrt(max(s2, 0.0)))
        top = pl[:, 0]
        if float((top @ w - s2 * (top @ v)).norm()) <= tol * s2:
            break
        v = torch.linalg.qr(w.T).Q.T
    return best, steps * p


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> torch.export.ExportedProgram:
    """Export with a dynamic batch dimension, save, and load back (what a user hands the analyses)."""
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return torch.export.load(str(path))


def bench_model(
    name: str, build, n: int, reps: int, tight_n: int, lipschitz: bool, tmp: Path, block_layer: bool = False
) -> dict:
    from analyses.bounds import ibp as I
    from analyses.bounds import lipschitz as L
    from analyses.bounds.graph import trace

    gm = _gpu_models()
    x, y = gm.images(n)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    model = build().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ep = export_pt2(model, x[:2], tmp / f"{name}.pt2")
    stages["export .pt2"] = time.perf_counter() - t
    t = time.perf_counter()
    g = trace(ep, x[:2])
    stages["graph"] = time.perf_counter() - t
    fwd_module = ep.module()
    eps = 1 / 255

    def forward():
        with torch.no_grad():
            return fwd_module(x)

    def ibp():
        with torch.no_grad():
            return I.propagate(g, x, y, eps, 0.0, 1.0, tightness=False)

    def before():
        with torch.no_grad():
            return plain_ibp(g, x, eps)

    r = race({"forward": (forward, reps), "ibp": (ibp, reps), "before": (before, reps)})
    stages[f"forward ({n} samples)"] = r["forward"]["best"]
    stages[f"IBP ({n} samples)"] = r["ibp"]["best"]
    stages[f"IBP before: plain walk ({n} samples)"] = r["before"]["best"]
    ratio = r["ibp"]["best"] / r["forward"]["best"]
    cpu_ratio = r["ibp"]["cpu"] / r["forward"]["cpu"]
    with torch.no_grad():  # the IBP box holds the clean output (a sanity check of the timed run)
        rec = r["ibp"]["value"]
        agree = float((r["forward"]["value"].argmax(1) == y).float().mean()) == float(
            rec.correct.float().mean()
        )
    lo_b, hi_b = r["before"]["value"]
    with torch.no_grad():  # the fast walk's output box is the plain walk's, bit for bit
        c0, r0 = I.input_box(x, eps, 0.0, 1.0)
        lo_f, hi_f = I.interval_bounds(g, c0 - r0, c0 + r0)[g.output_name]
    same = bool(torch.equal(lo_f, lo_b) and torch.equal(hi_f, hi_b))
    out = {"samples": n, "ibp_ratio": ratio, "ibp_cpu_ratio": cpu_ratio,
           "ibp_before_ratio": r["before"]["best"] / r["forward"]["best"],
           "certified": float(rec.certified.float().mean()), "agree": agree, "same_box_as_before": same}  # fmt: skip
    t = time.perf_counter()
    tau = I.output_tightness(g, x, y, eps, 0.0, 1.0)
    stages[f"output tightness, reverse mode ({n} samples)"] = time.perf_counter() - t
    out["output_tightness"] = float(tau.nanmean())
    if tight_n:
        t = time.perf_counter()
        with torch.no_grad():
            rt = I.propagate(g, x[:tight_n], y[:tight_n], eps, 0.0, 1.0, tightness=True)
        stages[f"IBP + per-layer tightness ({tight_n} samples)"] = time.perf_counter() - t
        out["tightness_max_rel_diff"] = float(
            ((rt.out_tightness - tau[:tight_n]).abs() / rt.out_tightness).max()
        )
    if lipschitz:
        g64 = g.to("cpu", torch.float64)
        L.clear_norm_cache()
        t = time.perf_counter()
        rows = L.upper_bounds(g64)
        stages["Lipschitz upper bounds (cold)"] = time.perf_counter() - t
        t = time.perf_counter()
        again = L.upper_bounds(g64)
        stages["Lipschitz upper bounds (cached)"] = time.perf_counter() - t
        out["lipschitz_upper"] = rows[g.output_name][2]
        out["lipschitz_same_when_cached"] = again == rows
        out["lipschitz_s"] = stages["Lipschitz upper bounds (cold)"]
        if block_layer:  # one layer, before vs after: the widest 3x3 stride-1 conv at full size
            st = max((s for s in g64.steps if s.kind == "conv" and tuple(s.params["weight"].shape[2:]) == (3, 3)
                      and tuple(s.params["stride"]) == (1, 1) and s.in_shape[0] > 3),
                     key=lambda s: (s.in_shape[1] * s.in_shape[2], -s.in_shape[0]))  # fmt: skip
            t = time.perf_counter()
            v_old, prods = block_power_norm(st.params["weight"], st.in_shape)
            stages[
                f"  one conv {tuple(st.params['weight'].shape)} on {st.in_shape}: block power (before)"
            ] = time.perf_counter() - t
            L.clear_norm_cache()
            t = time.perf_counter()
            v_new = L.layer_constant(st)[0]
            stages["  same conv: Lanczos (after)"] = time.perf_counter() - t
            out["one_conv"] = {"before": v_old, "before_products": prods, "after": v_new,
                               "rel_diff": (v_new - v_old) / v_old}  # fmt: skip
    out["stages"] = stages
    print(f"{name}: {len(g.steps)} steps")
    for k, v in stages.items():
        print(f"    {k:45s} {fmt_s(v)}")
    print(f"    IBP / forward = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time (target <= {TARGET_IBP_RATIO}x); "
          f"before (plain walk) {out['ibp_before_ratio']:.2f}x")  # fmt: skip
    if lipschitz:
        print(f"    Lipschitz upper bound of the network {out['lipschitz_upper']:.6g}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-18 only, 64 samples, 2 repeats")
    ap.add_argument("--models", default="resnet18,vgg11bn,mobilenet")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument(
        "--tight-samples", type=int, default=1, help="samples for the per-layer tightness (0: skip)"
    )
    ap.add_argument("--no-lipschitz", action="store_true")
    ap.add_argument(
        "--before-conv",
        action="store_true",
        help="also time one ResNet-18 conv by the old block power iteration",
    )
    ap.add_argument(
        "--allocator",
        choices=("hold", "default"),
        default="hold",
        help="hold: freed memory kept for reuse, as the nnvitals command runs (default); "
        "default: glibc's own thresholds (every large tensor mmapped and page-faulted again)",
    )
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.allocator == "hold":
        from analyses.core.allocator import hold_freed_memory

        hold_freed_memory()
    builders = {"resnet18": lambda: _gpu_models().resnet18(), "vgg11bn": vgg11_bn, "mobilenet": mobilenet_v2}
    names = ["resnet18"] if args.quick else [m for m in args.models.split(",") if m]
    for m in names:
        if m not in builders:
            print(f"--models: unknown model {m!r}, expected some of {', '.join(builders)}")
            return 2
    n = 64 if args.quick else args.samples
    reps = 3 if args.quick else 5
    print(f"torch threads {THREADS}; {n} samples of 3x32x32; eps 1/255; allocator {args.allocator}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in names:
            results[m] = bench_model(
                m, builders[m], n, reps, args.tight_samples, not args.no_lipschitz, Path(tmp),
                block_layer=args.before_conv and m == "resnet18",
            )  # fmt: skip
    targets = {
        f"{m}_ibp_ratio<={TARGET_IBP_RATIO}": r["ibp_ratio"] <= TARGET_IBP_RATIO for m, r in results.items()
    }
    if "resnet18" in results and "lipschitz_s" in results["resnet18"]:
        targets[f"resnet18_lipschitz<={TARGET_RESNET_LIPSCHITZ_S}s"] = (
            results["resnet18"]["lipschitz_s"] <= TARGET_RESNET_LIPSCHITZ_S
        )
    emit_json(
        {
            "benchmark": "bounds_speed",
            "mode": "quick" if args.quick else "full",
            "allocator": args.allocator,
            "results": results,
            "targets": targets,
            "targets_missed": [k for k, ok in targets.items() if not ok],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Orbits on a GPU against the bare-forward floor, through the public ``OrbitAnalysis`` API only.

- 72 rotation angles x all 1,797 digits (16 x 16) with the acceptance CNN (conv16-conv16-pool-linear);
- a workload where the model dominates: a ResNet-18 (CIFAR form, 11M parameters) on 10,000 seeded
  32 x 32 RGB images x 36 angles (360,000 forward passes).

The floor is the model's own forward passes over the same number of images, already on the
device, at the better of two batch sizes; ours is ``OrbitAnalysis(...).run()`` (rotations,
forward passes, scores, result) at the better of two ``batch_size`` values (target <= 1.5x the
floor). TF32 is off in both (nnvitals' default; the floor runs inside the same setting).

    python tests/benchmarks/bench_gpu_orbits.py [--small] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import bench_util as U  # noqa: E402
from _common import acceptance_cnn  # noqa: E402

U.repo_on_path()

import torch  # noqa: E402
from torch import nn  # noqa: E402


def floor(model: nn.Module, x: torch.Tensor, copies: int, batch: int, device: str) -> float:
    """Forward passes over ``copies`` x ``len(x)`` images already on the device."""
    from analyses.core.device import float32_mode

    m = model.to(device).eval()
    xs = x.to(device)
    total = copies * len(xs)
    with torch.inference_mode(), float32_mode(False):
        reps = xs.repeat((max(1, batch // len(xs) + 1), 1, 1, 1))[:batch]
        m(reps)  # warm
        U.sync(device)
        t, _ = U.timed(lambda: [m(reps[: min(batch, total - i)]) for i in range(0, total, batch)], device)
    return t


def ours(model, x, y, steps: int, batch: int, device: str):
    from analyses import OrbitAnalysis

    a = OrbitAnalysis(
        model=model, data=(x, y), group="rotation", steps=steps, batch_size=batch, device=device,
        cache=False, show_progress=False,
    )  # fmt: skip
    return U.timed(a.run, device)


def case(label: str, model, x, y, steps: int, batches: list[int], device: str) -> None:
    ours(model, x[: min(64, len(x))], y[: min(64, len(x))], steps, batches[0], device)  # warm-up
    t_floor = min(floor(model, x, steps, b, device) for b in batches)
    runs = [ours(model, x, y, steps, b, device) for b in batches]
    t_ours, res = min(runs, key=lambda r: r[0])
    ratio = t_ours / t_floor
    U.figure(f"orbits {label}: ours / bare-forward floor", ratio, "x", target="<= 1.5x", ok=ratio <= 1.5,
             ours_s=round(t_ours, 4), floor_s=round(t_floor, 4), images=len(x) * steps,
             mean_score=float(res.scores(0).mean()))  # fmt: skip


def main(argv=None) -> int:
    ap = U.parser(__doc__)
    ap.add_argument("--only", choices=["digits", "resnet"], default=None)
    args = ap.parse_args(argv)
    from models import images, resnet18

    from analyses.core.data import load_digits
    from analyses.core.device import prepare_device

    dev = str(prepare_device(args.device))
    if args.only in (None, "digits"):
        ds = load_digits(size=16)
        x, y = ds.x, ds.y
        if args.small:
            x, y = x[:120], y[:120]
        case(f"CNN, 72 angles x {len(x)} digits 16x16", acceptance_cnn(), x, y, 72 if not args.small else 12,
             [4096, 16384] if not args.small else [256], dev)  # fmt: skip
    if args.only in (None, "resnet"):
        n, steps, width = (10000, 36, 64) if not args.small else (64, 4, 8)
        x, y = images(n, 32, 3)
        case(f"ResNet-18 (width {width}), 32x32, {n} images x {steps} angles", resnet18(width=width), x, y, steps,
             [1024, 4096] if not args.small else [64], dev)  # fmt: skip
    U.write_json(args.json, {"benchmark": "gpu_orbits", "device": dev})
    return 0


if __name__ == "__main__":
    sys.exit(main())

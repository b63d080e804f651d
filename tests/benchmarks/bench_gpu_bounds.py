"""Bounds on a GPU against the same machine's CPU.

- Lipschitz lower bound, batched input Jacobians: :func:`analyses.bounds.lipschitz.jacobian_spectral_norms`
  on the traced graph of a ResNet-18 (CIFAR form, 11M parameters) at 32 x 32, for a batch of
  samples (exact norms: the 10 output rows by one vmapped vjp, the spectral norm from the 10 x 10
  Gram matrix); GPU vs all CPU cores (target >= 5x), and their agreement;
- the whole ``LipschitzBounds`` and ``IBPTightness`` analyses of the demo models on both devices
  (the issue's starting point: Lipschitz was slower on the GPU than on the CPU).

    python tests/benchmarks/bench_gpu_bounds.py [--small] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import bench_util as U  # noqa: E402

U.repo_on_path()

import torch  # noqa: E402


def jacobians(width: int, n: int, device: str) -> None:
    from models import images, resnet18

    from analyses.bounds import lipschitz as L
    from analyses.bounds.graph import trace
    from analyses.core.device import float32_mode

    model = resnet18(width=width)
    x, _ = images(n, 32, 3)
    g = trace(model, x[:2])
    cpu_t, cpu_norms = U.timed(lambda: L.jacobian_spectral_norms(g.forward, x))
    gd = g.to(device)
    xd = x.to(device)
    with float32_mode(False):
        L.jacobian_spectral_norms(gd.forward, xd[:8])  # warm
        t, norms = U.timed(lambda: L.jacobian_spectral_norms(gd.forward, xd), device)
    rel = float(((norms.cpu() - cpu_norms).abs() / cpu_norms.abs()).max())
    ratio = cpu_t / t
    U.figure(f"Lipschitz batched Jacobians, ResNet-18 (width {width}) 32x32, {n} samples: CPU / GPU", ratio, "x",
             target=">= 5x", ok=ratio >= 5 if device != "cpu" else None, gpu_s=round(t, 4), cpu_s=round(cpu_t, 3),
             cpu_threads=torch.get_num_threads(), max_rel_diff=rel)  # fmt: skip


def analyses_both(device: str, small: bool) -> None:
    from analyses import IBPTightness, LipschitzBounds

    fast = dict(cache=False, show_progress=False)
    for label, cls, kw in (
        (
            "LipschitzBounds cnn",
            LipschitzBounds,
            dict(model="cnn", max_samples=256)
            if not small
            else dict(model="mlp", max_samples=16, mixes=8, iters=50),
        ),
        (
            "IBPTightness ibp-cnn",
            IBPTightness,
            dict(model="ibp-cnn", eps=0.02, max_samples=64 if small else 256),
        ),
    ):
        cls(device=device, **kw, **fast).run()  # warm
        t_cpu, r_cpu = U.timed(lambda cls=cls, kw=kw: cls(**kw, **fast).run())
        t_gpu, r_gpu = U.timed(lambda cls=cls, kw=kw: cls(device=device, **kw, **fast).run(), device)
        key = "upper" if "upper" in r_cpu.summary else "tightness"
        rel = abs(r_cpu.summary[key] - r_gpu.summary[key]) / max(abs(r_cpu.summary[key]), 1e-30)
        U.figure(f"{label}: CPU / GPU, whole analysis", t_cpu / t_gpu, "x", gpu_s=round(t_gpu, 4),
                 cpu_s=round(t_cpu, 4), **{f"{key}_rel_diff": rel})  # fmt: skip


def main(argv=None) -> int:
    ap = U.parser(__doc__)
    args = ap.parse_args(argv)
    from analyses.core.device import prepare_device

    dev = str(prepare_device(args.device))
    jacobians(8 if args.small else 64, 8 if args.small else 128, dev)
    analyses_both(dev, args.small)
    U.write_json(args.json, {"benchmark": "gpu_bounds", "device": dev})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bounds: the kernels behind IBPTightness and LipschitzBounds against straightforward references.

- (a) Jacobian lower bound: ``jacobian_spectral_norms`` (one batched vjp, vmapped over the
  output basis) vs the per-sample loop (``torch.autograd.functional.jacobian`` of one sample,
  then ``matrix_norm(ord=2)``) on the demo CNN over digits; target >= 5x; norms must agree;
- (b) conv operator norm: block power iteration (circular pad + conv, autograd adjoint) vs the
  exact FFT value (Sedghi et al. 2019) for a circular 3x3 convolution: agreement and time;
- (c) IBP: our graph-walking ``interval_bounds`` vs auto_LiRPA's IBP when it is installed, else
  (it is not installed here, and nothing can be downloaded) vs an independent straightforward IBP
  loop over the model's ``nn.Module`` children: bounds must be identical; time ratio.

    python tests/benchmarks/bench_bounds.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
import torch.nn.functional as F
from _common import THREADS, emit_json, fmt_s, race, ratio_line
from torch import nn

TARGET_JACOBIAN = 5.0


def per_sample_jacobian_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference loop: one full Jacobian per sample (autograd), then its spectral norm."""
    out = torch.empty(len(x), dtype=x.dtype)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(model, x[i : i + 1])  # (1, K, 1, C, H, W)
        out[i] = torch.linalg.matrix_norm(jac.reshape(jac.shape[1], -1), ord=2)
    return out


def module_ibp(
    model: nn.Module, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent IBP: walk the model's children in order (Gowal et al. 2018, centre/radius form)."""
    c, r = (upper + lower) / 2, (upper - lower) / 2
    for m in model.children():
        if isinstance(m, nn.Linear):
            c, r = F.linear(c, m.weight, m.bias), F.linear(r, m.weight.abs())
        elif isinstance(m, nn.Conv2d):
            c = F.conv2d(c, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            r = F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.ReLU | nn.MaxPool2d):
            lo, hi = m(c - r), m(c + r)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        elif isinstance(m, nn.Flatten):
            c, r = m(c), m(r)
        else:
            raise TypeError(f"reference IBP: no rule for {type(m).__name__}")
    return c - r, c + r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    from analyses.bounds import ibp as I
    from analyses.bounds import lipschitz as L
    from analyses.bounds.graph import trace
    from analyses.core.data import load_digits
    from analyses.zoo import load_demo

    reps = 2 if args.quick else 5
    model = load_demo("cnn").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = load_digits(split="test")
    n = 128 if args.quick else 450
    x = ds.x[:n]
    graph = trace(model, x[:2])

    # (a) Jacobian lower bound -------------------------------------------------------------
    n_loop = 32 if args.quick else 64

    def batched():
        with torch.no_grad():
            return L.jacobian_spectral_norms(graph.forward, x)

    def loop():
        return per_sample_jacobian_norms(model, x[:n_loop])

    t = race({"batched": (batched, reps), "loop": (loop, reps)})
    t_b = t["batched"]["best"]
    t_loop = t["loop"]["best"] * n / n_loop
    agree_j = float(((t["batched"]["value"][:n_loop] - t["loop"]["value"]).abs() / t["loop"]["value"]).max())
    sp_j = t_loop / t_b
    print(f"(a) Jacobian norms of the demo CNN on {n} digits; torch threads {THREADS}")
    print(ratio_line("    batched vs per-sample loop", t_b, "loop", t_loop,
                     f"loop timed on {n_loop} samples and scaled; max rel. diff {agree_j:.1e}; target >= {TARGET_JACOBIAN}x"))  # fmt: skip

    # (b) conv operator norm ---------------------------------------------------------------
    g = torch.Generator().manual_seed(0)
    cout, cin, side = (32, 16, 16) if args.quick else (32, 16, 32)
    w = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64) / 9
    circ = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular", bias=False).double().eval()
    with torch.no_grad():
        circ.weight.copy_(w)
    step = trace(circ, torch.rand(2, cin, side, side, dtype=torch.float64)).steps[0]
    from analyses.bounds.graph import linear_part

    def power():
        return L.autograd_operator_norm(lambda v: linear_part(step, [v]), step.in_shape, dtype=torch.float64)

    def fft():
        return L.conv_fft_norm(w, (side, side))

    t2 = race({"power": (power, min(reps, 3)), "fft": (fft, min(reps, 3))})
    v_p, v_f = float(t2["power"]["value"]), float(t2["fft"]["value"])
    rel = abs(v_p - v_f) / v_f
    print(f"(b) circular 3x3 conv {cout}x{cin} on {side}x{side}: power iteration {v_p:.10g}, exact FFT {v_f:.10g} "
          f"(rel. diff {rel:.1e}); power {fmt_s(t2['power']['best'])}, FFT {fmt_s(t2['fft']['best'])}")  # fmt: skip

    # (c) IBP ------------------------------------------------------------------------------
    has_lirpa = importlib.util.find_spec("auto_LiRPA") is not None
    eps = 0.01
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)

    def ours_ibp():
        with torch.no_grad():
            return I.interval_bounds(graph, lower, upper)[graph.output_name]

    if has_lirpa:  # pragma: no cover - not installed in this environment
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

        bm = BoundedModule(model, x[:2])
        bt = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
        ref_name = "auto_LiRPA IBP"

        def ref_ibp():
            with torch.no_grad():
                return bm.compute_bounds(x=(bt,), method="IBP")

    else:
        ref_name = "module-loop IBP"
        print("(c) auto_LiRPA is not installed (and cannot be downloaded here): comparing with an independent "
              "straightforward IBP loop over the model's nn.Module children instead")  # fmt: skip

        def ref_ibp():
            with torch.no_grad():
                return module_ibp(model, lower, upper)

    t3 = race({"ours": (ours_ibp, reps * 2), "ref": (ref_ibp, reps * 2)})
    (lo_o, hi_o), (lo_r, hi_r) = t3["ours"]["value"], t3["ref"]["value"]
    diff = float(max((lo_o - lo_r).abs().max(), (hi_o - hi_r).abs().max()))
    scale = float(hi_r.abs().max())
    print(ratio_line(f"    IBP bounds of the demo CNN, {n} samples, eps {eps}", t3["ours"]["best"], ref_name,
                     t3["ref"]["best"], f"max |bound diff| {diff:.1e} of max |bound| {scale:.3g}"))  # fmt: skip
    identical = diff <= 1e-5 * max(1.0, scale)
    emit_json(
        {
            "benchmark": "bounds",
            "mode": "quick" if args.quick else "full",
            "results": {
                "jacobian": {"samples": n, "batched_s": t_b, "loop_s_scaled": t_loop, "speedup": sp_j,
                             "max_rel_diff": agree_j},
                "conv_norm": {"shape": [cout, cin, side, side], "power": v_p, "fft": v_f, "rel_diff": rel,
                              "power_s": t2["power"]["best"], "fft_s": t2["fft"]["best"]},
                "ibp": {"reference": ref_name, "auto_lirpa_installed": has_lirpa, "ours_s": t3["ours"]["best"],
                        "reference_s": t3["ref"]["best"], "ratio": t3["ref"]["best"] / t3["ours"]["best"],
                        "max_abs_diff": diff},
            },
            "targets": {"jacobian_speedup>=5": sp_j >= TARGET_JACOBIAN, "conv_norm_rel_diff<=1e-6": rel <= 1e-6,
                        "ibp_identical": identical},
            "targets_missed": [k for k, ok in {"jacobian_speedup>=5": sp_j >= TARGET_JACOBIAN,
                                               "conv_norm_rel_diff<=1e-6": rel <= 1e-6,
                                               "ibp_identical": identical}.items() if not ok],
        }
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

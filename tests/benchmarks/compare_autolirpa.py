"""IBP boxes of nnvitals against auto_LiRPA's ``compute_bounds(method="IBP")``, node by node.

auto_LiRPA's PyPI release does not import with current PyTorch; run it from its source repository
in a separate environment that also sees this project's packages, e.g.::

    python -m venv /tmp/alp_venv
    echo /path/to/nnvitals/.venv/lib/python3.11/site-packages > /tmp/alp_venv/lib/python3.11/site-packages/p.pth
    echo /path/to/auto_LiRPA-source > /tmp/alp_venv/lib/python3.11/site-packages/alp.pth
    /tmp/alp_venv/bin/pip install appdirs graphviz
    PYTHONPATH=. /tmp/alp_venv/bin/python tests/benchmarks/compare_autolirpa.py

Without auto_LiRPA the script says so and exits 0 (skipped).

Both run in float64 on the same models and input boxes. A step of ours is matched with the
auto_LiRPA nodes whose clean value (at the box centre) equals the step's; the reported difference
of a node is ``max |bound - bound'| / max |bound'|`` over its units and both ends (the closest
matching node). Two comparisons:

* ``as is``: auto_LiRPA's own operators. Its GELU takes the function's global minimum as the lower
  end of every interval, ours only where the interval holds the minimiser (elsewhere the exact
  ``min(f(l), f(u))``), so from the first GELU on our boxes are inside theirs (checked);
* where auto_LiRPA's own box misses a node's clean value (its softmax rule underflows ``exp`` when the
  scores' intervals are wide: the ViT block at eps 0.1, widths ~5e4), its boxes from there on are not
  bounds; those nodes are listed and left out of the comparison;
* ``same GELU rule``: auto_LiRPA's GELU interval rule replaced by the exact one for the run; every
  matched node must then agree within ``--tol`` (1e-5 relative), else the exit code is 1.

auto_LiRPA reads ``nn.GELU`` as ONNX ``Erf`` (unsupported): its own ``GELU`` module (the same
function) stands in. Its ``Clip`` node (ReLU6) takes min/max from ONNX attributes here, which its
``forward`` expects as inputs: a two-line adapter passes them (its interval rule is unchanged).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.graph import trace
from analyses.bounds.ibp import interval_bounds

D = torch.float64


# ---------------------------------------------------------------------------- models


def mlp_ln_gelu() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.LayerNorm(32),
        nn.GELU(), nn.Linear(32, 10),
    )  # fmt: skip


class InvertedResidual(nn.Module):
    def __init__(self, c: int, t: int = 2):
        super().__init__()
        h = c * t
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )  # fmt: skip

    def forward(self, x):
        return x + self.body(x)


def mobilenet_relu6() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(), InvertedResidual(4),
        InvertedResidual(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip


class BasicBlockLN(nn.Module):
    """ResNet-20's basic block with layer norm over (C, H, W) in place of batch norm."""

    def __init__(self, c: int, size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.LayerNorm([c, size, size]), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.LayerNorm([c, size, size]),
        )  # fmt: skip

    def forward(self, x):
        return F.relu(x + self.body(x))


def resnet_ln() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.LayerNorm([4, 8, 8]), nn.ReLU(), BasicBlockLN(4, 8),
        BasicBlockLN(4, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    )  # fmt: skip


def vit_block() -> nn.Module:
    """The zoo's ViT (:class:`~analyses.zoo.models.DigitsViT`) with one pre-norm block: patch
    convolution, positional table, LayerNorm, attention written out (matmul, softmax, matmul), GELU MLP."""
    from analyses.zoo.models import DigitsViT

    torch.manual_seed(4)
    return DigitsViT(image_size=8, patch=4, dim=8, depth=1, heads=2, mlp=16)


def resnet20_cln() -> nn.Module:
    """The zoo's ResNet-20 with LayerNorm over the channels at every position (:class:`ChannelLayerNorm`:
    permute, layer_norm, permute back), one block per stage, narrow."""
    from analyses.zoo.models import DigitsResNet20

    torch.manual_seed(5)
    return DigitsResNet20(widths=(4, 4, 8), blocks=1, norm="layer")


MODELS = {
    "mlp_ln_gelu": (mlp_ln_gelu, (1, 8, 8)),
    "mobilenet_relu6": (mobilenet_relu6, (1, 8, 8)),
    "resnet_ln": (resnet_ln, (1, 8, 8)),
    "vit_block": (vit_block, (1, 8, 8)),
    "resnet20_cln": (resnet20_cln, (1, 8, 8)),
}


def _prepare(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
        if isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model.eval().to(D)


# ---------------------------------------------------------------------------- auto_LiRPA side


def _auto_lirpa():
    try:
        import auto_LiRPA  # noqa: F401
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
        from auto_LiRPA.operators.activations import BoundHardTanh
        from auto_LiRPA.operators.gelu import GELU, BoundGelu
    except Exception as e:  # noqa: BLE001 - any import failure means: not available here
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def hardtanh_forward(self, x, min_val=None, max_val=None):  # ONNX Clip attributes -> arguments
        lo = self.attr.get("min", -1.0) if min_val is None else min_val
        hi = self.attr.get("max", 1.0) if max_val is None else max_val
        return F.hardtanh(x, float(lo), float(hi))

    def hardtanh_interval(self, *v):  # monotone: its ends (the rule auto_LiRPA applies to it)
        return self.forward(v[0][0]), self.forward(v[0][1])

    BoundHardTanh.forward = hardtanh_forward
    BoundHardTanh.interval_propagate = hardtanh_interval
    return dict(
        BoundedModule=BoundedModule, BoundedTensor=BoundedTensor, PerturbationLpNorm=PerturbationLpNorm,
        GELU=GELU, BoundGelu=BoundGelu,
    ), ""  # fmt: skip


def _swap_gelu(model: nn.Module, gelu_cls) -> nn.Module:
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(m, cname, gelu_cls())
    return model


def _exact_gelu_interval(self, *v):
    """The exact GELU interval rule (the one nnvitals uses), for the ``same GELU rule`` comparison."""
    lo, hi = v[0]
    flo, fhi = F.gelu(lo), F.gelu(hi)
    xmin = -0.7517915246935  # GELU's minimiser
    fmin = F.gelu(torch.tensor(xmin, dtype=lo.dtype))
    inside = (lo <= xmin) & (hi >= xmin)
    return torch.where(inside, fmin, torch.minimum(flo, fhi)), torch.maximum(flo, fhi)


def auto_lirpa_boxes(alp, model, x, lo, hi) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``[(clean value, lower, upper)]`` of every auto_LiRPA node with an interval."""
    bm = alp["BoundedModule"](
        _swap_gelu(model, alp["GELU"]), torch.zeros_like(x), device="cpu", verbose=False
    )
    ptb = alp["PerturbationLpNorm"](norm=math.inf, x_L=lo, x_U=hi)
    bx = alp["BoundedTensor"](x, ptb)
    bm.compute_bounds(x=(bx,), method="IBP")
    boxes = {}
    for n in bm.nodes():
        box = getattr(n, "interval", None)
        if box is not None and isinstance(box[0], torch.Tensor):
            boxes[n.name] = (box[0].detach(), box[1].detach())
    bm.forward(x)  # clean values at the centre (compute_bounds does not keep them)
    out = []
    for n in bm.nodes():
        fv = getattr(n, "forward_value", None)
        if isinstance(fv, torch.Tensor) and n.name in boxes:
            out.append((fv.detach(), *boxes[n.name]))
    return out


# ---------------------------------------------------------------------------- comparison


def compare(alp, name: str, eps: float, same_gelu: bool, tol: float) -> tuple[float, int, int, bool]:
    """``(max relative difference, matched steps, steps, ours inside theirs everywhere)``."""
    make, shape = MODELS[name]
    model = _prepare(make())
    gen = torch.Generator().manual_seed(3)
    x = torch.rand((4,) + shape, generator=gen, dtype=D)
    lo, hi = x - eps, x + eps
    g = trace(model, x)
    ours = interval_bounds(g, lo, hi)
    clean = g.forward_all(x)
    saved = alp["BoundGelu"].interval_propagate
    if same_gelu:
        alp["BoundGelu"].interval_propagate = _exact_gelu_interval
    try:
        theirs = auto_lirpa_boxes(alp, model, x, lo, hi)
    finally:
        alp["BoundGelu"].interval_propagate = saved
    worst, matched, inside = 0.0, 0, True
    broken = None  # the first node where auto_LiRPA's box misses the clean value (its rule under/overflowed)
    for s in g.steps:
        v = clean[s.name]
        olo, ohi = ours[s.name]
        best = None
        for fv, tlo, thi in theirs:
            if fv.shape != v.shape or not torch.allclose(fv, v, atol=1e-10, rtol=1e-10):
                continue
            scale = float(torch.maximum(tlo.abs().max(), thi.abs().max()).clamp_min(1e-12))
            if broken is None and not bool(((tlo <= v + 1e-9 * scale) & (v <= thi + 1e-9 * scale)).all()):
                broken = s.label
            rel = float(torch.maximum((olo - tlo).abs().max(), (ohi - thi).abs().max())) / scale
            ok = bool((olo >= tlo - 1e-9 * scale).all() and (ohi <= thi + 1e-9 * scale).all())
            if best is None or rel < best[0]:
                best = (rel, ok)
        if best is None:
            print(
                f"  {name:16s} eps={eps:<5g} {s.kind:12s} {s.label:28s} (no auto_LiRPA node with this value)"
            )
            continue
        matched += 1
        if broken is not None and best[0] > tol:
            # from there on auto_LiRPA's boxes are not bounds (they miss the clean value): not compared
            print(
                f"  {name:16s} eps={eps:<5g} {s.kind:12s} {s.label:28s} rel diff {best[0]:.2e}  (auto_LiRPA's "
                f"box at {broken} misses the clean value: not a bound there, not compared)"
            )
            continue
        worst = max(worst, best[0])
        inside &= best[1]
        flag = "" if best[0] <= tol else ("  (ours inside)" if best[1] else "  (NOT inside)")
        print(f"  {name:16s} eps={eps:<5g} {s.kind:12s} {s.label:28s} rel diff {best[0]:.2e}{flag}")
    if broken is not None:
        print(f"  {name}: auto_LiRPA's box at {broken} misses the clean value (ours holds it)")
    return worst, matched, len(g.steps), inside


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.1])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    alp, why = _auto_lirpa()
    if alp is None:
        print(f"compare_autolirpa: skipped (auto_LiRPA is not importable: {why})")
        return 0
    torch.set_default_dtype(D)  # auto_LiRPA computes some bounds in the default type
    rc = 0
    for same_gelu in (False, True):
        print(f"== {'same GELU rule' if same_gelu else 'as is'}")
        for name in MODELS:
            for eps in args.eps:
                worst, matched, total, inside = compare(alp, name, eps, same_gelu, args.tol)
                print(
                    f"{name} eps={eps:g}: {matched}/{total} steps matched, max relative difference {worst:.3e}, "
                    f"ours inside auto_LiRPA's boxes: {inside}"
                )
                if not inside or (same_gelu and worst > args.tol):
                    rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

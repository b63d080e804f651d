"""Float32 IBP that overflows gives sound unbounded boxes, never NaN (issue 13).

Interval radii through deep normed networks grow by orders of magnitude per block; in float32 they
reach ``inf`` and then ``inf - inf = NaN``. Every step maps a unit whose centre or radius is not finite
to ``(0, inf)`` (:func:`analyses.bounds.ibp.finite_box`): the box is the whole line, which holds every
value, and later steps see no NaN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analyses.bounds import ibp as I
from analyses.bounds.graph import trace


def _deep_ln_mlp(depth: int = 20, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(16 if i == 0 else width, width), nn.LayerNorm(width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 3)).eval()


class _Overflow(nn.Module):
    """A crafted overflow: a huge first layer (radii beyond float32's range) and a second layer with zero
    weights (0 * inf = NaN in |W| r)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)
        with torch.no_grad():
            self.a.weight.fill_(2e38)
            self.a.bias.zero_()
            self.b.weight.copy_(
                torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]])
            )

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _points(x, eps, lo, hi, n=16):
    gen = torch.Generator().manual_seed(1)
    c, r = I.input_box(x, eps, lo, hi)
    u = torch.rand((n, *x.shape), generator=gen, dtype=x.dtype) * 2 - 1
    return torch.cat([x.unsqueeze(0), c + u * r])  # the clean points and random points of the box


@pytest.mark.parametrize("make,eps", [(_deep_ln_mlp, 1.0), (_Overflow, 0.5)])
def test_overflowing_float32_boxes_are_unbounded_not_nan_and_hold_the_values(make, eps):
    model = make()
    x = torch.rand(4, 16) if make is _deep_ln_mlp else 0.25 * torch.rand(4, 4)  # a finite forward pass
    y = torch.tensor([0, 1, 2, 0])
    lo, hi = -10.0, 10.0
    g = trace(model, x)
    c0, r0 = I.input_box(x, eps, lo, hi)
    boxes = I.interval_bounds(g, c0 - r0, c0 + r0)
    overflowed = 0
    for name, (bl, bu) in boxes.items():
        assert not bool(torch.isnan(bl).any() or torch.isnan(bu).any()), name
        assert bool((bl <= bu).all()), name
        overflowed += int(torch.isinf(bu).sum())
    assert overflowed > 0  # the model really overflows float32
    out_lo, out_hi = boxes[g.output_name]
    with torch.no_grad():
        for p in _points(x, eps, lo, hi):
            v = model(p)  # a point whose own forward pass overflows to NaN has no value to hold
            assert bool(((out_lo <= v) & (v <= out_hi) | torch.isnan(v)).all())
            # and every intermediate node holds its value
            env = {g.input_name: p}
            for s in g.steps:
                from analyses.bounds.graph import apply

                env[s.name] = apply(s, [env[i] for i in s.inputs])
                bl, bu = boxes[s.name]
                # boxes are kept as (centre, radius): in float32, c -+ r rounds at the scale of the
                # larger end (|c| + r), so the ends hold the values up to that round-off
                slack = 4 * torch.finfo(bl.dtype).eps * torch.maximum(bl.abs(), bu.abs())
                v = env[s.name]
                assert bool(((bl - slack <= v) & (v <= bu + slack) | torch.isnan(v)).all()), s.name
    rec = I.propagate(g, x, y, eps, lo, hi, tightness=False)
    for name, sr in rec.steps.items():
        assert not math.isnan(sr.width_sum), name
    assert not bool(torch.isnan(rec.min_margin).any())
    assert not bool(rec.certified.any())  # an unbounded margin certifies nothing
    assert bool(torch.equal(rec.correct, model(x).argmax(1) == y))
    # with tightness too (the tangents are finite: they do not see the boxes)
    rt = I.propagate(g, x, y, eps, lo, hi, tightness=True)
    assert not bool(torch.isnan(rt.min_margin).any())


def test_finite_boxes_are_untouched():
    c = torch.tensor([1.0, -2.0, 3.0])
    r = torch.tensor([0.5, 0.0, 2.0])
    cc, rr = I.finite_box(c, r)
    assert cc is c and rr is r
    c2 = torch.tensor([1.0, float("nan"), float("inf"), 3e38])
    r2 = torch.tensor([float("inf"), 1.0, 0.0, 3e38])  # the last unit is finite (its sum overflows)
    cc, rr = I.finite_box(c2, r2)
    assert cc.tolist() == [0.0, 0.0, 0.0, pytest.approx(3e38)]
    assert rr[:3].tolist() == [math.inf] * 3 and rr[3] == pytest.approx(3e38)

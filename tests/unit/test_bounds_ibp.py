"""IBP kernels against the closed forms of the reference sheet (section 3) and brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.graph import trace
from analyses.bounds.ibp import (
    chain_tightness,
    gaussian_init_tightness,
    input_box,
    interval_bounds,
    margin_matrix,
    propagate,
    tightness_at_init,
)

D = torch.float64


def _chain_model(*weights: torch.Tensor, relu: bool = False) -> nn.Module:
    layers = []
    for i, w in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
        if relu and i < len(weights) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


def _out_tightness(model, x, eps=0.1, spec="identity", relu="local"):
    g = trace(model, x[:2])
    y = torch.zeros(x.shape[0], dtype=torch.long)
    return propagate(g, x, y, eps, -10.0, 10.0, relu=relu, spec=spec).out_tightness


def test_closed_forms():
    x = torch.rand(4, 2, dtype=D)
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=D)
    # single affine layer: IBP is exact
    assert torch.allclose(_out_tightness(_chain_model(torch.randn(3, 2, dtype=D)), x), torch.ones(4, dtype=D))
    # H H = 2 I: tau = 0.5
    assert torch.allclose(_out_tightness(_chain_model(h, h), x), torch.full((4,), 0.5, dtype=D))
    assert torch.allclose(chain_tightness([h, h]), torch.full((2,), 0.5, dtype=D))
    # [1, 1] . [1; -1] = 0: tau = 0
    a, b = torch.tensor([[1.0], [-1.0]], dtype=D), torch.tensor([[1.0, 1.0]], dtype=D)
    assert torch.allclose(
        _out_tightness(_chain_model(a, b), torch.rand(3, 1, dtype=D)), torch.zeros(3, dtype=D)
    )
    # chains of non-negative and of diagonal matrices: tau = 1
    pos = [torch.rand(5, 2, dtype=D), torch.rand(4, 5, dtype=D), torch.rand(3, 4, dtype=D)]
    assert torch.allclose(_out_tightness(_chain_model(*pos), x), torch.ones(4, dtype=D))
    diag = [torch.diag(torch.randn(2, dtype=D)) for _ in range(3)]
    assert torch.allclose(chain_tightness(diag), torch.ones(2, dtype=D))


def test_gaussian_init_formula_and_relu_factor():
    torch.manual_seed(0)
    for hidden in ([300], [200, 200]):
        dims = [100, *hidden, 10]
        ws = [torch.randn(o, i, dtype=D) * (2 / i) ** 0.5 for i, o in zip(dims[:-1], dims[1:])]
        lin = float(chain_tightness(ws).mean())
        assert lin == pytest.approx(gaussian_init_tightness(hidden), rel=0.1)
        loc = float(chain_tightness(ws, x=torch.rand(64, 100, dtype=D)).nanmean())
        assert loc / lin == pytest.approx(math.sqrt(2) ** len(hidden), rel=0.15)
    rows = tightness_at_init([16, 256], [2, 4], samples=8)
    t = {(r["width"], r["depth"]): r["tightness_linear"] for r in rows}
    assert t[(256, 2)] < t[(16, 2)] and t[(16, 4)] < t[(16, 2)]  # falls with width and with depth


def test_graph_local_tightness_equals_matrix_chain():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 15), nn.ReLU(), nn.Linear(15, 4)
    ).double()
    x = torch.rand(9, 6, dtype=D)
    ws = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    bs = [m.bias.detach() for m in model if isinstance(m, nn.Linear)]
    ref = chain_tightness(ws, 0.1, x=x, biases=bs)
    got = _out_tightness(model, x, eps=0.1)
    torch.testing.assert_close(got, ref.nanmean(1))
    # deep-linear counterpart: ReLUs dropped
    got_lin = _out_tightness(model, x, eps=0.1, relu="linear")
    torch.testing.assert_close(got_lin, chain_tightness(ws, 0.1).mean().expand(9))


def test_margin_spec_folds_into_last_layer():
    w1 = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]], dtype=D)
    w2 = torch.tensor([[1.0, -1.0, 2.0], [2.0, 1.0, -1.0], [0.0, 1.0, 1.0]], dtype=D)
    model = _chain_model(w1, w2)
    x = torch.rand(3, 2, dtype=D)
    y = torch.tensor([0, 2, 1])
    g = trace(model, x[:2])
    eps = 0.1
    got = propagate(g, x, y, eps, -10, 10, spec="margin").out_tightness
    cm = margin_matrix(y, 3, D)
    for b in range(3):
        num = (cm[b] @ w2 @ w1).abs().sum(1) * eps
        den = (cm[b] @ w2).abs() @ w1.abs() @ torch.full((2,), eps, dtype=D)  # |C W2| |W1|, not |C||W2||W1|
        assert float(got[b]) == pytest.approx(float((num / den).mean()))


def test_input_box_clips_to_range():
    c, r = input_box(torch.tensor([0.0, 0.05, 0.5, 1.0]), 0.1, 0.0, 1.0)
    torch.testing.assert_close(r, torch.tensor([0.05, 0.075, 0.1, 0.05]))
    torch.testing.assert_close(c, torch.tensor([0.05, 0.075, 0.5, 0.95]))


class ResCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.b2 = nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(h + self.b2(self.c2(h)))
        h = torch.cat([h, F.leaky_relu(self.c3(h), 0.2)], 1)
        h = F.max_pool2d(h, 3, stride=2, padding=1) + F.avg_pool2d(h, 2)
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module")
def rescnn():
    torch.manual_seed(3)
    model = ResCNN().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
    model.eval()
    return model, trace(model, torch.rand(2, 1, 8, 8, dtype=D))


def test_ibp_box_contains_sampled_outputs(rescnn):
    """Brute force: random points and corners of the box stay inside every step's IBP box."""
    model, g = rescnn
    x0 = torch.rand(1, 1, 8, 8, dtype=D)
    c, r = input_box(x0, 0.05, 0.0, 1.0)
    bounds = interval_bounds(g, c - r, c + r)
    pts = torch.cat([torch.rand(400, 1, 8, 8, dtype=D), torch.randint(0, 2, (400, 1, 8, 8)).to(D)])
    pts = (c - r) + 2 * r * pts
    with torch.no_grad():
        env = g.forward_all(pts)
        out = model(pts)
    for s in g.steps:
        lo, hi = bounds[s.name]
        assert (env[s.name] >= lo - 1e-9).all() and (env[s.name] <= hi + 1e-9).all(), s.name
    y = torch.zeros(1, dtype=torch.long)
    rec = propagate(g, x0, y, 0.05, 0.0, 1.0)
    margins = out[:, :1] - out[:, 1:]
    assert float(margins.min()) >= float(rec.min_margin[0]) - 1e-9


def test_local_numerator_matches_autograd_and_tightness_in_unit_interval(rescnn):
    """The propagated tangent is the autograd Jacobian (numerator |J| r0); every tau lies in [0, 1]."""
    model, g = rescnn
    x = torch.rand(2, 1, 8, 8, dtype=D) * 0.8 + 0.1
    eps = 0.03
    rec = propagate(g, x, torch.tensor([0, 1]), eps, 0.0, 1.0, spec="identity", keep_tangent=True)
    for name, sr in rec.steps.items():
        if sr.tight_count:
            assert 0.0 <= sr.tight_sum / sr.tight_count <= 1.0 + 1e-9, name
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[b]).reshape(5, -1)
        torch.testing.assert_close(rec.tangent[b].abs().sum(0), jac.abs().sum(1) * eps)
    one = propagate(g, x[:1], torch.tensor([0]), eps, 0.0, 1.0, spec="identity")
    assert float(one.out_tightness[0]) == pytest.approx(float(rec.out_tightness[0]))  # per-sample


def test_stability_fractions_and_certification():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.rand(10, 4, dtype=D)
    g = trace(model, x[:2])
    y = model(x).argmax(1)
    rec0 = propagate(g, x, y, 0.0)
    relu = rec0.steps[g.steps[1].name]
    assert relu.unstable == 0 and relu.active + relu.inactive == 80
    assert bool(rec0.certified.all())  # eps = 0: every correct sample is certified
    rec = propagate(g, x, y, 0.5)
    assert rec.steps[g.steps[1].name].unstable > 0
    assert int(rec.certified.sum()) <= int(rec.correct.sum())

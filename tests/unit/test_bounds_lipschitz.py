"""Lipschitz kernels against the closed forms of the reference sheet (section 4) and autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.graph import trace
from analyses.bounds.lipschitz import (
    autograd_operator_norm,
    conv_fft_norm,
    conv_operator_norm,
    jacobian_spectral_norms,
    layer_constant,
    maxpool_constant,
    sharpen,
    upper_bounds,
)

D = torch.float64


def _dense_norm(fn, in_shape) -> float:
    jac = torch.autograd.functional.jacobian(fn, torch.zeros((1, *in_shape), dtype=D), vectorize=True)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, math.prod(in_shape)), ord=2))


def test_all_ones_kernel_closed_forms():
    w = torch.ones(1, 1, 3, 3, dtype=D)
    for n in (5, 8):
        zero_same = (1 + 2 * math.cos(math.pi / (n + 1))) ** 2
        assert conv_operator_norm(w, (1, n, n), 1, 1, dtype=D) == pytest.approx(zero_same, rel=1e-6)
        assert conv_fft_norm(w, (n, n)) == pytest.approx(9.0, rel=1e-12)
    # through the graph: circular padding is folded into the conv and uses the exact FFT
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    step = trace(conv, torch.rand(2, 1, 8, 8, dtype=D)).steps[0]
    val, method = layer_constant(step)
    assert val == pytest.approx(9.0) and "FFT" in method
    # and the power iteration with the autograd adjoint agrees with the FFT on the same operator
    assert autograd_operator_norm(conv, (1, 8, 8), dtype=D) == pytest.approx(9.0, rel=1e-6)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (2, 0, 2, 1), (3, 2, 1, 4), (2, 1, 1, 1)]
)
def test_conv_power_iteration_vs_dense_operator(stride, padding, dilation, groups):
    torch.manual_seed(stride * 10 + groups)
    w = torch.randn(8, 8 // groups, 3, 3, dtype=D)
    fn = lambda v: F.conv2d(v, w, None, stride, padding, dilation, groups)  # noqa: E731
    got = conv_operator_norm(w, (8, 9, 9), stride, padding, dilation, groups, dtype=D)
    assert got == pytest.approx(_dense_norm(fn, (8, 9, 9)), rel=1e-6)
    # never the reshaped-kernel norm
    assert got != pytest.approx(float(torch.linalg.matrix_norm(w.reshape(8, -1), ord=2)), rel=1e-3)


def test_fft_vs_power_iteration_circular_grouped_dilated():
    torch.manual_seed(5)
    for groups, dil in ((1, 1), (2, 2)):
        conv = nn.Conv2d(
            4, 6, 3, padding=dil, dilation=dil, groups=groups, padding_mode="circular", bias=False
        )
        conv = conv.double()
        exact = conv_fft_norm(conv.weight.detach(), (7, 7), dil, groups)
        assert autograd_operator_norm(conv, (4, 7, 7), dtype=D) == pytest.approx(exact, rel=1e-6)
        assert _dense_norm(conv, (4, 7, 7)) == pytest.approx(exact, rel=1e-9)
    c1 = nn.Conv1d(3, 5, 3, padding=1, padding_mode="circular", bias=False).double()
    step = trace(c1, torch.rand(2, 3, 10, dtype=D)).steps[0]
    assert layer_constant(step)[0] == pytest.approx(_dense_norm(c1, (3, 10)), rel=1e-9)
    # circular with stride 2: power iteration with the autograd adjoint
    c2 = nn.Conv2d(2, 3, 3, padding=1, stride=2, padding_mode="circular", bias=False).double()
    step = trace(c2, torch.rand(2, 2, 7, 7, dtype=D)).steps[0]
    val, method = layer_constant(step)
    assert val == pytest.approx(_dense_norm(c2, (2, 7, 7)), rel=1e-6) and "autograd" in method


def test_pooling_and_batchnorm_constants():
    model = (
        nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)).double().eval()
    )
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([0.25, 1.0, 4.0], dtype=D))
        model[1].weight.copy_(torch.tensor([1.0, -3.0, 1.0], dtype=D))
    g = trace(model, torch.rand(2, 3, 8, 8, dtype=D))
    consts = {s.kind: layer_constant(s)[0] for s in g.steps}
    assert consts["batchnorm"] == pytest.approx(3.0 / math.sqrt(1.0 + 1e-5))  # max |gamma / sqrt(var + eps)|
    assert consts["avgpool"] == pytest.approx(0.5, rel=1e-6)  # 2x2 stride 2: 1/k
    aap = [s for s in g.steps if s.kind == "adaptive_avgpool"][0]
    assert consts["adaptive_avgpool"] == pytest.approx(
        _dense_norm(lambda v: F.adaptive_avg_pool2d(v, 3), aap.in_shape), rel=1e-6
    )
    p = dict(kernel=(2, 2), stride=(2, 2), dilation=(1, 1))
    assert maxpool_constant(p) == 1.0
    assert maxpool_constant(dict(p, kernel=(3, 3), stride=(1, 1))) == pytest.approx(3.0)
    assert maxpool_constant(dict(p, kernel=(3, 3), stride=(2, 2))) == pytest.approx(2.0)
    # the overlapping bound holds on random pairs
    x, y = torch.randn(200, 1, 6, 6), torch.randn(200, 1, 6, 6)
    ratio = (F.max_pool2d(x, 3, 1) - F.max_pool2d(y, 3, 1)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(
        dim=1
    )
    assert float(ratio.max()) <= 3.0


def test_abs_network_and_linear_network():
    # |x| = [1, 1] ReLU([1; -1] x): constant 1, product bound 2
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[2].weight.fill_(1.0)
    g = trace(model, torch.randn(2, 1, dtype=D))
    assert upper_bounds(g)[g.output_name][2] == pytest.approx(2.0)
    x = torch.tensor([[-2.0], [-0.3], [0.7], [5.0]], dtype=D)
    torch.testing.assert_close(jacobian_spectral_norms(g.forward, x), torch.ones(4, dtype=D))
    # linear network: every Jacobian norm is the true constant ||W3 W2 W1||; upper = product
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 5)).double()
    g = trace(lin, torch.randn(2, 6, dtype=D))
    prod = (lin[2].weight @ lin[1].weight @ lin[0].weight).detach()
    true = float(torch.linalg.matrix_norm(prod, ord=2))
    norms = jacobian_spectral_norms(g.forward, torch.randn(5, 6, dtype=D))
    torch.testing.assert_close(norms, torch.full((5,), true, dtype=D))
    up = upper_bounds(g)
    assert up[g.output_name][2] == pytest.approx(
        math.prod(float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in lin)
    )
    assert up[g.output_name][2] >= true
    assert up[g.steps[0].name][2] == pytest.approx(float(torch.linalg.matrix_norm(lin[0].weight.detach(), 2)))


class ResCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.b2 = nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(6 * 4 * 4, 80)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        r = h + self.b2(self.c2(h))  # residual block
        h = torch.cat([F.relu(r), F.leaky_relu(self.c3(r), 0.2)], 1)
        return self.fc(F.max_pool2d(h, 2).flatten(1))


@pytest.fixture(scope="module")
def rescnn():
    torch.manual_seed(4)
    model = ResCNN().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
    return model.eval(), trace(model.eval(), torch.rand(2, 1, 8, 8, dtype=D))


def test_jacobian_norms_vs_autograd_per_sample(rescnn):
    model, g = rescnn
    x = torch.rand(2, 1, 8, 8, dtype=D)
    ref = torch.stack(
        [
            torch.linalg.matrix_norm(
                torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi).reshape(80, -1), ord=2
            )
            for xi in x
        ]
    )
    exact = jacobian_spectral_norms(g.forward, x, exact_max=100)  # full Jacobian (80 outputs)
    power = jacobian_spectral_norms(
        g.forward, x, exact_max=0, iters=300, tol=1e-12
    )  # jvp / vjp power iteration
    torch.testing.assert_close(exact, ref)
    torch.testing.assert_close(power, ref, rtol=1e-5, atol=0)
    # an intermediate node (after the residual add)
    add = [s for s in g.steps if s.kind == "add"][0]
    mid = torch.stack(
        [
            torch.linalg.matrix_norm(
                torch.autograd.functional.jacobian(
                    lambda z: g.forward(z[None], upto=add.name)[0], xi
                ).reshape(-1, 64),
                ord=2,
            )
            for xi in x
        ]
    )
    got = jacobian_spectral_norms(lambda z: g.forward(z, upto=add.name), x, exact_max=0, iters=300, tol=1e-12)
    torch.testing.assert_close(got, mid, rtol=1e-5, atol=0)


def test_upper_bound_structure_and_dominates_lower(rescnn):
    model, g = rescnn
    up = upper_bounds(g)
    by = {s.name: s for s in g.steps}
    add = [s for s in g.steps if s.kind == "add"][0]
    skip, branch = add.inputs
    # residual block: U(h + f(h)) = U(h) (1 + L_f) with f = conv2 (+ folded b2)
    assert up[add.name][2] == pytest.approx(up[skip][2] * (1 + up[branch][0]))
    cat = [s for s in g.steps if s.kind == "cat"][0]
    assert up[cat.name][2] == pytest.approx(math.hypot(*(up[i][2] for i in cat.inputs)))
    assert by[branch].params.get("folded_bn")  # BN folded into the branch conv
    x = torch.rand(16, 1, 8, 8, dtype=D)
    for s in g.steps:
        norms = jacobian_spectral_norms(lambda z, n=s.name: g.forward(z, upto=n), x, exact_max=300)
        assert float(norms.max()) <= up[s.name][2] * (1 + 1e-6), s.name


def test_sharpen_never_lowers_the_bound(rescnn):
    _, g = rescnn
    x = torch.rand(3, 1, 8, 8, dtype=D)
    start = jacobian_spectral_norms(g.forward, x, iters=10)  # what sharpen starts from
    best, pts = sharpen(g, x, 0.0, 1.0, steps=2, iters=10)
    assert (best >= start - 1e-12).all()
    assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0
    torch.testing.assert_close(jacobian_spectral_norms(g.forward, pts, iters=10), best)  # true-network norms

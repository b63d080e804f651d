"""Bounds rules of the operators researchers' models use: IBP soundness and exactness, the
linearised network (tangents), Lipschitz constants against closed forms and numeric estimates,
Jacobian lower bounds through every operator, and both analyses end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.bounds.graph import trace
from analyses.bounds.ibp import interval_bounds, propagate
from analyses.bounds.lipschitz import jacobian_spectral_norms, layer_constant, network_bounds, upper_bounds
from analyses.core.errors import NNVitalsError
from analyses.core.graph import kind_rule, registered
from analyses.core.graph.ops import (
    GELU_SHAPE,
    GELU_TANH_SHAPE,
    HARDSWISH_SHAPE,
    SILU_SHAPE,
    Elementwise,
    min_variance,
)

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


class Fn(nn.Module):
    """``fn(x)`` as a module (one operator under test), optionally after a linear layer."""

    def __init__(self, fn, pre: nn.Module | None = None):
        super().__init__()
        self.fn, self.pre = fn, pre

    def forward(self, x):
        return self.fn(self.pre(x) if self.pre is not None else x)


class Two(nn.Module):
    """Two branches of the input combined by ``fn(a, b)`` (products of two tensors)."""

    def __init__(self, fn, n=6, m=6, shape_b=None):
        super().__init__()
        self.a, self.b, self.fn, self.shape_b = nn.Linear(n, m), nn.Linear(n, m), fn, shape_b

    def forward(self, x):
        b = self.b(x)
        if self.shape_b is not None:
            b = b.mean(-1, keepdim=True)
        return self.fn(self.a(x), b)


def _points(lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points per sample in the box: uniform ones, and corners (where extremes of monotone and
    product rules lie)."""
    u = torch.rand((n,) + lo.shape, generator=gen, dtype=lo.dtype)
    corners = (torch.rand((n,) + lo.shape, generator=gen) < 0.5).to(lo.dtype)
    u = torch.cat([u, corners])
    return lo + u * (hi - lo)


def _assert_sound(model: nn.Module, x: torch.Tensor, eps: float, trials: int = 300, seed: int = 0):
    """Random points inside the input box stay inside every step's IBP box (evaluated by the graph
    and, at the output, by the model itself)."""
    g = trace(model, x)
    lo, hi = x - eps, x + eps
    boxes = interval_bounds(g, lo, hi)
    gen = torch.Generator().manual_seed(seed)
    pts = _points(lo, hi, trials, gen)  # (2 trials, B, ...)
    flat = pts.reshape((-1,) + tuple(x.shape[1:]))
    with torch.no_grad():
        env = g.forward_all(flat)
        ref = model(flat)
    torch.testing.assert_close(env[g.output_name], ref, atol=1e-9, rtol=1e-9)
    for s in g.steps:
        blo, bhi = boxes[s.name]
        v = env[s.name].reshape((pts.shape[0],) + tuple(blo.shape))
        tol = 1e-9 * (1 + v.abs())
        assert bool((v >= blo - tol).all() and (v <= bhi + tol).all()), f"{s.kind} {s.name} leaves its box"
    return g, boxes


def _assert_exact_at_points(model: nn.Module, x: torch.Tensor):
    """A degenerate box (``lo = hi``) gives the point's own value at every step."""
    g = trace(model, x)
    boxes = interval_bounds(g, x, x)
    env = g.forward_all(x)
    for s in g.steps:
        blo, bhi = boxes[s.name]
        torch.testing.assert_close(blo, env[s.name], atol=1e-12, rtol=1e-12, msg=s.kind)
        torch.testing.assert_close(bhi, env[s.name], atol=1e-12, rtol=1e-12, msg=s.kind)


# ---------------------------------------------------------------------------- operators, one by one


def _lin(n=6, m=6):
    torch.manual_seed(0)
    return nn.Linear(n, m)


UNARY = {
    "gelu": (lambda: Fn(F.gelu, _lin()), "gelu"),
    "gelu_tanh": (lambda: Fn(lambda h: F.gelu(h, approximate="tanh"), _lin()), "gelu"),
    "silu": (lambda: Fn(F.silu, _lin()), "silu"),
    "tanh": (lambda: Fn(torch.tanh, _lin()), "tanh"),
    "sigmoid": (lambda: Fn(torch.sigmoid, _lin()), "sigmoid"),
    "hardtanh": (lambda: Fn(lambda h: F.hardtanh(h, -0.5, 0.7), _lin()), "hardtanh"),
    "relu6": (lambda: Fn(lambda h: F.relu6(4 * h), _lin()), "hardtanh"),
    "clamp": (lambda: Fn(lambda h: h.clamp(min=-0.2), _lin()), "hardtanh"),
    "hardswish": (lambda: Fn(lambda h: F.hardswish(3 * h), _lin()), "hardswish"),
    "layernorm": (lambda: Fn(nn.LayerNorm(6), _lin()), "layernorm"),
    "layernorm_plain": (lambda: Fn(nn.LayerNorm(6, elementwise_affine=False), _lin()), "layernorm"),
    "rmsnorm": (lambda: Fn(nn.RMSNorm(6, eps=1e-6), _lin()), "rmsnorm"),
    "batchnorm1d": (lambda: Fn(nn.BatchNorm1d(6)), "batchnorm"),
    "dropout": (lambda: Fn(nn.Dropout(0.3), _lin()), "linear"),
    "mean": (lambda: Fn(lambda h: h.reshape(-1, 2, 3).mean(-1), _lin()), "mean"),
    "sum": (lambda: Fn(lambda h: h.reshape(-1, 2, 3).sum(1), _lin()), "sum"),
    "square": (lambda: Fn(lambda h: h * h, _lin()), "mul"),
    "rsub": (lambda: Fn(lambda h: 1 - h, _lin()), "rsub"),
    "const_scale": (lambda: Fn(lambda h: h * torch.arange(-3.0, 3.0), _lin()), "scale"),
    "squeeze": (lambda: Fn(lambda h: h.unsqueeze(1).squeeze(), _lin()), "reshape"),
}

BINARY = {
    "mul": (lambda: Two(torch.mul), "mul"),
    "mul_broadcast": (lambda: Two(torch.mul, shape_b=True), "mul"),
    "add_broadcast": (lambda: Two(torch.add, shape_b=True), "add"),
    "sub": (lambda: Two(torch.sub), "add"),
    "div": (lambda: Two(lambda a, b: a / (b * b + 0.5)), "div"),
}


def _prepare(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-2, 2)
        if isinstance(m, nn.LayerNorm | nn.RMSNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.uniform_(-2, 2)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-1, 1)
    return model.eval().double()


@pytest.mark.parametrize("name", list(UNARY) + list(BINARY))
def test_ibp_is_sound_and_exact_at_points(name):
    make, kind = {**UNARY, **BINARY}[name]
    torch.manual_seed(1)
    model = _prepare(make())
    x = torch.randn(4, 6, dtype=D)
    for eps in (1e-3, 0.1, 1.0):
        g, _ = _assert_sound(model, x, eps)
    assert kind in {s.kind for s in g.steps}, [s.kind for s in g.steps]
    _assert_exact_at_points(model, x)


def test_unimodal_lower_end_is_the_minimum_only_when_the_box_holds_the_minimiser():
    for fn, sh, approx in (
        (F.gelu, GELU_SHAPE, "none"),
        (lambda v: F.gelu(v, approximate="tanh"), GELU_TANH_SHAPE, "tanh"),
        (F.silu, SILU_SHAPE, None),
        (F.hardswish, HARDSWISH_SHAPE, None),
    ):
        kind = "gelu" if approx else ("silu" if sh is SILU_SHAPE else "hardswish")
        rule = kind_rule(kind)
        from analyses.core.graph import Step

        step = Step("s", kind, ("x",), params={"approximate": approx} if approx else {})
        grid = torch.linspace(-6, 6, 200001, dtype=D)
        vals = fn(grid)
        assert sh.fmin == pytest.approx(float(vals.min()), abs=1e-9)
        assert sh.xmin == pytest.approx(float(grid[vals.argmin()]), abs=1e-4)
        lo = torch.tensor([-3.0, -1.0, sh.xmin + 0.1, -6.0], dtype=D)
        hi = torch.tensor([3.0, -0.2, 2.0, sh.xmin - 0.1], dtype=D)
        c, r = rule.ibp(step, [((lo + hi) / 2, (hi - lo) / 2)])
        blo, bhi = c - r, c + r
        for i in range(4):  # exact: the box's image on a fine grid
            pts = torch.linspace(float(lo[i]), float(hi[i]), 20001, dtype=D)
            img = fn(pts)
            assert float(blo[i]) == pytest.approx(float(img.min()), abs=1e-7)
            assert float(bhi[i]) == pytest.approx(float(img.max()), abs=1e-7)


def test_layer_norm_ibp_follows_the_decomposition_auto_lirpa_bounds():
    """mean -> sub -> square -> mean -> +eps -> sqrt -> reciprocal -> mul -> affine, each step by
    interval arithmetic (auto_LiRPA's IBP of its LayerNorm), written out here by hand."""
    torch.manual_seed(3)
    ln = _prepare(Fn(nn.LayerNorm(5, eps=1e-3)))
    x = torch.randn(3, 5, dtype=D)
    eps = 0.3
    g = trace(ln, x)
    blo, bhi = interval_bounds(g, x - eps, x + eps)[g.output_name]
    lo, hi = x - eps, x + eps
    mlo, mhi = lo.mean(-1, keepdim=True), hi.mean(-1, keepdim=True)
    dlo, dhi = lo - mhi, hi - mlo
    corners = torch.stack([dlo * dlo, dhi * dhi])
    sq_hi = corners.max(0).values
    sq_lo = torch.where((dlo < 0) & (dhi > 0), torch.zeros_like(dlo), corners.min(0).values)
    inv_lo = 1 / torch.sqrt(sq_hi.mean(-1, keepdim=True) + 1e-3)
    inv_hi = 1 / torch.sqrt(sq_lo.mean(-1, keepdim=True) + 1e-3)
    prods = torch.stack([dlo * inv_lo, dlo * inv_hi, dhi * inv_lo, dhi * inv_hi])
    nlo, nhi = prods.min(0).values, prods.max(0).values
    w, b = ln.fn.weight.detach(), ln.fn.bias.detach()
    want_lo = torch.where(w >= 0, nlo * w, nhi * w) + b
    want_hi = torch.where(w >= 0, nhi * w, nlo * w) + b
    torch.testing.assert_close(blo, want_lo)
    torch.testing.assert_close(bhi, want_hi)


def test_division_by_an_interval_holding_zero_is_refused_in_one_line():
    model = _prepare(Two(torch.div))
    x = torch.randn(4, 6, dtype=D)
    g = trace(model, x)
    with pytest.raises(NNVitalsError, match=r"^IBP: the divisor of step 'div' .* can be 0 on the input box"):
        interval_bounds(g, x - 100.0, x + 100.0)
    rows = network_bounds(g, x=x, eps=100.0)  # the local bounds say why they are missing
    assert all("divisor" in r["local_method"] and math.isnan(r["local_upper"]) for r in rows.values())


# ---------------------------------------------------------------------------- conv-like operators


class MobileBlock(nn.Module):
    """MobileNetV2's inverted residual: expand 1x1, depthwise 3x3, project 1x1, BN + ReLU6."""

    def __init__(self, c=4, t=2):
        super().__init__()
        h = c * t
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Decoder(nn.Module):
    """Transposed convolutions, interpolation, padding, hardswish and a spatial sum."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(1, 2, 3, stride=2, padding=1, output_padding=1)
        self.up1 = nn.ConvTranspose1d(2, 2, 2, stride=2)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        z = F.hardswish(self.bn(self.up(x)))
        z = F.interpolate(z, scale_factor=2, mode="nearest")
        z = F.interpolate(z, size=(5, 7), mode="bilinear", align_corners=False)
        z = F.pad(z, (1, 0, 2, 1))
        w = self.up1(z.mean(2))  # (N, 2, 16)
        return torch.cat([z.sum(dim=(2, 3)), w.flatten(1)], 1)


@pytest.mark.parametrize("make", [MobileBlock, Decoder])
def test_conv_like_models_are_sound_exact_and_match_the_module(make):
    torch.manual_seed(2)
    model = _prepare(make())
    x = torch.rand(2, 1, 4, 4, dtype=D)
    g, _ = _assert_sound(model, x, 0.05, trials=100)
    _assert_exact_at_points(model, x)
    kinds = {s.kind for s in g.steps}
    want = (
        {"hardtanh", "add"}
        if make is MobileBlock
        else {"conv_transpose", "upsample", "pad", "sum", "hardswish"}
    )
    assert want <= kinds, kinds


# ---------------------------------------------------------------------------- the linearised network


@pytest.mark.parametrize(
    "name", ["gelu", "layernorm", "rmsnorm", "square", "hardswish", "mul", "mul_broadcast", "div"]
)
def test_tangents_are_the_jacobian_and_its_absolute_value(name):
    """``J t`` and ``|J| r`` of every non-affine rule against dense per-sample Jacobians."""
    make, _ = {**UNARY, **BINARY}[name]
    torch.manual_seed(4)
    model = _prepare(make())
    x = torch.randn(3, 6, dtype=D)
    g = trace(model, x)
    env = g.forward_all(x)
    s = next(st for st in g.steps if not kind_rule(st.kind).affine)
    rule = kind_rule(s.kind)
    xs = [env[i] for i in s.inputs]
    uniq = list(dict.fromkeys(s.inputs))
    jac = [
        torch.autograd.functional.jacobian(
            lambda *a: rule.forward(s, [a[uniq.index(i)] for i in s.inputs]).sum(0),
            tuple(env[i] for i in uniq),
        )  # fmt: skip
    ][0]
    # jac[k]: (*out, B, *in_k); per sample: (out, in_k)
    ts = [torch.randn((3, 5) + tuple(v.shape[1:]), dtype=D) for v in xs]
    rs = [torch.rand(v.shape, dtype=D) for v in xs]
    t_by = {i: ts[k] for k, i in enumerate(s.inputs)}
    r_by = {i: rs[k] for k, i in enumerate(s.inputs)}
    if len(uniq) < len(s.inputs):  # x * x: one source, one tangent
        ts, rs = [t_by[uniq[0]]] * 2, [r_by[uniq[0]]] * 2
    got_t = rule.tangent(s, xs, ts)
    got_r = rule.tangent_radius(s, xs, rs)
    out_n = math.prod(env[s.name].shape[1:])
    want_t = 0
    want_r = 0
    for k, i in enumerate(uniq):
        j = jac[k] if isinstance(jac, tuple) else jac
        n_in = math.prod(env[i].shape[1:])
        j = j.reshape(out_n, 3, n_in).permute(1, 0, 2)  # (B, out, in): the batch was summed
        want_t = want_t + torch.einsum("boi,bdi->bdo", j, t_by[i].reshape(3, 5, n_in))
        want_r = want_r + torch.einsum("boi,bi->bo", j.abs(), r_by[i].reshape(3, n_in))
    torch.testing.assert_close(got_t.reshape(3, 5, out_n), want_t)
    torch.testing.assert_close(got_r.reshape(3, out_n), want_r)


def test_layer_norm_radius_by_prefix_sums_on_a_wide_layer():
    torch.manual_seed(5)
    rule = kind_rule("layernorm")
    model = _prepare(Fn(nn.LayerNorm((3, 40))))
    x = torch.randn(2, 3, 40, dtype=D)
    s = trace(model, x).steps[0]
    r = torch.rand_like(x)
    jac = torch.autograd.functional.jacobian(lambda a: rule.forward(s, [a]).sum(0), x).reshape(120, 2, 120)
    want = torch.einsum("obi,bi->bo", jac.abs(), r.reshape(2, 120)).reshape(x.shape)
    torch.testing.assert_close(rule.tangent_radius(s, [x], [r]), want)


def test_tightness_runs_through_every_operator():
    torch.manual_seed(6)
    model = _prepare(
        nn.Sequential(
            nn.Linear(6, 8),
            nn.LayerNorm(8),
            nn.GELU(),
            nn.Linear(8, 8),
            nn.SiLU(),
            nn.RMSNorm(8),
            nn.Hardswish(),
            nn.Linear(8, 8),
            nn.Tanh(),
            nn.Linear(8, 3),
        )  # fmt: skip
    )
    x = torch.randn(5, 6, dtype=D)
    g = trace(model, x)
    rec = propagate(g, x, torch.zeros(5, dtype=torch.long), 0.01, -10.0, 10.0)
    t = rec.out_tightness
    assert bool(((t > 0) & (t <= 1 + 1e-9)).all()), t
    for name, r in rec.steps.items():
        assert r.tight_count > 0 and 0 < r.tight_sum / r.tight_count <= 1 + 1e-9, name
    lin = propagate(g, x, torch.zeros(5, dtype=torch.long), 0.01, -10.0, 10.0, relu="linear").out_tightness
    assert bool(torch.isfinite(lin).all())


# ---------------------------------------------------------------------------- Lipschitz constants


def _max_slope(fn, lo=-8.0, hi=8.0, n=400001) -> float:
    x = torch.linspace(lo, hi, n, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return float(g.abs().max())


@pytest.mark.parametrize(
    "kind, params, fn, closed",
    [
        ("gelu", {"approximate": "none"}, F.gelu,
         0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1) / math.sqrt(2 * math.pi)),
        ("gelu", {"approximate": "tanh"}, lambda v: F.gelu(v, approximate="tanh"), None),
        ("silu", {}, F.silu, None),
        ("hardswish", {}, F.hardswish, 1.5),
        ("tanh", {}, torch.tanh, 1.0),
        ("sigmoid", {}, torch.sigmoid, 0.25),
        ("hardtanh", {"lo": -1.0, "hi": 1.0}, F.hardtanh, 1.0),
    ],
)  # fmt: skip
def test_activation_constants_match_closed_forms_and_the_largest_slope(kind, params, fn, closed):
    from analyses.core.graph import Step

    val, method = layer_constant(Step("s", kind, ("x",), params=params))
    numeric = _max_slope(fn)
    assert val >= numeric - 1e-9 and val == pytest.approx(numeric, abs=2e-4), method
    if closed is not None:
        assert val == pytest.approx(closed, abs=1e-9)
    if kind == "gelu" and params["approximate"] == "none":
        assert val == pytest.approx(1.1289, abs=1e-4)
    if kind == "silu":
        assert val == pytest.approx(1.0998, abs=1e-4)


def test_norm_constants_global_and_local():
    torch.manual_seed(7)
    model = _prepare(
        nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6, eps=1e-5), nn.Linear(6, 6), nn.RMSNorm(6, eps=1e-6))
    )
    x = torch.randn(8, 6, dtype=D)
    g = trace(model, x)
    rows = network_bounds(g, x=x, eps=0.05)
    ln, rms = (next(s for s in g.steps if s.kind == k) for k in ("layernorm", "rmsnorm"))
    gamma = float(model[1].weight.detach().abs().max())
    assert rows[ln.name]["constant"] == pytest.approx(gamma / math.sqrt(1e-5))
    assert "global but loose" in rows[ln.name]["method"]
    assert rows[rms.name]["constant"] == pytest.approx(
        float(model[3].weight.detach().abs().max()) / math.sqrt(1e-6)
    )
    # local bounds are far below the global ones and above every Jacobian norm inside the boxes
    assert rows[ln.name]["local_constant"] < rows[ln.name]["constant"] / 10
    gen = torch.Generator().manual_seed(0)
    pts = _points(x - 0.05, x + 0.05, 20, gen).reshape(-1, 6)
    for s in (ln, rms):
        fn = lambda z, n=s.name: g.forward(z, upto=n)  # noqa: E731
        sub = lambda z, s=s: kind_rule(s.kind).forward(s, [z])  # noqa: E731
        inner = g.forward(pts, upto=s.inputs[0])
        assert float(jacobian_spectral_norms(sub, inner).max()) <= rows[s.name]["local_constant"] + 1e-9
        assert float(jacobian_spectral_norms(fn, pts).max()) <= rows[s.name]["local_upper"] + 1e-9
    assert rows[g.output_name]["local_upper"] <= rows[g.output_name]["upper"]


def test_min_variance_is_the_least_variance_over_the_box():
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(50, 5, generator=gen, dtype=D)
    hi = lo + torch.rand(50, 5, generator=gen, dtype=D) * 2
    got = min_variance(lo, hi, (1,)).squeeze(1)
    pts = lo + torch.rand(20000, 50, 5, generator=gen, dtype=D) * (hi - lo)
    assert bool((got <= pts.var(-1, unbiased=False).min(0).values + 1e-12).all())  # a lower bound
    # attained: n var(x) = min_c sum (x_i - c)^2, minimised over the box by x = clip(c, lo, hi) for the
    # best c (a dense grid here); that point's variance is the minimum
    cs = torch.linspace(-5, 5, 200001, dtype=D)
    x = torch.minimum(torch.maximum(cs[:, None, None], lo), hi)  # (grid, 50, 5)
    best = x.var(-1, unbiased=False).min(0).values
    torch.testing.assert_close(got, best, atol=1e-8, rtol=1e-6)
    nested = (lo.amax(1, keepdim=True) <= hi.amin(1, keepdim=True)).squeeze(1)  # a common point: 0
    assert bool((got[nested].abs() < 1e-12).all())


def test_products_have_no_global_constant_but_a_local_one_with_the_reason():
    torch.manual_seed(8)
    model = _prepare(nn.Sequential(nn.Linear(6, 6), Fn(lambda h: h * torch.sigmoid(h) * h), nn.Linear(6, 3)))
    x = torch.randn(6, 6, dtype=D)
    g = trace(model, x)
    rows = network_bounds(g, x=x, eps=0.05)
    mul = next(s for s in g.steps if s.kind == "mul")
    assert rows[mul.name]["constant"] == math.inf and "no global constant" in rows[mul.name]["method"]
    assert rows[g.output_name]["upper"] == math.inf
    up = upper_bounds(g)
    assert up[g.output_name][2] == math.inf and "product" in up[mul.name][1]
    local = rows[g.output_name]["local_upper"]
    assert math.isfinite(local)
    gen = torch.Generator().manual_seed(1)
    pts = _points(x - 0.05, x + 0.05, 30, gen).reshape(-1, 6)
    assert float(jacobian_spectral_norms(g.forward, pts).max()) <= local + 1e-9
    # without data only the global bound (inf, with its reason) and NaN local entries remain
    assert math.isnan(network_bounds(g)[g.output_name]["local_upper"])


# ---------------------------------------------------------------------------- Jacobians, bookkeeping


@pytest.mark.parametrize("name", list(UNARY) + list(BINARY))
def test_jacobian_lower_bounds_go_through_every_operator(name):
    make, _ = {**UNARY, **BINARY}[name]
    torch.manual_seed(9)
    model = _prepare(make())
    x = torch.randn(3, 6, dtype=D)
    g = trace(model, x)
    got = jacobian_spectral_norms(g.forward, x)
    for b in range(3):
        # a batch of two copies: ops such as squeeze() would drop a batch axis of one
        j = torch.autograd.functional.jacobian(lambda v: model(torch.stack([v, v]))[0], x[b])
        want = torch.linalg.matrix_norm(j.reshape(-1, 6), ord=2)
        assert float(got[b]) == pytest.approx(float(want), rel=1e-9, abs=1e-12), name


def test_conv_like_jacobians_by_power_iteration():
    torch.manual_seed(10)
    model = _prepare(Decoder())
    x = torch.rand(2, 1, 4, 4, dtype=D)
    g = trace(model, x)
    got = jacobian_spectral_norms(lambda v: g.forward(v, upto=g.steps[-2].name), x, iters=300, tol=1e-12)
    for b in range(2):
        j = torch.autograd.functional.jacobian(
            lambda v: g.forward(v.unsqueeze(0), upto=g.steps[-2].name)[0], x[b]
        )
        want = torch.linalg.matrix_norm(j.reshape(-1, 16), ord=2)
        assert float(got[b]) == pytest.approx(float(want), rel=1e-6)


def test_export_bookkeeping_and_float_casts_pass_through():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x.to(torch.float32)).float()

    model, x = M(), torch.rand(2, 4)
    ep = torch.export.export(model, (x,), strict=False)
    ops = {str(n.target) for n in ep.graph.nodes}
    assert "aten._assert_tensor_metadata.default" in ops
    g = trace(ep, x)
    assert [s.kind for s in g.steps] == ["linear"]
    torch.testing.assert_close(g.forward(x), model(x))


def test_an_unknown_op_still_names_op_node_and_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 2))
    with pytest.raises(NNVitalsError) as e:
        trace(model, torch.rand(2, 4))
    msg = str(e.value)
    assert msg.startswith("model graph: unsupported op aten.softplus.default at node 'softplus'")
    assert "position 1 of 3" in msg and "module '1'" in msg and "GELU" in msg and "LayerNorm" not in msg[:60]


def test_ops_that_mix_samples_are_refused():
    class Bad(nn.Module):
        def forward(self, x):
            return x * x.sum(0)  # mixes samples: broadcasting across the batch axis

    with pytest.raises(NNVitalsError, match=r"^model graph: .*batch axis at node"):
        trace(Bad(), torch.rand(3, 4))


@pytest.mark.parametrize("x_first", [True, False])
def test_where_with_a_constant_mask_is_a_masked_fill(x_first):
    """``where(cond, x, c)`` (GPT-2's causal mask) and ``where(cond, c, x)``: a ``masked_fill`` step that
    computes the model and whose boxes hold random points; a condition computed from the input is refused."""
    mask = torch.tensor([[True, False, True, True, False, True]])

    def fn(h):
        return torch.where(mask, h, -3.0) if x_first else torch.where(mask, 2.5, h)

    model = _prepare(Fn(fn, nn.Linear(6, 6)))
    x = torch.randn(3, 6, dtype=torch.float64)
    g, _ = _assert_sound(model, x, 0.1)
    step = next(s for s in g.steps if s.kind == "masked_fill")
    assert step.params["value"] == (-3.0 if x_first else 2.5)
    taken = step.params["mask"] > 0.5  # the entries where the number is taken
    assert bool((taken == (~mask if x_first else mask)).all())
    with pytest.raises(NNVitalsError, match=r"^model graph: unsupported op aten.gt"):  # a computed condition
        trace(Fn(lambda h: torch.where(h > 0, h, 0.0)), x)


# ---------------------------------------------------------------------------- end to end


FAST = dict(cache=False, show_progress=False, max_samples=8)


def _ln_gelu_mlp() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.LayerNorm(32),
        nn.GELU(approximate="tanh"), nn.Dropout(0.1), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def test_analyses_run_on_an_exported_mlp_with_layer_norm_and_gelu(tmp_path):
    model = _ln_gelu_mlp()
    ep = torch.export.export(model, (torch.rand(2, 1, 8, 8),), strict=False)
    ibp = IBPTightness(model=ep, eps=0.01, **FAST).run()
    kinds = list(ibp.table["kind"])
    assert kinds.count("layernorm") == 2 and kinds.count("gelu") == 2
    t = ibp.table.set_index("kind")["tightness"]
    assert bool(np.isfinite(ibp.table["tightness"]).all())
    assert 0 < ibp.summary["tightness"] <= 1 and 0 < float(t["layernorm"].min()) <= 1 + 1e-9
    lip = LipschitzBounds(model=ep, mixes=2, iters=50, jacobian_iters=5, **FAST).run()
    ln = lip.table[lip.table["kind"] == "layernorm"]
    assert bool((ln["method"].str.contains("global but loose")).all())
    assert lip.summary["upper"] >= lip.summary["lower"] > 0
    assert bool(np.isfinite(lip.table["lower_max"]).all())


def test_analyses_run_on_a_mobilenet_style_block():
    model = _prepare(MobileBlock()).float()
    ibp = IBPTightness(model=model, eps=0.01, **FAST).run()
    assert "hardtanh" in set(ibp.table["kind"]) and 0 < ibp.summary["tightness"] <= 1
    lip = LipschitzBounds(model=model, mixes=2, iters=50, jacobian_iters=5, **FAST).run()
    assert lip.summary["upper"] >= lip.summary["lower"] > 0
    relu6 = lip.table[lip.table["kind"] == "hardtanh"]
    assert bool((relu6["constant"] == 1.0).all())


# ---------------------------------------------------------------------------- a rule with only the basics


@torch.library.custom_op("nnvtest::gate", mutates_args=())
def gate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * torch.tanh(b)


@gate.register_fake
def _(a, b):
    return torch.empty_like(a)


class GateRule(Elementwise):
    """``a tanh(b)`` of two tensors, with only ``step``, ``forward``, ``ibp`` and a ``lipschitz`` of
    ``inf``: the kernels' defaults do the rest (tangents by autograd, compose, local = global)."""

    bounds_ops = frozenset({torch.ops.nnvtest.gate.default})
    kinds = ("gate",)

    def step(self, ctx):
        return ctx.make("gate", tuple(ctx.src(a) for a in ctx.node.args[:2]))

    def forward(self, step, xs):
        return xs[0] * torch.tanh(xs[1])

    def ibp(self, step, ins):
        (ca, ra), (cb, rb) = ins
        tlo, thi = torch.tanh(cb - rb), torch.tanh(cb + rb)
        p = torch.stack([(ca - ra) * tlo, (ca - ra) * thi, (ca + ra) * tlo, (ca + ra) * thi])
        lo, hi = p.min(0).values, p.max(0).values
        return (hi + lo) / 2, (hi - lo) / 2

    def lipschitz(self, step, norms):
        return math.inf, "no global constant (a product)"


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(gate(self.a(x), self.b(x)))


def test_a_two_input_rule_needs_only_forward_and_ibp():
    torch.manual_seed(12)
    model = Gated().double().eval()
    x = torch.randn(4, 4, dtype=D)
    with registered(GateRule, "nnvtest::gate"):
        g, _ = _assert_sound(model, x, 0.1)
        s = next(st for st in g.steps if st.kind == "gate")
        env = g.forward_all(x)
        xs = [env[i] for i in s.inputs]
        ts = [torch.randn((4, 3, 5), dtype=D) for _ in xs]
        rs = [torch.rand((4, 5), dtype=D) for _ in xs]
        rule = kind_rule("gate")
        got_t, got_r = rule.tangent(s, xs, ts), rule.tangent_radius(s, xs, rs)
        sech2 = 1 - torch.tanh(xs[1]) ** 2
        want_t = ts[0] * torch.tanh(xs[1]).unsqueeze(1) + ts[1] * (xs[0] * sech2).unsqueeze(1)
        torch.testing.assert_close(got_t, want_t)
        torch.testing.assert_close(got_r, rs[0] * torch.tanh(xs[1]).abs() + rs[1] * (xs[0] * sech2).abs())
        with torch.no_grad():  # as the analyses run it
            rec = propagate(g, x, torch.zeros(4, dtype=torch.long), 0.05, -10.0, 10.0)
        assert bool(((rec.out_tightness > 0) & (rec.out_tightness <= 1 + 1e-9)).all())
        rows = network_bounds(g, x=x, eps=0.05)
        assert rows[s.name]["constant"] == math.inf and rows[g.output_name]["upper"] == math.inf
        assert "no global constant" in rows[s.name]["method"]
        assert (
            math.isnan(rows[g.output_name]["local_upper"]) or rows[g.output_name]["local_upper"] == math.inf
        )
        norms = jacobian_spectral_norms(g.forward, x)
        assert bool(torch.isfinite(norms).all())


class TokenMixer(nn.Module):
    """A ViT without attention: patches, a class token expanded to the batch, a positional table,
    layer norm, a GELU MLP and the class token's head."""

    def __init__(self, dim=8):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 4, dim)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        t = t + self.mlp(self.ln(t))
        return self.head(t.mean(1))


@pytest.mark.parametrize("dynamic", [False, True])
def test_class_token_and_positional_table_with_fixed_or_dynamic_batch(dynamic):
    torch.manual_seed(13)
    model = TokenMixer().double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=D)
    dyn = {"x": {0: torch.export.Dim.AUTO}} if dynamic else None
    ep = torch.export.export(model, (x,), strict=False, dynamic_shapes=dyn)
    g = trace(ep, x)
    cat = next(s for s in g.steps if s.kind == "cat")
    assert cat.params["const_pos"] == (0,) and len(cat.inputs) == 1
    assert "shift" in {s.kind for s in g.steps}  # + the positional table
    torch.testing.assert_close(g.forward(x), model(x))
    if dynamic:  # any batch size
        torch.testing.assert_close(g.forward(x[:1]), model(x[:1]))
    _assert_sound(model, x, 0.05, trials=50)
    rows = network_bounds(g, x=x, eps=0.05)
    assert math.isfinite(rows[g.output_name]["upper"])

"""Rules for attention, group norm, embeddings and shape operators (analyses.core.graph.ops_attention):
each step computes what the model computes, every interval rule is sound (random points of the
input box stay inside every step's box) and exact where it says so, Lipschitz constants hold."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.graph import trace
from analyses.bounds.ibp import interval_bounds
from analyses.core.graph import Step, kind_rule, rule_for
from analyses.core.graph import ops_attention as oa

pytestmark = pytest.mark.usefixtures("one_thread")
aten = torch.ops.aten


class Attention(nn.Module):
    """Pre-norm self-attention with a residual: one projection sliced into q, k, v, heads by
    view/transpose; ``F.scaled_dot_product_attention`` (causal) or its manual form."""

    def __init__(self, d=8, heads=2, manual=False, causal=True):
        super().__init__()
        self.heads, self.manual, self.causal = heads, manual, causal
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        n, L, d = x.shape
        h = self.qkv(self.ln(x))
        q, k, v = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        q, k, v = (t.view(n, L, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.manual:
            a = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return x + self.out(a.transpose(1, 2).reshape(n, L, d))


class CausalAttention(nn.Module):
    """GPT-2's masked attention: a causal mask buffer sliced, ``masked_fill(-inf)``, softmax."""

    def __init__(self, d=8, ctx=6):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, ctx, ctx))

    def forward(self, x):
        L, d = x.shape[1], x.shape[2]
        h = self.qkv(x)
        q, k, v = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        w = (q @ k.transpose(-1, -2)).masked_fill(self.bias[:, :L, :L] == 0, float("-inf"))
        return self.out(w.softmax(-1) @ v)


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.fc = nn.Conv2d(1, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.Linear(6, 4)
        with torch.no_grad():
            self.gn.weight.copy_(torch.randn(6))
            self.gn.bias.copy_(torch.randn(6))

    def forward(self, x):
        return self.fc(F.relu(self.gn(self.conv(x))).mean((2, 3)))


class Stacked(nn.Module):
    """stack, expand, permute, select, unflatten, bmm with a constant, softmax over a middle axis."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):  # x: (N, 6)
        s = torch.stack([x, 2 * x], dim=1)  # (N, 2, 6)
        s = s.unflatten(2, (2, 3)).permute(0, 3, 1, 2)  # (N, 3, 2, 2)
        e = s.select(1, 0).unsqueeze(1).expand(-1, 3, -1, -1)  # (N, 3, 2, 2)
        y = (s + e).flatten(1) @ self.w[:, :].expand(6, 4)[:, :4].repeat(2, 1)  # (N, 4)
        return torch.softmax(y, dim=1)


def _check_sound(graph, lo, hi, points):
    bounds = interval_bounds(graph, lo, hi)
    with torch.no_grad():
        for z in points:
            vals = graph.forward_all(z)
            for s in graph.steps:
                blo, bhi = bounds[s.name]
                v = vals[s.name]
                tol = 1e-5 * (1 + v.abs())
                assert (v >= blo - tol).all() and (v <= bhi + tol).all(), (
                    f"step {s.name} ({s.kind}) escapes its box"
                )
    return bounds


@pytest.mark.parametrize(
    "factory, shape, kinds",
    [
        (lambda: Attention(), (3, 5, 8), {"sdpa", "transpose", "select", "layernorm"}),
        (lambda: Attention(manual=True), (3, 5, 8), {"matmul", "softmax", "transpose"}),
        (CausalAttention, (3, 5, 8), {"masked_fill", "softmax", "matmul"}),
        (GroupNormNet, (3, 1, 6, 6), {"groupnorm"}),
        (
            Stacked,
            (3, 6),
            {"stack", "reshape_any", "transpose", "select", "expand", "matmul_const", "softmax"},
        ),
    ],
    ids=["sdpa", "manual-attention", "causal-masked-fill", "group-norm", "shape-ops"],
)
def test_steps_compute_the_model_and_ibp_is_sound(factory, shape, kinds):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    graph = trace(model, x)
    assert kinds <= {s.kind for s in graph.steps}
    with torch.no_grad():
        assert (graph.forward(x) - model(x)).abs().max() < 1e-5
    eps = 0.05
    points = [x + eps * (2 * torch.rand_like(x) - 1) for _ in range(40)]
    points += [x + eps * torch.sign(torch.randn_like(x)) for _ in range(20)]  # box corners
    bounds = _check_sound(graph, x - eps, x + eps, points)
    lo, hi = bounds[graph.output_name]
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()


def test_attention_box_is_that_of_its_parts():
    """The fused attention's interval rule equals the composition of the matmul, scale and softmax
    rules on the same weights (each of which is checked exact or sound on its own)."""
    torch.manual_seed(9)
    fused = Attention(causal=False).eval()
    manual = Attention(manual=True).eval()
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 8)
    boxes = []
    for m in (fused, manual):
        g = trace(m, x)
        boxes.append(interval_bounds(g, x - 0.1, x + 0.1)[g.output_name])
    assert torch.allclose(boxes[0][0], boxes[1][0], atol=1e-5) and torch.allclose(
        boxes[0][1], boxes[1][1], atol=1e-5
    )


def test_interval_matmul_is_sound_and_exact_per_product():
    gen = torch.Generator().manual_seed(1)
    al = torch.randn(2, 3, 4, generator=gen)
    au = al + torch.rand(2, 3, 4, generator=gen)
    bl = torch.randn(2, 4, 5, generator=gen)
    bu = bl + torch.rand(2, 4, 5, generator=gen)
    lo, hi = oa.interval_matmul(al, au, bl, bu)
    for _ in range(300):
        a = al + (au - al) * torch.rand(al.shape, generator=gen)
        b = bl + (bu - bl) * torch.rand(bl.shape, generator=gen)
        p = a @ b
        assert (p >= lo - 1e-5).all() and (p <= hi + 1e-5).all()
    chunked = oa.interval_matmul(al, au, bl, bu, budget=24)  # one column of B at a time
    assert torch.equal(chunked[0], lo) and torch.equal(chunked[1], hi)
    # one term (k = 1): the bounds are the extreme corner products, attained
    lo1, hi1 = oa.interval_matmul(al[..., :1], au[..., :1], bl[:, :1], bu[:, :1])
    corners = torch.stack([x * y for x in (al[..., :1], au[..., :1]) for y in (bl[:, :1], bu[:, :1])])
    assert torch.allclose(lo1, corners.amin(0)) and torch.allclose(hi1, corners.amax(0))


def test_softmax_interval_is_sound_and_attained_at_the_corners():
    gen = torch.Generator().manual_seed(2)
    lo = torch.randn(4, 6, generator=gen)
    hi = lo + 2 * torch.rand(4, 6, generator=gen)
    pl, pu = oa.softmax_interval(lo, hi, dim=1)
    for _ in range(300):
        p = torch.softmax(lo + (hi - lo) * torch.rand(lo.shape, generator=gen), dim=1)
        assert (p >= pl - 1e-6).all() and (p <= pu + 1e-6).all()
    for i in range(6):
        own = torch.zeros(6, dtype=torch.bool)
        own[i] = True
        assert torch.allclose(torch.softmax(torch.where(own, lo, hi), 1)[:, i], pl[:, i], atol=1e-6)
        assert torch.allclose(torch.softmax(torch.where(own, hi, lo), 1)[:, i], pu[:, i], atol=1e-6)


def test_softmax_lipschitz_one_half():
    const, how = kind_rule("softmax").lipschitz(Step("s", "softmax", ("x",), {"dim": 1}), None)
    assert const == 0.5 and "Gershgorin" in how
    gen = torch.Generator().manual_seed(3)
    norms = []
    for _ in range(200):
        x = 3 * torch.randn(5, generator=gen)
        jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), x)
        norms.append(float(torch.linalg.matrix_norm(jac, ord=2)))
    assert max(norms) <= 0.5 + 1e-6
    two = torch.tensor([0.0, 0.0, -50.0, -50.0])  # two equal winners: the bound is reached
    jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), two)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) == pytest.approx(0.5, abs=1e-6)


def test_attention_and_products_have_no_global_lipschitz_constant():
    sdpa = kind_rule("sdpa").lipschitz(Step("a", "sdpa", ("q", "k", "v")), None)
    assert sdpa == (math.inf, "no global bound: dot-product attention")
    const, how = kind_rule("matmul").lipschitz(Step("m", "matmul", ("a", "b")), None)
    assert const == math.inf and how.startswith("no global bound")


def test_group_norm_lipschitz_global_and_local():
    torch.manual_seed(4)
    model = GroupNormNet().eval()
    graph = trace(model, torch.randn(2, 1, 6, 6))
    step = next(s for s in graph.steps if s.kind == "groupnorm")
    rule = kind_rule("groupnorm")
    glob, how = rule.lipschitz(step, None)
    gamma = float(model.gn.weight.detach().abs().max())
    assert glob == pytest.approx(gamma / math.sqrt(model.gn.eps)) and "eps" in how
    x = torch.randn(2, 6, 6, 6)
    eps = 0.1
    local, _ = rule.local_lipschitz(step, [(x - eps, x + eps)], None)
    assert local.shape == (2,) and (local <= glob).all()
    gen = torch.Generator().manual_seed(5)
    for b in range(2):
        for _ in range(5):
            z = x[b : b + 1] + eps * (2 * torch.rand(1, 6, 6, 6, generator=gen) - 1)
            jac = torch.autograd.functional.jacobian(lambda v: rule.forward(step, [v]), z).reshape(216, 216)
            assert float(torch.linalg.matrix_norm(jac, ord=2)) <= float(local[b]) * (1 + 1e-5)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.pos = nn.Embedding(12, 6), nn.Parameter(torch.randn(1, 4, 6))
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.emb(ids) + self.pos).mean(1))


def test_embedding_ibp_perturbs_the_embedding_output():
    torch.manual_seed(6)
    model = Tokens().eval()
    ids = torch.randint(0, 12, (3, 4))
    graph = trace(model, ids)
    step = next(s for s in graph.steps if s.kind == "embedding")
    with torch.no_grad():
        assert (graph.forward(ids) - model(ids)).abs().max() < 1e-6
    eps = 0.05
    bounds = interval_bounds(graph, ids.float() - eps, ids.float() + eps)
    lo, hi = bounds[step.name]
    rows = model.emb.weight[ids].detach()
    assert torch.allclose(lo, rows - eps) and torch.allclose(hi, rows + eps)
    out_lo, out_hi = bounds[graph.output_name]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(50):
            noise = eps * (2 * torch.rand(rows.shape, generator=gen) - 1)
            handle = model.emb.register_forward_hook(lambda m, i, o, n=noise: o + n)
            y = model(ids)
            handle.remove()
            assert (y >= out_lo - 1e-5).all() and (y <= out_hi + 1e-5).all()
    const, how = kind_rule("embedding").lipschitz(step, None)
    assert const == 1.0 and "embedding output" in how


def test_split_pieces_are_one_step_each():
    x = torch.randn(2, 7, 3)
    step = Step(
        "s", "chunk", ("x",), dict(dim=1, starts=(0, 3, 6), lengths=(3, 3, 1), squeeze=False, index=0)
    )
    rule = kind_rule("chunk")
    for i, want in enumerate(torch.split(x, 3, dim=1)):
        piece = type(rule).item(step, i, f"s_{i}")
        assert piece.name == f"s_{i}" and torch.equal(rule.forward(piece, [x]), want)
    unbind = Step(
        "u", "chunk", ("x",), dict(dim=2, starts=(0, 1, 2), lengths=(1, 1, 1), squeeze=True, index=0)
    )
    for i, want in enumerate(x.unbind(2)):
        assert torch.equal(rule.forward(type(rule).item(unbind, i, "u"), [x]), want)


def test_operators_have_their_rules():
    targets = [
        aten.softmax.int, aten._softmax.default, aten.matmul.default, aten.bmm.default,
        aten.scaled_dot_product_attention.default, aten.group_norm.default, aten.native_group_norm.default,
        aten.embedding.default, aten.transpose.int, aten.permute.default, aten.select.int, aten.slice.Tensor,
        aten.unflatten.int, aten.expand.default, aten.stack.default, aten.split.Tensor, aten.chunk.default,
        aten.unbind.int,
    ]  # fmt: skip
    for t in targets:
        rule = rule_for(t)
        assert type(rule).__module__ == oa.__name__ and rule.bounds_supported(t), t


def test_interval_product_matches_exhaustive_corners_for_small_sums():
    """With two contracted terms the sum of per-term extremes is exact when the terms share no
    variable (as in a matrix product): compared with every corner of the box."""
    gen = torch.Generator().manual_seed(8)
    al, bl = torch.randn(1, 2, generator=gen), torch.randn(2, 1, generator=gen)
    au, bu = al + torch.rand(1, 2, generator=gen), bl + torch.rand(2, 1, generator=gen)
    lo, hi = oa.interval_matmul(al, au, bl, bu)
    vals = []
    for a0, a1, b0, b1 in itertools.product((0, 1), repeat=4):
        a = torch.tensor([[(al, au)[a0][0, 0], (al, au)[a1][0, 1]]])
        b = torch.tensor([[(bl, bu)[b0][0, 0]], [(bl, bu)[b1][1, 0]]])
        vals.append(float(a @ b))
    assert float(lo) == pytest.approx(min(vals), abs=1e-6) and float(hi) == pytest.approx(max(vals), abs=1e-6)


# ---------------------------------------------------------------------------- batch layouts, local constants


@pytest.mark.parametrize("layout", [(0, 1, 1), (1, 1, 1), (2, 1, 1), (0, 5, 1), (1, 1, 2), (1, 3, 2)])
def test_batch_layouts_round_trip(layout):
    """A batch-first tensor taken to a model layout and back is unchanged; in the model layout the
    batch factor has its place in the merged axis (outer, batch, inner)."""
    ax, o, i = layout
    per = [4, 3]
    if o * i > 1:
        per.insert(ax, o * i)
    c = torch.randn([2] + per)
    a = oa.to_actual(c, layout)
    assert a.shape[ax] == o * 2 * i
    assert oa.canonical_shape(a.shape, layout) == tuple(per)
    torch.testing.assert_close(oa.to_canonical(a, layout), c, atol=0, rtol=0)
    # sample b's entries sit at (outer, b, inner) positions of the batch axis
    m = a.movedim(ax, 0).reshape((o, 2, i) + tuple(a.movedim(ax, 0).shape[1:]))
    want = c[1].movedim(ax, 0).reshape((o, i) + tuple(m.shape[3:])) if o * i > 1 else c[1]
    torch.testing.assert_close(m[:, 1].reshape(want.shape), want, atol=0, rtol=0)


class MHA(nn.Module):
    """``nn.MultiheadAttention``, sequence-first: the batch sits on axis 1 and merges with the heads."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):  # x: (N, L, d)
        a = x.transpose(0, 1)
        return self.fc(self.attn(a, a, a, need_weights=False)[0].mean(0))


def _dynamic(model, x):
    return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=512)},))


def test_multihead_attention_moves_the_batch_and_the_graph_follows_it():
    torch.manual_seed(5)
    model = MHA().eval()
    x = torch.randn(3, 4, 8)
    g = trace(_dynamic(model, x), x)
    moved = [s for s in g.steps if s.kind == "relayout"]
    assert moved and all(s.params["lout"] != oa.STANDARD or s.params["lin"][0] != oa.STANDARD for s in moved)
    with torch.no_grad():
        for n in (1, 2, 7):  # any batch size
            z = torch.randn(n, 4, 8)
            torch.testing.assert_close(g.forward(z), model(z), atol=1e-5, rtol=1e-5)
    eps = 0.05
    points = [x + eps * (2 * torch.rand_like(x) - 1) for _ in range(30)]
    points += [x + eps * torch.sign(torch.randn_like(x)) for _ in range(15)]
    _check_sound(g, x - eps, x + eps, points)
    # the same model exported with a fixed batch: refused in one line, not computed wrongly
    fixed = torch.export.export(model, (x,))
    with pytest.raises(Exception, match="reshape across the batch axis.*dynamic batch"):
        trace(fixed, x)


def test_a_product_that_mixes_samples_is_refused():
    class Mix(nn.Module):
        def forward(self, x):
            return F.linear(x, x)  # (N, N): every sample meets every other

    x = torch.randn(3, 4)
    with pytest.raises(Exception, match="batch"):
        trace(_dynamic(Mix(), x), x)


@pytest.mark.parametrize("manual", [False, True])
def test_local_constants_of_attention_and_products_bound_their_jacobians_on_the_box(manual):
    """On every step without a global constant (attention, products of two tensors), the local constant
    over the IBP boxes is at least the spectral norm of the step's Jacobian (with respect to all its
    inputs) at points of those boxes."""
    torch.manual_seed(6)
    model = Attention(manual=manual, causal=True).eval().double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    g = trace(model, x)
    eps = 0.05
    boxes = interval_bounds(g, x - eps, x + eps)
    boxes[g.input_name] = (x - eps, x + eps)
    steps = [s for s in g.steps if s.kind in ("sdpa", "matmul")]
    assert steps
    gen = torch.Generator().manual_seed(0)
    for s in steps:
        rule = kind_rule(s.kind)
        assert math.isinf(rule.lipschitz(s, None)[0])
        lc, how = rule.local_lipschitz(s, [boxes[i] for i in s.inputs], None)
        assert "over the box" in how and lc.shape == (2,)
        for _ in range(5):
            ins = []
            for i in s.inputs:
                lo, hi = boxes[i]
                ins.append(lo + torch.rand(lo.shape, generator=gen, dtype=lo.dtype) * (hi - lo))
            for b in range(2):
                one = [t[b : b + 1] for t in ins]
                sizes = [t.numel() for t in one]

                def f(flat, one=one, sizes=sizes, s=s, rule=rule):
                    parts = [p.reshape(t.shape) for p, t in zip(flat.split(sizes), one)]
                    return rule.forward(s, parts).reshape(-1)

                jac = torch.func.jacrev(f)(torch.cat([t.reshape(-1) for t in one]))
                assert float(torch.linalg.matrix_norm(jac, ord=2)) <= float(lc[b]) * (1 + 1e-9)


class Variants(nn.Module):
    """``scaled_dot_product_attention`` as models call it: causal, an additive mask, grouped query
    heads (2 query heads per key head), and a constant key/value memory (cross-attention to
    learned slots: only the query comes from the input)."""

    def __init__(self, how: str, d=8, L=5):
        super().__init__()
        self.how = how
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d // 2 if how == "gqa" else d), nn.Linear(d, d)
        self.register_buffer("mask", torch.randn(L, L))
        self.memory = nn.Parameter(torch.randn(2, 7, 4))

    def forward(self, x):  # (N, L, 8)
        n, L, _ = x.shape
        q = self.q(x).view(n, L, 2, 4).transpose(1, 2)
        if self.how == "memory":
            return F.scaled_dot_product_attention(q, self.memory, self.memory * 2)
        kh = 1 if self.how == "gqa" else 2
        k = self.k(x).view(n, L, kh, 4).transpose(1, 2)
        v = self.v(x).view(n, L, 2, 4).transpose(1, 2)[:, :kh]
        if self.how == "gqa":
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        if self.how == "mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=-0.7)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("how", ["causal", "mask", "gqa", "memory"])
def test_attention_tangent_radius_equals_the_dense_jacobians(how):
    """``|J(x)| r`` of the attention step written out (``SDPA.tangent_radius``) against the
    dense per-sample Jacobian by ``jacrev`` (the base rule's method, which it replaces: seconds
    per step at 64 tokens), for every operand that comes from the input."""
    from analyses.core.graph.rules import Rule

    torch.manual_seed(3)
    model = Variants(how).eval()
    x = torch.randn(3, 5, 8)
    graph = trace(model, x)
    env = graph.forward_all(x)
    (step,) = [s for s in graph.steps if s.kind == "sdpa"]
    xs = [env[i].double() for i in step.inputs]
    rs = [torch.rand_like(t) for t in xs]
    graph = graph.to("cpu", torch.float64)
    (step,) = [s for s in graph.steps if s.kind == "sdpa"]
    rule = kind_rule("sdpa")
    got = rule.tangent_radius(step, xs, rs)
    want = Rule.tangent_radius(rule, step, xs, rs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert len(xs) == (1 if how == "memory" else 3)

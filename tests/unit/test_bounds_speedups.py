"""The fast paths of the bounds kernels give the numbers of the plain ones (issue 13, Speed).

- operator norms are cached by the step's shapes and its parameters' fingerprints: the same weights
  hit the cache, a changed weight (one entry) misses it and gets its own norm;
- convolutions of one shape go through Lanczos together (one grouped convolution): each norm equals
  the one computed alone, and the dense operator's;
- IBP with values released after their last use and the fused ReLU rule equals the plain walk.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds import ibp as I
from analyses.bounds import lipschitz as L
from analyses.bounds.graph import trace
from analyses.core.graph import kind_rule

D = torch.float64


def _dense_norm(fn, in_shape) -> float:
    jac = torch.autograd.functional.jacobian(fn, torch.zeros((1, *in_shape), dtype=D), vectorize=True)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, math.prod(in_shape)), ord=2))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    ).double().eval()  # fmt: skip


def test_changed_weight_invalidates_cached_norm():
    L.clear_norm_cache()
    m = _net()
    x = torch.rand(2, 2, 6, 6, dtype=D)
    step = trace(m, x).steps[0]
    first = L.layer_constant(step)
    assert len(L._CACHE) == 1
    assert L.layer_constant(step) == first  # a hit: the same numbers
    assert len(L._CACHE) == 1
    # change one entry of the weight, in place: the fingerprint changes, so does the norm
    w = step.params["weight"]
    with torch.no_grad():
        w[0, 0, 1, 1] += 5.0
    second = L.layer_constant(step)
    assert len(L._CACHE) == 2
    exact = _dense_norm(lambda v: F.conv2d(v, w, None, 1, 1), step.in_shape)
    assert second[0] == pytest.approx(exact, rel=1e-6)
    assert second[0] != pytest.approx(first[0], rel=1e-3)
    # a copy with the same values hits the first entry again
    with torch.no_grad():
        w[0, 0, 1, 1] -= 5.0
    assert L.layer_constant(step)[0] == first[0]
    assert L.fingerprint(w) != L.fingerprint(w + 1e-12)


def test_batched_conv_norms_equal_unbatched_and_dense():
    gen = torch.Generator().manual_seed(3)
    ws = [torch.randn(5, 3, 3, 3, generator=gen, dtype=D) for _ in range(3)]
    shape = (3, 7, 7)
    for stride, padding in ((1, 1), (2, 1), (1, 0)):
        batched, _ = L.conv_operator_norms(ws, shape, stride, padding, dtype=D)
        alone = [L.conv_operator_norm(w, shape, stride, padding, dtype=D) for w in ws]
        torch.testing.assert_close(batched, torch.tensor(alone, dtype=D), rtol=1e-10, atol=0)
        for w, v in zip(ws, alone):
            exact = _dense_norm(lambda u, w=w, s=stride, p=padding: F.conv2d(u, w, None, s, p), shape)
            assert v == pytest.approx(exact, rel=1e-6)
            assert v <= exact * (1 + 1e-9)  # Lanczos estimates from below


def test_layer_constants_batch_equals_one_at_a_time():
    m = _net(1)
    g = trace(m, torch.rand(2, 2, 6, 6, dtype=D))
    L.clear_norm_cache()
    together = L.layer_constants(g.steps, warm=False)
    L.clear_norm_cache()
    alone = {s.name: L.layer_constant(s) for s in g.steps}
    L.clear_norm_cache()
    assert together.keys() == alone.keys()
    for k in alone:
        a, b = together[k], alone[k]
        assert a[1] == b[1]
        if math.isnan(b[0]):
            assert math.isnan(a[0])
        else:
            assert a[0] == pytest.approx(b[0], rel=1e-9)
    # the two 4 -> 4 convolutions share one shape: they went through Lanczos as one batch, and the
    # result is still each one's dense operator norm
    convs = [s for s in g.steps if s.kind == "conv"][1:]
    for s in convs:
        w = s.params["weight"]
        exact = _dense_norm(lambda v, w=w: F.conv2d(v, w, None, 1, 1), s.in_shape)
        assert together[s.name][0] == pytest.approx(exact, rel=1e-6)


def test_warm_start_keeps_the_norm():
    gen = torch.Generator().manual_seed(5)
    w1, w2 = (torch.randn(4, 4, 3, 3, generator=gen, dtype=D) for _ in range(2))
    shape = (4, 8, 8)
    cold, vec = L.conv_operator_norms([w1], shape, 1, 1, dtype=D)
    warm, _ = L.conv_operator_norms([w2], shape, 1, 1, dtype=D, start=vec[0])
    exact = _dense_norm(lambda v: F.conv2d(v, w2, None, 1, 1), shape)
    assert float(warm[0]) == pytest.approx(exact, rel=1e-6)
    # restarting from its own top vector gives the norm again (within the tolerance of ||A||^2)
    again, _ = L.conv_operator_norms([w1], shape, 1, 1, dtype=D, start=vec[0])
    exact1 = _dense_norm(lambda v: F.conv2d(v, w1, None, 1, 1), shape)
    for v in (cold, again):
        assert float(v[0]) == pytest.approx(exact1, rel=1e-7) and float(v[0]) <= exact1 * (1 + 1e-9)


def test_float32_pass_then_float64_gives_the_float64_norm(monkeypatch):
    """A float64 norm takes most Lanczos products in float32 (CPU convolutions: a fraction of the
    time), then refines in float64 from each operator's vector: the same norm as float64 all the
    way, from below the dense operator's, per operator of a batch."""
    gen = torch.Generator().manual_seed(11)
    ws = [torch.randn(6, 6, 3, 3, generator=gen, dtype=D) for _ in range(3)]
    shape = (6, 10, 10)
    products = {}
    real = L.lanczos_top

    def counted(matvec, start, **kw):
        products.setdefault(start.dtype, 0)

        def mv(v):
            products[start.dtype] += 1
            return matvec(v)

        return real(mv, start, **kw)

    monkeypatch.setattr(L, "lanczos_top", counted)
    mixed, _ = L.conv_operator_norms(ws, shape, 1, 1, dtype=D, tol=1e-9)
    assert products.get(torch.float32, 0) > 0 and products[torch.float64] > 0
    monkeypatch.setattr(L, "ROUGH_TOL", 0.0)  # float64 all the way
    products.clear()
    plain, _ = L.conv_operator_norms(ws, shape, 1, 1, dtype=D, tol=1e-9)
    assert list(products) == [torch.float64]
    for w, a, b in zip(ws, mixed.tolist(), plain.tolist()):
        exact = _dense_norm(lambda v, w=w: F.conv2d(v, w, None, 1, 1), shape)
        assert a == pytest.approx(b, rel=1e-8) and a == pytest.approx(exact, rel=1e-8)
        assert a <= exact * (1 + 1e-12)


def _plain_interval_bounds(graph, lower, upper):
    """The unoptimised walk: every value kept, every rule's own ``ibp``."""
    c, r = (upper + lower) / 2, (upper - lower) / 2
    env = {graph.input_name: (c, r)}
    out = {}
    for s in graph.steps:
        env[s.name] = kind_rule(s.kind).ibp(s, [env[i] for i in s.inputs])
        cc, rr = env[s.name]
        out[s.name] = (cc - rr, cc + rr)
    return out


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        h = F.relu6(3 * self.a(x))  # the monotone default rule's fast path (hardtanh)
        h = F.relu(h + self.bn(self.b(h)))
        return self.head(h.flatten(1))


def test_ibp_fast_paths_equal_plain_walk():
    m = _Res().eval()
    x = torch.rand(6, 2, 5, 5)
    g = trace(m, x)
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    got = I.interval_bounds(g, lo, hi)
    ref = _plain_interval_bounds(g, lo, hi)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k][0], ref[k][0]) and torch.equal(got[k][1], ref[k][1]), k
    # propagate (values released after their last use) gives the same output box and counts
    y = torch.randint(0, 3, (6,))
    rec = I.propagate(g, x, y, 0.05, 0.0, 1.0, tightness=False)
    c0, r0 = I.input_box(x, 0.05, 0.0, 1.0)
    ref = _plain_interval_bounds(g, c0 - r0, c0 + r0)
    for s in g.steps:
        if s.kind == "relu":
            src = ref[s.inputs[0]]
            assert rec.steps[s.name].unstable == int(((src[0] < 0) & (src[1] > 0)).sum())
            assert rec.steps[s.name].active == int((src[0] >= 0).sum())
    lo_o, hi_o = ref[g.output_name]
    assert rec.steps[g.output_name].width_sum == pytest.approx(float((hi_o - lo_o).double().sum()), rel=1e-6)
    with_t = I.propagate(g, x, y, 0.05, 0.0, 1.0, tightness=True)
    torch.testing.assert_close(with_t.min_margin, rec.min_margin, rtol=0, atol=0)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.emb = nn.Embedding(20, 6)
        self.pos = nn.Embedding(5, 6)
        self.head = nn.Linear(5 * 6, 3)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(torch.tanh(self.emb(idx) + self.pos(pos)).flatten(1))


def test_jacobian_lower_bound_starts_at_the_embedding_output():
    m = _Tokens().eval()
    ids = torch.randint(0, 20, (4, 5))
    g = trace(m, ids)
    fn, z = L.jacobian_start(g, ids)
    assert z.shape == (4, 5, 6) and z.is_floating_point()
    torch.testing.assert_close(fn(z), m(ids))
    got = L.jacobian_spectral_norms(fn, z)
    # the Jacobian with respect to the token embeddings: W_head diag(tanh'(h)), h = emb + pos
    with torch.no_grad():
        h = (m.emb(ids) + m.pos(torch.arange(5))).flatten(1)
        ref = torch.stack(
            [torch.linalg.matrix_norm(m.head.weight * (1 - torch.tanh(hb) ** 2), ord=2) for hb in h]
        )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert bool((got > 0).all())
    # up to the embedding itself: the identity (norm 1); up to a later step: that step's map
    fn_e, _ = L.jacobian_start(g, ids, upto=g.steps[[s.kind for s in g.steps].index("embedding")].name)
    torch.testing.assert_close(L.jacobian_spectral_norms(fn_e, z), torch.ones(4), rtol=1e-5, atol=0)
    # an image model starts at its input, as before
    net = _net().float()
    xi = torch.rand(2, 2, 6, 6)
    gi = trace(net, xi)
    fi, zi = L.jacobian_start(gi, xi)
    assert zi is xi and fi == gi.forward


class _Pool(nn.Module):
    """Conv, max pooling, GELU, a residual add, and a non-linear output step (tanh after the head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 3 * 3, 4)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.a(x)), 2)
        h = h + F.gelu(self.b(h))
        return self.head(h.flatten(1))


def test_output_tightness_by_reverse_mode_equals_propagate():
    torch.manual_seed(0)
    for model, shape in ((_Res().double().eval(), (5, 2, 5, 5)), (_Pool().double().eval(), (5, 2, 6, 6))):
        x = torch.rand(shape, dtype=D)
        y = torch.randint(0, 3, (shape[0],))
        g = trace(model, x)
        for spec in I.SPECS:
            for eps in (0.01, 0.2):
                ref = I.propagate(g, x, y, eps, 0.0, 1.0, relu="local", spec=spec).out_tightness
                got = I.output_tightness(g, x, y, eps, 0.0, 1.0, spec=spec)
                assert bool(torch.isfinite(ref).all())
                torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # a model whose last step is not linear: |C| after the last step
    tail = nn.Sequential(nn.Flatten(), nn.Linear(8, 3), nn.Tanh()).double().eval()
    x = torch.rand(4, 2, 2, 2, dtype=D)
    y = torch.tensor([0, 1, 2, 0])
    g = trace(tail, x)
    ref = I.propagate(g, x, y, 0.05, 0.0, 1.0, spec="margin").out_tightness
    torch.testing.assert_close(I.output_tightness(g, x, y, 0.05, 0.0, 1.0), ref, rtol=1e-10, atol=1e-12)


def test_lanczos_local_reorthogonalisation_equals_full():
    """The three-term recurrence alone finds the same top eigenvalue as full re-orthogonalisation,
    also for a near-double top singular value (relative gap 1e-4)."""
    torch.manual_seed(11)
    w = torch.randn(8, 8, 3, 3, dtype=D)  # top singular values 16.2342, 16.2325 on 8x9x9
    shape = (8, 9, 9)

    def mv(v):
        u = F.conv2d(v.reshape(-1, *shape), w, None, 1, 1)
        return F.conv_transpose2d(u, w, None, 1, 1).reshape(v.shape[0], -1)

    start = torch.randn(1, math.prod(shape), generator=torch.Generator().manual_seed(0), dtype=D)
    local, _ = L.lanczos_top(mv, start, reorth="local")
    full, _ = L.lanczos_top(mv, start, reorth="full")
    exact = _dense_norm(lambda v: F.conv2d(v, w, None, 1, 1), shape) ** 2
    for t in (local, full):
        assert float(t[0]) == pytest.approx(exact, rel=1e-9)
        assert float(t[0]) <= exact * (1 + 1e-12)

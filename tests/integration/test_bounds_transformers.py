"""IBPTightness and LipschitzBounds end to end on transformers exported to ``.pt2``: a ViT with
``nn.MultiheadAttention`` (which moves the batch to axis 1 and merges it with the heads), a model
with ``nn.TransformerEncoderLayer``, a GPT-style decoder on token ids (embedding, causal
self-attention by ``scaled_dot_product_attention`` and by Hugging Face GPT-2's ``where`` mask,
MLP), an MLP with LayerNorm + GELU and a ResNet-20 with GroupNorm. IBP boxes hold random points of
the input box node by node; Lipschitz says where no global constant exists and why, and gives the
local bound over the data's boxes (never below the Jacobian norms it bounds)."""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds import views
from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.bounds.graph import trace
from analyses.bounds.ibp import interval_bounds

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(cache=False, show_progress=False, max_samples=6)
LIP = dict(mixes=4, iters=40, jacobian_iters=5)
VOCAB, CTX = 16, 6


# ---------------------------------------------------------------------------- models


class MHAViT(nn.Module):
    """Patches by a strided conv, a class token, learned positions, one pre-norm block with
    ``nn.MultiheadAttention`` (batch-first or sequence-first) and a GELU MLP."""

    def __init__(self, d=8, heads=2, patch=4, classes=10, batch_first=True):
        super().__init__()
        self.patch = nn.Conv2d(1, d, patch, patch)
        n = (8 // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, classes)
        self.batch_first = batch_first

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        a = self.ln1(h)
        if not self.batch_first:
            a = a.transpose(0, 1)
        a = self.attn(a, a, a, need_weights=False)[0]
        if not self.batch_first:
            a = a.transpose(0, 1)
        h = h + a
        h = h + self.mlp(self.ln2(h))
        return self.head(h[:, 0])


class Encoder(nn.Module):
    """Image rows as tokens through one ``nn.TransformerEncoderLayer``, mean-pooled."""

    def __init__(self, d=8, classes=10):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.enc = nn.TransformerEncoderLayer(d, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.enc(self.inp(x.flatten(1, 2))).mean(1))


class Block(nn.Module):
    """GPT-2's block: one q/k/v projection split in three, causal attention (fused, or written out
    with GPT-2's ``where`` mask), a tanh-GELU MLP, pre-norm residuals."""

    def __init__(self, d, heads, fused):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.heads, self.fused = heads, fused
        self.register_buffer("bias", torch.tril(torch.ones(CTX, CTX, dtype=torch.bool)).view(1, 1, CTX, CTX))

    def forward(self, x):
        n, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(n, L, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.fused:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            w = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
            w = torch.where(self.bias[:, :, :L, :L], w, torch.finfo(w.dtype).min)
            a = w.softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(n, L, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and position embeddings, two blocks, a final norm, class scores from the last token."""

    def __init__(self, d=8, heads=2, classes=10):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(CTX, d)
        self.blocks = nn.ModuleList([Block(d, heads, fused=True), Block(d, heads, fused=False)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        h = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h)[:, -1])


def _mlp_ln_gelu():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 16), nn.LayerNorm(16),
        nn.GELU(approximate="tanh"), nn.Linear(16, 10),
    )  # fmt: skip


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, groups=2):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(groups, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(groups, cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.n2(self.c2(F.relu(self.n1(self.c1(x))))) + self.short(x))


class ResNet20GN(nn.Module):
    """ResNet-20 (3 stages of 3 basic blocks) with GroupNorm, at width 4."""

    def __init__(self, w=4, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.GroupNorm(2, w), nn.ReLU())
        layers, cin = [], w
        for i, c in enumerate((w, 2 * w, 4 * w)):
            for j in range(3):
                layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def _export(model: nn.Module, x: torch.Tensor, path) -> str:
    model.eval()
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(ep, path)
    return str(path)


def _tokens(tmp_path, n=12, seed=0) -> str:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, CTX), generator=gen).numpy()
    y = torch.randint(0, 10, (n,), generator=gen).numpy()
    path = tmp_path / "tokens.npz"
    np.savez(path, ids=x, y=y)
    return str(path)


def _image_models():
    torch.manual_seed(0)
    return {
        "vit-mha": MHAViT(),
        "vit-mha-seq-first": MHAViT(batch_first=False),
        "encoder-layer": Encoder(),
        "mlp-ln-gelu": _mlp_ln_gelu(),
        "resnet20-gn": ResNet20GN(),
    }


# ---------------------------------------------------------------------------- end to end


def _check_ibp(res):
    t = res.table
    assert 0 <= res.summary["tightness"] <= 1 + 1e-9
    assert bool(np.isfinite(t["box_width"]).all()) and bool((t["box_width"] >= 0).all())


def _check_lipschitz(res, attention: bool):
    t, s = res.table, res.summary
    if attention:
        att = t[t["kind"] == "sdpa"]
        assert len(att) >= 1
        assert bool(np.isinf(att["constant"]).all())
        assert bool(att["method"].str.contains("no global bound: dot-product attention").all())
        assert math.isinf(s["upper"]) and s["no_global"]
        # the local bound is finite and bounds every probed sample's Jacobian norm
        assert math.isfinite(s["local_upper"]) and s["local_upper"] >= s["lower"] * (1 - 1e-6)
        assert bool(att["local_method"].str.contains("over the box").all())
        assert "local_upper" in s["local_meaning"]
    else:
        assert s["upper"] >= s["lower"] > 0
    assert bool(np.isfinite(t["lower_max"]).all())


@pytest.mark.parametrize(
    "name", ["vit-mha", "vit-mha-seq-first", "encoder-layer", "mlp-ln-gelu", "resnet20-gn"]
)
def test_image_models_run_end_to_end_from_pt2(name, tmp_path):
    model = _image_models()[name]
    path = _export(model, torch.rand(2, 1, 8, 8), tmp_path / f"{name}.pt2")
    # IBP through 20 group-normed layers grows by orders of magnitude per block (the variance's lower
    # bound reaches 0): float64 keeps the vacuous boxes finite
    kw = dict(eps=1e-3, dtype="float64") if name == "resnet20-gn" else dict(eps=0.01)
    _check_ibp(IBPTightness(model=path, **kw, **FAST).run())
    lip = LipschitzBounds(model=path, **LIP, **FAST).run()
    attention = name != "mlp-ln-gelu" and name != "resnet20-gn"
    _check_lipschitz(lip, attention)
    text = views.lipschitz_summary_text(lip)
    assert "local upper bound" in text
    if attention:
        assert "no global bound at" in text and "dot-product attention" in text
        hv.render(views.lipschitz_plot(lip), backend="bokeh")  # no finite global bound after attention
    if not attention:  # norms: a global (loose) constant, and the local bound beside it
        norms = lip.table[lip.table["kind"].isin(["layernorm", "groupnorm"])]
        assert len(norms) and bool(np.isfinite(norms["constant"]).all())
        assert lip.summary["local_upper"] <= lip.summary["upper"] * (1 + 1e-9)
        assert lip.summary["local_upper"] >= lip.summary["lower"] * (1 - 1e-6)


def test_gpt_decoder_on_token_ids_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    data = _tokens(tmp_path)
    path = _export(GPT(), torch.randint(0, VOCAB, (2, CTX)), tmp_path / "gpt.pt2")
    rng = dict(data=data, data_range=(0.0, VOCAB - 1.0))
    ibp = IBPTightness(model=path, eps=0.25, **rng, **FAST).run()
    _check_ibp(ibp)
    assert {"embedding", "sdpa", "masked_fill", "matmul", "softmax"} <= set(ibp.table["kind"])
    lip = LipschitzBounds(model=path, **LIP, **rng, **FAST).run()
    t = lip.table
    assert bool(np.isinf(t[t["kind"] == "matmul"]["constant"]).all())
    assert bool(t[t["kind"] == "matmul"]["method"].str.contains("no global bound").all())
    assert math.isfinite(lip.summary["local_upper"])


@pytest.mark.parametrize("name", ["vit-mha-seq-first", "vit-mha", "encoder-layer"])
def test_models_exported_with_one_sample_bound_as_their_dynamic_export(name, tmp_path):
    """``torch.export.export(model, (x[:1],))``, the everyday export: at batch 1 the shapes of
    ``nn.MultiheadAttention``'s views do not say where the batch goes (positions x batch, or batch x
    heads); the graph is run to find out (analyses.core.batching). Before: "reshape across the
    batch axis", refused. The bounds equal those of the same model exported with a dynamic batch."""
    model = _image_models()[name].eval()
    dynamic = _export(model, torch.rand(2, 1, 8, 8), tmp_path / "dynamic.pt2")
    one = tmp_path / "one.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 8, 8),)), str(one))
    ibp = [IBPTightness(model=m, eps=0.01, **FAST).run() for m in (dynamic, str(one))]
    np.testing.assert_allclose(ibp[1].table["box_width"], ibp[0].table["box_width"], rtol=1e-4, atol=1e-7)
    assert ibp[1].summary["tightness"] == pytest.approx(ibp[0].summary["tightness"], rel=1e-4)
    notes = ibp[1].meta["notes"]
    assert any("fixed batch size of 1" in n and "made dynamic" in n for n in notes), notes
    lip = [LipschitzBounds(model=m, **LIP, **FAST).run() for m in (dynamic, str(one))]
    for key in ("lower", "local_upper"):
        assert lip[1].summary[key] == pytest.approx(lip[0].summary[key], rel=1e-4), key


def test_gpt_exported_with_one_sequence_bounds_as_its_dynamic_export(tmp_path):
    torch.manual_seed(0)
    model = GPT().eval()
    data = _tokens(tmp_path)
    dynamic = _export(model, torch.randint(0, VOCAB, (2, CTX)), tmp_path / "dynamic.pt2")
    one = tmp_path / "one.pt2"
    torch.export.save(torch.export.export(model, (torch.randint(0, VOCAB, (1, CTX)),)), str(one))
    rng = dict(data=data, data_range=(0.0, VOCAB - 1.0))
    ibp = [IBPTightness(model=m, eps=0.25, **rng, **FAST).run() for m in (dynamic, str(one))]
    np.testing.assert_allclose(ibp[1].table["box_width"], ibp[0].table["box_width"], rtol=1e-4, atol=1e-7)
    assert any("fixed batch size of 1" in n for n in ibp[1].meta["notes"])


# ---------------------------------------------------------------------------- soundness, node by node


def _sound(graph, model, lo, hi, points, rounding=False):
    """Every node's IBP box holds the node's value at every point of the input box."""
    g = graph.to("cpu", torch.float64)
    boxes = interval_bounds(g, lo.double(), hi.double())
    flat = points.reshape((-1,) + tuple(lo.shape[1:])).double()
    with torch.no_grad():
        env = g.forward_all(flat)
        ref = model.double()(flat.round().long() if rounding else flat)
    torch.testing.assert_close(env[g.output_name], ref, atol=1e-9, rtol=1e-9)
    checked = 0
    for s in g.steps:
        blo, bhi = boxes[s.name]
        v = env[s.name].reshape((points.shape[0],) + tuple(blo.shape))
        tol = 1e-9 * (1 + v.abs())
        assert bool((v >= blo - tol).all() and (v <= bhi + tol).all()), f"{s.kind} {s.name} leaves its box"
        checked += 1
    return checked


@pytest.mark.parametrize("batch_first", [True, False])
def test_vit_boxes_hold_random_points_node_by_node(batch_first):
    torch.manual_seed(1)
    model = MHAViT(batch_first=batch_first).eval()
    x = torch.rand(3, 1, 8, 8)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    g = trace(ep, x)
    kinds = {s.kind for s in g.steps}
    assert {"relayout", "sdpa", "layernorm", "gelu"} <= kinds  # the batch moved, and the graph followed
    eps = 0.02
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((200,) + x.shape, generator=gen)
    corners = (torch.rand((100,) + x.shape, generator=gen) < 0.5).float()
    pts = lo + torch.cat([u, corners]) * (hi - lo)
    assert _sound(g, model, lo, hi, pts) == len(g.steps)


def test_gpt_boxes_hold_random_points_node_by_node():
    torch.manual_seed(2)
    model = GPT().eval()
    ids = torch.randint(0, VOCAB, (3, CTX))
    ep = torch.export.export(model, (ids,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    g = trace(ep, ids)
    eps = 0.3  # points of the box round to the same token ids; the embedding's box widens by eps
    lo, hi = ids.double() - eps, ids.double() + eps
    gen = torch.Generator().manual_seed(0)
    pts = lo + torch.rand((300,) + ids.shape, generator=gen, dtype=torch.float64) * (hi - lo)
    assert _sound(g, model, lo, hi, pts, rounding=True) == len(g.steps)
    # one more check that the points move the network: the embedding output box is not a point
    box = interval_bounds(g.to("cpu", torch.float64), lo, hi)
    emb = next(s for s in g.steps if s.kind == "embedding")
    assert bool((box[emb.name][1] - box[emb.name][0] > 0).all())


def test_vit_graph_runs_any_batch_size_and_matches_the_module():
    torch.manual_seed(3)
    model = MHAViT(batch_first=True).eval()
    g = trace(model, torch.rand(2, 1, 8, 8))  # a live module: exported with a dynamic batch
    for n in (1, 5):
        x = torch.rand(n, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(g.forward(x), model(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- Lipschitz composition


class BroadcastAdd(nn.Module):
    """``x`` broadcast three times plus a tiny linear branch: the network's constant is about
    ``sqrt(3)``, while adding the branches' bounds without the broadcast factor gives about 1."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 24)
        with torch.no_grad():
            self.lin.weight.mul_(1e-3)

    def forward(self, x):
        h = x.flatten(1, 2)[:, 0]  # (N, 8): the first image row
        y = h.unsqueeze(1) + self.lin(h).reshape(-1, 3, 8)  # (N, 1, 8) broadcast against (N, 3, 8)
        return y.flatten(1)[:, :10]


def test_lipschitz_upper_bound_counts_a_broadcast_branch_sqrt_k_times():
    torch.manual_seed(4)
    res = LipschitzBounds(model=BroadcastAdd(), **LIP, **FAST).run()
    s = res.summary
    # the Jacobian norm (a lower bound) is about sqrt(2): above the 1.003 that summing the branches gave
    assert s["lower"] > 1.05
    assert s["upper"] >= s["lower"] * (1 - 1e-6)
    add = res.table[res.table["kind"] == "add"].iloc[0]
    assert add["upper"] >= math.sqrt(3) * (1 - 1e-6)
    # plain networks with global constants get no local columns (the table as it always was)
    assert "local_upper" not in res.table and "local_upper" not in s

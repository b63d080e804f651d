"""Permutation specs and weight matching beyond MLPs and CNNs: a small ViT (patch convolution,
class token, positional table, LayerNorm + multi-head attention + GELU MLP blocks), a GPT-style
decoder on token ids (embeddings, fused q/k/v split into heads, causal mask, manual attention),
and ResNet-20-style CNNs with LayerNorm and with GroupNorm. Random permutations of heads, head
dimensions and channels are recovered exactly; permuted models compute the same function."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.connectivity.analysis import ModeConnectivity
from analyses.connectivity.matching import (
    activation_matching,
    apply_permutation,
    full_permutations,
    identity_permutation,
    inverse_permutation,
    merge_many,
    random_permutation,
    weight_matching,
)
from analyses.connectivity.spec import infer_spec
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError

pytestmark = pytest.mark.usefixtures("one_thread")


class ViTBlock(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, d=16, heads=4, mlp=24, patch=4, img=8, classes=10, depth=2):
        super().__init__()
        self.patch = nn.Conv2d(1, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d))
        self.blocks = nn.Sequential(*[ViTBlock(d, heads, mlp) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


class GPTBlock(nn.Module):
    """Hugging Face GPT-2 style: fused q/k/v split, heads by view/transpose, causal mask buffer."""

    def __init__(self, d, heads, ctx, norm=nn.LayerNorm):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = norm(d), norm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))

    def forward(self, x):
        n, L, d = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(n, L, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        w = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        w = w.masked_fill(self.bias[:, :, :L, :L] == 0, float("-inf")).softmax(-1)
        a = (w @ v).transpose(1, 2).reshape(n, L, d)
        x = x + self.c_proj(a)
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=20, d=12, heads=3, ctx=6, depth=2, norm=nn.LayerNorm):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.Sequential(*[GPTBlock(d, heads, ctx, norm) for _ in range(depth)])
        self.ln_f = norm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.lm_head(self.ln_f(self.h(self.wte(ids) + self.wpe(pos))))


class TimmAttention(nn.Module):
    """timm's layout: q, k, v by one reshape of the fused projection, permute, unbind."""

    def __init__(self, d=12, heads=3):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.embed, self.fc = nn.Linear(7, d), nn.Linear(d, 5)

    def forward(self, x):
        x = self.embed(x)
        n, L, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, L, d))
        return self.fc(x.mean(1))


class BertAttention(nn.Module):
    """Hugging Face BERT's layout: separate q, k, v layers, view + permute, matmul, softmax,
    post-norm, the first token's output."""

    def __init__(self, d=12, heads=3):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.embed, self.ln, self.fc = nn.Linear(7, d), nn.LayerNorm(d), nn.Linear(d, 5)

    def _heads(self, t):
        n, L, d = t.shape
        return t.view(n, L, self.heads, d // self.heads).permute(0, 2, 1, 3)

    def forward(self, x):
        x = self.embed(x)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)), dim=-1)
        c = (p @ v).permute(0, 2, 1, 3).contiguous()
        x = self.ln(x + self.o(c.view(c.size(0), c.size(1), -1)))
        return self.fc(x[:, 0])


class HeadBias(nn.Module):
    """Attention with a learned per-head additive bias (relative-position style): it moves with the
    heads."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o, self.fc = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 3)
        self.bias = nn.Parameter(torch.randn(2, 5, 5))

    def forward(self, x):
        n = x.shape[0]
        q, k, v = (t.view(n, 5, 2, 4).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.fc(self.o(a.transpose(1, 2).reshape(n, 5, 8)).mean(1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an (N, C, H, W) map (channels last, as Git Re-Basin's ResNet-20)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, c: int) -> nn.Module:
    return LayerNorm2d(c) if kind == "ln" else nn.GroupNorm(2, c)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, kind):
        super().__init__()
        self.conv1, self.n1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(kind, cout)
        self.conv2, self.n2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(kind, cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(kind, cout))

    def forward(self, x):
        h = self.n2(self.conv2(F.relu(self.n1(self.conv1(x)))))
        return F.relu(h + (x if self.short is None else self.short(x)))


class ResNet20(nn.Module):
    """ResNet-20's layout (three stages, widths w, 2w, 4w; here 2 blocks a stage) with LayerNorm
    or GroupNorm(2 groups) in place of BatchNorm."""

    def __init__(self, kind="ln", w=4, blocks=2, classes=10):
        super().__init__()
        self.conv, self.n = nn.Conv2d(1, w, 3, 1, 1, bias=False), _norm(kind, w)
        layers, cin = [], w
        for i, c in enumerate((w, 2 * w, 4 * w)):
            for j in range(blocks):
                layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1, kind))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.layers(F.relu(self.n(self.conv(x)))).mean((2, 3)))


def _randomise_norms(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen))
    return model.eval()


CASES = {
    "vit": (ViT, lambda: torch.randn(6, 1, 8, 8)),
    "gpt": (GPT, lambda: torch.randint(0, 20, (6, 6))),
    "gpt-rmsnorm": (lambda: GPT(norm=nn.RMSNorm), lambda: torch.randint(0, 20, (6, 6))),
    "timm-attention": (TimmAttention, lambda: torch.randn(6, 5, 7)),
    "bert-attention": (BertAttention, lambda: torch.randn(6, 5, 7)),
    "head-bias": (HeadBias, lambda: torch.randn(6, 5, 8)),
    "resnet20-ln": (lambda: ResNet20("ln"), lambda: torch.randn(6, 1, 8, 8)),
    "resnet20-gn": (lambda: ResNet20("gn"), lambda: torch.randn(6, 1, 8, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_random_permutation_is_recovered_exactly(case):
    factory, data = CASES[case]
    torch.manual_seed(0)
    model = _randomise_norms(factory())
    x = data()
    spec, _ = infer_spec(model, x[:2])
    state = model.state_dict()
    perms = random_permutation(spec, seed=3)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted = apply_permutation(state, spec, perms)
    twin = factory()
    twin.load_state_dict(permuted, strict=True)
    twin.eval()
    with torch.no_grad():
        assert (model(x) - twin(x)).abs().max().item() <= 1e-4
    res = weight_matching(state, permuted, spec, seed=0)
    want = inverse_permutation(perms, spec)
    assert all(torch.equal(res.perms[g], want[g]) for g in spec.groups), case
    back = apply_permutation(permuted, spec, res.perms)
    assert all(torch.equal(back[k], state[k]) for k in state)


def _composite_of(spec, param, axis):
    return next(
        c for c in spec.composites.values() if any((a.param, a.axis) == (param, axis) for a in c.axes)
    )


def test_vit_spec_heads_and_residual_stream():
    spec, _ = infer_spec(ViT().eval(), torch.randn(2, 1, 8, 8))
    stream = [g for g in spec.groups.values() if g.residual]
    assert len(stream) == 1
    axes = {(a.param, a.axis) for a in stream[0].axes}
    assert {
        ("patch.weight", 0), ("cls", 2), ("pos", 2), ("blocks.0.ln1.weight", 0), ("blocks.0.attn.in_proj_weight", 1),
        ("blocks.0.attn.out_proj.weight", 0), ("blocks.1.mlp.2.weight", 0), ("ln.bias", 0), ("head.weight", 1),
    } <= axes  # fmt: skip
    for b in (0, 1):
        qkv = _composite_of(spec, f"blocks.{b}.attn.in_proj_weight", 0)
        assert (qkv.blocks, qkv.block, qkv.outer) == (3, 16, None)  # q, k, v stay in place
        q, k, v = (spec.composites[n] for n in qkv.inner)
        assert (q.blocks, q.block) == (4, 4)
        # query and key share one permutation (heads and within heads); value shares the heads only
        assert q.outer == k.outer == v.outer and q.inner == k.inner
        assert not set(q.inner) & set(v.inner)
        assert v is _composite_of(spec, f"blocks.{b}.attn.out_proj.weight", 1)
        assert {g: spec.groups[g].size for g in (q.outer, *q.inner, *v.inner)} == dict.fromkeys(
            (q.outer, *q.inner, *v.inner), 4
        )


def test_heads_move_as_blocks():
    spec, _ = infer_spec(ViT().eval(), torch.randn(2, 1, 8, 8))
    v = _composite_of(spec, "blocks.0.attn.out_proj.weight", 1)
    moved = 0
    for seed in range(4):
        p = full_permutations(spec, random_permutation(spec, seed=seed))[v.name].reshape(v.blocks, v.block)
        heads = p // v.block
        assert (heads == heads[:, :1]).all()  # every head dimension of a head goes to one head
        moved += not torch.equal(heads[:, 0], torch.arange(v.blocks))
    assert moved


def test_group_norm_permutes_within_and_between_groups():
    spec, _ = infer_spec(ResNet20("gn").eval(), torch.randn(2, 1, 8, 8))
    comp = _composite_of(spec, "n.weight", 0)
    assert (comp.blocks, comp.block) == (2, 2) and comp.outer is not None
    # channels of the first stage's residual stream: two groups of two
    full = full_permutations(spec, random_permutation(spec, seed=1))
    p = full[comp.name].reshape(2, 2) // 2
    assert (p == p[:, :1]).all()


def test_merging_permuted_copies_gives_back_the_model():
    """MergeMany over three head- and channel-permuted copies of one ViT aligns them exactly: their
    average computes the model's function."""
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.randn(8, 1, 8, 8)
    spec, _ = infer_spec(model, x[:2])
    state = model.state_dict()
    copies = [apply_permutation(state, spec, random_permutation(spec, seed=s)) for s in (1, 2, 3)]
    merged, perms = merge_many(copies, spec, seed=0)
    assert len(perms) == 3
    twin = ViT()
    twin.load_state_dict(merged, strict=True)
    twin.eval()
    with torch.no_grad():
        assert (twin(x) - model(x)).abs().max().item() <= 1e-4


def test_per_head_bias_moves_with_the_heads():
    spec, _ = infer_spec(HeadBias().eval(), torch.randn(2, 5, 8))
    ((axis, group, _),) = spec.param_axes()["bias"]
    qkv = _composite_of(spec, "qkv.weight", 0)
    assert axis == 0 and group == spec.composites[qkv.inner[2]].outer


def test_gpt_spec_embeddings_join_the_stream():
    spec, _ = infer_spec(GPT().eval(), torch.randint(0, 20, (2, 6)))
    stream = [g for g in spec.groups.values() if g.residual]
    assert len(stream) == 1
    axes = {(a.param, a.axis) for a in stream[0].axes}
    assert {("wte.weight", 1), ("wpe.weight", 1), ("h.0.c_attn.weight", 1), ("lm_head.weight", 1)} <= axes
    assert "h.0.bias" not in spec.param_axes()  # the causal mask is not permuted


def test_activation_matching_with_heads_keeps_the_function():
    torch.manual_seed(0)
    a, b = ViT().eval(), ViT().eval()
    x = torch.randn(16, 1, 8, 8)
    spec, gm = infer_spec(a, x[:2])
    res = activation_matching(gm, a.state_dict(), b.state_dict(), spec, [x])
    assert set(res.perms) == set(identity_permutation(spec))
    twin = ViT()
    twin.load_state_dict(apply_permutation(b.state_dict(), spec, res.perms), strict=True)
    twin.eval()
    with torch.no_grad():
        assert (twin(x) - b(x)).abs().max().item() <= 1e-4


class Mixer(nn.Module):
    """Attention over a permuted sequence axis (tokens mixed by a linear layer first)."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x):  # (N, 6, 4): the linear layer makes the last axis (then the tokens) permuted
        t = self.tok(x).transpose(1, 2)
        return self.attn(t, t, t, need_weights=False)[0].sum(1)


def test_permuted_sequence_positions_are_refused_in_one_line():
    with pytest.raises(NNVitalsError, match=r"scaled_dot_product_attention.*sequence positions") as e:
        infer_spec(Mixer().eval(), torch.randn(2, 6, 4))
    assert "\n" not in str(e.value)


def test_connectivity_runs_on_a_vit_pair_and_permuted_b_is_b():
    """The whole analysis on two ViTs (as exported programs, as ``.pt2`` files load): weight
    matching through the heads, ``permuted_b`` loads strictly and computes B's function."""
    x = load_digits(split="test").x
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = ViT().eval()
        ep = torch.export.export(m, (x[:4],), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}})
        pair.append((m, ep.module()))
    res = ModeConnectivity(
        model_a=pair[0][1], model_b=pair[1][1], match="weights", points=3, cache=False, show_progress=False
    ).run()
    assert res.summary["l2_after"] < res.summary["l2_before"]
    twin = ViT()
    twin.load_state_dict(res.permuted_b, strict=True)
    twin.eval()
    with torch.no_grad():
        assert (twin(x) - pair[1][0](x)).abs().max().item() <= 1e-4

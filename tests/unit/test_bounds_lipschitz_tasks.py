"""LipschitzBounds' tasks (issue 13, Speed): the layer constants in one batched call, the lower bound
through :func:`~analyses.bounds.lipschitz.jacobian_start` (token ids: from the embedding's output), no
midpoints and no gradient ascent on integer token ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analyses.bounds import lipschitz as L
from analyses.bounds.analysis import LipschitzBounds, constants_task

FAST = dict(cache=False, show_progress=False, max_samples=6)


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


def _tokens(n=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 20, (n, 5), generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_token_model_lower_bound_from_the_embedding_output_without_mixes_or_sharpening(tmp_path):
    m = _Tokens().eval()
    x, y = _tokens()
    np.savez(tmp_path / "tokens.npz", ids=x.numpy(), y=y.numpy())
    a = LipschitzBounds(
        model=m, data=str(tmp_path / "tokens.npz"), data_range=(0.0, 19.0), mixes=4, sharpen=True, iters=50, jacobian_iters=10, **FAST
    )  # fmt: skip
    res = a.run()
    assert res.splits == ["data"]  # no midpoints of token ids, no sharpened set
    assert "lower_sharpened" not in res.summary
    got = res.jacobian_norms("data")
    x = a.datasets()["data"].x
    assert not x.is_floating_point()
    with torch.no_grad():
        h = (m.emb(x) + m.pos(torch.arange(5))).flatten(1)
        ref = torch.stack(
            [torch.linalg.matrix_norm(m.head.weight * (1 - torch.tanh(hb) ** 2), ord=2) for hb in h]
        )
    np.testing.assert_allclose(np.sort(got), np.sort(ref.double().numpy()), rtol=1e-5)
    assert res.summary["lower"] > 0
    # every step's lower bound is measured from the embedding's output: the embedding itself is 1
    t = res.table.set_index("kind")
    emb_rows = res.table[res.table["kind"] == "embedding"]
    assert len(emb_rows) >= 1 and any(abs(v - 1.0) < 1e-5 for v in emb_rows["lower_max"])
    assert math.isfinite(float(t.loc["linear", "lower_max"]))


def test_image_model_keeps_mixes_and_sharpening():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)).eval()
    res = LipschitzBounds(
        model=m, mixes=4, sharpen=True, sharpen_samples=2, sharpen_steps=2, iters=50, **FAST
    ).run()
    assert set(res.splits) == {"train", "test", "mix", "sharpened"}
    assert res.summary["upper"] >= res.summary["lower"] > 0


def test_one_constants_task_gives_every_step_its_own_constant():
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 10),
    ).eval()  # fmt: skip
    a = LipschitzBounds(model=m, mixes=0, per_layer=False, iters=300, tol=1e-10, **FAST)
    tasks = a._tasks(a.subject())
    const_tasks = [t for t in tasks if t.fn is constants_task]
    assert len(const_tasks) == 1
    g = a.graph()
    s = a.settings()
    L.clear_norm_cache()
    got = constants_task(g, s)
    assert set(got) == {st.name for st in g.steps}
    g64 = g.to("cpu", torch.float64)
    for st in g64.steps:
        L.clear_norm_cache()
        ref = L.layer_constant(st, iters=300, tol=1e-10, seed=0)
        assert got[st.name][1] == ref[1]
        if math.isfinite(ref[0]):
            assert got[st.name][0] == pytest.approx(ref[0], rel=1e-7), st.label
    res = a.run()
    assert list(res.table["node"]) == [st.name for st in g.steps]


def test_top_ritz_pair_equals_the_dense_eigensolve():
    gen = torch.Generator().manual_seed(2)
    for g, k in ((1, 1), (3, 2), (2, 40), (4, 150)):
        a = torch.rand(g, k, generator=gen, dtype=torch.float64) * 10
        b = torch.rand(g, k - 1, generator=gen, dtype=torch.float64)
        theta, s = L._top_ritz(a, b)
        tri = torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
        ev, evec = torch.linalg.eigh(tri)
        torch.testing.assert_close(theta, ev[:, -1], rtol=1e-13, atol=0)
        # the same unit vector up to sign, and an eigenvector of its matrix
        torch.testing.assert_close(s.abs(), evec[:, :, -1].abs(), rtol=0, atol=1e-9)
        resid = (tri @ s.unsqueeze(-1)).squeeze(-1) - theta.unsqueeze(1) * s
        assert float(resid.abs().max()) <= 1e-10 * float(theta.abs().max())

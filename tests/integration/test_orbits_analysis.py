"""OrbitAnalysis end to end: real models, the bundled digits, the result store, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analyses import NNVitalsError, OrbitAnalysis, OrbitResult
from analyses.orbits import views as V


class SmallCnn(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class C4Averaged(nn.Module):
    """Exactly invariant under quarter turns: logits averaged over the four rotations."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.inner = SmallCnn(seed)

    def forward(self, x):
        return sum(self.inner(torch.rot90(x, k, dims=(2, 3))) for k in range(4)) / 4


def _run(**kw) -> OrbitResult:
    kw.setdefault("cache", False)
    kw.setdefault("show_progress", False)
    kw.setdefault("max_samples", 120)
    return OrbitAnalysis(**kw).run()


def test_table_rows_columns_and_summary():
    res = _run(model=[SmallCnn(1), C4Averaged(2)], steps=24)
    assert res.models == ["SmallCnn", "C4Averaged"]
    assert len(res.table) == 2 * 120 * 24
    assert {"model", "sample", "label", "angle", "element", "score", "correct", "predicted"} <= set(res.table)
    np.testing.assert_allclose(np.sort(res.table["angle"].unique()), np.arange(24) * 15.0)
    for name in res.models:
        s = res.summary["models"][name]
        curve = res.aggregate(name)
        assert s["mean_score"] == pytest.approx(curve.mean(), abs=1e-6)
        assert s["gap"] == pytest.approx(curve.max() - curve.min(), abs=1e-6)
    # the C4-averaged model is flat at the exact elements (pixel permutations), to float rounding
    assert res.summary["models"]["C4Averaged"]["gap_at_90"] < 1e-5
    per_sample = res.scores("C4Averaged")[:, ::6]  # 0, 90, 180, 270 degrees
    assert np.abs(per_sample - per_sample[:, :1]).max() < 1e-5
    # scores agree with a direct computation
    m = SmallCnn(1).eval()
    x = torch.from_numpy(res.images[:4])
    with torch.no_grad():
        p = torch.softmax(m(torch.rot90(x, 1, dims=(2, 3))), 1)
    direct = p[torch.arange(4), torch.from_numpy(res.labels[:4])].numpy()
    np.testing.assert_allclose(res.scores("SmallCnn")[:4, 6], direct, atol=1e-5)


def test_demo_models_plain_augmented_equivariant():
    """The zoo's three rotation models: C4 flat at its elements, the plain CNN not, augmentation between."""
    res = _run(model=["rot-cnn", "rot-cnn-aug", "rot-cnn-c4"], steps=72, max_samples=None)
    s = res.summary["models"]
    assert s["rot-cnn-c4"]["gap_at_90"] < 1e-4
    assert s["rot-cnn"]["gap_at_90"] > 0.3
    assert s["rot-cnn"]["mean_score"] < s["rot-cnn-aug"]["mean_score"]
    assert s["rot-cnn-aug"]["gap"] < s["rot-cnn"]["gap"]
    assert s["rot-cnn-c4"]["gap_at_90"] < s["rot-cnn-aug"]["gap_at_90"] < s["rot-cnn"]["gap_at_90"]


@pytest.mark.parametrize(
    ("group", "kw", "n", "cols"),
    [
        ("shift", dict(shift_range=2, shift_step=1), 25, ["dx", "dy"]),
        ("scale", dict(scale_range=(0.5, 1.5), scale_step=0.25), 5, ["scale"]),
        ("flip", {}, 2, ["flip"]),
        ("rotation-flip", dict(steps=8), 16, ["angle", "flip"]),
    ],
)
def test_other_groups(group, kw, n, cols):
    res = _run(model="cnn", data="digits8", group=group, max_samples=40, **kw)
    assert len(res.elements) == n and len(res.table) == 40 * n
    assert set(cols) <= set(res.table)
    identity = res.table[(res.table[cols].abs().sum(axis=1) == 0) | (res.table.get("scale", 0) == 1.0)]
    assert len(identity) >= 40
    for name, fig in V.main_figures(res).items():
        assert fig is not None, name


def test_scores_correct_margin_consensus():
    base = dict(model="cnn", data="digits8", steps=8, max_samples=60)
    prob = _run(score="probability", **base)
    corr = _run(score="correct", **base)
    marg = _run(score="margin", **base)
    cons = _run(score="consensus", **base)
    # correct is 1 exactly where the margin is positive
    np.testing.assert_array_equal(corr.scores(0) == 1.0, marg.scores(0) > 0)
    # a probability above 0.5 means the prediction is right
    assert np.all(corr.scores(0)[prob.scores(0) > 0.5] == 1.0)
    # consensus: the probability of the class the orbit's mean probabilities favour
    probs = prob.probs(0)  # (N, E, K)
    consensus = probs.mean(axis=1).argmax(axis=1)
    np.testing.assert_allclose(cons.scores(0), probs[np.arange(60), :, consensus], atol=1e-6)
    assert "consensus" in cons.table


def test_class_subset_and_result_store(tmp_path):
    kw = dict(
        model="cnn", data="digits8", steps=4, classes=[3, 7], cache_dir=str(tmp_path), show_progress=False
    )
    first = OrbitAnalysis(**kw).run()
    assert set(first.labels) == {3, 7}
    again = OrbitAnalysis(**kw).run()
    assert again.meta["cached"] and not first.meta["cached"]
    np.testing.assert_array_equal(again.scores(0), first.scores(0))
    path = first.save(tmp_path / "o.nnv")
    loaded = OrbitResult.load(path)
    assert loaded.models == first.models and loaded.elements.label(1) == "90°"
    np.testing.assert_array_equal(loaded.transformed(0, 1)[0], np.rot90(first.images[0, 0], 1))


def test_exported_program_and_npz(tmp_path):
    m = SmallCnn(3).eval()
    x = torch.rand(30, 1, 12, 12)
    batch = torch.export.Dim("b", min=1, max=1 << 16)
    ep = torch.export.export(m, (x[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.arange(30) % 10)
    res = _run(model=str(tmp_path / "m.pt2"), data=str(tmp_path / "d.npz"), steps=6, max_samples=None)
    assert len(res.table) == 30 * 6
    with torch.no_grad():
        ref = torch.softmax(m(x), 1)[torch.arange(30), torch.arange(30) % 10]
    np.testing.assert_allclose(res.scores(0)[:, 0], ref.numpy(), atol=1e-5)


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_bad_input_gets_one_clear_message(tmp_path):
    y = np.zeros(8, dtype=np.int64)
    cases = [
        (
            dict(data=_bad(tmp_path, "flat.npz", x=np.random.rand(8, 64), y=y)),
            r"images of shape \(N, C, H, W\)",
        ),
        (
            dict(data=_bad(tmp_path, "range.npz", x=np.random.rand(8, 1, 8, 8) * 255, y=y)),
            r"must lie in \[0, 1\]",
        ),
        (dict(classes=[99]), r"classes: \[99\] outside"),
        (dict(model="mlp", data="digits16"), "failed on images of shape"),
        (dict(model="assets/zoo/cnn.safetensors"), "holds weights only"),
        (
            dict(
                model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(1), nn.Unflatten(1, (2, 5)))
            ),
            r"class scores of shape \(batch, classes\)",
        ),  # fmt: skip
        (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3))), "gives 3 class scores"),
        (dict(model=[]), "model: not set"),
    ]
    for kw, pattern in cases:
        kw = dict(dict(model="cnn", data="digits8", steps=4), **kw)
        with pytest.raises(NNVitalsError, match=pattern):
            _run(**kw)
    with pytest.raises(NNVitalsError, match=r"no sample of .* has these labels"):
        data = (torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 9]))
        _run(model="cnn", data=data, classes=[5], steps=4)


def test_float64_runs_on_a_copy_and_agrees():
    m = SmallCnn(4)
    r32 = _run(model=m, steps=4, max_samples=20)
    r64 = _run(model=m, steps=4, max_samples=20, dtype="float64")
    assert next(m.parameters()).dtype == torch.float32  # the user's module is not converted
    np.testing.assert_allclose(r64.scores(0), r32.scores(0), atol=1e-5)

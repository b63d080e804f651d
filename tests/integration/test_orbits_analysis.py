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
    res = _run(model=["rot-cnn", "rot-cnn-aug", "rot-cnn-c4"], steps=24, max_samples=250)  # 15 degree steps
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
        (
            dict(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3))),
            r"data digits-test: labels go up to 9 but model Sequential has 3 outputs",
        ),
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


class _NaNAt(nn.Module):
    """Finite class scores, except NaN for images whose top-left pixel is lit (rotations light it)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return torch.where(x[:, :, 0, 0].amax(1, keepdim=True) > 0.05, torch.nan, z)


def test_labels_outputs_and_nan_get_one_line_naming_data_and_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 8, 8)).astype(np.float32)
    x[:, :, 0, 0] = 0
    path = tmp_path / "x.npz"
    np.savez(path, x=x, y=np.r_[np.arange(11) % 10, 12])
    ten = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(NNVitalsError) as info:
        _run(model=ten, data=str(path), steps=4)
    assert str(info.value) == f"data {path}: labels go up to 12 but model Sequential has 10 outputs"
    nan = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.0), nn.Threshold(1e9, torch.nan))
    with pytest.raises(
        NNVitalsError, match=r"model Sequential: gives non-finite class scores .* data digits-test"
    ):
        _run(model=nan, data="digits8", steps=4)
    # finite on the upright images, NaN once a rotation moves ink into the corner: caught in the run
    with pytest.raises(
        NNVitalsError,
        match=r"model _NaNAt: gave non-finite class scores \(NaN or inf\) at element \d+° of the orbit",
    ):
        _run(model=_NaNAt(), data=(torch.from_numpy(x), torch.arange(12) % 10), steps=8)


def test_unbounded_knobs_are_refused_before_allocating():
    """shift_range=500, shift_step=0.1 asked for 100 million elements (74.5 GiB: MemoryError)."""
    cases = [
        (dict(group="shift", shift_range=500.0, shift_step=0.1), r"shift_range/shift_step: 100,020,001 group elements"),
        (dict(group="shift", shift_range=500.0, shift_step=0.01), r"lower shift_range or raise shift_step"),
        (dict(group="scale", scale_range=(0.001, 1000.0), scale_step=0.001), r"scale_range/scale_step: 1,000,000 group"),
        (dict(group="scale", scale_range=(0.5, 1e12)), r"narrow scale_range or raise scale_step"),
        (dict(group="shift", shift_range=float("inf")), r"shift_range: expected a finite number"),
        (dict(group="scale", scale_range=(0.5, float("inf"))), r"scale_range: expected 0 < smallest <= largest"),
    ]  # fmt: skip
    for kw, pattern in cases:
        with pytest.raises(NNVitalsError, match=pattern):
            _run(model="cnn", data="digits8", **kw)


def test_orbit_points_and_pixels_are_budgeted(monkeypatch):
    import analyses.orbits.analysis as A

    # 641,601 shift elements x 120 samples: 77 million points; the message says what to lower
    with pytest.raises(NNVitalsError) as info:
        _run(model="cnn", data="digits8", group="shift", shift_range=40.0, shift_step=0.1)
    msg = str(info.value)
    assert msg.startswith("shift_range/shift_step: 641,601 group elements (x 120 samples) need ~")
    assert "GiB of results" in msg and "(at most 83,333 elements for 120 samples)" in msg
    assert "max_samples" in msg and "\n" not in msg
    monkeypatch.setattr(A, "MAX_POINTS", 1000)
    with pytest.raises(
        NNVitalsError, match=r"^steps: 72 group elements \(x 120 samples x 2 models\).*lower steps"
    ):
        _run(model=["cnn", "cnn"], data="digits8")
    monkeypatch.setattr(A, "MAX_POINTS", 100)
    with pytest.raises(
        NNVitalsError, match=r"^group 'flip': 2 group elements .*: set max_samples \(at most 50 samples\)$"
    ):
        _run(model="cnn", data="digits8", group="flip")
    monkeypatch.setattr(A, "MAX_POINTS", 10**9)
    monkeypatch.setattr(A, "MAX_PIXELS", 10**5)
    with pytest.raises(NNVitalsError, match=r"of 1x8x8 images are 552,960 pixels"):
        _run(model="cnn", data="digits8")


def test_big_but_allowed_orbit_runs_in_bounded_batches():
    # 625 shift elements (sub-pixel steps: resampled) x 6 samples, in tasks and resampling groups
    res = _run(model="cnn", data="digits8", group="shift", shift_range=3.0, shift_step=0.25, max_samples=6)
    assert res.scores(0).shape == (6, 625) and np.isfinite(res.scores(0)).all()
    assert res.summary["elements"] == 625


@pytest.mark.parametrize("score", ["probability", "consensus"])
def test_results_do_not_depend_on_how_the_work_is_grouped(monkeypatch, score):
    """Tasks of one sample and groups of one element give the same result as the default batching."""
    import analyses.orbits.analysis as A

    kw = dict(model="cnn", data="digits8", steps=6, max_samples=5, score=score, batch_size=4)
    ref = _run(**kw)
    monkeypatch.setattr(A, "TASK_BYTES", 6 * 10 * 4)  # one sample per task; consensus: just enough
    monkeypatch.setattr(A, "GROUP_BYTES", 1)
    got = _run(**kw)
    np.testing.assert_allclose(got.scores(0), ref.scores(0), atol=1e-6)
    np.testing.assert_array_equal(got.predicted(0), ref.predicted(0))
    np.testing.assert_allclose(got.probs(0), ref.probs(0), atol=1e-6)
    if score == "consensus":  # TASK_BYTES also bounds the probabilities consensus holds per sample
        monkeypatch.setattr(A, "TASK_BYTES", 6 * 10 * 4 - 1)
        with pytest.raises(
            NNVitalsError, match=r"^score 'consensus': keeps every element's class .* lower steps"
        ):
            _run(**kw, group="rotation")

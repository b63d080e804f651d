"""IBPTightness and LipschitzBounds end to end: demo models, a residual CNN with BN, errors, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.analysis import IBPResult, IBPTightness, LipschitzBounds, LipschitzResult
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.core.result import Result

FAST = dict(cache=False, show_progress=False, max_samples=24)


class ResNetBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular")
        self.bn1 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(h + self.bn1(self.conv(h)))
        h = F.avg_pool2d(F.max_pool2d(h, 2), 2)
        return self.head(torch.flatten(h, 1))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = ResNetBN()
    for bn in (m.bn0, m.bn1):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_ibp_on_demo_models(model):
    res = IBPTightness(model=model, eps=0.01, eps_sweep=[0.0, 0.05], **FAST).run()
    assert isinstance(res, IBPResult)
    t = res.table
    assert {
        "position",
        "name",
        "kind",
        "tightness",
        "box_width",
        "stable_active",
        "stable_inactive",
        "unstable",
    } <= set(t)
    assert t["tightness"].between(0, 1 + 1e-6).all()
    assert t["is_output"].sum() == 1 and t.iloc[-1]["is_output"]
    relu = t[t["kind"] == "relu"]
    assert np.allclose(relu[["stable_active", "stable_inactive", "unstable"]].sum(1), 1.0)
    s = res.summary
    assert 0 <= s["tightness"] <= 1 and s["samples"] == 24
    assert s["certified_accuracy"] <= s["clean_accuracy"] and s["clean_accuracy"] > 0.8
    assert res.arrays["sweep_certified"][0] == pytest.approx(s["clean_accuracy"])  # eps = 0
    assert res.arrays["sweep_certified"][1] <= s["certified_accuracy"]
    back = Result.from_bytes(res.to_bytes())
    assert isinstance(back, IBPResult) and back.summary["tightness"] == s["tightness"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_lipschitz_on_demo_models(model):
    res = LipschitzBounds(model=model, mixes=8, per_layer=(model == "mlp"), **FAST).run()
    assert isinstance(res, LipschitzResult)
    t = res.table
    has = t["lower_max"].notna()
    assert has.sum() == (len(t) if model == "mlp" else 1)
    assert (t["upper"][has] >= t["lower_max"][has] * (1 - 1e-6)).all()
    s = res.summary
    assert s["upper"] >= s["lower"] > 0 and s["ratio"] >= 1
    assert set(s["samples"]) == {"train", "test", "mix"}
    assert res.jacobian_norms("mix").shape == (8,)
    assert s["lower"] == pytest.approx(max(s["lower_train"], s["lower_test"], s["lower_mix"]))
    back = Result.from_bytes(res.to_bytes())
    assert isinstance(back, LipschitzResult) and back.summary["upper"] == s["upper"]


def test_residual_cnn_with_bn_both_analyses(resnet):
    data = load_digits(split="test")
    ibp = IBPTightness(model=resnet, data=data, eps=0.005, spec="identity", relu="linear", **FAST).run()
    assert ibp.table["kind"].tolist()[:4] == ["conv", "relu", "conv", "add"]
    assert ibp.table.iloc[0]["name"] == "stem+bn0"
    assert 0 < ibp.summary["tightness"] <= 1
    lip = LipschitzBounds(model=resnet, data=(data.x[:20], data.y[:20]), mixes=4, sharpen=True,
                          sharpen_samples=2, sharpen_steps=1, jacobian_iters=10, **FAST).run()  # fmt: skip
    assert set(lip.summary["samples"]) == {"data", "mix"}
    add = lip.table[lip.table["kind"] == "add"].iloc[0]
    conv = lip.table[lip.table["kind"] == "conv"].iloc[1]
    relu = lip.table[lip.table["kind"] == "relu"].iloc[0]
    assert add["upper"] == pytest.approx(relu["upper"] * (1 + conv["constant"]))  # 1 + branch
    assert "FFT" in conv["method"]
    assert lip.summary["lower_sharpened"] >= 0 and lip.summary["upper"] >= lip.summary["lower"]


def test_bad_inputs_raise_one_clear_error(resnet):
    with pytest.raises(NNVitalsError, match="eps: must be a finite number >= 0"):
        IBPTightness(model="mlp", eps=-0.1, **FAST).run()
    x = torch.rand(10, 1, 8, 8) * 2
    with pytest.raises(NNVitalsError, match=r"outside data_range \[0, 1\]"):
        LipschitzBounds(model="mlp", data=(x, torch.zeros(10, dtype=torch.long)), **FAST).run()
    odd = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Softplus(), nn.Linear(8, 10))
    with pytest.raises(NNVitalsError, match=r"unsupported op aten.softplus.default at node 'softplus'"):
        IBPTightness(model=odd, **FAST).run()
    with pytest.raises(NNVitalsError, match="data_range"):
        IBPTightness(model="mlp", data_range=(1.0, 0.0), **FAST).run()


def test_cache_key_includes_data(tmp_path):
    d1, d2 = load_digits(split="test"), load_digits(split="train")
    a = IBPTightness(model="mlp", data=d1, cache_dir=str(tmp_path), show_progress=False, max_samples=8)
    b = IBPTightness(model="mlp", data=d2, cache_dir=str(tmp_path), show_progress=False, max_samples=8)
    assert a.cache_key() != b.cache_key()
    first = a.run()
    again = IBPTightness(
        model="mlp", data=d1, cache_dir=str(tmp_path), show_progress=False, max_samples=8
    ).run()
    assert not first.meta["cached"] and again.meta["cached"]
    assert again.summary["tightness"] == pytest.approx(first.summary["tightness"])


def test_pt2_export_walked_as_is(tmp_path):
    from analyses.zoo import load_demo

    path = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(load_demo("cnn"), (torch.rand(2, 1, 8, 8),)), path)
    a = IBPTightness(model=str(path), **FAST).run()
    b = IBPTightness(model="cnn", **FAST).run()
    assert a.summary["tightness"] == pytest.approx(b.summary["tightness"])
    with pytest.raises(NNVitalsError, match="weights only"):
        IBPTightness(model="assets/zoo/cnn.safetensors", **FAST).run()


def test_tightness_over_ibp_training_checkpoints():
    """The paper's claim over training: IBP training raises tightness (init -> early -> final)."""
    from analyses.bounds.analysis import tightness_over_checkpoints
    from analyses.zoo import load_demo
    from analyses.zoo.recipe import build, train

    checkpoints = [build("ibp-cnn"), train("ibp-cnn", steps=120), load_demo("ibp-cnn")]
    table = tightness_over_checkpoints(
        checkpoints,
        labels=["init", "120 steps", "final"],
        data="digits",
        eps=0.05,
        max_samples=48,
        cache=False,
    )
    assert list(table["checkpoint"]) == ["init", "120 steps", "final"]
    t = table["tightness"].to_numpy()
    assert t[0] < t[1] < t[2]
    assert table["certified_accuracy"].iloc[2] > table["certified_accuracy"].iloc[0]


def _ten() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("cls", [IBPTightness, LipschitzBounds])
def test_labels_beyond_the_model_outputs_are_one_line(cls, tmp_path):
    """Labels up to 12 for a 10-output model: IBP's margin rows crashed with an IndexError."""
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    np.savez(path, x=rng.random((20, 1, 8, 8)).astype(np.float32), y=np.r_[np.arange(19) % 10, 12])
    with pytest.raises(NNVitalsError) as info:
        cls(model=_ten(), data=str(path), **FAST).run()
    assert str(info.value) == f"data {path}: labels go up to 12 but model Sequential has 10 outputs"


class _Odd(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(64, 10)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z.reshape(len(x), 2, 5) if self.kind == "shape" else z * torch.inf


@pytest.mark.parametrize("cls", [IBPTightness, LipschitzBounds])
def test_odd_outputs_and_shapes_are_one_line(cls, caplog):
    cases = [
        (_Odd("shape"), r"model _Odd: its output must be class scores of shape \(batch, classes\), got \(2, 2, 5\)"),
        (_Odd("inf"), r"model _Odd: gives non-finite outputs \(NaN or inf\) on the first samples of data digits-"),
        (nn.Sequential(nn.Flatten(), nn.Linear(256, 10)), r"model Sequential: failed on inputs of shape \(2, 1, 8, 8\)"),
    ]  # fmt: skip
    for model, pattern in cases:
        with pytest.raises(NNVitalsError, match=pattern) as info:
            cls(model=model, **FAST).run()
        assert "\n" not in str(info.value)
    # the shape failure is found before torch.export, which would log its own traceback
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]

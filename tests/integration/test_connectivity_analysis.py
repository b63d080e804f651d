"""ModeConnectivity end to end: two MLPs trained on digits from different seeds, inside the test."""

import numpy as np
import pytest
import torch
from torch import nn

from analyses.connectivity.analysis import ConnectivityResult, ModeConnectivity
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.zoo.models import DigitsMLP

HIDDEN = (96, 96)


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(seed: int, steps: int = 150) -> nn.Module:
    """Full-batch Adam on the digits train split: ~97% test accuracy in well under a second."""
    train = load_digits(split="train")
    torch.manual_seed(seed)
    model = DigitsMLP(64, HIDDEN, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return [_train(s) for s in (0, 1, 2)]


def _run(**kw):
    kw.setdefault("cache", False)
    kw.setdefault("show_progress", False)
    return ModeConnectivity(**kw).run()


@pytest.fixture(scope="module")
def result(models):
    return _run(model_a=models[0], model_b=models[1], match="weights", points=9)


def test_matching_lowers_the_barrier(result):
    s = result.summary
    assert s["barrier_naive"] > 0.05
    assert s["barrier_matched"] < 0.5 * s["barrier_naive"]
    assert s["acc_barrier_matched"] <= s["acc_barrier_naive"]
    assert s["l2_after"] < s["l2_before"]
    assert s["groups"] == {"fc1": HIDDEN[0], "fc2": HIDDEN[1]}


def test_table_and_barriers_agree(result):
    t = result.table
    assert list(t.columns) == ["pair", "a", "b", "path", "lam", "split", "loss", "accuracy"]
    assert set(t["path"]) == {"naive", "matched"} and set(t["split"]) == {"train", "test"}
    assert len(t) == 2 * 2 * 9
    naive = result.curve("naive", "test")
    lam, loss = naive["lam"].to_numpy(), naive["loss"].to_numpy()
    assert lam[0] == 0 and lam[-1] == 1
    hand = np.max(loss - ((1 - lam) * loss[0] + lam * loss[-1]))
    assert result.summary["barrier_naive"] == pytest.approx(hand)
    # both paths start at A; the matched path ends at permuted B, which computes B's function
    matched = result.curve("matched", "test")
    assert matched["loss"].iloc[0] == pytest.approx(loss[0])
    assert matched["loss"].iloc[-1] == pytest.approx(loss[-1], rel=1e-4)


def test_permuted_b_loads_strictly_and_computes_the_same_function(result, models):
    twin = DigitsMLP(64, HIDDEN, 10)
    twin.load_state_dict(result.permuted_b, strict=True)
    twin.eval()
    x = load_digits(split="test").x
    with torch.no_grad():
        assert (twin(x) - models[1](x)).abs().max().item() < 1e-4
    layers = result.layers
    assert list(layers["name"]) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert (layers["sv_align_after"] > layers["sv_align_before"]).all()


def test_result_round_trips_without_pickle(result, tmp_path):
    back = ConnectivityResult.load(result.save(tmp_path / "r.nnv"))
    assert isinstance(back, ConnectivityResult)
    assert back.summary["barrier_matched"] == pytest.approx(result.summary["barrier_matched"])
    assert all(torch.equal(back.permuted_b[k], v) for k, v in result.permuted_b.items())


def test_activation_matching_and_repair(models):
    res = _run(
        model_a=models[0], model_b=models[1], match="activations", points=5, repair=True, data="digits"
    )
    assert res.summary["repair"] and res.summary["barrier_matched"] < res.summary["barrier_naive"]


def test_three_models_pairwise_merge_plane(models):
    res = _run(models=models, points=5, plane_points=5)
    mat = res.pairwise("barrier_matched")
    assert mat.shape == (3, 3) and np.allclose(mat, mat.T) and np.all(np.diag(mat) == 0)
    assert (res.pairwise("barrier_naive") >= mat - 1e-9).sum() >= 7
    merge = res.summary["merge"]["test"]
    assert merge["merged_accuracy"] > merge["average_accuracy"]
    assert set(res.merged) == set(models[0].state_dict())
    plane = res.plane
    assert plane["loss_test"].shape == (5, 5) and plane["models_xy"].shape == (3, 2)


def test_errors_name_the_argument(models):
    with pytest.raises(NNVitalsError, match="model_b: not set"):
        _run(model_a=models[0])
    other = DigitsMLP(64, (96, 32), 10)
    with pytest.raises(NNVitalsError, match="'fc2.weight'"):
        _run(model_a=models[0], model_b=other)
    with pytest.raises(NNVitalsError, match="bn_reset"):
        _run(model_a=models[0], model_b=models[1], bn_reset="on", points=3)


def test_batchnorm_modules_given_as_objects_run_through_the_result_cache(tmp_path, monkeypatch):
    """The cache key fingerprints every tensor of the models, 0-dim BatchNorm counters included;
    the second run is read back from the cache and equals the first."""
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))

    def bn_mlp(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)
        ).eval()

    a, b = bn_mlp(0), bn_mlp(1)
    first = ModeConnectivity(model_a=a, model_b=b, data="digits", points=3, match="none").run()
    again = ModeConnectivity(model_a=a, model_b=b, data="digits", points=3, match="none").run()
    assert first.summary["bn_reset"] is True  # BatchNorm found, statistics reset per point
    assert any((tmp_path / "cache").rglob("*")), "the result was stored"
    np.testing.assert_allclose(again.table["loss"], first.table["loss"])


def test_labels_beyond_the_model_outputs_are_one_line(models, tmp_path):
    """Labels up to 12 for 10-output models: the cross-entropy's gather raised a RuntimeError."""
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    np.savez(path, x=rng.random((30, 1, 8, 8)).astype(np.float32), y=np.r_[np.arange(29) % 10, 12])
    with pytest.raises(NNVitalsError) as info:
        _run(model_a=models[0], model_b=models[1], data=str(path), points=3)
    assert str(info.value) == f"data {path}: labels go up to 12 but model_a DigitsMLP has 10 outputs"
    split = {"train": "digits", "test": str(path)}
    with pytest.raises(NNVitalsError, match=rf"^data {path}: labels go up to 12 but model_a"):
        _run(model_a=models[0], model_b=models[1], data=split, points=3)


def test_odd_models_are_one_line(models):
    """NaN weights in B, outputs that are not (batch, classes), a model that cannot take the data."""
    nan_b = DigitsMLP(64, HIDDEN, 10)
    nan_b.load_state_dict(models[1].state_dict())
    with torch.no_grad():
        nan_b.fc3.bias[2] = float("nan")
    with pytest.raises(NNVitalsError, match=r"^model_b DigitsMLP: gives non-finite outputs \(NaN or inf\)"):
        _run(model_a=models[0], model_b=nan_b, points=3)

    class Pairs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)).reshape(len(x), 2, 5)

    with pytest.raises(
        NNVitalsError, match=r"^model_a Pairs: its output must be class scores .* got \(2, 2, 5\)"
    ):
        _run(model_a=Pairs(), model_b=Pairs(), points=3, match="none")
    wide = DigitsMLP(256, (16,), 10)
    with pytest.raises(NNVitalsError, match=r"^model_a DigitsMLP: failed on inputs of shape \(2, 1, 8, 8\)"):
        _run(model_a=wide, model_b=DigitsMLP(256, (16,), 10), points=3)


def test_dask_workers_give_the_same_barriers_as_threads():
    """The task context pickles for Dask worker processes (the exported graph is exported again
    there for activation matching); results equal the thread runner's."""
    from analyses import ModeConnectivity

    for match in ("weights", "activations"):
        kw = dict(
            model_a="mlp-w64-a", model_b="mlp-w64-b", cache=False, show_progress=False, match=match, points=5
        )
        dask = ModeConnectivity(runner="local", num_workers=1, **kw).run().summary["barriers"]
        threads = ModeConnectivity(**kw).run().summary["barriers"]
        assert dask == threads, match

"""The demo model zoo: shipped checkpoints load, match their manifest and reach their accuracy."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from functools import cache

import pytest
import torch
from safetensors import safe_open

from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS, ZOO_DIR, demo_data, demo_names, demo_path, load_demo, manifest
from analyses.zoo.ibp_training import certified_accuracy, input_box, margin_lower_bounds, robust_loss
from analyses.zoo.models import (
    ARCHITECTURES,
    DigitsBNCNN,
    DigitsCNN,
    DigitsGlobalPoolCNN,
    DigitsMLP,
    DigitsStrideCNN,
    GroupAveraged,
)
from analyses.zoo.recipe import RECIPES, accuracy, build, rotate, train, write_zoo

#: Accuracy the shipped trained models must reach on the digits test split.
REQUIRED_ACCURACY = {
    "mlp": 0.95,
    "cnn": 0.97,
    "rot-cnn": 0.95,
    "rot-cnn-aug": 0.88,
    "rot-cnn-c4": 0.93,
    "std-cnn": 0.95,
    "ibp-cnn": 0.95,
    "vit-a": 0.95,
    "vit-b": 0.95,
    "resnet20-ln-a": 0.95,
    "resnet20-ln-b": 0.95,
    "mlp-w64-a": 0.95,
    "mlp-w64-b": 0.95,
    "mlp-w512-a": 0.96,
    "mlp-w512-b": 0.96,
    "bn-cnn-a": 0.97,
    "bn-cnn-b": 0.97,
}
TRAINED = ["mlp", "cnn"]
UNTRAINED = ["mlp-untrained", "cnn-untrained"]
#: The rotation demos (16x16 digits): plain, rotation-augmented, C4 group-averaged.
ROTATION = ["rot-cnn", "rot-cnn-aug", "rot-cnn-c4"]
#: The certified-training demos: one architecture and seed, standard and IBP training.
CERTIFIED = ["std-cnn", "ibp-cnn"]
#: The connectivity pairs: one recipe, two initialisation and batch-order seeds.
PAIRS = [
    ("mlp-w64-a", "mlp-w64-b"),
    ("mlp-w512-a", "mlp-w512-b"),
    ("bn-cnn-a", "bn-cnn-b"),
    ("vit-a", "vit-b"),
    ("resnet20-ln-a", "resnet20-ln-b"),
]


def test_names_manifest_and_recipes_agree():
    assert demo_names() == list(DEMO_MODELS)
    assert demo_names() == (
        TRAINED[:1]
        + UNTRAINED[:1]
        + TRAINED[1:]
        + UNTRAINED[1:]
        + ROTATION
        + CERTIFIED
        + [n for p in PAIRS for n in p]
    )
    assert set(manifest()["models"]) == set(DEMO_MODELS) == set(RECIPES)


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_manifest_sha256_matches_file(name):
    entry = manifest()["models"][name]
    path = demo_path(name)
    assert path == ZOO_DIR / entry["file"] and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["bytes"]


def test_manifest_records_how_to_rebuild():
    m = json.loads((ZOO_DIR / "manifest.json").read_text())
    assert "bitwise" in m["reproducibility"] and m["rebuild"] == "python -m analyses.zoo.recipe"
    for name, entry in m["models"].items():
        recipe = RECIPES[name]
        assert entry["architecture"] == recipe.architecture and entry["kwargs"] == recipe.kwargs
        assert entry["seed"] == recipe.seed and entry["training"]["steps"] == recipe.steps
        for key in ("test_accuracy", "data", "parameters"):
            assert key in entry


def test_checkpoints_are_small():
    sizes = {name: demo_path(name).stat().st_size for name in DEMO_MODELS}
    assert max(sizes.values()) < 1_500_000  # the largest: mlp-w512-a/b, 301k float32 parameters
    assert sum(sizes.values()) < 6_000_000


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_checkpoint_metadata(name):
    entry = manifest()["models"][name]
    with safe_open(str(demo_path(name)), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == entry["architecture"] and int(meta["seed"]) == entry["seed"]
    assert float(meta["test_accuracy"]) == pytest.approx(entry["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_demo_loads_in_eval_mode_and_recomputes_its_accuracy(name):
    model = load_demo(name)
    assert not model.training
    data = demo_data(name)
    size = RECIPES[name].size
    assert manifest()["models"][name]["data"]["size"] == size and data.input_shape == (1, size, size)
    assert data.fingerprint == load_digits(size=size, split="test").fingerprint
    acc = accuracy(model, data)
    # Same weights, same data: only a reduction-order flip of a near-tie could move one sample.
    assert acc == pytest.approx(manifest()["models"][name]["test_accuracy"], abs=1.5 / len(data))
    if name in REQUIRED_ACCURACY:
        assert acc >= REQUIRED_ACCURACY[name]
    else:
        assert acc < 0.25  # near chance (0.1) for ten balanced classes


def test_demo_models_accept_images_and_vectors():
    x = load_digits(split="test").x[:5]
    mlp, cnn = load_demo("mlp"), load_demo("cnn")
    assert isinstance(mlp, DigitsMLP) and isinstance(cnn, DigitsCNN)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp(x.reshape(5, 64)))
        assert cnn(x).shape == (5, 10)


def test_parameter_names_are_clean_and_stable():
    assert [n for n, _ in load_demo("mlp").named_parameters()] == [
        f"fc{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")
    ]
    assert [n for n, _ in load_demo("cnn").named_parameters()] == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2") for kind in ("weight", "bias")
    ]


def test_hidden_matrices_are_wide_enough_for_spectra():
    mlp, cnn = DigitsMLP(), DigitsCNN()
    assert min(mlp.fc1.weight.shape) >= 50 and min(mlp.fc2.weight.shape) >= 50
    assert min(cnn.fc1.weight.shape) >= 50 and min(cnn.conv2.weight.flatten(1).shape) >= 50


@pytest.mark.parametrize("trained, twin", zip(TRAINED, UNTRAINED))
def test_untrained_twin_is_the_recipe_initialisation(trained, twin):
    shipped = load_demo(twin).state_dict()
    rebuilt = build(twin).state_dict()
    assert shipped.keys() == rebuilt.keys()
    for key in shipped:
        torch.testing.assert_close(shipped[key], rebuilt[key], rtol=0, atol=0)
    # The trained model starts from the same initialisation, and training moved it.
    assert build(trained).state_dict().keys() == shipped.keys()
    assert not torch.equal(load_demo(trained).state_dict()["fc1.weight"], shipped["fc1.weight"])


def test_training_is_seeded():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = train("mlp", seed=1, steps=8)
    b = train("mlp", seed=1, steps=8)
    c = train("mlp", seed=2, steps=8)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(a.state_dict()["fc1.weight"], c.state_dict()["fc1.weight"])
    assert not a.training
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched


@pytest.mark.parametrize("bad", ["resnet", "MLP", "", None])
def test_unknown_demo_name_lists_the_demos(bad):
    for call in (demo_path, load_demo, demo_data):
        with pytest.raises(NNVitalsError) as info:
            call(bad)
        assert all(name in str(info.value) for name in DEMO_MODELS)
    with pytest.raises(NNVitalsError):
        train(bad, 0)


# --------------------------------------------------------------------------- rotation demos


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise rotation about the image centre, written independently of the recipe's."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = torch.nn.functional.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


@cache
def _true_class_score(name: str, degrees: int) -> float:
    """Mean softmax probability of the true class on the test split rotated by ``degrees``."""
    data = demo_data(name)
    x = torch.rot90(data.x, degrees // 90, dims=(2, 3)) if degrees % 90 == 0 else _rotate(data.x, degrees)
    with torch.no_grad():
        p = load_demo(name)(x).softmax(dim=1)
    return float(p[torch.arange(len(data)), data.y].mean())


def test_rotation_helpers_turn_the_same_way_as_rot90():
    x = demo_data("rot-cnn").x[:16]
    for k in (1, 2, 3):
        torch.testing.assert_close(_rotate(x, 90 * k), torch.rot90(x, k, dims=(2, 3)), rtol=0, atol=1e-5)
    for degrees in (30.0, 45.0, 200.0):
        torch.testing.assert_close(rotate(x, degrees), _rotate(x, degrees), rtol=0, atol=1e-5)
    per_sample = rotate(x[:2], torch.tensor([0.0, 45.0]))
    torch.testing.assert_close(per_sample[0], x[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(per_sample[1:], _rotate(x[1:2], 45.0), rtol=0, atol=1e-5)


def test_rotation_demos_share_architecture_and_initialisation():
    plain, aug, c4 = (load_demo(name) for name in ROTATION)
    assert type(plain) is type(aug) is DigitsGlobalPoolCNN and isinstance(c4, GroupAveraged)
    assert c4.order == 4 and c4.config == {**plain.config, "order": 4}
    assert RECIPES["rot-cnn-aug"].augment == "rotation" and not RECIPES["rot-cnn"].augment
    assert all(RECIPES[name].size == 16 for name in ROTATION)
    init = build("rot-cnn").state_dict()
    for other in (build("rot-cnn-aug").state_dict(), build("rot-cnn-c4").inner.state_dict()):
        assert other.keys() == init.keys()
        assert all(torch.equal(other[k], init[k]) for k in init)
    assert [n for n, _ in c4.named_parameters()] == [f"inner.{n}" for n, _ in plain.named_parameters()]


def test_group_averaged_model_is_exactly_rot90_invariant():
    model, x = load_demo("rot-cnn-c4"), demo_data("rot-cnn-c4").x
    with torch.no_grad():
        logits = model(x)
        for k in (1, 2, 3):
            turned = model(torch.rot90(x, k, dims=(2, 3)))
            assert (turned - logits).abs().max() < 1e-5
            # The orbit's logits are sorted before they are summed: bitwise the same output.
            assert torch.equal(turned, logits)
    # Any weights, any square size; order 2 is invariant to half turns only.
    torch.manual_seed(0)
    x = torch.rand(3, 1, 12, 12)
    for order, k in ((4, 1), (2, 2)):
        m = GroupAveraged(channels=(4, 8, 8), order=order).eval()
        with torch.no_grad():
            assert (m(torch.rot90(x, k, dims=(2, 3))) - m(x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="order"):
        GroupAveraged(order=3)
    assert ARCHITECTURES["GroupAveraged"](**GroupAveraged(order=2).config).config["order"] == 2


def test_rotation_robustness_orders_plain_augmented_and_c4():
    score = {name: {d: _true_class_score(name, d) for d in (0, 45, 90, 180, 270)} for name in ROTATION}
    plain, aug, c4 = (score[name] for name in ROTATION)
    # C4: exactly flat at the quarter turns (rot90 is a pixel permutation).
    assert c4[0] == c4[90] == c4[180] == c4[270] and c4[0] > 0.9
    # Plain CNN: good upright, collapses at a quarter turn and at 45 degrees.
    assert plain[0] > 0.95 and plain[90] < 0.3 and plain[45] < 0.4
    # Augmented: in between everywhere, nearly flat over the whole orbit.
    for d in (45, 90, 180, 270):
        assert aug[d] > plain[d] + 0.3
    assert aug[45] > c4[45] + 0.3
    spread = {name: max(s.values()) - min(s.values()) for name, s in score.items()}
    assert spread["rot-cnn-aug"] < 0.1 < spread["rot-cnn"]
    assert sum(aug.values()) > sum(plain.values())


def test_augmented_training_is_seeded_and_differs_from_plain():
    a = train("rot-cnn-aug", steps=2)
    b = train("rot-cnn-aug", steps=2)
    plain = train("rot-cnn", steps=2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.state_dict()["conv1.weight"], plain.state_dict()["conv1.weight"])


def test_rebuilding_some_models_keeps_the_other_manifest_entries(tmp_path):
    shutil.copy(ZOO_DIR / "manifest.json", tmp_path / "manifest.json")
    before = json.loads((tmp_path / "manifest.json").read_text())["models"]
    after = write_zoo(tmp_path, ["mlp-untrained"])["models"]
    assert list(after) == list(DEMO_MODELS)
    assert all(after[name] == before[name] for name in DEMO_MODELS if name != "mlp-untrained")
    assert (tmp_path / "mlp-untrained.safetensors").is_file() and not (tmp_path / "mlp.safetensors").exists()
    assert after["mlp-untrained"]["test_accuracy"] == before["mlp-untrained"]["test_accuracy"]
    assert json.loads((tmp_path / "manifest.json").read_text())["models"] == after


# --------------------------------------------------------------------------- certified-training demos


def test_ibp_margins_at_zero_radius_are_the_logit_margins():
    model, data = load_demo("ibp-cnn"), demo_data("ibp-cnn")
    x, y = data.x[:32], data.y[:32]
    with torch.no_grad():
        logits = model(x)
        lower = margin_lower_bounds(model, x, y, eps=0.0)
        margins = logits.gather(1, y[:, None]) - logits
        torch.testing.assert_close(lower, margins, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            robust_loss(model, x, y, 0.0), torch.nn.functional.cross_entropy(logits, y)
        )
    centre, radius = input_box(torch.tensor([0.05, 0.5, 0.97]), 0.1)
    torch.testing.assert_close(centre - radius, torch.tensor([0.0, 0.4, 0.87]))
    torch.testing.assert_close(centre + radius, torch.tensor([0.15, 0.6, 1.0]))


@pytest.mark.parametrize("name", ["std-cnn", "ibp-cnn", "mlp-w64-a", "bn-cnn-a"])
def test_ibp_margin_bounds_are_sound(name):
    """Every point of the clipped box has margins at or above IBP's lower bounds (BatchNorm in eval mode)."""
    model, data = load_demo(name), demo_data(name)
    x, y, eps = data.x[:16], data.y[:16], 0.05
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lower = margin_lower_bounds(model, x, y, eps)
        low, high = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        corners = torch.randint(0, 2, (64, *x.shape), generator=gen).float()  # vertices of the box
        inside = torch.rand(64, *x.shape, generator=gen)
        for u in (corners, inside):
            points = low + u * (high - low)
            logits = model(points.flatten(0, 1)).reshape(64, len(x), -1)
            margins = logits.gather(2, y[None, :, None].expand(64, -1, 1)) - logits
            assert (margins >= lower - 1e-4).all()


def test_certified_training_pair_shares_architecture_and_initialisation():
    std, ibp = (load_demo(name) for name in CERTIFIED)
    assert type(std) is type(ibp) is DigitsStrideCNN and std.config == ibp.config
    # A plain sequential of convolutions, ReLUs, a flatten and linear layers: no pooling.
    kinds = {type(m) for m in std}
    assert kinds == {torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Flatten, torch.nn.Linear}
    assert std.conv2.stride == (2, 2)
    a, b = RECIPES["std-cnn"], RECIPES["ibp-cnn"]
    assert a.ibp_eps == 0 and b.ibp_eps == b.certify_eps == a.certify_eps == 0.1
    assert replace(b, ibp_eps=0.0) == a  # same recipe otherwise
    init_a, init_b = build("std-cnn").state_dict(), build("ibp-cnn").state_dict()
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert not torch.equal(std.fc1.weight, ibp.fc1.weight)


def test_ibp_model_is_certified_far_more_often_than_the_standard_one():
    cert = {}
    for name in CERTIFIED:
        entry = manifest()["models"][name]["certification"]
        data = demo_data(name)
        assert entry["eps"] == 0.1 and entry["data_range"] == [0.0, 1.0]
        assert entry["clean_test_accuracy"] == manifest()["models"][name]["test_accuracy"]
        cert[name] = certified_accuracy(load_demo(name), data.x, data.y, entry["eps"])
        assert cert[name] == pytest.approx(entry["certified_test_accuracy"], abs=1.5 / len(data))
        assert cert[name] <= entry["clean_test_accuracy"]
    assert cert["ibp-cnn"] >= 0.75 and cert["std-cnn"] <= 0.05
    assert cert["ibp-cnn"] > cert["std-cnn"] + 0.5
    training = manifest()["models"]["ibp-cnn"]["training"]
    assert training["ibp_training"]["eps"] == 0.1 and training["ibp_training"]["ramp"] == 0.5
    assert "ibp_training" not in manifest()["models"]["std-cnn"]["training"]


# --------------------------------------------------------------------------- connectivity pairs


@pytest.mark.parametrize("a, b", PAIRS)
def test_connectivity_pairs_differ_in_seeds_only(a, b):
    ra, rb = RECIPES[a], RECIPES[b]
    assert ra.seed != rb.seed and ra.data_seed != rb.data_seed
    assert len({ra.seed, rb.seed, ra.data_seed, rb.data_seed}) == 4
    assert replace(rb, seed=ra.seed, data_seed=ra.data_seed) == ra
    ea, eb = manifest()["models"][a], manifest()["models"][b]
    assert ea["architecture"] == eb["architecture"] and ea["kwargs"] == eb["kwargs"]
    assert (ea["seed"], ea["training"]["data_seed"]) == (ra.seed, ra.data_seed)
    assert (eb["seed"], eb["training"]["data_seed"]) == (rb.seed, rb.data_seed)


@pytest.mark.parametrize("a, b", PAIRS)
def test_connectivity_pair_members_differ_but_score_alike(a, b):
    ma, mb = load_demo(a), load_demo(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        if value.is_floating_point():
            assert not torch.equal(value, sb[key]), key
        if value.dim() >= 2:  # weight matrices and kernels: independent draws, not small perturbations
            assert (value - sb[key]).norm() > 0.5 * value.norm(), key
    acc_a, acc_b = (manifest()["models"][n]["test_accuracy"] for n in (a, b))
    assert abs(acc_a - acc_b) <= 0.02
    assert accuracy(ma, demo_data(a)) == pytest.approx(acc_a, abs=1.5 / 450)


def test_connectivity_pair_architectures():
    for name in ("mlp-w64-a", "mlp-w512-b"):
        model = load_demo(name)
        width = 64 if "w64" in name else 512
        assert isinstance(model, DigitsMLP) and model.config["hidden"] == [width, width]
        assert [n for n, _ in model.named_parameters()] == [
            f"fc{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")
        ]
    bn = load_demo("bn-cnn-a")
    assert isinstance(bn, DigitsBNCNN) and bn.config == {"channels": [32, 64], "classes": 10}
    assert [type(m).__name__ for m in bn] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d", "Flatten", "Linear"
    ]  # fmt: skip
    assert bn.conv1.bias is None and bn.bn2.running_var.min() > 0
    with torch.no_grad():
        assert bn(demo_data("bn-cnn-a").x[:4]).shape == (4, 10)


def test_batch_order_follows_data_seed(monkeypatch):
    base = train("mlp-w64-a", steps=4)
    monkeypatch.setitem(RECIPES, "mlp-w64-a", replace(RECIPES["mlp-w64-a"], data_seed=999))
    other = train("mlp-w64-a", steps=4)
    assert torch.equal(build("mlp-w64-a").fc1.weight, build("mlp-w64-a", seed=1).fc1.weight)
    assert not torch.equal(base.fc1.weight, other.fc1.weight)


# --------------------------------------------------------------------------- checkpoint series


def test_whole_zoo_tree_fits_the_size_budget():
    """Every file under assets/zoo, the checkpoint series and manifests included, in one budget."""
    files = [p for p in ZOO_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.parent.name == "cnn-train" for p in files)
    assert sum(p.stat().st_size for p in files) < 6_000_000


def test_demo_series_is_shipped_ordered_and_loads():
    from analyses.trajectory.series import ArchitectureSubject, load_series
    from analyses.zoo import SERIES_NAMES, demo_series, series_names
    from analyses.zoo.models import SERIES_CNN_KWARGS, series_cnn
    from analyses.zoo.recipe import SERIES, _build

    assert series_names() == list(SERIES_NAMES) == list(SERIES) == ["cnn-train"]
    path = demo_series("cnn-train")
    assert path == ZOO_DIR / "series" / "cnn-train" and path.is_dir()
    doc = json.loads((path / "series.json").read_text())
    spec = SERIES["cnn-train"]
    assert doc["architecture"] == spec.factory == "analyses.zoo.models:series_cnn"
    assert doc["kwargs"] == spec.recipe.kwargs == SERIES_CNN_KWARGS and doc["seed"] == spec.recipe.seed
    assert doc["training"]["steps"] == spec.recipe.steps == spec.snapshots[-1]
    # The only checkpoints in the folder are the listed ones, named by their step.
    on_disk = sorted(p.name for p in path.glob("*.safetensors"))
    assert on_disk == sorted(f"step_{s:04d}.safetensors" for s in spec.snapshots)
    assert [c["file"] for c in doc["checkpoints"]] == on_disk

    series = load_series(path)
    assert series.steps == list(spec.snapshots) == [0, 25, 50, 100, 200, 400, 800, 1600]
    assert all(a < b for a, b in zip(series.steps, series.steps[1:]))
    assert series.unit == "step" and series.arch().label == spec.factory
    # Named by the steps in the file names alone, the folder orders the same way.
    by_names = load_series(sorted(path.glob("*.safetensors")), architecture=spec.factory)
    assert by_names.steps == series.steps

    data = doc["data"]
    test = load_digits(
        size=data["size"], split="test", seed=data["seed"], test_fraction=data["test_fraction"]
    )
    assert test.input_shape == (1, 8, 8) and len(test) == data["n_test"]
    init = _build(spec.recipe).state_dict()
    previous = None
    for checkpoint, entry in zip(series, doc["checkpoints"], strict=True):
        file = checkpoint.source
        assert entry["step"] == checkpoint.step and file.name == entry["file"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"]
        assert file.stat().st_size == entry["bytes"] < 12_000
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata()
        assert int(meta["step"]) == checkpoint.step and meta["series"] == "cnn-train"
        weights, runnable = series.open(checkpoint)
        assert isinstance(runnable, ArchitectureSubject)
        model = runnable.module()
        assert type(model) is type(series_cnn()) and not model.training
        state = model.state_dict()
        assert sum(v.numel() for v in state.values()) == doc["parameters"] < 3000
        acc = accuracy(model, test)
        assert acc == pytest.approx(entry["test_accuracy"], abs=1.5 / len(test))
        if checkpoint.step == 0:  # the recipe's seeded initialisation, bit for bit
            assert all(torch.equal(state[k], init[k]) for k in init)
            assert acc < 0.25
        if previous is not None:  # every checkpoint moved from the one before
            assert not torch.equal(state["fc1.weight"], previous["fc1.weight"])
        previous = state
    assert doc["checkpoints"][-1]["test_accuracy"] >= 0.93
    assert doc["checkpoints"][-1]["test_accuracy"] > doc["checkpoints"][1]["test_accuracy"] + 0.3


@pytest.mark.parametrize("bad", ["cnn", "cnn_train", "", None])
def test_unknown_demo_series_lists_the_series(bad):
    from analyses.zoo import demo_series

    with pytest.raises(NNVitalsError, match="cnn-train"):
        demo_series(bad)


def test_series_recipe_snapshots_one_seeded_run_and_rebuilds(tmp_path, monkeypatch):
    from analyses.trajectory.series import load_series
    from analyses.zoo import recipe as zoo_recipe

    spec = zoo_recipe.SERIES["cnn-train"]
    short = replace(spec, recipe=replace(spec.recipe, steps=6), snapshots=(0, 2, 6))
    monkeypatch.setitem(zoo_recipe.SERIES, "cnn-train", short)
    states = zoo_recipe.train_series("cnn-train")
    assert list(states) == [0, 2, 6]
    # The snapshots are of one run: the last equals a plain run of the same recipe and steps.
    final = zoo_recipe._train(short.recipe).state_dict()
    assert all(torch.equal(states[6][k], final[k]) for k in final)
    two = zoo_recipe._train(short.recipe, steps=2).state_dict()  # cosine schedule over 2, not 6 steps
    assert not all(torch.equal(states[2][k], two[k]) for k in two)
    again = zoo_recipe.train_series("cnn-train")
    assert all(torch.equal(again[s][k], states[s][k]) for s in states for k in states[s])

    zoo_recipe.main(["--out", str(tmp_path), "cnn-train"])
    folder = tmp_path / "series" / "cnn-train"
    assert sorted(p.name for p in folder.iterdir()) == [
        "series.json", "step_0000.safetensors", "step_0002.safetensors", "step_0006.safetensors"
    ]  # fmt: skip
    assert not (tmp_path / "manifest.json").exists()  # the demo models were not rebuilt
    series = load_series(folder)
    assert series.steps == [0, 2, 6] and series.arch().label == short.factory
    assert series.open(series.checkpoints[-1])[1].module()(demo_data("cnn").x[:3]).shape == (3, 10)

"""The demo model zoo: shipped checkpoints load, match their manifest and reach their accuracy."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS, ZOO_DIR, demo_data, demo_names, demo_path, load_demo, manifest
from analyses.zoo.models import DigitsCNN, DigitsMLP
from analyses.zoo.recipe import RECIPES, accuracy, build, train

#: Accuracy the shipped trained models must reach on the digits test split.
REQUIRED_ACCURACY = {"mlp": 0.95, "cnn": 0.97}
TRAINED = ["mlp", "cnn"]
UNTRAINED = ["mlp-untrained", "cnn-untrained"]


def test_names_manifest_and_recipes_agree():
    assert demo_names() == list(DEMO_MODELS) == TRAINED[:1] + UNTRAINED[:1] + TRAINED[1:] + UNTRAINED[1:]
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
    total = sum(demo_path(name).stat().st_size for name in DEMO_MODELS)
    assert total < 2_000_000


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
    assert data.fingerprint == load_digits(split="test").fingerprint
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

"""Seeded training recipe that reproduces the shipped demo checkpoints.

Run ``python -m analyses.zoo.recipe`` to rebuild ``assets/zoo/*.safetensors`` and
``assets/zoo/manifest.json``. Everything random is seeded (initialisation with
``torch.manual_seed``, batch order with a dedicated ``torch.Generator``) and deterministic
algorithms are enforced while training, so a rerun reproduces the recorded test accuracy.
Bitwise-identical weights are not promised across machines, thread counts or PyTorch
versions (float reductions may be ordered differently); the manifest says so.

The whole recipe trains on the CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analyses.core.data import Dataset, load_digits
from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS, MANIFEST_NAME, ZOO_DIR
from analyses.zoo.models import ARCHITECTURES

__all__ = ["DATA", "RECIPES", "Recipe", "accuracy", "build", "main", "train", "write_zoo"]

#: The data every demo model is trained and evaluated on (``load_digits`` arguments).
DATA: dict[str, Any] = {"dataset": "digits", "size": 8, "seed": 0, "test_fraction": 0.25}


@dataclass(frozen=True)
class Recipe:
    """How one demo model is made: architecture, seed and optimisation hyperparameters.

    ``steps == 0`` means initialisation only (an untrained twin).
    """

    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    steps: int = 0
    optimizer: str = "Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    schedule: str = "cosine"


_MLP = Recipe("DigitsMLP", {"in_features": 64, "hidden": [256, 128], "classes": 10})
_CNN = Recipe("DigitsCNN", {"channels": [32, 64], "classes": 10})

#: Recipe for every demo model; a trained model and its untrained twin share architecture and seed.
RECIPES: dict[str, Recipe] = {
    "mlp": Recipe(**{**asdict(_MLP), "steps": 1000, "lr": 5e-3}),
    "mlp-untrained": _MLP,
    "cnn": Recipe(**{**asdict(_CNN), "steps": 400, "lr": 2e-3}),
    "cnn-untrained": _CNN,
}


def _digits(split: str) -> Dataset:
    """A split of the demo models' data, exactly as recorded in :data:`DATA`."""
    return load_digits(size=DATA["size"], split=split, seed=DATA["seed"], test_fraction=DATA["test_fraction"])


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise NNVitalsError(f"unknown demo model {name!r}; expected one of: {', '.join(RECIPES)}")
    return RECIPES[name]


@contextmanager
def _deterministic() -> Iterator[None]:
    """Enforce deterministic kernels for the duration of training, then restore the setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build(name: str, seed: int | None = None) -> nn.Module:
    """The freshly initialised architecture of demo model ``name`` (seeded with ``seed`` or the recipe's)."""
    recipe = _recipe(name)
    # Seed the global generator that nn initialisers draw from, without leaking the new
    # state to the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed if seed is None else int(seed))
        return ARCHITECTURES[recipe.architecture](**recipe.kwargs)


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Fraction of ``data`` whose argmax prediction equals the label (model put in eval mode)."""
    model.eval()
    correct = 0
    for x, y in data.batches(batch_size):
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(data)


def train(name: str, seed: int | None = None, *, steps: int | None = None) -> nn.Module:
    """Train demo model ``name`` from its recipe on the digits train split; returns it in eval mode.

    ``seed`` defaults to the recipe's seed (the one the shipped checkpoint used); ``steps``
    overrides the recipe's step count (``0`` gives the untrained initialisation). Minibatches
    are drawn epoch by epoch from a seeded permutation, the learning rate follows a cosine
    decay to zero, and the loss is cross-entropy.
    """
    recipe = _recipe(name)
    seed = recipe.seed if seed is None else int(seed)
    steps = recipe.steps if steps is None else int(steps)
    if steps < 0:
        raise NNVitalsError(f"steps must be >= 0, got {steps}")
    with _deterministic():
        model = build(name, seed)
        if steps == 0:
            return model.eval()
        data = _digits("train")
        optimizer_cls = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD}[recipe.optimizer]
        optimizer = optimizer_cls(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        generator = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        step = 0
        while step < steps:
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                loss = loss_fn(model(data.x[idx]), data.y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if step == steps:
                    break
    return model.eval()


def _canonicalise_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys so identical content gives identical bytes.

    safetensors stores ``__metadata__`` in a hash map, so its key order (and the file's
    sha256) changes from run to run. The header is JSON padded with spaces to a fixed
    length; re-serialising it sorted and compact never makes it longer, so the tensor data
    offsets are unchanged.
    """
    import struct

    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canonical) <= length:
        raw[8 : 8 + length] = canonical.ljust(length, b" ")
        path.write_bytes(bytes(raw))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_zoo(out_dir: Path = ZOO_DIR, names: list[str] | None = None) -> dict[str, Any]:
    """Train every demo model, write ``<name>.safetensors`` and the manifest to ``out_dir``.

    Returns the manifest. Checkpoint metadata repeats the essentials (architecture, seed,
    test accuracy) so a lone file still says what it is.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test, n_train = _digits("test"), len(_digits("train"))
    models: dict[str, Any] = {}
    for name in names or list(DEMO_MODELS):
        recipe = _recipe(name)
        started = time.perf_counter()
        model = train(name)
        seconds = time.perf_counter() - started
        acc = accuracy(model, test)
        path = out_dir / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(
            state,
            str(path),
            metadata={
                "name": name,
                "arch": recipe.architecture,
                "kwargs": json.dumps(recipe.kwargs, sort_keys=True),
                "seed": str(recipe.seed),
                "steps": str(recipe.steps),
                "test_accuracy": f"{acc:.6f}",
            },
        )
        _canonicalise_header(path)
        path.chmod(0o644)  # safetensors writes 0600; these files are shared assets
        training = (
            {"steps": 0, "note": "initialisation only (untrained twin)"}
            if recipe.steps == 0
            else {
                "steps": recipe.steps,
                "optimizer": recipe.optimizer,
                "lr": recipe.lr,
                "weight_decay": recipe.weight_decay,
                "batch_size": recipe.batch_size,
                "schedule": f"{recipe.schedule} decay to 0 over all steps",
                "loss": "cross-entropy",
                "batch_order": "seeded torch.randperm per epoch, last partial batch dropped",
            }
        )
        models[name] = {
            "file": path.name,
            "description": DEMO_MODELS[name],
            "architecture": recipe.architecture,
            "kwargs": recipe.kwargs,
            "seed": recipe.seed,
            "training": training,
            "data": {**DATA, "train_split": "train", "test_split": "test"}
            | {"n_train": n_train, "n_test": len(test)},
            "test_accuracy": round(acc, 6),
            "parameters": sum(p.numel() for p in model.parameters()),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        print(f"{name:14s} test accuracy {acc:.4f}  ({seconds:.1f} s)", flush=True)

    result = {
        "format": 1,
        "rebuild": "python -m analyses.zoo.recipe",
        "reproducibility": (
            "Seeded and run with torch.use_deterministic_algorithms(True): a rerun reproduces the "
            "recorded test accuracies. Weights are not guaranteed bitwise identical across "
            "machines, CPU thread counts or PyTorch versions, so sha256 may differ after a rebuild."
        ),
        "built_with": {"torch": torch.__version__, "python": platform.python_version()},
        "models": models,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: rebuild the demo checkpoints and manifest."""
    parser = argparse.ArgumentParser(
        prog="python -m analyses.zoo.recipe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help=f"output folder (default: {ZOO_DIR})")
    parser.add_argument(
        "names", nargs="*", help=f"models to build (default: all of {', '.join(DEMO_MODELS)})"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in DEMO_MODELS]
    if unknown:
        parser.error(
            f"unknown demo model(s) {', '.join(unknown)}; expected some of: {', '.join(DEMO_MODELS)}"
        )
    started = time.perf_counter()
    write_zoo(args.out, args.names or None)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

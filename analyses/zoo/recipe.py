"""Seeded training recipe that reproduces the shipped demo checkpoints.

Run ``python -m analyses.zoo.recipe`` to rebuild ``assets/zoo/*.safetensors`` and
``assets/zoo/manifest.json``, or ``python -m analyses.zoo.recipe NAME ...`` to rebuild only
some models (the manifest keeps the other entries as they are). Everything random is seeded
(initialisation with ``torch.manual_seed``, batch order and augmentation angles with dedicated
``torch.Generator``s) and deterministic algorithms are enforced while training, so a rerun
reproduces the recorded test accuracy.
Bitwise-identical weights are not promised across machines, thread counts or PyTorch
versions (float reductions may be ordered differently); the manifest says so.

Each model trains on the CPU (two cores) in well under a minute.

The rotation demos (``rot-cnn``, ``rot-cnn-aug``, ``rot-cnn-c4``) train on the digits
upsampled to 16x16: the same small CNN plain, with random-rotation augmentation (a uniform
angle per sample, bilinear resampling about the image centre, see :func:`rotate`), and
group-averaged over quarter turns (exactly invariant to them by construction, trained on
upright digits only). Together they are the three models NERO compares on a rotation orbit.

The certified-training pair (``std-cnn``, ``ibp-cnn``; REFERENCES.md section 3) is one small
strided CNN and seed trained two ways: with cross-entropy, and with interval bound propagation
(IBP, Gowal et al. 2018): the input radius ``eps`` ramps linearly from 0 to ``ibp_eps`` over the
first ``ibp_ramp`` of the steps while the loss moves from clean cross-entropy to
``kappa * CE(clean) + (1 - kappa) * CE(IBP worst-case logits)`` (``kappa`` 1 -> ``ibp_kappa``),
see :mod:`analyses.zoo.ibp_training`. Both record their IBP-certified test accuracy at
``certify_eps`` in the manifest.

The connectivity pairs (``mlp-w64-a/b``, ``mlp-w512-a/b``, ``bn-cnn-a/b``; REFERENCES.md
section 5) are one recipe run twice with different initialisation seeds *and* different
batch-order seeds (``data_seed``), the setting in which linear mode connectivity is studied.
The pairs with norms and attention (``vit-a/b``, ``resnet20-ln-a/b``) train the same way on the
digits upsampled to 16x16; each takes about a minute on one CPU core (the ViT a quarter of that).

The demo checkpoint series (:data:`SERIES`, ``cnn-train``) is one seeded run of a tiny strided CNN
saved at several steps (:func:`train_series`, :func:`write_series`): ``python -m analyses.zoo.recipe
cnn-train`` rewrites ``assets/zoo/series/cnn-train/`` only (a plain run rebuilds it with the models).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analyses.core.data import Dataset, load_digits
from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS, MANIFEST_NAME, SERIES_NAMES, ZOO_DIR
from analyses.zoo.models import ARCHITECTURES, SERIES_CNN_KWARGS

__all__ = [
    "DATA",
    "RECIPES",
    "SERIES",
    "Recipe",
    "SeriesRecipe",
    "accuracy",
    "build",
    "certified_accuracy",
    "main",
    "rotate",
    "train",
    "train_series",
    "write_series",
    "write_zoo",
]

#: The data every demo model is trained and evaluated on (``load_digits`` arguments); the
#: image side is the recipe's ``size`` (8 unless stated).
DATA: dict[str, Any] = {"dataset": "digits", "size": 8, "seed": 0, "test_fraction": 0.25}

#: Augmentations a recipe may name, mapped to the description written to the manifest.
AUGMENTATIONS: dict[str, str] = {
    "rotation": (
        "random rotation of every training sample by an angle drawn uniformly from [0, 360) degrees "
        "(torch.rand with a torch.Generator seeded seed + 1), bilinear resampling about the image "
        "centre with zeros outside (affine_grid/grid_sample, align_corners=False)"
    ),
}


@dataclass(frozen=True)
class Recipe:
    """How one demo model is made: architecture, seed and optimisation hyperparameters.

    ``steps == 0`` means initialisation only (an untrained twin). ``size`` is the side of the
    digits images (``load_digits(size=...)``); ``augment`` names an entry of
    :data:`AUGMENTATIONS` applied to every training batch (empty: none). ``data_seed`` seeds
    the batch order (default: ``seed``, which also seeds the initialisation).

    ``ibp_eps > 0`` trains with interval bound propagation: the input radius ramps linearly
    from 0 to ``ibp_eps`` over the first ``ibp_ramp`` fraction of the steps, and the clean
    loss weight ``kappa`` from 1 to ``ibp_kappa`` over the same steps. ``certify_eps > 0``
    records the IBP-certified test accuracy at that radius in the manifest.
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
    size: int = 8
    augment: str = ""
    data_seed: int | None = None
    ibp_eps: float = 0.0
    ibp_ramp: float = 0.5
    ibp_kappa: float = 0.5
    certify_eps: float = 0.0


_MLP = Recipe("DigitsMLP", {"in_features": 64, "hidden": [256, 128], "classes": 10})
_CNN = Recipe("DigitsCNN", {"channels": [32, 64], "classes": 10})
_ROT_CNN = {"kwargs": {"channels": [16, 32, 64], "classes": 10}, "size": 16, "lr": 3e-3}
#: The certified-training pair: same architecture, seed and optimisation; IBP or not.
_CERT_CNN = {
    "kwargs": {"channels": [16, 32], "hidden": 100, "classes": 10},
    "steps": 1500,
    "lr": 5e-3,
    "certify_eps": 0.1,
}
#: Connectivity pairs: member ``a`` and ``b`` differ in initialisation and batch-order seeds only.
_PAIR_SEEDS = {"a": {"seed": 1, "data_seed": 101}, "b": {"seed": 2, "data_seed": 102}}
_W64 = {"kwargs": {"in_features": 64, "hidden": [64, 64], "classes": 10}, "steps": 1000, "lr": 5e-3}
_W512 = {"kwargs": {"in_features": 64, "hidden": [512, 512], "classes": 10}, "steps": 1000, "lr": 2e-3}
_BN_CNN = {"kwargs": {"channels": [32, 64], "classes": 10}, "steps": 400, "lr": 2e-3}
_VIT = {
    "kwargs": {
        "image_size": 16,
        "patch": 4,
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "mlp": 64,
        "in_channels": 1,
        "classes": 10,
    },
    "steps": 2000,
    "lr": 3e-3,
    "size": 16,
}
_RESNET20_LN = {
    "kwargs": {
        "widths": [8, 16, 32],
        "blocks": 3,
        "norm": "layer",
        "groups": 4,
        "in_channels": 1,
        "classes": 10,
    },
    "steps": 1500,
    "lr": 5e-3,
    "size": 16,
}

#: Recipe for every demo model; a trained model and its untrained twin share architecture and seed.
RECIPES: dict[str, Recipe] = {
    "mlp": Recipe(**{**asdict(_MLP), "steps": 1000, "lr": 5e-3}),
    "mlp-untrained": _MLP,
    "cnn": Recipe(**{**asdict(_CNN), "steps": 400, "lr": 2e-3}),
    "cnn-untrained": _CNN,
    "rot-cnn": Recipe("DigitsGlobalPoolCNN", **_ROT_CNN, steps=1000),
    "rot-cnn-aug": Recipe("DigitsGlobalPoolCNN", **_ROT_CNN, steps=2000, augment="rotation"),
    "rot-cnn-c4": Recipe(
        "GroupAveraged", **{**_ROT_CNN, "kwargs": {**_ROT_CNN["kwargs"], "order": 4}}, steps=800
    ),
    "std-cnn": Recipe("DigitsStrideCNN", **_CERT_CNN),
    "ibp-cnn": Recipe("DigitsStrideCNN", **_CERT_CNN, ibp_eps=0.1, ibp_ramp=0.5, ibp_kappa=0.5),
    **{f"mlp-w64-{m}": Recipe("DigitsMLP", **_W64, **seeds) for m, seeds in _PAIR_SEEDS.items()},
    **{f"mlp-w512-{m}": Recipe("DigitsMLP", **_W512, **seeds) for m, seeds in _PAIR_SEEDS.items()},
    **{f"bn-cnn-{m}": Recipe("DigitsBNCNN", **_BN_CNN, **seeds) for m, seeds in _PAIR_SEEDS.items()},
    **{f"vit-{m}": Recipe("DigitsViT", **_VIT, **seeds) for m, seeds in _PAIR_SEEDS.items()},
    **{
        f"resnet20-ln-{m}": Recipe("DigitsResNet20", **_RESNET20_LN, **seeds)
        for m, seeds in _PAIR_SEEDS.items()
    },
}


def _digits(split: str, size: int = DATA["size"]) -> Dataset:
    """A split of the demo models' data, exactly as recorded in :data:`DATA` (images ``size`` wide)."""
    return load_digits(size=size, split=split, seed=DATA["seed"], test_fraction=DATA["test_fraction"])


def rotate(x: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """Rotate square images ``(N, C, H, W)`` counter-clockwise by ``degrees`` about their centre.

    ``degrees`` is one angle or one per sample. Bilinear resampling with zeros outside the
    image (``affine_grid``/``grid_sample``, ``align_corners=False``); the sense of rotation is
    that of ``torch.rot90(x, 1, dims=(2, 3))`` for 90 degrees, which it matches up to rounding.
    """
    rad = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float64)).expand(x.shape[0])
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # affine_grid maps output (x, y) to the input location it samples (y points down the rows).
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
    return _build(_recipe(name), seed)


def _build(recipe: Recipe, seed: int | None = None) -> nn.Module:
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


def certified_accuracy(model: nn.Module, data: Dataset, eps: float) -> float:
    """Fraction of ``data`` certified correct by IBP in the eps-box clipped to [0, 1] (model put in eval mode).

    Certified: the IBP lower bound of ``z_y - z_j`` is positive for every ``j != y``
    (:func:`analyses.zoo.ibp_training.certified_accuracy`).
    """
    from analyses.zoo import ibp_training

    return ibp_training.certified_accuracy(model, data.x, data.y, eps)


def train(name: str, seed: int | None = None, *, steps: int | None = None) -> nn.Module:
    """Train demo model ``name`` from its recipe on the digits train split; returns it in eval mode.

    ``seed`` defaults to the recipe's seed (the one the shipped checkpoint used); ``steps``
    overrides the recipe's step count (``0`` gives the untrained initialisation). Minibatches
    are drawn epoch by epoch from a permutation seeded with the recipe's ``data_seed`` (default:
    the seed) (and, for an augmented recipe, each batch is transformed as :data:`AUGMENTATIONS`
    describes), the learning rate follows a cosine decay to zero, and the loss is
    cross-entropy, mixed with the IBP robust loss for a recipe with ``ibp_eps > 0`` (see
    :class:`Recipe`).
    """
    return _train(_recipe(name), seed, steps)


def _train(
    recipe: Recipe,
    seed: int | None = None,
    steps: int | None = None,
    snapshot: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """:func:`train` for a recipe; ``snapshot(step, model)`` is called at step 0 and after every
    optimiser step (the model in train mode; a snapshot must not change it)."""
    seed = recipe.seed if seed is None else int(seed)
    steps = recipe.steps if steps is None else int(steps)
    if steps < 0:
        raise NNVitalsError(f"steps must be >= 0, got {steps}")
    with _deterministic():
        model = _build(recipe, seed)
        if snapshot is not None:
            snapshot(0, model)
        if steps == 0:
            return model.eval()
        data = _digits("train", recipe.size)
        optimizer_cls = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD}[recipe.optimizer]
        optimizer = optimizer_cls(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        generator = torch.Generator().manual_seed(seed if recipe.data_seed is None else recipe.data_seed)
        if recipe.augment and recipe.augment not in AUGMENTATIONS:
            raise NNVitalsError(
                f"unknown augmentation {recipe.augment!r}; expected one of {list(AUGMENTATIONS)}"
            )
        augment_generator = torch.Generator().manual_seed(seed + 1)
        loss_fn = nn.CrossEntropyLoss()
        ramp_steps = max(1, round(recipe.ibp_ramp * steps))
        if recipe.ibp_eps > 0:
            from analyses.zoo.ibp_training import robust_loss
        model.train()
        step = 0
        while step < steps:
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                x = data.x[idx]
                if recipe.augment == "rotation":
                    x = rotate(
                        x, torch.rand(len(idx), generator=augment_generator, dtype=torch.float64) * 360
                    )
                loss = loss_fn(model(x), data.y[idx])
                if recipe.ibp_eps > 0:
                    ramp = min(1.0, step / ramp_steps)
                    kappa = 1.0 - (1.0 - recipe.ibp_kappa) * ramp
                    robust = robust_loss(model, x, data.y[idx], recipe.ibp_eps * ramp)
                    loss = kappa * loss + (1.0 - kappa) * robust
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if snapshot is not None:
                    snapshot(step, model)
                if step == steps:
                    break
    return model.eval()


def _ibp_training(recipe: Recipe) -> dict[str, Any]:
    """The manifest's description of an IBP recipe's loss and schedules."""
    return {
        "loss": "kappa * cross-entropy(clean logits) + (1 - kappa) * cross-entropy(IBP worst-case logits)",
        "ibp_training": {
            "eps": recipe.ibp_eps,
            "ramp": recipe.ibp_ramp,
            "kappa": recipe.ibp_kappa,
            "eps_schedule": (
                f"linear from 0 to {recipe.ibp_eps:g} over the first {recipe.ibp_ramp:.0%} of the steps, "
                "then constant"
            ),
            "kappa_schedule": f"linear from 1 to {recipe.ibp_kappa:g} over the same steps, then constant",
            "input_box": "L-inf eps-box about each training image, clipped to [0, 1]",
            "worst_case_logits": (
                "minus the IBP lower bounds of z_y - z_j (0 for the true class), the margin "
                "specification folded into the last linear layer (analyses.zoo.ibp_training)"
            ),
        },
    }


def _insert_after(entry: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """``entry`` with ``key: value`` placed right after ``after`` (manifest entries read top to bottom)."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


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
    """Train the demo models ``names`` (default: all), write ``<name>.safetensors`` and the manifest.

    Returns the manifest. When only some models are rebuilt, the entries of the others are
    taken over unchanged from the manifest already in ``out_dir`` (if any), so their files
    and records stay as they were. Checkpoint metadata repeats the essentials
    (architecture, seed, test accuracy) so a lone file still says what it is.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    build_names = list(names or DEMO_MODELS)
    if names and (out_dir / MANIFEST_NAME).is_file():
        try:
            previous = json.loads((out_dir / MANIFEST_NAME).read_text()).get("models", {})
        except json.JSONDecodeError as exc:
            raise NNVitalsError(
                f"{out_dir / MANIFEST_NAME}: not valid JSON ({exc}); rebuild all models to rewrite it"
            ) from None
        models = {n: previous[n] for n in DEMO_MODELS if n in previous}
    for name in build_names:
        recipe = _recipe(name)
        test, n_train = _digits("test", recipe.size), len(_digits("train", recipe.size))
        started = time.perf_counter()
        model = train(name)
        seconds = time.perf_counter() - started
        acc = accuracy(model, test)
        certified = certified_accuracy(model, test, recipe.certify_eps) if recipe.certify_eps > 0 else None
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
            }
            | (
                {"certify_eps": f"{recipe.certify_eps:g}", "certified_test_accuracy": f"{certified:.6f}"}
                if certified is not None
                else {}
            ),
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
            | ({"augmentation": AUGMENTATIONS[recipe.augment]} if recipe.augment else {})
            | ({"data_seed": recipe.data_seed} if recipe.data_seed is not None else {})
            | (_ibp_training(recipe) if recipe.ibp_eps > 0 else {})
        )
        models[name] = {
            "file": path.name,
            "description": DEMO_MODELS[name],
            "architecture": recipe.architecture,
            "kwargs": recipe.kwargs,
            "seed": recipe.seed,
            "training": training,
            "data": {**DATA, "size": recipe.size, "train_split": "train", "test_split": "test"}
            | {"n_train": n_train, "n_test": len(test)},
            "test_accuracy": round(acc, 6),
            "parameters": sum(p.numel() for p in model.parameters()),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        if certified is not None:
            models[name] = _insert_after(
                models[name],
                "test_accuracy",
                "certification",
                {
                    "eps": recipe.certify_eps,
                    "data_range": [0.0, 1.0],
                    "method": (
                        "interval bound propagation (analyses.zoo.ibp_training) on the L-inf eps-box "
                        "clipped to data_range; certified = lower bound of z_y - z_j > 0 for every j != y, "
                        "the margin specification folded into the last linear layer"
                    ),
                    "clean_test_accuracy": round(acc, 6),
                    "certified_test_accuracy": round(certified, 6),
                },
            )
        cert = "" if certified is None else f", certified {certified:.4f} at eps {recipe.certify_eps:g}"
        print(f"{name:14s} test accuracy {acc:.4f}{cert}  ({seconds:.1f} s)", flush=True)

    result = {
        "format": 1,
        "rebuild": "python -m analyses.zoo.recipe",
        "reproducibility": (
            "Seeded and run with torch.use_deterministic_algorithms(True): a rerun reproduces the "
            "recorded test accuracies. Weights are not guaranteed bitwise identical across "
            "machines, CPU thread counts or PyTorch versions, so sha256 may differ after a rebuild."
        ),
        "built_with": {"torch": torch.__version__, "python": platform.python_version()},
        "models": {n: models[n] for n in DEMO_MODELS if n in models},
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- checkpoint series


@dataclass(frozen=True)
class SeriesRecipe:
    """How a demo checkpoint series is made: one training run of ``recipe`` from its
    initialisation (step 0) to ``recipe.steps``, saved at ``snapshots`` (the last one the final
    step). ``factory`` is the ``package.module:factory`` the series runs its state dicts in."""

    recipe: Recipe
    snapshots: tuple[int, ...]
    factory: str
    description: str


#: Demo checkpoint series (``assets/zoo/series/<name>/``), by name.
SERIES: dict[str, SeriesRecipe] = {
    "cnn-train": SeriesRecipe(
        recipe=Recipe("DigitsStrideCNN", dict(SERIES_CNN_KWARGS), seed=3, steps=1600, lr=1e-2, data_seed=103),
        snapshots=(0, 25, 50, 100, 200, 400, 800, 1600),
        factory="analyses.zoo.models:series_cnn",
        description=SERIES_NAMES["cnn-train"],
    ),
}


def _series_recipe(name: str) -> SeriesRecipe:
    if name not in SERIES:
        raise NNVitalsError(f"unknown demo series {name!r}; expected one of: {', '.join(SERIES)}")
    return SERIES[name]


def train_series(name: str) -> dict[int, dict[str, torch.Tensor]]:
    """Train demo series ``name`` once; its state dicts at the recipe's snapshot steps, by step."""
    spec = _series_recipe(name)
    wanted = set(spec.snapshots)
    if max(wanted) != spec.recipe.steps or min(wanted) != 0:
        raise NNVitalsError(
            f"series {name!r}: snapshots must run from 0 to the recipe's {spec.recipe.steps} steps"
        )
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, model: nn.Module) -> None:
        if step in wanted:
            states[step] = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    _train(spec.recipe, snapshot=keep)
    return states


def write_series(out_dir: Path | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Train the demo series ``names`` (default: all) and write ``<out_dir>/<name>/step_XXXX.safetensors``
    and ``<out_dir>/<name>/series.json`` (default ``out_dir``: ``assets/zoo/series``).

    ``series.json`` lists every checkpoint with its step (what
    :func:`analyses.trajectory.series.load_series` reads), names the architecture
    (``package.module:factory``) and records the recipe, each checkpoint's test accuracy, size
    and sha256. Returns ``{name: series.json contents}``.
    """
    from safetensors.torch import save_file

    from analyses.zoo import SERIES_DIR

    out_dir = Path(SERIES_DIR if out_dir is None else out_dir)
    written: dict[str, Any] = {}
    for name in names or list(SERIES):
        spec = _series_recipe(name)
        recipe = spec.recipe
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("step_*.safetensors"):
            old.unlink()
        test, n_train = _digits("test", recipe.size), len(_digits("train", recipe.size))
        started = time.perf_counter()
        states = train_series(name)
        seconds = time.perf_counter() - started
        checkpoints = []
        for step in sorted(states):
            model = ARCHITECTURES[recipe.architecture](**recipe.kwargs)
            model.load_state_dict(states[step], strict=True)
            acc = accuracy(model, test)
            path = folder / f"step_{step:04d}.safetensors"
            save_file(
                states[step],
                str(path),
                metadata={"series": name, "arch": recipe.architecture, "seed": str(recipe.seed),
                          "step": str(step), "test_accuracy": f"{acc:.6f}"},
            )  # fmt: skip
            _canonicalise_header(path)
            path.chmod(0o644)
            checkpoints.append(
                {"file": path.name, "step": step, "test_accuracy": round(acc, 6),
                 "bytes": path.stat().st_size, "sha256": _sha256(path)}
            )  # fmt: skip
            print(f"{name} step {step:5d}: test accuracy {acc:.4f}", flush=True)
        doc = {
            "format": 1,
            "name": name,
            "description": spec.description,
            "architecture": spec.factory,
            "architecture_class": recipe.architecture,
            "kwargs": recipe.kwargs,
            "parameters": sum(v.numel() for v in states[0].values()),
            "seed": recipe.seed,
            "rebuild": f"python -m analyses.zoo.recipe {name}",
            "training": {
                "steps": recipe.steps,
                "optimizer": recipe.optimizer,
                "lr": recipe.lr,
                "weight_decay": recipe.weight_decay,
                "batch_size": recipe.batch_size,
                "schedule": f"{recipe.schedule} decay to 0 over all steps",
                "loss": "cross-entropy",
                "batch_order": "seeded torch.randperm per epoch, last partial batch dropped",
                "data_seed": recipe.data_seed,
                "snapshots": "state dict after that many optimiser steps (step 0: the initialisation)",
            },
            "data": {**DATA, "size": recipe.size, "train_split": "train", "test_split": "test"}
            | {"n_train": n_train, "n_test": len(test)},
            "reproducibility": (
                "Seeded and run with torch.use_deterministic_algorithms(True); weights are not "
                "guaranteed bitwise identical across machines, CPU thread counts or PyTorch versions."
            ),
            "built_with": {"torch": torch.__version__, "python": platform.python_version()},
            "checkpoints": checkpoints,
        }
        (folder / "series.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{name}: {len(checkpoints)} checkpoints in {folder} ({seconds:.1f} s)", flush=True)
        written[name] = doc
    return written


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: rebuild the demo checkpoints and manifest, and the demo series."""
    parser = argparse.ArgumentParser(
        prog="python -m analyses.zoo.recipe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help=f"output folder (default: {ZOO_DIR})")
    parser.add_argument(
        "names",
        nargs="*",
        help=f"models or series to build (default: all of {', '.join([*DEMO_MODELS, *SERIES])})",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in DEMO_MODELS and n not in SERIES]
    if unknown:
        parser.error(
            f"unknown demo model(s) {', '.join(unknown)}; expected some of: {', '.join([*DEMO_MODELS, *SERIES])}"
        )
    models = [n for n in args.names if n in DEMO_MODELS]
    series = [n for n in args.names if n in SERIES]
    started = time.perf_counter()
    if models or not args.names:
        write_zoo(args.out, models or None)
    if series or not args.names:
        write_series(args.out / "series", series or None)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

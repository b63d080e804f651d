"""The demo model zoo: small digits classifiers shipped with nnvitals.

Every analysis needs a model to look at before the user has one of their own. The zoo holds
seeded, reproducible checkpoints (``assets/zoo/*.safetensors``) together with a manifest
that records the architecture, constructor arguments, seed, training recipe, test accuracy
and file hash of each. A trained model comes with an *untrained twin* (same architecture
and seed, initialisation only), so an analysis can show what training changed.

Three rotation demos, trained on the digits upsampled to 16x16, make the comparison NERO
draws on a rotation orbit: the same small CNN plain (``rot-cnn``), trained with random
rotations (``rot-cnn-aug``), and averaged over quarter turns so it is exactly invariant to
them (``rot-cnn-c4``). They have no untrained twins.

Two demos for interval bound propagation (IBP tightness): one small strided CNN and seed
trained normally (``std-cnn``) and with IBP certified training (``ibp-cnn``); the manifest
records their IBP-certified test accuracy at eps 0.1. Three pairs for linear mode
connectivity, each the same recipe run from two initialisation and batch-order seeds: MLPs at
two widths (``mlp-w64-a``/``-b``, ``mlp-w512-a``/``-b``) and a BatchNorm CNN (``bn-cnn-a``/``-b``).
Two more pairs on the 16x16 digits carry norms and attention: a small vision transformer
(``vit-a``/``-b``: LayerNorm, multi-head self-attention, GELU MLPs) and a narrow ResNet-20 with
LayerNorm over the channels, the Git Re-Basin CIFAR LayerNorm setting (``resnet20-ln-a``/``-b``).

One demo *checkpoint series* records a training run: ``cnn-train``, a 2,152-parameter strided CNN
(:func:`analyses.zoo.models.series_cnn`) trained on the 8x8 digits, saved at steps 0 (its
initialisation), 25, 50, 100, 200, 400, 800 and 1600 (the final one) as
``assets/zoo/series/cnn-train/step_XXXX.safetensors`` with a ``series.json`` that lists the steps
and names the architecture (``analyses.zoo.models:series_cnn``). :func:`demo_series` gives its
directory, which :class:`analyses.trajectory.Trajectory` takes as its ``series``.

The checkpoints are rebuilt with ``python -m analyses.zoo.recipe`` (see
:mod:`analyses.zoo.recipe`).

Importing this package registers it as the demo source of :mod:`analyses.core`
(:func:`analyses.core.register_demo_source`), so ``load_subject("mlp")`` finds the demos while
``core`` imports nothing from here. The import is cheap (no torch, no data): ``import analyses``
does it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analyses.core import DemoSource, register_demo_source
from analyses.core.errors import NNVitalsError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from analyses.core.data import Dataset

__all__ = [
    "DEMO_MODELS",
    "MANIFEST_NAME",
    "SERIES_DIR",
    "SERIES_NAMES",
    "ZOO_DIR",
    "demo_data",
    "demo_image_size",
    "demo_names",
    "demo_path",
    "demo_series",
    "load_demo",
    "manifest",
    "series_names",
]

#: ``ZOO_DIR``: where the shipped checkpoints and their manifest live (``<repo>/assets/zoo``),
#: made on first use (see :func:`__getattr__`) so that importing the zoo stays cheap.
MANIFEST_NAME = "manifest.json"

#: Demo model names mapped to a one-line description (shown in pickers and error messages).
DEMO_MODELS: dict[str, str] = {
    "mlp": "MLP 64-256-128-10 trained on 8x8 digits",
    "mlp-untrained": "the MLP's untrained twin: same architecture and seed, initialisation only",
    "cnn": "CNN conv32-conv64-pool-fc128-10 trained on 8x8 digits",
    "cnn-untrained": "the CNN's untrained twin: same architecture and seed, initialisation only",
    "rot-cnn": "CNN conv16-pool-conv32-conv64-maxpool-fc10 trained on upright 16x16 digits",
    "rot-cnn-aug": "the rot-cnn architecture and seed trained with random rotations (0-360 degrees)",
    "rot-cnn-c4": "the rot-cnn averaged over quarter turns (C4): exactly rot90 invariant, trained upright",
    "std-cnn": "CNN conv16-conv32/stride2-fc100-10 on 8x8 digits, standard training (ibp-cnn's twin)",
    "ibp-cnn": "the std-cnn architecture and seed trained with IBP certified training (eps 0.1)",
    "mlp-w64-a": "MLP 64-64-64-10 on 8x8 digits, seed a (pairs with mlp-w64-b for connectivity)",
    "mlp-w64-b": "MLP 64-64-64-10 on 8x8 digits, seed b: other init and batch order than mlp-w64-a",
    "mlp-w512-a": "MLP 64-512-512-10 on 8x8 digits, seed a (pairs with mlp-w512-b for connectivity)",
    "mlp-w512-b": "MLP 64-512-512-10 on 8x8 digits, seed b: other init and batch order than mlp-w512-a",
    "bn-cnn-a": "CNN (conv-BatchNorm-ReLU)x2 32-64, avgpool, fc10 on 8x8 digits, seed a (pairs with bn-cnn-b)",
    "bn-cnn-b": "CNN (conv-BatchNorm-ReLU)x2 32-64, avgpool, fc10 on 8x8 digits, seed b: other init and batch order",
    "vit-a": "ViT (4x4 patches, width 32, 2 blocks: LayerNorm, 4-head attention, GELU MLP) on 16x16 digits, seed a",
    "vit-b": "the vit-a architecture on 16x16 digits, seed b: other init and batch order (pairs with vit-a)",
    "resnet20-ln-a": "ResNet-20 8-16-32 with channel LayerNorm (Git Re-Basin's setting) on 16x16 digits, seed a",
    "resnet20-ln-b": "the resnet20-ln-a architecture, seed b: other init and batch order (pairs with resnet20-ln-a)",
}


#: Demo checkpoint series (``assets/zoo/series/<name>/``) mapped to a one-line description.
SERIES_NAMES: dict[str, str] = {
    "cnn-train": (
        "one training run of a 2,152-parameter strided CNN on 8x8 digits, 8 checkpoints from the "
        "initialisation (step 0) to the final one (step 1600)"
    ),
}


def _zoo_dir() -> Path:
    """``ZOO_DIR``, made and kept the first time it is asked for."""
    if "ZOO_DIR" not in globals():
        from pathlib import Path

        globals()["ZOO_DIR"] = Path(__file__).resolve().parents[2] / "assets" / "zoo"
    return globals()["ZOO_DIR"]


def __getattr__(name: str) -> Any:
    if name == "ZOO_DIR":
        return _zoo_dir()
    if name == "SERIES_DIR":
        return _zoo_dir() / "series"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def demo_names() -> list[str]:
    """Names of the demo models, in display order."""
    return list(DEMO_MODELS)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in DEMO_MODELS:
        raise NNVitalsError(f"unknown demo model {name!r}; expected one of: {', '.join(DEMO_MODELS)}")
    return name


def demo_path(name: str) -> Path:
    """Path of the demo model's checkpoint, ``assets/zoo/<name>.safetensors``."""
    return _zoo_dir() / f"{_check_name(name)}.safetensors"


def series_names() -> list[str]:
    """Names of the demo checkpoint series."""
    return list(SERIES_NAMES)


def demo_series(name: str) -> Path:
    """Directory of the demo checkpoint series ``name`` (``assets/zoo/series/<name>``).

    It holds ``step_XXXX.safetensors`` state dicts and a ``series.json`` listing their steps and
    naming their architecture, so ``Trajectory(series=demo_series("cnn-train"))`` runs as is.
    Raises :class:`NNVitalsError` for an unknown name or a missing directory.
    """
    if not isinstance(name, str) or name not in SERIES_NAMES:
        raise NNVitalsError(f"unknown demo series {name!r}; expected one of: {', '.join(SERIES_NAMES)}")
    path = _zoo_dir() / "series" / name
    if not (path / "series.json").is_file():
        raise NNVitalsError(
            f"{path}: demo series missing; rebuild it with `python -m analyses.zoo.recipe {name}`"
        )
    return path


def manifest() -> dict[str, Any]:
    """The parsed zoo manifest (``assets/zoo/manifest.json``).

    Raises :class:`NNVitalsError` when it is missing, pointing at the recipe that writes it.
    """
    import json

    path = _zoo_dir() / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NNVitalsError(
            f"{path}: zoo manifest not found; rebuild the demo models with `python -m analyses.zoo.recipe`"
        ) from None
    except json.JSONDecodeError as exc:
        raise NNVitalsError(f"{path}: zoo manifest is not valid JSON ({exc})") from None


def _entry(name: str) -> dict[str, Any]:
    entries = manifest().get("models", {})
    if name not in entries:
        raise NNVitalsError(
            f"{_zoo_dir() / MANIFEST_NAME}: no entry for demo model {name!r}; "
            "rebuild the demo models with `python -m analyses.zoo.recipe`"
        )
    return entries[name]


def load_demo(name: str) -> torch.nn.Module:
    """Build the demo model ``name`` from the manifest and load its weights, in eval mode.

    The checkpoint's SHA-256 is checked against the manifest first, so a damaged or
    hand-edited file is reported instead of silently analysed.
    """
    import hashlib

    from safetensors.torch import load_file

    from analyses.zoo.models import ARCHITECTURES

    path = demo_path(name)
    entry = _entry(name)
    if not path.is_file():
        raise NNVitalsError(f"{path}: demo checkpoint missing; rebuild with `python -m analyses.zoo.recipe`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise NNVitalsError(
            f"{path}: checksum {digest[:12]}... does not match the manifest ({entry['sha256'][:12]}...); "
            "restore the file or rebuild with `python -m analyses.zoo.recipe`"
        )
    arch = ARCHITECTURES[entry["architecture"]]
    model = arch(**entry["kwargs"])
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


def demo_image_size(model: Any) -> int | None:
    """Side in pixels of the digits demo model ``model`` was trained on; None for anything else."""
    if not isinstance(model, str) or model not in DEMO_MODELS:
        return None
    try:
        return int(manifest()["models"][model]["data"]["size"])
    except (KeyError, TypeError, ValueError, NNVitalsError):
        return None


def demo_data(name: str) -> Dataset:
    """The held-out digits split the demo model ``name`` was evaluated on (its test split)."""
    from analyses.core.data import load_digits

    data = _entry(_check_name(name))["data"]
    return load_digits(
        size=int(data["size"]),
        split="test",
        seed=int(data["seed"]),
        test_fraction=float(data["test_fraction"]),
    )


register_demo_source(DemoSource(models=DEMO_MODELS, checkpoint=demo_path, load=load_demo))

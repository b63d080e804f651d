"""Datasets the analyses run on: the built-in digits and whatever the user brings.

Several analyses need inputs as well as weights (orbits transform samples, IBP and
Lipschitz bound the network around samples, connectivity measures loss along a path).
They all take one :class:`Dataset`: an immutable pair of tensors with a content
fingerprint, so a cached result is keyed on exactly the data it was computed from.

Sources (see :func:`as_dataset`):

* built in: scikit-learn's bundled 8x8 handwritten digits (:func:`load_digits`), optionally
  upsampled to 16x16 or 32x32 so image analyses (rotation, scale orbits) have room to work;
* user data: a ``.npz`` file (:func:`load_npz`), a tuple ``(x, y)`` of tensors or arrays, or a
  ``torch.utils.data.Dataset`` yielding ``(x, y)`` pairs.

Nothing is ever downloaded: the digits ship inside scikit-learn.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analyses.core.errors import NNVitalsError

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "as_dataset",
    "load_digits",
    "load_npz",
    "stratified_split",
]

#: Built-in dataset names accepted by :func:`as_dataset`, mapped to the image side length.
BUILTIN_DATASETS: dict[str, int] = {"digits": 8, "digits16": 16, "digits32": 32}

_SPLITS = ("train", "test", "all")
# Labels are class indices; anything this large is a mistake (e.g. ids or hashes), and
# would make ``classes`` absurd.
_MAX_LABEL = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Dataset:
    """An immutable labelled dataset held on the CPU.

    ``x`` is ``float32`` with shape ``(N, C, H, W)`` (images) or ``(N, D)`` (vectors); ``y``
    is ``int64`` class indices of shape ``(N,)`` in ``[0, classes)``. Floating ``x`` and
    integer ``y`` of other precisions are converted on construction; anything else is
    rejected, so every analysis can rely on these invariants.

    Equality is identity (``eq=False``): comparing tensors element-wise is not a boolean.
    Compare :attr:`fingerprint` to ask whether two datasets hold the same data. The tensors
    are shared, not copied (subsets and batches are views where possible), so treat them as
    read-only: the fingerprint is computed once and would not see an in-place edit.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    classes: int

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise NNVitalsError(
                f"Dataset {self.name!r}: x and y must be torch tensors, got "
                f"{type(x).__name__} and {type(y).__name__} (use as_dataset() for arrays)"
            )
        if not x.is_floating_point():
            raise NNVitalsError(f"Dataset {self.name!r}: x must be floating point, got {x.dtype}")
        if not _is_integer_dtype(y.dtype):
            raise NNVitalsError(f"Dataset {self.name!r}: y must hold integer labels, got {y.dtype}")
        if x.ndim not in (2, 4):
            raise NNVitalsError(
                f"Dataset {self.name!r}: x must have shape (N, C, H, W) or (N, D), got {tuple(x.shape)}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise NNVitalsError(
                f"Dataset {self.name!r}: y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}"
            )
        if isinstance(self.classes, bool) or not isinstance(self.classes, int | np.integer):
            raise NNVitalsError(
                f"Dataset {self.name!r}: classes must be an int, got {type(self.classes).__name__}"
            )
        classes = int(self.classes)
        if classes < 1:
            raise NNVitalsError(f"Dataset {self.name!r}: classes must be >= 1, got {classes}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise NNVitalsError(
                f"Dataset {self.name!r}: labels must lie in [0, {classes}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )
        # Frozen dataclass: normalise through object.__setattr__ once, here.
        object.__setattr__(self, "x", x.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "y", y.detach().to("cpu", torch.int64).contiguous())
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"classes={self.classes})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 8, 8)`` or ``(64,)``."""
        return tuple(self.x.shape[1:])

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the shapes, dtypes and bytes of ``x`` and ``y``.

        Content-addressed so the result store can tell whether a cached result was computed
        on exactly this data, whatever it is called or wherever it came from.
        """
        h = hashlib.sha256()
        for tag, t in (("x", self.x), ("y", self.y)):
            h.update(f"{tag}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(memoryview(t.numpy()).cast("B"))
        return h.hexdigest()

    def subset(self, idx: Sequence[int] | torch.Tensor | np.ndarray | slice) -> Dataset:
        """The samples selected by ``idx`` (integer indices, a boolean mask, or a slice).

        Keeps ``name`` and ``classes`` so labels keep their meaning in the smaller set.
        """
        if isinstance(idx, slice):
            index: Any = idx
        else:
            if isinstance(idx, torch.Tensor):
                index = idx
            else:
                array = np.asarray(idx)
                index = torch.as_tensor(array.astype(np.int64) if array.size == 0 else array)
            if index.dtype == torch.bool:
                if index.shape != (len(self),):
                    raise NNVitalsError(
                        f"Dataset {self.name!r}: a boolean mask must have shape ({len(self)},), "
                        f"got {tuple(index.shape)}"
                    )
            elif not _is_integer_dtype(index.dtype) or index.ndim != 1:
                raise NNVitalsError(
                    f"Dataset {self.name!r}: subset() expects 1-D integer indices, a boolean mask "
                    f"or a slice, got {index.dtype} with shape {tuple(index.shape)}"
                )
            elif index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
                raise NNVitalsError(
                    f"Dataset {self.name!r}: subset() indices must lie in [{-len(self)}, {len(self)}), "
                    f"got range [{int(index.min())}, {int(index.max())}]"
                )
            index = index.to(torch.int64) if index.dtype != torch.bool else index
        return Dataset(x=self.x[index], y=self.y[index], name=self.name, classes=self.classes)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of at most ``batch_size`` samples, in dataset order.

        Fixed order keeps every analysis deterministic; the last batch may be smaller.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise NNVitalsError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), int(batch_size)):
            stop = start + int(batch_size)
            yield self.x[start:stop], self.y[start:stop]


# --------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw 8x8 digits (1797 images, pixel values 0..16) from scikit-learn's package data."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_split(
    y: np.ndarray | torch.Tensor, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split of labels ``y``; returns sorted ``(train_idx, test_idx)``.

    Within each class the indices are permuted with ``numpy.random.default_rng(seed)`` and
    ``round(n_class * test_fraction)`` of them go to the test side, so every class keeps its
    proportion and the split depends only on ``(y, test_fraction, seed)``.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise NNVitalsError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    labels = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(members) * float(test_fraction)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(
    size: int = 8,
    split: str = "all",
    seed: int = 0,
    test_fraction: float = 0.25,
    flat: bool = False,
) -> Dataset:
    """scikit-learn's bundled handwritten digits (1797 images, 10 classes), never downloaded.

    Pixels are scaled from 0..16 to [0, 1]. Images have shape ``(N, 1, size, size)``; for
    ``size != 8`` they are resampled bilinearly (``align_corners=False``) and clamped to
    [0, 1], which gives rotation and scale orbits room to work. ``flat=True`` returns
    ``(N, size*size)`` vectors for MLP-style inputs.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; the split is stratified by class and
    fixed by ``seed`` and ``test_fraction`` (see :func:`stratified_split`), so the demo
    models' test split is the same on every machine.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise NNVitalsError(f"size must be a positive integer (image side in pixels), got {size!r}")
    if split not in _SPLITS:
        raise NNVitalsError(f"split must be one of {', '.join(map(repr, _SPLITS))}, got {split!r}")
    size = int(size)
    images, labels = _digits_arrays()
    if split != "all":
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        keep = train_idx if split == "train" else test_idx
        images, labels = images[keep], labels[keep]

    x = torch.from_numpy(images.copy()).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)
    if flat:
        x = x.reshape(x.shape[0], size * size)
    base = "digits" if size == 8 else f"digits{size}"
    name = base if split == "all" else f"{base}-{split}"
    return Dataset(x=x, y=torch.from_numpy(labels.copy()), name=name, classes=10)


# --------------------------------------------------------------------------- user data


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _from_arrays(x: Any, y: Any, *, where: str, name: str) -> Dataset:
    """Validate user-supplied ``x``/``y`` (numpy arrays or tensors) and build a :class:`Dataset`.

    ``where`` names the source (a file path or the ``data`` argument) in every message, so
    the user knows which input to fix.
    """
    # dtype checks first, in the array's own type system (numpy has no bfloat16, torch
    # has no uint16 arithmetic everywhere), then convert.
    if isinstance(x, torch.Tensor):
        x_ok, x_dtype = x.is_floating_point(), str(x.dtype)
    else:
        x = np.asarray(x)
        x_ok, x_dtype = x.dtype.kind == "f", str(x.dtype)
    if isinstance(y, torch.Tensor):
        y_ok, y_dtype = _is_integer_dtype(y.dtype), str(y.dtype)
    else:
        y = np.asarray(y)
        y_ok, y_dtype = y.dtype.kind in "iu", str(y.dtype)

    if x.ndim not in (2, 4):
        hint = " (add a channel axis, e.g. x[:, None])" if x.ndim == 3 else ""
        raise NNVitalsError(
            f"{where}: x must have 4 dims (N, C, H, W) or 2 dims (N, D), got shape {tuple(x.shape)}{hint}"
        )
    if y.ndim != 1:
        raise NNVitalsError(f"{where}: y must have 1 dim (N,) of class labels, got shape {tuple(y.shape)}")
    if not x_ok:
        raise NNVitalsError(
            f"{where}: x must be floating point (e.g. float32 scaled to [0, 1]), got {x_dtype}"
        )
    if not y_ok:
        raise NNVitalsError(f"{where}: y must hold integer class labels, got {y_dtype}")
    if x.shape[0] != y.shape[0]:
        raise NNVitalsError(f"{where}: x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[0] == 0 or any(d == 0 for d in x.shape[1:]):
        raise NNVitalsError(f"{where}: the dataset is empty (x has shape {tuple(x.shape)})")

    if isinstance(x, torch.Tensor):
        xt = x.detach().to("cpu", torch.float32)
    else:
        with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
            xt = torch.from_numpy(x.astype(np.float32))
    bad = int((~torch.isfinite(xt)).sum())
    if bad:
        raise NNVitalsError(
            f"{where}: x contains {bad} non-finite values (NaN, inf, or beyond float32 range)"
        )
    y_min, y_max = int(y.min()), int(y.max())
    if y_min < 0:
        raise NNVitalsError(f"{where}: y must be class indices >= 0, found label {y_min}")
    if y_max > _MAX_LABEL:
        raise NNVitalsError(f"{where}: y must be class indices, found label {y_max} (too large)")
    yt = (
        y.detach().to("cpu", torch.int64)
        if isinstance(y, torch.Tensor)
        else torch.from_numpy(y.astype(np.int64))
    )
    return Dataset(x=xt, y=yt, name=name, classes=y_max + 1)


def load_npz(path: str | Path) -> Dataset:
    """Load a user dataset from a ``.npz`` file with arrays ``x`` and ``y``.

    ``x`` is floating point with shape ``(N, C, H, W)`` or ``(N, D)``; ``y`` holds integer
    class labels of shape ``(N,)``. The file is read with ``allow_pickle=False``, so it can
    never execute code. ``classes`` is ``max(y) + 1``. Every problem is reported as a
    one-line :class:`NNVitalsError` naming the file.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise NNVitalsError(f"{where}: no such file (expected a .npz with arrays 'x' and 'y')")
    if not p.is_file():
        raise NNVitalsError(f"{where}: not a file (expected a .npz with arrays 'x' and 'y')")
    how = "save one with numpy.savez(path, x=x, y=y)"
    if not zipfile.is_zipfile(p):
        with p.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise NNVitalsError(f"{where}: holds a single .npy array, not a .npz archive; {how}")
        raise NNVitalsError(
            f"{where}: not a .npz archive (no zip directory found: another format, or truncated); {how}"
        )
    try:
        archive = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise NNVitalsError(
            f"{where}: not a readable .npz archive ({type(exc).__name__}: {detail}); {how}"
        ) from None
    with archive:
        keys = sorted(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise NNVitalsError(
                f"{where}: missing array {' and '.join(map(repr, missing))} (found {found}); "
                "expected arrays 'x' (inputs) and 'y' (labels)"
            )
        try:
            x, y = archive["x"], archive["y"]
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise NNVitalsError(
                f"{where}: could not read arrays 'x'/'y' ({type(exc).__name__}: {detail}); the file is "
                "damaged, or holds object arrays (refused: they need pickle), store numeric arrays"
            ) from None
    return _from_arrays(x, y, where=where, name=p.stem)


def _from_torch_dataset(ds: torch.utils.data.Dataset) -> Dataset:
    """Stack every ``(x, y)`` item of a map-style torch dataset into one :class:`Dataset`."""
    where = f"data ({type(ds).__name__})"
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise NNVitalsError(
            f"{where}: a torch Dataset must have a length (map-style) to be used as data"
        ) from None
    if n == 0:
        raise NNVitalsError(f"{where}: the dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise NNVitalsError(f"{where}: item {i} must be an (x, y) pair, got {type(item).__name__}")
        xi, yi = item
        xs.append(torch.as_tensor(xi))
        ys.append(torch.as_tensor(yi))
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) != 1:
        raise NNVitalsError(f"{where}: every x must have the same shape, found {sorted(shapes)[:3]}")
    if any(t.numel() != 1 for t in ys):
        raise NNVitalsError(f"{where}: every y must be a single integer label")
    return _from_arrays(
        torch.stack(xs), torch.stack([t.reshape(()) for t in ys]), where=where, name=type(ds).__name__
    )


def as_dataset(obj: Any, *, split: str = "all") -> Dataset:
    """Turn whatever the user passed as ``data`` into a :class:`Dataset`.

    Accepted forms:

    * a :class:`Dataset` — returned as is;
    * ``"digits"``, ``"digits16"``, ``"digits32"`` — the built-in digits at 8, 16 or 32
      pixels, restricted to ``split`` (``"train"``, ``"test"`` or ``"all"``);
    * a ``str`` or ``Path`` ending in ``.npz`` — see :func:`load_npz`;
    * a tuple ``(x, y)`` of tensors or numpy arrays;
    * a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (stacked).

    ``split`` only selects part of the built-in datasets; user data is used whole.
    """
    if split not in _SPLITS:
        raise NNVitalsError(f"split must be one of {', '.join(map(repr, _SPLITS))}, got {split!r}")
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, str) and obj in BUILTIN_DATASETS:
        return load_digits(size=BUILTIN_DATASETS[obj], split=split)
    if isinstance(obj, str | Path) and str(obj).lower().endswith(".npz"):
        return load_npz(obj)
    if isinstance(obj, tuple) and len(obj) == 2:
        x, y = obj
        if isinstance(x, torch.Tensor | np.ndarray) and isinstance(y, torch.Tensor | np.ndarray):
            return _from_arrays(x, y, where="data (x, y)", name="arrays")
    if isinstance(obj, torch.utils.data.Dataset):
        return _from_torch_dataset(obj)
    shown = repr(obj) if isinstance(obj, str | Path) else type(obj).__name__
    raise NNVitalsError(
        f"data: cannot use {shown[:80]} as a dataset; expected a Dataset, one of "
        f"{', '.join(map(repr, BUILTIN_DATASETS))}, a path to a .npz file with arrays 'x' and 'y', "
        "a tuple (x, y) of tensors or numpy arrays, or a torch.utils.data.Dataset of (x, y) pairs"
    )

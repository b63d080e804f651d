"""Datasets the analyses run on: the built-in digits and whatever the user brings.

Several analyses need inputs as well as weights (orbits transform samples, IBP and
Lipschitz bound the network around samples, connectivity measures loss along a path).
They all take one :class:`Dataset`: an immutable pair of tensors with a content
fingerprint, so a cached result is keyed on exactly the data it was computed from.

Sources (see :func:`as_dataset`):

* built in: scikit-learn's bundled 8x8 handwritten digits (:func:`load_digits`), optionally
  upsampled to 16x16 or 32x32 so image analyses (rotation, scale orbits) have room to work, named
  ``digits8``, ``digits16`` and ``digits32`` in every analysis (``digits`` is an alias of
  ``digits8``; a loaded 8x8 set keeps its name ``digits``/``digits-<split>``);
* user data: a ``.npz`` file (:func:`load_npz`), a ``.pt`` file (:func:`load_pt`), a tuple
  ``(x, y)`` of tensors or arrays, or a ``torch.utils.data.Dataset`` yielding ``(x, y)`` pairs;
  ``x`` holds images ``(N, C, H, W)``, 1-D signals ``(N, C, L)`` or vectors ``(N, D)``.

Nothing is ever downloaded: the digits ship inside scikit-learn.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import torch

from analyses.core.errors import NNVitalsError

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_ALIASES",
    "DIGITS_NAMES",
    "Dataset",
    "as_dataset",
    "builtin_name",
    "load_digits",
    "load_npz",
    "load_pt",
    "stratified_split",
]

#: The built-in datasets' names, one vocabulary for every analysis and page: scikit-learn's digits
#: at 8, 16 or 32 pixels a side.
DIGITS_NAMES: dict[str, int] = {"digits8": 8, "digits16": 16, "digits32": 32}
#: Other names accepted for them: ``"digits"`` is ``"digits8"`` (the digits as scikit-learn ships
#: them) in every analysis.
DATASET_ALIASES: dict[str, str] = {"digits": "digits8"}
#: Every name :func:`as_dataset` accepts for a built-in dataset (aliases included), mapped to the
#: image side length.
BUILTIN_DATASETS: dict[str, int] = {
    **DIGITS_NAMES,
    **{a: DIGITS_NAMES[n] for a, n in DATASET_ALIASES.items()},
}

_SPLITS = ("train", "test", "all")
#: the shapes ``x`` may have, in words (every message about them says the same)
SHAPES_TEXT = "(N, C, H, W) images, (N, C, L) 1-D signals or (N, D) vectors"
# Labels are class indices; anything this large is a mistake (e.g. ids or hashes), and
# would make ``classes`` absurd.
_MAX_LABEL = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Dataset:
    """An immutable labelled dataset held on the CPU.

    ``x`` is ``float32`` with shape ``(N, C, H, W)`` (images), ``(N, C, L)`` (1-D signals: channels
    by length, as ``Conv1d`` takes them) or ``(N, D)`` (vectors); ``y``
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
    #: ``x`` holds integer token ids of shape ``(N, T)`` (a language model's input), kept as int64
    tokens: bool = False

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise NNVitalsError(
                f"Dataset {self.name!r}: x and y must be torch tensors, got "
                f"{type(x).__name__} and {type(y).__name__} (use as_dataset() for arrays)"
            )
        if self.tokens:
            if not _is_integer_dtype(x.dtype) or x.ndim != 2:
                raise NNVitalsError(
                    f"Dataset {self.name!r}: token ids must be integers of shape (N, T), "
                    f"got {x.dtype} with shape {tuple(x.shape)}"
                )
            if x.numel() and int(x.min()) < 0:
                raise NNVitalsError(f"Dataset {self.name!r}: token ids must be >= 0, found {int(x.min())}")
        elif not x.is_floating_point():
            raise NNVitalsError(f"Dataset {self.name!r}: x must be floating point, got {x.dtype}")
        if not _is_integer_dtype(y.dtype):
            raise NNVitalsError(f"Dataset {self.name!r}: y must hold integer labels, got {y.dtype}")
        if x.ndim not in (2, 3, 4):
            raise NNVitalsError(
                f"Dataset {self.name!r}: x must have shape {SHAPES_TEXT}, got {tuple(x.shape)}"
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
        object.__setattr__(
            self, "x", x.detach().to("cpu", torch.int64 if self.tokens else torch.float32).contiguous()
        )
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
        """Shape of one sample, e.g. ``(1, 8, 8)``, ``(2, 128)`` or ``(64,)``."""
        return tuple(self.x.shape[1:])

    @property
    def kind(self) -> str:
        """What one sample is: ``'image'`` ``(C, H, W)``, ``'signal'`` ``(C, L)``, ``'vector'`` ``(D,)``
        or ``'tokens'`` ``(T,)`` (integer token ids)."""
        if self.tokens:
            return "tokens"
        return {4: "image", 3: "signal", 2: "vector"}[self.x.ndim]

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
        return Dataset(
            x=self.x[index], y=self.y[index], name=self.name, classes=self.classes, tokens=self.tokens
        )

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


def _from_arrays(x: Any, y: Any, *, where: str, name: str, tokens: bool = False) -> Dataset:
    """Validate user-supplied ``x``/``y`` (numpy arrays or tensors) and build a :class:`Dataset`.

    ``where`` names the source (a file path or the ``data`` argument) in every message, so
    the user knows which input to fix.
    """
    # dtype checks first, in the array's own type system (numpy has no bfloat16, torch
    # has no uint16 arithmetic everywhere), then convert.
    for tag, t in (("x", x), ("y", y)):
        if isinstance(t, torch.Tensor) and (t.is_meta or t.layout != torch.strided or t.is_quantized):
            kind = "on the meta device (no values)" if t.is_meta else f"not a dense tensor ({t.layout})"
            raise NNVitalsError(f"{where}: {tag} is {kind}; give dense tensors with values")
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

    if x.ndim not in (2, 3, 4):
        hint = " (add a channel axis, e.g. x[:, None])" if x.ndim == 1 else ""
        raise NNVitalsError(f"{where}: x must have shape {SHAPES_TEXT}, got shape {tuple(x.shape)}{hint}")
    if y.ndim != 1:
        raise NNVitalsError(f"{where}: y must have 1 dim (N,) of class labels, got shape {tuple(y.shape)}")
    if tokens:
        x_ok = (x.dtype.kind in "iu") if isinstance(x, np.ndarray) else _is_integer_dtype(x.dtype)
        if not x_ok or x.ndim != 2:
            raise NNVitalsError(
                f"{where}: ids must be integer token ids of shape (N, T), got {x_dtype} {tuple(x.shape)}"
            )
    if not x_ok:
        hint = "; token ids go in an array named 'ids' instead of 'x'" if x.ndim == 2 else ""
        raise NNVitalsError(
            f"{where}: x must be floating point (e.g. float32 scaled to [0, 1]), got {x_dtype}{hint}"
        )
    if not y_ok:
        raise NNVitalsError(f"{where}: y must hold integer class labels, got {y_dtype}")
    if x.shape[0] != y.shape[0]:
        raise NNVitalsError(f"{where}: x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[0] == 0 or any(d == 0 for d in x.shape[1:]):
        raise NNVitalsError(f"{where}: the dataset is empty (x has shape {tuple(x.shape)})")

    if tokens:
        xt = (
            x.detach().to("cpu", torch.int64)
            if isinstance(x, torch.Tensor)
            else torch.from_numpy(x.astype(np.int64))
        )
        if int(xt.min()) < 0:
            raise NNVitalsError(f"{where}: token ids must be >= 0, found {int(xt.min())}")
    elif isinstance(x, torch.Tensor):
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
    return Dataset(x=xt, y=yt, name=name, classes=y_max + 1, tokens=tokens)


#: most bytes one array of a ``.npz`` may hold, as stored and as float32 (None: an eighth of the
#: machine's memory, at least 512 MiB): checked against the sizes the archive declares, before reading
MAX_NPZ_ARRAY_BYTES: int | None = None
#: most members a ``.npz`` archive may list (``numpy.savez`` writes one per array)
MAX_NPZ_MEMBERS = 10_000
#: numpy's own limit on the length of a ``.npy`` header (``max_header_size``)
_NPY_MAX_HEADER = 10_000
_NPY_MAGIC = b"\x93NUMPY"
_NPY_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "c": "complex numbers"}
_READ_CHUNK = 1 << 24
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")


def _array_budget() -> int:
    if MAX_NPZ_ARRAY_BYTES is not None:
        return int(MAX_NPZ_ARRAY_BYTES)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        total = 8 << 30
    return max(512 << 20, total // 8)


def _bytes_text(n: int) -> str:
    for unit, scale in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def _npy_header(f: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and length of the ``.npy`` prelude at the start of stream ``f``.

    The header length is checked before the header is read (a version 2 header may declare 4 GB);
    the header itself is parsed by numpy's safe reader (``ast.literal_eval``, no pickle).
    """
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
        raise NNVitalsError(f"{where} is not a .npy array (no NUMPY header)")
    major = magic[6]
    if major not in (1, 2, 3) or magic[7] != 0:
        raise NNVitalsError(f"{where} has an unknown .npy format version")
    size_bytes = f.read(2 if major == 1 else 4)
    if len(size_bytes) < (2 if major == 1 else 4):
        raise NNVitalsError(f"{where} is truncated inside its .npy header")
    length = int.from_bytes(size_bytes, "little")
    if length > _NPY_MAX_HEADER:
        raise NNVitalsError(
            f"{where} declares a {length:,}-byte .npy header (numpy reads at most {_NPY_MAX_HEADER:,})"
        )
    header = f.read(length)
    if len(header) < length:
        raise NNVitalsError(f"{where} is truncated inside its .npy header")
    # version 3 differs from 2 only in allowing UTF-8 field names (structured dtypes, refused below)
    reader = npformat.read_array_header_1_0 if major == 1 else npformat.read_array_header_2_0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about headers written by Python 2
            shape, fortran, dtype = reader(io.BytesIO(size_bytes + header), max_header_size=_NPY_MAX_HEADER)
    except Exception:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TypeError... on bad headers
        raise NNVitalsError(
            f"{where} has a malformed .npy header (shape, dtype and order unreadable)"
        ) from None
    return tuple(shape), bool(fortran), dtype, 8 + len(size_bytes) + length


def _read_npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, where: str) -> np.ndarray:
    """Array ``key`` of an open ``.npz``, refused in one line unless its sizes are sane.

    Before anything is inflated: the member's declared uncompressed size (``ZipInfo.file_size``,
    which also bounds what ``zipfile`` will inflate) must fit :data:`MAX_NPZ_ARRAY_BYTES`. Before
    the array is allocated: the shape and dtype its ``.npy`` header declares must be plain numbers
    whose size fits that budget (also as float32) and matches the bytes the member holds.
    """
    budget = _array_budget()
    what = f"{where}: array {key!r}"
    if info.flag_bits & 0x1:
        raise NNVitalsError(f"{what} is encrypted; save the arrays with numpy.savez (no password)")
    if info.compress_type not in (
        zipfile.ZIP_STORED,
        zipfile.ZIP_DEFLATED,
        zipfile.ZIP_BZIP2,
        zipfile.ZIP_LZMA,
    ):
        raise NNVitalsError(f"{what} uses an unknown compression method; save it with numpy.savez")
    if info.file_size > budget + _NPY_MAX_HEADER + 64:
        packed = (
            "" if info.compress_type == zipfile.ZIP_STORED else f" from {_bytes_text(info.compress_size)}"
        )
        raise NNVitalsError(
            f"{what} would inflate to {_bytes_text(info.file_size)}{packed}; at most "
            f"{_bytes_text(budget)} per array are read (a zip bomb, or data too large for this machine)"
        )
    try:
        with zf.open(info) as f:
            shape, fortran, dtype, offset = _npy_header(f, what)
            if dtype.hasobject:
                raise NNVitalsError(
                    f"{what} holds Python objects (object arrays need pickle and are refused); "
                    "store numeric arrays"
                )
            if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
                raise NNVitalsError(
                    f"{what} holds values of dtype kind {dtype.kind!r}; expected numbers "
                    "(floats for x, integers for y)"
                )
            if any(d < 0 for d in shape):
                raise NNVitalsError(f"{what} declares a negative dimension in its shape")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            if max(nbytes, 4 * count) > budget:
                raise NNVitalsError(
                    f"{what} declares shape {shape} of {dtype.name} ({_bytes_text(max(nbytes, 4 * count))} "
                    f"as float32); at most {_bytes_text(budget)} per array are read"
                )
            if nbytes != info.file_size - offset:
                raise NNVitalsError(
                    f"{what} declares shape {shape} of {dtype.name} ({nbytes:,} bytes) but holds "
                    f"{max(0, info.file_size - offset):,} bytes of data (truncated or damaged)"
                )
            flat = np.empty(count, dtype=dtype)
            raw = flat.view(np.uint8).reshape(-1)
            pos = 0
            while pos < nbytes:
                got = f.readinto(raw[pos : pos + _READ_CHUNK])
                if not got:
                    raise NNVitalsError(f"{what} ends early: the archive is truncated or damaged")
                pos += got
            if f.read(1):  # reaching the end checks the zip CRC
                raise NNVitalsError(f"{what} holds more bytes than its header declares (damaged)")
    except NNVitalsError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib/bz2/lzma raise many types on damaged data
        raise NNVitalsError(
            f"{what} could not be read ({type(exc).__name__}): the file is damaged or truncated"
        ) from None
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def load_npz(path: str | Path) -> Dataset:
    """Load a user dataset from a ``.npz`` file with arrays ``x`` and ``y``.

    ``x`` is floating point with shape ``(N, C, H, W)``, ``(N, C, L)`` or ``(N, D)``; ``y`` holds integer
    class labels of shape ``(N,)``. ``classes`` is ``max(y) + 1``. The archive is read member by
    member with the sizes it declares checked first (:func:`_read_npz_member`): no pickle, no
    allocation or inflation past :data:`MAX_NPZ_ARRAY_BYTES`. Every problem is reported as a
    one-line :class:`NNVitalsError` naming the file.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise NNVitalsError(f"{where}: no such file (expected a .npz with arrays 'x' and 'y')")
    if not p.is_file():
        raise NNVitalsError(f"{where}: not a file (expected a .npz with arrays 'x' and 'y')")
    how = "save one with numpy.savez(path, x=x, y=y)"
    try:
        is_zip = zipfile.is_zipfile(p)
        if not is_zip:
            with p.open("rb") as f:
                magic = f.read(6)
    except OSError as exc:
        raise NNVitalsError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not is_zip:
        if magic == _NPY_MAGIC:
            raise NNVitalsError(f"{where}: holds a single .npy array, not a .npz archive; {how}")
        raise NNVitalsError(
            f"{where}: not a .npz archive (no zip directory found: another format, or truncated); {how}"
        )
    try:
        zf = zipfile.ZipFile(p)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, LargeZipFile, OSError, ValueError, ...
        raise NNVitalsError(
            f"{where}: not a readable .npz archive (damaged zip directory: {type(exc).__name__}); {how}"
        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise NNVitalsError(
                f"{where}: lists {len(infos):,} archive members (at most {MAX_NPZ_MEMBERS:,} are read); {how}"
            )
        by_key: dict[str, zipfile.ZipInfo] = {}
        for info in infos:  # numpy's keys: the member name without ".npy"
            by_key.setdefault(info.filename.removesuffix(".npy"), info)
        tokens = "x" not in by_key and "ids" in by_key  # token ids (a language model's input)
        missing = [k for k in ("ids" if tokens else "x", "y") if k not in by_key]
        if missing:
            names = sorted(k for k in by_key if _NAME_RE.match(k))
            others = len(by_key) - len(names)
            found = ", ".join(repr(k) for k in names[:8]) or "none"
            if others or len(names) > 8:
                found += f" and {others + max(0, len(names) - 8)} more"
            raise NNVitalsError(
                f"{where}: missing array {' and '.join(map(repr, missing))} (found {found}); "
                "expected arrays 'x' (inputs) and 'y' (labels), or 'ids' (token ids) and 'y'"
            )
        x = _read_npz_member(zf, by_key["ids" if tokens else "x"], "ids" if tokens else "x", where)
        y = _read_npz_member(zf, by_key["y"], "y", where)
    return _from_arrays(x, y, where=where, name=p.stem, tokens=tokens)


#: suffixes of torch data files (:func:`load_pt`)
PT_SUFFIXES = (".pt", ".pth")


def load_pt(path: str | Path) -> Dataset:
    """Load a user dataset saved with ``torch.save``: a dict with tensors ``x`` and ``y`` (or an
    ``(x, y)`` pair), read with ``torch.load(weights_only=True)`` (tensors and containers only: no
    pickled code runs). The shapes and types are those of :func:`load_npz`; a file larger than twice
    :data:`MAX_NPZ_ARRAY_BYTES` is refused before it is read."""
    p = Path(path)
    where = str(p)
    how = "save one with torch.save({'x': x, 'y': y}, path)"
    if not p.is_file():
        what = "no such file" if not p.exists() else "not a file"
        raise NNVitalsError(f"{where}: {what} (expected a torch file holding {{'x': ..., 'y': ...}})")
    size = p.stat().st_size
    if size > 2 * _array_budget():
        raise NNVitalsError(
            f"{where}: {_bytes_text(size)}; at most {_bytes_text(2 * _array_budget())} of data are read"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and unpickler errors of many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise NNVitalsError(f"{where}: not a readable torch data file ({first}); {how}") from None
    tokens = isinstance(obj, dict) and "ids" in obj and "x" not in obj
    if isinstance(obj, dict) and ("ids" if tokens else "x") in obj and "y" in obj:
        x, y = obj["ids" if tokens else "x"], obj["y"]
    elif isinstance(obj, tuple | list) and len(obj) == 2:
        x, y = obj
    else:
        found = ", ".join(repr(k) for k in list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
        raise NNVitalsError(f"{where}: holds {found}; expected tensors 'x' (inputs) and 'y' (labels); {how}")
    if not isinstance(x, torch.Tensor | np.ndarray) or not isinstance(y, torch.Tensor | np.ndarray):
        raise NNVitalsError(
            f"{where}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}; {how}"
        )
    return _from_arrays(x, y, where=where, name=p.stem, tokens=tokens)


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
        try:
            xs.append(torch.as_tensor(xi))
            ys.append(torch.as_tensor(yi))
        except (TypeError, ValueError, RuntimeError):
            raise NNVitalsError(
                f"{where}: item {i} is not an (x, y) pair of numbers (got {type(xi).__name__}, "
                f"{type(yi).__name__}); x must be numeric and y an integer label"
            ) from None
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) != 1:
        raise NNVitalsError(f"{where}: every x must have the same shape, found {sorted(shapes)[:3]}")
    if any(t.numel() != 1 for t in ys):
        raise NNVitalsError(f"{where}: every y must be a single integer label")
    return _from_arrays(
        torch.stack(xs), torch.stack([t.reshape(()) for t in ys]), where=where, name=type(ds).__name__
    )


def builtin_name(name: Any) -> str | None:
    """The explicit name (``'digits8'``, ``'digits16'``, ``'digits32'``) of a built-in dataset
    name or alias (``'digits'`` -> ``'digits8'``); None for anything else."""
    if not isinstance(name, str) or name not in BUILTIN_DATASETS:
        return None
    return DATASET_ALIASES.get(name, name)


def as_dataset(obj: Any, *, split: str = "all") -> Dataset:
    """Turn whatever the user passed as ``data`` into a :class:`Dataset`.

    Accepted forms:

    * a :class:`Dataset` — returned as is;
    * ``"digits8"``, ``"digits16"``, ``"digits32"`` — the built-in digits at 8, 16 or 32
      pixels, restricted to ``split`` (``"train"``, ``"test"`` or ``"all"``); ``"digits"`` is an
      alias of ``"digits8"`` (:data:`DATASET_ALIASES`);
    * a ``str`` or ``Path`` ending in ``.npz`` — see :func:`load_npz`; ending in ``.pt``/``.pth``
      — see :func:`load_pt`;
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
    if isinstance(obj, str | Path) and str(obj).lower().endswith(PT_SUFFIXES) and Path(obj).is_file():
        return load_pt(obj)  # (a missing one is named with every form data may take, below)
    if isinstance(obj, tuple) and len(obj) == 2:
        x, y = obj
        if isinstance(x, torch.Tensor | np.ndarray) and isinstance(y, torch.Tensor | np.ndarray):
            return _from_arrays(x, y, where="data (x, y)", name="arrays")
    if isinstance(obj, torch.utils.data.Dataset):
        return _from_torch_dataset(obj)
    shown = repr(obj) if isinstance(obj, str | Path) else type(obj).__name__
    raise NNVitalsError(
        f"data: cannot use {shown[:80]} as a dataset; expected a Dataset, one of "
        f"{', '.join(map(repr, DIGITS_NAMES))} ('digits' = 'digits8'), a path to a .npz file with arrays "
        "'x' and 'y' (or a .pt file saved with torch.save({'x': x, 'y': y})), "
        "a tuple (x, y) of tensors or numpy arrays, or a torch.utils.data.Dataset of (x, y) pairs"
    )

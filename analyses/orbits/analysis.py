"""OrbitAnalysis: NERO plots, the scores of one or more models along a group orbit (reference §2).

For every model, sample and sampled group element the model sees the transformed image and
the score of its output is recorded (true-class probability by default). The result holds the
long table (one row per model, sample and element), the score cubes for the views, and, when
small enough, the class probabilities and the images themselves so a static result can still
show any sample at any element.

The knobs are bounded by what they cost, counted before anything is made: at most
:data:`MAX_ELEMENTS` group elements, :data:`MAX_POINTS` orbit points (models x samples x
elements, the rows of the result) and :data:`MAX_PIXELS` pixels to resample and run; past them
the run is refused in one line that says which knob to lower. Within them tasks and element groups
keep the working memory near :data:`TASK_BYTES` and :data:`GROUP_BYTES`. A ``.pt2`` program
exported with a fixed batch size runs any batch (:mod:`analyses.core.batching`: its batch axis made
dynamic, or batches cut to its size; the result's ``meta["notes"]`` says which); a model that takes
flat vectors (its recorded input, or a try on two images) gets each image flattened. A run stops
within a batch of Cancel: the tasks check the run's cancel token between batches
(:meth:`OrbitAnalysis.run`).

Images may have 1 or 3 channels (any size); ``mean``/``std`` apply the model's input normalisation
after each transform (the transforms act on pixels in [0, 1], filling with 0). With ``fit_input``
the data are brought to the input a ``.pt2`` model records: resized (bilinear for images, linear
for signals), a gray channel repeated for a 3-channel model. 1-D signals ``(N, C, L)`` walk the
``time-*`` groups (``shift``, ``flip`` and ``scale`` name them too): shifts filled with zeros or
wrapped around (``shift_fill``), time reversal and resampling. A model that takes token ids (integer
inputs) is refused in one line: there is nothing to rotate or shift in a token id.

:func:`setting_problems` checks settings before anything runs and reports every bad one at once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import param
import torch

from ..core.analysis import Analysis
from ..core.batching import FixedBatchModule
from ..core.data import Dataset, as_dataset, builtin_name
from ..core.errors import Cancelled, NNVitalsError
from ..core.graph import first_input, fixed_batch_size
from ..core.result import Result
from ..core.runner import CancelToken, Progress, Task, parse_spec
from ..core.subject import ExportSubject, ModuleSubject, Subject, runnable_module
from . import fitting
from . import kernels as K

#: bytes of transformed images per task (all elements of a chunk of samples): a few dozen tasks at most
TASK_BYTES = 64 * 1024 * 1024
#: bytes of transformed images made at once inside a task (resampled in one call, then fed in batches)
GROUP_BYTES = 16 * 1024 * 1024
#: store class probabilities and images with the result up to this many floats each
KEEP_FLOATS = 16_000_000
#: most group elements one orbit samples (their parameters, labels and sampling grids are held at once)
MAX_ELEMENTS = 1_000_000
#: most orbit points (models x samples x elements) in one result: each is a row of its table
MAX_POINTS = 10_000_000
#: bytes of result per orbit point (table row, scores, predictions; measured ~60-100 with probabilities)
POINT_BYTES = 80
#: most pixels one run resamples and feeds to the models (orbit points x image size)
MAX_PIXELS = 20_000_000_000
#: how each group's element count is set, and what to turn to lower it
_KNOBS = {
    "rotation": ("steps", "lower steps"),
    "rotation-flip": ("steps", "lower steps"),
    "shift": ("shift_range/shift_step", "lower shift_range or raise shift_step"),
    "scale": ("scale_range/scale_step", "narrow scale_range or raise scale_step"),
    "flip": ("group 'flip'", ""),
    "time-shift": ("shift_range/shift_step", "lower shift_range or raise shift_step"),
    "time-scale": ("scale_range/scale_step", "narrow scale_range or raise scale_step"),
    "time-flip": ("group 'flip'", ""),
}


def _size(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (``74.5 GiB``)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


class OrbitResult(Result):
    """Result of :class:`OrbitAnalysis`.

    ``table``: one row per (model, sample, element); ``summary``: per model the mean score and
    the gap between the best and worst element of the aggregate curve. Arrays: ``scores/<i>``
    ``(N, E)`` per model, ``predicted/<i>``, optional ``probs/<i>`` ``(N, E, K)``, ``labels``,
    ``samples`` (dataset indices), ``el/<param>`` (the elements) and optional ``images``.
    """

    kind = "orbits"

    @property
    def models(self) -> list[str]:
        return list(self.meta.get("models", []))

    @property
    def group(self) -> str:
        return self.meta["group"]

    @property
    def elements(self) -> K.Elements:
        cols = K.GROUPS[self.group]
        return K.Elements(self.group, {c: self.arrays[f"el/{c}"] for c in cols})

    def _index(self, model: str | int) -> int:
        if isinstance(model, int | np.integer):
            return int(model)
        try:
            return self.models.index(model)
        except ValueError:
            raise NNVitalsError(f"model {model!r}: not in this result ({', '.join(self.models)})") from None

    def scores(self, model: str | int = 0) -> np.ndarray:
        """``(N, E)`` scores of one model: rows are samples, columns the group elements."""
        return self.arrays[f"scores/{self._index(model)}"]

    def predicted(self, model: str | int = 0) -> np.ndarray:
        return self.arrays[f"predicted/{self._index(model)}"]

    def probs(self, model: str | int = 0) -> np.ndarray | None:
        """``(N, E, K)`` class probabilities, or None when they were too large to keep."""
        return self.arrays.get(f"probs/{self._index(model)}")

    @property
    def labels(self) -> np.ndarray:
        return self.arrays["labels"]

    @property
    def samples(self) -> np.ndarray:
        """Index of each analysed sample in the input data."""
        return self.arrays["samples"]

    @property
    def images(self) -> np.ndarray | None:
        return self.arrays.get("images")

    def aggregate(self, model: str | int = 0, classes: list[int] | None = None) -> np.ndarray:
        """The aggregate NERO curve ``(E,)``: mean score per element over the (class) subset."""
        s = self.scores(model)
        if classes:
            s = s[np.isin(self.labels, classes)]
        if len(s) == 0:
            raise NNVitalsError(f"classes {classes}: no analysed sample has these labels")
        return s.mean(axis=0)

    @property
    def signals(self) -> bool:
        """Whether the samples are 1-D signals ``(C, L)`` (a ``time-*`` group) rather than images."""
        return self.group.startswith("time-")

    def transformed(self, row: int, element: int) -> np.ndarray:
        """Sample ``row`` (position in this result) under element ``element``: ``(C, H, W)`` (a signal:
        ``(C, L)``), in the data's own range (before any normalisation)."""
        if self.images is None:
            raise NNVitalsError("this result did not keep its images (too large); rerun on fewer samples")
        x = torch.from_numpy(np.ascontiguousarray(self.images[row : row + 1]))
        fill = self.meta.get("shift_fill", "zeros")
        return K.transform(x, self.elements, [element], fill=fill)[0, 0].numpy()

    @property
    def summary_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"model": m, **v} for m, v in self.summary.get("models", {}).items()])


class _Models:
    """Several subjects seen as one by the Analysis base (label, fingerprint, kind)."""

    source_kind = "models"

    def __init__(self, subjects: list[Subject]):
        self.members = subjects
        self.label = ", ".join(s.label for s in subjects)

    @property
    def fingerprint(self) -> str:
        return "+".join(s.fingerprint for s in self.members)


def _fixed_batch(subject: Subject, module: Any) -> int | None:
    """The batch size an ``ExportedProgram.module()`` given as a module was specialised to, when it
    is fixed (None when its batch axis is free; a ``.pt2`` subject runs any batch already)."""
    if isinstance(subject, ExportSubject) or isinstance(module, FixedBatchModule):
        return None
    return fixed_batch_size(module)


def _fit_to(ds: Dataset, target: tuple[int, ...], where: str) -> tuple[Dataset, str]:
    """``ds`` brought to the models' recorded sample shape ``target``: resized (bilinear images with
    antialiasing, linear signals; clamped to [0, 1]) and a gray channel repeated for 3 channels (3
    averaged for 1). Left as it is (the model check then says what it takes) when the ranks differ
    or the channels are neither equal nor 1 and 3. Returns the data and a note saying what was done."""
    x = ds.x
    if len(target) != x.ndim - 1:
        return ds, ""
    c_from, c_to = int(x.shape[1]), int(target[0])
    if c_from != c_to and {c_from, c_to} != {1, 3}:
        return ds, ""
    done = []
    size = tuple(int(d) for d in target[1:])
    if tuple(x.shape[2:]) != size:
        mode = "bilinear" if x.ndim == 4 else "linear"
        x = torch.nn.functional.interpolate(
            x, size=size, mode=mode, align_corners=False, antialias=x.ndim == 4
        )
        x = x.clamp_(0.0, 1.0)
        done.append(f"resized from {'x'.join(map(str, ds.x.shape[2:]))} to {'x'.join(map(str, size))}")
    if c_from == 1 and c_to == 3:
        x = x.expand(-1, 3, *x.shape[2:])
        done.append("its gray channel repeated for 3 channels")
    elif c_from == 3 and c_to == 1:
        x = x.mean(dim=1, keepdim=True)
        done.append("its 3 channels averaged into 1")
    name = f"{ds.name} as {'x'.join(map(str, target))}"
    note = f"data {where}: {' and '.join(done)}, the input the models record {fitting.shape_text(target)}"
    return Dataset(x=x.contiguous(), y=ds.y, name=name, classes=ds.classes), note


def _recorded_program(subject: Subject) -> Any:
    """The export a subject runs (a ``.pt2`` program, or an ``ExportedProgram.module()`` given as a
    module), or None: only exports record their input."""
    program = getattr(subject, "program", None)
    if callable(program):
        return program()
    mod = subject._module if isinstance(subject, ModuleSubject) else None
    return mod if isinstance(mod, torch.fx.GraphModule) else None


def _recorded_shape(subject: Subject) -> tuple[int | None, ...] | None:
    """The sample shape an export records for its input (batch axis dropped), else None."""
    model = _recorded_program(subject)
    val = first_input(model) if model is not None else None
    if val is None or val.ndim < 1:
        return None
    return tuple(int(d) if isinstance(d, int) else None for d in val.shape[1:])


def _integer_input(model: Any) -> bool:
    """Whether an exported program (or its module) records an integer first input: token ids."""
    val = first_input(model)
    return val is not None and not val.dtype.is_floating_point and not val.dtype.is_complex


def _takes_token_ids(subject: Subject) -> bool:
    """Whether the model records token ids as its input: a ``.pt2`` program, or an
    ``ExportedProgram.module()`` given as a module, with an integer first input. (A live module says
    so when it fails on the data: see :func:`_embeds_first`.)"""
    program = getattr(subject, "loaded_program", None)
    if callable(program):
        return _integer_input(program())
    mod = subject._module if isinstance(subject, ModuleSubject) else None
    return isinstance(mod, torch.fx.GraphModule) and _integer_input(mod)


def _embeds_first(module: Any) -> bool:
    """Whether the first layer with weights of a live module is an embedding (it takes token ids)."""
    if not isinstance(module, torch.nn.Module):
        return False
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            return isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)
    return False


class _Normalised:
    """A model whose input normalisation is applied outside it: it sees ``(x - mean) / std`` per
    channel, the transforms having acted on the data's own values (in [0, 1])."""

    def __init__(self, module: Any, mean: torch.Tensor, std: torch.Tensor):
        self.module, self.mean, self.std = module, mean, std

    def __call__(self, x: torch.Tensor) -> Any:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.mean.to(x.device, x.dtype).reshape(shape)
        std = self.std.to(x.device, x.dtype).reshape(shape)
        return self.module((x - mean) / std)


class _Flattened:
    """A model over flat vectors fed images: each ``(C, H, W)`` image becomes ``C*H*W`` features."""

    def __init__(self, module: Any):
        self.module = module

    def __call__(self, x: torch.Tensor) -> Any:
        return self.module(x.reshape(x.shape[0], -1))


class _Runnable:
    """A subject's module, built once per process (pickles as the subject for Dask workers).
    ``flatten``: the model takes flat vectors, so images are flattened before it sees them;
    ``norm``: ``(mean, std)`` per channel applied before (empty tuples: none)."""

    def __init__(self, subject: Subject, where: str, flatten: bool = False, norm: tuple = ((), ())):
        self.subject, self.where, self.flatten, self.norm, self._mod = subject, where, flatten, norm, None

    def module(self, device: str = "cpu", dtype: str = "float32"):
        """The module on ``device`` in ``dtype``; a copy when it has to move (the user's stays put).
        An ``ExportedProgram.module()`` with a fixed batch size comes wrapped in
        :class:`~analyses.core.batching.FixedBatchModule`, a model over flat vectors in
        :class:`_Flattened`, one with its normalisation outside in :class:`_Normalised`."""
        key = (device, dtype, self.flatten, self.norm)
        if self._mod is None or self._mod[0] != key:
            try:
                mod = runnable_module(self.subject)
            except NotImplementedError:  # ExportedProgram.module() given as a module: eval() is baked in
                mod = self.subject.module()
            dev, dt = torch.device(device), getattr(torch, dtype)
            p = next(iter(mod.parameters()), None) if hasattr(mod, "parameters") else None
            if p is not None and (p.device != dev or (p.is_floating_point() and p.dtype != dt)):
                mod = copy.deepcopy(mod).to(dev, dt)
            fixed = _fixed_batch(self.subject, mod)
            if fixed is not None:
                mod = FixedBatchModule(mod, fixed)
            if self.flatten:
                mod = _Flattened(mod)
            mean, std = self.norm
            if mean or std:
                C = max(len(mean), len(std))
                mean_t = torch.tensor(mean or [0.0] * C, dtype=torch.float64)
                std_t = torch.tensor(std or [1.0] * C, dtype=torch.float64)
                mod = _Normalised(mod, mean_t.expand(C) if len(mean_t) == 1 else mean_t,
                                  std_t.expand(C) if len(std_t) == 1 else std_t)  # fmt: skip
            self._mod = (key, mod)
        return self._mod[1]

    def __getstate__(self):
        return {"subject": self.subject, "where": self.where, "flatten": self.flatten, "norm": self.norm,
                "_mod": None}  # fmt: skip


def _cancel_check(cancel: Any) -> Callable[[], None]:
    """A function raising :class:`Cancelled` once ``cancel`` is set: a :class:`CancelToken` (or any
    object with ``raise_if_cancelled()``/``check()``), a callable returning True when cancelled, or None
    (then the runner's ``check_cancelled()``: the token of the run the task belongs to, if any)."""
    if cancel is None:  # the runner's own check of the current run, where it has one
        from ..core import runner

        return getattr(runner, "check_cancelled", None) or (lambda: None)
    for name in ("raise_if_cancelled", "check"):
        fn = getattr(cancel, name, None)
        if callable(fn):
            return fn
    if callable(cancel):

        def check() -> None:
            if cancel():
                raise Cancelled()

        return check
    raise TypeError(f"cancel: expected a CancelToken or a callable, got {type(cancel).__name__}")


def _logits_of(out: Any, label: str) -> torch.Tensor:
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NNVitalsError(
            f"model {label}: its output must be class scores of shape (batch, classes), got {shape}"
        )
    return out


def _orbit_task(
    runnable: _Runnable,
    x: torch.Tensor,
    y: torch.Tensor,
    els: K.Elements,
    score: str,
    batch_size: int,
    keep_probs: bool,
    device: str,
    dtype: str,
    classes: int,
    cancel: Any = None,
    fill: str = "zeros",
) -> dict[str, np.ndarray]:
    """Scores of one model on a chunk of samples at every element: arrays shaped (E, B[, K]).

    The elements go through in groups whose images and class scores fit :data:`GROUP_BYTES`; each
    group is scored at once, so a task holds its transformed images and logits for one group only
    (plus the per-element probabilities when they are kept, or consensus scoring needs them).
    ``cancel`` (a :class:`CancelToken` or a callable, see :func:`_cancel_check`) is checked before
    every group and every batch: a cancelled run stops within one forward pass."""
    check = _cancel_check(cancel)
    mod = runnable.module(device, dtype)
    dev, dt = torch.device(device), getattr(torch, dtype)
    E, B = len(els), x.shape[0]
    per_group = max(1, GROUP_BYTES // max(1, B * (x[:1].numel() + 3 * classes) * 4))  # elements at once
    scores = np.empty((E, B), dtype=np.float32)
    predicted = np.empty((E, B), dtype=np.int16)
    probs = np.empty((E, B, classes), dtype=np.float32) if keep_probs or score == "consensus" else None
    with torch.inference_mode():
        xd = x.to(dev, dt)
        labels = y.to(dev)
        for start in range(0, E, per_group):
            check()
            stop = min(E, start + per_group)
            imgs = K.transform(xd, els, range(start, stop), fill=fill).reshape(
                (stop - start) * B, *x.shape[1:]
            )
            parts = []
            for i in range(0, len(imgs), batch_size):  # the model sees batch_size images at a time
                check()
                parts.append(_logits_of(mod(imgs[i : i + batch_size]), runnable.where).float())
            logits = torch.cat(parts)
            del parts
            if logits.shape != (len(imgs), classes):
                raise NNVitalsError(
                    f"model {runnable.where}: gave class scores of shape {tuple(logits.shape)} for "
                    f"{len(imgs)} images; expected ({len(imgs)}, {classes})"
                )
            finite = torch.isfinite(logits).all(dim=1)
            if not bool(finite.all()):
                first = start + int((~finite).nonzero()[0, 0]) // B
                raise NNVitalsError(
                    f"model {runnable.where}: gave non-finite class scores (NaN or inf) at element "
                    f"{els.label(first)} of the orbit"
                )
            predicted[start:stop] = logits.argmax(dim=1).reshape(-1, B).to(torch.int16).cpu().numpy()
            if probs is not None:
                probs[start:stop] = torch.softmax(logits, dim=1).reshape(-1, B, classes).cpu().numpy()
            if score != "consensus":
                s = K.label_scores(logits, labels.repeat(stop - start), score)
                scores[start:stop] = s.reshape(-1, B).cpu().numpy()
    out: dict[str, np.ndarray] = {"predicted": predicted}
    if score == "consensus":
        s, consensus = K.consensus_scores(torch.from_numpy(probs))
        scores[:] = s.numpy()
        out["consensus"] = consensus.numpy()
    out["scores"] = scores
    if keep_probs:
        out["probs"] = probs
    return out


class _PerChannel(param.List):
    """Numbers per channel: a list of floats; a tuple or a single number is taken as one."""

    def __init__(self, **kw: Any):
        super().__init__(default=[], item_type=float, **kw)

    def __set__(self, obj: Any, val: Any) -> None:
        if isinstance(val, int | float | np.number) and not isinstance(val, bool):
            val = [val]
        if isinstance(val, tuple | np.ndarray | torch.Tensor):
            val = list(val.tolist() if hasattr(val, "tolist") else val)
        if isinstance(val, list):
            val = [float(v) if isinstance(v, int | float | np.number) and not isinstance(v, bool) else v
                   for v in val]  # fmt: skip
        super().__set__(obj, val)


class OrbitAnalysis(Analysis):
    """NERO plots: where along a group orbit a model stops being equivariant.

    >>> res = OrbitAnalysis(model=["rot-cnn", "rot-cnn-c4"], group="rotation", steps=72).run()
    >>> res.summary_table
    """

    analysis_name = "orbits"
    analysis_version = "1"

    model = param.Parameter(
        default=None,
        label="Models",
        doc="One runnable model or a list of them to compare: a torch.nn.Module, a .pt2 export, "
        "'package.module:factory' or a demo model name. Image classifiers with 1 or 3 channels, or "
        "classifiers of 1-D signals; not models of token ids.",
    )
    data = param.Parameter(
        default="digits16",
        label="Data",
        doc="Built-in 'digits16' (the bundled digits at 16x16: rotations need room), 'digits8' ('digits' "
        "is the same) or 'digits32'; a .npz (or torch .pt) file with x floats in [0, 1], images "
        "(N, C, H, W) with 1 or 3 channels or 1-D signals (N, C, L), and y ints; a Dataset, or a tuple (x, y).",
    )
    split = param.Selector(
        default="test",
        objects=["test", "train", "all"],
        label="Digits split",
        doc="Part of the built-in digits to use.",
    )
    group = param.Selector(
        default="rotation",
        objects=list(K.GROUPS),
        label="Group",
        doc="The group whose orbit to walk. On 1-D signals shift, flip and scale are time-shift, "
        "time-flip (time reversal) and time-scale (resampling); rotations need images.",
    )
    steps = param.Integer(
        default=72,
        bounds=(1, 3600),
        label="Rotation angles (from 0°)",
        doc="Rotation: this many evenly spaced angles starting at 0 degrees.",
    )
    shift_range = param.Number(
        default=4.0,
        bounds=(0, None),
        label="Shift: largest |dx|, |dy| (px)",
        doc="Shift: largest |dx|, |dy| in pixels (signals: the largest shift in samples).",
    )
    shift_step = param.Number(
        default=1.0,
        bounds=(0.01, None),
        label="Shift step (px)",
        doc="Shift: grid step in pixels (signals: in samples).",
    )
    shift_fill = param.Selector(
        default="zeros",
        objects=list(K.FILLS),
        label="Shift fill (signals)",
        doc="What a shift of a 1-D signal brings in: zeros, or the samples it pushed out at the other end "
        "(circular). Images are always filled with zeros.",
    )
    scale_range = param.NumericTuple(
        default=(0.5, 1.5),
        length=2,
        label="Scale range (smallest, largest)",
        doc="Scale: smallest and largest zoom (signals: resampling factor in time).",
    )
    scale_step = param.Number(
        default=0.05, bounds=(0.001, None), label="Scale step", doc="Scale: step between zooms."
    )
    score = param.Selector(
        default="probability", objects=list(K.SCORES), label="Score", doc="What each point records."
    )
    classes = param.List(
        default=[],
        item_type=int,
        label="Classes (empty: all)",
        doc="Only samples of these classes (empty: all).",
    )
    max_samples = param.Integer(
        default=None,
        allow_None=True,
        bounds=(1, None),
        label="At most this many samples",
        doc="Analyse at most this many samples (seeded).",
    )
    seed = param.Integer(default=0, label="Seed", doc="Seed of the sample subset when max_samples is set.")
    mean = _PerChannel(
        label="Input mean (per channel)",
        doc="The model's input normalisation, applied after each transform: it sees (x - mean) / std. "
        "One number for every channel or one per channel (e.g. 0.485, 0.456, 0.406 for ImageNet "
        "models); empty: 0. The data stay in [0, 1]: the transforms fill with 0 there.",
    )
    std = _PerChannel(
        label="Input std (per channel)",
        doc="The model's input normalisation, applied after each transform: it sees (x - mean) / std. "
        "One positive number for every channel or one per channel (e.g. 0.229, 0.224, 0.225 for "
        "ImageNet models); empty: 1.",
    )
    fit_input = param.Boolean(
        default=True,
        label="Fit the data to the model's input",
        doc="When a .pt2 model records its input shape: resize the data to it (bilinear for images, "
        "linear for signals) and repeat a gray channel for a 3-channel model (or average 3 channels "
        "for a 1-channel one). A gray model of a built-in digits size is not fed other digits "
        "resampled: give the digits of its size (a failure names them). Off: the data go in as they are.",
    )
    batch_size = param.Integer(
        default=256, bounds=(1, None), label="Images per forward pass", doc="Images per forward pass."
    )
    num_workers = param.Integer(
        default=1,
        allow_None=True,
        bounds=(1, 256),
        label="Tasks at once",
        doc="Tasks run at once by the local runner. 1 (the default): batches run one after another and "
        "each forward pass uses all of torch's threads, which is faster for convolutions than one "
        "thread per task.",
    )

    # ------------------------------------------------------------------ inputs
    def model_list(self) -> list[Any]:
        m = self.model
        if m is None or (isinstance(m, list | tuple) and not m):
            raise NNVitalsError("model: not set; give one runnable model or a list of them")
        return list(m) if isinstance(m, list | tuple) else [m]

    def subject(self) -> _Models:
        subjects = self.load_subjects(self.model_list())
        seen: dict[str, int] = {}
        for s in subjects:  # distinct labels, so tables and legends can tell the models apart
            n = seen.get(s.label, 0)
            seen[s.label] = n + 1
            if n:
                s.label = f"{s.label} ({n + 1})"
        return _Models(subjects)

    def dataset(self) -> tuple[Dataset, np.ndarray]:
        """The analysed samples (class subset and max_samples applied, validated as images or 1-D
        signals in [0, 1], fitted to the models' recorded input with ``fit_input``) and their indices
        in the input data."""
        cached = getattr(self, "_data_cache", None)
        target = self._input_target() if self.fit_input else None
        key = (id(self.data), self.data if isinstance(self.data, str) else None, self.split,
               tuple(self.classes), self.max_samples, self.seed, target)  # fmt: skip
        if cached is not None and cached[0] == key:
            return cached[1]
        data = self.data
        if builtin_name(data) is not None:
            ds = as_dataset(builtin_name(data), split=self.split)
        else:
            ds = as_dataset(data)
        x = ds.x
        where = str(data) if isinstance(data, str | Path) else ds.name
        if x.ndim not in (3, 4):
            raise NNVitalsError(
                f"data {where}: orbits need images of shape (N, C, H, W) or 1-D signals (N, C, L), "
                f"got {tuple(x.shape)}"
            )
        if x.ndim == 4 and (x.shape[-1] < 2 or x.shape[-2] < 2):
            raise NNVitalsError(f"data {where}: images must be at least 2 x 2 pixels, got {tuple(x.shape)}")
        if x.ndim == 3 and x.shape[-1] < 2:
            raise NNVitalsError(
                f"data {where}: signals must be at least 2 samples long, got {tuple(x.shape)}"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6 or not math.isfinite(lo + hi):
            what = "pixel values" if x.ndim == 4 else "signal values"
            raise NNVitalsError(
                f"data {where}: {what} must lie in [0, 1] (transforms fill with 0; give the model's "
                f"normalisation as mean and std), got range [{lo:.3g}, {hi:.3g}]"
            )
        idx = np.arange(len(ds))
        if self.classes:
            bad = [c for c in self.classes if not 0 <= c < ds.classes]
            if bad:
                raise NNVitalsError(f"classes: {bad} outside the data's classes 0..{ds.classes - 1}")
            idx = idx[np.isin(ds.y.numpy(), self.classes)]
            if len(idx) == 0:
                raise NNVitalsError(f"classes {list(self.classes)}: no sample of {where} has these labels")
        if not len(idx):
            raise NNVitalsError(f"data {ds.name}: no samples")
        if self.max_samples is not None and len(idx) > self.max_samples:
            rng = np.random.default_rng(self.seed)
            idx = np.sort(rng.choice(idx, self.max_samples, replace=False))
        sub = ds if len(idx) == len(ds) else ds.subset(idx)
        self._fit_notes = []
        if target is not None and tuple(sub.x.shape[1:]) != target and not self._digits_fit(target):
            sub, note = _fit_to(sub, target, where)
            self._fit_notes = [note] if note else []
        self._data_cache = (key, (sub, idx))
        return sub, idx

    def _digits_fit(self, target: tuple[int, ...]) -> bool:
        """Whether the data are built-in digits and other built-in digits fit ``target`` as they are
        (gray, of a digits size): those are used rather than these resampled (the model check names
        them when it fails)."""
        if builtin_name(self.data) is None or len(target) != 3:
            return False
        c, h, w = target
        return c == 1 and h == w and h in fitting.DIGITS

    def _input_target(self) -> tuple[int, ...] | None:
        """The sample shape the models record as their input (``(C, H, W)`` or ``(C, L)``, from
        ``.pt2`` programs), when they record one; refused in one line when they disagree."""
        shapes = {}
        for s in self.subject().members:
            shape = _recorded_shape(s)
            if shape is not None and len(shape) in (2, 3) and all(d is not None for d in shape):
                shapes[s.label] = tuple(int(d) for d in shape)
        if len(set(shapes.values())) > 1:
            which = ", ".join(f"{k} takes {fitting.shape_text(v)}" for k, v in shapes.items())
            raise NNVitalsError(
                f"models: take inputs of different shapes ({which}); compare models of one input"
            )
        return next(iter(shapes.values()), None)

    def acting_group(self, kind: str | None = None) -> str:
        """The group that acts on the data: ``group`` itself, or its ``time-*`` counterpart on 1-D
        signals (``kind='signal'``; by default the data's). Refused in one line when the group does not
        act on that kind of data."""
        if kind is None:
            kind = "signal" if self.dataset()[0].x.ndim == 3 else "image"
        g = self.group
        if kind == "signal":
            if g in K.SIGNAL_GROUPS:
                return K.SIGNAL_GROUPS[g]
            if g.startswith("time-"):
                return g
            raise NNVitalsError(
                f"group {g!r}: acts on images; data {self._data_where()} holds 1-D signals (N, C, L): "
                "use shift, flip or scale (time-shift, time-flip, time-scale)"
            )
        if g.startswith("time-"):
            raise NNVitalsError(
                f"group {g!r}: acts on 1-D signals (N, C, L); data {self._data_where()} holds images: use "
                f"{', '.join(K.IMAGE_GROUPS)}"
            )
        return g

    def element_count(self, group: str | None = None) -> int:
        """How many group elements the knobs ask for (of ``group``, by default the ``group`` setting),
        refused in one line past :data:`MAX_ELEMENTS` (counted before anything is made)."""
        group = group or self.group
        lo, hi = self.scale_range
        if not 0 < lo <= hi or not math.isfinite(hi):
            raise NNVitalsError(
                f"scale_range: expected 0 < smallest <= largest (finite), got {self.scale_range}"
            )
        for name in ("shift_range", "shift_step", "scale_step"):
            if not math.isfinite(getattr(self, name)):
                raise NNVitalsError(f"{name}: expected a finite number, got {getattr(self, name)}")
        n = K.count_elements(
            group, steps=self.steps, shift_range=self.shift_range, shift_step=self.shift_step,
            scale_range=(lo, hi), scale_step=self.scale_step,
        )  # fmt: skip
        if n > MAX_ELEMENTS:
            knobs, advice = _KNOBS[group]
            raise NNVitalsError(
                f"{knobs}: {n:,} group elements; at most {MAX_ELEMENTS:,} are sampled (their parameters and "
                f"sampling grids are held at once): {advice}"
            )
        return n

    def channel_norm(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` as given, checked against the data's ``channels`` (one number, or one per
        channel; std positive); one line naming the setting when they do not fit."""
        for name in ("mean", "std"):
            v = list(getattr(self, name))
            if len(v) not in (0, 1, channels):
                raise NNVitalsError(
                    f"{name}: expected one number or {channels} (one per channel of the data), got {len(v)}"
                )
            if not all(math.isfinite(t) for t in v) or (name == "std" and any(t <= 0 for t in v)):
                what = "positive numbers" if name == "std" else "finite numbers"
                raise NNVitalsError(f"{name}: expected {what}, got {', '.join(map(_number_text, v))}")
        return tuple(self.mean), tuple(self.std)

    def refuse_token_models(self) -> None:
        """One line when a model takes token ids (integer inputs): Orbits does not apply to it."""
        for s in self.subject().members:
            if _takes_token_ids(s):
                raise NNVitalsError(
                    f"model {s.label}: takes token ids (integer inputs); Orbits transforms images and "
                    "1-D signals and does not apply to it"
                )

    def check_budget(
        self, samples: int, image_shape: tuple[int, ...], models: int = 1, group: str | None = None
    ) -> None:
        """Refuse, in one line saying what to lower, an orbit whose result (models x samples x
        elements points) or work (points x image size) is past :data:`MAX_POINTS` / :data:`MAX_PIXELS`."""
        group = group or self.group
        n = self.element_count(group)
        points = models * samples * n
        pixels = points * math.prod(image_shape)
        knobs, advice = _KNOBS[group]
        who = f"{samples:,} samples" + (f" x {models} models" if models > 1 else "")

        def fix(budget: int, per_point: int) -> str:
            most_e = budget // max(1, models * samples * per_point)
            most_s = budget // max(1, models * n * per_point)
            lower = f"{advice} (at most {most_e:,} elements for {who}) or " if advice else ""
            return f"{lower}set max_samples (at most {most_s:,} samples)"

        if points > MAX_POINTS:
            raise NNVitalsError(
                f"{knobs}: {n:,} group elements (x {who}) need ~{_size(points * POINT_BYTES)} of results; "
                f"at most {MAX_POINTS:,} orbit points: {fix(MAX_POINTS, 1)}"
            )
        if pixels > MAX_PIXELS:
            img = "x".join(map(str, image_shape))
            raise NNVitalsError(
                f"{knobs}: {n:,} group elements (x {who}) of {img} images are {pixels:,} pixels to resample "
                f"and run; at most {MAX_PIXELS:,}: {fix(MAX_PIXELS, math.prod(image_shape))}"
            )

    def group_elements(self) -> K.Elements:
        """The sampled elements of the group acting on the data (:meth:`acting_group`)."""
        group = self.acting_group()
        self.element_count(group)
        lo, hi = self.scale_range
        return K.elements(
            group,
            steps=self.steps,
            shift_range=self.shift_range,
            shift_step=self.shift_step,
            scale_range=(lo, hi),
            scale_step=self.scale_step,
        )

    def key_params(self) -> dict[str, Any]:
        kp = super().key_params()
        kp.pop("data", None)
        kp["labels"] = [s.label for s in self.subject().members]
        return kp

    def data_fingerprint(self) -> str:
        ds, idx = self.dataset()
        return ds.fingerprint

    # ------------------------------------------------------------------ tasks
    def _check_model(self, runnable: _Runnable, x: torch.Tensor, classes: int) -> int:
        """Run the model on two samples; its output must be finite (2, K) class scores covering the labels.

        A model recording flat inputs (an exported MLP), or one with no record that fails on images
        but runs on them flattened, gets its images flattened (``runnable.flatten``)."""
        shape = fitting.input_shape(runnable.subject)
        runnable.flatten = shape is not None and len(shape) == 1
        xs = x[:2].to(self.torch_device(), self.torch_dtype())

        def forward():
            with torch.inference_mode():
                return runnable.module(self.device, self.dtype)(xs)

        try:
            out = forward()
        except NNVitalsError:
            raise
        except Exception as e:  # the user's model failed on this data: say so in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            out = None
            if shape is None:  # no record of its input: a model over flat vectors?
                runnable.flatten = True
                try:
                    out = forward()
                except Exception:
                    runnable.flatten, out = False, None
            if out is None and _embeds_first(runnable.subject.module()):
                raise NNVitalsError(
                    f"model {runnable.where}: takes token ids (its first layer is an embedding); Orbits "
                    "transforms images and 1-D signals and does not apply to it"
                ) from None
            if out is None:
                what = "images" if xs.ndim == 4 else "signals"
                raise NNVitalsError(
                    f"model {runnable.where}: failed on {what} of shape {tuple(xs.shape)} ({first[:200]})"
                    f"{self._fit_hint(runnable.subject, shape)}"
                ) from None
        logits = _logits_of(out, runnable.where)
        if logits.shape[0] != min(2, len(x)):
            raise NNVitalsError(
                f"model {runnable.where}: returned {logits.shape[0]} rows for {min(2, len(x))} images; "
                "expected one row of class scores per image"
            )
        if not bool(torch.isfinite(logits).all()):
            raise NNVitalsError(
                f"model {runnable.where}: gives non-finite class scores (NaN or inf) on the first images of "
                f"data {self._data_where()}"
            )
        if self.score != "consensus" and logits.shape[1] < classes:
            raise NNVitalsError(
                f"data {self._data_where()}: labels go up to {classes - 1} but model {runnable.where} has "
                f"{logits.shape[1]} outputs"
            )
        return int(logits.shape[1])

    def _fit_hint(self, subject: Subject, shape: tuple[int | None, ...] | None) -> str:
        """``'; data 'digits8' fits it'`` (or the input shape it records) for a failure message."""
        try:
            fit = fitting.fitting_data(subject)
        except NNVitalsError:
            fit = None
        current = (builtin_name(self.data) or self.data) if isinstance(self.data, str) else None
        if fit is not None and fit.data != current:
            return f"; data '{fit.data}' fits it"
        if shape is not None:
            return f"; it takes inputs of shape {fitting.shape_text(shape)}"
        return ""

    def _data_where(self) -> str:
        d = self.data
        return str(d) if isinstance(d, str | Path) and builtin_name(d) is None else self.dataset()[0].name

    def run(self, progress: Progress | None = None, cancel: CancelToken | None = None) -> OrbitResult:
        """Compute (or fetch from the store) the result; ``cancel`` is also checked by the tasks
        between batches when they run in this process (threads), so Cancel stops a long run at once."""
        self._cancel = cancel
        self.refuse_token_models()
        try:
            return super().run(progress=progress, cancel=cancel)
        finally:
            self._cancel = None

    def _tasks(self, subject: _Models) -> list[Task]:
        ds, _ = self.dataset()
        # a token lives in this process: Dask workers are stopped by the runner between tasks instead
        cancel = getattr(self, "_cancel", None) if parse_spec(self.runner) == "threads" else None
        group = self.acting_group()
        self.check_budget(len(ds), tuple(ds.x.shape[1:]), len(subject.members), group)
        norm = self.channel_norm(int(ds.x.shape[1]))
        els = self.group_elements()
        E, N = len(els), len(ds)
        tasks = []
        self._n_classes = []
        labels_max = int(ds.y.max()) + 1
        for s in subject.members:
            runnable = _Runnable(s, s.label, norm=norm)
            k = self._check_model(runnable, ds.x, labels_max)
            self._n_classes.append(k)
            keep = N * E * k <= KEEP_FLOATS
            per_sample = E * (6 + (4 * k if keep or self.score == "consensus" else 0))  # bytes a task keeps
            if self.score == "consensus" and E * k * 4 > TASK_BYTES:
                knobs, advice = _KNOBS[self.group]
                raise NNVitalsError(
                    f"score 'consensus': keeps every element's class probabilities of a sample, {E:,} elements "
                    f"x {k:,} classes (~{_size(E * k * 4)}); at most {_size(TASK_BYTES)}: "
                    f"{advice + ' or ' if advice else ''}use another score"
                )
            chunk = max(1, min(N, TASK_BYTES // max(1, per_sample)))
            for start in range(0, N, chunk):
                sl = slice(start, min(N, start + chunk))
                tasks.append(
                    Task(
                        _orbit_task,
                        (
                            runnable,
                            ds.x[sl],
                            ds.y[sl],
                            els,
                            self.score,
                            self.batch_size,
                            keep,
                            self.device,
                            self.dtype,
                            k,
                        ),  # fmt: skip
                        kwargs={"fill": self.shift_fill} | ({"cancel": cancel} if cancel is not None else {}),
                        label=f"{s.label}: samples {sl.start}-{sl.stop - 1}",
                    )
                )
        return tasks

    # ------------------------------------------------------------------ merge
    def _merge(self, subject: _Models, outputs: list[dict[str, np.ndarray]]) -> OrbitResult:
        ds, idx = self.dataset()
        els = self.group_elements()
        E, N = len(els), len(ds)
        per_model = len(outputs) // len(subject.members)
        labels = ds.y.numpy()
        arrays: dict[str, np.ndarray] = {"labels": labels, "samples": idx.astype(np.int64)}
        for c in els.columns():
            arrays[f"el/{c}"] = np.asarray(els.params[c], dtype=np.float64)
        if ds.x.numel() <= KEEP_FLOATS:
            arrays["images"] = ds.x.numpy()
        tables, summaries = [], {}
        model_dtype = pd.CategoricalDtype([s.label for s in subject.members])
        for mi, s in enumerate(subject.members):
            outs = outputs[mi * per_model : (mi + 1) * per_model]
            scores = np.concatenate([o["scores"] for o in outs], axis=1).T  # (N, E)
            pred = np.concatenate([o["predicted"] for o in outs], axis=1).T.astype(np.int64)
            arrays[f"scores/{mi}"] = np.ascontiguousarray(scores)
            arrays[f"predicted/{mi}"] = np.ascontiguousarray(pred.astype(np.int16))
            if all("probs" in o for o in outs):
                arrays[f"probs/{mi}"] = np.ascontiguousarray(
                    np.concatenate([o["probs"] for o in outs], axis=1).transpose(1, 0, 2)
                )
            # one row per (sample, element): columns built once each and handed over without copies
            # (the table dominates the result's memory: MAX_POINTS bounds it)
            cols: dict[str, Any] = {
                "model": pd.Categorical.from_codes(np.full(N * E, mi, dtype=np.int16), dtype=model_dtype),
                "sample": np.repeat(idx, E),
                "label": np.repeat(labels, E),
                "element": np.tile(np.arange(E), N),
            }
            for c in els.columns():
                v = np.tile(els.params[c], N)
                cols[c] = v.astype(np.int64) if c == "flip" else v
            cols["score"] = arrays[f"scores/{mi}"].ravel()
            cols["predicted"] = pred.ravel()
            cols["correct"] = cols["predicted"] == cols["label"]
            if self.score == "consensus":
                consensus = np.concatenate([o["consensus"] for o in outs])
                arrays[f"consensus/{mi}"] = consensus
                cols["consensus"] = np.repeat(consensus, E)
            tables.append(pd.DataFrame(cols, copy=False))
            del cols
            summaries[s.label] = self._model_summary(scores, pred, labels, els)
            del scores, pred
        table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
        del tables
        group = els.group
        summary = {
            "group": group,
            "score": self.score,
            "elements": E,
            "samples": N,
            "data": ds.name,
            "models": summaries,
        }
        meta = {"models": [s.label for s in subject.members], "group": group, "score": self.score}
        if group == "time-shift":
            meta["shift_fill"] = self.shift_fill
        if self.mean or self.std:
            meta["normalisation"] = {"mean": list(self.mean), "std": list(self.std)}
        notes = [n for s in subject.members for n in s.notes] + list(getattr(self, "_fit_notes", []))
        if notes:
            meta["notes"] = notes
        return OrbitResult(table=table, summary=summary, arrays=arrays, meta=meta)

    @staticmethod
    def _model_summary(scores: np.ndarray, pred: np.ndarray, labels: np.ndarray, els: K.Elements) -> dict:
        curve = scores.mean(axis=0)
        acc = (pred == labels[:, None]).mean(axis=0)
        best, worst = int(curve.argmax()), int(curve.argmin())
        out = {
            "mean_score": float(curve.mean()),
            "gap": float(curve.max() - curve.min()),
            "best": els.label(best),
            "worst": els.label(worst),
            "best_score": float(curve[best]),
            "worst_score": float(curve[worst]),
            "accuracy": float(acc.mean()),
            "accuracy_gap": float(acc.max() - acc.min()),
        }
        if "angle" in els.params:  # the exact elements, multiples of 90 degrees: 0 for an invariant model
            exact = np.isclose(np.mod(els.params["angle"], 90.0), 0.0)
            if exact.sum() > 1:
                out["gap_at_90"] = float(curve[exact].max() - curve[exact].min())
        return out


# ---------------------------------------------------------------------- settings checked up front
def _number_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _expected(p: param.Parameter) -> str:
    """What a parameter accepts, in words: ``a whole number from 1 to 3600``, ``one of a, b``."""
    if isinstance(p, param.Number):
        kind = "a whole number" if isinstance(p, param.Integer) else "a number"
        lo, hi = p.bounds or (None, None)
        inc_lo, inc_hi = getattr(p, "inclusive_bounds", (True, True))
        if lo is not None and hi is not None and inc_lo and inc_hi:
            text = f"{kind} from {_number_text(lo)} to {_number_text(hi)}"
        else:
            parts = []
            if lo is not None:
                parts.append(f"{'at least' if inc_lo else 'above'} {_number_text(lo)}")
            if hi is not None:
                parts.append(f"{'at most' if inc_hi else 'below'} {_number_text(hi)}")
            text = f"{kind} of {' and '.join(parts)}" if parts else kind
        return text + (" (or empty)" if p.allow_None else "")
    if isinstance(p, param.Selector):
        return "one of " + ", ".join(map(str, p.objects))
    if isinstance(p, param.NumericTuple):
        return f"{p.length} numbers"
    if isinstance(p, param.List):
        return "a list" + (f" of {p.item_type.__name__}" if isinstance(p.item_type, type) else "")
    return "a valid value"


def _shown(v: Any) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        return "nothing"
    text = _number_text(v) if isinstance(v, int | float) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def setting_problems(values: dict[str, Any]) -> dict[str, str]:
    """Every problem with these :class:`OrbitAnalysis` settings at once, before anything runs:
    ``{name: 'expected ..., got ...'}`` (empty when all are fine). Each value is checked against its
    parameter (type, bounds, choices); then, with those that pass, the settings together (the scale
    range's order, the number of group elements), keyed by the setting to change (``'shift_range/
    shift_step'`` when either). A page shows them all, one line each, and does not run."""
    scratch = OrbitAnalysis()
    problems: dict[str, str] = {}
    for name, value in values.items():
        p = scratch.param[name] if name in scratch.param else None
        if p is None:
            problems[name] = "not a setting of the Orbits analysis"
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems[name] = f"expected {_expected(p)}, got {value}"
            continue
        try:
            setattr(scratch, name, value)
        except (ValueError, TypeError):
            problems[name] = f"expected {_expected(p)}, got {_shown(value)}"
    for name in ("mean", "std"):
        if name not in problems and not all(math.isfinite(v) for v in getattr(scratch, name)):
            problems[name] = f"expected finite numbers, got {_shown(getattr(scratch, name))}"
    if "std" not in problems and any(v <= 0 for v in scratch.std):
        problems["std"] = f"expected positive numbers (one, or one per channel), got {_shown(scratch.std)}"
    if "scale_range" not in problems:
        lo, hi = scratch.scale_range
        if not (0 < lo <= hi and math.isfinite(hi)):
            problems["scale_range"] = (
                f"expected 0 < smallest <= largest, got {_number_text(lo)} to {_number_text(hi)}"
            )
    if not problems.keys() & {"group", "steps", "shift_range", "shift_step", "scale_range", "scale_step"}:
        try:
            scratch.element_count()
        except NNVitalsError as e:
            name, _, rest = str(e).partition(": ")
            problems[name] = rest
    return problems

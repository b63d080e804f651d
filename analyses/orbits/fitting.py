"""Which built-in data fits a model's input: the digits at 8, 16 or 32 pixels, as images or flattened.

A page that runs a model has to feed it inputs of the size it was made for: a ``.pt2`` program
interpolated between two 8 x 8 models fails on 16 x 16 digits (``Guard failed: input.size()[2] == 8``).
:func:`fitting_data` answers from what the model itself says, in this order:

1. a demo model: the image size its manifest entry was trained on;
2. a ``torch.export`` program (a ``.pt2`` file, an ``ExportedProgram``, or its ``.module()``): the
   shape recorded for its first user input (the placeholder node's ``meta["val"]``);
3. any other runnable model: one forward pass on a tiny batch (two blank inputs) of each candidate,
   as images ``(2, 1, S, S)`` and then flattened ``(2, S*S)`` (an MLP without its own flatten
   layer): the first that gives class scores ``(2, K)`` fits.

The answer is a :class:`DataFit`, or ``None`` when the model cannot be opened or run at all (weights
only, a missing file: the analysis itself says why when it runs). A runnable model that no candidate
fits is refused in one line naming the input it takes.

Any page or analysis can use it: ``fitting_data(model).data`` is the name to pass as ``data=``, and
:func:`common_data` does the same for several models that must share one dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.data import DIGITS_NAMES
from ..core.errors import NNVitalsError
from ..core.graph import first_input
from ..core.subject import Subject, load_subject, runnable_module
from ..core.threads import TRACE_LOCK

__all__ = ["CANDIDATES", "DIGITS", "DataFit", "common_data", "fitting_data", "input_shape", "shape_text"]

#: the built-in digits by image side, under their explicit names (:data:`~analyses.core.data.DIGITS_NAMES`)
DIGITS: dict[int, str] = {side: name for name, side in DIGITS_NAMES.items()}
#: tried in this order on a model that records no input shape (rotations need room: 16 first)
CANDIDATES: tuple[str, ...] = ("digits16", "digits8", "digits32")
_SIDES = {name: side for side, name in DIGITS.items()}
_cache: dict[tuple, DataFit | None] = {}
_CACHE_SIZE = 64


@dataclass(frozen=True)
class DataFit:
    """Built-in data a model runs on: ``data`` (e.g. ``'digits8'``), its image ``side``, whether the
    model takes the images ``flatten``-ed to ``side * side`` features, and ``source``: how this was
    found (``'demo'``, ``'export'`` or ``'probe'``)."""

    data: str
    side: int
    flatten: bool = False
    source: str = "probe"

    def describe(self) -> str:
        """``'digits8 (8x8 images)'`` or ``'digits8 (8x8 images, flattened to 64 features)'``."""
        flat = f", flattened to {self.side * self.side} features" if self.flatten else ""
        return f"{self.data} ({self.side}x{self.side} images{flat})"


def _label(model: Any) -> str:
    if isinstance(model, Subject):
        return model.label
    if isinstance(model, str | Path):
        return Path(str(model)).name or str(model)
    return type(model).__name__


def shape_text(shape: Sequence[int | None]) -> str:
    """An input shape without its batch axis as text: ``(N, 1, 8, 8)``, a free axis as ``?``."""
    return "(N, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def input_shape(model: Any) -> tuple[int | None, ...] | None:
    """The input shape a ``torch.export`` program recorded for its first user input, without the
    batch axis (``None`` for an axis left free), e.g. ``(1, 8, 8)``; None when there is no record
    (an ordinary module, weights only). ``model``: a Subject, an ``ExportedProgram`` or a module."""
    if isinstance(model, Subject):  # the program as saved: its per-sample shape (no re-export needed)
        program = getattr(model, "loaded_program", None) or getattr(model, "program", None)
        model = program() if callable(program) else model.module()
    val = first_input(model)
    if val is not None and val.ndim >= 1:
        return tuple(int(d) if isinstance(d, int) else None for d in val.shape[1:])
    return None


def _from_shape(shape: tuple[int | None, ...], where: str, candidates: Sequence[str]) -> DataFit | None:
    """The candidate a recorded shape admits; None when the record leaves the image size free."""
    if len(shape) == 3:
        c, h, w = shape
        if c in (1, None) and h is not None and w is not None and h == w:
            name = DIGITS.get(h)
            if name is not None and name in candidates:
                return DataFit(name, h, False, "export")
        elif c in (1, None) and (h is None or w is None):
            return None  # the image size is free: find it by running the model
    elif len(shape) == 1 and shape[0] is not None:
        for name in candidates:
            side = _SIDES[name]
            if side * side == shape[0]:
                return DataFit(name, side, True, "export")
    elif len(shape) == 1:
        return None
    sides = ", ".join(str(s) for s in sorted(_SIDES[n] for n in candidates))
    raise NNVitalsError(
        f"model {where}: takes inputs of shape {shape_text(shape)}; the built-in data are digits images "
        f"(N, 1, S, S) for S = {sides} (or flattened to S*S features): give data of the shape it takes"
    )


def _class_scores(out: Any, rows: int) -> bool:
    if hasattr(out, "logits"):
        out = out.logits
    return (
        isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == rows and out.is_floating_point()
    )


def _probe(module: Any, where: str, candidates: Sequence[str]) -> DataFit:
    """Run the model on two blank inputs of each candidate; the first giving class scores fits."""
    p = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    dev = p.device if p is not None else torch.device("cpu")
    dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
    first_error = ""
    for name in candidates:
        side = _SIDES[name]
        for flatten in (False, True):
            x = torch.zeros((2, side * side) if flatten else (2, 1, side, side), device=dev, dtype=dt)
            try:
                # no trace meanwhile (analyses.core.threads): this call is no run's, and a model
                # called while torch.export traced broke the trace; a trace takes seconds at most
                with TRACE_LOCK, torch.inference_mode():
                    out = module(x)
            except Exception as e:  # the user's model refuses this shape: try the next one
                if not first_error:
                    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    first_error = f" ({text[:120]})"
                continue
            if _class_scores(out, 2):
                return DataFit(name, side, flatten, "probe")
    tried = ", ".join(candidates)
    raise NNVitalsError(
        f"model {where}: runs on none of {tried} (images (N, 1, S, S) or flattened to S*S features)"
        f"{first_error}; give data of the shape it takes"
    )


def _key(model: Any, candidates: tuple[str, ...]) -> tuple | None:
    """Cache key of a model given by name or path (its file's size and time); None: not cached."""
    if not isinstance(model, str | Path):
        return None
    text = str(model)
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return ("name", text, candidates)
    return ("file", os.path.realpath(text), st.st_size, st.st_mtime_ns, candidates)


def fitting_data(model: Any, candidates: Sequence[str] = CANDIDATES) -> DataFit | None:
    """The built-in data ``model`` runs on (see the module docstring).

    ``model``: a demo name, a path (``.pt2``; weights-only checkpoints give None), a
    ``torch.nn.Module``, an ``ExportedProgram`` or a :class:`~analyses.core.subject.Subject`.
    ``candidates``: built-in names among :data:`DIGITS`' values, tried in this order.
    Raises :class:`NNVitalsError` when the model runs but none of them fits it.
    """
    candidates = tuple(candidates)
    bad = [c for c in candidates if c not in _SIDES]
    if bad or not candidates:
        raise NNVitalsError(f"candidates {bad or '[]'}: expected some of {', '.join(DIGITS.values())}")
    from ..zoo import demo_image_size

    side = demo_image_size(model)
    if side is not None and DIGITS.get(side) in candidates:
        return DataFit(DIGITS[side], side, False, "demo")
    key = _key(model, candidates)
    if key is not None and key in _cache:
        return _cache[key]
    fit = _fit(model, candidates)
    if key is not None:
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = fit
    return fit


def _fit(model: Any, candidates: tuple[str, ...]) -> DataFit | None:
    where = _label(model)
    try:
        subject = load_subject(model)
        # a program's shape as saved: no module needed (a program exported with a fixed batch is
        # re-exported to make one, which waits for the model turn, and pages ask this as they are built)
        shape = input_shape(subject)
    except NNVitalsError:
        return None  # not a model: the analysis says why when it runs
    fit = _from_shape(shape, where, candidates) if shape is not None else None
    if fit is not None:
        return fit
    try:
        module = runnable_module(subject)
    except NNVitalsError:
        return None  # not a runnable model: the analysis says why when it runs
    return _probe(module, where, candidates)


def common_data(models: Sequence[Any], candidates: Sequence[str] = CANDIDATES) -> DataFit | None:
    """One built-in data set every model in ``models`` runs on (None when none of them says; each
    may take it flattened or not). Refused in one line when they need different image sizes."""
    fits = [(m, fitting_data(m, candidates)) for m in models]
    known = [(m, f) for m, f in fits if f is not None]
    if not known:
        return None
    sides = {f.side for _, f in known}
    if len(sides) > 1:
        which = ", ".join(f"{_label(m)} takes {f.describe()}" for m, f in known)
        raise NNVitalsError(f"models: need different data ({which}); compare models of one image size")
    return known[0][1]

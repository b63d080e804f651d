"""A checkpoint series: the checkpoints of one training run, ordered by step.

:func:`load_series` turns what a user points at into a :class:`CheckpointSeries`:

- a directory of checkpoints: ``.safetensors`` files, ``.pt/.pth/.bin/.ckpt`` state dicts (read
  with ``torch.load(weights_only=True)`` only), ``.pt2`` ``torch.export`` programs (through the
  checked loader) and Hugging Face ``checkpoint-*`` folders, in any mix, ordered by the step or
  epoch in their names (:func:`parse_step`);
- a directory holding a manifest ``series.json`` (or the manifest's path): a list of
  ``{"file": ..., "step": ...}``, or ``{"checkpoints": [...], "architecture": ...}``;
- a Python list of paths (ordered by the steps in their names, or by their positions when no
  name carries one) or of ``(step, model)`` pairs (a model being anything
  :func:`~analyses.core.subject.load_subject` takes).

Nothing is opened while the series is listed (the manifest aside): each checkpoint is opened by
:meth:`CheckpointSeries.open`, so one unreadable checkpoint is reported on its own while the
others still run. A weights-only checkpoint (safetensors, state dict) needs an architecture to
be run: a ``.pt2`` export, a demo model name or ``package.module:factory`` (resolved the way
:func:`~analyses.core.subject.load_subject` resolves models), or a ``torch.nn.Module``; without
one, the series can still be read matrix by matrix (spectra). When the series itself holds a
``.pt2`` and no architecture is given, the first ``.pt2`` is the architecture.
"""

from __future__ import annotations

import copy
import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import NNVitalsError
from ..core.subject import (
    ExportSubject,
    ModuleSubject,
    Subject,
    WeightRef,
    architecture_fingerprint,
    load_subject,
    read_json,
    runnable_module,
)

#: the manifest a series directory may hold
MANIFEST = "series.json"
#: file suffixes read as checkpoints in a series directory
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pt2")
#: largest manifest read
MAX_MANIFEST_BYTES = 1 << 20

# a step in a name: the keyword, an optional separator and the number (``step_1000``, ``step-1000``,
# ``epoch=3``, ``checkpoint-500``, ``ckpt_000200``, ``global_step1200``, ``iter_30``)
_KEYWORDS = {
    "step": "step",
    "steps": "step",
    "global_step": "step",
    "iter": "step",
    "iteration": "step",
    "it": "step",
    "checkpoint": "step",
    "ckpt": "step",
    "epoch": "epoch",
    "ep": "epoch",
}
_KEYWORD_RE = re.compile(
    r"(?:^|[^a-z])(global_step|iteration|checkpoint|steps|step|epoch|iter|ckpt|ep|it)[_=\-.]?(\d+)(?![\d])",
    re.I,
)
_NUMBER_RE = re.compile(r"^(?:.*[_\-.=])?(\d+)$")


def parse_step(name: str) -> tuple[int, str] | None:
    """The step (or epoch) in a checkpoint's name and its unit, or None when the name has none.

    ``step_1000.pt`` -> (1000, "step"); ``epoch=3.ckpt`` -> (3, "epoch"); ``checkpoint-500`` ->
    (500, "step"); ``ckpt_000200.safetensors`` -> (200, "step"); ``1200.pt`` or ``model_1200.pt``
    -> (1200, "number"). A name holding both a step and an epoch (Lightning's
    ``epoch=2-step=1200.ckpt``) is ordered by its step.
    """
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    found: dict[str, int] = {}
    for m in _KEYWORD_RE.finditer(stem):
        unit = _KEYWORDS[m.group(1).lower()]
        found.setdefault(unit, int(m.group(2)))
    if "step" in found:
        return found["step"], "step"
    if "epoch" in found:
        return found["epoch"], "epoch"
    m = _NUMBER_RE.match(stem)
    if m:
        return int(m.group(1)), "number"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series: its step, its name (unique in the series) and what to open."""

    step: int
    name: str
    source: Any  # a Path, or anything load_subject takes (a module, a demo name)

    @property
    def where(self) -> str:
        """The checkpoint as messages name it: its path, or its name."""
        return str(self.source) if isinstance(self.source, str | Path) else self.name


def _shown(value: Any, limit: int = 120) -> str:
    text = str(value)
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ArchitectureSubject(Subject):
    """A weights-only checkpoint run in a given architecture.

    Its weights are the checkpoint's (read matrix by matrix, as the plain file would be); its
    module is the architecture with the checkpoint's state dict loaded (strictly: every tensor of
    the architecture must be in the checkpoint, with its shape). The fingerprint covers both.
    """

    source_kind = "checkpoint"

    def __init__(self, weights: Subject, architecture: Architecture, label: str | None = None):
        super().__init__(label or weights.label)
        self.weights_subject = weights
        self.architecture = architecture

    def _infos(self) -> list[WeightRef]:
        return self.weights_subject._infos()

    def tensor(self, name: str) -> torch.Tensor:
        return self.weights_subject.tensor(name)

    def _fingerprint(self) -> str:
        h = hashlib.sha256(b"nnvitals-checkpoint-in-architecture|")
        h.update(self.weights_subject.fingerprint.encode())
        h.update(b"|")
        h.update(self.architecture.fingerprint.encode())
        return h.hexdigest()

    def module(self) -> nn.Module:
        if "_module" not in self.__dict__:
            mod = self.architecture.fresh()
            state = {w.name: self.weights_subject.tensor(w.name) for w in self.weights_subject._infos()}
            try:
                mod.load_state_dict(state, strict=True)
            except RuntimeError as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
                raise NNVitalsError(
                    f"checkpoint {self.label}: does not fit the architecture {self.architecture.label} "
                    f"({_shown(detail, 200)}); expected a state dict of that architecture"
                ) from None
            self.__dict__["_module"] = mod.eval() if hasattr(mod, "eval") else mod
        return self.__dict__["_module"]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_module", None)
        return state


class Architecture:
    """What a weights-only series runs in: a ``.pt2``, a demo name, ``module:factory`` or a module.

    Resolved once per process (:func:`~analyses.core.subject.load_subject`); :meth:`fresh` hands out
    a copy per checkpoint, so concurrent tasks never share one module.
    """

    def __init__(self, spec: Any):
        self.spec = spec
        if isinstance(spec, nn.Module):
            self.label = type(spec).__name__
        elif isinstance(spec, Subject):
            self.label = spec.label
        else:
            self.label = _shown(spec)
        self._lock = threading.Lock()

    def _subject(self) -> Subject:
        if "_subj" not in self.__dict__:
            subject = load_subject(self.spec)
            if subject.module() is None:
                raise NNVitalsError(
                    f"architecture {self.label}: a {subject.source_kind} file holds weights only; expected a .pt2 "
                    "torch.export program, a demo model name or 'package.module:factory'"
                )
            self.__dict__["_subj"] = subject
        return self.__dict__["_subj"]

    def _module(self) -> nn.Module:
        if "_mod" not in self.__dict__:
            self.__dict__["_mod"] = runnable_module(self._subject(), "architecture")
        return self.__dict__["_mod"]

    @property
    def fingerprint(self) -> str:
        """Files (a .pt2, a demo) by their content; a module built by a factory by its code and
        settings (its initial weights are replaced by every checkpoint's)."""
        if "_fp" not in self.__dict__:
            with self._lock:
                subject = self._subject()
                if isinstance(subject, ModuleSubject):
                    fp = architecture_fingerprint(self._module())
                else:
                    fp = subject.fingerprint
                self.__dict__["_fp"] = f"{subject.source_kind}:{fp}"
        return self.__dict__["_fp"]

    def fresh(self) -> nn.Module:
        """A copy of the architecture's module (its weights about to be replaced)."""
        with self._lock:
            return copy.deepcopy(self._module())

    def check(self) -> None:
        """Resolve now: a wrong architecture fails before any checkpoint runs."""
        with self._lock:
            self._module()

    def __getstate__(self):
        return {
            "spec": self.spec,
            "label": self.label,
            **({"_fp": self.__dict__["_fp"]} if "_fp" in self.__dict__ else {}),
        }

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclass
class CheckpointSeries:
    """Checkpoints ordered by step (see module docstring); ``unit``: 'step', 'epoch', 'number' or
    'index' (positions in a list); ``where``: the directory, manifest or 'list'."""

    checkpoints: list[Checkpoint]
    where: str = "list"
    unit: str = "step"
    architecture: Any = None
    _arch: Architecture | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise NNVitalsError(f"series {self.where}: no checkpoints")
        self.checkpoints = sorted(self.checkpoints, key=lambda c: c.step)
        by_step: dict[int, Checkpoint] = {}
        for c in self.checkpoints:
            if c.step in by_step:
                raise NNVitalsError(
                    f"series {self.where}: {by_step[c.step].where} and {c.where} both have {self.unit} {c.step}; "
                    "expected one checkpoint per step"
                )
            by_step[c.step] = c
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):  # the name identifies a checkpoint in tables: make them unique
            self.checkpoints = [
                Checkpoint(c.step, f"{c.name} ({self.unit} {c.step})", c.source) for c in self.checkpoints
            ]

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self):
        return iter(self.checkpoints)

    def by_step(self, step: int) -> Checkpoint:
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise NNVitalsError(
            f"{self.unit} {step}: not in series {self.where} ({self.unit}s {', '.join(map(str, self.steps))})"
        )

    def arch(self) -> Architecture | None:
        """The series' architecture: the one given, else the first ``.pt2`` checkpoint, else None."""
        if self._arch is None:
            spec = self.architecture
            if spec is None:
                spec = next(
                    (
                        c.source
                        for c in self.checkpoints
                        if isinstance(c.source, Path) and c.source.suffix == ".pt2"
                    ),
                    None,
                )
            self._arch = Architecture(spec) if spec is not None else None
        return self._arch

    def open(self, checkpoint: Checkpoint) -> tuple[Subject, Subject]:
        """(the checkpoint's weights, the checkpoint as a runnable model when it can be run).

        The runnable one is the weights subject itself when the checkpoint carries its own
        architecture (a ``.pt2``, a module, a demo name), an :class:`ArchitectureSubject` when the
        series has an architecture, else the weights subject (analyses needing a module say so).
        Raises :class:`NNVitalsError` naming the checkpoint when it cannot be read.
        """
        try:
            weights = load_subject(checkpoint.source, label=checkpoint.name)
            weights.weights()  # read the header / index now: a damaged file fails here
        except NNVitalsError as e:
            msg = str(e)
            if checkpoint.where not in msg and checkpoint.name not in msg:
                msg = f"{checkpoint.where}: {msg}"
            raise NNVitalsError(msg) from None
        if not isinstance(checkpoint.source, str | Path) or weights.module() is not None:
            return weights, weights
        if isinstance(weights, ExportSubject):  # pragma: no cover - module() is never None for these
            return weights, weights
        arch = self.arch()
        if arch is None:
            return weights, weights
        return weights, ArchitectureSubject(weights, arch, label=checkpoint.name)

    def describe(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "unit": self.unit,
            "steps": self.steps,
            "checkpoints": [c.name for c in self.checkpoints],
            "architecture": None if self.arch() is None else self.arch().label,
        }


# --------------------------------------------------------------------------- listing
def _from_manifest(path: Path, architecture: Any) -> CheckpointSeries:
    doc = read_json(path, 'a list of {"file": ..., "step": ...}', MAX_MANIFEST_BYTES)
    what = 'a list of {"file": ..., "step": ...} (or {"checkpoints": [...], "architecture": ...})'
    if isinstance(doc, dict):
        if architecture is None and isinstance(doc.get("architecture"), str):
            arch = doc["architecture"]
            architecture = str(path.parent / arch) if arch.endswith(".pt2") else arch
        doc = doc.get("checkpoints")
    if not isinstance(doc, list) or not doc:
        raise NNVitalsError(f"{path}: expected {what}")
    root = path.parent.resolve()
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise NNVitalsError(f'{path}: entry {i} has no "file" string; expected {what}')
        step = item.get("step", item.get("epoch"))
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise NNVitalsError(
                f"{path}: entry {i} ({_shown(item['file'], 80)}) has step {_shown(step, 40)}; "
                "expected a whole number >= 0"
            )
        f = path.parent / item["file"]
        try:
            real = f.resolve()
        except (OSError, RuntimeError):
            raise NNVitalsError(f"{path}: entry {i}: {f} cannot be resolved (a symlink loop?)") from None
        if not real.is_relative_to(root):
            raise NNVitalsError(f"{path}: entry {i}: {_shown(item['file'], 80)} lies outside {root}; "
                                "expected a file in the manifest's directory")  # fmt: skip
        if not f.exists():
            raise NNVitalsError(f"{path}: entry {i}: {f} does not exist")
        out.append(Checkpoint(step, f.name, f))
    unit = "epoch" if all("epoch" in it and "step" not in it for it in doc) else "step"
    return CheckpointSeries(out, where=str(path), unit=unit, architecture=architecture)


#: files a Hugging Face Trainer writes next to its checkpoint-* folders (the final model, the
#: optimiser and scheduler states, the arguments): never members of the series
_NOT_SERIES = re.compile(
    r"^(model\.safetensors|pytorch_model\.bin|training_args\.bin|optimizer\.pt|scheduler\.pt|"
    r"scaler\.pt|rng_state(_\d+)?\.pth|(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin))$"
)


def _is_checkpoint(p: Path) -> bool:
    if p.name.startswith(".") or _NOT_SERIES.match(p.name):
        return False
    if p.is_dir():
        return (
            any(
                (p / n).exists()
                for n in ("config.json", "model.safetensors", "pytorch_model.bin", "model.pt")
            )
            or any(p.glob("*.safetensors"))
            or any(p.glob("*.pt2"))
        )
    return p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES


def _ordered(
    items: list[tuple[str, Any]], where: str, architecture: Any, by_position: bool
) -> CheckpointSeries:
    """Checkpoints ordered by the steps in their names (``by_position``: by their list positions
    when no name has one)."""
    parsed = [(name, src, parse_step(name)) for name, src in items]
    missing = [name for name, _, s in parsed if s is None]
    if missing and by_position and len(missing) == len(parsed):
        return CheckpointSeries(
            [Checkpoint(i, name, src) for i, (name, src, _) in enumerate(parsed)],
            where=where, unit="index", architecture=architecture,
        )  # fmt: skip
    if missing:
        raise NNVitalsError(
            f"series {where}: cannot order {_shown(missing[0], 80)}: no step in its name; expected names like "
            f"step_1000, epoch=3, checkpoint-500 or 1000, or a {MANIFEST} listing each file's step"
        )
    units = {s[1] for _, _, s in parsed}
    if len(units) > 1:
        by_unit = {}
        for name, _, s in parsed:
            by_unit.setdefault(s[1], name)
        shown = ", ".join(f"{n} ({u})" for u, n in by_unit.items())
        raise NNVitalsError(
            f"series {where}: ambiguous ordering: names count in different units ({shown}); expected one "
            f"unit for every checkpoint, or a {MANIFEST} listing each file's step"
        )
    unit = units.pop()
    return CheckpointSeries(
        [Checkpoint(s[0], name, src) for name, src, s in parsed], where=where,
        unit="step" if unit == "number" else unit, architecture=architecture,
    )  # fmt: skip


def _from_directory(path: Path, architecture: Any) -> CheckpointSeries:
    manifest = path / MANIFEST
    if manifest.exists() or manifest.is_symlink():
        return _from_manifest(manifest, architecture)
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        raise NNVitalsError(f"{path}: cannot list ({e.strerror})") from None
    found = [(p.name, p) for p in entries if _is_checkpoint(p)]
    if not found:
        raise NNVitalsError(
            f"series {path}: no checkpoints; expected {', '.join(CHECKPOINT_SUFFIXES)} files or Hugging Face "
            f"checkpoint-* folders named by step, or a {MANIFEST}"
        )
    if (path / "config.json").exists() and not any(p.is_dir() for _, p in found):
        if not any(parse_step(n) for n, _ in found):
            raise NNVitalsError(
                f"series {path}: holds one Hugging Face model, not a series; expected a directory of "
                "checkpoints (checkpoint-* folders or files named by step)"
            )
    return _ordered(found, str(path), architecture, by_position=False)


def load_series(source: Any, architecture: Any = None) -> CheckpointSeries:
    """A :class:`CheckpointSeries` from a directory, a manifest, a list or a series (see module docstring)."""
    if isinstance(source, CheckpointSeries):
        if architecture is not None and source.architecture is None:
            return CheckpointSeries(list(source.checkpoints), source.where, source.unit, architecture)
        return source
    if isinstance(source, str | Path):
        text = str(source)
        if not text:
            raise NNVitalsError("series: empty; expected a directory of checkpoints, a series.json or a list")
        path = Path(text).expanduser()
        if path.is_dir():
            return _from_directory(path, architecture)
        if path.is_file() and path.suffix.lower() == ".json":
            return _from_manifest(path, architecture)
        if not path.exists():
            raise NNVitalsError(f"series {_shown(text)}: no such directory")
        raise NNVitalsError(
            f"series {path}: a single file; expected a directory of checkpoints, a {MANIFEST} or a list of checkpoints"
        )
    if isinstance(source, list | tuple) and len(source) == 1 and isinstance(source[0], str | Path):
        one = Path(str(source[0])).expanduser()
        if one.is_dir() or one.suffix.lower() == ".json":  # one directory or manifest (a command line's)
            return load_series(one, architecture)
    if isinstance(source, list | tuple):
        if not source:
            raise NNVitalsError("series: empty list; expected checkpoints (paths, or (step, path) pairs)")
        pairs = [isinstance(x, tuple | list) and len(x) == 2 for x in source]
        if all(pairs):
            out = []
            for i, (step, model) in enumerate(source):
                if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                    raise NNVitalsError(f"series[{i}]: step {_shown(step, 40)}; expected a whole number >= 0")
                name = Path(str(model)).name if isinstance(model, str | Path) else f"step {step}"
                src = (
                    Path(model)
                    if isinstance(model, Path) or (isinstance(model, str) and Path(model).exists())
                    else model
                )
                out.append(Checkpoint(step, name, src))
            return CheckpointSeries(out, where="list", unit="step", architecture=architecture)
        if any(pairs):
            raise NNVitalsError("series: mixes (step, path) pairs and plain paths; expected one kind")
        for i, x in enumerate(source):
            if not isinstance(x, str | Path):
                raise NNVitalsError(
                    f"series[{i}]: got {type(x).__name__}; expected a path (or give (step, model) pairs)"
                )
        items = [(Path(str(x)).name, Path(x) if Path(x).exists() else x) for x in source]
        return _ordered(items, "list", architecture, by_position=True)
    raise NNVitalsError(
        f"series: got {type(source).__name__}; expected a directory of checkpoints, a {MANIFEST}, "
        "a list of paths or a list of (step, path) pairs"
    )


def weight_signature(subject: Subject) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of a subject's weight matrices (what two checkpoints of one model share)."""
    return tuple((w.name, w.shape) for w in subject.weights())


def check_same_architecture(opened: list[tuple[Checkpoint, Subject]], where: str) -> None:
    """Every checkpoint's weights have the names and shapes of the first one's (else one line naming
    the two checkpoints and the first difference)."""
    if len(opened) < 2:
        return
    first, ref = opened[0][0], dict(weight_signature(opened[0][1]))
    for c, s in opened[1:]:
        sig = dict(weight_signature(s))
        if sig == ref:
            continue
        extra = sorted(set(sig) - set(ref))
        lacking = sorted(set(ref) - set(sig))
        if extra:
            detail = f"{extra[0]!r} is not in {first.name}"
        elif lacking:
            detail = f"{lacking[0]!r} is missing"
        else:
            k = next(k for k in ref if ref[k] != sig[k])
            detail = f"{k!r} has shape {tuple(sig[k])} vs {tuple(ref[k])}"
        raise NNVitalsError(
            f"series {where}: mixed architectures: {c.where} differs from {first.where} ({_shown(detail, 160)}); "
            "expected checkpoints of one model"
        )


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MANIFEST",
    "Architecture",
    "ArchitectureSubject",
    "Checkpoint",
    "CheckpointSeries",
    "check_same_architecture",
    "load_series",
    "parse_step",
    "weight_signature",
]

"""The model under analysis: where it came from, a content fingerprint, its weight matrices.

:func:`load_subject` turns anything a user can point at into a :class:`Subject`:

- a ``torch.nn.Module`` or a ``torch.export.ExportedProgram``;
- ``.safetensors`` files (streamed tensor by tensor, never loaded whole);
- ``.pt/.pth/.bin`` state dicts (``torch.load(weights_only=True)`` only);
- ``.pt2`` ``torch.export`` programs (one exported with a fixed batch size runs batches of any
  size: :mod:`analyses.core.batching`; :attr:`Subject.notes` says how);
- Hugging Face style directories (``config.json`` + ``*.safetensors`` or a state dict);
- ``package.module:factory`` references (CLI and notebooks only);
- demo model names from the registered demo source (:func:`analyses.core.demo_source`: the zoo
  registers itself when imported; ``core`` never imports it).

Anything else raises :class:`~analyses.core.errors.NNVitalsError` naming the input and what
was expected. Only regular files are opened (a FIFO or device is refused, never waited on).
``confine=`` (the server's ``--allow-dir`` roots) makes every file a subject opens — the picked one
and each file of a Hugging Face directory — resolve inside those roots, symlinks followed.

Fingerprints (the result store's key for the model) cover what determines the results: file
subjects hash their files (a ``.pt2`` holds its graph), live modules hash their weights *and* their
architecture (module types and settings, the bytecode of user-defined modules, hooks), and
in-memory exported programs their weights and graph. A subject lists its weights as :class:`WeightRef` (name, shape, dtype, layer
kind) without reading them; :meth:`Subject.tensor` reads one on demand. Subjects pickle
cheaply (file subjects pickle their path), so tasks can carry them to Dask workers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import demo_source
from .errors import NNVitalsError
from .formats import (
    SafetensorsFile,
    exported_param_kinds,
    load_exported,
    load_state_dict,
    open_regular,
)

MATRIX_KINDS = ("linear", "conv1d", "hf_conv1d", "conv2d", "embedding", "matrix")
MODEL_SUFFIXES = ".safetensors, .pt/.pth/.bin (state dict), .pt2 (torch.export)"
_EMBED_RE = re.compile(r"(embed|wte|wpe|(^|\.)(emb|shared|lookup)\.)", re.I)
_HF_CONV1D_RE = re.compile(r"(c_attn|c_fc|c_proj|q_attn)\.weight$")
_HF_CONV1D_TYPES = {"gpt2", "openai-gpt", "gpt_bigcode", "decision_transformer", "imagegpt"}
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: largest config.json read from a Hugging Face directory
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class WeightRef:
    """One named weight tensor of a subject, described but not loaded."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # one of MATRIX_KINDS, or "other"


def infer_kind(name: str, shape: tuple[int, ...], hf_conv1d: bool = False) -> str:
    """Layer kind from a parameter's name and shape, for formats that carry no architecture."""
    if len(shape) == 4:
        return "conv2d"
    if len(shape) == 3:
        return "conv1d"
    if len(shape) == 2:
        if hf_conv1d and _HF_CONV1D_RE.search(name):
            return "hf_conv1d"
        if _EMBED_RE.search(name):
            return "embedding"
        return "linear"
    return "other"


def _is_float(dtype: str) -> bool:
    return any(t in dtype for t in ("float", "bfloat"))


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with os.fdopen(open_regular(p), "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _code_digest(code: types.CodeType, h, depth: int = 0) -> None:
    """Feed a code object's bytecode, names and constants (nested functions too) into ``h``."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType) and depth < 8:
            _code_digest(c, h, depth + 1)
        else:
            h.update(repr(c).encode()[:256])


def _callable_digest(fn, h) -> None:
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    h.update(f"{getattr(fn, '__module__', '?')}.{name}".encode())
    if code is not None:
        _code_digest(code, h)


def architecture_fingerprint(module: nn.Module) -> str:
    """SHA-256 of what a module computes apart from its weights.

    Every submodule's path, class and ``extra_repr`` (so ReLU and LeakyReLU(0.1) differ), the
    bytecode of every method of classes defined outside PyTorch (custom ``forward`` code), and the
    forward hooks and pre-hooks attached to modules, instances or globally.
    """
    from torch.nn.modules import module as module_mod

    h = hashlib.sha256()
    seen: set[type] = set()
    for name, m in module.named_modules(remove_duplicate=False):
        cls = type(m)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{m.extra_repr()}|{m.training}".encode())
        for klass in cls.__mro__:
            if klass in seen or klass.__module__.split(".")[0] in ("torch", "builtins"):
                continue
            seen.add(klass)
            for attr, value in sorted(vars(klass).items()):
                if callable(value) or isinstance(value, staticmethod | classmethod | property):
                    h.update(attr.encode())
                    _callable_digest(getattr(value, "fget", value), h)
        if "forward" in m.__dict__:
            _callable_digest(m.__dict__["forward"], h)
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for fn in hooks.values():
                _callable_digest(fn, h)
    for hooks in (module_mod._global_forward_hooks, module_mod._global_forward_pre_hooks):
        for fn in hooks.values():
            _callable_digest(fn, h)
    return h.hexdigest()


def _plain(t: Any) -> bool:
    """A dense tensor with values to read (not meta, sparse, quantized or uninitialised)."""
    return (
        isinstance(t, torch.Tensor)
        and not isinstance(t, nn.parameter.UninitializedTensorMixin)
        and t.layout == torch.strided
        and not t.is_meta
        and not t.is_quantized
    )


def _sha256_tensors(items) -> str:
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        if not _plain(t):  # no values to hash: its description only (such a tensor is refused when read)
            h.update(
                f"{name}|{type(t).__name__}|{getattr(t, 'layout', '')}|{getattr(t, 'dtype', '')}".encode()
            )
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        # reshape first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Subject:
    """Base class: a model, its weights and fingerprint. See :func:`load_subject`."""

    source_kind = "?"

    def __init__(self, label: str):
        self.label = label

    # -- to implement
    def _infos(self) -> list[WeightRef]:
        raise NotImplementedError

    def tensor(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _fingerprint(self) -> str:
        raise NotImplementedError

    def module(self) -> nn.Module | None:
        """A runnable module when the source carries an architecture, else None."""
        return None

    # -- shared
    def weights(self) -> list[WeightRef]:
        """All floating-point weights of rank >= 2 (matrices and conv kernels), in stored order."""
        if "_weights" not in self.__dict__:
            self.__dict__["_weights"] = [w for w in self._infos() if len(w.shape) >= 2 and _is_float(w.dtype)]
        return self.__dict__["_weights"]

    @property
    def fingerprint(self) -> str:
        if "_fp" not in self.__dict__:
            self.__dict__["_fp"] = self._fingerprint()
        return self.__dict__["_fp"]

    @property
    def notes(self) -> list[str]:
        """One-line notes on how the model is run, for the results (e.g. a fixed batch size worked
        around); empty when there is nothing to say."""
        return []

    def notes_for(self, runs_model: bool) -> list[str]:
        """The :attr:`notes` that concern a run which calls the model (``runs_model``) or reads
        its weights only."""
        return self.notes

    def describe(self) -> dict[str, Any]:
        out = {"label": self.label, "source": self.source_kind, "fingerprint": self.fingerprint}
        return out | ({"notes": self.notes} if self.notes else {})

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_weights", None)
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


class ModuleSubject(Subject):
    """A live ``torch.nn.Module`` (layer kinds from its module types)."""

    source_kind = "module"

    def __init__(self, module: nn.Module, label: str | None = None):
        super().__init__(label or type(module).__name__)
        self._module = module

    def _infos(self) -> list[WeightRef]:
        kinds: dict[str, str] = {}
        for mname, mod in self._module.named_modules():
            prefix = f"{mname}." if mname else ""
            kind = None
            if isinstance(mod, nn.Linear):
                kind = "linear"
            elif isinstance(mod, nn.Conv2d):
                kind = "conv2d"
            elif isinstance(mod, nn.Conv1d):
                kind = "conv1d"
            elif isinstance(mod, nn.Embedding):
                kind = "embedding"
            elif type(mod).__name__ == "Conv1D":  # Hugging Face GPT-2 style (in, out) layout
                kind = "hf_conv1d"
            elif isinstance(mod, nn.MultiheadAttention):
                kinds[f"{prefix}in_proj_weight"] = "linear"
            if kind:
                kinds[f"{prefix}weight"] = kind
        out = []
        for name, p in self._state().items():
            if not isinstance(p, torch.Tensor) or isinstance(p, nn.parameter.UninitializedTensorMixin):
                continue  # packed parameters, lazy modules not yet run: nothing to analyse
            shape = tuple(p.shape)
            kind = kinds.get(name) or ("matrix" if len(shape) == 2 else infer_kind(name, shape))
            out.append(WeightRef(name, shape, str(p.dtype).removeprefix("torch."), kind))
        return out

    def _state(self, fresh: bool = True) -> dict[str, Any]:
        """name -> the module's own tensor objects (in-place updates show; rebuilt on demand)."""
        if fresh or "_sd" not in self.__dict__:
            self.__dict__["_sd"] = self._module.state_dict(keep_vars=True)
        return self.__dict__["_sd"]

    def tensor(self, name: str) -> torch.Tensor:
        state = self._state(fresh=False)
        if name not in state:
            state = self._state()
        t = state[name]
        if not _plain(t):
            kind = "on the meta device" if getattr(t, "is_meta", False) else "not a dense tensor with values"
            raise NNVitalsError(f"{self.label}: parameter {name!r} is {kind}; nothing to analyse")
        return t.detach()

    @property
    def fingerprint(self) -> str:  # never cached: a live module may be trained between runs
        weights = _sha256_tensors(self._module.state_dict().items())
        return hashlib.sha256(f"{weights}|{architecture_fingerprint(self._module)}".encode()).hexdigest()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_sd", None)
        return state

    def module(self) -> nn.Module:
        return self._module


class SafetensorsSubject(Subject):
    """One or more ``.safetensors`` files (a single checkpoint or the shards of an HF directory).

    ``weight_map`` (from a sharded checkpoint's ``model.safetensors.index.json``, named by
    ``index``): which shard holds each tensor; every listed tensor must be in its shard, and a
    tensor held by several shards is read from the one the index names.
    """

    source_kind = "safetensors"

    def __init__(
        self,
        files: list[Path],
        label: str,
        hf_conv1d: bool = False,
        extra: list[Path] = (),
        weight_map: dict[str, str] | None = None,
        index: Path | None = None,
    ):
        super().__init__(label)
        self.files = [Path(f) for f in files]
        self.hf_conv1d = hf_conv1d
        self.extra = [Path(p) for p in extra]  # config files that go into the fingerprint
        self.weight_map = dict(weight_map) if weight_map else None
        self.index = Path(index) if index is not None else None
        self._readers()  # validate now: a broken file fails at load time, not mid-run

    def _readers(self) -> dict[str, SafetensorsFile]:
        if "_where" not in self.__dict__:
            where: dict[str, SafetensorsFile] = {}
            by_name: dict[str, SafetensorsFile] = {}
            for f in self.files:
                r = SafetensorsFile(f)
                by_name[f.name] = r
                for k in r.entries:
                    where[k] = r
            for k, shard in (self.weight_map or {}).items():
                r = by_name.get(shard)
                if r is None or k not in r.entries:
                    raise NNVitalsError(
                        f"{self.index}: tensor {_shown(k, 80)!r} is mapped to shard {_shown(shard, 80)!r}, "
                        "which does not hold it; expected the index of these shards"
                    )
                where[k] = r
            self.__dict__["_where"] = where
        return self.__dict__["_where"]

    def _infos(self) -> list[WeightRef]:
        out = []
        for name, r in self._readers().items():
            dtype, shape, _, _ = r.entries[name]
            out.append(
                WeightRef(
                    name, shape, str(dtype).removeprefix("torch."), infer_kind(name, shape, self.hf_conv1d)
                )
            )
        return out

    def tensor(self, name: str) -> torch.Tensor:
        return self._readers()[name].read(name)

    def tensor_pinned(self, name: str) -> torch.Tensor:
        """The tensor read straight into page-locked memory (fast, asynchronous copies to a GPU)."""
        r = self._readers()[name]
        dtype, shape, _, _ = r.entries[name]
        return r.read(name, out=torch.empty(shape, dtype=dtype, pin_memory=True))

    def storage_order(self) -> dict[str, tuple[int, int]]:
        """(file number, byte offset) of every tensor: reading in this order streams each shard
        from start to end."""
        rank = {id(r): i for i, r in enumerate({id(r): r for r in self._readers().values()}.values())}
        return {k: (rank[id(r)], r.entries[k][2]) for k, r in self._readers().items()}

    def readahead(self, name: str) -> None:
        """Hint the kernel to start reading this tensor's bytes (best effort)."""
        self._readers()[name].readahead(name)

    def _fingerprint(self) -> str:
        return _sha256_files(self.files + self.extra)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_where", None)
        return state


class DemoSubject(SafetensorsSubject):
    """A demo model: its checkpoint, plus the architecture its demo source builds it with."""

    source_kind = "demo"

    def __init__(self, files: list[Path], label: str, **kw: Any):
        super().__init__(files, label, **kw)
        self.demo_name = label  # the label may change (two copies compared); the demo it is does not

    def _fingerprint(self) -> str:  # the same weights under another demo name are another model
        return hashlib.sha256(f"demo:{self.demo_name}|{super()._fingerprint()}".encode()).hexdigest()

    def module(self) -> nn.Module:
        source = demo_source()
        if source is None:
            raise NNVitalsError(f"model {self.label}: no demo models are registered here")
        return source.load(self.demo_name)


class StateDictSubject(Subject):
    """A ``.pt/.pth/.bin`` state dict, loaded with ``weights_only=True`` and memory-mapped."""

    source_kind = "state_dict"

    def __init__(self, path: Path, label: str, hf_conv1d: bool = False):
        super().__init__(label)
        self.path = Path(path)
        self.hf_conv1d = hf_conv1d
        self._tensors()

    def _tensors(self) -> dict[str, torch.Tensor]:
        if "_sd" not in self.__dict__:
            self.__dict__["_sd"] = load_state_dict(self.path)
        return self.__dict__["_sd"]

    def _infos(self) -> list[WeightRef]:
        return [
            WeightRef(
                k,
                tuple(t.shape),
                str(t.dtype).removeprefix("torch."),
                infer_kind(k, tuple(t.shape), self.hf_conv1d),
            )
            for k, t in self._tensors().items()
        ]

    def tensor(self, name: str) -> torch.Tensor:
        return self._tensors()[name]

    def _fingerprint(self) -> str:
        return _sha256_files([self.path])

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_sd", None)
        return state


class ExportSubject(Subject):
    """A ``torch.export`` program: weights plus a runnable graph (layer kinds from its ops).

    A program exported with a fixed batch size (no ``dynamic_shapes``) runs batches of any size:
    :meth:`program` is the program with its batch axis made dynamic where its graph allows, and
    :meth:`module` otherwise cuts batches into chunks of the exported size
    (:func:`analyses.core.batching.free_batch`); :attr:`notes` says which.
    """

    source_kind = "export"

    def __init__(self, path: Path | None, label: str, program=None):
        super().__init__(label)
        self.path = Path(path) if path is not None else None
        if program is not None:
            self.__dict__["_ep"] = program
        self.loaded_program()

    def loaded_program(self):
        """The program as it was saved (or given): the weights and the graph of the fingerprint."""
        if "_ep" not in self.__dict__:
            self.__dict__["_ep"] = load_exported(self.path)
        return self.__dict__["_ep"]

    def batch_fix(self):
        """How the program runs batches of any size (:class:`analyses.core.batching.BatchFix`),
        worked out on first use."""
        if "_fix" not in self.__dict__:
            from .batching import free_batch

            self.__dict__["_fix"] = free_batch(self.loaded_program(), self.label)
        return self.__dict__["_fix"]

    def program(self):
        """The program to run and walk: with a dynamic batch axis where the saved one fixed it and
        its graph allows (else the saved program, whose :meth:`module` runs in chunks)."""
        return self.batch_fix().program

    @property
    def notes(self) -> list[str]:
        fix = self.batch_fix()
        return [fix.note] if fix.note else []

    def notes_for(self, runs_model: bool) -> list[str]:
        # they say how the program runs batches: nothing to a run that reads its weights, which
        # would otherwise pay for working it out (a re-export, waiting for the model turn)
        return self.notes if runs_model else []

    def _infos(self) -> list[WeightRef]:
        ep = self.loaded_program()
        kinds = exported_param_kinds(ep)
        return [
            WeightRef(
                k,
                tuple(t.shape),
                str(t.dtype).removeprefix("torch."),
                kinds.get(k) or infer_kind(k, tuple(t.shape)),
            )
            for k, t in ep.state_dict.items()
        ]

    def tensor(self, name: str) -> torch.Tensor:
        return self.loaded_program().state_dict[name].detach()

    def _fingerprint(self) -> str:
        if self.path is not None:  # the archive holds the graph as well as the weights
            return _sha256_files([self.path])
        ep = self.loaded_program()
        h = hashlib.sha256(_sha256_tensors([*ep.state_dict.items(), *ep.constants.items()]).encode())
        h.update(ep.graph_module.code.encode())
        h.update(str(ep.graph_signature).encode())
        return h.hexdigest()

    def module(self) -> nn.Module:
        """The program's module, for batches of any size (see the class docstring)."""
        fix = self.batch_fix()
        if fix.how == "chunks":
            from .batching import FixedBatchModule

            return FixedBatchModule(fix.program.module(), fix.fixed)
        return fix.program.module()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_fix", None)  # worked out again where it is used
        if self.path is not None:
            state.pop("_ep", None)
        return state


def _shown(text: str, limit: int = 300) -> str:
    """``text`` as it may appear in a one-line message: escaped when it holds anything unprintable
    (newlines, zero-width or direction-changing characters, surrogates), and cut to ``limit``."""
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _inside(path: Path, confine: tuple[Path, ...] | None, where: str) -> Path:
    """The real path of ``path`` (symlinks resolved), refused unless it lies inside ``confine``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise NNVitalsError(f"{where}: cannot be opened (missing, or a symlink loop)") from None
    if confine is not None and not any(real == r or real.is_relative_to(r) for r in confine):
        raise NNVitalsError(f"{where}: refused: it resolves outside the directories this server allows")
    return real


def _read_config(config: Path) -> dict:
    """A Hugging Face ``config.json`` as a mapping (bounded, one clear line when it is not one)."""
    try:
        with os.fdopen(open_regular(config), "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise NNVitalsError(f"{config}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise NNVitalsError(
            f"{config}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; expected a Hugging Face config"
        )
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise NNVitalsError(f"{config}: nested too deeply; expected a Hugging Face config") from None
    except (ValueError, UnicodeDecodeError):
        raise NNVitalsError(f"{config}: not valid JSON; expected a Hugging Face config") from None
    if not isinstance(doc, dict):
        raise NNVitalsError(
            f"{config}: expected a JSON object (a Hugging Face config), got {type(doc).__name__}"
        )
    return doc


#: the index ``save_pretrained`` writes next to a sharded checkpoint
HF_INDEX = "model.safetensors.index.json"


def read_json(path: Path, what: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """A small JSON file of at most ``limit`` bytes (one clear line naming ``path`` and ``what`` was
    expected when it is unreadable, too large or not JSON)."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise NNVitalsError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) > limit:
        raise NNVitalsError(f"{path}: larger than {limit // 2**20} MiB; expected {what}")
    try:
        return json.loads(raw)
    except RecursionError:
        raise NNVitalsError(f"{path}: nested too deeply; expected {what}") from None
    except (ValueError, UnicodeDecodeError):
        raise NNVitalsError(f"{path}: not valid JSON; expected {what}") from None


def _read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a sharded checkpoint's index."""
    what = "a Hugging Face safetensors index with a weight_map"
    doc = read_json(index, what)
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise NNVitalsError(f"{index}: no weight_map object; expected {what}")
    for k, v in wmap.items():
        if not isinstance(v, str):
            raise NNVitalsError(
                f"{index}: tensor {_shown(k, 80)!r} is mapped to a {type(v).__name__}; expected {what}"
            )
        bad = (
            not v.endswith(".safetensors")
            or v != Path(v).name
            or v in (".", "..")
            or "/" in v
            or "\\" in v
            or not v.isprintable()
            or len(v) > 255
        )
        if bad:
            raise NNVitalsError(
                f"{index}: shard {_shown(v, 80)!r} is not a .safetensors file name in this directory"
            )
    return wmap


def _hf_directory(path: Path, confine: tuple[Path, ...] | None = None) -> Subject:
    def inside(p: Path) -> Path:
        return _inside(p, confine, str(p))

    config, model_type = path / "config.json", None
    extra = []
    if config.is_file() or config.is_symlink():
        config = inside(config)
        model_type = _read_config(config).get("model_type")
        extra = [config]
    hf_conv1d = isinstance(model_type, str) and model_type in _HF_CONV1D_TYPES
    index = path / HF_INDEX
    if index.is_file() or index.is_symlink():  # sharded: exactly the shards the index names
        index = inside(index)
        wmap = _read_index(index)
        shards = []
        for name in sorted(set(wmap.values())):
            p = path / name
            if not (p.exists() or p.is_symlink()):
                raise NNVitalsError(f"{index}: names shard {_shown(name, 80)!r}, which is not in {path}")
            shards.append(inside(p))
        return SafetensorsSubject(
            shards, path.name, hf_conv1d=hf_conv1d, extra=[*extra, index], weight_map=wmap, index=index
        )
    st = sorted(path.glob("*.safetensors"))
    if st:
        return SafetensorsSubject([inside(p) for p in st], path.name, hf_conv1d=hf_conv1d, extra=extra)
    for cand in ("pytorch_model.bin", "model.pt", "model.pth"):
        if (path / cand).exists() or (path / cand).is_symlink():
            return StateDictSubject(inside(path / cand), path.name, hf_conv1d=hf_conv1d)
    pt2 = sorted(path.glob("*.pt2"))
    if pt2:
        return ExportSubject(inside(pt2[0]), path.name)
    raise NNVitalsError(
        f"{path}: directory holds no model; expected config.json with model.safetensors "
        "(or *.safetensors shards, or pytorch_model.bin)"
    )


def _factory(ref: str) -> Subject:
    mod_name, fn_name = ref.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise NNVitalsError(f"{ref}: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise NNVitalsError(f"{ref}: {mod_name} has no callable {fn_name!r}")
    try:
        obj = fn()
    except Exception as e:  # the user's own code: report it in one line
        raise NNVitalsError(
            f"{ref}: calling {fn_name}() failed ({type(e).__name__}: {_shown(str(e), 120)})"
        ) from None
    if not isinstance(obj, nn.Module):
        raise NNVitalsError(f"{ref}: returned {type(obj).__name__}, expected a torch.nn.Module")
    return ModuleSubject(obj.eval(), label=ref)


def runnable_module(subject: Subject, where: str = "model") -> nn.Module:
    """The subject's module in eval mode, or a clear error when its source has no architecture."""
    mod = subject.module()
    if mod is None:
        raise NNVitalsError(
            f"{where} {subject.label}: a {subject.source_kind} checkpoint holds weights only and cannot be run; "
            "give a torch.export program (.pt2), a torch.nn.Module, 'package.module:factory' "
            "or a demo model name"
        )
    if isinstance(subject, ExportSubject):
        return mod  # an exported program is already in inference form (and refuses .eval())
    try:
        return mod.eval()
    except NotImplementedError:  # ExportedProgram.module() passed as a module: no train/eval mode
        return mod


def load_subject(
    source: Any,
    *,
    allow_factory: bool = True,
    label: str | None = None,
    confine: Any = None,
) -> Subject:
    """Turn a model, file, directory, ``module:factory`` or demo name into a :class:`Subject`.

    ``confine``: directories every opened file must resolve into (a server's ``--allow-dir``);
    with it, demo names and ``module:factory`` references are not looked up.
    """
    roots = None if confine is None else tuple(Path(r).resolve() for r in confine)
    if isinstance(source, Subject):
        return source
    if isinstance(source, nn.Module):
        return ModuleSubject(source, label)
    if isinstance(source, torch.export.ExportedProgram):
        return ExportSubject(None, label or "exported program", program=source)
    if not isinstance(source, str | Path):
        raise NNVitalsError(
            f"model: got {type(source).__name__}; expected a torch.nn.Module, a path ({MODEL_SUFFIXES}, "
            "or a Hugging Face directory), 'package.module:factory' or a demo model name"
        )
    text = str(source)
    shown = _shown(text)
    if "\x00" in text:
        raise NNVitalsError(f"model {shown}: the path holds a NUL character; give a file path")
    try:
        path = Path(text).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError, ValueError) as e:
        why = getattr(e, "strerror", None) or "not a usable path"
        raise NNVitalsError(f"{shown}: cannot be used as a model path ({why})") from None
    if not exists and roots is not None:
        raise NNVitalsError(f"{shown}: no such file or directory")
    if not exists:
        source = demo_source()
        demos = source.models if source is not None else {}
        if text in demos:
            return DemoSubject([source.checkpoint(text)], text)
        if _FACTORY_RE.match(text):
            if not allow_factory:
                raise NNVitalsError(f"{text}: module:factory references are not accepted here")
            return _factory(text)
        if not text:
            raise NNVitalsError(
                "model: empty; expected a path, 'package.module:factory' or a demo model name"
            )
        if not demos:
            raise NNVitalsError(f"{shown}: no such file or directory")
        raise NNVitalsError(f"{shown}: no such file or directory (demo models: {', '.join(demos)})")
    label = label or path.name
    if roots is not None:
        path = _inside(path, roots, shown)
    if path.is_dir():
        return _hf_directory(path, roots)
    if not path.is_file():
        raise NNVitalsError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise NNVitalsError(f"{path}: empty file; expected a model ({MODEL_SUFFIXES})")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsSubject([path], label)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return StateDictSubject(path, label)
    if suffix == ".pt2":
        return ExportSubject(path, label)
    raise NNVitalsError(
        f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected {MODEL_SUFFIXES}"
    )

"""The model under analysis: where it came from, a content fingerprint, its weight matrices.

:func:`load_subject` turns anything a user can point at into a :class:`Subject`:

- a ``torch.nn.Module`` or a ``torch.export.ExportedProgram``;
- ``.safetensors`` files (streamed tensor by tensor, never loaded whole);
- ``.pt/.pth/.bin`` state dicts (``torch.load(weights_only=True)`` only);
- ``.pt2`` ``torch.export`` programs;
- Hugging Face style directories (``config.json`` + ``*.safetensors`` or a state dict);
- ``package.module:factory`` references (CLI and notebooks only);
- demo model names from :mod:`analyses.zoo`.

Anything else raises :class:`~analyses.core.errors.NNVitalsError` naming the input and what
was expected. A subject lists its weights as :class:`WeightRef` (name, shape, dtype, layer
kind) without reading them; :meth:`Subject.tensor` reads one on demand. Subjects pickle
cheaply (file subjects pickle their path), so tasks can carry them to Dask workers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import NNVitalsError
from .formats import SafetensorsFile, exported_param_kinds, load_exported, load_state_dict

MATRIX_KINDS = ("linear", "conv1d", "hf_conv1d", "conv2d", "embedding", "matrix")
MODEL_SUFFIXES = ".safetensors, .pt/.pth/.bin (state dict), .pt2 (torch.export)"
_EMBED_RE = re.compile(r"(embed|wte|wpe|(^|\.)(emb|shared|lookup)\.)", re.I)
_HF_CONV1D_RE = re.compile(r"(c_attn|c_fc|c_proj|q_attn)\.weight$")
_HF_CONV1D_TYPES = {"gpt2", "openai-gpt", "gpt_bigcode", "decision_transformer", "imagegpt"}
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _sha256_tensors(items) -> str:
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
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

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "source": self.source_kind, "fingerprint": self.fingerprint}

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
        for name, p in self._module.state_dict(keep_vars=True).items():
            shape = tuple(p.shape)
            kind = kinds.get(name) or ("matrix" if len(shape) == 2 else infer_kind(name, shape))
            out.append(WeightRef(name, shape, str(p.dtype).removeprefix("torch."), kind))
        return out

    def tensor(self, name: str) -> torch.Tensor:
        return self._module.state_dict(keep_vars=True)[name].detach()

    def _fingerprint(self) -> str:
        return _sha256_tensors(self._module.state_dict().items())

    def module(self) -> nn.Module:
        return self._module


class SafetensorsSubject(Subject):
    """One or more ``.safetensors`` files (a single checkpoint or the shards of an HF directory)."""

    source_kind = "safetensors"

    def __init__(self, files: list[Path], label: str, hf_conv1d: bool = False, extra: list[Path] = ()):
        super().__init__(label)
        self.files = [Path(f) for f in files]
        self.hf_conv1d = hf_conv1d
        self.extra = [Path(p) for p in extra]  # config files that go into the fingerprint
        self._readers()  # validate now: a broken file fails at load time, not mid-run

    def _readers(self) -> dict[str, SafetensorsFile]:
        if "_where" not in self.__dict__:
            where = {}
            for f in self.files:
                r = SafetensorsFile(f)
                for k in r.entries:
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

    def _fingerprint(self) -> str:
        return _sha256_files(self.files + self.extra)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_where", None)
        return state


class DemoSubject(SafetensorsSubject):
    """A demo model from the zoo: its checkpoint, plus the architecture recorded in the manifest."""

    source_kind = "demo"

    def module(self) -> nn.Module:
        from ..zoo import load_demo

        return load_demo(self.label)


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
    """A ``torch.export`` program: weights plus a runnable graph (layer kinds from its ops)."""

    source_kind = "export"

    def __init__(self, path: Path | None, label: str, program=None):
        super().__init__(label)
        self.path = Path(path) if path is not None else None
        if program is not None:
            self.__dict__["_ep"] = program
        self.program()

    def program(self):
        if "_ep" not in self.__dict__:
            self.__dict__["_ep"] = load_exported(self.path)
        return self.__dict__["_ep"]

    def _infos(self) -> list[WeightRef]:
        ep = self.program()
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
        return self.program().state_dict[name].detach()

    def _fingerprint(self) -> str:
        if self.path is not None:
            return _sha256_files([self.path])
        return _sha256_tensors(self.program().state_dict.items())

    def module(self) -> nn.Module:
        return self.program().module()

    def __getstate__(self):
        state = super().__getstate__()
        if self.path is not None:
            state.pop("_ep", None)
        return state


def _hf_directory(path: Path) -> Subject:
    config, model_type = path / "config.json", None
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise NNVitalsError(f"{config}: not valid JSON; expected a Hugging Face config") from None
    hf_conv1d = model_type in _HF_CONV1D_TYPES
    extra = [config] if config.is_file() else []
    st = sorted(path.glob("*.safetensors"))
    if st:
        return SafetensorsSubject(st, path.name, hf_conv1d=hf_conv1d, extra=extra)
    for cand in ("pytorch_model.bin", "model.pt", "model.pth"):
        if (path / cand).is_file():
            return StateDictSubject(path / cand, path.name, hf_conv1d=hf_conv1d)
    pt2 = sorted(path.glob("*.pt2"))
    if pt2:
        return ExportSubject(pt2[0], path.name)
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
    obj = fn()
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
    return mod.eval()


def load_subject(source: Any, *, allow_factory: bool = True, label: str | None = None) -> Subject:
    """Turn a model, file, directory, ``module:factory`` or demo name into a :class:`Subject`."""
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
    path = Path(text).expanduser()
    if not path.exists():
        from ..zoo import DEMO_MODELS, demo_path

        if text in DEMO_MODELS:
            return DemoSubject([demo_path(text)], text)
        if _FACTORY_RE.match(text):
            if not allow_factory:
                raise NNVitalsError(f"{text}: module:factory references are not accepted here")
            return _factory(text)
        if not text:
            raise NNVitalsError(
                "model: empty; expected a path, 'package.module:factory' or a demo model name"
            )
        raise NNVitalsError(f"{text}: no such file or directory (demo models: {', '.join(DEMO_MODELS)})")
    label = label or path.name
    if path.is_dir():
        return _hf_directory(path)
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

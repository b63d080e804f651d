"""Readers for model files: each gives tensor metadata without loading, and tensors on demand.

Nothing here unpickles untrusted data: ``.safetensors`` is parsed from its documented
layout (an 8-byte little-endian header length, a JSON header, then raw bytes) and read
tensor by tensor with ``seek``/``readinto``, so a multi-GB checkpoint is streamed without
being mapped or loaded whole; ``.pt/.pth`` go through ``torch.load(weights_only=True,
mmap=True)``; ``.pt2`` through ``torch.export.load`` with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
set, because its loader otherwise falls back to full unpickling.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import NNVitalsError

ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    ST_DTYPES.update({"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2})


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SafetensorsFile:
    """Lazy reader of one ``.safetensors`` file."""

    MAX_HEADER = 256 * 1024 * 1024

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise NNVitalsError(f"{self.path}: too short to be a .safetensors file ({size} bytes)")
                (n,) = struct.unpack("<Q", raw)
                if n == 0 or n > min(self.MAX_HEADER, size - 8):
                    raise NNVitalsError(
                        f"{self.path}: not a .safetensors file (header length {n} does not fit a {size}-byte file)"
                    )
                header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise NNVitalsError(f"{self.path}: not a .safetensors file (header is not JSON)") from None
        except OSError as e:
            raise NNVitalsError(f"{self.path}: cannot read ({e.strerror})") from None
        if not isinstance(header, dict):
            raise NNVitalsError(f"{self.path}: not a .safetensors file (header is not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self.base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype = ST_DTYPES[e["dtype"]]
                shape = tuple(int(s) for s in e["shape"])
                start, end = (int(v) for v in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise NNVitalsError(f"{self.path}: tensor {name!r} has an unreadable header entry") from None
            if not (0 <= start <= end) or self.base + end > size:
                raise NNVitalsError(
                    f"{self.path}: truncated or damaged (tensor {name!r} ends at byte {self.base + end}, "
                    f"file has {size})"
                )
            numel = 1
            for s in shape:
                numel *= s
            if numel * dtype.itemsize != end - start:
                raise NNVitalsError(f"{self.path}: tensor {name!r} size does not match its shape {shape}")
            self.entries[name] = (dtype, shape, start, end)

    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(k, v[1], str(v[0]).removeprefix("torch.")) for k, v in self.entries.items()]

    def read(self, name: str) -> torch.Tensor:
        dtype, shape, start, end = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        if end == start:
            return out
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.base + start)
            got = f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        if got != end - start:
            raise NNVitalsError(f"{self.path}: truncated while reading tensor {name!r}")
        return out


def _flatten_tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix.rstrip("."), obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten_tensors(v, f"{prefix}{k}.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt/.pth/.bin`` state dict, loaded with ``weights_only=True`` (never runs pickled code)."""
    if not zipfile.is_zipfile(path):
        # legacy (non-zip) torch files cannot be memory-mapped, still weights_only
        kwargs = {}
    else:
        kwargs = {"mmap": True}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "unsupported content"
        if "Unsupported global" in str(e) or "weights_only" in str(e).lower():
            raise NNVitalsError(
                f"{path}: refused: this pickle asks to load objects other than tensors "
                "(it may run code); nnvitals only reads plain state dicts with weights_only=True "
                "— save model.state_dict() or use .safetensors"
            ) from None
        raise NNVitalsError(f"{path}: not a PyTorch state dict ({msg[:120]})") from None
    except Exception as e:  # torch raises many types (KeyError, RuntimeError, ...) on non-checkpoints
        first = (str(e).splitlines() or [""])[0][:160]
        raise NNVitalsError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})"
        ) from None
    if isinstance(obj, torch.nn.Module):  # pragma: no cover - weights_only forbids this
        obj = obj.state_dict()
    if isinstance(obj, dict) and len(obj) and all(isinstance(k, str) for k in obj):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = dict(_flatten_tensors(obj)) if isinstance(obj, dict) else {}
    if not tensors:
        raise NNVitalsError(f"{path}: holds no tensors; expected a state dict (name -> tensor)")
    return tensors


_export_lock = threading.Lock()


@contextlib.contextmanager
def _weights_only_loads():
    """Force every torch.load inside to weights_only=True (torch.export.load falls back otherwise)."""
    with _export_lock:
        old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_exported(path: Path):
    """A ``torch.export`` program (``.pt2``), loaded without unpickling arbitrary objects."""
    if not zipfile.is_zipfile(path):
        raise NNVitalsError(f"{path}: not a torch.export program (.pt2 files are zip archives)")
    try:
        with _weights_only_loads():
            return torch.export.load(str(path))
    except pickle.UnpicklingError:
        raise NNVitalsError(
            f"{path}: refused: its weights ask to unpickle objects other than tensors (may run code)"
        ) from None
    except Exception as e:  # torch raises many types for malformed archives
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise NNVitalsError(
            f"{path}: not a readable torch.export program ({type(e).__name__}: {first})"
        ) from None


EXPORT_KINDS = {
    "aten.linear.default": "linear",
    "aten.conv2d.default": "conv2d",
    "aten.conv1d.default": "conv1d",
    "aten.embedding.default": "embedding",
    "aten.convolution.default": None,  # decided by rank
}


def exported_param_kinds(ep) -> dict[str, str]:
    """Layer kind of each parameter of an ExportedProgram, from the ops that consume it."""
    to_param = dict(ep.graph_signature.inputs_to_parameters)
    kinds: dict[str, str] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        key = str(node.target)
        if key not in EXPORT_KINDS:
            continue
        w = node.args[0] if key == "aten.embedding.default" else node.args[1]
        pname = to_param.get(getattr(w, "name", None))
        if pname is None:
            continue
        kind = EXPORT_KINDS[key]
        if kind is None:
            nd = len(ep.state_dict[pname].shape)
            kind = {3: "conv1d", 4: "conv2d"}.get(nd, "other")
        kinds[pname] = kind
    return kinds

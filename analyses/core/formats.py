"""Readers for model files: each gives tensor metadata without loading, and tensors on demand.

Nothing here unpickles untrusted data: ``.safetensors`` is parsed from its documented
layout (an 8-byte little-endian header length, a JSON header, then raw bytes) and read
tensor by tensor with ``seek``/``readinto``, so a multi-GB checkpoint is streamed without
being mapped or loaded whole; ``.pt/.pth`` go through ``torch.load(weights_only=True,
mmap=True)``; ``.pt2`` through ``torch.export.load`` with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
set, because its loader otherwise falls back to full unpickling, and only after
:func:`~analyses.core.pt2check.check_pt2` has looked inside the archive (a ``.pt2`` can carry
compiled libraries, Python in its shape expressions and guards, and pickled constants).

Every file is opened as a regular file only (a FIFO or a device would hang or never end), zip
archives have their declared sizes checked before anything inflates
(:mod:`analyses.core.archives`), and messages never quote a file's bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import stat
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .archives import check_zip
from .errors import NNVitalsError
from .pt2check import check_pt2

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


def open_regular(path: str | Path, where: str | None = None) -> int:
    """A read-only descriptor of ``path`` once it is known to be a regular file.

    Opens without blocking (a FIFO would otherwise wait forever for a writer) and checks the
    opened file itself, so a path swapped for a FIFO or a device after a check is refused too.
    """
    where = where or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise NNVitalsError(f"{where}: cannot read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NNVitalsError(f"{where}: not a regular file (a pipe, device or socket); expected a model file")
    os.set_blocking(fd, True)
    return fd


def check_regular(path: str | Path, where: str | None = None) -> None:
    """Refuse ``path`` unless it is a regular file (see :func:`open_regular`)."""
    os.close(open_regular(path, where))


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SafetensorsFile:
    """Lazy reader of one ``.safetensors`` file."""

    #: largest JSON header read: about 45,000 tensors (real checkpoints hold hundreds to a few thousand
    #: per file). Parsing holds the GIL (~0.1 s per 4 MiB on a calm 2-core machine), so the bound also
    #: bounds how long a hostile header can stall a server's other sessions.
    MAX_HEADER = 4 * 1024 * 1024
    #: largest single dimension and element count accepted from a header
    MAX_DIM = 2**40

    def __init__(self, path: str | Path):
        self.path = Path(path)
        where = str(self.path)
        fd = open_regular(self.path)
        try:
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = f.read(8)
                if len(raw) < 8:
                    raise NNVitalsError(f"{where}: too short to be a .safetensors file")
                (n,) = struct.unpack("<Q", raw)
                if n == 0 or n > size - 8:
                    raise NNVitalsError(
                        f"{where}: not a .safetensors file (its header length does not fit the file)"
                    )
                if n > self.MAX_HEADER:
                    raise NNVitalsError(
                        f"{where}: refused: its header is over {self.MAX_HEADER // 2**20} MiB "
                        "(real checkpoints have headers of a few MB at most)"
                    )
                header = json.loads(f.read(n))
        except NNVitalsError:
            raise
        except RecursionError:
            raise NNVitalsError(
                f"{where}: not a .safetensors file (its header is nested too deeply)"
            ) from None
        except (UnicodeDecodeError, ValueError):
            raise NNVitalsError(f"{where}: not a .safetensors file (header is not JSON)") from None
        except OSError as e:
            raise NNVitalsError(f"{where}: cannot read ({e.strerror})") from None
        if not isinstance(header, dict):
            raise NNVitalsError(f"{where}: not a .safetensors file (header is not a JSON object)")
        meta = header.pop("__metadata__", None)
        self.metadata = meta if isinstance(meta, dict) else {}
        self.base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            shown = name if len(name) <= 80 else name[:77] + "..."
            try:
                dtype = ST_DTYPES[e["dtype"]]
                shape = tuple(e["shape"])
                start, end = e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise NNVitalsError(f"{where}: tensor {shown!r} has an unreadable header entry") from None
            numbers = (*shape, start, end)
            if not all(type(v) is int for v in numbers) or len(shape) > 8:
                raise NNVitalsError(
                    f"{where}: tensor {shown!r} has an unreadable header entry "
                    "(shape and offsets must be at most 8 non-negative integers and two offsets)"
                )
            if any(v < 0 or v > self.MAX_DIM for v in shape):
                raise NNVitalsError(
                    f"{where}: tensor {shown!r} has a negative or absurd dimension in its shape"
                )
            if not (0 <= start <= end) or self.base + end > size:
                raise NNVitalsError(
                    f"{where}: truncated or damaged (tensor {shown!r} lies beyond the end of the file)"
                )
            numel = 1
            for d in shape:
                numel *= d
            if numel * dtype.itemsize != end - start:
                raise NNVitalsError(f"{where}: tensor {shown!r} size does not match its shape {shape}")
            self.entries[name] = (dtype, shape, start, end)

    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(k, v[1], str(v[0]).removeprefix("torch.")) for k, v in self.entries.items()]

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name``, read into a new tensor or into ``out`` (same shape and dtype, contiguous,
        on the CPU: e.g. page-locked memory for fast copies to a GPU)."""
        dtype, shape, start, end = self.entries[name]
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        elif out.dtype != dtype or tuple(out.shape) != shape or not out.is_contiguous() or out.is_cuda:
            raise ValueError(f"read {name!r}: out must be a contiguous CPU {dtype} tensor of shape {shape}")
        if end == start:
            return out
        with os.fdopen(open_regular(self.path), "rb", buffering=0) as f:
            f.seek(self.base + start)
            got = f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        if got != end - start:
            raise NNVitalsError(f"{self.path}: truncated while reading tensor {name!r}")
        return out

    def readahead(self, name: str) -> None:
        """Ask the kernel to start reading tensor ``name``'s bytes now (``posix_fadvise``
        WILLNEED; best effort, a no-op where unsupported): a prefetching reader calls it for the
        tensor after the one it reads, so a cold disk streams while it works."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        _, _, start, end = self.entries[name]
        try:
            fd = open_regular(self.path)
        except NNVitalsError:
            return
        try:
            advise(fd, self.base + start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _flatten_tensors(obj, where: str, max_depth: int = 16) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a (nested) state dict as (dotted name, tensor), depth-first, iteratively."""
    stack = [("", obj, 0)]
    while stack:
        prefix, item, depth = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided or item.is_quantized or item.is_meta:
                kind = "quantized" if item.is_quantized else ("meta" if item.is_meta else str(item.layout))
                raise NNVitalsError(
                    f"{where}: tensor {prefix.rstrip('.')[:80]!r} is {kind}; nnvitals reads dense tensors "
                    "(save it with .to_dense() or .dequantize())"
                )
            yield prefix.rstrip("."), item
        elif isinstance(item, dict) and depth < max_depth:
            for k, v in reversed(list(item.items())):
                stack.append((f"{prefix}{k}.", v, depth + 1))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt/.pth/.bin`` state dict, loaded with ``weights_only=True`` (never runs pickled code).

    Only the zip format of ``torch.save`` (PyTorch >= 1.6) is read, after its declared sizes are
    checked: the legacy format allocates whatever sizes its pickle declares before reading them,
    so its cost cannot be bounded before parsing.
    """
    check_regular(path)
    if not zipfile.is_zipfile(path):
        raise NNVitalsError(
            f"{path}: not a readable PyTorch checkpoint (not a zip archive); nnvitals reads state dicts "
            "saved by torch.save (PyTorch >= 1.6; re-save legacy checkpoints) and .safetensors"
        )
    check_zip(path, str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "weights_only" in str(e).lower():
            raise NNVitalsError(
                f"{path}: refused: this pickle asks to load objects other than tensors "
                "(it may run code); nnvitals only reads plain state dicts with weights_only=True "
                "— save model.state_dict() or use .safetensors"
            ) from None
        raise NNVitalsError(f"{path}: not a PyTorch state dict (its pickle is damaged)") from None
    except RecursionError:
        raise NNVitalsError(f"{path}: not a readable PyTorch checkpoint (nested too deeply)") from None
    except MemoryError:
        raise NNVitalsError(
            f"{path}: refused: loading it would need more memory than this machine has"
        ) from None
    except Exception as e:  # torch raises many types (KeyError, RuntimeError, ...) on non-checkpoints
        raise NNVitalsError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}); expected a state dict "
            "saved with torch.save"
        ) from None
    if isinstance(obj, torch.nn.Module):  # pragma: no cover - weights_only forbids this
        obj = obj.state_dict()
    if isinstance(obj, dict) and len(obj) and all(isinstance(k, str) for k in obj):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = dict(_flatten_tensors(obj, str(path))) if isinstance(obj, dict) else {}
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
    """A ``torch.export`` program (``.pt2``), inspected first, loaded without unpickling objects."""
    check_regular(path)
    if not zipfile.is_zipfile(path):
        raise NNVitalsError(f"{path}: not a torch.export program (.pt2 files are zip archives)")
    check_pt2(path)
    try:
        with _weights_only_loads():
            return torch.export.load(str(path))
    except pickle.UnpicklingError:
        raise NNVitalsError(
            f"{path}: refused: its weights ask to unpickle objects other than tensors (may run code)"
        ) from None
    except RecursionError:
        raise NNVitalsError(f"{path}: not a readable torch.export program (nested too deeply)") from None
    except Exception as e:  # torch raises many types for malformed archives
        raise NNVitalsError(
            f"{path}: not a readable torch.export program ({type(e).__name__}); expected a file "
            "written by torch.export.save"
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

"""Devices: validating a device string, preparing CUDA once, float32 exactness, per-thread streams.

Every analysis takes ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``) and runs its
kernels there, from the runner's pool threads. Three things have to be right before those
threads start, and this module is the one place that does them:

1. **Validation** (:func:`parse_device`): a device string that is malformed, names a CUDA
   index the machine does not have, or an accelerator that is not there is refused in one
   line (:class:`~analyses.core.errors.NNVitalsError`).
2. **Preparation** (:func:`prepare_device`): CUDA creates its context and its library
   handles lazily, on first use, and some of that is not thread-safe: several pool threads
   making their first ``torch.linalg.eigvalsh`` call at once failed with ``RuntimeError: lazy
   wrapper should be called at most once`` (torch loads its CUDA linear-algebra library on
   first use). So, once per device and under a lock, the main thread initialises CUDA and
   touches every lazily created handle the analyses use: cuBLAS (a matmul and a batched
   matmul), cuSOLVER (``eigvalsh`` on one matrix, on a small batch and on a Jacobi-sized one,
   ``svdvals``, ``cholesky``, ``qr``), cuDNN (a tiny convolution) and cuFFT (a tiny ``fft``).
3. **float32 means float32** (:func:`float32_mode`): on Ampere and later GPUs PyTorch may run
   float32 matmuls and convolutions on TF32 tensor cores (10 mantissa bits): cuDNN convolutions
   do by default, which made GPU orbit scores differ from the CPU's by 1e-3. While an analysis
   runs on CUDA, nnvitals turns TF32 off for matmuls (cuBLAS) and cuDNN (convolutions and RNNs)
   and sets the float32 matmul precision to ``"highest"``; when the last running analysis ends,
   the caller's settings are restored. **Opt-in:** ``allow_tf32=True`` on an analysis, or the
   environment variable ``NNVITALS_ALLOW_TF32=1`` for every analysis, lets them use TF32
   (faster, about 1e-3 relative error in float32 products). Because that changes results,
   an analysis that runs with TF32 on CUDA stores its result under another cache key. When
   several analyses run at once (app sessions), exactness wins: TF32 is on only while every
   running CUDA analysis allows it. The settings are process-wide flags of PyTorch; they are
   written through the legacy setters (``torch.backends.cuda.matmul.allow_tf32``,
   ``torch.backends.cudnn.allow_tf32``) *and*, where this PyTorch has it, the newer
   ``fp32_precision`` API, always consistently: PyTorch >= 2.9 raises an error at the next
   cuBLAS call when the two disagree.

Per-thread streams (:func:`thread_stream`): work issued from several pool threads on the one
default stream is serialised by the GPU; each worker thread gets its own CUDA stream instead,
so the eigensolves, matmuls and copies of concurrent tasks overlap.

Dask workers are other processes: task functions call :func:`ensure_ready` first, which
prepares the device in that process and, when no analysis run is active there (a worker
process), applies the float32 mode for the rest of the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .errors import NNVitalsError

#: environment variable that lets every analysis use TF32 on CUDA (``1``/``true``/``yes``/``on``)
TF32_ENV = "NNVITALS_ALLOW_TF32"

_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(?::(\d{1,4}))?$")
_prepare_lock = threading.Lock()
_prepared: set[str] = set()


# --------------------------------------------------------------------------- parsing
def parse_device(spec: str | torch.device | None, where: str = "device") -> torch.device:
    """The ``torch.device`` for ``spec``, or one clear :class:`NNVitalsError` line.

    Accepted: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (N < the number of visible GPUs), ``"mps"``.
    A device that this machine lacks is refused with what to use instead.
    """
    if isinstance(spec, torch.device):
        text = str(spec)
    elif spec is None:
        text = "cpu"
    elif isinstance(spec, str):
        text = spec.strip().lower()
    else:
        raise NNVitalsError(f"{where}: got {type(spec).__name__}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    m = _DEVICE_RE.match(text)
    shown = text if len(text) <= 40 and text.isprintable() else ascii(text[:40])
    if m is None:
        raise NNVitalsError(f"{where} {shown!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise NNVitalsError(f"{where} {shown!r}: the CPU has no index; use 'cpu'")
        return torch.device("cpu")
    if kind == "mps":
        if index not in (None, "0"):
            raise NNVitalsError(f"{where} {shown!r}: expected 'mps' (one Apple GPU)")
        if not torch.backends.mps.is_available():
            raise NNVitalsError(f"{where} {shown!r}: MPS is not available on this machine; use 'cpu'")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise NNVitalsError(f"{where} {shown!r}: CUDA is not available on this machine; use 'cpu'")
    count = torch.cuda.device_count()
    i = int(index) if index is not None else torch.cuda.current_device()
    if i >= count:
        raise NNVitalsError(
            f"{where} {shown!r}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", i)


# --------------------------------------------------------------------------- preparation
def _touch_cuda(dev: torch.device) -> None:
    """Create, on ``dev``, every lazily initialised CUDA library handle the analyses use."""
    import torch.nn.functional as F

    with torch.cuda.device(dev):
        a = torch.arange(1.0, 17.0, device=dev).reshape(4, 4)
        spd = a @ a.mT + torch.eye(4, device=dev)  # cuBLAS
        torch.bmm(spd.expand(2, 4, 4), spd.expand(2, 4, 4))  # batched cuBLAS
        torch.linalg.eigvalsh(spd)  # cuSOLVER syevd (loads torch's CUDA linalg library)
        torch.linalg.eigvalsh(spd.expand(3, 4, 4))  # syevjBatched
        big = torch.eye(40, device=dev) * 2
        torch.linalg.eigvalsh(big)  # syevj (float32 sizes 32..512)
        torch.linalg.eigvalsh(big.double())
        torch.linalg.svdvals(a)
        torch.linalg.cholesky(spd)
        torch.linalg.qr(a)
        x = torch.ones((1, 1, 5, 5), device=dev)
        F.conv2d(x, torch.ones((1, 1, 3, 3), device=dev), padding=1)  # cuDNN
        F.conv_transpose2d(x, torch.ones((1, 1, 3, 3), device=dev), padding=1)
        torch.fft.fftn(x)  # cuFFT
        torch.cuda.synchronize(dev)


def prepare_device(spec: str | torch.device | None, where: str = "device") -> torch.device:
    """Validate ``spec`` and, for CUDA, initialise CUDA and its library handles on that device
    once per process, under a lock, before any pool thread uses it (module docstring).
    Idempotent and cheap after the first call; returns the device."""
    if isinstance(spec, torch.device) and spec.type == "cuda" and str(spec) in _prepared:
        return spec
    dev = parse_device(spec, where)
    if dev.type != "cuda":
        return dev
    key = str(dev)
    if key in _prepared:
        return dev
    with _prepare_lock:
        if key not in _prepared:
            try:
                torch.cuda.init()
                _touch_cuda(dev)
            except NNVitalsError:
                raise
            except Exception as e:  # a broken driver or device: one line, not a traceback
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise NNVitalsError(
                    f"{where} {str(dev)!r}: CUDA failed to initialise ({first[:200]})"
                ) from None
            _prepared.add(key)
    return dev


def is_prepared(spec: str | torch.device) -> bool:
    """Whether :func:`prepare_device` has run for this device in this process (CPU/MPS: always)."""
    dev = torch.device(spec)
    return dev.type != "cuda" or str(dev if dev.index is not None else torch.device("cuda", 0)) in _prepared


# --------------------------------------------------------------------------- float32 exactness
def env_allows_tf32() -> bool:
    """Whether ``NNVITALS_ALLOW_TF32`` opts every analysis in to TF32."""
    return os.environ.get(TF32_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def tf32_allowed(param_value: bool | None) -> bool:
    """The effective opt-in: the analysis's ``allow_tf32`` or the environment variable."""
    return bool(param_value) or env_allows_tf32()


def _has_new_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        getattr(torch.backends.cudnn, "conv", None), "fp32_precision"
    )


def tf32_state() -> dict[str, Any]:
    """The current float32 precision flags (for tests and reports): TF32 for cuBLAS matmuls,
    TF32 for cuDNN, and the float32 matmul precision."""
    return {
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }


def _save() -> dict[str, Any]:
    saved: dict[str, Any] = {}
    if _has_new_api():
        b = torch.backends
        saved["new"] = (
            b.cuda.matmul.fp32_precision,
            b.cudnn.conv.fp32_precision,
            getattr(getattr(b.cudnn, "rnn", None), "fp32_precision", None),
        )
    # the legacy values; their getters raise when the caller left the legacy and new flags
    # disagreeing: then only the new ones are restored (the disagreement with them)
    try:
        saved["precision"] = torch.get_float32_matmul_precision()
    except RuntimeError:
        saved["precision"] = None
    try:
        saved["cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        saved["cudnn"] = None
    return saved


def _apply(allow: bool) -> None:
    """Set TF32 for cuBLAS and cuDNN consistently through both APIs."""
    torch.backends.cuda.matmul.allow_tf32 = allow  # legacy: sets the matmul precision and the new flag
    torch.backends.cudnn.allow_tf32 = allow
    torch.set_float32_matmul_precision("high" if allow else "highest")
    if _has_new_api():
        value = "tf32" if allow else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
        rnn = getattr(torch.backends.cudnn, "rnn", None)
        if rnn is not None and hasattr(rnn, "fp32_precision"):
            rnn.fp32_precision = value


def _restore(saved: dict[str, Any]) -> None:
    """Legacy flags first (their setters also write the new ones), then the new flags as they were."""
    if saved["precision"] is not None:
        torch.set_float32_matmul_precision(saved["precision"])
    if saved["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]
    if "new" in saved:
        mm, conv, rnn = saved["new"]
        torch.backends.cuda.matmul.fp32_precision = mm
        torch.backends.cudnn.conv.fp32_precision = conv
        if rnn is not None:
            torch.backends.cudnn.rnn.fp32_precision = rnn


_mode_lock = threading.Lock()
_users = {"exact": 0, "tf32": 0}
_saved: dict[str, Any] | None = None
_applied: bool | None = None  # the TF32 setting nnvitals last applied (None: the caller's own)
_kept = False  # a worker process keeps the mode once applied (see ensure_ready)


def _update_locked() -> None:
    global _saved, _applied
    want = None
    if _users["exact"]:
        want = False
    elif _users["tf32"]:
        want = True
    if want is None:
        if _saved is not None and not _kept:
            _restore(_saved)
            _saved, _applied = None, None
        return
    if _saved is None:
        _saved = _save()
    if _applied is not want:
        _apply(want)
        _applied = want


@contextlib.contextmanager
def float32_mode(allow_tf32: bool = False) -> Iterator[None]:
    """TF32 off (default) or on for the duration, reference-counted across threads (module doc).

    The last user to leave restores the flags the process had before the first one entered.
    """
    kind = "tf32" if allow_tf32 else "exact"
    with _mode_lock:
        _users[kind] += 1
        _update_locked()
    try:
        yield
    finally:
        with _mode_lock:
            _users[kind] -= 1
            _update_locked()


def run_active() -> bool:
    """Whether an analysis run holds a :func:`float32_mode` in this process."""
    return bool(_users["exact"] or _users["tf32"])


@contextlib.contextmanager
def device_session(spec: str | torch.device | None, allow_tf32: bool = False) -> Iterator[torch.device]:
    """What :meth:`~analyses.core.analysis.Analysis.run` wraps its runner in: the device prepared
    (:func:`prepare_device`) and, on CUDA, the float32 mode (:func:`float32_mode`)."""
    dev = prepare_device(spec)
    if dev.type != "cuda":
        yield dev
        return
    with float32_mode(allow_tf32):
        yield dev


def ensure_ready(spec: str | torch.device | None, allow_tf32: bool | None = False) -> torch.device:
    """For task functions (which may run in a Dask worker process): prepare the device in this
    process and, on CUDA when no run is active here (a worker process), apply the float32 mode
    for the rest of the process. In the process that runs the analysis it only validates."""
    global _saved, _applied, _kept
    dev = prepare_device(spec)
    if dev.type == "cuda" and not run_active():
        with _mode_lock:
            if not run_active():
                want = tf32_allowed(allow_tf32)
                if _applied is not want:
                    if _saved is None:
                        _saved = _save()
                    _apply(want)
                    _applied = want
                _kept = True
    return dev


# --------------------------------------------------------------------------- streams
_tls = threading.local()


def _stream_for(dev: torch.device):
    streams = getattr(_tls, "streams", None)
    if streams is None:
        streams = _tls.streams = {}
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    s = streams.get(idx)
    if s is None:
        s = streams[idx] = torch.cuda.Stream(device=torch.device("cuda", idx))
    return s


@contextlib.contextmanager
def thread_stream(spec: str | torch.device | None) -> Iterator[Any]:
    """Run the body on this thread's own CUDA stream of ``spec`` (a no-op off CUDA), then wait
    for it: tensors made inside are ready for any stream (and the host) afterwards."""
    dev = torch.device(spec) if spec is not None else torch.device("cpu")
    if dev.type != "cuda":
        yield None
        return
    s = _stream_for(dev)
    s.wait_stream(torch.cuda.current_stream(dev))  # work queued before (e.g. by this thread) first
    try:
        with torch.cuda.stream(s):
            yield s
    finally:
        s.synchronize()


def synchronize(spec: str | torch.device | None) -> None:
    """Wait for every stream of a CUDA device (no-op elsewhere); for timings."""
    dev = torch.device(spec) if spec is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


__all__ = [
    "TF32_ENV",
    "device_session",
    "ensure_ready",
    "env_allows_tf32",
    "float32_mode",
    "is_prepared",
    "parse_device",
    "prepare_device",
    "run_active",
    "synchronize",
    "tf32_allowed",
    "tf32_state",
    "thread_stream",
]

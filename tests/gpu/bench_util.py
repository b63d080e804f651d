"""Helpers of the GPU benchmarks (not a test module): host memory peaks, timing, figures with targets.

Peak host memory "beyond the page cache": a checkpoint read with ``read()`` into our own buffers
lands in the kernel's page cache, which is not part of this process's resident set (RSS); what a
run adds to RSS is what it holds itself (read buffers, page-locked staging memory, arrays,
results). ``reset_peak()`` sets the kernel's high-water mark ``VmHWM`` back to the current RSS
(writing 5 to ``/proc/self/clear_refs``, Linux >= 4.0) and returns that baseline; after the run,
``VmHWM - baseline`` is the most the run added at any moment. Where the reset is not allowed,
the baseline is the RSS before the run and the figure is an upper bound of the same quantity.
The baseline is taken after CUDA and its libraries are loaded, so their code is not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

FIGURES: list[dict[str, Any]] = []


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


def reset_peak() -> int:
    """Reset VmHWM to the current RSS when the kernel allows it; returns the baseline RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return rss()


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device=None) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def figure(
    name: str, value: float | None, unit: str = "", target: str = "", ok: bool | None = None, **extra
) -> dict:
    """Print one figure with its target as it comes, and keep it for the JSON summary."""
    shown = (
        "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"
    )
    verdict = "" if ok is None else ("  [met]" if ok else "  [MISSED]")
    tgt = f"  (target {target})" if target else ""
    extra_text = "".join(f", {k}={v}" for k, v in extra.items() if not isinstance(v, dict | list))
    print(f"FIGURE {name} = {shown} {unit}{tgt}{verdict}{extra_text}", flush=True)
    rec = {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, **extra}
    FIGURES.append(rec)
    return rec


def machine() -> dict[str, Any]:
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cuda_version"] = torch.version.cuda
    return out


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    payload = {**payload, "figures": FIGURES, "machine": machine()}
    text = json.dumps(_clean(payload), indent=1, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print("JSON " + json.dumps(_clean(payload), default=str), flush=True)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def repo_on_path() -> Path:
    repo = Path(__file__).resolve().parents[2]
    for p in (str(repo), str(repo / "tests" / "gpu")):
        if p not in sys.path:
            sys.path.insert(0, p)
    return repo


def parser(doc: str) -> argparse.ArgumentParser:
    """The GPU benchmarks' common options: ``--device`` (CUDA when present), ``--small`` (tiny
    sizes, a CPU dry run) and ``--json`` (where to write the figures)."""
    import torch

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--json", default=None)
    return ap

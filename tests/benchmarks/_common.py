"""Shared helpers for the benchmark scripts (timing, quiet references, output lines).

Not a pytest module (no ``test_`` prefix). Each ``bench_*.py`` imports it from its own folder
(``python tests/benchmarks/bench_x.py`` puts that folder first on ``sys.path``).

Timing on a shared, noisy machine: every measured callable runs several times, interleaved
round-robin with the callables it is compared against (so a burst of load from elsewhere hits
both sides), and the best (minimum) time of each is kept. A ratio is always computed from
timings taken in the same process run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

#: the acceptance check runs with two intra-op threads; so do the benchmarks
THREADS = 2


def acceptance_cnn(seed: int = 1) -> Any:
    """The acceptance check's CNN (conv16-conv16-adaptive pool-linear), seeded; in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


def race(fns: dict[str, tuple[Callable[[], Any], int]], warmup: bool = True) -> dict[str, dict[str, Any]]:
    """Time several callables, interleaved: ``{name: (fn, repeats)}`` -> ``{name: {best, times, cpu, value}}``.

    Round k runs every callable that still has repeats left, in the given order. With
    ``warmup`` each callable runs once untimed first (imports, lazy library setup, page cache).
    ``best`` is the smallest wall time, ``cpu`` the process CPU time of that run (all threads),
    ``value`` the return value of the last run.
    """
    out: dict[str, dict[str, Any]] = {name: {"times": [], "cpus": [], "value": None} for name in fns}
    if warmup:
        for name, (fn, _) in fns.items():
            out[name]["value"] = fn()
    rounds = max(n for _, n in fns.values())
    for k in range(rounds):
        for name, (fn, n) in fns.items():
            if k < n:
                wall, cpu, out[name]["value"] = timed(fn)
                out[name]["times"].append(wall)
                out[name]["cpus"].append(cpu)
    for rec in out.values():
        i = min(range(len(rec["times"])), key=rec["times"].__getitem__)
        rec["best"], rec["cpu"] = rec["times"][i], rec["cpus"][i]
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """One timed call: (wall seconds, process CPU seconds over all threads, return value).

    CPU time is less sensitive to load from other processes than wall time (though threads
    that spin while waiting inflate it); it is reported next to wall time as a cross-check.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - t0, time.process_time() - c0, value


@contextlib.contextmanager
def quiet():
    """Silence a chatty reference (prints, logging, warnings, tqdm) for the duration."""
    buf = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        logging.disable(previous)


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds:.3f} s"


def ratio_line(label: str, ours: float, ref_name: str, ref: float, note: str = "") -> str:
    """``label: ours X s, REF Y s -> Z.Zx faster`` (or ``slower``), plus an optional note."""
    r = ref / ours if ours > 0 else float("inf")
    word = f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"
    line = f"{label}: ours {fmt_s(ours)}, {ref_name} {fmt_s(ref)} -> {word}"
    return f"{line} ({note})" if note else line


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def emit_json(payload: dict[str, Any]) -> None:
    """The final, machine-readable line of every benchmark: one JSON object."""
    payload = {**payload, "machine": machine()}
    print(json.dumps(_strict(payload), default=_jsonable, allow_nan=False), flush=True)


def _strict(x: Any) -> Any:
    """NaN / inf -> null, so the line is strict JSON for any parser."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    return x


def _jsonable(x: Any) -> Any:
    try:
        return _strict(float(x))
    except (TypeError, ValueError):
        return str(x)

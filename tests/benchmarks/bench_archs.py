"""Architecture matrix timings: each of the five analyses on each architecture of ``tests/archs.py``.

The models of the matrix test (``tests/integration/test_arch_matrix.py``: MLP + LayerNorm + GELU,
ResNet-18 with BatchNorm, ResNet-20 with LayerNorm and with GroupNorm, MobileNetV2-style, ViT, a
GPT-style decoder on token ids, a Conv1d net on signals), trained briefly, exported to ``.pt2``
and run with the matrix's small settings from their command lines. Each cell is timed as the
matrix test runs it (the analysis the CLI makes, run, and its tables, summary and result
written; no figures), or with ``--cli`` through the whole CLI, figures included. The best of
``--repeats`` runs is shown, with the model's own forward pass over the cell's test data next
to it for scale. A cell that is refused shows ``refused`` (its line below the table), a bug
``BUG``. No assertions, no targets: a table to read.

    python tests/benchmarks/bench_archs.py [--quick] [--cli] [--repeats N] [--only vit,gpt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, THREADS, emit_json, fmt_s

sys.path.insert(0, str(REPO / "tests"))

import archs  # noqa: E402 - tests/ is put on the path just above


def forward_seconds(files: archs.ArchFiles, repeats: int = 5) -> float:
    """Best time of one forward pass of the exported model over its whole test file."""
    import numpy as np

    program = torch.export.load(str(files.models[0]))
    module = program.module()
    with np.load(files.test) as d:
        x = torch.from_numpy(d["x"] if "x" in d.files else d["ids"])  # token ids: ``ids`` (archs.save_npz)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run per cell (the default is --repeats)")
    ap.add_argument("--cli", action="store_true", help="time the whole CLI, figures included")
    ap.add_argument("--repeats", type=int, default=2, help="runs per cell; the best is shown (default 2)")
    ap.add_argument("--only", default="", help="comma-separated architectures (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(archs.ARCHS)
    unknown = [n for n in names if n not in archs.ARCHS]
    if unknown:
        ap.error(f"unknown architecture(s) {', '.join(unknown)}; expected some of {', '.join(archs.ARCHS)}")
    repeats = 1 if args.quick else max(1, args.repeats)
    run = archs.run_cli if args.cli else archs.run_cell

    with tempfile.TemporaryDirectory(prefix="bench_archs_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = archs.write(tmp / "models", names)
        print(f"trained and exported {len(names)} architectures x {len(archs.SEEDS)} seeds in "
              f"{fmt_s(time.perf_counter() - t0)} ({THREADS} threads; {'CLI with figures' if args.cli else 'no figures'})")  # fmt: skip
        cells: dict[str, dict[str, dict]] = {}
        notes = []
        for name in names:
            cells[name] = {"forward": {"seconds": forward_seconds(files[name])}}
            for analysis in archs.ANALYSES:
                best, outcome = float("inf"), None
                for k in range(repeats):
                    outcome = run(archs.argv(analysis, files[name], tmp / "out" / name / analysis / str(k)))
                    best = min(best, outcome.seconds)
                    if outcome.kind != "ran":
                        break
                cells[name][analysis] = {"kind": outcome.kind, "seconds": best}
                if outcome.kind != "ran":
                    notes.append(f"  {name} x {analysis}: {outcome.kind}: {outcome.reason}")
                print(f"  {name} x {analysis}: {outcome.kind} {fmt_s(best)}", flush=True)

    width = max(map(len, names)) + 2
    columns = ["forward", *archs.ANALYSES]
    print()
    print("".ljust(width) + "".join(c.rjust(14) for c in columns))
    for name in names:
        row = []
        for c in columns:
            cell = cells[name][c]
            kind = cell.get("kind", "ran")
            if kind != "ran":
                row.append({"refused": "refused", "bug": "BUG"}[kind])
            elif cell["seconds"] < 0.1:
                row.append(f"{cell['seconds'] * 1e3:.2f} ms")
            else:
                row.append(fmt_s(cell["seconds"]))
        print(name.ljust(width) + "".join(v.rjust(14) for v in row))
    if notes:
        print("\n".join(["", "not run:", *notes]))
    emit_json({"benchmark": "archs", "cli": args.cli, "repeats": repeats, "cells": cells})
    return 0


if __name__ == "__main__":
    sys.exit(main())

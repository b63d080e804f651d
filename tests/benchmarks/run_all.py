"""Run every ``bench_*.py`` in this folder, one subprocess each (``make bench``).

Each benchmark's output is passed through as it comes; its last line is a JSON object, and
those are gathered into one JSON line at the end (and into ``--out FILE`` when given).

    python tests/benchmarks/run_all.py [--quick] [--only farms,stream] [--out bench.json] [--strict]

Exit status: 1 when a benchmark fails (crashes or prints no JSON line); with ``--strict`` also
when a target is missed. Missed targets are otherwise reported, not fatal: timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(script: Path, quick: bool) -> tuple[int, dict | None, float]:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    print(f"== {script.name}{' --quick' if quick else ''}", flush=True)
    t0 = time.perf_counter()
    last = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                last = line
    seconds = time.perf_counter() - t0
    payload = None
    if last is not None:
        try:
            payload = json.loads(last)
        except json.JSONDecodeError:
            payload = None
    print(f"== {script.name}: exit {proc.returncode} in {seconds:.0f} s", flush=True)
    return proc.returncode, payload, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the nnvitals benchmarks.")
    ap.add_argument("--quick", action="store_true", help="each benchmark in its --quick mode (~1 min each)")
    ap.add_argument("--only", default="", help="comma-separated names, e.g. 'spectra,farms'")
    ap.add_argument("--out", default=None, help="also write the gathered JSON to this file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed, missed, gathered = [], [], []
    for script in scripts:
        code, payload, seconds = run_one(script, args.quick)
        if code != 0 or payload is None:
            failed.append(script.name)
            continue
        payload["wall_s"] = round(seconds, 1)
        gathered.append(payload)
        missed += payload.get("targets_missed", [])
    summary = {
        "mode": "quick" if args.quick else "full",
        "benchmarks": gathered,
        "failed": failed,
        "targets_missed": missed,
    }
    line = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(f"== done: {len(gathered)} ran, failed {failed or 'none'}, targets missed {missed or 'none'}")
    print(line, flush=True)
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())

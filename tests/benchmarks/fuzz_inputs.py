"""Fuzz nnvitals with thousands of seeded malformed models and data files (issue 10).

    .venv/bin/python tests/benchmarks/fuzz_inputs.py [--cases 2400] [--seed 0] [--workers 2]
        [--families safetensors,pt2] [--save-failures DIR] [--base DIR] [--json OUT]

Cases come from :mod:`tests.fuzz.generators` (every explicit malformation of each family, with
each of the family's targets, then seeded random mutations) and run in at most two worker
subprocesses through :mod:`tests.fuzz.harness`. Targets: 0 uncaught exceptions, 0 cases over
10 s, peak RSS under 1 GB per case, no payload ever runs (marker files), NNVitalsError
messages on one line without raw file bytes.

Prints one table row per family (cases, passed, uncaught, over 10 s, hangs, memory, markers,
bad messages, crashes, max peak RSS absolute and above the worker's baseline, slowest case),
then the failures grouped by cause and one line per failing case, then one JSON line. Exits 1
on any failure. ``--save-failures DIR`` keeps each failing case's files, its record and the
command that reproduces it in-process (``python -m tests.fuzz.harness --repro CASE_ID``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzz import generators as G  # noqa: E402
from tests.fuzz import harness as H  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2400, help="number of cases (default 2400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (at most 2)")
    ap.add_argument("--families", default="", help="comma-separated families (default: all)")
    ap.add_argument(
        "--save-failures", type=Path, default=None, metavar="DIR", help="keep failing inputs here"
    )
    ap.add_argument("--base", type=Path, default=None, help="reuse this directory of base files")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every case's record here")
    ap.add_argument("--time-limit", type=float, default=H.TIME_LIMIT, help="seconds a case may take (10)")
    ap.add_argument(
        "--timeout", type=float, default=None, help="kill a case after this many seconds (limit+5)"
    )
    ap.add_argument("--quiet", action="store_true", help="no per-failure progress lines")
    a = ap.parse_args(argv)

    families = [f for f in a.families.split(",") if f] or None
    unknown = [f for f in families or [] if f not in G.FAMILIES]
    if unknown:
        ap.error(
            f"unknown families {unknown}; expected some of "
            f"{[f for f in G.FAMILIES if not G.FAMILIES[f].hidden]}"
        )
    cases = G.build_cases(a.cases, families)
    print(f"fuzz: {len(cases)} cases, seed {a.seed}, {min(a.workers, 2)} workers", flush=True)
    t0 = time.perf_counter()
    step = max(1, len(cases) // 20)

    def progress(done: int, total: int, r: H.CaseResult) -> None:
        if r.failed and not a.quiet:
            print(f"  FAIL {r.case_id} [{r.target}] {r.status}: {'; '.join(r.problems)[:200]}", flush=True)
        if done % step == 0 or done == total:
            print(f"  {done}/{total} cases, {time.perf_counter() - t0:.0f} s", flush=True)

    results = H.run_cases(
        cases,
        seed=a.seed,
        workers=a.workers,
        base=a.base,
        time_limit=a.time_limit,
        timeout=a.timeout,
        save_failures=a.save_failures,
        progress=progress,
    )
    wall = time.perf_counter() - t0
    print()
    print(H.format_table(results))
    failed = [r for r in results if r.failed]
    if failed:
        print()
        print(f"FAILURES by cause ({len(failed)} cases):")
        print(H.format_failures(results))
        if a.save_failures:
            print(f"\nfailing inputs kept in {a.save_failures}")
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    summary = H.summarize(results)
    print()
    print(
        json.dumps(
            {
                "benchmark": "fuzz_inputs",
                "cases": len(results),
                "seed": a.seed,
                "wall_s": round(wall, 1),
                "failed": len(failed),
                "families": summary,
                "targets_missed": [
                    k
                    for k, v in (
                        ("uncaught", summary["ALL"]["uncaught"]),
                        ("over_10s", summary["ALL"]["over_10s"]),
                        ("rss_over_1GB", summary["ALL"]["memory"]),
                        ("marker", summary["ALL"]["marker"]),
                    )
                    if v
                ],
                "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
            }
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Summarise a ``tests/gpu/run.sh`` log: every FIGURE line with its target, the pytest outcome and
each stage's exit status, printed as a table and written as JSON (not a test module).

    python tests/gpu/summarize.py RUN_LOG SUMMARY_JSON
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FIG = re.compile(r"^FIGURE (?P<name>.*?) = (?P<value>\S+) (?P<unit>[^\s,]*)(?P<rest>.*)$")
STAGE = re.compile(r"^=== stage (?P<name>\S+) rc=(?P<rc>-?\d+) wall=(?P<wall>\d+)s")
PYTEST = re.compile(r"=+ (?P<summary>.*(passed|failed|error|skipped).*) in [\d.]+s")


def parse(text: str) -> dict:
    figures, stages, pytest_lines, results = [], {}, [], []
    for line in text.splitlines():
        m = FIG.match(line)
        if m:
            rest = m.group("rest")
            target = re.search(r"\(target ([^)]*)\)", rest)
            verdict = "met" if "[met]" in rest else ("MISSED" if "[MISSED]" in rest else "")
            try:
                value = float(m.group("value"))
            except ValueError:
                value = None
            extras = dict(re.findall(r"(?:,\s*|\s+)(\w+)=([^,]+)", rest))
            for k, v in extras.items():
                try:
                    extras[k] = float(v)
                except ValueError:
                    pass
            figures.append(
                {"name": m.group("name"), "value": value, "unit": m.group("unit"),
                 "target": target.group(1) if target else "", "verdict": verdict, "details": extras}
            )  # fmt: skip
            continue
        m = STAGE.match(line)
        if m:
            stages[m.group("name")] = {"rc": int(m.group("rc")), "wall_s": int(m.group("wall"))}
            continue
        m = PYTEST.search(line)
        if m:
            pytest_lines.append(m.group("summary"))
        if re.match(r"^tests/\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED)", line):
            results.append(line.split(" [")[0])
    return {"figures": figures, "stages": stages, "pytest": pytest_lines, "tests": results}


def main(argv: list[str]) -> int:
    log, out = Path(argv[0]), Path(argv[1])
    summary = parse(log.read_text(errors="replace") if log.exists() else "")
    out.write_text(json.dumps(summary, indent=1))
    print("\n==================== summary ====================")
    for name, st in summary["stages"].items():
        flag = "ok" if st["rc"] == 0 else ("TIMED OUT" if st["rc"] in (124, 137) else f"rc={st['rc']}")
        print(f"stage {name:<14} {flag:<10} {st['wall_s']:>4} s")
    for p in summary["pytest"]:
        print(f"pytest: {p}")
    for t in summary["tests"]:
        if "FAILED" in t or "ERROR" in t:
            print(f"  {t}")
    for f in summary["figures"]:
        v = "n/a" if f["value"] is None else f"{f['value']:.4g}"
        tgt = f"  target {f['target']}" if f["target"] else ""
        verdict = f"  [{f['verdict']}]" if f["verdict"] else ""
        details = ", ".join(
            f"{k}={d:.4g}" if isinstance(d, float) else f"{k}={d}" for k, d in f["details"].items()
        )
        print(f"{f['name']}: {v} {f['unit']}{tgt}{verdict}" + (f"  ({details})" if details else ""))
    print(f"summary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""tests/gpu/run.sh end to end on the CPU (``--cpu-dry-run``): tiny sizes, CUDA-only parts skipped,
the imports the GPU image lacks blocked; every stage must finish and print its figures. On a
machine with CUDA the real run is the check, so this one is skipped there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the real GPU run checks the script")
@pytest.mark.skipif(bool(os.environ.get("NNVITALS_IN_RUN_SH")), reason="already inside run.sh")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash, timeout and /proc")
def test_cpu_dry_run(tmp_path):
    env = dict(
        os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), SITE=str(tmp_path / "site")
    )
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", "tests/gpu/run.sh", "--cpu-dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["stages"]) == {"env", "tests", "spectra", "orbits", "bounds", "connectivity"}
    bad = {k: v for k, v in summary["stages"].items() if v["rc"] != 0}
    assert not bad, (bad, proc.stdout[-4000:])
    names = " | ".join(f["name"] for f in summary["figures"])
    for part in ("spectra ESD", "ESD + FARMS", "peak host RSS", "WeightWatcher", "70B-shaped estimate",
                 "orbits CNN", "orbits ResNet-18", "Lipschitz batched Jacobians", "connectivity path"):  # fmt: skip
        assert part in names, part
    assert all(f["value"] is not None for f in summary["figures"] if "WeightWatcher" not in f["name"])
    assert any("passed" in p for p in summary["pytest"])
    assert "blocked in the CPU dry run" not in proc.stdout  # nothing needed a package the image lacks
    assert "Traceback" not in proc.stdout

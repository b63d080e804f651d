"""hold_freed_memory: passes after the first reuse the memory their activations were freed from.

Each case runs in a process of its own (the allocator's thresholds are process-wide, and this test
session must keep glibc's defaults for the memory measurements of other tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from analyses.core import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

CHILD = r"""
import json, resource, sys
import torch
from torch import nn
from analyses.core.allocator import hold_freed_memory
applied = hold_freed_memory() if sys.argv[1] == "hold" else False
torch.set_num_threads(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
x = torch.randn(128, 3, 32, 32)  # activations of 16.8 MB each
with torch.no_grad():
    net.eval()(x)  # the first pass faults its memory in either way
    before = faults()
    for _ in range(3):
        net(x)
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def _run(mode: str, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_passes_after_the_first_reuse_freed_memory():
    """Three more forward passes of a small CNN over 128 images: under glibc's defaults every
    activation is mapped and faulted in again (about 40k page faults here); held, about a tenth."""
    pages = 3 * 3 * (128 * 32 * 32 * 32 * 4) // os.sysconf("SC_PAGE_SIZE")  # 3 passes, ~3 activations
    default = _run("default")
    held = _run("hold")
    assert not default["applied"] and held["applied"]
    assert default["faults"] > 0.5 * pages, default  # the activations faulted in again, every pass
    assert held["faults"] < 0.3 * default["faults"], (held, default)


def test_turned_off_by_the_environment():
    assert _run("hold", **{allocator.ENV: "0"})["applied"] is False

"""Shared by the CLI tests: run ``nnvitals`` in parallel subprocesses, check one-line errors.

Not a test module (no ``test_`` prefix); the CLI tests import it from their own folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NNVITALS = Path(sys.executable).with_name("nnvitals")


def run_all(cases: dict[str, list], cache: Path, **env: str) -> dict[str, subprocess.CompletedProcess]:
    """Start ``nnvitals *args`` for every case at once (a fresh result cache, no debug tracebacks,
    ``env`` added), then wait for all: the finished processes by case name."""
    environ = dict(os.environ, NNVITALS_CACHE=str(cache), **env)
    environ.pop("NNVITALS_DEBUG", None)
    procs = {
        k: subprocess.Popen(
            [str(NNVITALS), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        for k, args in cases.items()
    }
    done = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        done[k] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return done


def assert_one_error_line(stderr: str, text: str) -> None:
    """Bad input: exactly one line, ``nnvitals: error: ...`` containing ``text``, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnvitals: error:") and text in lines[0], stderr
    assert "Traceback" not in stderr

"""``nnvitals`` refuses every hostile ``.pt2`` (tests/evil_pt2.py) in one line; nothing in it runs."""

from __future__ import annotations

from cli_helpers import assert_one_error_line, run_all
from evil_pt2 import write_payloads


def test_the_cli_refuses_each_payload_in_one_line(tmp_path):
    files, marker = write_payloads(tmp_path / "evil", tmp_path / "MARKER"), tmp_path / "MARKER"
    done = run_all({k: ["spectra", p, "--out", tmp_path / k] for k, p in files.items()}, tmp_path / "cache")
    for kind, proc in done.items():
        assert proc.returncode == 1, (kind, proc.stderr)
        assert_one_error_line(proc.stderr, "refused")
        assert not (tmp_path / kind / "summary.json").exists()
    assert not marker.exists()

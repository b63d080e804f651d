"""The ``nnvitals`` console script, run for real in subprocesses on real files.

Every invocation of the module starts at once (the ``runs`` fixture) and the tests read their
results, so the file costs about one interpreter start-up per core rather than one per case.
The exit-code paths that need a fault injected, and the comparison, call ``main()`` in-process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import NNVITALS, run_all

from dashboard import cli

WW_COLUMNS = {"name", "layer_id", "N", "M", "Q", "status", "alpha", "xmin", "D", "alpha_weighted", "log_norm",
              "log_spectral_norm", "stable_rank", "entropy", "warning"}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory, mlp_safetensors) -> dict[str, Path]:
    """Good and bad model files."""
    d = tmp_path_factory.mktemp("inputs")
    data = mlp_safetensors.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (d / "textdir").mkdir()
    (d / "textdir" / "model.safetensors").write_text("these are not the weights you are looking for\n")
    (d / "empty").mkdir()
    marker = d / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create the marker file if unpickled

    torch.save({"weight": Evil()}, d / "evil.pt")
    (d / "afile").write_text("not a directory\n")
    return {
        "good": mlp_safetensors,
        "truncated": d / "truncated.safetensors",
        "text": d / "textdir" / "model.safetensors",
        "empty": d / "empty",
        "evil": d / "evil.pt",
        "marker": marker,
        "afile": d / "afile",
        "missing": d / "nope" / "model.safetensors",
        "out": tmp_path_factory.mktemp("out"),
    }


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    out = files["out"]
    cases = {
        "st": ["spectra", files["good"], "--out", out / "st", "--farms", "--randomize", "--formats", "svg"],
        "demo": ["spectra", "mlp", "--out", out / "demo"],
        "serve_bad_dir": ["serve", "--port", "0", "--allow-dir", files["missing"]],
        "version": ["--version"],
        "missing": ["spectra", files["missing"], "--out", out / "x"],
        "empty": ["spectra", files["empty"], "--out", out / "x"],
        "text": ["spectra", files["text"], "--out", out / "x"],
        "truncated": ["spectra", files["truncated"], "--out", out / "x"],
        "evil": ["spectra", files["evil"], "--out", out / "x"],
        "xmin_rule": ["spectra", files["good"], "--xmin-rule", "best", "--out", out / "x"],
        "formats": ["spectra", files["good"], "--formats", "svg,gif", "--out", out / "x"],
        "out_is_file": ["spectra", files["good"], "--out", files["afile"]],
        "no_command": [],
    }
    return run_all(cases, tmp_path_factory.mktemp("cache"))


def ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run


def test_console_script_exists():
    assert NNVITALS.is_file(), "the nnvitals console script is installed with the package"


def test_spectra_on_a_safetensors_file(runs, files):
    run = ok(runs["st"])
    d = files["out"] / "st"
    table = pd.read_csv(d / "spectra.csv")
    assert list(table["name"]) == ["0.weight", "2.weight", "4.weight"]
    assert (table["status"] == "ok").all()
    assert WW_COLUMNS | {"alpha_plain", "rand_distance", "bulk_max"} <= set(table.columns)
    assert list(table["N"]) == [128, 128, 96] and list(table["M"]) == [64, 96, 10]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["summary"]["layers_analysed"] == 3 and summary["meta"]["params"]["farms"] is True
    for stem in ("alpha_by_layer", "esd_grid", "farms_vs_plain", "alpha_vs_aspect"):
        assert (d / f"{stem}.svg").read_text().rstrip().endswith("</svg>"), stem
        assert not (d / f"{stem}.html").exists()  # only the formats asked for
    assert "3 analysed, 0 skipped" in run.stdout and "mean alpha" in run.stdout
    assert "spectra.csv" in run.stdout  # says what it wrote


def test_spectra_on_a_demo_model_writes_offline_figures(runs, files):
    ok(runs["demo"])
    d = files["out"] / "demo"
    table = pd.read_csv(d / "spectra.csv")
    assert len(table) >= 2 and WW_COLUMNS <= set(table.columns)
    names = {p.name for p in d.iterdir()}
    assert names >= {"spectra.csv", "summary.json", "spectra.nnv"}
    assert names >= {f"{stem}.{fmt}" for stem in ("alpha_by_layer", "esd_grid") for fmt in ("svg", "html")}
    html = (d / "esd_grid.html").read_text()  # standalone and offline
    assert "cdn.bokeh.org" not in html and "<script src=" not in html and len(html) > 500_000


def test_serve_with_a_bad_option_is_one_line(runs, files):
    run = runs["serve_bad_dir"]
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-dir" in lines[0] and "Traceback" not in run.stderr, run.stderr


def test_spectra_compare(tmp_path, monkeypatch, capsys):
    # in-process (the same main() the console script calls): one interpreter start-up less
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "cmp"
    assert cli.main(["spectra-compare", "mlp", "mlp-untrained", "--out", str(d), "--formats", "png,pdf"]) == 0
    out = capsys.readouterr().out
    assert "compared mlp (A) with mlp-untrained (B)" in out and "largest changes in alpha" in out
    table = pd.read_csv(d / "compare.csv")
    assert {"name", "alpha_a", "alpha_b", "alpha_delta", "warning_a", "warning_b"} <= set(table.columns)
    assert ((table["alpha_b"] - table["alpha_a"] - table["alpha_delta"]).abs() < 1e-9).all()
    assert (d / "compare_alpha.png").read_bytes().startswith(b"\x89PNG")
    assert (d / "compare_alpha.pdf").read_bytes().startswith(b"%PDF-")
    assert not (d / "compare_alpha.svg").exists()  # only the formats asked for


def test_version(runs):
    run = ok(runs["version"])
    assert run.stdout.strip().startswith("nnvitals ")


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("missing", 1, "no such file"),
        ("empty", 1, "holds no model"),
        ("text", 1, "not a .safetensors file"),
        ("truncated", 1, "truncated"),
        ("evil", 1, "refused"),
        ("xmin_rule", 2, "--xmin-rule"),
        ("formats", 2, "gif"),
        ("out_is_file", 1, "is a file"),
        ("no_command", 2, "command"),
    ],
)
def test_bad_input_is_one_line(runs, files, case, code, words):
    run = runs[case]
    assert run.returncode == code, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("nnvitals: error: ") and words in lines[0]
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_malicious_pickle_never_runs(runs, files):
    assert runs["evil"].returncode == 1
    assert not files["marker"].exists()


# --------------------------------------------------------------------------- in-process: exit paths
def _boom(exc):
    def cmd(args):
        raise exc

    return cmd


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (RuntimeError("oops"), 3, "bug in nnvitals"),
        (OSError(28, "No space left on device", "out/x.svg"), 1, "out/x.svg"),
    ],  # fmt: skip
)
def test_exit_codes(monkeypatch, capsys, exc, code, words):
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)
    monkeypatch.setattr(cli, "cmd_spectra", _boom(exc))
    assert cli.main(["spectra", "mlp", "--out", "unused"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnvitals: error: ") and words in err[0]


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("NNVITALS_DEBUG", "1")
    monkeypatch.setattr(cli, "cmd_spectra", _boom(RuntimeError("oops")))
    with pytest.raises(RuntimeError, match="oops"):
        cli.main(["spectra", "mlp", "--out", "unused"])

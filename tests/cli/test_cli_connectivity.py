"""``nnvitals connectivity`` run for real in subprocesses, on demo models and .npz files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_error_line, run_all
from safetensors.torch import load_file

from analyses.core.data import load_digits
from analyses.zoo import DEMO_MODELS, ZOO_DIR, load_demo


def _pair() -> tuple[str, str]:
    """The zoo's demo pair when its checkpoints are there, else a trained model and its untrained twin."""
    pair = ("mlp-w64-a", "mlp-w64-b")
    if all(m in DEMO_MODELS and (ZOO_DIR / f"{m}.safetensors").is_file() for m in pair):
        return pair
    return ("mlp", "mlp-untrained")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    d = tmp_path_factory.mktemp("connectivity-cli")
    np.savez(d / "nolabels.npz", x=np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32))
    out = d / "out"
    a, b = _pair()
    cases = {
        "pair": [a, b, "--points", "5", "--formats", "svg", "--out", str(out / "pair")],
        "shapes": ["mlp", "cnn", "--out", str(out / "s")],
        "no_labels": [a, b, "--data", str(d / "nolabels.npz"), "--out", str(out / "n")],
    }  # fmt: skip
    runs = run_all({k: ["connectivity", *a] for k, a in cases.items()}, d / "cache", OMP_NUM_THREADS="1")
    return {k: (r, out) for k, r in runs.items()}


def test_connectivity_writes_tables_summary_figures_and_aligned_b(runs):
    run, out = runs["pair"]
    assert run.returncode == 0, run.stderr
    d = out / "pair"
    table = pd.read_csv(d / "connectivity.csv")
    assert len(table) == 2 * 2 * 5 and set(table["path"]) == {"naive", "matched"}
    summary = json.loads((d / "summary.json").read_text())["summary"]
    assert {"barrier_naive", "barrier_matched", "l2_before", "l2_after"} <= set(summary)
    assert summary["barrier_matched"] <= summary["barrier_naive"] + 1e-9
    layers = pd.read_csv(d / "layers.csv")
    assert {"name", "l2_before", "l2_after", "sv_align_before", "sv_align_after"} <= set(layers.columns)
    for stem in ("path_loss", "path_accuracy", "barriers", "layers"):
        assert "<svg" in (d / f"{stem}.svg").read_text()[:3000], stem
    assert (d / "connectivity.nnv").is_file()
    # the aligned B loads into B's architecture and computes B's function
    a, b = _pair()
    model_b = load_demo(b).eval()
    twin = load_demo(b).eval()
    twin.load_state_dict(load_file(str(d / "model_b_aligned.safetensors")), strict=True)
    x = load_digits(split="test").x
    with torch.no_grad():
        assert (twin(x) - model_b(x)).abs().max().item() < 1e-4
    assert "loss barrier on test: naive" in run.stdout and "wrote" in run.stdout


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [("shapes", 1, "differs in structure"), ("no_labels", 1, "missing array 'y'")],
)
def test_bad_input_is_one_line_and_an_exit_code(runs, case, code, text):
    run, _ = runs[case]
    assert run.returncode == code, (run.returncode, run.stderr)
    assert_one_error_line(run.stderr, text)


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (
            ["assets/zoo/mlp.safetensors", "assets/zoo/mlp-untrained.safetensors"],
            1,
            "carries an architecture",
        ),
        (["mlp", "mlp-untrained", "--points", "1"], 2, "--points"),
        (["mlp", "mlp-untrained", "--test-data", "t.npz"], 2, "--test-data"),
        (["mlp", "mlp-untrained", "--engine", "fast"], 2, "--engine"),
    ],
)
def test_more_bad_input_in_process(tmp_path, capsys, monkeypatch, args, code, text):
    """The same entry point in this process (no interpreter start per case)."""
    from dashboard.cli import main

    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)
    assert main(["connectivity", *args, "--out", str(tmp_path / "o")]) == code
    assert_one_error_line(capsys.readouterr().err, text)


def test_engine_choices_are_the_evaluators():
    """The CLI lists the engines literally (its parser imports no torch); they must stay in step."""
    from analyses.connectivity.path import ENGINES
    from dashboard.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["connectivity"]
    engine = next(a for a in sub._actions if a.dest == "engine")
    assert tuple(engine.choices) == ENGINES and engine.default == "auto"

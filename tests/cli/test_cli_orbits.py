"""``nnvitals orbits`` run for real in subprocesses, on demo models, .pt2 exports and .npz files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_error_line, run_all
from torch import nn


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    d = tmp_path_factory.mktemp("orbits-cli")
    x = torch.rand(24, 1, 8, 8)
    np.savez(d / "data.npz", x=x.numpy(), y=(np.arange(24) % 10).astype(np.int64))
    np.savez(d / "range.npz", x=(x * 255).numpy(), y=np.zeros(24, dtype=np.int64))
    np.savez(d / "flat.npz", x=x.reshape(24, 64).numpy(), y=np.zeros(24, dtype=np.int64))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    batch = torch.export.Dim("b", min=1, max=1 << 16)
    torch.export.save(torch.export.export(m, (x[:2],), dynamic_shapes=({0: batch},)), str(d / "m.pt2"))
    out = d / "out"
    cases = {
        "demo": ["cnn", "mlp", "--data", "digits8", "--steps", "8", "--max-samples", "40", "--out", str(out / "demo")],
        "pt2": [str(d / "m.pt2"), "--data", str(d / "data.npz"), "--group", "shift", "--shift-range", "1",
                "--formats", "svg", "--out", str(out / "pt2")],
        "weights_only": ["assets/zoo/cnn.safetensors", "--out", str(out / "w")],
        "range": ["cnn", "--data", str(d / "range.npz"), "--out", str(out / "r")],
        "flat": ["cnn", "--data", str(d / "flat.npz"), "--out", str(out / "f")],
        "classes": ["cnn", "--data", "digits8", "--classes", "3,x", "--out", str(out / "c")],
        "group": ["cnn", "--group", "shear", "--out", str(out / "g")],
        "not_scores": ["cnn", "--data", "digits16", "--out", str(out / "n")],
    }  # fmt: skip
    runs = run_all({k: ["orbits", *a] for k, a in cases.items()}, d / "cache")
    return {k: (r, out) for k, r in runs.items()}


def test_orbits_on_demo_models_writes_table_summary_and_figures(runs):
    run, out = runs["demo"]
    assert run.returncode == 0, run.stderr
    d = out / "demo"
    table = pd.read_csv(d / "orbits.csv")
    assert len(table) == 2 * 40 * 8
    assert set(table["model"]) == {"cnn", "mlp"} and sorted(table["angle"].unique()) == [
        0,
        45,
        90,
        135,
        180,
        225,
        270,
        315,
    ]
    summary = json.loads((d / "summary.json").read_text())["summary"]
    assert set(summary["models"]) == {"cnn", "mlp"} and summary["elements"] == 8
    for stem in ("aggregate", "samples_0", "samples_1", "individual_widest"):
        assert "<svg" in (d / f"{stem}.svg").read_text()[:3000]
        assert (d / f"{stem}.html").stat().st_size > 10_000
    assert (d / "orbits.nnv").is_file()
    assert "cnn: mean" in run.stdout and "wrote" in run.stdout


def test_orbits_on_an_export_and_npz_shift_grid(runs):
    run, out = runs["pt2"]
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / "pt2" / "orbits.csv")
    assert len(table) == 24 * 9 and {"dx", "dy"} <= set(table)
    assert (out / "pt2" / "heatmap_0.svg").is_file() and not (out / "pt2" / "aggregate.html").exists()


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [
        ("weights_only", 1, "holds weights only"),
        ("range", 1, "must lie in [0, 1]"),
        ("flat", 1, "images of shape (N, C, H, W)"),
        ("classes", 2, "--classes"),
        ("group", 2, "--group"),
        ("not_scores", 1, "failed on images of shape"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(runs, case, code, text):
    run, _ = runs[case]
    assert run.returncode == code, (run.returncode, run.stderr)
    assert_one_error_line(run.stderr, text)

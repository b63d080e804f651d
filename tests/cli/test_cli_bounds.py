"""``nnvitals ibp`` and ``nnvitals lipschitz`` run for real in subprocesses: files written, bad input."""

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
    d = tmp_path_factory.mktemp("bounds-cli")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g)
    np.savez(d / "data.npz", x=x.numpy(), y=(np.arange(24) % 10).astype(np.int64))
    np.savez(d / "range.npz", x=(x * 255).numpy(), y=np.zeros(24, dtype=np.int64))
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    torch.export.save(torch.export.export(conv, (x[:2],)), str(d / "conv.pt2"))
    odd = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Softplus(), nn.Linear(8, 10)).eval()
    torch.export.save(torch.export.export(odd, (x[:2],)), str(d / "softplus.pt2"))
    out = d / "out"
    small = ["--max-samples", "32"]
    cases = {
        "ibp": ["ibp", "mlp", "--eps", "0.02", "--eps-sweep", "0.001,0.01,0.1", *small, "--out", str(out / "ibp")],
        "lip": ["lipschitz", "mlp", "--mixes", "16", "--formats", "svg", *small, "--out", str(out / "lip")],
        "lip_pt2": ["lipschitz", str(d / "conv.pt2"), "--data", str(d / "data.npz"), "--mixes", "4",
                    "--formats", "svg", "--out", str(out / "pt2")],
        "eps": ["ibp", "mlp", "--eps=-0.5", "--out", str(out / "e")],
        "range": ["lipschitz", "mlp", "--data", str(d / "range.npz"), "--data-range", "0,1", "--out", str(out / "r")],
        "op": ["ibp", str(d / "softplus.pt2"), "--data", str(d / "data.npz"), "--out", str(out / "o")],
        "bad_eps_text": ["ibp", "mlp", "--eps", "small", "--out", str(out / "t")],
    }  # fmt: skip
    runs = run_all(cases, d / "cache")
    return {k: (r, out) for k, r in runs.items()}


def test_ibp_writes_table_summary_and_figures(runs):
    run, out = runs["ibp"]
    assert run.returncode == 0, run.stderr
    d = out / "ibp"
    t = pd.read_csv(d / "ibp.csv")
    assert {"name", "kind", "tightness", "box_width", "unstable"} <= set(t)
    assert t["tightness"].dropna().between(0, 1 + 1e-6).all()
    s = json.loads((d / "summary.json").read_text())["summary"]
    assert s["eps"] == 0.02 and s["samples"] == 32 and 0 <= s["tightness"] <= 1
    for stem in ("tightness", "relu_stability", "tightness_vs_eps", "certified_vs_eps"):
        assert "<svg" in (d / f"{stem}.svg").read_text()[:3000]
        assert (d / f"{stem}.html").stat().st_size > 10_000
    assert (d / "ibp.nnv").is_file()
    assert "output tightness" in run.stdout and "wrote 11 files" in run.stdout


def test_lipschitz_writes_tables_summary_and_figures(runs):
    run, out = runs["lip"]
    assert run.returncode == 0, run.stderr
    d = out / "lip"
    t = pd.read_csv(d / "lipschitz.csv")
    assert (t["upper"] >= t["lower_max"] * (1 - 1e-6)).all()
    per = pd.read_csv(d / "jacobian_norms.csv")
    assert len(per) == 32 + 32 + 16 and set(per["split"]) == {"train", "test", "mix"}
    s = json.loads((d / "summary.json").read_text())["summary"]
    assert s["upper"] >= s["lower"] > 0 and s["lower"] == pytest.approx(per["jacobian_norm"].max(), rel=1e-5)
    for stem in ("bounds", "gap", "jacobian_norms", "largest_norm_samples"):
        assert "<svg" in (d / f"{stem}.svg").read_text()[:3000]
    assert "gap" in run.stdout


def test_lipschitz_on_an_export_and_npz(runs):
    run, out = runs["lip_pt2"]
    assert run.returncode == 0, run.stderr
    t = pd.read_csv(out / "pt2" / "lipschitz.csv")
    assert t["kind"].tolist() == ["conv", "relu", "reshape", "linear"]
    assert (out / "pt2" / "bounds.svg").is_file() and not (out / "pt2" / "bounds.html").exists()


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [
        ("eps", 1, "eps: must be a finite number >= 0"),
        ("range", 1, "outside data_range [0, 1]"),
        ("op", 1, "unsupported op aten.softplus.default"),
        ("bad_eps_text", 2, "--eps"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(runs, case, code, text):
    run, _ = runs[case]
    assert run.returncode == code, (run.returncode, run.stderr)
    assert_one_error_line(run.stderr, text)

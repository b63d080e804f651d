"""``.pt2`` exports in every analysis: run from the file path, the results equal those of the nn.Module.

The models have BatchNorm and Dropout, are trained briefly on the digits (so BatchNorm statistics
and barriers mean something), exported after ``.eval()`` with a dynamic batch axis
(``torch.export.Dim``), saved with ``torch.export.save`` and read back by the analyses from disk.
One export has a fixed batch size: the analyses that can run it give the same results, the one
that cannot (connectivity) says so in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.connectivity.analysis import ModeConnectivity
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.orbits.analysis import OrbitAnalysis
from analyses.spectra.analysis import SpectralAnalysis

pytestmark = pytest.mark.usefixtures("one_thread")

NNVITALS = Path(sys.executable).with_name("nnvitals")
TOL = 1e-5


def _cnn() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            bn1=nn.BatchNorm2d(8),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            bn2=nn.BatchNorm2d(16),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            drop=nn.Dropout(0.25),
            fc1=nn.Linear(16 * 16, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )  # fmt: skip
    )


def _mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 48),
            relu1=nn.ReLU(),
            drop=nn.Dropout(0.2),
            fc2=nn.Linear(48, 48),
            relu2=nn.ReLU(),
            fc3=nn.Linear(48, 10),
        )  # fmt: skip
    )


def _train(make, seed: int, steps: int = 30) -> nn.Module:
    """Full-batch Adam on 512 digits (train mode: BatchNorm statistics and dropout on)."""
    train = load_digits(split="train").subset(slice(0, 512))
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model.eval()


def _export(model: nn.Module, path: Path, fixed: bool = False, decompose: bool = False) -> Path:
    example = torch.rand(4, 1, 8, 8)
    dynamic = None if fixed else ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic)
    if decompose:  # the ATen graph older exporters wrote: convolution, addmm, _native_batch_norm_legit
        program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def models():
    return {"cnn": [_train(_cnn, s) for s in (0, 1, 2)], "mlp": [_train(_mlp, s) for s in (0, 1)]}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("pt2")
    out = {f"cnn{i}": _export(m, d / f"cnn{i}.pt2") for i, m in enumerate(models["cnn"])}
    out.update({f"mlp{i}": _export(m, d / f"mlp{i}.pt2") for i, m in enumerate(models["mlp"])})
    out["cnn0_fixed"] = _export(models["cnn"][0], d / "cnn0_fixed.pt2", fixed=True)
    out["cnn0_aten"] = _export(models["cnn"][0], d / "cnn0_aten.pt2", decompose=True)
    out["cnn1_aten"] = _export(models["cnn"][1], d / "cnn1_aten.pt2", decompose=True)
    out["dir"] = d
    return out


def _run(cls, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("show_progress", False)
    return cls(**kw).run()


def _close(a: pd.DataFrame, b: pd.DataFrame, cols: list[str], tol: float = TOL) -> None:
    assert len(a) == len(b)
    for c in cols:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        assert np.allclose(x, y, rtol=tol, atol=tol, equal_nan=True), (c, np.nanmax(np.abs(x - y)))


# --------------------------------------------------------------------------- orbits


@pytest.mark.parametrize("which", ["cnn0", "cnn0_fixed"])
def test_orbits_from_a_pt2_file_equal_the_module(models, files, which):
    # batch_size 7 leaves ragged batches: the fixed-size export runs them padded to its 4 images
    kw = dict(data="digits8", steps=8, max_samples=30, batch_size=7)
    ref = _run(OrbitAnalysis, model=models["cnn"][0], **kw)
    got = _run(OrbitAnalysis, model=str(files[which]), **kw)
    assert got.scores().shape == ref.scores().shape == (30, 8)
    assert np.allclose(got.scores(), ref.scores(), atol=TOL)
    assert (got.predicted() == ref.predicted()).all()


def test_orbits_take_an_exported_module_given_as_a_module(models, files):
    program = torch.export.load(str(files["cnn0"]))
    kw = dict(data="digits8", steps=4, max_samples=10)
    ref = _run(OrbitAnalysis, model=models["cnn"][0], **kw)
    got = _run(OrbitAnalysis, model=program.module(), **kw)  # its eval() raises
    assert np.allclose(got.scores(), ref.scores(), atol=TOL)


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("which", ["cnn0", "cnn0_fixed", "cnn0_aten"])
def test_ibp_from_a_pt2_file_equals_the_module(models, files, which):
    kw = dict(eps=0.01, max_samples=32)
    ref = _run(IBPTightness, model=models["cnn"][0], **kw)
    got = _run(IBPTightness, model=str(files[which]), **kw)
    _close(got.layers, ref.layers, ["tightness", "box_width", "unstable"])
    for k in ("tightness", "clean_accuracy", "certified_accuracy", "output_width"):
        assert got.summary[k] == pytest.approx(ref.summary[k], rel=TOL, abs=TOL), k


@pytest.mark.parametrize("which", ["cnn0", "cnn0_fixed"])
def test_lipschitz_from_a_pt2_file_equals_the_module(models, files, which):
    kw = dict(max_samples=16, mixes=8, iters=200, jacobian_iters=20, per_layer=False)
    ref = _run(LipschitzBounds, model=models["cnn"][0], **kw)
    got = _run(LipschitzBounds, model=str(files[which]), **kw)
    _close(got.table, ref.table, ["constant", "upper"], tol=1e-4)
    assert got.summary["upper"] == pytest.approx(ref.summary["upper"], rel=1e-4)
    assert got.summary["lower"] == pytest.approx(ref.summary["lower"], rel=1e-4)


# --------------------------------------------------------------------------- spectra


def test_spectra_reads_the_weights_of_a_pt2_file(models, files):
    ref = _run(SpectralAnalysis, model=models["cnn"][0])
    got = _run(SpectralAnalysis, model=str(files["cnn0"]))
    assert list(got.table["name"]) == list(ref.table["name"])
    numeric = [c for c in ref.table.columns if pd.api.types.is_float_dtype(ref.table[c])]
    _close(got.table, ref.table, numeric)


# --------------------------------------------------------------------------- connectivity


def _curves(res) -> pd.DataFrame:
    return res.table.sort_values(["pair", "path", "split", "lam"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def pair_results(models, files):
    kw = dict(points=5, match="weights")
    a, b = models["cnn"][:2]
    return {
        "module": _run(ModeConnectivity, model_a=a, model_b=b, **kw),
        "file": _run(ModeConnectivity, model_a=str(files["cnn0"]), model_b=str(files["cnn1"]), **kw),
        "file_off": _run(
            ModeConnectivity, model_a=str(files["cnn0"]), model_b=str(files["cnn1"]), bn_reset="off", **kw
        ),
    }


def test_connectivity_of_two_pt2_files_equals_the_modules(pair_results):
    ref, got = pair_results["module"], pair_results["file"]
    assert got.summary["bn_reset"] and got.summary["has_batchnorm"]
    assert got.summary["groups"] == ref.summary["groups"] == {"conv1": 8, "conv2": 16, "fc1": 32}
    _close(_curves(got), _curves(ref), ["loss", "accuracy"])
    for k in ("barrier_naive", "barrier_matched", "l2_before", "l2_after"):
        assert got.summary[k] == pytest.approx(ref.summary[k], rel=TOL, abs=TOL), k
    for g, p in ref.perms.items():
        assert (got.perms[g] == p).all(), g


def test_batchnorm_reset_changes_an_exported_graph(pair_results):
    """The exported graph normalises with its running statistics as buffer inputs: the reset state
    must reach it (the interpolated statistics give other losses inside the path)."""
    on, off = _curves(pair_results["file"]), _curves(pair_results["file_off"])
    inner = (on["lam"] > 0) & (on["lam"] < 1)
    assert np.abs(on["loss"][inner] - off["loss"][inner]).max() > 1e-3
    assert pair_results["file_off"].summary["bn_reset"] is False


def test_permuted_b_of_a_pt2_pair_computes_b(pair_results, models, files):
    x = load_digits(split="test").x[:64]
    program = torch.export.load(str(files["cnn1"]))
    twin = program.module()
    twin.load_state_dict(pair_results["file"].permuted_b, strict=True)
    with torch.no_grad():
        assert (twin(x) - models["cnn"][1](x)).abs().max().item() < 1e-4


def test_connectivity_of_decomposed_aten_exports(pair_results, files):
    """Exports run through run_decompositions (convolution, addmm, _native_batch_norm_legit_no_training)."""
    got = _run(ModeConnectivity, model_a=str(files["cnn0_aten"]), model_b=str(files["cnn1_aten"]), points=5)
    assert got.summary["groups"] == {"conv1": 8, "conv2": 16, "fc1": 32}
    _close(_curves(got), _curves(pair_results["module"]), ["loss", "accuracy"])


def test_connectivity_mixes_a_pt2_file_and_a_module(pair_results, models, files):
    got = _run(ModeConnectivity, model_a=str(files["cnn0"]), model_b=models["cnn"][1], points=5)
    _close(_curves(got), _curves(pair_results["module"]), ["loss", "accuracy"])


def test_repair_and_activation_matching_on_pt2_files(models, files):
    kw = dict(points=5, repair=True, match="activations", act_samples=256)
    ref = _run(ModeConnectivity, model_a=models["mlp"][0], model_b=models["mlp"][1], **kw)
    got = _run(ModeConnectivity, model_a=str(files["mlp0"]), model_b=str(files["mlp1"]), **kw)
    assert got.summary["repair"] and not got.summary["has_batchnorm"]
    _close(_curves(got), _curves(ref), ["loss", "accuracy"])


def test_merging_three_pt2_files(models, files):
    kw = dict(points=3, plane=False, merge=True)
    ref = _run(ModeConnectivity, models=list(models["cnn"]), **kw)
    got = _run(ModeConnectivity, models=[str(files[f"cnn{i}"]) for i in range(3)], **kw)
    for split, vals in ref.summary["merge"].items():
        for k, v in vals.items():
            assert got.summary["merge"][split][k] == pytest.approx(v, rel=TOL, abs=TOL), (split, k)
    for k, v in ref.merged.items():
        assert torch.allclose(got.merged[k].float(), v.float(), atol=TOL), k


def test_interpolated_module_of_a_pt2_pair(pair_results, models, files):
    ana = ModeConnectivity(model_a=str(files["cnn0"]), model_b=str(files["cnn1"]), cache=False)
    mod = ana.interpolated_module(0.5, "naive")
    ref = ModeConnectivity(model_a=models["cnn"][0], model_b=models["cnn"][1], cache=False)
    x = load_digits(split="test").x[:32]
    with torch.no_grad():
        assert (mod(x) - ref.interpolated_module(0.5, "naive")(x)).abs().max().item() < 1e-4


def test_connectivity_runs_a_fixed_batch_export_as_the_module(pair_results, files):
    """An export with a fixed batch size (issue 13) runs: its batch axis is freed or it runs in chunks."""
    got = _run(
        ModeConnectivity,
        model_a=str(files["cnn0_fixed"]),
        model_b=str(files["cnn1"]),
        points=5,
        match="weights",
    )
    ref = pair_results["module"].summary
    for k in ("barrier_naive", "barrier_matched", "l2_before", "l2_after"):
        assert got.summary[k] == pytest.approx(ref[k], rel=TOL, abs=TOL), k


def test_connectivity_refuses_a_training_mode_export_in_one_line(models, tmp_path):
    train_mode = _cnn().train()
    program = torch.export.export(
        train_mode, (torch.rand(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "train.pt2"))
    with pytest.raises(NNVitalsError) as info:
        _run(ModeConnectivity, model_a=str(tmp_path / "train.pt2"), model_b=models["cnn"][1], points=3)
    msg = str(info.value)
    assert "\n" not in msg and "train.pt2" in msg and "training mode" in msg and "eval()" in msg


def test_cli_connectivity_on_two_pt2_files(pair_results, files, tmp_path):
    out = tmp_path / "out"
    env = {"NNVITALS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cases = {
        "pair": [files["cnn0"], files["cnn1"], "--points", "5", "--formats", "svg", "--out", out],
        "fixed": [
            files["cnn0_fixed"],
            files["cnn1"],
            "--points",
            "5",
            "--formats",
            "svg",
            "--out",
            out / "x",
        ],
    }
    procs = {  # both at once: each spends most of its time starting up
        k: subprocess.Popen(
            [str(NNVITALS), "connectivity", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for k, args in cases.items()
    }
    errs = {k: p.communicate(timeout=600)[1] for k, p in procs.items()}
    code, err = procs["pair"].returncode, errs["pair"]
    assert code == 0 and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())["summary"]
    ref = pair_results["module"].summary
    for k in ("barrier_naive", "barrier_matched", "l2_before", "l2_after"):
        assert summary[k] == pytest.approx(ref[k], rel=TOL, abs=TOL), k
    table = pd.read_csv(out / "connectivity.csv")
    _close(_curves_of(table), _curves(pair_results["module"]), ["loss", "accuracy"])

    code, err = procs["fixed"].returncode, errs["fixed"]  # a fixed batch size runs too (issue 13)
    assert code == 0 and "Traceback" not in err, err
    fixed = json.loads((out / "x" / "summary.json").read_text())["summary"]
    for k in ("barrier_naive", "barrier_matched", "l2_before", "l2_after"):
        assert fixed[k] == pytest.approx(ref[k], rel=TOL, abs=TOL), k


def _curves_of(table: pd.DataFrame) -> pd.DataFrame:
    table = table.assign(pair=table["pair"].astype(str))
    return table.sort_values(["pair", "path", "split", "lam"]).reset_index(drop=True)

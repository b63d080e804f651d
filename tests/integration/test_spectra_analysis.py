"""SpectralAnalysis end to end on real models: demo zoo, files, NaN layers, cache, Dask."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analyses import NNVitalsError, SpectralAnalysis
from analyses.core.errors import Cancelled
from analyses.core.runner import CancelToken
from analyses.spectra.kernels import fit_power_law
from analyses.spectra.uses import alphapruning_sparsity, compare, tempbalance_factors

COLUMNS = [
    "name", "layer_type", "N", "M", "Q", "num_evals", "alpha", "xmin", "D", "num_pl_spikes", "lambda_max",
    "log_spectral_norm", "norm", "log_norm", "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy",
    "warning", "status", "skip_reason", "bulk_max", "num_spikes",
]  # fmt: skip


def run(model, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("show_progress", False)
    return SpectralAnalysis(model=model, **kw).run()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_demo_models_full_table(name):
    res = run(name)
    t = res.table
    assert set(COLUMNS) <= set(t.columns)
    ok = res.analysed
    assert len(ok) >= 2
    assert np.isfinite(ok["alpha"]).all() and (ok["alpha"] > 1).all()
    # every number in a row is the kernel's number for that layer's ESD
    first = ok.iloc[0]
    ev = res.esd(first["name"])
    assert len(ev) == first["num_evals"]
    fit = fit_power_law(ev, "ks")
    assert first["alpha"] == pytest.approx(fit.alpha)
    assert first["lambda_max"] == pytest.approx(ev.max())
    assert first["norm"] == pytest.approx(ev.sum())
    assert res.summary["layers_analysed"] == len(ok)
    assert res.meta["analysis"] == "spectra" and res.meta["params"]["xmin_rule"] == "ks"


def test_trained_is_heavier_tailed_than_untrained():
    trained, untrained = run("mlp"), run("mlp-untrained")
    a_t = trained.table.set_index("name")["alpha"]
    a_u = untrained.table.set_index("name")["alpha"]
    assert a_t["fc1.weight"] < a_u["fc1.weight"]
    cmp = compare(untrained, trained, labels=("init", "trained"))
    assert "delta_alpha" in cmp and len(cmp) == len(trained.table)


def test_conv2d_matches_pooled_scaled_slices():
    res = run("cnn", layers="conv2")
    row = res.row("conv2.weight")
    from analyses.core.subject import load_subject

    w = load_subject("cnn").tensor("conv2.weight").double()
    slices = w.permute(2, 3, 0, 1).reshape(9, w.shape[0], w.shape[1]) * math.sqrt(0.5)
    ref = np.sort((torch.linalg.svdvals(slices) ** 2).reshape(-1).numpy())
    np.testing.assert_allclose(res.esd("conv2.weight"), ref, rtol=1e-4, atol=1e-6)
    assert row["num_evals"] == 9 * min(w.shape[:2]) and row["layer_type"] == "conv2d"


def test_skips_are_explained_and_nan_layers_flagged(tmp_path):
    torch.manual_seed(0)
    sd = {
        "good.weight": torch.randn(128, 64),
        "tiny.weight": torch.randn(100, 4),
        "bad.weight": torch.randn(128, 64),
        "vec.bias": torch.randn(64),
    }
    sd["bad.weight"][3, 5] = float("nan")
    save_file(sd, tmp_path / "m.safetensors")
    t = run(tmp_path / "m.safetensors").table.set_index("name")
    assert "vec.bias" not in t.index
    assert t.loc["good.weight", "status"] == "ok"
    assert t.loc["tiny.weight", "status"] == "skipped" and "too small" in t.loc["tiny.weight", "skip_reason"]
    assert (
        t.loc["bad.weight", "warning"] == "non-finite" and "1 NaN/Inf" in t.loc["bad.weight", "skip_reason"]
    )


def test_randomize_and_mp_columns():
    res = run("mlp", randomize=True, layers="fc1")
    row = res.row("fc1.weight")
    assert row["max_rand_eval"] > 0 and 0 <= row["rand_distance"] <= 1
    rand = res.randomized_esd("fc1.weight")
    assert len(rand) == row["num_evals"]
    # shuffling keeps the entries, so the Frobenius norm (sum of eigenvalues) is unchanged
    assert rand.sum() == pytest.approx(row["norm"], rel=1e-4)


def test_farms_on_demo_adds_plain_alpha():
    res = run("mlp", farms=True, farms_rows=32, farms_q_ratio=1.0, farms_windows=4)
    ok = res.analysed
    assert "alpha_plain" in ok and np.isfinite(ok["alpha"]).all()
    assert (ok["alpha"] != ok["alpha_plain"]).any()


def test_cache_hit_and_damaged_entry_recomputed(tmp_path):
    a = SpectralAnalysis(model="mlp", cache_dir=str(tmp_path), show_progress=False)
    first = a.run()
    assert first.meta["cached"] is False
    second = a.run()
    assert second.meta["cached"] is True
    assert second.table.equals(first.table) or np.allclose(
        second.table["alpha"], first.table["alpha"], equal_nan=True
    )
    entry = next(tmp_path.glob("*/*.nnv"))
    entry.write_bytes(entry.read_bytes()[:-10])
    third = a.run()
    assert third.meta["cached"] is False
    np.testing.assert_allclose(third.table["alpha"], first.table["alpha"])


def test_parameter_and_input_validation():
    with pytest.raises(ValueError):
        SpectralAnalysis(xmin_rule="mode")
    with pytest.raises(NNVitalsError, match="no such file"):
        run("/no/such/model.safetensors")
    with pytest.raises(NNVitalsError, match="not a valid regular expression"):
        run("mlp", layers="(")
    with pytest.raises(NNVitalsError, match="no weight matrices matching"):
        run("mlp", layers="nothing-here")
    with pytest.raises(NNVitalsError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise NNVitalsError("CUDA is not available (skipped: this machine has CUDA)")
        run("mlp", device="cuda")


def test_progress_and_cancel():
    seen = []
    assert len(run(nn.Sequential(*[nn.Linear(64, 64) for _ in range(3)])).analysed) == 3
    res = SpectralAnalysis(model="cnn", cache=False, show_progress=False).run(
        progress=lambda d, t, lab: seen.append((d, t))
    )
    assert seen and seen[-1][0] == seen[-1][1]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        SpectralAnalysis(model="cnn", cache=False, show_progress=False).run(cancel=token)
    assert len(res.table)


def test_uses_tables():
    res = run("mlp")
    tb = tempbalance_factors(res, lr=0.1)
    assert tb["lr_factor"].between(0.5, 1.5).all()
    assert tb.loc[tb["alpha"].idxmax(), "lr_factor"] == pytest.approx(1.5)
    sp = alphapruning_sparsity(res, target=0.5, epsilon=0.2)
    w = sp["params"] / sp["params"].sum()
    assert (w * sp["sparsity"]).sum() == pytest.approx(0.5)
    assert sp.loc[sp["block_alpha"].idxmax(), "sparsity"] >= sp.loc[sp["block_alpha"].idxmin(), "sparsity"]


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_table():
    threads = run("cnn")
    dask = run("cnn", runner="local")
    cols = ["name", "status", "alpha", "xmin", "D", "lambda_max", "stable_rank", "num_spikes"]
    a, b = threads.table[cols], dask.table[cols]
    assert list(a["name"]) == list(b["name"])
    np.testing.assert_allclose(
        a["alpha"].to_numpy(float), b["alpha"].to_numpy(float), rtol=1e-6, equal_nan=True
    )
    np.testing.assert_allclose(
        a["lambda_max"].to_numpy(float), b["lambda_max"].to_numpy(float), rtol=1e-6, equal_nan=True
    )


@pytest.mark.slow
def test_dask_scheduler_address_runner():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        remote = run("mlp", runner=cluster.scheduler_address)
    local = run("mlp")
    np.testing.assert_allclose(
        remote.table["alpha"].to_numpy(float), local.table["alpha"].to_numpy(float), rtol=1e-6
    )
    assert remote.meta["runner"].startswith("tcp://")


def test_unreachable_dask_scheduler_is_one_clear_line():
    with pytest.raises(NNVitalsError, match="cannot reach a Dask scheduler"):
        run("mlp", runner="tcp://127.0.0.1:1")

"""One layer's values never end a Spectra run.

A checkpoint with a normal layer next to bit-flipped and extreme ones (a 3e38 entry, a 1e20
bit flip that made LAPACK fail, entries of 1e37 and 1e-30, a huge conv kernel, float64 values
beyond float32, NaN): every layer is analysed or skipped with a one-line reason, FARMS and the
shuffled ESDs included; the extreme-but-finite layers are analysed right (checked against a
float64 SVD), and scaling a matrix by a power of two changes none of the scale-free metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from analyses.spectra import kernels as K
from analyses.spectra.analysis import SpectralAnalysis

pytestmark = pytest.mark.usefixtures("one_thread")


def _normal(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.05


def robust_layers() -> dict[str, torch.Tensor]:
    normal = _normal(128, 64, seed=0)
    huge_entry = _normal(128, 64, seed=1)
    huge_entry[3, 5] = 3e38
    bit_flip = _normal(128, 64, seed=2)
    bit_flip[10, 10] = 1e20  # an exponent bit flipped: LAPACK failed on its Gram matrix
    nan = _normal(64, 32, seed=3)
    nan[0, 0] = math.nan
    return {
        "a_normal.weight": normal,
        "b_huge_entry.weight": huge_entry,
        "c_bit_flip.weight": bit_flip,
        "d_all_huge.weight": _normal(96, 48, seed=4) * 2e38,
        "e_tiny.weight": _normal(80, 40, seed=5) * 1e-30,
        "f_conv_huge.weight": _normal(32, 16, 3, 3, seed=6) * 2e37,
        "g_float64_huge.weight": _normal(64, 64, seed=7).double() * 1e300,
        "h_nan.weight": nan,
    }


@pytest.fixture(scope="module")
def robust_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("robust") / "robust.safetensors"
    save_file(robust_layers(), str(path))
    return path


def run(model, **kw):
    return SpectralAnalysis(model=model, cache=False, show_progress=False, **kw).run()


def _svd_lambda_max(w: torch.Tensor, conv: bool = False) -> float:
    if conv:  # pooled slices, halved (conv2d_norm)
        slices = w.double().permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1]).numpy()
        return max(float(np.linalg.svd(s, compute_uv=False)[0] ** 2) for s in slices) / 2
    return float(np.linalg.svd(w.double().numpy(), compute_uv=False)[0] ** 2)


def test_every_layer_is_analysed_or_skipped_with_a_reason(robust_file):
    res = run(robust_file, farms=True, randomize=True)
    t = res.table.set_index("name")
    assert set(t.index) == set(robust_layers())
    skipped = t[t["status"] == "skipped"]
    assert set(skipped.index) == {"g_float64_huge.weight", "h_nan.weight"}
    assert "beyond the float32 range" in skipped.loc["g_float64_huge.weight", "skip_reason"]
    assert "NaN/Inf" in skipped.loc["h_nan.weight", "skip_reason"]
    assert all("\n" not in r for r in t["skip_reason"])
    layers = robust_layers()
    for name, conv in [("b_huge_entry.weight", False), ("c_bit_flip.weight", False),
                       ("d_all_huge.weight", False), ("f_conv_huge.weight", True)]:  # fmt: skip
        row = t.loc[name]
        assert row["status"] == "ok", (name, row["skip_reason"])
        assert row["lambda_max"] == pytest.approx(_svd_lambda_max(layers[name], conv), rel=1e-5), name
        assert np.isfinite(res.esd(name)).all() and np.isfinite(res.farms_esd(name)).all()
        assert np.isfinite(res.randomized_esd(name)).all()
    for name in ("d_all_huge.weight", "f_conv_huge.weight"):  # a fit exists: finite FARMS alpha
        assert np.isfinite(t.loc[name, "alpha"]) and np.isfinite(t.loc[name, "alpha_plain"])
    # one 1e20 entry among 0.05s: the other eigenvalues are ~1e-40 of lambda_max, below float32's
    # rounding, so there is no tail to fit rather than a fit to rounding noise (float64 too: below)
    for name in ("b_huge_entry.weight", "c_bit_flip.weight"):  # neither plain nor FARMS alpha
        assert np.isnan(t.loc[name, "alpha"]) and np.isnan(t.loc[name, "alpha_plain"])
        assert t.loc[name, "warning"] == "no fit"
    assert res.summary["layers_analysed"] == 6 and res.summary["layers_skipped"] == 2


def test_the_normal_layer_is_unaffected_by_its_neighbours(robust_file, tmp_path):
    alone = tmp_path / "alone.safetensors"
    save_file({"a_normal.weight": robust_layers()["a_normal.weight"]}, str(alone))
    # (not the shuffled ESD: its seed is seed + layer_id, and the layer ids differ)
    cols = [
        "alpha",
        "xmin",
        "D",
        "lambda_max",
        "norm",
        "stable_rank",
        "entropy",
        "alpha_plain",
    ]
    mixed = run(robust_file, farms=True, randomize=True).row("a_normal.weight")
    single = run(alone, farms=True, randomize=True).row("a_normal.weight")
    for c in cols:
        # float32 kernels: a matrix solved in a batch of its neighbours or alone may take different
        # MKL code paths on some CPUs (AVX-512 on AMD EPYC): equal to float32 round-off
        assert mixed[c] == pytest.approx(single[c], rel=1e-6, abs=1e-9), c


def test_float64_kernels_skip_what_float64_cannot_hold(robust_file):
    res = run(robust_file, dtype="float64")
    t = res.table.set_index("name")
    assert "beyond the float64 range" in t.loc["g_float64_huge.weight", "skip_reason"]
    # float64 cannot resolve eigenvalues 1e-40 of lambda_max either: no fit, not a fit to noise
    assert t.loc["c_bit_flip.weight", "warning"] == "no fit"
    assert res.row("c_bit_flip.weight")["lambda_max"] == pytest.approx(1e40, rel=1e-6)
    assert (t.drop(index=["g_float64_huge.weight", "h_nan.weight"])["status"] == "ok").all()


def test_a_power_of_two_scale_changes_no_scale_free_metric(tmp_path):
    """W and W * 2^100: the second is scaled back before its Gram matrix is formed; every scale-free
    metric is the same and lambda_max is exactly 4^100 times larger."""
    w = _normal(200, 80, seed=9)
    conv = _normal(24, 12, 3, 3, seed=10)
    path = tmp_path / "scaled.safetensors"
    save_file({"fc.weight": w, "fc_scaled.weight": w * 2.0**100, "conv.weight": conv,
               "conv_scaled.weight": conv * 2.0**100}, str(path))  # fmt: skip
    assert K.safe_exponent(float((w * 2.0**100).abs().max())) != 0
    assert K.safe_exponent(float(w.abs().max())) == 0
    t = run(path, farms=True, randomize=True).table.set_index("name")
    for base in ("fc", "conv"):
        a, b = t.loc[f"{base}.weight"], t.loc[f"{base}_scaled.weight"]
        for c in ("alpha", "alpha_plain", "D", "stable_rank", "entropy", "num_pl_spikes", "num_spikes",
                  "mp_softrank"):  # fmt: skip
            assert b[c] == pytest.approx(a[c], rel=1e-6, abs=1e-9), (base, c)
        for c in ("lambda_max", "xmin", "norm", "bulk_max"):
            assert b[c] == pytest.approx(a[c] * 4.0**100, rel=1e-6), (base, c)
        assert b["log_norm"] == pytest.approx(a["log_norm"] + 100 * math.log10(4), abs=1e-6)


def test_a_numerical_failure_skips_that_layer_only(robust_file, monkeypatch):
    """Without the scaling, LAPACK really fails on the overflowing Gram matrices: those layers
    are skipped with the reason, the run goes on."""
    monkeypatch.setattr(K, "safe_exponent", lambda max_abs, dtype=None: 0)
    t = run(robust_file).table.set_index("name")
    for name in ("b_huge_entry.weight", "c_bit_flip.weight", "d_all_huge.weight", "f_conv_huge.weight"):
        assert t.loc[name, "status"] == "skipped", name
        assert t.loc[name, "skip_reason"].startswith("numerical failure: LinAlgError: ?syevr failed"), name
        assert np.isnan(t.loc[name, "alpha"])
    assert t.loc["a_normal.weight", "status"] == "ok" and np.isfinite(t.loc["a_normal.weight", "alpha"])

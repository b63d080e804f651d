"""Eigenvalues of matrices with extreme but finite entries (bit flips, 3e38, denormals).

A float32 Gram matrix overflows for entries beyond ~1e19 and LAPACK ``?syevr`` then fails on
its infinities; the kernels scale such a matrix by a power of two first and scale the
eigenvalues back in float64. Checked against numpy's float64 SVD (an independent reference),
and the scaling against the unscaled computation on ordinary matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analyses.spectra import kernels as K
from analyses.spectra.lapack import gram_eigenvalues


def _normal(rows: int, cols: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.05).to(dtype)


def _eigs(w: torch.Tensor, e: int) -> torch.Tensor:
    """Squared singular values of ``w`` through the scaled path with exponent ``e``."""
    scaled = K.scale_by_power_of_two(w.unsqueeze(0), e)
    return K.unscale_eigenvalues(K.batched_eigenvalues(scaled, w.dtype).reshape(-1), e)


def _reference(w: torch.Tensor) -> np.ndarray:
    return np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2)


def test_an_overflowing_gram_matrix_makes_lapack_fail():
    """The failure the analysis must survive: LAPACK on the Gram matrix of a 3e38 entry."""
    w = _normal(128, 64)
    w[3, 5] = 3e38
    with pytest.raises(np.linalg.LinAlgError, match="syevr failed"):
        gram_eigenvalues(w.numpy())


@pytest.mark.parametrize(
    "max_abs, dtype, expected",
    [
        (0.3, torch.float32, 0), (40.0, torch.float32, 0), (2.0**-31, torch.float32, 0), (0.0, torch.float32, 0),
        (3e38, torch.float32, 128), (1e20, torch.float32, 67), (1e-30, torch.float32, -99),
        (1e20, torch.float64, 67), (1e300, torch.float64, 997), (math.inf, torch.float32, 0),
    ],
)  # fmt: skip
def test_safe_exponent(max_abs, dtype, expected):
    e = K.safe_exponent(max_abs, dtype)
    assert e == expected
    if e:
        assert 0.5 <= max_abs * 2.0**-e < 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 64), (64, 200), (300, 300), (40, 7)])
def test_scaling_leaves_ordinary_spectra_unchanged(dtype, shape):
    w = _normal(*shape, dtype=dtype)
    plain = _eigs(w, 0)
    natural = math.frexp(float(w.abs().max()))[1]  # the exponent the analysis would pick
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for e in (natural, natural - 1, natural + 1):
        np.testing.assert_allclose(
            _eigs(w, e).numpy(), plain.numpy(), rtol=rtol, atol=rtol * float(plain.max())
        )


@pytest.mark.parametrize(
    "case",
    ["one_3e38", "bit_flip_1e20", "all_1e37", "tiny_1e-30", "row_1e19"],
)
def test_extreme_matrices_match_a_float64_svd(case):
    w = _normal(128, 64)
    if case == "one_3e38":
        w[3, 5] = 3e38
    elif case == "bit_flip_1e20":
        w[10, 10] = 1e20
    elif case == "all_1e37":
        w = w * 2e38
    elif case == "tiny_1e-30":
        w = w * 1e-30
    else:
        w[0, :] = 1e19
    e = K.safe_exponent(float(w.abs().max()), torch.float32)
    assert e != 0
    ev = _eigs(w, e).numpy()
    ref = _reference(w)
    assert np.isfinite(ev).all()
    # float32 resolves the eigenvalues to ~1e-6 of the largest
    np.testing.assert_allclose(ev, ref, rtol=0, atol=2e-6 * ref[-1])
    np.testing.assert_allclose(ev[-1], ref[-1], rtol=1e-5)


def test_eigenvalues_past_float64_become_inf_not_an_error():
    w = _normal(32, 16, dtype=torch.float64) * 1e300
    e = K.safe_exponent(float(w.abs().max()), torch.float64)
    ev = _eigs(w, e)
    assert not torch.isfinite(ev).all()  # the analysis reports this layer as skipped

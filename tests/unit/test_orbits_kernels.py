"""Orbit kernels against exact pixel permutations and hand-computed scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analyses.orbits import kernels as K


def _bilinear(x: torch.Tensor, els: K.Elements, i: int) -> torch.Tensor:
    """Element ``i`` forced through grid_sample (the kernel would take the exact path)."""
    p = {k: float(v[i]) for k, v in els.params.items()}
    grid = K._inverse_map(p, x.shape[-2], x.shape[-1], x.dtype, x.device)
    return F.grid_sample(x, grid.expand(x.shape[0], *grid.shape), align_corners=False)


def test_rotation_elements_start_at_zero_and_are_evenly_spaced():
    els = K.elements("rotation", steps=72)
    assert len(els) == 72
    np.testing.assert_allclose(els.params["angle"], np.arange(72) * 5.0)
    assert els.label(9) == "45°"


def test_quarter_turns_and_flips_are_exact_permutations():
    x = torch.rand(5, 3, 9, 9)
    els = K.elements("rotation-flip", steps=8)
    out = K.transform(x, els)
    for i, (a, f) in enumerate(zip(els.params["angle"], els.params["flip"])):
        if a % 90 == 0:
            ref = torch.flip(x, dims=(-1,)) if f else x
            ref = torch.rot90(ref, int(a // 90), dims=(-2, -1))
            assert torch.equal(out[i], ref), (a, f)


def test_angle_90_is_counter_clockwise_on_screen():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1.0  # top right
    out = K.transform(x, K.elements("rotation", steps=4), [1])[0, 0, 0]
    assert out[0, 0] == 1.0  # a quarter turn counter-clockwise moves it to the top left


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 10)])
def test_bilinear_path_agrees_with_the_exact_path(size):
    x = torch.rand(4, 2, *size)
    els = K.elements("rotation", steps=4)
    exact = K.transform(x, els)
    for i in range(4):
        if size[0] != size[1] and i % 2:
            continue  # a quarter turn of a non-square image changes its shape
        torch.testing.assert_close(_bilinear(x, els, i), exact[i], atol=1e-5, rtol=0)


def test_non_square_quarter_turn_is_resampled_without_shear():
    x = torch.zeros(1, 1, 5, 9)
    x[0, 0, 2, 4] = 1.0  # the centre stays put
    x[0, 0, 2, 5] = 1.0  # one pixel right of the centre goes one pixel up
    out = K.transform(x, K.elements("rotation", steps=4), [1])[0, 0, 0]
    assert out[2, 4] == pytest.approx(1.0) and out[1, 4] == pytest.approx(1.0, abs=1e-5)


def test_one_resampling_call_matches_per_angle_calls():
    x = torch.rand(6, 1, 16, 16)
    els = K.elements("rotation", steps=24)
    out = K.transform(x, els)
    for i in (1, 5, 7, 13):
        torch.testing.assert_close(out[i], _bilinear(x, els, i), atol=1e-6, rtol=0)


def test_rotation_preserves_a_centred_disc():
    yy, xx = torch.meshgrid(torch.arange(21.0) - 10, torch.arange(21.0) - 10, indexing="ij")
    disc = ((xx**2 + yy**2) <= 36).float()[None, None]
    out = K.transform(disc, K.elements("rotation", steps=12))
    for i in range(12):
        assert (out[i] - disc).abs().sum() / disc.sum() < 0.15


def test_integer_shifts_are_exact_with_zero_fill():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    els = K.elements("shift", shift_range=2, shift_step=1)
    out = K.transform(x, els)
    i = next(j for j in range(len(els)) if els.params["dx"][j] == 1 and els.params["dy"][j] == -2)
    ref = torch.zeros(5, 5)
    ref[:3, 1:] = x[0, 0, 2:, :4]
    assert torch.equal(out[i, 0, 0], ref)
    assert len(els) == 25


def test_half_pixel_shift_averages_neighbours():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    els = K.Elements("shift", {"dx": np.array([0.5]), "dy": np.array([0.0])})
    out = K.transform(x, els)[0, 0, 0]
    assert out[1, 1] == pytest.approx(0.5) and out[1, 2] == pytest.approx(0.5)


def test_scale_one_is_identity_and_zoom_moves_pixels_outwards():
    els = K.elements("scale", scale_range=(0.5, 2.0), scale_step=0.5)
    assert 1.0 in els.params["scale"]
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    out = K.transform(x, els)
    i1 = int(np.flatnonzero(els.params["scale"] == 1.0)[0])
    i2 = int(np.flatnonzero(els.params["scale"] == 2.0)[0])
    assert torch.equal(out[i1], x)
    assert out[i2, 0, 0, 4, 8] > 0.2 and out[i2, 0, 0, 4, 6] < 0.6  # now about four pixels right


def test_label_scores_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    p = K.label_scores(logits, y, "probability")
    e = math.exp
    assert p[0] == pytest.approx(e(2) / (e(2) + 1 + e(1)))
    assert p[1] == pytest.approx(e(1) / (1 + e(3) + e(1)))
    assert K.label_scores(logits, y, "correct").tolist() == [1.0, 0.0]
    assert K.label_scores(logits, y, "margin").tolist() == [1.0, -2.0]


def test_consensus_scores_against_the_orbit_average():
    probs = torch.tensor(
        [
            [[0.7, 0.3], [0.2, 0.8]],
            [[0.4, 0.6], [0.1, 0.9]],
            [[0.6, 0.4], [0.6, 0.4]],
        ]
    )  # (E=3, B=2, K=2)
    scores, consensus = K.consensus_scores(probs)
    assert consensus.tolist() == [0, 1]  # means (0.567, 0.433) and (0.3, 0.7)
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.8], [0.4, 0.9], [0.6, 0.4]]))


@pytest.mark.parametrize(
    "group, kw",
    [
        ("rotation", dict(steps=7)),
        ("rotation-flip", dict(steps=5)),
        ("flip", {}),
        ("shift", dict(shift_range=4.0, shift_step=1.0)),
        ("shift", dict(shift_range=3.0, shift_step=0.7)),
        ("shift", dict(shift_range=0.0, shift_step=0.5)),
        ("scale", dict(scale_range=(0.5, 1.5), scale_step=0.05)),
        ("scale", dict(scale_range=(0.55, 1.52), scale_step=0.1)),  # 1 not on the grid: added
        ("scale", dict(scale_range=(1.2, 2.0), scale_step=0.3)),  # 1 outside the range
    ],
)
def test_count_elements_counts_without_making_them(group, kw):
    assert K.count_elements(group, **kw) == len(K.elements(group, **kw))


def test_count_elements_of_absurd_settings_is_exact_and_cheap():
    assert K.count_elements("shift", shift_range=500.0, shift_step=0.1) == 10_001**2
    assert K.count_elements("shift", shift_range=1e300, shift_step=0.01) > 10**600
    assert K.count_elements("scale", scale_range=(1e-9, 1e12), scale_step=0.001) > 10**14
    for bad in (dict(shift_range=float("inf")), dict(shift_step=float("nan")), dict(shift_step=0.0)):
        with pytest.raises(ValueError):
            K.count_elements("shift", **bad)

"""IBPTightness computes per-layer tightness on ``tightness_samples`` samples only (issue 13, Speed).

The boxes, certified accuracy, ReLU stability and the output tightness (reverse mode) cover every
sample; the per-layer tightness (the costly tangent pass, ``d`` passes per sample) the first
``tightness_samples``. Where the math is the same the numbers are those of the full computation
(``propagate`` with tightness on every sample), across task chunks, for both ReLU modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analyses.bounds import ibp as I
from analyses.bounds.analysis import IBPTightness

D = torch.float64


def _cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("relu", I.RELU_MODES)
def test_per_layer_tightness_on_a_subset_equals_the_full_computation(relu):
    model = _cnn()
    k, eps = 5, 0.02
    a = IBPTightness(
        model=model, data="digits8", eps=eps, eps_sweep=[0.05], relu=relu, tightness_samples=k,
        max_samples=11, chunk_samples=3, dtype="float64", cache=False, show_progress=False,
    )  # fmt: skip
    res = a.run()
    ds = a.datasets()["test"]
    g = a.graph().to("cpu", D)
    x, y = ds.x.to(D), ds.y
    with torch.no_grad():
        full = I.propagate(g, x, y, eps, 0.0, 1.0, relu, "margin", tightness=True)  # the old computation
        head = I.propagate(g, x[:k], y[:k], eps, 0.0, 1.0, relu, "margin", tightness=True)
        sweep = I.propagate(g, x, y, 0.05, 0.0, 1.0, relu, "margin", tightness=True)
    rows = res.table.set_index("node")
    checked = 0
    for s in g.steps:
        row = rows.loc[s.name]
        h, f = head.steps[s.name], full.steps[s.name]
        if h.tight_count:
            assert row["tightness"] == pytest.approx(h.tight_sum / h.tight_count, rel=1e-12, abs=1e-14), (
                s.name
            )
            checked += 1
        else:
            assert math.isnan(row["tightness"])
        assert row["box_width"] == pytest.approx(f.width_sum / f.width_count, rel=1e-12)
        units = f.active + f.inactive + f.unstable
        if units:
            assert row["unstable"] == pytest.approx(f.unstable / units)
            assert row["stable_active"] == pytest.approx(f.active / units)
    assert checked >= 4
    # the per-layer numbers really come from the subset: they differ from the full sample's
    assert any(
        h.tight_count
        and not math.isclose(h.tight_sum / h.tight_count, f.tight_sum / f.tight_count, rel_tol=1e-9)
        for h, f in ((head.steps[n], full.steps[n]) for n in full.steps)
    )
    np.testing.assert_allclose(
        res.arrays["out_tightness"], full.out_tightness.numpy(), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_array_equal(res.arrays["certified"], full.certified.numpy())
    np.testing.assert_array_equal(res.arrays["correct"], full.correct.numpy())
    np.testing.assert_allclose(res.arrays["min_margin"], full.min_margin.numpy(), rtol=1e-12, atol=1e-14)
    assert res.summary["certified_accuracy"] == pytest.approx(float(full.certified.double().mean()))
    assert res.summary["tightness"] == pytest.approx(float(full.out_tightness.nanmean()), rel=1e-10)
    assert res.summary["output_width"] == pytest.approx(float(full.out_width.mean()), rel=1e-12)
    assert res.arrays["sweep_tightness"][0] == pytest.approx(float(sweep.out_tightness.nanmean()), rel=1e-10)
    assert res.arrays["sweep_certified"][0] == pytest.approx(float(sweep.certified.double().mean()))
    notes = res.meta.get("notes", [])
    assert any("first 5 of 11 samples" in n for n in notes), notes


def test_no_note_when_every_sample_gets_per_layer_tightness():
    a = IBPTightness(
        model=_cnn(), data="digits8", eps=0.02, tightness_samples=16, max_samples=6, dtype="float64",
        cache=False, show_progress=False,
    )  # fmt: skip
    res = a.run()
    assert not any("tightness_samples" in n for n in res.meta.get("notes", []))
    ds = a.datasets()["test"]
    g = a.graph().to("cpu", D)
    with torch.no_grad():
        full = I.propagate(g, ds.x.to(D), ds.y, 0.02, 0.0, 1.0, tightness=True)
    for s in g.steps:
        f = full.steps[s.name]
        if f.tight_count:
            assert res.table.set_index("node").loc[s.name, "tightness"] == pytest.approx(
                f.tight_sum / f.tight_count, rel=1e-12
            )


def test_tightness_samples_is_checked():
    with pytest.raises(ValueError):
        IBPTightness(tightness_samples=0)

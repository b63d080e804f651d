"""Trajectory end to end on a series made here: the demo MLP's architecture trained on the digits
for a few steps, four checkpoints saved as safetensors state dicts.

- every reading of the trajectory equals the standalone analysis of that checkpoint (run on its
  own, with the same parameters, outside the store, on a module loaded independently);
- adding one checkpoint computes only what it brings (the store's misses counted twice: the runs'
  own "cached" flags and the entries that appear in the store directory);
- the result saves and loads, the baseline difference, and the views on both backends.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import holoviews as hv
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.connectivity.analysis import ModeConnectivity
from analyses.core.data import load_digits
from analyses.core.errors import NNVitalsError
from analyses.orbits.analysis import OrbitAnalysis
from analyses.spectra.analysis import SpectralAnalysis
from analyses.trajectory import views as V
from analyses.trajectory.analysis import Trajectory, readings
from analyses.trajectory.result import TrajectoryResult
from analyses.zoo.models import DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (0, 10, 20, 30)
#: small settings so four checkpoints x five analyses stay quick (the same for the standalone runs)
OVERRIDES = {
    "spectra": {"farms": True, "farms_windows": 4},
    "ibp": {"max_samples": 48, "eps": 0.02},
    "lipschitz": {"max_samples": 32, "mixes": 8, "per_layer": True},
    "orbits": {"data": "digits8", "max_samples": 32, "steps": 8},
    "connectivity": {"points": 5, "max_iter": 20},
}


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    """The demo 'mlp' architecture (64-256-128-10) trained with Adam; a checkpoint every 10 steps."""
    out = tmp_path_factory.mktemp("series")
    train = load_digits(split="train")
    torch.manual_seed(0)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()}, out / f"step_{step}.safetensors"
            )
        idx = torch.randint(len(train.x), (128,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return out


def _trajectory(series, store: Path, **kw) -> TrajectoryResult:
    return Trajectory(
        series=series, architecture="mlp", overrides=OVERRIDES, cache_dir=str(store), num_workers=2,
        show_progress=False, **kw,
    ).run()  # fmt: skip


def _module(path: Path) -> torch.nn.Module:
    """The checkpoint in a module built here (not through the series' architecture)."""
    m = DigitsMLP()
    m.load_state_dict(load_file(path))
    return m.eval()


@pytest.fixture(scope="module")
def full(series_dir, tmp_path_factory) -> TrajectoryResult:
    return _trajectory(series_dir, tmp_path_factory.mktemp("store"))


def _standalone(kind: str, series_dir: Path, step: int, suffix: str = "") -> list:
    common = dict(cache=False, show_progress=False, **OVERRIDES[kind])
    path = series_dir / f"step_{step}.safetensors"
    if kind == "spectra":
        return readings(kind, SpectralAnalysis(model=path, **common).run())
    cls = {"ibp": IBPTightness, "lipschitz": LipschitzBounds, "orbits": OrbitAnalysis}.get(kind)
    if cls is not None:
        model = _module(path)
        if kind == "orbits":  # orbits keys and names models by their label: the checkpoint's name
            from analyses.core.subject import load_subject

            model = load_subject(model, label=path.name)
        return readings(kind, cls(model=model, **common).run())
    other = STEPS[STEPS.index(step) + 1] if suffix == "_to_next" else STEPS[-1]
    res = ModeConnectivity(
        model=_module(path), model_b=_module(series_dir / f"step_{other}.safetensors"), **common
    ).run()
    return readings(kind, res, suffix)


def test_every_value_equals_the_standalone_analysis_of_its_checkpoint(full, series_dir):
    t = full.table
    assert full.errors.empty, full.errors.to_dict("records")
    assert full.steps == list(STEPS) and full.analyses == [
        "spectra",
        "ibp",
        "lipschitz",
        "orbits",
        "connectivity",
    ]
    assert list(t.columns[:6]) == ["checkpoint", "step", "analysis", "metric", "layer", "value"]
    checked = 0
    for step in STEPS:
        for kind in ("spectra", "ibp", "lipschitz", "orbits"):
            want = {(m, layer): v for m, layer, v in _standalone(kind, series_dir, step)}
            rows = t[(t["step"] == step) & (t["analysis"] == kind)]
            got = {
                (m, layer): v
                for m, layer, v in zip(rows["metric"], rows["layer"], rows["value"], strict=True)
            }
            assert set(got) == set(want) and len(got) > 3, (step, kind)
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), (step, kind, k)
                checked += 1
    for i, step in enumerate(STEPS[:-1]):
        suffixes = ["_to_next"] + (["_to_final"] if i < len(STEPS) - 2 else [])
        for suffix in suffixes:
            want = dict(
                ((m, layer), v) for m, layer, v in _standalone("connectivity", series_dir, step, suffix)
            )
            rows = t[
                (t["step"] == step) & (t["analysis"] == "connectivity") & t["metric"].str.endswith(suffix)
            ]
            got = dict(zip(zip(rows["metric"], rows["layer"]), rows["value"], strict=True))
            assert set(got) == set(want) and want, (step, suffix)
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (step, k)
                checked += 1
    assert checked > 300
    # the readings are the analyses' own numbers, named as the module docstring says
    spectra = SpectralAnalysis(model=series_dir / "step_30.safetensors", cache=False, show_progress=False,
                               **OVERRIDES["spectra"]).run()  # fmt: skip
    ok = spectra.table[spectra.table["status"] == "ok"]
    assert full.value(30, "spectra", "alpha", "fc2.weight") == pytest.approx(
        float(ok.loc[ok["name"] == "fc2.weight", "alpha_plain"].iloc[0]), rel=1e-6
    )
    assert full.value(30, "spectra", "alpha_farms") == pytest.approx(float(np.nanmean(ok["alpha"])), rel=1e-6)
    ibp = IBPTightness(model=_module(series_dir / "step_0.safetensors"), cache=False, show_progress=False,
                       **OVERRIDES["ibp"]).run()  # fmt: skip
    assert full.value(0, "ibp", "certified_accuracy") == ibp.summary["certified_accuracy"]
    # the last checkpoint's pair to the final one is the consecutive pair: both names, one run
    assert full.value(20, "connectivity", "barrier_naive_to_final") == full.value(
        20, "connectivity", "barrier_naive_to_next"
    )
    assert math.isnan(full.value(30, "connectivity", "barrier_naive_to_next"))
    h = full.summary["headline"]
    assert set(h) == set(full.analyses) and h["spectra"]["metric"] == "alpha"
    assert h["ibp"]["first_step"] == 0 and h["ibp"]["last_step"] == 30
    assert h["ibp"]["last"] == full.value(30, "ibp", "certified_accuracy")


def test_adding_one_checkpoint_computes_only_that_one(series_dir, tmp_path):
    store = tmp_path / "store"
    partial = tmp_path / "run"
    partial.mkdir()
    for s in (0, 10, 30):
        shutil.copy(series_dir / f"step_{s}.safetensors", partial)

    def entries() -> set[Path]:
        return set(store.glob("*/*.nnv"))

    first = _trajectory(partial, store)
    assert first.errors.empty and first.summary["from_store"] == 0
    per_checkpoint = 4  # spectra, ibp, lipschitz, orbits
    pairs = 2 + 1  # 0->10, 10->30 (next, and final for 10), 0->30 (final)
    assert first.summary["computed"] == 3 * per_checkpoint + pairs == len(entries())
    before = entries()
    again = _trajectory(partial, store)
    assert again.summary["computed"] == 0 and entries() == before
    assert again.table.equals(first.table)

    shutil.copy(series_dir / "step_20.safetensors", partial)
    plan = Trajectory(series=partial, architecture="mlp", overrides=OVERRIDES, cache_dir=str(store)).plan()
    pending = {(int(r.step), r.analysis) for r in plan.itertuples() if not r.stored}
    grown = _trajectory(partial, store)
    runs = grown.meta["runs"]
    computed = {(r["step"], r["analysis"]) for r in runs if not r["cached"]}
    # the new checkpoint's own runs, and the pairs that hold it: 10->20 (next), 20->30 (next and final)
    assert computed == {(20, k) for k in ("spectra", "ibp", "lipschitz", "orbits")} | {
        (10, "connectivity_to_next"),
        (20, "connectivity_to_next"),
    }
    assert pending == computed  # what plan() said was missing is exactly what the run computed
    assert grown.summary["computed"] == len(computed) == len(entries() - before)
    assert grown.summary["from_store"] == len(runs) - len(computed)
    # the readings of the checkpoints that were there are the stored ones
    old = grown.table[grown.table["step"].isin([0, 30]) & (grown.table["analysis"] != "connectivity")]
    prev = first.table[first.table["step"].isin([0, 30]) & (first.table["analysis"] != "connectivity")]
    assert old.reset_index(drop=True).equals(prev.reset_index(drop=True))


def test_baseline_save_load_and_views(full, series_dir, tmp_path):
    base = full.relative_to(10)
    at10 = base[base["step"] == 10]
    assert np.allclose(at10["delta"].to_numpy(dtype=float)[np.isfinite(at10["value"])], 0.0)
    row = base[(base["step"] == 30) & (base["analysis"] == "ibp") & (base["metric"] == "clean_accuracy")]
    assert float(row["delta"].iloc[0]) == pytest.approx(
        full.value(30, "ibp", "clean_accuracy") - full.value(10, "ibp", "clean_accuracy")
    )
    path = full.save(tmp_path / "trajectory.nnv")
    back = TrajectoryResult.load(path)
    assert isinstance(back, TrajectoryResult) and back.steps == full.steps
    assert np.array_equal(back.table["value"].to_numpy(), full.table["value"].to_numpy(), equal_nan=True)
    assert list(back.table["metric"]) == list(full.table["metric"])
    assert back.summary["headline"] == full.summary["headline"]
    grid = back.layer_grid("spectra", "alpha")
    assert list(grid.columns) == list(STEPS) and "fc1.weight" in grid.index

    # pinned in the run: the table carries the difference, the views mark the baseline
    pinned = Trajectory(series=series_dir, architecture="mlp", analyses=["spectra"], baseline=10,
                        overrides=OVERRIDES, cache=False, show_progress=False).run()  # fmt: skip
    assert "delta" in pinned.table and pinned.summary["baseline"] == 10
    text = V.summary_text(pinned)
    assert "baseline step 10" in text and "alpha (plain)" in text

    figs = V.main_figures(back)
    assert set(figs) == {"alpha_heatmap", "mean_alpha", "certified_accuracy", "ibp_tightness", "lipschitz",
                         "lipschitz_ratio", "nero_gap", "barrier"}  # fmt: skip
    for fig in [*figs.values(), V.mean_alpha_plot(pinned, relative=True)]:
        hv.render(fig, backend="bokeh")
        hv.render(fig, backend="matplotlib")
    # a baseline picked after the run (step 0, which is falsy): the differences to it, nothing recomputed
    rel = V.ibp_plot(back, relative=0)
    hv.render(rel, backend="bokeh")
    curve = next(el for el in rel if isinstance(el, hv.Curve) and el.label == "IBP-certified accuracy")
    want = [
        full.value(s, "ibp", "certified_accuracy") - full.value(0, "ibp", "certified_accuracy") for s in STEPS
    ]
    assert np.allclose(curve.dimension_values("value"), want)
    with pytest.raises(NNVitalsError, match="baseline: none pinned"):
        V.ibp_plot(back, relative=True)
    heat = figs["alpha_heatmap"]
    heat = heat if isinstance(heat, hv.HeatMap) else next(iter(heat))
    assert len(heat.data) == len(full.table[(full.table["analysis"] == "spectra") & (full.table["metric"] == "alpha")
                                            & (full.table["layer"] != "")])  # fmt: skip
    text = V.summary_text(full)
    assert "4 checkpoints" in text and "certified accuracy" in text.lower()


@pytest.mark.slow
def test_a_dask_local_cluster_runs_the_checkpoints_and_gives_the_same_table(series_dir, tmp_path):
    """The runner's other kind: each checkpoint's runs are tasks of a local Dask cluster (worker
    processes), with their results in the same store; the table equals the threads run's."""
    part = tmp_path / "run"
    part.mkdir()
    for s in (0, 30):
        shutil.copy(series_dir / f"step_{s}.safetensors", part)
    kw = dict(series=part, architecture="mlp", analyses=["spectra"], overrides=OVERRIDES, num_workers=2,
              show_progress=False)  # fmt: skip
    threads = Trajectory(cache_dir=str(tmp_path / "a"), **kw).run()
    dask = Trajectory(cache_dir=str(tmp_path / "b"), runner="local", **kw).run()
    assert dask.errors.empty and dask.summary["computed"] == threads.summary["computed"] == 2
    assert len(set((tmp_path / "b").glob("*/*.nnv"))) == 2  # every single result went through the store
    cols = ["checkpoint", "step", "analysis", "metric", "layer"]
    a, b = threads.table, dask.table
    assert a[cols].equals(b[cols])
    np.testing.assert_allclose(
        a["value"].to_numpy(float), b["value"].to_numpy(float), rtol=1e-6, equal_nan=True
    )

"""The checkpoint-series parser: names, manifests, lists, mixed formats, gaps in steps, and the
one-line errors (no checkpoints, ambiguous ordering, duplicate steps, mixed architectures, an
unreadable checkpoint reported on its own while the rest still run). Real files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analyses.core.errors import NNVitalsError
from analyses.trajectory.analysis import Trajectory
from analyses.trajectory.series import (
    ArchitectureSubject,
    CheckpointSeries,
    load_series,
    parse_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()


def _st(path: Path, model: nn.Module) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _pt(path: Path, model: nn.Module) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _spectra_only(series, **kw):
    return Trajectory(series=series, analyses=["spectra"], cache=False, show_progress=False, **kw).run()


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("step_1000.safetensors", (1000, "step")),
        ("step-1000.pt", (1000, "step")),
        ("epoch=3.ckpt", (3, "epoch")),
        ("epoch_3.pth", (3, "epoch")),
        ("checkpoint-500", (500, "step")),
        ("ckpt_000200.safetensors", (200, "step")),
        ("global_step1200", (1200, "step")),
        ("epoch=2-step=1200.ckpt", (1200, "step")),  # Lightning: the step orders
        ("1000.pt", (1000, "number")),
        ("000200.safetensors", (200, "number")),
        ("model_1200.pt2", (1200, "number")),
        ("final.pt", None),
        ("model.safetensors", None),
    ],
)
def test_steps_are_parsed_from_names(name, expected):
    assert parse_step(name) == expected


def test_a_directory_is_ordered_by_step_numerically_with_a_gap(tmp_path):
    for step in (1000, 0, 20, 5):  # 5 < 20 < 1000 although "1000" < "20" < "5" as text
        _st(tmp_path / f"step_{step}.safetensors", _model(step))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    series = load_series(tmp_path)
    assert series.steps == [0, 5, 20, 1000] and series.unit == "step"
    assert [c.name for c in series] == [f"step_{s}.safetensors" for s in (0, 5, 20, 1000)]
    res = _spectra_only(tmp_path)  # the gap stays a gap: steps are read, never renumbered
    assert res.steps == [0, 5, 20, 1000]
    assert sorted(set(res.table["step"])) == [0, 5, 20, 1000] and res.errors.empty


def test_a_hugging_face_trainer_directory(tmp_path):
    """checkpoint-* folders next to the final model and the trainer's own files: the folders are the series."""
    for step in (500, 1000, 1500):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "config.json").write_text("{}")
        _st(d / "model.safetensors", _model(step))
        (d / "trainer_state.json").write_text("{}")
        _pt(d / "optimizer.pt", _model(0))
    (tmp_path / "config.json").write_text("{}")
    _st(tmp_path / "model.safetensors", _model(9))
    (tmp_path / "training_args.bin").write_bytes(b"x")
    (tmp_path / "runs").mkdir()
    series = load_series(tmp_path)
    assert series.steps == [500, 1000, 1500] and [c.name for c in series][0] == "checkpoint-500"
    res = _spectra_only(tmp_path)
    assert res.errors.empty and res.checkpoints == ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    # its weights are the folder's model.safetensors (not the optimiser state)
    alpha = res.value(1000, "spectra", "alpha", "1.weight")
    from analyses.spectra.analysis import SpectralAnalysis

    alone = SpectralAnalysis(
        model=tmp_path / "checkpoint-1000", farms=True, cache=False, show_progress=False
    ).run()
    assert alpha == pytest.approx(
        float(alone.table.set_index("name").loc["1.weight", "alpha_plain"]), rel=1e-6
    )


def test_epochs_and_plain_numbers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for e in (1, 2, 10):
        _st(a / f"epoch={e}.safetensors", _model(e))
        _pt(b / f"{e:06d}.pt", _model(e))
    sa, sb = load_series(a), load_series(b)
    assert (sa.steps, sa.unit) == ([1, 2, 10], "epoch")
    assert (sb.steps, sb.unit) == ([1, 2, 10], "step")


def test_mixed_formats_in_one_directory_with_a_pt2_as_the_architecture(tmp_path):
    """safetensors, a torch.save state dict, a Hugging Face checkpoint-* folder and a .pt2 export;
    the weights-only ones run in the .pt2's architecture with their own weights."""
    models = {s: _model(s) for s in (0, 100, 200, 300)}
    _st(tmp_path / "step_0.safetensors", models[0])
    _pt(tmp_path / "step_100.pt", models[100])
    hf = tmp_path / "checkpoint-200"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    _st(hf / "model.safetensors", models[200])
    x = torch.rand(2, 1, 8, 8)
    torch.export.save(torch.export.export(models[300], (x,)), tmp_path / "step_300.pt2")
    series = load_series(tmp_path)
    assert series.steps == [0, 100, 200, 300]
    assert series.arch() is not None and series.arch().label.endswith("step_300.pt2")
    probe = torch.rand(2, 1, 8, 8)  # the export is specialised to batches of 2
    kinds = []
    for c in series:
        weights, runnable = series.open(c)
        kinds.append(weights.source_kind)
        if c.step != 300:
            assert isinstance(runnable, ArchitectureSubject)
        with torch.no_grad():
            got = runnable.module()(probe)
            want = models[c.step](probe)
        torch.testing.assert_close(got, want)  # its own weights, in the .pt2's graph
    assert kinds == ["safetensors", "state_dict", "safetensors", "export"]
    res = _spectra_only(tmp_path)
    assert res.errors.empty and res.steps == [0, 100, 200, 300]


def test_a_demo_name_or_a_module_is_the_architecture(tmp_path):
    _st(tmp_path / "step_1.safetensors", _model(1))
    _st(tmp_path / "step_2.safetensors", _model(2))
    series = load_series(tmp_path, architecture=_model(9))
    _, runnable = series.open(series.checkpoints[1])
    probe = torch.rand(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(runnable.module()(probe), _model(2)(probe))
    # a demo architecture that does not fit: one line naming the checkpoint and the architecture
    bad = load_series(tmp_path, architecture="mlp")
    with pytest.raises(NNVitalsError) as e:
        bad.open(bad.checkpoints[0])[1].module()
    assert "step_1.safetensors" in _one_line(e) and "mlp" in str(e.value)


# --------------------------------------------------------------------------- manifests and lists
def test_a_manifest_gives_the_steps(tmp_path):
    _st(tmp_path / "first.safetensors", _model(0))
    _pt(tmp_path / "later.pt", _model(1))
    (tmp_path / "series.json").write_text(
        json.dumps([{"file": "later.pt", "step": 700}, {"file": "first.safetensors", "step": 3}])
    )
    series = load_series(tmp_path)
    assert series.steps == [3, 700] and [c.name for c in series] == ["first.safetensors", "later.pt"]
    assert load_series(tmp_path / "series.json").steps == [3, 700]  # the manifest's own path too
    (tmp_path / "series.json").write_text(
        json.dumps({"architecture": "mlp", "checkpoints": [{"file": "first.safetensors", "epoch": 1}]})
    )
    s2 = load_series(tmp_path)
    assert s2.steps == [1] and s2.unit == "epoch" and s2.architecture == "mlp"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ([{"file": "a.safetensors", "step": "ten"}], "expected a whole number"),
        ([{"file": "a.safetensors", "step": -1}], "expected a whole number"),
        ([{"step": 1}], 'no "file"'),
        ([{"file": "../outside.safetensors", "step": 1}], "outside"),
        ([{"file": "missing.safetensors", "step": 1}], "does not exist"),
        ({"something": 1}, "expected a list"),
        ([{"file": "a.safetensors", "step": 1}, {"file": "a.safetensors", "step": 1}], "both have step 1"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_it(tmp_path, doc, words):
    d = tmp_path / "run"
    d.mkdir()
    _st(d / "a.safetensors", _model(0))
    _st(tmp_path / "outside.safetensors", _model(1))
    (d / "series.json").write_text(json.dumps(doc))
    with pytest.raises(NNVitalsError) as e:
        load_series(d)
    msg = _one_line(e)
    assert words in msg and ("series.json" in msg or "a.safetensors" in msg)


def test_a_manifest_that_is_not_json(tmp_path):
    (tmp_path / "series.json").write_text("{nope")
    with pytest.raises(NNVitalsError) as e:
        load_series(tmp_path)
    assert "series.json: not valid JSON" in _one_line(e)


def test_python_lists(tmp_path):
    paths = [_st(tmp_path / f"ckpt_{s:04d}.safetensors", _model(s)) for s in (30, 10, 20)]
    assert load_series(paths).steps == [10, 20, 30]
    assert load_series([str(p) for p in paths]).steps == [10, 20, 30]
    pairs = load_series([(5, paths[0]), (1, paths[1])])
    assert pairs.steps == [1, 5] and pairs.checkpoints[0].name == paths[1].name
    # names with no step: the list's order
    plain = [_st(tmp_path / f"{n}.safetensors", _model(i)) for i, n in enumerate(("init", "mid", "end"))]
    s = load_series(plain)
    assert s.unit == "index" and s.steps == [0, 1, 2] and [c.name for c in s] == [p.name for p in plain]
    # (step, module) pairs run as they are
    mods = load_series([(0, _model(0)), (10, _model(1))])
    assert mods.open(mods.checkpoints[1])[1].module() is not None
    with pytest.raises(NNVitalsError) as e:
        load_series([(1, paths[0]), paths[1]])
    assert "mixes" in _one_line(e)
    with pytest.raises(NNVitalsError) as e:
        load_series([(1.5, paths[0])])
    assert "series[0]" in _one_line(e)
    assert isinstance(load_series(s), CheckpointSeries)


# --------------------------------------------------------------------------- errors
def test_no_checkpoints(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(NNVitalsError) as e:
        load_series(tmp_path)
    msg = _one_line(e)
    assert str(tmp_path) in msg and "no checkpoints" in msg and ".safetensors" in msg
    with pytest.raises(NNVitalsError) as e:
        load_series(tmp_path / "absent")
    assert "no such directory" in _one_line(e)
    with pytest.raises(NNVitalsError) as e:
        load_series([])
    assert "empty" in _one_line(e)


def test_ambiguous_ordering(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _st(a / "step_1.safetensors", _model(0))
    _st(a / "final.safetensors", _model(1))
    with pytest.raises(NNVitalsError) as e:
        load_series(a)
    msg = _one_line(e)
    assert "final.safetensors" in msg and "no step in its name" in msg and "series.json" in msg
    _st(b / "step_100.safetensors", _model(0))
    _st(b / "epoch_2.safetensors", _model(1))
    with pytest.raises(NNVitalsError) as e:
        load_series(b)
    msg = _one_line(e)
    assert "ambiguous ordering" in msg and "epoch_2.safetensors" in msg and "step_100.safetensors" in msg


def test_duplicate_steps(tmp_path):
    _st(tmp_path / "step_5.safetensors", _model(0))
    _pt(tmp_path / "step-5.pt", _model(1))
    with pytest.raises(NNVitalsError) as e:
        load_series(tmp_path)
    msg = _one_line(e)
    assert "step-5.pt" in msg and "step_5.safetensors" in msg and "both have step 5" in msg


def test_mixed_architectures(tmp_path):
    _st(tmp_path / "step_1.safetensors", _model(0, hidden=32))
    _st(tmp_path / "step_2.safetensors", _model(1, hidden=48))
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path)
    msg = _one_line(e)
    assert "mixed architectures" in msg and "step_2.safetensors" in msg and "step_1.safetensors" in msg


def test_an_unreadable_checkpoint_is_named_while_the_rest_still_run(tmp_path):
    for s in (0, 10, 30):
        _st(tmp_path / f"step_{s}.safetensors", _model(s))
    (tmp_path / "step_20.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    res = _spectra_only(tmp_path)
    assert res.steps == [0, 10, 30] and sorted(set(res.table["step"])) == [0, 10, 30]
    errors = res.errors
    assert len(errors) == 1 and errors.iloc[0]["step"] == 20
    msg = errors.iloc[0]["message"]
    assert "step_20.safetensors" in msg and "\n" not in msg
    from analyses.trajectory.views import summary_text

    assert "step_20.safetensors" in summary_text(res)


def test_nothing_readable_is_one_line(tmp_path):
    (tmp_path / "step_1.pt").write_bytes(b"not a zip")
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path)
    msg = _one_line(e)
    assert "no checkpoint could be read" in msg and "step_1.pt" in msg


def test_runnable_analyses_without_an_architecture_say_what_to_give(tmp_path):
    _st(tmp_path / "step_1.safetensors", _model(0))
    with pytest.raises(NNVitalsError) as e:
        Trajectory(series=tmp_path, analyses=["ibp"], cache=False, show_progress=False).run()
    assert "architecture" in _one_line(e)
    res = Trajectory(series=tmp_path, cache=False, show_progress=False).run()  # default: what applies
    assert res.analyses == ["spectra"] and "ibp" in res.summary["not_applicable"]


def test_bad_overrides_and_baseline(tmp_path):
    _st(tmp_path / "step_1.safetensors", _model(0))
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path, overrides={"spectra": {"xmin_rule": "nope"}})
    assert "overrides['spectra']" in _one_line(e)
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path, overrides={"spectra": {"cache_dir": "/tmp"}})
    assert "cache_dir" in _one_line(e)
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path, overrides={"nerf": {}})
    assert "unknown analysis 'nerf'" in _one_line(e)
    with pytest.raises(NNVitalsError) as e:
        _spectra_only(tmp_path, baseline=7)
    assert "step 7" in _one_line(e) and "steps 1" in str(e.value)


@pytest.mark.parametrize("kind, alone", [("spectra", False), ("ibp", True), ("lipschitz", True),
                                         ("connectivity", True), ("orbits", True)])  # fmt: skip
def test_analyses_that_call_the_model_run_one_at_a_time_across_checkpoints(kind, alone):
    """A checkpoint's run that calls the model takes the model turn (as every torch.export does):
    a model called from another checkpoint's thread while torch.export traced broke the trace
    (non-strict export patches torch.nn.Module's call process-wide). Spectra reads weights only."""
    from analyses.core.threads import MODEL_TURN
    from analyses.trajectory.analysis import analysis_class

    cls = analysis_class(kind)
    assert cls.calls_model is alone
    seen = []

    class Probe(cls):
        def _tasks(self, subject):
            seen.append(MODEL_TURN.held_here())
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        pair = {"model_b": "mlp"} if kind == "connectivity" else {}
        Probe(model="mlp", cache=False, show_progress=False, **pair).run()
    assert seen == [alone] and MODEL_TURN.holder is None

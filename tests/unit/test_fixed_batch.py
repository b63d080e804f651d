"""Programs exported with a fixed batch size (``torch.export.export(m, (x,))``, no dynamic shapes)
run batches of any size in every analysis (analyses.core.batching, ExportSubject).

The batch axis is made dynamic where the graph allows (a flatten, a ``view(x.shape[0], -1)`` baked
into ``view(x, [1, -1])``, the views of batch x heads in attention, a class token expanded per
sample; where shapes cannot tell the batch's axis, at batch 1 above all, running the graph on two
samples does); a graph whose batch axis cannot be followed is run in chunks of the exported size. Each analysis that runs models is driven through its public API on ``.pt2``
files saved at batch 1 and batch 7, and agrees with the live module; the result says what was done.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from analyses.bounds.analysis import LipschitzBounds
from analyses.connectivity.analysis import ModeConnectivity
from analyses.core.batching import FixedBatchModule, free_batch, recorded_batch
from analyses.core.data import load_digits
from analyses.core.subject import ExportSubject, load_subject
from analyses.orbits.analysis import OrbitAnalysis

pytestmark = pytest.mark.usefixtures("one_thread")


class Flat(nn.Module):
    """Conv, ReLU, flatten, linear: every op per sample."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Viewed(Flat):
    """``view(x.shape[0], -1)``: export bakes the batch size into the view's shape."""

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


class Ambiguous(nn.Module):
    """Reshapes whose every size is a multiple of 7 (and at batch 1, of 1): the shapes do not say
    which axis holds the batch; running the graph on two samples alone and together does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 7, 3)
        self.fc = nn.Linear(7 * 6 * 6, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).reshape(x.shape[0] * 36, 7)
        return self.fc(h.reshape(x.shape[0], 7 * 36))


class Unflattened(nn.Module):
    """``unflatten`` of the batch merged with the channels: export spells the batch size out in its
    sizes, which no rewrite follows (only reshapes' are): run in chunks of the exported size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 7, 3)
        self.fc = nn.Linear(7 * 6 * 6, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(0, 1).unflatten(0, (x.shape[0], 7))
        return self.fc(h.flatten(1))


class SeqFirstAttention(nn.Module):
    """``nn.MultiheadAttention`` sequence-first: its views merge the batch with the heads
    (``[4, B * 2, 4]``) and with the positions (``[4 * B, 8]``); at batch 1 or 2 (as many samples
    as heads) the shapes cannot say which."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, 4)
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).permute(2, 0, 1)  # (positions, batch, features)
        return self.head(self.attn(t, t, t, need_weights=False)[0].mean(0))


class Zeros(Flat):
    """``torch.zeros(x.shape[0], 10)``: a tensor made from the batch size spelled out."""

    def forward(self, x):
        return super().forward(x) + torch.zeros(x.shape[0], 10)


class Tokens(nn.Module):
    """A class token per sample (``expand``) and attention: ``view``s of batch x heads."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        return self.head(self.block(t)[:, 0])


def _model(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


def _export(model: nn.Module, batch: int, path=None):
    program = torch.export.export(model, (torch.rand(batch, 1, 8, 8),))
    if path is not None:
        torch.export.save(program, str(path))
    return program


@pytest.mark.parametrize("cls", [Flat, Viewed])
@pytest.mark.parametrize("batch", [1, 7])
def test_the_batch_axis_is_made_dynamic_when_the_graph_allows(cls, batch):
    model = _model(cls)
    program = _export(model, batch)
    assert recorded_batch(program) == batch
    with pytest.raises(Exception, match="Guard failed"):  # what an analysis met before
        program.module()(torch.rand(batch + 2, 1, 8, 8))
    fix = free_batch(program, "m.pt2")
    assert fix.how == "dynamic" and fix.fixed == batch and recorded_batch(fix.program) is None
    assert fix.note.startswith("m.pt2: exported with a fixed batch size of") and "dynamic" in fix.note
    x = torch.rand(11, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fix.program.module()(x), model(x), atol=1e-6)
        assert torch.allclose(fix.program.module()(x[:1]), model(x[:1]), atol=1e-6)
    assert list(fix.program.state_dict) == list(program.state_dict)
    # the module paths survive: layers keep their names for Bounds and Connectivity
    paths = {str(list(n.meta["nn_module_stack"].values())[-1][0]) for n in fix.program.graph.nodes
             if n.op == "call_function" and n.meta.get("nn_module_stack")}  # fmt: skip
    assert {"conv", "fc"} <= {p.split(".")[-1] for p in paths}


@pytest.mark.parametrize(
    ("cls", "batch", "how"),
    [
        (Zeros, 7, "dynamic"),
        (Tokens, 7, "dynamic"),
        (Tokens, 1, "dynamic"),
        (Ambiguous, 1, "dynamic"),
        (Ambiguous, 7, "dynamic"),
        (SeqFirstAttention, 1, "dynamic"),
        (SeqFirstAttention, 2, "dynamic"),
        (Unflattened, 1, "chunks"),
    ],
)
def test_sizes_spelled_out_in_other_ops(cls, batch, how):
    model = _model(cls)
    fix = free_batch(_export(model, batch))
    assert fix.how == how
    run = fix.program.module() if how == "dynamic" else FixedBatchModule(fix.program.module(), batch)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(run(x), model(x), atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_a_graph_that_keeps_its_batch_size_runs_in_chunks(batch):
    model = _model(Unflattened)
    program = _export(model, batch)
    fix = free_batch(program, "mix.pt2")
    assert fix.how == "chunks" and fix.program is program
    assert f"chunks of {batch} samples" in fix.note
    wrapped = FixedBatchModule(program.module(), batch)
    assert list(wrapped.state_dict()) == list(program.module().state_dict())
    for n in (1, batch, batch + 3, 3 * batch):
        x = torch.rand(n, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(wrapped(x), model(x), atol=1e-6), n


def test_a_free_batch_program_is_left_as_it_is():
    program = torch.export.export(
        _model(Flat), (torch.rand(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    fix = free_batch(program)
    assert fix.program is program and fix.how == "" and fix.note == "" and fix.fixed is None


def test_export_subject_runs_any_batch_keeps_its_fingerprint_and_notes(tmp_path):
    model = _model(Viewed)
    path = tmp_path / "viewed.pt2"
    _export(model, 1, path)
    subject = load_subject(str(path))
    assert isinstance(subject, ExportSubject)
    fp = subject.fingerprint
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(subject.module()(x), model(x), atol=1e-6)
    assert recorded_batch(subject.program()) is None and recorded_batch(subject.loaded_program()) == 1
    assert subject.notes and "fixed batch size of 1" in subject.notes[0]
    assert torch.equal(subject.tensor("fc.weight"), model.fc.weight.detach())
    assert subject.fingerprint == fp == load_subject(str(path)).fingerprint
    again = pickle.loads(pickle.dumps(subject))  # a worker works it out again
    assert "_fix" not in again.__dict__ and again.notes == subject.notes
    # chunks: the module cuts batches
    _export(_model(Unflattened), 7, tmp_path / "mix.pt2")
    mixing = load_subject(str(tmp_path / "mix.pt2"))
    assert isinstance(mixing.module(), FixedBatchModule)
    with torch.no_grad():
        assert torch.allclose(mixing.module()(x), _model(Unflattened)(x), atol=1e-6)


# --------------------------------------------------------------------------- through the analyses


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixed")
    models = {seed: _model(Viewed, seed) for seed in (0, 1)}
    out = {"models": models}
    for batch in (1, 7):
        for seed, m in models.items():
            path = d / f"viewed{seed}_b{batch}.pt2"
            _export(m, batch, path)
            out[(batch, seed)] = str(path)
    out[("mix", 7)] = str(d / "mix_b7.pt2")
    _export(_model(Unflattened), 7, d / "mix_b7.pt2")
    return out


def _run(cls, **kw):
    return cls(cache=False, show_progress=False, **kw).run()


@pytest.mark.parametrize("batch", [1, 7])
def test_orbits_on_fixed_batch_files_equal_the_module(files, batch):
    kw = dict(data="digits8", steps=4, max_samples=20, batch_size=6)
    ref = _run(OrbitAnalysis, model=files["models"][0], **kw)
    got = _run(OrbitAnalysis, model=files[(batch, 0)], **kw)
    assert np.allclose(got.scores(), ref.scores(), atol=1e-5)
    notes = got.meta["notes"]
    assert len(notes) == 1 and f"fixed batch size of {batch}" in notes[0] and "dynamic" in notes[0]
    assert "notes" not in ref.meta


def test_orbits_on_a_file_run_in_chunks(files):
    kw = dict(data="digits8", steps=4, max_samples=10, batch_size=4)
    ref = _run(OrbitAnalysis, model=_model(Unflattened), **kw)
    got = _run(OrbitAnalysis, model=files[("mix", 7)], **kw)
    assert np.allclose(got.scores(), ref.scores(), atol=1e-5)
    assert "chunks of 7" in got.meta["notes"][0]


@pytest.mark.parametrize("batch", [1, 7])
def test_lipschitz_on_fixed_batch_files_equals_the_module(files, batch):
    kw = dict(max_samples=8, mixes=4, iters=50, jacobian_iters=10, per_layer=False)
    ref = _run(LipschitzBounds, model=files["models"][0], **kw)
    got = _run(LipschitzBounds, model=files[(batch, 0)], **kw)
    assert got.summary["upper"] == pytest.approx(ref.summary["upper"], rel=1e-4)
    assert got.summary["lower"] == pytest.approx(ref.summary["lower"], rel=1e-4)
    assert any(f"fixed batch size of {batch}" in n for n in got.meta["notes"])  # the result says so
    assert "notes" not in ref.meta


@pytest.mark.parametrize("batch", [1, 7])
def test_connectivity_on_fixed_batch_files_equals_the_modules(files, batch):
    kw = dict(points=3, match="weights")
    a, b = files["models"][0], files["models"][1]
    ref = _run(ModeConnectivity, model_a=a, model_b=b, **kw)
    got = _run(ModeConnectivity, model_a=files[(batch, 0)], model_b=files[(batch, 1)], **kw)
    cols = ["pair", "path", "split", "lam"]
    r = ref.table.sort_values(cols).reset_index(drop=True)
    g = got.table.sort_values(cols).reset_index(drop=True)
    assert len(r) == len(g)
    for c in ("loss", "accuracy"):
        assert np.allclose(g[c].to_numpy(float), r[c].to_numpy(float), atol=1e-4), c
    assert len(got.meta["notes"]) == 2 and all(f"fixed batch size of {batch}" in n for n in got.meta["notes"])
    # the interpolated models run on a batch the exports refused
    x = load_digits(split="test").x[:5]
    with torch.no_grad():
        out = ModeConnectivity(model_a=files[(batch, 0)], model_b=files[(batch, 1)], cache=False)
        assert out.interpolated_module(0.5, "naive")(x).shape == (5, 10)

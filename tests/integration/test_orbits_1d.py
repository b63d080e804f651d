"""Orbits beyond gray digits: 1-D signals (N, C, L) under time shift (zero-filled or circular), time
reversal and resampling; RGB classifiers with their input normalisation given as parameters, at the
model's input size; models of token ids refused in one line. Every score is checked against the
model run by hand on the transformed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analyses.core.errors import NNVitalsError
from analyses.orbits import views
from analyses.orbits.analysis import OrbitAnalysis, setting_problems
from analyses.spectra.analysis import SpectralAnalysis

pytestmark = pytest.mark.usefixtures("one_thread")

N, C, L, K = 16, 2, 32, 3


def _conv1d(padding_mode: str = "zeros", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(C, 6, 5, padding=2, padding_mode=padding_mode),
        nn.ReLU(),
        nn.Conv1d(6, 6, 3, padding=1, padding_mode=padding_mode),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(6, K),
    ).eval()


@pytest.fixture(scope="module")
def signals():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(N, C, L, generator=gen), torch.arange(N) % K


def _run(**kw):
    return OrbitAnalysis(cache=False, show_progress=False, **kw).run()


def _probs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x), 1)[torch.arange(len(y)), y].numpy()


def test_time_shift_zero_filled_and_circular(signals):
    x, y = signals
    model = _conv1d()
    res = _run(model=model, data=(x, y), group="shift", shift_range=3, shift_step=1)
    assert res.group == "time-shift" and res.scores().shape == (N, 7)
    assert list(res.elements.params["shift"]) == [-3, -2, -1, 0, 1, 2, 3]
    assert res.elements.label(5) == "shift 2" and res.elements.title == "Time shift (samples)"
    zero_filled = torch.zeros_like(x)
    zero_filled[..., 2:] = x[..., :-2]  # content 2 samples later, zeros in front
    np.testing.assert_allclose(res.scores()[:, 5], _probs(model, zero_filled, y), atol=1e-6)
    np.testing.assert_allclose(res.scores()[:, 3], _probs(model, x, y), atol=1e-6)
    circ = _run(model=model, data=(x, y), group="shift", shift_range=3, shift_fill="circular")
    np.testing.assert_allclose(circ.scores()[:, 1], _probs(model, torch.roll(x, -2, -1), y), atol=1e-6)
    assert circ.meta["shift_fill"] == "circular"
    assert not np.allclose(circ.scores(), res.scores())  # the fill matters
    # a circular convolution with global pooling is invariant under circular shifts: a flat orbit
    inv = _conv1d("circular")
    flat = _run(model=inv, data=(x, y), group="shift", shift_range=5, shift_fill="circular")
    assert flat.summary["models"]["Sequential"]["gap"] < 1e-5
    assert (
        _run(model=inv, data=(x, y), group="shift", shift_range=5).summary["models"]["Sequential"]["gap"]
        > 1e-4
    )
    # half a sample: the mean of the two neighbouring shifts' inputs
    half = _run(model=model, data=(x, y), group="time-shift", shift_range=0.5, shift_step=0.5)
    mid = 0.5 * (x + torch.cat([torch.zeros_like(x[..., :1]), x[..., :-1]], dim=-1))
    np.testing.assert_allclose(half.scores()[:, 2], _probs(model, mid, y), atol=1e-6)


def test_time_reversal_and_resampling(signals):
    x, y = signals
    model = _conv1d()
    flip = _run(model=model, data=(x, y), group="flip")
    assert flip.group == "time-flip" and [flip.elements.label(i) for i in (0, 1)] == ["forward", "reversed"]
    np.testing.assert_allclose(flip.scores()[:, 1], _probs(model, x.flip(-1), y), atol=1e-6)
    scale = _run(model=model, data=(x, y), group="scale", scale_range=(0.5, 2.0), scale_step=0.5)
    assert scale.group == "time-scale" and list(scale.elements.params["scale"]) == [0.5, 1.0, 1.5, 2.0]
    np.testing.assert_allclose(scale.scores()[:, 1], _probs(model, x, y), atol=1e-6)
    # x2 about the centre: output sample t reads the input at c + (t - c) / 2, linearly interpolated
    c = (L - 1) / 2
    pos = c + (torch.arange(L, dtype=torch.float64) - c) / 2
    lo = pos.floor().long()
    w = (pos - lo).float()
    stretched = x[..., lo] * (1 - w) + x[..., (lo + 1).clamp(max=L - 1)] * w
    np.testing.assert_allclose(scale.scores()[:, 3], _probs(model, stretched, y), atol=1e-5)
    # the views draw signals as lines
    for fig in views.main_figures(scale).values():
        assert fig is not None
    detail = views.detail_view(scale, 0, 3)
    assert detail is not None and scale.transformed(0, 3).shape == (C, L)
    np.testing.assert_allclose(scale.transformed(0, 3), stretched[0].numpy(), atol=1e-6)


def test_signals_from_an_npz_and_a_fixed_batch_export(signals, tmp_path):
    x, y = signals
    model = _conv1d()
    np.savez(tmp_path / "sig.npz", x=x.numpy(), y=y.numpy())
    program = torch.export.export(model, (x[:1],))  # batch fixed at 1
    torch.export.save(program, str(tmp_path / "conv1d.pt2"))
    res = _run(model=str(tmp_path / "conv1d.pt2"), data=str(tmp_path / "sig.npz"), group="flip")
    np.testing.assert_allclose(res.scores()[:, 1], _probs(model, x.flip(-1), y), atol=1e-5)
    assert "fixed batch size of 1" in res.meta["notes"][0]


def test_images_only_groups_and_bad_signals_get_one_line(signals, tmp_path):
    x, y = signals
    with pytest.raises(NNVitalsError) as info:
        _run(model=_conv1d(), data=(x, y), group="rotation")
    msg = str(info.value)
    assert "\n" not in msg and "group 'rotation': acts on images" in msg and "1-D signals" in msg
    with pytest.raises(NNVitalsError, match="group 'time-flip': acts on 1-D signals"):
        _run(model="cnn", data="digits8", group="time-flip")
    np.savez(tmp_path / "loud.npz", x=(x * 10).numpy(), y=y.numpy())
    with pytest.raises(NNVitalsError, match=r"signal values must lie in \[0, 1\].*mean and std"):
        _run(model=_conv1d(), data=str(tmp_path / "loud.npz"), group="flip")
    with pytest.raises(NNVitalsError, match=r"failed on signals of shape \(2, 2, 32\)"):
        _run(model=nn.Sequential(nn.Conv1d(5, 2, 3), nn.Flatten()), data=(x, y), group="flip")


def test_spectra_reads_a_conv1d_net():
    res = SpectralAnalysis(model=_conv1d(), cache=False, show_progress=False).run()
    kinds = dict(zip(res.table["name"], res.table["layer_type"], strict=True))
    assert kinds.get("0.weight") == "conv1d" and kinds.get("2.weight") == "conv1d"


# --------------------------------------------------------------------------- RGB and normalisation

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_an_rgb_cnn_with_its_normalisation(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(12, 3, 16, 16, generator=gen), torch.arange(12) % 10
    model = _rgb_cnn()
    res = _run(model=model, data=(x, y), steps=4, mean=MEAN, std=STD)
    np.testing.assert_allclose(res.scores()[:, 0], _probs(model, _normalised(x), y), atol=1e-6)
    rot = torch.rot90(x, 1, dims=(2, 3))  # 90 degrees, counter-clockwise on screen
    np.testing.assert_allclose(res.scores()[:, 1], _probs(model, _normalised(rot), y), atol=1e-6)
    assert res.meta["normalisation"] == {"mean": list(MEAN), "std": list(STD)}
    assert res.images.shape == (12, 3, 16, 16) and res.transformed(0, 1).shape == (3, 16, 16)
    views.detail_view(res, 0, 1)
    plain = _run(model=model, data=(x, y), steps=4)
    assert not np.allclose(plain.scores(), res.scores())  # the normalisation is applied
    # one number for every channel
    one = _run(model=model, data=(x, y), steps=2, mean=0.5, std=0.25)
    np.testing.assert_allclose(one.scores()[:, 0], _probs(model, (x - 0.5) / 0.25, y), atol=1e-6)


def test_an_rgb_export_runs_on_the_digits_at_its_input_size(tmp_path):
    model = _rgb_cnn()
    program = torch.export.export(model, (torch.rand(1, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "rgb32.pt2"))
    res = _run(
        model=str(tmp_path / "rgb32.pt2"), data="digits16", steps=4, max_samples=10, mean=MEAN, std=STD
    )
    assert res.images.shape == (10, 3, 32, 32) and res.summary["data"] == "digits16-test as 3x32x32"
    x = torch.from_numpy(res.images)
    assert torch.equal(x[:, 0], x[:, 2])  # the gray channel repeated
    np.testing.assert_allclose(
        res.scores()[:, 0], _probs(model, _normalised(x), torch.from_numpy(res.labels)), atol=1e-5
    )
    notes = " ".join(res.meta["notes"])
    assert "resized from 16x16 to 32x32" in notes and "gray channel repeated" in notes
    with pytest.raises(NNVitalsError, match="failed on images of shape"):  # off: as they are
        _run(model=str(tmp_path / "rgb32.pt2"), data="digits16", steps=2, max_samples=4, fit_input=False)


def test_bad_normalisation_settings_are_named():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    with pytest.raises(NNVitalsError, match=r"^mean: expected one number or 3 \(one per channel"):
        _run(model=_rgb_cnn(), data=(x, y), steps=2, mean=(0.5, 0.5))
    with pytest.raises(NNVitalsError, match=r"^std: expected positive numbers"):
        _run(model=_rgb_cnn(), data=(x, y), steps=2, std=(0.5, 0.0, 0.5))
    problems = setting_problems({"std": [0.2, -1.0], "mean": "a lot"})
    assert set(problems) == {"std", "mean"} and "positive" in problems["std"]


def test_every_user_facing_setting_has_a_label():
    base = {"name", "device", "dtype", "cache", "cache_dir", "runner", "show_progress", "allow_tf32"}
    own = [n for n in OrbitAnalysis.param if n not in base]
    assert {"mean", "std", "shift_fill", "fit_input", "group", "steps"} <= set(own)
    unlabelled = [n for n in own if OrbitAnalysis.param[n]._label is None]
    assert unlabelled == []
    # the words the page showed before the labels moved here
    assert OrbitAnalysis.param["steps"].label == "Rotation angles (from 0°)"
    assert OrbitAnalysis.param["shift_step"].label == "Shift step (px)"
    assert OrbitAnalysis.param["batch_size"].label == "Images per forward pass"


# --------------------------------------------------------------------------- token ids


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def test_a_model_of_token_ids_gets_one_line(tmp_path):
    model = _TinyLM().eval()
    program = torch.export.export(model, (torch.zeros(2, 12, dtype=torch.long),))
    torch.export.save(program, str(tmp_path / "lm.pt2"))
    for m in (str(tmp_path / "lm.pt2"), program, model):
        with pytest.raises(NNVitalsError) as info:
            _run(model=m, data="digits8", steps=2)
        msg = str(info.value)
        assert "\n" not in msg and "takes token ids" in msg and "does not apply" in msg, msg

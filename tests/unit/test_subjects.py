"""Model subjects from every accepted source, and a clear one-line error for everything else."""

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analyses import NNVitalsError, load_subject
from analyses.core.subject import ExportSubject, ModuleSubject, SafetensorsSubject, StateDictSubject


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(100, 16)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(16, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.fc(x))


class Marker:
    """An object whose unpickling would create a file: must never happen."""

    path = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def one_line(e: Exception) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


def test_module_subject_kinds_and_fingerprint():
    s = load_subject(Net())
    assert isinstance(s, ModuleSubject)
    kinds = {w.name: w.kind for w in s.weights()}
    assert kinds == {"emb.weight": "embedding", "conv.weight": "conv2d", "fc.weight": "linear"}
    assert s.fingerprint == load_subject(Net()).fingerprint
    other = Net()
    with torch.no_grad():
        other.fc.weight[0, 0] += 1
    assert load_subject(other).fingerprint != s.fingerprint


def test_safetensors_streams_exact_tensors(tmp_path):
    sd = {k: v.contiguous() for k, v in Net().state_dict().items()}
    sd["half"] = torch.randn(20, 30).to(torch.bfloat16)
    save_file(sd, tmp_path / "m.safetensors")
    s = load_subject(tmp_path / "m.safetensors")
    assert isinstance(s, SafetensorsSubject)
    for name, t in sd.items():
        assert torch.equal(s.tensor(name), t), name
    kinds = {w.name: w.kind for w in s.weights()}
    assert kinds["emb.weight"] == "embedding" and kinds["conv.weight"] == "conv2d"
    assert "fc.bias" not in kinds  # vectors are not matrices
    # picklable for Dask workers, and still reads after a round trip
    s2 = pickle.loads(pickle.dumps(s))
    assert torch.equal(s2.tensor("fc.weight"), sd["fc.weight"])


def test_state_dict_pt_and_nested_checkpoint(tmp_path):
    sd = Net().state_dict()
    torch.save(sd, tmp_path / "a.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "b.pth")
    for f in ("a.pt", "b.pth"):
        s = load_subject(tmp_path / f)
        assert isinstance(s, StateDictSubject)
        assert torch.equal(s.tensor("fc.weight"), sd["fc.weight"])


def test_exported_program_kinds_from_graph(tmp_path):
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    ep = torch.export.export(m, (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    s = load_subject(tmp_path / "m.pt2")
    assert isinstance(s, ExportSubject)
    assert {w.name: w.kind for w in s.weights()} == {"0.weight": "conv2d", "2.weight": "linear"}
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(s.module()(x), m(x))


def test_hf_directory_with_config(tmp_path):
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file(
        {"h.0.attn.c_attn.weight": torch.randn(16, 48), "wte.weight": torch.randn(50, 16)},
        d / "model.safetensors",
    )
    s = load_subject(d)
    kinds = {w.name: w.kind for w in s.weights()}
    assert kinds == {"h.0.attn.c_attn.weight": "hf_conv1d", "wte.weight": "embedding"}


def test_factory_reference_and_demo_names():
    s = load_subject("analyses.zoo.models:DigitsMLP")
    assert isinstance(s, ModuleSubject) and any(w.kind == "linear" for w in s.weights())
    with pytest.raises(NNVitalsError, match="not accepted here"):
        load_subject("analyses.zoo.models:DigitsMLP", allow_factory=False)
    demo = load_subject("mlp")
    assert demo.source_kind == "demo" and demo.weights()


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    Marker.path = str(marker)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Marker()}, f)
    torch.save({"w": Marker()}, tmp_path / "evil2.pt")
    for f in ("evil.pt", "evil2.pt"):
        with pytest.raises(NNVitalsError) as e:
            load_subject(tmp_path / f)
        assert f in one_line(e.value)
    assert not marker.exists()


def test_bad_inputs_give_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.safetensors").write_text("these are my notes, not a model")
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, good)
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:-100])
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "weird.onnx").write_bytes(b"\x00\x01")
    (tmp_path / "bad.pt2").write_text("not a zip")
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}).encode()
    (tmp_path / "mismatch.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 60)
    cases = {
        tmp_path / "missing.safetensors": "no such file",
        tmp_path / "empty": "holds no model",
        tmp_path / "notes.safetensors": "not a .safetensors file",
        tmp_path / "trunc.safetensors": "truncated",
        tmp_path / "text.pt": "not a readable PyTorch checkpoint",
        tmp_path / "zero.pt": "empty file",
        tmp_path / "weird.onnx": "unknown model format",
        tmp_path / "bad.pt2": "not a torch.export program",
        tmp_path / "mismatch.safetensors": "does not match its shape",
    }
    for path, expected in cases.items():
        with pytest.raises(NNVitalsError) as e:
            load_subject(path)
        msg = one_line(e.value)
        assert expected in msg, msg
        assert Path(path).name in msg, msg
    with pytest.raises(NNVitalsError, match="expected a torch.nn.Module"):
        load_subject(42)


def test_an_exported_programs_module_passed_as_a_module_runs():
    """``ExportedProgram.module()`` refuses ``.eval()``; given as an ``nn.Module`` it still runs."""
    from analyses.core.subject import runnable_module

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    gm = torch.export.export(model, (x,)).module()
    mod = runnable_module(load_subject(gm))
    assert torch.allclose(mod(x), model(x))

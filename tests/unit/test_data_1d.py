"""1-D data: signals of shape (N, C, L) load from arrays, .npz and .pt files, and keep their shape;
the other shapes are refused in one line naming the file and the shapes accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.core.data import Dataset, as_dataset, load_npz, load_pt
from analyses.core.errors import NNVitalsError


def _signals(n: int = 12, c: int = 2, length: int = 40):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, c, length, generator=gen), torch.arange(n) % 3


def test_signals_from_arrays_keep_their_shape():
    x, y = _signals()
    ds = as_dataset((x, y))
    assert ds.x.shape == (12, 2, 40) and ds.input_shape == (2, 40) and ds.kind == "signal"
    assert ds.classes == 3 and torch.equal(ds.x, x)
    assert as_dataset((x.numpy().astype(np.float64), y.numpy())).x.dtype == torch.float32
    assert ds.subset([0, 3]).x.shape == (2, 2, 40)
    assert Dataset(x=x, y=y, name="s", classes=3).kind == "signal"
    assert as_dataset("digits8").kind == "image" and as_dataset((x.reshape(12, -1), y)).kind == "vector"


def test_signals_from_npz_and_pt_files(tmp_path):
    x, y = _signals()
    np.savez(tmp_path / "sig.npz", x=x.numpy(), y=y.numpy())
    torch.save({"x": x, "y": y}, tmp_path / "sig.pt")
    torch.save((x, y), tmp_path / "pair.pth")
    for path in ("sig.npz", "sig.pt", "pair.pth"):
        ds = as_dataset(str(tmp_path / path))
        assert ds.x.shape == (12, 2, 40) and torch.equal(ds.x, x) and torch.equal(ds.y, y), path
    assert load_npz(tmp_path / "sig.npz").fingerprint == load_pt(tmp_path / "sig.pt").fingerprint


def test_bad_shapes_and_files_get_one_line(tmp_path):
    x, y = _signals()
    cases = {
        "one_dim.npz": dict(x=np.random.rand(12), y=y.numpy()),
        "five_dims.npz": dict(x=np.random.rand(12, 1, 2, 3, 4), y=y.numpy()),
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(NNVitalsError) as info:
            as_dataset(str(tmp_path / name))
        msg = str(info.value)
        assert "\n" not in msg and name in msg and "(N, C, L) 1-D signals" in msg, msg
    torch.save({"inputs": x}, tmp_path / "keys.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"x": x.to(torch.int64), "y": y}, tmp_path / "ints.pt")
    expected = {
        "keys.pt": "expected tensors 'x' (inputs) and 'y' (labels)",
        "list.pt": "expected tensors 'x'",
        "junk.pt": "not a readable torch data file",
        "ints.pt": "x must be floating point",
    }
    for name, text in expected.items():
        with pytest.raises(NNVitalsError) as info:
            as_dataset(str(tmp_path / name))
        msg = str(info.value)
        assert "\n" not in msg and name in msg and text in msg, msg


def test_a_pt_file_with_code_is_refused_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil(), "y": torch.zeros(2)}, tmp_path / "evil.pt")
    with pytest.raises(NNVitalsError, match="evil.pt: not a readable torch data file"):
        as_dataset(str(tmp_path / "evil.pt"))

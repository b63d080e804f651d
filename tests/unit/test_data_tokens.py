"""Token ids as data (issue 13: a GPT-style model on token ids): 'ids' instead of 'x' in a data file."""

import numpy as np
import pytest
import torch

from analyses.core.data import Dataset, load_npz, load_pt
from analyses.core.errors import NNVitalsError


def test_npz_with_ids_is_a_token_dataset(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50, size=(6, 12)).astype(np.int32)
    y = np.arange(6) % 3
    np.savez(tmp_path / "t.npz", ids=ids, y=y)
    d = load_npz(tmp_path / "t.npz")
    assert d.tokens and d.kind == "tokens" and d.x.dtype == torch.int64 and d.input_shape == (12,)
    assert torch.equal(d.x, torch.from_numpy(ids.astype(np.int64))) and d.classes == 3
    sub = d.subset([0, 2])
    assert sub.tokens and torch.equal(sub.x, d.x[[0, 2]])


def test_pt_with_ids_is_a_token_dataset(tmp_path):
    torch.save({"ids": torch.randint(0, 9, (4, 5)), "y": torch.tensor([0, 1, 0, 1])}, tmp_path / "t.pt")
    d = load_pt(tmp_path / "t.pt")
    assert d.kind == "tokens" and d.x.shape == (4, 5)


def test_integer_x_says_where_token_ids_go(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 7), np.int64), y=np.zeros(4, np.int64))
    with pytest.raises(NNVitalsError) as e:
        load_npz(tmp_path / "t.npz")
    msg = str(e.value)
    assert "\n" not in msg and "t.npz" in msg and "floating point" in msg and "'ids'" in msg


@pytest.mark.parametrize(
    "ids, what",
    [
        (np.zeros((4, 3, 2), np.int64), "(N, T)"),
        (np.zeros((4, 3), np.float32), "integer"),
        (-np.ones((4, 3), np.int64), ">= 0"),
    ],
)
def test_bad_token_ids_are_one_line(tmp_path, ids, what):
    np.savez(tmp_path / "t.npz", ids=ids, y=np.zeros(4, np.int64))
    with pytest.raises(NNVitalsError) as e:
        load_npz(tmp_path / "t.npz")
    assert what in str(e.value) and "t.npz" in str(e.value) and "\n" not in str(e.value)


def test_token_dataset_needs_integer_ids():
    with pytest.raises(NNVitalsError):
        Dataset(x=torch.zeros(4, 3), y=torch.zeros(4, dtype=torch.int64), name="t", classes=1, tokens=True)

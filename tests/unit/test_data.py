"""Built-in digits and user datasets: shapes, ranges, split determinism, npz validation."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.core import data as data_module
from analyses.core.data import Dataset, as_dataset, load_digits, load_npz, stratified_split
from analyses.core.errors import NNVitalsError

N_DIGITS = 1797


# --------------------------------------------------------------------------- digits


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shape_dtype_range(size):
    d = load_digits(size=size)
    assert d.x.shape == (N_DIGITS, 1, size, size)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert d.classes == 10 and set(d.y.tolist()) == set(range(10))
    assert len(d) == N_DIGITS and d.input_shape == (1, size, size)


def test_digits_pixels_are_sklearn_over_16():
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    d = load_digits()
    np.testing.assert_array_equal(d.x[:, 0].numpy(), (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(d.y.numpy(), bunch.target)


def test_digits_upsampling_is_bilinear_interpolate():
    d8, d16 = load_digits(8), load_digits(16)
    expected = torch.nn.functional.interpolate(d8.x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(d16.x, expected.clamp(0, 1))


def test_digits_flat():
    d = load_digits(flat=True)
    assert d.x.shape == (N_DIGITS, 64)
    torch.testing.assert_close(d.x, load_digits().x.reshape(N_DIGITS, 64))
    assert load_digits(16, flat=True).x.shape == (N_DIGITS, 256)


def test_digits_split_partitions_and_is_stratified():
    train, test = load_digits(split="train"), load_digits(split="test")
    assert len(train) + len(test) == N_DIGITS
    assert len(test) == pytest.approx(0.25 * N_DIGITS, abs=10)
    train_idx, test_idx = stratified_split(load_digits().y, 0.25, 0)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted([*train_idx.tolist(), *test_idx.tolist()]) == list(range(N_DIGITS))
    everything = load_digits()
    assert torch.equal(everything.subset(test_idx).x, test.x)
    assert torch.equal(everything.subset(train_idx).y, train.y)
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46  # 25% of 174..183 per class


def test_digits_split_is_deterministic_per_seed():
    a, b = load_digits(split="test", seed=3), load_digits(split="test", seed=3)
    assert a.fingerprint == b.fingerprint
    assert load_digits(split="test", seed=4).fingerprint != a.fingerprint
    assert load_digits(split="test", test_fraction=0.5).x.shape[0] == pytest.approx(N_DIGITS / 2, abs=10)


@pytest.mark.parametrize(
    "kwargs", [{"size": 0}, {"size": 2.5}, {"split": "val"}, {"split": "test", "test_fraction": 1.0}]
)
def test_digits_bad_arguments(kwargs):
    with pytest.raises(NNVitalsError):
        load_digits(**kwargs)


# --------------------------------------------------------------------------- Dataset


def test_dataset_fingerprint_depends_on_content_only():
    d = load_digits(split="test")
    same = Dataset(x=d.x.clone(), y=d.y.clone(), name="other", classes=10)
    assert same.fingerprint == d.fingerprint and len(d.fingerprint) == 64
    x = d.x.clone()
    x[0, 0, 0, 0] += 0.5
    assert Dataset(x=x, y=d.y, name=d.name, classes=10).fingerprint != d.fingerprint
    y = d.y.clone()
    y[0] = (y[0] + 1) % 10
    assert Dataset(x=d.x, y=y, name=d.name, classes=10).fingerprint != d.fingerprint
    flat = Dataset(x=d.x.reshape(len(d), 64), y=d.y, name=d.name, classes=10)
    assert flat.fingerprint != d.fingerprint  # same bytes, different shape


def test_dataset_is_frozen_and_normalises_dtypes():
    d = Dataset(
        x=torch.zeros(4, 3, dtype=torch.float64),
        y=torch.tensor([0, 1, 2, 1], dtype=torch.int32),
        name="t",
        classes=3,
    )
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    with pytest.raises(AttributeError):
        d.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "x, y, classes",
    [
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 1),
        (torch.zeros(4, 3), torch.zeros(4), 1),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64), 1),
        (torch.zeros(4, 3, 2, 2, 2), torch.zeros(4, dtype=torch.int64), 1),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), 3),
        (np.zeros((4, 3), np.float32), np.zeros(4, np.int64), 1),
    ],
)
def test_dataset_rejects_bad_fields(x, y, classes):
    with pytest.raises(NNVitalsError):
        Dataset(x=x, y=y, name="bad", classes=classes)


def test_subset_and_batches():
    d = load_digits(split="test")
    sub = d.subset([0, 5, 7])
    assert len(sub) == 3 and torch.equal(sub.x[1], d.x[5]) and sub.classes == 10
    assert len(d.subset(d.y == 3)) == int((d.y == 3).sum())
    assert len(d.subset(slice(0, 10))) == 10
    assert len(d.subset([])) == 0
    with pytest.raises(NNVitalsError):
        d.subset([len(d)])
    with pytest.raises(NNVitalsError):
        d.subset([0.5])
    batches = list(d.batches(128))
    assert [len(b[1]) for b in batches] == [128, 128, 128, len(d) - 384]
    assert torch.equal(torch.cat([b[0] for b in batches]), d.x)
    with pytest.raises(NNVitalsError):
        next(d.batches(0))


# --------------------------------------------------------------------------- npz


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_round_trip(tmp_path):
    d = load_digits(split="test")
    path = _save(tmp_path / "mine.npz", x=d.x.numpy(), y=d.y.numpy())
    loaded = load_npz(path)
    assert loaded.fingerprint == d.fingerprint
    assert loaded.name == "mine" and loaded.classes == 10


def test_npz_converts_precision(tmp_path):
    x = np.random.default_rng(0).random((6, 5))  # float64 vectors
    y = np.array([0, 2, 1, 2, 0, 1], dtype=np.uint8)
    loaded = load_npz(_save(tmp_path / "vec.npz", x=x, y=y, extra=np.arange(3)))
    assert loaded.x.dtype == torch.float32 and loaded.x.shape == (6, 5)
    assert loaded.y.tolist() == y.tolist() and loaded.classes == 3


def _bad_npz_cases(tmp_path: Path) -> dict[str, Path]:
    good_x = np.zeros((4, 1, 2, 2), np.float32)
    good_y = np.array([0, 1, 0, 1])
    cases: dict[str, Path] = {"missing": tmp_path / "missing.npz"}
    text = tmp_path / "text.npz"
    text.write_text("this is not an archive\n")
    cases["not_zip"] = text
    whole = _save(tmp_path / "whole.npz", x=good_x, y=good_y).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole[: len(whole) // 2])
    cases["truncated"] = truncated
    flipped = bytearray(whole)
    flipped[len(whole) // 3] ^= 0xFF  # inside x's data: the zip CRC check fails on read
    cases["corrupt"] = tmp_path / "corrupt.npz"
    cases["corrupt"].write_bytes(bytes(flipped))
    npy = tmp_path / "single.npz"
    with npy.open("wb") as f:
        np.save(f, good_x)
    cases["single_npy"] = npy
    cases["directory"] = tmp_path / "dir.npz"
    cases["directory"].mkdir()
    specs = {
        "no_x": {"inputs": good_x, "y": good_y},
        "no_y": {"x": good_x, "labels": good_y},
        "x_5d": {"x": good_x[..., None], "y": good_y},
        "y_2d": {"x": good_x, "y": good_y[:, None]},
        "x_int": {"x": good_x.astype(np.int64), "y": good_y},
        "y_float": {"x": good_x, "y": good_y.astype(np.float32)},
        "y_bool": {"x": good_x, "y": good_y.astype(bool)},
        "length": {"x": good_x, "y": good_y[:3]},
        "empty": {"x": good_x[:0], "y": good_y[:0]},
        "nan": {"x": np.where(good_x == 0, np.nan, good_x), "y": good_y},
        "inf": {"x": np.full_like(good_x, np.inf), "y": good_y},
        "overflow": {"x": np.full(good_x.shape, 1e300), "y": good_y},
        "negative": {"x": good_x, "y": good_y - 1},
        "object": {"x": np.array([None] * 4, dtype=object), "y": good_y},
    }
    for case, arrays in specs.items():
        if case == "object":
            path = tmp_path / f"{case}.npz"
            np.savez(path, **arrays, allow_pickle=True)
            cases[case] = path
        else:
            cases[case] = _save(tmp_path / f"{case}.npz", **arrays)
    return cases


def test_every_bad_npz_is_a_one_line_error_naming_the_file(tmp_path):
    for case, path in _bad_npz_cases(tmp_path).items():
        with pytest.raises(NNVitalsError) as info:
            load_npz(path)
        message = str(info.value)
        assert path.name in message, (case, message)
        assert "\n" not in message, (case, message)


def test_bad_npz_messages_say_what_was_expected(tmp_path):
    cases = _bad_npz_cases(tmp_path)

    def message(case: str) -> str:
        with pytest.raises(NNVitalsError) as info:
            load_npz(cases[case])
        return str(info.value)

    assert "no such file" in message("missing")
    assert "not a .npz archive" in message("not_zip") and "truncated" in message("truncated")
    assert "damaged" in message("corrupt") and "object arrays" in message("object")
    assert "'inputs'" in message("no_x") and "'x'" in message("no_x")
    assert "'labels'" in message("no_y")
    assert "(N, C, H, W)" in message("x_5d") and "(N, C, L)" in message("x_5d")
    assert "floating point" in message("x_int")
    assert "integer" in message("y_float")
    assert "4 samples but y has 3" in message("length")
    assert "empty" in message("empty")
    assert "non-finite" in message("nan") and "non-finite" in message("overflow")
    assert ">= 0" in message("negative")


# --------------------------------------------------------------------------- as_dataset


def test_as_dataset_builtin_names_and_identity():
    d = load_digits()
    assert as_dataset(d) is d
    assert as_dataset("digits").x.shape == (N_DIGITS, 1, 8, 8)
    assert as_dataset("digits16", split="test").fingerprint == load_digits(16, split="test").fingerprint
    assert as_dataset("digits32", split="train").x.shape[2:] == (32, 32)


def test_as_dataset_paths(tmp_path):
    d = load_digits(split="test")
    path = _save(tmp_path / "user.npz", x=d.x.numpy(), y=d.y.numpy())
    assert as_dataset(path).fingerprint == d.fingerprint
    assert as_dataset(str(path)).fingerprint == d.fingerprint
    with pytest.raises(NNVitalsError, match="missing.npz"):
        as_dataset(tmp_path / "missing.npz")


def test_as_dataset_tuples():
    d = load_digits(split="test")
    assert as_dataset((d.x, d.y)).fingerprint == d.fingerprint
    assert as_dataset((d.x.numpy(), d.y.numpy())).fingerprint == d.fingerprint
    assert as_dataset((d.x.double(), d.y.int())).fingerprint == d.fingerprint
    with pytest.raises(NNVitalsError, match=r"data \(x, y\)"):
        as_dataset((d.x, d.y.float()))


class _PairDataset(torch.utils.data.Dataset):
    """A user-style map dataset yielding (numpy image, python int)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.x[i].numpy(), int(self.data.y[i])


def test_as_dataset_torch_datasets():
    d = load_digits(split="test")
    assert as_dataset(torch.utils.data.TensorDataset(d.x, d.y)).fingerprint == d.fingerprint
    converted = as_dataset(_PairDataset(d))
    assert converted.fingerprint == d.fingerprint and converted.name == "_PairDataset"
    with pytest.raises(NNVitalsError):
        as_dataset(torch.utils.data.TensorDataset(d.x[:0], d.y[:0]))
    with pytest.raises(NNVitalsError):
        as_dataset(torch.utils.data.TensorDataset(d.x))


@pytest.mark.parametrize(
    "obj", [42, "mnist", "images.txt", Path("weights.pt"), [1, 2], (torch.zeros(2, 3),), None]
)
def test_as_dataset_rejects_other_forms(obj):
    with pytest.raises(NNVitalsError) as info:
        as_dataset(obj)
    message = str(info.value)
    assert message.startswith("data:")
    assert "digits16" in message and ".npz" in message and "(x, y)" in message


def test_as_dataset_rejects_bad_split():
    with pytest.raises(NNVitalsError, match="split"):
        as_dataset("digits", split="validation")


# --------------------------------------------------------------------------- malformed npz


def _npy(
    descr: str = "'<f4'",
    shape: str = "(4, 1, 2, 2)",
    fortran: str = "False",
    data: bytes = b"",
    version: int = 1,
) -> bytes:
    """A ``.npy`` file with the header written by hand (the data is whatever is given)."""
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}".encode()
    size = 8 + (2 if version == 1 else 4) + len(header) + 1
    header += b" " * (-size % 64) + b"\n"
    length = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + header + data


def _zip(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    """An archive with valid CRCs holding ``members`` (a crafted file, not a damaged one)."""
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return path


_Y = _npy("'<i8'", "(4,)", data=np.array([0, 1, 0, 1], np.int64).tobytes())


def _message(path: Path) -> str:
    with pytest.raises(NNVitalsError) as info:
        load_npz(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_huge_declared_shapes_are_refused_before_allocating(tmp_path, monkeypatch):
    """A header declaring 1e18 floats made numpy allocate them: MemoryError."""
    monkeypatch.setattr(data_module, "MAX_NPZ_ARRAY_BYTES", 1 << 30)  # as on a machine with 8 GiB
    cases = {
        "e18": ("(1000000000000000000,)", "'<f4'"),
        "two_e9": ("(2, 1000000000)", "'<f8'"),  # 16 GB
        "wrap": ("(18446744073709551616,)", "'<f4'"),  # numpy's int64 product overflowed
        "wrap2": ("(4294967296, 4294967296)", "'|u1'"),
    }
    for name, (shape, descr) in cases.items():
        path = _zip(tmp_path / f"{name}.npz", {"x.npy": _npy(descr, shape, data=b"\0" * 64), "y.npy": _Y})
        tracemalloc.start()
        try:
            message = _message(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "array 'x' declares shape" in message and "per array are read" in message, (name, message)
        # refused from the header: nothing the size of the declared array was allocated (numpy's
        # allocations are traced; a wall-clock limit here failed under a loaded test run)
        assert peak < 32 * 2**20, (name, peak)
    short = _zip(tmp_path / "short.npz", {"x.npy": _npy(data=b"\0" * 60), "y.npy": _Y})
    assert "(64 bytes) but holds 60 bytes of data" in _message(short)


def test_zip_bombs_are_refused_before_inflating(tmp_path, monkeypatch):
    """A deflated member whose declared size is past the budget is refused from the directory alone."""
    monkeypatch.setattr(data_module, "MAX_NPZ_ARRAY_BYTES", 1 << 20)
    zeros = np.zeros((2048, 1, 32, 32), np.float32)  # 8 MiB that deflate to ~8 KiB
    path = _zip(tmp_path / "bomb.npz", {"x.npy": _npy(shape="(2048, 1, 32, 32)", data=zeros.tobytes()),
                                        "y.npy": _Y}, zipfile.ZIP_DEFLATED)  # fmt: skip
    assert path.stat().st_size < 100_000
    message = _message(path)
    assert "array 'x' would inflate to 8.0 MiB from" in message and "zip bomb" in message
    # a directory entry that lies about the size (4 GiB for 100 bytes) is refused the same way
    raw = bytearray(_zip(tmp_path / "lie.npz", {"x.npy": _npy(data=b"\0" * 64), "y.npy": _Y}).read_bytes())
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # x.npy's uncompressed size
    (tmp_path / "lie.npz").write_bytes(bytes(raw))
    assert "would inflate to 4.0 GiB" in _message(tmp_path / "lie.npz")


def test_malformed_headers_and_members_are_one_line(tmp_path):
    """What numpy raised on these escaped as NotImplementedError, TokenError, OverflowError, ..."""
    x_ok = np.zeros((4, 1, 2, 2), np.float32).tobytes()
    cases = {
        "python2_tokens": (_npy(shape="(4, 1, 2, 2", data=x_ok), "malformed .npy header"),
        "not_a_dict": (b"\x93NUMPY\x01\x00\x10\x00" + b"[1, 2, 3]      \n" + x_ok, "malformed .npy header"),
        "v2_4gb_header": (b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + x_ok, "4,294,967,295-byte .npy header"),
        "version_9": (b"\x93NUMPY\x09\x00" + x_ok, "unknown .npy format version"),
        "no_magic": (b"PLAIN" + x_ok, "not a .npy array"),
        "void0": (_npy("'V0'", data=x_ok), "dtype kind 'V'"),
        "structured": (_npy("[('a', '<f4')]", data=x_ok), "dtype kind 'V'"),
        "subarray": (_npy("('<f4', (99999999,))", data=x_ok), "dtype kind 'V'"),
        "strings": (_npy("'<U8'", data=x_ok), "dtype kind 'U'"),
        "datetime": (_npy("'<M8[s]'", data=x_ok), "dtype kind 'M'"),
        "object": (_npy("'|O'", data=x_ok), "object arrays need pickle"),
        "negative": (_npy(shape="(-4, 4)", data=x_ok), "negative dimension"),
        "header_cut": (_npy()[:20], "truncated inside its .npy header"),
        "version2": (_npy(version=2, data=x_ok), None),  # fine: loads
        "fortran": (_npy(fortran="True", data=x_ok), None),
    }
    for name, (raw, expect) in cases.items():
        path = _zip(tmp_path / f"{name}.npz", {"x.npy": raw, "y.npy": _Y})
        if expect is None:
            assert load_npz(path).x.shape == (4, 1, 2, 2)
            continue
        message = _message(path)
        assert expect in message and "array 'x'" in message, (name, message)
    # an unknown compression method (zipfile: NotImplementedError), in both directory and local header
    raw = bytearray(_zip(tmp_path / "method.npz", {"x.npy": _npy(data=x_ok), "y.npy": _Y}).read_bytes())
    for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = raw.find(sig)
        raw[i + at : i + at + 2] = (99).to_bytes(2, "little")
    (tmp_path / "method.npz").write_bytes(bytes(raw))
    assert "unknown compression method" in _message(tmp_path / "method.npz")


def test_member_names_are_not_quoted_raw(tmp_path):
    path = _zip(tmp_path / "names.npz", {"\u202ex\u0000evil.npy": _Y, "inputs.npy": _Y, "y.npy": _Y})
    message = _message(path)
    assert "'inputs'" in message and "1 more" in message and "evil" not in message


def _mutants(seed: int, n: int) -> list[bytes]:
    """Seeded mutants of valid .npz files: byte flips, truncations, rewritten .npy headers (with
    valid CRCs), lying directory sizes and methods, header-length fields."""
    rng = np.random.default_rng(seed)
    x = rng.random((20, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    bases = []
    for save in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        save(buf, x=x, y=y)
        bases.append(buf.getvalue())
    shapes = ["(1000000000000000000,)", "(-5,)", "(4294967296, 4294967296)", "(20, 1, 4, 4, 99999999)",
              "(20, 1, 4, 4)", "(20,)", "(2**64,)", "(0, 10**9)", "(3000000000,)", "(20, 16)"]  # fmt: skip
    descrs = ["'V0'", "'|O'", "'S0'", "'<U99999999999'", "[('a','<f4')]", "('<f4',(99999999,))", "'<f4'",
              "'<i8'", "'>f8'", "'<f2'", "'|b1'", "'<M8[s]'"]  # fmt: skip
    out = []
    for i in range(n):
        data = bytearray(bases[i % 2])
        kind = i % 5
        if kind == 0:
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        elif kind == 1:
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 2:
            members = {n: bytearray(v) for n, v in _read_all(bytes(data)).items()}
            key = sorted(members)[int(rng.integers(0, len(members)))]
            m = members[key]
            hl = int.from_bytes(m[8:10], "little")
            descr, order, shape = rng.choice(descrs), rng.choice(["False", "True", "1"]), rng.choice(shapes)
            header = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}"
            if len(header) < hl:
                m[10 : 10 + hl] = header.encode() + b" " * (hl - len(header) - 1) + b"\n"
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED][i % 2]) as zf:
                for name, raw in members.items():
                    zf.writestr(name, bytes(raw))
            data = bytearray(buf.getvalue())
        elif kind == 3:
            at = data.find(b"PK\x01\x02")
            while at >= 0:
                field = [(24, 4), (20, 4), (10, 2)][int(rng.integers(0, 3))]
                value = int(rng.choice([0xFFFFFFFF, 0, 10**9, 12, 14, 99]))
                data[at + field[0] : at + sum(field)] = (value % 256 ** field[1]).to_bytes(field[1], "little")
                at = data.find(b"PK\x01\x02", at + 4)
        else:
            at = data.find(b"\x93NUMPY")
            data[at + 6] = int(rng.choice([1, 2, 3, 9]))
            data[at + 8 : at + 10] = int(rng.integers(0, 65536)).to_bytes(2, "little")
        out.append(bytes(data))
    return out


def _read_all(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_fuzzed_npz_files_load_or_fail_in_one_line_quickly(tmp_path):
    """400 mutants: each loads or raises one NNVitalsError line naming the file; none hangs."""
    t0 = time.perf_counter()
    outcomes = {"loaded": 0, "refused": 0}
    for i, raw in enumerate(_mutants(seed=0, n=400)):
        path = tmp_path / f"m{i}.npz"
        path.write_bytes(raw)
        try:
            load_npz(path)
            outcomes["loaded"] += 1
        except NNVitalsError as e:
            assert "\n" not in str(e) and str(path) in str(e), (i, str(e))
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300
    assert time.perf_counter() - t0 < 60


def test_default_array_budget_is_a_share_of_memory():
    budget = data_module._array_budget()
    assert budget >= 512 << 20
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert budget == max(512 << 20, pages // 8)

"""Model files that lie, escape or hang get one clear line, fast, and never leak a file's bytes.

- ``confine=`` (the server's ``--allow-dir``): every file a subject opens must resolve inside,
  including each file of a Hugging Face directory and the allowed directory itself.
- A FIFO where a model file should be is refused at once (no reader waits on it).
- Headers that lie (lengths, shapes, nesting, sizes) are refused without quoting file bytes.
- Zip archives are checked for declared sizes before PyTorch inflates them.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import threading
import time
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from analyses.core.errors import NNVitalsError
from analyses.core.subject import load_subject


def _refused(source, match: str, **kw) -> str:
    with pytest.raises(NNVitalsError, match=match) as e:
        load_subject(source, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _within(fn, seconds: float = 5.0):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung"
    return box


@pytest.fixture
def outside(tmp_path):
    """A real model outside the allowed directory, and a 'secret' file."""
    d = tmp_path / "outside"
    d.mkdir()
    save_file({"w": torch.randn(16, 16)}, d / "model.safetensors")
    (d / "shadow").write_bytes(b"S3CR3T:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n")
    return d


def test_a_hugging_face_directory_cannot_reach_outside(tmp_path, outside):
    allowed = tmp_path / "allowed"
    hf = allowed / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    os.symlink(outside / "model.safetensors", hf / "model.safetensors")
    msg = _refused(hf, "outside the directories", confine=[allowed])
    assert "model.safetensors" in msg
    # without confinement (a notebook, the CLI) the same directory is fine
    assert load_subject(hf).weights()

    for name, target in (("pytorch_model.bin", outside / "shadow"), ("model.pt2", outside / "shadow")):
        d = allowed / f"hf-{name}"
        d.mkdir()
        os.symlink(target, d / name)
        msg = _refused(d, "outside the directories", confine=[allowed])
        assert "S3CR3T" not in msg and "$6$" not in msg

    cfg = allowed / "hf-config"
    cfg.mkdir()
    os.symlink(outside / "shadow", cfg / "config.json")
    save_file({"w": torch.randn(16, 16)}, cfg / "model.safetensors")
    _refused(cfg, "outside the directories", confine=[allowed])


def test_the_allowed_directory_itself_reads_no_outside_links(tmp_path, outside):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.symlink(outside / "model.safetensors", allowed / "leak.safetensors")
    _refused(allowed, "outside the directories", confine=[allowed])
    os.symlink(outside / "shadow", tmp_path / "link.safetensors")
    _refused(tmp_path / "link.safetensors", "outside the directories", confine=[allowed])


def test_errors_never_quote_a_files_bytes(outside, tmp_path):
    p = tmp_path / "shadow.safetensors"
    p.write_bytes((outside / "shadow").read_bytes())
    msg = _refused(p, "not a .safetensors file")
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert str(n) not in msg and "S3CR3T" not in msg and str(p.stat().st_size) not in msg


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    box = _within(lambda: load_subject(fifo))
    assert isinstance(box.get("error"), NNVitalsError), box
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    os.mkfifo(hf / "model.safetensors")
    box = _within(lambda: load_subject(hf))
    assert isinstance(box.get("error"), NNVitalsError) and "regular file" in str(box["error"]), box
    cfg = tmp_path / "hf2"
    cfg.mkdir()
    os.mkfifo(cfg / "config.json")
    save_file({"w": torch.randn(8, 8)}, cfg / "model.safetensors")
    box = _within(lambda: load_subject(cfg))
    assert "error" in box or "value" in box


def test_configs_that_are_not_mappings(tmp_path):
    for i, text in enumerate(['["a", "b"]', '{"model_type": ["gpt2"]}', "[" * 100_000 + "]" * 100_000, "{"]):
        d = tmp_path / f"hf{i}"
        d.mkdir()
        (d / "config.json").write_text(text)
        save_file({"w": torch.randn(8, 8)}, d / "model.safetensors")
        try:
            load_subject(d)
        except NNVitalsError as e:
            assert "config.json" in str(e) and "\n" not in str(e)


def _safetensors(path, header, payload: bytes = b"") -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


@pytest.mark.parametrize(
    "header, match",
    [
        ({"w": {"dtype": "F32", "shape": [1e308, 1], "data_offsets": [0, 4]}}, "unreadable header entry"),
        ({"w": {"dtype": "F32", "shape": [-4, -1], "data_offsets": [0, 16]}}, "negative or absurd"),
        ({"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, "negative or absurd"),
        ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 2**70]}}, "beyond the end"),
        ({"w": {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}}, "unreadable header entry"),
        ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, "unreadable header entry"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ],
)
def test_safetensors_headers_that_lie(tmp_path, header, match):
    p = tmp_path / "lie.safetensors"
    _safetensors(p, header, b"\0" * 16)
    _refused(p, match)


def test_a_huge_header_is_refused_before_it_is_parsed(tmp_path):
    p = tmp_path / "big.safetensors"
    n = 64 * 2**20
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.write(b'{"' + b"a" * (n - 4) + b'":1}')
    t0 = time.perf_counter()
    _refused(p, "header is over")
    assert time.perf_counter() - t0 < 1.0


def test_a_sparse_tensor_in_a_state_dict(tmp_path):
    p = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(4).to_sparse(), "b": torch.ones(4)}, p)
    _refused(p, "sparse|dense tensors")


def test_a_zip_bomb_state_dict_is_refused_before_it_inflates(tmp_path):
    """A few MB that declare GBs: refused from the zip directory, memory stays put."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(4, 4)}, good)
    blob = tmp_path / "bomb2.pt"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(blob, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
        root = z.namelist()[0].split("/")[0]
        with out.open(f"{root}/data/1", "w", force_zip64=True) as f:
            chunk = b"\0" * 2**24
            for _ in range(256):  # 4 GiB of zeros, about 4 MB deflated
                f.write(chunk)
    assert blob.stat().st_size < 16 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _refused(blob, "zip bomb|inflate")
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


def test_a_nul_byte_in_a_path():
    _refused("model\x00.safetensors", "NUL")

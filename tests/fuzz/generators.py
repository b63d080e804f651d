"""Seeded generators of malformed models and data for the fuzz harness.

A :class:`Case` is ``(family, index, kind, description, target, writer)``. The writer puts the
case's file(s) into a fresh directory and returns the keyword arguments of the target (the
model and/or data to hand to nnvitals); the target is one of :data:`TARGETS` (``load_subject``,
the five analyses, the result loaders). Everything a writer chooses at random comes from
``env.rng``, seeded by ``(seed, family, index)``, so a case is fully determined by its id and
the run's seed, whichever process builds it (the harness writes cases inside its workers).

Each family starts with an explicit list of named kinds (every malformation the issue lists,
and more) and continues with random mutations (bit flips, truncations, lying fields) of valid
base files. Valid base files (a tiny safetensors/state dict/``torch.export`` program, digits
``.npz``, a stored result, a 3 GiB deflate bomb stream, and a shared object whose constructor
writes a marker) are built once per run by :func:`build_base`.

Code payloads (pickles calling ``os.system``, sympy expressions, the shared object) only ever
``touch`` a marker file inside the case's own marker directory; the harness fails a case whose
marker appears.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: put into file content (never into names) so an error message quoting raw bytes is caught
CANARY = "NNVFUZZRAWBYTES"
MB = 1 << 20
#: the zip bombs inflate to this many bytes (under 4 GiB: no zip64 needed)
BOMB_SIZE = 3 << 30
#: rows of the ``.npz`` bomb's x array: (BOMB_ROWS, 1, 8, 8) float32 = 3 GiB
BOMB_ROWS = BOMB_SIZE // 256
HUGE_HEADER = 64 * MB


# =============================================================================== low-level writers
@dataclass
class Member:
    """One zip member: stored (method 0) or deflated (8); ``raw`` data is already deflated."""

    name: str
    data: bytes = b""
    method: int = 0
    raw: bool = False
    size: int | None = None  # declared uncompressed size (default: the real one)
    crc: int | None = None
    csize: int | None = None  # declared compressed size (default: the real one)
    raw_file: Path | None = None  # raw deflate stream read from this file instead of ``data``


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def write_zip(path: Path, members: list[Member], *, comment: bytes = b"", align: int = 64) -> Path:
    """Write a zip file by hand, so every size, CRC and method can lie (``zipfile`` won't let them).

    Stored members are padded to ``align`` bytes with an extra field as ``torch.save`` does."""
    central = []
    with open(path, "wb") as f:
        for m in members:
            name = m.name.encode("utf-8", "surrogateescape")
            if m.raw_file is not None:
                body = Path(m.raw_file).read_bytes()
            elif m.method == 8 and not m.raw:
                body = _deflate(m.data)
            else:
                body = m.data
            size = len(m.data) if m.size is None else m.size
            crc = (zlib.crc32(m.data) if m.crc is None else m.crc) & 0xFFFFFFFF
            csize = len(body) if m.csize is None else m.csize
            offset = f.tell()
            extra = b""
            if align and m.method == 0:
                pad = (-(offset + 30 + len(name) + 4)) % align
                extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            f.write(
                struct.pack(
                    "<IHHHHHIIIHH",
                    0x04034B50,
                    20,
                    0x800,
                    m.method,
                    0,
                    0x21,
                    crc,
                    csize & 0xFFFFFFFF,
                    size & 0xFFFFFFFF,
                    len(name),
                    len(extra),
                )
            )
            f.write(name + extra)
            f.write(body)
            central.append((name, m.method, crc, csize, size, offset))
        cd_start = f.tell()
        for name, method, crc, csize, size, offset in central:
            f.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    20,
                    20,
                    0x800,
                    method,
                    0,
                    0x21,
                    crc,
                    csize & 0xFFFFFFFF,
                    size & 0xFFFFFFFF,
                    len(name),
                    0,
                    0,
                    0,
                    0,
                    0,
                    offset & 0xFFFFFFFF,
                )
            )
            f.write(name)
        cd_size = f.tell() - cd_start
        n = len(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_start, len(comment)))
        f.write(comment)
    return path


def read_zip(path: Path) -> dict[str, bytes]:
    """All members of a (valid) zip, in order."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def st_bytes(
    header: Any, data: bytes = b"", *, raw_header: bytes | None = None, length: int | None = None
) -> bytes:
    """A ``.safetensors`` file: 8-byte little-endian header length, JSON header, data."""
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF) + h + data


ST_NUMPY = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def st_tensors(rng: np.random.Generator, dtype: str = "F32") -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """A tiny random MLP as (name, dtype, shape, bytes): two matrices and their biases."""
    a, b, c = (int(v) for v in rng.integers(8, 40, size=3))
    out = []
    for name, shape in (
        ("fc1.weight", (b, a)),
        ("fc1.bias", (b,)),
        ("fc2.weight", (c, b)),
        ("fc2.bias", (c,)),
    ):
        arr = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[-1])
        out.append((name, dtype, shape, to_st_bytes(arr, dtype)))
    return out


def to_st_bytes(arr: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        return (np.ascontiguousarray(arr, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(arr).astype(ST_NUMPY[dtype]).tobytes()


def st_pack(tensors, *, metadata: dict | None = None) -> tuple[dict, bytes]:
    """Header dict and data of a valid file holding ``tensors`` (as from :func:`st_tensors`)."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = bytearray()
    for name, dtype, shape, raw in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return header, bytes(data)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_raw(
    header: str, data: bytes = b"", version: tuple[int, int] = (1, 0), magic: bytes = b"\x93NUMPY"
) -> bytes:
    """A ``.npy`` with a hand-written header (padded to 64 bytes as numpy does)."""
    h = header.encode("latin1")
    if version[0] == 1:
        total = 10 + len(h) + 1
        h = h + b" " * ((-total) % 64) + b"\n"
        head = magic + bytes(version) + struct.pack("<H", len(h) & 0xFFFF)
    else:
        total = 12 + len(h) + 1
        h = h + b" " * ((-total) % 64) + b"\n"
        head = magic + bytes(version) + struct.pack("<I", len(h))
    return head + h + data


# ------------------------------------------------------------------------------- pickle assembler
class Pickle:
    """A tiny protocol-2 pickle assembler (so payloads never need a class with ``__reduce__``)."""

    def __init__(self, proto: int = 2):
        self.b = bytearray(b"\x80" + bytes([proto]))

    def glob(self, mod: str, name: str) -> Pickle:
        self.b += b"c" + mod.encode() + b"\n" + name.encode() + b"\n"
        return self

    def stack_global(self, mod: str, name: str) -> Pickle:
        return self.str(mod).str(name).op(b"\x93")

    def str(self, s: str) -> Pickle:
        e = s.encode("utf-8", "surrogatepass")
        self.b += b"X" + struct.pack("<I", len(e)) + e
        return self

    def int(self, i: int) -> Pickle:
        if -(2**31) <= i < 2**31:
            self.b += b"J" + struct.pack("<i", i)
        else:
            raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.b += b"\x8a" + bytes([len(raw)]) + raw
        return self

    def float(self, x: float) -> Pickle:
        self.b += b"G" + struct.pack(">d", x)
        return self

    def op(self, raw: bytes) -> Pickle:
        self.b += raw
        return self

    def mark(self) -> Pickle:
        return self.op(b"(")

    def tuple(self) -> Pickle:
        return self.op(b"t")

    def ints(self, values) -> Pickle:
        self.mark()
        for v in values:
            self.int(int(v))
        return self.tuple()

    def reduce(self) -> Pickle:
        return self.op(b"R")

    def bytes(self) -> bytes:
        return bytes(self.b) + b"."


def pk_call(mod: str, name: str, *args: str, stack: bool = False) -> bytes:
    """A pickle that calls ``mod.name(*args)`` when unpickled."""
    p = Pickle(4 if stack else 2)
    p.stack_global(mod, name) if stack else p.glob(mod, name)
    p.mark()
    for a in args:
        p.str(a)
    return p.tuple().reduce().bytes()


def pk_tensor(
    p: Pickle, key: str, *, storage: str = "FloatStorage", numel: int, offset: int = 0, size=(), stride=()
) -> Pickle:
    """Append ``_rebuild_tensor_v2(<storage key>, offset, size, stride, False, OrderedDict())``."""
    p.glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str("storage").glob("torch", storage).str(key).str("cpu").int(numel).tuple().op(b"Q")
    p.int(offset).ints(size).ints(stride).op(b"\x89").glob("collections", "OrderedDict").op(b")").reduce()
    return p.tuple().reduce()


@dataclass
class SDTensor:
    """A tensor of a hand-built torch state dict (storage record + view)."""

    name: str
    data: bytes
    numel: int
    size: tuple
    stride: tuple
    offset: int = 0
    storage: str = "FloatStorage"


def sd_tensor(name: str, arr: np.ndarray) -> SDTensor:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    stride = tuple(s // 4 for s in arr.strides) if arr.ndim else ()
    return SDTensor(name, arr.tobytes(), int(arr.size), tuple(arr.shape), stride)


def sd_pickle(tensors: list[SDTensor]) -> bytes:
    p = Pickle().op(b"}").mark()
    for i, t in enumerate(tensors):
        p.str(t.name)
        pk_tensor(p, str(i), storage=t.storage, numel=t.numel, offset=t.offset, size=t.size, stride=t.stride)
    return p.op(b"u").bytes()


def sd_members(
    tensors: list[SDTensor],
    *,
    pkl: bytes | None = None,
    prefix: str = "archive",
    byteorder: bytes = b"little",
    version: bytes = b"3\n",
) -> list[Member]:
    """The members of a ``torch.save`` zip archive of ``tensors`` (or a given ``data.pkl``)."""
    ms = [Member(f"{prefix}/data.pkl", sd_pickle(tensors) if pkl is None else pkl)]
    ms.append(Member(f"{prefix}/byteorder", byteorder))
    ms += [Member(f"{prefix}/data/{i}", t.data) for i, t in enumerate(tensors)]
    ms.append(Member(f"{prefix}/version", version))
    ms.append(Member(f"{prefix}/.data/serialization_id", b"0" * 40))
    return ms


def small_sd(rng: np.random.Generator) -> list[SDTensor]:
    a, b, c = (int(v) for v in rng.integers(8, 40, size=3))
    return [
        sd_tensor("fc1.weight", rng.standard_normal((b, a)) / np.sqrt(a)),
        sd_tensor("fc1.bias", rng.standard_normal(b)),
        sd_tensor("fc2.weight", rng.standard_normal((c, b)) / np.sqrt(b)),
        sd_tensor("fc2.bias", rng.standard_normal(c)),
    ]


# =============================================================================== base files
SO_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
/* nnvitals fuzz payload: proves that loading this shared object ran its code. */
__attribute__((constructor)) static void nnv_fuzz_ctor(void) {
    const char *p = getenv("NNV_FUZZ_MARKER");
    if (!p || !*p) p = "%(fallback)s";
    FILE *f = fopen(p, "w");
    if (f) { fputs("shared object constructor ran\n", f); fclose(f); }
}
"""


def _bomb_stream(prefix: bytes, total_zeros: int) -> tuple[bytes, int]:
    """Raw deflate of ``prefix + zeros(total_zeros)`` (about 1 KB per MiB) and its CRC-32.

    After a full flush the compressor's history is reset, so every further MiB of zeros
    compresses to the same bytes: the stream is assembled without compressing gigabytes."""
    chunk = MB
    if total_zeros % chunk:
        raise ValueError("total_zeros must be a multiple of 1 MiB")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "zlib did not reach a steady state on zeros"
    tail = c.flush()
    n = total_zeros // chunk
    # check the construction on a small instance before trusting it at 3 GiB
    d = zlib.decompressobj(-15)
    assert d.decompress(head + block * 3 + tail) == prefix + bytes(3 * chunk) and d.eof
    return head + block * n + tail, crc32_combine(zlib.crc32(prefix), crc32_zeros(total_zeros), total_zeros)


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc(a)``, ``crc(b)`` and ``len(b)`` (GF(2) operator powers, like zlib)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return (crc1 ^ crc2) & 0xFFFFFFFF


def crc32_zeros(n: int) -> int:
    """CRC-32 of ``n`` zero bytes without touching them (doubling with :func:`crc32_combine`)."""
    out, have = 0, 0  # crc of the zeros counted so far
    block, size = zlib.crc32(bytes(1)), 1  # crc of 2**k zero bytes
    while n:
        if n & 1:
            out, have = crc32_combine(out, block, size), have + size
        block, size = crc32_combine(block, block, size), size * 2
        n >>= 1
    return out


def build_base(base: Path) -> Path:
    """Valid base files every writer mutates (deterministic; about 5 s). Returns ``base``."""
    import torch

    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    (base / "markers").mkdir(exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    from analyses.core.data import load_digits

    ds = load_digits()
    x, y = ds.x[:32].numpy(), ds.y[:32].numpy()
    np.savez(base / "images.npz", x=x, y=y)
    np.savez(base / "flat.npz", x=x.reshape(len(x), -1), y=y)

    # torch.save state dict, repacked with a fixed serialization id
    sd = {
        t.name: torch.from_numpy(np.frombuffer(t.data, "<f4").reshape(t.size).copy()) for t in small_sd(rng)
    }
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as z:
        members = [Member(n, z.read(n)) for n in z.namelist()]
    for m in members:
        if m.name.endswith(".data/serialization_id"):
            m.data = b"0" * len(m.data)
    write_zip(base / "state.pt", members)
    torch.save(sd, base / "state_legacy.pt", _use_new_zipfile_serialization=False)

    # torch.export program taking (N, 1, 8, 8) digits, batch dimension dynamic
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()
    batch = torch.export.Dim("b", min=1, max=1 << 16)
    ep = torch.export.export(net, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(base / "raw.pt2"))
    members = [Member(n, d) for n, d in read_zip(base / "raw.pt2").items()]
    for m in members:
        if m.name.endswith(".data/serialization_id"):
            m.data = b"0" * len(m.data)
    write_zip(base / "model.pt2", members)
    (base / "raw.pt2").unlink()

    # a stored result (for the .nnv family)
    from analyses.spectra.analysis import SpectralAnalysis

    res = SpectralAnalysis(model=net, cache=False, show_progress=False).run()
    res.save(base / "result.nnv")

    # deflate bombs: 3 GiB of zeros, and a .npy header declaring a 3 GiB float32 x followed by zeros
    stream, crc = _bomb_stream(b"", BOMB_SIZE)
    (base / "bomb_zeros.deflate").write_bytes(stream)
    header = npy_raw(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({BOMB_ROWS}, 1, 8, 8), }}")
    stream, crc2 = _bomb_stream(header, BOMB_SIZE)
    (base / "bomb_npy.deflate").write_bytes(stream)
    meta = {"zeros": {"size": BOMB_SIZE, "crc": crc}, "npy": {"size": len(header) + BOMB_SIZE, "crc": crc2}}
    (base / "bombs.json").write_text(json.dumps(meta))

    # a shared object whose constructor writes a marker (only when a C compiler is present)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src = base / "ctor.c"
        src.write_text(SO_SOURCE % {"fallback": str(base / "markers" / "so-fallback")})
        r = subprocess.run(
            [gcc, "-shared", "-fPIC", "-O0", "-o", str(base / "ctor.so"), str(src)],
            capture_output=True,
            timeout=120,
        )
        if r.returncode != 0:
            (base / "ctor.so").unlink(missing_ok=True)
    (base / "READY").write_text("ok")
    return base


def have_so(base: Path) -> bool:
    return (Path(base) / "ctor.so").is_file()


# =============================================================================== cases
@dataclass
class Env:
    """What a writer gets: its directory, the base files, a seeded rng, the marker path."""

    dir: Path
    base: Path
    rng: np.random.Generator
    marker: Path
    target: str
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def touch_cmd(self) -> str:
        return f"touch {self.marker}"

    def py_payload(self) -> str:
        return f"__import__('os').system('touch {self.marker}')"


Writer = Callable[[Env], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    family: str
    index: int
    kind: str
    desc: str
    target: str
    writer: Writer = field(repr=False, compare=False)
    needs: str = ""  # "gcc" when the case needs the compiled shared object

    @property
    def case_id(self) -> str:
        return f"{self.family}-{self.index:04d}-{self.kind}"


@dataclass
class Family:
    name: str
    targets: tuple[str, ...]
    explicit: list[tuple[str, str, Writer]]  # (kind, description, writer)
    random: Callable[[Env], dict[str, Any]]
    weight: float = 1.0
    needs: dict[str, str] = field(default_factory=dict)  # kind -> requirement
    hidden: bool = False  # not part of default runs (the harness's self-test)

    def kind_target(self, index: int) -> tuple[str, str, Writer, str]:
        k, t = len(self.explicit), len(self.targets)
        if index < k:
            kind, desc, w = self.explicit[index]
            return kind, desc, w, self.targets[index % t]
        if index < k * t:
            j = index - k
            i = j % k
            kind, desc, w = self.explicit[i]
            return kind, desc, w, self.targets[(i + 1 + j // k) % t]
        return (
            "random",
            "random mutation of a valid base file (see notes)",
            self.random,
            self.targets[index % t],
        )


FAMILIES: dict[str, Family] = {}


def make_case(family: str, index: int) -> Case:
    fam = FAMILIES[family]
    kind, desc, writer, target = fam.kind_target(index)
    return Case(family, index, kind, desc, target, writer, fam.needs.get(kind, ""))


def case_rng(seed: int, family: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(family.encode()), index])


def write_case(
    case: Case, seed: int, case_dir: Path, base: Path, marker: Path
) -> tuple[dict[str, Any], list[str]]:
    """Run the case's writer; returns the target's keyword arguments and the writer's notes."""
    Path(case_dir).mkdir(parents=True, exist_ok=True)
    env = Env(Path(case_dir), Path(base), case_rng(seed, case.family, case.index), Path(marker), case.target)
    kw = case.writer(env)
    return kw, env.notes


def build_cases(n: int, families: list[str] | None = None) -> list[Case]:
    """``n`` cases spread over the families by weight, each family's from index 0 (explicit kinds first)."""
    names = families or [f for f in FAMILIES if not FAMILIES[f].hidden]
    weights = np.array([FAMILIES[f].weight for f in names], dtype=float)
    counts = np.floor(n * weights / weights.sum()).astype(int)
    for i in range(n - int(counts.sum())):
        counts[i % len(names)] += 1
    return [make_case(f, i) for f, c in zip(names, counts) for i in range(int(c))]


def suite_cases(families: list[str] | None = None, random_per_family: int = 4) -> list[Case]:
    """Every explicit kind of each family once, plus a few random mutations: the test-suite set."""
    out = []
    for f in families or [f for f in FAMILIES if not FAMILIES[f].hidden]:
        fam = FAMILIES[f]
        k, t = len(fam.explicit), len(fam.targets)
        out += [make_case(f, i) for i in range(k)]
        out += [make_case(f, k * t + i) for i in range(random_per_family)]
    return out


def find_case(case_id: str) -> Case:
    """The case named ``family-index[-kind]``."""
    parts = case_id.split("-")
    for cut in range(len(parts) - 1, 0, -1):
        fam = "-".join(parts[:cut])
        if fam in FAMILIES and parts[cut].isdigit():
            return make_case(fam, int(parts[cut]))
    raise KeyError(f"no case {case_id!r}; expected FAMILY-INDEX with a family in {list(FAMILIES)}")


# =============================================================================== mutations
EVIL_JSON = [
    0,
    -1,
    1,
    2.5,
    1e308,
    -1e308,
    2**63,
    2**64,
    -(2**63),
    10**30,
    "",
    "F32",
    "abc",
    [],
    [[]],
    {},
    None,
    True,
    False,
    [-1],
    [0],
    [2**62, 2**62],
    [1e308],
    ["1"],
    {"a": 1},
    "x" * 300,
]


def flip_bits(
    data: bytes, rng: np.random.Generator, n: int, lo: int = 0, hi: int | None = None
) -> tuple[bytes, list]:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    where = []
    if hi <= lo:
        return bytes(b), where
    for _ in range(n):
        i = int(rng.integers(lo, hi))
        bit = int(rng.integers(0, 8))
        b[i] ^= 1 << bit
        where.append(i)
    return bytes(b), where


def truncate(data: bytes, rng: np.random.Generator, lo: int = 0, hi: int | None = None) -> tuple[bytes, int]:
    hi = len(data) if hi is None else hi
    cut = int(rng.integers(lo, max(lo + 1, hi)))
    return data[:cut], cut


def write(env: Env, name: str, data: bytes) -> Path:
    p = env.dir / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _nested(depth: int, open_: str = "[", close: str = "]", core: str = "") -> bytes:
    return (open_ * depth + core + close * depth).encode()


def _nested_obj(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def _stream_huge_json(path: Path, prefix: bytes, filler_unit: bytes, total: int, suffix: bytes) -> int:
    """Write ``prefix + filler * k + suffix`` of about ``total`` bytes without holding it in memory."""
    body = total - len(prefix) - len(suffix)
    k = max(0, body // len(filler_unit))
    with open(path, "wb") as f:
        f.write(prefix)
        block = filler_unit * max(1, MB // len(filler_unit))
        left = k
        per = max(1, MB // len(filler_unit))
        while left:
            m = min(left, per)
            f.write(block if m == per else filler_unit * m)
            left -= m
        f.write(suffix)
    return len(prefix) + k * len(filler_unit) + len(suffix)


def kind(family: list, name: str, desc: str, needs: str = "") -> Callable[[Writer], Writer]:
    """Decorator: register a writer as an explicit kind of a family's list."""

    def deco(fn: Writer) -> Writer:
        family.append((name, desc, fn, needs))
        return fn

    return deco


def _register(name: str, targets: tuple[str, ...], kinds: list, random: Writer, weight: float = 1.0) -> None:
    FAMILIES[name] = Family(
        name,
        targets,
        [(k, d, f) for k, d, f, _ in kinds],
        random,
        weight,
        {k: n for k, _, _, n in kinds if n},
    )


# =============================================================================== targets
def _an_kw() -> dict[str, Any]:
    return {"cache": False, "show_progress": False}


def t_load_subject(kw: dict[str, Any], base: Path) -> None:
    """load_subject, then every lazily read part: weights, each tensor, fingerprint, module."""
    from analyses.core.subject import load_subject

    s = load_subject(kw["model"])
    for w in s.weights():
        s.tensor(w.name)
    _ = s.fingerprint
    s.module()


def t_spectra(kw: dict[str, Any], base: Path) -> None:
    from analyses.spectra.analysis import SpectralAnalysis

    SpectralAnalysis(model=kw["model"], **kw.get("params", {}), **_an_kw()).run()


def t_orbits(kw: dict[str, Any], base: Path) -> None:
    from analyses.orbits.analysis import OrbitAnalysis

    OrbitAnalysis(
        model=kw.get("model", "cnn"),
        data=kw.get("data", str(base / "images.npz")),
        steps=4,
        max_samples=16,
        **_an_kw(),
    ).run()


def t_ibp(kw: dict[str, Any], base: Path) -> None:
    from analyses.bounds.analysis import IBPTightness

    IBPTightness(
        model=kw.get("model", "cnn"), data=kw.get("data", str(base / "images.npz")), max_samples=8, **_an_kw()
    ).run()


def t_lipschitz(kw: dict[str, Any], base: Path) -> None:
    from analyses.bounds.analysis import LipschitzBounds

    LipschitzBounds(
        model=kw.get("model", "mlp"), data=kw.get("data", str(base / "flat.npz")), max_samples=8, **_an_kw()
    ).run()


def t_connectivity(kw: dict[str, Any], base: Path) -> None:
    from analyses.connectivity.analysis import ModeConnectivity

    ModeConnectivity(
        model_a=kw.get("model", "mlp-w64-a"),
        model_b=kw.get("model_b", "mlp-w64-b"),
        data=kw.get("data", str(base / "flat.npz")),
        points=3,
        max_iter=20,
        **_an_kw(),
    ).run()


def t_result_load(kw: dict[str, Any], base: Path) -> None:
    from analyses.core.result import Result

    Result.load(kw["path"])


def t_store_get(kw: dict[str, Any], base: Path) -> None:
    """A damaged store entry must read as a miss (None), never raise."""
    from analyses.core.store import ResultStore

    ResultStore(kw["root"]).get(kw["key"])


TARGETS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "load_subject": t_load_subject,
    "spectra": t_spectra,
    "orbits": t_orbits,
    "ibp": t_ibp,
    "lipschitz": t_lipschitz,
    "connectivity": t_connectivity,
    "result_load": t_result_load,
    "store_get": t_store_get,
}


def warm_up(base: Path) -> None:
    """Run every target once on valid inputs (imports, lazy set-up) before cases are timed."""
    for name in ("spectra", "orbits", "ibp", "lipschitz", "connectivity"):
        TARGETS[name]({"model": "mlp"} if name == "spectra" else {}, base)
    TARGETS["load_subject"]({"model": str(base / "model.pt2")}, base)
    TARGETS["load_subject"]({"model": str(base / "state.pt")}, base)
    TARGETS["result_load"]({"path": str(base / "result.nnv")}, base)


# =============================================================================== safetensors
ST: list = []


def _st_out(env: Env, data: bytes, name: str = "model.safetensors") -> dict[str, Any]:
    return {"model": str(write(env, name, data))}


def _st_valid(env: Env, dtype: str = "F32") -> tuple[dict, bytes]:
    return st_pack(st_tensors(env.rng, dtype))


def _st_with(env: Env, fn: Callable[[dict], None], dtype: str = "F32") -> dict[str, Any]:
    header, data = _st_valid(env, dtype)
    fn(header)
    return _st_out(env, st_bytes(header, data))


def _st_field(field_: str, value: Any, name: str = "fc1.weight") -> Writer:
    def w(env: Env) -> dict[str, Any]:
        return _st_with(env, lambda h: h[name].__setitem__(field_, value))

    return w


def _st_matrix(arr_fn: Callable[[np.random.Generator], np.ndarray], dtype: str = "F32") -> Writer:
    def w(env: Env) -> dict[str, Any]:
        arr = np.asarray(arr_fn(env.rng), dtype=np.float32)
        t = [("layer.weight", dtype, tuple(arr.shape), to_st_bytes(arr, dtype))]
        t += st_tensors(env.rng)
        return _st_out(env, st_bytes(*st_pack(t)))

    return w


def _st_raw_header(raw: bytes, with_data: bool = True) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        return _st_out(env, st_bytes(None, (CANARY.encode() * 4) if with_data else b"", raw_header=raw))

    return w


@kind(ST, "empty-file", "0-byte model.safetensors")
def _(env):
    return _st_out(env, b"")


@kind(ST, "truncated-prefix", "file shorter than the 8-byte header length")
def _(env):
    return _st_out(env, st_bytes(*_st_valid(env))[: int(env.rng.integers(1, 8))])


@kind(ST, "truncated-header", "file cut inside the JSON header")
def _(env):
    h, d = _st_valid(env)
    raw = st_bytes(h, d)
    n = len(json.dumps(h))
    data, cut = truncate(raw, env.rng, 9, 8 + n)
    env.note(f"cut at byte {cut}")
    return _st_out(env, data)


@kind(ST, "truncated-data", "file cut inside the tensor data")
def _(env):
    h, d = _st_valid(env)
    raw = st_bytes(h, d)
    data, cut = truncate(raw, env.rng, len(raw) - len(d), len(raw) - 1)
    env.note(f"cut at byte {cut}")
    return _st_out(env, data)


for _n, _v in (("zero", 0), ("2pow63", 2**63), ("max", 2**64 - 1), ("2pow31", 2**31)):

    @kind(ST, f"header-len-{_n}", f"header length field = {_v}")
    def _(env, _v=_v):
        h, d = _st_valid(env)
        return _st_out(env, st_bytes(h, d, length=_v))


@kind(ST, "header-len-beyond-file", "header length one byte past the end of the file")
def _(env):
    h, d = _st_valid(env)
    return _st_out(env, st_bytes(h, d, length=len(json.dumps(h)) + len(d) + 1))


@kind(ST, "header-len-short", "header length cuts the JSON in half")
def _(env):
    h, d = _st_valid(env)
    return _st_out(env, st_bytes(h, d, length=len(json.dumps(h)) // 2))


@kind(ST, "header-len-with-data", "header length covers the JSON and the binary data")
def _(env):
    h, d = _st_valid(env)
    return _st_out(env, st_bytes(h, d, length=len(json.dumps(h)) + len(d)))


@kind(ST, "header-random-bytes", "header is random binary, not JSON")
def _(env):
    raw = CANARY.encode() + env.rng.bytes(200)
    return _st_out(env, st_bytes(None, b"", raw_header=raw))


@kind(ST, "header-invalid-utf8", "header JSON with invalid UTF-8 inside a key")
def _(env):
    return _st_out(env, st_bytes(None, b"", raw_header=b'{"a\xff\xfe": {"dtype": "F32"}}'))


for _n, _raw in (
    ("list", b"[]"),
    ("number", b"12345"),
    ("string", b'"F32"'),
    ("null", b"null"),
    ("true", b"true"),
    ("list-of-entries", b'[{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}]'),
):
    kind(ST, f"header-json-{_n}", f"header is JSON but not an object ({_raw[:20]!r})")(_st_raw_header(_raw))

kind(ST, "header-nested-list-100k", "header is 100,000 nested lists [[[...]]]")(
    _st_raw_header(_nested(100_000))
)
kind(ST, "header-nested-object-100k", "header is 100,000 nested objects")(
    _st_raw_header(_nested_obj(100_000))
)
kind(ST, "entry-nested-100k", "a tensor entry is 100,000 nested lists")(
    _st_raw_header(b'{"w": ' + _nested(100_000) + b"}")
)
kind(ST, "dtype-nested-100k", "a dtype value is 100,000 nested lists")(
    _st_raw_header(b'{"w": {"dtype": ' + _nested(100_000) + b', "shape": [1], "data_offsets": [0, 4]}}')
)


def _st_stream_header(env: Env, prefix: bytes, unit: bytes | Callable[[int], bytes], close: bytes) -> dict:
    """A ~64 MB header written straight to disk (never held in memory whole), then valid entries."""
    h, d = st_pack(st_tensors(env.rng))
    tail = close + json.dumps(h).encode()[1:]
    p = env.dir / "model.safetensors"
    with open(p, "wb") as f:
        f.write(b"\0" * 8)
        f.write(prefix)
        written = len(prefix)
        i = 0
        while written < HUGE_HEADER - len(tail):
            chunk = unit(i) if callable(unit) else unit
            f.write(chunk)
            written += len(chunk)
            i += 1
        f.write(tail)
        written += len(tail)
        f.write(d)
        f.seek(0)
        f.write(struct.pack("<Q", written))
    env.note(f"header {written} bytes")
    return {"model": str(p)}


@kind(ST, "header-64mb-metadata", "64 MB header: one huge __metadata__ string, then valid entries")
def _(env):
    return _st_stream_header(env, b'{"__metadata__": {"blob": "', (CANARY * 4096).encode(), b'"}, ')


@kind(ST, "header-64mb-entries", "64 MB header: ~1M zero-size tensor entries, then valid entries")
def _(env):
    def unit(i: int) -> bytes:
        return "".join(
            f'"t{i:05d}_{j:03d}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}},' for j in range(1000)
        ).encode()

    return _st_stream_header(env, b"{", unit, b"")


for _n, _v in (
    ("list", [1, 2]),
    ("string", "abc"),
    ("number", 7),
    ("nested", {"a": {"b": [1]}}),
    ("null", None),
):
    kind(ST, f"metadata-{_n}", f"__metadata__ is {_n}")(
        lambda env, _v=_v: _st_with(env, lambda h: h.__setitem__("__metadata__", _v))
    )

for _n, _v in (("number", 5), ("list", []), ("null", None), ("string", "F32"), ("bool", True)):
    kind(ST, f"entry-{_n}", f"a tensor entry is a {_n}, not an object")(
        lambda env, _v=_v: _st_with(env, lambda h: h.__setitem__("fc1.weight", _v))
    )

for _f in ("dtype", "shape", "data_offsets"):
    kind(ST, f"entry-missing-{_f}", f"a tensor entry without {_f!r}")(
        lambda env, _f=_f: _st_with(env, lambda h: h["fc1.weight"].pop(_f))
    )

for _n, _v in (
    ("f128", "F128"),
    ("lower-f32", "f32"),
    ("empty", ""),
    ("c64", "C64"),
    ("u64", "U64"),
    ("u16", "U16"),
    ("f8-e8m0", "F8_E8M0"),
    ("f4", "F4"),
    ("number", 5),
    ("null", None),
    ("list", ["F32"]),
    ("object", {"F32": 1}),
):
    kind(ST, f"dtype-{_n}", f"unknown dtype {_v!r}")(_st_field("dtype", _v))

for _dt in ("F16", "BF16", "F64", "I64", "U8", "BOOL", "I8"):

    @kind(ST, f"dtype-valid-{_dt.lower()}", f"every tensor stored as {_dt}")
    def _(env, _dt=_dt):
        return _st_out(env, st_bytes(*st_pack(st_tensors(env.rng, _dt))))


@kind(ST, "dtype-f8", "float8 (F8_E4M3) matrices")
def _(env):
    t = [(n, "F8_E4M3", s, env.rng.bytes(int(np.prod(s)))) for n, _, s, _ in st_tensors(env.rng)]
    return _st_out(env, st_bytes(*st_pack(t)))


for _n, _shape in (
    ("negative", None),
    ("huge-product", [2**62, 2**62]),
    ("huge-zero", [2**63, 0]),
    ("int64-overflow-zero", [2**64, 0]),
    ("astronomic-zero", [10**30, 0]),
    ("float-1e308", [1e308, 1]),
    ("string", "1234"),
    ("bool", [True, True]),
    ("number", 5),
    ("object", {"a": 1}),
    ("null", None),
    ("nested", [[2, 3]]),
    ("dims-100", [1] * 100),
    ("dims-1000", [1] * 1000),
    ("neg-zero", [-5, 0]),
    ("big-2d", [65536, 65536]),
):

    @kind(ST, f"shape-{_n}", f"shape {str(_shape)[:40]} with the original offsets")
    def _(env, _shape=_shape):
        def lie(h):
            s = h["fc1.weight"]["shape"]
            h["fc1.weight"]["shape"] = [-1, s[0] * s[1]] if _shape is None else _shape

        return _st_with(env, lie)


@kind(ST, "shape-negative-pair", "shape [-a, -b] whose product matches the data size")
def _(env):
    return _st_with(
        env, lambda h: h["fc1.weight"].__setitem__("shape", [-s for s in h["fc1.weight"]["shape"]])
    )


@kind(ST, "shape-fraction", "shape [a + 0.5, b] (a float dimension)")
def _(env):
    return _st_with(
        env, lambda h: h["fc1.weight"].__setitem__("shape", [h["fc1.weight"]["shape"][0] + 0.5, 4])
    )


for _n, _tok in (("infinity", b"Infinity"), ("neg-infinity", b"-Infinity"), ("nan", b"NaN")):

    @kind(ST, f"shape-{_n}", f"shape [{_tok.decode()}, 1] (non-standard JSON numbers)")
    def _(env, _tok=_tok):
        h, d = _st_valid(env)
        h["fc1.weight"]["shape"] = ["@@"]
        raw = json.dumps(h).encode().replace(b'"@@"', _tok + b", 1")
        return _st_out(env, st_bytes(None, d, raw_header=raw))


for _n, _fn in (
    ("beyond-file", lambda h, n: [0, n + 4096]),
    ("negative", lambda h, n: [-16, 0]),
    ("reversed", lambda h, n: list(reversed(h["fc1.weight"]["data_offsets"]))),
    ("float", lambda h, n: [0.0, h["fc1.weight"]["data_offsets"][1] + 0.5]),
    ("three", lambda h, n: [0, 4, 8]),
    ("one", lambda h, n: [0]),
    ("huge", lambda h, n: [2**64, 2**64 + 4]),
    ("string", lambda h, n: "0-8"),
    ("null", lambda h, n: None),
    ("overlap", lambda h, n: h["fc2.weight"]["data_offsets"]),
):

    @kind(ST, f"offsets-{_n}", f"data_offsets of a matrix: {_n}")
    def _(env, _fn=_fn):
        h, d = _st_valid(env)
        h["fc1.weight"]["data_offsets"] = _fn(h, len(d))
        return _st_out(env, st_bytes(h, d))


@kind(ST, "offsets-overlap-consistent", "two tensors of the same shape share one byte range")
def _(env):
    h, d = _st_valid(env)
    h["fc1.bias"]["data_offsets"] = [0, h["fc1.bias"]["data_offsets"][1] - h["fc1.bias"]["data_offsets"][0]]
    return _st_out(env, st_bytes(h, d))


@kind(ST, "size-mismatch", "shape twice as large as the byte range")
def _(env):
    return _st_with(
        env,
        lambda h: h["fc1.weight"].__setitem__(
            "shape", [2 * h["fc1.weight"]["shape"][0], h["fc1.weight"]["shape"][1]]
        ),
    )


for _n, _shape in (
    ("zero-rows", (0, 16)),
    ("zero-cols", (16, 0)),
    ("scalar", ()),
    ("five-d", (2, 3, 2, 3, 2)),
    ("three-d", (8, 4, 5)),
    ("four-d", (8, 4, 3, 3)),
    ("one-by-one", (1, 1)),
    ("wide", (1, 4096)),
    ("tall", (4096, 1)),
    ("six-d", (2, 2, 2, 2, 2, 2)),
):
    kind(ST, f"tensor-{_n}", f"a weight of shape {_shape}")(
        _st_matrix(lambda rng, _shape=_shape: rng.standard_normal(_shape))
    )


@kind(ST, "only-1d", "only 1-D tensors (no matrices)")
def _(env):
    t = [(f"b{i}", "F32", (16,), to_st_bytes(env.rng.standard_normal(16), "F32")) for i in range(4)]
    return _st_out(env, st_bytes(*st_pack(t)))


@kind(ST, "no-tensors", "header {} (no tensors at all)")
def _(env):
    return _st_out(env, st_bytes({}, b""))


@kind(ST, "metadata-only", "only __metadata__, no tensors")
def _(env):
    return _st_out(env, st_bytes({"__metadata__": {"format": "pt"}}, b""))


def _specials(value: float, frac: float = 1.0) -> Callable[[np.random.Generator], np.ndarray]:
    def f(rng):
        a = rng.standard_normal((32, 24))
        mask = rng.random(a.shape) < frac
        a[mask] = value
        return a

    return f


for _n, _val, _frac in (
    ("nan", np.nan, 1.0),
    ("inf", np.inf, 1.0),
    ("neg-inf", -np.inf, 1.0),
    ("max", 3e38, 1.0),
    ("denormal", 1e-42, 1.0),
    ("zeros", 0.0, 1.0),
    ("some-nan", np.nan, 0.05),
    ("some-inf", np.inf, 0.05),
    ("some-max", 3e38, 0.05),
    ("one-nan", np.nan, 0.002),
    ("tiny", 1e-30, 1.0),
    ("constant", 0.5, 1.0),
):
    kind(ST, f"values-{_n}", f"a matrix filled ({_frac:.0%}) with {_val}")(_st_matrix(_specials(_val, _frac)))

kind(ST, "values-f16-overflow", "an F16 matrix with inf and 65504")(
    _st_matrix(lambda rng: np.where(rng.random((32, 24)) < 0.5, 65504.0, np.inf), "F16")
)
kind(ST, "values-bf16-nan", "a BF16 matrix of NaN")(_st_matrix(_specials(np.nan), "BF16"))
kind(ST, "values-rank-one", "a rank-one matrix (outer product)")(
    _st_matrix(lambda rng: np.outer(rng.standard_normal(48), rng.standard_normal(32)))
)
kind(ST, "values-identity", "an identity matrix (all eigenvalues equal)")(_st_matrix(lambda rng: np.eye(40)))
kind(ST, "values-huge-dynamic-range", "entries spanning 1e-38..1e38")(
    _st_matrix(lambda rng: 10.0 ** rng.uniform(-38, 38, (32, 24)) * rng.choice([-1, 1], (32, 24)))
)


@kind(ST, "duplicate-keys", "the same tensor name twice in the header (second one lies)")
def _(env):
    h, d = _st_valid(env)
    raw = json.dumps(h)[:-1] + ', "fc1.weight": {"dtype": "F32", "shape": [-3, 7], "data_offsets": [0, 4]}}'
    return _st_out(env, st_bytes(None, d, raw_header=raw.encode()))


@kind(ST, "name-1mb", "a tensor named by 1 MB of text")
def _(env):
    h, d = _st_valid(env)
    h["n" * MB] = h.pop("fc1.weight")
    return _st_out(env, st_bytes(h, d))


for _n, _name in (
    ("newline", "fc1\nweight\r"),
    ("nul", "a\x00b"),
    ("empty", ""),
    ("unicode", "权重\u202e.weight"),
    ("metadata", "__metadata__"),
    ("surrogate", "\ud800"),
):

    @kind(ST, f"name-{_n}", f"a tensor named {_name!r}")
    def _(env, _name=_name):
        h, d = _st_valid(env)
        h[_name] = h.pop("fc1.weight")
        return _st_out(env, st_bytes(h, d))


@kind(ST, "many-tensors-20k", "20,000 tiny 2x2 tensors")
def _(env):
    t = [
        (f"l{i}.weight", "F32", (2, 2), to_st_bytes(env.rng.standard_normal((2, 2)), "F32"))
        for i in range(20000)
    ]
    return _st_out(env, st_bytes(*st_pack(t)))


@kind(ST, "trailing-garbage", "valid file followed by random bytes")
def _(env):
    return _st_out(env, st_bytes(*_st_valid(env)) + CANARY.encode() + env.rng.bytes(1000))


@kind(ST, "header-padded", "header padded with 1 MB of spaces (allowed by the format)")
def _(env):
    h, d = _st_valid(env)
    return _st_out(env, st_bytes(None, d, raw_header=json.dumps(h).encode() + b" " * MB))


@kind(ST, "header-utf16", "header JSON encoded as UTF-16")
def _(env):
    h, d = _st_valid(env)
    return _st_out(env, st_bytes(None, d, raw_header=json.dumps(h).encode("utf-16")))


def _st_flip(region: str) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        h, d = _st_valid(env)
        raw = st_bytes(h, d)
        hl = 8 + len(json.dumps(h))
        lo, hi = {"header": (0, hl), "data": (hl, len(raw)), "any": (0, len(raw))}[region]
        n = int(env.rng.integers(1, 9))
        data, where = flip_bits(raw, env.rng, n, lo, hi)
        env.note(f"{n} bit flips at {where}")
        return _st_out(env, data)

    return w


for _r in ("header", "data", "any"):
    kind(ST, f"bitflip-{_r}", f"1-8 random bit flips in the {_r} bytes")(_st_flip(_r))


def _st_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    op = str(
        rng.choice(
            [
                "flip-any",
                "flip-header",
                "flip-data",
                "truncate",
                "field",
                "field",
                "length",
                "values",
                "insert",
            ]
        )
    )
    env.note(op)
    h, d = _st_valid(env, str(rng.choice(["F32", "F32", "F16", "BF16", "F64"])))
    if op.startswith("flip"):
        return _st_flip({"flip-any": "any", "flip-header": "header", "flip-data": "data"}[op])(env)
    raw = st_bytes(h, d)
    if op == "truncate":
        data, cut = truncate(raw, rng)
        env.note(f"cut at {cut}")
        return _st_out(env, data)
    if op == "field":
        name = str(rng.choice(list(h)))
        fld = str(rng.choice(["dtype", "shape", "data_offsets"]))
        val = EVIL_JSON[int(rng.integers(len(EVIL_JSON)))]
        h[name][fld] = val
        env.note(f"{name}.{fld} = {str(val)[:40]!r}")
        return _st_out(env, st_bytes(h, d))
    if op == "length":
        n = int(rng.choice([0, 1, 2, len(json.dumps(h)) - 1, len(json.dumps(h)) + 1, len(raw), 2**32, 2**63]))
        env.note(f"header length {n}")
        return _st_out(env, st_bytes(h, d, length=n))
    if op == "values":
        a = np.frombuffer(bytearray(d), dtype=np.uint8).copy()
        specials = (
            np.array([np.nan, np.inf, -np.inf, 3e38, 1e-42], dtype=np.float32).view(np.uint8).reshape(5, 4)
        )
        if h["fc1.weight"]["dtype"] == "F32":
            for _ in range(int(rng.integers(1, 20))):
                i = int(rng.integers(0, len(a) // 4)) * 4
                a[i : i + 4] = specials[int(rng.integers(5))]
        return _st_out(env, st_bytes(h, a.tobytes()))
    pos = int(rng.integers(8, len(raw)))
    return _st_out(env, raw[:pos] + rng.bytes(int(rng.integers(1, 64))) + raw[pos:])


_register("safetensors", ("load_subject", "spectra"), ST, _st_random, weight=1.3)


# =============================================================================== .pt / .pth state dicts
SD: list = []


def _sd_out(env: Env, members: list[Member], name: str = "model.pt") -> dict[str, Any]:
    return {"model": str(write_zip(env.dir / name, members))}


def _sd_raw(env: Env, data: bytes, name: str = "model.pt") -> dict[str, Any]:
    return {"model": str(write(env, name, data))}


def _torch_save(obj_fn: Callable[[Any], Any], **save_kw) -> Writer:
    """A real ``torch.save`` of ``obj_fn(torch)`` (for content only torch can build)."""

    def w(env: Env) -> dict[str, Any]:
        import torch

        torch.manual_seed(int(env.rng.integers(1 << 30)))
        buf = io.BytesIO()
        torch.save(obj_fn(torch), buf, **save_kw)
        return _sd_raw(env, buf.getvalue())

    return w


@kind(SD, "truncated-mid", "torch zip archive cut in the middle")
def _(env):
    data = (env.base / "state.pt").read_bytes()
    data, cut = truncate(data, env.rng, 1, len(data) - 30)
    env.note(f"cut at {cut}")
    return _sd_raw(env, data)


@kind(SD, "truncated-end", "torch zip archive missing its last 1-21 bytes (end of central directory)")
def _(env):
    data = (env.base / "state.pt").read_bytes()
    return _sd_raw(env, data[: -int(env.rng.integers(1, 22))])


@kind(SD, "bitflip-any", "1-8 bit flips anywhere in a torch zip archive")
def _(env):
    data = (env.base / "state.pt").read_bytes()
    data, where = flip_bits(data, env.rng, int(env.rng.integers(1, 9)))
    env.note(f"flips at {where}")
    return _sd_raw(env, data)


@kind(SD, "bitflip-pickle", "1-4 bit flips inside data.pkl (CRC fixed up)")
def _(env):
    ts = small_sd(env.rng)
    pkl, where = flip_bits(sd_pickle(ts), env.rng, int(env.rng.integers(1, 5)), 2)
    env.note(f"flips at {where}")
    return _sd_out(env, sd_members(ts, pkl=pkl))


@kind(SD, "bitflip-zip-headers", "bit flips inside the zip local/central headers")
def _(env):
    data = (env.base / "state.pt").read_bytes()
    with zipfile.ZipFile(env.base / "state.pt") as z:
        spots = [i.header_offset + int(env.rng.integers(0, 30)) for i in z.infolist()]
        start = z.start_dir
    spots += [start + int(env.rng.integers(0, len(data) - start))]
    b = bytearray(data)
    for s in spots[:: max(1, len(spots) // 3)]:
        b[s] ^= 1 << int(env.rng.integers(8))
    return _sd_raw(env, bytes(b))


# -- code-running pickles: all must be refused, and the marker must never appear
for _n, _mod, _name, _stack in (
    ("os-system", "os", "system", False),
    ("posix-system", "posix", "system", False),
    ("subprocess-call", "subprocess", "call", False),
    ("os-system-stack-global", "os", "system", True),
    ("torch-serialization-os-system", "torch.serialization", "os.system", True),
):

    @kind(SD, f"pickle-{_n}", f"data.pkl calls {_mod}.{_name}('touch MARKER')")
    def _(env, _mod=_mod, _name=_name, _stack=_stack):
        arg = env.touch_cmd()
        pkl = (
            pk_call(_mod, _name, arg, stack=_stack)
            if _name != "call"
            else Pickle()
            .glob(_mod, _name)
            .mark()
            .mark()
            .str("touch")
            .str(str(env.marker))
            .op(b"l")
            .tuple()
            .reduce()
            .bytes()
        )
        return _sd_out(env, sd_members(small_sd(env.rng), pkl=pkl))


for _n, _fn in (("exec", "exec"), ("eval", "eval")):

    @kind(SD, f"pickle-builtins-{_n}", f"data.pkl calls builtins.{_fn} on Python that touches MARKER")
    def _(env, _fn=_fn):
        code = env.py_payload()
        return _sd_out(env, sd_members(small_sd(env.rng), pkl=pk_call("builtins", _fn, code)))


@kind(SD, "pickle-system-inside-dict", "a valid state dict with one value built by os.system")
def _(env):
    ts = small_sd(env.rng)
    p = Pickle().op(b"}").mark()
    for i, t in enumerate(ts):
        p.str(t.name)
        pk_tensor(p, str(i), numel=t.numel, size=t.size, stride=t.stride)
    p.str("evil").glob("os", "system").mark().str(env.touch_cmd()).tuple().reduce()
    return _sd_out(env, sd_members(ts, pkl=p.op(b"u").bytes()))


@kind(SD, "pickle-evil-storage-type", "persistent id naming os.system as the storage type")
def _(env):
    p = Pickle().op(b"}").mark().str("w").glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str("storage").glob("os", "system").str("0").str("cpu").int(4).tuple().op(b"Q")
    p.int(0).ints((2, 2)).ints((2, 1)).op(b"\x89").glob("collections", "OrderedDict").op(b")").reduce()
    p.tuple().reduce().op(b"u")
    return _sd_out(env, sd_members(small_sd(env.rng), pkl=p.bytes()))


@kind(SD, "legacy-evil", "legacy (non-zip) torch file whose first pickle calls os.system")
def _(env):
    return _sd_raw(env, pk_call("os", "system", env.touch_cmd()))


@kind(SD, "legacy-evil-after-magic", "legacy torch file: valid magic number, then an os.system pickle")
def _(env):
    import pickle

    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    sysinfo = pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
        protocol=2,
    )
    return _sd_raw(env, magic + proto + sysinfo + pk_call("os", "system", env.touch_cmd()))


@kind(SD, "plain-pickle-evil-pth", "a plain pickle (not torch format) named .pth that calls os.system")
def _(env):
    return _sd_raw(env, pk_call("os", "system", env.touch_cmd()), "model.pth")


# -- lying tensor records
def _sd_view(numel=None, offset=0, size=None, stride=None, storage="FloatStorage", key=None) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        ts = small_sd(env.rng)
        t = ts[0]
        t.numel = t.numel if numel is None else numel
        t.offset, t.storage = offset, storage
        t.size = t.size if size is None else size
        t.stride = t.stride if stride is None else stride
        members = sd_members(ts)
        if key is not None:  # rename the storage key in the pickle only
            members[0] = Member(
                members[0].name, members[0].data.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00" + key)
            )
        return _sd_out(env, members)

    return w


kind(SD, "storage-numel-lie", "storage numel declared 1e9 for a small record")(_sd_view(numel=10**9))
kind(SD, "storage-numel-2pow62", "storage numel declared 2**62")(_sd_view(numel=2**62))
kind(SD, "storage-numel-negative", "storage numel declared -1")(_sd_view(numel=-1))
kind(SD, "storage-missing-record", "persistent id names a record that is not in the archive")(
    _sd_view(key=b"9")
)
kind(SD, "offset-beyond-storage", "storage offset past the end of the storage")(_sd_view(offset=10**6))
kind(SD, "offset-negative", "negative storage offset")(_sd_view(offset=-8))
kind(SD, "size-beyond-storage", "view larger than its storage")(_sd_view(size=(1000, 1000), stride=(1000, 1)))
kind(SD, "size-negative", "negative view size")(_sd_view(size=(-4, 4), stride=(4, 1)))
kind(SD, "stride-negative", "negative stride")(_sd_view(stride=(-1, 1)))
kind(SD, "zero-stride-20k", "20000x20000 view with zero strides over one element (1.6 GB when dense)")(
    _sd_view(size=(20000, 20000), stride=(0, 0))
)
kind(SD, "zero-stride-astronomic", "2**31 x 2**31 view with zero strides")(
    _sd_view(size=(2**31, 2**31), stride=(0, 0))
)
kind(SD, "size-huge-overflow", "view size (2**62, 2**62)")(_sd_view(size=(2**62, 2**62), stride=(1, 1)))
kind(SD, "storage-type-int", "a matrix stored as IntStorage")(_sd_view(storage="IntStorage"))
kind(SD, "storage-type-complex", "a matrix stored as ComplexFloatStorage (half the elements)")(
    _sd_view(storage="ComplexFloatStorage")
)
kind(SD, "storage-type-bool", "a matrix stored as BoolStorage")(_sd_view(storage="BoolStorage"))
kind(SD, "storage-type-half", "a matrix stored as HalfStorage")(_sd_view(storage="HalfStorage"))
kind(SD, "storage-type-unknown", "storage type torch.NoSuchStorage")(_sd_view(storage="NoSuchStorage"))


@kind(SD, "record-shorter", "storage record shorter than its declared numel")
def _(env):
    ts = small_sd(env.rng)
    ts[0].data = ts[0].data[: len(ts[0].data) // 3]
    return _sd_out(env, sd_members(ts))


@kind(SD, "zip-size-lie", "zip headers declare a larger size for the storage record than stored")
def _(env):
    ms = sd_members(small_sd(env.rng))
    ms[2].size = ms[2].csize = len(ms[2].data) * 1000
    return _sd_out(env, ms)


@kind(SD, "zip-crc-wrong", "storage record with a wrong CRC-32")
def _(env):
    ms = sd_members(small_sd(env.rng))
    ms[2].crc = 0x12345678
    return _sd_out(env, ms)


def _bomb_member(env: Env, name: str, which: str = "zeros") -> Member:
    meta = json.loads((env.base / "bombs.json").read_text())[which]
    return Member(
        name,
        method=8,
        raw=True,
        raw_file=env.base / f"bomb_{which}.deflate",
        size=meta["size"],
        crc=meta["crc"],
    )


@kind(SD, "zip-bomb-data-pkl", "data.pkl deflated: 3 MB inflating to 3 GiB")
def _(env):
    ms = sd_members(small_sd(env.rng))
    ms[0] = _bomb_member(env, "archive/data.pkl")
    return _sd_out(env, ms)


@kind(SD, "zip-bomb-storage", "a storage record deflated: 3 MB inflating to 3 GiB (numel small)")
def _(env):
    ms = sd_members(small_sd(env.rng))
    ms[2] = _bomb_member(env, ms[2].name)
    return _sd_out(env, ms)


@kind(SD, "zip-bomb-storage-declared", "a 3 GiB deflated storage record, numel declared to match")
def _(env):
    ts = small_sd(env.rng)
    ts[0].numel = BOMB_SIZE // 4
    ms = sd_members(ts)
    ms[2] = _bomb_member(env, ms[2].name)
    return _sd_out(env, ms)


@kind(SD, "zip-deflated-valid", "every member deflated (valid otherwise)")
def _(env):
    ms = sd_members(small_sd(env.rng))
    for m in ms:
        m.method = 8
    return _sd_out(env, ms)


for _n, _drop in (("no-data-pkl", "data.pkl"), ("no-version", "version"), ("no-byteorder", "byteorder")):

    @kind(SD, f"zip-{_n}", f"torch archive without {_drop}")
    def _(env, _drop=_drop):
        return _sd_out(env, [m for m in sd_members(small_sd(env.rng)) if not m.name.endswith("/" + _drop)])


@kind(SD, "zip-duplicate-names", "two data.pkl members (first evil, second valid)")
def _(env):
    ts = small_sd(env.rng)
    ms = sd_members(ts)
    return _sd_out(env, [Member("archive/data.pkl", pk_call("os", "system", env.touch_cmd()))] + ms)


@kind(SD, "zip-no-common-root", "members without a common top folder")
def _(env):
    ms = sd_members(small_sd(env.rng))
    for i, m in enumerate(ms):
        m.name = m.name.replace("archive/", f"r{i}/")
    return _sd_out(env, ms)


@kind(SD, "zip-traversal-names", "members named ../../x")
def _(env):
    ms = sd_members(small_sd(env.rng), prefix="../../archive")
    return _sd_out(env, ms)


@kind(SD, "zip-empty", "an empty zip archive")
def _(env):
    return _sd_out(env, [])


kind(SD, "byteorder-big", "byteorder 'big' (weights read byte-swapped)")(
    lambda env: _sd_out(env, sd_members(small_sd(env.rng), byteorder=b"big"))
)
kind(SD, "byteorder-garbage", "byteorder is random bytes")(
    lambda env: _sd_out(env, sd_members(small_sd(env.rng), byteorder=CANARY.encode()))
)
kind(SD, "version-999", "archive version 999")(
    lambda env: _sd_out(env, sd_members(small_sd(env.rng), version=b"999\n"))
)
kind(SD, "version-garbage", "archive version is not a number")(
    lambda env: _sd_out(env, sd_members(small_sd(env.rng), version=b"\xff\xfe" + CANARY.encode()))
)


@kind(SD, "pickle-deep-dicts-100k", "data.pkl: 100,000 nested dicts")
def _(env):
    p = Pickle()
    for _ in range(100_000):
        p.op(b"}").str("a")
    p.op(b"}")
    p.op(b"s" * 100_000)
    return _sd_out(env, sd_members([], pkl=p.bytes()))


@kind(SD, "pickle-deep-lists-100k", "data.pkl: 100,000 nested lists")
def _(env):
    p = Pickle().op(b"]" * 100_001).op(b"a" * 100_000)
    return _sd_out(env, sd_members([], pkl=p.bytes()))


@kind(SD, "pickle-deep-dicts-tensor", "a tensor 2,000 dicts deep")
def _(env):
    ts = small_sd(env.rng)[:1]
    p = Pickle()
    for i in range(2000):
        p.op(b"}").str(f"k{i}")
    pk_tensor(p, "0", numel=ts[0].numel, size=ts[0].size, stride=ts[0].stride)
    p.op(b"s" * 2000)
    return _sd_out(env, sd_members(ts, pkl=p.bytes()))


@kind(SD, "pickle-huge-binbytes", "data.pkl declares an 8-EiB BINBYTES8 string")
def _(env):
    return _sd_out(env, sd_members([], pkl=b"\x80\x04\x8e" + struct.pack("<Q", 2**63 - 1) + b"abc"))


@kind(SD, "pickle-huge-long", "data.pkl declares a LONG4 of 2 GiB")
def _(env):
    return _sd_out(env, sd_members([], pkl=b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01"))


@kind(SD, "pickle-memo-get-huge", "data.pkl reads memo entry 2**31")
def _(env):
    return _sd_out(env, sd_members([], pkl=b"\x80\x02j" + struct.pack("<I", 2**31) + b"."))


@kind(SD, "pickle-empty", "data.pkl is empty")
def _(env):
    return _sd_out(env, sd_members([], pkl=b""))


@kind(SD, "pickle-random", "data.pkl is random bytes")
def _(env):
    return _sd_out(env, sd_members(small_sd(env.rng), pkl=b"\x80\x02" + env.rng.bytes(200)))


@kind(SD, "pickle-bad-rebuild-args", "_rebuild_tensor_v2 called with strings and None")
def _(env):
    p = Pickle().op(b"}").mark().str("w").glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.str("x").op(b"N").str("size").op(b"N").op(b"\x89").op(b"N").tuple().reduce().op(b"u")
    return _sd_out(env, sd_members(small_sd(env.rng), pkl=p.bytes()))


@kind(SD, "pickle-persid-wrong-arity", "persistent id tuple of the wrong length")
def _(env):
    p = Pickle().op(b"}").mark().str("w").glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str("storage").tuple().op(b"Q").int(0).ints((2,)).ints((1,)).op(b"\x89")
    p.glob("collections", "OrderedDict").op(b")").reduce().tuple().reduce().op(b"u")
    return _sd_out(env, sd_members(small_sd(env.rng), pkl=p.bytes()))


# -- content torch itself can build
kind(SD, "sparse-coo", "a sparse COO matrix in the state dict")(
    _torch_save(lambda t: {"w": t.randn(16, 12).to_sparse(), "b": t.randn(16)})
)
kind(SD, "sparse-csr", "a sparse CSR matrix in the state dict")(
    _torch_save(lambda t: {"w": t.randn(16, 12).to_sparse_csr()})
)


@kind(SD, "sparse-coo-invalid-indices", "a sparse COO matrix whose indices lie outside its shape")
def _(env):
    import torch

    idx = torch.tensor([[0, 10**6], [3, 2**40]])
    sp = torch.sparse_coo_tensor(idx, torch.ones(2), (4, 4), check_invariants=False)
    buf = io.BytesIO()
    torch.save({"w": sp}, buf)
    return _sd_raw(env, buf.getvalue())


kind(SD, "nested-dicts", "tensors nested three dicts deep")(
    _torch_save(lambda t: {"a": {"b": {"c.weight": t.randn(16, 8)}}, "d": {"e": t.randn(8, 8)}})
)
kind(SD, "non-tensor-values", "state dict mixing tensors with ints, strings, lists, None")(
    _torch_save(lambda t: {"w": t.randn(16, 8), "n": 3, "s": "x", "l": [t.randn(2, 2)], "z": None, "f": 1.5})
)
kind(SD, "only-non-tensors", "a dict of ints and strings")(_torch_save(lambda t: {"epoch": 3, "name": "x"}))
kind(SD, "list-of-tensors", "a list of tensors (not a dict)")(
    _torch_save(lambda t: [t.randn(8, 8), t.randn(4, 8)])
)
kind(SD, "bare-tensor", "a single tensor (not a dict)")(_torch_save(lambda t: t.randn(16, 8)))
kind(SD, "non-string-keys", "int and tuple keys")(
    _torch_save(lambda t: {1: t.randn(8, 8), (2, 3): t.randn(8, 4)})
)
kind(SD, "wrapper-state-dict", "{'state_dict': {...}} wrapper")(
    _torch_save(lambda t: {"state_dict": {"fc.weight": t.randn(16, 8)}, "epoch": 1})
)
kind(SD, "wrapper-model-not-dict", "{'model': 'text', 'w': tensor}")(
    _torch_save(lambda t: {"model": "resnet", "w": t.randn(16, 8)})
)
kind(SD, "empty-dict", "an empty dict")(_torch_save(lambda t: {}))
kind(SD, "complex-matrix", "a complex64 matrix")(
    _torch_save(lambda t: {"w": t.randn(16, 8, dtype=t.complex64)})
)
kind(SD, "int-matrix", "an int64 matrix")(_torch_save(lambda t: {"w": t.randint(0, 9, (16, 8))}))
kind(SD, "bool-matrix", "a bool matrix")(_torch_save(lambda t: {"w": t.rand(16, 8) > 0.5}))
kind(SD, "half-matrix", "a float16 matrix")(_torch_save(lambda t: {"w": t.randn(16, 8).half()}))
kind(SD, "bf16-matrix", "a bfloat16 matrix")(_torch_save(lambda t: {"w": t.randn(16, 8).bfloat16()}))
kind(SD, "f64-matrix", "a float64 matrix")(_torch_save(lambda t: {"w": t.randn(16, 8).double()}))
kind(SD, "uint16-matrix", "a uint16 matrix")(
    _torch_save(lambda t: {"w": t.randint(0, 9, (16, 8)).to(t.uint16)})
)
kind(SD, "float8-matrix", "a float8_e4m3fn matrix")(
    _torch_save(lambda t: {"w": t.randn(16, 8).to(t.float8_e4m3fn)})
)
kind(SD, "quantized-matrix", "a quantized (qint8) matrix")(
    _torch_save(lambda t: {"w": t.quantize_per_tensor(t.randn(16, 8), 0.1, 0, t.qint8)})
)
kind(SD, "meta-tensor", "a tensor on the meta device")(
    _torch_save(lambda t: {"w": t.empty(16, 8, device="meta")})
)
kind(SD, "nan-matrix", "a matrix of NaN")(_torch_save(lambda t: {"w": t.full((16, 8), float("nan"))}))
kind(SD, "inf-matrix", "a matrix of inf")(_torch_save(lambda t: {"w": t.full((16, 8), float("inf"))}))
kind(SD, "max-matrix", "a matrix of 3e38")(_torch_save(lambda t: {"w": t.full((16, 8), 3e38)}))
kind(SD, "zero-size-matrix", "a 0x8 matrix")(_torch_save(lambda t: {"w": t.randn(0, 8), "v": t.randn(8, 0)}))
kind(SD, "non-contiguous", "a transposed (non-contiguous) view")(
    _torch_save(lambda t: {"w": t.randn(16, 8).t()})
)
kind(SD, "expanded", "an expanded zero-stride view (8x8 over 8 elements)")(
    _torch_save(lambda t: {"w": t.randn(1, 8).expand(8, 8)})
)
kind(SD, "shared-storage", "two tensors sharing one storage")(
    _torch_save(lambda t: (lambda a: {"w": a, "v": a[2:]})(t.randn(16, 8)))
)
kind(SD, "requires-grad", "a Parameter with requires_grad")(
    _torch_save(lambda t: {"w": t.nn.Parameter(t.randn(16, 8))})
)
kind(SD, "many-tensors-5k", "5,000 tiny tensors")(
    _torch_save(lambda t: {f"l{i}.weight": t.randn(2, 2) for i in range(5000)})
)
kind(SD, "legacy-valid", "legacy (non-zip) torch.save format")(
    _torch_save(lambda t: {"w": t.randn(16, 8), "b": t.randn(16)}, _use_new_zipfile_serialization=False)
)


@kind(SD, "legacy-truncated", "legacy torch file cut short")
def _(env):
    data = (env.base / "state_legacy.pt").read_bytes()
    return _sd_raw(env, truncate(data, env.rng, 1, len(data) - 1)[0])


@kind(SD, "legacy-bitflip", "legacy torch file with bit flips")
def _(env):
    data = (env.base / "state_legacy.pt").read_bytes()
    return _sd_raw(env, flip_bits(data, env.rng, int(env.rng.integers(1, 9)))[0])


for _suf in ("bin", "ckpt", "pth"):
    kind(SD, f"suffix-{_suf}", f"a valid state dict named model.{_suf}")(
        lambda env, _suf=_suf: {"model": str(shutil.copy(env.base / "state.pt", env.dir / f"model.{_suf}"))}
    )


@kind(SD, "content-safetensors", "a .safetensors file named model.pt")
def _(env):
    return _sd_raw(env, st_bytes(*st_pack(st_tensors(env.rng))))


@kind(SD, "content-npz", "an .npz file named model.pt")
def _(env):
    return {"model": str(shutil.copy(env.base / "images.npz", env.dir / "model.pt"))}


@kind(SD, "content-pt2", "a torch.export program named model.pt")
def _(env):
    return {"model": str(shutil.copy(env.base / "model.pt2", env.dir / "model.pt"))}


@kind(SD, "content-text", "a text file named model.pt")
def _(env):
    return _sd_raw(env, (CANARY + " this is not a model\n").encode() * 10)


@kind(SD, "content-random", "random bytes named model.pt")
def _(env):
    return _sd_raw(env, env.rng.bytes(4096))


def _sd_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    op = str(rng.choice(["flip", "flip", "flip-pkl", "truncate", "view", "legacy-flip", "zip-lie"]))
    env.note(op)
    if op == "flip":
        data = (env.base / "state.pt").read_bytes()
        data, where = flip_bits(data, rng, int(rng.integers(1, 12)))
        env.note(f"flips at {where}")
        return _sd_raw(env, data)
    if op == "flip-pkl":
        ts = small_sd(rng)
        pkl, where = flip_bits(sd_pickle(ts), rng, int(rng.integers(1, 6)), 2)
        env.note(f"flips at {where}")
        return _sd_out(env, sd_members(ts, pkl=pkl))
    if op == "truncate":
        data = (env.base / "state.pt").read_bytes()
        data, cut = truncate(data, rng)
        env.note(f"cut at {cut}")
        return _sd_raw(env, data)
    if op == "legacy-flip":
        data = (env.base / "state_legacy.pt").read_bytes()
        return _sd_raw(env, flip_bits(data, rng, int(rng.integers(1, 12)))[0])
    if op == "zip-lie":
        ms = sd_members(small_sd(rng))
        m = ms[int(rng.integers(len(ms)))]
        attr = str(rng.choice(["size", "csize", "crc"]))
        setattr(m, attr, int(rng.integers(0, 2**32)))
        env.note(f"{m.name}.{attr} lies")
        return _sd_out(env, ms)
    ts = small_sd(rng)
    t = ts[int(rng.integers(len(ts)))]
    choice = int(rng.integers(4))
    vals = [0, 1, -1, 7, 2**31, 2**40, 2**62, -(2**40)]
    if choice == 0:
        t.numel = int(rng.choice(vals))
    elif choice == 1:
        t.offset = int(rng.choice(vals))
    elif choice == 2:
        t.size = tuple(int(rng.choice(vals)) for _ in range(int(rng.integers(0, 4))))
    else:
        t.stride = tuple(int(rng.choice(vals)) for _ in range(len(t.size)))
    env.note(f"{t.name}: numel {t.numel} offset {t.offset} size {t.size} stride {t.stride}")
    return _sd_out(env, sd_members(ts))


_register("state_dict", ("load_subject", "spectra"), SD, _sd_random, weight=1.2)


# =============================================================================== .pt2 (torch.export)
PT2: list = []


class Pt2:
    """The members of the base ``torch.export`` archive, by path below its root folder."""

    def __init__(self, env: Env):
        raw = read_zip(env.base / "model.pt2")
        self.root = next(iter(raw)).split("/")[0]
        self.m: dict[str, bytes | Member] = {k.split("/", 1)[1]: v for k, v in raw.items()}
        self.env = env

    def json(self, name: str) -> Any:
        return json.loads(self.m[name])

    def set_json(self, name: str, obj: Any) -> None:
        self.m[name] = json.dumps(obj).encode()

    @property
    def model(self) -> dict:
        return self.json("models/model.json")

    def out(self, name: str = "model.pt2", root: str | None = None) -> dict[str, Any]:
        r = self.root if root is None else root
        members = []
        for k, v in self.m.items():
            full = f"{r}/{k}" if r else k
            if isinstance(v, Member):
                v.name = full
                members.append(v)
            else:
                members.append(Member(full, v))
        return {"model": str(write_zip(self.env.dir / name, members))}


def _pt2_model(fn: Callable[[dict, Env], None]) -> Writer:
    """Edit models/model.json with ``fn(model_json, env)``."""

    def w(env: Env) -> dict[str, Any]:
        a = Pt2(env)
        mj = a.model
        fn(mj, env)
        a.set_json("models/model.json", mj)
        return a.out()

    return w


def _pt2_weights(fn: Callable[[dict, Env], None]) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        a = Pt2(env)
        cfg = a.json("data/weights/model_weights_config.json")
        fn(cfg, env)
        a.set_json("data/weights/model_weights_config.json", cfg)
        return a.out()

    return w


def _nodes(mj: dict) -> list[dict]:
    return mj["graph_module"]["graph"]["nodes"]


@kind(PT2, "truncated-mid", ".pt2 cut in the middle")
def _(env):
    data = (env.base / "model.pt2").read_bytes()
    return {"model": str(write(env, "model.pt2", truncate(data, env.rng, 1, len(data) - 30)[0]))}


@kind(PT2, "truncated-end", ".pt2 missing its last bytes")
def _(env):
    data = (env.base / "model.pt2").read_bytes()
    return {"model": str(write(env, "model.pt2", data[: -int(env.rng.integers(1, 22))]))}


@kind(PT2, "bitflip-any", "1-8 bit flips anywhere in the .pt2")
def _(env):
    data, where = flip_bits((env.base / "model.pt2").read_bytes(), env.rng, int(env.rng.integers(1, 9)))
    env.note(f"flips at {where}")
    return {"model": str(write(env, "model.pt2", data))}


@kind(PT2, "bitflip-model-json", "bit flips inside models/model.json (CRC valid)")
def _(env):
    a = Pt2(env)
    a.m["models/model.json"], where = flip_bits(
        a.m["models/model.json"], env.rng, int(env.rng.integers(1, 5))
    )
    env.note(f"flips at {where}")
    return a.out()


@kind(PT2, "bitflip-weights", "bit flips inside the weight records (CRC valid)")
def _(env):
    a = Pt2(env)
    for k in [k for k in a.m if k.startswith("data/weights/weight_")]:
        a.m[k] = flip_bits(a.m[k], env.rng, 4)[0]
    return a.out()


def _aoti(env: Env, a: Pt2, model_name: str = "model", so: bool = True, cpp: bool = False) -> None:
    d = f"data/aotinductor/{model_name}/"
    meta = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
    if so:
        a.m[d + f"{model_name}.so"] = (env.base / "ctor.so").read_bytes()
    if cpp:
        flags = {
            "compiler": f"touch {env.marker} ; true",
            "compile_only": True,
            "cflags": [],
            "definitions": [],
            "include_dirs": [],
            "ldflags": [],
            "libraries_dirs": [],
            "libraries": [],
            "passthrough_args": [],
        }
        a.m[d + f"{model_name}.cpp"] = b"int nnv_fuzz(void) { return 0; }\n"
        a.m[d + f"{model_name}_compile_flags.json"] = json.dumps(flags).encode()
        a.m[d + f"{model_name}_linker_flags.json"] = json.dumps(dict(flags, compile_only=False)).encode()
    a.m[d + f"{model_name}.wrapper_metadata.json"] = meta
    a.m[d + f"{model_name}_metadata.json"] = meta


@kind(
    PT2,
    "aoti-so-constructor",
    "valid program + data/aotinductor/model/model.so whose constructor touches MARKER",
    needs="gcc",
)
def _(env):
    a = Pt2(env)
    _aoti(env, a)
    return a.out()


@kind(
    PT2,
    "aoti-so-other-name",
    "valid program + data/aotinductor/evil/evil.so (constructor touches MARKER)",
    needs="gcc",
)
def _(env):
    a = Pt2(env)
    _aoti(env, a, "evil")
    return a.out()


@kind(PT2, "aoti-cpp-compile-flags", "valid program + an AOTI .cpp whose compile flags run `touch MARKER`")
def _(env):
    a = Pt2(env)
    _aoti(env, a, so=False, cpp=True)
    return a.out()


def _set_expr(mj: dict, expr: str) -> None:
    s = json.dumps(mj)
    i = s.index('"expr_str": "') + len('"expr_str": "')
    j = s.index('"', i)
    old = s[i:j]
    mj.clear()
    mj.update(json.loads(s.replace(json.dumps(old)[1:-1], json.dumps(expr)[1:-1])))


for _n, _tpl in (("os-system", "{p}"), ("lambda", "(lambda: {p})()"), ("in-sum", "s31 + {p}")):

    @kind(PT2, f"expr-str-{_n}", f"symbolic size expr_str = {_tpl} (Python that touches MARKER)")
    def _(env, _tpl=_tpl):
        return _pt2_model(lambda mj, env: _set_expr(mj, _tpl.format(p=env.py_payload())))(env)


@kind(PT2, "expr-str-range-constraint", "range_constraints keyed by Python that touches MARKER")
def _(env):
    def f(mj, env):
        mj["range_constraints"] = {env.py_payload(): {"min_val": 1, "max_val": 10}}

    return _pt2_model(f)(env)


@kind(PT2, "guards-code-os-system", "guards_code holds Python that touches MARKER")
def _(env):
    return _pt2_model(lambda mj, env: mj.__setitem__("guards_code", [env.py_payload() + " == 0"]))(env)


@kind(
    PT2, "tensor-meta-size-expr", "a weight's tensor_meta size is an as_expr with Python that touches MARKER"
)
def _(env):
    def f(cfg, env):
        cfg["config"]["1.weight"]["tensor_meta"]["sizes"][0] = {
            "as_expr": {"expr_str": env.py_payload(), "hint": {"as_int": 32}}
        }

    return _pt2_weights(f)(env)


for _n, _target in (
    ("os-system", "torch.serialization.os.system"),
    ("pickle-loads", "torch.serialization.pickle.loads"),
    ("torch-load", "torch.load"),
    ("operator-call", "_operator.call"),
    ("builtins-exec", "torch._dynamo.utils.builtins.exec"),
    ("unknown", "no.such.op"),
    ("extension", "#evil.module:function"),
    ("math-prod", "math.prod"),
):

    @kind(PT2, f"node-target-{_n}", f"the relu node's target is {_target!r}")
    def _(env, _target=_target):
        def f(mj, env):
            for node in _nodes(mj):
                if node["target"] == "torch.ops.aten.relu.default":
                    node["target"] = _target

        return _pt2_model(f)(env)


@kind(PT2, "node-args-os-system-string", "os.system target whose argument is the touch command")
def _(env):
    def f(mj, env):
        for node in _nodes(mj):
            if node["target"] == "torch.ops.aten.relu.default":
                node["target"] = "torch.serialization.os.system"
                node["inputs"] = [{"name": "command", "arg": {"as_string": env.touch_cmd()}, "kind": 1}]

    return _pt2_model(f)(env)


def _pt2_constant(path_name: str, payload: Callable[[Env], bytes], use_pickle: bool = True) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        a = Pt2(env)
        a.set_json(
            "data/constants/model_constants_config.json",
            {
                "config": {
                    "evil": {
                        "path_name": path_name,
                        "is_param": False,
                        "use_pickle": use_pickle,
                        "tensor_meta": None,
                    }
                }
            },
        )
        a.m[f"data/constants/{path_name}"] = payload(env)
        return a.out()

    return w


kind(PT2, "opaque-obj-pickle", "constant opaque_obj_0 is a pickle calling os.system (goes to pickle.loads)")(
    _pt2_constant("opaque_obj_0", lambda env: pk_call("os", "system", env.touch_cmd()))
)
kind(PT2, "custom-obj-pickle", "constant custom_obj_0 is a pickle calling os.system")(
    _pt2_constant("custom_obj_0", lambda env: pk_call("os", "system", env.touch_cmd()))
)


def _evil_torch_zip(env: Env) -> bytes:
    """A torch zip archive whose data.pkl calls os.system (written to disk, read back, removed)."""
    sub = env.dir / "sub.zip"
    write_zip(sub, sd_members([], pkl=pk_call("os", "system", env.touch_cmd())))
    data = sub.read_bytes()
    sub.unlink()
    return data


kind(PT2, "custom-obj-torch-zip", "constant custom_obj_0 is a torch zip whose data.pkl calls os.system")(
    _pt2_constant("custom_obj_0", _evil_torch_zip)
)


kind(PT2, "tensor-constant-pickle", "constant tensor_0 stored with use_pickle and an os.system pickle")(
    _pt2_constant("tensor_0", lambda env: pk_call("os", "system", env.touch_cmd()))
)
kind(PT2, "constant-unknown-prefix", "constant whose path has an unknown prefix")(
    _pt2_constant("evil_0", lambda env: b"xx")
)


@kind(PT2, "weights-use-pickle", "a weight stored with use_pickle=True as a pickle calling os.system")
def _(env):
    a = Pt2(env)
    cfg = a.json("data/weights/model_weights_config.json")
    cfg["config"]["1.weight"].update(use_pickle=True, tensor_meta=None)
    a.set_json("data/weights/model_weights_config.json", cfg)
    a.m["data/weights/" + cfg["config"]["1.weight"]["path_name"]] = pk_call("os", "system", env.touch_cmd())
    return a.out()


@kind(
    PT2,
    "weights-use-pickle-torch-zip",
    "a use_pickle weight that is a torch zip whose data.pkl calls os.system",
)
def _(env):
    a = Pt2(env)
    cfg = a.json("data/weights/model_weights_config.json")
    cfg["config"]["1.weight"].update(use_pickle=True, tensor_meta=None)
    a.set_json("data/weights/model_weights_config.json", cfg)
    a.m["data/weights/" + cfg["config"]["1.weight"]["path_name"]] = _evil_torch_zip(env)
    return a.out()


@kind(PT2, "sample-inputs-evil", "data/sample_inputs/model.pt is a torch zip whose data.pkl calls os.system")
def _(env):
    a = Pt2(env)
    a.m["data/sample_inputs/model.pt"] = _evil_torch_zip(env)
    return a.out()


@kind(PT2, "legacy-weights-pt-evil", "legacy data/weights/model.pt member: a torch zip calling os.system")
def _(env):
    a = Pt2(env)
    a.m["data/weights/model.pt"] = _evil_torch_zip(env)
    return a.out()


@kind(PT2, "legacy-format-evil", "pre-2.8 .pt2 layout (top-level 'version') with an os.system state dict")
def _(env):
    evil = _evil_torch_zip(env)
    mj = Pt2(env).model
    ms = [
        Member("version", b"8.20"),
        Member("serialized_exported_program.json", json.dumps(mj).encode()),
        Member("serialized_state_dict.pt", evil),
        Member("serialized_constants.pt", evil),
        Member("serialized_example_inputs.pt", evil),
    ]
    return {"model": str(write_zip(env.dir / "model.pt2", ms))}


@kind(PT2, "legacy-format-bomb", "pre-2.8 .pt2 layout with a member inflating to 3 GiB")
def _(env):
    ms = [Member("version", b"8.20"), _bomb_member(env, "serialized_exported_program.json")]
    return {"model": str(write_zip(env.dir / "model.pt2", ms))}


@kind(PT2, "model-json-bomb", "models/model.json deflated: 3 MB inflating to 3 GiB")
def _(env):
    a = Pt2(env)
    a.m["models/model.json"] = _bomb_member(env, "")
    return a.out()


@kind(PT2, "weights-bomb", "a weight record deflated: 3 MB inflating to 3 GiB")
def _(env):
    a = Pt2(env)
    a.m["data/weights/weight_0"] = _bomb_member(env, "")
    return a.out()


@kind(PT2, "unknown-member-bomb", "an unknown member deflated: inflating to 3 GiB")
def _(env):
    a = Pt2(env)
    a.m["data/junk.bin"] = _bomb_member(env, "")
    return a.out()


@kind(PT2, "model-json-huge", "models/model.json padded to 64 MB (whitespace then the JSON)")
def _(env):
    a = Pt2(env)
    a.m["models/model.json"] = b" " * HUGE_HEADER + a.m["models/model.json"]
    return a.out()


@kind(PT2, "model-json-deep-100k", "models/model.json is 100,000 nested lists")
def _(env):
    a = Pt2(env)
    a.m["models/model.json"] = _nested(100_000)
    return a.out()


@kind(PT2, "model-json-deep-object-100k", "models/model.json is 100,000 nested objects")
def _(env):
    a = Pt2(env)
    a.m["models/model.json"] = _nested_obj(100_000)
    return a.out()


for _n, _raw in (
    ("list", b"[]"),
    ("null", b"null"),
    ("not-json", CANARY.encode() + b"\x00\xff"),
    ("empty", b""),
    ("empty-object", b"{}"),
):

    @kind(PT2, f"model-json-{_n}", f"models/model.json is {_raw[:16]!r}")
    def _(env, _raw=_raw):
        a = Pt2(env)
        a.m["models/model.json"] = _raw
        return a.out()


for _n, _raw in (
    ("not-json", b"\xff" + CANARY.encode()),
    ("list", b"[]"),
    ("deep-100k", _nested(100_000)),
    ("config-list", b'{"config": []}'),
    ("entry-null", b'{"config": {"1.weight": null}}'),
):

    @kind(PT2, f"weights-config-{_n}", f"data/weights/model_weights_config.json is {_raw[:16]!r}")
    def _(env, _raw=_raw):
        a = Pt2(env)
        a.m["data/weights/model_weights_config.json"] = _raw
        return a.out()


def _meta_lie(field_: str, value: Any) -> Writer:
    def f(cfg, env):
        cfg["config"]["1.weight"]["tensor_meta"][field_] = value

    return _pt2_weights(f)


kind(PT2, "tensor-meta-sizes-exceed", "a weight's sizes 1000x larger than its record")(
    _meta_lie("sizes", [{"as_int": 32000}, {"as_int": 64000}])
)
kind(PT2, "tensor-meta-sizes-negative", "a weight's sizes negative")(
    _meta_lie("sizes", [{"as_int": -32}, {"as_int": 64}])
)
kind(PT2, "tensor-meta-sizes-huge", "a weight's sizes (2**62, 2**62)")(
    _meta_lie("sizes", [{"as_int": 2**62}, {"as_int": 2**62}])
)
kind(PT2, "tensor-meta-strides-huge", "a weight's strides (2**40, 1)")(
    _meta_lie("strides", [{"as_int": 2**40}, {"as_int": 1}])
)
kind(PT2, "tensor-meta-strides-zero-big", "a weight 20000x20000 with zero strides (1.6 GB dense)")(
    lambda env: _pt2_weights(
        lambda cfg, env: cfg["config"]["1.weight"]["tensor_meta"].update(
            sizes=[{"as_int": 20000}, {"as_int": 20000}], strides=[{"as_int": 0}, {"as_int": 0}]
        )
    )(env)
)
kind(PT2, "tensor-meta-strides-negative", "a weight's strides negative")(
    _meta_lie("strides", [{"as_int": -64}, {"as_int": 1}])
)
kind(PT2, "tensor-meta-offset-beyond", "a weight's storage offset past its record")(
    _meta_lie("storage_offset", {"as_int": 10**7})
)
kind(PT2, "tensor-meta-dtype-999", "a weight's dtype code 999")(_meta_lie("dtype", 999))
kind(PT2, "tensor-meta-device-cuda", "a weight on device cuda:7")(
    _meta_lie("device", {"type": "cuda", "index": 7})
)
kind(PT2, "tensor-meta-device-meta", "a weight on the meta device")(
    _meta_lie("device", {"type": "meta", "index": None})
)
kind(PT2, "tensor-meta-null", "a weight with tensor_meta null")(_meta_lie("dtype", None))


@kind(PT2, "weight-record-odd-size", "a weight record whose size is not a multiple of 4")
def _(env):
    a = Pt2(env)
    a.m["data/weights/weight_0"] = a.m["data/weights/weight_0"][:-3]
    return a.out()


@kind(PT2, "weight-record-empty", "a 0-byte weight record declared 30000x30000 (becomes dense zeros)")
def _(env):
    a = Pt2(env)
    a.m["data/weights/weight_0"] = b""
    cfg = a.json("data/weights/model_weights_config.json")
    cfg["config"]["1.weight"]["tensor_meta"].update(
        sizes=[{"as_int": 30000}, {"as_int": 30000}], strides=[{"as_int": 30000}, {"as_int": 1}]
    )
    a.set_json("data/weights/model_weights_config.json", cfg)
    return a.out()


for _n, _drop in (
    ("model-json", "models/model.json"),
    ("weights-config", "data/weights/model_weights_config.json"),
    ("constants-config", "data/constants/model_constants_config.json"),
    ("sample-inputs", "data/sample_inputs/model.pt"),
    ("weight-record", "data/weights/weight_0"),
    ("archive-version", "archive_version"),
):

    @kind(PT2, f"missing-{_n}", f".pt2 without {_drop}")
    def _(env, _drop=_drop):
        a = Pt2(env)
        del a.m[_drop]
        return a.out()


for _n, _member, _val in (
    ("archive-version-wrong", "archive_version", b"99"),
    ("archive-format-wrong", "archive_format", b"zip"),
    ("byteorder-big", "byteorder", b"big"),
):

    @kind(PT2, _n, f"{_member} = {_val!r}")
    def _(env, _member=_member, _val=_val):
        a = Pt2(env)
        a.m[_member] = _val
        return a.out()


kind(PT2, "schema-version-999", "model.json schema_version major 999")(
    _pt2_model(lambda mj, env: mj.__setitem__("schema_version", {"major": 999, "minor": 0}))
)
kind(PT2, "opset-version-weird", "opset_version {'aten': -1, 'evil': 10**20}")(
    _pt2_model(lambda mj, env: mj.__setitem__("opset_version", {"aten": -1, "evil": 10**20}))
)
kind(PT2, "signature-param-missing", "input spec names a parameter not in the state dict")(
    _pt2_model(
        lambda mj, env: mj["graph_module"]["signature"]["input_specs"][0]["parameter"].__setitem__(
            "parameter_name", "no.such.weight"
        )
    )
)
kind(PT2, "signature-two-user-inputs", "two user inputs in the signature")(
    _pt2_model(
        lambda mj, env: mj["graph_module"]["signature"]["input_specs"].append(
            {"user_input": {"arg": {"as_tensor": {"name": "input"}}}}
        )
    )
)
kind(PT2, "graph-empty", "graph with no nodes")(
    _pt2_model(lambda mj, env: mj["graph_module"]["graph"].__setitem__("nodes", []))
)
kind(PT2, "graph-node-args-garbage", "a node's inputs replaced by garbage")(
    _pt2_model(
        lambda mj, env: _nodes(mj)[1].__setitem__(
            "inputs", [{"name": "x", "arg": {"as_int": "abc"}, "kind": 1}]
        )
    )
)
kind(PT2, "graph-cycle", "a node consumes its own output")(
    _pt2_model(lambda mj, env: _nodes(mj)[2]["inputs"][0]["arg"]["as_tensor"].__setitem__("name", "relu"))
)
kind(PT2, "graph-dangling-input", "a node consumes an undefined value")(
    _pt2_model(lambda mj, env: _nodes(mj)[2]["inputs"][0]["arg"]["as_tensor"].__setitem__("name", "nowhere"))
)
kind(PT2, "graph-10k-relu", "10,000 extra relu nodes chained")(
    _pt2_model(lambda mj, env: _chain_relus(mj, 10_000))
)


@kind(PT2, "tensor-values-nan", "the first weight is all NaN")
def _(env):
    a = Pt2(env)
    a.m["data/weights/weight_0"] = np.full(len(a.m["data/weights/weight_0"]) // 4, np.nan, "<f4").tobytes()
    return a.out()


def _chain_relus(mj: dict, n: int) -> None:
    nodes = _nodes(mj)
    i = next(k for k, nd in enumerate(nodes) if nd["target"] == "torch.ops.aten.relu.default")
    relu = nodes[i]
    src = relu["inputs"][0]["arg"]["as_tensor"]["name"]
    vals = mj["graph_module"]["graph"]["tensor_values"]
    extra = []
    for k in range(n):
        name = f"fz_relu_{k}"
        extra.append(
            {
                "target": "torch.ops.aten.relu.default",
                "inputs": [{"name": "self", "arg": {"as_tensor": {"name": src}}, "kind": 1}],
                "outputs": [{"as_tensor": {"name": name}}],
                "metadata": {},
                "is_hop_single_tensor_return": None,
                "name": name,
            }
        )
        vals[name] = vals[src]
        src = name
    relu["inputs"][0]["arg"]["as_tensor"]["name"] = src
    nodes[i:i] = extra


@kind(PT2, "unknown-members", "junk members: random data, a second model json, extra/ with bad UTF-8")
def _(env):
    a = Pt2(env)
    a.m["data/junk.bin"] = env.rng.bytes(1000)
    a.m["extra/notes.txt"] = b"\xff\xfe" + CANARY.encode()
    a.m["models/other.json"] = b"{}"
    return a.out()


@kind(PT2, "extra-file-bad-utf8", "extra/x.txt with invalid UTF-8")
def _(env):
    a = Pt2(env)
    a.m["extra/x.txt"] = b"\xff\xfe\xfa" + CANARY.encode()
    return a.out()


@kind(PT2, "member-traversal", "a member named ../../evil")
def _(env):
    a = Pt2(env)
    a.m["../../evil.txt"] = CANARY.encode()
    return a.out()


@kind(PT2, "no-root-folder", "members at the top level (no archive root folder)")
def _(env):
    return Pt2(env).out(root="")


for _n, _src in (("npz", "images.npz"), ("state-dict", "state.pt"), ("result", "result.nnv")):
    kind(PT2, f"content-{_n}", f"{_src} renamed to model.pt2")(
        lambda env, _src=_src: {"model": str(shutil.copy(env.base / _src, env.dir / "model.pt2"))}
    )
kind(PT2, "content-random", "random bytes named model.pt2")(
    lambda env: {"model": str(write(env, "model.pt2", env.rng.bytes(4096)))}
)
kind(PT2, "content-safetensors", "a .safetensors file named model.pt2")(
    lambda env: {"model": str(write(env, "model.pt2", st_bytes(*st_pack(st_tensors(env.rng)))))}
)


def _pt2_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    op = str(rng.choice(["flip", "flip-json", "flip-json", "flip-config", "truncate", "json-field"]))
    env.note(op)
    a = Pt2(env)
    if op == "flip":
        data, where = flip_bits((env.base / "model.pt2").read_bytes(), rng, int(rng.integers(1, 9)))
        env.note(f"flips at {where}")
        return {"model": str(write(env, "model.pt2", data))}
    if op == "truncate":
        data = (env.base / "model.pt2").read_bytes()
        return {"model": str(write(env, "model.pt2", truncate(data, rng)[0]))}
    if op in ("flip-json", "flip-config"):
        k = "models/model.json" if op == "flip-json" else "data/weights/model_weights_config.json"
        a.m[k], where = flip_bits(a.m[k], rng, int(rng.integers(1, 4)))
        env.note(f"flips at {where}")
        return a.out()
    mj = a.model
    paths = []

    def walk(o, path):
        if isinstance(o, dict):
            for k2, v in o.items():
                walk(v, path + [k2])
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, path + [i])
        else:
            paths.append(path)

    walk(mj, [])
    path = paths[int(rng.integers(len(paths)))]
    val = EVIL_JSON[int(rng.integers(len(EVIL_JSON)))]
    o = mj
    for p in path[:-1]:
        o = o[p]
    o[path[-1]] = val
    env.note(f"model.json {'/'.join(map(str, path))} = {str(val)[:40]!r}")
    a.set_json("models/model.json", mj)
    return a.out()


_register("pt2", ("load_subject", "spectra", "orbits", "ibp"), PT2, _pt2_random, weight=1.2)


# =============================================================================== Hugging Face directories
HF: list = []


def _hf_dir(env: Env) -> Path:
    d = env.dir / "hf-model"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _hf_valid_st(env: Env, d: Path, name: str = "model.safetensors") -> Path:
    p = d / name
    p.write_bytes(st_bytes(*st_pack(st_tensors(env.rng))))
    return p


def _hf_config(raw: bytes | Callable[[Env], bytes], with_model: bool = True) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        d = _hf_dir(env)
        (d / "config.json").write_bytes(raw(env) if callable(raw) else raw)
        if with_model:
            _hf_valid_st(env, d)
        return {"model": str(d)}

    return w


kind(HF, "config-deep-list-100k", "config.json is 100,000 nested lists")(_hf_config(_nested(100_000)))
kind(HF, "config-deep-object-100k", "config.json is 100,000 nested objects")(_hf_config(_nested_obj(100_000)))
for _n, _raw in (
    ("list", b"[1, 2]"),
    ("string", b'"gpt2"'),
    ("number", b"3"),
    ("null", b"null"),
    ("empty", b""),
    ("not-json", CANARY.encode() + b" {"),
    ("invalid-utf8", b'{"model_type": "\xff\xfe"}'),
    ("bom", b'\xef\xbb\xbf{"model_type": "gpt2"}'),
    ("utf16", '{"model_type": "gpt2"}'.encode("utf-16")),
    ("model-type-dict", b'{"model_type": {"a": 1}}'),
    ("model-type-list", b'{"model_type": ["gpt2"]}'),
    ("model-type-number", b'{"model_type": 5}'),
    ("model-type-gpt2", b'{"model_type": "gpt2"}'),
    ("nan", b'{"model_type": NaN, "x": Infinity}'),
    ("huge-number", b'{"n": 1' + b"0" * 100_000 + b"}"),
):
    kind(HF, f"config-{_n}", f"config.json = {_raw[:24]!r}")(_hf_config(_raw))


@kind(HF, "config-huge-64mb", "config.json of 64 MB (one long string value)")
def _(env):
    d = _hf_dir(env)
    _stream_huge_json(
        d / "config.json", b'{"model_type": "bert", "blob": "', CANARY.encode() * 4096, HUGE_HEADER, b'"}'
    )
    _hf_valid_st(env, d)
    return {"model": str(d)}


@kind(HF, "config-is-directory", "config.json is a directory")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").mkdir()
    _hf_valid_st(env, d)
    return {"model": str(d)}


@kind(HF, "config-fifo", "config.json is a FIFO with no writer (must not hang)")
def _(env):
    d = _hf_dir(env)
    os.mkfifo(d / "config.json")
    _hf_valid_st(env, d)
    return {"model": str(d)}


@kind(HF, "model-fifo", "model.safetensors is a FIFO with no writer (must not hang)")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").write_text('{"model_type": "bert"}')
    os.mkfifo(d / "model.safetensors")
    return {"model": str(d)}


@kind(HF, "bin-fifo", "pytorch_model.bin is a FIFO with no writer (must not hang)")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").write_text('{"model_type": "bert"}')
    os.mkfifo(d / "pytorch_model.bin")
    return {"model": str(d)}


@kind(HF, "pt2-fifo", "model.pt2 is a FIFO with no writer (must not hang)")
def _(env):
    d = _hf_dir(env)
    os.mkfifo(d / "model.pt2")
    return {"model": str(d)}


def _hf_link(target_fn: Callable[[Env], str], name: str = "model.safetensors") -> Writer:
    def w(env: Env) -> dict[str, Any]:
        d = _hf_dir(env)
        (d / "config.json").write_text('{"model_type": "bert"}')
        os.symlink(target_fn(env), d / name)
        return {"model": str(d)}

    return w


def _outside_st(env: Env) -> str:
    p = env.dir / "outside" / "real.safetensors"
    p.parent.mkdir()
    p.write_bytes(st_bytes(*st_pack(st_tensors(env.rng))))
    return str(p)


kind(HF, "symlink-outside", "model.safetensors is a symlink to a valid file outside the directory")(
    _hf_link(_outside_st)
)
kind(HF, "symlink-dangling", "model.safetensors is a dangling symlink")(
    _hf_link(lambda env: str(env.dir / "nowhere"))
)
kind(HF, "symlink-dev-zero", "model.safetensors -> /dev/zero")(_hf_link(lambda env: "/dev/zero"))
kind(HF, "symlink-dev-urandom", "model.safetensors -> /dev/urandom")(_hf_link(lambda env: "/dev/urandom"))
kind(HF, "symlink-proc-self-mem", "model.safetensors -> /proc/self/mem")(
    _hf_link(lambda env: "/proc/self/mem")
)
kind(HF, "symlink-root-dir", "model.safetensors -> /")(_hf_link(lambda env: "/"))
kind(HF, "symlink-bin-dev-zero", "pytorch_model.bin -> /dev/zero")(
    _hf_link(lambda env: "/dev/zero", "pytorch_model.bin")
)


@kind(HF, "symlink-config-dev-zero", "config.json -> /dev/zero (endless stream)")
def _(env):
    d = _hf_dir(env)
    os.symlink("/dev/zero", d / "config.json")
    _hf_valid_st(env, d)
    return {"model": str(d)}


@kind(HF, "symlink-loop", "model.safetensors is part of a symlink loop")
def _(env):
    d = _hf_dir(env)
    os.symlink(d / "b.safetensors", d / "model.safetensors")
    os.symlink(d / "model.safetensors", d / "b.safetensors")
    return {"model": str(d)}


@kind(HF, "symlink-dir-loop", "the model directory contains a symlink to itself")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d)
    os.symlink(d, d / "self")
    return {"model": str(d)}


@kind(HF, "model-is-directory", "model.safetensors is a directory")
def _(env):
    d = _hf_dir(env)
    (d / "model.safetensors").mkdir()
    return {"model": str(d)}


@kind(HF, "no-model", "an empty directory")
def _(env):
    return {"model": str(_hf_dir(env))}


@kind(HF, "only-config", "config.json and nothing else")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").write_text('{"model_type": "bert"}')
    return {"model": str(d)}


@kind(HF, "only-junk", "random files with other suffixes")
def _(env):
    d = _hf_dir(env)
    for n in ("README.md", "tokenizer.json", "weights.h5", "model.onnx"):
        (d / n).write_bytes(env.rng.bytes(100))
    return {"model": str(d)}


@kind(HF, "shard-truncated", "two shards, the second truncated")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "model-00001-of-00002.safetensors")
    p = _hf_valid_st(env, d, "model-00002-of-00002.safetensors")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return {"model": str(d)}


@kind(HF, "shard-header-lie", "two shards, the second with a lying header length")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "model-00001-of-00002.safetensors")
    h, data = st_pack(st_tensors(env.rng))
    (d / "model-00002-of-00002.safetensors").write_bytes(st_bytes(h, data, length=2**40))
    return {"model": str(d)}


@kind(HF, "shard-empty", "a 0-byte shard next to a valid one")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "model-00001-of-00002.safetensors")
    (d / "model-00002-of-00002.safetensors").write_bytes(b"")
    return {"model": str(d)}


@kind(HF, "shards-duplicate-names", "two shards holding tensors of the same names but other shapes")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "a.safetensors")
    _hf_valid_st(env, d, "b.safetensors")
    return {"model": str(d)}


@kind(HF, "index-json-lies", "model.safetensors.index.json naming missing shards (and a path outside)")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "model-00001-of-00002.safetensors")
    idx = {
        "metadata": {"total_size": 10**15},
        "weight_map": {"a": "../../etc/passwd", "b": "missing.safetensors"},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    return {"model": str(d)}


@kind(HF, "many-shards-500", "500 tiny shards")
def _(env):
    d = _hf_dir(env)
    for i in range(500):
        t = [(f"l{i}.weight", "F32", (4, 4), to_st_bytes(env.rng.standard_normal((4, 4)), "F32"))]
        (d / f"model-{i:05d}-of-00500.safetensors").write_bytes(st_bytes(*st_pack(t)))
    return {"model": str(d)}


@kind(HF, "bin-evil-pickle", "pytorch_model.bin whose data.pkl calls os.system")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").write_text('{"model_type": "bert"}')
    write_zip(
        d / "pytorch_model.bin", sd_members(small_sd(env.rng), pkl=pk_call("os", "system", env.touch_cmd()))
    )
    return {"model": str(d)}


@kind(HF, "bin-legacy-evil", "pytorch_model.bin is a legacy pickle calling os.system")
def _(env):
    d = _hf_dir(env)
    (d / "pytorch_model.bin").write_bytes(pk_call("os", "system", env.touch_cmd()))
    return {"model": str(d)}


@kind(HF, "pt2-expr-evil", "a directory holding a .pt2 whose expr_str touches MARKER")
def _(env):
    kw = _pt2_model(lambda mj, env: _set_expr(mj, env.py_payload()))(env)
    d = _hf_dir(env)
    shutil.move(kw["model"], d / "model.pt2")
    return {"model": str(d)}


@kind(HF, "gpt2-wrong-rank", "gpt2 config with c_attn weights of rank 1 and 3")
def _(env):
    d = _hf_dir(env)
    (d / "config.json").write_text('{"model_type": "gpt2"}')
    t = [
        ("h.0.attn.c_attn.weight", "F32", (24,), to_st_bytes(env.rng.standard_normal(24), "F32")),
        ("h.0.mlp.c_fc.weight", "F32", (4, 8, 6), to_st_bytes(env.rng.standard_normal((4, 8, 6)), "F32")),
        ("h.0.mlp.c_proj.weight", "F32", (1, 96), to_st_bytes(env.rng.standard_normal((1, 96)), "F32")),
    ]
    (d / "model.safetensors").write_bytes(st_bytes(*st_pack(t)))
    return {"model": str(d)}


@kind(HF, "nested-directory", "the model sits one directory deeper than expected")
def _(env):
    d = _hf_dir(env)
    (d / "sub").mkdir()
    _hf_valid_st(env, d / "sub")
    return {"model": str(d)}


@kind(HF, "weird-file-names", "shards named with newlines and a leading dash")
def _(env):
    d = _hf_dir(env)
    _hf_valid_st(env, d, "-rf\nx.safetensors")
    _hf_valid_st(env, d, " .safetensors")
    return {"model": str(d)}


def _hf_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    d = _hf_dir(env)
    op = str(rng.choice(["config-flip", "shard-flip", "shard-truncate", "both"]))
    env.note(op)
    cfg = json.dumps({"model_type": str(rng.choice(["gpt2", "bert", "llama"])), "hidden_size": 32}).encode()
    p = _hf_valid_st(env, d, "model-00001-of-00002.safetensors")
    q = _hf_valid_st(env, d, "model-00002-of-00002.safetensors")
    if op in ("config-flip", "both"):
        cfg = flip_bits(cfg, rng, int(rng.integers(1, 6)))[0]
    (d / "config.json").write_bytes(cfg)
    if op in ("shard-flip", "both"):
        q.write_bytes(flip_bits(q.read_bytes(), rng, int(rng.integers(1, 9)))[0])
    if op == "shard-truncate":
        p.write_bytes(truncate(p.read_bytes(), rng)[0])
    return {"model": str(d)}


_register("hf_dir", ("load_subject", "spectra"), HF, _hf_random, weight=0.8)


# =============================================================================== .npz data
NPZ: list = []
_FLAT_TARGETS = ("lipschitz", "connectivity")


def _xy(env: Env, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Valid digits for the case's target: (N, 64) for the MLP targets, (N, 1, 8, 8) otherwise."""
    name = "flat.npz" if env.target in _FLAT_TARGETS else "images.npz"
    with np.load(env.base / name) as z:
        x, y = z["x"], z["y"]
    return (x, y) if n is None else (x[:n], y[:n])


def _npz_out(
    env: Env, arrays: dict[str, np.ndarray | bytes | Member], method: int = 0, name: str = "data.npz"
) -> dict[str, Any]:
    members = []
    for k, v in arrays.items():
        if isinstance(v, Member):
            v.name = v.name or f"{k}.npy"
            members.append(v)
        else:
            members.append(
                Member(
                    f"{k}.npy" if not k.endswith(".npy") else k,
                    v if isinstance(v, bytes) else npy_bytes(v),
                    method,
                )
            )
    return {"data": str(write_zip(env.dir / name, members, align=0))}


def _npz_xy(fn: Callable[[np.ndarray, np.ndarray, Env], tuple[Any, Any]]) -> Writer:
    """Replace x, y by ``fn(x, y, env)`` (None drops the array)."""

    def w(env: Env) -> dict[str, Any]:
        x, y = _xy(env)
        x2, y2 = fn(x, y, env)
        arrays = {}
        if x2 is not None:
            arrays["x"] = x2
        if y2 is not None:
            arrays["y"] = y2
        return _npz_out(env, arrays)

    return w


kind(NPZ, "missing-x", "no array 'x'")(_npz_xy(lambda x, y, env: (None, y)))
kind(NPZ, "missing-y", "no array 'y'")(_npz_xy(lambda x, y, env: (x, None)))
kind(NPZ, "missing-both", "only arrays named 'a' and 'b'")(
    lambda env: _npz_out(env, {"a": _xy(env)[0], "b": _xy(env)[1]})
)
kind(NPZ, "empty-archive", "a zip with no members")(lambda env: _npz_out(env, {}))
for _n, _fn in (
    ("x-int", lambda x, y, env: ((x * 16).astype(np.int64), y)),
    ("x-bool", lambda x, y, env: (x > 0.5, y)),
    ("x-complex", lambda x, y, env: (x.astype(np.complex64), y)),
    ("x-str", lambda x, y, env: (x.astype(str), y)),
    ("x-bytes", lambda x, y, env: (x.astype("S8"), y)),
    ("x-datetime", lambda x, y, env: (x.astype(np.int64).astype("datetime64[s]"), y)),
    ("x-float16", lambda x, y, env: (x.astype(np.float16), y)),
    ("x-float64", lambda x, y, env: (x.astype(np.float64), y)),
    ("x-longdouble", lambda x, y, env: (x.astype(np.longdouble), y)),
    ("x-structured", lambda x, y, env: (np.zeros(len(x), dtype=[("a", "<f4"), ("b", "<i4")]), y)),
    ("x-big-endian", lambda x, y, env: (x.astype(">f4"), y)),
    ("x-fortran", lambda x, y, env: (np.asfortranarray(x), y)),
    ("y-float", lambda x, y, env: (x, y.astype(np.float32))),
    ("y-float-fraction", lambda x, y, env: (x, y + 0.5)),
    ("y-bool", lambda x, y, env: (x, y > 4)),
    ("y-complex", lambda x, y, env: (x, y.astype(np.complex64))),
    ("y-str", lambda x, y, env: (x, y.astype(str))),
    ("y-uint64-huge", lambda x, y, env: (x, np.full(len(y), 2**64 - 1, np.uint64))),
    ("y-int8", lambda x, y, env: (x, y.astype(np.int8))),
    ("y-uint8", lambda x, y, env: (x, y.astype(np.uint8))),
    ("x-ndim-1", lambda x, y, env: (x.reshape(-1), y)),
    ("x-ndim-3", lambda x, y, env: (x.reshape(len(x), 8, -1), y)),
    ("x-ndim-5", lambda x, y, env: (x.reshape(len(x), 1, 1, 8, -1), y)),
    ("x-ndim-0", lambda x, y, env: (np.float32(1.0), y)),
    ("y-ndim-2", lambda x, y, env: (x, y.reshape(-1, 1))),
    ("y-ndim-0", lambda x, y, env: (x, np.int64(3))),
    ("y-one-hot", lambda x, y, env: (x, np.eye(10, dtype=np.int64)[y])),
    ("x-nan", lambda x, y, env: (np.where(env.rng.random(x.shape) < 0.01, np.nan, x).astype(np.float32), y)),
    ("x-all-nan", lambda x, y, env: (np.full_like(x, np.nan), y)),
    ("x-inf", lambda x, y, env: (np.where(env.rng.random(x.shape) < 0.01, np.inf, x).astype(np.float32), y)),
    ("x-f64-beyond-f32", lambda x, y, env: (x.astype(np.float64) * 1e300, y)),
    ("x-out-of-range", lambda x, y, env: (x * 5 - 2, y)),
    ("x-huge-values", lambda x, y, env: (x * 3e38, y)),
    ("x-denormal", lambda x, y, env: (np.full_like(x, 1e-42), y)),
    ("x-constant", lambda x, y, env: (np.zeros_like(x), y)),
    ("labels-negative", lambda x, y, env: (x, y - 5)),
    ("labels-huge", lambda x, y, env: (x, y + 2**40)),
    ("labels-int64-max", lambda x, y, env: (x, np.full(len(y), 2**63 - 1, np.int64))),
    ("labels-int64-min", lambda x, y, env: (x, np.full(len(y), -(2**63), np.int64))),
    ("labels-beyond-classes", lambda x, y, env: (x, y + 10)),
    ("labels-just-beyond", lambda x, y, env: (x, np.where(np.arange(len(y)) == 0, 10, y))),
    ("labels-all-same", lambda x, y, env: (x, np.zeros_like(y))),
    ("labels-2pow31", lambda x, y, env: (x, np.full(len(y), 2**31 - 1, np.int64))),
    ("xy-length-mismatch", lambda x, y, env: (x, y[:-3])),
    ("xy-y-longer", lambda x, y, env: (x[:5], y)),
    ("empty", lambda x, y, env: (x[:0], y[:0])),
    ("zero-width", lambda x, y, env: (x.reshape(len(x), -1)[:, :0], y)),
    ("single-sample", lambda x, y, env: (x[:1], y[:1])),
    ("two-samples", lambda x, y, env: (x[:2], y[:2])),
    ("image-1x1", lambda x, y, env: (x.reshape(len(x), 64, 1, 1), y)),
    ("image-wrong-channels", lambda x, y, env: (np.repeat(x.reshape(len(x), 1, 8, 8), 3, 1), y)),
    ("image-large-64", lambda x, y, env: (np.zeros((len(x), 1, 64, 64), np.float32), y)),
    ("image-2x2", lambda x, y, env: (x.reshape(len(x), 16, 2, 2), y)),
    ("image-1x64", lambda x, y, env: (x.reshape(len(x), 1, 1, 64), y)),
    ("flat-wrong-width", lambda x, y, env: (x.reshape(len(x), -1)[:, :63], y)),
    ("many-samples-20k", lambda x, y, env: (np.tile(x, (625,) + (1,) * (x.ndim - 1)), np.tile(y, 625))),
):
    kind(NPZ, _n, f"x/y variant: {_n}")(_npz_xy(_fn))


@kind(NPZ, "object-array-x", "x is an object array (pickle) whose pickle calls os.system")
def _(env):
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    return _npz_out(env, {"x": npy_raw(hdr, pk_call("os", "system", env.touch_cmd())), "y": _xy(env)[1]})


@kind(NPZ, "object-array-y", "y is an object array of Python ints (needs pickle)")
def _(env):
    x, y = _xy(env)
    return _npz_out(env, {"x": x, "y": np.array([int(v) for v in y], dtype=object)})


@kind(NPZ, "object-array-both-evil", "x and y object arrays whose pickles call os.system")
def _(env):
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    evil = npy_raw(hdr, pk_call("os", "system", env.touch_cmd()))
    return _npz_out(env, {"x": evil, "y": evil})


def _npz_header(
    hdr_fn: Callable[[np.ndarray], str],
    data_fn: Callable[[np.ndarray], bytes] | None = None,
    which: str = "x",
    version: tuple[int, int] = (1, 0),
    magic: bytes = b"\x93NUMPY",
) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        x, y = _xy(env)
        arr = x if which == "x" else y
        raw = npy_raw(hdr_fn(arr), arr.tobytes() if data_fn is None else data_fn(arr), version, magic)
        arrays = {"x": x, "y": y}
        arrays[which] = raw
        return _npz_out(env, arrays)

    return w


def _hdr(descr: str, shape: Any, fortran: Any = False) -> Callable[[np.ndarray], str]:
    return lambda a: f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape}, }}"


kind(NPZ, "npy-shape-1e18", "x.npy header declares 10**18 elements (16 bytes stored)")(
    _npz_header(_hdr("<f4", "(1000000000000000000,)"), lambda a: CANARY.encode()[:16])
)
kind(NPZ, "npy-shape-1e18-4d", "x.npy header declares (10**18, 1, 8, 8)")(
    _npz_header(_hdr("<f4", "(1000000000000000000, 1, 8, 8)"), lambda a: b"\0" * 256)
)
kind(NPZ, "npy-shape-2gb", "x.npy header declares a 2 GB array (little data stored)")(
    _npz_header(_hdr("<f4", "(8000000, 64)"), lambda a: b"\0" * 256)
)
kind(NPZ, "npy-shape-overflow", "x.npy shape whose product overflows int64")(
    _npz_header(_hdr("<f4", "(4294967296, 4294967296)"), lambda a: b"\0" * 256)
)
kind(NPZ, "npy-shape-negative", "x.npy shape with negative dims")(_npz_header(_hdr("<f4", "(-32, 64)")))
kind(NPZ, "npy-shape-float", "x.npy shape with float dims")(_npz_header(_hdr("<f4", "(32.5, 64)")))
kind(NPZ, "npy-shape-string", "x.npy shape is a string")(_npz_header(_hdr("<f4", "'abc'")))
kind(NPZ, "npy-shape-mismatch", "x.npy shape larger than the data")(
    lambda env: _npz_header(_hdr("<f4", f"({len(_xy(env)[0]) * 2}, 1, 8, 8)"))(env)
)
kind(NPZ, "npy-descr-f128", "x.npy descr '<f16' (quad)")(_npz_header(_hdr("<f16", "(32, 1, 8, 8)")))
kind(NPZ, "npy-descr-void", "x.npy descr 'V256'")(_npz_header(_hdr("|V256", "(32,)")))
kind(NPZ, "npy-descr-garbage", "x.npy descr 'zz9'")(_npz_header(_hdr("zz9", "(32, 1, 8, 8)")))
kind(NPZ, "npy-descr-huge-itemsize", "x.npy descr 'V2147483647'")(_npz_header(_hdr("|V2147483647", "(4,)")))
kind(NPZ, "npy-fortran-weird", "x.npy fortran_order is a string")(
    _npz_header(_hdr("<f4", "(32, 1, 8, 8)", "yes"))
)
kind(NPZ, "npy-header-not-dict", "x.npy header is a list")(_npz_header(lambda a: "[1, 2, 3]"))
kind(NPZ, "npy-header-python-call", "x.npy header is a Python call expression")(
    _npz_header(lambda a: "__import__('os').system('true')")
)
kind(NPZ, "npy-header-deep", "x.npy header is 10,000 nested tuples")(
    _npz_header(lambda a: "(" * 10_000 + ")" * 10_000)
)
kind(NPZ, "npy-header-garbage", "x.npy header is random text")(_npz_header(lambda a: CANARY + " }{ ::"))
kind(NPZ, "npy-version-99", "x.npy format version 99.0")(
    _npz_header(_hdr("<f4", "(32, 1, 8, 8)"), version=(99, 0))
)
kind(NPZ, "npy-version-2", "x.npy format version 2.0 (valid)")(
    lambda env: _npz_header(_hdr("<f4", str(_xy(env)[0].shape)), version=(2, 0))(env)
)
kind(NPZ, "npy-bad-magic", "x.npy with a wrong magic string")(
    _npz_header(_hdr("<f4", "(32, 1, 8, 8)"), magic=b"\x93NUMPZ")
)


@kind(NPZ, "npy-header-len-huge", "x.npy header length field 65535 with a short file")
def _(env):
    x, y = _xy(env)
    return _npz_out(env, {"x": b"\x93NUMPY\x01\x00\xff\xff{'descr'", "y": y})


@kind(NPZ, "npy-header-len-v2-huge", "x.npy v2 header length field 2**32-1")
def _(env):
    x, y = _xy(env)
    return _npz_out(env, {"x": b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'", "y": y})


@kind(NPZ, "zip-bomb-x", "x.npy deflated: a valid header declaring a 3 GiB float32 array of zeros")
def _(env):
    meta = json.loads((env.base / "bombs.json").read_text())["npy"]
    m = Member(
        "x.npy",
        method=8,
        raw=True,
        raw_file=env.base / "bomb_npy.deflate",
        size=meta["size"],
        crc=meta["crc"],
    )
    return _npz_out(env, {"x": m, "y": _xy(env)[1]})


@kind(NPZ, "zip-bomb-y", "y.npy deflated: 3 GiB of zeros")
def _(env):
    return _npz_out(env, {"x": _xy(env)[0], "y": _bomb_member(env, "y.npy")})


@kind(NPZ, "zip-bomb-extra", "an unused member deflated to 3 GiB next to valid x, y")
def _(env):
    x, y = _xy(env)
    return _npz_out(env, {"x": x, "y": y, "junk": _bomb_member(env, "junk.npy")})


@kind(NPZ, "zip-size-lie", "x.npy member declares a size 1000x its real one")
def _(env):
    x, y = _xy(env)
    m = Member("x.npy", npy_bytes(x))
    m.size = m.csize = len(m.data) * 1000
    return _npz_out(env, {"x": m, "y": y})


@kind(NPZ, "zip-crc-wrong", "x.npy member with a wrong CRC")
def _(env):
    x, y = _xy(env)
    return _npz_out(env, {"x": Member("x.npy", npy_bytes(x), crc=1), "y": y})


@kind(NPZ, "zip-deflated", "valid x, y deflated")
def _(env):
    return _npz_out(env, dict(zip("xy", _xy(env))), method=8)


@kind(NPZ, "duplicate-members", "x.npy twice (second one evil object array)")
def _(env):
    x, y = _xy(env)
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    ms = [
        Member("x.npy", npy_bytes(x)),
        Member("y.npy", npy_bytes(y)),
        Member("x.npy", npy_raw(hdr, pk_call("os", "system", env.touch_cmd()))),
    ]
    return {"data": str(write_zip(env.dir / "data.npz", ms, align=0))}


@kind(NPZ, "member-names-weird", "members named 'x' (no .npy) and '../y.npy'")
def _(env):
    x, y = _xy(env)
    ms = [Member("x", npy_bytes(x)), Member("../y.npy", npy_bytes(y))]
    return {"data": str(write_zip(env.dir / "data.npz", ms, align=0))}


@kind(NPZ, "truncated", "a valid .npz cut short")
def _(env):
    kw = _npz_out(env, dict(zip("xy", _xy(env))))
    p = Path(kw["data"])
    data, cut = truncate(p.read_bytes(), env.rng, 1)
    p.write_bytes(data)
    env.note(f"cut at {cut}")
    return kw


@kind(NPZ, "bitflip", "a valid .npz with 1-8 bit flips")
def _(env):
    kw = _npz_out(env, dict(zip("xy", _xy(env))))
    p = Path(kw["data"])
    data, where = flip_bits(p.read_bytes(), env.rng, int(env.rng.integers(1, 9)))
    p.write_bytes(data)
    env.note(f"flips at {where}")
    return kw


@kind(NPZ, "single-npy", "a single .npy file named data.npz")
def _(env):
    return {"data": str(write(env, "data.npz", npy_bytes(_xy(env)[0])))}


@kind(NPZ, "not-a-zip", "random bytes named data.npz")
def _(env):
    return {"data": str(write(env, "data.npz", CANARY.encode() + env.rng.bytes(2000)))}


@kind(NPZ, "empty-file", "a 0-byte data.npz")
def _(env):
    return {"data": str(write(env, "data.npz", b""))}


@kind(NPZ, "directory", "data.npz is a directory")
def _(env):
    (env.dir / "data.npz").mkdir()
    return {"data": str(env.dir / "data.npz")}


@kind(NPZ, "fifo", "data.npz is a FIFO with no writer (must not hang)")
def _(env):
    os.mkfifo(env.dir / "data.npz")
    return {"data": str(env.dir / "data.npz")}


@kind(NPZ, "symlink-dev-zero", "data.npz -> /dev/zero")
def _(env):
    os.symlink("/dev/zero", env.dir / "data.npz")
    return {"data": str(env.dir / "data.npz")}


@kind(NPZ, "missing-file", "data.npz does not exist")
def _(env):
    return {"data": str(env.dir / "data.npz")}


@kind(NPZ, "uppercase-suffix", "a valid file named DATA.NPZ")
def _(env):
    return _npz_out(env, dict(zip("xy", _xy(env))), name="DATA.NPZ")


@kind(NPZ, "state-dict-as-npz", "a torch state dict named data.npz")
def _(env):
    return {"data": str(shutil.copy(env.base / "state.pt", env.dir / "data.npz"))}


def _npz_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    op = str(rng.choice(["flip", "flip", "truncate", "header", "values", "labels"]))
    env.note(op)
    x, y = _xy(env)
    if op == "values":
        x = x.copy()
        flat = x.reshape(-1)
        idx = rng.integers(0, flat.size, int(rng.integers(1, 50)))
        flat[idx] = rng.choice(
            np.array([np.nan, np.inf, -np.inf, 3e38, -1.0, 2.0, 1e-42], np.float32), len(idx)
        )
        return _npz_out(env, {"x": x, "y": y})
    if op == "labels":
        y = y.copy()
        idx = rng.integers(0, len(y), int(rng.integers(1, 5)))
        y[idx] = rng.choice(np.array([-1, 10, 11, 255, 2**31, 2**62, -(2**62)], np.int64), len(idx))
        return _npz_out(env, {"x": x, "y": y})
    if op == "header":
        raw = bytearray(npy_bytes(x))
        end = raw.index(b"\n")
        raw[10:end] = flip_bits(bytes(raw[10:end]), rng, int(rng.integers(1, 4)))[0]
        return _npz_out(env, {"x": bytes(raw), "y": y})
    kw = _npz_out(env, {"x": x, "y": y}, method=int(rng.choice([0, 8])))
    p = Path(kw["data"])
    if op == "flip":
        data, where = flip_bits(p.read_bytes(), rng, int(rng.integers(1, 12)))
        env.note(f"flips at {where}")
    else:
        data, where = truncate(p.read_bytes(), rng)
        env.note(f"cut at {where}")
    p.write_bytes(data)
    return kw


_register("npz", ("orbits", "ibp", "lipschitz", "connectivity"), NPZ, _npz_random, weight=1.4)


# =============================================================================== in-memory data ("more")
ARR: list = []


def _arr(fn: Callable[[np.ndarray, np.ndarray, Env], Any]) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        x, y = _xy(env)
        return {"data": fn(x, y, env)}

    return w


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


for _n, _fn in (
    ("object-x", lambda x, y, env: (x.astype(object), y)),
    ("object-y", lambda x, y, env: (x, y.astype(object))),
    (
        "object-y-mixed",
        lambda x, y, env: (x, np.array([1, "a", None] * (len(y) // 3) + [0] * (len(y) % 3), dtype=object)),
    ),
    ("complex-x", lambda x, y, env: (x.astype(np.complex128), y)),
    ("bool-y", lambda x, y, env: (x, y > 3)),
    ("uint64-y-huge", lambda x, y, env: (x, np.full(len(y), 2**64 - 1, np.uint64))),
    ("zero-d", lambda x, y, env: (np.float32(1), np.int64(1))),
    ("lists", lambda x, y, env: (x.tolist(), y.tolist())),
    ("three-tuple", lambda x, y, env: (x, y, y)),
    ("one-tuple", lambda x, y, env: (x,)),
    ("list-pair", lambda x, y, env: [x, y]),
    ("none-y", lambda x, y, env: (x, None)),
    ("string-data", lambda x, y, env: "digits64"),
    ("string-nul", lambda x, y, env: "digits\x00"),
    ("string-empty", lambda x, y, env: ""),
    ("bytes-data", lambda x, y, env: b"digits"),
    ("number-data", lambda x, y, env: 5),
    ("none-data", lambda x, y, env: None),
    ("dict-no-train", lambda x, y, env: {"test": (x, y)}),
    ("dict-bad-values", lambda x, y, env: {"train": 5, "test": None}),
    ("dict-nested", lambda x, y, env: {"train": {"train": (x, y)}}),
    ("torch-requires-grad", lambda x, y, env: (_t(x).requires_grad_(), _t(y))),
    ("torch-bf16", lambda x, y, env: (_t(x).bfloat16(), _t(y))),
    ("torch-f16", lambda x, y, env: (_t(x).half(), _t(y))),
    ("torch-int-x", lambda x, y, env: ((_t(x) * 16).long(), _t(y))),
    ("torch-float-y", lambda x, y, env: (_t(x), _t(y).float())),
    ("torch-bool-y", lambda x, y, env: (_t(x), _t(y) > 3)),
    ("torch-uint8-y", lambda x, y, env: (_t(x), _t(y).to(__import__("torch").uint8))),
    ("torch-sparse-x", lambda x, y, env: (_t(x.reshape(len(x), -1)).to_sparse(), _t(y))),
    ("torch-meta-x", lambda x, y, env: (_t(x).to("meta"), _t(y))),
    ("torch-meta-y", lambda x, y, env: (_t(x), _t(y).to("meta"))),
    ("torch-nan-x", lambda x, y, env: (_t(np.full_like(x, np.nan)), _t(y))),
    ("torch-noncontiguous", lambda x, y, env: (_t(x).transpose(0, -1).contiguous().transpose(0, -1), _t(y))),
    ("numpy-negative-strides", lambda x, y, env: (x[::-1], y[::-1])),
    ("numpy-matrix", lambda x, y, env: (np.asmatrix(x.reshape(len(x), -1)), y)),
    ("numpy-masked", lambda x, y, env: (np.ma.masked_array(x, mask=x > 0.5), y)),
    ("numpy-readonly", lambda x, y, env: (np.broadcast_to(x[:1], x.shape), y)),
    ("mixed-torch-numpy", lambda x, y, env: (_t(x), y)),
    ("labels-beyond", lambda x, y, env: (x, y + 10)),
    ("labels-negative", lambda x, y, env: (x, y - 20)),
    ("empty", lambda x, y, env: (x[:0], y[:0])),
):
    kind(ARR, _n, f"in-memory data: {_n}")(_arr(_fn))


def _torch_ds(items: Callable[[np.ndarray, np.ndarray, int], Any], n: int | None = None) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        import torch

        x, y = _xy(env)

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(x) if n is None else n

            def __getitem__(self, i):
                return items(x, y, i)

        return {"data": DS()}

    return w


kind(ARR, "torch-ds-none-items", "a torch Dataset yielding None")(_torch_ds(lambda x, y, i: None))
kind(ARR, "torch-ds-triples", "a torch Dataset yielding (x, y, z)")(
    _torch_ds(lambda x, y, i: (x[i], y[i], 0))
)
kind(ARR, "torch-ds-string-labels", "a torch Dataset with string labels")(
    _torch_ds(lambda x, y, i: (x[i], str(y[i])))
)
kind(ARR, "torch-ds-ragged", "a torch Dataset with ragged x shapes")(
    _torch_ds(lambda x, y, i: (x[i].reshape(-1)[: 32 + i], y[i]))
)
kind(ARR, "torch-ds-empty", "a torch Dataset of length 0")(_torch_ds(lambda x, y, i: (x[i], y[i]), n=0))
kind(ARR, "torch-ds-vector-labels", "a torch Dataset whose labels are vectors")(
    _torch_ds(lambda x, y, i: (x[i], np.array([y[i], y[i]])))
)


@kind(ARR, "torch-iterable-ds", "a torch IterableDataset (no length)")
def _(env):
    import torch

    x, y = _xy(env)

    class It(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    return {"data": It()}


def _arr_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    x, y = _xy(env)
    x = x.astype(str(rng.choice(["float32", "float64", "float16", "int32", "uint8", "bool"])))
    y = y.astype(str(rng.choice(["int64", "int32", "uint8", "int8", "float32", "uint64"])))
    if rng.random() < 0.5:
        shapes = [(64,), (1, 8, 8), (4, 4, 4), (64, 1, 1), (2, 32)]
        x = x.reshape(len(x), *shapes[int(rng.integers(len(shapes)))])
    if rng.random() < 0.3:
        y = y[: int(rng.integers(0, len(y) + 1))]
    env.note(f"x {x.dtype} {x.shape}, y {y.dtype} {y.shape}")
    return {"data": (x, y)}


_register("arrays", ("orbits", "ibp", "lipschitz", "connectivity"), ARR, _arr_random, weight=0.7)


# =============================================================================== in-memory modules ("more")
MOD: list = []


def _mod(fn: Callable[[Any, np.random.Generator], Any]) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        import torch

        torch.manual_seed(int(env.rng.integers(1 << 30)))
        return {"model": fn(torch, env.rng)}

    return w


def _mlp_with(value_fn: Callable[[Any, Any], None], dtype: str = "float32") -> Writer:
    def build(torch, rng):
        m = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
        m = m.to(getattr(torch, dtype))
        with torch.no_grad():
            value_fn(torch, m[0].weight)
        return m

    return _mod(build)


for _n, _v in (
    ("nan", float("nan")),
    ("inf", float("inf")),
    ("neg-inf", float("-inf")),
    ("max", 3e38),
    ("denormal", 1e-42),
    ("zeros", 0.0),
    ("constant", 0.25),
    ("tiny", 1e-30),
):
    kind(MOD, f"weights-{_n}", f"nn.Linear weights all {_v}")(_mlp_with(lambda t, w, _v=_v: w.fill_(_v)))
    kind(MOD, f"weights-some-{_n}", f"nn.Linear weights 5% {_v}")(
        _mlp_with(lambda t, w, _v=_v: w.masked_fill_(t.rand_like(w) < 0.05, _v))
    )
kind(MOD, "weights-one-nan", "nn.Linear weights with one NaN")(
    _mlp_with(lambda t, w: w.view(-1)[7:8].fill_(float("nan")))
)
kind(MOD, "weights-rank-one", "a rank-one weight matrix")(
    _mlp_with(lambda t, w: w.copy_(t.outer(t.randn(w.shape[0]), t.randn(w.shape[1]))))
)
kind(MOD, "weights-identity-like", "a weight with all singular values equal")(
    _mlp_with(lambda t, w: w.copy_(t.eye(w.shape[0], w.shape[1])))
)
kind(MOD, "weights-huge-range", "weights spanning 1e-30..1e30")(
    _mlp_with(lambda t, w: w.copy_(10.0 ** (t.rand_like(w) * 60 - 30)))
)
for _dt in ("float16", "bfloat16", "float64"):
    kind(MOD, f"dtype-{_dt}", f"a {_dt} module")(_mlp_with(lambda t, w: None, _dt))
    kind(MOD, f"dtype-{_dt}-inf", f"a {_dt} module with inf weights")(
        _mlp_with(lambda t, w: w.fill_(float("inf")), _dt)
    )

for _n, _fn in (
    ("linear-0-in", lambda t, r: t.nn.Linear(0, 5)),
    ("linear-0-out", lambda t, r: t.nn.Linear(5, 0)),
    ("linear-1x1", lambda t, r: t.nn.Linear(1, 1)),
    ("linear-wide", lambda t, r: t.nn.Linear(8192, 1)),
    ("linear-tall", lambda t, r: t.nn.Linear(1, 8192)),
    ("linear-2x2", lambda t, r: t.nn.Linear(2, 2)),
    ("conv1x1", lambda t, r: t.nn.Conv2d(1, 1, 1)),
    ("conv-0-channels", lambda t, r: t.nn.Conv2d(0, 4, 3)),
    ("conv3d", lambda t, r: t.nn.Conv3d(4, 8, 3)),
    ("conv1d", lambda t, r: t.nn.Conv1d(4, 8, 3)),
    ("conv-huge-kernel", lambda t, r: t.nn.Conv2d(2, 2, 64)),
    ("embedding-wide", lambda t, r: t.nn.Embedding(30000, 2)),
    ("embedding-0", lambda t, r: t.nn.Embedding(0, 8)),
    ("multihead", lambda t, r: t.nn.MultiheadAttention(16, 2)),
    ("lstm", lambda t, r: t.nn.LSTM(8, 16)),
    ("transformer", lambda t, r: t.nn.TransformerEncoderLayer(16, 2, 32)),
    ("batchnorm-only", lambda t, r: t.nn.BatchNorm2d(8)),
    ("empty-sequential", lambda t, r: t.nn.Sequential()),
    ("identity", lambda t, r: t.nn.Identity()),
    ("lazy-linear", lambda t, r: t.nn.LazyLinear(8)),
    ("meta-device", lambda t, r: t.nn.Linear(16, 8, device="meta")),
    ("complex-param", lambda t, r: _param_module(t, t.randn(16, 8, dtype=t.complex64))),
    ("int-buffer", lambda t, r: _buffer_module(t, t.randint(0, 9, (16, 8)))),
    ("bool-buffer", lambda t, r: _buffer_module(t, t.rand(16, 8) > 0.5)),
    ("sparse-param", lambda t, r: _param_module(t, t.randn(16, 8).to_sparse())),
    ("noncontiguous-param", lambda t, r: _param_module(t, t.randn(8, 16).t())),
    ("expanded-param", lambda t, r: _param_module(t, t.randn(1, 16).expand(4096, 16))),
    ("five-d-param", lambda t, r: _param_module(t, t.randn(2, 3, 2, 3, 2))),
    ("scalar-param", lambda t, r: _param_module(t, t.tensor(1.0))),
    ("tied-weights", lambda t, r: _tied(t)),
    ("many-layers-5k", lambda t, r: t.nn.Sequential(*[t.nn.Linear(2, 2) for _ in range(5000)])),
    ("gpt2-conv1d-named", lambda t, r: _hf_conv1d(t)),
    (
        "quantized-dynamic",
        lambda t, r: t.ao.quantization.quantize_dynamic(
            t.nn.Sequential(t.nn.Linear(16, 8)), {t.nn.Linear}, dtype=t.qint8
        ),
    ),
):
    kind(MOD, _n, f"in-memory module: {_n}")(_mod(_fn))


def _param_module(torch, value):
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(value, requires_grad=False)
    return m


def _buffer_module(torch, value):
    m = torch.nn.Module()
    m.register_buffer("weight", value)
    return m


def _tied(torch):
    a = torch.nn.Linear(16, 16)
    b = torch.nn.Linear(16, 16)
    b.weight = a.weight
    return torch.nn.Sequential(a, b)


def _hf_conv1d(torch):
    class Conv1D(torch.nn.Module):  # the Hugging Face GPT-2 layer's name, with a wrong-rank weight
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 8, 2))

    m = torch.nn.Module()
    m.c_attn = Conv1D()
    return m


def _mod_random(env: Env) -> dict[str, Any]:
    import torch

    rng = env.rng
    torch.manual_seed(int(rng.integers(1 << 30)))
    dims = [int(v) for v in rng.integers(1, 64, size=int(rng.integers(2, 5)))]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    m = torch.nn.Sequential(*layers).to(
        getattr(torch, str(rng.choice(["float32", "float64", "float16", "bfloat16"])))
    )
    with torch.no_grad():
        for p in m.parameters():
            if rng.random() < 0.5:
                mask = torch.from_numpy(rng.random(tuple(p.shape)) < float(rng.choice([0.001, 0.05, 1.0])))
                value = float(rng.choice([np.nan, np.inf, -np.inf, 3e38, 0.0, 1e-42, 65504.0]))
                p.masked_fill_(mask, torch.tensor(value).to(p.dtype))  # 3e38 becomes inf in half precision
    env.note(f"dims {dims}")
    return {"model": m}


_register("modules", ("spectra", "load_subject"), MOD, _mod_random, weight=0.8)


# =============================================================================== odd model arguments ("more")
ARG: list = []

for _n, _fn in (
    ("empty-string", lambda env: ""),
    ("space", lambda env: " "),
    ("nul", lambda env: "a\x00b"),
    ("nul-path", lambda env: str(env.dir / "m\x00.safetensors")),
    ("long-name", lambda env: "x" * 5000),
    ("long-path", lambda env: str(env.dir / ("d" * 300) / "m.pt")),
    ("tilde-user", lambda env: "~nonexistent_user_nnv/model.pt"),
    ("dev-zero", lambda env: "/dev/zero"),
    ("dev-null", lambda env: "/dev/null"),
    ("proc-status", lambda env: "/proc/self/status"),
    ("proc-mem", lambda env: "/proc/self/mem"),
    ("root", lambda env: "/"),
    ("proc-dir", lambda env: "/proc/self/fd"),
    ("bytes", lambda env: b"mlp"),
    ("int", lambda env: 5),
    ("float-nan", lambda env: float("nan")),
    ("none", lambda env: None),
    ("list", lambda env: []),
    ("dict", lambda env: {}),
    ("object", lambda env: object()),
    ("numpy", lambda env: np.zeros((4, 4))),
    ("tensor", lambda env: __import__("torch").zeros(4, 4)),
    ("demo-newline", lambda env: "mlp\n"),
    ("demo-case", lambda env: "MLP"),
    ("demo-unicode", lambda env: "mlp\u200b"),
    ("factory-missing-module", lambda env: "no_such_module_nnv:build"),
    ("factory-not-callable", lambda env: "analyses:__version__"),
    ("factory-returns-str", lambda env: "os:getcwd"),
    ("factory-raises", lambda env: "json:loads"),
    ("surrogate", lambda env: "\udcff.safetensors"),
):
    kind(ARG, _n, f"model argument: {_n}")(lambda env, _fn=_fn: {"model": _fn(env)})


def _arg_file(name: str, data: Callable[[Env], bytes] | None = None, mkdir: bool = False) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        p = env.dir / name
        if mkdir:
            p.mkdir(parents=True)
        else:
            p.write_bytes(data(env) if data else st_bytes(*st_pack(st_tensors(env.rng))))
        return {"model": str(p)}

    return w


kind(ARG, "suffix-unknown", "a valid safetensors named model.weights")(_arg_file("model.weights"))
kind(ARG, "suffix-none", "a valid safetensors named model")(_arg_file("model"))
kind(ARG, "suffix-upper", "a valid safetensors named MODEL.SAFETENSORS")(_arg_file("MODEL.SAFETENSORS"))
kind(ARG, "suffix-trailing-space", "a valid safetensors named 'model.safetensors '")(
    _arg_file("model.safetensors ")
)
kind(ARG, "dir-named-safetensors", "a directory named x.safetensors")(_arg_file("x.safetensors", mkdir=True))
kind(ARG, "dir-named-pt2", "a directory named x.pt2")(_arg_file("x.pt2", mkdir=True))
kind(ARG, "dir-named-pt", "a directory named x.pt")(_arg_file("x.pt", mkdir=True))
kind(ARG, "file-named-like-demo", "a file called 'mlp' in the working directory")(_arg_file("mlp"))


@kind(ARG, "symlink-loop", "a path that is a symlink loop")
def _(env):
    os.symlink(env.dir / "b.pt", env.dir / "a.pt")
    os.symlink(env.dir / "a.pt", env.dir / "b.pt")
    return {"model": str(env.dir / "a.pt")}


@kind(ARG, "socket", "a UNIX socket named model.pt")
def _(env):
    import socket

    s = socket.socket(socket.AF_UNIX)
    path = env.dir / "model.pt"
    try:
        s.bind(str(path))
    except OSError:
        path.write_bytes(b"")
    s.close()
    return {"model": str(path)}


@kind(ARG, "fifo-file", "a FIFO named model.safetensors passed directly (must not hang)")
def _(env):
    os.mkfifo(env.dir / "model.safetensors")
    return {"model": str(env.dir / "model.safetensors")}


@kind(ARG, "list-of-bad", "a list of two bad models (orbits-style list)")
def _(env):
    return {"model": [str(env.dir / "missing.pt"), 5]}


def _arg_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    chars = "abc./\\~:$*?\n\x00 -_\u00e9\u202e"
    s = "".join(str(rng.choice(list(chars))) for _ in range(int(rng.integers(0, 40))))
    env.note(f"model {s!r}")
    return {"model": s}


_register("model_arg", ("load_subject", "spectra"), ARG, _arg_random, weight=0.5)


# ======================================================================== stored results (.nnv, "more")
RES: list = []


def _res_members(env: Env) -> dict[str, bytes]:
    return read_zip(env.base / "result.nnv")


def _res_out(env: Env, data: bytes) -> dict[str, Any]:
    """The damaged result as a file (result_load) or as a checksummed store entry (store_get)."""
    if env.target == "store_get":
        import hashlib

        key = "ab" * 32
        p = env.dir / "store" / key[:2] / f"{key}.nnv"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"NNVSTORE1\n" + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
        return {"root": str(env.dir / "store"), "key": key}
    return {"path": str(write(env, "result.nnv", data))}


def _res(fn: Callable[[dict[str, bytes], Env], None]) -> Writer:
    def w(env: Env) -> dict[str, Any]:
        m = _res_members(env)
        fn(m, env)
        p = env.dir / "tmp.zip"
        write_zip(p, [v if isinstance(v, Member) else Member(k, v, 8) for k, v in m.items()], align=0)
        data = p.read_bytes()
        p.unlink()
        return _res_out(env, data)

    return w


def _res_meta(fn: Callable[[dict, Env], None]) -> Writer:
    def edit(m, env):
        meta = json.loads(m["meta.json"])
        fn(meta, env)
        m["meta.json"] = json.dumps(meta).encode()

    return _res(edit)


for _name in ("meta.json", "summary.json", "table.npz", "arrays.npz"):
    kind(RES, f"missing-{_name.split('.')[0]}", f"result without {_name}")(
        _res(lambda m, env, _n=_name: m.pop(_n))
    )
    kind(RES, f"bomb-{_name.split('.')[0]}", f"{_name} deflated: inflating to 3 GiB")(
        _res(lambda m, env, _n=_name: m.__setitem__(_n, _bomb_member(env, _n)))
    )
for _n, _raw in (
    ("list", b"[]"),
    ("null", b"null"),
    ("not-json", b"\xff" + CANARY.encode()),
    ("deep-100k", _nested(100_000)),
    ("deep-object-100k", _nested_obj(100_000)),
):
    kind(RES, f"meta-{_n}", f"meta.json = {_raw[:16]!r}")(
        _res(lambda m, env, _raw=_raw: m.__setitem__("meta.json", _raw))
    )
    kind(RES, f"summary-{_n}", f"summary.json = {_raw[:16]!r}")(
        _res(lambda m, env, _raw=_raw: m.__setitem__("summary.json", _raw))
    )
for _n, _fn in (
    ("format-wrong", lambda meta, env: meta.__setitem__("format", "other/9")),
    ("format-missing", lambda meta, env: meta.pop("format")),
    ("kind-unknown", lambda meta, env: meta.__setitem__("kind", "no-such-kind")),
    ("kind-list", lambda meta, env: meta.__setitem__("kind", [1])),
    ("schema-missing", lambda meta, env: meta.pop("schema")),
    ("schema-extra-columns", lambda meta, env: meta["schema"].extend([["x", "float64"]] * 3)),
    ("schema-not-list", lambda meta, env: meta.__setitem__("schema", 5)),
    ("schema-bad-entries", lambda meta, env: meta.__setitem__("schema", [[1], "ab", None])),
    (
        "schema-dtype-object",
        lambda meta, env: meta.__setitem__("schema", [[n, "object"] for n, _ in meta["schema"]]),
    ),
    ("meta-missing", lambda meta, env: meta.pop("meta")),
    ("meta-not-dict", lambda meta, env: meta.__setitem__("meta", [1, 2])),
    ("meta-subject-not-dict", lambda meta, env: meta["meta"].__setitem__("subject", "x")),
):
    kind(RES, _n, f"meta.json: {_n}")(_res_meta(_fn))


def _npz_member(arrays: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in arrays.items():
            z.writestr(f"{k}.npy", v)
    return buf.getvalue()


_OBJ_HDR = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
kind(RES, "arrays-object-evil", "arrays.npz holds an object array whose pickle calls os.system")(
    _res(
        lambda m, env: m.__setitem__(
            "arrays.npz", _npz_member({"a": npy_raw(_OBJ_HDR, pk_call("os", "system", env.touch_cmd()))})
        )
    )
)
kind(RES, "table-object-evil", "table.npz col0 is an object array whose pickle calls os.system")(
    _res(
        lambda m, env: m.__setitem__(
            "table.npz", _npz_member({"col0": npy_raw(_OBJ_HDR, pk_call("os", "system", env.touch_cmd()))})
        )
    )
)
kind(RES, "arrays-shape-1e18", "arrays.npz member declares 10**18 elements")(
    _res(
        lambda m, env: m.__setitem__(
            "arrays.npz",
            _npz_member(
                {
                    "a": npy_raw(
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000000,), }",
                        b"\0" * 16,
                    )
                }
            ),
        )
    )
)
kind(RES, "table-not-npz", "table.npz is random bytes")(
    _res(lambda m, env: m.__setitem__("table.npz", CANARY.encode() + env.rng.bytes(100)))
)
kind(RES, "table-column-ragged", "table.npz columns of different lengths")(
    _res(
        lambda m, env: m.__setitem__(
            "table.npz", _npz_member({f"col{i}": npy_bytes(np.arange(i + 1.0)) for i in range(40)})
        )
    )
)


@kind(RES, "truncated", "a stored result cut short")
def _(env):
    data = (env.base / "result.nnv").read_bytes()
    return _res_out(env, truncate(data, env.rng, 1)[0])


@kind(RES, "bitflip", "a stored result with 1-8 bit flips")
def _(env):
    data = (env.base / "result.nnv").read_bytes()
    return _res_out(env, flip_bits(data, env.rng, int(env.rng.integers(1, 9)))[0])


kind(RES, "not-zip", "random bytes")(lambda env: _res_out(env, CANARY.encode() + env.rng.bytes(500)))
kind(RES, "empty", "0 bytes")(lambda env: _res_out(env, b""))
kind(RES, "state-dict", "a torch state dict as a result")(
    lambda env: _res_out(env, (env.base / "state.pt").read_bytes())
)


def _res_random(env: Env) -> dict[str, Any]:
    rng = env.rng
    m = _res_members(env)
    k = str(rng.choice(list(m)))
    m[k] = flip_bits(m[k], rng, int(rng.integers(1, 6)))[0] if rng.random() < 0.7 else truncate(m[k], rng)[0]
    env.note(f"damaged member {k}")
    p = env.dir / "tmp.zip"
    write_zip(p, [Member(n, v, 8) for n, v in m.items()], align=0)
    data = p.read_bytes()
    p.unlink()
    return _res_out(env, data)


_register("result", ("result_load", "store_get"), RES, _res_random, weight=0.6)


# =============================================================================== harness self-test (hidden)
SELF: list = []


def t_selftest(kw: dict[str, Any], base: Path) -> None:
    """Misbehave on purpose, so the harness's detection of each failure is itself tested."""
    action = kw["action"]
    if action == "pass":
        return
    if action == "nnv":
        from analyses.core.errors import NNVitalsError

        raise NNVitalsError("selftest: a proper one-line message")
    if action == "uncaught":
        raise KeyError("selftest")
    if action == "bad-message":
        from analyses.core.errors import NNVitalsError

        raise NNVitalsError(f"selftest: quotes the file\n{CANARY}")
    if action == "marker":
        os.system(f"touch {kw['marker']}")
        return
    if action == "memory":
        blob = bytearray(kw["mb"] << 20)
        for i in range(0, len(blob), 4096):
            blob[i] = 1
        return
    if action == "slow":
        import time

        time.sleep(kw["seconds"])
        return
    if action == "crash":
        os.abort()
    if action == "exit":
        raise SystemExit(3)
    raise ValueError(action)


TARGETS["selftest"] = t_selftest

for _n, _kw in (
    ("pass", {}),
    ("nnv", {}),
    ("uncaught", {}),
    ("bad-message", {}),
    ("marker", {}),
    ("memory", {"mb": 700}),
    ("slow", {"seconds": 3.0}),
    ("hang", {"seconds": 600}),
    ("crash", {}),
    ("exit", {}),
):
    kind(SELF, _n, f"harness self-test: {_n}")(
        lambda env, _n=_n, _kw=_kw: {"action": {"hang": "slow"}.get(_n, _n), "marker": str(env.marker), **_kw}
    )
_register("selftest", ("selftest",), SELF, lambda env: {"action": "pass"}, weight=0.0)
FAMILIES["selftest"].hidden = True

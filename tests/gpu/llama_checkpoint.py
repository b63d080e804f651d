"""A LLaMA-shaped, Hugging Face-sharded fp16 checkpoint, generated for tests and benchmarks.

Not a test module (no ``test_`` prefix). ``make_checkpoint(dir, blocks=32, hidden=4096)`` writes
what a LLaMA-7B repository holds for its decoder blocks: per block the attention projections
``q_proj k_proj v_proj o_proj`` (hidden x hidden) and the MLP ``gate_proj up_proj``
(intermediate x hidden) and ``down_proj`` (hidden x intermediate), intermediate = 11008 for
hidden 4096 (LLaMA's 8/3 * hidden rounded up to a multiple of 256), plus two RMSNorm vectors
per block (1-D, not analysed) — 7 matrices per block, 224 matrices (13 GB) for 32 blocks. The
tensors are spread over ``model-0000i-of-0000n.safetensors`` shards with a
``model.safetensors.index.json`` and a ``config.json``, as ``save_pretrained`` writes them.

Entries are Gaussian scaled by a log-normal factor per entry (a heavy-tailed scale mixture,
so the spectra have a power-law-like tail rather than a pure Marchenko-Pastur bulk), plus a
few rank-one spikes; seeded. Generation runs on ``device`` (a GPU makes 13 GB in seconds) and
is streamed: each tensor is written as soon as it is made, so the host holds one tensor at a
time. The safetensors files are written directly from the documented layout (8-byte header
length, JSON header, raw little-endian bytes).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def intermediate_size(hidden: int) -> int:
    """LLaMA's MLP width: 8/3 * hidden, rounded up to a multiple of 256 (4096 -> 11008)."""
    return int(math.ceil(hidden * 8 / 3 / 256) * 256)


def layout(blocks: int, hidden: int, inter: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in the order a LLaMA state dict lists them."""
    inter = inter or intermediate_size(hidden)
    out: list[tuple[str, tuple[int, ...]]] = []
    for b in range(blocks):
        p = f"model.layers.{b}."
        out += [(f"{p}self_attn.{n}.weight", (hidden, hidden)) for n in PROJ]
        out += [
            (f"{p}mlp.gate_proj.weight", (inter, hidden)),
            (f"{p}mlp.up_proj.weight", (inter, hidden)),
            (f"{p}mlp.down_proj.weight", (hidden, inter)),
        ]
        out += [(f"{p}input_layernorm.weight", (hidden,)), (f"{p}post_attention_layernorm.weight", (hidden,))]
    return out


def _tensor(shape: tuple[int, ...], seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16, device=device)
    rows, cols = shape
    w = torch.randn(shape, generator=g, device=device)
    w *= torch.exp(0.5 * torch.randn(shape, generator=g, device=device))
    w /= math.sqrt(max(rows, cols))
    for k in range(3):  # a few spikes above the bulk
        u = torch.randn((rows, 1), generator=g, device=device) / math.sqrt(rows)
        v = torch.randn((1, cols), generator=g, device=device) / math.sqrt(cols)
        w += (3.0 + k) * u @ v
    return w.to(torch.float16)


def make_checkpoint(
    directory: str | Path,
    blocks: int = 1,
    hidden: int = 1024,
    inter: int | None = None,
    shards: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Write the checkpoint into ``directory``; returns {"files", "bytes", "matrices", "shapes"}.

    ``shards``: how many files (default: one per 2 GB of weights, at least 2).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    items = layout(blocks, hidden, inter)
    sizes = [math.prod(s) * 2 for _, s in items]
    total = sum(sizes)
    n = shards or max(2, math.ceil(total / 2e9))
    n = max(1, min(n, len(items)))
    # consecutive tensors into n shards of about equal size (a shard never splits a tensor)
    groups: list[list[int]] = [[] for _ in range(n)]
    acc, target = 0, total / n
    for i, sz in enumerate(sizes):
        k = min(n - 1, int(acc // target))
        groups[k].append(i)
        acc += sz
    groups = [g for g in groups if g]
    n = len(groups)
    weight_map, files = {}, []
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        header, off = {}, 0
        for i in idx:
            name, shape = items[i]
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + sizes[i]]}
            off += sizes[i]
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = d / fname
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for i in idx:
                name, shape = items[i]
                t = _tensor(shape, seed * 100003 + i, device).cpu().contiguous()
                f.write(t.view(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
                del t
        files.append(path)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": hidden,
                "intermediate_size": inter or intermediate_size(hidden),
                "num_hidden_layers": blocks,
                "torch_dtype": "float16",
            },
            indent=2,
        )
    )
    return {
        "files": [str(p) for p in files],
        "bytes": total,
        "matrices": sum(1 for _, s in items if len(s) == 2),
        "shapes": sorted({s for _, s in items if len(s) == 2}),
    }


def drop_page_cache(files) -> None:
    """Ask the kernel to drop these files from the page cache (best effort), for cold reads."""
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass

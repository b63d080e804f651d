"""FARMS: Fixed-Aspect-Ratio Matrix Subsampling (ICML 2025, §3).

The ESD of an N x M matrix depends on its aspect ratio Q = N / M (Marchenko-Pastur), so
alpha is biased by layer shape. FARMS measures every matrix through windows of one fixed
shape r x c (c = int(r * Q_ratio), on the PyTorch (out, in) layout), placed on a regular
grid of up to ``ops`` x ``ops`` positions, pools the squared singular values of all windows
(pooling same-shape windows = averaging their ESDs) and fits ONE power law to the pool.

Speed: windows that share a column range share work. With G = W[:, cols] W[:, cols]^T
computed once per column range, each window's eigenvalues are those of a diagonal block of
G, so the grams cost one matmul per column range instead of one per window, and all the
blocks of a range go through one batched ``eigvalsh``.
"""

from __future__ import annotations

import torch

from .kernels import batched_eigenvalues, eigvalsh_batch


def window_grid(
    rows: int, cols: int, r: int, q_ratio: float, ops: int
) -> tuple[int, int, list[int], list[int]]:
    """Window shape (r, c) and the start offsets along rows and columns.

    c = int(r * q_ratio). A matrix smaller than the window shrinks the window, keeping its
    aspect ratio. Starts are k * stride, stride = (dim - w) // (ops - 1), k < ops (as the FARMS
    code); duplicate starts (a dimension barely larger than the window) are dropped.
    """
    c = max(1, int(r * q_ratio))
    scale = min(1.0, rows / r, cols / c)
    if scale < 1.0:
        r = max(1, int(r * scale))
        c = max(1, min(cols, int(r * q_ratio)))

    def starts(dim: int, w: int) -> list[int]:
        if ops <= 1 or dim == w:
            return [0]
        stride = (dim - w) // (ops - 1)
        return sorted({k * stride for k in range(ops)}) if stride > 0 else sorted({0, dim - w})

    return r, c, starts(rows, r), starts(cols, c)


def farms_eigenvalues(
    w: torch.Tensor, r: int = 100, q_ratio: float = 2.0, ops: int = 10, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Pooled eigenvalues (squared singular values) of every FARMS window of ``w`` (out x in), sorted.

    On the CPU one column range at a time (below); on an accelerator every window of the matrix
    at once (:func:`_windows_batched`). The same windows, the same Gram blocks.
    """
    rows, cols = w.shape
    r, c, rs, cs = window_grid(rows, cols, r, q_ratio, ops)
    w = w.to(dtype)
    if w.device.type != "cpu":
        return _windows_batched(w, r, c, rs, cs)
    pooled = []
    if r <= c:  # blocks of the row-side Gram, shared per column range
        for c0 in cs:
            strip = w[:, c0 : c0 + c]
            pooled.append(_blocks_eigs(strip, rs, r, dtype))
    else:  # blocks of the column-side Gram, shared per row range
        for r0 in rs:
            strip = w[r0 : r0 + r, :].mT
            pooled.append(_blocks_eigs(strip, cs, c, dtype))
    return torch.sort(torch.cat(pooled)).values


def _windows_batched(w: torch.Tensor, r: int, c: int, rs: list[int], cs: list[int]) -> torch.Tensor:
    """Every window's eigenvalues in one batched Gram product and one batched eigensolve.

    Windows share column ranges (``r <= c``; otherwise row ranges, by transposing): with
    ``strips`` the column ranges and ``starts`` the block offsets along the other side, either
    one Gram matrix per strip over the span the blocks cover, whose diagonal blocks are the
    windows' Gram matrices (when blocks overlap enough to make that cheaper, as
    :func:`_blocks_eigs`), or the Gram matrix of every window directly. All blocks of all strips
    then go through one :func:`~analyses.spectra.kernels.eigvalsh_batch`.
    """
    if r > c:  # the column-side Gram: windows of w^T with the roles of rows and columns swapped
        w, r, c, rs, cs = w.mT, c, r, cs, rs
    dev = w.device
    lo, hi = min(rs), max(rs) + r
    cols = torch.tensor(cs, device=dev)[:, None] + torch.arange(c, device=dev)  # (C, c)
    if (hi - lo) ** 2 < len(rs) * r * r:  # one Gram per strip over the covered span
        span = w[lo:hi][:, cols].permute(1, 0, 2)  # (C, L, c)
        g = span @ span.mT  # (C, L, L)
        idx = torch.tensor(rs, device=dev)[:, None] - lo + torch.arange(r, device=dev)  # (R, r)
        blocks = g[:, idx[:, :, None], idx[:, None, :]]  # (C, R, r, r)
    else:  # one Gram per window
        rows = torch.tensor(rs, device=dev)[:, None] + torch.arange(r, device=dev)  # (R, r)
        wins = w[rows[:, None, :, None], cols[None, :, None, :]]  # (R, C, r, c)
        blocks = wins @ wins.mT  # (R, C, r, r): r <= c, the smaller Gram
    ev = eigvalsh_batch(blocks.reshape(-1, r, r)).clamp_min_(0)
    return torch.sort(ev.reshape(-1)).values


def _blocks_eigs(strip: torch.Tensor, starts: list[int], size: int, dtype: torch.dtype) -> torch.Tensor:
    """Eigenvalues of the diagonal blocks [s:s+size] of strip @ strip^T, batched.

    One full Gram over the covered span when windows overlap enough to make that cheaper
    (span^2 < n_windows * size^2), otherwise one small Gram per window.
    """
    lo, hi = min(starts), max(starts) + size
    if (hi - lo) ** 2 < len(starts) * size * size:
        span = strip[lo:hi]
        g = span @ span.mT
        blocks = torch.stack([g[s - lo : s - lo + size, s - lo : s - lo + size] for s in starts])
        return eigvalsh_batch(blocks).clamp_min_(0).reshape(-1)
    wins = torch.stack([strip[s : s + size] for s in starts])
    return batched_eigenvalues(wins, dtype).reshape(-1)


def farms_conv2d_blocks(slices: torch.Tensor, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """FARMS for Conv2d: cut every (out, in) kernel slice into non-overlapping c x c blocks
    (c = the smaller channel count) and pool, per block index, the eigenvalues over all
    kh*kw slices. Returns one ESD per block index (the layer alpha is the mean of their alphas).
    """
    s, rows, cols = slices.shape
    c = min(rows, cols)
    out = []
    if rows >= cols:
        for b in range(rows // c):
            out.append(batched_eigenvalues(slices[:, b * c : (b + 1) * c, :], dtype).reshape(-1))
    else:
        for b in range(cols // c):
            out.append(batched_eigenvalues(slices[:, :, b * c : (b + 1) * c], dtype).reshape(-1))
    return out

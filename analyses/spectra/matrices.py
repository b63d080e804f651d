"""From a stored weight tensor to the matrices whose spectra are analysed.

Every kind becomes a stack of 2-D slices (S, rows, cols) on the PyTorch (out, in) layout:

- Linear / plain matrices: one slice (out, in);
- Hugging Face ``Conv1D`` (GPT-2) stores (in, out): transposed to (out, in);
- Embedding: one slice (num_embeddings, dim);
- Conv1d (out, in, k): k slices W[:, :, i];
- Conv2d (out, in, kh, kw): kh*kw slices W[:, :, i, j], scaled by sqrt(1/2) as
  WeightWatcher's ``conv2d_norm`` (its factor sqrt(conv2d_count / 2) with conv2d_count = 1
  when slices are pooled), i.e. the pooled eigenvalues are halved.

``N`` and ``M`` follow WeightWatcher: N = max(rows, cols), M = min(rows, cols), Q = N / M;
each slice contributes M eigenvalues.
"""

from __future__ import annotations

import math

import torch


def to_slices(w: torch.Tensor, kind: str, conv2d_norm: bool = True) -> torch.Tensor:
    """A weight tensor as a (S, out, in) stack of matrices (see module docstring)."""
    if kind == "hf_conv1d":
        return w.mT.unsqueeze(0)
    if w.ndim == 2:
        return w.unsqueeze(0)
    if w.ndim == 3:
        return w.permute(2, 0, 1)
    if w.ndim == 4:
        kh, kw = w.shape[2], w.shape[3]
        s = w.permute(2, 3, 0, 1).reshape(kh * kw, w.shape[0], w.shape[1])
        if conv2d_norm and kind == "conv2d":
            s = s * math.sqrt(0.5)
        return s
    raise ValueError(f"cannot take matrices of a {w.ndim}-d tensor")


def slice_shape(shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    """(number of slices, rows, cols) of :func:`to_slices` without loading the tensor."""
    if kind == "hf_conv1d":
        return 1, shape[1], shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[2], shape[0], shape[1]
    return shape[2] * shape[3], shape[0], shape[1]

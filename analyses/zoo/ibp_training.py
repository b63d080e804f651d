"""Interval bound propagation (IBP) for training and certifying the zoo's sequential models.

A small, self-contained IBP forward used by the recipe to *train* ``ibp-cnn`` (certified
training, Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for
Training Verifiably Robust Models") and to record the certified accuracy of ``ibp-cnn`` and
``std-cnn`` in the zoo manifest. It is differentiable and batched; it is not the analysis
(``analyses.bounds`` measures IBP tightness on any traced graph); keeping it here lets the
zoo be rebuilt without the analysis code and gives the analysis an independent cross-check.

The input box is the L-inf ball of radius ``eps`` about ``x`` clipped to the data range
``[lo, hi]``. Boxes travel as (centre ``c``, radius ``r``) (REFERENCES.md section 3):

- ``Linear`` / ``Conv2d``: ``c' = W c + b``, ``r' = |W| r`` (the same layer applied to ``r``
  with ``|W|`` and no bias);
- ``AvgPool2d``, ``Flatten``: linear with non-negative weights, applied to ``c`` and ``r``;
- ``ReLU`` (and ``MaxPool2d``): monotone, applied to both ends ``c - r`` and ``c + r``;
- ``BatchNorm2d`` in eval mode: the per-channel affine map ``c' = bn(c)``, ``r' = |s| r``
  with ``s = gamma / sqrt(var + eps)``.

The specification "class ``y`` beats class ``j``" (rows ``e_y - e_j``) is folded into the
last linear layer before its interval is taken (``|C W_L| r``, not ``|C| |W_L| r``), which is
tighter and is what certified-training papers use. ``margin_lower_bounds`` gives the lower
bound of ``z_y - z_j`` over the box for every ``j``; the sample is *certified* when all of
them (``j != y``) are positive. The worst-case logits ``-lower`` (0 for the true class) feed
the robust cross-entropy of IBP training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from analyses.core.errors import NNVitalsError

__all__ = ["certified_accuracy", "input_box", "interval_forward", "margin_lower_bounds", "robust_loss"]


def input_box(
    x: torch.Tensor, eps: float, lo: float = 0.0, hi: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius of the L-inf ball of radius ``eps`` about ``x``, clipped to ``[lo, hi]``."""
    low, high = (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)
    return (high + low) / 2, (high - low) / 2


def _layer(layer: nn.Module, c: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's interval image: the box (c, r) in, the box containing its image out."""
    if isinstance(layer, nn.Linear):
        return layer(c), F.linear(r, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise NNVitalsError(f"IBP: Conv2d with padding_mode={layer.padding_mode!r} is not supported")
        radius = F.conv2d(
            r, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        return layer(c), radius
    if isinstance(layer, nn.ReLU | nn.MaxPool2d):
        low, high = layer(c - r), layer(c + r)
        return (high + low) / 2, (high - low) / 2
    if isinstance(layer, nn.Flatten | nn.AvgPool2d | nn.Identity | nn.Dropout):
        return layer(c), layer(r)
    if isinstance(layer, nn.BatchNorm2d) and not layer.training:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return layer(c), r * scale.abs().reshape(1, -1, 1, 1)
    raise NNVitalsError(
        f"IBP: layer {type(layer).__name__} is not supported (expected Linear, Conv2d, ReLU, Flatten, "
        "AvgPool2d, MaxPool2d or eval-mode BatchNorm2d)"
    )


def interval_forward(
    layers: nn.Sequential | list[nn.Module], c: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagate the box ``(c, r)`` through ``layers`` in order; returns the output box (centre, radius)."""
    for layer in layers:
        c, r = _layer(layer, c, r)
    return c, r


def margin_lower_bounds(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """Lower bounds ``(N, classes)`` of the margins ``z_y - z_j`` over the clipped eps-box about ``x``.

    The last layer must be ``nn.Linear``; the specification ``C`` (rows ``e_y - e_j``) is folded
    into it: margin centre ``(W_y - W_j) c + b_y - b_j``, radius ``|W_y - W_j| r``. The entry for
    ``j = y`` is 0.
    """
    layers = list(model)
    last = layers[-1]
    if not isinstance(last, nn.Linear):
        raise NNVitalsError(f"IBP margins: the last layer must be nn.Linear, got {type(last).__name__}")
    c, r = interval_forward(layers[:-1], *input_box(x, eps, lo, hi))
    w_diff = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)  # (N, classes, features)
    centre = torch.einsum("nkf,nf->nk", w_diff, c)
    if last.bias is not None:
        centre = centre + last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)
    return centre - torch.einsum("nkf,nf->nk", w_diff.abs(), r)


def robust_loss(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """IBP robust cross-entropy: cross-entropy of the worst-case logits ``-lower(z_y - z_j)`` (0 for ``y``)."""
    return F.cross_entropy(-margin_lower_bounds(model, x, y, eps, lo, hi), y)


@torch.no_grad()
def certified_accuracy(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lo: float = 0.0,
    hi: float = 1.0,
    batch_size: int = 512,
) -> float:
    """Fraction of samples whose true-class margin over every other class is certified positive at ``eps``."""
    model.eval()
    certified = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        lower = margin_lower_bounds(model, xb, yb, eps, lo, hi)
        lower[torch.arange(len(yb)), yb] = torch.inf
        certified += int((lower > 0).all(dim=1).sum())
    return certified / len(x)

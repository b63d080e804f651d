"""Demo architectures for the digits.

:class:`DigitsMLP` and :class:`DigitsCNN` take the 8x8 digits; :class:`DigitsGlobalPoolCNN`
and its rotation-invariant wrapper :class:`GroupAveraged` take any image size (the rotation
demos use the digits upsampled to 16x16, which gives rotations room to work).
:class:`DigitsStrideCNN` (convolutions, ReLUs and linear layers only; the certified-training
demos) and :class:`DigitsBNCNN` (conv-BatchNorm-ReLU blocks; a connectivity demo) take the
8x8 digits.

The plain models are ``nn.Sequential`` subclasses with named children, so parameter names
are short and stable (``fc1.weight``, ``conv2.bias``) and layer-walking analyses (interval
bound propagation, Lipschitz products, permutation alignment) can iterate the layers in
order without tracing. :class:`GroupAveraged` is not sequential: it runs its inner
sequential model on the four quarter turns of the input and averages the logits. Each model
keeps its constructor arguments in ``config`` so the zoo manifest can rebuild it.

The MLP's and CNN's widths are chosen so the hidden weight matrices have at least ~50
singular values, which the spectral analysis needs to fit a power law to the eigenvalue
spectrum; the output layers (10 classes) and the first convolution (1 input channel) cannot,
and are expected to be skipped there. The rotation demos are smaller (16-64 channels): their
spectra are short, which is fine for what they are for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "DigitsBNCNN",
    "DigitsCNN",
    "DigitsGlobalPoolCNN",
    "DigitsMLP",
    "DigitsStrideCNN",
    "GroupAveraged",
]


class DigitsMLP(nn.Sequential):
    """Fully connected ReLU classifier: ``flatten -> fc1 -> relu1 -> ... -> fcK``.

    Accepts ``(N, 1, 8, 8)`` images or ``(N, 64)`` vectors (the input is flattened first).
    With the defaults the layers are 64->256, 256->128 and 128->10.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (256, 128), classes: int = 10):
        widths = [int(in_features), *(int(h) for h in hidden), int(classes)]
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append((f"fc{i}", nn.Linear(fan_in, fan_out)))
            if i < len(widths) - 1:
                layers.append((f"relu{i}", nn.ReLU()))
        super().__init__(OrderedDict(layers))
        self.config: dict[str, Any] = {
            "in_features": int(in_features),
            "hidden": [int(h) for h in hidden],
            "classes": int(classes),
        }


class DigitsCNN(nn.Sequential):
    """Small convolutional classifier for ``(N, 1, 8, 8)`` digits.

    ``conv1 (1->c1, 3x3, pad 1) -> relu1 -> conv2 (c1->c2, 3x3, pad 1) -> relu2 -> pool (2x2)
    -> flatten -> fc1 (c2*4*4 -> 128) -> relu3 -> fc2 (128 -> classes)``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64), classes: int = 10):
        c1, c2 = (int(c) for c in channels)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, c1, kernel_size=3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(c1, c2, kernel_size=3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("pool", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(c2 * 4 * 4, 128)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(128, int(classes))),
                ]
            )
        )
        self.config: dict[str, Any] = {"channels": [c1, c2], "classes": int(classes)}


class DigitsStrideCNN(nn.Sequential):
    """Small convolutional classifier for ``(N, 1, 8, 8)`` digits that downsamples by striding.

    ``conv1 (1->c1, 3x3, pad 1) -> relu1 -> conv2 (c1->c2, 4x4, stride 2, pad 1) -> relu2
    -> flatten -> fc1 (c2*4*4 -> hidden) -> relu3 -> fc2 (hidden -> classes)``.

    Only convolutions, ReLUs, a flatten and linear layers: no pooling, so interval bound
    propagation through it is plain IBP layer by layer (the certified-training demos
    ``std-cnn`` and ``ibp-cnn`` use it; REFERENCES.md section 3).
    """

    def __init__(self, channels: Sequence[int] = (16, 32), hidden: int = 100, classes: int = 10):
        c1, c2 = (int(c) for c in channels)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, c1, kernel_size=3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(c2 * 4 * 4, int(hidden))),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(int(hidden), int(classes))),
                ]
            )
        )
        self.config: dict[str, Any] = {"channels": [c1, c2], "hidden": int(hidden), "classes": int(classes)}


class DigitsBNCNN(nn.Sequential):
    """Convolutional classifier with BatchNorm for ``(N, 1, 8, 8)`` digits.

    One block per entry of ``channels``: ``convK (3x3, pad 1, no bias) -> bnK -> reluK``;
    then ``pool (2x2 average) -> flatten -> fc (c_last*4*4 -> classes)``. The convolutions
    have no bias (the BatchNorm shift plays its part). The connectivity demos (``bn-cnn-a``,
    ``bn-cnn-b``) use it: interpolating BatchNorm networks needs the running statistics
    reset along the path (REFERENCES.md section 5).
    """

    def __init__(self, channels: Sequence[int] = (32, 64), classes: int = 10):
        widths = [1, *(int(c) for c in channels)]
        layers: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append((f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)))
            layers.append((f"bn{i}", nn.BatchNorm2d(c_out)))
            layers.append((f"relu{i}", nn.ReLU()))
        layers += [
            ("pool", nn.AvgPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(widths[-1] * 4 * 4, int(classes))),
        ]
        super().__init__(OrderedDict(layers))
        self.config: dict[str, Any] = {"channels": widths[1:], "classes": int(classes)}


class DigitsGlobalPoolCNN(nn.Sequential):
    """Small convolutional classifier with global max pooling, for ``(N, 1, H, W)`` images.

    ``conv1 (1->c1, 3x3, pad 1) -> relu1 -> pool (2x2) -> conv2 (c1->c2, 3x3, pad 1) -> relu2
    -> conv3 (c2->c3, 3x3, pad 1) -> relu3 -> global_pool (max over all positions) -> flatten
    -> fc (c3 -> classes)``.

    Pooling right after the first convolution keeps training cheap on a CPU and gives the
    last layer a receptive field of 12x12 input pixels.

    Global pooling makes it independent of the image size, and max pooling (the largest
    response of each feature anywhere) learns rotated digits far better than average pooling
    at this size. It is *not* rotation invariant (its 3x3 kernels are free), which is what
    the rotation demos compare against.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), classes: int = 10):
        c1, c2, c3 = (int(c) for c in channels)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, c1, kernel_size=3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("pool", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(c1, c2, kernel_size=3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("conv3", nn.Conv2d(c2, c3, kernel_size=3, padding=1)),
                    ("relu3", nn.ReLU()),
                    ("global_pool", nn.AdaptiveMaxPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(c3, int(classes))),
                ]
            )
        )
        self.config: dict[str, Any] = {"channels": [c1, c2, c3], "classes": int(classes)}


class GroupAveraged(nn.Module):
    """A :class:`DigitsGlobalPoolCNN` averaged over the rotations by multiples of 90 degrees (group C4).

    ``logits(x) = 1/n * sum_k inner(rot90(x, k))`` for ``k = 0 .. n-1`` with ``n = order``
    (4: C4, all quarter turns; 2: C2, half turns; 1: the plain inner model). Averaging a
    model over a finite group makes it exactly invariant to that group (group averaging /
    frame averaging with the whole group as frame; NERO's "equivariant model" baseline,
    REFERENCES.md section 2). Rotating the input by a quarter turn only permutes the ``n``
    inner evaluations, and the ``n`` logits are sorted before they are summed, so the
    floating-point sum, and hence the output, is bitwise the same, not just equal up to
    rounding. The spatial axes are the last two; for ``order`` 4 the images must be square.

    Parameters live under ``inner.`` (``inner.conv1.weight``, ..., ``inner.fc.bias``).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), classes: int = 10, order: int = 4):
        super().__init__()
        if int(order) not in (1, 2, 4):
            raise ValueError(f"order must be 1, 2 or 4 (rotations by multiples of 90 degrees), got {order!r}")
        self.order = int(order)
        self.inner = DigitsGlobalPoolCNN(channels, classes)
        self.config: dict[str, Any] = {**self.inner.config, "order": self.order}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, step = x.shape[0], 4 // self.order
        # One batched call over the whole orbit: (order * N, C, H, W) -> (order, N, classes).
        orbit = torch.cat([torch.rot90(x, k * step, dims=(-2, -1)) for k in range(self.order)])
        logits = self.inner(orbit).reshape(self.order, n, -1)
        # Sorting makes the reduction order independent of which orbit element came first.
        return torch.sort(logits, dim=0).values.sum(dim=0) / self.order


#: Architecture names as written in the zoo manifest, mapped to their classes.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "DigitsMLP": DigitsMLP,
    "DigitsCNN": DigitsCNN,
    "DigitsGlobalPoolCNN": DigitsGlobalPoolCNN,
    "GroupAveraged": GroupAveraged,
    "DigitsStrideCNN": DigitsStrideCNN,
    "DigitsBNCNN": DigitsBNCNN,
}

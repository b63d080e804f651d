"""Demo architectures for the 8x8 digits.

Both are ``nn.Sequential`` subclasses with named children, so parameter names are short
and stable (``fc1.weight``, ``conv2.bias``) and layer-walking analyses (interval bound
propagation, Lipschitz products, permutation alignment) can iterate the layers in order
without tracing. Each model keeps its constructor arguments in ``config`` so the zoo
manifest can rebuild it.

Widths are chosen so the hidden weight matrices have at least ~50 singular values, which
the spectral analysis needs to fit a power law to the eigenvalue spectrum; the output layers
(10 classes) and the first convolution (1 input channel) cannot, and are expected to be
skipped there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["ARCHITECTURES", "DigitsCNN", "DigitsMLP"]


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


#: Architecture names as written in the zoo manifest, mapped to their classes.
ARCHITECTURES: dict[str, type[nn.Module]] = {"DigitsMLP": DigitsMLP, "DigitsCNN": DigitsCNN}

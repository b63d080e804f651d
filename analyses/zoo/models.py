"""Demo architectures for the digits.

:class:`DigitsMLP` and :class:`DigitsCNN` take the 8x8 digits; :class:`DigitsGlobalPoolCNN`
and its rotation-invariant wrapper :class:`GroupAveraged` take any image size (the rotation
demos use the digits upsampled to 16x16, which gives rotations room to work).
:class:`DigitsStrideCNN` (convolutions, ReLUs and linear layers only; the certified-training
demos) and :class:`DigitsBNCNN` (conv-BatchNorm-ReLU blocks; a connectivity demo) take the
8x8 digits.

Two models are not sequential and take the digits upsampled to 16x16 (any size divisible by
their patch or by 4): :class:`DigitsViT`, a small vision transformer (pre-norm blocks of
LayerNorm, multi-head self-attention written out as matmul-softmax-matmul, and a GELU MLP; mean
pooling over the tokens), and :class:`DigitsResNet20`, the ResNet-20 of the Git Re-Basin CIFAR
experiments narrowed, with LayerNorm over the channels at every position (what Flax's
``nn.LayerNorm()`` does on NHWC activations there; :class:`ChannelLayerNorm`) or GroupNorm.
Both are demo pairs for linear mode connectivity through norms and attention.

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
    "ChannelLayerNorm",
    "DigitsBNCNN",
    "DigitsCNN",
    "DigitsGlobalPoolCNN",
    "DigitsMLP",
    "DigitsResNet20",
    "DigitsStrideCNN",
    "DigitsViT",
    "GroupAveraged",
    "SERIES_CNN_KWARGS",
    "series_cnn",
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


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(N, C, H, W)`` activations, at every position.

    ``y[n, :, h, w] = (x[n, :, h, w] - mean) / sqrt(var + eps) * weight + bias`` with the mean
    and (biased) variance over the ``C`` channels: Flax's ``nn.LayerNorm()`` (normalised axis
    -1) applied to the NHWC activations of the Git Re-Basin ResNet-20 (Ainsworth et al. 2023,
    ``src/resnet20.py``). Computed as permute to NHWC, ``layer_norm`` over ``C``, permute back,
    so a channel permutation passes through it with its per-channel ``weight`` and ``bias``.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(int(channels), eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm2d(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "group":
        return nn.GroupNorm(min(int(groups), channels), channels)
    raise ValueError(f"norm must be 'layer' or 'group', got {kind!r}")


class _ResBlock(nn.Module):
    """``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``; the shortcut is the identity,
    or a strided 3x3 convolution and a norm where the block halves the resolution (Git Re-Basin's
    choice, so every channel axis is a plain permutable one)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm2d(norm, c_out, groups)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm2d(norm, c_out, groups)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _norm2d(norm, c_out, groups)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.relu1(self.norm1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class DigitsResNet20(nn.Module):
    """ResNet-20 (3 stages of ``blocks`` residual blocks, 6 * blocks + 2 layers) for ``(N, C, H, W)``.

    ``conv1 (3x3, no bias) -> norm1 -> relu1 -> layer1 (widths[0]) -> layer2 (widths[1], stride 2)
    -> layer3 (widths[2], stride 2) -> mean over positions -> fc``: the CIFAR ResNet-20 of the Git
    Re-Basin experiments (REFERENCES.md section 5), there 16-32-64 channels wide and here narrower
    for the 16x16 digits. ``norm`` is ``'layer'`` (:class:`ChannelLayerNorm`, their LayerNorm
    setting) or ``'group'`` (``nn.GroupNorm`` with ``groups`` groups). No BatchNorm: a linear path
    between two such models needs no statistics reset.
    """

    def __init__(
        self,
        widths: Sequence[int] = (8, 16, 32),
        blocks: int = 3,
        norm: str = "layer",
        groups: int = 4,
        in_channels: int = 1,
        classes: int = 10,
    ):
        super().__init__()
        w = [int(c) for c in widths]
        if len(w) != 3:
            raise ValueError(f"widths must give 3 stage widths, got {widths!r}")
        self.conv1 = nn.Conv2d(int(in_channels), w[0], 3, padding=1, bias=False)
        self.norm1 = _norm2d(norm, w[0], groups)
        self.relu1 = nn.ReLU()
        stages = []
        c_in = w[0]
        for c, stride in zip(w, (1, 2, 2)):
            stage = [
                _ResBlock(c_in if b == 0 else c, c, stride if b == 0 else 1, norm, groups)
                for b in range(int(blocks))
            ]
            stages.append(nn.Sequential(*stage))
            c_in = c
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(w[2], int(classes))
        self.config: dict[str, Any] = {
            "widths": w,
            "blocks": int(blocks),
            "norm": str(norm),
            "groups": int(groups),
            "in_channels": int(in_channels),
            "classes": int(classes),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class _Attention(nn.Module):
    """Multi-head self-attention with separate query, key, value and output projections.

    ``softmax(q k^T / sqrt(d)) v`` per head, written out (matmul, softmax, matmul) so the graph
    shows each step; heads are contiguous blocks of ``d = dim / heads`` features of ``q``, ``k``
    and ``v`` (Vaswani et al. 2017).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, dim = x.shape
        q, k, v = (f(x).reshape(n, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, dim))


class _TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.gelu(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021) for ``(N, C, H, W)`` images.

    ``patch`` (a ``patch x patch`` convolution with that stride: one token per patch) -> ``+ pos``
    (a learned table, one row per token) -> ``depth`` pre-norm blocks (:class:`_TransformerBlock`)
    -> ``norm`` -> mean over the tokens -> ``head``. Mean pooling instead of a class token keeps
    every token's row of the residual stream alike.
    """

    def __init__(
        self,
        image_size: int = 16,
        patch: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp: int = 64,
        in_channels: int = 1,
        classes: int = 10,
    ):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by patch {patch}")
        tokens = (int(image_size) // int(patch)) ** 2
        self.patch = nn.Conv2d(int(in_channels), int(dim), int(patch), stride=int(patch))
        self.pos = nn.Parameter(torch.randn(1, tokens, int(dim)) * 0.02)
        self.blocks = nn.Sequential(
            *(_TransformerBlock(int(dim), int(heads), int(mlp)) for _ in range(int(depth)))
        )
        self.norm = nn.LayerNorm(int(dim))
        self.head = nn.Linear(int(dim), int(classes))
        self.config: dict[str, Any] = {
            "image_size": int(image_size),
            "patch": int(patch),
            "dim": int(dim),
            "depth": int(depth),
            "heads": int(heads),
            "mlp": int(mlp),
            "in_channels": int(in_channels),
            "classes": int(classes),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


#: Architecture names as written in the zoo manifest, mapped to their classes.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "DigitsMLP": DigitsMLP,
    "DigitsCNN": DigitsCNN,
    "DigitsGlobalPoolCNN": DigitsGlobalPoolCNN,
    "GroupAveraged": GroupAveraged,
    "DigitsStrideCNN": DigitsStrideCNN,
    "DigitsBNCNN": DigitsBNCNN,
    "DigitsViT": DigitsViT,
    "DigitsResNet20": DigitsResNet20,
}

#: Constructor arguments of the training-series CNN (``assets/zoo/series/cnn-train``): a
#: :class:`DigitsStrideCNN` narrowed to 2,152 parameters so that its eight checkpoints fit the
#: zoo's size budget (about 9 kB each).
SERIES_CNN_KWARGS: dict[str, Any] = {"channels": [4, 6], "hidden": 16, "classes": 10}


def series_cnn() -> DigitsStrideCNN:
    """The architecture of the demo checkpoint series ``cnn-train``, freshly initialised.

    A weights-only series names it as ``analyses.zoo.models:series_cnn`` (its ``series.json``
    does), so every checkpoint's state dict is run in this module.
    """
    return DigitsStrideCNN(**SERIES_CNN_KWARGS)

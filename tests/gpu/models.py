"""Models for the GPU tests and benchmarks (not a test module).

``resnet18(classes, channels)``: the CIFAR form of ResNet-18 (He et al. 2016: a 3x3 stem without
max pooling, four stages of two BasicBlocks with 64-128-256-512 channels, BatchNorm, identity or
1x1-conv shortcuts, global average pooling, one linear layer): 11.2M parameters, 0.56 GFLOPs per
32x32 image. Seeded; BatchNorm statistics set to non-trivial values so eval mode is not the
identity. Written from the paper's description.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 10, channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = self.blocks(h)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def resnet18(classes: int = 10, channels: int = 3, width: int = 64, seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    m = ResNet18(classes, channels, width)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
                mod.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
    return m.eval()


def images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded smooth random images in [0, 1] (low-frequency noise, so rotations move content) and labels."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, channels, size // 4, size // 4), generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.contiguous(), y

"""Small versions of the architectures researchers bring (issue 13), exported to ``.pt2`` with data.

Not a test module (no ``test_`` prefix): the architecture matrix test
(``tests/integration/test_arch_matrix.py``) and its timing script
(``tests/benchmarks/bench_archs.py``) import it from ``tests/`` (``tests/conftest.py`` puts that
folder on ``sys.path``; the benchmark adds it itself).

Every architecture is written here as a researcher would write it (or as torchvision / nanoGPT
lay it out), shrunk to train for a few steps on digits-derived data in a second or two:

============  ==============================================================  =================
name          architecture                                                    data
============  ==============================================================  =================
mlp-ln-gelu   MLP 64-64-64-10, LayerNorm + GELU after each hidden layer       8x8 digits
resnet18-bn   ResNet-18 (BasicBlocks 2-2-2-2, BatchNorm), 4-8-16-32 wide      16x16 digits
resnet20-ln   ResNet-20 with LayerNorm over channels (Git Re-Basin), 4-8-16   8x8 digits
resnet20-gn   ResNet-20 with GroupNorm (2 groups), 4-8-16                     8x8 digits
mobilenetv2   MobileNetV2-style: inverted residuals, depthwise, BN, ReLU6     8x8 digits
vit           ViT in torchvision's layout: class token, nn.MultiheadAttention 16x16 digits
gpt           GPT-style decoder (nanoGPT layout), 2 layers, causal attention  token ids (N, 64)
conv1d        Conv1d-BatchNorm1d-ReLU net on signals                          (N, 1, 64) signals
============  ==============================================================  =================

Data: the digits' train split (first :data:`TRAIN` samples) and test split (first :data:`TEST`),
as images in [0, 1], as 1-D signals (each 8x8 image read row by row, shape ``(N, 1, 64)``), or as
token ids (each 8x8 image's raw grey levels 0..16 read row by row: a sequence of 64 tokens from a
vocabulary of 17, labelled with its digit). Each model is exported after ``.eval()`` with
``torch.export.export`` and a dynamic batch axis, saved with ``torch.export.save``; the data go to
``.npz`` files with arrays ``x`` (token ids: ``ids``) and ``y`` (what ``--data`` reads).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analyses.core.data import load_digits
from analyses.zoo.models import DigitsResNet20

#: samples of the train and test data files
TRAIN, TEST = 128, 64
#: Adam steps (full batch of the train file) each model is trained for
STEPS = 10
#: the two seeds of each architecture (connectivity needs a pair)
SEEDS = (0, 1)
VOCAB, SEQ = 17, 64


# --------------------------------------------------------------------------- architectures


def mlp_ln_gelu() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 64),
            ln1=nn.LayerNorm(64),
            act1=nn.GELU(),
            fc2=nn.Linear(64, 64),
            ln2=nn.LayerNorm(64),
            act2=nn.GELU(),
            fc3=nn.Linear(64, 10),
        )  # fmt: skip
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-bn-relu-conv-bn, plus the shortcut (1x1 conv + bn when
    the shape changes), then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision's layout) with a CIFAR stem (3x3 conv, no max pool), narrowed."""

    def __init__(self, widths=(4, 8, 16, 32), in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, c_in = [], widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_bn() -> nn.Module:
    return ResNet18()


def resnet20_ln() -> nn.Module:
    return DigitsResNet20(widths=(4, 8, 16), norm="layer")


def resnet20_gn() -> nn.Module:
    return DigitsResNet20(widths=(4, 8, 16), norm="group", groups=2)


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block (torchvision layout): 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1
    linear projection; the input added back when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision's layout: features, then avgpool, dropout and a linear classifier), small."""

    def __init__(self, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu6(in_channels, 8),
            InvertedResidual(8, 8, 1, 1),
            InvertedResidual(8, 12, 2, 4),
            InvertedResidual(12, 12, 1, 4),
            InvertedResidual(12, 16, 2, 4),
            _conv_bn_relu6(16, 32, kernel=1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2() -> nn.Module:
    return MobileNetV2()


class EncoderBlock(nn.Module):
    """torchvision's ViT encoder block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A vision transformer laid out as torchvision's ``VisionTransformer``: patch convolution,
    reshape and permute to tokens, a class token, a positional table, encoder blocks, the class
    token's final state to the head."""

    def __init__(self, image_size=16, patch=4, dim=16, depth=2, heads=2, mlp=32, in_channels=1, classes=10):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderBlock(dim, heads, mlp) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.dim, (h // self.patch) * (w // self.patch)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.head(x[:, 0])


def vit() -> nn.Module:
    return ViT()


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one ``c_attn`` projection split into q, k, v, causal
    ``scaled_dot_product_attention``, ``c_proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(dim, 4 * dim), gelu=nn.GELU(approximate="tanh"), c_proj=nn.Linear(4 * dim, dim)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder (nanoGPT layout) on token ids ``(N, T)``; the logits of the last
    position classify the sequence."""

    def __init__(self, vocab=VOCAB, block=SEQ, dim=16, depth=2, heads=2, classes=10):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block, dim)
        self.h = nn.Sequential(*(GPTBlock(dim, heads) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.ln_f(self.h(self.wte(idx) + self.wpe(pos)))
        return self.lm_head(x[:, -1, :])


def gpt() -> nn.Module:
    return GPT()


def conv1d() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv1d(1, 8, 5, padding=2),
            bn1=nn.BatchNorm1d(8),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool1d(2),
            conv2=nn.Conv1d(8, 16, 5, padding=2),
            bn2=nn.BatchNorm1d(16),
            relu2=nn.ReLU(),
            pool2=nn.AdaptiveAvgPool1d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, 10),
        )  # fmt: skip
    )


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Arch:
    """One architecture of the matrix: how to build it, its data, the orbit a researcher would walk."""

    name: str
    make: Callable[[], nn.Module]
    data: str  # "digits8", "digits16", "signal" or "tokens"
    group: str  # the Orbits group to walk ("rotation" for images, "shift" for signals)
    lr: float = 1e-2


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("mlp-ln-gelu", mlp_ln_gelu, "digits8", "rotation"),
        Arch("resnet18-bn", resnet18_bn, "digits16", "rotation"),
        Arch("resnet20-ln", resnet20_ln, "digits8", "rotation"),
        Arch("resnet20-gn", resnet20_gn, "digits8", "rotation"),
        Arch("mobilenetv2", mobilenetv2, "digits8", "rotation"),
        Arch("vit", vit, "digits16", "rotation", lr=3e-3),
        Arch("gpt", gpt, "tokens", "rotation", lr=3e-3),
        Arch("conv1d", conv1d, "signal", "shift"),
    )
}


def data(kind: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a data kind: the first :data:`TRAIN` train or :data:`TEST` test digits, as
    images (``digits8``/``digits16``), signals ``(N, 1, 64)`` or token ids ``(N, 64)`` (int64)."""
    n = TRAIN if split == "train" else TEST
    size = 16 if kind == "digits16" else 8
    d = load_digits(size=size, split=split)
    x, y = d.x[:n], d.y[:n]
    if kind == "signal":
        x = x.reshape(len(x), 1, 64)
    elif kind == "tokens":
        x = (x.reshape(len(x), 64) * 16).round().to(torch.int64)  # the raw grey levels 0..16
    elif kind not in ("digits8", "digits16"):
        raise ValueError(f"unknown data kind {kind!r}")
    return x.contiguous(), y.contiguous()


def train(arch: Arch, seed: int, steps: int = STEPS) -> nn.Module:
    """``arch`` initialised with ``seed`` and trained ``steps`` full-batch Adam steps; in eval mode."""
    x, y = data(arch.data, "train")
    with torch.random.fork_rng(
        devices=[]
    ):  # seeded initialisation and dropout; the caller's stream untouched
        torch.manual_seed(seed)
        model = arch.make()
        opt = torch.optim.Adam(model.parameters(), lr=arch.lr)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``torch.export`` ``model`` with a dynamic batch axis and save it to ``path``."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def save_npz(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    """``x`` and ``y`` as a ``.npz``; integer token ids go in an array named ``ids`` instead of ``x``."""
    key = "x" if x.is_floating_point() else "ids"
    np.savez(path, **{key: x.numpy(), "y": y.numpy()})
    return path


@dataclass(frozen=True)
class ArchFiles:
    """What the analyses are pointed at for one architecture: two exports and the data files."""

    name: str
    models: tuple[Path, Path]  # seeds SEEDS[0] and SEEDS[1]
    train: Path
    test: Path
    group: str


def write(out: Path, names: list[str] | None = None, steps: int = STEPS) -> dict[str, ArchFiles]:
    """Train, export and write the data of the architectures ``names`` (default: all) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, ArchFiles] = {}
    for name in names or list(ARCHS):
        arch = ARCHS[name]
        x_train, y_train = data(arch.data, "train")
        train_path = save_npz(out / f"{arch.data}-train.npz", x_train, y_train)
        test_path = save_npz(out / f"{arch.data}-test.npz", *data(arch.data, "test"))
        models = tuple(export(train(arch, s, steps), x_train[:4], out / f"{name}-{s}.pt2") for s in SEEDS)
        files[name] = ArchFiles(name, models, train_path, test_path, arch.group)
    return files


# --------------------------------------------------------------------------- the five analyses, from the CLI

#: the analyses of the matrix, by CLI command
ANALYSES = ("spectra", "orbits", "ibp", "lipschitz", "connectivity")
#: the table each command writes (besides summary.json and its figures)
TABLES = {
    "spectra": ["spectra.csv"],
    "orbits": ["orbits.csv"],
    "ibp": ["ibp.csv"],
    "lipschitz": ["lipschitz.csv", "jacobian_norms.csv"],
    "connectivity": ["connectivity.csv", "layers.csv", "model_b_aligned.safetensors"],
}


def argv(analysis: str, files: ArchFiles, out: Path) -> list[str]:
    """The ``nnvitals`` command line of one cell, with small settings (tiny models, few samples)."""
    a, b = (str(p) for p in files.models)
    common = ["--out", str(out), "--no-cache", "-q", "--formats", "svg"]
    data = ["--data", str(files.test)]
    if files.name == "gpt":  # token ids 0..16: the range the inputs lie in
        data_range = ["--data-range", "0,16"]
    else:
        data_range = []
    if analysis == "spectra":
        return ["spectra", a, *common]
    if analysis == "orbits":
        group = ["--group", files.group, "--steps", "4", "--shift-range", "2", "--shift-step", "1"]
        return ["orbits", a, *data, *group, "--max-samples", "8", *common]
    if analysis == "ibp":
        return ["ibp", a, *data, *data_range, "--max-samples", "16", "--eps", "0.01", *common]
    if analysis == "lipschitz":
        small = [
            "--max-samples",
            "8",
            "--mixes",
            "4",
            "--iters",
            "50",
            "--jacobian-iters",
            "10",
            "--no-per-layer",
        ]
        return ["lipschitz", a, *data, *data_range, *small, *common]
    if analysis == "connectivity":
        small = ["--points", "3", "--max-iter", "10", "--batch-size", "256"]
        return [
            "connectivity",
            a,
            b,
            "--data",
            str(files.train),
            "--test-data",
            str(files.test),
            *small,
            *common,
        ]
    raise ValueError(f"unknown analysis {analysis!r}")


@dataclass(frozen=True)
class Outcome:
    """How one CLI run ended: ``ran`` (exit 0), ``refused`` (exit 1 with one ``nnvitals: error:``
    line) or ``bug`` (anything else: exit 3 "internal error", an escaped exception, several lines)."""

    kind: str
    code: int
    stderr: str
    seconds: float

    @property
    def line(self) -> str:
        """The first line of stderr (the reason of a refusal)."""
        return (self.stderr.strip().splitlines() or [""])[0]

    @property
    def reason(self) -> str:
        """Why it did not run: a refusal's line, or the last line of a bug's traceback or message."""
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        if self.kind == "refused" or not lines:
            return self.line
        return lines[-1].strip()


def run_cli(args: list[str]) -> Outcome:
    """Run ``nnvitals ARGS`` in this process (``dashboard.cli.main``), capturing stderr."""
    import contextlib
    import io
    import time
    import traceback

    from dashboard.cli import main

    err, out = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(args)
    except BaseException:  # noqa: BLE001 - an escaped exception is a bug of the CLI: record it
        return Outcome("bug", -1, err.getvalue() + traceback.format_exc(), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    text = err.getvalue()
    lines = text.strip().splitlines()
    if code == 0:
        kind = "ran"
    elif (
        code == 1
        and len(lines) == 1
        and lines[0].startswith("nnvitals: error:")
        and "Traceback" not in text
        and "internal error" not in text
    ):
        kind = "refused"
    else:
        kind = "bug"
    return Outcome(kind, code, text, seconds)


def run_cell(args: list[str]) -> Outcome:
    """One cell without its figures: the analysis the CLI makes from ``args`` (``make_analysis``,
    same parameters), run, and its table, extra tables, summary and ``.nnv`` written to ``--out``
    as the CLI writes them. A refusal (:class:`NNVitalsError`, or a usage error) is then run
    through the whole CLI, whose exit and stderr it returns; anything else is a bug (its traceback).
    Figures take most of a CLI run of these tiny models; :func:`run_cli` writes them too."""
    import time
    import traceback

    from analyses.core.errors import NNVitalsError
    from analyses.core.export import save_bytes, save_result, save_table, write_summary
    from dashboard.cli import COMMANDS, EXTRA_FILES, UsageError, build_parser, make_analysis

    started = time.perf_counter()
    try:
        parsed = build_parser(args[0]).parse_args(args)
        entry = COMMANDS[parsed.command]
        result = make_analysis(entry, parsed).run()
        out = Path(parsed.out)
        out.mkdir(parents=True, exist_ok=True)
        extra = EXTRA_FILES[entry.command](result) if entry.command in EXTRA_FILES else {}
        save_table(result.table, out / f"{entry.stem}.csv")
        for name, value in extra.items():
            (save_bytes if isinstance(value, bytes) else save_table)(value, out / name)
        write_summary(result, out / "summary.json")
        save_result(result, out / f"{entry.stem}.nnv")
    except (NNVitalsError, UsageError):
        return run_cli(args)
    except Exception:  # noqa: BLE001 - anything else is a bug: keep its traceback
        return Outcome("bug", -1, traceback.format_exc(), time.perf_counter() - started)
    return Outcome("ran", 0, "", time.perf_counter() - started)

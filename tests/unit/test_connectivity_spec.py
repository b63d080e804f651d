"""Permutation specs inferred from torch.export graphs: MLP, CNN with BatchNorm, residual nets."""

import pytest
import torch
from torch import nn

from analyses.connectivity.matching import apply_permutation, random_permutation
from analyses.connectivity.spec import check_same_structure, infer_spec
from analyses.core.errors import NNVitalsError
from analyses.zoo.models import DigitsCNN, DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")


class BNCNN(nn.Module):
    """conv-BN-relu x2, max-pool, flatten into a linear layer (block permutation), linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc1, self.fc2 = nn.Linear(12 * 16, 24), nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.inner = nn.Conv2d(c, 6, 1)
        self.back = nn.Conv2d(6, c, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return x + self.back(torch.relu(self.inner(h)))


class ResNet(nn.Module):
    """A stem and two residual blocks adding into one stream, then LayerNorm, mean-pool and a head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 10, 3, padding=1), nn.BatchNorm2d(10)
        self.block1, self.block2 = Block(10), Block(10)
        self.ln, self.fc = nn.LayerNorm(10), nn.Linear(10, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(self.ln(x.mean((2, 3))))


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(64, 8), nn.Linear(64, 8), nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


def _randomise_bn(model):
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


@pytest.mark.parametrize(
    "factory, x_shape, groups",
    [
        (lambda: DigitsMLP(), (16, 1, 8, 8), {"fc1": 256, "fc2": 128}),
        (lambda: DigitsCNN(channels=(8, 16)), (16, 1, 8, 8), {"conv1": 8, "conv2": 16, "fc1": 128}),
        (BNCNN, (16, 1, 8, 8), {"c1": 8, "c2": 12, "fc1": 24}),
        (ResNet, (16, 1, 8, 8), None),
    ],
    ids=["mlp", "cnn", "cnn-bn", "resnet"],
)
def test_permuted_model_computes_the_same_function(factory, x_shape, groups):
    torch.manual_seed(0)
    model = _randomise_bn(factory())
    x = torch.randn(*x_shape)
    spec, _ = infer_spec(model, x[:4])
    if groups is not None:
        assert {g: grp.size for g, grp in spec.groups.items()} == groups
    state = model.state_dict()
    permuted = apply_permutation(state, spec, random_permutation(spec, seed=3))
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    twin = factory()
    twin.load_state_dict(permuted, strict=True)
    twin.eval()
    with torch.no_grad():
        diff = (model(x) - twin(x)).abs().max().item()
    assert diff < 1e-5


def test_flatten_gives_a_block_permutation_of_the_next_linear_layer():
    spec, _ = infer_spec(BNCNN().eval(), torch.randn(2, 1, 8, 8))
    c2 = spec.groups["c2"]
    assert {(a.param, a.axis, a.inner) for a in c2.axes} == {
        ("c2.weight", 0, 1), ("b2.weight", 0, 1), ("b2.bias", 0, 1), ("b2.running_mean", 0, 1),
        ("b2.running_var", 0, 1), ("fc1.weight", 1, 16),
    }  # fmt: skip
    assert spec.has_batchnorm and "b2.running_var" in spec.buffers


def test_residual_stream_shares_one_permutation():
    spec, _ = infer_spec(ResNet().eval(), torch.randn(2, 1, 8, 8))
    stream = [g for g in spec.groups.values() if g.residual]
    assert len(stream) == 1
    axes = {(a.param, a.axis) for a in stream[0].axes}
    # the stem writes the stream; each block reads it (conv input) and adds into it (back output)
    assert {("stem.weight", 0), ("block1.conv.weight", 1), ("block1.back.weight", 0), ("block2.back.weight", 0),
            ("ln.weight", 0), ("fc.weight", 1)} <= axes  # fmt: skip
    # the blocks' inner widths are free permutations of their own
    assert {"block1.conv", "block1.inner", "block2.conv", "block2.inner"} <= set(spec.groups)


def test_output_and_input_axes_are_never_permuted():
    spec, _ = infer_spec(DigitsMLP().eval(), torch.randn(2, 64))
    axes = {(a.param, a.axis) for g in spec.groups.values() for a in g.axes}
    assert ("fc1.weight", 1) not in axes and ("fc3.weight", 0) not in axes and ("fc3.bias", 0) not in axes


def test_unsupported_op_is_named():
    with pytest.raises(NNVitalsError, match=r"aten\.cat.*node 'cat'"):
        infer_spec(CatNet().eval(), torch.randn(2, 64))


def test_structure_mismatch_names_first_differing_parameter():
    a = DigitsMLP(hidden=(32, 16)).state_dict()
    b = DigitsMLP(hidden=(32, 24)).state_dict()
    with pytest.raises(NNVitalsError, match=r"'fc2.weight'.*\(24, 32\) vs \(16, 32\)"):
        check_same_structure(a, b)
    c = DigitsMLP(hidden=(32,)).state_dict()
    with pytest.raises(NNVitalsError, match=r"fc2\.weight|fc3"):
        check_same_structure(a, c)
    check_same_structure(a, DigitsMLP(hidden=(32, 16)).state_dict())

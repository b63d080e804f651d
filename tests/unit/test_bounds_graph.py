"""analyses.bounds.graph: export -> typed steps; forward equals the module; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.bounds.graph import AFFINE_KINDS, abs_part, apply, linear_part, trace
from analyses.core.errors import NNVitalsError


class Zoo(nn.Module):
    """Every supported op once: circular conv + BN, grouped conv, residual add, pools, cat, view."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=2, groups=2, dilation=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.ap = nn.AvgPool2d(3, stride=1, padding=1)
        self.aap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)
        self.act = nn.LeakyReLU(0.1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        h = self.bn2(h + self.c2(h))  # BN after an add: not foldable, stays a step
        h = self.ap(self.pool(h))
        h = torch.cat([self.aap(h), 0.5 * self.aap(h)], 1)
        h = self.drop(h).view(h.size(0), -1)
        return self.fc(self.act(h))


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def zoo_graph():
    torch.manual_seed(0)
    model = _randomise_bn(Zoo())
    return model, trace(model, torch.rand(2, 1, 8, 8))


def test_forward_matches_module_any_batch(zoo_graph):
    model, g = zoo_graph
    x = torch.rand(7, 1, 8, 8)  # traced with 2 samples; view(n, -1) must follow the batch
    torch.testing.assert_close(g.forward(x), model(x), atol=1e-5, rtol=1e-5)


def test_steps_kinds_and_folding(zoo_graph):
    _, g = zoo_graph
    kinds = [s.kind for s in g.steps]
    assert kinds == [
        "conv", "relu", "conv", "add", "batchnorm", "maxpool", "avgpool", "adaptive_avgpool",
        "adaptive_avgpool", "scale", "cat", "reshape", "leaky_relu", "linear",
    ]  # fmt: skip
    conv1 = g.steps[0]
    assert conv1.params["pre_pad"][1] == "circular"  # circular pad folded into the conv
    assert conv1.label == "c1+bn"  # eval BN folded into the conv before it
    add = g.steps[3]
    assert add.inputs == (g.steps[1].name, g.steps[2].name)  # residual by node reference
    assert g.steps[2].params["groups"] == 2 and g.steps[2].params["dilation"] == (2, 2)
    assert g.step(g.output_name).kind == "linear"
    assert [s.position for s in g.steps] == sorted(s.position for s in g.steps)


def test_affine_maps_agree_with_jacobian(zoo_graph):
    """linear_part is the Jacobian; abs_part is |Jacobian| applied to radii (per step)."""
    model, g = zoo_graph
    env = {g.input_name: torch.rand(1, 1, 8, 8, dtype=torch.float64)}
    g64 = g.to("cpu", torch.float64)
    for s in g64.steps:
        xs = [env[i] for i in s.inputs]
        env[s.name] = apply(s, xs)
        if s.kind not in AFFINE_KINDS or len(xs) != 1:
            continue
        jac = torch.autograd.functional.jacobian(lambda z, s=s: apply(s, [z]), xs[0])
        jac = jac.reshape(env[s.name].numel(), xs[0].numel())
        v = torch.randn_like(xs[0])
        torch.testing.assert_close(linear_part(s, [v]).flatten(), jac @ v.flatten())
        r = torch.rand_like(xs[0])
        torch.testing.assert_close(abs_part(s, [r]).flatten(), jac.abs() @ r.flatten())


def test_conv1d_mean_and_standalone_bn():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(3, 5, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm1d(5)
            self.fc = nn.Linear(5, 4)

        def forward(self, x):
            h = self.c(x)
            h = F.relu(h) + self.bn(h)  # conv output used twice: BN stays a step
            return self.fc(F.adaptive_avg_pool1d(h, 1).flatten(1) + h.mean(-1) - 1.0)

    model = _randomise_bn(M())
    g = trace(model, torch.rand(2, 3, 9))
    x = torch.rand(5, 3, 9)
    torch.testing.assert_close(g.forward(x), model(x), atol=1e-5, rtol=1e-5)
    kinds = {s.kind for s in g.steps}
    assert {"conv", "batchnorm", "adaptive_avgpool", "mean", "shift"} <= kinds


def test_unsupported_op_names_op_node_and_position():
    model = nn.Sequential(nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 2))
    with pytest.raises(NNVitalsError) as e:
        trace(model, torch.rand(2, 4))
    msg = str(e.value)
    assert "softplus" in msg and "node 'softplus'" in msg and "position 1 of 3" in msg and "module '1'" in msg


def test_training_mode_restored_and_export_failure_is_clear():
    model = nn.Sequential(nn.Linear(4, 3)).train()
    trace(model, torch.rand(2, 4))
    assert model.training  # trace exports in eval mode and restores the mode
    with pytest.raises(NNVitalsError, match="torch.export could not trace"):
        trace(model, torch.rand(2, 5))  # wrong input width

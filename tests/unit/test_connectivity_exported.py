"""Exported programs rebuilt as layers (analyses.connectivity.exported): same function, same state."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call

from analyses.connectivity.exported import (
    ExportedBatchNorm,
    as_layers,
    check_exported,
    fixed_batch_size,
    is_exported,
)
from analyses.connectivity.path import batchnorm_modules
from analyses.core.errors import NNVitalsError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding="same"),
            bn=nn.BatchNorm2d(4),
            relu=nn.ReLU(),
            dw=nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
            flat=nn.Flatten(),
            drop=nn.Dropout(0.5),
            fc=nn.Linear(4 * 64, 12),
            bn1=nn.BatchNorm1d(12),
            out=nn.Linear(12, 10),
        )  # fmt: skip
    )
    with torch.no_grad():
        for bn in (net.bn, net.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _program(net: nn.Module, fixed: bool = False, decompose: bool = False):
    dyn = None if fixed else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    ep = torch.export.export(net, (torch.rand(4, 1, 8, 8),), dynamic_shapes=dyn)
    return ep.run_decompositions() if decompose else ep


@pytest.mark.parametrize("decompose", [False, True])
def test_layers_compute_the_same_function_with_the_same_state(decompose):
    net = _net()
    gm = _program(net, decompose=decompose).module()
    with pytest.raises(NotImplementedError):
        gm.eval()  # what connectivity tripped over
    layers = as_layers(gm)
    kinds = {n: type(m) for n, m in layers.named_children()}
    assert kinds["conv"] is kinds["dw"] is nn.Conv2d and kinds["fc"] is kinds["out"] is nn.Linear
    assert layers.dw.groups == 4 and layers.dw.bias is None
    assert kinds["bn"] is ExportedBatchNorm and kinds["bn1"] is ExportedBatchNorm
    assert [n for n, _ in batchnorm_modules(layers)] == ["bn", "bn1"]
    assert list(layers.state_dict()) == list(gm.state_dict()) == list(net.state_dict())
    mine, theirs = layers.state_dict(keep_vars=True), gm.state_dict(keep_vars=True)
    assert all(mine[k] is v for k, v in theirs.items())  # shared, not copied
    layers.eval()
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(layers(x), net(x), atol=1e-6)


def test_running_statistics_reach_the_exported_graph():
    """BatchNorm in the exported graph reads its running statistics as inputs: another state with
    other statistics gives other outputs, the same as the module with those statistics."""
    net = _net()
    layers = as_layers(_program(net).module())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["bn.running_mean"] += 1.0
    state["bn.running_var"] *= 3.0
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        got = functional_call(layers, state, (x,))
        ref = functional_call(net, state, (x,))
        assert torch.allclose(got, ref, atol=1e-6)
        assert not torch.allclose(got, layers(x), atol=1e-3)


def test_tied_weights_and_plain_modules_are_left_alone():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x)) + x @ self.fc.weight  # the weight is also used outside fc

    torch.manual_seed(1)
    tied = Tied().eval()
    layers = as_layers(torch.export.export(tied, (torch.rand(3, 8),)).module())
    assert not isinstance(layers.get_submodule("fc"), nn.Linear)
    x = torch.rand(3, 8)
    with torch.no_grad():
        assert torch.allclose(layers(x), tied(x), atol=1e-6)
    plain = nn.Linear(3, 3)
    assert as_layers(plain) is plain and not is_exported(plain)


def test_training_mode_and_fixed_batch_are_found():
    train = _net().train()
    gm = torch.export.export(train, (torch.rand(4, 1, 8, 8),)).module()
    with pytest.raises(NNVitalsError, match=r"^m\.pt2: was exported in training mode .*call model\.eval\(\)"):
        check_exported(gm, "m.pt2")
    check_exported(_program(_net()).module(), "ok.pt2")  # eval export: nothing to say
    assert fixed_batch_size(_program(_net(), fixed=True)) == 4
    assert fixed_batch_size(_program(_net(), fixed=True).module()) == 4
    assert fixed_batch_size(_program(_net())) is None
    assert fixed_batch_size(nn.Linear(2, 2)) is None

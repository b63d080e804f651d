"""Batched path evaluation against a load_state_dict loop; BN reset; REPAIR; barrier definitions."""

import copy

import numpy as np
import pytest
import torch
from test_connectivity_chain import _sequential_reset
from test_connectivity_spec import BNCNN, _randomise_bn
from torch import nn

from analyses.connectivity.barrier import accuracy_barrier, barrier_curve, loss_barrier, loss_barrier_mean
from analyses.connectivity.path import PathEvaluator, interpolate, linear_path, repair_path
from analyses.core.data import Dataset
from analyses.core.errors import NNVitalsError
from analyses.zoo.models import DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        x=torch.randn(n, 1, 8, 8, generator=g),
        y=torch.randint(0, 10, (n,), generator=g),
        name="r",
        classes=10,
    )


def _loop(model, stacked, data, reset=None):
    """Reference: load each point into a copy of the model, one at a time."""
    losses, accs = [], []
    for i in range(next(v.shape[0] for v in stacked.values() if v.is_floating_point())):
        m = copy.deepcopy(model)
        m.load_state_dict({k: (v[i] if v.is_floating_point() else v) for k, v in stacked.items()})
        if reset is not None:  # population statistics, layer by layer (an independent reference)
            m = _sequential_reset(m, m.state_dict(), reset.x)
        m.eval()
        with torch.no_grad():
            out = m(data.x)
        losses.append(float(nn.functional.cross_entropy(out, data.y)))
        accs.append(float((out.argmax(1) == data.y).float().mean()))
    return np.array(losses), np.array(accs)


def test_interpolate_endpoints_and_integers():
    a, b = DigitsMLP(hidden=(8,)).state_dict(), DigitsMLP(hidden=(8,)).state_dict()
    st = linear_path(a, b, [0.0, 0.25, 1.0])
    assert torch.allclose(st["fc1.weight"][0], a["fc1.weight"]) and torch.allclose(
        st["fc1.weight"][2], b["fc1.weight"]
    )
    assert torch.allclose(st["fc1.weight"][1], 0.75 * a["fc1.weight"] + 0.25 * b["fc1.weight"])
    three = interpolate([a, b, a], torch.tensor([[0.2, 0.3, 0.5]]))
    assert torch.allclose(three["fc2.bias"][0], 0.7 * a["fc2.bias"] + 0.3 * b["fc2.bias"], atol=1e-6)


@pytest.mark.parametrize("engine", ["per-point", "vmap"])
@pytest.mark.parametrize("reset", [False, True], ids=["eval", "bn-reset"])
def test_batched_evaluation_matches_a_loop(reset, engine):
    torch.manual_seed(0)
    a, b = _randomise_bn(BNCNN()), _randomise_bn(BNCNN())
    data, train = _data(96, 0), _data(64, 1)
    st = linear_path(a.state_dict(), b.state_dict(), np.linspace(0, 1, 5))
    ev = PathEvaluator(a, batch_size=32, chunk=3, engine=engine)  # chunks over points and samples
    if reset:
        st = ev.reset_batchnorm(st, train)
    loss, acc = ev.evaluate(st, data)
    ref_loss, ref_acc = _loop(
        a, linear_path(a.state_dict(), b.state_dict(), np.linspace(0, 1, 5)), data, train if reset else None
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc, ref_acc)


def test_repair_restores_interpolated_statistics():
    torch.manual_seed(0)
    a, b = DigitsMLP(hidden=(32, 32)), DigitsMLP(hidden=(32, 32))
    x = torch.randn(200, 64)
    sa, sb = a.state_dict(), b.state_dict()
    lams = [0.0, 0.5, 1.0]
    st = repair_path(a, sa, sb, linear_path(sa, sb, lams), lams, {"fc1.weight", "fc2.weight"}, x)
    # at l = 0.5 the first layer's outputs have the mean of the endpoints' means and stds
    h = nn.functional.linear(x, st["fc1.weight"][1], st["fc1.bias"][1])
    ha, hb = a.fc1(x), b.fc1(x)
    torch.testing.assert_close(h.mean(0), (ha.mean(0) + hb.mean(0)) / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        h.std(0, unbiased=False),
        (ha.std(0, unbiased=False) + hb.std(0, unbiased=False)) / 2,
        atol=1e-4,
        rtol=1e-4,
    )
    # endpoints are unchanged up to rounding
    torch.testing.assert_close(st["fc2.weight"][0], sa["fc2.weight"], atol=1e-4, rtol=1e-4)
    with pytest.raises(NNVitalsError, match="no hidden"):
        repair_path(a, sa, sb, linear_path(sa, sb, lams), lams, set(), x)


def test_loss_barrier_against_hand_computed_curves():
    lams = np.linspace(0, 1, 5)  # 0, .25, .5, .75, 1
    loss = np.array([1.0, 2.5, 3.0, 2.0, 2.0])
    # line between endpoints: 1, 1.25, 1.5, 1.75, 2 -> gaps 0, 1.25, 1.5, .25, 0
    np.testing.assert_allclose(barrier_curve(lams, loss), [0, 1.25, 1.5, 0.25, 0])
    assert loss_barrier(lams, loss) == pytest.approx((1.5, 0.5))
    assert loss_barrier_mean(lams, loss) == pytest.approx(3.0 - 1.5)
    convex = np.array([1.0, 0.5, 0.4, 0.8, 2.0])  # below the line: barrier 0 at an endpoint
    assert loss_barrier(lams, convex)[0] == pytest.approx(0.0)
    acc = np.array([0.9, 0.6, 0.5, 0.7, 0.8])
    # error 0.1 .. 0.2 line: .1, .125, .15, .175, .2; error .4, .5, .3 -> gaps .275, .35, .125
    assert accuracy_barrier(lams, acc) == pytest.approx((0.35, 0.5))


def test_barrier_rejects_paths_without_endpoints():
    with pytest.raises(NNVitalsError, match="from 0 to 1"):
        loss_barrier([0.1, 0.5, 1.0], [1, 2, 3])


def test_cross_entropy_against_closed_forms_and_pytorch():
    from analyses.connectivity.path import _cross_entropy

    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(3, 40, 10, generator=g) * 3, torch.randint(0, 10, (40,), generator=g)
    ref = nn.functional.cross_entropy(z.reshape(-1, 10).double(), y.repeat(3), reduction="none").reshape(
        3, 40
    )
    torch.testing.assert_close(_cross_entropy(z, y).double(), ref, rtol=1e-6, atol=1e-6)
    # true class ahead of the 9 others by a gap: loss = log1p(9 exp(-gap)), far below float32's epsilon
    gaps = torch.tensor([1.0, 20.0, 40.0, 80.0])
    confident = torch.zeros(1, 4, 10)
    confident[0, torch.arange(4), 3] = gaps
    want = torch.log1p(9 * torch.exp(-gaps.double()))
    torch.testing.assert_close(
        _cross_entropy(confident, torch.full((4,), 3)).double()[0], want, rtol=1e-5, atol=0
    )
    # confidently wrong: the true class 500 below the others, loss = 500 + log(9 + exp(-500)), no overflow
    wrong = torch.zeros(1, 1, 10)
    wrong[0, 0, 2] = -500.0
    assert _cross_entropy(wrong, torch.tensor([2])).item() == pytest.approx(500 + np.log(9), rel=1e-6)


def test_cross_entropy_with_infinite_or_huge_logits():
    from analyses.connectivity.path import _cross_entropy

    z = torch.tensor([[[0.0, float("-inf"), 1.0], [3e38, -3e38, 0.0], [float("inf"), 0.0, 0.0]]])
    y = torch.tensor([1, 1, 0])
    got = _cross_entropy(z, y).double()
    ref = nn.functional.cross_entropy(z[0].double(), y, reduction="none")
    assert got[0, 0] == float("inf") and got[0, 1] == pytest.approx(float(ref[1]), rel=1e-6)
    assert torch.isnan(got[0, 2]) == torch.isnan(ref[2])

"""Weight and activation matching recover a hidden permutation exactly; merging; speed."""

import time

import pytest
import torch
from test_connectivity_spec import BNCNN, ResNet, _randomise_bn

from analyses.connectivity.matching import (
    activation_matching,
    apply_permutation,
    inverse_permutation,
    merge_many,
    permute_axis,
    random_permutation,
    weight_matching,
)
from analyses.connectivity.spec import infer_spec
from analyses.zoo.models import DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_permute_axis_moves_blocks():
    t = torch.arange(12.0).reshape(2, 6)  # axis 1 holds 3 units of 2 entries
    out = permute_axis(t, 1, torch.tensor([2, 0, 1]), inner=2)
    assert out.tolist() == [[4, 5, 0, 1, 2, 3], [10, 11, 6, 7, 8, 9]]


@pytest.mark.parametrize("factory", [DigitsMLP, BNCNN, ResNet], ids=["mlp", "cnn-bn", "resnet"])
def test_weight_matching_recovers_a_random_permutation_exactly(factory):
    torch.manual_seed(1)
    model = _randomise_bn(factory())
    spec, _ = infer_spec(model, torch.randn(2, 1, 8, 8))
    state = model.state_dict()
    hidden = random_permutation(spec, seed=7)
    shuffled = apply_permutation(state, spec, hidden)
    res = weight_matching(state, shuffled, spec, seed=0)
    expected = inverse_permutation(hidden)
    assert all(torch.equal(res.perms[g], expected[g]) for g in spec.groups)
    back = apply_permutation(shuffled, spec, res.perms)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_activation_matching_recovers_a_random_permutation_exactly():
    torch.manual_seed(2)
    model = _randomise_bn(BNCNN())
    x = torch.randn(256, 1, 8, 8)
    spec, gm = infer_spec(model, x[:128])
    state = model.state_dict()
    hidden = random_permutation(spec, seed=11)
    res = activation_matching(gm, state, apply_permutation(state, spec, hidden), spec, [x[:128], x[128:]])
    expected = inverse_permutation(hidden)
    assert all(torch.equal(res.perms[g], expected[g]) for g in spec.groups)


def test_weight_matching_is_seeded_and_improves_the_objective():
    torch.manual_seed(3)
    a, b = DigitsMLP(hidden=(64, 64)), DigitsMLP(hidden=(64, 64))
    spec, _ = infer_spec(a, torch.randn(2, 64))
    sa, sb = a.state_dict(), b.state_dict()
    r1 = weight_matching(sa, sb, spec, seed=4)
    r2 = weight_matching(sa, sb, spec, seed=4)
    assert all(torch.equal(r1.perms[g], r2.perms[g]) for g in spec.groups)
    assert all(y >= x - 1e-9 for x, y in zip(r1.history, r1.history[1:]))

    def objective(s):
        return sum(float((sa[k] * s[k]).sum()) for k in sa)

    assert objective(apply_permutation(sb, spec, r1.perms)) > objective(sb)


def test_merge_many_of_permuted_copies_is_the_original():
    torch.manual_seed(4)
    model = DigitsMLP(hidden=(32, 16))
    spec, _ = infer_spec(model, torch.randn(2, 64))
    state = model.state_dict()
    copies = [state] + [apply_permutation(state, spec, random_permutation(spec, seed=s)) for s in (1, 2)]
    merged, _ = merge_many(copies, spec, seed=0)
    assert all(torch.allclose(merged[k], state[k], atol=1e-6) for k in state)


def test_weight_matching_width_512_mlp_is_fast():
    """3 hidden layers of width 512: the issue asks for well under 1 s on CPU. The bound here is
    loose because the test machine is shared; the report gives quiet-machine timings."""
    torch.manual_seed(5)
    a, b = DigitsMLP(784, (512, 512, 512), 10), DigitsMLP(784, (512, 512, 512), 10)
    spec, _ = infer_spec(a, torch.randn(2, 784))
    sa, sb = a.state_dict(), b.state_dict()
    t0 = time.process_time()
    res = weight_matching(sa, sb, spec, seed=0)
    cpu = time.process_time() - t0
    assert res.iterations >= 2
    assert cpu < 5.0

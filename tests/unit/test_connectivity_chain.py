"""The stacked engine (LayerChain) against models loaded point by point with load_state_dict."""

import copy

import numpy as np
import pytest
import torch
from test_connectivity_spec import BNCNN, ResNet
from torch import nn

from analyses.connectivity.chain import LayerChain
from analyses.connectivity.path import PathEvaluator, interpolate, linear_path
from analyses.core.data import Dataset
from analyses.core.errors import NNVitalsError
from analyses.zoo.models import DigitsBNCNN, DigitsCNN, DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights and non-trivial BatchNorm statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def _seq1d() -> nn.Module:
    """BatchNorm1d on vectors inside a nested Sequential, Identity and Dropout (eval: identity)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Identity(),
        nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU()),
        nn.Dropout(0.3),
        nn.Linear(48, 10),
    )


def _conv1d() -> nn.Module:
    """Conv1d with stride and groups, BatchNorm1d without affine, LeakyReLU, adaptive pooling."""
    return nn.Sequential(
        nn.Conv1d(1, 6, 5, padding=2, bias=False),
        nn.BatchNorm1d(6, affine=False),
        nn.LeakyReLU(0.1),
        nn.Conv1d(6, 6, 3, stride=2, groups=2),
        nn.AdaptiveAvgPool1d(4),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


MODELS = {
    "mlp": lambda: DigitsMLP(hidden=(32, 16)),
    "cnn-maxpool": lambda: DigitsCNN(channels=(4, 6)),
    "bn-cnn": lambda: DigitsBNCNN(channels=(5, 7)),
    "mlp-bn1d-dropout": _seq1d,
    "conv1d-bn-noaffine": _conv1d,
    "conv5x5-endpoints": lambda: nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10)
    ),  # fan-in 25: the first layer runs once per endpoint
    "bn-first": lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10)),
}


def _input(name: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 1, 64, generator=g)
        if name.startswith("conv1d")
        else torch.randn(n, 1, 8, 8, generator=g)
    )


def _per_point(model: nn.Module, stacked: dict, x: torch.Tensor) -> torch.Tensor:
    """Reference: each point loaded into a copy of the model, eval mode."""
    out = []
    m = copy.deepcopy(model)
    for i in range(next(v.shape[0] for v in stacked.values() if v.is_floating_point())):
        m.load_state_dict({k: (v[i] if v.is_floating_point() else v) for k, v in stacked.items()})
        with torch.no_grad():
            out.append(m.eval()(x.clone()))  # clone: a model may change its input in place
    return torch.stack(out)


def _sequential_reset(model: nn.Module, state: dict, x: torch.Tensor) -> nn.Module:
    """Reference reset: each BatchNorm in turn gets the mean and unbiased variance of its input
    over all of ``x`` in the network whose earlier BatchNorms are already reset (eval mode)."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.eval()
    order = []  # the order a forward pass calls them, which need not be the order they are defined in
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    probes = [
        b.register_forward_pre_hook(lambda mod, _i: order.append(mod) if mod not in order else None)
        for b in bns
    ]
    with torch.no_grad():
        m(x[:1])
    for h in probes:
        h.remove()
    for bn in order:
        seen = {}
        hook = bn.register_forward_pre_hook(lambda _m, inp, seen=seen: seen.setdefault("x", inp[0]))
        with torch.no_grad():
            m(x)
        hook.remove()
        h = seen["x"].transpose(0, 1).reshape(bn.num_features, -1).double()
        bn.running_mean.copy_(h.mean(1))
        bn.running_var.copy_(h.var(1, unbiased=True))
    return m


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mixed", [False, True], ids=["params", "endpoints"])
def test_stacked_outputs_equal_the_models_point_by_point(name, mixed):
    a, b = _randomise(MODELS[name](), 1), _randomise(MODELS[name](), 2)
    chain = LayerChain.of(a)
    assert chain is not None
    lams = torch.tensor([0.0, 0.3, 0.5, 1.0, 1.4], dtype=torch.float64)  # 1.4: beyond B
    coeffs = torch.stack([1 - lams, lams], 1)
    st = interpolate([a.state_dict(), b.state_dict()], coeffs)
    x = _input(name, 37, 0)
    floats = {k: v for k, v in st.items() if v.is_floating_point()}
    with torch.no_grad():
        out = chain(
            x, floats, endpoints=([a.state_dict(), b.state_dict()], coeffs.float()) if mixed else None
        )
    torch.testing.assert_close(out, _per_point(a, st, x), atol=2e-5, rtol=1e-4)


def test_three_endpoint_plane_coefficients():
    models = [_randomise(DigitsMLP(hidden=(24, 24)), s) for s in (1, 2, 3)]
    states = [m.state_dict() for m in models]
    coeffs = torch.tensor([[1.0, 0.0, 0.0], [-0.2, 0.7, 0.5], [0.1, 0.1, 0.8]], dtype=torch.float64)
    st = interpolate(states, coeffs)
    x = _input("mlp", 20, 3)
    chain = LayerChain.of(models[0])
    with torch.no_grad():
        out = chain(
            x, {k: v for k, v in st.items() if v.is_floating_point()}, endpoints=(states, coeffs.float())
        )
    torch.testing.assert_close(out, _per_point(models[0], st, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["bn-cnn", "mlp-bn1d-dropout", "conv1d-bn-noaffine", "bn-first"])
def test_reset_equals_sequential_population_statistics(name):
    a, b = _randomise(MODELS[name](), 1), _randomise(MODELS[name](), 2)
    chain = LayerChain.of(a)
    lams = [0.0, 0.5, 0.8]
    st = linear_path(a.state_dict(), b.state_dict(), lams)
    x = _input(name, 123, 4)
    chunks = [x[:50], x[50:100], x[100:]]  # uneven chunks: the moments are merged exactly
    stats: dict = {}
    with torch.no_grad():
        outs = chain.reset(chunks, {k: v for k, v in st.items() if v.is_floating_point()}, stats)
    logits = torch.cat(outs, dim=1)
    for i in range(len(lams)):
        ref = _sequential_reset(a, {k: (v[i] if v.is_floating_point() else v) for k, v in st.items()}, x)
        for key, value in ref.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(stats[key][i], value, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(logits[i], ref(x), atol=5e-5, rtol=1e-4)


def _dataset(name: str, n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed + 100)
    return Dataset(x=_input(name, n, seed), y=torch.randint(0, 10, (n,), generator=g), name="r", classes=10)


@pytest.mark.parametrize("engine", ["stacked", "per-point", "vmap"])
def test_evaluator_reset_is_self_consistent_and_the_same_for_every_engine(engine):
    """The reset state, loaded into the model, reproduces the curves exactly; every engine
    computes the same population statistics (a train-mode reset over batches would not)."""
    a, b = _randomise(DigitsBNCNN(channels=(5, 7)), 1), _randomise(DigitsBNCNN(channels=(5, 7)), 2)
    train, test = _dataset("bn-cnn", 150, 1), _dataset("bn-cnn", 60, 2)
    lams = np.linspace(0, 1, 4)
    st = linear_path(a.state_dict(), b.state_dict(), lams)
    splits = {"train": train, "test": test}
    lam = torch.as_tensor(lams)
    ev = PathEvaluator(a, batch_size=32, engine=engine)
    curves, reset = ev.evaluate_splits(
        st,
        splits,
        reset_on=train,
        endpoints=([a.state_dict(), b.state_dict()], torch.stack([1 - lam, lam], 1)),
    )
    for name, ds in splits.items():
        logits = _per_point(a, reset, ds.x)
        ce = torch.stack([nn.functional.cross_entropy(z.double(), ds.y) for z in logits]).numpy()
        np.testing.assert_allclose(curves[name][0], ce, rtol=1e-5)
        np.testing.assert_allclose(curves[name][1], (logits.argmax(-1) == ds.y).double().mean(1).numpy())
    for i in range(len(lams)):
        ref = _sequential_reset(
            a, {k: (v[i] if v.is_floating_point() else v) for k, v in st.items()}, train.x
        )
        for key, value in ref.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(reset[key][i], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("engine", ["stacked", "vmap", "per-point"])
def test_engines_agree_without_reset(engine):
    a, b = _randomise(DigitsCNN(channels=(4, 6)), 1), _randomise(DigitsCNN(channels=(4, 6)), 2)
    data = _dataset("cnn", 70, 5)
    st = linear_path(a.state_dict(), b.state_dict(), np.linspace(0, 1, 5))
    ev = PathEvaluator(a, batch_size=16, chunk=2, engine=engine)
    assert ev.engine == engine
    loss, acc = ev.evaluate(st, data)
    logits = _per_point(a, st, data.x)
    ce = torch.stack([nn.functional.cross_entropy(z.double(), data.y) for z in logits]).numpy()
    np.testing.assert_allclose(loss, ce, rtol=1e-5)
    np.testing.assert_allclose(acc, (logits.argmax(-1) == data.y).double().mean(1).numpy())


class _Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


@pytest.mark.parametrize(
    "model",
    [
        BNCNN(),  # its own forward
        nn.Sequential(nn.Flatten(), _Residual(nn.Linear(64, 64)), nn.Linear(64, 10)),
        nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10)),
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(256, 10)
        ),
        nn.Sequential(nn.Flatten(0), nn.Linear(64, 10)),
        nn.Sequential(nn.ReLU(), nn.Flatten()),  # no weight layer
    ],
    ids=["custom-forward", "residual", "layernorm", "circular", "flatten-0", "no-weights"],
)
def test_what_is_not_a_plain_chain_falls_back(model):
    assert LayerChain.of(model) is None
    assert PathEvaluator(model, engine="auto").engine == "per-point"
    with pytest.raises(NNVitalsError, match="engine 'stacked'"):
        PathEvaluator(model, engine="stacked")


def test_unknown_engine_is_one_clear_error():
    with pytest.raises(NNVitalsError, match="engine 'fast'.*auto, stacked, vmap, per-point"):
        PathEvaluator(DigitsMLP(), engine="fast")


def test_a_module_used_twice_runs_twice():
    act = nn.Tanh()
    m = _randomise(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 10)), 1
    )
    chain = LayerChain.of(m)
    assert [type(s.module).__name__ for s in chain.steps].count("Tanh") == 2
    st = linear_path(m.state_dict(), _randomise(copy.deepcopy(m), 2).state_dict(), [0.0, 0.5])
    x = _input("mlp", 9, 0)
    with torch.no_grad():
        out = chain(x, {k: v for k, v in st.items() if v.is_floating_point()})
    torch.testing.assert_close(out, _per_point(m, st, x), atol=2e-5, rtol=1e-4)


def _hooked(kind: str) -> nn.Module:
    m = DigitsMLP(hidden=(16,))
    if kind == "root-pre-hook":
        m.register_forward_pre_hook(lambda _m, inp: (inp[0] * 2,))
    elif kind == "layer-hook":
        m.fc1.register_forward_hook(lambda _m, _i, out: out + 1)
    elif kind == "instance-forward":
        m.fc2.forward = lambda x: x
    elif kind == "pruned":
        with torch.no_grad():  # a pruned weight made with grad cannot be deep-copied
            torch.nn.utils.prune.l1_unstructured(m.fc1, "weight", amount=0.5)
    return m


@pytest.mark.parametrize("kind", ["root-pre-hook", "layer-hook", "instance-forward", "pruned"])
def test_hooks_overrides_and_reparametrised_weights_fall_back(kind):
    """What a chain of steps would silently skip makes the model a non-chain: the per-point
    engine then runs the module itself and gets the reference result."""
    import torch.nn.utils.prune  # noqa: F401

    a, b = _hooked(kind), _hooked(kind)
    assert LayerChain.of(a) is None
    ev = PathEvaluator(a, engine="auto")
    assert ev.engine == "per-point"
    data = _dataset("mlp", 30, 1)
    st = linear_path(a.state_dict(), b.state_dict(), [0.0, 1.0])
    loss, _ = ev.evaluate(st, data)
    ref = []
    for m in (a, b):
        with torch.no_grad():
            ref.append(float(nn.functional.cross_entropy(m.eval()(data.x).double(), data.y)))
    np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_a_global_hook_falls_back():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda _m, _i, out: out)
    try:
        assert LayerChain.of(DigitsMLP()) is None
    finally:
        handle.remove()
    assert LayerChain.of(DigitsMLP()) is not None


def test_streamed_reset_equals_the_fused_one(monkeypatch):
    """Past the memory budget the reset runs one BatchNorm at a time: the same statistics and curves."""
    import analyses.connectivity.path as path_module

    a, b = _randomise(DigitsBNCNN(channels=(5, 7)), 1), _randomise(DigitsBNCNN(channels=(5, 7)), 2)
    train, test = _dataset("bn-cnn", 90, 1), _dataset("bn-cnn", 40, 2)
    st = linear_path(a.state_dict(), b.state_dict(), [0.0, 0.4, 1.0])
    splits = {"train": train, "test": test}
    fused_curves, fused = PathEvaluator(a, batch_size=32).evaluate_splits(st, splits, reset_on=train)
    monkeypatch.setattr(path_module, "_RESET_BUDGET", 1)
    streamed_curves, streamed = PathEvaluator(a, batch_size=32).evaluate_splits(st, splits, reset_on=train)
    for k, v in fused.items():
        torch.testing.assert_close(streamed[k], v, atol=1e-5, rtol=1e-5)
    for name in splits:
        np.testing.assert_allclose(streamed_curves[name][0], fused_curves[name][0], rtol=1e-5)
        np.testing.assert_allclose(streamed_curves[name][1], fused_curves[name][1])


def test_train_mode_reset_keeps_dropout_off():
    """The per-point (train-mode) reset switches only BatchNorm to train mode: deterministic."""
    m = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
    )
    a, b = _randomise(m, 1), _randomise(copy.deepcopy(m), 2)
    train = _dataset("mlp", 64, 1)
    st = linear_path(a.state_dict(), b.state_dict(), [0.0, 0.5])
    for engine in ("per-point", "vmap"):
        ev = PathEvaluator(a, batch_size=16, engine=engine)
        one, two = ev.reset_batchnorm(st, train), ev.reset_batchnorm(st, train)
        torch.testing.assert_close(one["3.running_var"], two["3.running_var"], rtol=0, atol=0)


@pytest.mark.parametrize("engine", ["stacked", "per-point"])
def test_an_in_place_first_layer_leaves_the_data_alone(engine):
    m = nn.Sequential(nn.Flatten(), nn.LeakyReLU(0.1, inplace=True), nn.Linear(64, 10))
    a, b = _randomise(m, 1), _randomise(copy.deepcopy(m), 2)
    data = _dataset("mlp", 20, 3)
    before = data.x.clone()
    st = linear_path(a.state_dict(), b.state_dict(), [0.0, 0.5, 1.0])
    loss, _ = PathEvaluator(a, engine=engine).evaluate(st, data)
    assert torch.equal(data.x, before)
    logits = _per_point(a, st, before.clone())
    ce = torch.stack([nn.functional.cross_entropy(z.double(), data.y) for z in logits]).numpy()
    np.testing.assert_allclose(loss, ce, rtol=1e-5)


@pytest.mark.parametrize("engine", ["stacked", "per-point"])
def test_a_one_sample_training_split_is_one_clear_error(engine):
    a = _randomise(DigitsBNCNN(channels=(3, 4)), 1)
    st = linear_path(a.state_dict(), a.state_dict(), [0.0, 1.0])
    with pytest.raises(NNVitalsError, match="training split has 1 sample; at least 2"):
        PathEvaluator(a, engine=engine).reset_batchnorm(st, _dataset("bn-cnn", 1, 0))


class _Reordered(nn.Module):
    """BatchNorms defined in the opposite order to the one they run in, and a residual add."""

    def __init__(self):
        super().__init__()
        self.bn2, self.conv2 = nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(6, 10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + torch.relu(self.bn2(self.conv2(h)))
        return self.fc(self.drop(h.mean((2, 3))))


@pytest.mark.parametrize("make", [ResNet, _Reordered], ids=["resnet", "reordered-bn"])
@pytest.mark.parametrize("engine", ["per-point", "vmap"])
def test_module_reset_fused_and_streamed_match_the_reference(make, engine, monkeypatch):
    """Models the stacked engine cannot take: hooks reset them point by point, in execution
    order, one pass (fused) or one BatchNorm at a time (streamed): the same statistics."""
    import analyses.connectivity.path as path_module

    a, b = _randomise(make(), 1), _randomise(make(), 2)
    assert LayerChain.of(a) is None
    train, test = _dataset("resnet", 70, 1), _dataset("resnet", 30, 2)
    st = linear_path(a.state_dict(), b.state_dict(), [0.0, 0.6, 1.0])
    splits = {"train": train, "test": test}
    fused_curves, fused = PathEvaluator(a, batch_size=16, engine=engine).evaluate_splits(
        st, splits, reset_on=train
    )
    monkeypatch.setattr(path_module, "_RESET_BUDGET", 1)
    streamed_curves, streamed = PathEvaluator(a, batch_size=16, engine=engine).evaluate_splits(
        st, splits, reset_on=train
    )
    for i in range(3):
        ref = _sequential_reset(
            a, {k: (v[i] if v.is_floating_point() else v) for k, v in st.items()}, train.x
        )
        for key, value in ref.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(fused[key][i], value, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(streamed[key][i], value, atol=1e-5, rtol=1e-4)
    for name in splits:
        np.testing.assert_allclose(streamed_curves[name][0], fused_curves[name][0], rtol=1e-5)
    logits = _per_point(a, fused, test.x)
    ce = torch.stack([nn.functional.cross_entropy(z.double(), test.y) for z in logits]).numpy()
    np.testing.assert_allclose(fused_curves["test"][0], ce, rtol=1e-5)


class _Squeezed(nn.Module):
    """Works on batches only: ``squeeze()`` after global pooling, then BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.c, self.bn, self.fc, self.bn2 = (
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.Linear(6, 10),
            nn.BatchNorm1d(10),
        )

    def forward(self, x):
        return self.bn2(
            self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.c(x))), 1).squeeze())
        )


class _SharedBN(nn.Module):
    """One BatchNorm called twice per forward: measured at its first call."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.bn, self.out = (
            nn.Linear(64, 8),
            nn.Linear(8, 8),
            nn.BatchNorm1d(8),
            nn.Linear(8, 10),
        )

    def forward(self, x):
        h = self.bn(self.l1(x.flatten(1)))
        return self.out(self.bn(3 * self.l2(torch.relu(h)) + 5))


@pytest.mark.parametrize("make", [_Squeezed, _SharedBN], ids=["squeezed", "bn-called-twice"])
def test_module_reset_reports_what_its_state_computes(make, monkeypatch):
    import analyses.connectivity.path as path_module

    a, b = _randomise(make(), 1), _randomise(make(), 2)
    train = _dataset("resnet", 40, 1)
    st = linear_path(a.state_dict(), b.state_dict(), [0.3])
    ev = PathEvaluator(a, batch_size=16, engine="per-point")
    curves, reset = ev.evaluate_splits(st, {"train": train}, reset_on=train)
    logits = _per_point(a, reset, train.x)
    np.testing.assert_allclose(
        curves["train"][0], [float(nn.functional.cross_entropy(logits[0].double(), train.y))], rtol=1e-5
    )
    monkeypatch.setattr(path_module, "_RESET_BUDGET", 1)
    _, streamed = PathEvaluator(a, batch_size=16, engine="per-point").evaluate_splits(
        st, {"train": train}, reset_on=train
    )
    for k, v in reset.items():
        torch.testing.assert_close(streamed[k], v, atol=1e-5, rtol=1e-5)


def test_a_batchnorm_registered_twice_is_not_a_chain():
    bn = nn.BatchNorm1d(16)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), bn, nn.Linear(16, 16), bn, nn.Linear(16, 10))
    assert LayerChain.of(m) is None


def test_a_model_returning_a_tuple_is_one_clear_error():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(64, 10), nn.BatchNorm1d(10)

        def forward(self, x):
            return self.bn(self.fc(x.flatten(1))), x

    a = Pair().eval()
    st = linear_path(a.state_dict(), a.state_dict(), [0.0, 1.0])
    train = _dataset("mlp", 20, 0)
    with pytest.raises(
        NNVitalsError, match="model output is a tuple; expected a \\(batch, classes\\) logits tensor"
    ):
        PathEvaluator(a, engine="per-point").evaluate_splits(st, {"train": train}, reset_on=train)

"""analyses.core.graph: the operator table covers the demo zoo, one normalisation, one place per op."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.operator_schemas import normalize_function

from analyses.bounds.graph import trace
from analyses.bounds.ibp import interval_bounds
from analyses.bounds.lipschitz import upper_bounds
from analyses.connectivity.spec import export_graph, infer_spec
from analyses.core.errors import NNVitalsError
from analyses.core.graph import DEFAULT, node_args, op_key, registered, rule_for
from analyses.core.graph.nodes import _bind
from analyses.core.graph.ops import Elementwise
from analyses.zoo import demo_image_size, demo_names, load_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def _example(name: str) -> torch.Tensor:
    size = demo_image_size(name)
    torch.manual_seed(0)
    return torch.rand(2, 1, size, size)


@pytest.fixture(scope="module")
def zoo_graphs():
    """Every demo model exported both ways: the lifted program (bounds) and its module (connectivity)."""
    out = {}
    for name in demo_names():
        model, x = load_demo(name), _example(name)
        ep = torch.export.export(model, (x,), strict=False)
        out[name] = (model, x, [ep.graph, export_graph(model, x, name).graph])
    return out


def _calls(graphs):
    for g in graphs:
        for n in g.nodes:
            if n.op == "call_function":
                yield n


#: the group-averaged demo rotates its input and sorts logits over the orbit: neither side reads
#: those ops (no rule), and both refuse the model in one line naming the op and the node
REFUSED = {"rot-cnn-c4": {"rot90", "sort"}}


def test_every_op_in_the_demo_zoo_has_a_rule(zoo_graphs):
    seen, missing = set(), {}
    for name, (_, _, graphs) in zoo_graphs.items():
        for n in _calls(graphs):
            seen.add(op_key(n.target))
            if rule_for(n.target) is DEFAULT:
                missing.setdefault(name, set()).add(op_key(n.target))
    assert missing == REFUSED
    assert {"linear", "conv2d", "relu", "max_pool2d", "batch_norm", "sym_size"} <= seen, seen


#: demo models the bounds refuse today, by the op named in the one-line message
BOUNDS_REFUSE = {
    "rot-cnn": "adaptive_max_pool2d",
    "rot-cnn-aug": "adaptive_max_pool2d",
    "rot-cnn-c4": "rot90",
}


def test_every_demo_model_reads_on_both_sides(zoo_graphs):
    for name, (model, x, _) in zoo_graphs.items():
        if name in BOUNDS_REFUSE:
            op = BOUNDS_REFUSE[name]
            with pytest.raises(
                NNVitalsError, match=rf"^model graph: unsupported op aten\.{op}\.default at node '{op}'"
            ):
                trace(model, x)
        else:
            g = trace(model, x)
            torch.testing.assert_close(g.forward(x), model(x), atol=1e-5, rtol=1e-5, msg=name)
        if name in REFUSED:
            with pytest.raises(NNVitalsError, match=rf"^{name}: cannot align this architecture: op aten\."):
                infer_spec(model, x, name)
        else:
            spec, _ = infer_spec(model, x, name)
            assert spec.groups, name


def test_normalisation_equals_the_schema(zoo_graphs):
    checked = 0
    for _, (_, _, graphs) in zoo_graphs.items():
        for n in _calls(graphs):
            schema = getattr(n.target, "_schema", None)
            if schema is None:
                assert node_args(n) == {}
                continue
            got = node_args(n)
            assert list(got) == [a.name for a in schema.arguments]  # the schema's names, in order
            ref = normalize_function(
                n.target, tuple(n.args), dict(n.kwargs), normalize_to_only_use_kwargs=True
            )
            assert list(got.values()) == list(ref.kwargs.values())
            assert got == _bind(schema, n)  # positional, keyword and default arguments by schema
            checked += 1
    assert checked > 50


def test_keyword_and_default_arguments_are_filled_in():
    g = torch.fx.Graph()
    x = g.placeholder("x")
    node = g.call_function(torch.ops.aten.add.Tensor, (x, x), {"alpha": 3})
    assert node_args(node) == {"self": x, "other": x, "alpha": 3}
    node = g.call_function(torch.ops.aten.leaky_relu.default, (x,))
    assert node_args(node) == {"self": x, "negative_slope": 0.01}


# ---------------------------------------------------------------------------- a toy operator


@torch.library.custom_op("nnvtest::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


class Twice(nn.Module):
    def forward(self, x):
        return twice(x)


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), Twice(), nn.ReLU(), nn.Linear(5, 3)).eval()


class TwiceRule(Elementwise):
    """``2 x``: affine, 2-Lipschitz, passes a permutation on (one rule, both sides)."""

    bounds_ops = frozenset({torch.ops.nnvtest.twice.default})
    kinds = ("twice",)
    affine = True

    def step(self, ctx):
        return ctx.make("twice", (ctx.src(ctx.node.args[0]),))

    def linear(self, step, xs):
        return 2 * xs[0]

    def radius(self, step, rs):
        return 2 * rs[0]

    def lipschitz(self, step, norms):
        return 2.0, "2 x"


def test_unknown_op_is_named_by_both_sides():
    model, x = _toy(), torch.rand(2, 6)
    with pytest.raises(NNVitalsError) as e:
        trace(model, x)
    msg = str(e.value)
    assert msg.startswith("model graph: unsupported op nnvtest.twice.default at node 'twice'")
    assert "position 1 of 4" in msg and "module '1'" in msg
    with pytest.raises(NNVitalsError) as e:
        infer_spec(model, x, "toy")
    assert str(e.value).startswith(
        "toy: cannot align this architecture: op nnvtest.twice.default at graph node 'twice' in module '1' "
        "receives permuted hidden units"
    )


def test_registering_a_rule_supports_a_toy_op_on_both_sides():
    model, x = _toy(), torch.rand(4, 6)
    with registered(TwiceRule, "nnvtest::twice") as rule:
        assert rule_for(torch.ops.nnvtest.twice.default) is rule
        g = trace(model, x)
        assert [s.kind for s in g.steps] == ["linear", "twice", "relu", "linear"]
        torch.testing.assert_close(g.forward(x), model(x))
        lo, hi = interval_bounds(g, x - 0.1, x + 0.1)[g.output_name]
        pts = x + 0.1 * (2 * torch.rand(100, *x.shape) - 1)
        ys = model(pts.reshape(-1, 6)).reshape(100, 4, 3)
        assert bool((ys >= lo - 1e-6).all() and (ys <= hi + 1e-6).all())
        up = upper_bounds(g)
        w1, w2 = model[0].weight.detach(), model[3].weight.detach()
        want = 2 * torch.linalg.matrix_norm(w1.double(), 2) * torch.linalg.matrix_norm(w2.double(), 2)
        assert up[g.output_name][2] == pytest.approx(float(want), rel=1e-6)
        spec, _ = infer_spec(model, x, "toy")
        axes = spec.param_axes()
        assert axes["0.weight"] == [(0, "0", 1)] and axes["3.weight"] == [(1, "0", 1)]
    assert rule_for(torch.ops.nnvtest.twice.default) is DEFAULT  # gone after the block
    with pytest.raises(NNVitalsError, match="unsupported op nnvtest.twice.default"):
        trace(model, x)

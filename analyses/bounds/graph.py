"""A model as a list of typed steps, read from its ``torch.export`` graph.

Interval bound propagation and Lipschitz products must walk the *computation*, not a list of
modules: a residual block's addition, a concatenation or a ``x.view(n, -1)`` written in
``forward`` are invisible to ``named_modules()``. :func:`trace` exports the model with an
example input (``torch.export.export``, ATen ops, no decomposition) and turns the graph into
a :class:`Graph`: an ordered list of :class:`Step` objects (op kind, parameters, input node
names), so residual additions and concatenations are handled by node references.

The graph is read through the shared graph layer (:mod:`analyses.core.graph`): the export,
argument normalisation, module paths and shapes, and one rule per operator in its table (the
supported ops and their step kinds are listed in :mod:`analyses.core.graph.ops`; anything else
raises :class:`NNVitalsError` naming the op, the graph node, its position and the module it
came from). A ``pad`` feeding only a conv (circular, reflect, replicate, zero) is folded into it
(``pre_pad``); an eval batch norm directly after a linear/conv step used only by it is folded
into that step.

Nodes computed from weights only (e.g. a weight-norm parametrisation) are constant-folded.
Every op acts per sample (the batch axis stays axis 0), so a graph exported with a batch of 2
runs on any batch size: reshapes keep the traced per-sample shape.

Each step knows three maps used by the kernels (:func:`apply`, :func:`linear_part`,
:func:`abs_part`): for affine steps ``f(x) = A x + b`` they are ``A x + b``, ``A x`` and
``|A| r`` (the IBP radius map, Gowal et al. 2018 eq. 6; reference sheet section 3).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..core.errors import NNVitalsError
from ..core.graph import (
    NodeLoop,
    Step,
    StepContext,
    export_program,
    kind_rule,
    module_path,
    node_args,
    rule_for,
    sample_shape,
    set_mode,
)
from ..core.graph.ops import maxpool

__all__ = [
    "AFFINE_KINDS",
    "NONLINEAR_KINDS",
    "Graph",
    "Step",
    "abs_part",
    "apply",
    "count_params",
    "linear_part",
    "maxpool",
    "numel",
    "set_mode",
    "trace",
]

#: step kinds that are affine maps of their inputs (the built-in rules' kinds; a rule says it itself
#: through ``Rule.affine``, see :func:`is_affine`)
AFFINE_KINDS = frozenset(
    {"linear", "conv", "conv_transpose", "batchnorm", "avgpool", "adaptive_avgpool", "mean", "sum", "pad",
     "upsample", "reshape", "add", "cat", "scale", "shift", "rsub"}
)  # fmt: skip
#: built-in step kinds that are not affine: activations, selections, norms, products
NONLINEAR_KINDS = frozenset(
    {"relu", "leaky_relu", "maxpool", "hardtanh", "tanh", "sigmoid", "gelu", "silu", "hardswish", "layernorm",
     "rmsnorm", "mul", "div"}
)  # fmt: skip


@dataclass
class Graph:
    """An exported model as ordered :class:`Step` objects (see module docstring)."""

    steps: list[Step]
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    #: copies made by :meth:`to`, by (device, dtype): every task of a run asks for the same one
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self):  # Dask ships graphs to workers: without the device copies
        state = dict(self.__dict__)
        state["_copies"] = {}
        return state

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Graph:
        """A copy with every parameter tensor on ``device`` with floating type ``dtype`` (made once
        per device and type, then shared: the weights go to a GPU once per run, not once per task)."""
        key = (str(torch.device(device)), dtype)
        hit = self._copies.get(key)
        if hit is not None:
            return hit
        g = self._copy_to(device, dtype)
        self._copies[key] = g
        return g

    def _copy_to(self, device: torch.device | str, dtype: torch.dtype) -> Graph:
        steps = []
        for s in self.steps:
            p = {
                k: (v.to(device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                for k, v in s.params.items()
            }
            steps.append(replace(s, params=p))
        return replace(self, steps=steps)

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        """Evaluate the graph on a batch ``x`` (returns the output, or step ``upto``'s value)."""
        env = {self.input_name: x}
        for s in self.steps:
            env[s.name] = apply(s, [env[i] for i in s.inputs])
            if s.name == upto:
                return env[s.name]
        return env[self.output_name]

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every step's value on the batch ``x`` (plus the input), in one pass."""
        env = {self.input_name: x}
        for s in self.steps:
            env[s.name] = apply(s, [env[i] for i in s.inputs])
        return env

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {self.input_name: []}
        for s in self.steps:
            out.setdefault(s.name, [])
            for i in s.inputs:
                out.setdefault(i, []).append(s.name)
        return out


# ---------------------------------------------------------------------------- step maps


def apply(step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
    """The step's own function ``f(x)`` on a batch."""
    return kind_rule(step.kind).forward(step, xs)


def linear_part(step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
    """The homogeneous part ``A x`` of an affine step (its Jacobian applied to ``x``)."""
    return kind_rule(step.kind).linear(step, xs)


def abs_part(step: Step, rs: list[torch.Tensor]) -> torch.Tensor:
    """``|A| r`` for non-negative ``r``: how an affine step maps interval radii (section 3)."""
    return kind_rule(step.kind).radius(step, rs)


def is_affine(step: Step) -> bool:
    return kind_rule(step.kind).affine


# ---------------------------------------------------------------------------- tracing


def _export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    return export_program(
        module,
        example,
        purpose=f"it on an input of shape {tuple(example.shape)}",
        hint="bounds need a model torch.export can trace, with the data's input shape",
        eval_mode=True,
        strict=False,
    )


def trace(
    model: nn.Module | torch.export.ExportedProgram, example: torch.Tensor, fold_bn: bool = True
) -> Graph:
    """Export ``model`` with the batch ``example`` and convert its graph into a :class:`Graph`.

    ``fold_bn`` folds an eval-mode batch norm into the linear/conv step before it when that
    step feeds only the batch norm (``W' = diag(s) W``, ``b' = s b + t``).
    """
    example = example.detach()
    if example.shape[0] < 2:  # a batch of 1 would be specialised into reshapes
        example = torch.cat([example, example])
    ep = _export(model, example)
    sig = ep.graph_signature
    tensors: dict[str, Any] = {}
    for ph, name in sig.inputs_to_parameters.items():
        tensors[ph] = ep.state_dict[name]
    for ph, name in sig.inputs_to_buffers.items():
        tensors[ph] = ep.state_dict[name] if name in ep.state_dict else ep.constants[name]
    for ph, name in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
        tensors[ph] = ep.constants[name]
    user_inputs = list(sig.user_inputs)
    if len(user_inputs) != 1:
        raise NNVitalsError(f"model: forward takes {len(user_inputs)} tensor inputs; bounds need exactly one")
    input_name = user_inputs[0]
    ph = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == input_name)
    traced = sample_shape(ph)
    if traced and traced != tuple(example.shape[1:]):
        raise NNVitalsError(
            f"model: the exported program takes inputs of shape {traced} per sample, "
            f"but the data has shape {tuple(example.shape[1:])}"
        )
    outputs = list(sig.user_outputs)
    if len(outputs) != 1 or outputs[0] is None:
        raise NNVitalsError(f"model: forward returns {len(outputs)} outputs; bounds need exactly one tensor")

    reader = _Reader(
        ep.graph, {k: v.detach() for k, v in tensors.items()}, input_name, tuple(example.shape[1:])
    )
    reader.run()
    output_name = reader.output_name
    if output_name not in reader.by_name and output_name != input_name:
        raise NNVitalsError("model graph: the output does not depend on the input")
    graph = Graph(reader.steps, input_name, output_name, tuple(example.shape[1:]))
    graph = _fold_pads(graph)
    if fold_bn:
        graph = _fold_batchnorm(graph)
    return graph


class _Reader(NodeLoop):
    """The graph's call nodes as :class:`Step` objects, through the operator table: nodes computed
    from weights only are folded into constants, identity ops become aliases of their input."""

    def __init__(self, graph: torch.fx.Graph, const: dict[str, Any], input_name: str, x_shape: tuple):
        super().__init__(graph)
        self.const = const
        self.alias: dict[str, str] = {}  # identity nodes -> their source
        self.steps: list[Step] = []
        self.by_name: dict[str, Step] = {}
        self.input_name, self.x_shape = input_name, x_shape
        self.output_name = ""

    def src(self, a: Any) -> str:
        return self.alias.get(a.name, a.name)

    def where(self, node: torch.fx.Node) -> str:
        mod = module_path(node)
        return f"node {node.name!r} (position {self.position} of {self.total}{', module ' + repr(mod) if mod else ''})"

    def _value(self, a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: self.const[self.src(n)])

    def call_function(self, node: torch.fx.Node) -> None:
        tgt, const = node.target, self.const
        deps = list(node.all_input_nodes)
        if deps and all(self.src(d) in const for d in deps):
            # computed from weights only: fold it now
            with torch.no_grad():
                const[node.name] = tgt(*self._value(node.args), **self._value(node.kwargs))
            return
        if not deps:
            with torch.no_grad():
                const[node.name] = tgt(*node.args, **node.kwargs)
            return
        val = node.meta.get("val")
        if isinstance(val, torch.SymInt | torch.SymFloat | torch.SymBool) or (
            not isinstance(tgt, torch._ops.OpOverload) and tgt is not operator.getitem
        ):
            # shape arithmetic on (symbolic) sizes, e.g. ``sym_size(x, 0) * 4`` for a view: the
            # steps take their shapes from the traced metadata; the value the export traced is
            # kept, so a constant expanded to the batch (a class token) still folds
            if not isinstance(val, torch.Tensor):
                hint = _hint(val)
                if hint is not None:
                    const[node.name] = hint
                return
        if tgt is operator.getitem:
            parent, idx = node.args
            if idx != 0 and not node.users:  # e.g. a decomposed batch norm's unused saved statistics
                return
            if idx != 0 or self.src(parent) not in self.by_name:
                raise NNVitalsError(f"model graph: unsupported use of output {idx} of {self.where(node)}")
            self.alias[node.name] = self.src(parent)
            return
        fields = dict(
            name=node.name, position=self.position, module=module_path(node), op=str(tgt),
            out_shape=sample_shape(node),
        )  # fmt: skip
        ctx = StepContext(
            node=node,
            args=node_args(node),
            src=self.src,
            const=const,
            tensor_in=[self.src(n) for n in deps if self.src(n) not in const],
            where=self.where(node),
            fields=fields,
        )
        rule = rule_for(tgt)
        if not rule.bounds_supported(tgt):
            raise ctx.unsupported()
        out = rule.step(ctx)
        if out is None:
            return
        if isinstance(out, str):
            self.alias[node.name] = out
            return
        first = out.inputs[0]
        out.in_shape = self.x_shape if first == self.input_name else self.by_name[first].out_shape
        self.steps.append(out)
        self.by_name[out.name] = out

    def output(self, node: torch.fx.Node) -> None:
        out_arg = node.args[0][0] if isinstance(node.args[0], tuple | list) else node.args[0]
        self.output_name = self.src(out_arg)


def _hint(v: Any) -> Any:
    """The value a (symbolic) size had in the traced example, or None when it has none."""
    if isinstance(v, int | float | bool):
        return v
    node = getattr(v, "node", None)
    hint = getattr(node, "hint", None)
    return hint if isinstance(hint, int | float | bool) else None


def _fold_pads(graph: Graph) -> Graph:
    """Merge a ``pad`` feeding only a conv into that conv (``pre_pad``): circular convs."""
    by = {s.name: s for s in graph.steps}
    cons = graph.consumers()
    drop = set()
    for s in graph.steps:
        if s.kind != "conv":
            continue
        src = s.inputs[0]
        p = by.get(src)
        if p is None or p.kind != "pad" or len(cons[src]) != 1 or src == graph.output_name:
            continue
        s.params["pre_pad"] = p.params["pad"]
        s.inputs = p.inputs
        s.in_shape = p.in_shape
        drop.add(src)
    return replace(graph, steps=[s for s in graph.steps if s.name not in drop])


def _fold_batchnorm(graph: Graph) -> Graph:
    """Fold eval batch norms into the linear/conv step before them (reference sheet section 3)."""
    by = {s.name: s for s in graph.steps}
    cons = graph.consumers()
    drop: dict[str, str] = {}
    for s in graph.steps:
        if s.kind != "batchnorm":
            continue
        prev = by.get(s.inputs[0])
        if prev is None or prev.kind not in ("linear", "conv") or len(cons[prev.name]) != 1:
            continue
        if prev.name == graph.output_name:
            continue
        sc, sh = s.params["scale"], s.params["shift"]
        w = prev.params["weight"]
        b = prev.params.get("bias")
        view = (-1,) + (1,) * (w.ndim - 1)
        prev.params["weight"] = w * sc.reshape(view)
        prev.params["bias"] = (b * sc if b is not None else 0.0) + sh
        prev.params["folded_bn"] = s.label
        prev.module = f"{prev.label}+{s.label}"
        drop[s.name] = prev.name
    steps = []
    for s in graph.steps:
        if s.name in drop:
            # the folded conv takes the batch norm's place (and name) in the graph
            prev = by[drop[s.name]]
            prev.out_shape = s.out_shape
            continue
        s.inputs = tuple(drop.get(i, i) for i in s.inputs)
        steps.append(s)
    out = drop.get(graph.output_name, graph.output_name)
    return replace(graph, steps=steps, output_name=out)


def count_params(step: Step) -> int:
    return sum(v.numel() for v in step.params.values() if isinstance(v, torch.Tensor))


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape)) if shape else 1

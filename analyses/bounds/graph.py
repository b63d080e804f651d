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
Every step acts per sample, and every value the kernels see is *batch-first* (axis 0 the batch),
so per-sample reductions, tangents and local bounds need no layout of their own. Where the model
moves the batch (``nn.MultiheadAttention`` transposes it to axis 1, merges it with the heads into
``(L, B * H, d)`` and with the sequence into ``(L * B, d)``), the reader follows it through the
program's symbolic batch size: each value's *layout* ``(axis, outer, inner)`` says which axis holds
the batch and how it is merged (``outer * B * inner`` entries, the batch in the middle; a reshape
keeps the batch's flat stride). A value's batch-first form takes the batch factor to the front
(:func:`~analyses.core.graph.ops_attention.to_canonical`); shape steps of moved values run in the
model's own layout between the two forms (kind ``relayout``), and other steps of such values run
on the batch-first form with their axis arguments renumbered (softmax, norms, means; steps on
trailing axes, such as linear layers and attention, need none), or are refused when they act on
the batch's axis. A model exported with a fixed batch size keeps the batch on axis 0 (a reshape
that moves it is refused: export with a dynamic batch). Graphs of live modules are exported with a
dynamic batch axis (when the model allows it), so a graph traced on a batch of 2 runs on any batch
size.

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
from ..core.graph import ops_attention as oa
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

#: shape steps: where the batch is not axis 0 they run in the model's own layout (``relayout``)
_SHAPE_KINDS = frozenset({"reshape", "reshape_any", "transpose", "select", "chunk", "stack", "expand"})
#: steps that act on trailing axes only: a batch on an earlier axis passes through them
_TRAILING_KINDS = frozenset(
    {"linear", "matmul", "matmul_const", "sdpa", "add", "mul", "div", "scale", "shift", "rsub", "masked_fill"}
)


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
        dynamic_batch=True,
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
        #: batch layouts of the steps whose batch is not plain axis 0 (standard when absent)
        self.lay: dict[str, tuple[int, int, int]] = {}
        #: the stand-in of the symbolic batch size (None: a fixed batch, every step batch-first)
        self.batch: int | None = None
        ph = next((n for n in graph.nodes if n.op == "placeholder" and n.name == input_name), None)
        val = ph.meta.get("val") if ph is not None else None
        if isinstance(val, torch.Tensor) and val.ndim and not isinstance(val.shape[0], int):
            if getattr(val.shape[0].node.expr, "free_symbols", None):  # not specialised by the export
                self.batch = oa._shape(ph)[0]

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
            pstep = self.by_name.get(self.src(parent))
            if pstep is None:
                raise NNVitalsError(f"model graph: unsupported use of output {idx} of {self.where(node)}")
            if idx == 0:
                self.alias[node.name] = pstep.name
                return
            inner = pstep.params["inner"] if pstep.kind == "relayout" else pstep
            item = getattr(kind_rule(inner.kind), "item", None)
            if item is None:
                raise NNVitalsError(f"model graph: unsupported use of output {idx} of {self.where(node)}")
            st = item(inner, int(idx), node.name)
            st.out_shape = sample_shape(node)
            if pstep.kind == "relayout":  # in the parent's input layouts
                lin = pstep.params["lin"]
                lout = self.lay[node.name] = self._layout_of(node, lin[0], "chunk")
                full = _whole_shape(node)
                st.out_shape = oa.canonical_shape(
                    [d // self.batch if d % self.batch == 0 else d for d in full], lout
                )
                st = self._wrap(st, lin, lout)
            st.in_shape = pstep.in_shape
            self._add(st)
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
        if self.batch is not None:
            out = self._relayout(ctx, out)
        elif out.kind == "reshape_any" and _keeps_axis0(node):  # a fixed batch: the batch is axis 0
            out.params["shape"] = [-1] + list(out.params["shape"][1:])
        elif out.kind == "reshape_any":
            raise ctx.error(
                "reshape across the batch axis", " (export the model with a dynamic batch axis to follow it)"
            )
        first = out.inputs[0]
        out.in_shape = self.x_shape if first == self.input_name else self.by_name[first].out_shape
        self._add(out)

    def _add(self, step: Step) -> None:
        self.steps.append(step)
        self.by_name[step.name] = step

    # ------------------------------------------------------------------ batch layouts
    def _layout_of(self, node: torch.fx.Node, lay_in: tuple, kind: str, in_node: Any = None) -> tuple:
        """The batch layout ``(axis, outer, inner)`` of a node's value (see
        :data:`~analyses.core.graph.ops_attention.STANDARD`), from its traced shape (the batch size is
        a symbol: the one axis its stand-in divides) and its input's layout ``lay_in``: a reshape
        keeps the batch's flat stride; any other step keeps its outer and inner factors."""
        shape = _whole_shape(node)
        where = self.where(node)
        if shape is None:
            raise NNVitalsError(f"model graph: no traced shape at {where}")
        axes = [k for k, d in enumerate(shape) if d % self.batch == 0]
        if len(axes) != 1:
            what = "loses the batch axis" if not axes else "spreads the batch over several axes"
            raise NNVitalsError(f"model graph: the step {what} at {where}")
        k = axes[0]
        ax, o, i = lay_in
        if kind in ("reshape", "reshape_any") and in_node is not None:
            xs = _whole_shape(in_node)
            stride = i * math.prod(xs[ax + 1 :])
            tail = math.prod(shape[k + 1 :])
            if stride % tail or shape[k] % (self.batch * (stride // tail)):
                raise NNVitalsError(f"model graph: a reshape splits the batch axis at {where}")
            i = stride // tail
            o = shape[k] // (self.batch * i)
        elif shape[k] != self.batch * o * i:
            raise NNVitalsError(f"model graph: the step changes the axis that holds the batch at {where}")
        return (k, o, i)

    def _wrap(self, step: Step, lin: list, lout: tuple) -> Step:
        p = dict(inner=step, lin=tuple(lin), lout=lout)
        return Step(
            name=step.name, kind="relayout", inputs=step.inputs, params=p, out_shape=step.out_shape,
            position=step.position, module=step.module, op=step.op,
        )  # fmt: skip

    def _relayout(self, ctx: StepContext, step: Step) -> Step:
        """Keep every value batch-first (module docstring): a shape step of values whose batch is
        elsewhere is wrapped (kind ``relayout``); any other step of such values runs on their
        batch-first form, its axis arguments renumbered, or is refused."""
        node = ctx.node
        lin = [self.lay.get(i, oa.STANDARD) for i in step.inputs]
        first = next((a for a in node.all_input_nodes if self.src(a) == step.inputs[0]), None)
        if step.kind in _SHAPE_KINDS:
            lout = self._layout_of(node, lin[0], step.kind, first)
        else:
            lout = self._layout_of(node, lin[0], step.kind)
        self.lay[step.name] = lout
        if all(lay == oa.STANDARD for lay in lin) and lout == oa.STANDARD:
            return step
        full = _whole_shape(node)
        canon = oa.canonical_shape([d // self.batch if d % self.batch == 0 else d for d in full], lout)
        if step.kind in _SHAPE_KINDS:
            if step.kind == "reshape":
                step = oa.reshape_step(ctx)
            step.out_shape = canon
            return self._wrap(step, lin, lout)
        if any(lay != lin[0] for lay in lin):
            raise ctx.error("an op of tensors whose batch axes differ")
        ax, o, i = lin[0]
        nd = len(_whole_shape(first)) if first is not None else len(full)
        kept = o * i > 1

        def axis(a: int) -> int:  # a model axis -> its batch-first axis
            a %= nd
            if a == ax:
                raise ctx.error(f"{step.kind} over the axis that holds the batch")
            return a + 1 if a < ax or kept else a

        p = step.params
        if step.kind == "softmax":
            p["dim"] = axis(p["dim"])
        elif step.kind in ("layernorm", "rmsnorm", "mean", "sum"):
            p["dims"] = tuple(axis(d) for d in p["dims"])
            if step.kind in ("layernorm", "rmsnorm") and any(a < ax for a in range(nd - len(p["dims"]), nd)):
                raise ctx.error(f"{step.kind} over the axis that holds the batch")
        elif step.kind == "cat" and not p.get("const_pos"):
            p["dim"] = axis(p["dim"])
        elif step.kind in ("matmul", "matmul_const", "sdpa") and ax >= nd - 2:
            raise ctx.error(f"{step.kind} over the axis that holds the batch")
        elif step.kind == "masked_fill" and _rank(p["mask"]) > nd - 1 - ax:
            raise ctx.error("masked_fill with a mask over the axis that holds the batch")
        elif step.kind in ("scale", "shift", "rsub"):
            v = p.get("value")
            if isinstance(v, torch.Tensor) and _rank(v) > nd - 1 - ax:
                raise ctx.error(f"{step.kind} by a constant over the axis that holds the batch")
        elif step.kind not in _TRAILING_KINDS and not kind_rule(step.kind).elementwise:
            raise ctx.error(f"{step.kind} of a tensor whose batch is on axis {ax}")
        step.out_shape = canon
        return step

    def output(self, node: torch.fx.Node) -> None:
        out_arg = node.args[0][0] if isinstance(node.args[0], tuple | list) else node.args[0]
        self.output_name = self.src(out_arg)
        if self.lay.get(self.output_name, oa.STANDARD) != oa.STANDARD:
            raise NNVitalsError("model graph: the output's batch is not its axis 0")


def _rank(t: torch.Tensor) -> int:
    """The axes a broadcast constant really has (its leading axes of size 1 left out)."""
    shape = list(t.shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    return len(shape)


def _keeps_axis0(node: torch.fx.Node) -> bool:
    """Whether a reshape's input and output have the same axis 0 (a fixed batch stays there)."""
    x = node.all_input_nodes[0].meta.get("val") if node.all_input_nodes else None
    y = node.meta.get("val")
    return (
        isinstance(x, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and x.ndim
        and y.ndim
        and x.shape[0] == y.shape[0]
    )


def _whole_shape(node: Any) -> list[int] | None:
    """A node's whole shape, its symbolic sizes as stand-ins (the first output's for a node of several)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, list | tuple) and val:
        val = val[0]
    return oa._shape_of(val)


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

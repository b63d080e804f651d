"""A model as a list of typed steps, read from its ``torch.export`` graph.

Interval bound propagation and Lipschitz products must walk the *computation*, not a list of
modules: a residual block's addition, a concatenation or a ``x.view(n, -1)`` written in
``forward`` are invisible to ``named_modules()``. :func:`trace` exports the model with an
example input (``torch.export.export``, ATen ops, no decomposition) and turns the graph into
a :class:`Graph`: an ordered list of :class:`Step` objects (op kind, parameters, input node
names), so residual additions and concatenations are handled by node references.

Supported ops (anything else raises :class:`NNVitalsError` naming the op, the graph node, its
position and the module it came from):

========================  ==========================================================
kind                      ATen ops
========================  ==========================================================
``linear``                ``linear``; ``addmm`` / ``mm`` with a constant weight (decomposed)
``conv``                  ``conv1d``, ``conv2d``, ``convolution`` (not transposed), any
                          stride / padding / dilation / groups; a preceding ``pad``
                          (circular, reflect, replicate, zero) used only by the conv is
                          folded into it (``pre_pad``)
``batchnorm``             ``batch_norm`` / ``_native_batch_norm_legit_no_training`` in
                          eval mode, folded into a per-channel affine map
                          ``x * gamma / sqrt(var + eps) + shift`` and, when it directly
                          follows a linear/conv step used only by it, into that step
``relu``, ``leaky_relu``  ``relu``, ``leaky_relu``
``maxpool``, ``avgpool``  ``max_pool1d/2d`` (+ ``_with_indices``), ``avg_pool1d/2d``
``adaptive_avgpool``      ``adaptive_avg_pool1d/2d``; ``mean`` over non-batch dims
``reshape``               ``flatten``, ``view``, ``reshape``, ``squeeze``, ``unsqueeze``
``add``                   ``add`` / ``sub`` of two tensors (residual connections)
``cat``                   ``cat`` along a non-batch dim
``scale``, ``shift``      ``mul`` / ``div`` / ``add`` / ``sub`` with a Python number
``pad``                   a ``pad`` that is not folded into a conv
identity                  ``dropout`` (eval), ``clone``, ``contiguous``, ``alias``,
                          ``detach`` (dropped from the step list)
========================  ==========================================================

Nodes computed from weights only (e.g. a weight-norm parametrisation) are constant-folded.
Every op acts per sample (the batch axis stays axis 0), so a graph exported with a batch of 2
runs on any batch size: reshapes keep the traced per-sample shape.

Each step knows three maps used by the kernels (:func:`affine`, :func:`linear_part`,
:func:`abs_part`): for affine steps ``f(x) = A x + b`` they are ``A x + b``, ``A x`` and
``|A| r`` (the IBP radius map, Gowal et al. 2018 eq. 6; reference sheet section 3).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import NNVitalsError

#: step kinds that are affine maps of their inputs
AFFINE_KINDS = frozenset(
    {"linear", "conv", "batchnorm", "avgpool", "adaptive_avgpool", "mean", "pad", "reshape", "add", "cat",
     "scale", "shift"}
)  # fmt: skip
#: step kinds that are piecewise-linear, monotone activations / selections
NONLINEAR_KINDS = frozenset({"relu", "leaky_relu", "maxpool"})

_aten = torch.ops.aten
_IDENTITY = {
    _aten.dropout.default, _aten.clone.default, _aten.contiguous.default, _aten.alias.default,
    _aten.detach.default, _aten.lift_fresh_copy.default,
}  # fmt: skip
_RESHAPE = {
    _aten.flatten.using_ints, _aten.view.default, _aten.reshape.default, _aten._unsafe_view.default,
    _aten.squeeze.dim, _aten.squeeze.dims, _aten.unsqueeze.default,
}  # fmt: skip


@dataclass
class Step:
    """One node of the model's graph as the kernels see it.

    ``inputs`` are names of earlier steps (or the graph input); ``params`` holds tensors
    (``weight``, ``bias``, ``scale``, ``shift``) and op settings; ``in_shape``/``out_shape``
    are per-sample shapes (batch axis removed); ``position`` is the node's index among the
    graph's call nodes; ``module`` is the owning module path (``layer1.0.conv1``) when known.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    position: int = 0
    module: str = ""
    op: str = ""

    @property
    def label(self) -> str:
        """Display name: the module path when known, else the node name."""
        return self.module or self.name


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


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: dict[str, Any]) -> torch.Tensor:
    if p.get("pre_pad") is not None:
        pads, mode, value = p["pre_pad"]
        x = F.pad(x, pads, mode=mode, value=value if mode == "constant" else None)
    fn = F.conv1d if w.ndim == 3 else F.conv2d
    return fn(x, w, b, p["stride"], p["padding"], p["dilation"], p["groups"])


def _pad(x: torch.Tensor, p: dict[str, Any], linear: bool) -> torch.Tensor:
    pads, mode, value = p["pad"]
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=0.0 if linear else value)
    return F.pad(x, pads, mode=mode)


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector shaped to broadcast against an (N, C, ...) tensor of ``ndim`` dims."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _pool(step: Step, x: torch.Tensor) -> torch.Tensor:
    p = step.params
    if step.kind == "avgpool":
        fn = F.avg_pool1d if p["dims"] == 1 else F.avg_pool2d
        kw = dict(ceil_mode=p["ceil_mode"], count_include_pad=p["count_include_pad"])
        if p["dims"] == 2:
            kw["divisor_override"] = p["divisor_override"]
        return fn(x, p["kernel"], p["stride"], p["padding"], **kw)
    if step.kind == "adaptive_avgpool":
        fn = F.adaptive_avg_pool1d if p["dims"] == 1 else F.adaptive_avg_pool2d
        return fn(x, p["output_size"])
    if step.kind == "mean":
        return x.mean(dim=p["dims"], keepdim=p["keepdim"])
    raise AssertionError(step.kind)


def maxpool(step: Step, x: torch.Tensor, return_indices: bool = False):
    p = step.params
    fn = F.max_pool1d if p["dims"] == 1 else F.max_pool2d
    return fn(x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], return_indices)


def _reshape(step: Step, x: torch.Tensor) -> torch.Tensor:
    return x.reshape((x.shape[0],) + tuple(step.out_shape))


def apply(step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
    """The step's own function ``f(x)`` on a batch."""
    k, p = step.kind, step.params
    if k in ("relu",):
        return F.relu(xs[0])
    if k == "leaky_relu":
        return F.leaky_relu(xs[0], p["slope"])
    if k == "maxpool":
        return maxpool(step, xs[0])
    if k == "linear":
        return F.linear(xs[0], p["weight"], p.get("bias"))
    if k == "conv":
        return _conv(xs[0], p["weight"], p.get("bias"), p)
    if k == "batchnorm":
        x = xs[0]
        return x * _channel(p["scale"], x.ndim) + _channel(p["shift"], x.ndim)
    if k == "shift":
        return xs[0] + p["value"]
    if k == "pad":
        return _pad(xs[0], p, linear=False)
    return linear_part(step, xs)


def linear_part(step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
    """The homogeneous part ``A x`` of an affine step (its Jacobian applied to ``x``)."""
    k, p = step.kind, step.params
    if k == "linear":
        return F.linear(xs[0], p["weight"])
    if k == "conv":
        return _conv(xs[0], p["weight"], None, p)
    if k == "batchnorm":
        return xs[0] * _channel(p["scale"], xs[0].ndim)
    if k in ("avgpool", "adaptive_avgpool", "mean"):
        return _pool(step, xs[0])
    if k == "pad":
        return _pad(xs[0], p, linear=True)
    if k == "reshape":
        return _reshape(step, xs[0])
    if k == "add":
        return xs[0] + p["alpha"] * xs[1]
    if k == "cat":
        return torch.cat(xs, dim=p["dim"])
    if k == "scale":
        return xs[0] * p["value"]
    if k == "shift":
        return xs[0]
    raise AssertionError(f"{k} is not affine")


def abs_part(step: Step, rs: list[torch.Tensor]) -> torch.Tensor:
    """``|A| r`` for non-negative ``r``: how an affine step maps interval radii (section 3)."""
    k, p = step.kind, step.params
    if k == "linear":
        return F.linear(rs[0], p["weight"].abs())
    if k == "conv":
        return _conv(rs[0], p["weight"].abs(), None, p)
    if k == "batchnorm":
        return rs[0] * _channel(p["scale"].abs(), rs[0].ndim)
    if k == "add":
        return rs[0] + abs(p["alpha"]) * rs[1]
    if k == "scale":
        return rs[0] * abs(p["value"])
    # pooling averages, pads, reshapes, concatenations: non-negative selections / averages
    return linear_part(step, rs)


# ---------------------------------------------------------------------------- tracing


def _schema_args(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        else:
            out[a.name] = a.default_value if a.has_default_value() else None
    return out


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    # export writes "L['self'].layer1.0" style paths in some versions
    return str(path).replace("L['self'].", "").replace("L['self']", "")


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return ()
    return tuple(int(d) for d in val.shape[1:])


def _ints(v: Any, n: int) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(t) for t in v)
    return v * n if len(v) == 1 and n > 1 else v


def set_mode(module: nn.Module, training: bool) -> None:
    """``module.train(training)``; a no-op for what ``ExportedProgram.module()`` returns, whose
    ``train``/``eval`` raise: its training flags are baked into its graph."""
    try:
        module.train(training)
    except NotImplementedError:
        pass


def _export(module: nn.Module, example: torch.Tensor):
    was_training = module.training
    set_mode(module, False)
    try:
        return torch.export.export(module, (example,), strict=False)
    except NNVitalsError:
        raise
    except Exception as e:  # noqa: BLE001 - any export failure is the model's, report it
        msg = " ".join(str(e).split())[:300]
        raise NNVitalsError(
            f"model: torch.export could not trace it on an input of shape {tuple(example.shape)} "
            f"({type(e).__name__}: {msg})",
            hint="bounds need a model torch.export can trace, with the data's input shape",
        ) from None
    finally:
        set_mode(module, was_training)


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
    ep = model if isinstance(model, torch.export.ExportedProgram) else _export(model, example)
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
    traced = _shape(ph)
    if traced and traced != tuple(example.shape[1:]):
        raise NNVitalsError(
            f"model: the exported program takes inputs of shape {traced} per sample, "
            f"but the data has shape {tuple(example.shape[1:])}"
        )
    outputs = list(sig.user_outputs)
    if len(outputs) != 1 or outputs[0] is None:
        raise NNVitalsError(f"model: forward returns {len(outputs)} outputs; bounds need exactly one tensor")

    nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
    total = len(nodes)
    alias: dict[str, str] = {}  # identity nodes -> their source
    const: dict[str, Any] = {k: v.detach() for k, v in tensors.items()}
    steps: list[Step] = []
    by_name: dict[str, Step] = {}
    users = {n.name: [u.name for u in n.users] for n in ep.graph.nodes}

    def src(a: Any) -> str:
        name = a.name
        return alias.get(name, name)

    def where(node, pos) -> str:
        mod = _module_path(node)
        return f"node {node.name!r} (position {pos} of {total}{', module ' + repr(mod) if mod else ''})"

    def value(a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: const[alias.get(n.name, n.name)])

    for pos, node in enumerate(nodes):
        tgt = node.target
        args = node.args
        deps = [a for a in node.all_input_nodes]
        if deps and all(alias.get(d.name, d.name) in const for d in deps):
            # computed from weights only: fold it now
            with torch.no_grad():
                const[node.name] = tgt(*value(node.args), **value(node.kwargs))
            continue
        if not deps:
            with torch.no_grad():
                const[node.name] = tgt(*node.args, **node.kwargs)
            continue
        if tgt is operator.getitem:
            parent, idx = args
            if idx != 0 and not node.users:  # e.g. a decomposed batch norm's unused saved statistics
                continue
            if idx != 0 or src(parent) not in by_name:
                raise NNVitalsError(f"model graph: unsupported use of output {idx} of {where(node, pos)}")
            alias[node.name] = src(parent)
            continue
        if tgt is _aten.sym_size.int:  # the (dynamic) batch size a decomposed view takes: shapes
            continue  # come from the traced metadata, per sample
        if tgt in _IDENTITY:
            a = _schema_args(node)
            if tgt is _aten.dropout.default and a.get("train"):
                raise NNVitalsError(f"model graph: dropout in training mode at {where(node, pos)}")
            alias[node.name] = src(args[0])
            continue
        mk = dict(
            name=node.name, position=pos, module=_module_path(node), op=str(tgt), out_shape=_shape(node)
        )
        step = _make_step(node, tgt, mk, src, const, where(node, pos))
        first = step.inputs[0]
        step.in_shape = input_shape_of(first, by_name, tuple(example.shape[1:]), input_name)
        steps.append(step)
        by_name[step.name] = step

    out_node = [n for n in ep.graph.nodes if n.op == "output"][0]
    out_arg = out_node.args[0][0] if isinstance(out_node.args[0], tuple | list) else out_node.args[0]
    output_name = src(out_arg)
    if output_name not in by_name and output_name != input_name:
        raise NNVitalsError("model graph: the output does not depend on the input")
    graph = Graph(steps, input_name, output_name, tuple(example.shape[1:]))
    graph = _fold_pads(graph, users)
    if fold_bn:
        graph = _fold_batchnorm(graph)
    return graph


def input_shape_of(name: str, by_name: dict[str, Step], x_shape: tuple, input_name: str) -> tuple:
    return x_shape if name == input_name else by_name[name].out_shape


def _make_step(node, tgt, mk: dict, src, const: dict, where: str) -> Step:
    a = _schema_args(node) if hasattr(tgt, "_schema") else {}
    tensor_in = [src(n) for n in node.all_input_nodes if src(n) not in const]

    def c(arg):
        return const[src(arg)] if isinstance(arg, torch.fx.Node) else arg

    if tgt is _aten.linear.default:
        return Step(kind="linear", inputs=(src(a["input"]),), params=dict(weight=c(a["weight"]), bias=c(a["bias"])), **mk)  # fmt: skip
    if tgt in (_aten.addmm.default, _aten.mm.default):  # a linear layer in a decomposed graph
        w = c(a["mat2"])
        bias = c(a["self"]) if tgt is _aten.addmm.default else None
        if (
            not isinstance(w, torch.Tensor)
            or src(a["mat1"]) in const
            or (bias is not None and not isinstance(bias, torch.Tensor))
            or float(a.get("beta", 1)) != 1.0
            or float(a.get("alpha", 1)) != 1.0
        ):
            raise NNVitalsError(
                f"model graph: unsupported op {tgt} (only x @ W + b with constant W, b) at {where}"
            )
        params = dict(weight=w.t().contiguous(), bias=bias)
        return Step(kind="linear", inputs=(src(a["mat1"]),), params=params, **mk)
    if tgt in (_aten.conv1d.default, _aten.conv2d.default, _aten.conv1d.padding, _aten.conv2d.padding,
               _aten.convolution.default):  # fmt: skip
        w = c(a["weight"])
        nd = w.ndim - 2
        if tgt is _aten.convolution.default and (a["transposed"] or any(a["output_padding"] or ())):
            raise NNVitalsError(f"model graph: unsupported op transposed convolution at {where}")
        pad = a["padding"]
        if isinstance(pad, str):
            dil = _ints(a["dilation"], nd)
            if pad == "valid":
                pad = (0,) * nd
            else:
                tot = [d * (k - 1) for d, k in zip(dil, w.shape[2:])]
                if any(t % 2 for t in tot):
                    raise NNVitalsError(f"model graph: unsupported asymmetric padding='same' at {where}")
                pad = tuple(t // 2 for t in tot)
        params = dict(
            weight=w, bias=c(a["bias"]), stride=_ints(a["stride"], nd), padding=_ints(pad, nd),
            dilation=_ints(a["dilation"], nd), groups=int(a["groups"]), pre_pad=None,
        )  # fmt: skip
        return Step(kind="conv", inputs=(src(a["input"]),), params=params, **mk)
    if tgt in (_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default):
        if a.get("training"):
            raise NNVitalsError(f"model graph: batch norm in training mode at {where}; call model.eval()")
        mean, var = c(a["running_mean"]), c(a["running_var"])
        if mean is None or var is None:
            raise NNVitalsError(f"model graph: batch norm without running statistics at {where}")
        w, b = c(a["weight"]), c(a["bias"])
        scale = 1.0 / torch.sqrt(var + float(a["eps"]))
        if w is not None:
            scale = scale * w
        shift = -mean * scale + (b if b is not None else 0.0)
        return Step(kind="batchnorm", inputs=(src(a["input"]),), params=dict(scale=scale, shift=shift), **mk)
    if tgt in (_aten.relu.default, _aten.relu_.default):
        return Step(kind="relu", inputs=(src(a["self"]),), **mk)
    if tgt in (_aten.leaky_relu.default, _aten.leaky_relu_.default):
        return Step(kind="leaky_relu", inputs=(src(a["self"]),), params=dict(slope=float(a["negative_slope"])), **mk)  # fmt: skip
    if tgt in (_aten.max_pool1d.default, _aten.max_pool2d.default, _aten.max_pool2d_with_indices.default,
               _aten.max_pool1d_with_indices.default):  # fmt: skip
        nd = 1 if "1d" in str(tgt) else 2
        k = _ints(a["kernel_size"], nd)
        params = dict(
            dims=nd, kernel=k, stride=_ints(a["stride"], nd) or k, padding=_ints(a["padding"], nd),
            dilation=_ints(a["dilation"], nd), ceil_mode=bool(a["ceil_mode"]),
        )  # fmt: skip
        return Step(kind="maxpool", inputs=(src(a["self"]),), params=params, **mk)
    if tgt in (_aten.avg_pool1d.default, _aten.avg_pool2d.default):
        nd = 1 if "1d" in str(tgt) else 2
        k = _ints(a["kernel_size"], nd)
        params = dict(
            dims=nd, kernel=k, stride=_ints(a["stride"], nd) or k, padding=_ints(a["padding"], nd),
            ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]),
            divisor_override=a.get("divisor_override"),
        )  # fmt: skip
        return Step(kind="avgpool", inputs=(src(a["self"]),), params=params, **mk)
    if tgt in (_aten.adaptive_avg_pool1d.default, _aten.adaptive_avg_pool2d.default):
        nd = 1 if "1d" in str(tgt) else 2
        params = dict(dims=nd, output_size=_ints(a["output_size"], nd))
        return Step(kind="adaptive_avgpool", inputs=(src(a["self"]),), params=params, **mk)
    if tgt is _aten.mean.dim:
        ndim = node.args[0].meta["val"].ndim
        dims = a["dim"]
        dims = tuple(sorted(int(d) % ndim for d in (dims or range(ndim))))
        if 0 in dims:
            raise NNVitalsError(f"model graph: mean over the batch axis at {where}")
        return Step(kind="mean", inputs=(src(a["self"]),), params=dict(dims=dims, keepdim=bool(a["keepdim"])), **mk)  # fmt: skip
    if tgt in _RESHAPE:
        x = node.all_input_nodes[0]
        xval, oval = x.meta.get("val"), node.meta.get("val")
        if xval is None or oval is None or oval.ndim == 0 or oval.shape[0] != xval.shape[0]:
            raise NNVitalsError(f"model graph: reshape across the batch axis at {where}")
        return Step(kind="reshape", inputs=(src(x),), **mk)
    if tgt in (_aten.add.Tensor, _aten.sub.Tensor, _aten.add_.Tensor, _aten.sub_.Tensor, _aten.mul.Tensor,
               _aten.div.Tensor, _aten.mul.Scalar, _aten.div.Scalar, _aten.add.Scalar, _aten.sub.Scalar):  # fmt: skip
        name = str(tgt).split(".")[1].rstrip("_")
        x, other = node.args[0], node.args[1]
        alpha = float(a.get("alpha") or 1.0)
        sign = -1.0 if name == "sub" else 1.0
        if name in ("add", "sub") and len(tensor_in) == 2:
            for arg in (x, other):  # shapes must agree: no broadcasting between branches
                if _shape(arg) != mk["out_shape"]:
                    raise NNVitalsError(f"model graph: unsupported broadcasting {name} at {where}")
            return Step(kind="add", inputs=(src(x), src(other)), params=dict(alpha=sign * alpha), **mk)
        if len(tensor_in) == 1 and isinstance(x, torch.fx.Node) and src(x) == tensor_in[0]:
            o = other
            if isinstance(o, torch.fx.Node):
                o = const[src(o)]
                if o.numel() != 1:
                    raise NNVitalsError(
                        f"model graph: unsupported op {tgt} with a tensor constant at {where}"
                    )
                o = float(o)
            if isinstance(o, int | float):
                if name in ("add", "sub"):
                    return Step(
                        kind="shift", inputs=(src(x),), params=dict(value=sign * alpha * float(o)), **mk
                    )
                if name == "mul":
                    return Step(kind="scale", inputs=(src(x),), params=dict(value=float(o)), **mk)
                if name == "div" and float(o) != 0.0:
                    return Step(kind="scale", inputs=(src(x),), params=dict(value=1.0 / float(o)), **mk)
        raise NNVitalsError(
            f"model graph: unsupported op {tgt} (only residual add/sub or scalars) at {where}"
        )
    if tgt is _aten.cat.default:
        xs = node.args[0]
        nd = xs[0].meta["val"].ndim
        dim = int(a["dim"]) % nd
        if dim == 0:
            raise NNVitalsError(f"model graph: concatenation along the batch axis at {where}")
        if any(src(t) in const for t in xs):
            raise NNVitalsError(f"model graph: concatenation with a constant tensor at {where}")
        return Step(kind="cat", inputs=tuple(src(t) for t in xs), params=dict(dim=dim), **mk)
    if tgt in (_aten.pad.default, _aten.constant_pad_nd.default):
        mode = a.get("mode") or "constant"
        value = float(a.get("value") or 0.0)
        pads = tuple(int(p) for p in a["pad"])
        if any(p < 0 for p in pads):
            raise NNVitalsError(f"model graph: unsupported negative padding (cropping) at {where}")
        return Step(kind="pad", inputs=(src(node.args[0]),), params=dict(pad=(pads, mode, value)), **mk)
    raise NNVitalsError(
        f"model graph: unsupported op {tgt} at {where}",
        hint="supported: linear, conv1d/2d, batch norm, ReLU/LeakyReLU, max/avg/adaptive-avg pooling, "
        "flatten/reshape/view, residual add, cat",
    )


def _fold_pads(graph: Graph, users: dict[str, list[str]]) -> Graph:
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

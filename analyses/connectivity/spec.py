"""Permutation specs inferred from a model's graph: which parameter axes share which permutation.

Hidden units of a network can be reordered without changing its function: permuting the
output rows of one layer and the input columns of the next (and every per-unit vector in
between: biases, BatchNorm and LayerNorm parameters and statistics) leaves the computed
function intact. Git Re-Basin (Ainsworth et al., ICLR 2023, Sec. 3 and Appendix A.1) calls
the table of "permutation P acts on axis k of parameter W" a *permutation spec*.

Instead of writing the spec by hand per architecture, :func:`infer_spec` exports the model
with :func:`torch.export.export` and walks the ATen graph once, tracking for every
activation which axis (if any) is permuted and by which permutation:

- ``linear`` / ``conv`` start a new permutation on their output axis, and apply the input's
  permutation to the weight's input axis (for grouped convolutions only the depthwise case);
- BatchNorm, LayerNorm (over the permuted axis), InstanceNorm apply it to their vectors;
- element-wise ops, pooling, reductions over other axes pass it on; ``flatten`` / ``view``
  that merge the permuted axis with trailing ones turn it into a block permutation (a
  channel permutation acting on the ``C*H*W`` inputs of the next linear layer);
- ``add`` / ``sub`` / ``mul`` of two permuted tensors *unify* their permutations: the blocks
  writing into one residual stream must share one permutation (union-find);
- a permutation that reaches the model output, or is added to an unpermuted tensor, is fixed
  to the identity (not a free group);
- any other op receiving a permuted tensor raises :class:`NNVitalsError` naming the op and the
  graph node, since aligning through it is not known to preserve the function.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import NNVitalsError

__all__ = ["AxisRef", "PermGroup", "PermutationSpec", "check_same_structure", "export_graph", "infer_spec"]


@dataclass(frozen=True)
class AxisRef:
    """Axis ``axis`` of parameter ``param`` is permuted; it holds ``n * inner`` entries and the
    permutation moves contiguous blocks of ``inner`` (``inner > 1`` after a flatten)."""

    param: str
    axis: int
    inner: int = 1


@dataclass
class PermGroup:
    """One free permutation of ``size`` units and every parameter axis / activation it acts on."""

    name: str
    size: int
    axes: list[AxisRef] = field(default_factory=list)
    #: activations carrying the permutation: (graph node name, axis, inner)
    nodes: list[tuple[str, int, int]] = field(default_factory=list)
    #: names of the layers whose outputs were unified into this group (>1: a residual stream)
    members: list[str] = field(default_factory=list)

    @property
    def residual(self) -> bool:
        return len(self.members) > 1


@dataclass
class PermutationSpec:
    """The permutation groups of a model (in graph order) and the axes each parameter has permuted."""

    groups: dict[str, PermGroup]
    shapes: dict[str, tuple[int, ...]]
    #: whether the graph normalises with BatchNorm (for the statistics reset)
    has_batchnorm: bool = False
    #: state-dict entries that are buffers (running statistics), not learned parameters
    buffers: frozenset[str] = frozenset()

    def param_axes(self) -> dict[str, list[tuple[int, str, int]]]:
        """``{param: [(axis, group, inner), ...]}`` for every parameter with a permuted axis."""
        out: dict[str, list[tuple[int, str, int]]] = {}
        for g in self.groups.values():
            for a in g.axes:
                out.setdefault(a.param, []).append((a.axis, g.name, a.inner))
        return out

    def __repr__(self) -> str:
        parts = [f"{g.name}[{g.size}]{'*' if g.residual else ''}" for g in self.groups.values()]
        return f"<PermutationSpec {len(self.groups)} groups: {', '.join(parts)}>"


# ----------------------------------------------------------------------------- graph


def export_graph(module: nn.Module, example: torch.Tensor, label: str = "model") -> torch.fx.GraphModule:
    """``torch.export`` the module (batch axis dynamic where possible) and return the unlifted
    graph module, whose ``get_attr`` targets are the state-dict names."""
    try:
        ep = torch.export.export(
            module, (example,), dynamic_shapes={_first_arg(module): {0: torch.export.Dim.AUTO}}
        )
    except Exception:  # noqa: BLE001 - retry without the dynamic batch, then report
        try:
            ep = torch.export.export(module, (example,))
        except Exception as e:  # noqa: BLE001 - torch raises many types for untraceable code
            if isinstance(module, torch.fx.GraphModule):
                return module
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise NNVitalsError(
                f"{label}: torch.export could not trace the model to infer its permutation spec "
                f"({type(e).__name__}: {first})",
                hint="the model's forward must take one tensor and be traceable by torch.export",
            ) from None
    return ep.module()


def _first_arg(module: nn.Module) -> str:
    import inspect

    fwd = module.forward
    try:
        params = [p for p in inspect.signature(fwd).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return "x"
    return params[0].name if params else "x"


@dataclass(frozen=True)
class _Ann:
    """Axis ``dim`` of an activation is permuted by group ``gid`` in blocks of ``inner``."""

    dim: int
    gid: int
    inner: int = 1


def _shape(node: Any) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) if isinstance(s, int) else str(s) for s in val.shape)
    return None


UNARY = {
    "relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "leaky_relu", "leaky_relu_", "elu",
    "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "softplus", "mish", "dropout", "clone",
    "contiguous", "alias", "detach", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "pow",
    "_to_copy", "to", "type_as", "feature_dropout", "alpha_dropout", "celu", "selu", "relu6", "prelu",
    "clamp", "clamp_min", "clamp_max", "log_sigmoid", "softmax", "log_softmax", "_softmax",
    "_log_softmax", "identity", "lift_fresh_copy", "native_dropout",
}  # fmt: skip
BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "where"}
POOL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices", "_adaptive_avg_pool2d",
    "upsample_nearest2d", "upsample_bilinear2d", "pad", "constant_pad_nd",
}  # fmt: skip
REDUCE = {
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "logsumexp",
    "norm",
    "linalg_vector_norm",
}
BATCHNORM = {
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional", "native_batch_norm", "instance_norm", "cudnn_batch_norm",
}  # fmt: skip
LAYERNORM = {"layer_norm", "native_layer_norm", "rms_norm"}
VIEW = {"view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze"}
IGNORED_OPS = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range_for_size"}

SUPPORTED = (
    "linear, conv (groups 1 or depthwise), batch/instance/layer norm, element-wise activations, "
    "add/sub/mul/div, pooling, reductions over other axes, flatten/view of trailing axes"
)


def _opname(node: torch.fx.Node) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1]
    if isinstance(t, torch._ops.OpOverloadPacket):
        return str(t).split(".")[-1]
    return getattr(t, "__name__", str(t))


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return f" in module '{path}'" if path else ""
    return ""


class _Walker:
    """One pass over the graph collecting parameter-axis assignments under union-find."""

    def __init__(self, gm: torch.fx.GraphModule, label: str):
        self.gm, self.label = gm, label
        self.parent: list[int] = []
        self.size: list[int] = []
        self.origin: list[str] = []
        self.fixed: set[int] = set()
        self.assign: list[tuple[str, int, int, int]] = []  # param, axis, gid, inner
        self.node_anns: list[tuple[str, int, int, int]] = []  # node, dim, gid, inner
        self.frozen: set[str] = set()
        self.env: dict[str, Any] = {}
        self.params: dict[str, str] = {}  # get_attr node name -> state-dict name
        self.has_bn = False
        self.shapes = {k: tuple(v.shape) for k, v in gm.state_dict().items()}

    # --- union-find
    def new(self, size: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, node: torch.fx.Node) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            self.fail(node, f"joins permutations of different sizes ({self.size[ra]} vs {self.size[rb]})")
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        if hi in self.fixed:
            self.fixed.add(lo)
        return lo

    def fix(self, ann: _Ann | None) -> None:
        if isinstance(ann, _Ann):
            self.fixed.add(self.find(ann.gid))

    def fail(self, node: torch.fx.Node, why: str = ""):
        op = str(node.target)
        why = why or "receives permuted hidden units and is not known to commute with a permutation"
        raise NNVitalsError(
            f"{self.label}: cannot align this architecture: op {op} at graph node '{node.name}'"
            f"{_module_of(node)} {why}",
            hint=f"supported: {SUPPORTED}; use match='none' for the naive path only",
        )

    # --- helpers
    def ann(self, arg: Any) -> _Ann | None:
        if isinstance(arg, torch.fx.Node):
            a = self.env.get(arg.name)
            return a if isinstance(a, _Ann) else None
        return None

    def param(self, arg: Any) -> str | None:
        if isinstance(arg, torch.fx.Node):
            return self.params.get(arg.name)
        return None

    def put(self, pname: str | None, axis: int, ann: _Ann | None, ndim_check: int | None = None) -> None:
        if pname is not None and ann is not None:
            self.assign.append((pname, axis, ann.gid, ann.inner))

    # --- walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                self.params[node.name] = str(node.target)
                self.env[node.name] = None
            elif node.op == "placeholder":
                self.env[node.name] = None
            elif node.op == "call_function":
                out = self.visit(node)
                self.env[node.name] = out
                for a in out if isinstance(out, list) else [out]:
                    if isinstance(a, _Ann):
                        self.node_anns.append((node.name, a.dim, a.gid, a.inner))
            elif node.op == "output":
                for a in node.all_input_nodes:
                    self.fix(self.ann(a))
                    if a.name in self.params:
                        self.frozen.add(self.params[a.name])
            else:  # call_module (guards), call_method: nothing to track
                self.env[node.name] = None

    def visit(self, node: torch.fx.Node):  # noqa: C901 - one dispatch over op kinds
        op = _opname(node)
        args = list(node.args)
        inputs = node.all_input_nodes
        anns = [self.ann(a) for a in inputs]
        used_params = [self.params[a.name] for a in inputs if a.name in self.params]
        if op in IGNORED_OPS:
            return None
        if op == "getitem":
            src = self.env.get(args[0].name)
            return src[args[1]] if isinstance(src, list) and args[1] < len(src) else None
        if op == "linear":
            return self.linear(node, args)
        if op in ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d"):
            return self.conv(node, op, args)
        if not any(anns):
            # nothing permuted flows in: unaffected, but parameters used here must stay put
            if op not in BATCHNORM | LAYERNORM | BINARY:
                self.frozen.update(used_params)
            elif op in BATCHNORM:
                self.has_bn = True
            return None
        x = anns[0] if inputs and inputs[0] is args[0] else None
        if op in UNARY:
            if x is None:
                self.fail(node)
            if op in ("prelu",) and len(args) > 1 and self.param(args[1]):
                w = self.param(args[1])
                if math.prod(self.shapes[w]) > 1:
                    self.put(w, 0, x)
            return x
        if op in BINARY:
            return self.binary(node, op, args)
        if op in POOL:
            if x is None or x.dim != 1 or x.inner != 1:
                self.fail(node)
            return [x, x] if "with_indices" in op else x
        if op in BATCHNORM:
            self.has_bn = True
            if x is None or x.dim != 1 or x.inner != 1:
                self.fail(node, "normalises an axis other than the permuted channel axis")
            for a in args[1:5]:
                self.put(self.param(a), 0, x)
            return [x, None, None, None, None] if op.startswith(("_native", "native", "cudnn")) else x
        if op in LAYERNORM:
            return self.layernorm(node, op, args, x)
        if op in REDUCE:
            return self.reduce(node, args, x)
        if op in VIEW:
            return self.view(node, op, args, x)
        self.fail(node)

    def linear(self, node, args):
        x, w = self.ann(args[0]), self.param(args[1])
        b = self.param(args[2]) if len(args) > 2 else None
        shape = _shape(node)
        if w is None:  # computed weight (parametrisation): keep everything around it fixed
            self.fix(x)
            self.fix(self.ann(args[1]))
            return None
        xs = _shape(args[0])
        if x is not None and (xs is None or x.dim != len(xs) - 1):
            self.fail(node, "applies a linear layer over an axis other than the permuted one")
        self.put(w, 1, x)
        g = self.new(shape[-1], w.removesuffix(".weight"))
        out = _Ann(len(shape) - 1, g)
        self.put(w, 0, out)
        self.put(b, 0, out)
        return out

    def conv(self, node, op, args):
        x, w = self.ann(args[0]), self.param(args[1])
        b = self.param(args[2]) if len(args) > 2 else None
        if op == "convolution":
            transposed, groups = bool(args[6]), int(args[8])
        else:
            transposed, groups = op.startswith("conv_transpose"), int(args[6] if len(args) > 6 else 1)
            if transposed:
                groups = int(args[6]) if len(args) > 6 else 1
        if w is None:
            self.fix(x)
            return None
        if x is not None and (x.dim != 1 or x.inner != 1):
            self.fail(node, "convolves over a permuted axis other than the channels")
        shape = _shape(node)
        out_ax, in_ax = (1, 0) if transposed else (0, 1)
        if groups != 1:
            wshape = self.shapes.get(w)
            depthwise = (
                wshape is not None and wshape[in_ax] == 1 and shape[1] == (_shape(args[0]) or [0, 0])[1]
            )
            if not depthwise or transposed:
                self.fail(node, f"is a grouped convolution (groups={groups}); only depthwise is supported")
            self.put(w, 0, x)
            self.put(b, 0, x)
            return x
        self.put(w, in_ax, x)
        g = self.new(shape[1], w.removesuffix(".weight"))
        out = _Ann(1, g)
        self.put(w, out_ax, out)
        self.put(b, 0, out)
        return out

    def binary(self, node, op, args):
        out_shape = _shape(node)
        if out_shape is None:
            self.fail(node)
        nd = len(out_shape)
        result: _Ann | None = None
        operands = [a for a in args[:2]] if op != "where" else list(args[1:3])
        if op == "where" and self.ann(args[0]) is not None:
            self.fail(node)
        for a in operands:
            ann = self.ann(a)
            if ann is None:
                continue
            s = _shape(a)
            if len(s) != nd:
                self.fail(node, "broadcasts a permuted tensor against a tensor of another rank")
            if result is None:
                result = ann
            else:
                if ann.dim != result.dim or ann.inner != result.inner:
                    self.fail(node, "combines tensors permuted along different axes")
                g = self.union(result.gid, ann.gid, node)
                result = _Ann(result.dim, g, result.inner)
        assert result is not None
        for a in operands:
            if not isinstance(a, torch.fx.Node) or self.ann(a) is not None:
                continue
            s = _shape(a)
            if s is None:
                continue
            # align from the right: which axis of ``a`` meets the permuted axis?
            k = result.dim - (nd - len(s))
            if k < 0 or s[k] == 1:
                continue  # broadcast along the permuted axis: unaffected
            pname = self.param(a)
            if pname is not None and result.inner == 1:  # a learned per-unit scale / shift
                self.put(pname, k, result)
            else:  # an unpermuted full tensor meets a permuted one: the permutation must be identity
                self.fix(result)
        return result

    def layernorm(self, node, op, args, x):
        if x is None:
            self.fail(node)
        xs = _shape(args[0])
        nshape = list(args[1]) if op != "rms_norm" or isinstance(args[1], list | tuple) else [args[1]]
        first = len(xs) - len(nshape)
        if x.dim >= first:
            if x.inner != 1:
                self.fail(node, "normalises over a flattened permuted axis")
            for a in args[2:4]:
                self.put(self.param(a), x.dim - first, x)
        return [x, None, None] if op == "native_layer_norm" else x

    def reduce(self, node, args, x):
        if x is None:
            self.fail(node)
        xs = _shape(args[0])
        nd = len(xs)
        dims = args[1] if len(args) > 1 else None
        if dims is None or dims == []:
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % nd for d in dims]
        keep = (
            bool(args[2]) if len(args) > 2 and isinstance(args[2], bool) else bool(node.kwargs.get("keepdim"))
        )
        if x.dim in dims:
            return None  # reduced over the units: invariant to their order
        return x if keep else _Ann(x.dim - sum(d < x.dim for d in dims), x.gid, x.inner)

    def view(self, node, op, args, x):
        if x is None:
            self.fail(node)
        xs, ys = _shape(args[0]), _shape(node)
        if xs == ys:
            return x
        d = x.dim
        if op == "unsqueeze":
            k = args[1] % (len(xs) + 1)
            return _Ann(d + (k <= d), x.gid, x.inner)
        if op == "squeeze":
            dims = [i for i in range(len(xs)) if xs[i] == 1 and i != d]
            if len(args) > 1:
                want = args[1] if isinstance(args[1], list | tuple) else [args[1]]
                dims = [w % len(xs) for w in want if xs[w % len(xs)] == 1]
            return _Ann(d - sum(k < d for k in dims), x.gid, x.inner)
        # a reshape that keeps the axes before the permuted one and merges it with trailing axes
        if list(ys[:d]) == list(xs[:d]) and len(ys) > d:
            rest = xs[d + 1 :]
            for end in range(len(rest) + 1):
                merged = (
                    xs[d] * math.prod(rest[:end]) if all(isinstance(s, int) for s in rest[:end]) else None
                )
                if merged == ys[d] and list(ys[d + 1 :]) == list(rest[end:]):
                    return _Ann(d, x.gid, x.inner * math.prod(rest[:end]))
        self.fail(node, f"reshapes the permuted axis ({xs} -> {ys}) in a way alignment cannot follow")


def infer_spec(
    module: nn.Module | torch.fx.GraphModule, example: torch.Tensor, label: str = "model"
) -> tuple[PermutationSpec, torch.fx.GraphModule]:
    """Infer the permutation spec of ``module`` from its exported graph (see module docstring).

    Returns the spec and the exported graph module (kept for activation matching).
    """
    gm = export_graph(module, example, label)
    w = _Walker(gm, label)
    w.run()
    shapes = w.shapes
    # groups touching a parameter that some unsupported consumer also reads must stay identity
    for pname, _axis, gid, _inner in w.assign:
        if pname in w.frozen:
            w.fixed.add(w.find(gid))
    fixed = {w.find(g) for g in w.fixed}
    groups: dict[int, PermGroup] = {}
    seen: set[tuple[str, int]] = set()
    for gid in range(len(w.parent)):
        r = w.find(gid)
        if r in fixed:
            continue
        if r not in groups:
            groups[r] = PermGroup(name=w.origin[r], size=w.size[r])
        groups[r].members.append(w.origin[gid])
    for pname, axis, gid, inner in w.assign:
        r = w.find(gid)
        if r not in groups or (pname, axis) in seen:
            continue
        seen.add((pname, axis))
        expect = groups[r].size * inner
        if shapes[pname][axis] != expect:
            raise NNVitalsError(
                f"{label}: parameter '{pname}' axis {axis} has {shapes[pname][axis]} entries but its "
                f"permutation group '{groups[r].name}' has {expect}; cannot align"
            )
        groups[r].axes.append(AxisRef(pname, axis, inner))
    for name, dim, gid, inner in w.node_anns:
        r = w.find(gid)
        if r in groups:
            groups[r].nodes.append((name, dim, inner))
    named: dict[str, PermGroup] = {}
    for g in groups.values():
        if g.residual:
            g.name = f"{g.name}+{len(g.members) - 1}"
        named[g.name] = g
    buffers = frozenset(k for k, _ in gm.named_buffers())
    return PermutationSpec(groups=named, shapes=shapes, has_batchnorm=w.has_bn, buffers=buffers), gm


def check_same_structure(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], label_a: str = "model_a", label_b: str = "model_b"
) -> None:
    """Raise :class:`NNVitalsError` naming the first parameter where two state dicts differ
    (missing name, other shape or other dtype); they must match to be interpolated."""
    ka, kb = list(a), list(b)
    for i in range(max(len(ka), len(kb))):
        na = ka[i] if i < len(ka) else None
        nb = kb[i] if i < len(kb) else None
        if na != nb:
            if na is None or na not in b:
                missing, other, where = (nb, label_a, label_b) if na is None else (na, label_b, label_a)
                raise NNVitalsError(
                    f"{label_b}: differs in structure from {label_a}: parameter '{missing}' of {where} "
                    f"is missing from {other}; the models must have the same architecture"
                )
            raise NNVitalsError(
                f"{label_b}: differs in structure from {label_a}: parameter #{i} is '{nb}' where "
                f"{label_a} has '{na}'; the models must have the same architecture"
            )
        ta, tb = a[na], b[nb]
        if tuple(ta.shape) != tuple(tb.shape):
            raise NNVitalsError(
                f"{label_b}: differs in structure from {label_a} at parameter '{na}': shape "
                f"{tuple(tb.shape)} vs {tuple(ta.shape)}; the models must have the same architecture"
            )
        if ta.dtype.is_floating_point != tb.dtype.is_floating_point:
            raise NNVitalsError(
                f"{label_b}: differs from {label_a} at parameter '{na}': dtype {tb.dtype} vs {ta.dtype}"
            )

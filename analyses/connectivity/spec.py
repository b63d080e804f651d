"""Permutation specs inferred from a model's graph: which parameter axes share which permutation.

Hidden units of a network can be reordered without changing its function: permuting the
output rows of one layer and the input columns of the next (and every per-unit vector in
between: biases, BatchNorm and LayerNorm parameters and statistics) leaves the computed
function intact. Git Re-Basin (Ainsworth et al., ICLR 2023, Sec. 3 and Appendix A.1) calls
the table of "permutation P acts on axis k of parameter W" a *permutation spec*.

Instead of writing the spec by hand per architecture, :func:`infer_spec` exports the model
with :func:`torch.export.export` and walks the ATen graph once, tracking for every
activation which axis (if any) is permuted and by which permutation (each operator's part is its
rule's ``permute`` in the graph layer's table, :mod:`analyses.core.graph.ops`):

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

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import NNVitalsError
from ..core.graph import NodeLoop, Perm, export_program, module_path, rule_for

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
        ep = export_program(
            module,
            example,
            label=label,
            purpose="the model to infer its permutation spec",
            hint="the model's forward must take one tensor and be traceable by torch.export",
            dynamic_batch=True,
            first_line=True,
            limit=200,
        )
    except NNVitalsError:
        if isinstance(module, torch.fx.GraphModule):  # already a graph (a .pt2 program's module)
            return module
        raise
    return ep.module()


SUPPORTED = (
    "linear, conv (groups 1 or depthwise), batch/instance/layer norm, element-wise activations, "
    "add/sub/mul/div, pooling, reductions over other axes, flatten/view of trailing axes"
)


class _Walker(NodeLoop):
    """One pass over the graph collecting parameter-axis assignments under union-find. How each
    operator moves a permuted axis is its rule's :meth:`~analyses.core.graph.Rule.permute`
    (the graph layer's operator table); this walker keeps the groups and what they act on."""

    def __init__(self, gm: torch.fx.GraphModule, label: str):
        super().__init__(gm.graph)
        self.gm, self.label = gm, label
        self.parent: list[int] = []
        self.size: list[int] = []
        self.origin: list[str] = []
        self.fixed: set[int] = set()
        self.assign: list[tuple[str, int, int, int]] = []  # param, axis, gid, inner
        self.node_anns: list[tuple[str, int, int, int]] = []  # node, dim, gid, inner
        self.frozen: set[str] = set()
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

    def fix(self, ann: Perm | None) -> None:
        if isinstance(ann, Perm):
            self.fixed.add(self.find(ann.gid))

    def fail(self, node: torch.fx.Node, why: str = ""):
        op = str(node.target)
        why = why or "receives permuted hidden units and is not known to commute with a permutation"
        path = module_path(node)
        raise NNVitalsError(
            f"{self.label}: cannot align this architecture: op {op} at graph node '{node.name}'"
            f"{f' in module {path!r}' if path else ''} {why}",
            hint=f"supported: {SUPPORTED}; use match='none' for the naive path only",
        )

    # --- what the rules ask
    def ann(self, arg: Any) -> Perm | None:
        if isinstance(arg, torch.fx.Node):
            a = self.env.get(arg.name)
            return a if isinstance(a, Perm) else None
        return None

    def param(self, arg: Any) -> str | None:
        if isinstance(arg, torch.fx.Node):
            return self.params.get(arg.name)
        return None

    def put(self, pname: str | None, axis: int, ann: Perm | None) -> None:
        if pname is not None and ann is not None:
            self.assign.append((pname, axis, ann.gid, ann.inner))

    def freeze_inputs(self, node: torch.fx.Node) -> None:
        """Parameters read by this node keep their order."""
        self.frozen.update(self.params[a.name] for a in node.all_input_nodes if a.name in self.params)

    # --- the node loop
    def get_attr(self, node: torch.fx.Node) -> None:
        self.params[node.name] = str(node.target)

    def call_function(self, node: torch.fx.Node) -> Any:
        out = rule_for(node.target).permute(self, node)
        for a in out if isinstance(out, list) else [out]:
            if isinstance(a, Perm):
                self.node_anns.append((node.name, a.dim, a.gid, a.inner))
        return out

    def output(self, node: torch.fx.Node) -> None:
        for a in node.all_input_nodes:
            self.fix(self.ann(a))
            if a.name in self.params:
                self.frozen.add(self.params[a.name])


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

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
- a reshape that splits a permuted axis over two axes (hidden units into attention heads and
  head dimensions; a fused query/key/value projection into its three parts) makes the group
  *structured* (:class:`Composite`): blocks permuted as wholes, each block within itself.
  Attention joins query and key (one permutation of heads and of head dimensions) and the heads
  of value; value's head dimensions go on to the output projection. GroupNorm splits its
  channels into (groups, channels per group). Selecting one of the blocks (query out of q/k/v)
  fixes the block permutation. Transposes, permutes, ``select``/``slice`` of other axes, ``cat``
  of unpermuted axes, embeddings (a new group on the table's columns), positional tables and
  class tokens (parameters added or concatenated to the stream) are followed as well
  (:mod:`analyses.core.graph.ops_attention`);
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
from ..core.graph.ops_attention import Multi, flow

__all__ = [
    "AxisRef",
    "Composite",
    "PermGroup",
    "PermutationSpec",
    "check_same_structure",
    "export_graph",
    "infer_spec",
]


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
class Composite:
    """A structured permutation of ``blocks * block`` units: the blocks are permuted as wholes by
    ``outer`` and block ``i`` (at its new position) within itself by ``inner[i]`` (names of free
    groups or of other composites; None: that part is the identity). As a gather index,
    ``p[i * block + j] = outer[i] * block + inner[i][j]``. Attention heads (blocks: heads, within:
    head dimensions), group norm (blocks: groups) and a linear layer's output split into query,
    key and value (``outer`` None) are composites."""

    name: str
    blocks: int
    block: int
    outer: str | None
    inner: tuple[str | None, ...]
    axes: list[AxisRef] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.blocks * self.block


@dataclass
class PermutationSpec:
    """The permutation groups of a model (in graph order) and the axes each parameter has permuted.

    ``groups`` are the free permutations (what matching solves for, what ``perms`` dictionaries
    hold); ``composites`` are structured permutations assembled from them (see :class:`Composite`).
    """

    groups: dict[str, PermGroup]
    shapes: dict[str, tuple[int, ...]]
    #: whether the graph normalises with BatchNorm (for the statistics reset)
    has_batchnorm: bool = False
    #: state-dict entries that are buffers (running statistics), not learned parameters
    buffers: frozenset[str] = frozenset()
    #: structured permutations (attention heads, group norm groups), by name
    composites: dict[str, Composite] = field(default_factory=dict)

    def param_axes(self) -> dict[str, list[tuple[int, str, int]]]:
        """``{param: [(axis, group, inner), ...]}`` for every parameter with a permuted axis
        (``group`` names a free group or a composite)."""
        out: dict[str, list[tuple[int, str, int]]] = {}
        for g in [*self.groups.values(), *self.composites.values()]:
            for a in g.axes:
                out.setdefault(a.param, []).append((a.axis, g.name, a.inner))
        return out

    def __repr__(self) -> str:
        parts = [f"{g.name}[{g.size}]{'*' if g.residual else ''}" for g in self.groups.values()]
        parts += [f"{c.name}[{c.blocks}x{c.block}]" for c in self.composites.values()]
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
    "linear, conv (groups 1 or depthwise), batch/instance/layer/RMS/group norm, element-wise activations, "
    "softmax, add/sub/mul/div, pooling, reductions over other axes, reshape/view/transpose/permute, "
    "select/slice/split/chunk/unbind/stack/expand, cat of unpermuted axes, embeddings, matmul, "
    "scaled dot-product attention (heads)"
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
        #: structured groups: root -> (blocks, block, outer gid, [inner gids])
        self.splits: dict[int, tuple[int, int, int, list[int]]] = {}
        self.parts: set[int] = set()

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
        sl, sh = self.splits.pop(lo, None), self.splits.pop(hi, None)
        if sl is not None and sh is not None:
            if sl[:2] != sh[:2]:
                self.fail(node, f"joins permutations split two ways ({sl[0]}x{sl[1]} vs {sh[0]}x{sh[1]})")
            self.splits[lo] = sl
            self.union(sl[2], sh[2], node)
            for x, y in zip(sl[3], sh[3], strict=True):
                self.union(x, y, node)
        elif sl is not None or sh is not None:
            self.splits[lo] = sl if sl is not None else sh
        return self.find(lo)

    def fix(self, ann: Perm | Multi | None) -> None:
        if isinstance(ann, Perm):
            self.fixed.add(self.find(ann.gid))
        elif isinstance(ann, Multi):
            for p in ann.places:
                self.fix_gid(p.gid)

    def fix_gid(self, g: int) -> None:
        self.fixed.add(self.find(g))

    # --- structured groups (attention heads, group norm): see ops_attention
    def split(self, gid: int, a: int, b: int, node: torch.fx.Node) -> None:
        """Group ``gid`` permutes ``a`` blocks of ``b`` (blocks as wholes, each within itself)."""
        r = self.find(gid)
        if r in self.splits:
            if self.splits[r][:2] != (a, b):
                have = self.splits[r]
                self.fail(node, f"splits a permutation two ways ({have[0]}x{have[1]} vs {a}x{b})")
            return
        if self.size[r] != a * b:
            self.fail(node, f"splits a permutation of {self.size[r]} units into {a}x{b}")
        origin = self.origin[r]
        outer = self.new(a, f"{origin}:blocks")
        inner = [self.new(b, f"{origin}:{i}") for i in range(a)]
        self.parts.update([outer, *inner])
        self.splits[r] = (a, b, outer, inner)

    def blocks_of(self, gid: int) -> list[int]:
        return list(self.splits[self.find(gid)][3])

    def groups_at(self, gid: int, path: tuple[str, ...]) -> list[int]:
        """The groups acting on the part ``path`` of group ``gid`` (``("i",)``: one per block)."""
        r = self.find(gid)
        if not path:
            return [r]
        a, b, outer, inner = self.splits[r]
        if path[0] == "o":
            return self.groups_at(outer, path[1:])
        return [g for x in inner for g in self.groups_at(x, path[1:])]

    def size_at(self, gid: int, path: tuple[str, ...]) -> int:
        r = self.find(gid)
        for step in path:
            a, b, outer, inner = self.splits[r]
            r = self.find(outer if step == "o" else inner[0])
        return self.size[r]

    def union_at(
        self, ga: int, pa: tuple[str, ...], gb: int, pb: tuple[str, ...], node: torch.fx.Node
    ) -> None:
        xs, ys = self.groups_at(ga, pa), self.groups_at(gb, pb)
        if len(xs) != len(ys):
            self.fail(node, "joins permutations of different structure")
        for x, y in zip(xs, ys, strict=True):
            self.union(x, y, node)

    def view_of_param(self, node: torch.fx.Node, arg: Any) -> None:
        """``node`` is a view of a parameter with the same axes (``expand``): a permutation met
        there applies to the parameter."""
        p = self.param(arg)
        if p is not None:
            self.params[node.name] = p

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
    def ann(self, arg: Any) -> Perm | Multi | None:
        if isinstance(arg, torch.fx.Node):
            a = self.env.get(arg.name)
            return a if isinstance(a, Perm | Multi) else None
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
        out = flow(self, node)  # several permuted axes, reshapes, cat: the attention module's part
        if out is NotImplemented:
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
    return _build(w, gm, label), gm


def _build(w: _Walker, gm: torch.fx.GraphModule, label: str) -> PermutationSpec:
    """The spec from the walk: free groups, composites, and the parameter axes of each."""
    shapes = w.shapes
    # groups touching a parameter that some unsupported consumer also reads must stay identity
    for pname, _axis, gid, _inner in w.assign:
        if pname in w.frozen:
            w.fixed.add(w.find(gid))
    fixed = {w.find(g) for g in w.fixed}
    todo = list(fixed)
    while todo:  # a fixed structured group fixes its parts
        r = todo.pop()
        if r in w.splits:
            _, _, outer, inner = w.splits[r]
            for g in [outer, *inner]:
                if w.find(g) not in fixed:
                    fixed.add(w.find(g))
                    todo.append(w.find(g))
    memo: dict[int, bool] = {}

    def identity(r: int) -> bool:
        if r not in memo:
            if r in fixed or w.size[r] <= 1:
                memo[r] = True
            elif r in w.splits:
                _, _, outer, inner = w.splits[r]
                memo[r] = identity(w.find(outer)) and all(identity(w.find(g)) for g in inner)
            else:
                memo[r] = False
        return memo[r]

    roots = sorted({w.find(g) for g in range(len(w.parent))})
    members: dict[int, list[str]] = {}
    for gid in range(len(w.parent)):
        members.setdefault(w.find(gid), []).append(w.origin[gid])
    names: dict[int, str] = {}
    used: set[str] = set()
    for r in roots:
        if identity(r):
            continue
        name = w.origin[r]
        if r in w.parts:  # a part of a structured group: its members are not layers writing a stream
            members[r] = [name]
        elif len(members[r]) > 1:
            name = f"{name}+{len(members[r]) - 1}"
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}#{k}"
        used.add(name)
        names[r] = name
    groups: dict[int, PermGroup] = {}
    comps: dict[int, Composite] = {}
    for r in roots:
        if r not in names:
            continue
        if r in w.splits:
            a, b, outer, inner = w.splits[r]
            comps[r] = Composite(
                name=names[r], blocks=a, block=b, outer=names.get(w.find(outer)),
                inner=tuple(names.get(w.find(g)) for g in inner),
            )  # fmt: skip
        else:
            groups[r] = PermGroup(name=names[r], size=w.size[r], members=members[r])
    seen: set[tuple[str, int]] = set()
    for pname, axis, gid, inner in w.assign:
        r = w.find(gid)
        target = groups.get(r) or comps.get(r)
        if target is None or (pname, axis) in seen:
            continue
        seen.add((pname, axis))
        expect = target.size * inner
        if shapes[pname][axis] != expect:
            raise NNVitalsError(
                f"{label}: parameter '{pname}' axis {axis} has {shapes[pname][axis]} entries but its "
                f"permutation group '{target.name}' has {expect}; cannot align"
            )
        target.axes.append(AxisRef(pname, axis, inner))
    for name, dim, gid, inner in w.node_anns:
        r = w.find(gid)
        if r in groups:
            groups[r].nodes.append((name, dim, inner))
    buffers = frozenset(k for k, _ in gm.named_buffers())
    return PermutationSpec(
        groups={g.name: g for g in groups.values()},
        shapes=shapes,
        has_batchnorm=w.has_bn,
        buffers=buffers,
        composites={c.name: c for c in comps.values()},
    )


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

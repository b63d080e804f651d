"""Rules for attention, group norm, embeddings and the shape operators transformers export to.

Bounds steps (kind: ATen ops):

========================  ==========================================================
kind                      ATen ops
========================  ==========================================================
``groupnorm``             ``group_norm``, ``native_group_norm`` (output 0)
``softmax``               ``softmax``, ``_softmax``
``matmul``                ``matmul``, ``bmm`` of two tensors (and ``linear`` / ``mm`` with a
                          tensor weight, through :func:`tensor_product_step`)
``matmul_const``          ``matmul``, ``bmm`` with one constant operand
``sdpa``                  ``scaled_dot_product_attention`` (mask, causal, scale)
``embedding``             ``embedding`` (integer inputs)
``transpose``             ``transpose``, ``permute``, ``t``, ``swapaxes``
``select``                ``select``, ``slice``
``chunk``                 ``split``, ``split_with_sizes``, ``chunk``, ``unbind`` (one output each)
``stack``                 ``stack``
``expand``                ``expand``
``reshape_any``           ``unflatten`` (and reshapes that move the batch axis, through
                          :func:`reshape_step`)
========================  ==========================================================

Shape steps compute on whole batched tensors with the node's own axes, so the batch axis may
move (``nn.MultiheadAttention`` transposes it to axis 1). Interval rules: a product of two
intervals sums the smallest / largest of the four corner products over the contracted axis (as
auto_LiRPA bounds a product of two perturbed tensors); softmax ``l_i = e^{l_i} / (e^{l_i} +
sum_{j != i} e^{u_j})`` and likewise ``u_i``; group norm decomposed as auto_LiRPA decomposes a
normalisation (``x - mean``, square, mean, ``sqrt(. + eps)``, reciprocal, product, affine), per
group. Token ids are discrete: IBP on an embedding's input perturbs its output (the rows looked
up, plus the input's radius on every coordinate), and its Lipschitz constant is that of the
identity on the embedding output. Dot-product attention and products of two tensors have no
global Lipschitz constant (``math.inf`` with the reason).

Permutations (Connectivity): a tensor may carry permutations on several axes at once
(:class:`Multi`, a tuple of :class:`Place`): attention splits the hidden axis into heads and
head dimensions. A permutation group of ``a * b`` units that a reshape splits over two axes
becomes *structured*: ``a`` blocks permuted as wholes (the outer part), each block with its own
permutation of ``b`` (the inner parts) -- the walker's ``split``. A :class:`Place` names the part
it acts on by a path (``()``: the whole group; ``("o",)``: its block permutation; ``("i",)``: the
per-block permutations, indexed by the block axis; deeper paths for nested splits). Attention
unifies query and key (the same permutation of head dimensions, so scores are unchanged) and
the head permutation of query, key and value; value's head dimensions carry on to the output
projection. Group norm splits its channel group into (groups, channels per group); softmax,
selections of unpermuted axes, transposes and reshapes pass permutations on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .nodes import full_shape, op_key
from .rules import Perm, Rule, Step, kind_rule, register

__all__ = [
    "STANDARD",
    "Multi",
    "Relayout",
    "canonical_shape",
    "to_actual",
    "to_canonical",
    "Place",
    "flow",
    "interval_matmul",
    "places",
    "reshape_step",
    "softmax_interval",
    "tensor_product_step",
]

aten = torch.ops.aten


# ============================================================================ permutation places


@dataclass(frozen=True)
class Place:
    """Axis ``dim`` holds a factor of permutation group ``gid``: the axis is ``(outer, n, inner)``
    and the part ``path`` of the group (see module docstring) permutes the ``n`` entries."""

    dim: int
    gid: int
    inner: int = 1
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Multi:
    """A tensor permuted on several axes (or on part of an axis): one :class:`Place` per factor."""

    places: tuple[Place, ...]


def places(w: Any, arg: Any) -> list[Place]:
    """The places of an argument's permutation (none when it is not permuted)."""
    a = w.ann(arg)
    if isinstance(a, Multi):
        return list(a.places)
    if isinstance(a, Perm):
        return [Place(a.dim, a.gid, a.inner)]
    return []


#: stand-ins for symbolic sizes (the batch axis of a dynamic export): distinct primes, so that the
#: factor arithmetic of reshapes is concrete and no real size divides them
_SYMBOLS: dict[str, int] = {}
_PRIMES = (7919, 7927, 7933, 7937, 7949, 7951, 7963, 7993, 8009, 8011)


def _concrete(d: Any) -> int:
    if isinstance(d, int):
        return d
    expr = d.node.expr
    subs = {}
    for sym in expr.free_symbols:
        if str(sym) not in _SYMBOLS:
            _SYMBOLS[str(sym)] = _PRIMES[len(_SYMBOLS) % len(_PRIMES)]
        subs[sym] = _SYMBOLS[str(sym)]
    return int(expr.subs(subs))


def _shape_of(val: Any) -> list[int] | None:
    return [_concrete(d) for d in val.shape] if isinstance(val, torch.Tensor) else None


def _shape(node: Any) -> list[int] | None:
    """The node's whole shape, symbolic sizes replaced by their stand-ins."""
    return _shape_of(node.meta.get("val")) if isinstance(node, torch.fx.Node) else None


def _size(w: Any, p: Place) -> int:
    return w.size_at(p.gid, p.path)


def _merge(w: Any, ps: list[Place]) -> list[Place]:
    """Join an outer part and its inner part lying next to each other on one axis into their group."""
    ps = list(ps)
    changed = True
    while changed:
        changed = False
        for i, o in enumerate(ps):
            if not o.path or o.path[-1] != "o":
                continue
            base = o.path[:-1]
            for j, q in enumerate(ps):
                if (
                    q.dim == o.dim
                    and q.path == base + ("i",)
                    and w.find(q.gid) == w.find(o.gid)
                    and o.inner == q.inner * _size(w, q)
                ):
                    ps = [p for k, p in enumerate(ps) if k not in (i, j)] + [
                        Place(o.dim, o.gid, q.inner, base)
                    ]
                    changed = True
                    break
            if changed:
                break
    return ps


def _canonical(w: Any, ps: list[Place]) -> list[Place]:
    """A block permutation left on its own (its blocks' inner parts elsewhere no longer) is a
    group like any other: ``(G, ("o",))`` becomes ``(A, ())``."""
    out = []
    for p in ps:
        alone = not any(q is not p and w.find(q.gid) == w.find(p.gid) for q in ps)
        if p.path and "i" not in p.path and alone:
            p = Place(p.dim, w.groups_at(p.gid, p.path)[0], p.inner)
        out.append(p)
    return out


def pack(w: Any, ps: list[Place], node: Any) -> Perm | Multi | None:
    """The annotation of a tensor with these places: a plain :class:`Perm` when one whole group
    fills one axis (what every other rule reads), else a :class:`Multi`."""
    ps = _canonical(w, _merge(w, ps))
    if not ps:
        return None
    shape = _shape(node)
    if len(ps) == 1 and not ps[0].path and shape is not None:
        p = ps[0]
        if shape[p.dim] == w.size_at(p.gid, ()) * p.inner:
            return Perm(p.dim, p.gid, p.inner)
    return Multi(tuple(sorted(ps, key=lambda p: (p.dim, -p.inner))))


def _tail(shape: list[int], k: int) -> int:
    return math.prod(shape[k + 1 :])


def _fix_place(w: Any, p: Place) -> None:
    for g in w.groups_at(p.gid, p.path):
        w.fix_gid(g)


def _reshape(w: Any, node: Any, ps: list[Place], xs: list, ys: list) -> list[Place]:
    """Places after a reshape: each factor keeps its flat stride; one that now spans several axes
    splits its group (outermost part first)."""
    out: list[Place] = []
    for p in ps:
        n, t = _size(w, p), _tail(xs, p.dim)
        s, stop = p.inner * t, p.inner * t * n
        pieces = []  # (axis, size, inner) from the innermost piece outwards
        while s < stop:
            k = next(
                (k for k in range(len(ys) - 1, -1, -1) if _tail(ys, k) <= s < _tail(ys, k) * ys[k]),
                None,
            )
            if k is None or s % _tail(ys, k):
                w.fail(node, f"reshapes the permuted axis ({xs} -> {ys}) in a way alignment cannot follow")
            tk = _tail(ys, k)
            end = min(stop, tk * ys[k])
            if end % s:
                w.fail(node, f"reshapes the permuted axis ({xs} -> {ys}) in a way alignment cannot follow")
            pieces.append((k, end // s, s // tk))
            s = end
        if len(pieces) == 1:
            k, _, inner = pieces[0]
            out.append(Place(k, p.gid, inner, p.path))
            continue
        pieces = pieces[::-1]  # outermost first
        path, rest = p.path, n
        for k, m, inner in pieces[:-1]:
            rest //= m
            for g in w.groups_at(p.gid, path):
                w.split(g, m, rest, node)
            out.append(Place(k, p.gid, inner, path + ("o",)))
            path = path + ("i",)
        k, _, inner = pieces[-1]
        out.append(Place(k, p.gid, inner, path))
    return out


def _select(w: Any, p_all: list[Place], dim: int, index: int | None, node: Any) -> list[Place]:
    """Places after taking entry ``index`` of axis ``dim`` (the caller drops the axis): one block
    of a structured group keeps its own permutation (its block permutation is fixed); any other
    permutation of that axis is fixed."""
    out = list(p_all)
    for p in [q for q in p_all if q.dim == dim]:
        out.remove(p)
        if p.path and p.path[-1] == "o" and index is not None and len(p.path) == 1:
            # one block of a structured group: its block permutation is fixed, the block keeps its own
            _fix_place(w, p)
            blocks = w.blocks_of(p.gid)
            out = [
                Place(q.dim, blocks[index], q.inner, q.path[1:])
                if w.find(q.gid) == w.find(p.gid) and q.path[:1] == ("i",)
                else q
                for q in out
                if not (w.find(q.gid) == w.find(p.gid) and q.path[:1] == ("o",))
            ]
        else:
            w.fix_gid(p.gid)
            out = [q for q in out if w.find(q.gid) != w.find(p.gid)]
    return out


def _shift(ps: list[Place], fn) -> list[Place]:
    return [Place(fn(p.dim), p.gid, p.inner, p.path) for p in ps]


def _unify(w: Any, node: Any, a: list[Place], b: list[Place]) -> list[Place]:
    """Two operands' places on the same axes (aligned): their groups are joined place by place."""
    if len(a) != len(b):
        w.fail(node, "combines tensors permuted along different axes")
    key = lambda p: (p.dim, p.inner, p.path)  # noqa: E731
    for p, q in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        if key(p) != key(q):
            w.fail(node, "combines tensors permuted along different axes")
        w.union_at(p.gid, p.path, q.gid, q.path, node)
    return a


def _meet(w: Any, node: Any, ps: list[Place], arg: Any, nd: int) -> None:
    """An unpermuted tensor operand meets permuted axes: a parameter takes the permutation (its
    axes aligned from the right), anything else fixes it (broadcast axes of size 1 excepted)."""
    s = _shape(arg)
    if s is None:
        return
    pname = w.param(arg)
    for p in ps:
        k = p.dim - (nd - len(s))
        if k < 0 or s[k] == 1:
            continue
        if pname is not None and not p.path and s[k] == _size(w, p) * p.inner:
            w.put(pname, k, Perm(k, p.gid, p.inner))
        else:
            _fix_place(w, p)


# --- the operators (as the walker meets them)

#: element-wise on one tensor (any extra arguments are numbers or unpermuted)
UNARY = frozenset({
    "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "leaky_relu",
    "leaky_relu_", "elu", "hardtanh", "hardtanh_", "relu6", "relu6_", "hardswish", "hardswish_",
    "hardsigmoid", "softplus", "mish", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "pow",
    "_to_copy", "to", "type_as", "dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous",
    "alias", "detach", "lift_fresh_copy", "identity", "celu", "selu", "clamp", "clamp_", "clamp_min",
    "clamp_max", "log_sigmoid", "softmax", "_softmax", "log_softmax", "_log_softmax",
})  # fmt: skip
BINARY = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"})
RESHAPE = frozenset({"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze"})
REDUCE = frozenset({"mean", "sum", "amax", "amin"})
#: operators whose permutation this module computes even when one plain group flows in
OVERRIDE = RESHAPE | {"cat"}


def flow(w: Any, node: Any) -> Any:
    """How permutations pass ``node`` when this module handles it (the walker asks first): the
    output's annotation, or :data:`NotImplemented` to leave it to the operator's own rule."""
    op = op_key(node.target)
    ins = node.all_input_nodes
    multi = any(isinstance(w.ann(a), Multi) for a in ins)
    if not multi and op not in OVERRIDE and not _general_case(w, node, op):
        return NotImplemented
    if not any(w.ann(a) is not None for a in ins):
        return NotImplemented
    handler = _HANDLERS.get(op)
    if handler is None:
        w.fail(
            node, "receives a tensor permuted on several axes (attention heads) and is not known to commute"
        )
    return handler(w, node)


def _general_case(w: Any, node: Any, op: str) -> bool:
    """Plain permutations this module still takes over: operands of different ranks broadcast
    together (a positional table of shape (L, d) added to (N, L, d)), and a linear layer applied to
    the last axis while another axis is permuted."""
    if not isinstance(node.meta.get("val"), torch.Tensor):
        return False
    if op in BINARY:
        ranks = {
            len(_shape(a)) for a in node.args[:2] if isinstance(a, torch.fx.Node) and w.ann(a) is not None
        }
        return len(ranks) > 1 or any(
            isinstance(a, torch.fx.Node) and w.ann(a) is None and len(_shape(a) or ()) > len(_shape(node))
            for a in node.args[:2]
        )
    if op == "linear":
        x = w.ann(node.args[0])
        return isinstance(x, Perm) and x.dim != len(_shape(node.args[0])) - 1
    return False


def _unary(w, node):
    x = node.args[0]
    for a in node.all_input_nodes:
        if a is not x and w.ann(a) is not None:
            w.fail(node)
    return pack(w, places(w, x), node)


def _binary(w, node):
    out_shape = _shape(node)
    nd = len(out_shape)
    result: list[Place] | None = None
    operands = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
    for a in operands:
        ps = places(w, a)
        if not ps:
            continue
        off = nd - len(_shape(a))  # broadcasting aligns axes from the right
        ps = _shift(ps, lambda d, off=off: d + off)
        result = ps if result is None else _unify(w, node, result, ps)
    for a in operands:
        if not places(w, a):
            _meet(w, node, result, a, nd)
    return pack(w, result, node)


def _ignore(w, node):
    return None


def _where(w, node):
    cond, x, y = node.args[0], node.args[1], node.args[2]
    if w.ann(cond) is not None:
        w.fail(node, "selects with a permuted condition")
    nd = len(_shape(node))
    result = None
    for a in (x, y):
        if isinstance(a, torch.fx.Node) and w.ann(a) is not None:
            off = nd - len(_shape(a))
            ps = _shift(places(w, a), lambda d, off=off: d + off)
            result = ps if result is None else _unify(w, node, result, ps)
    for a in (cond, x, y):
        if isinstance(a, torch.fx.Node) and w.ann(a) is None:
            _meet(w, node, result, a, nd)
    return pack(w, result, node)


def _masked_fill(w, node):
    x, mask = node.args[0], node.args[1]
    ps = places(w, x)
    if w.ann(mask) is not None:
        ps = _unify(w, node, ps, places(w, mask))
    else:
        _meet(w, node, ps, mask, len(_shape(x)))
    return pack(w, ps, node)


def _reshape_op(w, node):
    ps = places(w, node.args[0])
    xs, ys = _shape(node.args[0]), _shape(node)
    if xs == ys:
        return w.ann(node.args[0])
    return pack(w, _reshape(w, node, ps, xs, ys), node)


def _transpose(w, node):
    op, args = op_key(node.target), node.args
    nd = len(_shape(args[0]))
    if op == "permute":
        order = [int(d) % nd for d in args[1]]
    else:
        order = list(range(nd))
        if op == "t":
            order = order[::-1]
        else:
            i, j = int(args[1]) % nd, int(args[2]) % nd
            order[i], order[j] = order[j], order[i]
    where = {old: new for new, old in enumerate(order)}
    return pack(w, _shift(places(w, args[0]), lambda d: where[d]), node)


def _select_op(w, node):
    args = node.args
    nd = len(_shape(args[0]))
    dim = int(args[1]) % nd
    size = _shape(args[0])[dim]
    index = int(args[2])
    ps = _select(w, places(w, args[0]), dim, index % size if size else index, node)
    return pack(w, _shift(ps, lambda d: d - (d > dim)), node)


def _slice_op(w, node):
    args = node.args
    xs = _shape(args[0])
    nd = len(xs)
    dim = int(args[1]) % nd if len(args) > 1 else 0
    ps = places(w, args[0])
    if _shape(node)[dim] == xs[dim] or not any(p.dim == dim for p in ps):
        return pack(w, ps, node)
    kept = [p for p in ps if p.dim != dim]
    for p in ps:
        if p.dim == dim:
            w.fix_gid(p.gid)
    return pack(
        w, [p for p in kept if w.find(p.gid) not in {w.find(q.gid) for q in ps if q.dim == dim}], node
    )


def _pieces(w, node, dim: int, sizes: list[int], drop: bool) -> list:
    x = node.args[0]
    ps = places(w, x)
    on = [p for p in ps if p.dim == dim]
    out = []
    if drop:  # unbind: each piece is one entry
        for i in range(len(sizes)):
            q = _select(w, list(ps), dim, i, node)
            out.append(Multi(tuple(_shift(q, lambda d: d - (d > dim)))) if q else None)
        return [_repack(w, m, node, i) for i, m in enumerate(out)]
    if not on:
        return [Multi(tuple(ps))] * len(sizes)
    whole = [p for p in on if not p.path]
    if len(on) == 1 and whole and len(set(sizes)) == 1:
        p = whole[0]
        n, k = _size(w, p), len(sizes)
        total = _shape(x)[dim]
        if total == n * p.inner and n % k == 0:
            w.split(p.gid, k, n // k, node)
            w.fix_gid(w.groups_at(p.gid, ("o",))[0])
            blocks = w.blocks_of(p.gid)
            rest = [q for q in ps if q is not p]
            return [Multi(tuple(rest + [Place(dim, blocks[i], p.inner)])) for i in range(k)]
    for p in on:
        w.fix_gid(p.gid)
    rest = [q for q in ps if w.find(q.gid) not in {w.find(p.gid) for p in on}]
    return [Multi(tuple(rest))] * len(sizes)


def _repack(w, m, node, i):
    if m is None or not m.places:
        return None
    vals = node.meta.get("val")
    shape = _shape_of(vals[i]) if isinstance(vals, list | tuple) and i < len(vals) else None
    ps = _merge(w, list(m.places))
    if len(ps) == 1 and not ps[0].path and shape is not None:
        p = ps[0]
        if shape[p.dim] == w.size_at(p.gid, ()) * p.inner:
            return Perm(p.dim, p.gid, p.inner)
    return Multi(tuple(ps))


def _split_op(w, node):
    op, args = op_key(node.target), node.args
    x = args[0]
    nd = len(_shape(x))
    vals = node.meta.get("val") or []
    if op == "unbind":
        dim = int(args[1]) % nd if len(args) > 1 else 0
        return _pieces(w, node, dim, [1] * len(vals), drop=True)
    dim = int(args[2]) % nd if len(args) > 2 else 0
    sizes = [int(v.shape[dim]) for v in vals]
    out = _pieces(w, node, dim, sizes, drop=False)
    return [_repack(w, m, node, i) for i, m in enumerate(out)]


def _stack_op(w, node):
    xs = node.args[0]
    nd = len(_shape(xs[0])) + 1
    dim = int(node.args[1]) % nd if len(node.args) > 1 else 0
    result = None
    for a in xs:
        ps = places(w, a)
        if ps:
            result = ps if result is None else _unify(w, node, result, ps)
    for a in xs:
        if not places(w, a):
            _meet(w, node, result, a, nd - 1)
    return pack(w, _shift(result, lambda d: d + (d >= dim)), node)


def _cat_op(w, node):
    xs = node.args[0]
    nd = len(_shape(xs[0]))
    dim = int(node.args[1]) % nd if len(node.args) > 1 else 0
    result = None
    for a in xs:
        ps = places(w, a)
        if any(p.dim == dim for p in ps):
            w.fail(node, "concatenates along a permuted axis")
        if ps:
            result = ps if result is None else _unify(w, node, result, ps)
    for a in xs:
        if not places(w, a):
            _meet(w, node, result, a, nd)
    return pack(w, result, node)


def _expand_op(w, node):
    xs, ys = _shape(node.args[0]), _shape(node)
    off = len(ys) - len(xs)
    return pack(w, _shift(places(w, node.args[0]), lambda d: d + off), node)


def _reduce_op(w, node):
    args = node.args
    xs = _shape(args[0])
    nd = len(xs)
    dims = args[1] if len(args) > 1 else None
    dims = list(range(nd)) if dims in (None, []) else [dims] if isinstance(dims, int) else list(dims)
    dims = [d % nd for d in dims]
    keep = bool(args[2]) if len(args) > 2 and isinstance(args[2], bool) else bool(node.kwargs.get("keepdim"))
    ps = places(w, args[0])
    gone = {w.find(p.gid) for p in ps if p.dim in dims}
    out = []
    for p in ps:
        if p.dim in dims:
            continue
        if w.find(p.gid) in gone:  # a part of a group reduced over elsewhere: keep it in place
            w.fix_gid(p.gid)
            continue
        out.append(p if keep else Place(p.dim - sum(d < p.dim for d in dims), p.gid, p.inner, p.path))
    return pack(w, out, node)


def _contract(w, node, a: Any, b: Any, a_ax: int, b_ax: int) -> None:
    """The contracted axes of a product: their places must be the same permutation."""
    pa = [p for p in places(w, a) if p.dim == a_ax]
    pb = [p for p in places(w, b) if p.dim == b_ax]
    if not pa and not pb:
        return
    if not pa or not pb:
        if not pa and w.param(a) is None:
            for p in pb:
                _fix_place(w, p)
        if not pb and w.param(b) is None:
            for p in pa:
                _fix_place(w, p)
        return
    _unify(
        w,
        node,
        [Place(0, p.gid, p.inner, p.path) for p in pa],
        [Place(0, p.gid, p.inner, p.path) for p in pb],
    )


def _batch_places(w, node, operands: list[Any], out_nd: int) -> list[Place]:
    """Places on the broadcast (batch) axes of a product's operands (all but their last two axes),
    aligned from the right and joined; the last operand's place is kept (its other axes continue
    into the output). An operand unpermuted on such an axis (and not broadcast there) fixes it."""
    by_axis: dict[int, list[Place]] = {}
    for arg in operands:
        nd = len(_shape(arg))
        for p in places(w, arg):
            if p.dim < nd - 2:
                by_axis.setdefault(out_nd - nd + p.dim, []).append(p)
    out = []
    for d, ps in sorted(by_axis.items()):
        first = ps[0]
        for q in ps[1:]:
            if q.inner != first.inner:
                w.fail(node, "combines tensors permuted along different axes")
            w.union_at(first.gid, first.path, q.gid, q.path, node)
        for arg in operands:
            s = _shape(arg)
            k = d - (out_nd - len(s))
            if 0 <= k < len(s) - 2 and s[k] != 1 and not any(p.dim == k for p in places(w, arg)):
                _fix_place(w, first)
        out.append(Place(d, ps[-1].gid, ps[-1].inner, ps[-1].path))
    return out


def _matmul_op(w, node):
    a, b = node.args[0], node.args[1]
    sa, sb, so = _shape(a), _shape(b), _shape(node)
    if len(sa) < 2 or len(sb) < 2:
        w.fail(node, "is a product with a vector operand")
    pname = w.param(b)
    if pname is not None and len(sb) == 2:  # x @ W: a linear layer (W laid out (in, out))
        _contract(w, node, a, b, len(sa) - 1, 0)
        for p in places(w, a):
            if p.dim == len(sa) - 1:
                if p.path:
                    w.fail(node, "applies a weight to part of a structured permutation")
                w.put(pname, 0, Perm(0, p.gid, p.inner))
        g = w.new(sb[1], pname)
        w.put(pname, 1, Perm(1, g))
        keep = [p for p in places(w, a) if p.dim < len(sa) - 1]
        return pack(w, keep + [Place(len(so) - 1, g)], node)
    if w.param(a) is not None:
        w.freeze_inputs(node)
    _contract(w, node, a, b, len(sa) - 1, len(sb) - 2)
    out = _batch_places(w, node, [a, b], len(so))
    out += [Place(len(so) - 2, p.gid, p.inner, p.path) for p in places(w, a) if p.dim == len(sa) - 2]
    out += [Place(len(so) - 1, p.gid, p.inner, p.path) for p in places(w, b) if p.dim == len(sb) - 1]
    return pack(w, out, node)


def _sdpa_op(w, node):
    q, k, v = node.args[0], node.args[1], node.args[2]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if isinstance(mask, torch.fx.Node) and w.ann(mask) is not None:
        w.fail(node, "takes a permuted attention mask")
    sq, sk, sv, so = _shape(q), _shape(k), _shape(v), _shape(node)
    for arg, s in ((q, sq), (k, sk), (v, sv)):
        if any(p.dim == len(s) - 2 for p in places(w, arg)):
            w.fail(node, "receives permuted sequence positions")
    _contract(w, node, q, k, len(sq) - 1, len(sk) - 1)
    out = _batch_places(w, node, [q, k, v], len(so))
    if isinstance(mask, torch.fx.Node):  # a per-head mask or bias moves with the heads, or fixes them
        _meet(w, node, _canonical(w, out), mask, len(so))
    out += [Place(len(so) - 1, p.gid, p.inner, p.path) for p in places(w, v) if p.dim == len(sv) - 1]
    return pack(w, out, node)


def _linear_op(w, node):
    # a linear layer applied to the last axis while other axes carry permutations
    x = node.args[0]
    sx = _shape(x)
    ps = places(w, x)
    if any(p.dim == len(sx) - 1 for p in ps):
        w.fail(node, "applies a linear layer to part of a structured permutation")
    wt = w.param(node.args[1])
    if wt is None:
        w.fail(node)
    b = w.param(node.args[2]) if len(node.args) > 2 else None
    so = _shape(node)
    g = w.new(so[-1], wt.removesuffix(".weight"))
    w.put(wt, 0, Perm(0, g))
    w.put(b, 0, Perm(0, g))
    return pack(w, ps + [Place(len(so) - 1, g)], node)


def _layer_norm_op(w, node):
    x = node.args[0]
    sx = _shape(x)
    first = len(sx) - len(node.args[1])
    ps = places(w, x)
    if any(p.dim >= first for p in ps):
        w.fail(node, "normalises over an axis permuted by a structured (per-head) permutation")
    out = pack(w, ps, node)
    return [out, None, None] if op_key(node.target) == "native_layer_norm" else out


_HANDLERS = {
    **dict.fromkeys(UNARY, _unary),
    **dict.fromkeys(BINARY, _binary),
    **dict.fromkeys(RESHAPE, _reshape_op),
    **dict.fromkeys(REDUCE, _reduce_op),
    "transpose": _transpose, "permute": _transpose, "t": _transpose, "swapaxes": _transpose,
    "select": _select_op, "slice": _slice_op, "split": _split_op, "split_with_sizes": _split_op,
    "chunk": _split_op, "unbind": _split_op, "stack": _stack_op, "cat": _cat_op, "expand": _expand_op,
    "matmul": _matmul_op, "bmm": _matmul_op, "scaled_dot_product_attention": _sdpa_op,
    "linear": _linear_op, "layer_norm": _layer_norm_op, "native_layer_norm": _layer_norm_op,
    "masked_fill": _masked_fill, "where": _where,
    **dict.fromkeys(
        ("_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_size", "sym_numel", "sym_stride"), _ignore
    ),
}  # fmt: skip


# ============================================================================ interval helpers


def interval_matmul(
    al: torch.Tensor, au: torch.Tensor, bl: torch.Tensor, bu: torch.Tensor, budget: int = 1 << 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``A @ B`` for ``A`` in ``[al, au]`` and ``B`` in ``[bl, bu]``: each product
    ``a_ik b_kj`` between the smallest and the largest of its four corner products, summed over
    ``k`` (exact per term; as auto_LiRPA bounds a product of two perturbed tensors). The corner
    products are formed about ``budget`` elements at a time (columns of ``B`` in chunks)."""
    a_l, a_u = al.unsqueeze(-1), au.unsqueeze(-1)
    batch = torch.broadcast_shapes(al.shape[:-2], bl.shape[:-2]).numel()
    step = max(1, budget // max(1, batch * al.shape[-2] * al.shape[-1]))
    los, his = [], []
    for j in range(0, bl.shape[-1], step):
        b_l, b_u = bl[..., j : j + step].unsqueeze(-3), bu[..., j : j + step].unsqueeze(-3)
        c1, c2 = a_l * b_l, a_l * b_u
        lo, hi = torch.minimum(c1, c2), torch.maximum(c1, c2)
        del c1, c2
        c3, c4 = a_u * b_l, a_u * b_u
        los.append(torch.minimum(lo, torch.minimum(c3, c4)).sum(-2))
        his.append(torch.maximum(hi, torch.maximum(c3, c4)).sum(-2))
    if len(los) == 1:
        return los[0], his[0]
    return torch.cat(los, -1), torch.cat(his, -1)


def softmax_interval(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``softmax(x)`` over ``dim`` for ``x`` in ``[lo, hi]``: ``p_i`` grows with ``x_i`` and
    falls with every other ``x_j``, so ``p_i >= e^{l_i} / (e^{l_i} + sum_{j != i} e^{u_j})`` and
    ``p_i <= e^{u_i} / (e^{u_i} + sum_{j != i} e^{l_j})`` (exact per coordinate)."""
    shift = hi.amax(dim=dim, keepdim=True).clamp_min(torch.finfo(hi.dtype).min)
    el, eu = torch.exp(lo - shift), torch.exp(hi - shift)
    sl, su = el.sum(dim=dim, keepdim=True), eu.sum(dim=dim, keepdim=True)
    lower = el / (el + (su - eu).clamp_min(0))
    upper = eu / (eu + (sl - el).clamp_min(0))
    return torch.nan_to_num(lower, nan=0.0), torch.nan_to_num(upper, nan=1.0).clamp_max(1.0)


def _cr(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (hi + lo) / 2, (hi - lo) / 2


def _square(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.where(lo > 0, lo * lo, torch.where(hi < 0, hi * hi, torch.zeros_like(lo)))
    return low, torch.maximum(lo * lo, hi * hi)


# ============================================================================ rules


class _Flow(Rule):
    """A rule whose permutation behaviour is this module's :func:`flow` handler."""

    def permute(self, w, node):
        if not any(w.ann(a) is not None for a in node.all_input_nodes):
            self.unpermuted(w, node)
            return None
        return _HANDLERS[op_key(node.target)](w, node)


def _template(node: torch.fx.Node, ctx_error) -> list[int]:
    """The node's whole shape with its one symbolic size (the batch) as ``-1``."""
    shape = full_shape(node)
    out = [s if isinstance(s, int) else -1 for s in shape]
    if out.count(-1) > 1:
        raise ctx_error("reshape with several symbolic sizes")
    return out


def reshape_step(ctx) -> Step:
    """A reshape whose batch axis is anywhere (kind ``reshape_any``): the node's own output shape,
    its batch size left to the input (for reshapes the per-sample kind cannot express)."""
    x = ctx.node.all_input_nodes[0]
    return ctx.make("reshape_any", (ctx.src(x),), dict(shape=_template(ctx.node, ctx.error)))


@register("unflatten")
class Unflatten(_Flow):
    bounds_ops = frozenset({aten.unflatten.int})
    kinds = ("reshape_any",)
    affine = True

    def step(self, ctx):
        return reshape_step(ctx)

    def linear(self, step, xs):
        return xs[0].reshape(step.params["shape"])

    def lipschitz(self, step, norms):
        return 1.0, "isometry"


@register("transpose", "permute", "t", "swapaxes")
class Transpose(_Flow):
    """Axes reordered (kind ``transpose``, on the whole tensor: the batch axis may move)."""

    bounds_ops = frozenset({aten.transpose.int, aten.permute.default, aten.t.default, aten.swapaxes.default})
    kinds = ("transpose",)
    affine = True

    def step(self, ctx):
        node = ctx.node
        nd = node.args[0].meta["val"].ndim
        op = op_key(node.target)
        if op == "permute":
            order = [int(d) % nd for d in node.args[1]]
        else:
            order = list(range(nd))
            if op == "t":
                order = order[::-1]
            else:
                i, j = int(node.args[1]) % nd, int(node.args[2]) % nd
                order[i], order[j] = order[j], order[i]
        return ctx.make("transpose", (ctx.src(node.args[0]),), dict(order=tuple(order)))

    def linear(self, step, xs):
        return xs[0].permute(step.params["order"])

    def lipschitz(self, step, norms):
        return 1.0, "isometry (axes reordered)"


def _is_batch(node: torch.fx.Node, dim: int) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not isinstance(val.shape[dim], int)


@register("select", "slice")
class Select(_Flow):
    """One entry (``select``) or a range (``slice``) of an axis (kind ``select``)."""

    bounds_ops = frozenset({aten.select.int, aten.slice.Tensor})
    kinds = ("select",)
    affine = True

    def step(self, ctx):
        node, a = ctx.node, ctx.args
        x = node.args[0]
        nd = x.meta["val"].ndim
        dim = int(a["dim"]) % nd
        if op_key(node.target) == "select":
            if _is_batch(x, dim):
                raise ctx.error("selection along the batch axis")
            return ctx.make("select", (ctx.src(x),), dict(dim=dim, index=int(a["index"]), slice=None))
        size = x.meta["val"].shape[dim]
        start, end, stp = a.get("start"), a.get("end"), int(a.get("step") or 1)
        start = 0 if start is None else int(start)
        if isinstance(end, int) and end >= 2**62:  # ``x[a:]`` on a symbolic size: to the end
            end = None
        end = None if end is None or (isinstance(size, int) and int(end) >= size) else int(end)
        if _is_batch(x, dim) and (start, end, stp) != (0, None, 1):
            raise ctx.error("slice along the batch axis")
        return ctx.make("select", (ctx.src(x),), dict(dim=dim, index=None, slice=(start, end, stp)))

    def linear(self, step, xs):
        p = step.params
        if p["index"] is not None:
            return xs[0].select(p["dim"], p["index"])
        idx = [slice(None)] * xs[0].ndim
        idx[p["dim"]] = slice(*p["slice"])
        return xs[0][tuple(idx)]

    def lipschitz(self, step, norms):
        return 1.0, "coordinate projection"

    def unpermuted(self, w, node):
        if op_key(node.target) == "slice":  # a slice of a parameter keeps its axes
            w.view_of_param(node, node.args[0])
        else:
            w.freeze_inputs(node)


@register("split", "split_with_sizes", "chunk", "unbind")
class Split(_Flow):
    """Pieces of an axis (kind ``chunk``: one step per piece; the bounds reader reads output 0
    from the node's own step and output ``i`` from :meth:`item`)."""

    bounds_ops = frozenset({
        aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,
    })  # fmt: skip
    kinds = ("chunk",)
    affine = True

    def step(self, ctx):
        node = ctx.node
        x = node.args[0]
        nd = x.meta["val"].ndim
        op = op_key(node.target)
        dim = int(node.args[1] if op == "unbind" and len(node.args) > 1 else ctx.args.get("dim", 0)) % nd
        if _is_batch(x, dim):
            raise ctx.error("split along the batch axis")
        vals = node.meta["val"]
        starts, lengths = [], []
        pos = 0
        for v in vals:
            n = 1 if op == "unbind" else int(v.shape[dim])
            starts.append(pos)
            lengths.append(n)
            pos += n
        params = dict(dim=dim, starts=tuple(starts), lengths=tuple(lengths), squeeze=op == "unbind", index=0)
        return ctx.make("chunk", (ctx.src(x),), params)

    @staticmethod
    def item(step: Step, index: int, name: str) -> Step:
        """The step of output ``index`` (named ``name``)."""
        return Step(
            name=name, kind="chunk", inputs=step.inputs, params={**step.params, "index": index},
            in_shape=step.in_shape, position=step.position, module=step.module, op=step.op,
        )  # fmt: skip

    def linear(self, step, xs):
        p = step.params
        i = p["index"]
        out = xs[0].narrow(p["dim"], p["starts"][i], p["lengths"][i])
        return out.squeeze(p["dim"]) if p["squeeze"] else out

    def lipschitz(self, step, norms):
        return 1.0, "coordinate projection"


@register("stack")
class Stack(_Flow):
    bounds_ops = frozenset({aten.stack.default})
    kinds = ("stack",)
    affine = True

    def step(self, ctx):
        xs = ctx.node.args[0]
        nd = xs[0].meta["val"].ndim + 1
        dim = int(ctx.args.get("dim", 0)) % nd
        if any(ctx.src(t) in ctx.const for t in xs):
            raise ctx.error("stack with a constant tensor")
        return ctx.make("stack", tuple(ctx.src(t) for t in xs), dict(dim=dim))

    def linear(self, step, xs):
        return torch.stack(xs, dim=step.params["dim"])

    def lipschitz(self, step, norms):
        return 1.0, "isometry of the stacked inputs"


@register("expand")
class Expand(_Flow):
    """Broadcast copies (kind ``expand``): each entry copied ``k`` times, Lipschitz ``sqrt(k)``."""

    bounds_ops = frozenset({aten.expand.default})
    kinds = ("expand",)
    affine = True

    def step(self, ctx):
        node = ctx.node
        return ctx.make("expand", (ctx.src(node.args[0]),), dict(shape=_template(node, ctx.error)))

    def linear(self, step, xs):
        shape = list(step.params["shape"])
        off = len(shape) - xs[0].ndim
        shape = [xs[0].shape[i - off] if s == -1 and i >= off else s for i, s in enumerate(shape)]
        return xs[0].expand(shape)

    def lipschitz(self, step, norms):
        k = math.prod(step.out_shape) // max(1, math.prod(step.in_shape)) if step.in_shape else 1
        return math.sqrt(k), f"sqrt({k}) (each entry copied {k} times)"

    def unpermuted(self, w, node):
        xs, ys = full_shape(node.args[0]), full_shape(node)
        if xs is not None and ys is not None and len(xs) == len(ys):
            w.view_of_param(node, node.args[0])
        else:
            w.freeze_inputs(node)


@register("masked_fill")
class MaskedFill(_Flow):
    """``x`` with the entries of a constant mask set to a number (kind ``masked_fill``: causal
    masks before a softmax). IBP: the masked entries are that number (an infinite one is taken
    as the most negative/positive half-finite number, which a following softmax treats alike),
    the others keep their box; Lipschitz 1. Permutations pass (the mask's broadcast axes
    excepted)."""

    bounds_ops = frozenset({aten.masked_fill.Scalar, aten.masked_fill.Tensor})
    kinds = ("masked_fill",)

    def step(self, ctx):
        a = ctx.args
        mask, value = a["mask"], a["value"]
        if isinstance(mask, torch.fx.Node) and ctx.src(mask) not in ctx.const:
            raise ctx.error("masked_fill with a mask computed from the input")
        value = ctx.c(value)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ctx.error("masked_fill with a tensor value")
            value = float(value)
        mask = ctx.c(mask).to(torch.float32)  # a float mask moves with the graph's copies
        return ctx.make("masked_fill", (ctx.src(a["self"]),), dict(mask=mask, value=float(value)))

    def forward(self, step, xs):
        return xs[0].masked_fill(step.params["mask"] > 0.5, step.params["value"])

    def ibp(self, step, ins):
        c, r = ins[0]
        v = step.params["value"]
        if math.isinf(v):
            v = math.copysign(torch.finfo(c.dtype).max / 2, v)
        m = step.params["mask"] > 0.5
        return c.masked_fill(m, v), r.masked_fill(m, 0.0)

    def lipschitz(self, step, norms):
        return 1.0, "coordinate projection (masked entries constant)"


@register("softmax", "_softmax")
class Softmax(_Flow):
    """``softmax`` over one axis (kind ``softmax``): IBP by :func:`softmax_interval`; Lipschitz
    ``1/2`` (its Jacobian ``diag(p) - p p^T`` is symmetric with Gershgorin row sums
    ``2 p_i (1 - p_i) <= 1/2``). Permutations of any axis pass through (softmax commutes with
    permuting the axis it normalises)."""

    bounds_ops = frozenset({aten.softmax.int, aten._softmax.default})
    kinds = ("softmax",)

    def step(self, ctx):
        node = ctx.node
        nd = node.args[0].meta["val"].ndim
        dim = int(ctx.args["dim"]) % nd
        if _is_batch(node.args[0], dim):
            raise ctx.error("softmax over the batch axis")
        return ctx.make("softmax", (ctx.src(node.args[0]),), dict(dim=dim))

    def forward(self, step, xs):
        return torch.softmax(xs[0], dim=step.params["dim"])

    def ibp(self, step, ins):
        c, r = ins[0]
        return _cr(*softmax_interval(c - r, c + r, step.params["dim"]))

    def lipschitz(self, step, norms):
        return 0.5, "1/2 (softmax Jacobian: Gershgorin)"


def _constants(params: dict[str, Any], const: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Constant operands kept as top-level parameters (``c0``, ``c1``, ...: a graph's device and
    dtype copy converts those)."""
    params["const"] = tuple(sorted(const))
    for i, v in const.items():
        params[f"c{i}"] = v
    return params


def _operands(step: Step, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The step's operands in order: tensor inputs, with constants (``c{i}``) in place."""
    const = step.params.get("const") or ()
    it = iter(xs)
    return [step.params[f"c{i}"] if i in const else next(it) for i in range(step.params["arity"])]


def _shared_heads(
    step: Step, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value heads repeated for the query heads that share them (grouped query attention)."""
    if step.params.get("gqa") and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        return k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    return k, v


def _scale(step: Step, q: torch.Tensor) -> float:
    """The scores' scale: the step's, or ``1 / sqrt(d_k)``."""
    scale = step.params.get("scale")
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def _operand_boxes(
    step: Step, ins: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[torch.Tensor, ...]]:
    const = step.params.get("const") or ()
    it = iter(ins)
    out = []
    for i in range(step.params["arity"]):
        if i in const:
            v = step.params[f"c{i}"]
            out.append((v, v))
        else:
            c, r = next(it)
            out.append((c - r, c + r))
    return out


def tensor_product_step(ctx, a: Any, b: Any, transpose_b: bool = False, bias: Any = None) -> Step:
    """``a @ b`` (``a @ b^T`` with ``transpose_b``, as ``linear`` computes) plus an optional constant
    ``bias`` where at least one operand is computed from the input (kind ``matmul``; with one
    constant operand, the affine kind ``matmul_const``). For the ``linear`` / ``mm`` rules when
    their weight is a tensor."""
    srcs = [ctx.src(t) if isinstance(t, torch.fx.Node) else None for t in (a, b)]
    const = {i: ctx.c(t) for i, (t, s) in enumerate(zip((a, b), srcs)) if s is None or s in ctx.const}
    inputs = tuple(s for i, s in enumerate(srcs) if i not in const)
    bias_v = ctx.c(bias) if bias is not None else None
    if bias_v is not None and not isinstance(bias_v, torch.Tensor):
        raise ctx.error("matmul with a computed bias")
    if len(const) == 1:
        ((i, wv),) = const.items()
        wv = wv.transpose(-1, -2) if transpose_b and i == 1 else wv
        return ctx.make(
            "matmul_const", inputs, dict(weight=wv, side="right" if i == 1 else "left", bias=bias_v)
        )
    return ctx.make("matmul", inputs, dict(arity=2, const=(), tb=transpose_b, bias=bias_v))


@register("matmul", "bmm")
class MatMul(_Flow):
    """A product of two tensors (kind ``matmul``): IBP by :func:`interval_matmul`; no global Lipschitz
    constant (it grows with the operands)."""

    bounds_ops = frozenset({aten.matmul.default, aten.bmm.default})
    kinds = ("matmul",)

    def step(self, ctx):
        a = ctx.node.args
        return tensor_product_step(ctx, a[0], a[1])

    def forward(self, step, xs):
        a, b = _operands(step, xs)
        out = a @ (b.transpose(-1, -2) if step.params["tb"] else b)
        return out if step.params["bias"] is None else out + step.params["bias"]

    def ibp(self, step, ins):
        (al, au), (bl, bu) = _operand_boxes(step, ins)
        if step.params["tb"]:
            bl, bu = bl.transpose(-1, -2), bu.transpose(-1, -2)
        lo, hi = interval_matmul(al, au, bl, bu)
        if step.params["bias"] is not None:
            lo, hi = lo + step.params["bias"], hi + step.params["bias"]
        return _cr(lo, hi)

    def lipschitz(self, step, norms):
        return math.inf, "no global bound: product of two tensors (dot-product attention)"

    def local_lipschitz(self, step, boxes, norms):
        """``d(AB) = dA B + A dB`` matrix by matrix, so ``||J|| <= sqrt(k_A max ||B||^2 + k_B max ||A||^2)``
        over the box, each ``||.||_2`` bounded by the Frobenius norm of the largest magnitudes and
        ``k`` the copies a broadcast operand makes (a constant operand adds no term)."""
        (al, au), (bl, bu) = _operand_boxes(step, [(((lo + hi) / 2), (hi - lo) / 2) for lo, hi in boxes])
        if step.params["tb"]:
            bl, bu = bl.transpose(-1, -2), bu.transpose(-1, -2)
        const = step.params.get("const") or ()
        a2 = torch.maximum(al.abs(), au.abs()).square().sum((-1, -2))
        b2 = torch.maximum(bl.abs(), bu.abs()).square().sum((-1, -2))
        lead = torch.broadcast_shapes(a2.shape, b2.shape)
        n = max(1, math.prod(lead[1:]))
        ka = n // max(1, math.prod(a2.shape[1:])) if 0 not in const else 0
        kb = n // max(1, math.prod(b2.shape[1:])) if 1 not in const else 0
        tot = ka * b2.broadcast_to(lead) + kb * a2.broadcast_to(lead)
        return tot.reshape(lead[0], -1).amax(1).sqrt(), "sqrt(k_A max||B||^2 + k_B max||A||^2) over the box"


@register()
class MatMulConst(Rule):
    """``x @ W`` or ``W @ x`` with a constant ``W`` (kind ``matmul_const``): affine, ``|W|`` maps
    radii, Lipschitz the largest spectral norm of ``W``'s matrices."""

    kinds = ("matmul_const",)
    affine = True

    def forward(self, step, xs):
        out = self.linear(step, xs)
        return out if step.params.get("bias") is None else out + step.params["bias"]

    def linear(self, step, xs):
        wv = step.params["weight"]
        return xs[0] @ wv if step.params["side"] == "right" else wv @ xs[0]

    def radius(self, step, rs):
        wv = step.params["weight"].abs()
        return rs[0] @ wv if step.params["side"] == "right" else wv @ rs[0]

    def lipschitz(self, step, norms):
        wv = step.params["weight"].double()
        return float(torch.linalg.matrix_norm(wv, ord=2).max()), "spectral norm"


@register("scaled_dot_product_attention")
class Attention(_Flow):
    """``softmax(q k^T * scale + mask) v`` (kind ``sdpa``; boolean or additive mask, causal, grouped
    query heads). IBP: interval product for the scores, :func:`softmax_interval`, interval product
    with ``v``. No global Lipschitz constant (dot-product attention is not globally Lipschitz)."""

    bounds_ops = frozenset({aten.scaled_dot_product_attention.default})
    kinds = ("sdpa",)

    def step(self, ctx):
        node, a = ctx.node, ctx.args
        qkv = (a["query"], a["key"], a["value"])
        if float(a.get("dropout_p") or 0.0) != 0.0:
            raise ctx.error("attention dropout (dropout_p > 0)", "; call model.eval()")
        mask = a.get("attn_mask")
        if isinstance(mask, torch.fx.Node):
            if ctx.src(mask) not in ctx.const:
                raise ctx.error("attention with a mask computed from the input")
            mask = ctx.c(mask)
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:  # additive: moved with the graph
            mask = torch.zeros(mask.shape).masked_fill(~mask, -math.inf)
        srcs = [ctx.src(t) for t in qkv]
        const = {i: ctx.c(t) for i, (t, s) in enumerate(zip(qkv, srcs)) if s in ctx.const}
        inputs = tuple(s for i, s in enumerate(srcs) if i not in const)
        params = dict(
            arity=3, mask=mask, causal=bool(a.get("is_causal")), scale=a.get("scale"),
            gqa=bool(a.get("enable_gqa")),
        )  # fmt: skip
        del node
        return ctx.make("sdpa", inputs, _constants(params, const))

    def forward(self, step, xs):
        return self._math(step, *xs)

    def _math(self, step, *xs):
        """``scaled_dot_product_attention`` written out (softmax of the scaled, masked scores, times
        ``v``; the same function to rounding): the fused kernels have neither a forward-mode
        derivative nor a second derivative on every device, which tangents and Jacobian norms need."""
        q, k, v = _operands(step, list(xs))
        k, v = _shared_heads(step, q, k, v)
        return self._probabilities(step, q, k) @ v

    @staticmethod
    def _probabilities(step, q, k):
        """``softmax(q k^T * scale + mask)`` (``k`` with one head per query head)."""
        p = step.params
        s = (q @ k.transpose(-1, -2)) * _scale(step, q)
        if p["causal"]:
            keep = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device).tril()
            s = s.masked_fill(~keep, -math.inf)
        if p["mask"] is not None:
            s = s + p["mask"].to(s.dtype)
        return torch.softmax(s, -1)

    def tangent_radius(self, step, xs, rs):
        """``|J(x)| r`` exactly, from the attention's derivatives written out instead of the dense
        per-sample Jacobian (``(L dv) x (3 L dk)`` entries per head: seconds per step at 64
        tokens). With ``P`` the probabilities, ``o = P v``, ``s`` the scale and ``D_ij = v_j - o_i``:
        ``do_i/dv_j = P_ij I`` (so ``P r_v``); ``do_i/dk_j = s P_ij D_ij q_i^T``, a rank-one block whose
        absolute value is ``s P_ij |D_ij| |q_i|^T``; ``do_i/dq_i = s sum_j P_ij D_ij k_j^T`` (the one
        block of query ``i``, a ``dv x dk`` matrix taken in absolute value as it is). Rows of queries
        in chunks: ``D`` holds ``L x S x dv`` numbers per head."""
        q, k, v = _operands(step, list(xs))
        const = step.params.get("const") or ()
        it = iter(rs)
        radius = {i: next(it) for i in range(3) if i not in const}
        k, v = _shared_heads(step, q, k, v)
        for i in (1, 2):
            if i in radius:
                radius[i] = _shared_heads(step, q, radius[i], radius[i])[0]
        scale = abs(_scale(step, q))
        prob = self._probabilities(step, q, k)
        out = prob @ v
        total = prob @ radius[2] if 2 in radius else torch.zeros_like(out)
        if 0 not in radius and 1 not in radius:
            return total
        per_row = math.prod(prob.shape[:-2]) * prob.shape[-1] * max(v.shape[-1], k.shape[-1])
        chunk = max(1, (1 << 23) // max(per_row, 1))
        parts = []
        for i0 in range(0, prob.shape[-2], chunk):
            rows = slice(i0, i0 + chunk)
            p_i = prob[..., rows, :]  # (..., l, S)
            d = v.unsqueeze(-3) - out[..., rows, :].unsqueeze(-2)  # (..., l, S, dv)
            part = torch.zeros_like(out[..., rows, :])
            if 1 in radius:  # keys: sum_j P_ij |D_ij| (|q_i| . r_k[j])
                c = q[..., rows, :].abs() @ radius[1].transpose(-1, -2)  # (..., l, S)
                part = part + scale * ((p_i * c).unsqueeze(-1) * d.abs()).sum(-2)
            if 0 in radius:  # queries: |sum_j P_ij D_ij k_j^T| r_q[i]
                m = (p_i.unsqueeze(-1) * d).transpose(-1, -2) @ k.unsqueeze(-3)  # (..., l, dv, dk)
                part = part + scale * (m.abs() @ radius[0][..., rows, :].unsqueeze(-1)).squeeze(-1)
            parts.append(part)
        return total + torch.cat(parts, -2)

    def ibp(self, step, ins):
        (ql, qu), (kl, ku), (vl, vu) = _operand_boxes(step, ins)
        p = step.params
        if p["gqa"] and kl.shape[-3] != ql.shape[-3]:
            rep = ql.shape[-3] // kl.shape[-3]
            kl, ku, vl, vu = (t.repeat_interleave(rep, dim=-3) for t in (kl, ku, vl, vu))
        scale = _scale(step, ql)
        sl, su = interval_matmul(ql, qu, kl.transpose(-1, -2), ku.transpose(-1, -2))
        sl, su = sl * scale, su * scale
        L, S = sl.shape[-2], sl.shape[-1]
        neg = torch.tensor(-math.inf, dtype=sl.dtype, device=sl.device)
        if p["causal"]:
            keep = torch.ones(L, S, dtype=torch.bool, device=sl.device).tril()
            sl, su = torch.where(keep, sl, neg), torch.where(keep, su, neg)
        mask = p["mask"]
        if mask is not None:
            sl, su = sl + mask, su + mask
        pl, pu = softmax_interval(sl, su, -1)
        return _cr(*interval_matmul(pl, pu, vl, vu))

    def lipschitz(self, step, norms):
        return math.inf, "no global bound: dot-product attention"

    def local_lipschitz(self, step, boxes, norms):
        """Over the box, head by head: ``d out = dP V + P dV`` and ``dP = J dS`` with ``||J|| <= 1/2``
        (softmax) and ``dS = s (dq k^T + q dk^T)``, so ``||J_attn|| <= sqrt((s/2)^2 ||V||^2 (||K||^2 +
        ||Q||^2) + ||P||^2)``; ``||Q||``, ``||K||``, ``||V||`` by the Frobenius norm of the largest
        magnitudes, ``||P|| <= sqrt(max column sum)`` of the upper probabilities (rows sum to 1);
        key and value heads shared by ``g`` query heads count ``g`` times."""
        ins = [((lo + hi) / 2, (hi - lo) / 2) for lo, hi in boxes]
        (ql, qu), (kl, ku), (vl, vu) = _operand_boxes(step, ins)
        p = step.params
        const = p.get("const") or ()
        rep = 1
        if p["gqa"] and kl.shape[-3] != ql.shape[-3]:
            rep = ql.shape[-3] // kl.shape[-3]
            kl, ku, vl, vu = (t.repeat_interleave(rep, dim=-3) for t in (kl, ku, vl, vu))
        scale = _scale(step, ql)
        fro2 = lambda lo, hi: torch.maximum(lo.abs(), hi.abs()).square().sum((-1, -2))  # noqa: E731
        q2, k2, v2 = fro2(ql, qu), fro2(kl, ku), fro2(vl, vu)
        # the probabilities' box, as ibp() computes it
        sl, su = interval_matmul(ql, qu, kl.transpose(-1, -2), ku.transpose(-1, -2))
        sl, su = sl * abs(scale), su * abs(scale)
        if scale < 0:
            sl, su = -su, -sl
        neg = torch.tensor(-math.inf, dtype=sl.dtype, device=sl.device)
        if p["causal"]:
            keep = torch.ones(sl.shape[-2], sl.shape[-1], dtype=torch.bool, device=sl.device).tril()
            sl, su = torch.where(keep, sl, neg), torch.where(keep, su, neg)
        if p["mask"] is not None:
            sl, su = sl + p["mask"], su + p["mask"]
        _, pu = softmax_interval(sl, su, -1)
        p2 = pu.sum(-2).amax(-1).clamp_max(pu.shape[-2])  # ||P||_2^2 <= ||P||_1 ||P||_inf = max col sum
        half = (scale / 2) ** 2 * v2
        tot = torch.zeros_like(half)
        if 0 not in const:
            tot = tot + half * k2
        if 1 not in const:
            tot = tot + rep * half * q2
        if 2 not in const:
            tot = tot + rep * p2
        per_sample = tot.reshape(tot.shape[0], -1).amax(1).sqrt()
        return per_sample, "sqrt((s/2)^2 ||V||^2 (||K||^2 + ||Q||^2) + ||P||^2) over the box"


@register("group_norm", "native_group_norm")
class GroupNorm(Rule):
    """``gamma (x - mean_g) / sqrt(var_g + eps) + beta`` over each group of channels (and all
    spatial positions) (kind ``groupnorm``). IBP as auto_LiRPA bounds the decomposed norm, per
    group: ``x - mean`` as a difference of independent intervals, its square, the mean of that
    (the variance box), ``sqrt(. + eps)``, reciprocal, product, then the per-channel affine map.
    Lipschitz: the normalisation's Jacobian has norm at most ``1 / sqrt(var + eps)``, so
    ``max |gamma| / sqrt(eps)`` globally (honest but loose: the variance floor is only ``eps``) and
    ``max |gamma| / sqrt(min var_lower + eps)`` over an input box.

    Permutations: channels permute within groups and groups as wholes (a structured permutation
    of (groups, channels per group)); weight and bias follow the channels."""

    bounds_ops = frozenset({aten.group_norm.default, aten.native_group_norm.default})
    kinds = ("groupnorm",)

    def step(self, ctx):
        a = ctx.args
        if op_key(ctx.node.target) == "native_group_norm":
            groups, eps = int(a["group"]), float(a["eps"])
        else:
            groups, eps = int(a["num_groups"]), float(a["eps"])
        params = dict(groups=groups, eps=eps, weight=ctx.c(a["weight"]), bias=ctx.c(a["bias"]))
        return ctx.make("groupnorm", (ctx.src(a["input"]),), params)

    def forward(self, step, xs):
        p = step.params
        return F.group_norm(xs[0], p["groups"], p["weight"], p["bias"], p["eps"])

    def _variance(self, step, lo, hi):
        g = step.params["groups"]
        n = lo.shape[0]
        lo, hi = lo.reshape(n, g, -1), hi.reshape(n, g, -1)
        dl = lo - hi.mean(-1, keepdim=True)
        du = hi - lo.mean(-1, keepdim=True)
        ql, qu = _square(dl, du)
        return dl, du, ql.mean(-1, keepdim=True), qu.mean(-1, keepdim=True)

    def ibp(self, step, ins):
        c, r = ins[0]
        p = step.params
        dl, du, vl, vu = self._variance(step, c - r, c + r)
        il, iu = 1.0 / torch.sqrt(vu + p["eps"]), 1.0 / torch.sqrt(vl + p["eps"])
        lo = torch.minimum(dl * il, dl * iu).reshape(c.shape)
        hi = torch.maximum(du * il, du * iu).reshape(c.shape)
        cc, rr = _cr(lo, hi)
        shape = (1, -1) + (1,) * (c.ndim - 2)
        if p["weight"] is not None:
            cc, rr = cc * p["weight"].reshape(shape), rr * p["weight"].abs().reshape(shape)
        if p["bias"] is not None:
            cc = cc + p["bias"].reshape(shape)
        return cc, rr

    def _gamma(self, step) -> float:
        w = step.params["weight"]
        return 1.0 if w is None else float(w.abs().max())

    def lipschitz(self, step, norms):
        eps = step.params["eps"]
        return self._gamma(step) / math.sqrt(eps), "max|gamma| / sqrt(eps) (variance floor eps: loose)"

    def local_lipschitz(self, step, boxes, norms):
        lo, hi = boxes[0]
        _, _, vl, _ = self._variance(step, lo, hi)
        vmin = vl.reshape(lo.shape[0], -1).amin(1)
        return self._gamma(step) / torch.sqrt(vmin + step.params["eps"]), "max|gamma| / sqrt(var lower + eps)"

    def permute(self, w, node):
        x = w.ann(node.args[0])
        native = op_key(node.target) == "native_group_norm"
        if x is None:
            return [None, None, None] if native else None
        if not isinstance(x, Perm) or x.dim != 1 or x.inner != 1:
            w.fail(node, "normalises groups of an axis other than the permuted channel axis")
        groups = int(node.args[6] if native else node.args[1])
        n = w.size_at(x.gid, ())
        if 1 < groups < n:
            w.split(x.gid, groups, n // groups, node)
        wt, bias = (node.args[1], node.args[2]) if native else (node.args[2], node.args[3])
        w.put(w.param(wt), 0, x)
        w.put(w.param(bias), 0, x)
        return [x, None, None] if native else x


@register("embedding")
class Embedding(Rule):
    """Rows of a table looked up by integer ids (kind ``embedding``). Token ids are discrete: IBP
    takes the ids at the box centre (rounded) and perturbs the *embedding output* by the input's
    radius on every coordinate, and the Lipschitz constant is that of the identity on the
    embedding output. Permutations: the table's columns start a new permutation (like a linear
    layer's outputs); positional tables added to it join it."""

    bounds_ops = frozenset({aten.embedding.default})
    kinds = ("embedding",)

    def step(self, ctx):
        a = ctx.args
        wv = ctx.c(a["weight"])
        if not isinstance(wv, torch.Tensor):
            raise ctx.error("embedding with a computed table")
        return ctx.make("embedding", (ctx.src(a["indices"]),), dict(weight=wv))

    def forward(self, step, xs):
        ids = xs[0].round().long() if xs[0].is_floating_point() else xs[0].long()
        return F.embedding(ids, step.params["weight"])

    def ibp(self, step, ins):
        c, r = ins[0]
        out = self.forward(step, [c])
        return out, r.unsqueeze(-1).expand(out.shape).to(out.dtype)

    def tangent(self, step, xs, ts):
        """Linearised as IBP reads it: a token's perturbation moves every coordinate of its row."""
        e = step.params["weight"].shape[-1]
        return ts[0].unsqueeze(-1).expand(tuple(ts[0].shape) + (e,)).to(step.params["weight"].dtype)

    def tangent_radius(self, step, xs, rs):
        e = step.params["weight"].shape[-1]
        return rs[0].unsqueeze(-1).expand(tuple(rs[0].shape) + (e,)).to(step.params["weight"].dtype)

    def lipschitz(self, step, norms):
        return 1.0, "identity on the embedding output (token ids are discrete; perturbation applied there)"

    def permute(self, w, node):
        if w.ann(node.args[1]) is not None:
            w.fail(node, "looks up permuted ids")
        wt = w.param(node.args[0])
        if wt is None:
            w.freeze_inputs(node)
            return None
        shape = full_shape(node)
        g = w.new(shape[-1], wt.removesuffix(".weight"))
        w.put(wt, 1, Perm(1, g))
        return Perm(len(shape) - 1, g)


# ============================================================================ batch layouts

#: a value's batch layout ``(axis, outer, inner)``: the batch is the middle factor of axis ``axis``,
#: whose entries are ordered ``(outer, batch, inner)``; ``(0, 1, 1)`` is the usual batch-first layout
STANDARD = (0, 1, 1)


def canonical_shape(shape: tuple[int, ...] | list[int], layout: tuple[int, int, int]) -> tuple[int, ...]:
    """The per-sample shape of a value of whole ``shape`` (batch size included) in ``layout``: the
    batch factor taken out of its axis, which is dropped when nothing else is left in it."""
    ax, o, i = layout
    shape = tuple(int(s) for s in shape)
    return shape[:ax] + ((o * i,) if o * i > 1 else ()) + shape[ax + 1 :]


def to_actual(c: torch.Tensor, layout: tuple[int, int, int]) -> torch.Tensor:
    """A batch-first (canonical) tensor ``(B, *per-sample)`` in the model's own ``layout``."""
    ax, o, i = layout
    if (ax, o, i) == STANDARD:
        return c
    if o * i == 1:
        return c.movedim(0, ax)
    s = tuple(c.shape)
    c = c.reshape(s[: ax + 1] + (o, i) + s[ax + 2 :]).movedim(0, ax + 1)
    return c.reshape(s[1 : ax + 1] + (o * s[0] * i,) + s[ax + 2 :])


def to_canonical(x: torch.Tensor, layout: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of :func:`to_actual`: the batch factor of axis ``layout[0]`` moved to the front."""
    ax, o, i = layout
    if (ax, o, i) == STANDARD:
        return x
    if o * i == 1:
        return x.movedim(ax, 0)
    s = tuple(x.shape)
    b = s[ax] // (o * i)
    x = x.reshape(s[:ax] + (o, b, i) + s[ax + 1 :]).movedim(ax + 1, 0)
    return x.reshape((b,) + s[:ax] + (o * i,) + s[ax + 1 :])


@register()
class Relayout(Rule):
    """A shape step (reshape, transpose, selection, split, stack, expand) of values whose batch is
    not axis 0 (``nn.MultiheadAttention`` moves it to axis 1 and merges it with the heads; kind
    ``relayout``). The graph keeps every value batch-first (its *canonical* layout: the batch
    factor of its axis moved to the front); this step takes its inputs to the model's own layouts
    (``lin``), runs the shape step ``inner`` there, and takes the result back from ``lout``. Every
    shape step is affine and acts per sample, so ``|A| r`` is the step itself and its Lipschitz
    constant is the inner step's."""

    kinds = ("relayout",)
    affine = True

    def _run(self, step, xs, fn):
        p = step.params
        inner = p["inner"]
        out = fn(inner, [to_actual(x, lay) for x, lay in zip(xs, p["lin"])])
        return to_canonical(out, p["lout"])

    def forward(self, step, xs):
        return self._run(step, xs, lambda s, a: kind_rule(s.kind).forward(s, a))

    def linear(self, step, xs):
        return self._run(step, xs, lambda s, a: kind_rule(s.kind).linear(s, a))

    def radius(self, step, rs):
        return self._run(step, rs, lambda s, a: kind_rule(s.kind).radius(s, a))

    def lipschitz(self, step, norms):
        return kind_rule(step.params["inner"].kind).lipschitz(step.params["inner"], norms)

    def compose(self, step, const, ups):
        return kind_rule(step.params["inner"].kind).compose(step.params["inner"], const, ups)

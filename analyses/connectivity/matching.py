"""Permutation alignment: weight matching, activation matching, applying a permutation, merging.

Conventions: a permutation of group ``g`` is an index tensor ``p`` of length ``size``; applied
to a tensor it *gathers* along every axis the group acts on, ``T'[..., i, ...] = T[..., p[i], ...]``
(block-wise when the axis holds ``size * inner`` entries). Matching B to A finds the ``p``
for which the gathered B looks most like A; applying it to B gives a model that computes the
same function as B (every permuted output axis is undone by the next layer's input axis).
A spec's composites (attention heads, group norm groups) are assembled from their free groups
(:func:`full_permutations`) wherever a permutation is applied, and solved as blocks by
:func:`weight_matching`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .spec import PermutationSpec

__all__ = [
    "MatchResult",
    "activation_matching",
    "apply_permutation",
    "full_permutations",
    "identity_permutation",
    "inverse_permutation",
    "merge_many",
    "permute_axis",
    "random_permutation",
    "weight_matching",
]

Perms = dict[str, torch.Tensor]


@dataclass
class MatchResult:
    """Permutations found (``{group: index tensor}``) and how the search went (``history``: the
    objective after each sweep)."""

    perms: Perms
    iterations: int = 0
    objective: float = float("nan")
    history: list[float] = field(default_factory=list)


def permute_axis(t: torch.Tensor, axis: int, perm: torch.Tensor, inner: int = 1) -> torch.Tensor:
    """Gather ``t`` along ``axis`` by ``perm``, moving blocks of ``inner`` consecutive entries."""
    perm = perm.to(t.device)
    if inner == 1:
        return t.index_select(axis, perm)
    shape = t.shape
    blocks = t.reshape(*shape[:axis], perm.numel(), inner, *shape[axis + 1 :])
    return blocks.index_select(axis, perm).reshape(shape)


def full_permutations(spec: PermutationSpec, perms: Perms) -> Perms:
    """The free groups' permutations plus every composite's, assembled from its parts
    (``p[i * block + j] = outer[i] * block + inner[i][j]``, see :class:`~.spec.Composite`)."""
    out = dict(perms)

    def of(name: str | None, n: int) -> torch.Tensor:
        if name is None:
            return torch.arange(n)
        if name not in out:
            c = spec.composites[name]
            outer = of(c.outer, c.blocks)
            inner = torch.stack([of(x, c.block) for x in c.inner])
            out[name] = (outer.unsqueeze(1) * c.block + inner).reshape(-1)
        return out[name]

    for name, c in spec.composites.items():
        of(name, c.size)
    return out


def apply_permutation(
    state: dict[str, torch.Tensor], spec: PermutationSpec, perms: Perms
) -> dict[str, torch.Tensor]:
    """A new state dict with every permuted axis gathered (unpermuted entries are shared, not copied).

    Entries of the spec that ``state`` lacks are skipped, so a partial state dict can be permuted.
    """
    out = dict(state)
    full = full_permutations(spec, perms) if spec.composites else perms
    for pname, axes in spec.param_axes().items():
        if pname not in state:
            continue
        t = state[pname]
        for axis, g, inner in axes:
            t = permute_axis(t, axis, full[g], inner)
        out[pname] = t
    return out


def identity_permutation(spec: PermutationSpec) -> Perms:
    return {g: torch.arange(grp.size) for g, grp in spec.groups.items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Perms:
    gen = torch.Generator().manual_seed(int(seed))
    return {g: torch.randperm(grp.size, generator=gen) for g, grp in spec.groups.items()}


def inverse_permutation(perms: Perms, spec: PermutationSpec | None = None) -> Perms:
    """The permutations that undo ``perms``. With composites (``spec`` given and structured), the
    inverse of each composite is taken whole and split back into its parts: the inverse of a
    block permutation with per-block permutations moves the per-block ones to the blocks' new
    places."""
    inv = {g: torch.argsort(p) for g, p in perms.items()}
    if spec is None or not spec.composites:
        return inv
    full = full_permutations(spec, perms)
    children = {x for c in spec.composites.values() for x in c.inner if x in spec.composites}

    def split(name: str, q: torch.Tensor) -> None:
        c = spec.composites[name]
        outer = q[:: c.block] // c.block
        if c.outer is not None:
            inv[c.outer] = outer
        for i, x in enumerate(c.inner):
            part = q[i * c.block : (i + 1) * c.block] - outer[i] * c.block
            if x in spec.composites:
                split(x, part)
            elif x is not None:
                inv[x] = part

    for name in spec.composites:
        if name not in children:
            split(name, torch.argsort(full[name]))
    return inv


def _units(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """``t`` as an ``(n, -1)`` matrix: one row per unit of the permuted axis (blocks included)."""
    return t.movedim(axis, 0).reshape(n, -1)


def _lsa(cost: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().cpu().numpy()
    _, cols = linear_sum_assignment(np.ascontiguousarray(cost, dtype=np.float64), maximize=True)
    return torch.from_numpy(cols.astype(np.int64))


def weight_matching(
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    spec: PermutationSpec,
    seed: int = 0,
    max_iter: int = 100,
    init: Perms | None = None,
    include_buffers: bool = False,
) -> MatchResult:
    """Permutations of B's hidden units that maximise ``sum_W <W_A, P(W_B)>`` (Git Re-Basin, Sec. 3.2).

    Ainsworth et al. (ICLR 2023), Sec. 3.2, Algorithm 1: the objective is a sum of Frobenius
    inner products over every parameter; fixing all permutations but ``P_g``, it is the linear
    assignment problem ``max_P <P, C_g>`` with ``C_g = sum_{(W, k) in g} W_A^(k) (W_B^(k))^T``,
    where ``W^(k)`` is ``W`` with axis ``k`` moved to the rows and flattened, and ``W_B`` has the
    *other* permutations applied on its other axes. It is solved exactly with
    :func:`scipy.optimize.linear_sum_assignment`; groups are visited in a random order (seeded)
    each sweep, and the search stops after a sweep in which no group improves the objective
    (each accepted step strictly increases it, so this terminates). Buffers (running statistics)
    are left out of the objective unless ``include_buffers``.
    """
    if spec.composites:
        return _structured_matching(state_a, state_b, spec, seed, max_iter, init, include_buffers)
    perms = {g: (init[g].clone() if init else torch.arange(grp.size)) for g, grp in spec.groups.items()}
    axes_of = spec.param_axes()
    use = {
        g: [a for a in grp.axes if include_buffers or a.param not in spec.buffers]
        for g, grp in spec.groups.items()
    }
    used = {a.param for g in spec.groups for a in use[g]}
    # float32 products (float64 models stay float64): the assignment only needs the ranking of
    # the costs, and the accept test below compares two sums of the same cost matrix
    a_units = {
        (a.param, a.axis): _units(_work(state_a[a.param]), a.axis, grp.size).contiguous()
        for g, grp in spec.groups.items()
        for a in use[g]
    }
    # a cost term changes only when a permutation on one of its other axes changes: cache it,
    # and skip a group whose cost is unchanged since it was last solved (its optimum stands)
    others = {
        (a.param, a.axis): [(axis, h, inner) for axis, h, inner in axes_of[a.param] if axis != a.axis]
        for g in spec.groups
        for a in use[g]
    }
    version = dict.fromkeys(spec.groups, 0)
    terms: dict[tuple[str, int], tuple[tuple, torch.Tensor]] = {}
    solved: dict[str, tuple] = {}
    rng = np.random.default_rng(seed)
    names = list(spec.groups)
    history: list[float] = []
    for _ in range(max_iter):
        improved = False
        for gi in rng.permutation(len(names)):
            g = names[gi]
            n = spec.groups[g].size
            key = tuple(version[h] for a in use[g] for _, h, _ in others[(a.param, a.axis)])
            if not use[g] or solved.get(g) == key:
                continue
            cost = None
            for a in use[g]:
                deps = others[(a.param, a.axis)]
                tkey = tuple(version[h] for _, h, _ in deps)
                hit = terms.get((a.param, a.axis))
                if hit is None or hit[0] != tkey:
                    wb = _work(state_b[a.param])
                    for axis, h, inner in deps:
                        wb = permute_axis(wb, axis, perms[h], inner)
                    term = a_units[(a.param, a.axis)] @ _units(wb, a.axis, n).T
                    terms[(a.param, a.axis)] = (tkey, term)
                else:
                    term = hit[1]
                cost = term.clone() if cost is None else cost.add_(term)
            solved[g] = key
            c = np.ascontiguousarray(cost.cpu().numpy(), dtype=np.float64)
            new = _lsa(c)
            rows = np.arange(n)
            old_val = float(c[rows, perms[g].numpy()].sum())
            new_val = float(c[rows, new.numpy()].sum())
            if new_val > old_val + 1e-9 * max(1.0, abs(old_val)):
                perms[g] = new
                version[g] += 1
                improved = True
        history.append(_objective(state_a, state_b, spec, perms, used))
        if not improved:
            break
    return MatchResult(
        perms=perms, iterations=len(history), objective=history[-1] if history else 0.0, history=history
    )


def _structured_matching(state_a, state_b, spec, seed, max_iter, init, include_buffers) -> MatchResult:
    """Weight matching with composites (attention heads, group norm groups): coordinate ascent over
    *units*. A free group that no composite permutes in blocks is one unit, solved as in
    :func:`weight_matching` on its cost plus the cost its composite parents pass down (block
    ``(i, outer[i])`` of a parent's cost for the part at position ``i``). A block permutation
    (``outer``) is one unit together with the per-block groups of the composites it moves: for
    every pair of positions ``(i, k)`` the best per-block assignment of block ``(i, k)`` is solved
    (one small assignment problem each), the block permutation maximises their sum (a linear
    assignment over blocks), and each block then takes its best assignment -- exact for the
    unit given the others. A unit's new permutations are kept when the objective increases."""
    comps = spec.composites
    perms = {g: (init[g].clone() if init else torch.arange(grp.size)) for g, grp in spec.groups.items()}
    items = {**spec.groups, **comps}
    use = {n: [a for a in x.axes if include_buffers or a.param not in spec.buffers] for n, x in items.items()}
    used = {a.param for axes in use.values() for a in axes}
    axes_of = spec.param_axes()
    a_units = {
        (a.param, a.axis): _units(_work(state_a[a.param]), a.axis, items[n].size).contiguous()
        for n, axes in use.items()
        for a in axes
    }
    parents: dict[str, list[tuple[str, int]]] = {}
    for name, c in comps.items():
        for i, x in enumerate(c.inner):
            if x is not None:
                parents.setdefault(x, []).append((name, i))
    families: dict[str, list[str]] = {}
    for name, c in comps.items():
        if c.outer in spec.groups:  # (an outer part split again is left as it is)
            families.setdefault(c.outer, []).append(name)
    in_family = {x for fam in families.values() for c in fam for x in comps[c].inner if x in spec.groups}
    units = [("family", a) for a in families] + [
        ("group", g) for g in spec.groups if g not in families and g not in in_family
    ]

    def costs(full: Perms):
        cache: dict[str, torch.Tensor] = {}

        def own(name: str) -> torch.Tensor:
            if name not in cache:
                n = items[name].size
                k = torch.zeros(n, n, dtype=torch.float64)
                for a in use[name]:
                    wb = _work(state_b[a.param])
                    for axis, h, inner in axes_of[a.param]:
                        if axis != a.axis:
                            wb = permute_axis(wb, axis, full[h], inner)
                    k += (a_units[(a.param, a.axis)] @ _units(wb, a.axis, n).T).double()
                cache[name] = k
            return cache[name]

        def eff(name: str, skip: frozenset = frozenset()) -> torch.Tensor:
            k = own(name).clone()
            for p, i in parents.get(name, []):
                if p in skip:
                    continue
                c = comps[p]
                o = int(full[c.outer][i]) if c.outer is not None else i
                b = c.block
                k += eff(p, skip)[i * b : (i + 1) * b, o * b : (o + 1) * b]
            return k

        return own, eff

    def total() -> float:
        return _objective(state_a, state_b, spec, perms, used)

    rng = np.random.default_rng(seed)
    history: list[float] = []
    best = total()
    for _ in range(max_iter):
        improved = False
        for ui in rng.permutation(len(units)):
            kind, name = units[ui]
            full = full_permutations(spec, perms)
            own, eff = costs(full)
            old = {g: p.clone() for g, p in perms.items()}
            if kind == "group":
                perms[name] = _lsa(eff(name))
            else:
                _solve_family(name, families[name], comps, spec, perms, full, own, eff)
            if all(torch.equal(perms[g], old[g]) for g in perms):
                continue
            val = total()
            if val > best + 1e-9 * max(1.0, abs(best)):
                best, improved = val, True
            else:
                perms.update(old)
        history.append(best)
        if not improved:
            break
    return MatchResult(perms=perms, iterations=len(history), objective=best, history=history)


def _solve_family(outer: str, members: list[str], comps, spec, perms: Perms, full: Perms, own, eff) -> None:
    """One block permutation and the per-block groups of the composites it moves (see
    :func:`_structured_matching`)."""
    fam = frozenset(members)
    n_blocks, b = comps[members[0]].blocks, comps[members[0]].block
    sigs: dict[tuple, torch.Tensor] = {}
    for m in members:
        c = comps[m]
        if (c.blocks, c.block) != (n_blocks, b):
            return
        k = eff(m)
        sigs[c.inner] = k if c.inner not in sigs else sigs[c.inner] + k
    leaves = [x for sig in sigs for x in sig if x in spec.groups]
    shared = len(leaves) != len(set(leaves))
    direct = {x: eff(x, fam) for x in set(leaves)}
    val = np.zeros((n_blocks, n_blocks))
    best_inner: dict[tuple, dict[tuple[int, int], tuple[torch.Tensor, float]]] = {}
    for sig, k in sigs.items():
        table = best_inner.setdefault(sig, {})
        for i in range(n_blocks):
            x = sig[i]
            for o in range(n_blocks):
                blk = k[i * b : (i + 1) * b, o * b : (o + 1) * b]
                if x in spec.groups and not shared:
                    blk = blk + direct[x]
                    c = np.ascontiguousarray(blk.numpy())
                    p = _lsa(c)
                    v = float(c[np.arange(b), p.numpy()].sum())
                else:  # fixed within (None), a nested composite, or a group shared between blocks
                    p = full[x] if x is not None else torch.arange(b)
                    v = float(blk[torch.arange(b), p].sum())
                table[(i, o)] = (p, v)
                val[i, o] += v
    if outer in spec.groups:
        val += eff(outer, fam).numpy()
    new_outer = _lsa(val)
    perms[outer] = new_outer
    if shared:  # each shared group: its blocks summed at the new block positions
        acc: dict[str, torch.Tensor] = {}
        for sig, k in sigs.items():
            for i, x in enumerate(sig):
                if x in spec.groups:
                    o = int(new_outer[i])
                    blk = k[i * b : (i + 1) * b, o * b : (o + 1) * b]
                    acc[x] = blk.clone() if x not in acc else acc[x] + blk
        for x, k in acc.items():
            perms[x] = _lsa(k + direct[x])
        return
    for sig, table in best_inner.items():
        for i, x in enumerate(sig):
            if x in spec.groups:
                perms[x] = table[(i, int(new_outer[i]))][0]


def _work(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float32 unless it is float64 already (the precision of the products)."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def _objective(state_a, state_b, spec: PermutationSpec, perms: Perms, names: set[str]) -> float:
    """``sum_W <W_A, P(W_B)>`` over the parameters ``names`` (the weight-matching objective)."""
    pb = apply_permutation({k: _work(state_b[k]) for k in names}, spec, perms)  # composites too
    return float(sum((_work(state_a[k]) * pb[k]).sum(dtype=torch.float64) for k in names))


class _Capture(torch.fx.Interpreter):
    """Runs a graph module and keeps the values of selected nodes."""

    def __init__(self, gm: torch.fx.GraphModule, names: set[str]):
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out[0] if isinstance(out, tuple | list) else out
        return out


class _CaptureModule(torch.nn.Module):
    """Wraps a graph module so :func:`torch.func.functional_call` can swap in another model's state."""

    def __init__(self, gm: torch.fx.GraphModule, names: set[str]):
        super().__init__()
        self.gm, self.names = gm, names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cap = _Capture(self.gm, self.names)
        cap.run(x)
        return cap.values


def activation_matching(
    gm: torch.fx.GraphModule,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    spec: PermutationSpec,
    batches: Iterable[torch.Tensor],
) -> MatchResult:
    """Permutations that maximise the summed correlation of matched units' activations.

    Git Re-Basin, Sec. 3.1 (after Li et al. 2016): for each group, the cross-correlation
    ``R_ij = cov(a_i, b_j) / (std(a_i) std(b_j))`` of A's unit ``i`` and B's unit ``j`` over the
    data (samples and spatial positions pooled) is accumulated, summed over every activation the
    group permutes (all blocks writing into a residual stream), and ``max_P <P, R>`` is solved as
    a linear assignment problem. Groups are independent: activations do not depend on the
    permutations of other groups.
    """
    nodes = {name: (g, dim) for g, grp in spec.groups.items() for name, dim, inner in grp.nodes if inner == 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        runner = _CaptureModule(copy.deepcopy(gm), set(nodes))  # a copy: functional_call swaps its tensors
    sa_ = {f"gm.{k}": v for k, v in state_a.items()}
    sb_ = {f"gm.{k}": v for k, v in state_b.items()}
    stats: dict[str, list] = {}
    with torch.no_grad():
        for x in batches:
            acts_a = torch.func.functional_call(runner, sa_, (x,), strict=True)
            acts_b = torch.func.functional_call(runner, sb_, (x,), strict=True)
            for name, (_g, dim) in nodes.items():
                va = acts_a[name].movedim(dim, -1)
                n = va.shape[-1]
                va = va.reshape(-1, n).double()
                vb = acts_b[name].movedim(dim, -1).reshape(-1, n).double()
                s = stats.setdefault(name, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                s[0] += va.shape[0]
                s[1] = s[1] + va.sum(0)
                s[2] = s[2] + vb.sum(0)
                s[3] = s[3] + (va * va).sum(0)
                s[4] = s[4] + (vb * vb).sum(0)
                s[5] = s[5] + va.T @ vb
    corr: dict[str, torch.Tensor] = {}
    for name, (g, _dim) in nodes.items():
        cnt, sa, sb, saa, sbb, sab = stats[name]
        ma, mb = sa / cnt, sb / cnt
        cov = sab / cnt - torch.outer(ma, mb)
        sda = (saa / cnt - ma * ma).clamp_min(0).sqrt()
        sdb = (sbb / cnt - mb * mb).clamp_min(0).sqrt()
        r = cov / (torch.outer(sda, sdb) + 1e-12)
        corr[g] = r if g not in corr else corr[g] + r
    perms = identity_permutation(spec)
    total = 0.0
    for g, r in corr.items():
        perms[g] = _lsa(r)
        total += float(r[torch.arange(r.shape[0]), perms[g]].sum())
    return MatchResult(perms=perms, iterations=1, objective=total)


def merge_many(
    states: list[dict[str, torch.Tensor]], spec: PermutationSpec, seed: int = 0, max_iter: int = 20
) -> tuple[dict[str, torch.Tensor], list[Perms]]:
    """Align N models into one basin and average them (Git Re-Basin, Appendix "MergeMany").

    Repeatedly, for each model ``i`` in a random (seeded) order, weight-match it to the mean of
    the other (already permuted) models, until a full pass changes no permutation; the merged
    model is the mean of the aligned models. Integer entries (``num_batches_tracked``) come
    from the first model.
    """
    rng = np.random.default_rng(seed)
    perms = [identity_permutation(spec) for _ in states]
    aligned = list(states)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(states)):
            others = [aligned[j] for j in range(len(states)) if j != i]
            target = {k: _mean([o[k] for o in others]) for k in states[0]}
            res = weight_matching(target, states[i], spec, seed=int(rng.integers(1 << 31)), init=perms[i])
            if any(not torch.equal(res.perms[g], perms[i][g]) for g in perms[i]):
                changed = True
                perms[i] = res.perms
                aligned[i] = apply_permutation(states[i], spec, perms[i])
        if not changed:
            break
    merged = {k: _mean([a[k] for a in aligned]) for k in states[0]}
    return merged, perms


def _mean(ts: list[torch.Tensor]) -> torch.Tensor:
    if not ts[0].is_floating_point():
        return ts[0]
    return torch.stack([t.detach() for t in ts]).mean(0)

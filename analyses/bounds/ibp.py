"""Interval bound propagation (IBP) and its tightness, layer by layer.

Reference: Mao, Müller, Fischer, Vechev, "Understanding Certified Training with Interval Bound
Propagation" (ICLR 2024), section 3 (tightness), and the reference sheet, section 3.

*Input box.* Centre ``x``, radius ``eps`` per feature, clipped to the data range::

    r0 = (min(x + eps, hi) - max(x - eps, lo)) / 2,   c0 = (min(x + eps, hi) + max(x - eps, lo)) / 2

*IBP* (Gowal et al. 2018) propagates (centre, radius) through each operator's interval rule (the
graph layer's table, :mod:`analyses.core.graph.ops`): an affine step ``A x + b`` maps it to
``(A c + b, |A| r)``; a monotone one (ReLU, LeakyReLU, hardtanh/ReLU6, tanh, sigmoid, max pooling)
maps the ends ``c -+ r``; GELU, SiLU and hardswish take their minimum where the interval holds the
minimiser; a product of two tensors the extremes of the four corner products; layer norm as
auto_LiRPA bounds its decomposition (mean, centring, square, variance, ``1/sqrt``, product).

*Overflow.* A unit whose centre or radius is not finite after a step (float32 boxes through deep
normed networks overflow, then ``inf - inf`` gives NaN) becomes ``(0, inf)``, the whole line
(:func:`finite_box`): sound and unbounded, never NaN; such margins certify nothing.

*Tightness* (Mao et al. 2024, Definition 3.1 and section 3.2): for a deep linear network
``f = W_L ... W_1``, per output ``k``::

    tau_k = (|W_L ... W_1| r0)_k / (|W_L| ... |W_1| r0)_k   in [0, 1]

the ratio of the optimal box radius to the IBP radius. For ReLU networks the *local*
tightness fixes the activation pattern ``D_i`` at the clean input and uses the linear network
``W_L D_{L-1} W_{L-1} ... D_1 W_1`` in numerator and denominator (``relu="local"``); the
*deep-linear counterpart* drops the activations (``relu="linear"``, ``D_i = I``). Max pooling
is linearised as the selection of the clean input's maximum in both modes; every other
non-affine step (smooth activations, norms, products of two tensors) by its Jacobian ``J`` at the
clean input, with ``|J|`` for the radii (``Rule.tangent`` / ``Rule.tangent_radius``), and in the
deep-linear counterpart element-wise activations count as the identity. The numerator is
``|J_k| r0`` with ``J_k`` the Jacobian of step ``k`` of the linearised network, obtained by
pushing the scaled identity basis ``diag(r0)`` through it (forward mode, batched over samples
and basis vectors); the denominator pushes ``r0`` through ``|A|`` and ``|D_i|``.

*Cost.* The bounds take three passes over the batch (the clean one, the centres, and ``|A| r``
for the radii), every value released after its last reader. The per-step tightness carries the
tangent ``J diag(r0)``: ``d`` columns per sample (``d`` input features, 3072 for 3x32x32), i.e. ``d``
passes of the linearised network per sample, whatever the batching; the output's tightness alone
takes ``K`` reverse passes instead (:func:`output_tightness`, the same numbers).

*Specification.* With ``spec="margin"`` the outputs are the margins ``z_y - z_j`` (``j != y``):
the rows ``C = e_y - e_j`` are folded into the last linear layer, so the IBP radius is
``|C W_L| r`` and not ``|C| |W_L| r`` (section 3 of the sheet). Certified accuracy: the share
of samples whose IBP lower bounds of all margins are positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.graph import kind_rule
from ..core.graph.rules import Rule
from .graph import Graph, Step, abs_part, apply, numel

RELU_MODES = ("local", "linear")
SPECS = ("margin", "identity")


def input_box(
    x: torch.Tensor, eps: float | torch.Tensor, lo: float, hi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius of the L-inf ball of radius ``eps`` around ``x``, clipped to ``[lo, hi]``."""
    upper = torch.clamp(x + eps, max=hi)
    lower = torch.clamp(x - eps, min=lo)
    return (upper + lower) / 2, (upper - lower).clamp_min(0) / 2


def margin_matrix(y: torch.Tensor, classes: int, dtype=torch.float32) -> torch.Tensor:
    """Per-sample specification rows ``e_y - e_j`` for ``j != y``: shape ``(B, K - 1, K)``."""
    eye = torch.eye(classes, dtype=dtype, device=y.device)
    full = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K): row j = e_y - e_j
    keep = torch.arange(classes, device=y.device).unsqueeze(0) != y.unsqueeze(1)
    return full[keep].reshape(y.shape[0], classes - 1, classes)


def interval_bounds(
    graph: Graph, lower: torch.Tensor, upper: torch.Tensor
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Plain IBP: ``{step name: (lower, upper)}`` for every step, from an input box."""
    c, r = (upper + lower) / 2, (upper - lower) / 2
    env = {graph.input_name: (c, r)}
    out = {}
    last = _last_uses(graph)
    for s in graph.steps:
        ins = [env[i] for i in s.inputs]
        env[s.name] = _ibp_step(s, ins)
        cc, rr = env[s.name]
        out[s.name] = (cc - rr, cc + rr)
        for i in last.get(s.name, ()):
            env.pop(i, None)
    return out


def _last_uses(graph: Graph) -> dict[str, list[str]]:
    """``{step: the nodes whose last consumer it is}`` (the output is never released): a walk frees
    every value as soon as nothing downstream reads it (a batch of 32x32 images holds megabytes per
    step; keeping all of them costs more in page faults than the arithmetic)."""
    last: dict[str, str] = {}
    for s in graph.steps:
        for i in s.inputs:
            last[i] = s.name
    out: dict[str, list[str]] = {}
    for node, step in last.items():
        if node != graph.output_name:
            out.setdefault(step, []).append(node)
    return out


def finite_box(c: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, r)`` with every unit whose centre or radius is not finite (overflow: ``inf``, or
    ``inf - inf = NaN`` further on) made the whole line, ``(0, inf)``: a sound, unbounded box instead
    of a NaN one (float32 IBP through deep normed networks overflows). One reduction per step when
    nothing overflowed (the sums are finite unless a unit is not, or the sum itself overflows; then
    the units are checked one by one)."""
    if bool(torch.isfinite(c.sum() + r.sum())):
        return c, r
    bad = ~(torch.isfinite(c) & torch.isfinite(r))
    if not bool(bad.any()):
        return c, r
    return c.masked_fill(bad, 0.0), r.masked_fill(bad, float("inf"))


def _ibp_step(s: Step, ins: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    rule = kind_rule(s.kind)  # the operator's interval rule (core graph layer)
    if s.kind == "relu" and type(rule).ibp is Rule.ibp and len(ins) == 1:
        return finite_box(*_relu_ibp(*ins[0])[:2])
    if _monotone(rule, ins):
        return finite_box(*_monotone_ibp(rule, s, *ins[0]))
    return finite_box(*rule.ibp(s, ins))


def _monotone(rule: Rule, ins: list) -> bool:
    """An element-wise step whose interval rule is the monotone default (``Rule.ibp``)."""
    return rule.elementwise and not rule.affine and type(rule).ibp is Rule.ibp and len(ins) == 1


def _monotone_ibp(rule: Rule, s: Step, c: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Rule.ibp``'s monotone default, the same numbers with two fresh tensors fewer."""
    lo, hi = rule.forward(s, [c - r]), rule.forward(s, [c + r])
    cc = torch.add(hi, lo).div_(2)
    return cc, hi.sub_(lo).div_(2)


def _relu_ibp(
    c: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU's interval rule (the monotone default: ``relu`` of both ends), the same numbers with five
    fresh tensors instead of eight; also the ends before the ReLU, for the stability counts."""
    lo, hi = c - r, c + r
    lo_r, hi_r = torch.relu(lo), torch.relu(hi)
    cc = torch.add(hi_r, lo_r).div_(2)
    rr = hi_r.sub_(lo_r).div_(2)
    return cc, rr, lo, hi


@dataclass
class StepRecord:
    """Sums over samples and units for one step (merged across sample chunks)."""

    tight_sum: float = 0.0
    tight_count: int = 0
    width_sum: float = 0.0
    width_count: int = 0
    active: int = 0
    inactive: int = 0
    unstable: int = 0

    def add(self, other: StepRecord) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class IBPRecords:
    """What :func:`propagate` measures on one batch of samples."""

    steps: dict[str, StepRecord] = field(default_factory=dict)
    #: per sample: mean tightness over the output rows (NaN when undefined)
    out_tightness: torch.Tensor | None = None
    #: per sample: smallest IBP lower bound over the margins z_y - z_j
    min_margin: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    certified: torch.Tensor | None = None
    #: per sample: mean IBP radius of the output rows (margins or logits, as ``spec``)
    out_width: torch.Tensor | None = None
    #: with ``keep_tangent``: the output's scaled Jacobian ``J diag(r0)``, shape (B, d, *out)
    tangent: torch.Tensor | None = None


def _ratio(num: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ok = den > 1e-30
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den)), ok


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, d, *s) -> (B * d, *s)."""
    return t.reshape((-1,) + tuple(t.shape[2:]))


def _unflat(t: torch.Tensor, b: int) -> torch.Tensor:
    return t.reshape((b, -1) + tuple(t.shape[1:]))


def propagate(
    graph: Graph,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lo: float = 0.0,
    hi: float = 1.0,
    relu: str = "local",
    spec: str = "margin",
    tightness: bool = True,
    keep_tangent: bool = False,
) -> IBPRecords:
    """IBP bounds, local tightness and ReLU stability at every step, for one batch.

    One pass carries, per step: the clean activation (for the activation pattern), the IBP
    box (centre, radius), and, when ``tightness``, the linearised network's scaled Jacobian
    ``T = J diag(r0)`` of shape ``(B, d, *shape)`` and the radius ``rl`` propagated through
    ``|A|`` and the clean pattern's ``|D|``. Per-step tightness is ``sum_j |T_j| / rl``
    averaged over samples and units where ``rl > 0`` (module docstring).
    """
    if relu not in RELU_MODES:
        raise ValueError(relu)
    if spec not in SPECS:
        raise ValueError(spec)
    b = x.shape[0]
    c0, r0 = input_box(x, eps, lo, hi)
    d = numel(tuple(x.shape[1:]))
    env: dict[str, dict[str, Any]] = {}
    start = dict(x=x, c=c0, r=r0)
    if tightness:
        basis = torch.diag_embed(r0.reshape(b, d))  # (B, d, d): row j = r0_j e_j
        start.update(t=basis.reshape((b, d) + tuple(x.shape[1:])), rl=r0)
    env[graph.input_name] = start
    rec = IBPRecords()
    last = graph.output_name
    # per-step sums stay on the device as 0-d tensors; one copy to the host at the end (a GPU
    # never waits for the host between steps)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    widths: dict[str, int] = {}
    release = _last_uses(graph)
    for s in graph.steps:
        ins = [env[i] for i in s.inputs]
        if s.name == last and s.kind == "linear":  # margins: always, for certified accuracy
            env[s.name] = out = _output_linear(s, ins[0], y, tightness)
        else:
            env[s.name] = out = _step(s, ins, relu, tightness)
        r = out["r"]
        d = sums[s.name] = {"width_sum": 2 * r.sum()}
        widths[s.name] = r.numel()
        if s.kind in ("relu", "leaky_relu"):
            ends = out.pop("ends", None)
            if ends is None:
                c, rr = ins[0]["c"], ins[0]["r"]
                ends = c - rr, c + rr
            lower, upper = ends
            d["active"] = (lower >= 0).sum()
            d["inactive"] = (upper <= 0).sum()
            d["unstable"] = ((lower < 0) & (upper > 0)).sum()
            del ends, lower, upper
        if tightness:
            num = out["t"].abs().sum(1)
            ratio, ok = _ratio(num, out["rl"])
            d["tight_sum"], d["tight_count"] = ratio[ok].sum(), ok.sum()
            del num, ratio, ok
        for i in release.get(s.name, ()):
            env.pop(i, None)
        del ins
    _to_records(rec, sums, widths)
    _finish(rec, env[last], y, spec, tightness)
    if keep_tangent and tightness:
        rec.tangent = env[last]["t"]
    return rec


_INT_FIELDS = ("active", "inactive", "unstable", "tight_count")


def _to_records(rec: IBPRecords, sums: dict[str, dict[str, torch.Tensor]], widths: dict[str, int]) -> None:
    """The device sums as :class:`StepRecord` numbers, in one device-to-host copy. Each float sum is
    rounded to its tensor's dtype first, as ``float(t)`` of that tensor would give."""
    flat = [(name, k, t) for name, d in sums.items() for k, t in d.items()]
    if flat:
        floats = [t for _, k, t in flat if k not in _INT_FIELDS]
        ints = [t for _, k, t in flat if k in _INT_FIELDS]
        fvals = torch.stack([t.double() for t in floats]).cpu().tolist() if floats else []
        ivals = torch.stack(ints).cpu().tolist() if ints else []
        fi, ii = iter(fvals), iter(ivals)
        values = {(name, k): (next(ii) if k in _INT_FIELDS else next(fi)) for name, k, _ in flat}
    else:
        values = {}
    for name, d in sums.items():
        sr = StepRecord(width_count=widths[name])
        for k in d:
            setattr(sr, k, values[(name, k)])
        rec.steps[name] = sr


def _step(s: Step, ins: list[dict[str, Any]], relu: str, tightness: bool) -> dict[str, Any]:
    """One step of :func:`propagate`, through the operator's rule: the clean value, the IBP box
    (:meth:`~analyses.core.graph.Rule.ibp`, any number of inputs), and the linearised network's
    tangent ``J t`` and radius ``|J| rl`` (:meth:`~analyses.core.graph.Rule.tangent`,
    :meth:`~analyses.core.graph.Rule.tangent_radius`) at the clean input. With ``relu="linear"``
    element-wise activations count as the identity (the deep-linear counterpart)."""
    rule = kind_rule(s.kind)
    out = {}
    xs = [v["x"] for v in ins]
    out["x"] = apply(s, xs)
    if rule.affine:
        out["c"] = apply(s, [v["c"] for v in ins])
        out["r"] = abs_part(s, [v["r"] for v in ins])
    elif s.kind == "relu" and type(rule).ibp is Rule.ibp and len(ins) == 1:
        out["c"], out["r"], lo, hi = _relu_ibp(ins[0]["c"], ins[0]["r"])
        out["ends"] = (lo, hi)
    elif _monotone(rule, ins):
        out["c"], out["r"] = _monotone_ibp(rule, s, ins[0]["c"], ins[0]["r"])
    else:
        out["c"], out["r"] = rule.ibp(s, [(v["c"], v["r"]) for v in ins])
    out["c"], out["r"] = finite_box(out["c"], out["r"])
    if not tightness:
        return out
    ts, rls = [v["t"] for v in ins], [v["rl"] for v in ins]
    if relu == "linear" and rule.elementwise:
        out["t"], out["rl"] = ts[0], rls[0]
    else:
        out["t"] = rule.tangent(s, xs, ts)
        out["rl"] = rule.tangent_radius(s, xs, rls)
    return out


def _output_linear(s: Step, v: dict[str, Any], y: torch.Tensor, tightness: bool) -> dict[str, Any]:
    """Last linear layer, also with the margin rows folded in: ``C W`` and ``C b``."""
    w, bias = s.params["weight"], s.params.get("bias")
    out = _step(s, [v], "local", tightness)
    cm = margin_matrix(y, w.shape[0], w.dtype)  # (B, K-1, K)
    wc = cm @ w  # (B, K-1, in)
    bc = cm @ bias if bias is not None else 0.0
    out["mc"], out["mr"] = finite_box(
        torch.einsum("bki,bi->bk", wc, v["c"]) + bc, torch.einsum("bki,bi->bk", wc.abs(), v["r"])
    )
    if tightness:
        out["mt"] = torch.einsum("bki,bdi->bdk", wc, v["t"])
        out["mrl"] = torch.einsum("bki,bi->bk", wc.abs(), v["rl"])
    return out


def _finish(rec: IBPRecords, out: dict[str, Any], y: torch.Tensor, spec: str, tightness: bool) -> None:
    logits = out["x"]
    if logits.ndim != 2:
        logits = logits.flatten(1)
    k = logits.shape[1]
    if "mc" not in out:  # output is not a linear layer: apply C after the last step, |C| r
        cm = margin_matrix(y, k, logits.dtype)
        out["mc"], out["mr"] = finite_box(
            torch.einsum("bkj,bj->bk", cm, out["c"].flatten(1)),
            torch.einsum("bkj,bj->bk", cm.abs(), out["r"].flatten(1)),
        )
        if tightness:
            b = logits.shape[0]
            out["mt"] = torch.einsum("bkj,bdj->bdk", cm, out["t"].reshape(b, out["t"].shape[1], -1))
            out["mrl"] = torch.einsum("bkj,bj->bk", cm.abs(), out["rl"].flatten(1))
    rec.correct = logits.argmax(1) == y
    if k > 1:
        rec.min_margin = (out["mc"] - out["mr"]).min(1).values
    else:
        rec.min_margin = torch.full_like(y, float("nan"), dtype=logits.dtype)
    rec.certified = rec.min_margin > 0
    if spec == "margin":
        rec.out_width = (2 * out["mr"]).mean(1)
    else:
        rec.out_width = (2 * out["r"]).flatten(1).mean(1)
    if tightness:
        if spec == "margin":
            num, den = out["mt"].abs().sum(1), out["mrl"]
        else:
            b = logits.shape[0]
            num = out["t"].abs().sum(1).reshape(b, -1)
            den = out["rl"].reshape(b, -1)
        ratio, ok = _ratio(num, den)
        cnt = ok.sum(1)
        rec.out_tightness = torch.where(
            cnt > 0,
            (ratio * ok).sum(1) / cnt.clamp_min(1),
            torch.full_like(cnt, float("nan"), dtype=num.dtype),
        )


def output_tightness(
    graph: Graph,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lo: float = 0.0,
    hi: float = 1.0,
    spec: str = "margin",
) -> torch.Tensor:
    """Per-sample output tightness of :func:`propagate` with ``relu="local"`` (its ``out_tightness``),
    without the per-step tangents: ``K`` reverse passes instead of ``d`` forward ones.

    With the clean activation pattern fixed, the linearised network's Jacobian is the network's own
    input Jacobian ``J`` at ``x`` (every rule's tangent is its derivative there: ReLU's ``x > 0``, max
    pooling's selection, smooth steps' Jacobians), so the numerator ``|C J| r0`` (rows ``C``: the
    margins ``e_y - e_j``, or the logits) takes one vector-Jacobian product per row, vmapped; the
    denominator ``|C W_L| rl`` takes one pass of ``r0`` through ``|A|`` and ``|J|`` of every step
    (``Rule.tangent_radius``). The same numbers as ``propagate`` up to rounding (the sums run in
    another order); the per-step tightness still needs :func:`propagate`.
    """
    if spec not in SPECS:
        raise ValueError(spec)
    b = x.shape[0]
    _, r0 = input_box(x, eps, lo, hi)
    release = _last_uses(graph)
    env: dict[str, tuple[torch.Tensor, torch.Tensor]] = {graph.input_name: (x, r0)}
    den = None
    with torch.no_grad():
        for s in graph.steps:
            xs, rls = [env[i][0] for i in s.inputs], [env[i][1] for i in s.inputs]
            rule = kind_rule(s.kind)
            if s.name == graph.output_name and s.kind == "linear" and spec == "margin":
                w = s.params["weight"]
                cm = margin_matrix(y, w.shape[0], w.dtype)
                den = torch.einsum("bki,bi->bk", (cm @ w).abs(), rls[0])
            env[s.name] = (apply(s, xs), rule.tangent_radius(s, xs, rls))
            for i in release.get(s.name, ()):
                env.pop(i, None)
        logits, rl = env[graph.output_name]
    logits, rl = logits.reshape(b, -1), rl.reshape(b, -1)
    k = logits.shape[1]
    if spec == "margin":
        rows = margin_matrix(y, k, logits.dtype)  # (B, K-1, K)
        if den is None:  # output is not a linear layer: |C| after the last step
            den = torch.einsum("bkj,bj->bk", rows.abs(), rl)
    else:
        rows = torch.eye(k, dtype=logits.dtype, device=x.device).expand(b, k, k)
        den = rl
    out_shape = tuple(env[graph.output_name][0].shape[1:])
    _, vjp_fn = torch.func.vjp(graph.forward, x)
    cot = rows.transpose(0, 1).reshape((rows.shape[1], b) + out_shape)  # (R, B, *out)
    (jac,) = torch.func.vmap(vjp_fn)(cot)  # (R, B, *in): rows of C J
    num = (jac.reshape(rows.shape[1], b, -1).abs() * r0.reshape(1, b, -1)).sum(-1).T  # (B, R)
    ratio, ok = _ratio(num, den)
    cnt = ok.sum(1)
    return torch.where(
        cnt > 0,
        (ratio * ok).sum(1) / cnt.clamp_min(1),
        torch.full_like(cnt, float("nan"), dtype=num.dtype),
    ).detach()


def samples_per_chunk(
    graph: Graph, budget_bytes: int = 192 * 2**20, itemsize: int = 4, tightness: bool = True
) -> int:
    """How many samples fit into ``budget_bytes``: with ``tightness``, the ``(B, d, *shape)`` tangent of
    the widest step (three of them live at once); without, the boxes alone (clean value, centre,
    radius and a few temporaries of the widest step: eight of its size), at most 1024."""
    d = numel(graph.input_shape)
    widest = max([numel(s.out_shape) for s in graph.steps] + [d])
    if not tightness:
        return max(1, min(1024, int(budget_bytes // (widest * itemsize * 8))))
    per = d * widest * itemsize * 3  # tangent, its |.|, and the next step's
    return max(1, int(budget_bytes // per))


# ---------------------------------------------------------------------------- matrix chains


def chain_tightness(
    weights: list[torch.Tensor],
    eps: torch.Tensor | float = 1.0,
    x: torch.Tensor | None = None,
    biases: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Tightness of a chain of matrices ``W_1, ..., W_L`` (applied in that order), per output.

    Without ``x``: the deep linear network, ``|W_L ... W_1| eps / (|W_L| ... |W_1| eps)``,
    shape ``(out,)``. With a batch ``x`` (``(B, d)``): the ReLU network's local tightness at
    each sample (activation pattern ``D_i`` of the clean forward pass, with ``biases``),
    shape ``(B, out)``. Entries with a zero denominator are NaN.
    """
    if x is None:
        prod = weights[0]
        den = weights[0].abs() @ (torch.ones(weights[0].shape[1], dtype=prod.dtype) * eps)
        for w in weights[1:]:
            prod = w @ prod
            den = w.abs() @ den
        num = prod.abs() @ (torch.ones(weights[0].shape[1], dtype=prod.dtype) * eps)
        return torch.where(den > 0, num / den, torch.full_like(den, float("nan")))
    b = x.shape[0]
    h = x
    prod = weights[0].expand(b, *weights[0].shape)  # (B, n1, d)
    r = (torch.ones_like(x) * eps) @ weights[0].abs().T  # (B, n1)
    e = torch.ones_like(x) * eps
    for i, w in enumerate(weights[1:]):
        h = h @ weights[i].T + (biases[i] if biases is not None else 0.0)
        dmask = (h > 0).to(x.dtype)
        h = h * dmask
        prod = w @ (dmask.unsqueeze(2) * prod)
        r = (r * dmask) @ w.abs().T
    num = torch.einsum("bod,bd->bo", prod.abs(), e)
    return torch.where(r > 0, num / r, torch.full_like(r, float("nan")))


def gaussian_init_tightness(hidden: list[int]) -> float:
    """Expected deep-linear tightness at Gaussian init (Mao et al. 2024, Theorem 4.1 / sheet §3)::

    E tau ~ (pi / 2) ** ((L - 1) / 2) / sqrt(n_1 ... n_{L-1})

    for hidden widths ``n_1 ... n_{L-1}``: tightness falls with width and depth.
    """
    import math

    return (math.pi / 2) ** (len(hidden) / 2) / math.sqrt(math.prod(hidden))


def tightness_at_init(
    widths: list[int],
    depths: list[int],
    input_dim: int = 64,
    outputs: int = 10,
    samples: int = 32,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Tightness of Gaussian-initialised MLPs (He init, zero biases) vs width and depth.

    For every ``(width, depth)`` (``depth`` = number of linear layers, hidden layers all of
    ``width`` units): the deep-linear tightness, the ReLU local tightness at ``samples``
    uniform inputs in [0, 1], and the prediction of :func:`gaussian_init_tightness`
    (Mao et al. 2024, section 4.1: falls with width and depth; ReLU ~ sqrt(2)^(L-1) higher).
    """
    rows = []
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, input_dim, generator=gen, dtype=torch.float64)
    for depth in depths:
        for width in widths:
            dims = [input_dim] + [width] * (depth - 1) + [outputs]
            ws = [
                torch.randn(o, i, generator=gen, dtype=torch.float64) * (2.0 / i) ** 0.5
                for i, o in zip(dims[:-1], dims[1:])
            ]
            lin = chain_tightness(ws)
            loc = chain_tightness(ws, x=x)
            rows.append(
                dict(
                    width=width,
                    depth=depth,
                    tightness_linear=float(lin.nanmean()),
                    tightness_relu=float(loc.nanmean()),
                    predicted_linear=gaussian_init_tightness(dims[1:-1]),
                )  # fmt: skip
            )
    return rows

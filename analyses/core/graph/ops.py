"""The operator rules (see :mod:`.rules`): one class per operator or family of operators.

Bounds steps (kind: ATen ops):

==========================  ========================================================
kind                        ATen ops
==========================  ========================================================
``linear``                  ``linear``; ``addmm`` / ``mm`` with a constant weight (decomposed);
                            with a weight computed from the input: a ``matmul`` step
                            (:func:`.ops_attention.tensor_product_step`)
``conv``                    ``conv1d``, ``conv2d``, ``convolution`` (not transposed), any
                            stride / padding / dilation / groups
``conv_transpose``          ``conv_transpose1d/2d``, ``convolution`` (transposed)
``batchnorm``               ``batch_norm`` / ``_native_batch_norm_legit_no_training`` in
                            eval mode, as a per-channel affine map
``layernorm``, ``rmsnorm``  ``layer_norm``, ``native_layer_norm``, ``rms_norm``
``relu``, ``leaky_relu``    ``relu``, ``leaky_relu``
``hardtanh``                ``hardtanh``, ``relu6``, ``clamp`` / ``clamp_min`` / ``clamp_max``
                            with number bounds
``tanh``, ``sigmoid``       ``tanh``, ``sigmoid``
``gelu``, ``silu``,         ``gelu`` (exact and tanh), ``silu``, ``hardswish``: unimodal,
``hardswish``               bounded at their minimiser
``maxpool``, ``avgpool``    ``max_pool1d/2d`` (+ ``_with_indices``), ``avg_pool1d/2d``
``adaptive_avgpool``        ``adaptive_avg_pool1d/2d``
``upsample``                ``upsample_nearest1d/2d`` (+ exact), ``upsample_linear1d``,
                            ``upsample_bilinear2d`` (``interpolate``)
``mean``, ``sum``           ``mean`` / ``sum`` over non-batch dims
``reshape``                 ``flatten``, ``view``, ``reshape``, ``squeeze``, ``unsqueeze`` (a
                            reshape that moves or merges the batch axis: ``reshape_any``,
                            :func:`.ops_attention.reshape_step`)
``masked_fill``             ``where(cond, x, c)`` / ``where(cond, c, x)`` with a constant
                            condition and a number ``c`` (GPT-2's causal mask)
``add``                     ``add`` / ``sub`` of two tensors (residuals; broadcasting in a sample)
``mul``, ``div``            ``mul`` / ``div`` of two tensors (products of intervals)
``cat``                     ``cat`` along a non-batch dim
``scale``, ``shift``,       ``mul`` / ``div`` / ``add`` / ``sub`` with a number or a constant
``rsub``                    tensor; ``c - x``
``pad``                     ``pad``, ``constant_pad_nd``
(alias)                     ``dropout`` (eval), ``clone``, ``contiguous``, ``alias``, ``detach``
(nothing)                   ``_assert_tensor_metadata``, ``_assert_scalar``, ``sym_size`` (bookkeeping)
==========================  ========================================================

Permutations (Git Re-Basin's permutation specs, Ainsworth et al. 2023, Sec. 3 / App. A.1):
``linear`` / ``conv`` start a new permutation on their output axis and apply the input's to the
weight's input axis; norms apply it to their per-unit vectors; element-wise ops, pooling and
reductions over other axes pass it on; a reshape merging the permuted axis with trailing ones
makes a block permutation; ``add``/``mul`` of two permuted tensors unify their permutations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import NNVitalsError
from . import ops_attention
from .nodes import full_shape, op_key, sample_shape
from .rules import Perm, Rule, Step, register

aten = torch.ops.aten


def _ints(v: Any, n: int) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(t) for t in v)
    return v * n if len(v) == 1 and n > 1 else v


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector shaped to broadcast against an (N, C, ...) tensor of ``ndim`` dims."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ============================================================================ pass-through


class Elementwise(Rule):
    """An element-wise function: the permutation passes through."""

    def permuted(self, w, node, x):
        if x is None:
            w.fail(node)
        return x


@register(
    "elu", "softplus", "mish", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "pow", "celu", "selu", "log_sigmoid", "identity", "native_dropout", "hardsigmoid",
)  # fmt: skip
class Unary(Elementwise):
    """Element-wise activations the bounds do not take yet."""


@register("softmax", "log_softmax", "_softmax", "_log_softmax", fallback=True)
class SoftmaxPermute(Elementwise):
    """Softmax over an axis commutes with a permutation of any axis (Connectivity only); a rule with
    bounds for softmax (the attention operators' module) replaces this one."""


@register("prelu")
class PRelu(Elementwise):
    def permuted(self, w, node, x):
        if x is None:
            w.fail(node)
        if len(node.args) > 1 and w.param(node.args[1]):
            p = w.param(node.args[1])
            if math.prod(w.shapes[p]) > 1:
                w.put(p, 0, x)
        return x


@register(
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "alias",
    "detach", "lift_fresh_copy",
)  # fmt: skip
class Identity(Elementwise):
    """Computes nothing (dropout in eval mode): the bounds read it as its input."""

    bounds_ops = frozenset({
        aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
        aten.feature_alpha_dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
        aten.detach.default, aten.lift_fresh_copy.default,
    })  # fmt: skip

    def step(self, ctx):
        if "dropout" in op_key(ctx.node.target) and ctx.args.get("train"):
            raise ctx.error("dropout in training mode", "; call model.eval()")
        return ctx.src(ctx.node.args[0])


@register("to", "_to_copy", "type_as")
class Cast(Elementwise):
    """A cast between floating types (or to the same type and device): the bounds compute in the
    graph's own type, so it reads as its input. A cast to an integer or boolean type is refused."""

    def bounds_supported(self, target):
        return True

    def step(self, ctx):
        x = ctx.node.args[0]
        out, inp = ctx.node.meta.get("val"), x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if not (isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor)):
            raise ctx.unsupported()
        if not (out.is_floating_point() and inp.is_floating_point()) or out.shape != inp.shape:
            raise ctx.error(f"unsupported cast {inp.dtype} -> {out.dtype}")
        return ctx.src(x)


@register(
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range_for_size",
    "sym_constrain_range", "_functional_assert_async",
)  # fmt: skip
class Ignore(Rule):
    """Export bookkeeping (assertions): no value to follow, in every overload."""

    def bounds_supported(self, target):
        return True

    def step(self, ctx):
        return None

    def permute(self, w, node):
        return None


@register("sym_size", "sym_numel", "sym_stride", "sym_storage_offset")
class SymSize(Ignore):
    """The (dynamic) batch size a decomposed view takes: shapes come from the traced metadata."""


@register("getitem")
class GetItem(Rule):
    """One output of a multi-output operator (the bounds reader resolves it itself)."""

    def permute(self, w, node):
        src = w.env.get(node.args[0].name)
        i = node.args[1]
        return src[i] if isinstance(src, list) and i < len(src) else None


# ============================================================================ activations


@register("relu", "relu_")
class Relu(Elementwise):
    bounds_ops = frozenset({aten.relu.default, aten.relu_.default})
    kinds = ("relu",)
    elementwise = True

    def step(self, ctx):
        return ctx.make("relu", (ctx.src(ctx.args["self"]),))

    def forward(self, step, xs):
        return F.relu(xs[0])

    def slope(self, step, x):
        return (x > 0).to(x.dtype)

    def lipschitz(self, step, norms):
        return 1.0, "1-Lipschitz"


@register("leaky_relu", "leaky_relu_")
class LeakyRelu(Elementwise):
    bounds_ops = frozenset({aten.leaky_relu.default, aten.leaky_relu_.default})
    kinds = ("leaky_relu",)
    elementwise = True

    def step(self, ctx):
        return ctx.make(
            "leaky_relu", (ctx.src(ctx.args["self"]),), dict(slope=float(ctx.args["negative_slope"]))
        )

    def forward(self, step, xs):
        return F.leaky_relu(xs[0], step.params["slope"])

    def slope(self, step, x):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, step.params["slope"]))

    def lipschitz(self, step, norms):
        return max(1.0, abs(step.params["slope"])), "max(1, |slope|)"


def _num(v: Any, default: float) -> float:
    return default if v is None else float(v)


@register("hardtanh", "hardtanh_", "relu6", "relu6_", "clamp", "clamp_", "clamp_min", "clamp_max")
class HardTanh(Elementwise):
    """``clamp(x, lo, hi)``: ``hardtanh`` (default [-1, 1]), ``relu6`` ([0, 6]), ``clamp`` with number
    bounds. Monotone (IBP at the endpoints), 1-Lipschitz (0 when ``lo == hi``)."""

    bounds_ops = frozenset({
        aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default, aten.clamp.default,
        aten.clamp_.default, aten.clamp_min.default, aten.clamp_max.default,
    })  # fmt: skip
    kinds = ("hardtanh",)
    elementwise = True

    def step(self, ctx):
        a, op = ctx.args, op_key(ctx.node.target)
        if op.startswith("relu6"):
            lo, hi = 0.0, 6.0
        elif op.startswith("hardtanh"):
            lo, hi = _num(a.get("min_val"), -1.0), _num(a.get("max_val"), 1.0)
        elif op == "clamp_min":
            lo, hi = _num(a.get("min"), -math.inf), math.inf
        elif op == "clamp_max":
            lo, hi = -math.inf, _num(a.get("max"), math.inf)
        else:
            lo, hi = _num(a.get("min"), -math.inf), _num(a.get("max"), math.inf)
        if hi < lo:
            raise ctx.error(f"clamp with min {lo} above max {hi}")
        return ctx.make("hardtanh", (ctx.src(ctx.node.args[0]),), dict(lo=lo, hi=hi))

    def forward(self, step, xs):
        p = step.params
        return torch.clamp(
            xs[0], None if p["lo"] == -math.inf else p["lo"], None if p["hi"] == math.inf else p["hi"]
        )

    def slope(self, step, x):
        return ((x > step.params["lo"]) & (x < step.params["hi"])).to(x.dtype)

    def lipschitz(self, step, norms):
        if step.params["lo"] == step.params["hi"]:
            return 0.0, "constant"
        return 1.0, "1-Lipschitz (clamp)"


@register("tanh", "tanh_", "sigmoid", "sigmoid_")
class Sigmoidal(Elementwise):
    """``tanh`` (Lipschitz 1) and ``sigmoid`` (1/4): monotone, IBP at the endpoints; locally the
    largest slope over the box, at the point nearest 0."""

    bounds_ops = frozenset(
        {aten.tanh.default, aten.tanh_.default, aten.sigmoid.default, aten.sigmoid_.default}
    )
    kinds = ("tanh", "sigmoid")
    elementwise = True

    def step(self, ctx):
        kind = "tanh" if op_key(ctx.node.target).startswith("tanh") else "sigmoid"
        return ctx.make(kind, (ctx.src(ctx.node.args[0]),))

    def forward(self, step, xs):
        return torch.tanh(xs[0]) if step.kind == "tanh" else torch.sigmoid(xs[0])

    def slope(self, step, x):
        if step.kind == "tanh":
            return 1 - torch.tanh(x) ** 2
        s = torch.sigmoid(x)
        return s * (1 - s)

    def lipschitz(self, step, norms):
        return (1.0, "sup |tanh'| = 1") if step.kind == "tanh" else (0.25, "sup |sigmoid'| = 1/4")

    def local_lipschitz(self, step, boxes, norms):
        lo, hi = boxes[0]
        nearest = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        return self.slope(step, nearest).abs().flatten(1).amax(1), "max slope over the box"


# ---------------------------------------------------------------------------- unimodal activations


def _bisect(fn, a: float, b: float, iters: int = 200) -> float:
    """A root of the increasing-through-zero scalar ``fn`` on ``[a, b]`` (``fn(a) < 0 < fn(b)``)."""
    for _ in range(iters):
        m = 0.5 * (a + b)
        if fn(m) < 0:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


def _argmax(fn, a: float, b: float, iters: int = 200) -> float:
    """The maximiser of a unimodal scalar ``fn`` on ``[a, b]`` (ternary search)."""
    for _ in range(iters):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        if fn(m1) < fn(m2):
            a = m1
        else:
            b = m2
    return 0.5 * (a + b)


def _d(fn, x: float) -> float:
    """``fn'(x)`` in float64 by autograd."""
    with torch.enable_grad():
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(fn(t), t)
    return float(g)


class _Shape:
    """Facts about a smooth unimodal activation ``f`` (decreasing, then increasing), in float64:
    its minimiser ``xmin`` (root of ``f'``, bisection), minimum ``fmin``, the points where ``f'`` is
    extreme (``crit``: roots of ``f''``, or the ends of a linear piece), and the Lipschitz constant
    ``L = sup |f'|`` (the larger ``|f'|`` there)."""

    def __init__(self, fn, bracket: tuple[float, float], crit: tuple[float, ...], dfn=None):
        self.fn = fn
        self.dfn = dfn or (lambda x: _d(fn, x))
        self.xmin = _bisect(self.dfn, *bracket)
        self.fmin = float(fn(torch.tensor(self.xmin, dtype=torch.float64)))
        self.crit = crit
        self.crit_slopes = tuple(abs(self.dfn(c)) for c in crit)
        self.lipschitz = max(self.crit_slopes)


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _crit_of(fn, lo: float, hi: float) -> float:
    """The maximiser of ``|fn'|`` on a bracket where ``fn'`` is unimodal."""
    return _argmax(lambda x: abs(_d(fn, x)), lo, hi)


#: GELU (exact): ``f'' = phi(x) (2 - x^2)``, so ``f'`` is extreme at ``+-sqrt 2``; ``L = Phi(sqrt 2) + sqrt 2
#: phi(sqrt 2) ~ 1.1289``; minimum ``-0.16997`` at ``-0.75179``
GELU_SHAPE = _Shape(F.gelu, (-2.0, 0.0), (math.sqrt(2.0), -math.sqrt(2.0)))
#: GELU (tanh approximation): the same facts found numerically
GELU_TANH_SHAPE = _Shape(
    _gelu_tanh, (-2.0, 0.0), (_crit_of(_gelu_tanh, 0.5, 3.0), _crit_of(_gelu_tanh, -3.0, -0.5))
)
#: SiLU: ``f' = s (1 + x (1 - s))``; ``L ~ 1.0998`` at ``x ~ 2.3994``; minimum ``-0.27846`` at ``-1.27846``
SILU_SHAPE = _Shape(F.silu, (-3.0, 0.0), (_crit_of(F.silu, 0.5, 5.0), _crit_of(F.silu, -5.0, -0.5)))


def _hardswish_slope(x: float) -> float:
    """Hardswish's slope, closed at the kinks (the sup of ``|f'|`` near them): 0, ``(2x + 3) / 6``, 1."""
    return 0.0 if x < -3 else (1.0 if x > 3 else (2 * x + 3) / 6)


#: hardswish ``x relu6(x + 3) / 6``: minimum ``-3/8`` at ``-3/2``; ``L = 3/2`` (slope ``(2x+3)/6`` as x -> 3)
HARDSWISH_SHAPE = _Shape(F.hardswish, (-2.9, 0.0), (3.0, -3.0), dfn=_hardswish_slope)


@register("gelu", "gelu_", "silu", "silu_", "hardswish", "hardswish_")
class Unimodal(Elementwise):
    """GELU (exact and tanh), SiLU and hardswish: decreasing up to their minimiser ``x*``, increasing
    after. IBP: the upper end is the larger of ``f(l)``, ``f(u)``; the lower end is ``f(x*)`` when
    the interval contains ``x*``, else the smaller of ``f(l)``, ``f(u)`` (sound and exact per unit).
    Lipschitz: ``sup |f'|`` (GELU ~1.1289, SiLU ~1.0998, hardswish 3/2); locally, the largest
    ``|f'|`` over the box, at its ends or at ``f'``'s extreme points inside it."""

    bounds_ops = frozenset({
        aten.gelu.default, aten.gelu_.default, aten.silu.default, aten.silu_.default, aten.hardswish.default,
        aten.hardswish_.default,
    })  # fmt: skip
    kinds = ("gelu", "silu", "hardswish")
    elementwise = True

    def step(self, ctx):
        op = op_key(ctx.node.target).rstrip("_")
        params = dict(approximate=str(ctx.args.get("approximate") or "none")) if op == "gelu" else {}
        return ctx.make(op, (ctx.src(ctx.node.args[0]),), params)

    @staticmethod
    def shape(step: Step) -> _Shape:
        if step.kind == "gelu":
            return GELU_TANH_SHAPE if step.params.get("approximate") == "tanh" else GELU_SHAPE
        return SILU_SHAPE if step.kind == "silu" else HARDSWISH_SHAPE

    def forward(self, step, xs):
        if step.kind == "gelu":
            return F.gelu(xs[0], approximate=step.params.get("approximate", "none"))
        return F.silu(xs[0]) if step.kind == "silu" else F.hardswish(xs[0])

    def ibp(self, step, ins):
        c, r = ins[0]
        lo, hi = c - r, c + r
        flo, fhi = self.forward(step, [lo]), self.forward(step, [hi])
        sh = self.shape(step)
        inside = (lo <= sh.xmin) & (hi >= sh.xmin)
        # the float64 minimum, lowered by a few units of the working precision: float32's F.gelu
        # rounds up to 1 ulp below the true minimum near x*
        fmin = sh.fmin - 4 * torch.finfo(flo.dtype).eps * max(1.0, abs(sh.fmin))
        lower = torch.where(inside, torch.full_like(flo, fmin), torch.minimum(flo, fhi))
        upper = torch.maximum(flo, fhi)
        return (upper + lower) / 2, (upper - lower) / 2

    def slope(self, step, x):
        if step.kind == "hardswish":
            return torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, (2 * x + 3) / 6)).to(x.dtype)
        return Rule.slope(self, step, x)

    def lipschitz(self, step, norms):
        sh = self.shape(step)
        name = {"gelu": "GELU", "silu": "SiLU", "hardswish": "hardswish"}[step.kind]
        return sh.lipschitz, f"sup |{name}'| = {sh.lipschitz:.6g}"

    def local_lipschitz(self, step, boxes, norms):
        lo, hi = boxes[0]
        sh = self.shape(step)
        best = torch.maximum(self._abs_slope(step, lo), self._abs_slope(step, hi))
        for c, sc in zip(sh.crit, sh.crit_slopes):
            inside = (lo <= c) & (hi >= c)
            best = torch.where(inside, torch.clamp_min(best, sc), best)
        return best.flatten(1).amax(1), "max |f'| over the box"

    def _abs_slope(self, step, x):
        if step.kind == "hardswish":  # closed at the kinks: the sup of |f'| on a neighbourhood
            return torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, ((2 * x + 3) / 6).abs())).to(x.dtype)
        return self.slope(step, x).abs()


# ============================================================================ layers


@register("linear")
class Linear(Rule):
    bounds_ops = frozenset({aten.linear.default})
    kinds = ("linear",)
    affine = True

    def step(self, ctx):
        a = ctx.args
        if _computed(ctx, a["weight"]):  # a weight computed from the input: a product of two tensors
            return ops_attention.tensor_product_step(
                ctx, a["input"], a["weight"], transpose_b=True, bias=a["bias"]
            )
        return ctx.make(
            "linear", (ctx.src(a["input"]),), dict(weight=ctx.c(a["weight"]), bias=ctx.c(a["bias"]))
        )

    def forward(self, step, xs):
        return F.linear(xs[0], step.params["weight"], step.params.get("bias"))

    def linear(self, step, xs):
        return F.linear(xs[0], step.params["weight"])

    def radius(self, step, rs):
        return F.linear(rs[0], step.params["weight"].abs())

    def lipschitz(self, step, norms):
        return float(torch.linalg.matrix_norm(step.params["weight"].double(), ord=2)), "spectral norm"

    def permute(self, w, node):
        args = node.args
        x, wt = w.ann(args[0]), w.param(args[1])
        b = w.param(args[2]) if len(args) > 2 else None
        shape = full_shape(node)
        if wt is None:  # computed weight (parametrisation): keep everything around it fixed
            w.fix(x)
            w.fix(w.ann(args[1]))
            return None
        xs = full_shape(args[0])
        if x is not None and (xs is None or x.dim != len(xs) - 1):
            w.fail(node, "applies a linear layer over an axis other than the permuted one")
        w.put(wt, 1, x)
        g = w.new(shape[-1], wt.removesuffix(".weight"))
        out = Perm(len(shape) - 1, g)
        w.put(wt, 0, out)
        w.put(b, 0, out)
        return out


def _computed(ctx, arg: Any) -> bool:
    """Whether a node argument is computed from the model's input (not a constant)."""
    return isinstance(arg, torch.fx.Node) and ctx.src(arg) not in ctx.const


@register("addmm", "mm")
class MatMulLinear(Rule):
    """``x @ W.T + b`` in a decomposed graph: a linear layer when ``W`` and ``b`` are constants."""

    bounds_ops = frozenset({aten.addmm.default, aten.mm.default})

    def step(self, ctx):
        a, tgt = ctx.args, ctx.node.target
        if _computed(ctx, a["mat2"]) and float(a.get("beta", 1)) == 1.0 and float(a.get("alpha", 1)) == 1.0:
            # ``x @ M`` with ``M`` computed from the input: a product of two tensors
            bias = a["self"] if tgt is aten.addmm.default else None
            return ops_attention.tensor_product_step(ctx, a["mat1"], a["mat2"], bias=bias)
        wt = ctx.c(a["mat2"])
        bias = ctx.c(a["self"]) if tgt is aten.addmm.default else None
        if (
            not isinstance(wt, torch.Tensor)
            or ctx.src(a["mat1"]) in ctx.const
            or (bias is not None and not isinstance(bias, torch.Tensor))
            or float(a.get("beta", 1)) != 1.0
            or float(a.get("alpha", 1)) != 1.0
        ):
            raise ctx.error(f"unsupported op {tgt} (only x @ W + b with constant W, b)")
        return ctx.make("linear", (ctx.src(a["mat1"]),), dict(weight=wt.t().contiguous(), bias=bias))


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: dict[str, Any]) -> torch.Tensor:
    if p.get("pre_pad") is not None:
        pads, mode, value = p["pre_pad"]
        x = F.pad(x, pads, mode=mode, value=value if mode == "constant" else None)
    fn = F.conv1d if w.ndim == 3 else F.conv2d
    return fn(x, w, b, p["stride"], p["padding"], p["dilation"], p["groups"])


@register("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d")
class Conv(Rule):
    bounds_ops = frozenset({
        aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding, aten.conv2d.padding,
        aten.convolution.default, aten.conv_transpose1d.default, aten.conv_transpose2d.input,
    })  # fmt: skip
    kinds = ("conv",)
    affine = True

    def step(self, ctx):
        a = ctx.args
        w = ctx.c(a["weight"])
        if not isinstance(w, torch.Tensor) or ctx.src(a["input"]) in ctx.const:
            raise ctx.error(f"unsupported op {ctx.node.target} (only constant weights)")
        nd = w.ndim - 2
        if nd not in (1, 2):
            raise ctx.error(
                f"unsupported op {ctx.node.target} ({nd}-d convolution; 1-d and 2-d are supported)"
            )
        tgt = ctx.node.target
        if tgt in (aten.conv_transpose1d.default, aten.conv_transpose2d.input) or (
            tgt is aten.convolution.default and a["transposed"]
        ):
            return ConvTranspose.read(ctx, w, nd)
        pad = a["padding"]
        if isinstance(pad, str):
            dil = _ints(a["dilation"], nd)
            if pad == "valid":
                pad = (0,) * nd
            else:
                tot = [d * (k - 1) for d, k in zip(dil, w.shape[2:])]
                if any(t % 2 for t in tot):
                    raise ctx.error("unsupported asymmetric padding='same'")
                pad = tuple(t // 2 for t in tot)
        params = dict(
            weight=w, bias=ctx.c(a["bias"]), stride=_ints(a["stride"], nd), padding=_ints(pad, nd),
            dilation=_ints(a["dilation"], nd), groups=int(a["groups"]), pre_pad=None,
        )  # fmt: skip
        return ctx.make("conv", (ctx.src(a["input"]),), params)

    def forward(self, step, xs):
        return _conv(xs[0], step.params["weight"], step.params.get("bias"), step.params)

    def linear(self, step, xs):
        return _conv(xs[0], step.params["weight"], None, step.params)

    def radius(self, step, rs):
        return _conv(rs[0], step.params["weight"].abs(), None, step.params)

    def lipschitz(self, step, norms):
        p = step.params
        w = p["weight"]
        pre = p.get("pre_pad")
        if pre is None:
            val = norms.conv(w, step.in_shape, p["stride"], p["padding"], p["dilation"], p["groups"])
            return val, "Lanczos on A^T A (conv / conv_transpose)"
        pads, mode, _ = pre
        nd = w.ndim - 2
        spatial = tuple(step.in_shape[1:])
        same = all(
            pads[2 * (nd - 1 - i)] + pads[2 * (nd - 1 - i) + 1] == p["dilation"][i] * (w.shape[2 + i] - 1)
            for i in range(nd)
        )
        if mode == "circular" and all(s == 1 for s in p["stride"]) and same and not any(p["padding"]):
            return norms.conv_fft(w, spatial, p["dilation"], p["groups"]), "exact FFT (circular, stride 1)"
        return norms.autograd(lambda v: self.linear(step, [v]), step.in_shape), (
            f"Lanczos on A^T A ({mode} pad + conv, autograd adjoint)"
        )

    def permute(self, w, node):
        args = node.args
        op = op_key(node.target)
        x, wt = w.ann(args[0]), w.param(args[1])
        b = w.param(args[2]) if len(args) > 2 else None
        if op == "convolution":
            transposed, groups = bool(args[6]), int(args[8])
        else:
            transposed, groups = op.startswith("conv_transpose"), int(args[6] if len(args) > 6 else 1)
        if wt is None:
            w.fix(x)
            return None
        if x is not None and (x.dim != 1 or x.inner != 1):
            w.fail(node, "convolves over a permuted axis other than the channels")
        shape = full_shape(node)
        out_ax, in_ax = (1, 0) if transposed else (0, 1)
        if groups != 1:
            wshape = w.shapes.get(wt)
            depthwise = (
                wshape is not None and wshape[in_ax] == 1 and shape[1] == (full_shape(args[0]) or [0, 0])[1]
            )
            if not depthwise or transposed:
                w.fail(node, f"is a grouped convolution (groups={groups}); only depthwise is supported")
            w.put(wt, 0, x)
            w.put(b, 0, x)
            return x
        w.put(wt, in_ax, x)
        g = w.new(shape[1], wt.removesuffix(".weight"))
        out = Perm(1, g)
        w.put(wt, out_ax, out)
        w.put(b, 0, out)
        return out


@register()
class ConvTranspose(Rule):
    """Transposed convolution ``conv_transpose(x, W) + b`` (kind ``conv_transpose``): affine, ``|W|``
    maps radii; its operator norm by Lanczos iteration on ``A^T A`` with the autograd adjoint (a convolution)."""

    kinds = ("conv_transpose",)
    affine = True

    @staticmethod
    def read(ctx, w: torch.Tensor, nd: int) -> Step:
        a = ctx.args
        params = dict(
            weight=w, bias=ctx.c(a["bias"]), stride=_ints(a["stride"], nd), padding=_ints(a["padding"], nd),
            output_padding=_ints(a["output_padding"], nd) or (0,) * nd, dilation=_ints(a["dilation"], nd),
            groups=int(a["groups"]),
        )  # fmt: skip
        return ctx.make("conv_transpose", (ctx.src(a["input"]),), params)

    @staticmethod
    def _convt(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: dict[str, Any]) -> torch.Tensor:
        fn = F.conv_transpose1d if w.ndim == 3 else F.conv_transpose2d
        return fn(x, w, b, p["stride"], p["padding"], p["output_padding"], p["groups"], p["dilation"])

    def forward(self, step, xs):
        return self._convt(xs[0], step.params["weight"], step.params.get("bias"), step.params)

    def linear(self, step, xs):
        return self._convt(xs[0], step.params["weight"], None, step.params)

    def radius(self, step, rs):
        return self._convt(rs[0], step.params["weight"].abs(), None, step.params)

    def lipschitz(self, step, norms):
        return norms.autograd(lambda v: self.linear(step, [v]), step.in_shape), (
            "Lanczos on A^T A (conv_transpose, autograd adjoint)"
        )


# ============================================================================ norms


@register(
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional", "native_batch_norm", "instance_norm", "cudnn_batch_norm",
)  # fmt: skip
class BatchNorm(Rule):
    """Eval-mode batch norm: ``x * gamma / sqrt(var + eps) + shift`` per channel."""

    bounds_ops = frozenset({aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default})
    kinds = ("batchnorm",)
    affine = True

    def step(self, ctx):
        a = ctx.args
        if a.get("training"):
            raise ctx.error("batch norm in training mode", "; call model.eval()")
        mean, var = ctx.c(a["running_mean"]), ctx.c(a["running_var"])
        if mean is None or var is None:
            raise ctx.error("batch norm without running statistics")
        w, b = ctx.c(a["weight"]), ctx.c(a["bias"])
        scale = 1.0 / torch.sqrt(var + float(a["eps"]))
        if w is not None:
            scale = scale * w
        shift = -mean * scale + (b if b is not None else 0.0)
        return ctx.make("batchnorm", (ctx.src(a["input"]),), dict(scale=scale, shift=shift))

    def forward(self, step, xs):
        x = xs[0]
        return x * _channel(step.params["scale"], x.ndim) + _channel(step.params["shift"], x.ndim)

    def linear(self, step, xs):
        return xs[0] * _channel(step.params["scale"], xs[0].ndim)

    def radius(self, step, rs):
        return rs[0] * _channel(step.params["scale"].abs(), rs[0].ndim)

    def lipschitz(self, step, norms):
        return float(step.params["scale"].abs().max()), "max |gamma / sqrt(var + eps)|"

    def unpermuted(self, w, node):
        w.has_bn = True

    def permuted(self, w, node, x):
        w.has_bn = True
        if x is None or x.dim != 1 or x.inner != 1:
            w.fail(node, "normalises an axis other than the permuted channel axis")
        for a in node.args[1:5]:
            w.put(w.param(a), 0, x)
        op = op_key(node.target)
        return [x, None, None, None, None] if op.startswith(("_native", "native", "cudnn")) else x


def min_variance(lo: torch.Tensor, hi: torch.Tensor, dims: tuple[int, ...], iters: int = 60) -> torch.Tensor:
    """The least variance ``min_{x in [lo, hi]} mean((x - mean x)^2)`` over a box, per group (the
    axes ``dims`` reduced, kept as size 1). Exact: ``n var(x) = min_c sum (x_i - c)^2``, so the minimum
    over the box is ``min_c sum_i dist(c, [lo_i, hi_i])^2 / n``, a convex function of one number
    ``c`` whose derivative ``sum relu(c - hi_i) - relu(lo_i - c)`` is found zero by bisection."""
    a, b = lo.amin(dim=dims, keepdim=True), hi.amax(dim=dims, keepdim=True)
    for _ in range(iters):
        c = (a + b) / 2
        g = (F.relu(c - hi) - F.relu(lo - c)).sum(dim=dims, keepdim=True)
        a, b = torch.where(g < 0, c, a), torch.where(g < 0, b, c)
    c = (a + b) / 2
    return (F.relu(c - hi) ** 2 + F.relu(lo - c) ** 2).mean(dim=dims, keepdim=True)


def _square_interval(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x^2`` over ``[lo, hi]``: ``[0, max(lo^2, hi^2)]`` when the interval contains 0."""
    low = F.relu(lo) - F.relu(-hi)  # 0 when lo < 0 < hi, else the end nearest 0
    return low * low, torch.maximum(lo * lo, hi * hi)


def _mul_interval(
    alo: torch.Tensor, ahi: torch.Tensor, blo: torch.Tensor, bhi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The product of two intervals: the least and greatest of the four corner products."""
    p = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
    return torch.minimum(torch.minimum(p[0], p[1]), torch.minimum(p[2], p[3])), torch.maximum(
        torch.maximum(p[0], p[1]), torch.maximum(p[2], p[3])
    )


def _scale_interval(
    lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi] * w`` for a constant ``w`` (the ends swap where ``w < 0``)."""
    if w is None:
        return lo, hi
    a, b = lo * w, hi * w
    return torch.minimum(a, b), torch.maximum(a, b)


@register("layer_norm", "native_layer_norm", "rms_norm")
class LayerNorm(Rule):
    """Layer norm ``gamma (x - mean x) / sqrt(var x + eps) + beta`` and RMS norm
    ``w x / sqrt(mean x^2 + eps)`` over the last ``len(normalized_shape)`` axes (kinds ``layernorm``,
    ``rmsnorm``).

    IBP (layer norm, as auto_LiRPA bounds its decomposition ``mean -> sub -> square -> mean -> + eps
    -> sqrt -> reciprocal -> mul -> affine``, each by interval arithmetic): ``m in [mean l, mean u]``,
    ``d = x - m in [l - mean u, u - mean l]``, ``d^2`` by the square of an interval, ``var`` by its mean,
    ``1 / sqrt(var + eps)`` monotone, ``d / sqrt(...)`` by the four corner products, then ``gamma``,
    ``beta``. RMS norm the same way without the centring.

    Lipschitz: the Jacobian of ``y = z / s`` (``z`` centred, ``s = sqrt(|z|^2 / n + eps)``) is
    ``(I - y y^T / n) P / s``, of norm at most ``1 / s``, so the global constant is
    ``max |gamma| / sqrt(eps)`` (reached at zero variance: honest but huge, e.g. 316 max|gamma| for
    eps = 1e-5). On a box the bound is ``max |gamma| / sqrt(v + eps)`` with ``v`` the least variance
    over the box (:func:`min_variance`; for RMS norm the least mean square), per sample."""

    bounds_ops = frozenset({aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default})
    kinds = ("layernorm", "rmsnorm")

    def step(self, ctx):
        a, op = ctx.args, op_key(ctx.node.target)
        x = ctx.node.args[0]
        shape = a["normalized_shape"]
        shape = [shape] if isinstance(shape, int) else list(shape)
        ndim = x.meta["val"].ndim
        if len(shape) >= ndim:
            raise ctx.error("normalisation over the batch axis")
        dims = tuple(range(ndim - len(shape), ndim))
        w = ctx.c(a.get("weight"))
        b = ctx.c(a.get("bias")) if op != "rms_norm" else None
        eps = a.get("eps")
        if eps is None:  # rms_norm's default: the dtype's machine epsilon
            eps = torch.finfo(x.meta["val"].dtype).eps
        kind = "rmsnorm" if op == "rms_norm" else "layernorm"
        params = dict(weight=w, bias=b, eps=float(eps), dims=dims, shape=tuple(int(v) for v in shape))
        return ctx.make(kind, (ctx.src(x),), params)

    def forward(self, step, xs):
        p = step.params
        if step.kind == "rmsnorm":
            x = xs[0]
            y = x * torch.rsqrt((x * x).mean(dim=p["dims"], keepdim=True) + p["eps"])
            return y * p["weight"] if p.get("weight") is not None else y
        return F.layer_norm(xs[0], p["shape"], p.get("weight"), p.get("bias"), p["eps"])

    def _normalised(self, step, x):
        """``(y, s)``: the normalised input without the affine part, and ``s = sqrt(var + eps)``."""
        p = step.params
        if step.kind == "rmsnorm":
            s = torch.sqrt((x * x).mean(dim=p["dims"], keepdim=True) + p["eps"])
            return x / s, s
        z = x - x.mean(dim=p["dims"], keepdim=True)
        s = torch.sqrt((z * z).mean(dim=p["dims"], keepdim=True) + p["eps"])
        return z / s, s

    def ibp(self, step, ins):
        p = step.params
        c, r = ins[0]
        lo, hi = c - r, c + r
        dims = p["dims"]
        if step.kind == "layernorm":
            dlo = lo - hi.mean(dim=dims, keepdim=True)
            dhi = hi - lo.mean(dim=dims, keepdim=True)
        else:
            dlo, dhi = lo, hi
        sqlo, sqhi = _square_interval(dlo, dhi)
        vlo, vhi = sqlo.mean(dim=dims, keepdim=True), sqhi.mean(dim=dims, keepdim=True)
        ilo, ihi = 1.0 / torch.sqrt(vhi + p["eps"]), 1.0 / torch.sqrt(vlo + p["eps"])
        ylo, yhi = _mul_interval(dlo, dhi, ilo, ihi)
        ylo, yhi = _scale_interval(ylo, yhi, p.get("weight"))
        if p.get("bias") is not None:
            ylo, yhi = ylo + p["bias"], yhi + p["bias"]
        return (yhi + ylo) / 2, (yhi - ylo) / 2

    def tangent(self, step, xs, ts):
        p = step.params
        y, s = self._normalised(step, xs[0])
        dims = tuple(d + 1 for d in p["dims"])  # the tangent's axes: (B, d, *shape)
        y, s, t = y.unsqueeze(1), s.unsqueeze(1), ts[0]
        if step.kind == "layernorm":
            t = t - t.mean(dim=dims, keepdim=True)
        out = (t - y * (y * t).mean(dim=dims, keepdim=True)) / s
        return out * p["weight"] if p.get("weight") is not None else out

    def tangent_radius(self, step, xs, rs):
        """``|J| r`` exactly, per normalised group of ``n`` units. With ``J = diag(g) (I - 1 1^T / n -
        y y^T / n) / s`` (layer norm) the off-diagonal entries are ``|1 + y_i y_j| / n``: sorting ``y``
        splits each row's sum at ``y_j = -1 / y_i`` into two prefix sums (``O(n log n)``). RMS norm's
        ``|y_i| |y_j| / n`` separates directly."""
        p = step.params
        y, s = self._normalised(step, xs[0])
        r = rs[0]
        dims = p["dims"]
        lead = tuple(y.shape[: dims[0]])
        n = math.prod(y.shape[dims[0] :])
        yf, rf = y.reshape(lead + (n,)), r.reshape(lead + (n,))
        if step.kind == "rmsnorm":
            ay = yf.abs()
            off = ay * ((ay * rf).sum(-1, keepdim=True) - ay * rf) / n
            diag = (1 - yf * yf / n).abs() * rf
        else:
            ys, order = yf.sort(dim=-1)
            rs_ = rf.gather(-1, order)
            zero = torch.zeros(lead + (1,), dtype=yf.dtype, device=yf.device)
            cr = torch.cat([zero, rs_.cumsum(-1)], -1)  # prefix sums of r and y r, sorted by y
            cyr = torch.cat([zero, (ys * rs_).cumsum(-1)], -1)
            tot_r, tot_yr = cr[..., -1:], cyr[..., -1:]
            safe = torch.where(yf == 0, torch.ones_like(yf), yf)
            k = torch.searchsorted(ys.contiguous(), (-1.0 / safe).contiguous())  # j < k: y_j < -1 / y_i
            below_r, below_yr = cr.gather(-1, k), cyr.gather(-1, k)
            above_r, above_yr = tot_r - below_r, tot_yr - below_yr
            # y_i > 0: 1 + y_i y_j >= 0 iff y_j >= -1/y_i; y_i < 0: iff y_j <= -1/y_i; y_i = 0: always
            pos = (above_r + yf * above_yr) - (below_r + yf * below_yr)
            neg = (below_r + yf * below_yr) - (above_r + yf * above_yr)
            full = torch.where(yf > 0, pos, torch.where(yf < 0, neg, tot_r.expand_as(yf)))
            off = (full - (1 + yf * yf) * rf) / n  # every j, less the diagonal's |1 + y_i^2| r_i / n
            diag = (1 - (1 + yf * yf) / n).abs() * rf
        out = ((off + diag).reshape(y.shape)) / s
        return out * p["weight"].abs() if p.get("weight") is not None else out

    def _gamma(self, step) -> float:
        w = step.params.get("weight")
        return float(w.abs().max()) if w is not None else 1.0

    def lipschitz(self, step, norms):
        g, eps = self._gamma(step), step.params["eps"]
        return g / math.sqrt(eps), (
            f"max|gamma| / sqrt(eps) (eps = {eps:g}): global but loose, reached only at zero variance; "
            "see the local bound over the data's boxes"
        )

    def local_lipschitz(self, step, boxes, norms):
        p = step.params
        lo, hi = boxes[0]
        if step.kind == "layernorm":
            v = min_variance(lo, hi, p["dims"])
        else:
            sq, _ = _square_interval(lo, hi)
            v = sq.mean(dim=p["dims"], keepdim=True)
        inv = torch.rsqrt(v + p["eps"]).flatten(1).amax(1)
        return self._gamma(step) * inv, "max|gamma| / sqrt(least variance over the box + eps)"

    def unpermuted(self, w, node):
        pass

    def permuted(self, w, node, x):
        if x is None:
            w.fail(node)
        op, args = op_key(node.target), node.args
        xs = full_shape(args[0])
        nshape = list(args[1]) if op != "rms_norm" or isinstance(args[1], list | tuple) else [args[1]]
        first = len(xs) - len(nshape)
        if x.dim >= first:
            if x.inner != 1:
                w.fail(node, "normalises over a flattened permuted axis")
            for a in args[2:4]:
                w.put(w.param(a), x.dim - first, x)
        return [x, None, None] if op == "native_layer_norm" else x


# ============================================================================ pooling, padding


class Pool(Rule):
    """Pooling over the spatial axes: a channel permutation passes through."""

    def permuted(self, w, node, x):
        if x is None or x.dim != 1 or x.inner != 1:
            w.fail(node)
        return [x, x] if "with_indices" in op_key(node.target) else x


@register(
    "max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "_adaptive_avg_pool2d", "upsample_bicubic2d", "upsample_nearest3d", "upsample_trilinear3d",
)  # fmt: skip
class OtherPool(Pool):
    """Pooling and resampling the bounds do not take yet."""


def _pool_dims(tgt: Any) -> int:
    return 1 if "1d" in str(tgt) else 2


def maxpool(step: Step, x: torch.Tensor, return_indices: bool = False):
    p = step.params
    fn = F.max_pool1d if p["dims"] == 1 else F.max_pool2d
    return fn(x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], return_indices)


def _gather(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick ``v``'s entries at max-pool ``idx`` (flat spatial indices per channel)."""
    flat = v.flatten(2)
    return flat.gather(2, idx.flatten(2)).reshape(idx.shape)


def maxpool_constant(params: dict[str, Any]) -> float:
    """Lipschitz constant (2-norm) of max pooling: ``sqrt`` of the most windows any input lies in
    (1 for non-overlapping windows)."""
    m = 1
    for k, s, d in zip(params["kernel"], params["stride"], params["dilation"]):
        m *= min(k, math.ceil((d * (k - 1) + 1) / s))
    return math.sqrt(m)


@register("max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices")
class MaxPool(Pool):
    bounds_ops = frozenset({
        aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool2d_with_indices.default,
        aten.max_pool1d_with_indices.default,
    })  # fmt: skip
    kinds = ("maxpool",)

    def step(self, ctx):
        a, nd = ctx.args, _pool_dims(ctx.node.target)
        k = _ints(a["kernel_size"], nd)
        params = dict(
            dims=nd, kernel=k, stride=_ints(a["stride"], nd) or k, padding=_ints(a["padding"], nd),
            dilation=_ints(a["dilation"], nd), ceil_mode=bool(a["ceil_mode"]),
        )  # fmt: skip
        return ctx.make("maxpool", (ctx.src(a["self"]),), params)

    def forward(self, step, xs):
        return maxpool(step, xs[0])

    def tangent(self, step, xs, ts):
        """Linearised max pooling: the clean input's maximum is selected."""
        _, idx = maxpool(step, xs[0], return_indices=True)
        t = ts[0]
        b, d = t.shape[:2]
        idx_t = idx.unsqueeze(1).expand((b, d) + tuple(idx.shape[1:]))
        flat = lambda v: v.reshape((-1,) + tuple(v.shape[2:]))  # noqa: E731
        return _gather(flat(t), flat(idx_t)).reshape((b, d) + tuple(idx.shape[1:]))

    def tangent_radius(self, step, xs, rs):
        _, idx = maxpool(step, xs[0], return_indices=True)
        return _gather(rs[0], idx)

    def lipschitz(self, step, norms):
        c = maxpool_constant(step.params)
        return c, "non-overlapping windows" if c == 1.0 else "sqrt(windows per input), overlapping"


class LinearPool(Pool):
    """An averaging pool: affine, its own constant by Lanczos iteration on ``A^T A`` (autograd adjoint)."""

    affine = True

    def lipschitz(self, step, norms):
        return norms.autograd(
            lambda v: self.linear(step, [v]), step.in_shape
        ), "Lanczos on A^T A (autograd adjoint)"


@register("avg_pool1d", "avg_pool2d")
class AvgPool(LinearPool):
    bounds_ops = frozenset({aten.avg_pool1d.default, aten.avg_pool2d.default})
    kinds = ("avgpool",)

    def step(self, ctx):
        a, nd = ctx.args, _pool_dims(ctx.node.target)
        k = _ints(a["kernel_size"], nd)
        params = dict(
            dims=nd, kernel=k, stride=_ints(a["stride"], nd) or k, padding=_ints(a["padding"], nd),
            ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]),
            divisor_override=a.get("divisor_override"),
        )  # fmt: skip
        return ctx.make("avgpool", (ctx.src(a["self"]),), params)

    def linear(self, step, xs):
        p = step.params
        fn = F.avg_pool1d if p["dims"] == 1 else F.avg_pool2d
        kw = dict(ceil_mode=p["ceil_mode"], count_include_pad=p["count_include_pad"])
        if p["dims"] == 2:
            kw["divisor_override"] = p["divisor_override"]
        return fn(xs[0], p["kernel"], p["stride"], p["padding"], **kw)


@register("adaptive_avg_pool1d", "adaptive_avg_pool2d")
class AdaptiveAvgPool(LinearPool):
    bounds_ops = frozenset({aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default})
    kinds = ("adaptive_avgpool",)

    def step(self, ctx):
        nd = _pool_dims(ctx.node.target)
        params = dict(dims=nd, output_size=_ints(ctx.args["output_size"], nd))
        return ctx.make("adaptive_avgpool", (ctx.src(ctx.args["self"]),), params)

    def linear(self, step, xs):
        p = step.params
        fn = F.adaptive_avg_pool1d if p["dims"] == 1 else F.adaptive_avg_pool2d
        return fn(xs[0], p["output_size"])


@register("pad", "constant_pad_nd")
class Pad(LinearPool):
    """Padding: zero-padding is linear (the constant value is the affine part)."""

    bounds_ops = frozenset({aten.pad.default, aten.constant_pad_nd.default})
    kinds = ("pad",)

    def step(self, ctx):
        a = ctx.args
        mode = a.get("mode") or "constant"
        value = float(a.get("value") or 0.0)
        pads = tuple(int(p) for p in a["pad"])
        if any(p < 0 for p in pads):
            raise ctx.error("unsupported negative padding (cropping)")
        return ctx.make("pad", (ctx.src(ctx.node.args[0]),), dict(pad=(pads, mode, value)))

    @staticmethod
    def _pad(x: torch.Tensor, p: dict[str, Any], linear: bool) -> torch.Tensor:
        pads, mode, value = p["pad"]
        if mode == "constant":
            return F.pad(x, pads, mode="constant", value=0.0 if linear else value)
        return F.pad(x, pads, mode=mode)

    def forward(self, step, xs):
        return self._pad(xs[0], step.params, linear=False)

    def linear(self, step, xs):
        return self._pad(xs[0], step.params, linear=True)


_UPSAMPLE = (
    "upsample_nearest1d", "upsample_nearest2d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
    "upsample_linear1d", "upsample_bilinear2d",
)  # fmt: skip


@register(*_UPSAMPLE)
class Upsample(LinearPool):
    """``interpolate`` (nearest, nearest-exact, linear/bilinear): a linear map with non-negative
    weights, so ``|A| r = A r``; called as the traced ATen op with its own arguments (the same
    index arithmetic as the model); its operator norm by Lanczos iteration on ``A^T A``."""

    bounds_ops = frozenset(getattr(getattr(aten, n), o) for n in _UPSAMPLE for o in ("default", "vec"))
    kinds = ("upsample",)

    def step(self, ctx):
        tgt = ctx.node.target
        rest = tuple(self._plain(a) for a in ctx.node.args[1:])
        kwargs = {k: self._plain(v) for k, v in ctx.node.kwargs.items()}
        params = dict(op=(op_key(tgt), tgt._overloadname), rest=rest, kwargs=kwargs)
        return ctx.make("upsample", (ctx.src(ctx.node.args[0]),), params)

    @staticmethod
    def _plain(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [int(t) if isinstance(t, torch.SymInt) else t for t in v]
        return v

    def linear(self, step, xs):
        name, overload = step.params["op"]
        fn = getattr(getattr(aten, name), overload)
        return fn(xs[0], *step.params["rest"], **step.params["kwargs"])


# ============================================================================ reductions, shapes


class Reduce(Rule):
    """A reduction: over the permuted axis it is invariant, over others it passes it on."""

    def permuted(self, w, node, x):
        if x is None:
            w.fail(node)
        args = node.args
        nd = len(full_shape(args[0]))
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
        return x if keep else Perm(x.dim - sum(d < x.dim for d in dims), x.gid, x.inner)


@register("amax", "amin", "max", "min", "var", "std", "logsumexp", "norm", "linalg_vector_norm")
class OtherReduce(Reduce):
    """Reductions the bounds do not take yet."""


@register("mean", "sum")
class Mean(Reduce):
    """``mean`` / ``sum`` over per-sample axes (kinds ``mean``, ``sum``): linear with non-negative
    weights; Lipschitz ``1 / sqrt(k)`` and ``sqrt(k)`` for ``k`` units reduced into each output."""

    bounds_ops = frozenset({aten.mean.dim, aten.sum.dim_IntList})
    kinds = ("mean", "sum")
    affine = True

    def step(self, ctx):
        a = ctx.args
        ndim = ctx.node.args[0].meta["val"].ndim
        dims = a["dim"]
        dims = [dims] if isinstance(dims, int) else dims
        dims = tuple(sorted(int(d) % ndim for d in (dims or range(ndim))))
        shape = ctx.node.args[0].meta["val"].shape
        symbolic = [not isinstance(d, int) for d in shape]
        # the batch axis: the symbolic size (the bounds reader follows it), else axis 0
        if (any(symbolic) and any(symbolic[d] for d in dims)) or (not any(symbolic) and 0 in dims):
            raise ctx.error(f"{op_key(ctx.node.target)} over the batch axis")
        if a.get("dtype") is not None:
            raise ctx.error(f"unsupported {op_key(ctx.node.target)} with a dtype")
        kind = "sum" if op_key(ctx.node.target) == "sum" else "mean"
        return ctx.make(kind, (ctx.src(a["self"]),), dict(dims=dims, keepdim=bool(a["keepdim"])))

    def linear(self, step, xs):
        fn = torch.sum if step.kind == "sum" else torch.mean
        return fn(xs[0], dim=step.params["dims"], keepdim=step.params["keepdim"])

    def lipschitz(self, step, norms):
        if step.kind == "sum" and step.in_shape:
            k = math.prod(step.in_shape[d - 1] for d in step.params["dims"])
            return math.sqrt(k), f"sqrt({k}) (sum of {k} units)"
        return LinearPool.lipschitz(self, step, norms)


def _batch_first(val: torch.Tensor) -> bool:
    """Whether a traced value's axis 0 is its batch axis (a symbolic size, or every size fixed)."""
    symbolic = [not isinstance(d, int) for d in val.shape]
    return not any(symbolic) or (symbolic[0] and str(val.shape[0]).isidentifier())


@register("view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze")
class Reshape(Rule):
    """A reshape of the per-sample axes (the batch axis stays axis 0)."""

    bounds_ops = frozenset({
        aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
        aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
    })  # fmt: skip
    kinds = ("reshape",)
    affine = True

    def step(self, ctx):
        x = ctx.node.all_input_nodes[0]
        xval, oval = x.meta.get("val"), ctx.node.meta.get("val")
        if xval is None or oval is None or oval.ndim == 0:
            raise ctx.error("reshape across the batch axis")
        if oval.shape[0] != xval.shape[0] or not (_batch_first(xval) and _batch_first(oval)):
            # the batch moves or merges with other axes (nn.MultiheadAttention): the model's own
            # shapes, the batch size left to the input (the bounds reader tracks where it is)
            return ops_attention.reshape_step(ctx)
        return ctx.make("reshape", (ctx.src(x),))

    def linear(self, step, xs):
        return xs[0].reshape((xs[0].shape[0],) + tuple(step.out_shape))

    def lipschitz(self, step, norms):
        return 1.0, "isometry"

    def permuted(self, w, node, x):
        if x is None:
            w.fail(node)
        op, args = op_key(node.target), node.args
        xs, ys = full_shape(args[0]), full_shape(node)
        if xs == ys:
            return x
        d = x.dim
        if op == "unsqueeze":
            k = args[1] % (len(xs) + 1)
            return Perm(d + (k <= d), x.gid, x.inner)
        if op == "squeeze":
            dims = [i for i in range(len(xs)) if xs[i] == 1 and i != d]
            if len(args) > 1:
                want = args[1] if isinstance(args[1], list | tuple) else [args[1]]
                dims = [k % len(xs) for k in want if xs[k % len(xs)] == 1]
            return Perm(d - sum(k < d for k in dims), x.gid, x.inner)
        # a reshape that keeps the axes before the permuted one and merges it with trailing axes
        if list(ys[:d]) == list(xs[:d]) and len(ys) > d:
            rest = xs[d + 1 :]
            for end in range(len(rest) + 1):
                merged = (
                    xs[d] * math.prod(rest[:end]) if all(isinstance(s, int) for s in rest[:end]) else None
                )
                if merged == ys[d] and list(ys[d + 1 :]) == list(rest[end:]):
                    return Perm(d, x.gid, x.inner * math.prod(rest[:end]))
        w.fail(node, f"reshapes the permuted axis ({xs} -> {ys}) in a way alignment cannot follow")


@register("cat")
class Cat(Rule):
    """``cat`` along a per-sample axis. A constant operand (a learned class token expanded to the
    batch, the same for every sample) is kept per sample in ``const_<i>`` (``const_pos``: where it
    goes): it adds no radius and no Lipschitz term."""

    bounds_ops = frozenset({aten.cat.default})
    kinds = ("cat",)
    affine = True

    def step(self, ctx):
        xs = ctx.node.args[0]
        nd = xs[0].meta["val"].ndim
        dim = int(ctx.args["dim"]) % nd
        if dim == 0:
            raise ctx.error("concatenation along the batch axis")
        params: dict[str, Any] = dict(dim=dim, const_pos=())
        inputs = []
        for i, t in enumerate(xs):
            if ctx.src(t) not in ctx.const:
                inputs.append(ctx.src(t))
                continue
            v = ctx.const[ctx.src(t)]
            if not isinstance(v, torch.Tensor) or v.ndim != nd or not bool((v == v[:1]).all()):
                raise ctx.error("concatenation with a constant tensor that differs between samples")
            params[f"const_{i}"] = v[:1].detach()
            params["const_pos"] += (i,)
        if not inputs:
            raise ctx.error("concatenation of constants only")
        return ctx.make("cat", tuple(inputs), params)

    def _cat(self, step, xs, fill):
        pos, it, parts = step.params.get("const_pos", ()), iter(xs), []
        n = len(xs) + len(pos)
        b = xs[0].shape[0]
        for i in range(n):
            if i in pos:
                c = step.params[f"const_{i}"]
                parts.append(fill(c.to(xs[0].dtype).expand((b,) + tuple(c.shape[1:]))))
            else:
                parts.append(next(it))
        return torch.cat(parts, dim=step.params["dim"])

    def forward(self, step, xs):
        return self._cat(step, xs, lambda c: c)

    def linear(self, step, xs):
        return self._cat(step, xs, torch.zeros_like)

    def lipschitz(self, step, norms):
        return math.nan, "root sum of squares of branches"

    def compose(self, step, const, ups):
        return sum(u * u for u in ups) ** 0.5


# ============================================================================ arithmetic


class Binary(Rule):
    """Element-wise ops of two tensors: permuted operands must share one permutation."""

    def unpermuted(self, w, node):
        pass

    def permuted(self, w, node, x):
        op, args = op_key(node.target), node.args
        out_shape = full_shape(node)
        if out_shape is None:
            w.fail(node)
        nd = len(out_shape)
        result: Perm | None = None
        operands = list(args[:2]) if op != "where" else list(args[1:3])
        if op == "where" and w.ann(args[0]) is not None:
            w.fail(node)
        for a in operands:
            ann = w.ann(a)
            if ann is None:
                continue
            s = full_shape(a)
            if len(s) != nd:
                w.fail(node, "broadcasts a permuted tensor against a tensor of another rank")
            if result is None:
                result = ann
            else:
                if ann.dim != result.dim or ann.inner != result.inner:
                    w.fail(node, "combines tensors permuted along different axes")
                g = w.union(result.gid, ann.gid, node)
                result = Perm(result.dim, g, result.inner)
        assert result is not None
        for a in operands:
            if not isinstance(a, torch.fx.Node) or w.ann(a) is not None:
                continue
            s = full_shape(a)
            if s is None:
                continue
            # align from the right: which axis of ``a`` meets the permuted axis?
            k = result.dim - (nd - len(s))
            if k < 0 or s[k] == 1:
                continue  # broadcast along the permuted axis: unaffected
            pname = w.param(a)
            if pname is not None and result.inner == 1:  # a learned per-unit scale / shift
                w.put(pname, k, result)
            else:  # an unpermuted full tensor meets a permuted one: the permutation must be identity
                w.fix(result)
        return result


@register("maximum", "minimum")
class OtherBinary(Binary):
    """Binary ops the bounds do not take."""


@register("where")
class Where(Binary):
    """``where(cond, x, value)`` / ``where(cond, value, x)`` with a constant condition and a constant
    number: ``x`` with the entries where the number is taken set to it (a ``masked_fill`` step, as
    Hugging Face GPT-2 applies its causal mask). Anything else is refused."""

    bounds_ops = frozenset(
        {aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar}
    )

    def step(self, ctx):
        node = ctx.node
        cond, a, b = node.args[:3]
        if _computed(ctx, cond):
            raise ctx.error("where with a condition computed from the input")
        ta, tb = _computed(ctx, a), _computed(ctx, b)
        if ta == tb:
            raise ctx.error("where of two tensors computed from the input (only a tensor and a constant)")
        x, value = (a, b) if ta else (b, a)
        value = ctx.c(value)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ctx.error("where with a constant tensor (only a number)")
            value = float(value)
        mask = ctx.c(cond).to(torch.bool)
        mask = ~mask if ta else mask  # the entries where the number is taken
        out, xval = node.meta.get("val"), x.meta.get("val")
        if not isinstance(out, torch.Tensor) or not isinstance(xval, torch.Tensor) or out.ndim != xval.ndim:
            raise ctx.error("where that broadcasts its tensor operand")
        if mask.ndim > out.ndim or any(m not in (1, o) for m, o in zip(mask.shape[::-1], out.shape[::-1])):
            raise ctx.error("where with a condition that does not broadcast to the tensor")
        if mask.ndim == out.ndim and mask.shape[0] != 1:
            raise ctx.error("where with a condition that differs between samples")
        return ctx.make("masked_fill", (ctx.src(x),), dict(mask=mask.to(torch.float32), value=float(value)))


def _per_sample_constant(o: torch.Tensor, sample: tuple[int, ...]) -> bool:
    """Whether the constant ``o`` broadcasts against inputs of per-sample shape ``sample`` without
    changing their shape or varying along the batch axis."""
    full = (1,) + tuple(sample)
    if o.ndim > len(full):
        return False
    try:
        return tuple(torch.broadcast_shapes(o.shape, full)) == full
    except RuntimeError:
        return False


def _expansion(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """How many output units each input unit is broadcast to (``numel(out) / numel(in)``)."""
    return max(1, math.prod(out_shape) // max(1, math.prod(shape)))


@register("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_")
class Arith(Binary):
    """``add``/``sub`` of two tensors (kind ``add``, broadcasting allowed: residuals, gates);
    ``add``/``sub``/``mul``/``div`` by a number or a constant tensor (kinds ``shift``, ``scale``);
    ``mul``/``div`` of two tensors (kinds ``mul``, ``div``: :class:`Product`)."""

    bounds_ops = frozenset({
        aten.add.Tensor, aten.sub.Tensor, aten.add_.Tensor, aten.sub_.Tensor, aten.mul.Tensor,
        aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar, aten.add.Scalar, aten.sub.Scalar, aten.mul_.Tensor,
        aten.div_.Tensor, aten.rsub.Scalar,
    })  # fmt: skip
    kinds = ("add", "scale", "shift", "rsub")
    affine = True

    def step(self, ctx):
        node, tgt, a = ctx.node, ctx.node.target, ctx.args
        name = op_key(tgt).rstrip("_")
        x, other = node.args[0], node.args[1]
        alpha = float(a.get("alpha") or 1.0)
        sign = -1.0 if name == "sub" else 1.0
        src = ctx.src
        # the operands that carry the input (``x * x`` names one node twice)
        tensor_in = [src(v) for v in (x, other) if isinstance(v, torch.fx.Node) and src(v) not in ctx.const]
        out_shape = ctx.fields["out_shape"]
        if len(tensor_in) == 2:
            full = full_shape(node)
            for arg in (x, other):  # both carry the batch axis: broadcasting within a sample only
                fs = full_shape(arg)
                if full is None or fs is None or len(fs) != len(full) or fs[0] != full[0]:
                    raise ctx.error(f"unsupported broadcasting {name} across the batch axis")
            k = (_expansion(sample_shape(x), out_shape), _expansion(sample_shape(other), out_shape))
            if name in ("add", "sub"):
                return ctx.make("add", (src(x), src(other)), dict(alpha=sign * alpha, expand=k))
            if name in ("mul", "div") and a.get("rounding_mode") is None:
                return ctx.make(name, (src(x), src(other)), dict(expand=k))
        if len(tensor_in) == 1 and isinstance(x, torch.fx.Node) and src(x) == tensor_in[0]:
            o = other
            if isinstance(o, torch.fx.Node):
                o = ctx.const[src(o)]
                if not isinstance(o, torch.Tensor):
                    raise ctx.error(f"unsupported op {tgt} with a {type(o).__name__} operand")
                if o.numel() == 1:
                    o = float(o)
                elif not _per_sample_constant(o, sample_shape(x)):
                    raise ctx.error(f"unsupported op {tgt} with a constant that broadcasts over the batch")
                else:
                    o = o.detach()
            if isinstance(o, int | float | torch.Tensor) and a.get("rounding_mode") is None:
                if name in ("add", "sub"):
                    return ctx.make("shift", (src(x),), dict(value=sign * alpha * o))
                if name == "mul":
                    return ctx.make("scale", (src(x),), dict(value=o))
                if name == "div" and bool((torch.as_tensor(o) != 0).all()):
                    return ctx.make("scale", (src(x),), dict(value=1.0 / o))
        if len(tensor_in) == 1 and name in ("sub", "rsub"):  # c - alpha x (a constant first)
            c, xs = (x, other) if name == "sub" else (other, x)
            if isinstance(xs, torch.fx.Node) and src(xs) == tensor_in[0]:
                c = ctx.const[src(c)] if isinstance(c, torch.fx.Node) else c
                if isinstance(c, torch.Tensor) and c.numel() == 1:
                    c = float(c)
                if isinstance(c, int | float):
                    return ctx.make("rsub", (src(xs),), dict(value=-alpha, offset=float(c)))
        raise ctx.error(f"unsupported op {tgt} (only add/sub/mul/div of two tensors or by constants)")

    def forward(self, step, xs):
        if step.kind == "shift":
            return xs[0] + step.params["value"]
        if step.kind == "rsub":
            return step.params["offset"] + step.params["value"] * xs[0]
        return self.linear(step, xs)

    def linear(self, step, xs):
        if step.kind == "add":
            return xs[0] + step.params["alpha"] * xs[1]
        if step.kind in ("scale", "rsub"):
            return xs[0] * step.params["value"]
        return xs[0]  # shift

    def radius(self, step, rs):
        if step.kind == "add":
            return rs[0] + abs(step.params["alpha"]) * rs[1]
        if step.kind in ("scale", "rsub"):
            v = step.params["value"]
            return rs[0] * (v.abs() if isinstance(v, torch.Tensor) else abs(v))
        return rs[0]

    def lipschitz(self, step, norms):
        if step.kind == "add":
            return math.nan, "sum of branches"
        if step.kind in ("scale", "rsub"):
            v = step.params["value"]
            if isinstance(v, torch.Tensor):
                return float(v.abs().max()), "max |constant|"
            return abs(v), "|scalar|"
        return 1.0, "translation"

    def compose(self, step, const, ups):
        if step.kind == "add":  # ||dA + alpha dB|| <= sqrt(k_a) U_a + |alpha| sqrt(k_b) U_b
            ka, kb = step.params.get("expand", (1, 1))
            return math.sqrt(ka) * ups[0] + abs(step.params["alpha"]) * math.sqrt(kb) * ups[1]
        return Rule.compose(self, step, const, ups)


@register()
class Product(Rule):
    """``a * b`` and ``a / b`` of two tensors (broadcasting within a sample).

    IBP: the product of two intervals is bounded by the least and greatest of its four corner
    products; ``a / b = a * (1 / b)`` with ``1 / b in [1 / u, 1 / l]`` where ``b``'s interval excludes 0
    (else an error naming the step). ``x * x`` (one source) is the square of an interval.
    Lipschitz: no global constant (``a b`` grows without bound); on a box, with ``k_a``, ``k_b`` the
    broadcast factors, ``||J|| <= sqrt(k_a max|b|^2 + k_b max|a|^2)`` (for ``a / b``: ``max 1/|b|`` and
    ``max |a| / b^2``)."""

    kinds = ("mul", "div")

    def forward(self, step, xs):
        return xs[0] * xs[1] if step.kind == "mul" else xs[0] / xs[1]

    def _recip(self, step, blo, bhi):
        if bool(((blo <= 0) & (bhi >= 0)).any()):
            lo = float(blo[(blo <= 0) & (bhi >= 0)].min())
            hi = float(bhi[(blo <= 0) & (bhi >= 0)].max())
            raise NNVitalsError(
                f"IBP: the divisor of step {step.label!r} ({step.op}) can be 0 on the input box (its interval "
                f"reaches [{lo:.4g}, {hi:.4g}]); interval bounds of a / b need b's interval to exclude 0",
                hint="use a smaller eps, or keep the divisor away from 0 (e.g. add a constant)",
            )
        return 1.0 / bhi, 1.0 / blo

    def ibp(self, step, ins):
        (ca, ra), (cb, rb) = ins
        alo, ahi, blo, bhi = ca - ra, ca + ra, cb - rb, cb + rb
        if step.kind == "div":
            blo, bhi = self._recip(step, blo, bhi)
        if step.inputs[0] == step.inputs[1] and step.kind == "mul":
            lo, hi = _square_interval(alo, ahi)
        elif step.inputs[0] == step.inputs[1]:  # x / x = 1 (where defined)
            lo = hi = torch.ones_like(alo)
        else:
            lo, hi = _mul_interval(alo, ahi, blo, bhi)
        return (hi + lo) / 2, (hi - lo) / 2

    def tangent(self, step, xs, ts):
        a, b = xs[0].unsqueeze(1), xs[1].unsqueeze(1)
        if step.kind == "mul":
            return ts[0] * b + a * ts[1]
        return ts[0] / b - a * ts[1] / (b * b)

    def tangent_radius(self, step, xs, rs):
        a, b = xs
        if step.kind == "mul":
            return rs[0] * b.abs() + a.abs() * rs[1]
        return rs[0] / b.abs() + (a / (b * b)).abs() * rs[1]

    def lipschitz(self, step, norms):
        what = "product" if step.kind == "mul" else "quotient"
        return (
            math.inf,
            f"no global constant: a {what} of two tensors; see the local bound over the data's boxes",
        )

    def local_lipschitz(self, step, boxes, norms):
        (alo, ahi), (blo, bhi) = boxes
        ka, kb = step.params.get("expand", (1, 1))
        amax = torch.maximum(alo.abs(), ahi.abs()).flatten(1).amax(1)
        if step.kind == "mul":
            bmax = torch.maximum(blo.abs(), bhi.abs()).flatten(1).amax(1)
            return torch.sqrt(ka * bmax**2 + kb * amax**2), "sqrt(k_a max|b|^2 + k_b max|a|^2) over the box"
        rlo, rhi = self._recip(step, blo, bhi)
        rmax = torch.maximum(rlo.abs(), rhi.abs()).flatten(1).amax(1)  # max 1/|b|
        return torch.sqrt(ka * rmax**2 + kb * (amax * rmax**2) ** 2), (
            "sqrt(k_a max 1/|b|^2 + k_b (max|a| / min b^2)^2) over the box"
        )

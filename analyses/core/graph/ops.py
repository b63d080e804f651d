"""The operator rules (see :mod:`.rules`): one class per operator or family of operators.

Bounds steps (kind: ATen ops):

========================  ==========================================================
kind                      ATen ops
========================  ==========================================================
``linear``                ``linear``; ``addmm`` / ``mm`` with a constant weight (decomposed)
``conv``                  ``conv1d``, ``conv2d``, ``convolution`` (not transposed), any
                          stride / padding / dilation / groups
``batchnorm``             ``batch_norm`` / ``_native_batch_norm_legit_no_training`` in
                          eval mode, as a per-channel affine map
``relu``, ``leaky_relu``  ``relu``, ``leaky_relu``
``maxpool``, ``avgpool``  ``max_pool1d/2d`` (+ ``_with_indices``), ``avg_pool1d/2d``
``adaptive_avgpool``      ``adaptive_avg_pool1d/2d``
``mean``                  ``mean`` over non-batch dims
``reshape``               ``flatten``, ``view``, ``reshape``, ``squeeze``, ``unsqueeze``
``add``                   ``add`` / ``sub`` of two tensors (residual connections)
``cat``                   ``cat`` along a non-batch dim
``scale``, ``shift``      ``mul`` / ``div`` / ``add`` / ``sub`` with a Python number
``pad``                   ``pad``, ``constant_pad_nd``
(alias)                   ``dropout`` (eval), ``clone``, ``contiguous``, ``alias``, ``detach``
========================  ==========================================================

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
    "gelu", "silu", "silu_", "sigmoid", "tanh", "elu", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid",
    "softplus", "mish", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "pow", "_to_copy", "to",
    "type_as", "feature_dropout", "alpha_dropout", "celu", "selu", "relu6", "clamp", "clamp_min",
    "clamp_max", "log_sigmoid", "softmax", "log_softmax", "_softmax", "_log_softmax", "identity",
    "native_dropout",
)  # fmt: skip
class Unary(Elementwise):
    """Element-wise activations the bounds do not take yet."""


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


@register("dropout", "clone", "contiguous", "alias", "detach", "lift_fresh_copy")
class Identity(Elementwise):
    """Computes nothing (in eval mode): the bounds read it as its input."""

    bounds_ops = frozenset({
        aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
        aten.detach.default, aten.lift_fresh_copy.default,
    })  # fmt: skip

    def step(self, ctx):
        if ctx.node.target is aten.dropout.default and ctx.args.get("train"):
            raise ctx.error("dropout in training mode")
        return ctx.src(ctx.node.args[0])


@register("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
class Ignore(Rule):
    """Export bookkeeping (assertions): no value to follow."""

    def permute(self, w, node):
        return None


@register("sym_size")
class SymSize(Ignore):
    """The (dynamic) batch size a decomposed view takes: shapes come from the traced metadata."""

    bounds_ops = frozenset({aten.sym_size.int})

    def step(self, ctx):
        return None


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

    def step(self, ctx):
        return ctx.make("relu", (ctx.src(ctx.args["self"]),))

    def forward(self, step, xs):
        return F.relu(xs[0])

    def lipschitz(self, step, norms):
        return 1.0, "1-Lipschitz"


@register("leaky_relu", "leaky_relu_")
class LeakyRelu(Elementwise):
    bounds_ops = frozenset({aten.leaky_relu.default, aten.leaky_relu_.default})
    kinds = ("leaky_relu",)

    def step(self, ctx):
        return ctx.make(
            "leaky_relu", (ctx.src(ctx.args["self"]),), dict(slope=float(ctx.args["negative_slope"]))
        )

    def forward(self, step, xs):
        return F.leaky_relu(xs[0], step.params["slope"])

    def lipschitz(self, step, norms):
        return max(1.0, abs(step.params["slope"])), "max(1, |slope|)"


# ============================================================================ layers


@register("linear")
class Linear(Rule):
    bounds_ops = frozenset({aten.linear.default})
    kinds = ("linear",)
    affine = True

    def step(self, ctx):
        a = ctx.args
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


@register("addmm", "mm")
class MatMulLinear(Rule):
    """``x @ W.T + b`` in a decomposed graph: a linear layer when ``W`` and ``b`` are constants."""

    bounds_ops = frozenset({aten.addmm.default, aten.mm.default})

    def step(self, ctx):
        a, tgt = ctx.args, ctx.node.target
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
        aten.convolution.default,
    })  # fmt: skip
    kinds = ("conv",)
    affine = True

    def step(self, ctx):
        a = ctx.args
        w = ctx.c(a["weight"])
        nd = w.ndim - 2
        if ctx.node.target is aten.convolution.default and (
            a["transposed"] or any(a["output_padding"] or ())
        ):
            raise ctx.error("unsupported op transposed convolution")
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
            return val, "power iteration (conv / conv_transpose)"
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
            f"power iteration ({mode} pad + conv, autograd adjoint)"
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


@register("layer_norm", "native_layer_norm", "rms_norm")
class LayerNorm(Rule):
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
    "_adaptive_avg_pool2d", "upsample_nearest2d", "upsample_bilinear2d",
)  # fmt: skip
class OtherPool(Pool):
    """Pooling and resampling the bounds do not take yet."""


def _pool_dims(tgt: Any) -> int:
    return 1 if "1d" in str(tgt) else 2


def maxpool(step: Step, x: torch.Tensor, return_indices: bool = False):
    p = step.params
    fn = F.max_pool1d if p["dims"] == 1 else F.max_pool2d
    return fn(x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], return_indices)


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

    def lipschitz(self, step, norms):
        c = maxpool_constant(step.params)
        return c, "non-overlapping windows" if c == 1.0 else "sqrt(windows per input), overlapping"


class LinearPool(Pool):
    """An averaging pool: affine, its own constant by power iteration."""

    affine = True

    def lipschitz(self, step, norms):
        return norms.autograd(
            lambda v: self.linear(step, [v]), step.in_shape
        ), "power iteration (autograd adjoint)"


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


@register("sum", "amax", "amin", "max", "min", "var", "std", "logsumexp", "norm", "linalg_vector_norm")
class OtherReduce(Reduce):
    """Reductions the bounds do not take yet."""


@register("mean")
class Mean(Reduce):
    bounds_ops = frozenset({aten.mean.dim})
    kinds = ("mean",)
    affine = True

    def step(self, ctx):
        a = ctx.args
        ndim = ctx.node.args[0].meta["val"].ndim
        dims = a["dim"]
        dims = tuple(sorted(int(d) % ndim for d in (dims or range(ndim))))
        if 0 in dims:
            raise ctx.error("mean over the batch axis")
        return ctx.make("mean", (ctx.src(a["self"]),), dict(dims=dims, keepdim=bool(a["keepdim"])))

    def linear(self, step, xs):
        return xs[0].mean(dim=step.params["dims"], keepdim=step.params["keepdim"])

    def lipschitz(self, step, norms):
        return LinearPool.lipschitz(self, step, norms)


@register("view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze")
class Reshape(Rule):
    """A reshape of the per-sample axes (the batch axis stays axis 0)."""

    bounds_ops = frozenset({
        aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
        aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
    })  # fmt: skip
    kinds = ("reshape",)
    affine = True

    def step(self, ctx):
        x = ctx.node.all_input_nodes[0]
        xval, oval = x.meta.get("val"), ctx.node.meta.get("val")
        if xval is None or oval is None or oval.ndim == 0 or oval.shape[0] != xval.shape[0]:
            raise ctx.error("reshape across the batch axis")
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
    bounds_ops = frozenset({aten.cat.default})
    kinds = ("cat",)
    affine = True

    def step(self, ctx):
        xs = ctx.node.args[0]
        nd = xs[0].meta["val"].ndim
        dim = int(ctx.args["dim"]) % nd
        if dim == 0:
            raise ctx.error("concatenation along the batch axis")
        if any(ctx.src(t) in ctx.const for t in xs):
            raise ctx.error("concatenation with a constant tensor")
        return ctx.make("cat", tuple(ctx.src(t) for t in xs), dict(dim=dim))

    def linear(self, step, xs):
        return torch.cat(xs, dim=step.params["dim"])

    def lipschitz(self, step, norms):
        return math.nan, "root sum of squares of branches"


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


@register("mul_", "div_", "maximum", "minimum", "where")
class OtherBinary(Binary):
    """Binary ops the bounds do not take."""


@register("add", "add_", "sub", "sub_", "mul", "div")
class Arith(Binary):
    """Residual ``add``/``sub`` of two tensors (kind ``add``); ``add``/``sub``/``mul``/``div`` by a
    number (kinds ``shift``, ``scale``)."""

    bounds_ops = frozenset({
        aten.add.Tensor, aten.sub.Tensor, aten.add_.Tensor, aten.sub_.Tensor, aten.mul.Tensor,
        aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar, aten.add.Scalar, aten.sub.Scalar,
    })  # fmt: skip
    kinds = ("add", "scale", "shift")
    affine = True

    def step(self, ctx):
        node, tgt, a = ctx.node, ctx.node.target, ctx.args
        name = str(tgt).split(".")[1].rstrip("_")
        x, other = node.args[0], node.args[1]
        alpha = float(a.get("alpha") or 1.0)
        sign = -1.0 if name == "sub" else 1.0
        src, tensor_in = ctx.src, ctx.tensor_in
        if name in ("add", "sub") and len(tensor_in) == 2:
            for arg in (x, other):  # shapes must agree: no broadcasting between branches
                if sample_shape(arg) != ctx.fields["out_shape"]:
                    raise ctx.error(f"unsupported broadcasting {name}")
            return ctx.make("add", (src(x), src(other)), dict(alpha=sign * alpha))
        if len(tensor_in) == 1 and isinstance(x, torch.fx.Node) and src(x) == tensor_in[0]:
            o = other
            if isinstance(o, torch.fx.Node):
                o = ctx.const[src(o)]
                if o.numel() != 1:
                    raise ctx.error(f"unsupported op {tgt} with a tensor constant")
                o = float(o)
            if isinstance(o, int | float):
                if name in ("add", "sub"):
                    return ctx.make("shift", (src(x),), dict(value=sign * alpha * float(o)))
                if name == "mul":
                    return ctx.make("scale", (src(x),), dict(value=float(o)))
                if name == "div" and float(o) != 0.0:
                    return ctx.make("scale", (src(x),), dict(value=1.0 / float(o)))
        raise ctx.error(f"unsupported op {tgt} (only residual add/sub or scalars)")

    def forward(self, step, xs):
        if step.kind == "shift":
            return xs[0] + step.params["value"]
        return self.linear(step, xs)

    def linear(self, step, xs):
        if step.kind == "add":
            return xs[0] + step.params["alpha"] * xs[1]
        if step.kind == "scale":
            return xs[0] * step.params["value"]
        return xs[0]  # shift

    def radius(self, step, rs):
        if step.kind == "add":
            return rs[0] + abs(step.params["alpha"]) * rs[1]
        if step.kind == "scale":
            return rs[0] * abs(step.params["value"])
        return rs[0]

    def lipschitz(self, step, norms):
        if step.kind == "add":
            return math.nan, "sum of branches"
        if step.kind == "scale":
            return abs(step.params["value"]), "|scalar|"
        return 1.0, "translation"

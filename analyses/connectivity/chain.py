"""A chain of layers run at many points of weight space in one pass, without ``vmap``.

Most models whose connectivity people study are plain chains (``nn.Sequential`` of linear,
convolution, BatchNorm, activation, pooling and flatten layers). For them
:class:`LayerChain` evaluates every point of a path together with the arithmetic done once
wherever it can be:

- **Shared input.** The data are the same for every point, so the first linear or convolution
  layer of ``theta(l) = sum_m c_m theta_m`` is ``sum_m c_m f(x; W_m, b_m)`` (the layer is linear
  in its weight and bias jointly): with the path's endpoints given, it costs one layer per
  endpoint (2 for a linear path) instead of one per point.
- **Stacked points.** After that, activations carry a leading point axis ``(P, N, ...)``:
  linear layers are one batched matrix product (``baddbmm``) over all points, parameter-free
  layers fold the points into the batch axis, BatchNorm on vectors is one broadcast scale and
  shift, and convolutions and BatchNorm on feature maps run point by point (on a CPU a per-point
  convolution beats the grouped convolution that a vmapped one becomes). Points go in
  cache-sized chunks.
- **BatchNorm reset in the same pass.** :meth:`LayerChain.reset` gives every BatchNorm layer the
  mean and (unbiased) variance of its input over all the chunks it is given as its running
  statistics and normalises with them, layer after layer, so the statistics of each layer are those of
  its input in the network whose earlier layers are already reset. Run on the whole training
  split, this is the reset, and the logits it returns are exactly what the reset network gives
  in eval mode: the training-split loss and accuracy come out of the same pass (a separate
  train-mode reset pass followed by an evaluation pass runs the training data twice). That pass
  holds each BatchNorm's input for the whole split; past a memory budget
  (:meth:`LayerChain.reset_streaming`) the same statistics are gathered one BatchNorm at a time
  with memory bounded by one batch.

Anything else (residual blocks, custom ``forward``, unsupported layers, hooks, reparametrised
weights such as pruning masks) makes :meth:`LayerChain.of` return ``None`` and the caller falls
back to ``functional_call``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerChain", "Moments"]

State = dict[str, torch.Tensor]

_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TRANSPOSED = "weight^T"  # a linear layer's stacked weight laid out (P, in, out) for the batched product


@dataclass(frozen=True)
class _Start:
    """What :meth:`LayerChain.start` computed: resume at step ``index`` from ``value``, which is
    the shared activation ``(N, ...)`` or, when ``mixed``, one output per endpoint ``(M, N, ...)``."""

    index: int
    value: torch.Tensor
    mixed: bool


@dataclass(frozen=True)
class _Step:
    """One layer of the chain: ``kind`` is 'linear', 'conv', 'bn' or 'fn' (no parameters)."""

    kind: str
    module: nn.Module
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


def _plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _plain_call(m: nn.Module) -> bool:
    """Calling ``m`` runs its class's ``forward`` and nothing else: no hooks, no instance override."""
    hooks = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    return "forward" not in m.__dict__ and not any(getattr(m, h, None) for h in hooks)


def _expected_state(module: nn.Module, kind: str) -> set[str]:
    """The parameter and buffer names a layer of this kind holds when nothing reparametrises it."""
    if kind in ("linear", "conv"):
        return {"weight"} | ({"bias"} if module.bias is not None else set())
    if kind == "bn":
        return {"running_mean", "running_var", "num_batches_tracked"} | (
            {"weight", "bias"} if module.affine else set()
        )
    return set()


def _step(module: nn.Module, prefix: str) -> _Step | None:
    step = None
    if type(module) is nn.Linear:
        step = _Step("linear", module, prefix)
    elif type(module) in _CONV and module.padding_mode == "zeros":
        step = _Step("conv", module, prefix)
    elif type(module) in _BN and module.track_running_stats:
        step = _Step("bn", module, prefix)
    elif type(module) in _ELEMENTWISE or type(module) in _POOLS:
        step = _Step("fn", module, prefix)
    elif type(module) is nn.Flatten and module.start_dim >= 1 and module.end_dim == -1:
        step = _Step("fn", module, prefix)
    if step is None or module._modules or not _plain_call(module):
        return None
    names = {n for n, _ in module.named_parameters(recurse=False)} | {
        n for n, _ in module.named_buffers(recurse=False)
    }
    # pruning and spectral norm keep the class but swap `weight` for `weight_orig` and friends
    return step if names == _expected_state(module, step.kind) else None


def _walk(module: nn.Module, prefix: str, out: list[_Step]) -> bool:
    if _plain_sequential(module):
        if not _plain_call(module):
            return False
        children = list(module._modules.items())  # not named_children(): a module used twice runs twice
        return all(child is not None and _walk(child, f"{prefix}{name}.", out) for name, child in children)
    step = _step(module, prefix)
    if step is None:
        return False
    out.append(step)
    return True


def _global_hooks() -> bool:
    """Whether hooks run for every module (``torch.nn.modules.module.register_module_forward_hook``)."""
    from torch.nn.modules import module as mod

    return bool(
        getattr(mod, "_global_forward_hooks", None) or getattr(mod, "_global_forward_pre_hooks", None)
    )


class LayerChain:
    """Evaluate a chain of layers at ``P`` stacked points (see module docstring)."""

    def __init__(self, steps: Sequence[_Step]):
        self.steps = list(steps)
        self.peak = 0  # largest activation of one sample at one point in the last call

    @classmethod
    def of(cls, module: nn.Module) -> LayerChain | None:
        """The chain of ``module``, or ``None`` when it is not a plain chain of supported layers."""
        steps: list[_Step] = []
        if _global_hooks() or not _plain_sequential(module) or not _walk(module, "", steps) or not steps:
            return None
        covered = {
            s.key(n) for s in steps for n, _ in [*s.module.named_parameters(), *s.module.named_buffers()]
        }
        if covered != set(module.state_dict()):
            return None
        if not any(s.kind in ("linear", "conv") for s in steps):
            return None
        stateful = [id(s.module) for s in steps if s.kind != "fn"]
        if len(set(stateful)) != len(stateful):  # one module under two names: its state would be two
            return None
        return cls(steps)

    def prepare(self, params: State) -> State:
        """``params`` plus each linear layer's weight transposed and contiguous (``(P, in, out)``):
        the batched product runs faster on it, and it is laid out once for all batches."""
        out = dict(params)
        for s in self.steps:
            if s.kind == "linear":
                out[s.key(_TRANSPOSED)] = params[s.key("weight")].transpose(1, 2).contiguous()
        return out

    def stat_keys(self) -> list[str]:
        """State-dict keys that a BatchNorm reset writes."""
        return [
            s.key(n)
            for s in self.steps
            if s.kind == "bn"
            for n in ("running_mean", "running_var", "num_batches_tracked")
        ]

    # ------------------------------------------------------------------ forward
    def start(self, x: torch.Tensor, states: Sequence[State] | None = None) -> _Start:
        """The part of a pass that every point shares: the layers before the first weight layer,
        and with the path's endpoint ``states`` that layer once per endpoint. Compute it once per
        batch of samples and hand it to every call on that batch."""
        h, copied = x, False
        for i, step in enumerate(self.steps):
            if step.kind == "fn":
                if not copied and getattr(step.module, "inplace", False):
                    h, copied = h.clone(), True  # h may be a view of the caller's data: leave them alone
                h = step.module(h)
                continue
            if step.kind in ("linear", "conv") and states is not None and _worth_mixing(step, len(states)):
                wk, bk = step.key("weight"), step.key("bias")
                outs = [_layer(step, h, s[wk], s[bk] if bk in s else None) for s in states]
                return _Start(i + 1, torch.stack(outs), True)  # (M, N, ...)
            return _Start(i, h, False)
        return _Start(len(self.steps), h, False)

    def __call__(
        self,
        x: torch.Tensor,
        params: State,
        *,
        endpoints: tuple[Sequence[State], torch.Tensor] | None = None,
        start: _Start | None = None,
    ) -> torch.Tensor:
        """Outputs ``(P, N, ...)`` of the chain at the ``P`` points stacked in ``params``.

        ``endpoints=(states, coeffs)`` says that every point's weights are
        ``sum_m coeffs[p, m] * states[m]`` (coeffs ``(P, M)``), which lets the first weight layer
        run once per endpoint (``start``: that shared part, computed by :meth:`start`).
        BatchNorm layers use the running statistics in ``params`` (eval mode).
        """
        n_pts = _points(params)
        if start is None:
            start = self.start(x, None if endpoints is None else endpoints[0])
        self.peak = x[:1].numel()
        h, shared = self._begin(start, endpoints)
        h, shared = self._forward(h, shared, start.index, len(self.steps), params, n_pts)
        return h.expand(n_pts, *h.shape) if shared else h

    def reset(
        self,
        chunks: Sequence[torch.Tensor],
        params: State,
        stats: State,
        *,
        endpoints: tuple[Sequence[State], torch.Tensor] | None = None,
        starts: Sequence[_Start] | None = None,
    ) -> list[torch.Tensor]:
        """Reset BatchNorm on the batch made of ``chunks`` and return the outputs on each chunk.

        Layer by layer: the chain runs every chunk up to the next BatchNorm, that layer's
        running mean and unbiased variance become those of its input over all chunks (merged
        exactly from per-chunk moments), and the pass goes on with them, as eval mode would. The
        new statistics, stacked over points, are written into ``stats``; the outputs are what
        the reset network gives on the chunks. Chunks keep each pass cache-sized; the
        activations at a BatchNorm input are held for the whole batch.
        """
        n_pts = _points(params)
        if starts is None:
            starts = [self.start(c, None if endpoints is None else endpoints[0]) for c in chunks]
        self.peak = chunks[0][:1].numel() if chunks else 0
        hs, shared = [], True
        for st in starts:
            h, shared = self._begin(st, endpoints)
            hs.append(h)
        index = starts[0].index if starts else len(self.steps)
        p = dict(params)
        for b in [i for i, step in enumerate(self.steps) if step.kind == "bn" and i >= index]:
            outs = [self._forward(h, shared, index, b, p, n_pts) for h in hs]
            hs, shared = [h for h, _ in outs], outs[0][1]
            if shared:  # a BatchNorm before any weight layer: the same statistics at every point
                hs, shared = [h.expand(n_pts, *h.shape) for h in hs], False
            moments = Moments()
            for h in hs:
                moments.add(h)
            self._set_stats(self.steps[b], moments, p, stats, hs[0].dtype)
            index = b
        outs = [self._forward(h, shared, index, len(self.steps), p, n_pts) for h in hs]
        return [h.expand(n_pts, *h.shape) if sh else h for h, sh in outs]

    def reset_streaming(
        self,
        batches: Callable[[], Iterable[torch.Tensor]],
        params: State,
        stats: State,
        *,
        endpoints: tuple[Sequence[State], torch.Tensor] | None = None,
    ) -> None:
        """The same reset as :meth:`reset` with memory bounded by one batch: for each BatchNorm in
        turn, every batch runs from the input to that layer (earlier ones already reset) and only
        its moments are kept. Costs one partial pass per BatchNorm; ``batches()`` yields the data."""
        n_pts = _points(params)
        p = dict(params)
        for b in [i for i, step in enumerate(self.steps) if step.kind == "bn"]:
            moments, dtype = Moments(), None
            for x in batches():
                start = self.start(x, None if endpoints is None else endpoints[0])
                h, shared = self._begin(start, endpoints)
                h, shared = self._forward(h, shared, start.index, b, p, n_pts)
                moments.add(h.expand(n_pts, *h.shape) if shared else h)
                dtype = h.dtype
            self._set_stats(self.steps[b], moments, p, stats, dtype)

    @staticmethod
    def _set_stats(bn: _Step, moments: Moments, p: State, stats: State, dtype) -> None:
        mean, var = moments.result()
        p[bn.key("running_mean")] = stats[bn.key("running_mean")] = mean.to(dtype)
        p[bn.key("running_var")] = stats[bn.key("running_var")] = var.to(dtype)
        stats[bn.key("num_batches_tracked")] = torch.tensor(1, dtype=torch.long)

    def _begin(self, start: _Start, endpoints) -> tuple[torch.Tensor, bool]:
        """The activation a pass resumes from, and whether it is still shared by all points."""
        if not start.mixed:
            return start.value, True
        assert endpoints is not None
        outs, coeffs = start.value, endpoints[1].to(start.value.dtype)
        shape = (coeffs.shape[0],) + (1,) * (outs.ndim - 1)
        h = outs[0].unsqueeze(0) * coeffs[:, 0].reshape(shape)
        for m in range(1, outs.shape[0]):  # a sum of a few broadcast products beats a K = M matmul
            h.addcmul_(outs[m].unsqueeze(0), coeffs[:, m].reshape(shape))
        return h, False

    def _forward(
        self, h: torch.Tensor, shared: bool, lo: int, hi: int, params: State, n_pts: int
    ) -> tuple[torch.Tensor, bool]:
        """Run steps ``lo:hi`` on ``h`` (``(N, ...)`` when ``shared``, else ``(P, N, ...)``)."""
        for step in self.steps[lo:hi]:
            if step.kind == "fn":
                if not shared and type(step.module) is nn.ReLU:
                    h = h.relu_()  # h is this pass's own intermediate, never the caller's input
                else:
                    h = step.module(h) if shared else _folded(step.module, h)
                self.peak = max(self.peak, h[:1].numel() if shared else h[0, :1].numel())
                continue
            if step.kind == "linear":
                h = _linear(step, h if not shared else h.expand(n_pts, *h.shape), params)
            elif step.kind == "conv":
                h = _conv(step, h, params, n_pts, shared)
            else:
                h = _batchnorm(step, h if not shared else h.expand(n_pts, *h.shape), params)
            shared = False
            self.peak = max(self.peak, h[0, :1].numel())
        return h, shared

    def peak_features(self, x: torch.Tensor, params: State) -> int:
        """The largest activation of one sample at one point (numbers), measured on ``x[:1]``."""
        one = {k: (v[:1] if v.is_floating_point() else v) for k, v in params.items()}
        with torch.no_grad():
            self(x[:1], one)
        return self.peak


def _folded(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """Apply a parameter-free layer to ``(P, N, ...)`` with the points folded into the batch."""
    out = fn(h.reshape(h.shape[0] * h.shape[1], *h.shape[2:]))
    return out.reshape(h.shape[0], h.shape[1], *out.shape[1:])


def _layer(step: _Step, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The layer of ``step`` with weight ``w`` and bias ``b`` on an unstacked batch ``h``."""
    m = step.module
    if step.kind == "linear":
        return F.linear(h, w, b)
    return _CONV[type(m)](h, w, b, m.stride, m.padding, m.dilation, m.groups)


def _worth_mixing(step: _Step, n_states: int) -> bool:
    """Whether running the first weight layer per endpoint and mixing the outputs beats running it
    per point: mixing costs ``n_states`` memory-bound passes over the output, the layer costs its
    fan-in in multiply-adds per output (a 3x3 convolution of one channel is cheaper to redo)."""
    fan_in = step.module.weight[0].numel()
    return fan_in >= 8 * n_states


def _linear(step: _Step, h: torch.Tensor, params: State) -> torch.Tensor:
    wt = params.get(step.key(_TRANSPOSED))  # (P, in, out), laid out by LayerChain.prepare
    if wt is None:
        wt = params[step.key("weight")].transpose(1, 2)
    b = params.get(step.key("bias"))
    flat = h.reshape(h.shape[0], -1, h.shape[-1])
    out = torch.bmm(flat, wt) if b is None else torch.baddbmm(b[:, None, :], flat, wt)
    return out.reshape(*h.shape[:-1], wt.shape[2])


def _conv(step: _Step, h: torch.Tensor, params: State, n_pts: int, shared: bool) -> torch.Tensor:
    w = params[step.key("weight")]
    b = params.get(step.key("bias"))
    outs = [_layer(step, h if shared else h[p], w[p], None if b is None else b[p]) for p in range(n_pts)]
    return outs[0].unsqueeze(0) if n_pts == 1 else torch.stack(outs)


def _points(params: State) -> int:
    return next(v.shape[0] for v in params.values() if v.is_floating_point())


class Moments:
    """Per point and channel: mean and unbiased variance of ``(P, n, C, ...)`` chunks over samples
    and positions, the chunks' centred moments merged exactly (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, h: torch.Tensor) -> None:
        v = h.reshape(h.shape[0], h.shape[1], h.shape[2], -1)
        n = v.shape[1] * v.shape[3]
        cm = v.sum(3).sum(1) / n  # reducing the contiguous last axis first is the fast order
        cm2 = (v - cm[:, None, :, None]).pow_(2).sum(3).sum(1).double()
        cm = cm.double()
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, cm, cm2
            return
        delta, total = cm - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + cm2 + delta.pow(2) * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mean is not None and self.m2 is not None
        return self.mean, self.m2 / max(self.count - 1, 1)


def _batchnorm(step: _Step, h: torch.Tensor, params: State) -> torch.Tensor:
    bn = step.module
    n_pts = h.shape[0]
    mean, var = params[step.key("running_mean")], params[step.key("running_var")]
    w, b = (params[step.key("weight")], params[step.key("bias")]) if bn.affine else (None, None)
    if h.ndim > 3:  # feature maps: the fused eval-mode kernel, point by point
        outs = [
            F.batch_norm(h[p], mean[p], var[p], None if w is None else w[p], None if b is None else b[p], False, 0.0, bn.eps)
            for p in range(n_pts)
        ]  # fmt: skip
        return outs[0].unsqueeze(0) if n_pts == 1 else torch.stack(outs)
    scale = torch.rsqrt(var + bn.eps)
    if w is not None:
        scale = scale * w
    shift = -mean * scale if b is None else b - mean * scale
    return torch.addcmul(shift[:, None, :], h, scale[:, None, :])

"""BatchNorm reset by population statistics, for any model, one point of a path at a time.

The definition is the stacked engine's (:mod:`~analyses.connectivity.chain`): in execution
order, every BatchNorm's running mean and (unbiased) variance become those of its input over
the whole training split, measured in the network whose earlier BatchNorms are already reset;
the model stays in eval mode throughout (dropout off), so the reset state, loaded into the
model, gives exactly the activations the statistics were measured on.

Forward pre-hooks on the BatchNorm layers do it during an ordinary ``functional_call``:

- **fused** — the whole training split in one forward pass: each hook measures its input and
  writes the statistics just before the layer normalises with them, and the pass's logits are
  the reset network's outputs on the training split (no separate evaluation pass);
- **streamed** — when that pass would hold too much memory: for each BatchNorm in turn, the
  batches run up to it (its hook collects moments and stops the pass), so memory is one batch
  and the cost one partial pass per BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call

from .chain import Moments

__all__ = ["call_hooked", "execution_order", "peak_numel", "reset_fused", "reset_streamed"]

State = dict[str, torch.Tensor]


def call_hooked(module: nn.Module, state: State, x: torch.Tensor, handles: list) -> object:
    """``functional_call(module, state, (x,))`` without autograd; the hooks behind ``handles``
    (registered just before) are removed afterwards, also when the call raises."""
    try:
        with torch.no_grad():
            return functional_call(module, state, (x,), strict=False)
    finally:
        for h in handles:
            h.remove()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has been measured."""


def _moments_of(x: torch.Tensor) -> Moments:
    m = Moments()
    m.add(x.unsqueeze(0))  # (1, N, C, ...): one "point"
    return m


def _write(bn: nn.modules.batchnorm._BatchNorm, moments: Moments) -> None:
    mean, var = moments.result()
    bn.running_mean.copy_(mean[0])  # the tensors functional_call swapped in: the point's state
    bn.running_var.copy_(var[0])


def execution_order(module: nn.Module, state: State, x: torch.Tensor, names: Iterable[str]) -> list[str]:
    """The BatchNorm layers ``names`` in the order one forward pass on the batch ``x`` calls them."""
    wanted, order = set(names), []
    mods = dict(module.named_modules())
    hooks = [
        mods[n].register_forward_pre_hook(lambda _m, _i, n=n: order.append(n) if n not in order else None)
        for n in wanted
    ]
    call_hooked(module, state, x, hooks)
    return order + sorted(wanted - set(order))  # never called: order does not matter


def peak_numel(module: nn.Module, state: State, x: torch.Tensor) -> int:
    """The largest output of any layer per sample (numbers), measured on the batch ``x``."""
    peak = [x.numel()]
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out: peak.append(out.numel()) if isinstance(out, torch.Tensor) else None
        )
        for m in module.modules()
        if not m._modules
    ]
    call_hooked(module, state, x, hooks)
    return -(-max(peak) // len(x))


def reset_fused(module: nn.Module, state: State, x: torch.Tensor, order: list[str]) -> torch.Tensor:
    """Reset the BatchNorm statistics in ``state`` (in place) on all of ``x``; return the logits.

    A BatchNorm called more than once in a pass is measured at its first call (as the streamed
    reset does), so one state describes the whole pass."""
    mods = dict(module.named_modules())
    measured: set[int] = set()

    def measure(bn, inputs):
        if id(bn) not in measured:
            measured.add(id(bn))
            _write(bn, _moments_of(inputs[0]))

    return call_hooked(module, state, x, [mods[n].register_forward_pre_hook(measure) for n in order])


def reset_streamed(
    module: nn.Module, state: State, batches: Callable[[], Iterable[torch.Tensor]], order: list[str]
) -> None:
    """Reset the BatchNorm statistics in ``state`` (in place), one layer at a time over ``batches()``."""
    mods = dict(module.named_modules())
    for name in order:
        acc: list[Moments] = []

        def collect(_bn, inputs, acc=acc):
            if not acc:
                acc.append(Moments())
            acc[0].add(inputs[0].unsqueeze(0))
            raise _Stop

        for x in batches():
            try:
                call_hooked(module, state, x, [mods[name].register_forward_pre_hook(collect)])
            except _Stop:
                pass
        if acc:
            with torch.no_grad():
                _write_state(state, name, acc[0])


def _write_state(state: State, name: str, moments: Moments) -> None:
    prefix = f"{name}." if name else ""
    mean, var = moments.result()
    state[f"{prefix}running_mean"].copy_(mean[0])
    state[f"{prefix}running_var"].copy_(var[0])

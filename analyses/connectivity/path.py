"""Models along a path in weight space, evaluated all at once.

Every point ``theta(l)`` of a path is a state dict; :func:`interpolate` stacks the float
entries of all points along a new leading axis and :class:`PathEvaluator` runs the model on
all of them, instead of a Python loop that loads each state dict into the module in turn.
Three engines: ``stacked`` (:mod:`~analyses.connectivity.chain`, for plain ``nn.Sequential``
chains: the first weight layer once per endpoint, batched matrix products over points, the
BatchNorm reset fused with the evaluation of the training split), ``vmap``
(:func:`torch.func.vmap` over :func:`torch.func.functional_call`, chunked over points and
samples) and ``per-point`` (one ``functional_call`` per point, for any model).

BatchNorm (Jordan et al., "REPAIR", ICLR 2023, Sec. 3; Git Re-Basin Sec. 4 / Appendix): the
interpolated weights with interpolated running statistics describe the wrong activations
(variance collapse), which makes the naive curve look worse than it is. With ``bn_reset`` the
running statistics of every point are recomputed on training data, the same way by every
engine: in execution order, each BatchNorm gets the mean and unbiased variance of its input over
the whole training split, with the earlier BatchNorms already reset and the model in eval mode
(population statistics; Git Re-Basin's code averages train-mode batch statistics instead, which
differs by a little). The reset network then gives exactly the activations the statistics were
measured on, and the training-split curve comes out of the reset pass itself: in one pass over
all points for the stacked engine (:mod:`~analyses.connectivity.chain`), point by point with
hooks for the others (:mod:`~analyses.connectivity.bnreset`); both stream one BatchNorm at a
time when the whole split would hold more activations than a memory budget (an eighth of RAM).
REPAIR (Jordan et al. 2023, Sec. 4) does the same for networks without BatchNorm:
each hidden unit's pre-activation mean and standard deviation in the interpolated network are
reset to the interpolation ``(1 - l) mu_A + l mu_B``, ``(1 - l) sigma_A + l sigma_B`` of the
endpoint networks', by rescaling that unit's weights and bias.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..core.data import Dataset
from ..core.errors import NNVitalsError
from . import bnreset
from .chain import LayerChain
from .exported import as_layers

__all__ = ["ENGINES", "PathEvaluator", "batchnorm_modules", "interpolate", "linear_path", "repair_path"]

State = dict[str, torch.Tensor]
Curves = dict[str, tuple[np.ndarray, np.ndarray]]
ENGINES = ("auto", "stacked", "vmap", "per-point")
#: bytes of activations a fused BatchNorm reset may hold for the whole training split (beyond
#: that it streams one BatchNorm at a time); None: an eighth of the machine's memory (at least
#: 1 GiB), a quarter of the GPU's free memory
_RESET_BUDGET: int | None = None
_BUDGET = 1 << 21  # numbers (8 MB in float32) in one activation of a pass over stacked points: cache-sized


def interpolate(states: Sequence[State], coeffs: torch.Tensor) -> State:
    """Stacked states ``sum_m coeffs[p, m] * states[m]`` for every point ``p``.

    Float entries get a leading axis of length ``len(coeffs)``; integer entries (such as
    ``num_batches_tracked``) are taken from the first state, unstacked.
    """
    coeffs = torch.as_tensor(coeffs, dtype=torch.float64)
    out: State = {}
    for k, t in states[0].items():
        if not t.is_floating_point():
            out[k] = t
            continue
        stack = torch.stack([s[k].detach().to(torch.float64) for s in states])  # (M, ...)
        out[k] = torch.tensordot(coeffs.to(stack.device), stack, dims=([1], [0])).to(t.dtype)
    return out


def linear_path(state_a: State, state_b: State, lams: Sequence[float] | torch.Tensor) -> State:
    """``theta(l) = (1 - l) theta_A + l theta_B`` stacked over ``lams``."""
    lam = torch.as_tensor(lams, dtype=torch.float64)
    return interpolate([state_a, state_b], torch.stack([1.0 - lam, lam], dim=1))


def batchnorm_modules(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that track running statistics (the ones a reset applies to)."""
    return [
        (n, m)
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _copy(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


class PathEvaluator:
    """Loss and accuracy of a model at many stacked states at once (see module docstring).

    ``engine`` picks how the points run:

    - ``"stacked"``: :class:`~analyses.connectivity.chain.LayerChain` (plain ``nn.Sequential``
      chains of supported layers): all points in one pass, the first weight layer once per
      endpoint when the path's endpoints are given, BatchNorm reset fused with the evaluation of
      the training split;
    - ``"vmap"``: ``chunk`` points and ``batch_size`` samples through one vmapped
      ``functional_call``;
    - ``"per-point"``: one ``functional_call`` per point (still no state-dict loading or copying);
    - ``"auto"``: ``"stacked"`` when the model is such a chain, else ``"per-point"`` (on a CPU,
      vmapped convolutions become grouped convolutions and run slower than a loop over points).
    """

    def __init__(
        self,
        module: nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 512,
        chunk: int = 32,
        engine: str = "auto",
    ):
        if engine not in ENGINES:
            raise NNVitalsError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.chunk = int(batch_size), int(chunk)
        self.module = _copy(as_layers(module)).to(self.device, self.dtype).eval()
        self.chain = LayerChain.of(self.module) if engine in ("auto", "stacked") else None
        if engine == "stacked" and self.chain is None:
            raise NNVitalsError(
                "engine 'stacked': the model is not a plain nn.Sequential chain of Linear/Conv/BatchNorm/"
                "activation/pooling/flatten layers; use engine 'auto', 'per-point' or 'vmap'"
            )
        self.engine = "stacked" if self.chain is not None else ("vmap" if engine == "vmap" else "per-point")
        self.vectorize = self.engine == "vmap"

    @staticmethod
    def _fresh(x: torch.Tensor) -> torch.Tensor:
        """A copy of the batch for each point: a forward may change its input in place."""
        return x.clone()

    def _split(self, stacked: State) -> tuple[State, State]:
        floats = {k: v.to(self.device, self.dtype) for k, v in stacked.items() if v.is_floating_point()}
        fixed = {k: v.to(self.device) for k, v in stacked.items() if not v.is_floating_point()}
        return floats, fixed

    def _zeros(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and correct-count sums per point, kept where the logits are (CUDA: on the device, so
        no batch waits for a copy to the host; float64, which MPS lacks, stays on the host there)."""
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        return torch.zeros(n, dtype=torch.float64, device=dev), torch.zeros(
            n, dtype=torch.float64, device=dev
        )

    def _batches(self, data: Dataset):
        """``data``'s batches on the device (on a GPU copied once per dataset and reused)."""
        return device_batches(data, self.batch_size, self.device, self.dtype)

    @staticmethod
    def points(stacked: State) -> int:
        return next(v.shape[0] for v in stacked.values() if v.is_floating_point())

    def evaluate_splits(
        self,
        stacked: State,
        splits: dict[str, Dataset],
        reset_on: Dataset | None = None,
        endpoints: tuple[Sequence[State], torch.Tensor] | None = None,
    ) -> tuple[Curves, State]:
        """Loss and accuracy on every split at every point, BatchNorm first reset on ``reset_on``.

        ``endpoints=(states, coeffs)`` (the points are ``coeffs @ states``, as
        :func:`interpolate` makes them) lets the stacked engine run the first weight layer once
        per endpoint. Returns the curves by split name and the stacked state with the reset
        running statistics.
        """
        if self.chain is not None:
            return self._chain_evaluate(stacked, splits, reset_on, endpoints)
        scored, curves = None, {}
        if reset_on is not None and batchnorm_modules(self.module):
            n_pts = self.points(stacked)
            sums = {n: self._zeros(n_pts) for n in splits}
            stacked, scored = self._module_reset(stacked, reset_on, splits, sums)
            if scored is not None:
                lo, co = sums[scored]
                curves[scored] = (_host(lo / len(reset_on)), _host(co / len(reset_on)))
        for name, ds in splits.items():
            if name != scored:
                curves[name] = self.evaluate(stacked, ds)
        return {name: curves[name] for name in splits}, stacked

    def _chain_evaluate(self, stacked, splits, reset_on, endpoints) -> tuple[Curves, State]:
        """The stacked engine: per batch of samples the shared start once, then the points in
        cache-sized chunks; with ``reset_on`` first one pass over all of it that resets BatchNorm
        and scores it (when it is one of ``splits``)."""
        chain = self.chain
        assert chain is not None
        floats, _ = self._split(stacked)
        floats = chain.prepare(floats)
        n_pts = self.points(stacked)
        states = coeffs = None
        if endpoints is not None:
            states = [
                {k: v.to(self.device, self.dtype) for k, v in st.items() if v.is_floating_point()}
                for st in endpoints[0]
            ]
            coeffs = torch.as_tensor(endpoints[1]).to(self.device, self.dtype)
        first = reset_on if reset_on is not None else next(iter(splits.values()), None)
        if first is None:
            return {}, stacked
        peak = chain.peak_features(as_input(first.x[:1], self.device, self.dtype), floats)
        sums = {n: self._zeros(n_pts) for n in splits}

        def chunks(rows: int, most: int | None = None) -> list[slice]:  # points per pass: cache-sized
            step = max(1, min(n_pts, _BUDGET // max(1, rows * peak), most or n_pts))
            return [slice(lo, min(n_pts, lo + step)) for lo in range(0, n_pts, step)]

        def ends(sl: slice):
            return None if coeffs is None else (states, coeffs[sl])

        out = dict(stacked)
        done: set[str] = set()
        with torch.no_grad():
            if reset_on is not None:
                new: dict[str, list[torch.Tensor]] = {}
                scored = self._chain_reset(reset_on, floats, splits, sums, new, chunks, ends, states, peak)
                done.add(str(scored))
                for k, parts in new.items():
                    floats[k] = torch.cat(parts)
                    out[k] = floats[k].detach().cpu().to(stacked[k].dtype)
                for k in chain.stat_keys():
                    if k.endswith("num_batches_tracked"):
                        out[k] = torch.tensor(1, dtype=stacked[k].dtype)
            for name, ds in splits.items():
                if name in done:
                    continue
                for x, y in self._batches(ds):
                    start = chain.start(x, states)
                    for sl in chunks(len(x)):
                        p = {k: v[sl] for k, v in floats.items()}
                        _add_scores(chain(x, p, endpoints=ends(sl), start=start), y, sums[name], sl)
        curves = {n: (_host(lo / len(splits[n])), _host(co / len(splits[n]))) for n, (lo, co) in sums.items()}
        return curves, out

    def _chain_reset(self, reset_on, floats, splits, sums, new, chunks, ends, states, peak) -> str | None:
        """Reset BatchNorm with the stacked engine, appending each chunk's statistics to ``new``.

        Fused (one pass that also scores ``reset_on`` when it is one of ``splits``; returns that
        split's name) while the activations it holds for the whole split fit in
        ``_RESET_BUDGET``; else streamed one BatchNorm at a time (returns ``None``: the split is
        then scored with the others)."""
        chain = self.chain
        assert chain is not None
        _check_reset_data(reset_on)
        itemsize = torch.finfo(self.dtype).bits // 8
        per_point = (
            3 * len(reset_on) * peak * itemsize
        )  # activations at a BatchNorm input (old, new), outputs
        shared = (len(states) if states is not None else 1) * len(reset_on) * peak * itemsize
        most = (_reset_budget(self.device) - shared) // per_point
        if most < 1:
            for sl in chunks(self.batch_size):
                stats: State = {}
                chain.reset_streaming(
                    lambda: (as_input(x, self.device, self.dtype) for x, _ in reset_on.batches(self.batch_size)),
                    {k: v[sl] for k, v in floats.items()}, stats, endpoints=ends(sl),
                )  # fmt: skip
                for k, v in stats.items():
                    if v.is_floating_point():
                        new.setdefault(k, []).append(v)
            return None
        batches = list(self._batches(reset_on))
        starts = [chain.start(x, states) for x, _ in batches]
        scored = next((n for n, ds in splits.items() if ds is reset_on), None)
        for sl in chunks(len(batches[0][0]), most):
            stats = {}
            p = {k: v[sl] for k, v in floats.items()}
            logits = chain.reset([x for x, _ in batches], p, stats, endpoints=ends(sl), starts=starts)
            if scored is not None:
                for z, (_, y) in zip(logits, batches, strict=True):
                    _add_scores(z, y, sums[scored], sl)
            for k, v in stats.items():
                if v.is_floating_point():
                    new.setdefault(k, []).append(v)
        return scored

    def reset_batchnorm(self, stacked: State, train: Dataset) -> State:
        """Recompute every BatchNorm's running statistics at every point on ``train``.

        Population statistics (module docstring): the stacked engine resets all points in one
        pass (:mod:`~analyses.connectivity.chain`), the others point by point with hooks
        (:mod:`~analyses.connectivity.bnreset`).
        """
        if not batchnorm_modules(self.module):
            return stacked
        if self.chain is not None:
            return self._chain_evaluate(stacked, {}, train, None)[1]
        return self._module_reset(stacked, train, {}, {})[0]

    def _module_reset(self, stacked: State, train: Dataset, splits, sums) -> tuple[State, str | None]:
        """Reset BatchNorm point by point with hooks; when the training split is one of ``splits``
        and the fused pass fits the memory budget, score it from that pass (returns its name)."""
        _check_reset_data(train)
        bns = [n for n, _ in batchnorm_modules(self.module)]
        floats, fixed = self._split(stacked)
        keys = [f"{n}.{s}" if n else s for n in bns for s in ("running_mean", "running_var")]
        new = {k: floats[k].clone() for k in keys}  # the hooks write each point's statistics here
        n_pts = self.points(stacked)
        probe = as_input(train.x[: min(len(train), self.batch_size)], self.device, self.dtype)  # >= 2 samples

        def state(i: int) -> State:
            return {**{k: v[i] for k, v in floats.items()}, **{k: new[k][i] for k in keys}, **fixed}

        order = bnreset.execution_order(self.module, state(0), probe.clone(), bns)
        itemsize = torch.finfo(self.dtype).bits // 8
        peak = bnreset.peak_numel(self.module, state(0), probe.clone())
        fused = 4 * len(train) * peak * itemsize <= _reset_budget(self.device)
        # BatchNorm without running statistics normalises by the batch: the one-batch pass would
        # score the training split differently from the batches every other evaluation uses
        batch_stats = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
            for m in self.module.modules()
        )
        scored = (
            next((n for n, ds in splits.items() if ds is train), None) if fused and not batch_stats else None
        )
        x = as_input(train.x, self.device, self.dtype) if fused else None
        y = train.y.to(self.device)
        with torch.no_grad():
            for i in range(n_pts):
                if x is not None:
                    logits = bnreset.reset_fused(self.module, state(i), x.clone(), order)
                    if scored is not None:
                        _add_scores(logits, y, sums[scored], slice(i, i + 1))
                else:
                    bnreset.reset_streamed(
                        self.module, state(i),
                        lambda: (as_input(b, self.device, self.dtype).clone() for b, _ in train.batches(self.batch_size)),
                        order,
                    )  # fmt: skip
        out = dict(stacked)
        for k in keys:
            out[k] = new[k].detach().cpu().to(stacked[k].dtype)
        for n in bns:
            k = f"{n}.num_batches_tracked" if n else "num_batches_tracked"
            if k in out:
                out[k] = torch.tensor(1, dtype=stacked[k].dtype)
        return out, scored

    def evaluate(self, stacked: State, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Mean cross-entropy loss and accuracy on ``data`` at every stacked point: two arrays (points,)."""
        if self.chain is not None:
            return self._chain_evaluate(stacked, {"data": data}, None, None)[0]["data"]
        floats, fixed = self._split(stacked)
        n_pts = self.points(stacked)
        loss, correct = self._zeros(n_pts)
        module = self.module

        def run(p_, x_):
            return functional_call(module, (p_, fixed), (x_,), strict=False)

        with torch.no_grad():
            for start in range(0, n_pts, self.chunk):
                sl = slice(start, start + self.chunk)
                p = {k: v[sl] for k, v in floats.items()}
                for x, y in self._batches(data):
                    if self.vectorize:
                        xb = self._fresh(x) if self.device.type == "cuda" else x  # cached batches stay intact
                        try:
                            logits = vmap(run, in_dims=(0, None))(p, xb)  # (points, batch, classes)
                        except RuntimeError as e:  # an op vmap cannot batch (a view of a vmapped attention)
                            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                            raise NNVitalsError(
                                f"engine 'vmap': torch.func.vmap cannot run this model ({first[:160]}); "
                                "use engine 'per-point' or 'auto'"
                            ) from None
                    else:
                        n_here = next(iter(p.values())).shape[0]
                        logits = torch.stack(
                            [run({k: v[i] for k, v in p.items()}, self._fresh(x)) for i in range(n_here)]
                        )
                    _add_scores(logits, y, (loss, correct), sl)
        return _host(loss / len(data)), _host(correct / len(data))


def _host(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


#: bytes of a dataset kept on a GPU for reuse by later paths (beyond that: copied per batch)
DEVICE_DATA_BYTES = 1 << 30
_device_data: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
_device_data_lock = threading.Lock()


def as_input(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Model inputs ``x`` on ``device``: float inputs in the run's ``dtype``, integer ones (token
    ids, which an embedding indexes by) kept integer."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


def device_batches(data: Dataset, batch_size: int, device: torch.device, dtype: torch.dtype):
    """``data``'s ``(x, y)`` batches on ``device`` in ``dtype``. On CUDA the batches are copied
    once and kept while the dataset lives (every path and pair of a run evaluates the same
    splits: the copies, each a synchronisation from pageable memory, are made once)."""
    if device.type != "cuda" or data.x.numel() * data.x.element_size() > DEVICE_DATA_BYTES:
        return ((as_input(x, device, dtype), y.to(device)) for x, y in data.batches(batch_size))
    key = (id(data), str(device), dtype, int(batch_size))
    with _device_data_lock:
        hit = _device_data.get(key)
        if hit is None:
            hit = [(as_input(x, device, dtype), y.to(device)) for x, y in data.batches(batch_size)]
            _device_data[key] = hit
            weakref.finalize(data, _device_data.pop, key, None)
    return iter(hit)


def _reset_budget(device: torch.device) -> int:
    if _RESET_BUDGET is not None:
        return _RESET_BUDGET
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        total = 8 << 30
    return max(1 << 30, total // 8)


def _check_reset_data(train: Dataset) -> None:
    if len(train) < 2:
        raise NNVitalsError(
            f"BatchNorm reset: the training split has {len(train)} sample; at least 2 are needed for a "
            "variance (give more data or bn_reset='off')"
        )


def _add_scores(
    logits: torch.Tensor, y: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor], sl: slice
) -> None:
    """Add the summed cross-entropy and the number correct of ``(points, batch, classes)`` logits."""
    if not isinstance(logits, torch.Tensor):
        raise NNVitalsError(
            f"model output is a {type(logits).__name__}; expected a (batch, classes) logits tensor"
        )
    if logits.ndim == 2:  # one point
        logits = logits.unsqueeze(0)
    if logits.ndim != 3 or logits.shape[1] != y.shape[0]:
        raise NNVitalsError(
            f"model output has shape {tuple(logits.shape[1:])}; expected (batch, classes) logits"
        )
    sums[0][sl] += _cross_entropy(logits, y).double().sum(1).to(sums[0].device)
    sums[1][sl] += (logits.argmax(-1) == y).sum(1).double().to(sums[1].device)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point and sample ``(points, batch)``: the cross-entropy of ``(points, batch, classes)`` logits.

    With ``d = z - z_y`` it is ``m + log(exp(-m) + sum_{j != y} exp(d_j - m))``, ``m = max(0, max_j d_j)``;
    where ``m = 0`` (the true class wins) that is ``log1p(sum_{j != y} exp(d_j))``, accurate to a few
    parts in 1e6 even for losses far below float32's epsilon (``log_softmax`` rounds them to 0, and
    in float64 below 1e-16). The classes go on the leading axis so each step runs over contiguous
    rows: on a CPU 2-3x faster than ``cross_entropy`` over a short class axis.
    """
    n_pts = logits.shape[0]
    idx = y.expand(n_pts, -1).unsqueeze(-1)
    d = (logits - logits.gather(-1, idx)).permute(2, 0, 1).contiguous()  # (classes, points, batch); d_y = 0
    m = d.amax(0).clamp_min_(0.0)
    e = (d - m).exp_()
    e.scatter_(0, idx.permute(2, 0, 1), 0.0)  # the true class's term, exp(-m), is added back below
    rest = e.sum(0)
    ce = torch.where(m == 0, torch.log1p(rest), m + torch.log(torch.exp(-m) + rest))
    bad = ~torch.isfinite(ce)
    if bad.any():  # infinite logits, or differences past float32's range: PyTorch's own in float64
        flat = logits.reshape(-1, logits.shape[-1]).double()
        ce = ce.double().masked_scatter(
            bad, nn.functional.cross_entropy(flat, y.repeat(n_pts), reduction="none").reshape(ce.shape)[bad]
        )
    return ce


def _repair_targets(module: nn.Module, hidden: set[str]) -> list[tuple[str, nn.Module, int]]:
    out = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) and f"{name}.weight" in hidden:
            if m.bias is None:
                raise NNVitalsError(
                    f"repair: layer '{name}' has no bias, so its units cannot be renormalised; use repair=False"
                )
            out.append((name, m, -1 if isinstance(m, nn.Linear) else 1))
    return out


def _unit_stats(out: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = out.movedim(axis, -1)
    v = v.reshape(-1, v.shape[-1]).double()
    return v.mean(0), v.std(0, unbiased=False)


def repair_path(
    module: nn.Module,
    state_a: State,
    state_b: State,
    stacked: State,
    lams: Sequence[float],
    hidden: set[str],
    x: torch.Tensor,
) -> State:
    """REPAIR every point of a linear path (Jordan et al. 2023, Sec. 4; see module docstring).

    ``hidden`` names the weights whose output units are permutable hidden units (the layers to
    repair; the logits are left alone). The statistics are measured on ``x`` in one batch,
    layer by layer in execution order (each layer sees its already-repaired inputs), and the
    correction ``z -> (z - mu) * s_goal / s + mu_goal`` is folded into the layer's weight and bias.
    """
    module = _copy(as_layers(module)).eval()
    targets = _repair_targets(module, hidden)
    if not targets:
        raise NNVitalsError(
            "repair: the model has no hidden Linear/Conv layers with permutable units to repair"
        )

    def measure(state: State) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            m.register_forward_hook(lambda _m, _i, o, n=n, ax=ax: stats.__setitem__(n, _unit_stats(o, ax)))
            for n, m, ax in targets
        ]
        bnreset.call_hooked(module, state, x, hooks)
        return stats

    goal_a, goal_b = measure(state_a), measure(state_b)
    out = {k: (v.clone() if v.is_floating_point() else v) for k, v in stacked.items()}
    for i, lam in enumerate(lams):
        point = {k: (v[i] if v.is_floating_point() else v) for k, v in stacked.items()}
        fold: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

        def hook(_m, _i, o, n, ax, lam=lam, fold=fold):
            mu, sd = _unit_stats(o, ax)
            mg = (1 - lam) * goal_a[n][0] + lam * goal_b[n][0]
            sg = (1 - lam) * goal_a[n][1] + lam * goal_b[n][1]
            scale = sg / (sd + 1e-8)
            fold[n] = (scale, mu, mg)
            shape = [1] * o.ndim
            shape[ax] = -1
            return ((o.double() - mu.reshape(shape)) * scale.reshape(shape) + mg.reshape(shape)).to(o.dtype)

        hooks = [
            m.register_forward_hook(lambda m_, i_, o_, n=n, ax=ax: hook(m_, i_, o_, n, ax))
            for n, m, ax in targets
        ]
        bnreset.call_hooked(module, point, x, hooks)
        for n, (scale, mu, mg) in fold.items():
            w, b = point[f"{n}.weight"].double(), point[f"{n}.bias"].double()
            shape = [-1] + [1] * (w.ndim - 1)
            out[f"{n}.weight"][i] = (w * scale.reshape(shape)).to(out[f"{n}.weight"].dtype)
            out[f"{n}.bias"][i] = ((b - mu) * scale + mg).to(out[f"{n}.bias"].dtype)
    return out

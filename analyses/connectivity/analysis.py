"""ModeConnectivity: is there a low-loss linear path between two models, before and after alignment?

For models A and B (same architecture), the loss and accuracy of ``theta(l) = (1 - l) theta_A
+ l theta_B`` are measured at ``points`` evenly spaced ``l`` (endpoints included) on the train
and test data, once for B as given (``path="naive"``) and once for B with its hidden units
permuted to match A (``path="matched"``; Git Re-Basin weight or activation matching). The
summary holds the loss and accuracy barriers (:mod:`analyses.connectivity.barrier`) and the
L2 distance between the models before and after matching; the per-layer table
(:attr:`ConnectivityResult.layers`) shows what the alignment changed (Ito et al. 2024): the
distance and the alignment of the top singular vectors per layer. ``permuted_b`` is B's
aligned state dict, loadable into B's architecture and computing the same function.

With more than two models (``models=[...]``): the barrier of every pair (a heatmap), all
models merged into one (MergeMany) and the loss over the plane through the first three.

``torch.export`` programs (``.pt2``) run like modules: their graphs are rebuilt with real layers
(:mod:`analyses.connectivity.exported`), so the BatchNorm reset and REPAIR reach them; one exported
in training mode or with a fixed batch size is refused in one line. Before any work every model
runs once on two samples: its output must be finite ``(batch, classes)`` scores with a class for
every label of the data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import param
import torch
from torch import nn
from torch.func import functional_call

from ..core.analysis import Analysis, model_turn
from ..core.data import BUILTIN_DATASETS, Dataset, as_dataset
from ..core.device import ensure_ready, thread_stream
from ..core.errors import NNVitalsError
from ..core.graph import save_program
from ..core.result import Result
from ..core.runner import CancelToken, Progress, Task
from ..core.store import make_key
from ..core.subject import Subject
from ..core.threads import tracing
from .barrier import accuracy_barrier, loss_barrier, loss_barrier_mean
from .exported import as_layers, check_exported, fixed_batch_size, is_exported
from .matching import (
    MatchResult,
    activation_matching,
    apply_permutation,
    identity_permutation,
    merge_many,
    weight_matching,
)
from .path import ENGINES, PathEvaluator, as_input, batchnorm_modules, interpolate, linear_path, repair_path
from .spec import PermutationSpec, check_same_structure, export_graph, infer_spec

__all__ = ["ConnectivityResult", "ConnectivitySettings", "ModeConnectivity"]

LAYER_COLUMNS = [
    "name", "shape", "group_out", "group_in", "l2_before", "l2_after", "rel_l2_before", "rel_l2_after",
    "sv_align_before", "sv_align_after",
]  # fmt: skip


class ConnectivityResult(Result):
    """Result of :class:`ModeConnectivity`: the path table, barriers, per-layer alignment, permuted B."""

    kind = "connectivity"

    def _prefixed(self, prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    @property
    def permuted_b(self) -> dict[str, torch.Tensor]:
        """Model B's state dict after alignment (``load_state_dict(..., strict=True)`` into B)."""
        return {k: torch.from_numpy(np.array(v)) for k, v in self._prefixed("permuted_b/").items()}

    @property
    def merged(self) -> dict[str, torch.Tensor]:
        """State dict of all models merged into one (MergeMany; only with three or more models)."""
        return {k: torch.from_numpy(np.array(v)) for k, v in self._prefixed("merged/").items()}

    @property
    def perms(self) -> dict[str, np.ndarray]:
        """The permutation found for each group (B's unit ``perm[i]`` becomes unit ``i``)."""
        return self._prefixed("perm/")

    @property
    def layers(self) -> pd.DataFrame:
        """Per layer: L2 distance and top singular-vector alignment before / after matching."""
        cols = self._prefixed("layers/")
        if not cols:
            return pd.DataFrame(columns=LAYER_COLUMNS)
        return pd.DataFrame({c: cols[c] for c in LAYER_COLUMNS if c in cols})

    def curve(self, path: str = "matched", split: str | None = None, pair: str = "0-1") -> pd.DataFrame:
        """The rows of one path: ``lam``, ``loss``, ``accuracy``."""
        split = split or self.summary.get("split")
        t = self.table
        sel = t[(t["path"] == path) & (t["split"] == split) & (t["pair"] == pair)]
        return sel[["lam", "loss", "accuracy"]].reset_index(drop=True)

    def pairwise(self, what: str = "barrier_matched") -> np.ndarray:
        """``(models, models)`` matrix of a pairwise barrier (``barrier_naive``, ``acc_barrier_matched``, ...)."""
        key = f"pairwise/{what}"
        if key not in self.arrays:
            raise NNVitalsError(
                f"pairwise {what!r}: not in this result (have {sorted(self._prefixed('pairwise/'))})"
            )
        return self.arrays[key]

    @property
    def plane(self) -> dict[str, np.ndarray]:
        """Loss / accuracy over the plane through three models (grid coordinates and values)."""
        return self._prefixed("plane/")


@dataclass(frozen=True)
class ConnectivitySettings:
    """What the tasks read (:func:`pair_task`, :func:`merge_task`, :func:`plane_task`), built once
    per run by :meth:`ModeConnectivity.settings` from the analysis's (Param-checked) values; small
    and picklable: a Dask worker gets it with each task. ``allow_tf32``: whether this run uses TF32
    (CUDA only)."""

    match: str
    points: int
    seed: int
    max_iter: int
    batch_size: int
    engine: str
    top_k: int
    plane_points: int
    device: str
    dtype: str
    allow_tf32: bool


@dataclass
class _Context:
    """Everything the tasks share: built once in :meth:`ModeConnectivity._tasks`."""

    module: nn.Module
    spec: PermutationSpec
    gm: Any
    states: list[dict[str, torch.Tensor]]
    splits: dict[str, Dataset]
    train: Dataset
    act_batches: list[torch.Tensor]
    bn_reset: bool
    repair: bool
    params: frozenset[str]

    def __getstate__(self) -> dict[str, Any]:
        """Dask ships the context to worker processes; the exported graph does not pickle, so it is
        left behind and exported again there when activation matching needs it (:meth:`graph`)."""
        state = dict(self.__dict__)
        state["gm"] = None
        return state

    def graph(self) -> Any:
        """The exported graph module (activation matching), exported again after unpickling."""
        if self.gm is None and self.act_batches:
            self.gm = export_graph(self.module, self.act_batches[0])
        return self.gm


def _singular_alignment(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean over the top ``k`` singular triplets of ``|<u_i^A, u_i^B>| |<v_i^A, v_i^B>|``.

    This is the |cosine| between the i-th rank-one components ``u_i v_i^T`` of A and B (their
    Frobenius inner product); Ito et al. 2024 (Sec. 4) show that weight matching raises it for
    the components with large singular values while barely changing the L2 distance.
    """
    a2, b2 = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    ua, _, vha = torch.linalg.svd(a2, full_matrices=False)
    ub, _, vhb = torch.linalg.svd(b2, full_matrices=False)
    k = min(k, ua.shape[1])
    left = (ua[:, :k] * ub[:, :k]).sum(0).abs()
    right = (vha[:k] * vhb[:k]).sum(1).abs()
    return float((left * right).mean())


def _layer_rows(ctx: _Context, sa, sb, sbm, top_k: int) -> list[dict[str, Any]]:
    rows = []
    axes = ctx.spec.param_axes()
    for name, t in sa.items():
        if name not in ctx.params or t.ndim < 2 or not t.is_floating_point():
            continue
        groups = {ax: g for ax, g, _ in axes.get(name, [])}
        if not groups:
            continue
        norm = float(t.double().norm())
        before = float((t.double() - sb[name].double()).norm())
        after = float((t.double() - sbm[name].double()).norm())
        rows.append(
            dict(
                name=name, shape="x".join(map(str, t.shape)), group_out=groups.get(0, ""), group_in=groups.get(1, ""),
                l2_before=before, l2_after=after, rel_l2_before=before / norm if norm else math.nan,
                rel_l2_after=after / norm if norm else math.nan,
                sv_align_before=_singular_alignment(t, sb[name], top_k),
                sv_align_after=_singular_alignment(t, sbm[name], top_k),
            )
        )  # fmt: skip
    return rows


def _match(ctx: _Context, sa, sb, s: ConnectivitySettings) -> MatchResult:
    if s.match == "weights":
        return weight_matching(sa, sb, ctx.spec, seed=s.seed, max_iter=s.max_iter)
    if s.match == "activations":
        return activation_matching(ctx.graph(), sa, sb, ctx.spec, ctx.act_batches)
    return MatchResult(perms=identity_permutation(ctx.spec))


def _evaluate(ctx: _Context, states, coeffs, s: ConnectivitySettings, lams=None) -> dict[str, tuple]:
    """Loss and accuracy on every split at the points ``coeffs @ states`` (BatchNorm reset or
    REPAIR first, as the context says)."""
    stacked = interpolate(states, coeffs)
    ev = PathEvaluator(ctx.module, s.device, getattr(torch, s.dtype), s.batch_size, engine=s.engine)
    endpoints = (states, coeffs)
    if ctx.repair and lams is not None and not ctx.bn_reset:
        stacked = repair_path(ctx.module, *states, stacked, lams, _hidden(ctx), ctx.act_batches[0])
        endpoints = None  # REPAIR rescales each point's weights: no longer a mix of the endpoints
    curves, _ = ev.evaluate_splits(
        stacked, ctx.splits, reset_on=ctx.train if ctx.bn_reset else None, endpoints=endpoints
    )
    return curves


def _hidden(ctx: _Context) -> set[str]:
    """The parameters whose output axis is permuted (free groups and composites: attention heads)."""
    return {name for name, axes in ctx.spec.param_axes().items() if any(axis == 0 for axis, _, _ in axes)}


def _l2(sa, sb, names) -> float:
    return float(math.sqrt(sum(float((sa[k].double() - sb[k].double()).pow(2).sum()) for k in names)))


def _on_device(fn):
    """A task run on the run's device: prepared in this process (a Dask worker too), on this
    thread's own CUDA stream."""

    def task(ctx: _Context, *args):
        s: ConnectivitySettings = args[-1]
        dev = ensure_ready(s.device, s.allow_tf32)
        with thread_stream(dev):
            return fn(ctx, *args)

    task.__name__ = task.__qualname__ = fn.__name__.lstrip("_")
    task.__doc__ = fn.__doc__
    return task


def _pair_task(ctx: _Context, i: int, j: int, s: ConnectivitySettings) -> dict[str, Any]:
    """Match model j to model i and evaluate the naive and matched linear paths."""
    sa, sb = ctx.states[i], ctx.states[j]
    match = _match(ctx, sa, sb, s)
    sbm = apply_permutation(sb, ctx.spec, match.perms)
    lams = np.linspace(0.0, 1.0, s.points)
    out: dict[str, Any] = {"i": i, "j": j, "rows": [], "barriers": {}}
    for path, other in (("naive", sb), ("matched", sbm)):
        if path == "matched" and s.match == "none":
            continue
        lam = torch.as_tensor(lams, dtype=torch.float64)
        curves = _evaluate(ctx, [sa, other], torch.stack([1.0 - lam, lam], dim=1), s, lams)
        for split, (loss, acc) in curves.items():
            for lam, lo, ac in zip(lams, loss, acc, strict=True):
                out["rows"].append(
                    dict(pair=f"{i}-{j}", a=i, b=j, path=path, lam=float(lam), split=split, loss=float(lo), accuracy=float(ac))
                )  # fmt: skip
            b, bl = loss_barrier(lams, loss)
            ab, abl = accuracy_barrier(lams, acc)
            out["barriers"][(path, split)] = dict(
                barrier=b, barrier_lam=bl, barrier_mean=loss_barrier_mean(lams, loss), acc_barrier=ab, acc_barrier_lam=abl
            )  # fmt: skip
    names = [k for k in sa if k in ctx.params and sa[k].is_floating_point()]
    out["l2_before"], out["l2_after"] = _l2(sa, sb, names), _l2(sa, sbm, names)
    out["iterations"], out["objective"] = match.iterations, match.objective
    if (i, j) == (0, 1):
        out["perms"] = {g: p.numpy() for g, p in match.perms.items()}
        out["permuted_b"] = {k: v.detach().cpu().numpy() for k, v in sbm.items()}
        out["layers"] = _layer_rows(ctx, sa, sb, sbm, s.top_k)
    return out


def _merge_task(ctx: _Context, s: ConnectivitySettings) -> dict[str, Any]:
    """Merge all models (MergeMany) and evaluate the merged model and the plain average."""
    merged, _ = merge_many(ctx.states, ctx.spec, seed=s.seed)
    n = len(ctx.states)
    coeffs = torch.zeros((2, n + 1), dtype=torch.float64)
    coeffs[0, :n] = 1.0 / n  # the plain average of the models
    coeffs[1, n] = 1.0  # the merged model
    curves = _evaluate(ctx, [*ctx.states, merged], coeffs, s)
    return {"merged_state": {k: v.detach().cpu().numpy() for k, v in merged.items()}, "curves": curves}


def _plane_task(ctx: _Context, s: ConnectivitySettings) -> dict[str, Any]:
    """Loss over the plane through models 0, 1, 2 (1 and 2 aligned to 0 unless match='none').

    Points ``theta = theta_0 + a (theta_1 - theta_0) + b (theta_2 - theta_0)`` on a grid of
    ``(a, b)`` in ``[-m, 1 + m]^2``; ``x, y`` are orthonormal coordinates of the same points in
    the plane (Garipov et al. 2018, Sec. 5), for plotting without shear.
    """
    s0 = ctx.states[0]
    ends = [s0]
    for j in (1, 2):
        m = _match(ctx, s0, ctx.states[j], s)
        ends.append(apply_permutation(ctx.states[j], ctx.spec, m.perms))
    g, marg = s.plane_points, 0.2
    ticks = torch.linspace(-marg, 1 + marg, g, dtype=torch.float64)
    aa, bb = torch.meshgrid(ticks, ticks, indexing="ij")
    coeffs = torch.stack([1 - aa.reshape(-1) - bb.reshape(-1), aa.reshape(-1), bb.reshape(-1)], dim=1)
    curves = _evaluate(ctx, ends, coeffs, s)
    names = [k for k in s0 if k in ctx.params and s0[k].is_floating_point()]
    u = torch.cat([(ends[1][k] - s0[k]).double().reshape(-1) for k in names])
    v = torch.cat([(ends[2][k] - s0[k]).double().reshape(-1) for k in names])
    nu = float(u.norm())
    e1 = u / nu
    p = float(v @ e1)
    vperp = float((v - p * e1).norm())
    x = (aa * nu + bb * p).numpy()
    y = (bb * vperp).numpy()
    out = {
        "a": aa.numpy(),
        "b": bb.numpy(),
        "x": x,
        "y": y,
        "models_xy": np.array([[0, 0], [nu, 0], [p, vperp]]),
    }
    for split, (loss, acc) in curves.items():
        out[f"loss_{split}"] = loss.reshape(g, g)
        out[f"accuracy_{split}"] = acc.reshape(g, g)
    return out


pair_task = _on_device(_pair_task)
merge_task = _on_device(_merge_task)
plane_task = _on_device(_plane_task)


def _runnable(module: nn.Module, subject: Subject, label: str) -> nn.Module:
    """The model as connectivity runs it: an exported graph (``.pt2``) with its layers rebuilt
    (:mod:`analyses.connectivity.exported`), refused in one line when it cannot be run as one
    fixed function on batches of any size."""
    if not is_exported(module):
        return module
    check_exported(module, label)
    program = getattr(subject, "program", None)
    fixed = fixed_batch_size(program() if callable(program) else module)
    if fixed is not None:
        raise NNVitalsError(
            f"{label}: was exported with a fixed batch size of {fixed}; connectivity runs batches of other "
            "sizes: export it with a dynamic batch axis (dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
        )
    return as_layers(module)


class ModeConnectivity(Analysis):
    """Linear mode connectivity of two (or more) models, before and after permutation alignment.

    >>> res = ModeConnectivity(model_a=model_1, model_b=model_2, data="digits8").run()
    >>> res.summary["barrier_naive"], res.summary["barrier_matched"]
    >>> model_2.load_state_dict(res.permuted_b, strict=True)   # same function, aligned to model_1
    """

    analysis_name = "connectivity"
    analysis_version = "1"

    model_b = param.Parameter(
        default=None,
        label="Model B (same architecture)",
        doc="The second model (same architecture as the first).",
    )
    models = param.List(
        default=[],
        label="More models (pairwise, merge, plane)",
        doc="Three or more models instead of model/model_b: pairwise barriers, merging, plane.",
    )
    data = param.Parameter(
        default="digits8",
        label="Data (train and test)",
        doc="Data with train and test splits: a built-in name ('digits8', the demo models' 8x8 digits, "
        "'digits' being the same; 'digits16', 'digits32'), a dict "
        "{'train': ..., 'test': ...}, a (train, test) pair of datasets, or one dataset (used for both).",
    )
    match = param.Selector(
        default="weights",
        objects=["weights", "activations", "none"],
        label="Alignment",
        doc="Alignment of B to A: weight matching, activation matching, or none (naive path only).",
    )
    points = param.Integer(
        default=25,
        bounds=(2, 1001),
        label="Points along the path",
        doc="Points along each path, endpoints included.",
    )
    bn_reset = param.Selector(
        default="auto",
        objects=["auto", "on", "off"],
        label="Reset BatchNorm statistics",
        doc="Recompute BatchNorm running statistics on train data at every point ('auto': when the model "
        "has BatchNorm).",
    )
    repair = param.Boolean(
        default=False,
        label="REPAIR (models without BatchNorm)",
        doc="REPAIR: renormalise hidden units along the path (for models without BatchNorm).",
    )
    seed = param.Integer(
        default=0, label="Seed", doc="Seed of the random group order in weight matching and merging."
    )
    max_iter = param.Integer(
        default=100,
        bounds=(1, 10000),
        label="Matching: at most this many sweeps",
        doc="Weight matching: at most this many sweeps.",
    )
    batch_size = param.Integer(
        default=512,
        bounds=(1, None),
        label="Samples per forward pass",
        doc="Samples per forward pass (the stacked engine resets BatchNorm on all train samples at once).",
    )
    act_samples = param.Integer(
        default=1024,
        bounds=(16, None),
        label="Samples for activation statistics",
        doc="Train samples for activation matching and REPAIR statistics.",
    )
    engine = param.Selector(
        default="auto",
        objects=list(ENGINES),
        label="Path evaluation",
        doc="How the points of a path run: 'stacked' (plain nn.Sequential chains: all points in one "
        "pass, the first layer once per endpoint, BatchNorm reset fused with the training-split "
        "evaluation), 'vmap' (torch.func.vmap over functional_call), 'per-point' (one functional_call "
        "per point), 'auto' (stacked when the model is such a chain, else per-point: on CPU vmapped "
        "convolutions ran 3.7x slower than per point; tests/benchmarks/bench_connectivity.py).",
    )
    top_k = param.Integer(
        default=5,
        bounds=(1, None),
        label="Top singular vectors per layer",
        doc="Top singular vectors compared per layer.",
    )
    merge = param.Boolean(
        default=True,
        label="Merge all models (MergeMany)",
        doc="With 3+ models: merge them all into one (MergeMany).",
    )
    plane = param.Boolean(
        default=True,
        label="Loss over the plane",
        doc="With 3+ models: loss over the plane through the first three.",
    )
    plane_points = param.Integer(
        default=11, bounds=(3, 101), label="Plane grid points per side", doc="Plane grid points per side."
    )

    def __init__(self, model_a=None, model_b=None, **params):
        if model_a is not None:
            params["model"] = model_a
        if model_b is not None:
            params["model_b"] = model_b
        super().__init__(**params)

    @property
    def model_a(self):
        return self.model

    # ------------------------------------------------------------------ inputs
    def _model_list(self) -> list[Any]:
        if self.models:
            if len(self.models) < 2:
                raise NNVitalsError(f"models: got {len(self.models)} model; give at least two")
            return list(self.models)
        if self.model is None:
            raise NNVitalsError("model_a: not set; give two models (model_a and model_b) or models=[...]")
        if self.model_b is None:
            raise NNVitalsError("model_b: not set; give a second model of the same architecture")
        return [self.model, self.model_b]

    def _labels(self) -> list[str]:
        n = len(self._model_list())
        return [f"models[{i}]" for i in range(n)] if self.models else ["model_a", "model_b"]

    def subjects(self) -> list[Subject]:
        return self.load_subjects(self._model_list())

    def subject(self) -> Subject:
        return self.subjects()[0]

    def datasets(self) -> dict[str, Dataset]:
        """The evaluation splits by name (``train`` and ``test``, or one ``data`` split)."""
        cached = getattr(self, "_data_cache", None)
        if cached is not None and cached[0] is self.data:
            return cached[1]
        d = self.data
        if isinstance(d, str) and d in BUILTIN_DATASETS:
            out = {"train": as_dataset(d, split="train"), "test": as_dataset(d, split="test")}
        elif isinstance(d, dict):
            if "train" not in d:
                raise NNVitalsError(
                    f"data: a dict needs a 'train' entry (and usually 'test'), got keys {sorted(d)}"
                )
            out = {str(k): as_dataset(v) for k, v in d.items()}
        elif isinstance(d, tuple | list) and len(d) == 2 and all(isinstance(v, Dataset) for v in d):
            out = {"train": d[0], "test": d[1]}
        elif d is None:
            raise NNVitalsError("data: not set; give a dataset with train and test splits (e.g. 'digits8')")
        else:
            out = {"data": as_dataset(d)}
        self._data_cache = (self.data, out)
        return out

    def data_fingerprint(self) -> str | None:
        return make_key(**{k: v.fingerprint for k, v in self.datasets().items()})

    def key_params(self) -> dict[str, Any]:
        return {k: v for k, v in super().key_params().items() if k not in ("model_b", "models", "data")}

    def model_fingerprint(self) -> list[str]:
        return [s.fingerprint for s in self.subjects()]

    def _module_and_states(self) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
        module, states = None, []
        for lab, sub in zip(self._labels(), self.subjects(), strict=True):
            mod = sub.module()
            if mod is not None:
                mod = _runnable(mod, sub, f"{lab} {sub.label}")
                module = module or mod
                states.append({k: v.detach().clone() for k, v in mod.state_dict().items()})
            else:  # weights only: loaded into the architecture of a model that has one
                states.append({r.name: sub.tensor(r.name).clone() for r in sub._infos()})
        if module is None:
            raise NNVitalsError(
                f"{self._labels()[0]}: none of the models carries an architecture; give at least one as a "
                "torch.nn.Module, a .pt2 export, a demo name or 'package.module:factory'"
            )
        return module, states

    def interpolated_state(
        self, lam: float, path: str = "matched", result: ConnectivityResult | None = None
    ) -> dict[str, torch.Tensor]:
        """The state dict of ``theta(lam)`` on the naive or matched path from model A to model B.

        Loadable into A's architecture. The matched path needs ``result`` (its ``permuted_b``).
        With BatchNorm (and ``bn_reset`` not off) the running statistics are recomputed on the
        train data, as the path evaluation does; REPAIR's rescaling is not applied.
        """
        if not 0.0 <= float(lam) <= 1.0:
            raise NNVitalsError(f"lam {lam}: expected a number in [0, 1]")
        if path not in ("naive", "matched"):
            raise NNVitalsError(f"path {path!r}: expected 'naive' or 'matched'")
        module, states = self._module_and_states()
        if path == "matched":
            if result is None or not result.permuted_b:
                raise NNVitalsError("path 'matched': give the result of a run with matching (its permuted_b)")
            other = result.permuted_b
        else:
            other = states[1]
        check_same_structure(states[0], other, self._labels()[0], self._labels()[1])
        stacked = linear_path(states[0], other, [float(lam)])
        if batchnorm_modules(module) and self.bn_reset != "off":
            splits = self.datasets()
            train = splits["train"] if "train" in splits else next(iter(splits.values()))
            ev = PathEvaluator(
                module.eval(), self.device, getattr(torch, self.dtype), self.batch_size, engine=self.engine
            )
            stacked = ev.reset_batchnorm(stacked, train)
        return {
            k: (v[0] if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in stacked.items()
        }

    def interpolated_module(
        self, lam: float, path: str = "matched", result: ConnectivityResult | None = None
    ) -> nn.Module:
        """``theta(lam)`` as a runnable module: A's architecture with :meth:`interpolated_state`, eval mode."""
        import copy

        state = self.interpolated_state(lam, path, result)
        module, _ = self._module_and_states()
        module = copy.deepcopy(module)
        module.load_state_dict(state, strict=True)
        return module.eval()

    def export_interpolated(
        self,
        file: str | Path,
        lam: float,
        path: str = "matched",
        result: ConnectivityResult | None = None,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
    ) -> Path:
        """Save ``theta(lam)`` as a ``torch.export`` program (``.pt2``, batch size free) that every
        analysis can run (Spectra reads its weights; Lipschitz, IBP and Orbits run it).

        The trace takes the model turn (:data:`~analyses.core.threads.MODEL_TURN`); while another
        run holds it, ``progress(0, 0, WAITING_STEP)`` says so and ``cancel`` ends the wait
        (:func:`~analyses.core.analysis.model_turn`)."""
        with model_turn(progress, cancel, f"saving theta({lam:.3f})"):
            return self._export_interpolated(Path(file), lam, path, result)

    def _export_interpolated(
        self, file: Path, lam: float, path: str, result: ConnectivityResult | None
    ) -> Path:
        module = self.interpolated_module(lam, path, result)
        splits = self.datasets()
        example = as_input(next(iter(splits.values())).x[:2], "cpu", getattr(torch, self.dtype))
        # a model from a .pt2 keeps the batch range it was exported with (torch.export's default
        # bound is 2**16): the widest range first, then that one, then whatever export infers
        batches = [torch.export.Dim("batch", min=1, max=m) for m in (1 << 20, 1 << 16)] + [
            torch.export.Dim.AUTO
        ]
        program = None
        for batch in batches:
            try:
                with tracing():
                    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
                break
            except Exception as e:  # a model torch.export cannot trace: say so in one line
                if batch is not batches[-1] and "Constraints violated" in str(e):
                    continue
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise NNVitalsError(
                    f"theta({lam:.3f}): torch.export cannot trace this model ({first[:200]})"
                ) from None
        return save_program(program, file)

    def _data_where(self, split: str, ds: Dataset) -> str:
        """How the user named the data of ``split`` (a file path when it came from one)."""
        d = self.data.get(split) if isinstance(self.data, dict) else self.data
        return str(d) if isinstance(d, str | Path) and d not in BUILTIN_DATASETS else ds.name

    def _check_outputs(self, module: nn.Module, states, splits: dict[str, Dataset]) -> None:
        """Run every model once on two samples: its output must be finite (batch, classes) scores
        with a class for every label of the data (the first forward pass, where the model's output
        width becomes known)."""
        labels = [f"{lab} {sub.label}" for lab, sub in zip(self._labels(), self.subjects(), strict=True)]
        name, ds = next(iter(splits.items()))
        p = next((t for t in module.parameters() if t.is_floating_point()), None)
        x = as_input(ds.x[:2], "cpu", p.dtype if p is not None else torch.float32)
        where = self._data_where(name, ds)
        width = None
        for lab, st in zip(labels, states, strict=True):
            try:
                with torch.no_grad():
                    out = functional_call(module, st, (x.clone(),), strict=False)
            except NNVitalsError:
                raise
            except Exception as e:  # the user's model failed on this data: say so in one line
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise NNVitalsError(
                    f"{lab}: failed on inputs of shape {tuple(x.shape)} from data {where} ({first[:200]})"
                ) from None
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise NNVitalsError(
                    f"{lab}: its output must be class scores of shape (batch, classes), got {shape} for "
                    f"inputs of shape {tuple(x.shape)}"
                )
            if not bool(torch.isfinite(out).all()):
                raise NNVitalsError(
                    f"{lab}: gives non-finite outputs (NaN or inf) on the first samples of data {where}"
                )
            width = width or (lab, int(out.shape[1]))
        lab, k = width
        for split, ds in splits.items():
            top = int(ds.y.max())
            if top >= k:
                raise NNVitalsError(
                    f"data {self._data_where(split, ds)}: labels go up to {top} but {lab} has {k} outputs"
                )

    # ------------------------------------------------------------------ tasks
    def _context(self) -> _Context:
        labels = self._labels()
        module, states = self._module_and_states()
        ref = module.state_dict()
        check_same_structure(ref, states[0], "the architecture", labels[0])
        for lab, st in zip(labels[1:], states[1:], strict=True):
            check_same_structure(states[0], st, labels[0], lab)
        states = [{k: st[k] for k in states[0]} for st in states]  # one order: model A's
        splits = self.datasets()
        train = splits["train"] if "train" in splits else next(iter(splits.values()))
        module = module.eval()
        self._check_outputs(module, states, splits)
        n_act = min(len(train), self.act_samples)
        chunk = min(n_act, self.batch_size)
        example = train.x[:chunk]
        try:
            spec, gm = infer_spec(module, example, labels[0])
        except NNVitalsError:
            if self.match != "none":
                raise
            spec, gm = PermutationSpec(groups={}, shapes={k: tuple(v.shape) for k, v in ref.items()}), None
        act = [train.x[k : k + chunk] for k in range(0, n_act - chunk + 1, chunk)]
        has_bn = bool(batchnorm_modules(module))
        if self.bn_reset == "on" and not has_bn:
            raise NNVitalsError(
                "bn_reset='on': the model has no BatchNorm layers with running statistics (an exported "
                "graph cannot be switched to train mode); use bn_reset='auto' or 'off', or repair=True"
            )
        bn_reset = has_bn and self.bn_reset != "off"
        if self.repair and not bn_reset and gm is not None and not spec.groups:
            raise NNVitalsError("repair: the model has no permutable hidden units to renormalise")
        param_names = frozenset(k for k, _ in module.named_parameters())
        return _Context(
            module=module, spec=spec, gm=gm, states=states, splits=splits, train=train, act_batches=act,
            bn_reset=bn_reset, repair=bool(self.repair and not bn_reset), params=param_names,
        )  # fmt: skip

    def settings(self) -> ConnectivitySettings:
        """What the tasks of this run read (see :class:`ConnectivitySettings`)."""
        return ConnectivitySettings(
            match=self.match, points=self.points, seed=self.seed, max_iter=self.max_iter,
            batch_size=self.batch_size, engine=self.engine, top_k=self.top_k, plane_points=self.plane_points,
            device=self.device, dtype=self.dtype, allow_tf32=self.tf32(),
        )  # fmt: skip

    def _tasks(self, subject: Subject) -> list[Task]:
        ctx = self._context()
        self._ctx = ctx
        s = self.settings()
        n = len(ctx.states)
        tasks = [
            Task(pair_task, (ctx, i, j, s), label=f"pair {i}-{j}")
            for i, j in itertools.combinations(range(n), 2)
        ]
        if n >= 3 and self.merge and ctx.spec.groups:
            tasks.append(Task(merge_task, (ctx, s), label="merge"))
        if n >= 3 and self.plane:
            tasks.append(Task(plane_task, (ctx, s), label="plane"))
        return tasks

    def _merge(self, subject: Subject, outputs: list[Any]) -> ConnectivityResult:
        ctx: _Context = self._ctx
        self._ctx = None
        n = len(ctx.states)
        pairs = [o for o in outputs if "rows" in o]
        rows = [r for o in pairs for r in o["rows"]]
        table = pd.DataFrame(rows, columns=["pair", "a", "b", "path", "lam", "split", "loss", "accuracy"])
        split = "test" if "test" in ctx.splits else next(iter(ctx.splits))
        arrays: dict[str, np.ndarray] = {}
        first = next(o for o in pairs if (o["i"], o["j"]) == (0, 1))
        summary: dict[str, Any] = {
            "split": split, "match": self.match, "models": n, "points": self.points, "bn_reset": ctx.bn_reset,
            "repair": ctx.repair, "has_batchnorm": bool(ctx.spec.has_batchnorm),
            "groups": {g.name: g.size for g in ctx.spec.groups.values()},
            "composites": {c.name: f"{c.blocks}x{c.block}" for c in ctx.spec.composites.values()},
            "residual_groups": [g.name for g in ctx.spec.groups.values() if g.residual],
            "l2_before": first["l2_before"], "l2_after": first["l2_after"],
            "match_iterations": first["iterations"], "barriers": {},
        }  # fmt: skip
        if ctx.spec.has_batchnorm and not ctx.bn_reset:
            summary["note"] = (
                "BatchNorm statistics were interpolated, not recomputed (bn_reset off or unavailable)"
            )
        for (path, sp), vals in first["barriers"].items():
            summary["barriers"].setdefault(sp, {})[path] = vals
        for path in ("naive", "matched"):
            vals = first["barriers"].get((path, split))
            summary[f"barrier_{path}"] = vals["barrier"] if vals else None
            summary[f"barrier_mean_{path}"] = vals["barrier_mean"] if vals else None
            summary[f"acc_barrier_{path}"] = vals["acc_barrier"] if vals else None
        for g, p in first["perms"].items():
            arrays[f"perm/{g}"] = p
        for k, v in first["permuted_b"].items():
            arrays[f"permuted_b/{k}"] = v
        layer_rows = pd.DataFrame(first["layers"], columns=LAYER_COLUMNS)
        for c in LAYER_COLUMNS:
            col = layer_rows[c].to_numpy()
            arrays[f"layers/{c}"] = (
                col.astype(str) if c in ("name", "shape", "group_out", "group_in") else col.astype(float)
            )
        if n > 2:
            for what in ("barrier", "acc_barrier"):
                for path in ("naive", "matched"):
                    mat = np.zeros((n, n))
                    for o in pairs:
                        vals = o["barriers"].get((path, split))
                        if vals:
                            mat[o["i"], o["j"]] = mat[o["j"], o["i"]] = vals[what]
                    arrays[f"pairwise/{what}_{path}"] = mat
                    summary[f"pairwise_mean_{what}_{path}"] = float(mat[np.triu_indices(n, 1)].mean())
        for o in outputs:
            if "merged_state" in o:
                for k, v in o["merged_state"].items():
                    arrays[f"merged/{k}"] = v
                summary["merge"] = {
                    sp: {"average_loss": float(lo[0]), "average_accuracy": float(ac[0]),
                         "merged_loss": float(lo[1]), "merged_accuracy": float(ac[1])}
                    for sp, (lo, ac) in o["curves"].items()
                }  # fmt: skip
            elif "models_xy" in o:
                for k, v in o.items():
                    arrays[f"plane/{k}"] = np.asarray(v)
        return ConnectivityResult(table=table, summary=summary, arrays=arrays)

"""IBPTightness and LipschitzBounds: how loose are certified bounds through this network?

Both analyses export the model with an input of the data's shape and walk its graph
(:mod:`analyses.bounds.graph`), so residual additions, concatenations and reshapes written in
``forward`` are handled. ``data`` is whatever :func:`analyses.core.data.as_dataset` accepts
(``"digits8"``, ``"digits16"``, ``"digits32"``, a ``.npz`` path, a :class:`Dataset`, ...); it must lie
in ``data_range``.

* :class:`IBPTightness` (Mao et al., ICLR 2024): per layer, the mean local tightness, the mean
  IBP box width and the shares of stable-active / stable-inactive / unstable ReLUs; summary:
  the output tightness, clean and IBP-certified accuracy at ``eps``; optional ``eps_sweep``.
* :class:`LipschitzBounds` (Khromov & Singh, ICLR 2024): per layer, its own constant, the
  certified upper bound of the network up to it (each operator's composition rule:
  ``Rule.compose``), and lower bounds from input-Jacobian norms (max, mean, RMS over train /
  test samples and convex combinations of pairs). Where a layer has no global constant
  (dot-product attention, products of tensors: ``inf``, the reason in ``method``) or only a
  loose one (layer/group norms), also the *local* bound over the IBP boxes of radius
  ``local_eps`` around every probed sample (columns ``local_constant``, ``local_upper``,
  ``local_method``; summary ``local_upper``, ``local_ratio``, ``local_meaning``, ``no_global``);
  networks with tight global constants get the table without those columns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import param
import torch

from ..core.analysis import Analysis
from ..core.data import BUILTIN_DATASETS, Dataset, as_dataset, builtin_name
from ..core.device import ensure_ready, thread_stream
from ..core.errors import NNVitalsError
from ..core.result import Result
from ..core.runner import Task
from ..core.subject import Subject
from . import ibp as I
from . import lipschitz as L
from .graph import Graph, set_mode, trace


def _graph_dtype(g: Graph) -> torch.dtype:
    """The floating type of the graph's weights (float32 when it has none)."""
    for st in g.steps:
        for v in st.params.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v.dtype
    return torch.float32


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "1"


@dataclass(frozen=True)
class IBPSettings:
    """What an :func:`ibp_task` reads, built once per run by :meth:`IBPTightness.settings` from the
    analysis's (Param-checked) values; small and picklable: a Dask worker gets it with each task.
    ``lo``, ``hi``: ``data_range``; ``allow_tf32``: whether this run uses TF32 (CUDA only)."""

    eps: float
    eps_sweep: tuple[float, ...]
    lo: float
    hi: float
    relu: str
    spec: str
    device: str
    dtype: str
    allow_tf32: bool
    tightness_samples: int = 16


@dataclass(frozen=True)
class LipschitzSettings:
    """What :func:`constants_task` and :func:`lower_task` read, built once per run by
    :meth:`LipschitzBounds.settings` (picklable, as :class:`IBPSettings`)."""

    iters: int
    tol: float
    jacobian_iters: int
    per_layer: bool
    seed: int
    device: str
    dtype: str
    allow_tf32: bool


class _BoundsAnalysis(Analysis):
    """What IBPTightness and LipschitzBounds share: data, data range, the traced graph."""

    data = param.Parameter(
        default="digits8",
        label="Data",
        doc="Inputs: built-in 'digits8' (8x8, the demo models'; 'digits' is the same), 'digits16' or "
        "'digits32', a .npz path with arrays x and y, a Dataset, a tuple (x, y), or a torch Dataset of "
        "(x, y) pairs.",
    )
    data_range = param.Range(
        default=(0.0, 1.0),
        label="Data range",
        doc="Range [lo, hi] of valid inputs: data must lie in it; boxes and points are clipped to it.",
    )
    max_samples = param.Integer(
        default=256,
        bounds=(1, None),
        label="Samples per split",
        doc="Samples used per data split (seeded subset).",
    )
    seed = param.Integer(default=0, label="Seed", doc="Seed for the sample subset and random starts.")

    __abstract = True

    # ------------------------------------------------------------------ data
    def _splits(self) -> tuple[str, ...]:
        return ("test",)

    def datasets(self) -> dict[str, Dataset]:
        """The data splits used, each subsampled to ``max_samples`` and checked against ``data_range``."""
        key = (id(self.data), self.data if isinstance(self.data, str) else None, self.max_samples, self.seed)
        cached = getattr(self, "_data_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        builtin = isinstance(self.data, str) and self.data in BUILTIN_DATASETS
        if self.data is None:
            raise NNVitalsError("data: not set; give 'digits8', a .npz path or a Dataset")
        if builtin:
            out = {s: as_dataset(self.data, split=s) for s in self._splits()}
        else:
            out = {"data": as_dataset(self.data)}
        lo, hi = self._range()
        for name, ds in out.items():
            xmin, xmax = float(ds.x.min()), float(ds.x.max())
            if xmin < lo - 1e-6 or xmax > hi + 1e-6:
                raise NNVitalsError(
                    f"data ({ds.name}): values span [{xmin:.4g}, {xmax:.4g}], outside data_range "
                    f"[{lo:g}, {hi:g}]; rescale the data or set data_range to the range the model expects"
                )
            if len(ds) > self.max_samples:
                gen = torch.Generator().manual_seed(self.seed)
                idx = torch.randperm(len(ds), generator=gen)[: self.max_samples].sort().values
                out[name] = ds.subset(idx)
        self._data_cache = (key, out)
        return out

    def _range(self) -> tuple[float, float]:
        lo, hi = (float(v) for v in self.data_range)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise NNVitalsError(f"data_range: expected finite [lo, hi] with lo < hi, got {self.data_range!r}")
        return lo, hi

    def data_fingerprint(self) -> str | None:
        h = hashlib.sha256()
        for name, ds in sorted(self.datasets().items()):
            h.update(f"{name}:{ds.fingerprint};".encode())
        return h.hexdigest()

    def key_params(self) -> dict[str, Any]:
        params = super().key_params()
        d = params.get("data")
        # the data's content is in data_fingerprint(); the key keeps only a JSON-able label
        # ('digits' and 'digits8' are one dataset: one key, under its explicit name)
        params["data"] = (builtin_name(d) or d) if isinstance(d, str) else type(d).__name__
        return params

    # ------------------------------------------------------------------ model
    def module(self, subject: Subject) -> torch.nn.Module | torch.export.ExportedProgram:
        program = getattr(subject, "program", None)
        if callable(program):  # a .pt2 export: walk its graph as it is
            return program()
        mod = subject.module()
        if mod is None:
            raise NNVitalsError(
                f"model {subject.label}: this {subject.source_kind} file holds weights only; bounds need the "
                "architecture: give a torch.nn.Module, a .pt2 torch.export program or 'package.module:factory'"
            )
        return mod

    def graph(self, subject: Subject | None = None) -> Graph:
        """The model's traced graph (cached per model and input shape)."""
        subject = subject or self.subject()
        example = next(iter(self.datasets().values())).x[:2]
        key = (id(subject), tuple(example.shape[1:]))
        cached = getattr(self, "_graph_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        module = self.module(subject)
        if isinstance(module, torch.nn.Module):
            self._try_forward(module, subject, example)
        try:
            g = trace(module, example)
        except NNVitalsError as e:  # name the model: trace's messages say "model: ..." / "model graph: ..."
            msg = str(e)
            for head in ("model graph:", "model:"):
                if msg.startswith(head):
                    msg = f"{head[:-1]} {subject.label}:{msg[len(head) :]}"
                    break
            raise NNVitalsError(msg) from None
        self._check_outputs(g, subject, example)
        self._graph_cache = (key, g)
        return g

    def _data_where(self, ds: Dataset) -> str:
        d = self.data
        return str(d) if isinstance(d, str | Path) and d not in BUILTIN_DATASETS else ds.name

    def _try_forward(self, module: torch.nn.Module, subject: Subject, example: torch.Tensor) -> None:
        """Run a live module once on the example (in eval mode, as it will be traced), so a model that
        does not take the data's shape fails in one line here, before torch.export (which logs
        tracebacks when the model fails inside it)."""
        was_training = module.training
        p = next((t for t in module.parameters() if t.is_floating_point()), None)
        try:
            set_mode(module, False)
            with torch.no_grad():
                if example.is_floating_point():  # token ids stay integers
                    example = example.to(p.dtype if p is not None else torch.float32)
                module(example)
        except NNVitalsError:
            raise
        except Exception as e:  # the user's model failed on this data: say so in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = self._data_where(next(iter(self.datasets().values())))
            raise NNVitalsError(
                f"model {subject.label}: failed on inputs of shape {tuple(example.shape)} from data {where} "
                f"({first[:200]})"
            ) from None
        finally:
            set_mode(module, was_training)

    def _check_outputs(self, g: Graph, subject: Subject, example: torch.Tensor) -> None:
        """The first forward pass: the model's output must be finite (batch, classes) scores with a
        class for every label of the data."""
        where = self._data_where(next(iter(self.datasets().values())))
        try:
            with torch.no_grad():
                out = g.forward(example.to(_graph_dtype(g)) if example.is_floating_point() else example)
        except Exception as e:  # the user's model failed on this data: say so in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NNVitalsError(
                f"model {subject.label}: failed on inputs of shape {tuple(example.shape)} from data {where} "
                f"({first[:200]})"
            ) from None
        if out.ndim != 2 or out.shape[0] != example.shape[0]:
            raise NNVitalsError(
                f"model {subject.label}: its output must be class scores of shape (batch, classes), got "
                f"{tuple(out.shape)} for inputs of shape {tuple(example.shape)}"
            )
        if not bool(torch.isfinite(out).all()):
            raise NNVitalsError(
                f"model {subject.label}: gives non-finite outputs (NaN or inf) on the first samples of data {where}"
            )
        k = int(out.shape[1])
        for ds in self.datasets().values():
            top = int(ds.y.max())
            if top >= k:
                raise NNVitalsError(
                    f"data {self._data_where(ds)}: labels go up to {top} but model {subject.label} has {k} outputs"
                )

    def _validate(self) -> None:
        self._range()

    def run(self, progress=None, cancel=None) -> Result:
        self._validate()
        self.datasets()
        return super().run(progress=progress, cancel=cancel)


# ============================================================================ IBP


class IBPResult(Result):
    """Result of :class:`IBPTightness`: per-step table, summary, per-sample arrays."""

    kind = "ibp_tightness"

    @property
    def layers(self) -> pd.DataFrame:
        """Rows of the weighted layers, activations and pools (reshapes, adds, cats left out)."""
        return self.table[~self.table["kind"].isin(["reshape", "shift", "scale", "relayout"])]


def _ibp_records(
    g: Graph, x: torch.Tensor, y: torch.Tensor, eps: float, s: IBPSettings, tight: int
) -> I.IBPRecords:
    """One eps's records of a chunk: the boxes (every sample), the output tightness (every sample) and
    the per-step tightness on the chunk's first ``tight`` samples only.

    The boxes, certified accuracy and ReLU stability come from :func:`~analyses.bounds.ibp.propagate`
    without the tangents; the output tightness (``relu="local"``) from
    :func:`~analyses.bounds.ibp.output_tightness` (``K`` reverse passes per sample instead of ``d``
    forward ones); the per-step tightness, which needs the tangent ``J diag(r0)`` (``d`` passes of the
    linearised network per sample), from ``propagate`` with tightness on the first ``tight`` samples,
    in sub-chunks that fit the tangent's memory budget. The deep-linear counterpart
    (``relu="linear"``) has no reverse-mode form here: its output tightness takes the tangent pass on
    every sample, as before."""
    if s.relu == "local":
        rec = I.propagate(g, x, y, eps, s.lo, s.hi, s.relu, s.spec, tightness=False)
        rec.out_tightness = I.output_tightness(g, x, y, eps, s.lo, s.hi, s.spec)
        if tight <= 0:
            return rec
        heads = []
        step = I.samples_per_chunk(g, itemsize=x.element_size())
        for i in range(0, tight, step):
            j = min(tight, i + step)
            heads.append(I.propagate(g, x[i:j], y[i:j], eps, s.lo, s.hi, s.relu, s.spec, tightness=True))
    else:
        rec = I.propagate(g, x, y, eps, s.lo, s.hi, s.relu, s.spec, tightness=True)
        if tight >= len(x):
            return rec
        heads = (
            [I.propagate(g, x[:tight], y[:tight], eps, s.lo, s.hi, s.relu, s.spec, tightness=True)]
            if tight > 0
            else []
        )
    for name, sr in rec.steps.items():
        sr.tight_sum = sum(h.steps[name].tight_sum for h in heads)
        sr.tight_count = sum(h.steps[name].tight_count for h in heads)
    return rec


def ibp_task(
    graph: Graph, x: torch.Tensor, y: torch.Tensor, s: IBPSettings, start: int = 0
) -> dict[str, Any]:
    """IBP records of one chunk of samples (``start``: the first one's index in the data), for ``eps``
    and every sweep value. Per-step tightness only at ``eps`` and on the samples of index
    ``< s.tightness_samples``; everything else on every sample (:func:`_ibp_records`)."""
    dev, dt = ensure_ready(s.device, s.allow_tf32), getattr(torch, s.dtype)
    g = graph.to(dev, dt)
    tight = max(0, min(len(x), s.tightness_samples - start))
    out: dict[str, Any] = {}
    with torch.no_grad(), thread_stream(dev):
        x, y = x.to(dev, dt), y.to(dev)
        out["main"] = _ibp_records(g, x, y, s.eps, s, tight)
        out["sweep"] = [_ibp_records(g, x, y, e, s, 0) for e in s.eps_sweep]
    return out


def _merge_records(recs: list[I.IBPRecords]) -> dict[str, Any]:
    steps: dict[str, I.StepRecord] = {}
    for r in recs:
        for k, v in r.steps.items():
            steps.setdefault(k, I.StepRecord()).add(v)
    cat = lambda f: torch.cat([getattr(r, f).detach().cpu().double() for r in recs]).numpy()  # noqa: E731
    return dict(
        steps=steps, out_tightness=cat("out_tightness"), min_margin=cat("min_margin"),
        correct=cat("correct").astype(bool), certified=cat("certified").astype(bool), out_width=cat("out_width"),
    )  # fmt: skip


def _nanmean(a: np.ndarray) -> float | None:
    a = np.asarray(a, dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


class IBPTightness(_BoundsAnalysis):
    """How loose are interval bounds through this network, layer by layer? (Mao et al., ICLR 2024)

    >>> res = IBPTightness(model="cnn", eps=0.01).run()
    >>> res.table[["name", "kind", "tightness", "box_width", "unstable"]]
    >>> res.summary["certified_accuracy"]
    """

    analysis_name = "ibp_tightness"
    analysis_version = "2"

    eps = param.Number(
        default=0.01,
        softbounds=(0.0, 0.3),
        label="eps (L-inf input radius)",
        doc="L-inf radius of the input box (in data units; clipped to data_range).",
    )
    spec = param.Selector(
        default="margin", objects=list(I.SPECS), label="Bounds on",
        doc="Outputs whose tightness is reported: 'margin' (rows e_y - e_j folded into the last layer) or 'identity' (logits).",
    )  # fmt: skip
    relu = param.Selector(
        default="local", objects=list(I.RELU_MODES), label="ReLU tightness",
        doc="'local': the clean input's activation pattern (the paper's metric); 'linear': the deep-linear counterpart.",
    )  # fmt: skip
    eps_sweep = param.List(
        default=[],
        item_type=(int, float),
        label="Also at eps (tightness vs eps)",
        doc="Also measure at these eps (tightness vs eps).",
    )
    tightness_samples = param.Integer(
        default=16,
        bounds=(1, None),
        label="Samples for per-layer tightness",
        doc="Per-layer tightness on the first this many samples (each costs one pass of the linearised "
        "network per input feature); the output tightness, boxes and certified accuracy use every sample.",
    )
    chunk_samples = param.Integer(
        default=None,
        allow_None=True,
        bounds=(1, None),
        label="Samples per task",
        doc="Samples per task (default: fit a memory budget).",
    )

    def _validate(self) -> None:
        super()._validate()
        # eps has no Param bound (yet): a bad radius is refused when the run starts, as an input
        # error (CLI exit 1, the page's message); Param does not check list items (eps_sweep)
        for e in [self.eps, *self.eps_sweep]:
            if e is None or not math.isfinite(float(e)) or float(e) < 0:
                raise NNVitalsError(f"eps: must be a finite number >= 0, got {e!r}")

    def settings(self) -> IBPSettings:
        """What the tasks of this run read (see :class:`IBPSettings`)."""
        lo, hi = self._range()
        return IBPSettings(
            eps=float(self.eps), eps_sweep=tuple(float(e) for e in self.eps_sweep), lo=lo, hi=hi,
            relu=self.relu, spec=self.spec, device=self.device, dtype=self.dtype, allow_tf32=self.tf32(),
            tightness_samples=int(self.tightness_samples),
        )  # fmt: skip

    def _tasks(self, subject: Subject) -> list[Task]:
        self._validate()
        g = self.graph(subject)
        ds = next(iter(self.datasets().values()))
        itemsize = 4 if self.dtype == "float32" else 8
        # the tangents of the per-step tightness (deep-linear mode: of every sample) set the budget
        # only where they are carried; boxes alone take far less per sample
        tangents = self.relu == "linear"
        chunk = self.chunk_samples or I.samples_per_chunk(g, itemsize=itemsize, tightness=tangents)
        s = self.settings()
        return [
            Task(
                ibp_task,
                (g, ds.x[i : i + chunk], ds.y[i : i + chunk], s, i),
                label=f"samples {i}-{i + chunk}",
            )
            for i in range(0, len(ds), chunk)
        ]

    def _merge(self, subject: Subject, outputs: list[Any]) -> IBPResult:
        g = self.graph(subject)
        main = _merge_records([o["main"] for o in outputs])
        rows = []
        for s in g.steps:
            r = main["steps"][s.name]
            relu_units = r.active + r.inactive + r.unstable
            frac = (lambda n, u=relu_units: n / u) if relu_units else (lambda n: math.nan)
            rows.append(
                dict(
                    position=s.position,
                    name=s.label,
                    node=s.name,
                    kind=s.kind,
                    shape=_shape_text(s.out_shape),
                    tightness=r.tight_sum / r.tight_count if r.tight_count else math.nan,
                    box_width=r.width_sum / r.width_count if r.width_count else math.nan,
                    stable_active=frac(r.active),
                    stable_inactive=frac(r.inactive),
                    unstable=frac(r.unstable),
                    is_output=s.name == g.output_name,
                )  # fmt: skip
            )
        table = pd.DataFrame(rows)
        relu_rows = [main["steps"][s.name] for s in g.steps if s.kind in ("relu", "leaky_relu")]
        tot = sum(r.active + r.inactive + r.unstable for r in relu_rows)
        summary = dict(
            eps=float(self.eps), spec=self.spec, relu=self.relu, samples=int(len(main["correct"])),
            tightness=_nanmean(main["out_tightness"]),
            clean_accuracy=float(main["correct"].mean()), certified_accuracy=float(main["certified"].mean()),
            output_width=_nanmean(main["out_width"]),
            unstable_fraction=(sum(r.unstable for r in relu_rows) / tot) if tot else None,
        )  # fmt: skip
        arrays = {
            "out_tightness": main["out_tightness"], "min_margin": main["min_margin"],
            "correct": main["correct"], "certified": main["certified"],
        }  # fmt: skip
        if self.eps_sweep:
            sw = [_merge_records([o["sweep"][i] for o in outputs]) for i in range(len(self.eps_sweep))]
            arrays["sweep_eps"] = np.array([float(e) for e in self.eps_sweep])
            arrays["sweep_tightness"] = np.array([_nanmean(m["out_tightness"]) or np.nan for m in sw])
            arrays["sweep_certified"] = np.array([m["certified"].mean() for m in sw])
            arrays["sweep_width"] = np.array([_nanmean(m["out_width"]) or np.nan for m in sw])
        res = IBPResult(table=table, summary=summary, arrays=arrays)
        n, k = len(main["correct"]), int(self.tightness_samples)
        if k < n:
            res.meta.setdefault("notes", []).append(
                f"per-layer tightness over the first {k} of {n} samples (tightness_samples); output "
                "tightness, box widths, ReLU stability and certified accuracy over all of them"
            )
        return res


def tightness_over_checkpoints(models: list[Any], labels: list[str] | None = None, **params) -> pd.DataFrame:
    """Run :class:`IBPTightness` on each checkpoint (e.g. over training) and stack the summaries."""
    rows = []
    for i, m in enumerate(models):
        res = IBPTightness(model=m, **params).run()
        rows.append({"checkpoint": labels[i] if labels else i, **res.summary})
    return pd.DataFrame(rows)


# ============================================================================ Lipschitz


#: steps whose global constant holds but is loose (reached only at zero variance): a local bound too
_LOOSE_KINDS = frozenset({"layernorm", "rmsnorm", "groupnorm"})


class LipschitzResult(Result):
    """Result of :class:`LipschitzBounds`: per-step table, summary, per-sample Jacobian norms."""

    kind = "lipschitz"

    def jacobian_norms(self, split: str) -> np.ndarray:
        """Per-sample output Jacobian norms of ``split`` ('train', 'test', 'data', 'mix', 'sharpened')."""
        return self.arrays.get(f"jacobian_norm/{split}", np.empty(0))

    @property
    def splits(self) -> list[str]:
        """The sample sets with per-sample Jacobian norms, in the order they were probed."""
        return [k.split("/", 1)[1] for k in self.arrays if k.startswith("jacobian_norm/")]

    def inputs(self, split: str) -> np.ndarray | None:
        """The samples of ``split`` (same order as :meth:`jacobian_norms`), if the result kept them."""
        return self.arrays.get(f"inputs/{split}")

    def labels(self, split: str) -> np.ndarray | None:
        """The labels of ``split``'s samples (none for the midpoints ``mix``)."""
        return self.arrays.get(f"labels/{split}")


def constants_task(graph: Graph, s: LipschitzSettings) -> dict[str, tuple[float, str]]:
    """Every step's own constant and method, ``{node: (L_s, method)}``, in one call of
    :func:`~analyses.bounds.lipschitz.layer_constants` (cached norms cost a hash; convolutions of one
    shape run as one batched, warm-started Lanczos iteration)."""
    dev = ensure_ready(s.device, s.allow_tf32)
    # operator norms in float64 (not on MPS): the iteration converges from below, and float32
    # round-off would put it visibly under the float32 Jacobian norms of the lower bound
    g = graph.to(dev, torch.float32 if dev.type == "mps" else torch.float64)
    with torch.no_grad(), thread_stream(dev):
        return L.layer_constants(g.steps, iters=s.iters, tol=s.tol, seed=s.seed)


def lower_task(
    graph: Graph, split: str, x: torch.Tensor, s: LipschitzSettings
) -> tuple[str, dict[str, np.ndarray]]:
    """Per-sample input-Jacobian norms at the output and (optionally) at every step."""
    dev, dt = ensure_ready(s.device, s.allow_tf32), getattr(torch, s.dtype)
    g = graph.to(dev, dt)
    names = [st.name for st in g.steps] if s.per_layer else [g.output_name]
    norms = {}
    with thread_stream(dev):
        # token ids stay integers: the map starts at their embedding (jacobian_start)
        x = x.to(dev, dt) if x.is_floating_point() else x.to(dev)
        for name in names:
            fn, z = L.jacobian_start(g, x, upto=name)
            norms[name] = L.jacobian_spectral_norms(fn, z, iters=s.jacobian_iters, seed=s.seed).detach()
        # every step's norms reach the host in one copy, after the last step
        flat = torch.cat([v.double().reshape(-1) for v in norms.values()]).cpu().numpy()
    out, i = {}, 0
    for name, v in norms.items():
        out[name] = flat[i : i + v.numel()]
        i += v.numel()
    return split, out


class LipschitzBounds(_BoundsAnalysis):
    """How smooth is the function: certified upper bound vs empirical lower bound (Khromov & Singh, ICLR 2024).

    >>> res = LipschitzBounds(model="cnn").run()
    >>> res.table[["name", "constant", "upper", "lower_max"]]
    >>> res.summary["ratio"]
    """

    analysis_name = "lipschitz"
    analysis_version = "3"

    iters = param.Integer(
        default=1000,
        bounds=(1, None),
        label="Power-iteration steps (layer norms)",
        doc="Most power-iteration steps for layer operator norms.",
    )
    tol = param.Number(
        default=1e-7,
        bounds=(0, None),
        label="Power-iteration tolerance",
        doc="Power iteration stops at this relative eigen-residual of A^T A.",
    )
    jacobian_iters = param.Integer(
        default=50,
        bounds=(1, None),
        label="Power-iteration steps (Jacobian norms)",
        doc="Power-iteration steps for Jacobian norms of outputs with > 64 units.",
    )
    mixes = param.Integer(
        default=256,
        bounds=(0, None),
        label="Midpoints of random pairs",
        doc="Convex combinations 0.5 x1 + 0.5 x2 of random pairs to probe between samples (none for token ids).",
    )
    per_layer = param.Boolean(
        default=True,
        label="Lower bound at every layer",
        doc="Lower bounds at every step, not only at the output.",
    )
    sharpen = param.Boolean(
        default=False,
        label="Sharpen by gradient ascent",
        doc="Sharpen the lower bound by gradient ascent from the worst samples (not on token ids).",
    )
    sharpen_samples = param.Integer(
        default=8, bounds=(1, None), label="Samples to sharpen", doc="Worst samples to start the ascent from."
    )
    sharpen_steps = param.Integer(
        default=20, bounds=(1, None), label="Gradient-ascent steps", doc="Gradient-ascent steps."
    )
    local_eps = param.Number(
        default=0.0,
        bounds=(0, None),
        label="Local bound radius (L-inf)",
        doc="Where a layer has no global Lipschitz constant (attention, products of tensors) or only a loose "
        "one (layer/group norms), also bound the network locally: over the IBP boxes of the L-inf ball of "
        "this radius around each sample (clipped to data_range). 0: at the samples themselves (a bound "
        "on each sample's Jacobian norm, to compare with the lower bound).",
    )
    keep_inputs = param.Integer(
        default=2_000_000,
        bounds=(0, None),
        label="Keep probed samples up to (numbers)",
        doc="Keep the probed samples in the result (for views) when they hold at most this many numbers.",
    )

    def _splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def settings(self) -> LipschitzSettings:
        """What the tasks of this run read (see :class:`LipschitzSettings`)."""
        return LipschitzSettings(
            iters=self.iters, tol=float(self.tol), jacobian_iters=self.jacobian_iters, per_layer=self.per_layer,
            seed=self.seed, device=self.device, dtype=self.dtype, allow_tf32=self.tf32(),
        )  # fmt: skip

    def sample_sets(self) -> dict[str, torch.Tensor]:
        """Inputs for the lower bound: each split, and ``mixes`` midpoints of random pairs."""
        sets = {k: ds.x for k, ds in self.datasets().items()}
        if self.mixes and all(x.is_floating_point() for x in sets.values()):  # no midpoints of token ids
            pool = torch.cat(list(sets.values()))
            gen = torch.Generator().manual_seed(self.seed + 1)
            i = torch.randint(len(pool), (self.mixes,), generator=gen)
            j = torch.randint(len(pool), (self.mixes,), generator=gen)
            sets["mix"] = 0.5 * pool[i] + 0.5 * pool[j]
        return sets

    def _tasks(self, subject: Subject) -> list[Task]:
        g = self.graph(subject)
        s = self.settings()
        tasks = [Task(constants_task, (g, s), label="layer constants")]
        chunk = 128
        for split, x in self.sample_sets().items():
            for i in range(0, len(x), chunk):
                tasks.append(
                    Task(lower_task, (g, split, x[i : i + chunk], s), label=f"jacobians {split} {i}")
                )
        return tasks

    def _merge(self, subject: Subject, outputs: list[Any]) -> LipschitzResult:
        g = self.graph(subject)
        consts = {k: v for o in outputs if isinstance(o, dict) for k, v in o.items()}
        norms: dict[str, dict[str, list[np.ndarray]]] = {}
        for o in outputs:
            if isinstance(o, tuple) and len(o) == 2:
                split, per = o
                for name, arr in per.items():
                    norms.setdefault(name, {}).setdefault(split, []).append(arr)
        up = {g.input_name: 1.0}
        rows = []
        local = self._local_bounds(g, consts)
        for st in g.steps:
            const, method = consts[st.name]
            # the operator's own composition rule: sqrt(k) for a branch broadcast k times, every input
            # of a step of several
            u = float(L.compose(st, const, [up[i] for i in st.inputs]))
            up[st.name] = u
            allv = np.concatenate(
                [np.concatenate(v) for v in norms.get(st.name, {}).values()] or [np.empty(0)]
            )
            row = dict(
                position=st.position, name=st.label, node=st.name, kind=st.kind, shape=_shape_text(st.out_shape),
                constant=const, method=method, upper=u,
                lower_max=float(allv.max()) if allv.size else math.nan,
                lower_mean=float(allv.mean()) if allv.size else math.nan,
                lower_rms=float(np.sqrt((allv**2).mean())) if allv.size else math.nan,
                is_output=st.name == g.output_name,
            )  # fmt: skip
            row["ratio"] = row["upper"] / row["lower_max"] if row["lower_max"] > 0 else math.nan
            if local is not None:
                lr = local[st.name]
                row.update(
                    local_constant=lr["local_constant"], local_upper=lr["local_upper"],
                    local_method=lr["local_method"],
                )  # fmt: skip
            rows.append(row)
        table = pd.DataFrame(rows)
        out_norms = {k: np.concatenate(v) for k, v in norms.get(g.output_name, {}).items()}
        arrays = {f"jacobian_norm/{k}": v for k, v in out_norms.items()}
        arrays.update(self._kept_inputs())
        upper = up[g.output_name]
        lower = max(float(v.max()) for v in out_norms.values())
        summary = dict(upper=upper, samples={k: int(v.size) for k, v in out_norms.items()})
        for k, v in out_norms.items():
            summary[f"lower_{k}"] = float(v.max())
        allo = np.concatenate(list(out_norms.values()))
        summary["lower_mean"] = float(allo.mean())
        summary["lower_rms"] = float(np.sqrt((allo**2).mean()))
        if self.sharpen and not self._tokens():  # no gradient ascent on integer token ids
            sharp = self._sharpen(g)
            arrays["jacobian_norm/sharpened"] = sharp
            summary["lower_sharpened"] = float(sharp.max())
            lower = max(lower, float(sharp.max()))
        summary["lower"] = lower
        summary["ratio"] = upper / lower if lower > 0 else None
        if local is not None:
            lu = local[g.output_name]["local_upper"]
            summary["local_upper"] = lu
            summary["local_eps"] = float(self.local_eps)
            summary["local_ratio"] = lu / lower if lower > 0 and math.isfinite(lu) else None
            summary["local_meaning"] = self._local_meaning()
            reasons = {r["name"]: r["method"] for r in rows if math.isinf(r["constant"])}
            if reasons:
                summary["no_global"] = reasons
        return LipschitzResult(table=table, summary=summary, arrays=arrays)

    def _local_meaning(self) -> str:
        if self.local_eps > 0:
            return (
                f"the network is local_upper-Lipschitz (2-norm) on the L-inf ball of radius {self.local_eps:g} "
                "around each probed sample (clipped to data_range), through its IBP boxes"
            )
        return "the input-Jacobian norm at each probed sample is at most local_upper (boxes of radius 0)"

    def _local_bounds(self, g: Graph, consts: dict[str, tuple[float, str]]) -> dict[str, dict] | None:
        """Local bounds (:func:`~analyses.bounds.lipschitz.network_bounds`) over the boxes of radius
        ``local_eps`` around the data's samples, when a step has no global constant (attention, a
        product of tensors) or only a loose one (a norm's, reached at zero variance); None otherwise,
        so networks with tight global bounds give the table they always did."""
        loose = any(math.isinf(c) for c, _ in consts.values()) or any(
            st.kind in _LOOSE_KINDS for st in g.steps
        )
        if not loose:
            return None
        lo, hi = self._range()
        dt = torch.float64
        gd = g.to("cpu", dt)
        x = torch.cat([v.to(dt) for v in self.sample_sets().values()])
        rows: dict[str, dict] | None = None
        with torch.no_grad():
            for i in range(0, len(x), 128):
                part = L.network_bounds(
                    gd, consts, x=x[i : i + 128].to(dt), eps=float(self.local_eps), lo=lo, hi=hi,
                    iters=self.iters, tol=float(self.tol), seed=self.seed,
                )  # fmt: skip
                if rows is None:
                    rows = part
                    continue
                for name, r in part.items():
                    old = rows[name]
                    for k in ("local_constant", "local_upper"):
                        if not (old[k] >= r[k]):  # NaN-safe max
                            old[k] = r[k]
                    if r["local_method"] and not old["local_method"]:
                        old["local_method"] = r["local_method"]
        return rows

    def _kept_inputs(self) -> dict[str, np.ndarray]:
        """The samples behind the per-sample norms (``inputs/<split>``, ``labels/<split>``), so a
        view can show the samples of a histogram bar; only when they are small (``keep_inputs``)."""
        sets = self.sample_sets()
        if sum(x.numel() for x in sets.values()) > self.keep_inputs:
            return {}
        out = {f"inputs/{k}": x.detach().cpu().float().numpy() for k, x in sets.items()}
        for k, ds in self.datasets().items():
            out[f"labels/{k}"] = ds.y.detach().cpu().numpy()
        return out

    def _tokens(self) -> bool:
        """Whether the inputs are integer token ids (no midpoints, no gradient ascent on them)."""
        return any(not ds.x.is_floating_point() for ds in self.datasets().values())

    def _sharpen(self, g: Graph) -> np.ndarray:
        dev, dt = self.torch_device(), self.torch_dtype()
        gd = g.to(dev, dt)
        xs = torch.cat(list(self.sample_sets().values())).to(dev, dt)
        with torch.no_grad():
            norms = L.jacobian_spectral_norms(gd.forward, xs, iters=self.jacobian_iters, seed=self.seed)
        worst = norms.argsort(descending=True)[: self.sharpen_samples]
        lo, hi = self._range()
        best, _ = L.sharpen(
            gd, xs[worst], lo, hi, steps=self.sharpen_steps, seed=self.seed, iters=self.jacobian_iters
        )
        return best.detach().cpu().double().numpy()


__all__ = [
    "IBPResult",
    "IBPSettings",
    "IBPTightness",
    "LipschitzBounds",
    "LipschitzResult",
    "LipschitzSettings",
    "tightness_over_checkpoints",
]

"""SpectralAnalysis: heavy-tailed ESD metrics of every weight matrix, with FARMS on request.

One row per weight matrix (Linear, Conv1d, HF Conv1D, Conv2d, Embedding): the power-law
tail exponent ``alpha`` and WeightWatcher's other metrics, the Marchenko-Pastur bulk edge
and the spikes beyond it, optionally the ESD of the element-wise shuffled matrix, and with
``farms=True`` the aspect-ratio-free FARMS alpha. Matrices that cannot be analysed stay in
the table with ``status="skipped"`` and a ``skip_reason``: too small or too large, NaN/Inf
entries, eigenvalues beyond float64, or any numerical failure of that one matrix (a LAPACK
error, an overflow): one layer's values never end the run. Matrices with extreme but finite
entries (a bit-flipped 3e38, denormals) are scaled by a power of two before their Gram matrix
is formed (:func:`~analyses.spectra.kernels.safe_exponent`), which leaves the spectrum exact.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import param
import torch

from ..core.analysis import Analysis
from ..core.device import ensure_ready, thread_stream
from ..core.errors import NNVitalsError
from ..core.pattern import PatternParameter, compile_pattern
from ..core.result import Result
from ..core.runner import Task
from ..core.subject import MATRIX_KINDS, Subject, WeightRef
from . import kernels as K
from .farms import farms_conv2d_blocks, farms_eigenvalues
from .matrices import slice_shape, to_slices
from .stream import CPU_BUDGET, GPU_BUDGET, Prefetcher

#: weights per task: bounded bytes, so a large checkpoint is streamed a few matrices at a time
TASK_BYTES = 48 * 1024 * 1024

METRICS = [
    "alpha", "xmin", "D", "num_pl_spikes", "lambda_max", "log_spectral_norm", "norm", "log_norm",
    "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy",
]  # fmt: skip


class SpectralResult(Result):
    """Result of :class:`SpectralAnalysis`: ``table``, ``summary`` and per-layer ESDs."""

    kind = "spectra"

    @property
    def analysed(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"]

    def esd(self, name: str) -> np.ndarray:
        """Eigenvalues (ascending) of layer ``name``; empty for a skipped layer."""
        return self.arrays.get(f"esd/{name}", np.empty(0))

    def ks_curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(candidate xmins, KS distance) scanned for layer ``name``."""
        return self.arrays.get(f"ksx/{name}", np.empty(0)), self.arrays.get(f"ksd/{name}", np.empty(0))

    def randomized_esd(self, name: str) -> np.ndarray:
        return self.arrays.get(f"rand/{name}", np.empty(0))

    def farms_esd(self, name: str) -> np.ndarray:
        return self.arrays.get(f"farms/{name}", np.empty(0))

    def row(self, name: str) -> pd.Series:
        hit = self.table[self.table["name"] == name]
        if hit.empty:
            raise NNVitalsError(f"layer {name!r}: not in this result")
        return hit.iloc[0]


@dataclass(frozen=True)
class SpectraSettings:
    """What the tasks read (:func:`spectra_task` and its helpers), built once per run by
    :meth:`SpectralAnalysis.settings` from the analysis's (Param-checked) values; small and
    picklable: a Dask worker gets it with each task. ``ids``: each weight's position among the
    model's weights (its ``layer_id``); ``allow_tf32``: whether this run uses TF32 (CUDA only).
    ``fit_thresh`` and ``extreme`` are set per matrix (:func:`_analyse_values`), not per run."""

    xmin_rule: str
    farms: bool
    farms_rows: int
    farms_q_ratio: float
    farms_windows: int
    min_evals: int
    max_evals: int
    max_N: int
    conv2d_norm: bool
    randomize: bool
    seed: int
    device: str
    dtype: str
    allow_tf32: bool
    ids: dict[str, int] = field(default_factory=dict)
    fit_thresh: float = K.EVALS_THRESH
    extreme: bool = False


def _chunks(refs: list[WeightRef], budget: int) -> list[list[WeightRef]]:
    out, cur, size = [], [], 0
    for r in refs:
        b = math.prod(r.shape) * 4
        if cur and size + b > budget:
            out.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += b
    if cur:
        out.append(cur)
    return out


def _groups(refs: list[WeightRef], s: SpectraSettings, budget: int) -> list[list[WeightRef]]:
    """Tasks for the thread runner: matrices with the same slice shape in groups of at most
    ``budget`` fp32 bytes (the rest one per task), in the order of their first member."""
    out: list[list[WeightRef]] = []
    open_: dict[tuple, tuple[int, int]] = {}  # slice shape -> (index in out, bytes)
    for r in refs:
        size = math.prod(r.shape) * 4
        if r.kind not in MATRIX_KINDS or _skip_reason(r, s) or size > budget // 2:
            out.append([r])
            continue
        key = slice_shape(r.shape, r.kind)
        hit = open_.get(key)
        if hit is not None and hit[1] + size <= budget:
            out[hit[0]].append(r)
            open_[key] = (hit[0], hit[1] + size)
        else:
            open_[key] = (len(out), size)
            out.append([r])
    return out


def _skip_reason(ref: WeightRef, s: SpectraSettings) -> str:
    if ref.kind not in MATRIX_KINDS:
        return f"not a matrix layer ({len(ref.shape)}-d tensor)"
    nslices, rows, cols = slice_shape(ref.shape, ref.kind)
    n, m = max(rows, cols), min(rows, cols)
    count = nslices * m  # eigenvalues in the pooled ESD (WeightWatcher's M * rf)
    if count < s.min_evals:
        return f"too small: {count} eigenvalues < min_evals={s.min_evals}"
    if count > s.max_evals:
        return f"too large: {count} eigenvalues > max_evals={s.max_evals}"
    if n > s.max_N:
        return f"too large: N={n} > max_N={s.max_N}"
    return ""


def _fit(ev: torch.Tensor, s: SpectraSettings) -> K.PowerLawFit:
    """Power-law fit of an ESD above ``s.fit_thresh``. For an extreme matrix (``s.extreme``, see
    :func:`_analyse_values`) fewer than ``min_evals`` eigenvalues above its rounding floor are no
    spectrum to fit (two copies of one bit-flipped entry's eigenvalue differ only by rounding)."""
    if s.extreme and int((ev > s.fit_thresh).sum()) < s.min_evals:
        return K.PowerLawFit.empty()
    return K.fit_power_law(ev, s.xmin_rule, thresh=s.fit_thresh)


def _fit_row(ev: torch.Tensor, s: SpectraSettings, n: int) -> tuple[dict[str, Any], K.PowerLawFit]:
    fit = _fit(ev, s)
    row = dict(alpha=fit.alpha, xmin=fit.xmin, D=fit.D, num_pl_spikes=fit.num_pl_spikes)
    row.update(K.spectral_metrics(ev, fit.alpha, n))
    return row, fit


def spectra_task(
    subject: Subject, refs: list[WeightRef], s: SpectraSettings, source: Prefetcher | None = None
) -> list[tuple[dict, dict]]:
    """Analyse a chunk of weights: one (row, arrays) pair per weight, in ``refs`` order.

    Runs in a pool thread (on that thread's own CUDA stream) or a Dask worker (which reads its own
    weights, ahead of the analysis when the chunk holds several). Weights come from ``source``
    (the run's :class:`~analyses.spectra.stream.Prefetcher`) when given. Same-shaped matrices of
    the chunk have their eigenvalues computed in one batched call (:func:`_analyse_chunk`).
    """
    dev = ensure_ready(s.device, s.allow_tf32)
    own = None
    if source is None and len(refs) > 1:  # read the chunk's next weights while this one is analysed
        todo = [r for r in refs if not _skip_reason(r, s)]
        if len(todo) > 1:
            own = source = Prefetcher(subject, todo, _read_budget(dev), pin=dev.type == "cuda")
    try:
        with torch.no_grad(), thread_stream(dev):
            return _analyse_chunk(subject, refs, s, source)
    finally:
        if own is not None:
            own.close()


#: numerical failures of one matrix: that layer is skipped with the reason, the run goes on
NUMERICAL_ERRORS = (np.linalg.LinAlgError, torch.linalg.LinAlgError, ArithmeticError)

#: fp32 bytes of same-shaped matrices whose eigenvalues are computed in one batched call (and
#: held on the device together): on CUDA, and on the CPU (where LAPACK solves one matrix at a time
#: anyway, so only small matrices are grouped, to save per-task overhead)
GROUP_BYTES = {"cuda": 256 * 2**20, "other": 4 * 2**20}


def _read_budget(dev: torch.device) -> int:
    return GPU_BUDGET if dev.type == "cuda" else CPU_BUDGET


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__.lstrip('_')}: {e}".split())


def _skip(row: dict, arrays: dict, reason: str, warning: str = "") -> tuple[dict, dict]:
    """``row`` as a skipped layer (metrics of a half-done analysis dropped)."""
    keep = ("name", "layer_id", "layer_type", "shape", "N", "M", "Q", "num_slices", "num_evals", "status")
    keep += ("skip_reason", "warning")
    for k in [k for k in row if k not in keep]:
        del row[k]
    row.update(status="skipped", skip_reason=reason, warning=warning, num_evals=0)
    arrays.clear()
    return row, arrays


def _new_row(ref: WeightRef, s: SpectraSettings) -> dict[str, Any]:
    nslices, rows, cols = slice_shape(ref.shape, ref.kind) if ref.kind in MATRIX_KINDS else (0, 0, 0)
    n, m = max(rows, cols), min(rows, cols)
    return dict(
        name=ref.name, layer_id=s.ids[ref.name], layer_type=ref.kind, shape="x".join(map(str, ref.shape)),
        N=n, M=m, Q=(n / m) if m else math.nan, num_slices=nslices, num_evals=nslices * m,
        status="ok", skip_reason="", warning="",
    )  # fmt: skip


def _on_device(stored: torch.Tensor, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The stored tensor on ``dev`` in ``dtype``. To a GPU the stored (often fp16) bytes travel and
    are converted there (page-locked ones asynchronously): half the bytes, no host conversion."""
    if dev.type == "cuda" and stored.device.type == "cpu":
        stored = stored.to(dev, non_blocking=stored.is_pinned())
    return stored.to(dev, dtype)


def _load(
    subject: Subject, source: Prefetcher | None, ref: WeightRef, row: dict, arrays: dict, s, dev, dtype
):
    """The weight on the device, or the skipped row when it holds NaN/Inf (or values past ``dtype``)."""
    stored = source.get(ref.name) if source is not None else subject.tensor(ref.name)
    w = _on_device(stored, dev, dtype)
    total = w.sum()  # one pass: NaN/Inf propagate into it, and it gives the entry mean
    if not bool(torch.isfinite(total)):
        bad = int((~torch.isfinite(w)).sum())
        if bad:
            cast = (
                stored.is_floating_point()
                and stored.dtype != w.dtype
                # float64 first: isfinite is not implemented for every stored type (float8)
                and bool(torch.isfinite(stored.to(torch.float64)).all())
            )
            what = (
                f"{bad} entries beyond the {s.dtype} range (use dtype float64)"
                if cast
                else f"{bad} NaN/Inf entries"
            )
            return None, _skip(row, arrays, f"non-finite values: {what}", "non-finite")
    return (w, total), None


def _prepare(w: torch.Tensor, ref: WeightRef, s: SpectraSettings, dtype) -> tuple[torch.Tensor, int, float]:
    """The matrix's slices, scaled by a power of two when its entries are extreme (see
    :func:`~analyses.spectra.kernels.safe_exponent`), with that exponent and max |w|."""
    lo, hi = torch.aminmax(w)
    max_abs = max(-float(lo), float(hi))
    e = K.safe_exponent(max_abs, dtype)  # extreme but finite weights: a power-of-two scale first
    return K.scale_by_power_of_two(to_slices(w, ref.kind, s.conv2d_norm), e), e, max_abs


def _analyse_chunk(
    subject: Subject, refs: list[WeightRef], s: SpectraSettings, source
) -> list[tuple[dict, dict]]:
    """Every weight of ``refs``; the eigenvalues of same-shaped matrices in one batched call of at
    most :data:`GROUP_BYTES` (the numbers of each matrix are those of the per-matrix call: on the
    CPU LAPACK solves each slice on its own either way)."""
    dev, dtype = torch.device(s.device), getattr(torch, s.dtype)
    budget = GROUP_BYTES["cuda" if dev.type == "cuda" else "other"]
    out: list[tuple[dict, dict] | None] = [None] * len(refs)
    batch: list[tuple[int, WeightRef, dict, dict, tuple]] = []

    def flush() -> None:
        if batch:
            _solve_batch(batch, out, s, dtype)
            batch.clear()

    for i, ref in enumerate(refs):
        row, arrays = _new_row(ref, s), {}
        reason = _skip_reason(ref, s)
        if reason:
            row.update(status="skipped", skip_reason=reason, num_evals=0)
            out[i] = (row, arrays)
            continue
        loaded, skipped = _load(subject, source, ref, row, arrays, s, dev, dtype)
        if skipped is not None:
            out[i] = skipped
            continue
        w, total = loaded
        try:
            sl, e, max_abs = _prepare(w, ref, s, dtype)
        except NUMERICAL_ERRORS as err:
            out[i] = _skip(row, arrays, f"numerical failure: {_one_line(err)}", "numerical")
            continue
        item = (i, ref, row, arrays, (sl, e, max_abs, total))
        size = sl.numel() * 4
        same = batch and tuple(batch[0][4][0].shape) == tuple(sl.shape)
        if batch and (not same or size * (len(batch) + 1) > budget):
            flush()
        batch.append(item)
    flush()
    return out  # type: ignore[return-value]


def _solve_batch(batch, out, s, dtype) -> None:
    """Eigenvalues of every matrix of ``batch`` (same slice shape) in one call, then the rest of
    each matrix's analysis. When the batched call fails numerically, each matrix is solved on its
    own, so only the failing one is skipped."""
    raws: list[torch.Tensor | None] = [None] * len(batch)
    if len(batch) > 1:
        stacked = torch.cat([it[4][0] for it in batch])
        try:
            ev = K.batched_eigenvalues(stacked, dtype)
            per = batch[0][4][0].shape[0]
            raws = list(ev.split(per))
        except NUMERICAL_ERRORS:
            raws = [None] * len(batch)
        del stacked
    for k, (i, ref, row, arrays, (sl, e, max_abs, total)) in enumerate(batch):
        try:
            raw = raws[k] if raws[k] is not None else K.batched_eigenvalues(sl, dtype)
            _analyse_values(raw, sl, e, max_abs, total, ref, row, arrays, s, dtype)
        except NUMERICAL_ERRORS as err:  # one matrix's values: skip it, the run goes on
            out[i] = _skip(row, arrays, f"numerical failure: {_one_line(err)}", "numerical")
            continue
        out[i] = (row, arrays)


def _analyse_values(
    raw, sl, e: int, max_abs: float, total, ref: WeightRef, row: dict, arrays: dict, s, dtype
) -> None:
    """Everything after the eigensolve: ``raw`` = the (scaled) slices' eigenvalues."""
    n, m = row["N"], row["M"]
    ev = K.unscale_eigenvalues(torch.sort(raw.reshape(-1)).values, e)
    if not bool(torch.isfinite(ev).all()):
        if bool(torch.isnan(ev).any()):  # an eigensolver that returns NaN instead of raising (GPU)
            reason = "numerical failure: the eigensolver returned NaN"
        else:
            reason = f"eigenvalues beyond the float64 range (largest |w| {max_abs:.3g})"
        _skip(row, arrays, reason, "numerical")
        return
    # a matrix that needed the scale has entries beyond 2^32 (often a bit flip among ordinary
    # weights) or only below 2^-32: its eigenvalues under lambda_max * N * eps(dtype) are rounding
    # noise of the dtype, not spectrum, and stay out of the power-law fits (ordinary matrices: as before)
    thresh = K.EVALS_THRESH if e == 0 else max(K.EVALS_THRESH, float(ev[-1]) * n * torch.finfo(dtype).eps)
    s = dataclasses.replace(s, fit_thresh=thresh, extreme=e != 0)
    metrics, fit = _fit_row(ev, s, n)
    row.update(metrics)
    arrays["esd"] = ev.numpy()
    arrays["ksx"], arrays["ksd"] = fit.ks_xmins, fit.ks_D
    # Marchenko-Pastur bulk for i.i.d. entries with the matrix's own entry variance:
    # sum of squares = sum of eigenvalues, so no extra pass over the weights is needed
    numel = sl.numel()
    scale = 0.5 if (ref.kind == "conv2d" and s.conv2d_norm) else 1.0
    if e == 0 and math.isfinite(float(total)):
        mean = float(total) * math.sqrt(scale) / numel
    else:  # the sum overflowed (or would lose the small entries): from the scaled slices
        mean = math.ldexp(float(sl.sum()) / numel, e)
    sigma2 = max(float(ev.sum()) / numel - mean * mean, 0.0)
    bulk_max = K.mp_bulk_edge(n, m, sigma2)
    q = n / m
    row.update(
        sigma_mp=math.sqrt(sigma2), bulk_max=bulk_max, bulk_min=n * sigma2 * (1 - 1 / math.sqrt(q)) ** 2,
        num_spikes=int((ev > bulk_max).sum()), mp_softrank=bulk_max / row["lambda_max"] if row["lambda_max"] else math.nan,
    )  # fmt: skip
    if s.randomize:
        seed = s.seed + row["layer_id"]
        rsl = torch.stack([K.shuffled(x, seed + i) for i, x in enumerate(sl)])
        rev = K.unscale_eigenvalues(torch.sort(K.batched_eigenvalues(rsl, dtype).reshape(-1)).values, e)
        arrays["rand"] = rev.numpy()
        row.update(
            max_rand_eval=float(rev[-1]),
            ww_softrank=float(rev[-1]) / row["lambda_max"],
            rand_distance=_js_distance(ev.numpy(), rev.numpy()),
        )
    if s.farms:
        row["alpha_plain"] = row["alpha"]
        row.update(_farms(sl, e, row, arrays, s, dtype))
    row["warning"] = K.warning_label(row["alpha"])


def _farms(sl, e: int, row, arrays, s, dtype) -> dict[str, Any]:
    """FARMS alpha of the (power-of-two scaled, see :func:`_analyse_values`) slices ``sl``."""
    if row["layer_type"] in ("conv2d", "conv1d"):
        esds = [K.unscale_eigenvalues(x, e) for x in farms_conv2d_blocks(sl, dtype)]
        alphas = [_fit(x, s).alpha for x in esds]
        pooled = torch.sort(torch.cat(esds)).values.double().cpu()
        alpha = float(np.nanmean(alphas)) if np.isfinite(alphas).any() else math.nan
        arrays["farms"] = pooled.numpy()
        fit = _fit(pooled, s)
        nwin = len(esds)
    else:
        mat = sl[0]
        ev = K.unscale_eigenvalues(
            farms_eigenvalues(mat, s.farms_rows, s.farms_q_ratio, s.farms_windows, dtype), e
        )
        arrays["farms"] = ev.numpy()
        fit = _fit(ev, s)
        alpha = fit.alpha
        nwin = ev.numel()
    lmax = row["lambda_max"]
    return dict(
        alpha=alpha, xmin=fit.xmin, D=fit.D, num_pl_spikes=fit.num_pl_spikes, farms_num_evals=int(arrays["farms"].size),
        farms_windows_used=nwin if row["layer_type"] in ("conv2d", "conv1d") else None,
        alpha_weighted=alpha * math.log10(lmax) if lmax > 0 and np.isfinite(alpha) else math.nan,
    )  # fmt: skip


def _js_distance(a: np.ndarray, b: np.ndarray, bins: int = 100) -> float:
    """Jensen-Shannon distance between two ESDs, as histograms of log10 lambda on shared bins."""
    la, lb = np.log10(a[a > K.EVALS_THRESH]), np.log10(b[b > K.EVALS_THRESH])
    if la.size == 0 or lb.size == 0:
        return math.nan
    edges = np.histogram_bin_edges(np.concatenate([la, lb]), bins=bins)
    p, _ = np.histogram(la, edges)
    q, _ = np.histogram(lb, edges)
    p, q = p / p.sum(), q / q.sum()
    mid = (p + q) / 2

    def kl(x: np.ndarray) -> float:  # KL(x || mid) in bits; mid > 0 wherever x > 0
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / mid[nz])))

    return float(math.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


class SpectralAnalysis(Analysis):
    """Heavy-tailed spectral analysis of every weight matrix of a model (ESD, power law, FARMS).

    >>> res = SpectralAnalysis(model="mlp", xmin_rule="ks").run()
    >>> res.table[["name", "alpha", "alpha_weighted", "warning"]]
    """

    analysis_name = "spectra"
    analysis_version = "1"
    calls_model = False  # reads weights only: never waits for the model turn (analyses.core.threads)

    xmin_rule = param.Selector(
        default="ks", objects=["ks", "median", "peak"], label="xmin rule",
        doc="How xmin of the power-law tail is chosen: 'ks' minimises the KS distance (WeightWatcher), "
        "'median' takes the median eigenvalue (TempBalance, FARMS CV), 'peak' searches near the "
        "histogram peak of log10 lambda (AlphaPruning, FARMS LLM).",
    )  # fmt: skip
    farms = param.Boolean(
        default=False,
        label="FARMS alpha (fixed-aspect-ratio windows)",
        doc="Measure alpha with FARMS fixed-aspect-ratio windows.",
    )
    farms_rows = param.Integer(
        default=100,
        bounds=(2, None),
        label="FARMS window rows",
        doc="FARMS window rows r (FARMS code default 100).",
    )
    farms_q_ratio = param.Number(
        default=2.0,
        bounds=(0.01, 100.0),
        label="FARMS window cols / rows",
        doc="FARMS window aspect ratio cols / rows (FARMS code default 2.0).",
    )
    farms_windows = param.Integer(
        default=10,
        bounds=(1, 100),
        label="FARMS windows per axis",
        doc="FARMS windows per dimension (code default 10).",
    )
    layers = PatternParameter(
        default="",
        label="Layer names (regex)",
        doc="Regular expression: analyse only weights whose name matches (re.search semantics, matched in "
        "linear time; backreferences and lookarounds are refused).",
    )
    layer_types = param.ListSelector(
        default=list(MATRIX_KINDS),
        objects=list(MATRIX_KINDS),
        label="Layer kinds",
        doc="Layer kinds to analyse.",
    )
    min_evals = param.Integer(
        default=8,
        bounds=(2, None),
        label="min eigenvalues",
        doc="Skip matrices with fewer eigenvalues than this (WW default 8).",
    )
    max_evals = param.Integer(
        default=15000,
        bounds=(2, None),
        label="max eigenvalues",
        doc="Skip matrices with more eigenvalues than this (WW 15000).",
    )
    max_N = param.Integer(
        default=50000,
        bounds=(2, None),
        label="max N (longer side)",
        doc="Skip matrices with a longer side N than this (WW 50000).",
    )
    conv2d_norm = param.Boolean(
        default=True,
        label="Halve Conv2d eigenvalues (WW conv2d_norm)",
        doc="Halve pooled Conv2d eigenvalues (WeightWatcher's conv2d_norm).",
    )
    randomize = param.Boolean(
        default=False,
        label="Also the shuffled-matrix ESD",
        doc="Also compute the ESD of each element-wise shuffled matrix.",
    )
    seed = param.Integer(default=0, label="Seed", doc="Seed for the shuffled matrices.")

    def selected(self, subject: Subject) -> list[WeightRef]:
        pattern = compile_pattern(self.layers, "layers") if self.layers else None
        refs = [
            r for r in subject.weights()
            if (pattern is None or pattern.search(r.name)) and (r.kind in self.layer_types or r.kind == "other")
        ]  # fmt: skip
        if not refs:
            what = f" matching {self.layers!r}" if self.layers else ""
            raise NNVitalsError(f"{subject.label}: no weight matrices{what} to analyse")
        return refs

    def settings(self, subject: Subject | None = None) -> SpectraSettings:
        """What the tasks of this run read (see :class:`SpectraSettings`); ``ids`` from ``subject``'s
        weights (none without it)."""
        return SpectraSettings(
            xmin_rule=self.xmin_rule, farms=self.farms, farms_rows=self.farms_rows,
            farms_q_ratio=float(self.farms_q_ratio), farms_windows=self.farms_windows, min_evals=self.min_evals,
            max_evals=self.max_evals, max_N=self.max_N, conv2d_norm=self.conv2d_norm, randomize=self.randomize,
            seed=self.seed, device=self.device, dtype=self.dtype, allow_tf32=self.tf32(),
            ids={r.name: i for i, r in enumerate(subject.weights())} if subject is not None else {},
        )  # fmt: skip

    def _tasks(self, subject: Subject) -> list[Task]:
        s = self.settings(subject)
        refs = self.selected(subject)
        order = getattr(subject, "storage_order", None)
        if callable(order):  # a checkpoint is read shard by shard, each from start to end
            pos = order()
            refs = sorted(refs, key=lambda r: pos.get(r.name, (1 << 62, 0)))
        if self.runner != "threads":
            # Dask ships the subject with every task: chunks of up to TASK_BYTES of weights amortise
            # that; each worker reads its own weights (ahead of its analysis) from the shared path
            return [Task(spectra_task, (subject, c, s), label=c[-1].name) for c in _chunks(refs, TASK_BYTES)]
        # threads share memory: one task per matrix, or per batch of small same-shaped ones, all fed
        # by one prefetching reader
        dev = self.torch_device()
        groups = _groups(refs, s, GROUP_BYTES["cuda" if dev.type == "cuda" else "other"])
        todo = [r for g in groups for r in g if not _skip_reason(r, s)]
        self._close_source()
        source = Prefetcher(subject, todo, _read_budget(dev), pin=dev.type == "cuda") if todo else None
        self._source = source
        return [Task(spectra_task, (subject, g, s, source), label=g[-1].name) for g in groups]

    def _close_source(self) -> None:
        source = self.__dict__.pop("_source", None)
        if source is not None:
            source.close()

    def run(self, progress=None, cancel=None) -> SpectralResult:
        try:
            res = super().run(progress=progress, cancel=cancel)
            source = self.__dict__.get("_source")
            if source is not None and not res.meta.get("cached"):
                res.meta["reader"] = dict(source.stats)  # how the reads went (not stored)
            return res
        finally:  # done, failed or cancelled: the reader stops and drops what it holds
            self._close_source()

    def _merge(self, subject: Subject, outputs: list[Any]) -> SpectralResult:
        rows, arrays = [], {}
        for part in outputs:
            for row, arrs in part:
                rows.append(row)
                for k, v in arrs.items():
                    arrays[f"{k}/{row['name']}"] = np.asarray(v)
        table = pd.DataFrame(rows).sort_values("layer_id", kind="stable").reset_index(drop=True)
        for col in METRICS:
            if col not in table:
                table[col] = np.nan
        ok = table[table["status"] == "ok"]
        summary = {
            "layers_analysed": int(len(ok)),
            "layers_skipped": int((table["status"] != "ok").sum()),
            "over_trained": int((ok["warning"] == "over-trained").sum()),
            "under_trained": int((ok["warning"] == "under-trained").sum()),
        }
        for col in (
            "alpha",
            "alpha_weighted",
            "log_norm",
            "log_alpha_norm",
            "log_spectral_norm",
            "stable_rank",
            "entropy",
        ):
            vals = ok[col].to_numpy(dtype=float)
            summary[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        return SpectralResult(table=table, summary=summary, arrays=arrays)

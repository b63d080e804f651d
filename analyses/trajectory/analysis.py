"""Trajectory: the vital signs of every checkpoint of a training run.

For each checkpoint of a series (:mod:`analyses.trajectory.series`) the chosen analyses run as
they would on that checkpoint alone, with the same parameters, each through the result store
under its own key (analysis, parameters, checkpoint fingerprint, data): a rerun after adding a
checkpoint computes only what the new checkpoint brings, and a standalone analysis of one
checkpoint and the trajectory share their stored results. Connectivity runs between consecutive
checkpoints (``*_to_next``) and from each checkpoint to the final one (``*_to_final``; the
barrier along training). The runs are tasks of the runner (threads or Dask), one per
(checkpoint, analysis) or pair; each run's own work then goes serially in its task.

Readings (:class:`~analyses.trajectory.result.TrajectoryResult`), per checkpoint:

- ``spectra``: per layer and as the mean over the analysed layers, ``alpha`` (the plain
  power-law fit), ``alpha_farms`` (FARMS, when ``farms`` is on: the trajectory's default),
  ``alpha_weighted``, ``log_norm``, ``log_spectral_norm``, ``stable_rank``;
- ``ibp``: ``tightness``, ``clean_accuracy``, ``certified_accuracy``, ``output_width``,
  ``unstable_fraction``, and per layer ``tightness`` and ``unstable``;
- ``lipschitz``: ``upper``, ``lower``, ``ratio`` (upper / lower), ``lower_mean``, and per layer
  ``upper``, ``lower_max`` and ``constant``;
- ``orbits``: ``gap`` (NERO: mean score at the best group element minus at the worst),
  ``mean_score``, ``accuracy``, ``accuracy_gap``, ``best_score``, ``worst_score`` (``gap_at_90``
  on a rotation orbit);
- ``connectivity``: ``barrier_naive``, ``barrier_matched``, ``acc_barrier_naive``,
  ``acc_barrier_matched``, ``l2_before``, ``l2_after``, each ``_to_next`` and ``_to_final``
  (the row of a pair sits at its earlier checkpoint).

A checkpoint that cannot be read, or an analysis that fails on one checkpoint, is reported in
the result's ``errors`` (one line naming the checkpoint) while the rest still run.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import param

from .. import __version__
from ..core.analysis import Analysis, model_turn
from ..core.errors import Cancelled, NNVitalsError
from ..core.result import Result
from ..core.runner import CancelToken, Progress, Runner, Task, parse_spec, tqdm_progress
from ..core.subject import ModuleSubject, Subject
from .result import COLUMNS, TrajectoryResult, empty_table, headlines, with_delta
from .series import Checkpoint, CheckpointSeries, check_same_architecture, load_series

#: analyses a trajectory runs, by command name: (class, needs a runnable model)
ANALYSES: dict[str, tuple[str, bool]] = {
    "spectra": ("analyses.spectra.analysis:SpectralAnalysis", False),
    "ibp": ("analyses.bounds.analysis:IBPTightness", True),
    "lipschitz": ("analyses.bounds.analysis:LipschitzBounds", True),
    "orbits": ("analyses.orbits.analysis:OrbitAnalysis", True),
    "connectivity": ("analyses.connectivity.analysis:ModeConnectivity", True),
}
#: what a trajectory sets unless ``overrides`` says otherwise: spectra fit FARMS too, so the plain
#: and the FARMS alpha come from one run
DEFAULTS: dict[str, dict[str, Any]] = {"spectra": {"farms": True}}
#: parameters a trajectory sets itself (never overridden per analysis)
OWN = frozenset({"name", "model", "model_b", "models", "cache", "cache_dir", "runner", "show_progress"})

SPECTRA_METRICS = ("alpha", "alpha_farms", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank")
IBP_METRICS = ("tightness", "clean_accuracy", "certified_accuracy", "output_width", "unstable_fraction")
LIPSCHITZ_METRICS = ("upper", "lower", "ratio", "lower_mean")
ORBIT_METRICS = ("gap", "mean_score", "accuracy", "accuracy_gap", "best_score", "worst_score", "gap_at_90")
CONNECTIVITY_METRICS = (
    "barrier_naive", "barrier_matched", "barrier_mean_naive", "barrier_mean_matched", "acc_barrier_naive",
    "acc_barrier_matched", "l2_before", "l2_after",
)  # fmt: skip


def analysis_class(kind: str) -> type[Analysis]:
    from ..registry import resolve

    return resolve(ANALYSES[kind][0])


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool | str):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- readings of one result
def spectra_readings(result: Result) -> list[tuple[str, str, float]]:
    """(metric, layer, value) of a spectra result: per analysed layer and the means over them."""
    t = result.table
    ok = t[t["status"] == "ok"]
    farms = "alpha_plain" in ok.columns
    cols = {"alpha": "alpha_plain" if farms else "alpha"}
    if farms:
        cols["alpha_farms"] = "alpha"
    for m in SPECTRA_METRICS[2:]:
        cols[m] = m
    out: list[tuple[str, str, float]] = []
    for metric, col in cols.items():
        if col not in ok.columns:
            continue
        vals = ok[col].to_numpy(dtype=float)
        out.append((metric, "", float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan))
    for _, row in ok.iterrows():
        for metric, col in cols.items():
            if col in ok.columns:
                out.append((metric, str(row["name"]), float(row[col])))
    out.append(("layers_analysed", "", float(len(ok))))
    return out


def ibp_readings(result: Result) -> list[tuple[str, str, float]]:
    s = result.summary
    out = [(m, "", v) for m in IBP_METRICS if (v := _num(s.get(m))) is not None]
    layers = result.table[~result.table["kind"].isin(["reshape", "shift", "scale"])]
    for _, row in layers.iterrows():
        out.append(("tightness", str(row["name"]), float(row["tightness"])))
        if row["kind"] in ("relu", "leaky_relu"):
            out.append(("unstable", str(row["name"]), float(row["unstable"])))
    return out


def lipschitz_readings(result: Result) -> list[tuple[str, str, float]]:
    s = result.summary
    out = [(m, "", v) for m in LIPSCHITZ_METRICS if (v := _num(s.get(m))) is not None]
    for _, row in result.table.iterrows():
        for m in ("upper", "lower_max", "constant"):
            out.append((m, str(row["name"]), float(row[m])))
    return out


def orbit_readings(result: Result) -> list[tuple[str, str, float]]:
    models = result.summary.get("models", {})
    s = next(iter(models.values()), {})
    return [(m, "", v) for m in ORBIT_METRICS if (v := _num(s.get(m))) is not None]


def connectivity_readings(result: Result, suffix: str) -> list[tuple[str, str, float]]:
    s = result.summary
    return [(f"{m}{suffix}", "", v) for m in CONNECTIVITY_METRICS if (v := _num(s.get(m))) is not None]


def readings(kind: str, result: Result, suffix: str = "") -> list[tuple[str, str, float]]:
    """The trajectory's readings of one analysis result (see module docstring)."""
    if kind == "spectra":
        return spectra_readings(result)
    if kind == "ibp":
        return ibp_readings(result)
    if kind == "lipschitz":
        return lipschitz_readings(result)
    if kind == "orbits":
        return orbit_readings(result)
    return connectivity_readings(result, suffix)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, NNVitalsError) else f"{type(e).__name__}: {text} (unexpected; please report)"


def _stored(obj: Analysis) -> bool:
    """Whether ``obj``'s result is in the store already (its run will compute nothing)."""
    return bool(obj.cache) and obj.store().path(obj.cache_key()).is_file()


def checkpoint_task(
    kind: str,
    models: tuple[Subject, ...],
    params: dict[str, Any],
    suffixes: tuple[str, ...] = ("",),
    cancel: Any = None,
) -> dict[str, Any]:
    """Run one analysis on one checkpoint (or a pair, for connectivity) through the store.

    Returns its readings (connectivity's once per name ``suffixes`` gives the pair: a pair can be
    both the consecutive one and the one to the final checkpoint), whether it came from the store
    and how long it took; a failure of the user's input comes back as ``{"error": message}`` (the
    run goes on with the other checkpoints).
    """
    t0 = time.perf_counter()
    cls = analysis_class(kind)
    try:
        if kind == "connectivity":
            obj = cls(model=models[0], model_b=models[1], **params)
        else:
            obj = cls(model=models[0], **params)
        # checkpoints run in parallel; of their runs that call the model one at a time: each takes
        # the model turn, as every torch.export call does (analyses.core.threads: a model called
        # while another thread traced broke the trace, "s31 (<class 'torch.SymInt'>, …)
        # _ModuleStackTracer", in 1 of 4 concurrent `nnvitals track` runs); Spectra overlaps
        result = obj.run(cancel=cancel)
        rows = [r for suffix in suffixes for r in readings(kind, result, suffix)]
    except Cancelled:
        raise
    except Exception as e:  # one checkpoint's failure: reported with it, the others go on
        return {"error": one_line(e), "seconds": time.perf_counter() - t0}
    return {"rows": rows, "cached": bool(result.meta.get("cached")), "seconds": time.perf_counter() - t0}


def _copy(subject: Subject) -> Subject:
    """A subject of its own for one task (a live module is copied: tasks never share one)."""
    return copy.deepcopy(subject) if isinstance(subject, ModuleSubject) else copy.copy(subject)


class Trajectory(Analysis):
    """Vital signs over training: analyses run on every checkpoint of a series.

    >>> traj = Trajectory(series="runs/ckpts", architecture="cnn", analyses=["spectra", "ibp"])
    >>> res = traj.run()
    >>> res.over_steps("spectra", "alpha")
    """

    analysis_name = "trajectory"
    analysis_version = "1"
    kinds: ClassVar[tuple[str, ...]] = tuple(ANALYSES)

    model = param.Parameter(default=None, precedence=-1, doc="Not used by a trajectory: give series.")
    series = param.Parameter(
        default=None,
        doc="The checkpoints: a directory (.safetensors, .pt/.pth state dicts, .pt2, Hugging Face checkpoint-* "
        "folders, named by step or epoch, or listed with their steps in series.json), a series.json, or a "
        "list of paths or of (step, path) pairs.",
    )
    architecture = param.Parameter(
        default=None,
        doc="What weights-only checkpoints run in: a .pt2 export, a demo model name or 'package.module:factory' "
        "(default: the series' first .pt2; without one only spectra run).",
    )
    analyses = param.ListSelector(
        default=[],
        objects=list(ANALYSES),
        doc="Analyses to run on each checkpoint (default: every one that applies to the series).",
    )
    overrides = param.Dict(
        default={},
        doc="Parameters per analysis, e.g. {'ibp': {'eps': 0.05}, 'orbits': {'data': 'digits8'}} (spectra "
        "default to farms=True here).",
    )
    data = param.Parameter(
        default=None,
        allow_None=True,
        doc="Data for every analysis that takes data, unless overrides name their own (default: each "
        "analysis's own: 'digits8', orbits 'digits16').",
    )
    baseline = param.Integer(
        default=None,
        allow_None=True,
        doc="Pinned baseline step: the table gains each reading's difference to it.",
    )

    # ------------------------------------------------------------------ inputs
    def checkpoint_series(self) -> CheckpointSeries:
        """The series, listed afresh (a checkpoint added since the last run is in it)."""
        if self.series is None:
            raise NNVitalsError("series: not set; give a directory of checkpoints, a series.json or a list")
        return load_series(self.series, self.architecture)

    def subject(self) -> Subject:
        raise NNVitalsError("trajectory: runs on a series of checkpoints; give series, not model")

    def _params(self, kind: str) -> dict[str, Any]:
        """The parameters of ``kind``'s runs: the trajectory's device and dtype, ``data``, the
        defaults here and the user's overrides (checked by the analysis class itself)."""
        cls = analysis_class(kind)
        over = self.overrides or {}
        unknown = [k for k in over if k not in ANALYSES]
        if unknown:
            raise NNVitalsError(
                f"overrides: unknown analysis {unknown[0]!r}; expected one of {', '.join(ANALYSES)}"
            )
        own = over.get(kind, {})
        if not isinstance(own, dict):
            raise NNVitalsError(
                f"overrides[{kind!r}]: expected a dict of parameters, got {type(own).__name__}"
            )
        for name in own:
            if name in OWN or name not in cls.param:
                raise NNVitalsError(
                    f"overrides[{kind!r}]: {name!r} is not a parameter to set here; expected one of "
                    f"{', '.join(n for n in cls.param if n not in OWN)}"
                )
        params: dict[str, Any] = {"device": self.device, "dtype": self.dtype, "allow_tf32": self.allow_tf32}
        if self.data is not None and "data" in cls.param:
            params["data"] = self.data
        params.update(DEFAULTS.get(kind, {}))
        params.update(own)
        params.update(cache=self.cache, cache_dir=self.cache_dir, show_progress=False, runner="threads")
        try:
            cls(**params)  # Param's own check and words
        except ValueError as e:
            raise NNVitalsError(f"overrides[{kind!r}]: {' '.join(str(e).split())}") from None
        return params

    # ------------------------------------------------------------------ run
    def _open(
        self, series: CheckpointSeries, errors: list[dict]
    ) -> list[tuple[Checkpoint, Subject, Subject]]:
        """Open every checkpoint: (checkpoint, weights, runnable); an unreadable one goes to ``errors``."""
        opened = []
        for c in series:
            try:
                weights, runnable = series.open(c)
                weights.fingerprint, runnable.fingerprint  # noqa: B018  (hashed once, shared by its tasks)
            except Cancelled:
                raise
            except NNVitalsError as e:
                errors.append({"checkpoint": c.name, "step": c.step, "analysis": "", "message": str(e)})
                continue
            opened.append((c, weights, runnable))
        if not opened:
            first = errors[0]["message"] if errors else "nothing to read"
            raise NNVitalsError(f"series {series.where}: no checkpoint could be read ({first})")
        check_same_architecture([(c, w) for c, w, _ in opened], series.where)
        arch = series.arch()
        if arch is not None and any(r is not w for _, w, r in opened):
            arch.check()
            first = next(r for _, w, r in opened if r is not w)
            _copy(first).module()  # the first weights-only checkpoint fits the architecture (else one line)
        return opened

    def _kinds(self, opened: list[tuple[Checkpoint, Subject, Subject]]) -> tuple[list[str], list[str]]:
        """The analyses to run and, for the default choice, those left out and why."""
        runnable = all(r.module() is not None for _, _, r in opened[:1])
        if self.analyses:
            kinds = list(self.analyses)
            if not runnable:
                need = [k for k in kinds if ANALYSES[k][1]]
                if need:
                    raise NNVitalsError(
                        f"analyses: {', '.join(need)} need a runnable model and the checkpoints hold weights only; "
                        "give architecture (a .pt2 export, a demo name or 'package.module:factory')"
                    )
            return kinds, []
        kinds = [k for k, (_, needs) in ANALYSES.items() if runnable or not needs]
        skipped = [] if runnable else [k for k in ANALYSES if k not in kinds]
        if "connectivity" in kinds and len(opened) < 2:
            kinds.remove("connectivity")
        return kinds, skipped

    def _tasks_for(
        self, opened: list[tuple[Checkpoint, Subject, Subject]], kinds: list[str], cancel: Any
    ) -> tuple[list[Task], list[tuple[Checkpoint, str]]]:
        params = {k: self._params(k) for k in kinds}
        runner = Runner(self.runner, self.num_workers)
        n_runs = len(opened) * len([k for k in kinds if k != "connectivity"])
        if "connectivity" in kinds:
            n_runs += 2 * len(opened)
        if runner.num_workers > 1 and n_runs > 1:  # the checkpoints run in parallel, each run serially
            for p in params.values():
                p["num_workers"] = 1
        token = {"cancel": cancel} if cancel is not None and parse_spec(self.runner) == "threads" else {}
        tasks, owners = [], []
        for c, weights, runnable in opened:
            for kind in kinds:
                if kind == "connectivity":
                    continue
                model = weights if not ANALYSES[kind][1] else runnable
                tasks.append(
                    Task(
                        checkpoint_task,
                        (kind, (_copy(model),), params[kind]),
                        token,
                        label=f"{kind} {c.name}",
                    )
                )
                owners.append((c, kind))
        if "connectivity" in kinds:
            n = len(opened)
            pairs = [
                (opened[i], opened[i + 1], ("_to_next",) + (("_to_final",) if i == n - 2 else ()))
                for i in range(n - 1)
            ]
            pairs += [(opened[i], opened[-1], ("_to_final",)) for i in range(n - 2)]
            for (ca, _, ra), (cb, _, rb), suffixes in pairs:
                tasks.append(
                    Task(
                        checkpoint_task,
                        ("connectivity", (_copy(ra), _copy(rb)), params["connectivity"], suffixes),
                        token,
                        label=f"connectivity {ca.name} -> {cb.name}",
                    )
                )
                owners.append((ca, "connectivity" + suffixes[0]))
        self._settings = {
            k: {n: v for n, v in p.items() if n not in OWN and n != "num_workers"} for k, p in params.items()
        }
        return tasks, owners

    def plan(self) -> pd.DataFrame:
        """The runs :meth:`run` would do: ``checkpoint``, ``step``, ``analysis`` and whether its result
        is ``stored`` already (so a run computes only the others). Opens the checkpoints, runs nothing."""
        series = self.checkpoint_series()
        opened = self._open(series, [])
        kinds, _ = self._kinds(opened)
        tasks, owners = self._tasks_for(opened, kinds, None)
        rows = []
        for (c, kind), task in zip(owners, tasks, strict=True):
            name, models, params = task.args[:3]
            cls = analysis_class(name)
            obj = (
                cls(model=models[0], model_b=models[1], **params)
                if name == "connectivity"
                else cls(model=models[0], **params)
            )
            try:
                stored = _stored(obj)
            except NNVitalsError:
                stored = False
            rows.append({"checkpoint": c.name, "step": c.step, "analysis": kind, "stored": stored})
        return pd.DataFrame(rows, columns=["checkpoint", "step", "analysis", "stored"])

    def export_checkpoint(
        self, step: int, file: str | Path, progress: Progress | None = None, cancel: CancelToken | None = None
    ) -> Path:
        """Save the checkpoint at ``step`` as a ``torch.export`` program (``.pt2``, batch size free)
        that every analysis can run: a ``.pt2`` checkpoint is copied, a weights-only one is loaded
        into the series' architecture and exported on two samples of the data it takes (the
        trajectory's ``data``, else the built-in digits that fit it). One line when it cannot.

        The export takes the model turn (:data:`~analyses.core.threads.MODEL_TURN`); while another
        run holds it, ``progress(0, 0, WAITING_STEP)`` says so and ``cancel`` ends the wait
        (:func:`~analyses.core.analysis.model_turn`)."""
        import torch

        from ..core.data import as_dataset
        from ..core.export import save_bytes
        from ..core.graph import export_program, save_program
        from ..orbits.fitting import fitting_data

        series = self.checkpoint_series()
        c = series.by_step(int(step))
        file = Path(file)
        if isinstance(c.source, Path) and c.source.suffix == ".pt2":
            return save_bytes(c.source.read_bytes(), file)
        _, runnable = series.open(c)
        module = runnable.module()
        if module is None:
            raise NNVitalsError(
                f"checkpoint {c.name}: holds weights only; give the series an architecture (a .pt2 export, "
                "a demo name or 'package.module:factory') to run it"
            )
        data = self.data
        if data is None:
            fit = fitting_data(module)
            data = fit.data if fit is not None else "digits8"
        example = as_dataset(data).x[:2].to(getattr(torch, self.dtype))
        with model_turn(progress, cancel, f"checkpoint {c.name}"):
            program = export_program(module, example, label=f"checkpoint {c.name}", purpose="it",
                                     eval_mode=True, dynamic_batch=True)  # fmt: skip
        return save_program(program, file)

    def run(self, progress: Progress | None = None, cancel: CancelToken | None = None) -> TrajectoryResult:
        """Run every chosen analysis on every checkpoint (single results from the store where they
        are), and assemble the readings. ``progress(done, total, label)`` after each run."""
        t0 = time.perf_counter()
        self.torch_device()
        if self.baseline is not None and self.baseline < 0:
            raise NNVitalsError(f"baseline: expected a step >= 0, got {self.baseline}")
        series = self.checkpoint_series()
        if self.baseline is not None:
            series.by_step(self.baseline)  # a step not in the series fails before any work
        errors: list[dict[str, Any]] = []
        opened = self._open(series, errors)
        kinds, skipped = self._kinds(opened)
        tasks, owners = self._tasks_for(opened, kinds, cancel)
        close = None
        if progress is None and self.show_progress and len(tasks) > 1:
            progress, close = tqdm_progress(f"trajectory {series.where}", len(tasks))
        try:
            outputs = Runner(self.runner, self.num_workers).map(tasks, progress=progress, cancel=cancel)
        finally:
            if close:
                close()
        rows, runs = [], []
        for (c, kind), out in zip(owners, outputs, strict=True):
            analysis = "connectivity" if kind.startswith("connectivity") else kind
            if "error" in out:
                errors.append(
                    {"checkpoint": c.name, "step": c.step, "analysis": kind, "message": out["error"]}
                )
                continue
            runs.append({"checkpoint": c.name, "step": c.step, "analysis": kind, "cached": out["cached"],
                         "seconds": round(out["seconds"], 4)})  # fmt: skip
            rows += [(c.name, c.step, analysis, m, layer, v) for m, layer, v in out["rows"]]
        table = pd.DataFrame(rows, columns=COLUMNS) if rows else empty_table()
        table["step"] = table["step"].astype(np.int64)
        table["value"] = table["value"].astype(np.float64)
        if self.baseline is not None:
            table = with_delta(table, self.baseline)
        computed = sum(not r["cached"] for r in runs)
        summary = {
            "series": series.where,
            "unit": series.unit,
            "steps": [c.step for c, _, _ in opened],
            "checkpoints": [c.name for c, _, _ in opened],
            "analyses": kinds,
            "not_applicable": {k: "needs a runnable model: give architecture" for k in skipped},
            "headline": {k: h for k in kinds if (h := headlines(table).get(k)) is not None},
            "baseline": self.baseline,
            "errors": errors,
            "computed": computed,
            "from_store": len(runs) - computed,
        }
        meta = {
            "analysis": self.analysis_name,
            "params": {
                "analyses": kinds,
                "overrides": self.overrides,
                "baseline": self.baseline,
                "data": self.data if isinstance(self.data, str | None) else type(self.data).__name__,
                "architecture": None if series.arch() is None else series.arch().label,
                "settings": {
                    k: {
                        n: v
                        if isinstance(v, str | int | float | bool | list | tuple | None)
                        else type(v).__name__
                        for n, v in p.items()
                    }
                    for k, p in getattr(self, "_settings", {}).items()
                },  # fmt: skip
            },
            "subject": {"label": str(series.where), "source": "series"},
            "series": series.describe(),
            "runs": runs,
            "version": __version__,
            "runner": self.runner,
            "device": str(self.torch_device()),
            "seconds": round(time.perf_counter() - t0, 4),
            "cached": False,
        }
        return TrajectoryResult(table=table, summary=summary, meta=meta)


__all__ = ["ANALYSES", "DEFAULTS", "Trajectory", "TrajectoryResult", "checkpoint_task", "readings"]

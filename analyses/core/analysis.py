"""The base class every analysis shares: parameters, caching, runner, progress, cancellation.

An analysis is a :class:`param.Parameterized` whose parameters are the knobs a user turns
(validated by Param), with one method to run: :meth:`Analysis.run`. Subclasses implement
:meth:`Analysis._tasks` (split the work) and :meth:`Analysis._merge` (assemble the result);
the base class looks the result up in the :class:`~analyses.core.store.ResultStore` first,
runs the tasks with a :class:`~analyses.core.runner.Runner`, stamps the metadata and stores
the result. The same object serves the app, notebooks and the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import param
import torch

from .. import __version__
from . import device as D
from .errors import NNVitalsError
from .result import Result
from .runner import CancelToken, Progress, Runner, Task, tqdm_progress
from .store import ResultStore, StoreWriteError, make_key
from .subject import Subject, load_subject
from .threads import MODEL_TURN

log = logging.getLogger("nnvitals.analysis")

#: the progress step a run shows while another run calls a model (:data:`MODEL_TURN`)
WAITING_STEP = "waiting for another run that calls a model to finish"


def model_turn(progress: Progress | None, cancel: CancelToken | None, who: str):
    """:data:`MODEL_TURN` held for ``who`` (a run, an export), saying so while it waits: in the log
    and as ``progress(0, 0, WAITING_STEP)``; ``cancel`` ends the wait."""

    def on_wait() -> None:
        log.info("%s: %s", who, WAITING_STEP)
        if progress is not None:
            progress(0, 0, WAITING_STEP)

    return MODEL_TURN.hold(cancel, on_wait)


#: parameters that change how a result is computed but not what it is
NON_KEY = {"name", "model", "cache", "cache_dir", "runner", "num_workers", "show_progress", "device"}


@functools.cache
def code_fingerprint(module: str) -> str:
    """Hash of the sources an analysis runs (its package and analyses/core), so a stored
    result computed by other kernel code is never served after an upgrade or an edit."""
    pkg = Path(sys.modules[module].__file__).parent
    h = hashlib.sha256()
    for d in (pkg, Path(__file__).parent):
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Analysis(param.Parameterized):
    """Base of every nnvitals analysis (see module docstring)."""

    analysis_name: ClassVar[str] = "analysis"
    analysis_version: ClassVar[str] = "1"
    #: whether a run calls or traces the model: such runs take turns (analyses.core.threads);
    #: an analysis that reads weights only says False and overlaps with everything
    calls_model: ClassVar[bool] = True

    model = param.Parameter(
        default=None,
        doc="The model: a torch.nn.Module, a checkpoint path (.safetensors, .pt/.pth state dict, "
        ".pt2 export), a Hugging Face directory, 'package.module:factory', or a demo name.",
    )
    device = param.String(default="cpu", doc="Torch device for the kernels ('cpu', 'cuda', 'cuda:1', 'mps').")
    allow_tf32 = param.Boolean(
        default=False,
        doc="On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (faster; about 1e-3 "
        "relative error). Off by default: float32 means float32. NNVITALS_ALLOW_TF32=1 turns it on for "
        "every analysis. A TF32 result is cached under its own key.",
    )
    dtype = param.Selector(
        default="float32", objects=["float32", "float64"], doc="Floating type of the kernels."
    )
    cache = param.Boolean(default=True, doc="Reuse a stored result with the same key; store new results.")
    cache_dir = param.String(
        default=None, allow_None=True, doc="Result store directory (default ~/.cache/nnvitals)."
    )
    runner = param.String(
        default="threads",
        doc="'threads' (local pool), 'local' (Dask LocalCluster) or a Dask scheduler address.",
    )
    num_workers = param.Integer(
        default=None, allow_None=True, bounds=(1, 256), doc="Threads in the local pool."
    )
    show_progress = param.Boolean(default=True, doc="Draw a tqdm progress bar when no callback is given.")

    # ------------------------------------------------------------------ helpers
    def subject(self) -> Subject:
        """The model as a :class:`Subject` (opened once per model value)."""
        if self.model is None:
            raise NNVitalsError("model: not set; give a model, a checkpoint path or a demo model name")
        return self.load_subjects([self.model])[0]

    def load_subjects(self, models: list[Any]) -> list[Subject]:
        """Subjects of several models (analyses comparing models), opened once per list of values."""
        cached = getattr(self, "_subjects_cache", None)
        if (
            cached is not None
            and len(cached[0]) == len(models)
            and all(a is b for a, b in zip(cached[0], models))
        ):
            return cached[1]
        subjects = [load_subject(m) for m in models]
        self._subjects_cache = (list(models), subjects)
        return subjects

    def model_fingerprint(self) -> Any:
        """What the result store keys the model(s) by (a list for analyses of several models)."""
        return self.subject().fingerprint

    def torch_device(self) -> torch.device:
        """The validated ``device`` (one clear line when it is malformed or not on this machine)."""
        return D.parse_device(self.device)

    def tf32(self) -> bool:
        """Whether this run lets CUDA use TF32 (``allow_tf32`` or ``NNVITALS_ALLOW_TF32``; never off CUDA)."""
        return D.tf32_allowed(self.allow_tf32) and self.torch_device().type == "cuda"

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def key_params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.param.values().items() if k not in NON_KEY}
        # TF32 changes results only on CUDA: the key carries it only then (default keys leave it out)
        params.pop("allow_tf32", None)
        if self.tf32():
            params["allow_tf32"] = True
        return params

    def data_fingerprint(self) -> str | None:
        return None

    def store(self) -> ResultStore:
        return ResultStore(self.cache_dir)

    def cache_key(self) -> str:
        return make_key(
            analysis=self.analysis_name,
            version=f"{__version__}/{self.analysis_version}",
            code=code_fingerprint(type(self).__module__),
            params=self.key_params(),
            model=self.model_fingerprint(),
            data=self.data_fingerprint(),
        )

    # ------------------------------------------------------------------ to implement
    def _tasks(self, subject: Subject) -> list[Task]:
        raise NotImplementedError

    def _merge(self, subject: Subject, outputs: list[Any]) -> Result:
        raise NotImplementedError

    def _run_notes(self, subject: Subject) -> list[str]:
        """The notes of every model the run loaded (:attr:`Subject.notes`), each once, in order."""
        cached = getattr(self, "_subjects_cache", None)
        subjects = [subject, *(cached[1] if cached else [])]
        # (a model group has none of its own; a run that reads weights only gets those on weights)
        notes = [n for s in subjects if hasattr(s, "notes_for") for n in s.notes_for(self.calls_model)]
        return list(dict.fromkeys(notes))

    # ------------------------------------------------------------------ run
    def _turn(self, subject: Subject, progress: Progress | None, cancel: CancelToken | None):
        """The model turn for a run that calls the model (:func:`model_turn`); nothing otherwise."""
        if not self.calls_model:
            return contextlib.nullcontext()
        return model_turn(progress, cancel, f"{self.analysis_name} {subject.label}")

    def run(self, progress: Progress | None = None, cancel: CancelToken | None = None) -> Result:
        """Compute (or fetch from the store) this analysis's result.

        ``progress(done, total, label)`` is called after each task; ``cancel`` is checked
        between tasks and raises :class:`~analyses.core.errors.Cancelled` when set.
        """
        subject = self.subject()
        self.torch_device()  # a bad device fails before the store is consulted
        key = self.cache_key() if self.cache else None
        if key is not None:
            hit = self.store().get(key)
            if hit is not None and hit.meta.get("analysis") == self.analysis_name:
                hit.meta["cached"] = True
                return hit
        # CUDA initialised (handles created once, under a lock) before any pool thread touches it,
        # and TF32 off for the run unless opted in (analyses.core.device)
        with self._turn(subject, progress, cancel), D.device_session(self.device, self.tf32()):
            t0 = time.perf_counter()
            tasks = self._tasks(subject)
            close = None
            if progress is None and self.show_progress and len(tasks) > 1:
                progress, close = tqdm_progress(f"{self.analysis_name} {subject.label}", len(tasks))
            try:
                outputs = Runner(self.runner, self.num_workers).map(tasks, progress=progress, cancel=cancel)
            finally:
                if close:
                    close()
            result = self._merge(subject, outputs)
        result.meta.update(
            analysis=self.analysis_name,
            params=self.key_params(),
            subject={"label": subject.label, "source": subject.source_kind}
            | ({"fingerprint": subject.fingerprint} if self.cache else {}),
            data_fingerprint=self.data_fingerprint(),
            version=__version__,
            runner=self.runner,
            device=str(self.torch_device()),
            seconds=round(time.perf_counter() - t0, 4),
            cached=False,
        )
        notes = list(dict.fromkeys([*result.meta.get("notes", []), *self._run_notes(subject)]))
        if notes:  # e.g. how an export's fixed batch size was worked around
            result.meta["notes"] = notes
        if key is not None:
            try:
                self.store().put(key, result)
            except StoreWriteError as e:  # the result is fine: return it, say it was not kept
                warnings.warn(f"{e}; the result is returned but not cached", stacklevel=2)
                log.warning("%s; the result is returned but not cached", e)
                result.meta["store_error"] = str(e)
        return result

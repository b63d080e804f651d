"""Background runs for the app: a shared thread pool, a progress bar, a Cancel button.

A page never computes on the server's event loop. :meth:`JobPanel.submit` hands a function
``fn(progress, cancel) -> result`` to one process-wide :class:`~concurrent.futures.ThreadPoolExecutor`
(so many sessions share a bounded number of workers; a run waiting for a worker shows as
queued). The function gets the analysis progress callback and a
:class:`~analyses.core.runner.CancelToken`; the worker only writes plain attributes, and a
periodic callback of the session (every :data:`POLL_MS`) copies them into the progress bar and,
once the run has finished, hands the result to ``on_done`` in the session's own context.

- Cancel button: sets the token; the analysis stops at its next check (between tasks, and
  between batches inside a task) and the panel says so. A cancelled run never shows its result:
  one that finished anyway (it ended before it looked at the token) is dropped.
- While a run goes on, a result shown from before is marked stale ("Showing the previous result
  — running …"; :attr:`JobPanel.stale`, which the page frame uses to dim the old plots); the mark
  goes when the new result is shown, or the run is cancelled or fails.
- When a run is done the status line says how the result was obtained, in plain words
  ("Computed in 1.2 s", or "Loaded from the cache (computed earlier with the same settings)").
- Errors: an :class:`~analyses.core.errors.NNVitalsError` is shown as a red alert with its
  message; any other exception is a bug and is shown as one (and logged with its traceback).
- Session closed (``pn.state.on_session_destroyed``): the running job is cancelled.
- Outside a server (a notebook cell) there is no event loop to keep free and the cell should
  show the finished result: ``fn`` runs right away in the caller's thread (``background=True``
  runs it on the pool anyway; :meth:`JobPanel.poll` then takes the place of the session's timer).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

import panel as pn
import param

from analyses.core.errors import Cancelled, NNVitalsError
from analyses.core.runner import CancelToken

from .timer import SessionTimer

log = logging.getLogger("nnvitals.app")

#: how often a session looks at its running job (milliseconds)
POLL_MS = 250
#: scheduling priority of analysis threads (Linux nice value, inherited by the threads they start):
#: on a busy machine the sessions' clicks get the cores first, the long runs take the rest
JOB_NICE = 10

_pool: ThreadPoolExecutor | None = None
_pool_size = 4
_pool_lock = threading.Lock()


def configure(max_workers: int) -> None:
    """Set how many analysis runs execute at once across all sessions (the rest queue)."""
    global _pool, _pool_size
    if max_workers < 1:
        raise NNVitalsError(f"max_workers {max_workers}: expected at least 1")
    with _pool_lock:
        _pool_size = int(max_workers)
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def executor() -> ThreadPoolExecutor:
    """The process-wide pool that runs analyses for every session."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="nnvitals-job")
        return _pool


_niced: set[int] = set()


def _lower_priority() -> None:
    """Give this worker thread (and the runner threads it starts) a lower CPU priority (Linux)."""
    tid = threading.get_native_id()
    if tid in _niced or not hasattr(os, "setpriority"):
        return
    _niced.add(tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), JOB_NICE))
    except OSError:  # not allowed here: run at normal priority
        pass


def in_server() -> bool:
    """True inside a served session (a Bokeh document with a session context)."""
    doc = pn.state.curdoc
    return bool(doc is not None and getattr(doc, "session_context", None) is not None)


def loop_timer(callback: Callable[[], None], period: int = POLL_MS) -> SessionTimer:
    """A session's timer calling ``callback`` every ``period`` ms on the server's event loop.

    It runs on the loop, never on a pool thread: a result's new plots reach the browser before
    anything that names them (see :func:`dashboard.server.serve`). It may be started from the page
    builder thread before the browser has connected; it fires once the browser has (see
    :mod:`dashboard.components.timer` for why this is not Panel's own timer).
    """
    return SessionTimer(callback, period)


class Job:
    """One run: its cancel token, its future and the progress its worker reports."""

    def __init__(
        self,
        label: str,
        on_cancel: Callable[[], None] | None = None,
        describe: Callable[[Any, float], str] | None = None,
    ):
        self.label = label
        self.token = CancelToken()
        self.future: Future | None = None
        self.done = 0
        self.total = 0
        self.step = ""
        self.started: float | None = None
        self.ended: float | None = None
        self.submitted = time.perf_counter()
        #: called in the session once the job has ended cancelled (not when replaced by a new one)
        self.on_cancel = on_cancel
        #: the status line once done, from the result and the seconds it took
        self.describe = describe or how_obtained

    def progress(self, done: int, total: int, label: str) -> None:
        # plain attribute writes from the worker thread; the session's poll reads them
        self.total, self.done, self.step = total, done, label

    def cancel(self) -> None:
        self.token.cancel()
        if self.future is not None:
            self.future.cancel()  # a job still queued never starts

    @property
    def finished(self) -> bool:
        return self.future is not None and self.future.done()


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s / 60:.1f} min"


#: what the status line says of a result that came from the result store
FROM_CACHE = "Loaded from the cache (computed earlier with the same settings)"
#: styles of the "showing the previous result" note
STALE_NOTE_STYLE = {
    "background": "#fff4d6",
    "border-left": "4px solid #d9a400",
    "border-radius": "4px",
    "padding": "0 0.6em",
    "color": "#5c4400",
}


def _metas(result: Any) -> list[dict]:
    """The ``meta`` dicts of a result, or of the results a page's job returned together."""
    meta = getattr(result, "meta", None)
    if isinstance(meta, dict):
        return [meta]
    if isinstance(result, tuple | list):
        return [m for r in result for m in _metas(r)]
    if isinstance(result, dict):
        return [m for r in result.values() for m in _metas(r)]
    return []


def how_obtained(result: Any, seconds: float) -> str:
    """One plain line: "Computed in 1.2 s", or that it was loaded from the cache."""
    metas = _metas(result)
    if metas and all(m.get("cached") for m in metas):
        return FROM_CACHE
    return f"Computed in {_fmt_seconds(seconds)}"


def saved_in(_result: Any, seconds: float) -> str:
    """The status line of a job that saves a file: "Saved in 1.2 s"."""
    return f"Saved in {_fmt_seconds(seconds)}"


class JobPanel(pn.viewable.Viewer):
    """Progress bar, status line, Cancel button and error alert for one page's runs."""

    running = param.Boolean(default=False, doc="A job is queued or running.")
    status = param.String(default="", doc="The status line shown under the bar.")
    error = param.String(default="", doc="Message of the last failed run ('' when none).")
    stale = param.Boolean(
        default=False, doc="The result on show is from before the run in progress (the page dims it)."
    )

    def __init__(self, background: bool | None = None, **params: Any):
        """``background``: run jobs on the shared pool (default: only in a served session)."""
        super().__init__(**params)
        self._background = background
        self._shown = False  # a result of this panel is on show
        self._job: Job | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._on_error: Callable[[str], None] | None = None
        self._poller = None
        self._lock = threading.Lock()
        self._bar = pn.indicators.Progress(
            value=0, max=1, visible=False, bar_color="primary", sizing_mode="stretch_width", height=14
        )
        self._text = pn.pane.Markdown("", css_classes=["nnv-job-status"], margin=(0, 10))
        self._cancel = pn.widgets.Button(
            name="Cancel", button_type="danger", button_style="outline", visible=False, width=90
        )
        self._cancel.on_click(lambda _e: self.cancel())
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._stale_note = pn.pane.Markdown(
            "", visible=False, css_classes=["nnv-stale-note"], styles=STALE_NOTE_STYLE,
            sizing_mode="stretch_width", margin=(0, 10),
        )  # fmt: skip
        self._layout = pn.Column(
            pn.Row(self._bar, self._cancel, sizing_mode="stretch_width", align="center"),
            self._stale_note,
            self._text,
            self._alert,
            sizing_mode="stretch_width",
            css_classes=["nnv-jobs"],
        )
        if in_server():
            pn.state.on_session_destroyed(self._session_destroyed)

    def __panel__(self):
        return self._layout

    # ------------------------------------------------------------------ public
    def submit(
        self,
        label: str,
        fn: Callable[[Callable[[int, int, str], None], CancelToken], Any],
        on_done: Callable[[Any], None],
        on_error: Callable[[str], None] | None = None,
        wait: float = 0.0,
        on_cancel: Callable[[], None] | None = None,
        describe: Callable[[Any, float], str] | None = None,
    ) -> Job:
        """Run ``fn(progress, cancel)`` in the background; ``on_done(result)`` in this session after
        (``on_error(message)`` when it fails, ``on_cancel()`` when Cancel ended it).
        ``describe(result, seconds)``: the status line once done; the default,
        :func:`how_obtained`, says "Computed in …" (a save gives :func:`saved_in`).

        A job still running in this panel is cancelled first (one run per panel at a time).
        ``wait``: seconds to wait for the result before going on in the background; a quick
        result (one from the result store) is then shown at once, without a round trip.
        """
        self.cancel(quiet=True)
        job = Job(label, on_cancel, describe)
        self._hide_error()
        if not (in_server() if self._background is None else self._background):
            return self._run_here(job, fn, on_done, on_error)
        with self._lock:
            self._job, self._on_done, self._on_error = job, on_done, on_error
        job.future = executor().submit(self._work, job, fn)
        self.running = True
        if wait > 0:
            try:
                job.future.exception(timeout=wait)
            except (TimeoutError, CancelledError):
                pass
            if job.finished:
                with self._lock:
                    self._job = None
                self._finish(job, on_done, on_error)
                return job
        self._show_progress(job)
        self._set_stale(self._shown, job)
        self._start_polling()
        return job

    def cancel(self, quiet: bool = False) -> None:
        """Cancel the running (or queued) job, if any: it stops at its next check and its result,
        should it finish anyway, is never shown. The result on show stays (no longer stale)."""
        with self._lock:
            job = self._job
        if job is None or job.token.cancelled:
            return
        job.cancel()
        self._set_stale(False)
        if quiet:  # replaced by a new job: forget this one now
            with self._lock:
                self._job = None
            log.info("cancelled %s (replaced by a new run)", job.label)
            return
        if job.finished:  # it ended just now: the next poll says "cancelled"
            return
        self._set_status(f"Cancelling {job.label} …")
        self._cancel.disabled = True

    def poll(self) -> None:
        """Look at the running job now (what the session's timer does every :data:`POLL_MS`)."""
        self._poll()

    def show_error(self, message: str) -> None:
        """Show ``message`` in the red alert (a problem found before anything ran)."""
        self._fail(message, None)

    @property
    def job(self) -> Job | None:
        return self._job

    # ------------------------------------------------------------------ worker side
    @staticmethod
    def _work(job: Job, fn):
        _lower_priority()
        job.started = time.perf_counter()
        try:
            job.token.check()
            result = fn(job.progress, job.token)
            job.token.check()  # cancelled while finishing: the result is not wanted
            return result
        finally:
            job.ended = time.perf_counter()

    def _run_here(self, job: Job, fn, on_done, on_error) -> Job:
        """Outside a server: run now in this thread (a notebook cell shows the finished result)."""
        job.started = time.perf_counter()
        try:
            result = fn(job.progress, job.token)
        except Cancelled:
            self._ended_cancelled(job)
            return job
        except NNVitalsError as e:
            self._fail(str(e), on_error)
            return job
        except Exception as e:  # a bug: say so, keep the traceback in the log
            log.exception("job %s failed", job.label)
            self._fail(f"internal error, a bug in nnvitals ({type(e).__name__}: {e})", on_error)
            return job
        job.ended = time.perf_counter()
        self._set_status(job.describe(result, job.ended - job.started))
        on_done(result)
        self._shown = True
        return job

    # ------------------------------------------------------------------ session side
    def _start_polling(self) -> None:
        if self._poller is None:
            self._poller = loop_timer(self._poll)
        if not self._poller.running:
            self._poller.start()

    def _stop_polling(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.stop()

    def _show_progress(self, job: Job) -> None:
        self._bar.visible = True
        self._cancel.visible = True
        self._cancel.disabled = False
        if job.started is None:
            self._bar.value = -1  # indeterminate while queued
            self._set_status(f"{job.label}: waiting for other runs to finish")
            return
        if job.total:
            self._bar.max = max(job.total, 1)
            self._bar.value = min(job.done, job.total)
            step = f" — {job.step}" if job.step else ""
            self._set_status(f"{job.label}: {job.done}/{job.total}{step}")
        else:  # no tasks yet: starting, or waiting for the model turn (the step says so)
            self._bar.value = -1
            self._set_status(f"{job.label}: {job.step} …" if job.step else f"{job.label}: starting …")

    def _poll(self) -> None:
        with self._lock:
            job = self._job
        if job is None:
            self._stop_polling()
            return
        if not job.finished:
            if not job.token.cancelled:
                self._show_progress(job)
            return
        self._stop_polling()
        with self._lock:
            if self._job is not job:
                return
            self._job = None
            on_done, on_error = self._on_done, self._on_error
        self._finish(job, on_done, on_error)

    def _ended_cancelled(self, job: Job) -> None:
        self._set_status(f"{job.label}: cancelled")
        log.info("cancelled %s", job.label)
        if job.on_cancel is not None:
            job.on_cancel()

    def _finish(self, job: Job, on_done, on_error) -> None:
        self.running = False
        self._bar.visible = False
        self._cancel.visible = False
        self._cancel.disabled = False
        self._set_stale(False)
        if job.token.cancelled:  # whatever it ended with, a cancelled run shows nothing
            self._ended_cancelled(job)
            return
        try:
            result = job.future.result()
        except (Cancelled, CancelledError):
            self._ended_cancelled(job)
            return
        except NNVitalsError as e:
            self._fail(str(e), on_error)
            return
        except Exception as e:
            log.error("job %s failed", job.label, exc_info=e)
            self._fail(f"internal error, a bug in nnvitals ({type(e).__name__}: {e})", on_error)
            return
        started = job.started or job.submitted
        took, queued = (job.ended or time.perf_counter()) - started, started - job.submitted
        wait = f" after {_fmt_seconds(queued)} in the queue" if queued >= 1 else ""
        log.info("%s: done in %s%s", job.label, _fmt_seconds(took), wait)
        self._set_status(job.describe(result, took))
        try:
            on_done(result)
            self._shown = True
        except NNVitalsError as e:
            self._fail(str(e), on_error)
        except Exception as e:
            log.error("showing the result of %s failed", job.label, exc_info=e)
            self._fail(f"internal error, a bug in nnvitals ({type(e).__name__}: {e})", on_error)

    def _fail(self, message: str, on_error) -> None:
        self.running = False
        self._set_stale(False)
        self.error = message
        self._alert.object = message
        self._alert.visible = True
        self._set_status("")
        if on_error is not None:
            on_error(message)

    def _hide_error(self) -> None:
        self.error = ""
        self._alert.visible = False

    def _set_status(self, text: str) -> None:
        self.status = text
        self._text.object = text

    def _set_stale(self, stale: bool, job: Job | None = None) -> None:
        if stale and job is not None:
            with self._lock:  # a run replaced (or already ended) is never marked as running
                current = self._job is job and not job.token.cancelled
            if not current:
                return
            self._stale_note.object = f"Showing the previous result — running {job.label} …"
        self._stale_note.visible = stale
        self.stale = stale

    def close(self, reason: str = "closed") -> None:
        """Cancel the running job for good (the page goes away); logs ``<reason>: cancelled <job>``."""
        with self._lock:
            job = self._job
            self._job = None
        self._stop_polling()
        if job is not None and not job.finished:
            job.cancel()
            log.info("%s: cancelled %s", reason, job.label)

    def _session_destroyed(self, session_context) -> None:
        self.close(f"session {getattr(session_context, 'id', '?')} closed")

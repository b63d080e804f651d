"""Runs an analysis's tasks: a local thread pool by default, Dask ``distributed`` on request.

An analysis splits its work into :class:`Task` objects (a module-level function plus
picklable arguments, so the same task runs in a thread or in a Dask worker process) and
hands them to :meth:`Runner.map`, which returns their results in task order. Progress is
reported through a callback ``progress(done, total, label)`` after each task; a terminal or a
notebook shows it as a tqdm bar, a log (stderr not a terminal) as a few plain lines
(:func:`tqdm_progress`), the app as its progress bar. A :class:`CancelToken` is checked between
tasks, and a task that runs in this process can check it between its own batches with
:func:`check_cancelled` (or take the token as an argument): on Cancel, pending tasks are dropped,
the run stops waiting for the running ones and :class:`~analyses.core.errors.Cancelled` is raised.

Runner specs: ``"threads"`` (default), ``"local"`` (a Dask LocalCluster of worker processes,
started once per process and reused), or a scheduler address ``"tcp://HOST:PORT"``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, NNVitalsError
from .threads import MODEL_TURN, single_threaded_kernels

Progress = Callable[[int, int, str], None]


@dataclass
class Task:
    """One unit of work: ``fn(*args, **kwargs)``; ``label`` is shown in progress bars."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


class CancelToken:
    """Set by a UI (Cancel button, closed session) and checked by running work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


_current = threading.local()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the run this task belongs to was cancelled.

    For tasks that loop over batches: call it between batches. It knows the run's token when
    the task runs in this process (the thread runner); elsewhere (a Dask worker) it does nothing
    and the runner stops the run between tasks."""
    token = getattr(_current, "token", None)
    if token is not None:
        token.check()


def _run_task(token: CancelToken | None, task: Task) -> Any:
    """``task`` with ``token`` as the current run's (see :func:`check_cancelled`)."""
    previous = getattr(_current, "token", None)
    _current.token = token
    try:
        return task.fn(*task.args, **task.kwargs)
    finally:
        _current.token = previous


def _pool_task(token: CancelToken | None, task: Task, turn: object | None) -> Any:
    """:func:`_run_task` on a pool thread, working for the run ``turn`` that submitted it: where
    that run holds the model turn, its tasks pass (:class:`~analyses.core.threads.ModelTurn`)."""
    with MODEL_TURN.serving(turn):
        return _run_task(token, task)


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def dask_client(spec: str):
    """A (cached) ``distributed.Client`` for ``"local"`` or a scheduler address."""
    with _clients_lock:
        client = _clients.get(spec)
        if client is not None and client.status == "running":
            return client
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - dependency of the package
            raise NNVitalsError("--dask needs the 'distributed' package") from e
        try:
            if spec == "local":
                n = max(1, min(4, os.cpu_count() or 1))
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
                )
                client = Client(cluster)
            else:
                client = Client(spec, timeout="5s")
        except OSError as e:
            raise NNVitalsError(
                f"--dask {spec}: cannot reach a Dask scheduler there ({e}); "
                "expected 'local' or an address like tcp://HOST:8786"
            ) from None
        _clients[spec] = client
        return client


def parse_spec(spec: str | None, cli: bool = False) -> str:
    """The one parser of a runner spec (every Dask address in nnvitals goes through it).

    ``"threads"`` (also for None or empty), ``"local"``, an address with a scheme
    (``tcp://HOST:PORT``, ``tls://...``) as given, or ``HOST:PORT`` as ``tcp://HOST:PORT``.
    Anything else raises :class:`NNVitalsError`; with ``cli`` (a ``--dask`` option, where leaving
    it out means threads) the message says what to type there and leaves naming the option to
    the parser.
    """
    spec = (spec or "threads").strip()
    if spec in ("threads", "local") or "://" in spec:
        return spec
    host, sep, port = spec.rpartition(":")
    if sep and host and port.isdigit():  # HOST:PORT
        return f"tcp://{spec}"
    if cli:
        raise NNVitalsError(f"expected 'local' or a scheduler address tcp://HOST:PORT, got {spec!r}")
    raise NNVitalsError(
        f"runner {spec!r}: expected 'threads', 'local' or a scheduler address tcp://HOST:PORT"
    )


class Runner:
    """Executes tasks with threads or Dask; same results either way."""

    def __init__(self, spec: str | None = "threads", num_workers: int | None = None):
        self.spec = parse_spec(spec)
        # one task per core, each with one intra-op thread (see analyses.core.threads)
        self.num_workers = num_workers or max(1, min(8, os.cpu_count() or 1))

    @property
    def description(self) -> str:
        if self.spec == "threads":
            return f"threads ({self.num_workers})"
        return f"dask {self.spec}"

    @property
    def dashboard_link(self) -> str | None:
        if self.spec == "threads":
            return None
        return dask_client(self.spec).dashboard_link

    def map(
        self,
        tasks: Sequence[Task],
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Any]:
        """Run every task; results in task order. Raises the first task error."""
        if not tasks:
            return []
        if cancel is not None:
            cancel.check()
        if self.spec == "threads":
            return self._map_threads(tasks, progress, cancel)
        return self._map_dask(tasks, progress, cancel)

    def _map_threads(self, tasks, progress, cancel):
        results: list[Any] = [None] * len(tasks)
        if self.num_workers == 1 or len(tasks) == 1:
            return self._map_serial(tasks, progress, cancel, results)
        with single_threaded_kernels():
            return self._map_pool(tasks, progress, cancel, results)

    def _map_serial(self, tasks, progress, cancel, results):
        for i, t in enumerate(tasks):
            if cancel is not None:
                cancel.check()
            results[i] = _run_task(cancel, t)
            if progress:
                progress(i + 1, len(tasks), t.label)
        return results

    def _map_pool(self, tasks, progress, cancel, results):
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="nnvitals")
        turn = MODEL_TURN.working_for()  # the pool's threads work for this run
        index = {pool.submit(_pool_task, cancel, t, turn): i for i, t in enumerate(tasks)}
        pending, done_n = set(index), 0
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for f in done:
                    results[index[f]] = f.result()
                    done_n += 1
                    if progress:
                        progress(done_n, len(tasks), tasks[index[f]].label)
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
        except BaseException:
            # pending tasks never start; running ones stop at their next check (or end on their
            # own) without the caller waiting for them: Cancel answers at once
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results

    def _map_dask(self, tasks, progress, cancel):
        from distributed import as_completed

        client = dask_client(self.spec)
        futures = [client.submit(t.fn, *t.args, pure=False, **t.kwargs) for t in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(tasks)
        try:
            for n, fut in enumerate(as_completed(futures), 1):
                results[index[fut.key]] = fut.result()
                if progress:
                    progress(n, len(tasks), tasks[index[fut.key]].label)
                if cancel is not None:
                    cancel.check()
        except BaseException:
            client.cancel(futures)
            raise
        return results


#: most plain progress lines one run writes to a stream that is not a terminal (a log file)
PLAIN_LINES = 4


def _interactive(stream: Any) -> bool:
    """Whether ``stream`` shows a live bar: a terminal, or a Jupyter kernel (tqdm draws a widget)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def plain_progress(
    desc: str, stream: Any = None, lines: int = PLAIN_LINES
) -> tuple[Progress, Callable[[], None]]:
    """A progress callback for a log: a plain line at each quarter of the way (``lines`` at most),
    never a redrawn bar (carriage returns make a log unreadable)."""
    t0 = time.perf_counter()
    state = {"step": 0}

    def update(done: int, total: int, label: str) -> None:
        if total <= 0:
            return
        step = min(lines, (lines * done) // total)
        if step <= state["step"]:
            return
        state["step"] = step
        out = stream if stream is not None else sys.stderr
        print(
            f"{desc}: {done}/{total} tasks ({100 * done // total}%) after {time.perf_counter() - t0:.1f} s",
            file=out,
            flush=True,
        )

    return update, lambda: None


def tqdm_progress(
    desc: str, total: int | None = None, disable: bool = False, stream: Any = None
) -> tuple[Progress, Callable[[], None]]:
    """A progress callback drawing a tqdm bar (notebook-aware), and a function closing it.

    On a stream that is not a terminal (stderr sent to a file or a pipe) there is no bar to redraw:
    a few plain lines instead (:func:`plain_progress`)."""
    out = stream if stream is not None else sys.stderr
    if disable:
        return (lambda done, total, label: None), lambda: None
    if not _interactive(out):
        return plain_progress(desc, out)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, file=stream)

    def update(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(label[-40:], refresh=False)
        bar.refresh()

    return update, bar.close

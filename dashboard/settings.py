"""What the server was started with, as the pages see it (no Panel import here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: default limit of one upload (megabytes of 10^6 bytes, as the upload widget counts them)
DEFAULT_MAX_UPLOAD_MB = 512


def default_threads() -> int:
    """Worker threads when ``--num-threads`` is not given: at least 4, at most 16."""
    return max(4, min(16, os.cpu_count() or 1))


@dataclass(frozen=True)
class AppSettings:
    """Options of one app (``nnvitals serve`` flags, or defaults in a notebook).

    - ``allow_dirs``: server directories whose model files users may pick (resolved paths);
    - ``runner``: ``"threads"``, ``"local"`` (Dask LocalCluster) or a scheduler address;
    - ``dask_dashboard``: link to the Dask dashboard when ``runner`` is Dask;
    - ``num_threads``: a cap on the analyses run at once (see :attr:`runs_at_once`);
    - ``max_upload_mb``: refuse uploads larger than this;
    - ``default_model``: the demo model the app opens on.
    """

    allow_dirs: tuple[Path, ...] = ()
    runner: str = "threads"
    dask_dashboard: str | None = None
    num_threads: int = field(default_factory=default_threads)
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    default_model: str = "mlp"
    title: str = "nnvitals"

    @property
    def runs_at_once(self) -> int:
        """Analyses run at the same time across all sessions (more wait in a queue).

        At most one per core: each run already uses every core (one layer task per core), and
        more runs would only contend for the cores and the interpreter lock with the sessions'
        clicks. ``num_threads`` caps it further.
        """
        return max(1, min(self.num_threads, os.cpu_count() or 1))

    @property
    def runner_plain(self) -> str:
        """Where the analyses run, in plain words (the app's sidebar)."""
        if self.runner == "threads":
            n = self.runs_at_once
            return (
                f"Analyses run on this server, {n} at a time, and of those that run a model one at a "
                "time (more wait their turn)."
            )
        if self.runner == "local":
            return "Analyses run on a Dask cluster on this machine."
        return f"Analyses run on the Dask scheduler {self.runner}."

    @property
    def runner_text(self) -> str:
        """One line saying which runner executes the analyses (the server's log)."""
        if self.runner == "threads":
            return f"threads (up to {self.runs_at_once} runs at once, one kernel thread per layer task)"
        if self.runner == "local":
            return "Dask LocalCluster"
        return f"Dask scheduler {self.runner}"

"""Trajectory: the analyses over the checkpoints of a training run (a checkpoint series).

:mod:`.series` lists and opens a series (a directory named by step, a ``series.json``, or a
list); :class:`~analyses.trajectory.analysis.Trajectory` runs the analyses on every checkpoint
through the runner and the result store; :mod:`.views` draws the readings over steps.
"""

from __future__ import annotations

__all__ = ["CheckpointSeries", "Trajectory", "TrajectoryResult", "load_series"]


def __getattr__(name):  # lazy: importing the package imports no torch
    if name in ("Trajectory",):
        from . import analysis

        return getattr(analysis, name)
    if name == "TrajectoryResult":
        from . import result

        return result.TrajectoryResult
    if name in ("CheckpointSeries", "load_series"):
        from . import series

        return getattr(series, name)
    raise AttributeError(name)

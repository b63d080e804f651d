"""Every analysis nnvitals knows, declared once: class, command, options, views and page.

An entry names its analysis class, the ``nnvitals`` command that runs it and the command's
positional arguments, which of the class's parameters are basic (shown first, in this order;
every other parameter the CLI offers is advanced), the file stem of its outputs, its views (the
figures a batch run writes, the summary text it prints), its headline numbers and its page in
the app (None: a command only, no page). Everything is named by import path
(``"module:attribute"``) so that reading the registry imports nothing: the CLI's ``--help``
stays instant and ``analyses`` never imports Panel. ``analyses/__init__.py``, the CLI
(``dashboard/cli.py``) and the app's navigation read it; adding an analysis is one entry here
plus its family package.

A parameter's command-line option is ``--`` + its name with ``-`` for ``_`` (a Boolean whose
default is True: ``--no-NAME``) unless :data:`CLI_NAMES` or the entry's ``cli_names`` says
otherwise; :data:`NOT_OPTIONS` are never options.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

#: parameters no command offers as an option (``model`` is a positional argument, progress is ``--quiet``)
NOT_OPTIONS = frozenset({"name", "model", "show_progress"})
#: parameters every command shows in its "execution" group, in this order
EXECUTION = ("dtype", "device", "runner", "cache")
#: option names that are not derived from the parameter's name (every command)
CLI_NAMES = {"runner": "--dask"}


def resolve(path: str) -> Any:
    """The object at ``"package.module:attribute"`` (imported on first use)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Positional:
    """A positional argument of a command: the parameter it sets (``nargs="+"``: a list)."""

    param: str
    metavar: str
    help: str
    nargs: str | None = None


@dataclass(frozen=True)
class Entry:
    """One analysis: see the module docstring. ``page_of``/``tab``: the app shows it on another
    entry's page, on this tab (IBP and Lipschitz share the Bounds page). ``page`` None: no page
    of its own (yet): the app's navigation skips the entry, the CLI still offers its command.
    ``numbers``: the keys of its result's summary that are its headline numbers (``nnvitals
    report``; a nested ``models`` dict is read for its first model). ``runnable``: it needs a
    model it can run (a .pt2 export, a demo name or ``module:factory``), not weights alone."""

    command: str
    family: str
    title: str
    cls: str
    result: str
    help: str
    description: str
    positional: tuple[Positional, ...]
    basic: tuple[str, ...]
    stem: str
    figures: str
    summary: str
    page: str | None = None
    headline: str = ""
    numbers: tuple[str, ...] = ()
    runnable: bool = False
    tab: str | None = None
    page_of: str | None = None
    cli_names: dict[str, str] = field(default_factory=dict)

    @property
    def analysis_class(self) -> type:
        return resolve(self.cls)

    @property
    def result_class(self) -> type:
        return resolve(self.result)

    def option_name(self, name: str) -> str:
        """The command-line option of parameter ``name``."""
        explicit = self.cli_names.get(name) or CLI_NAMES.get(name)
        if explicit:
            return explicit
        p = self.analysis_class.param[name]
        flag = name.replace("_", "-")
        return f"--no-{flag}" if type(p).__name__ == "Boolean" and p.default is True else f"--{flag}"

    def options(self) -> tuple[list[str], list[str], list[str]]:
        """The parameters the command offers as options: (basic, execution, advanced), in order."""
        params = self.analysis_class.param
        taken = NOT_OPTIONS | {p.param for p in self.positional}
        names = [n for n in params if n not in taken]
        basic = [n for n in self.basic if n in names]
        execution = [n for n in EXECUTION if n in names and n not in basic]
        advanced = [n for n in names if n not in basic and n not in execution]
        return basic, execution, advanced


_MODEL = "checkpoint path, Hugging Face directory, demo name or module:factory"
_RUNNABLE = "runnable model: .pt2 export, demo name or package.module:factory"
_BOUNDS = ("data", "data_range", "max_samples", "seed")

ENTRIES: tuple[Entry, ...] = (
    Entry(
        command="spectra",
        family="spectra",
        title="Spectra",
        cls="analyses.spectra.analysis:SpectralAnalysis",
        result="analyses.spectra.analysis:SpectralResult",
        help="heavy-tailed spectral analysis (ESD, power-law alpha, FARMS) of every weight matrix",
        description="Spectral analysis of every weight matrix of MODEL; writes DIR/spectra.csv, "
        "DIR/summary.json, DIR/spectra.nnv (the result, for notebooks and the app) and the main figures.",
        positional=(Positional("model", "MODEL", _MODEL),),
        basic=("farms", "xmin_rule", "layers", "randomize", "farms_rows", "farms_q_ratio", "farms_windows"),
        stem="spectra",
        figures="analyses.spectra.views:main_figures",
        summary="analyses.spectra.views:summary_text",
        numbers=(
            "alpha",
            "alpha_weighted",
            "log_norm",
            "log_spectral_norm",
            "stable_rank",
            "layers_analysed",
            "over_trained",
            "under_trained",
        ),
        page="dashboard.pages.spectra:SpectraPage",
    ),
    Entry(
        command="orbits",
        family="orbits",
        title="Orbits",
        cls="analyses.orbits.analysis:OrbitAnalysis",
        result="analyses.orbits.analysis:OrbitResult",
        help="NERO plots: model scores along rotation / shift / scale / flip orbits",
        description="Scores of one or more models on every sample transformed by every sampled group "
        "element; writes DIR/orbits.csv, DIR/summary.json, DIR/orbits.nnv and the figures.",
        positional=(Positional("model", "MODEL", _RUNNABLE, nargs="+"),),
        basic=(
            "data",
            "split",
            "group",
            "steps",
            "shift_range",
            "shift_step",
            "scale_range",
            "scale_step",
            "score",
            "classes",
            "max_samples",
            "seed",
        ),  # fmt: skip
        stem="orbits",
        figures="analyses.orbits.views:main_figures",
        summary="analyses.orbits.views:summary_text",
        headline="{group} orbit, {elements} elements x {samples} samples of {data}:",
        runnable=True,
        numbers=("gap", "mean_score", "accuracy", "accuracy_gap", "best", "worst", "elements", "samples"),
        page="dashboard.pages.orbits:OrbitsPage",
    ),
    Entry(
        command="connectivity",
        family="connectivity",
        title="Connectivity",
        cls="analyses.connectivity.analysis:ModeConnectivity",
        result="analyses.connectivity.analysis:ConnectivityResult",
        help="linear mode connectivity: loss barrier between two models, before and after weight matching",
        description="Loss and accuracy along the linear path between MODEL_A and MODEL_B, naive and after "
        "permutation alignment (Git Re-Basin); writes DIR/connectivity.csv, DIR/layers.csv, "
        "DIR/summary.json, DIR/connectivity.nnv, DIR/model_b_aligned.safetensors and the figures.",
        positional=(
            Positional("model", "MODEL_A", "demo name, .pt2 export, module:factory or checkpoint"),
            Positional("model_b", "MODEL_B", "a model of the same architecture"),
        ),
        basic=(
            "models",
            "data",
            "match",
            "points",
            "bn_reset",
            "repair",
            "seed",
            "max_iter",
            "batch_size",
            "engine",
        ),  # fmt: skip
        cli_names={"models": "--also"},
        stem="connectivity",
        figures="analyses.connectivity.views:main_figures",
        summary="analyses.connectivity.views:summary_text",
        headline="connectivity of {model} (A) and {model_b} (B), {points} points per path:",
        numbers=(
            "barrier_naive",
            "barrier_matched",
            "acc_barrier_naive",
            "acc_barrier_matched",
            "l2_before",
            "l2_after",
        ),
        page="dashboard.pages.connectivity:ConnectivityPage",
    ),
    Entry(
        command="ibp",
        family="bounds",
        title="IBP tightness",
        cls="analyses.bounds.analysis:IBPTightness",
        result="analyses.bounds.analysis:IBPResult",
        help="IBP tightness per layer, ReLU stability, certified accuracy at eps",
        description="Interval bound propagation through MODEL around each sample (L-inf ball of radius "
        "--eps): local tightness per layer, ReLU stability, clean and certified accuracy; writes "
        "DIR/ibp.csv, DIR/summary.json, DIR/ibp.nnv and the figures.",
        positional=(Positional("model", "MODEL", _RUNNABLE),),
        basic=(*_BOUNDS, "eps", "eps_sweep", "spec", "relu"),
        stem="ibp",
        figures="analyses.bounds.views:ibp_figures",
        summary="analyses.bounds.views:ibp_summary_text",
        headline="IBP tightness of {model} on {data}:",
        runnable=True,
        numbers=("certified_accuracy", "clean_accuracy", "tightness", "unstable_fraction", "eps", "samples"),
        page="dashboard.pages.bounds:BoundsPage",
        tab="ibp",
    ),
    Entry(
        command="lipschitz",
        family="bounds",
        title="Lipschitz",
        cls="analyses.bounds.analysis:LipschitzBounds",
        result="analyses.bounds.analysis:LipschitzResult",
        help="Lipschitz upper bound (product of layer norms) vs lower bound (Jacobian norms)",
        description="Certified upper bound (product of the layers' operator norms) and empirical lower "
        "bound (largest input-Jacobian spectral norm over train, test and midpoints) per layer; writes "
        "DIR/lipschitz.csv, DIR/jacobian_norms.csv, DIR/summary.json, DIR/lipschitz.nnv and the figures.",
        positional=(Positional("model", "MODEL", _RUNNABLE),),
        basic=(*_BOUNDS, "mixes", "per_layer", "sharpen", "iters"),
        stem="lipschitz",
        figures="analyses.bounds.views:lipschitz_figures",
        summary="analyses.bounds.views:lipschitz_summary_text",
        headline="Lipschitz bounds of {model} on {data}:",
        runnable=True,
        numbers=("upper", "lower", "ratio", "lower_mean"),
        page="dashboard.pages.bounds:BoundsPage",
        tab="lipschitz",
        page_of="ibp",
    ),
    Entry(
        command="track",
        family="trajectory",
        title="Trajectory",
        cls="analyses.trajectory.analysis:Trajectory",
        result="analyses.trajectory.result:TrajectoryResult",
        help="vital signs over training: the analyses on every checkpoint of a series",
        description="Runs the chosen analyses (default: every one that applies) on every checkpoint of "
        "CHECKPOINTS (a directory named by step or epoch, a series.json, or checkpoint files), each "
        "through the result store; writes DIR/trajectory.csv (checkpoint, step, analysis, metric, layer, "
        "value; with --baseline also delta), DIR/summary.json, DIR/trajectory.nnv, the figures and "
        "DIR/report.html (an offline HTML report).",
        positional=(
            Positional(
                "series",
                "CHECKPOINTS",
                "a directory of checkpoints, a series.json, or several checkpoint files",
                nargs="+",
            ),
        ),
        basic=("architecture", "analyses", "baseline", "data", "overrides"),
        stem="trajectory",
        figures="analyses.trajectory.views:main_figures",
        summary="analyses.trajectory.views:summary_text",
        numbers=("computed", "from_store"),
        page="dashboard.pages.trajectory:TrajectoryPage",
    ),
)


@dataclass(frozen=True)
class View:
    """A page of the app that is not one analysis's: it reads several (the Vitals landing page, built
    from the store's results of every analysis). Its class is built with ``picker``, ``settings`` and
    ``app`` (the session's :class:`dashboard.app.NNVitalsApp`: ``app.page = slug`` opens another page,
    ``app.get_page(slug)`` gives it)."""

    slug: str
    title: str
    page: str


#: pages of several analyses, shown before the analyses' own pages (the first is the landing page)
VIEWS: tuple[View, ...] = (View("vitals", "Vitals", "dashboard.pages.vitals:VitalsPage"),)

#: entries by command name
BY_COMMAND: dict[str, Entry] = {e.command: e for e in ENTRIES}


def entry(command: str) -> Entry:
    return BY_COMMAND[command]


def exported_names() -> dict[str, str]:
    """What ``analyses`` exports lazily: class name -> ``"module:attribute"`` (analyses and results)."""
    out: dict[str, str] = {}
    for e in ENTRIES:
        for path in (e.cls, e.result):
            out[path.rpartition(":")[2]] = path
    return out

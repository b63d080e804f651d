"""The Trajectory page: the vital signs over training, checkpoint by checkpoint.

Pick a checkpoint series (the zoo's ``cnn-train`` by default, or a directory under the server's
``--allow-dir`` holding checkpoints named by step or a ``series.json``), the analyses (by default two
cheap ones, with few samples: :data:`PAGE_DEFAULTS`) and optionally a pinned baseline step; Run
runs a :class:`~analyses.trajectory.analysis.Trajectory` in the job panel (progress, Cancel; every
single result goes through the store, so a rerun computes only what is new). The views are
:mod:`analyses.trajectory.views`: per-layer alpha as a layer x step heatmap, the mean alpha, IBP
certified accuracy and tightness, the Lipschitz bounds and their ratio, the NERO gap and the loss
barrier along training; with a baseline, "Difference to the baseline" draws each reading minus its
value there.

**Tap a step** (a marker of any plot over steps, or pick it in "Checkpoint") and that checkpoint
becomes the model of the other pages: it is saved as a ``.pt2`` program (a weights-only checkpoint
run in the series' architecture, :meth:`Trajectory.export_checkpoint`) in the session's upload
folder and handed to the sidebar's picker (:meth:`ModelPicker.add_file`), so Spectra, Bounds and
Orbits analyse it. The page itself keeps showing the series (a new sidebar model does not rerun it).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import holoviews as hv
import panel as pn
import param

from analyses.core.errors import NNVitalsError
from analyses.trajectory import views
from analyses.trajectory.analysis import ANALYSES, Trajectory
from analyses.trajectory.series import CHECKPOINT_SUFFIXES, MANIFEST, load_series, parse_step
from analyses.zoo import demo_series, series_names

from ..components import links
from ..components.jobs import JobPanel, how_obtained, saved_in
from ..components.page import AnalysisPage, plot_grid, plot_pane
from ..components.settings_form import WIDGET_WIDTH

log = logging.getLogger("nnvitals.app")

#: the label of the analyses' checkboxes (above them, and in the link note)
ANALYSES_LABEL = "Analyses on every checkpoint"

#: the page's defaults: cheap analyses with few samples (the CLI's ``track`` runs every one)
PAGE_DEFAULTS: dict[str, Any] = {
    "analyses": ["spectra", "ibp"],
    "overrides": {
        "ibp": {"max_samples": 64},
        "lipschitz": {"max_samples": 64, "mixes": 32},
        "orbits": {"max_samples": 64, "steps": 12},
        "connectivity": {"points": 7},
    },
}
#: how deep and how many directories the listing of ``--allow-dir`` looks at
LIST_MAX_DEPTH = 3
LIST_MAX_DIRS = 200
#: the "Pinned baseline" choice for none (a string: Panel shows a None value as an empty box)
NO_BASELINE = "none"
#: the analyses' names in the page
TITLES = {"spectra": "Spectra", "ibp": "IBP tightness", "lipschitz": "Lipschitz", "orbits": "Orbits (NERO)",
          "connectivity": "Connectivity (barrier)"}  # fmt: skip


def list_series(allow_dirs: tuple[Path, ...]) -> dict[str, str]:
    """Directories under ``allow_dirs`` that hold a series (a ``series.json``, or two or more
    checkpoint files or ``checkpoint-*`` folders named by step): label -> path. Looks at directory
    entries only (never opens a file)."""
    found: dict[str, str] = {}
    seen = 0
    for root in allow_dirs:
        stack = [(Path(root), 0)]
        while stack and seen < LIST_MAX_DIRS:
            d, depth = stack.pop()
            seen += 1
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            names = {e.name for e in entries}
            steps = [
                e.name for e in entries
                if not e.name.startswith(".") and parse_step(Path(e.name).stem if e.is_file(follow_symlinks=False)
                                                             else e.name) is not None
                and (e.is_dir(follow_symlinks=False) or Path(e.name).suffix.lower() in CHECKPOINT_SUFFIXES)
            ]  # fmt: skip
            if MANIFEST in names or len(steps) >= 2:
                rel = d.relative_to(root) if d != Path(root) else Path(".")
                found[f"{Path(root).name}/{rel}".rstrip("/.") + "/"] = str(d)
            if depth < LIST_MAX_DEPTH:
                stack += [(Path(e.path), depth + 1) for e in entries
                          if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]  # fmt: skip
    return dict(sorted(found.items()))


def series_label(source: str) -> str:
    """A series as the page names it: the demo's name, else its directory's name."""
    for name in series_names():
        if str(demo_series(name)) == source:
            return name
    return Path(source).name


class TrajectoryPage(AnalysisPage):
    """The Trajectory page (see the module docstring): ``TrajectoryPage(series="runs/ckpts")``."""

    slug = "trajectory"
    title = "Trajectory"
    question = "How do the vital signs move while the network trains?"

    series = param.String(
        default="", doc="The series shown: a demo series' directory or one under --allow-dir."
    )
    result = param.Parameter(default=None, doc="The current TrajectoryResult.")
    step = param.Integer(default=None, allow_None=True, doc="The checkpoint picked (its step).")
    picked = param.Parameter(default=None, doc="The last checkpoint handed to the picker (its .pt2 file).")

    def build(self, model: Any) -> None:
        series = model if isinstance(model, str | Path) and model else None
        self._demo = {f"{n} (demo)": str(demo_series(n)) for n in series_names()}
        dirs = tuple(getattr(self.picker, "allow_dirs", ()) or self.settings.allow_dirs or ())
        self._allow = tuple(Path(d).resolve() for d in dirs)
        self._server = {f"server: {k}": v for k, v in list_series(self._allow).items()} if self._allow else {}
        options = {**self._demo, **self._server}
        self.series = str(series) if series is not None else next(iter(self._demo.values()))
        if self.series not in options.values():
            options[series_label(self.series)] = self.series
        self.pick_jobs = JobPanel()
        self._streams: list[Any] = []
        self._tmp: Path | None = None
        self._series_select = pn.widgets.Select(
            name="Series", options=options, value=self.series, width=WIDGET_WIDTH
        )
        self._series_select.param.watch(self._on_series, "value")
        self._analyses = pn.widgets.CheckBoxGroup(
            name="Analyses", options={TITLES[k]: k for k in ANALYSES}, value=list(PAGE_DEFAULTS["analyses"]),
            inline=False, css_classes=["nnv-traj-analyses"],
        )  # fmt: skip
        self._baseline = pn.widgets.Select(
            name="Pinned baseline", options={NO_BASELINE: NO_BASELINE}, width=WIDGET_WIDTH
        )
        self._relative = pn.widgets.Checkbox(
            name="Difference to the baseline", value=False, css_classes=["nnv-traj-relative"]
        )
        self._relative.param.watch(lambda _e: self._draw(), "value")
        self._baseline.param.watch(lambda _e: self._draw(), "value")
        self._checkpoint = pn.widgets.Select(name="Checkpoint", options={}, width=WIDGET_WIDTH)
        self._opening = False  # a link's settings are being set: the series' change runs nothing yet
        self._use = pn.widgets.Button(name="Make it the model of the other pages", button_type="primary",
                                      button_style="outline", width=290, align="end", css_classes=["nnv-traj-use"])  # fmt: skip
        self._use.on_click(lambda _e: self.pick_step(self._checkpoint.value))
        self.controls = self.controls_column(
            "Trajectory",
            self._series_select,
            pn.pane.Markdown(ANALYSES_LABEL, margin=(5, 10, 0, 10)),
            self._analyses,
            self._baseline,
            self._relative,
        )
        self._plots = plot_grid(
            pn.pane.Markdown("*The trajectory is running …*"), css_classes=["nnv-traj-plots"]
        )
        self._heat = pn.Column(sizing_mode="stretch_width", css_classes=["nnv-traj-heat"])
        self._picked_text = pn.pane.Markdown(
            "Tap a step (a marker of a plot) to make that checkpoint the model of the other pages.",
            css_classes=["nnv-traj-picked"], sizing_mode="stretch_width",
        )  # fmt: skip
        self.main = self.main_column(
            "Trajectory",
            f"{self.question} The analyses on every checkpoint of a training run, through the result store.",
            pn.Column(
                pn.Row(self._checkpoint, self._use),  # on the left, the button level with the select
                self._picked_text,
                self.pick_jobs,
                self._heat,
                self._plots,
                name="Readings over training",
                sizing_mode="stretch_width",
            ),
        )
        self._list_steps()
        self._checkpoint.param.watch(lambda e: setattr(self, "step", e.new), "value")
        self.param.watch(self._update_analysing, "series")

    # ------------------------------------------------------------------ the series
    def _on_series(self, event) -> None:
        self.series = event.new
        self.result = None
        self._list_steps()
        if not self._opening:  # a link's series runs once the page starts
            self.run()

    def _check_allowed(self, source: str) -> None:
        """A series from the server: inside ``--allow-dir`` (the demos always), and no architecture
        that imports code other than the zoo's."""
        if source in self._demo.values():
            return
        from ..components.model_picker import resolve_allowed

        resolve_allowed(source, self._allow)
        series = load_series(source)
        arch = series.architecture
        if isinstance(arch, str) and ":" in arch and not arch.startswith("analyses.zoo."):
            raise NNVitalsError(
                f"series {series_label(source)}: its architecture {arch!r} imports code; from the app only "
                "a .pt2 export or a demo model name may be the architecture"
            )
        if isinstance(arch, str) and arch.endswith(".pt2"):
            resolve_allowed(arch, self._allow)

    def _list_steps(self) -> None:
        """The series' steps (names only: nothing is opened) into the baseline and checkpoint selects."""
        try:
            s = load_series(self.series)
        except NNVitalsError as e:
            self.jobs.show_error(str(e))
            return
        self._unit = s.unit
        self._names = {c.step: c.name for c in s}
        self._baseline.options = {NO_BASELINE: NO_BASELINE, **{f"{s.unit} {c.step}": c.step for c in s}}
        self._checkpoint.options = {f"{s.unit} {c.step} ({c.name})": c.step for c in s}
        self._checkpoint.value = s.steps[-1]

    def analysing_text(self) -> str:
        return f"Series: **{series_label(self.series)}**" if self.series else "Series: *none*"

    def on_picker(self, event: Any) -> None:
        """The sidebar's model changed (maybe by a tap here): the page keeps showing its series."""
        self._update_analysing()

    def set_model(self, model: Any, run: bool = True) -> None:
        """Show the series ``model`` (a directory, or a demo series' name)."""
        source = str(demo_series(model)) if model in series_names() else str(model)
        options = dict(self._series_select.options)
        if source not in options.values():
            options[series_label(source)] = source
            self._series_select.options = options
        if self._series_select.value != source:
            self._series_select.value = source  # _on_series runs it
        elif run:
            self.run()

    def analysed_models(self) -> list[Any]:
        """None of the picker's models: the page analyses its series (named by :meth:`analysing_text`)
        and never follows the picker."""
        return []

    # ------------------------------------------------------------------ runs
    def trajectory(self) -> Trajectory:
        """What Run runs: the series with the chosen analyses and the page's defaults."""
        kinds = list(self._analyses.value)
        if not kinds:
            raise NNVitalsError("analyses: none chosen; tick at least one")
        return Trajectory(
            series=self.series, analyses=kinds, overrides=PAGE_DEFAULTS["overrides"],
            baseline=self.baseline_step(), show_progress=False, runner=self.settings.runner,
        )  # fmt: skip

    def job(self):
        self._check_allowed(self.series)
        traj = self.trajectory()
        return f"Trajectory of {series_label(self.series)}", self.work(traj)

    def show(self, result) -> None:
        self.result = result
        text = views.summary_text(result)
        how = how_obtained(result, float(result.meta.get("seconds", 0) or 0))
        self._summary.object = f"{text}\n\n*{how}*".replace("\n", "  \n")
        self._draw()

    def baseline_step(self) -> int | None:
        """The pinned baseline's step (None: no baseline)."""
        value = self._baseline.value
        return None if value in (None, NO_BASELINE) else int(value)

    def _relative_step(self) -> Any:
        base = self.baseline_step()
        if not self._relative.value or base is None or self.result is None or base not in self.result.steps:
            return False
        return int(base)

    def _draw(self) -> None:
        r = self.result
        if r is None:
            return
        rel = self._relative_step()
        have = set(r.table["analysis"])
        figs: list[tuple[str, Any]] = []
        if "spectra" in have:
            figs.append(("mean-alpha", views.mean_alpha_plot(r, relative=rel)))
        if "ibp" in have:
            figs += [
                ("ibp", views.ibp_plot(r, relative=rel)),
                ("tightness", views.tightness_plot(r, relative=rel)),
            ]
        if "lipschitz" in have:
            figs += [("lipschitz", views.lipschitz_plot(r, relative=rel)),
                     ("lipschitz-ratio", views.lipschitz_ratio_plot(r, relative=rel))]  # fmt: skip
        if "orbits" in have:
            figs.append(("nero-gap", views.nero_gap_plot(r, relative=rel)))
        if "connectivity" in have:
            figs.append(("barrier", views.barrier_plot(r, relative=rel)))
        self._streams = []
        for _, fig in figs:
            self._tappable(fig)
        self._views = dict(figs)
        self._plots.objects = [plot_pane(f, f"nnv-traj-{name}") for name, f in figs] or [
            pn.pane.Markdown("No readings: see the errors in the summary.")
        ]
        if "spectra" in have:
            heat = views.alpha_heatmap(r)
            self._views["alpha-heatmap"] = heat
            self._heat.objects = [plot_pane(heat, "nnv-traj-alpha-heatmap")]
        else:
            self._heat.objects = []

    def _tappable(self, fig: Any) -> None:
        """Tapping a step marker of ``fig`` picks that checkpoint."""
        elements = fig.values() if isinstance(fig, hv.Overlay) else [fig]
        for el in elements:
            if isinstance(el, hv.Scatter) and "checkpoint" in [d.name for d in el.vdims]:
                el.opts(active_tools=["tap"], backend="bokeh")
                stream = hv.streams.Selection1D(source=el, index=[])
                stream.add_subscriber(lambda index, el=el: self._on_tap(el, index))
                self._streams.append(stream)

    def _on_tap(self, element: Any, index: list[int]) -> None:
        if not index:
            return
        steps = element.dimension_values("step")
        i = int(index[0])
        if 0 <= i < len(steps):
            self.pick_step(int(steps[i]))

    # ------------------------------------------------------------------ links (dashboard.components.links)
    def link_widgets(self) -> list[Any]:
        """The series (a demo's or one under --allow-dir: only the select's options), the analyses,
        the pinned baseline and the difference to it, in the order a link sets them (the series
        first: it lists the steps the baseline is chosen from)."""
        from ..components.links import Field

        return [
            Field("series", self._series_select.name, self._series_select),
            Field("analyses", ANALYSES_LABEL, self._analyses),
            Field("baseline", self._baseline.name, self._baseline),
            Field("relative", self._relative.name, self._relative),
        ]

    def open_link(self, link: Any) -> None:
        self._opening = True
        try:
            super().open_link(link)
        finally:
            self._opening = False
        self._link_model = None  # the page shows its series, never the link's model: select on its result

    def link_selection(self) -> dict[str, str]:
        """The checkpoint chosen (its step), when it is not the last one (the page's default)."""
        values = list(self._checkpoint.options.values())
        if self.result is None or not values or self._checkpoint.value in (None, values[-1]):
            return {}
        return {"select": str(self._checkpoint.value)}

    def apply_link_selection(self, values: dict[str, str]) -> str | None:
        text = values.get("select")
        if text is None:
            return None
        steps = list(self._checkpoint.options.values())
        step, problem = links.link_choice(text, steps, "a step of the series")
        if step is not None:
            self._checkpoint.value = step
        return problem

    # ------------------------------------------------------------------ one checkpoint, all pages
    def _out_dir(self) -> Path:
        if self.picker is not None:
            d = Path(self.picker.upload_dir)
        else:
            if self._tmp is None:
                import tempfile

                self._tmp = Path(tempfile.mkdtemp(prefix="nnvitals-ckpt-"))
            d = self._tmp
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pick_step(self, step: Any) -> None:
        """Make the checkpoint at ``step`` the sidebar's model: saved as a ``.pt2`` (off the event
        loop) and handed to the picker; the other pages then analyse it."""
        if step is None:
            return
        step = int(step)
        self.step = step
        self._checkpoint.value = step
        unit = getattr(self, "_unit", "step")
        name = series_label(self.series)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "series"
        path = self._out_dir() / f"{stem}-{unit}{step}.pt2"
        self._picked_text.object = f"Saving **{name}** at {unit} {step} …"
        traj = Trajectory(series=self.series, show_progress=False)

        def work(progress, cancel):
            progress(0, 1, f"{unit} {step}")
            return traj.export_checkpoint(step, path, progress, cancel)

        def clear() -> None:  # failed (the job panel says why) or cancelled
            self._picked_text.object = ""

        self.pick_jobs.submit(f"Checkpoint {unit} {step}", work, lambda p: self._picked(p, step),
                              on_error=lambda _m: clear(), on_cancel=clear, describe=saved_in)  # fmt: skip

    def _picked(self, path: Path, step: int) -> None:
        unit = getattr(self, "_unit", "step")
        name = series_label(self.series)
        self.picked = str(path)
        if self.picker is not None:
            self.picker.add_file(path, f"{name} {unit} {step}")
            self._picked_text.object = (
                f"**{name}** at {unit} {step} is now the model picked in the sidebar: open **Vitals**, "
                "**Spectra** or **IBP tightness / Lipschitz** to analyse it (this page keeps the series)."
            )
        else:
            self._picked_text.object = f"Saved **{path}**."
        log.info("checkpoint %s %s saved to %s", unit, step, path)

    def close(self) -> None:
        self.jobs.close("page closed")
        self.pick_jobs.close("page closed")
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ export
    def figures(self) -> dict[str, Any]:
        r = self.result
        return {} if r is None else {k: (lambda f=f: f) for k, f in views.main_figures(r).items()}

    def tables(self) -> dict[str, Any]:
        r = self.result
        return {} if r is None else {"trajectory": lambda: r.table}

    def export_subject(self) -> str:
        return series_label(self.series)

"""What every analysis page shares: its settings, Run button, job panel, picker wiring, export and
frame (heading, summary, tabs), and plot panes.

A page (``dashboard/pages/<family>.py``) subclasses :class:`AnalysisPage` (its registry entry is
the one that names it as its page) and adds only its own layout, extra controls and linked views. The
base class owns:

- the analysis's setting widgets, generated from its Param parameters (:meth:`settings_form`,
  :mod:`dashboard.components.settings_form`): the entry's basic ones, the rest in a collapsed
  "Advanced" card, each widget's kind from the parameter's type (``widget_types`` where a page
  wants another), its label from the parameter's ``label``;
- the Run button and the sidebar column (:meth:`controls_column`), the :class:`JobPanel`
  (progress, Cancel, errors) and :meth:`run`: invalid settings are listed instead of running,
  else the page's :meth:`job` runs in the job panel and :meth:`show` draws its result;
- the sidebar's picker: a new model goes to :meth:`on_picker`, new sources to :meth:`on_sources`;
- the export panel (:attr:`export_panel`, :meth:`export`) over the page's :meth:`figures` and
  :meth:`tables`.

``controls`` is the sidebar column and ``main`` the page's main column (:func:`page_main`); in the
app the sidebar holds the controls, in a notebook the page shows both side by side.

While the page's job panel runs a new analysis, the result still on show is marked stale: the job
panel says "Showing the previous result — running …" and the rest of the page (summary, plots,
tables) is dimmed until the new result replaces it or the run is cancelled or fails
(:func:`dim_while_stale`; :func:`page_main` wires it, the app wires pages that build their own).

Under its heading every page says which model(s) it analyses, live: "Analysing: **mlp**" (Orbits
adds the models it compares with, Connectivity says "Model A: … · Model B: …"). The line is placed
when a page sets ``main`` and follows the page's ``model``/``models`` and the sidebar's picker; the
models are named as the sidebar's select names them (:meth:`ModelPicker.name_of`), and the first
model of every page is the picker's (see :mod:`dashboard.components.model_picker`), so the sidebar
and the page never name different models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import panel as pn
import param

from analyses import registry
from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS

from .. import style
from ..settings import AppSettings
from .export import ExportPanel, export_item, model_stem
from .jobs import JobPanel
from .settings_form import SettingsForm

#: how a stale result is drawn (added to the parts' own styles while their job panel runs)
STALE_STYLE = {"opacity": "0.45", "filter": "grayscale(60%)", "transition": "opacity 0.2s"}
#: the same properties undimmed: set, not dropped (Bokeh applies the styles it is sent and leaves a
#: property that is no longer among them as it was: the page stayed dimmed after every run)
FRESH_STYLE = {"opacity": "1", "filter": "none", "transition": "opacity 0.2s"}
#: CSS class of a part that shows a stale result
STALE_CLASS = "nnv-stale"
#: CSS class of the page's "Analysing: …" line
ANALYSING_CLASS = "nnv-analysing"
#: narrowest a plot gets in the pages' two-column grids (they wrap to one column below that)
PLOT_MIN_WIDTH = 380
#: parts of a page's main column never dimmed while a run is under way
UNDIMMED = ("nnv-page-head", "nnv-jobs", ANALYSING_CLASS)


def model_label(model: Any) -> str:
    """How a model is named on a page: a demo's name, a file's name, or a module's class."""
    if isinstance(model, str | Path):
        return str(model) if str(model) in DEMO_MODELS else Path(str(model)).name
    return type(model).__name__


#: what a job runs: ``work(progress, cancel)``
Work = Callable[[Any, Any], Any]


class AnalysisPage(pn.viewable.Viewer):
    """Base of the analysis pages (see the module docstring); ``controls`` and ``main`` are set by
    the subclass.

    ``picker``: the app's model picker (None in a notebook); ``settings``: the app's settings.
    """

    slug: str = ""
    title: str = ""
    #: parameters the page sets with controls of its own (no generated widget)
    own: tuple[str, ...] = ()
    #: parameters of the entry's basic ones that this page shows under "Advanced"
    advanced: tuple[str, ...] = ()
    #: widget kinds (or options) that differ from what the parameter's type gives
    widget_types: dict[str, Any] = {}

    controls: pn.Column

    def __init__(
        self,
        model: Any = None,
        picker: Any = None,
        settings: AppSettings | None = None,
        run: bool = True,
        link: Any = None,
        **params: Any,
    ):
        """``model``: what to analyse (a page comparing models takes a list; None: the picker's);
        ``run``: run at once (in the background when served); ``link``: a
        :class:`~dashboard.components.links.Link` whose settings the page takes before its first
        run and whose selection it takes once it shows a result of the link's model."""
        super().__init__(**params)
        self.picker = picker
        self._link_forms: list[tuple[str, SettingsForm]] = []
        #: notes on what the link this page opened with ignored or refused (one line each)
        self.link_notes: list[str] = []
        #: called with a line saying what of a link's selection was refused (the app shows it)
        self.link_report: Callable[[str], None] | None = None
        self._link_selection: dict[str, str] | None = None
        self._link_model: str | None = None
        self.settings = settings or AppSettings()
        self._main: pn.Column | None = None
        self.analysing = pn.pane.Markdown(
            "", css_classes=[ANALYSING_CLASS], sizing_mode="stretch_width", margin=(0, 10)
        )
        watched = [n for n in ("model", "models") if n in self.param]
        if watched:
            self.param.watch(self._update_analysing, watched)
        if picker is not None:
            picker.param.watch(self._update_analysing, ["model", "sources"])
        self.jobs = JobPanel()
        self._summary = summary_pane()
        self.forms: list[SettingsForm] = []
        self._run_button = pn.widgets.Button(
            name="Run", button_type="primary", sizing_mode="stretch_width", css_classes=["nnv-run"]
        )
        self._run_button.on_click(lambda _e: self.run())
        self.export_panel = ExportPanel(
            self.figures, self.tables, prefix=self.slug, subject=self.export_subject
        )
        self.build(model)
        #: the settings as the page opened with them (a link carries only those that differ)
        self.link_baseline = {k: f.text() for k, f in self.link_fields().items()}
        if link is not None:
            self.open_link(link)
        self.start(run)

    def build(self, model: Any) -> None:
        """Make the page's analysis object(s), ``controls`` and ``main`` for ``model``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ settings and controls
    @classmethod
    def entry(cls) -> registry.Entry:
        """The page's registry entry (:mod:`analyses.registry`): the first that names this page."""
        path = f"{cls.__module__}:{cls.__name__}"
        return next(e for e in registry.ENTRIES if e.page == path)

    def settings_form(
        self, analysis: param.Parameterized, command: str | None = None, **kw: Any
    ) -> SettingsForm:
        """The generated setting widgets of ``analysis``, from the registry entry ``command`` (else
        the page's); ``kw`` overrides the page's ``own``, ``advanced`` and ``widget_types``."""
        kw.setdefault("own", self.own)
        kw.setdefault("advanced", self.advanced)
        kw.setdefault("widget_types", self.widget_types)
        entry = registry.entry(command) if command else self.entry()
        form = SettingsForm(analysis, entry, **kw)
        self.forms.append(form)
        self._link_forms.append((entry.command, form))
        return form

    def controls_column(self, heading: str, *parts: Any) -> pn.Column:
        """The sidebar: ``#### heading``, ``parts``, the list of invalid settings, the Run button."""
        return pn.Column(
            section_heading(heading),
            *parts,
            *(form.problems for form in self.forms),
            self._run_button,
            sizing_mode="stretch_width",
            css_classes=["nnv-controls"],
        )

    def main_column(self, heading: str, text: str, *tabs: Any) -> pn.Column:
        """The page's main column (:func:`page_main`): ``## heading`` and ``text``, the job panel, the
        summary, then ``self.tabs``: ``tabs`` with Export last (:func:`page_tabs`), or the page's own."""
        if tabs:
            self.tabs = page_tabs(*tabs, export=self.export_panel)
        return page_main(self.slug, heading, text, self.jobs, self._summary, self.tabs)

    def start(self, run: bool) -> None:
        """Follow the sidebar's picker from now on and, with ``run``, run (once the page is built)."""
        if self.picker is not None:
            self.picker.param.watch(self.on_picker, ["model"])
            self.picker.param.watch(self.on_sources, ["sources"])
            if run and self._link_model is not None and self.picker.model != self._link_model:
                return  # the picker still checks the link's model: the page runs when it has it
            models = self.analysed_models()
            if run and models and self.picker.model is not None and models[0] != self.picker.model:
                # the picker changed while the page was built (a link's checked path): follow it
                self.on_picker(SimpleNamespace(obj=self.picker, new=self.picker.model))
                return
        if run:
            self.run(wait=0.3)

    def on_picker(self, event: Any) -> None:
        """The sidebar's model changed: analyse it."""
        self.set_model(event.obj.model)

    def on_sources(self, *_: Any) -> None:
        """The sidebar's models on offer changed (an upload, a rescan)."""

    def set_model(self, model: Any, run: bool = True) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ runs
    def setting_problems(self) -> list[str]:
        """Every invalid setting, one line each (label: what was expected, what was typed)."""
        return [line for form in self.forms for line in form.problem_lines()]

    def run(self, wait: float = 0.0) -> None:
        """Run the analysis with the current settings (in the background when served); with invalid
        settings show every problem instead (one line each), with another problem its one line.

        ``wait``: seconds to wait for a quick result (from the result store) to show it at once.
        """
        problems = self.setting_problems()
        if problems:
            self.jobs.cancel(quiet=True)
            head = (
                "Not run: fix this setting first"
                if len(problems) == 1
                else "Not run: fix these settings first"
            )
            self.jobs.show_error(head + "\n" + "\n".join(f"- {p}" for p in problems))
            return
        try:
            job = self.job()
        except NNVitalsError as e:
            self.jobs.show_error(str(e))
            return
        if job is not None:
            label, work = job
            self.jobs.submit(label, work, self._show_result, wait=wait)

    def job(self) -> tuple[str, Work] | None:
        """What Run runs: (its label, ``work(progress, cancel)``), or None when the page said why not.
        An :class:`NNVitalsError` is shown as the run's error."""
        raise NotImplementedError

    def show(self, result: Any) -> None:
        """Show a finished run's result."""
        raise NotImplementedError

    def _show_result(self, result: Any) -> None:
        """Show a run's result, then the selection of the link the page opened with (once)."""
        self.show(result)
        self._link_selected()

    # ------------------------------------------------------------------ links (dashboard.components.links)
    #: the URL keys of the page's selection (``select``, and Orbits' ``element``)
    link_selection_keys: tuple[str, ...] = ("select",)

    def link_fields(self) -> dict[str, Any]:
        """The settings a link carries, by URL key: every generated setting widget (by parameter name;
        a name two forms share is ``command.name`` for the second), the page's own
        (:meth:`link_widgets`) and the page's view choices (its Selector parameters: a plot's metric)."""
        from .links import Field

        fields: dict[str, Field] = {}
        for command, form in self._link_forms:
            for name, widget in form.widgets.items():
                key = name if name not in fields else f"{command}.{name}"
                fields[key] = Field(key, form.labels.get(name, name), widget, param=form.analysis.param[name])
        for f in self.link_widgets():
            fields.setdefault(f.key, f)
        for name, p in self.param.objects("existing").items():
            if isinstance(p, param.Selector) and name not in pn.viewable.Viewer.param:
                fields.setdefault(name, Field(name, p.label or name, owner=self, name=name))
        return fields

    def link_widgets(self) -> list[Any]:
        """The page's own setting widgets a link carries (:class:`~dashboard.components.links.Field`)."""
        return []

    def link_selection(self) -> dict[str, str]:
        """The selection as a link writes it (``{"select": "fc1.weight,fc2.weight"}``); the base
        class knows a page's ``selected`` list of names (Spectra's layers)."""
        if "selected" in self.param and getattr(self, "result", None) is not None and self.selected:
            return {"select": ",".join(self.selected)}
        return {}

    def apply_link_selection(self, values: dict[str, str]) -> str | None:
        """Select what a link's ``values`` name; returns one line when it cannot (None when done)."""
        text = values.get("select")
        if text is None or "selected" not in self.param:
            return None
        names = [n for n in text.split(",") if n]
        try:
            self.select(*names)
        except NNVitalsError as e:
            return f"Link: select={shown_text(text)}: {e}"
        return None

    def open_link(self, link: Any) -> None:
        """Take ``link``'s settings now (before the first run) and keep its selection for the first
        result of its model; what is ignored or refused goes to :attr:`link_notes`."""
        from .links import apply_settings

        self.link_notes = apply_settings(self, link.settings)
        unknown = [k for k in link.selection if k not in self.link_selection_keys]
        if unknown:
            self.link_notes.append(
                f"Link: {', '.join(unknown)} is no selection of the {self.title or self.slug} page (ignored)."
            )
        selection = {k: v for k, v in link.selection.items() if k in self.link_selection_keys}
        self._link_selection = selection or None
        self._link_model = getattr(link, "model_picked", None)

    def _link_selected(self) -> None:
        """Apply the link's selection when the result on show is of the link's model."""
        selection = self._link_selection
        if not selection:
            return
        models = self.analysed_models()
        if self._link_model is not None and (not models or str(models[0]) != self._link_model):
            return  # the picker's check of the link's model is still under way
        self._link_selection = None
        problem = self.apply_link_selection(selection)
        if problem:
            if self.link_report is not None:
                self.link_report(problem)
            else:  # the page is being built: the app reads its notes next
                self.link_notes.append(problem)

    def watch_link(self, callback: Callable[..., None]) -> None:
        """Call ``callback`` whenever the page's link may change (a setting, a selection, a result);
        watchers are added once per page."""
        if getattr(self, "_link_watched", False):
            return
        self._link_watched = True
        for f in self.link_fields().values():
            if f.widget is not None:
                f.widget.param.watch(callback, "value")
        names = [n for n in self.param if n != "name"]
        if names:
            self.param.watch(callback, names)

    @staticmethod
    def snapshot(analysis: param.Parameterized, **overrides: Any) -> Any:
        """A copy of ``analysis`` with its current settings (widgets may change while it runs)."""
        values = {k: v for k, v in analysis.param.values().items() if k != "name"}
        values.update(overrides)
        return type(analysis)(**values)

    @staticmethod
    def work(analysis: Any) -> Work:
        """``analysis.run`` as a job's work."""
        return lambda progress, cancel: analysis.run(progress=progress, cancel=cancel)

    # ------------------------------------------------------------------ export
    def figures(self) -> dict[str, Any]:
        """Figure builders by title (built when exported)."""
        return {}

    def tables(self) -> dict[str, Any]:
        """Table builders by title (CSV)."""
        return {}

    def export_subject(self) -> str:
        """The models of the page, for the export files' names ('rot-cnn-vs-rot-cnn-c4')."""
        return "-vs-".join(model_stem(model_label(m)) for m in self.analysed_models())

    def export(self, what: str, path: str | Path) -> Path:
        """Save figure or table ``what`` (a title from :meth:`figures`/:meth:`tables`, or its
        file-name form) to ``path``; the suffix picks the format (svg, png, pdf, html; csv)."""
        return export_item(self.figures(), self.tables(), what, path)

    # ------------------------------------------------------------------ which model(s)
    @property
    def main(self) -> pn.Column:
        """The page's main column; set by the subclass, which puts the "Analysing" line under its heading."""
        return self._main

    @main.setter
    def main(self, column: pn.Column) -> None:
        self._main = column
        if column is not None and self.analysing not in column.objects:
            objects = list(column.objects)
            at = next((i + 1 for i, o in enumerate(objects) if "nnv-page-head" in o.css_classes), 0)
            objects.insert(at, self.analysing)
            column.objects = objects
        self._update_analysing()

    def analysed_models(self) -> list[Any]:
        """The models the page analyses, the picker's first."""
        if "models" in self.param:
            return [m for m in self.models if m is not None]
        model = getattr(self, "model", None)
        return [] if model is None else [model]

    def model_name(self, model: Any) -> str:
        """``model`` as the sidebar names it (Markdown-escaped)."""
        from .model_picker import markdown_text

        name = self.picker.name_of(model) if self.picker is not None else model_label(model)
        return markdown_text(name)

    def analysing_text(self) -> str:
        """The "Analysing" line: the page's model(s), named as the sidebar names them."""
        models = self.analysed_models()
        if not models:
            return "Analysing: *no model*"
        text = f"Analysing: **{self.model_name(models[0])}**"
        if len(models) > 1:
            text += " · compared with " + ", ".join(f"**{self.model_name(m)}**" for m in models[1:])
        return text

    def _update_analysing(self, *_: Any) -> None:
        text = self.analysing_text()
        if self.analysing.object != text:
            self.analysing.object = text

    def sources(self) -> dict[str, Any]:
        """Every model on offer, label -> model: the picker's, or the demo zoo in a notebook."""
        if self.picker is not None:
            return dict(self.picker.sources)
        return {name: name for name in DEMO_MODELS}

    def __panel__(self):
        if self.picker is not None:  # in the app: the sidebar shows the controls
            return self.main
        return pn.Row(pn.Column(self.controls, width=300), self.main, sizing_mode="stretch_width")


def shown_text(text: str, limit: int = 80) -> str:
    """``text`` of a link as a message quotes it (printable, at most ``limit`` characters)."""
    from .model_picker import shown

    return shown(text, limit)


def holoviews_pane(obj: Any, **kw: Any) -> pn.pane.HoloViews:
    """A bokeh pane for one plot, its axes never linked to other panes' plots."""
    kw.setdefault("sizing_mode", "fixed")
    return pn.pane.HoloViews(obj, backend="bokeh", linked_axes=False, **kw)


def plot_pane(obj: Any, css_class: str, stretch: bool = True) -> pn.pane.HoloViews:
    """A bokeh pane filling its grid cell (``stretch``; one plot: a bokeh grid plot of several
    panels drawn in a hidden tab collapses to a few pixels) or at the plot's own size."""
    if not stretch:  # sized by the plot itself (its frame)
        return holoviews_pane(obj, css_classes=[css_class], sizing_mode=None)
    return holoviews_pane(obj, css_classes=[css_class], sizing_mode="stretch_width", min_width=PLOT_MIN_WIDTH)


def bokeh_pane(fig: Any, css_class: str) -> pn.pane.Bokeh:
    """A plain bokeh figure (no HoloViews: the live plots a new session draws first) filling its
    grid cell, as :func:`plot_pane` does for HoloViews objects."""
    fig.sizing_mode = "stretch_width"
    fig.min_width = PLOT_MIN_WIDTH
    fig.css_classes = [*fig.css_classes, css_class]  # the pane's model is the figure itself
    return pn.pane.Bokeh(fig, css_classes=[css_class], sizing_mode="stretch_width", min_width=PLOT_MIN_WIDTH)


def plot_grid(*objects: Any, **kw: Any) -> pn.GridBox:
    """Plots two per row, filling the page's width (one column below :data:`PLOT_MIN_WIDTH` each)."""
    return pn.GridBox(*objects, ncols=2, sizing_mode="stretch_width", **kw)


def note_pane(text: str) -> pn.pane.Markdown:
    """A short grey note: how to read or use the plots next to it."""
    return pn.pane.Markdown(text, styles=style.NOTE, css_classes=["nnv-note"], margin=(0, 10))


def summary_pane() -> pn.pane.Markdown:
    """The page's headline numbers (filled when a run is done)."""
    return pn.pane.Markdown(
        "", css_classes=["nnv-summary"], styles=style.SUMMARY, sizing_mode="stretch_width"
    )


def page_tabs(*tabs: Any, export: Any = None) -> pn.Tabs:
    """The page's tabs, all built up front (Panel's dynamic tabs load CSS from a CDN), Export last."""
    if export is not None:
        tabs = (*tabs, pn.Column(export, name="Export", sizing_mode="stretch_width"))
    return pn.Tabs(*tabs, dynamic=False, sizing_mode="stretch_width", css_classes=["nnv-tabs"])


def dim_while_stale(jobs: JobPanel, parts: list[Any]) -> None:
    """Dim ``parts`` (and mark them with the class ``nnv-stale``) while ``jobs`` runs a new analysis
    over the result they show (:attr:`JobPanel.stale`)."""

    def apply(stale: bool) -> None:
        for part in parts:
            styles = {k: v for k, v in (part.styles or {}).items() if k not in STALE_STYLE}
            classes = [c for c in part.css_classes if c != STALE_CLASS]
            styles.update(STALE_STYLE if stale else FRESH_STYLE)
            if stale:
                classes.append(STALE_CLASS)
            part.param.update(styles=styles, css_classes=classes)

    jobs.param.watch(lambda event: apply(event.new), "stale")
    if jobs.stale:
        apply(True)


def wire_stale(main: pn.Column, jobs: JobPanel) -> None:
    """Dim what ``main`` shows while ``jobs`` runs over the result on show: every part but the
    page's heading, its "Analysing" line and job panels. Done once per column."""
    if getattr(main, "_nnv_stale_wired", False):
        return
    parts = [o for o in main.objects if not set(UNDIMMED) & set(o.css_classes)]
    dim_while_stale(jobs, parts)
    main._nnv_stale_wired = True


def section_heading(text: str, margin: tuple[int, ...] = (5, 10, 0, 10)) -> pn.pane.Markdown:
    """``#### text``: a section's heading, one size on every page (:data:`style.HEADINGS`)."""
    return pn.pane.Markdown(f"#### {text}", margin=margin, stylesheets=[style.HEADINGS])


def page_head(markdown: str) -> pn.pane.Markdown:
    """A page's ``## heading`` and introduction (never dimmed while a run goes on)."""
    return pn.pane.Markdown(
        markdown, css_classes=["nnv-page-head"], sizing_mode="stretch_width", stylesheets=[style.HEADINGS]
    )


def page_main(slug: str, heading: str, text: str, *parts: Any) -> pn.Column:
    """The page's main column: ``## heading`` and ``text``, then ``parts`` (job panel, summary, tabs);
    what follows the job panel is dimmed while it runs over a result on show."""
    head = page_head(f"## {heading}\n{text}")
    main = pn.Column(head, *parts, sizing_mode="stretch_width", css_classes=["nnv-page", f"nnv-{slug}"])
    jobs = next((p for p in parts if isinstance(p, JobPanel)), None)
    if jobs is not None:
        wire_stale(main, jobs)
    return main

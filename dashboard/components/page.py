"""What every analysis page shares: its frame (heading, job panel, summary, tabs) and plot panes.

A page (``dashboard/pages/<family>.py``) subclasses :class:`AnalysisPage` and builds ``controls``
(its sidebar settings) and ``main`` (with :func:`page_main`); in the app the sidebar holds the
controls, in a notebook the page shows both side by side.

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

from pathlib import Path
from typing import Any

import panel as pn

from analyses.zoo import DEMO_MODELS

from .. import style
from ..settings import AppSettings
from .jobs import JobPanel

#: how a stale result is drawn (added to the parts' own styles while their job panel runs)
STALE_STYLE = {"opacity": "0.45", "filter": "grayscale(60%)", "transition": "opacity 0.2s"}
#: CSS class of a part that shows a stale result
STALE_CLASS = "nnv-stale"
#: CSS class of the page's "Analysing: …" line
ANALYSING_CLASS = "nnv-analysing"
#: parts of a page's main column never dimmed while a run is under way
UNDIMMED = ("nnv-page-head", "nnv-jobs", ANALYSING_CLASS)


def model_label(model: Any) -> str:
    """How a model is named on a page: a demo's name, a file's name, or a module's class."""
    if isinstance(model, str | Path):
        return str(model) if str(model) in DEMO_MODELS else Path(str(model)).name
    return type(model).__name__


class AnalysisPage(pn.viewable.Viewer):
    """Base of the analysis pages: ``controls`` and ``main`` are set by the subclass.

    ``picker``: the app's model picker (None in a notebook); ``settings``: the app's settings.
    """

    controls: pn.Column

    def __init__(self, picker: Any = None, settings: AppSettings | None = None, **params: Any):
        super().__init__(**params)
        self.picker = picker
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


def holoviews_pane(obj: Any, **kw: Any) -> pn.pane.HoloViews:
    """A bokeh pane for one plot, its axes never linked to other panes' plots."""
    kw.setdefault("sizing_mode", "fixed")
    return pn.pane.HoloViews(obj, backend="bokeh", linked_axes=False, **kw)


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
            if stale:
                styles.update(STALE_STYLE)
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


def page_main(slug: str, heading: str, text: str, *parts: Any) -> pn.Column:
    """The page's main column: ``## heading`` and ``text``, then ``parts`` (job panel, summary, tabs);
    what follows the job panel is dimmed while it runs over a result on show."""
    head = pn.pane.Markdown(
        f"## {heading}\n{text}", css_classes=["nnv-page-head"], sizing_mode="stretch_width"
    )
    main = pn.Column(head, *parts, sizing_mode="stretch_width", css_classes=["nnv-page", f"nnv-{slug}"])
    jobs = next((p for p in parts if isinstance(p, JobPanel)), None)
    if jobs is not None:
        wire_stale(main, jobs)
    return main

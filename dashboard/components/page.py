"""What every analysis page shares: its frame (heading, job panel, summary, tabs) and plot panes.

A page (``dashboard/pages/<family>.py``) subclasses :class:`AnalysisPage` and builds ``controls``
(its sidebar settings) and ``main`` (with :func:`page_main`); in the app the sidebar holds the
controls, in a notebook the page shows both side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import panel as pn

from analyses.zoo import DEMO_MODELS

from .. import style
from ..settings import AppSettings


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
    main: pn.Column

    def __init__(self, picker: Any = None, settings: AppSettings | None = None, **params: Any):
        super().__init__(**params)
        self.picker = picker
        self.settings = settings or AppSettings()

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


def page_main(slug: str, heading: str, text: str, *parts: Any) -> pn.Column:
    """The page's main column: ``## heading`` and ``text``, then ``parts`` (job panel, summary, tabs)."""
    head = pn.pane.Markdown(
        f"## {heading}\n{text}", css_classes=["nnv-page-head"], sizing_mode="stretch_width"
    )
    return pn.Column(head, *parts, sizing_mode="stretch_width", css_classes=["nnv-page", f"nnv-{slug}"])

"""Download buttons: each figure as SVG, PNG, PDF or standalone offline HTML; tables as CSV.

The files are made by :mod:`analyses.core.export` — the same functions the CLI and notebooks
use — so a figure downloaded from the app is the file ``nnvitals spectra --formats ...``
writes: SVG/PNG/PDF through matplotlib (no browser involved), HTML with BokehJS inlined
(opens offline). A page hands :class:`ExportPanel` two callables returning what can be
exported now: ``figures() -> {title: build}`` (``build()`` gives a HoloViews object) and
``tables() -> {title: build}`` (``build()`` gives a DataFrame); the panel asks again when
:meth:`ExportPanel.refresh` is called (after a new result). With ``subject() -> str`` (the model
analysed) every file name ends with it, so two models' exports do not overwrite each other:
``spectra_esd_grid-mlp.png``.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
import param

from analyses.core.errors import NNVitalsError
from analyses.core.export import save_figure, save_table

log = logging.getLogger("nnvitals.app")

FIGURE_FORMATS = ("svg", "png", "pdf", "html")
#: model file suffixes left out of a file name's subject part
MODEL_SUFFIXES = (".safetensors", ".pt2", ".pth", ".pt", ".bin", ".npz")
#: matplotlib's pyplot state is global: one export renders at a time
_render_lock = threading.Lock()

Builders = Callable[[], dict[str, Callable[[], Any]]]


def slug(text: str) -> str:
    """A file stem from a title: 'ESD of fc1.weight' -> 'esd_of_fc1.weight'."""
    s = re.sub(r"[^\w.\-]+", "_", text.strip().lower()).strip("_.")
    return s or "figure"


def file_stem(prefix: str, title: str, subject: str = "") -> str:
    """The stem of an exported file: ``<prefix>_<title>-<subject>`` ('spectra', 'ESD grid', 'mlp' ->
    'spectra_esd_grid-mlp'); a model file's suffix is left out of the subject."""
    stem = f"{prefix}_{slug(title)}"
    subject = model_stem(subject)
    return f"{stem}-{slug(subject)}" if subject else stem


def model_stem(name: str) -> str:
    """A model's name without its file suffix ('net.safetensors' -> 'net', 'mlp' -> 'mlp')."""
    name = str(name or "").strip()
    for suffix in MODEL_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def figure_bytes(obj: Any, fmt: str, stem: str = "figure") -> bytes:
    """The bytes of ``obj`` saved as ``fmt`` (svg, png, pdf, html) by :func:`save_figure`."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise NNVitalsError(f"format {fmt!r}: expected one of {', '.join(FIGURE_FORMATS)}")
    with tempfile.TemporaryDirectory(prefix="nnvitals-export-") as tmp, _render_lock:
        path = save_figure(obj, Path(tmp) / f"{stem}.{fmt}")
        return path.read_bytes()


def table_bytes(df: pd.DataFrame, stem: str = "table") -> bytes:
    """The bytes of ``df`` saved as CSV by :func:`save_table`."""
    with tempfile.TemporaryDirectory(prefix="nnvitals-export-") as tmp:
        return save_table(df, Path(tmp) / f"{stem}.csv").read_bytes()


class ExportPanel(pn.viewable.Viewer):
    """Pick a figure, download it in any format; download each table as CSV."""

    figure = param.Selector(default=None, objects=[], doc="The figure to download.")
    message = param.String(default="", doc="The last export error ('' when none).")

    def __init__(
        self,
        figures: Builders,
        tables: Builders,
        prefix: str = "nnvitals",
        subject: Callable[[], str] | None = None,
        **params: Any,
    ):
        super().__init__(**params)
        self._figures, self._tables, self.prefix = figures, tables, prefix
        self._subject = subject
        self._fig_select = pn.widgets.Select.from_param(self.param.figure, name="Figure", width=340)
        self._buttons = {
            fmt: pn.widgets.FileDownload(
                callback=self._figure_callback(fmt),
                filename=f"{prefix}.{fmt}",
                label=fmt.upper(),
                button_type="primary",
                button_style="outline",
                width=90,
                css_classes=[f"nnv-export-{fmt}"],
            )
            for fmt in FIGURE_FORMATS
        }
        self._table_row = pn.Row(sizing_mode="stretch_width")
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._layout = pn.Column(
            pn.pane.Markdown(
                "**Figures**: SVG, PNG and PDF are drawn with matplotlib (publication-ready, no browser "
                "needed); HTML is a standalone interactive page that opens offline.",
                margin=(0, 10),
            ),
            self._fig_select,
            pn.Row(*self._buttons.values()),
            pn.pane.Markdown("**Tables** as CSV:", margin=(10, 10, 0, 10)),
            self._table_row,
            self._alert,
            sizing_mode="stretch_width",
            css_classes=["nnv-export"],
        )
        self._table_titles: list[str] = []
        self.param.watch(self._update_names, "figure")
        self.refresh()

    def __panel__(self):
        return self._layout

    def refresh(self) -> None:
        """Ask the page again what can be exported (after a new result or selection)."""
        titles = list(self._figures())
        current = self.figure if self.figure in titles else (titles[0] if titles else None)
        if titles != self.param.figure.objects:
            self.param.figure.objects = titles
        self.figure = current
        self._update_names()
        self._fig_select.disabled = not titles
        for b in self._buttons.values():
            b.disabled = not titles
        tables = list(self._tables())
        if tables != self._table_titles:  # new buttons only when the set of tables changed
            self._table_titles = tables
            self._table_row.objects = [
                pn.widgets.FileDownload(
                    callback=self._table_callback(title),
                    filename=f"{self.stem(title)}.csv",
                    label=f"{title} (CSV)",
                    button_type="primary",
                    button_style="outline",
                    css_classes=["nnv-export-csv"],
                )
                for title in tables
            ]
        else:  # same tables, maybe of another model
            for title, button in zip(tables, self._table_row.objects):
                button.filename = f"{self.stem(title)}.csv"

    def subject(self) -> str:
        """The model the exports are of ('' when the page did not say)."""
        return str(self._subject() or "") if self._subject is not None else ""

    def stem(self, title: str) -> str:
        """The file stem of export ``title``: prefix, title and model (see :func:`file_stem`)."""
        return file_stem(self.prefix, title, self.subject())

    def _update_names(self, *_: Any) -> None:
        stem = self.stem(self.figure or "figure")
        for fmt, b in self._buttons.items():
            b.filename = f"{stem}.{fmt}"

    def _figure_callback(self, fmt: str) -> Callable[[], io.BytesIO | None]:
        def make() -> io.BytesIO | None:
            title = self.figure
            builders = self._figures()
            if title not in builders:
                return self._fail("nothing to export yet: run the analysis first")
            try:
                data = figure_bytes(builders[title](), fmt, self.stem(title))
            except NNVitalsError as e:
                return self._fail(str(e))
            self._alert.visible = False
            return io.BytesIO(data)

        return make

    def _table_callback(self, title: str) -> Callable[[], io.BytesIO | None]:
        def make() -> io.BytesIO | None:
            builders = self._tables()
            if title not in builders:
                return self._fail(f"{title}: not available any more; run the analysis again")
            try:
                data = table_bytes(builders[title](), self.stem(title))
            except NNVitalsError as e:
                return self._fail(str(e))
            self._alert.visible = False
            return io.BytesIO(data)

        return make

    def _fail(self, message: str) -> None:
        self.message = message
        self._alert.param.update(object=message, visible=True)
        log.info("export failed: %s", message)
        return None


def export_item(
    figures: dict[str, Callable[[], Any]], tables: dict[str, Callable[[], Any]], what: str, path: str | Path
) -> Path:
    """Save figure or table ``what`` (a title of ``figures``/``tables``, or its file-name form)
    to ``path``; the suffix picks the format (svg, png, pdf, html; csv). Pages' ``export``."""
    from analyses.core.export import save_figure, save_table

    path = Path(path)
    for builders, save in ((tables, save_table), (figures, save_figure)):
        for title, build in builders.items():
            if what in (title, slug(title)):
                return save(build(), path)
    raise NNVitalsError(
        f"export {what!r}: nothing by that name; expected one of: {', '.join([*figures, *tables])}"
    )

"""The Spectra page: heavy-tailed weight spectra (WeightWatcher metrics, FARMS) of the picked model.

What the page shows, all from one :class:`~analyses.spectra.analysis.SpectralResult`:

- **Layers**: a metric by layer (tap a point, or box-select several) linked to the selected
  layer's ESD with its power-law fit, xmin and Marchenko-Pastur bulk edge, and its KS scan;
  several selected layers show their ESDs side by side. Below, the layer table (sortable,
  warnings coloured); selecting rows there selects the same layers in the plots, and back.
- **FARMS vs plain**: FARMS alpha against the full-matrix alpha, and both against the aspect
  ratio Q (FARMS removes the Q dependence).
- **Compare**: a metric by layer for this model and a second one (its untrained twin by default).
- **Export**: every figure as SVG, PNG, PDF (matplotlib) or standalone HTML; tables as CSV.

The page computes nothing itself: the analysis object runs in a :class:`JobPanel` (a thread,
never the server's event loop) and the views come from :mod:`analyses.spectra.views`. In a
notebook, ``SpectraPage(model="mlp")`` runs the analysis in the cell and displays the page.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from analyses.core.errors import NNVitalsError
from analyses.core.pattern import compile_pattern
from analyses.spectra import live, views
from analyses.spectra.analysis import SpectralAnalysis
from analyses.zoo import DEMO_MODELS

from ..components.jobs import JobPanel
from ..components.on_loop import next_tick
from ..components.page import (
    AnalysisPage,
    bokeh_pane,
    model_label,
    note_pane,
    plot_grid,
    plot_pane,
    section_heading,
)
from ..components.settings_form import RADIO, WIDGET_WIDTH

log = logging.getLogger("nnvitals.app")

#: metrics offered for the metric-by-layer plot
METRICS = [
    "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank",
    "entropy", "D", "num_spikes", "mp_softrank", "rand_distance",
]  # fmt: skip
#: columns of the layer table, in order (those present in the result)
TABLE_COLUMNS = [
    "layer_id", "name", "layer_type", "shape", "Q", "alpha", "alpha_plain", "warning", "alpha_weighted",
    "log_norm", "log_spectral_norm", "stable_rank", "entropy", "D", "xmin", "num_spikes", "num_pl_spikes",
    "rand_distance", "status", "skip_reason",
]  # fmt: skip
#: header titles of the layer table where the column name is not what a reader knows (the
#: WeightWatcher metric names are kept: they are what users know; the CSV keeps every name)
TABLE_TITLES = {
    "layer_id": "depth", "name": "layer", "layer_type": "kind", "alpha_plain": "plain alpha",
    "num_spikes": "spikes", "num_pl_spikes": "tail size", "rand_distance": "distance to shuffled",
    "status": "status", "skip_reason": "why skipped", "warning": "reading",
}  # fmt: skip
TABLE_TOOLTIPS = {
    "layer_id": "Position of the layer in the model (0 = first)",
    "Q": "Aspect ratio N / M of the weight matrix",
    "alpha": "Power-law exponent of the ESD tail: below 2 over-trained, above 6 under-trained",
    "alpha_plain": "Alpha of the full matrix (without FARMS)",
    "alpha_weighted": "alpha × log10 of the largest eigenvalue",
    "log_norm": "log10 of the squared Frobenius norm",
    "log_spectral_norm": "log10 of the largest eigenvalue",
    "stable_rank": "Squared Frobenius norm / largest eigenvalue",
    "entropy": "Spectral entropy (1 = flat spectrum)",
    "D": "KS distance between the ESD tail and the fitted power law",
    "xmin": "Where the power-law tail starts",
    "num_spikes": "Eigenvalues beyond the Marchenko-Pastur bulk edge",
    "num_pl_spikes": "Eigenvalues in the fitted power-law tail",
    "rand_distance": "Distance between the ESD and the shuffled matrix's ESD",
}
#: positions of the tabs whose content is built when they are first opened
FARMS_TAB, COMPARE_TAB, EXPORT_TAB = 1, 2, 3
#: most ESDs drawn side by side for a multi-layer selection
MAX_GRID = 6
WARNING_STYLE = {
    "over-trained": f"background-color: {views.CATEGORY_COLORS['over-trained']}; color: white; font-weight: 600",
    "under-trained": f"background-color: {views.CATEGORY_COLORS['under-trained']}; color: black; font-weight: 600",
    "non-finite": "background-color: #999999; color: white",
}


def _twin(model: Any) -> str | None:
    """The demo model to compare with by default: a trained model's untrained twin and back."""
    if not isinstance(model, str) or model not in DEMO_MODELS:
        return None
    twin = model.removesuffix("-untrained") if model.endswith("-untrained") else f"{model}-untrained"
    return twin if twin in DEMO_MODELS else None


def _warning_css(value: Any) -> str:
    return WARNING_STYLE.get(str(value), "")


class SpectraPage(AnalysisPage):
    """Spectral analysis page (see the module docstring): ``SpectraPage(model="mlp")``."""

    slug = "spectra"
    title = "Spectra"
    widget_types = {"xmin_rule": RADIO, "farms_q_ratio": {"step": 0.5}}
    question = "How heavy-tailed is each layer's eigenvalue spectrum (ESD), free of aspect-ratio bias?"

    model = param.Parameter(default="mlp", doc="The model: a demo name, a checkpoint path or a module.")
    label = param.String(default="mlp", doc="Name of the model as shown.")
    metric = param.Selector(default="alpha", objects=METRICS, doc="Metric of the by-layer plot.")
    result = param.Parameter(default=None, doc="The current SpectralResult (None before the first run).")
    selected = param.List(default=[], item_type=str, doc="Names of the selected layers.")
    compare_with = param.Parameter(default=None, doc="Second model of the comparison (one of the picker's).")
    compare_metric = param.Selector(default="alpha", objects=list(views.COMPARE_METRICS))
    compare_result = param.Parameter(default=None, doc="SpectralResult of the second model.")

    def build(self, model: Any) -> None:
        if self.picker is not None and model is None:
            model = self.picker.model
        model = self.settings.default_model if model is None else model
        self.analysis = SpectralAnalysis(model=model, show_progress=False, runner=self.settings.runner)
        self.explorer: live.LiveExplorer | views.LinkedExplorer | None = None
        self._syncing = False
        self._compare_labels: tuple[str, str] = ("A", "B")
        self.compare_jobs = JobPanel()
        self._build_controls()
        self._build_main()
        self._set_model(model, self.picker.label if self.picker is not None else None, run=False)
        self.on_sources()
        self.param.watch(self._on_metric, "metric")

    # ------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        self._build_layers_input()
        self.form = self.settings_form(self.analysis, custom={"layers": self._layers_input})
        parts: list[Any] = []
        if self.picker is None:  # standalone (a notebook): a model choice of its own
            self._model_select = pn.widgets.Select(name="Model", options=list(DEMO_MODELS), width=280)
            self._model_select.param.watch(lambda e: self._set_model(e.new), "value")
            parts.append(self._model_select)
        self.controls = self.controls_column("Spectra settings", self.form.basic, self.form.advanced)
        self.controls.objects = [*parts, *self.controls.objects]

    def _build_layers_input(self) -> None:
        """The layer-name pattern: checked as it is typed (linear-time matcher, analyses.core.pattern);
        a pattern that is refused is shown in the page's alert and blocks Run until it is fixed, rather
        than the last accepted pattern being run silently."""
        p = self.analysis.param.layers
        self._layers_error = ""
        self._layers_input = pn.widgets.TextInput(
            name=p.label, placeholder="e.g. ^fc", value=self.analysis.layers, width=WIDGET_WIDTH,
            description=p.doc, css_classes=["nnv-layers"],
        )  # fmt: skip
        self._layers_input.param.watch(self._on_layers_input, "value")
        self.analysis.param.watch(self._on_layers_param, "layers")

    def _on_layers_input(self, event) -> None:
        try:
            compile_pattern(event.new, "layers")
        except NNVitalsError as e:
            self._layers_error = str(e)
            self._layers_input.css_classes = ["nnv-layers", "nnv-invalid"]
            self.jobs.show_error(self._layers_error)
            return
        self._layers_error = ""
        self._layers_input.css_classes = ["nnv-layers"]
        self.analysis.layers = event.new

    def _on_layers_param(self, event) -> None:
        if self._layers_input.value != event.new:
            self._layers_input.value = event.new

    def _pattern_refused(self, jobs: JobPanel) -> bool:
        """Show the refused layer pattern (if any) instead of running."""
        if self._layers_error:
            jobs.show_error(self._layers_error)
            return True
        return False

    def _build_main(self) -> None:
        waiting = pn.pane.Markdown("*The analysis is running …*", css_classes=["nnv-waiting"])
        # Layers tab
        self._metric_select = pn.widgets.Select.from_param(
            self.param.metric, name="Metric by layer", width=220
        )
        self._selection_text = pn.pane.Markdown(
            "", css_classes=["nnv-selection"], sizing_mode="stretch_width"
        )
        self._plots = plot_grid(waiting, css_classes=["nnv-plots"])
        self._grid = pn.Column(sizing_mode="stretch_width", css_classes=["nnv-esd-grid"])
        self._table = pn.widgets.Tabulator(
            pd.DataFrame(),
            disabled=True,
            selectable=True,
            show_index=False,
            sizing_mode="stretch_width",
            max_height=420,
            layout="fit_data_table",
            header_align="center",
            widths={"warning": 130},
            titles=TABLE_TITLES,
            header_tooltips=TABLE_TOOLTIPS,
            css_classes=["nnv-layer-table"],
        )
        self._table.style.map(_warning_css)  # kept across new values: only warning labels get a colour
        self._table.param.watch(self._on_table_selection, "selection")
        layers = pn.Column(
            pn.Row(self._metric_select, self._selection_text, sizing_mode="stretch_width"),
            note_pane(
                "Tap a point to see that layer's ESD and KS scan; box-select (toolbar) or ctrl-click "
                "table rows to compare several. Dashed guides: α < 2 over-trained, α > 6 under-trained.",
            ),
            self._plots,
            self._grid,
            section_heading("Layer table", margin=(10, 10, 0, 10)),
            self._table,
            sizing_mode="stretch_width",
            name="Layers",
        )
        # FARMS tab
        self._farms_button = pn.widgets.Button(
            name="Run with FARMS", button_type="primary", button_style="outline", width=180
        )
        self._farms_button.on_click(lambda _e: self.run(farms=True))
        self._farms_plots = plot_grid()
        self._farms_note = pn.pane.Markdown(
            "This run has no FARMS alpha yet: **Run with FARMS** to compare it with the plain alpha.",
            css_classes=["nnv-farms-missing"],
            sizing_mode="stretch_width",
        )
        farms = pn.Column(
            pn.pane.Markdown(
                "**FARMS** (Fixed-Aspect-Ratio Matrix Subsampling, ICML 2025) fits alpha on the pooled ESD "
                "of windows that all have the same aspect ratio, so alpha no longer drifts with a layer's "
                "shape Q = N / M. Points off the diagonal are layers whose plain alpha the aspect ratio biased.",
                sizing_mode="stretch_width",
            ),
            pn.Row(self._farms_button, self._farms_note, sizing_mode="stretch_width"),
            self._farms_plots,
            sizing_mode="stretch_width",
            name="FARMS vs plain",
        )
        # Compare tab
        self._compare_select = pn.widgets.Select(name="Compare with", width=260)
        self._compare_select.link(self, value="compare_with", bidirectional=True)
        self._compare_metric = pn.widgets.Select.from_param(
            self.param.compare_metric, name="Metric", width=200
        )
        self._compare_button = pn.widgets.Button(
            name="Compare", button_type="primary", width=120, align="end"
        )
        self._compare_button.on_click(lambda _e: self.compare())
        self._compare_plot = plot_grid()
        self._compare_table = pn.widgets.Tabulator(
            pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width", max_height=360,
            layout="fit_data_table", visible=False,
        )  # fmt: skip
        self._compare_content = pn.Column(
            pn.pane.Markdown(
                "The same analysis on a second model, layers matched by name: the metric of both by "
                "layer, and the change (B − A) per layer.",
                sizing_mode="stretch_width",
            ),
            pn.Row(self._compare_select, self._compare_metric, self._compare_button),
            self.compare_jobs,
            self._compare_plot,
            self._compare_table,
            sizing_mode="stretch_width",
        )
        self.param.watch(self._redraw_compare, "compare_metric")
        # FARMS, Compare and Export join the page when their tab is first opened (a new session
        # sends only the Layers tab; Panel's own dynamic tabs would do it, but their placeholders
        # load CSS from Panel's CDN)
        self._lazy_tabs = {
            FARMS_TAB: farms,
            COMPARE_TAB: self._compare_content,
            EXPORT_TAB: pn.Column(self.export_panel, sizing_mode="stretch_width"),
        }
        self.tabs = pn.Tabs(
            layers,
            pn.Column(name="FARMS vs plain", sizing_mode="stretch_width"),
            pn.Column(name="Compare", sizing_mode="stretch_width"),
            pn.Column(name="Export", sizing_mode="stretch_width"),
            dynamic=False,
            sizing_mode="stretch_width",
            css_classes=["nnv-tabs"],
        )
        self._farms_drawn = None
        self.tabs.param.watch(self._draw_farms_plots, "active")
        self.tabs.param.watch(self._open_tab, "active")
        self.main = self.main_column(
            "Spectra",
            f"{self.question} Heavy-tailed self-regularisation metrics (WeightWatcher) with FARMS on request.",
        )

    def _open_tab(self, event) -> None:
        content = self._lazy_tabs.pop(event.new, None)
        if content is not None:
            self.tabs[event.new].objects = [content]

    # ------------------------------------------------------------------ model and runs
    def _set_model(self, model: Any, label: str | None = None, run: bool = True) -> None:
        if label is None:
            label = model_label(model)
        self.analysis.model = model
        self.param.update(model=model, label=label)
        if self.picker is None and isinstance(model, str) and model in DEMO_MODELS:
            self._model_select.value = model
        twin = _twin(model)
        if twin is not None and twin in self._compare_select.values:
            self.compare_with = twin
        if run:
            self.run()

    def on_picker(self, event) -> None:
        self._set_model(event.obj.model, event.obj.label)

    def on_sources(self, *_: Any) -> None:
        options = self.sources()
        current = self.compare_with if self.compare_with in options.values() else None
        current = current or _twin(self.model) or next(iter(options.values()), None)
        self._compare_select.param.update(options=options, value=current)
        self.compare_with = current

    def run(self, farms: bool | None = None, wait: float = 0.0) -> None:
        """Run the analysis with the current settings (in the background when served); ``farms``:
        with FARMS alpha or not (the FARMS tab's button). ``wait``: seconds to wait for a quick
        result (from the result store) to show it at once."""
        if farms is not None:
            self.analysis.farms = farms
        super().run(wait=wait)

    def job(self):
        if self._pattern_refused(self.jobs):
            return None
        return f"Spectra of {self.label}", self.work(self.snapshot(self.analysis))

    def compare(self) -> None:
        """Run the same analysis on the second model and show both side by side."""
        other = self.compare_with
        if other is None:
            self.compare_jobs.show_error("pick a second model to compare with first")
            return
        if self.result is None:
            self.compare_jobs.show_error("run the analysis on the first model before comparing")
            return
        if self._pattern_refused(self.compare_jobs):
            return
        label_b = next((k for k, v in self._compare_select.options.items() if v == other), str(other))
        label_a = self.label if self.label != label_b else f"{self.label} (A)"
        analysis = self.snapshot(self.analysis, model=other)
        result_a = self.result

        def on_done(result_b):
            self._compare_labels = (label_a, label_b if label_b != label_a else f"{label_b} (B)")
            self._compare_pair = (result_a, result_b)
            self.compare_result = result_b
            self._redraw_compare()

        self.compare_jobs.submit(f"Spectra of {label_b}", self.work(analysis), on_done)

    # ------------------------------------------------------------------ showing a result
    def show(self, result) -> None:
        previous = list(self.selected)
        self.result = result
        self.compare_result = None
        self._compare_plot.objects = []
        self._compare_table.visible = False
        self._summary.object = self._summary_text(result)
        self._fill_table(result)
        self._draw_explorer(keep=previous)
        self._draw_farms(result)
        self.export_panel.refresh()

    def _summary_text(self, result) -> str:
        s, meta, t = result.summary, result.meta, result.table
        subj = meta.get("subject", {})
        how = (
            "reused from an earlier run"
            if meta.get("cached")
            else f"computed in {views.format_number(meta.get('seconds'), '.2f')} s"
        )
        params = meta.get("params", {})
        farms = ", FARMS alpha" if params.get("farms") else ""
        return (
            f"**{subj.get('label', self.label)}** ({subj.get('source', '?')}): {len(t)} weights, "
            f"**{s.get('layers_analysed', 0)} analysed**, {s.get('layers_skipped', 0)} skipped · "
            f"mean α **{views.format_number(s.get('alpha'))}** (xmin rule {params.get('xmin_rule', '?')}{farms}) · "
            f"{s.get('over_trained', 0)} over-trained (α < 2), {s.get('under_trained', 0)} under-trained (α > 6) · "
            f"{how}"
        )

    def _fill_table(self, result) -> None:
        t = result.table
        cols = [c for c in TABLE_COLUMNS if c in t.columns]
        if "alpha_plain" in cols and not np.isfinite(pd.to_numeric(t["alpha_plain"], errors="coerce")).any():
            cols.remove("alpha_plain")
        df = t[cols].copy()
        for c in df.columns:
            if df[c].dtype.kind == "f":
                df[c] = df[c].round(4)
        self._table.selection = []
        self._table.value = df

    def _draw_explorer(self, keep: list[str] = ()) -> None:
        """The Layers tab's three linked plots: plain bokeh figures (:class:`live.LiveExplorer`: a new
        session draws them in milliseconds), or HoloViews' message panel when no layer has the metric."""
        result = self.result
        if result is None:
            return
        metric = self.metric if self.metric in result.table.columns else "alpha"
        rows = views._metric_rows(result, metric)
        if rows.empty:
            ex = views.linked_explorer(result, metric)
            items = [plot_pane(item, f"nnv-plot-{i}") for i, item in enumerate(ex.layout)]
        else:
            ex = live.LiveExplorer(result, metric, schedule=self._on_doc, rows=rows)
            items = [bokeh_pane(fig, f"nnv-plot-{i}") for i, fig in enumerate(ex.figures)]
        self.explorer = ex
        self._shown = None
        self._plots.objects = items
        ex.stream.add_subscriber(self._on_stream)
        names = [n for n in keep if n in ex.names]
        if names and names != ex.names[:1]:
            self.select(*names)
        else:
            self._apply_selection([ex.names[0]] if ex.names else [])

    def _on_doc(self, fn: Any) -> None:
        """Run a change of the live plots where the browser hears of it: in a served session on the
        next tick of its event loop, holding the document's lock (Panel runs a widget's callback, a
        table click's, on the loop but without that lock: a bokeh change made there is refused);
        elsewhere (a notebook, a page not yet shown) at once."""
        ex = self.explorer
        doc = getattr(getattr(ex, "metric_figure", None), "document", None)
        if doc is not None and doc.session_context is not None:
            next_tick(doc, fn)
        else:
            fn()

    def _draw_farms(self, result) -> None:
        has_farms = (
            "alpha_plain" in result.table
            and np.isfinite(pd.to_numeric(result.table["alpha_plain"], errors="coerce")).any()
        )
        self._farms_button.visible = self._farms_note.visible = not has_farms
        self._farms_drawn = None
        if self.tabs.active == FARMS_TAB:  # else drawn when the tab is opened
            self._draw_farms_plots()

    def _draw_farms_plots(self, *_: Any) -> None:
        result = self.result
        if result is None or self.tabs.active != FARMS_TAB or self._farms_drawn is result:
            return
        self._farms_drawn = result
        # without FARMS the note and the button say what to do; the plain alpha vs Q still shows
        plots = [views.alpha_vs_aspect(result)]
        if self._farms_note.visible is False:
            plots.insert(0, views.farms_vs_plain(result))
        self._farms_plots.objects = [plot_pane(p, "nnv-farms-plot") for p in plots]

    def _redraw_compare(self, *_: Any) -> None:
        pair = getattr(self, "_compare_pair", None)
        if pair is None or self.compare_result is None:
            return
        a, b = pair
        metric = self.compare_metric
        fig = views.compare_models(a, b, metric, self._compare_labels)
        # one pane per panel: a bokeh grid plot added to a live page does not draw
        panels = list(fig) if isinstance(fig, hv.Layout) else [fig]
        self._compare_plot.objects = [plot_pane(p, "nnv-compare-plot") for p in panels]
        table = views.compare_table(a, b)
        for c in table.columns:
            if table[c].dtype.kind == "f":
                table[c] = table[c].round(4)
        self._compare_table.value = table
        self._compare_table.visible = True
        self.export_panel.refresh()

    # ------------------------------------------------------------------ selection (both ways)
    def select(self, *names: str) -> None:
        """Select layers by name (as a tap, box-select or table click would)."""
        if self.explorer is None:
            raise NNVitalsError("select: no result yet; run the analysis first")
        missing = [n for n in names if n not in self.explorer.names]
        if missing:
            raise NNVitalsError(
                f"layer {missing[0]!r}: not in the {self.metric} plot (layers: {', '.join(self.explorer.names)})"
            )
        self.explorer.stream.event(index=[self.explorer.names.index(n) for n in names])

    def _on_stream(self, index=None, **_: Any) -> None:
        ex = self.explorer
        if ex is None:
            return
        names = [ex.names[int(i)] for i in (index or []) if 0 <= int(i) < len(ex.names)]
        self._show_in_plot([ex.names.index(n) for n in names])
        if names and names == self._shown:  # the plot echoing a selection this page made
            return
        self._apply_selection(names or ex.names[:1])

    def _show_in_plot(self, index: list[int]) -> None:
        """Highlight the points ``index`` in the metric plot as the selection.

        A selection made here (a table click, :meth:`select`) reaches the stream, the ESDs and the
        table, but bokeh keeps highlighting what was last tapped or box-selected: the plot's
        selection is set to match, so one selection shows everywhere.
        """
        ex = self.explorer
        if isinstance(ex, live.LiveExplorer):
            ex.show_selection(index)

    def _apply_selection(self, names: list[str]) -> None:
        self.selected = list(names)
        self._shown = list(names)
        result = self.result
        if result is None:
            return
        if names:
            row = result.row(names[0])
            more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
            self._selection_text.object = (
                f"Selected: **{names[0]}**{more} · {row.get('layer_type', '')} {row.get('shape', '')} · "
                f"α = {views.format_number(row.get('alpha'))} · D = {views.format_number(row.get('D'), '.3f')} · "
                f"{row.get('warning') or 'no warning'}"
            )
        else:
            self._selection_text.object = ""
        if not self._syncing:
            self._syncing = True
            try:
                df = self._table.value
                if df is not None and "name" in df:
                    self._table.selection = [int(i) for i, n in enumerate(df["name"]) if n in set(names)]
            finally:
                self._syncing = False
        self._draw_grid(names)
        self.export_panel.refresh()

    def _on_table_selection(self, event) -> None:
        if self._syncing or self.explorer is None:
            return
        df = self._table.value
        names = [str(df["name"].iloc[i]) for i in event.new if 0 <= i < len(df)]
        names = [n for n in names if n in self.explorer.names]
        if not names:
            return
        self._syncing = True
        t0 = time.perf_counter()
        try:
            self.explorer.stream.event(index=[self.explorer.names.index(n) for n in names])
        finally:
            self._syncing = False
        log.debug("selection %s from the table: %.0f ms", ",".join(names), 1000 * (time.perf_counter() - t0))

    def _grid_figure(self, names: list[str]) -> hv.Layout:
        plots = [views.esd_plot(self.result, n) for n in names[:MAX_GRID]]
        layout = hv.Layout(plots).cols(2)
        return layout.opts(shared_axes=False, backend="bokeh")

    def _draw_grid(self, names: list[str]) -> None:
        if len(names) < 2:
            self._grid.objects = []
            return
        shown = names[:MAX_GRID]
        note = f" (the first {MAX_GRID} of {len(names)})" if len(names) > MAX_GRID else ""
        # one pane per ESD, two per row
        self._grid.objects = [
            section_heading(f"ESDs of the selected layers{note}", margin=(10, 10, 0, 10)),
            plot_grid(*[plot_pane(views.esd_plot(self.result, n), "nnv-grid-plot") for n in shown]),
        ]

    def _on_metric(self, *_: Any) -> None:
        self._draw_explorer(keep=list(self.selected))

    # ------------------------------------------------------------------ export (app and notebooks)
    def export_subject(self) -> str:
        return self.label

    def figures(self) -> dict[str, Any]:
        """What can be exported now: title -> function building the HoloViews object."""
        res = self.result
        if res is None:
            return {}
        metric = self.metric if self.metric in res.table.columns else "alpha"
        names = list(self.selected) or (self.explorer.names[:1] if self.explorer else [])
        out: dict[str, Any] = {f"{metric} by layer": lambda: views.metric_by_layer(res, metric)}
        if names:
            first = names[0]

            def explorer_now():  # what the page shows, as one static figure
                return views.explorer_figure(res, first, metric)

            out[f"ESD of {first}"] = lambda: views.esd_plot(res, first)
            out[f"KS scan of {first}"] = lambda: views.ks_plot(res, first)
            out[f"Explorer ({metric}, ESD and KS of {first})"] = explorer_now
        if len(names) > 1:
            out["ESDs of the selected layers"] = lambda: self._grid_figure(names)
        out["FARMS vs plain alpha"] = lambda: views.farms_vs_plain(res)
        out["alpha vs aspect ratio"] = lambda: views.alpha_vs_aspect(res)
        pair = getattr(self, "_compare_pair", None)
        if pair is not None and self.compare_result is not None:
            cm, labels = self.compare_metric, self._compare_labels
            out[f"Comparison of {cm}: {labels[0]} vs {labels[1]}"] = lambda: views.compare_models(
                *pair, cm, labels
            )
        return out

    def tables(self) -> dict[str, Any]:
        """Tables that can be exported now: title -> function building the DataFrame."""
        res = self.result
        if res is None:
            return {}
        out: dict[str, Any] = {"Layer table": lambda: res.table}
        pair = getattr(self, "_compare_pair", None)
        if pair is not None and self.compare_result is not None:
            out["Comparison table"] = lambda: views.compare_table(*pair)
        return out

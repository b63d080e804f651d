"""The Orbits page: NERO plots, where along a group orbit each model stops being equivariant.

What the page shows, all from one :class:`~analyses.orbits.analysis.OrbitResult`:

- the aggregate NERO plot (polar for rotations, rings every 0.2; a heatmap for shifts), the models
  overlaid, for all classes or a class subset;
- a scatter of the samples (each sample's orbit reduced to 2-D by PCA or t-SNE), coloured by the
  mean or the variance of its scores: tap a sample to select it;
- the selected sample's own NERO plot, the sample transformed by the chosen group element and
  the model's class probabilities there; the element slider walks along the orbit live;
- export of every figure (SVG, PNG, PDF, offline HTML) and of the tables (CSV).

The data follows the models (:func:`~analyses.orbits.fitting.common_data`): the digits at the image
size the models take (a demo's manifest, a ``.pt2`` program's recorded input, else a try on two blank
images), or one line saying which data they need. The setting widgets are generated from the
analysis's parameters but never clamp or replace what is typed: every invalid setting is listed
under the settings at once (one line each), and Run shows the list instead of running. The page
fits a 1280 px wide window (the plots' sizes are set in :mod:`analyses.orbits.views`).

The first model is the sidebar's (the page's "Analysing" line names it as the sidebar does); the
others are chosen on the page ("Compare with"). Opened while no model was chosen yet, the page
suggests ``rot-cnn`` to the picker and compares it with the other rotation demos (:data:`DEMO_SET`):
the sidebar then shows ``rot-cnn`` too. The page computes nothing itself: :class:`~analyses.orbits.analysis.OrbitAnalysis` runs in a
:class:`JobPanel`; the views come from :mod:`analyses.orbits.views`. In a notebook,
``OrbitsPage(model=["rot-cnn", "rot-cnn-c4"])`` runs in the cell and displays the page.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import CustomJSTickFormatter

from analyses.core.errors import NNVitalsError
from analyses.orbits import views
from analyses.orbits.analysis import OrbitAnalysis, setting_problems
from analyses.orbits.fitting import common_data
from analyses.zoo import DEMO_MODELS, demo_image_size

from ..components.export import model_stem
from ..components.jobs import how_obtained
from ..components.model_picker import list_data_files
from ..components.page import AnalysisPage, holoviews_pane, model_label, note_pane
from ..components.settings_form import RADIO, WIDGET_WIDTH

log = logging.getLogger("nnvitals.app")

#: the demo comparison the page opens on: plain, augmented and C4-averaged CNNs
DEMO_SET = ["rot-cnn", "rot-cnn-aug", "rot-cnn-c4"]
#: the page's first run: a quick look (10-degree steps, 200 samples); the settings raise both
PAGE_DEFAULTS = {"steps": 36, "max_samples": 200}
DATA_CHOICES = {"digits 16x16": "digits16", "digits 8x8": "digits8", "digits 32x32": "digits32"}


def _element_labels(labels: list[str]) -> CustomJSTickFormatter:
    """A slider format that shows group element ``i`` as its label (``'180°'``), in the browser."""
    return CustomJSTickFormatter(
        args={"labels": labels}, code="return labels[Math.round(tick)] ?? String(tick)"
    )


def demo_data_name(model: Any) -> str | None:
    """The built-in data a demo model was trained on (its image size), else None."""
    return {8: "digits8", 16: "digits16", 32: "digits32"}.get(demo_image_size(model))


class OrbitsPage(AnalysisPage):
    """NERO orbits page (see the module docstring): ``OrbitsPage(model=["rot-cnn", "rot-cnn-c4"])``."""

    slug = "orbits"
    title = "Orbits"
    #: the page's own controls: the data (with the server's files) and the class subset (a view choice)
    own = ("data", "classes")
    #: settings of one group each: under Advanced
    advanced = ("shift_range", "shift_step", "scale_range", "scale_step")
    widget_types = {"split": RADIO}
    question = (
        "Where along a group orbit (rotation, shift, scale, flip) does the model stop being equivariant?"
    )

    models = param.List(default=[], doc="The models compared (runnable: demo names, .pt2, modules).")
    classes = param.List(default=[], item_type=int, doc="Class subset of the aggregate plot.")
    color = param.Selector(default="mean", objects=["mean", "variance"], doc="Colour of the sample scatter.")
    method = param.Selector(default="pca", objects=["pca", "tsne"], doc="2-D reduction of the orbits.")
    result = param.Parameter(default=None, doc="The current OrbitResult.")
    row = param.Integer(default=0, doc="Selected sample (position in the result).")
    element = param.Integer(default=0, doc="Selected group element.")

    def build(self, model: Any) -> None:
        demo_ready = all(m in DEMO_MODELS for m in DEMO_SET)
        if model is None and self.picker is not None:
            # the sidebar's model first; the demo set while nobody chose a model (the picker then
            # shows its first model: one truth)
            if demo_ready and self.picker.suggest(DEMO_SET[0]):
                model = list(DEMO_SET)
            else:
                model = self.picker.model
        elif model is None:
            model = list(DEMO_SET) if demo_ready else self.settings.default_model
        models = list(model) if isinstance(model, list | tuple) else [model]
        self._fit_problem: str | None = None
        self.analysis = OrbitAnalysis(
            model=models,
            show_progress=False,
            runner=self.settings.runner,
            data=self._data_for(models),
            **PAGE_DEFAULTS,
        )
        self.explorer: views.OrbitExplorer | None = None
        self._build_controls()
        self._build_main()
        self.models = models
        self._sync_compare()
        self.param.watch(self._redraw_explorer, ["color", "method", "classes"])
        self.param.watch(self._on_element, ["element"])

    # ------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        self.form = self.settings_form(self.analysis, check=setting_problems)
        self._settings = self.form.widgets
        self._problems = self.form.problems
        self._data = pn.widgets.Select(
            name=self.analysis.param.data.label, options=self._data_options(), width=WIDGET_WIDTH
        )
        self._data.param.watch(lambda e: setattr(self.analysis, "data", e.new), "value")
        self._compare = pn.widgets.MultiChoice(name="Compare with", options={}, width=WIDGET_WIDTH)
        self._compare.param.watch(self._on_compare, "value")
        self._classes = pn.widgets.MultiChoice(
            name=self.analysis.param.classes.label, options=[str(i) for i in range(10)], width=WIDGET_WIDTH
        )
        self._classes.param.watch(self._on_classes, "value")
        self.controls = self.controls_column(
            "Orbit settings", self._compare, self._data, self.form.basic, self._classes, self.form.advanced
        )

    def _build_main(self) -> None:
        self._aggregate = pn.Column(
            pn.pane.Markdown("*The analysis is running …*"), css_classes=["nnv-orbit-aggregate"]
        )
        self._scatter = pn.Column(css_classes=["nnv-orbit-scatter"])
        self._individual = pn.Column(css_classes=["nnv-orbit-individual"])
        self._image = pn.Column(css_classes=["nnv-orbit-image"])
        self._probs = pn.Column(css_classes=["nnv-orbit-probs"])
        self._selection = pn.pane.Markdown(
            "", css_classes=["nnv-orbit-selection"], sizing_mode="stretch_width"
        )
        # the element in the group's own units (45°, (2, -1) px, ×1.25, mirrored), not its index
        # the browser formats the index into the element's label itself, so the title never lags
        # behind the handle however fast it moves (a server-side label did under a held arrow key)
        self._slider = pn.widgets.IntSlider(
            name="Rotation angle", start=0, end=1, value=0, width=420, disabled=True,
            format=_element_labels(["0°"]), tooltips=False, css_classes=["nnv-orbit-slider"],
        )  # fmt: skip
        self._slider.link(self, value="element", bidirectional=True)
        self._model_select = pn.widgets.Select(name="Samples of", options=[], width=200)
        self._model_select.param.watch(self._redraw_explorer, "value")
        view_opts = pn.Row(
            self._model_select,
            pn.widgets.RadioButtonGroup.from_param(
                self.param.color, button_style="outline", width=160, align="end"
            ),
            pn.widgets.RadioButtonGroup.from_param(
                self.param.method, button_style="outline", width=140, align="end"
            ),
        )
        explore = pn.Column(
            note_pane(
                "Polar plots: the direction is the rotation angle, the distance from the centre the mean "
                "score. A circle means the model is equivariant (invariant, for class scores) along the "
                "orbit; dents show where it stops being so. Each point of the scatter is one sample (its "
                "scores along the orbit, reduced to 2-D): tap one to see its own orbit below.",
            ),
            pn.Row(self._aggregate, self._scatter, sizing_mode="stretch_width"),
            view_opts,
            self._selection,
            self._slider,
            note_pane(
                "The tapped sample's own orbit (models coloured as above), the sample as the model sees it at "
                "the slider's element, and the model's class probabilities there (the label in green, a wrong "
                "top-1 class in red). Move the slider to walk along the orbit.",
            ),
            pn.Row(self._individual, self._image, self._probs, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
            name="Orbits",
        )
        self.main = self.main_column(
            "Orbits",
            f"{self.question} NERO plots (Evaluating ML Models with NERO, 2023): model scores on "
            "every sample transformed along the orbit.",
            explore,
        )

    def export_subject(self) -> str:
        """The models of the result on show, for the export files' names ('rot-cnn-vs-rot-cnn-c4')."""
        names = self.result.models if self.result is not None else [model_label(m) for m in self.models]
        return "-vs-".join(model_stem(n) for n in names)

    # ------------------------------------------------------------------ models and data
    def _data_options(self) -> dict[str, str]:
        """The bundled digits, then the .npz files under the server's --allow-dir directories."""
        options = dict(DATA_CHOICES)
        dirs = getattr(self.picker, "allow_dirs", ()) if self.picker is not None else ()
        if dirs:
            options.update({f"server: {k}": v for k, v in list_data_files(dirs).items()})
        return options

    def _fit(self, models: list[Any]) -> str | None:
        """The built-in data the models run on (None when they do not say); a problem (no built-in
        data fits, or the models need different ones) is kept in ``_fit_problem``."""
        try:
            fit = common_data([m for m in models if m is not None])
        except NNVitalsError as e:
            self._fit_problem = str(e)
            return None
        self._fit_problem = None
        return fit.data if fit is not None else None

    def _data_for(self, models: list[Any]) -> str:
        return self._fit(models) or "digits16"

    def _sync_data(self) -> None:
        """Choose the data the models run on; with none that fits keep the choice (a server file may)."""
        data = self._fit(self.models)
        if data is not None:
            self._data.value = data
        elif self._fit_problem is None:
            self._data.value = "digits16"

    def _sync_compare(self, reset_data: bool = True) -> None:
        sources = self.sources()
        first = self.models[0] if self.models else None
        options = {k: v for k, v in sources.items() if v != first}
        self._compare.options = options
        self._compare.value = [m for m in self.models[1:] if m in options.values()]
        if reset_data:  # the data the models were made for (their input size)
            self._sync_data()

    def on_sources(self, *_: Any) -> None:
        current = self._data.value
        options = self._data_options()  # the server's files may have changed (Rescan)
        self._data.param.update(options=options, value=current if current in options.values() else None)
        self._sync_compare(reset_data=self._data.value is None)

    def on_picker(self, event) -> None:
        self.set_models([event.obj.model])

    def _on_compare(self, event) -> None:
        if self.models and list(event.new) != self.models[1:]:
            self.models = [self.models[0], *event.new]
            self._sync_data()

    def _on_classes(self, event) -> None:
        self.classes = [int(c) for c in event.new]
        self.analysis.classes = []  # the subset is a view choice: the run keeps every sample

    def set_models(self, models: list[Any], run: bool = True) -> None:
        """Analyse these models (the first is the picker's) and run."""
        self.models = list(models)
        self._sync_compare()
        if run:
            self.run()

    # ------------------------------------------------------------------ runs
    def setting_problems(self) -> list[str]:
        """Every invalid setting, and data the models cannot run on, one line each."""
        problems = super().setting_problems()
        if self._fit_problem and self._data.value in DATA_CHOICES.values():
            problems.append(self._fit_problem)
        return problems

    def job(self):
        values = {k: v for k, v in self.analysis.param.values().items() if k != "name"}
        values["model"] = list(self.models)
        labels = ", ".join(model_label(m) for m in self.models)
        return f"Orbits of {labels}", self.work(OrbitAnalysis(**values))

    def show(self, result) -> None:
        self.result = result
        s = result.summary
        meta = result.meta
        how = how_obtained(result, float(meta.get("seconds", 0) or 0))
        lines = [
            f"**{s['group']}** orbit, {s['elements']} elements × {s['samples']} samples of {s['data']} "
            f"({len(result.table):,} scores, {views.SCORE_LABELS.get(s['score'], s['score'])}) · {how}"
        ]
        lines += [f"- {line}" for line in views.summary_text(result).splitlines()]
        self._summary.object = "\n".join(lines)
        els = result.elements
        n_el = len(els)
        value = min(self.element, n_el - 1)
        self._slider.param.update(
            start=0, end=max(1, n_el - 1), value=value, name=els.title, disabled=n_el < 2,
            format=_element_labels([els.label(i) for i in range(n_el)]),
        )  # fmt: skip
        self._model_select.param.update(options=result.models, value=result.models[0])
        self._redraw_explorer()
        self.export_panel.refresh()

    # ------------------------------------------------------------------ linked views
    def _redraw_explorer(self, *_: Any) -> None:
        result = self.result
        if result is None:
            return
        model = self._model_select.value if self._model_select.value in result.models else result.models[0]
        ex = views.orbit_explorer(result, model, self.method, self.color, self.classes or None)
        pts = ex.selection.source
        pts.opts(tools=["tap", "hover"], active_tools=["tap"], backend="bokeh")
        self.explorer = ex
        row = min(self.row, len(result.samples) - 1)
        ex.show(row=row, element=min(self.element, len(result.elements) - 1))
        p = ex.panels
        self._aggregate.objects = [holoviews_pane(p["aggregate"], css_classes=["nnv-plot-aggregate"])]
        self._scatter.objects = [holoviews_pane(p["scatter"], css_classes=["nnv-plot-scatter"])]
        self._individual.objects = [holoviews_pane(p["individual"], css_classes=["nnv-plot-individual"])]
        self._image.objects = [holoviews_pane(p["image"], css_classes=["nnv-plot-image"])]
        self._probs.objects = [holoviews_pane(p["probabilities"], css_classes=["nnv-plot-probs"])]
        ex.selection.add_subscriber(self._on_tap)
        self._describe()

    def _on_tap(self, index) -> None:
        if index:
            self.row = int(index[0])
            self._describe()

    def _on_element(self, event) -> None:
        if self.explorer is not None and self.result is not None:
            self.explorer.show(element=min(max(0, event.new), len(self.result.elements) - 1))
            self._describe()

    # ------------------------------------------------------------------ links (dashboard.components.links)
    link_selection_keys = ("select", "element")

    def link_widgets(self) -> list[Any]:
        from ..components.links import Field

        return [
            Field("compare", "Compare with", self._compare, models=True),
            Field("data", self._data.name, self._data),
            Field("classes", self._classes.name, self._classes),
        ]

    def link_selection(self) -> dict[str, str]:
        """The selected sample (its position in the result) and group element."""
        if self.result is None:
            return {}
        return {"select": str(self.row), "element": str(self.element)}

    def apply_link_selection(self, values: dict[str, str]) -> str | None:
        r = self.result
        if r is None:
            return None
        picked: dict[str, int] = {}
        for key, name, n in (("select", "row", len(r.samples)), ("element", "element", len(r.elements))):
            text = values.get(key)
            if text is None:
                continue
            try:
                picked[name] = int(text)
            except ValueError:
                picked[name] = -1
            if not 0 <= picked[name] < n:
                what = "sample position" if key == "select" else "group element"
                return f"Link: {key}={text[:40]}: expected a {what} from 0 to {n - 1}"
        self.select(**picked)
        return None

    def select(self, row: int | None = None, element: int | None = None) -> None:
        """Select a sample (position in the result) and/or a group element, as tap and slider do."""
        if element is not None:
            self.element = int(element)
        if row is not None and self.explorer is not None:
            self.explorer.show(row=int(row))

    def _describe(self) -> None:
        r = self.result
        if r is None:
            return
        row = min(self.row, len(r.samples) - 1)
        el = min(self.element, len(r.elements) - 1)
        scores = ", ".join(f"{m} {float(r.scores(m)[row, el]):.3f}" for m in r.models)
        self._selection.object = f"**Sample {int(r.samples[row])}** (label {int(r.labels[row])}) at **{r.elements.label(el)}**: {scores}"

    # ------------------------------------------------------------------ export
    def figures(self) -> dict[str, Any]:
        """Figure builders by title (built when exported)."""
        r = self.result
        if r is None:
            return {}
        row, el = min(self.row, len(r.samples) - 1), min(self.element, len(r.elements) - 1)
        classes, method, color = self.classes or None, self.method, self.color
        figs = {"Aggregate NERO plot": lambda: views.aggregate_plot(r, classes)}
        for name in r.models:
            figs[f"Samples of {name}"] = lambda name=name: views.sample_scatter(r, name, method, color)
        figs[f"Sample {int(r.samples[row])} along the orbit"] = lambda: views.individual_plot(r, row, el)
        figs[f"Sample {int(r.samples[row])} at {r.elements.label(el)}"] = lambda: views.detail_view(
            r, row, el
        )
        return figs

    def tables(self) -> dict[str, Any]:
        """Table builders by title (CSV)."""
        r = self.result
        if r is None:
            return {}

        def per_element() -> pd.DataFrame:
            cols = ["model", "element", *r.elements.columns()]
            return r.table.groupby(cols, observed=True)[["score", "correct"]].mean().reset_index()

        return {"orbits": lambda: r.table, "summary": lambda: r.summary_table, "aggregate": per_element}

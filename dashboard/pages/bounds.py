"""The Bounds page: IBP tightness and Lipschitz bounds of one model, in two tabs.

What the page shows, from an :class:`~analyses.bounds.analysis.IBPResult` and a
:class:`~analyses.bounds.analysis.LipschitzResult` of the same model and data:

- **IBP tightness** (Mao et al., ICLR 2024): the mean local tightness per layer (log scale, 1 =
  interval bounds are exact), the output tightness against the input radius eps, and per ReLU
  layer the shares of stable-active, stable-inactive and unstable units;
- **Lipschitz** (Khromov & Singh, ICLR 2024): the certified product upper bound against the
  empirical Jacobian-norm lower bound per layer (log scale) with the gap between them, and a
  histogram of per-sample Jacobian norms: tap a bar to see those samples;
- export of every figure (SVG, PNG, PDF, offline HTML) and of the tables (CSV).

The navigation has two entries for this one page ("IBP tightness", slug ``bounds``, and
"Lipschitz", slug ``lipschitz``); the app calls :meth:`BoundsPage.show_tab`. The page computes
nothing itself: both analyses run in one :class:`JobPanel` job; the views come from
:mod:`analyses.bounds.views`. In a notebook ``BoundsPage(model="cnn")`` runs in the cell.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pandas as pd
import panel as pn
import param

from analyses.bounds import views
from analyses.bounds.analysis import IBPTightness, LipschitzBounds
from analyses.core.errors import NNVitalsError
from analyses.orbits.fitting import fitting_data

from ..components import links
from ..components.page import PLOT_MIN_WIDTH, AnalysisPage, model_label, note_pane, plot_grid, plot_pane
from ..components.settings_form import RADIO, WIDGET_WIDTH

log = logging.getLogger("nnvitals.app")

DATA_CHOICES = {"digits 8x8": "digits", "digits 16x16": "digits16", "digits 32x32": "digits32"}
#: image side -> the bounds analyses' names of the built-in digits
_DATA_NAMES = {8: "digits", 16: "digits16", 32: "digits32"}
#: the sizes tried on a model that records no input shape (8x8 first: the cheapest bounds)
_FIT_CANDIDATES = ("digits8", "digits16", "digits32")
TABS = {"ibp": 0, "lipschitz": 1, "export": 2}
DEFAULT_SWEEP = [0.001, 0.003, 0.01, 0.03, 0.1]
BINS = 20


def data_fit(model: Any) -> tuple[str, str | None]:
    """The built-in digits ``model`` takes and, when none fits it, the one line that says which data
    it needs: ``(data, problem)``. From the model itself (:func:`~analyses.orbits.fitting.fitting_data`):
    a demo's training size, a ``.pt2`` program's recorded input shape, else a forward pass on a tiny
    batch. 8x8 digits (and no problem) when the model says nothing (weights only, a missing file:
    the run itself says why)."""
    try:
        fit = fitting_data(model, _FIT_CANDIDATES)
    except NNVitalsError as e:
        return "digits", str(e)
    if fit is None:
        return "digits", None
    data = _DATA_NAMES[fit.side]
    if fit.flatten:
        return data, (
            f"model {model_label(model)}: takes {fit.describe()}; the bounds analyses feed images "
            f"(N, 1, S, S): give a model that flattens its input itself"
        )
    return data, None


def data_for(model: Any) -> str:
    """The built-in digits ``model`` takes (see :func:`data_fit`; 8x8 when it does not say)."""
    return data_fit(model)[0]


def parse_eps_list(text: str) -> list[float]:
    """'0.001, 0.01 0.1' -> [0.001, 0.01, 0.1]; a clear error otherwise."""
    items = [t for t in text.replace(",", " ").split() if t]
    try:
        return [float(t) for t in items]
    except ValueError:
        raise NNVitalsError(
            f"eps sweep: expected numbers separated by commas (0.001, 0.01, 0.1), got {text!r}"
        ) from None


class BoundsPage(AnalysisPage):
    """IBP tightness and Lipschitz bounds (see the module docstring): ``BoundsPage(model="cnn")``."""

    slug = "bounds"
    title = "IBP tightness & Lipschitz"
    #: set once for both analyses by the page's own controls (the seed stays the analyses' default)
    own = ("data", "data_range", "max_samples", "seed")
    widget_types = {"spec": RADIO, "relu": RADIO}
    question = "How loose are interval bounds through this network, and how smooth is the function?"

    model = param.Parameter(default=None, doc="The model analysed (runnable: demo name, .pt2, module).")
    ibp_result = param.Parameter(default=None, doc="The current IBPResult.")
    lip_result = param.Parameter(default=None, doc="The current LipschitzResult.")
    bar = param.Integer(default=0, doc="Selected bar of the Jacobian-norm histogram.")

    def build(self, model: Any) -> None:
        if model is None:
            model = self.picker.model if self.picker is not None else self.settings.default_model
        data, self._fit_problem = data_fit(model)
        common = dict(
            model=model,
            data=data,
            show_progress=False,
            runner=self.settings.runner,
            max_samples=128,
        )
        self.ibp = IBPTightness(eps=0.01, eps_sweep=list(DEFAULT_SWEEP), **common)
        self.lip = LipschitzBounds(mixes=128, **common)
        self.explorer: views.JacobianExplorer | None = None
        self._build_controls()
        self._build_main()
        self.model = model

    # ------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        w, p = WIDGET_WIDTH, self.ibp.param
        self._data = pn.widgets.Select(name=p.data.label, options=DATA_CHOICES, value=self.ibp.data, width=w)
        self._lo = pn.widgets.FloatInput(name="Data range: low", value=0.0, width=110)
        self._hi = pn.widgets.FloatInput(name="high", value=1.0, width=110)
        self._samples = pn.widgets.IntInput(name=p.max_samples.label, value=128, start=1, width=w)
        # eps and its sweep are read when Run is pressed: the analysis says what is wrong with them
        self._eps = pn.widgets.FloatInput(name=p.eps.label, value=0.01, step=0.005, width=w)
        self._sweep = pn.widgets.TextInput(
            name=p.eps_sweep.label, value=", ".join(f"{e:g}" for e in DEFAULT_SWEEP), width=w
        )
        ibp = self.settings_form(self.ibp, custom={"eps": self._eps, "eps_sweep": self._sweep})
        # the Lipschitz bounds run on the IBP settings' dtype and device
        lip = self.settings_form(self.lip, "lipschitz", own=(*self.own, "dtype", "device"))
        self.controls = self.controls_column(
            "Bounds settings",
            self._data,
            pn.Row(self._lo, self._hi),
            self._samples,
            pn.pane.Markdown("**IBP tightness**", margin=(5, 10, 0, 10)),
            ibp.basic,
            ibp.advanced,
            pn.pane.Markdown("**Lipschitz**", margin=(5, 10, 0, 10)),
            lip.basic,
            lip.advanced,
        )

    def _build_main(self) -> None:
        running = "*The analysis is running …*"
        self._ibp_plots = plot_grid(pn.pane.Markdown(running), css_classes=["nnv-bounds-ibp"])
        self._lip_plots = plot_grid(pn.pane.Markdown(running), css_classes=["nnv-bounds-lip"])
        self._hist = pn.Column(
            sizing_mode="stretch_width", min_width=PLOT_MIN_WIDTH, css_classes=["nnv-bounds-histogram"]
        )
        self._samples_view = pn.Column(css_classes=["nnv-bounds-samples"])
        self._selection = pn.pane.Markdown(
            "", css_classes=["nnv-bounds-selection"], sizing_mode="stretch_width"
        )
        ibp_tab = pn.Column(
            note_pane(
                "Tightness = optimal box radius / IBP box radius of the network linearised at each sample "
                "(1: interval bounds are exact). It falls with width and depth at initialisation; IBP "
                "training raises it, standard training does not. ReLU stability: the share of units whose "
                "sign is the same for every input within eps (stable) or not (unstable).",
            ),
            self._ibp_plots,
            sizing_mode="stretch_width",
            name="IBP tightness",
        )
        lip_tab = pn.Column(
            note_pane(
                "Upper bound: product of the layers' own Lipschitz constants (certified). Lower bound: the "
                "largest input-Jacobian norm ‖J(x)‖ over train and test samples and midpoints of sample "
                "pairs. Tap a bar of the histogram to see its samples (largest norm first).",
            ),
            self._lip_plots,
            self._selection,
            pn.Row(
                self._hist, self._samples_view, sizing_mode="stretch_width", css_classes=["nnv-bounds-bar"]
            ),
            sizing_mode="stretch_width",
            name="Lipschitz",
        )
        self.main = self.main_column(
            "IBP tightness & Lipschitz bounds",
            f"{self.question} Interval bound propagation tightness "
            "(Understanding Certified Training with IBP, ICLR 2024) and Lipschitz upper vs lower bounds "
            "(Some Intriguing Aspects about Lipschitz Continuity of Neural Networks, ICLR 2024).",
            ibp_tab,
            lip_tab,
        )

    def show_tab(self, name: str) -> None:
        """Open tab ``name``: "ibp" (IBP tightness), "lipschitz" or "export"."""
        if name not in TABS:
            raise NNVitalsError(f"tab {name!r}: expected one of {', '.join(TABS)}")
        self.tabs.active = TABS[name]

    # ------------------------------------------------------------------ model
    def set_model(self, model: Any, run: bool = True) -> None:
        """Analyse ``model`` on the digits it takes (see :func:`data_fit`) and run."""
        self.model = model
        self._data.value, self._fit_problem = data_fit(model)
        if run:
            self.run()

    # ------------------------------------------------------------------ runs
    def _analyses(self) -> tuple[IBPTightness, LipschitzBounds]:
        """Copies of the two analyses with the widgets' values (what a run computes)."""
        lo, hi = self._lo.value, self._hi.value
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise NNVitalsError(f"data range: expected finite low < high, got [{lo}, {hi}]")
        eps = self._eps.value
        if eps is None:
            raise NNVitalsError("eps: expected a number >= 0")
        shared = dict(
            model=self.model, data=self._data.value, data_range=(float(lo), float(hi)),
            max_samples=max(1, int(self._samples.value or 1)),
        )  # fmt: skip
        ivals = {k: v for k, v in self.ibp.param.values().items() if k != "name"}
        ivals.update(shared, eps=float(eps), eps_sweep=parse_eps_list(self._sweep.value))
        lvals = {k: v for k, v in self.lip.param.values().items() if k != "name"}
        lvals.update(shared, dtype=self.ibp.dtype, device=self.ibp.device)
        return IBPTightness(**ivals), LipschitzBounds(**lvals)

    def job(self):
        if self._fit_problem:  # no built-in digits fit the model: say which data it needs
            raise NNVitalsError(self._fit_problem)
        ibp, lip = self._analyses()

        def work(progress, cancel):
            a = ibp.run(progress=progress, cancel=cancel)
            b = lip.run(progress=progress, cancel=cancel)
            return a, b

        return f"Bounds of {model_label(self.model)}", work

    def show(self, results) -> None:
        ibp, lip = results
        self.ibp_result, self.lip_result = ibp, lip
        if ibp.meta.get("cached") and lip.meta.get("cached"):
            how = "reused from earlier runs"
        else:
            took = [
                f"{r.meta.get('seconds', 0):.2f} s" if not r.meta.get("cached") else "reused"
                for r in (ibp, lip)
            ]
            how = f"IBP {took[0]}, Lipschitz {took[1]}"
        s = ibp.summary
        lines = [
            f"**{model_label(self.model)}** on {self._data.value}, {s['samples']} samples · {how}",
            *[f"- {line}" for line in views.ibp_summary_text(ibp).splitlines()],
            *[f"- {line}" for line in views.lipschitz_summary_text(lip).splitlines()],
        ]
        self._summary.object = "\n".join(lines)
        self._ibp_plots.objects = [
            plot_pane(views.tightness_plot(ibp), "nnv-plot-tightness"),
            plot_pane(views.tightness_vs_eps(ibp), "nnv-plot-eps"),
            plot_pane(views.stability_bars(ibp), "nnv-plot-stability"),
            plot_pane(views.certified_vs_eps(ibp), "nnv-plot-certified"),
        ]
        self._lip_plots.objects = [
            plot_pane(views.lipschitz_plot(lip), "nnv-plot-lipschitz"),
            plot_pane(views.gap_plot(lip), "nnv-plot-gap"),
        ]
        self._redraw_explorer()
        self.export_panel.refresh()

    # ------------------------------------------------------------------ linked views
    def _redraw_explorer(self) -> None:
        lip = self.lip_result
        if lip is None:
            return
        ex = views.jacobian_explorer(lip, bins=BINS)
        ex.histogram.opts(tools=["tap", "hover"], active_tools=["tap"], backend="bokeh")
        self.explorer = ex
        self.bar = ex.bar
        self._hist.objects = [plot_pane(ex.panels["histogram"], "nnv-plot-histogram")]
        ex.selection.add_subscriber(self._on_tap)
        self._draw_samples()
        self._describe()

    def _draw_samples(self) -> None:
        """A new plot of the selected bar's samples: its size and ranges follow the bar's mosaic
        (a DynamicMap would keep the first bar's, stretching the others)."""
        lip = self.lip_result
        if lip is None:
            return
        plot = views.bin_samples(lip, self.bar, bins=BINS)
        self._samples_view.objects = [plot_pane(plot, "nnv-plot-samples", stretch=False)]

    def _on_tap(self, index) -> None:
        if index:
            self.bar = int(index[0])
            self._draw_samples()
            self._describe()

    # ------------------------------------------------------------------ links (dashboard.components.links)
    def link_widgets(self) -> list[Any]:
        from ..components.links import Field

        return [
            Field("data", self._data.name, self._data),
            Field("data_low", self._lo.name, self._lo),
            Field("data_high", "Data range: high", self._hi),
            Field("max_samples", self._samples.name, self._samples),
        ]

    def link_selection(self) -> dict[str, str]:
        """The selected bar of the Jacobian-norm histogram."""
        return {"select": str(self.bar)} if self.lip_result is not None else {}

    def apply_link_selection(self, values: dict[str, str]) -> str | None:
        text = values.get("select")
        if text is None or self.lip_result is None:
            return None
        bars = len(views.histogram_bins(self.lip_result, None, BINS)) - 1
        bar, problem = links.link_choice(text, range(bars), "a bar of the histogram")
        if bar is not None:
            self.select(bar)
        return problem

    def select(self, bar: int) -> None:
        """Select histogram bar ``bar``, as a tap does."""
        if self.explorer is not None:
            self.explorer.show(bar)

    def _describe(self) -> None:
        lip = self.lip_result
        if lip is None:
            return
        edges = views.histogram_bins(lip, None, BINS)
        bar = min(max(0, self.bar), len(edges) - 2)
        df = views.samples_in_bin(lip, bar, None, BINS)
        head = ", ".join(
            f"{views.SPLIT_NAMES.get(r.split, r.split)} #{r.row}"
            + (f" (label {r.label})" if r.label >= 0 else "")
            + f" {r.jacobian_norm:.3g}"
            for r in df.head(6).itertuples()
        )
        more = f", … {len(df) - 6} more" if len(df) > 6 else ""
        n = len(df)
        self._selection.object = (
            f"**Bar {bar}**: {n} sample{'s' if n != 1 else ''} with Jacobian norm ‖J(x)‖ from "
            f"{edges[bar]:.3g} to {edges[bar + 1]:.3g}" + (f": {head}{more}" if len(df) else "")
        )

    # ------------------------------------------------------------------ export
    def figures(self) -> dict[str, Any]:
        """Figure builders by title (built when exported)."""
        figs: dict[str, Any] = {}
        ibp, lip = self.ibp_result, self.lip_result
        if ibp is not None:
            figs["IBP tightness per layer"] = lambda: views.tightness_plot(ibp)
            figs["Tightness vs eps"] = lambda: views.tightness_vs_eps(ibp)
            figs["Certified accuracy vs eps"] = lambda: views.certified_vs_eps(ibp)
            figs["ReLU stability"] = lambda: views.stability_bars(ibp)
        if lip is not None:
            bar = self.bar
            figs["Lipschitz bounds per layer"] = lambda: views.lipschitz_plot(lip)
            figs["Gap upper over lower"] = lambda: views.gap_plot(lip)
            figs["Jacobian norms"] = lambda: views.jacobian_histogram(lip, bins=BINS)
            figs[f"Samples of bar {bar}"] = lambda: views.bin_samples(lip, bar, bins=BINS)
        return figs

    def tables(self) -> dict[str, Any]:
        """Table builders by title (CSV)."""
        out: dict[str, Any] = {}
        ibp, lip = self.ibp_result, self.lip_result
        if ibp is not None:
            out["ibp"] = lambda: ibp.table
            out["ibp summary"] = lambda: pd.DataFrame([ibp.summary])
        if lip is not None:
            out["lipschitz"] = lambda: lip.table

            def per_sample() -> pd.DataFrame:
                return pd.DataFrame(
                    [
                        {"split": s, "row": i, "jacobian_norm": float(v)}
                        for s in lip.splits
                        for i, v in enumerate(lip.jacobian_norms(s))
                    ]
                )

            out["jacobian norms"] = per_sample
            bar = self.bar
            out["selected samples"] = lambda: views.samples_in_bin(lip, bar, None, BINS)
        return out

"""The Connectivity page: is there a low-loss linear path between two models, before and after alignment?

What the page shows, all from one :class:`~analyses.connectivity.analysis.ConnectivityResult`:

- loss and accuracy along ``theta(l) = (1 - l) theta_A + l theta_B``, naive (dashed) and after
  permutation matching (solid), on train and test data; tap a point of the path and the page
  offers **Analyse this interpolated model**: ``theta(l)`` is saved as a torch.export program of the
  session and becomes the sidebar's model, so Spectra, Lipschitz, ... analyse it (one model, all views);
- the loss and error barriers, naive vs matched;
- per layer, what the alignment changed (L2 distance, alignment of the top singular vectors);
- with more models: the barrier of every pair and the loss over the plane through three;
- export of every figure (SVG, PNG, PDF, offline HTML) and of the tables (CSV).

Model A is the sidebar's model; model B is chosen among the sidebar's sources (by default A's
partner: ``mlp-w64-a`` with ``mlp-w64-b``); the page's line under its heading says "Model A: … ·
Model B: …", naming A as the sidebar does. Opened while no model was chosen yet, the page suggests
the first demo pair's A to the picker (the sidebar then shows it). The interpolated model the page
hands on becomes the sidebar's model while the page keeps comparing A and B; its line then says so.
The page computes nothing itself:
:class:`~analyses.connectivity.analysis.ModeConnectivity` runs in a :class:`JobPanel`, the views
come from :mod:`analyses.connectivity.views`. In a notebook,
``ConnectivityPage(model=["mlp-w64-a", "mlp-w64-b"])`` runs in the cell and displays the page.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn
import param

from analyses.connectivity import views
from analyses.connectivity.analysis import ModeConnectivity
from analyses.zoo import DEMO_MODELS, demo_image_size

from ..components import links
from ..components.jobs import JobPanel, how_obtained, in_server, saved_in
from ..components.page import AnalysisPage, model_label, note_pane, plot_grid, plot_pane
from ..components.settings_form import RADIO, WIDGET_WIDTH

log = logging.getLogger("nnvitals.app")

#: demo pairs (same architecture, different seeds), the first one present is the page's default
DEMO_PAIRS = (("mlp-w64-a", "mlp-w64-b"), ("mlp-w512-a", "mlp-w512-b"), ("bn-cnn-a", "bn-cnn-b"))
DATA_CHOICES = {"digits 8x8": "digits", "digits 16x16": "digits16", "digits 32x32": "digits32"}


def panels_of(obj: Any) -> list[Any]:
    """The panels of a HoloViews layout (one pane each), or ``[obj]``."""
    return list(obj) if isinstance(obj, hv.Layout) else [obj]


def demo_data_name(model: Any) -> str | None:
    """The built-in data (ModeConnectivity's name) a demo model was trained on, else None."""
    return {8: "digits", 16: "digits16", 32: "digits32"}.get(demo_image_size(model))


def partner(model: Any, candidates: list[Any]) -> Any | None:
    """The default model B for ``model``: its demo pair partner (``x-a`` <-> ``x-b``), else its
    trained / untrained twin, else None."""
    if not isinstance(model, str):
        return None
    options = []
    if model.endswith("-a"):
        options.append(model[:-2] + "-b")
    if model.endswith("-b"):
        options.append(model[:-2] + "-a")
    options.append(model.removesuffix("-untrained") if model.endswith("-untrained") else f"{model}-untrained")
    return next((c for c in options if c in candidates and c != model), None)


class ConnectivityPage(AnalysisPage):
    """Linear mode connectivity page (see the module docstring): ``ConnectivityPage(model=[a, b])``."""

    slug = "connectivity"
    title = "Connectivity"
    #: the page's own controls: model B and more models (the sidebar's sources), the data
    own = ("models", "data")
    widget_types = {"match": RADIO, "bn_reset": RADIO}
    question = "Is there a low-loss linear path between two models, before and after permutation alignment?"

    models = param.List(default=[], doc="Model A, model B and any further models (pairwise, plane).")
    result = param.Parameter(default=None, doc="The current ConnectivityResult.")
    point = param.Dict(
        default=None, allow_None=True, doc="The tapped point: path, split, lam, loss, accuracy."
    )
    picked = param.Parameter(default=None, doc="The last interpolated model saved (its file path).")

    def build(self, model: Any) -> None:
        self._tmp: Path | None = None
        self._own_pick: str | None = None
        pair = next((p for p in DEMO_PAIRS if all(m in DEMO_MODELS for m in p)), None)
        if model is None and self.picker is not None:
            # model A is the sidebar's model: the demo pair's A while nobody chose a model (the
            # picker then shows it), else the model picked
            if pair is not None:
                self.picker.suggest(pair[0])
            model = [self.picker.model]
        elif model is None:
            model = list(pair) if pair is not None else [self.settings.default_model]
        models = list(model) if isinstance(model, list | tuple) else [model, None]
        if len(models) == 1:
            models.append(partner(models[0], list(self.sources().values())))
        self.analysis = ModeConnectivity(
            show_progress=False, runner=self.settings.runner, data=self._data_for(models)
        )
        self._views: dict[str, Any] = {}
        #: the interpolated model's export ("Analyse this interpolated model"), apart from the runs
        self.pick_jobs = JobPanel()
        self._build_controls()
        self._build_main()
        self.models = models
        self._sync_choices()
        if self.picker is not None and in_server():
            pn.state.on_session_destroyed(lambda _ctx: self.close())

    # ------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        self.form = self.settings_form(self.analysis)
        p = self.analysis.param
        self._model_b = pn.widgets.Select(name="Model B (same architecture)", options={}, width=WIDGET_WIDTH)
        self._model_b.param.watch(self._on_model_b, "value")
        self._more = pn.widgets.MultiChoice(name=p.models.label, options={}, width=WIDGET_WIDTH)
        self._more.param.watch(self._on_more, "value")
        self._data = pn.widgets.Select(name=p.data.label, options=DATA_CHOICES, width=WIDGET_WIDTH)
        self._data.param.watch(lambda e: setattr(self.analysis, "data", e.new), "value")
        self.controls = self.controls_column(
            "Connectivity settings",
            note_pane("Model A is the sidebar's model; choose model B here."),
            self._model_b,
            self._more,
            self._data,
            self.form.basic,
            self.form.advanced,
        )

    def _build_main(self) -> None:
        self._paths = plot_grid(
            pn.pane.Markdown("*The analysis is running …*"), css_classes=["nnv-conn-paths"]
        )
        self._point_text = pn.pane.Markdown(
            "Tap a point of the path to pick that interpolated model.",
            css_classes=["nnv-conn-point"],
            sizing_mode="stretch_width",
        )
        self._analyse = pn.widgets.Button(
            name="Analyse this interpolated model",
            button_type="primary",
            visible=False,
            width=280,
            css_classes=["nnv-conn-analyse"],
        )
        self._analyse.on_click(lambda _e: self.analyse_point())
        self._picked_text = pn.pane.Markdown("", css_classes=["nnv-conn-picked"], sizing_mode="stretch_width")
        self._barriers = plot_grid(css_classes=["nnv-conn-barriers"])
        self._barrier_table = pn.pane.DataFrame(
            None, index=False, float_format="{:.4f}".format, sizing_mode="stretch_width"
        )
        self._layers = plot_grid(css_classes=["nnv-conn-layers"])
        self._layer_table = pn.pane.DataFrame(
            None, index=False, float_format="{:.4f}".format, sizing_mode="stretch_width"
        )
        self._many = plot_grid(css_classes=["nnv-conn-many"])
        path_tab = pn.Column(
            note_pane(
                "Each point is the model θ(λ) = (1 − λ) θ_A + λ θ_B. Dashed: B as it is (naive); solid: B with "
                "its hidden units permuted to match A. A bump above the straight line between the ends is "
                "a barrier. Tap a point to analyse that model in the other pages.",
            ),
            self._paths,
            self._point_text,
            self._analyse,
            self._picked_text,
            self.pick_jobs,
            sizing_mode="stretch_width",
            name="Path",
        )
        self.main = self.main_column(
            "Connectivity",
            f"{self.question} Linear mode connectivity with Git Re-Basin weight matching "
            "(Ainsworth et al., ICLR 2023).",
            path_tab,
            pn.Column(
                note_pane(
                    "The barrier is the largest rise of the loss (or drop of accuracy) above the straight line "
                    "between the two ends of the path; near 0 means the models are linearly connected."
                ),
                self._barriers,
                self._barrier_table,
                name="Barriers",
                sizing_mode="stretch_width",
            ),
            pn.Column(
                note_pane(
                    "Matching barely shortens the distance between the models; it aligns the singular vectors "
                    "with large singular values (Ito et al. 2024)."
                ),
                self._layers,
                self._layer_table,
                name="Layers",
                sizing_mode="stretch_width",
            ),
            pn.Column(self._many, name="Pairwise & plane", sizing_mode="stretch_width"),
        )

    # ------------------------------------------------------------------ models and data
    @staticmethod
    def _data_for(models: list[Any]) -> str:
        names = {demo_data_name(m) for m in models if m is not None} - {None}
        return names.pop() if len(names) == 1 else "digits"

    def _sync_choices(self) -> None:
        sources = self.sources()
        a = self.models[0] if self.models else None
        others = {k: v for k, v in sources.items() if v != a}
        b = self.models[1] if len(self.models) > 1 else None
        if b is not None and b not in others.values():
            others[model_label(b)] = b
        self._syncing = True
        try:
            self._model_b.options = {"(choose model B)": None, **others}
            self._model_b.value = b
            self._more.options = {k: v for k, v in others.items() if v != b}
            self._more.value = [m for m in self.models[2:] if m in self._more.options.values()]
            self._data.value = self._data_for(self.models)
        finally:
            self._syncing = False

    def on_sources(self, *_: Any) -> None:
        self._sync_choices()

    def on_picker(self, event) -> None:
        if event.new is None or (self._own_pick is not None and event.new == self._own_pick):
            return  # the interpolated model this page just handed to the other pages
        b = self.models[1] if len(self.models) > 1 else None
        # B follows A: A's partner (same architecture) when it has one, else the B chosen before
        b = partner(event.new, list(self.sources().values())) or (b if b != event.new else None)
        self.set_models([event.new, b, *[m for m in self.models[2:] if m not in (event.new, b)]])

    def _on_model_b(self, event) -> None:
        if getattr(self, "_syncing", False) or len(self.models) < 2 or event.new == self.models[1]:
            return
        self.models = [self.models[0], event.new, *[m for m in self.models[2:] if m != event.new]]
        self._sync_choices()

    def _on_more(self, event) -> None:
        if getattr(self, "_syncing", False) or not self.models:
            return
        self.models = [*self.models[:2], *event.new]

    def set_models(self, models: list[Any], run: bool = True) -> None:
        """Compare these models (A, B, then any more) and run."""
        self.models = list(models) + [None] * (2 - len(models))
        self._sync_choices()
        if run:
            self.run()

    # ------------------------------------------------------------------ runs
    def _analysis(self) -> ModeConnectivity:
        values = {
            k: v
            for k, v in self.analysis.param.values().items()
            if k not in ("name", "model", "model_b", "models")
        }
        a, b, *more = self.models
        if more:
            return ModeConnectivity(models=[a, b, *more], **values)
        return ModeConnectivity(model_a=a, model_b=b, **values)

    def job(self):
        if len(self.models) < 2 or self.models[0] is None or self.models[1] is None:
            self._summary.object = (
                "**Choose model B** in the settings: a model of the same architecture as model A "
                f"({model_label(self.models[0]) if self.models else 'none'}), e.g. the same network trained from another seed."
            )
            return None
        labels = " vs ".join(model_label(m) for m in self.models)
        return f"Connectivity of {labels}", self.work(self._analysis())

    def show(self, result) -> None:
        self.result = result
        self.point = None
        meta = result.meta
        how = how_obtained(result, float(meta.get("seconds", 0) or 0))
        s = result.summary
        labels = [model_label(m) for m in self.models]
        head = f"**{labels[0]}** (A) vs **{labels[1]}** (B)"
        if len(labels) > 2:
            head += f" and {', '.join(labels[2:])}"
        match = views.MATCH_NAMES.get(s["match"], s["match"])
        lines = [f"{head}: {s['points']} points per path, alignment by **{match}** · {how}"]
        lines += [f"- {line}" for line in views.summary_text(result).splitlines()]
        self._summary.object = "\n".join(lines)
        self._draw()
        self.export_panel.refresh()

    def analysing_text(self) -> str:
        """ "Model A: **a** · Model B: **b**" (and any more models); after an interpolated model was
        handed on, the sidebar holds it while the page keeps comparing A and B: the line says so."""
        a, b, *more = [*self.models, None, None][: max(2, len(self.models))]
        text = f"Model A: **{self.model_name(a) if a is not None else '(none)'}** · Model B: " + (
            f"**{self.model_name(b)}**" if b is not None else "*choose model B in the settings*"
        )
        if more:
            text += " · more: " + ", ".join(f"**{self.model_name(m)}**" for m in more if m is not None)
        picked = self.picker.model if self.picker is not None else None
        if picked is not None and picked != a and picked == self._own_pick:
            text += (
                f" · the sidebar's model **{self.model_name(picked)}** is interpolated between them "
                "(handed on to the other pages)"
            )
        return text

    # ------------------------------------------------------------------ views
    def _draw(self) -> None:
        r = self.result
        if r is None:
            return
        loss, acc = views.path_plot(r, "loss"), views.path_plot(r, "accuracy")
        self._views = {"loss": loss, "accuracy": acc}
        self._frame = views.path_frame(r)
        self._streams = []
        for plot in (loss, acc):
            pts = views.path_points(plot)
            pts.opts(tools=["tap", "hover"], active_tools=["tap"], backend="bokeh")
            stream = hv.streams.Selection1D(source=pts, index=[])
            stream.add_subscriber(self._on_tap)
            self._streams.append(stream)
        self._paths.objects = [
            plot_pane(loss, "nnv-plot-path-loss"),
            plot_pane(acc, "nnv-plot-path-accuracy"),
        ]
        # one pane per panel: a bokeh grid plot drawn in a hidden tab collapses to a few pixels
        self._barriers.objects = [plot_pane(p, "nnv-plot-barriers") for p in panels_of(views.barrier_plot(r))]
        self._barrier_table.object = views.barrier_table(r).rename(columns=views.BARRIER_TITLES)
        self._layers.objects = [plot_pane(p, "nnv-plot-layers") for p in panels_of(views.layer_plot(r))]
        self._layer_table.object = r.layers.rename(columns=views.LAYER_TITLES)
        path = "matched" if r.summary.get("match") != "none" else "naive"
        self._many.objects = [
            plot_pane(views.pairwise_heatmap(r, "barrier", path), "nnv-plot-pairwise"),
            plot_pane(views.plane_plot(r), "nnv-plot-plane"),
        ]
        self._describe()

    def _on_tap(self, index) -> None:
        if index:
            self.select(int(index[0]))

    # ------------------------------------------------------------------ links (dashboard.components.links)
    def link_widgets(self) -> list[Any]:
        from ..components.links import Field

        return [
            Field("model_b", self._model_b.name, self._model_b, models=True),
            Field("more", self._more.name, self._more, models=True),
            Field("data", self._data.name, self._data),
        ]

    def link_selection(self) -> dict[str, str]:
        """The picked point of the path (its row of the path frame)."""
        row = getattr(self, "_point_row", None)
        return {"select": str(row)} if self.point is not None and row is not None else {}

    def apply_link_selection(self, values: dict[str, str]) -> str | None:
        text = values.get("select")
        if text is None or self.result is None:
            return None
        row, problem = links.link_choice(text, range(len(self._frame)), "a point of the path")
        if row is not None:
            self.select(row)
        return problem

    def select(self, row: int) -> None:
        """Pick point ``row`` of :func:`analyses.connectivity.views.path_frame` (as a tap does)."""
        if self.result is None:
            return
        frame = self._frame
        row = min(max(0, int(row)), len(frame) - 1)
        self._point_row = row
        rec = frame.iloc[row]
        self.point = {
            "path": str(rec["path"]), "split": str(rec["split"]), "lam": float(rec["lam"]),
            "loss": float(rec["loss"]), "accuracy": float(rec["accuracy"]),
        }  # fmt: skip
        self._describe()

    def _describe(self) -> None:
        p = self.point
        if p is None:
            self._point_text.object = "Tap a point of the path to pick that interpolated model."
            self._analyse.visible = False
            return
        self._point_text.object = (
            f"**θ(λ = {p['lam']:.3f})** on the **{p['path']}** path: {p['split']} loss {p['loss']:.4f}, "
            f"accuracy {p['accuracy']:.3f}"
        )
        self._analyse.visible = True

    # ------------------------------------------------------------------ one model, all views
    def _out_dir(self) -> Path:
        if self.picker is not None:
            d = Path(self.picker.upload_dir)
        else:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="nnvitals-interp-"))
            d = self._tmp
        d.mkdir(parents=True, exist_ok=True)
        return d

    def analyse_point(self) -> Path | None:
        """Save the tapped interpolated model (a ``.pt2`` program, in the session's temporary
        directory) and make it the sidebar's model, so every other page analyses it.

        The export is a job of its own (:attr:`pick_jobs`, off the server's event loop): it takes
        seconds, and waits while another session's run calls a model
        (:data:`analyses.core.threads.MODEL_TURN`), saying so, with a Cancel button; the button is
        disabled meanwhile. Returns the file when it was saved before this returns (always
        outside a server), else None."""
        p, r = self.point, self.result
        if p is None or r is None:
            self.jobs.show_error("no point picked: tap a point of the path first")
            return None
        try:
            path = self._out_dir() / f"interpolated-{p['path']}-lam{p['lam']:.3f}.pt2"
        except OSError as e:
            self.jobs.show_error(f"could not save the interpolated model ({e.strerror or e})")
            return None
        analysis, saved = self._analysis(), []

        def work(progress, cancel) -> Path:  # a file it cannot write is one line (save_program)
            progress(0, 1, path.name)
            return analysis.export_interpolated(path, p["lam"], p["path"], r, progress, cancel)

        def done(_file: Path) -> None:
            self._analyse.disabled = False
            saved.append(path)
            self._saved_point(path, p)

        def reset() -> None:  # failed (the job panel says why) or cancelled
            self._analyse.disabled = False
            self._picked_text.object = ""

        self._analyse.disabled = True
        self._picked_text.object = ""  # the job panel below says what is going on
        self.pick_jobs.submit(f"Saving {path.name}", work, done, on_error=lambda _m: reset(), on_cancel=reset,
                              describe=saved_in)  # fmt: skip
        return saved[0] if saved else None

    def _saved_point(self, path: Path, p: dict[str, Any]) -> None:
        self.picked = str(path)
        label = f"θ(λ={p['lam']:.2f}) {p['path']}, {' – '.join(model_label(m) for m in self.models[:2])}"
        if self.picker is not None:
            self._own_pick = str(path)
            self.picker.add_file(path, label)
            self._update_analysing()
            self._picked_text.object = (
                f"Saved **{path.name}**; it is now the model picked in the sidebar: open **Spectra** or "
                "**IBP tightness / Lipschitz** to analyse it (this page keeps comparing A and B)."
            )
        else:
            self._picked_text.object = f"Saved **{path}**."
        log.info("interpolated model saved to %s", path)

    def close(self) -> None:
        """Delete this page's own temporary files (with a picker they live in its upload directory)."""
        self.jobs.close("page closed")
        self.pick_jobs.close("page closed")
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ export
    def figures(self) -> dict[str, Any]:
        """Figure builders by title (built when exported)."""
        r = self.result
        if r is None:
            return {}
        figs = {
            "Loss along the path": lambda: views.path_plot(r, "loss"),
            "Accuracy along the path": lambda: views.path_plot(r, "accuracy"),
            "Barriers": lambda: views.barrier_plot(r),
            "Per-layer alignment": lambda: views.layer_plot(r),
        }
        if int(r.summary.get("models", 2)) >= 3:
            path = "matched" if r.summary.get("match") != "none" else "naive"
            figs["Pairwise barriers"] = lambda: views.pairwise_heatmap(r, "barrier", path)
            figs["Loss over the plane"] = lambda: views.plane_plot(r)
        return figs

    def tables(self) -> dict[str, Any]:
        """Table builders by title (CSV)."""
        r = self.result
        if r is None:
            return {}
        out: dict[str, Any] = {
            "path": lambda: r.table,
            "barriers": lambda: views.barrier_table(r),
            "layers": lambda: r.layers,
        }
        if int(r.summary.get("models", 2)) >= 3:
            out["pairwise"] = lambda: pd.DataFrame(
                r.pairwise("barrier_matched" if r.summary.get("match") != "none" else "barrier_naive")
            )
        return out

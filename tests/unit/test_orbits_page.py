"""The Orbits page in Python (no browser): runs, linked selection, slider, export, errors."""

from __future__ import annotations

import panel as pn
import pytest

from analyses.core.errors import NNVitalsError
from dashboard.app import NNVitalsApp
from dashboard.pages.orbits import OrbitsPage, demo_data_name
from dashboard.settings import AppSettings


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def page():
    p = OrbitsPage(model=["cnn", "mlp"], run=False)
    p.analysis.param.update(max_samples=80, steps=24)
    p.run()
    return p


def test_page_runs_two_models_and_draws_linked_views(page):
    r = page.result
    assert r is not None and r.models == ["cnn", "mlp"]
    assert page.analysis.data == "digits8"  # the demo models' own image size
    assert "rotation** orbit, 24 elements" in page._summary.object
    assert "cnn: mean" in page._summary.object and "mlp: mean" in page._summary.object
    for pane in (page._aggregate, page._scatter, page._individual, page._image, page._probs):
        assert len(pane.objects) == 1
    pn.panel(page).get_root()


def test_tap_and_slider_update_the_selection(page):
    page.select(row=7)
    assert page.row == 7 and page.explorer.row == 7
    page._slider.value = 6  # 90 degrees
    assert page.element == 6
    text = page._selection.object
    r = page.result
    assert f"Sample {int(r.samples[7])}" in text and "90°" in text
    assert f"cnn {r.scores('cnn')[7, 6]:.3f}" in text
    # the transformed sample follows: its frame shows the chosen element
    frame = page.explorer.panels["image"][()]
    assert "90°" in frame.label or "90°" in str(frame.opts.get().kwargs.get("title", ""))


def test_class_subset_and_colour_redraw(page):
    before = page.explorer
    page._classes.value = ["3", "8"]
    assert page.classes == [3, 8] and page.explorer is not before
    page.color = "variance"
    page.method = "pca"
    assert page.explorer.panels["scatter"] is not None


def test_export_figures_and_tables(page, tmp_path):
    figs = list(page.figures())
    assert figs[0] == "Aggregate NERO plot" and "Samples of mlp" in figs
    svg = page.export("Aggregate NERO plot", tmp_path / "agg.svg")
    assert "<svg" in svg.read_text()[:2000]
    csv = page.export("aggregate", tmp_path / "agg.csv")
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("model,element,angle") and len(lines) == 1 + 2 * 24
    with pytest.raises(NNVitalsError, match="nothing by that name"):
        page.export("nope", tmp_path / "x.svg")


def test_errors_are_shown_not_raised():
    p = OrbitsPage(model=["assets/zoo/cnn.safetensors"])
    assert p.result is None and "holds weights only" in p.jobs.error
    p = OrbitsPage(model=["mlp"], run=False)
    p.analysis.data = "digits16"
    p.run()
    assert "failed on images of shape" in p.jobs.error
    p = OrbitsPage(model=["cnn"], run=False)
    p.analysis.classes = [42]
    p.run()
    assert "classes: [42]" in p.jobs.error


def test_in_the_app_the_page_follows_the_picker():
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.page = "orbits"
    page = app.pages["orbits"]
    assert app._main.objects == [page.main]
    page.analysis.max_samples = 30
    app.picker.model = "cnn"
    assert page.models == ["cnn"] and page.analysis.data == "digits8"
    assert page.result is not None and page.result.models == ["cnn"]
    app.close()


def test_demo_data_names():
    assert demo_data_name("cnn") == "digits8"
    assert demo_data_name("not-a-demo") is None


def test_server_npz_data_is_offered_and_bad_data_is_reported(tmp_path):
    import numpy as np

    from dashboard.components.model_picker import ModelPicker

    good, bad = tmp_path / "good.npz", tmp_path / "sub" / "flat.npz"
    bad.parent.mkdir()
    np.savez(good, x=np.random.rand(12, 1, 8, 8).astype("float32"), y=np.arange(12) % 10)
    np.savez(bad, x=np.random.rand(12, 64).astype("float32"), y=np.arange(12) % 10)
    picker = ModelPicker(allow_dirs=[tmp_path], default="cnn")
    page = OrbitsPage(picker=picker, run=False)
    labels = {k: v for k, v in page._data.options.items() if k.startswith("server:")}
    assert set(labels) == {f"server: {tmp_path.name}/good.npz", f"server: {tmp_path.name}/sub/flat.npz"}
    page.analysis.steps = 4
    page._data.value = str(good.resolve())
    page.run()
    assert page.result is not None and len(page.result.samples) == 12
    page._data.value = str(bad.resolve())
    page.run()
    assert "images of shape (N, C, H, W)" in page.jobs.error
    picker.close()


def test_summary_says_how_the_result_was_obtained_in_plain_words():
    """Computed, or loaded from the cache: the jobs panel's wording, not "from the result store"."""
    from dashboard.components.jobs import FROM_CACHE

    p = OrbitsPage(model=["cnn"], run=False)
    p.analysis.param.update(max_samples=20, steps=4)
    p.run()
    assert "Computed in" in p._summary.object and "result store" not in p._summary.object
    p.run()  # the same settings again: the result comes from the cache
    assert p.result.meta.get("cached")
    assert FROM_CACHE in p._summary.object and "result store" not in p._summary.object


def test_export_files_are_named_after_the_models(page):
    page.export_panel.refresh()
    buttons = page.export_panel._buttons
    assert buttons["png"].filename == "orbits_aggregate_nero_plot-cnn-vs-mlp.png"
    assert buttons["svg"].filename == "orbits_aggregate_nero_plot-cnn-vs-mlp.svg"
    csv = [b.filename for b in page.export_panel._table_row.objects]
    assert "orbits_orbits-cnn-vs-mlp.csv" in csv and "orbits_aggregate-cnn-vs-mlp.csv" in csv


def test_in_the_app_the_page_and_the_sidebar_name_the_same_model(monkeypatch):
    """Opened while nobody chose a model, the page's rotation demos start with the picker's model
    (the picker shows rot-cnn); once a model was chosen, the page analyses it. Its line says which."""
    import dashboard.pages.orbits as orbits

    monkeypatch.setattr(orbits, "PAGE_DEFAULTS", {"steps": 4, "max_samples": 20})
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    assert app.get_page("spectra").analysing.object == "Analysing: **mlp**"
    app.page = "orbits"
    page = app.pages["orbits"]
    assert app.picker.model == "rot-cnn" and app.picker._select.value == "rot-cnn"
    assert page.models == list(orbits.DEMO_SET)
    assert page.analysing.object.startswith("Analysing: **rot\\-cnn** · compared with **rot\\-cnn\\-aug**")
    assert page.main.objects[1] is page.analysing  # right under the heading
    assert app.pages["spectra"].analysing.object == "Analysing: **rot\\-cnn**"  # every page: one model
    app.picker._select.value = "cnn"  # chosen in the sidebar
    assert page.models == ["cnn"] and page.analysing.object == "Analysing: **cnn**"
    app.close()

    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.picker._select.value = "mlp-untrained"
    app.picker._select.value = "mlp"  # chosen: the page must not replace it with its demos
    app.page = "orbits"
    page = app.pages["orbits"]
    assert app.picker.model == "mlp" and page.models == ["mlp"]
    assert page.analysing.object == "Analysing: **mlp**"
    app.close()

"""The Bounds page in Python (no browser): both tabs, tap a bar, export, errors, the app's two entries."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import pytest
import torch
from bokeh.core.validation import check_integrity
from bokeh.document import Document
from bokeh.models import Plot
from torch import nn

from analyses.core.errors import NNVitalsError
from dashboard.app import NNVitalsApp
from dashboard.pages.bounds import BoundsPage, data_fit, data_for, parse_eps_list
from dashboard.settings import AppSettings


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def page():
    p = BoundsPage(model="mlp", run=False)
    p._samples.value = 32
    p.lip.mixes = 16
    p.run()
    return p


def test_page_runs_both_analyses_and_draws_both_tabs(page):
    assert page.jobs.error == "" and page.ibp_result is not None and page.lip_result is not None
    assert page.ibp.data == "digits"  # the demo models' 8x8 digits
    text = page._summary.object
    assert "**mlp** on digits, 32 samples" in text and "output tightness" in text and "gap" in text
    assert "result store" not in text
    assert len(page._ibp_plots.objects) == 4 and len(page._lip_plots.objects) == 2
    for pane in (*page._ibp_plots, *page._lip_plots, *page._hist, *page._samples_view):
        assert isinstance(pane, pn.pane.HoloViews)
    assert [t.name for t in page.tabs] == ["IBP tightness", "Lipschitz", "Export"]
    page.show_tab("lipschitz")
    assert page.tabs.active == 1
    page.show_tab("ibp")
    assert page.tabs.active == 0
    with pytest.raises(NNVitalsError, match="tab 'x'"):
        page.show_tab("x")
    # bokeh's layout checks pass: no "fixed sizing mode needs width and height" (W-1005), the
    # warning of the grid plots that collapsed in a hidden tab
    root = pn.panel(page).get_root(Document())
    warnings = check_integrity(list(root.references())).warning
    assert not [w for w in warnings if w.code == 1005], warnings


def test_tap_a_bar_lists_its_samples(page):
    counts = page.explorer.histogram.dimension_values("n_samples")
    k = int(counts.argmax())
    page.select(k)
    assert page.bar == k
    assert f"**Bar {k}**: {int(counts[k])} samples" in page._selection.object
    # a new plot for each bar: its size and ranges are those of this bar's mosaic
    (pane,) = page._samples_view.objects
    img = pane.object
    assert (
        isinstance(img, hv.Image)
        and f"{int(counts[k])} samples" in img.opts.get(backend="bokeh").kwargs["title"]
    )
    model = pane.get_root()
    (plot,) = model.select({"type": Plot})
    x0, y0, x1, y1 = img.bounds.lbrt()
    assert (plot.x_range.start, plot.x_range.end, plot.y_range.start, plot.y_range.end) == (x0, x1, y0, y1)
    sel = page.tables()["selected samples"]()
    assert len(sel) == int(counts[k])
    last = int(np.flatnonzero(counts)[-1])
    page.select(last)
    shown = page._samples_view.objects[0].object
    assert f"{int(counts[last])} sample" in shown.opts.get(backend="bokeh").kwargs["title"]
    assert shown.bounds.lbrt() != img.bounds.lbrt() or counts[last] == counts[k]


def test_export_figures_and_tables(page, tmp_path):
    figs = list(page.figures())
    assert figs[:2] == ["IBP tightness per layer", "Tightness vs eps"] and "Jacobian norms" in figs
    svg = page.export("Lipschitz bounds per layer", tmp_path / "b.svg")
    assert "<svg" in svg.read_text()[:2000]
    csv = page.export("ibp", tmp_path / "ibp.csv").read_text().splitlines()
    assert csv[0].startswith("position,name,node,kind") and len(csv) == 1 + len(page.ibp_result.table)
    page.export_panel.refresh()
    assert page.export_panel._buttons["svg"].filename == "bounds_ibp_tightness_per_layer-mlp.svg"
    norms = page.export("jacobian norms", tmp_path / "n.csv").read_text().splitlines()
    assert len(norms) == 1 + 32 + 32 + 16
    with pytest.raises(NNVitalsError, match="nothing by that name"):
        page.export("nope", tmp_path / "x.svg")


def test_bad_input_is_one_visible_message(page):
    page._eps.value = -0.1
    page.run()
    assert page.jobs.error.startswith("eps: must be a finite number >= 0")
    page._eps.value = 0.01
    page._hi.value = 0.5
    page.run()
    assert "outside data_range [0, 0.5]" in page.jobs.error
    page._hi.value = 1.0
    page._sweep.value = "0.01, x"
    page.run()
    assert "eps sweep: expected numbers" in page.jobs.error
    p = BoundsPage(model="assets/zoo/cnn.safetensors")
    assert p.ibp_result is None and "holds weights only" in p.jobs.error
    for text in (page.jobs.error, p.jobs.error):
        assert "Traceback" not in text and "internal error" not in text


def test_in_the_app_both_entries_show_this_page():
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    app.page = "bounds"
    bounds = app.pages["bounds"]
    assert app._main.objects == [bounds.main] and bounds.tabs.active == 0
    assert bounds.ibp_result is not None and bounds.lip_result is not None
    app.page = "lipschitz"
    assert app._main.objects == [bounds.main] and bounds.tabs.active == 1
    assert "lipschitz" not in app.pages  # one page object, two entries
    bounds._samples.value = 16
    app.picker.model = "mlp-untrained"
    assert bounds.model == "mlp-untrained" and bounds.ibp_result.meta["subject"]["label"] == "mlp-untrained"
    app.close()


def test_helpers():
    assert data_for("cnn") == "digits" and data_for("rot-cnn") == "digits16" and data_for("x.pt2") == "digits"
    assert parse_eps_list("0.001, 0.01 0.1") == [0.001, 0.01, 0.1]


def _export(module: nn.Module, shape: tuple[int, ...], path) -> str:
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(*shape),)), str(path))
    return str(path)


def test_a_16_pixel_export_runs_on_16x16_digits(tmp_path):
    """A .pt2 program taking 16x16 images picked on the page runs on 16x16 digits (it got 8x8 ones
    and failed, the run saying the program takes (1, 16, 16) but the data has (1, 8, 8))."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    path = _export(cnn, (2, 1, 16, 16), tmp_path / "cnn16.pt2")
    page = BoundsPage(model="mlp", run=False)
    page._samples.value = 16
    page.lip.mixes = 8
    page.set_model(path)
    assert page.jobs.error == "", page.jobs.error
    assert page._data.value == "digits16"
    assert page.ibp_result is not None and page.lip_result is not None
    assert page.ibp_result.summary["samples"] == 16
    assert page.ibp_result.meta["subject"]["label"] == "cnn16.pt2"
    # a page opened on it starts on the data it takes
    assert BoundsPage(model=path, run=False)._data.value == "digits16"


def test_a_model_no_digits_fit_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    flat = _export(
        nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), (2, 64), tmp_path / "f.pt2"
    )
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    rgb = _export(rgb, (2, 3, 32, 32), tmp_path / "rgb.pt2")
    for path, needs in ((flat, "flattened to 64 features"), (rgb, r"inputs of shape (N, 3, 32, 32)")):
        page = BoundsPage(model=path, run=False)
        page.run()
        assert page.ibp_result is None
        error = page.jobs.error
        assert needs in error and "\n" not in error.strip() and "Traceback" not in error, error
    assert data_fit("mlp") == ("digits", None) and data_fit("x.pt2") == ("digits", None)

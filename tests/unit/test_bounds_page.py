"""The Bounds page in Python (no browser): both tabs, tap a bar, export, errors, the app's two entries."""

from __future__ import annotations

import panel as pn
import pytest

from analyses.core.errors import NNVitalsError
from dashboard.app import NNVitalsApp
from dashboard.pages.bounds import BoundsPage, data_for, parse_eps_list
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
    for pane in (page._tightness, page._vs_eps, page._stability, page._bounds, page._gap, page._hist,
                 page._samples_view):  # fmt: skip
        assert len(pane.objects) == 1 and isinstance(pane.objects[0], pn.pane.HoloViews)
    assert [t.name for t in page.tabs] == ["IBP tightness", "Lipschitz", "Export"]
    page.show_tab("lipschitz")
    assert page.tabs.active == 1
    page.show_tab("ibp")
    assert page.tabs.active == 0
    with pytest.raises(NNVitalsError, match="tab 'x'"):
        page.show_tab("x")
    pn.panel(page).get_root()


def test_tap_a_bar_lists_its_samples(page):
    counts = page.explorer.histogram.dimension_values("n_samples")
    k = int(counts.argmax())
    page.select(k)
    assert page.bar == k
    assert f"**Bar {k}**: {int(counts[k])} samples" in page._selection.object
    frame = page.explorer.samples[()]
    assert f"{int(counts[k])} samples" in frame.opts.get(backend="bokeh").kwargs["title"]
    sel = page.tables()["selected samples"]()
    assert len(sel) == int(counts[k])


def test_export_figures_and_tables(page, tmp_path):
    figs = list(page.figures())
    assert figs[:2] == ["IBP tightness per layer", "Tightness vs eps"] and "Jacobian norms" in figs
    svg = page.export("Lipschitz bounds per layer", tmp_path / "b.svg")
    assert "<svg" in svg.read_text()[:2000]
    csv = page.export("ibp", tmp_path / "ibp.csv").read_text().splitlines()
    assert csv[0].startswith("position,name,node,kind") and len(csv) == 1 + len(page.ibp_result.table)
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

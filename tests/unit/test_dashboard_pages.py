"""Pages and the app shell built in Python (as in a notebook): runs, linked selection, export."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("panel")

import panel as pn  # noqa: E402
from bokeh.document import Document  # noqa: E402

from analyses.core.errors import NNVitalsError  # noqa: E402
from analyses.spectra import views  # noqa: E402
from dashboard.app import NNVitalsApp, runner_markdown  # noqa: E402
from dashboard.pages.spectra import SpectraPage  # noqa: E402
from dashboard.settings import AppSettings  # noqa: E402


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def page():
    return SpectraPage(model="mlp")


def test_page_runs_and_shows_plots(page):
    assert page.result is not None and page.result.summary["layers_analysed"] == 3
    assert page.explorer.names == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert page.selected == ["fc1.weight"]
    assert list(page._table.value["name"]) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    # the three linked plots are plain bokeh figures (a new session draws them in milliseconds)
    panes = [o for o in page._plots.objects if isinstance(o, pn.pane.Bokeh)]
    assert len(panes) == 3 and panes == page._plots.objects
    root = pn.panel(page).get_root(Document())  # renders with bokeh
    assert root is not None
    assert "3 analysed" in page._summary.object and "mlp" in page._summary.object


def test_identical_runs_come_from_the_result_store(page):
    assert "computed in" in page._summary.object
    again = SpectraPage(model="mlp")
    assert again.result.meta["cached"] is True and "reused from an earlier run" in again._summary.object


def test_selection_links_plot_and_table_both_ways(page):
    page.select("fc2.weight")
    assert page.selected == ["fc2.weight"]
    assert page._table.selection == [1]
    assert "fc2.weight" in page._selection_text.object
    page._table.selection = [0, 2]  # ctrl-click in the table
    assert page.selected == ["fc1.weight", "fc3.weight"]
    assert page.explorer.stream.index == [0, 2]
    assert len(page._grid.objects) == 2  # heading + the ESDs side by side
    page.explorer.stream.event(index=[2])  # a tap in the plot
    assert page._table.selection == [2] and page._grid.objects == []
    with pytest.raises(NNVitalsError, match="not in the alpha plot"):
        page.select("nope")


def _plot_selection(page) -> list[int]:
    """The points the rendered metric plot highlights (its bokeh data source's selection)."""
    pane = page._plots.objects[0]
    assert pane.object is page.explorer.metric_figure and pane._models, "the metric plot was not rendered"
    return list(page.explorer.source.selected.indices)


def test_one_selection_everywhere(page):
    """A table click after a box-select moves the plot's highlighted points too (the plot kept
    highlighting the box-selected layers while the rest of the page showed the clicked one)."""

    async def session():  # as in a served session or a notebook: an event loop runs
        page._plots.objects[0].get_root(Document())  # rendered, as in a browser
        page.explorer.stream.event(index=[0, 1])  # a box-select of fc1 and fc2 in the plot
        page._table.selection = [2]  # then a click on fc3's row
        assert page.selected == ["fc3.weight"] and page.explorer.stream.index == [2]
        assert _plot_selection(page) == [2]
        await asyncio.sleep(0.2)  # the plot's own answer to that change leaves it as it is
        assert page.selected == ["fc3.weight"] and _plot_selection(page) == [2]
        page.select("fc1.weight", "fc2.weight")
        assert _plot_selection(page) == [0, 1] and page._table.selection == [0, 1]
        await asyncio.sleep(0.2)
        assert page.selected == ["fc1.weight", "fc2.weight"]

    # on a thread of its own: the browser tests' Playwright (sync API) keeps an event loop running
    # in this thread for the rest of the test session
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, session()).result()


def test_esd_follows_the_selection(page):
    esd, ks = page._plots.objects[1].object, page._plots.objects[2].object
    assert "fc1.weight" in esd.title.text and "fc1.weight" in ks.title.text
    page.select("fc3.weight")
    assert "fc3.weight" in esd.title.text and "fc3.weight" in ks.title.text
    # the drawn histogram is fc3's: its bars hold every eigenvalue between them
    d = views.esd_data(page.result, "fc3.weight")
    assert list(page.explorer._bars.data["top"]) == list(d.bars[3])
    assert (esd.x_range.start, esd.x_range.end) == pytest.approx(d.xlim)


def test_metric_change_keeps_the_selection(page):
    page.select("fc2.weight")
    page.metric = "log_norm"
    assert page.selected == ["fc2.weight"]
    assert page.explorer.names == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_model_change_and_parameters(page):
    page._set_model("cnn")
    assert page.result.meta["subject"]["label"] == "cnn"
    assert "conv1.weight" in list(page._table.value["name"])
    page.analysis.xmin_rule = "median"
    page.run()
    assert page.result.meta["params"]["xmin_rule"] == "median"


def test_farms_and_compare(page):
    # without FARMS: a note next to the button, not a plot repeating it in other words
    page.tabs.active = 1
    assert page._farms_button.visible and page._farms_note.visible
    assert len(page._farms_plots.objects) == 1  # alpha vs Q only
    page.run(farms=True)
    assert not page._farms_note.visible and len(page._farms_plots.objects) == 2
    assert page.result.meta["params"]["farms"] is True
    assert "alpha_plain" in page._table.value.columns
    assert page.compare_with == "mlp-untrained"
    page.compare()
    assert page.compare_result is not None
    assert "alpha_delta" in page._compare_table.value.columns
    assert any(t.startswith("Comparison of alpha") for t in page.figures())


def test_errors_are_shown_not_raised():
    page = SpectraPage(model="/no/such/model.safetensors")
    assert page.result is None
    assert "no such file" in page.jobs.error


def test_export_from_python(page, tmp_path):
    titles = list(page.figures())
    assert titles[:2] == ["alpha by layer", "ESD of fc1.weight"]
    svg = page.export("ESD of fc1.weight", tmp_path / "esd.svg")
    assert "<svg" in svg.read_text()[:1000]
    csv = page.export("layer_table", tmp_path / "layers.csv")
    assert csv.read_text().startswith("name,") or "name" in csv.read_text().splitlines()[0]
    html = page.export("alpha_by_layer", tmp_path / "alpha.html")
    assert "Bokeh" in html.read_text()
    with pytest.raises(NNVitalsError, match="nothing by that name"):
        page.export("nope", tmp_path / "x.svg")
    page.export_panel.refresh()
    assert page.export_panel.figure == "alpha by layer"
    # the model is in every file name: two models' downloads never overwrite each other
    assert page.export_panel._buttons["png"].filename == "spectra_alpha_by_layer-mlp.png"
    assert page.export_panel._table_row.objects[0].filename == "spectra_layer_table-mlp.csv"
    data = page.export_panel._buttons["png"].callback()
    assert data.getvalue()[:4] == b"\x89PNG"


def test_app_shell_has_its_pages_built_lazily():
    app = NNVitalsApp(AppSettings(default_model="mlp"))
    assert list(app.specs) == [
        "vitals",
        "spectra",
        "orbits",
        "bounds",
        "lipschitz",
        "connectivity",
        "trajectory",
    ]
    assert list(app.pages) == ["vitals"]  # the landing page
    app.page = "lipschitz"  # the Bounds page, opened on its Lipschitz tab
    assert list(app.pages) == ["vitals", "bounds"]
    page = app.pages["bounds"]
    assert app._main.objects == [page.main]
    assert page.tabs._names[page.tabs.active] == "Lipschitz"
    app.page = "bounds"
    assert app.pages["bounds"] is page and page.tabs._names[page.tabs.active] == "IBP tightness"
    tpl = app.template()
    assert isinstance(tpl, pn.template.BootstrapTemplate)
    app.close()


def test_runner_line_names_dask_and_its_dashboard():
    text = runner_markdown(
        AppSettings(runner="tcp://10.0.0.5:8786", dask_dashboard="http://10.0.0.5:8787/status")
    )
    assert "Dask scheduler tcp://10.0.0.5:8786" in text and "(http://10.0.0.5:8787/status)" in text
    runs = min(3, os.cpu_count() or 1)
    line = runner_markdown(AppSettings(num_threads=3))  # plain words, no runner jargon
    assert f"Analyses run on this server, {runs} at a time" in line and "thread" not in line
    assert "of those that run a model one at a time" in line  # the model turn (analyses.core.threads)
    assert AppSettings(num_threads=1).runs_at_once == 1


def test_a_metric_no_layer_has_shows_a_message_and_back(page):
    """A metric no analysed layer has a finite value of: the Layers tab says so (a HoloViews
    message panel) instead of three empty plots; another metric draws the live plots again."""
    page.show(dataclasses.replace(page.result, table=page.result.table.assign(D=np.nan)))
    page.metric = "D"
    panes = page._plots.objects
    assert len(panes) == 1 and isinstance(panes[0], pn.pane.HoloViews)
    assert page.explorer.names == [] and page.selected == []
    page.metric = "alpha"
    assert [type(p) for p in page._plots.objects] == [pn.pane.Bokeh] * 3
    assert page.selected == ["fc1.weight"]

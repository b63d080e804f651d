"""Figure, table and summary export: real files with valid headers; HTML that loads nothing."""

from __future__ import annotations

import json
import re

import holoviews as hv
import numpy as np
import pandas as pd
import pytest

from analyses.core.errors import NNVitalsError
from analyses.core.export import save_figure, save_table, summary_dict, write_summary
from analyses.spectra import views as V

MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".pdf": b"%PDF-",
}


@pytest.fixture(scope="module")
def esd(spectra_cnn):
    return V.esd_plot(spectra_cnn, "conv2.weight")


@pytest.mark.parametrize("suffix", [".svg", ".png", ".pdf"])
def test_static_formats(esd, tmp_path, suffix):
    path = save_figure(esd, tmp_path / f"esd{suffix}")
    assert path == tmp_path / f"esd{suffix}" and path.stat().st_size > 1000
    head = path.read_bytes()[:200]
    if suffix == ".svg":
        text = path.read_text()
        assert head.lstrip().startswith(b"<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")
        assert "conv2.weight" in text or "conv2" in text  # the title is in the drawing
    else:
        assert head.startswith(MAGIC[suffix])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_html_is_standalone_and_offline(spectra_cnn, tmp_path):
    # a layout with a DynamicMap (the explorer) exports its current selection
    path = save_figure(V.linked_explorer(spectra_cnn), tmp_path / "explorer.html")
    html = path.read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "cdn.bokeh.org" not in html
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I), "every script must be inline"
    assert not re.search(r"<link[^>]*\bhref=", html, re.I), "every stylesheet must be inline"
    assert "Bokeh" in html and len(html) > 500_000  # BokehJS itself is in the file
    assert "application/json" in html and "conv1.weight" in html  # the plot's data


def test_html_does_not_use_a_destroyed_current_document(esd, tmp_path):
    """Inside a server, ``bokeh.io.curdoc()`` can be a session's document destroyed with its
    session (Bokeh leaves it current when a callback of that session raised): the export draws
    in a document of its own and does not fail on it ("Document has no attribute _theme")."""
    from bokeh.document import Document
    from bokeh.io.doc import curdoc, patch_curdoc

    gone, owner = Document(), object()
    gone.on_change_dispatch_to(owner)
    gone.destroy(owner)  # what a server session's end does to its document
    with patch_curdoc(gone):
        assert curdoc() is gone
        path = save_figure(esd, tmp_path / "esd.html")
    assert "Bokeh" in path.read_text()


def test_keeps_the_current_backend(esd, tmp_path):
    prev = hv.Store.current_backend
    try:
        for backend in ("matplotlib", "bokeh"):
            hv.Store.set_current_backend(backend)
            save_figure(esd, tmp_path / f"a_{backend}.html")
            save_figure(esd, tmp_path / f"a_{backend}.svg")
            assert hv.Store.current_backend == backend
    finally:
        hv.Store.set_current_backend(prev)


def test_figure_errors(esd, tmp_path):
    with pytest.raises(NNVitalsError, match=r"plot\.gif.*\.svg, \.png, \.pdf, \.html"):
        save_figure(esd, tmp_path / "plot.gif")
    with pytest.raises(NNVitalsError, match="no suffix"):
        save_figure(esd, tmp_path / "plot")
    with pytest.raises(NNVitalsError, match="expected a HoloViews"):
        save_figure({"not": "a plot"}, tmp_path / "plot.svg")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NNVitalsError, match="is a file"):
        save_figure(esd, afile / "plot.svg")
    (tmp_path / "adir.svg").mkdir()
    with pytest.raises(NNVitalsError, match="is a directory"):
        save_figure(esd, tmp_path / "adir.svg")


def test_creates_missing_directories(esd, tmp_path):
    path = save_figure(esd, tmp_path / "a" / "b" / "esd.svg")
    assert path.is_file()


def test_save_table_roundtrip(spectra_cnn, tmp_path):
    path = save_table(spectra_cnn.table, tmp_path / "spectra.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == list(spectra_cnn.table.columns)
    assert list(back["name"]) == list(spectra_cnn.table["name"])
    assert np.allclose(back["alpha"], spectra_cnn.table["alpha"].astype(float), equal_nan=True)
    with pytest.raises(NNVitalsError, match="CSV"):
        save_table(spectra_cnn.table, tmp_path / "spectra.xlsx")


def test_write_summary_is_strict_json(spectra_cnn, tmp_path):
    path = write_summary(spectra_cnn, tmp_path / "summary.json")
    data = json.loads(path.read_text())  # strict: NaN would not parse in most readers
    assert data["analysis"] == "spectra"
    assert data["summary"]["layers_analysed"] == len(spectra_cnn.analysed)
    assert data["meta"]["params"]["randomize"] is True
    assert "NaN" not in path.read_text()

    class Fake:
        summary = {
            "a": np.float32(1.5),
            "b": float("nan"),
            "c": np.int64(3),
            "d": np.array([1, 2]),
            "e": np.inf,
        }
        meta = {"analysis": "fake", "when": (1, 2)}

    d = summary_dict(Fake())
    assert d["summary"] == {"a": 1.5, "b": None, "c": 3, "d": [1, 2], "e": "inf"}
    assert d["meta"]["when"] == [1, 2]
    with pytest.raises(NNVitalsError, match="JSON"):
        write_summary(spectra_cnn, tmp_path / "summary.txt")


def test_download_names_carry_the_model():
    """Two models' exports must not overwrite each other: the model is in every file name."""
    pytest.importorskip("panel")
    from dashboard.components.export import ExportPanel, file_stem, model_stem

    assert file_stem("spectra", "ESD grid", "mlp") == "spectra_esd_grid-mlp"
    assert file_stem("spectra", "ESD grid") == "spectra_esd_grid"
    assert model_stem("net v2.safetensors") == "net v2" and model_stem("mlp") == "mlp"
    assert file_stem("bounds", "Jacobian norms", "net v2.safetensors") == "bounds_jacobian_norms-net_v2"
    model = {"name": "mlp"}
    panel = ExportPanel(
        lambda: {"ESD grid": lambda: None},
        lambda: {"Layer table": lambda: None},
        "spectra",
        lambda: model["name"],
    )
    assert panel._buttons["png"].filename == "spectra_esd_grid-mlp.png"
    assert panel._table_row.objects[0].filename == "spectra_layer_table-mlp.csv"
    model["name"] = "cnn"  # another model analysed: the same exports, other names
    panel.refresh()
    assert panel._buttons["svg"].filename == "spectra_esd_grid-cnn.svg"
    assert panel._table_row.objects[0].filename == "spectra_layer_table-cnn.csv"

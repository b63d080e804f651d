"""Orbits settings are refused, never replaced: every bad one listed at once, nothing run; the
element slider speaks the group's units; the views' titles, legends and tooltips (no browser)."""

from __future__ import annotations

import re

import holoviews as hv
import pytest

from analyses.orbits import kernels as K
from analyses.orbits import views as V
from analyses.orbits.analysis import OrbitAnalysis, setting_problems
from dashboard.pages.orbits import OrbitsPage


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def result():
    return OrbitAnalysis(
        model=["cnn", "mlp"], data="digits8", steps=12, max_samples=30, cache=False, show_progress=False
    ).run()


# --------------------------------------------------------------------------- settings
def test_setting_problems_lists_every_bad_value():
    got = setting_problems(
        {"steps": 0, "max_samples": 0, "batch_size": None, "shift_step": 0.0, "scale_range": (2.0, 1.0)}
    )
    assert got == {
        "steps": "expected a whole number from 1 to 3600, got 0",
        "max_samples": "expected a whole number of at least 1 (or empty), got 0",
        "batch_size": "expected a whole number of at least 1, got nothing",
        "shift_step": "expected a number of at least 0.01, got 0",
        "scale_range": "expected 0 < smallest <= largest, got 2 to 1",
    }
    assert setting_problems({"steps": 36, "max_samples": None, "scale_range": (0.5, 1.5)}) == {}
    assert setting_problems({"score": "nope"}) == {
        "score": "expected one of probability, correct, margin, consensus, got 'nope'"
    }
    assert "nan" in setting_problems({"shift_range": float("nan")})["shift_range"]
    too_many = setting_problems({"group": "shift", "shift_range": 1e5, "shift_step": 0.01})
    assert (
        list(too_many) == ["shift_range/shift_step"]
        and "group elements" in too_many["shift_range/shift_step"]
    )


def test_page_keeps_a_bad_value_in_its_widget_and_says_so():
    page = OrbitsPage(model=["cnn"], run=False)
    steps = page._settings["steps"]
    assert steps.start is None and steps.end is None  # the browser must not clamp what is typed
    steps.value = 0
    assert steps.value == 0  # not replaced by the last good value (36) nor by the bound (1)
    assert page.analysis.steps == 36
    assert page._problems.visible
    assert (
        page._problems.object == "- Rotation angles (from 0°): expected a whole number from 1 to 3600, got 0"
    )
    steps.value = 24  # fixed: the message goes, the analysis takes it
    assert not page._problems.visible and page.analysis.steps == 24


def test_several_bad_settings_are_all_shown_and_nothing_runs():
    page = OrbitsPage(model=["cnn"], run=False)
    page.analysis.param.update(steps=8, max_samples=20)
    page.run()
    first = page.result
    assert first is not None
    page._settings["steps"].value = 0
    page._settings["max_samples"].value = 0
    page._settings["shift_step"].value = -1.0
    page._settings["scale_range"].value = "2, 1"
    lines = page._problems.object.splitlines()
    assert len(lines) == 4
    page.run()
    assert page.result is first  # not run
    error = page.jobs.error.splitlines()
    assert error[0] == "Not run: fix these settings first"
    assert error[1:] == [
        "- Rotation angles (from 0°): expected a whole number from 1 to 3600, got 0",
        "- At most this many samples: expected a whole number of at least 1 (or empty), got 0",
        "- Shift step (px): expected a number of at least 0.01, got -1",
        "- Scale range (smallest, largest): expected 0 < smallest <= largest, got 2 to 1",
    ]
    # too many elements (a setting valid on its own) is refused the same way, in the widgets' words
    for name, v in (("steps", 8), ("max_samples", 20), ("shift_step", 0.01), ("scale_range", "0.5, 1.5")):
        page._settings[name].value = v
    page._settings["group"].value = "shift"
    page._settings["shift_range"].value = 1000.0
    page.run()
    assert page.result is first
    assert "“Shift step (px)”" in page.jobs.error and "shift_step" not in page.jobs.error


def test_slider_shows_the_element_in_the_groups_units():
    page = OrbitsPage(model=["cnn"], run=False)
    page.analysis.param.update(steps=36, max_samples=20)
    page.run()
    slider = page._slider
    labels = slider.format.args["labels"]  # what the browser shows for each element's index
    assert slider.name == "Rotation angle" and (slider.start, slider.end) == (0, 35)
    assert labels[18] == "180°" and labels[9] == "90°" and labels.index("180°") == 18
    slider.value = 18
    assert page.element == 18 and "at **180°**" in page._selection.object
    page.analysis.param.update(group="shift", shift_range=2.0)
    page.run()
    assert slider.name == "Shift (dx, dy)" and slider.format.args["labels"][0] == "(-2, -2) px"
    page.analysis.param.update(group="scale", scale_range=(0.5, 1.5), scale_step=0.25)
    page.run()
    labels = slider.format.args["labels"]
    assert slider.name == "Scale factor" and labels == ["×0.5", "×0.75", "×1", "×1.25", "×1.5"]
    page.analysis.param.update(group="flip")
    page.run()
    assert slider.name == "Flip" and slider.format.args["labels"] == ["upright", "mirrored"]


def test_element_labels_in_the_groups_units():
    els = K.elements("rotation-flip", steps=4)
    assert [els.label(i) for i in (1, 6)] == ["90°, upright", "180°, mirrored"]
    assert K.elements("shift", shift_range=1.5, shift_step=1.5).label(0) == "(-1.5, -1.5) px"


# --------------------------------------------------------------------------- views
def _tooltips(obj) -> list:
    fig = hv.render(obj, backend="bokeh")
    out = []
    for tool in fig.toolbar.tools:
        if type(tool).__name__ == "HoverTool":
            out += list(tool.tooltips)
    return out


def test_polar_legends_sit_below_the_circle_and_keep_it_round(result):
    fig = hv.render(V.aggregate_plot(result), backend="bokeh")
    assert fig.frame_width == fig.frame_height == V.POLAR_SIDE
    assert fig.width is None and fig.height is None  # sized by the frame, legend included
    assert fig.legend and all(leg in fig.below for leg in fig.legend)
    assert fig.center == [r for r in fig.center if type(r).__name__ != "Legend"]  # none inside


def test_titles_are_short_and_hints_are_not_in_them(result):
    agg = hv.render(V.aggregate_plot(result), backend="bokeh").title.text
    assert agg == "Mean true-class probability (all classes)"
    assert hv.render(V.aggregate_plot(result, [3]), backend="bokeh").title.text.endswith(", classes 3")
    assert hv.render(V.aggregate_plot(result, [0, 1, 2, 3]), backend="bokeh").title.text.endswith(
        ", 4 classes"
    )
    scatter = hv.render(V.sample_scatter(result, "cnn"), backend="bokeh").title.text
    assert scatter == "cnn: samples, mean score" and "tap" not in scatter
    probs = hv.render(V.class_probabilities(result, 0, 0), backend="bokeh").title.text
    assert re.fullmatch(r"Predicts \d \(label \d\)", probs)  # the model is named on the y axis
    long = V._short("interpolated-matched-lam0.500.pt2")
    assert len(long) == V.NAME_CHARS and long.endswith("…")


def test_tooltips_speak_plain_words(result):
    polar = _tooltips(V.aggregate_plot(result))
    assert ("Angle", "@{angle}{0.[0]}°") in polar and ("Model", "cnn") in polar
    scatter = _tooltips(V.sample_scatter(result, "cnn"))
    assert [t[0] for t in scatter] == ["Sample", "Mean score", "Score variance"]
    probs = _tooltips(V.class_probabilities(result, 0, 0))
    assert [t[0] for t in probs] == ["Class", "Probability"]
    internal = {"x", "y", "pc1", "pc2", "color", "element", "point", "sample", "index"}
    for tips in (polar, scatter, probs):
        assert not {name for name, _ in tips} & internal

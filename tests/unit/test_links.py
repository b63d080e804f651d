"""Links that reproduce a view (dashboard.components.links): encode/decode round trips, the checks
of what a link holds, and that an uploaded model never goes into a link."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("panel")

import torch  # noqa: E402

from dashboard.app import NNVitalsApp  # noqa: E402
from dashboard.components import links  # noqa: E402
from dashboard.settings import AppSettings  # noqa: E402

PAGES = {"spectra": "Spectra", "orbits": "Orbits", "bounds": "IBP tightness & Lipschitz"}


def _picker(tmp_path: Path, allow: tuple[Path, ...] = (), model: str = "mlp"):
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    return SimpleNamespace(allow_dirs=allow, upload_dir=uploads, model=model)


def test_encode_is_readable_and_reads_back():
    q = links.encode(
        "spectra", "mlp", {"farms": "true", "layers": "^fc"}, {"select": "fc1.weight,fc2.weight"}
    )
    assert q == "?page=spectra&model=mlp&farms=true&layers=%5Efc&select=fc1.weight,fc2.weight"
    link = links.read_link(q, PAGES)
    assert (link.page, link.model, link.notes) == ("spectra", "mlp", [])
    assert link.settings == {"farms": "true", "layers": "^fc"}
    assert link.selection == {"select": "fc1.weight,fc2.weight"}
    # Panel's session_args (bytes) read the same; the server's own bokeh-* arguments are not settings
    args = {k: [v.encode()] for k, v in [("page", "spectra"), ("model", "mlp"), ("farms", "true")]}
    args["bokeh-session-id"] = [b"x"]
    assert links.read_link(args, PAGES).settings == {"farms": "true"}


def test_values_as_text_and_back():
    import panel as pn

    assert [links.value_text(v) for v in (True, False, None, 0.01, 3, [1, 2], "ks")] == [
        "true", "false", "", "0.01", "3", "1,2", "ks",
    ]  # fmt: skip
    assert links.parse_for_widget(pn.widgets.Checkbox(), "TRUE") is True
    assert links.parse_for_widget(pn.widgets.Select(options=[8, 16]), "16") == 16
    assert links.parse_for_widget(pn.widgets.MultiChoice(options={"a": "x", "b": "y"}), "y,x") == ["y", "x"]
    assert links.parse_for_widget(pn.widgets.FloatInput(), "0.5") == 0.5
    for widget, text, expected in [
        (pn.widgets.Checkbox(), "maybe", "expected true or false"),
        (pn.widgets.IntInput(), "2.5", "expected a whole number"),
        (pn.widgets.FloatInput(), "nan", "expected a finite number"),
        (pn.widgets.Select(options=["ks", "peak"]), "best", "expected one of ks, peak"),
    ]:
        with pytest.raises(ValueError, match=expected):
            links.parse_for_widget(widget, text)


@pytest.mark.parametrize(
    "query, note",
    [
        ("?page=nosuch", "no page nosuch (pages: spectra, orbits, bounds)"),
        ("?" + "a=1&" * 70, "more than 64 parts"),
        ("?x=" + "a" * 9000, "longer than 8192 characters"),
        ("?farms=%01", "holds control characters"),
        ("?bad%20key=1", "is not a setting name"),
    ],
)
def test_a_bad_link_is_noted_not_raised(query, note):
    link = links.read_link(query, PAGES)
    assert any(note in n for n in link.notes), link.notes
    assert link.page is None


def test_models_demo_allowed_path_upload_and_outside(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "m.safetensors").write_bytes(b"x")
    picker = _picker(tmp_path, (allowed.resolve(),))
    assert links.check_model("mlp", picker) == ("mlp", None)
    assert links.check_model("m.safetensors", picker) == (str((allowed / "m.safetensors").resolve()), None)
    picked, why = links.check_model("/etc/passwd", picker)
    assert (
        picked is None
        and why.startswith("Link: model /etc/passwd refused: ")
        and "outside the allowed" in why
    )
    picked, why = links.check_model(str(allowed / ".." / "models" / "m.safetensors"), picker)
    assert picked is None and "'..' is not allowed" in why
    up = picker.upload_dir / "mine.safetensors"
    up.write_bytes(b"x")
    for text in (str(up), "/tmp/nnvitals-uploads-1-abc/session-x/mine.safetensors"):
        picked, why = links.check_model(text, picker)
        assert picked is None and "an uploaded model is kept in its own session only" in why
    # no allowed directories: demo models only
    picked, why = links.check_model(str(allowed / "m.safetensors"), _picker(tmp_path))
    assert picked is None and "expected a demo model" in why
    # what a link writes: never an upload
    assert links.model_text(_picker(tmp_path, model=str(up))) == (
        None,
        "The link leaves the model out: an uploaded model is kept for this session only.",
    )
    assert links.model_text(_picker(tmp_path, (allowed.resolve(),), str(allowed / "m.safetensors")))[0]


def test_a_view_without_settings_carries_page_and_model_only():
    assert links.page_fields(object()) == {}
    notes = links.apply_settings(SimpleNamespace(title="Vitals"), {"farms": "true"})
    assert notes == ["Link: no setting farms on the Vitals page (ignored; its settings: none)."]


def _app(query: str) -> NNVitalsApp:
    torch.set_num_threads(1)
    return NNVitalsApp(AppSettings(default_model="mlp"), link=query)


def test_an_app_opens_a_link_and_gives_the_same_link_back():
    query = "?page=spectra&model=mlp-untrained&farms=true&xmin_rule=peak&select=fc2.weight,fc3.weight"
    app = _app(query)
    page = app.shown_page()
    assert app.page == "spectra" and app.picker.model == "mlp-untrained" and page.model == "mlp-untrained"
    assert page.analysis.farms is True and page.analysis.xmin_rule == "peak"
    assert page.result.meta["params"]["farms"] is True  # the first run had the link's settings
    assert page.selected == ["fc2.weight", "fc3.weight"]
    assert not app.link_bar.note.visible
    assert app.link() == query
    assert app.link_bar.field.value == query
    # the field follows the view: another layer, a setting back to what the page opened with
    page.select("fc1.weight")
    page.form.widgets["xmin_rule"].value = "ks"
    assert app.link_bar.field.value == "?page=spectra&model=mlp-untrained&farms=true&select=fc1.weight"
    app.close()


def test_bad_values_are_one_line_each_and_keep_the_page_s_value():
    app = _app("?page=spectra&model=nosuch&farms=maybe&farms_q_ratio=-3&xmin_rule=best&nope=1&select=zz")
    page = app.shown_page()
    assert page.analysis.farms is False and page.analysis.xmin_rule == "ks"
    lines = app.link_bar.note.object.splitlines()
    assert app.link_bar.note.visible
    text = "\n".join(lines)
    assert "Link: model nosuch refused: expected a demo model" in text
    assert "(farms=maybe): expected true or false; kept false." in text
    assert "(xmin_rule=best): expected one of ks, median, peak; kept ks." in text
    assert "(farms_q_ratio=-3):" in text and "kept" in text
    assert "no setting nope on the Spectra page" in text
    assert "Link: select=zz: layer 'zz': not in the alpha plot" in text
    assert len(lines) == 6 and all(line.startswith("- ") for line in lines)
    app.close()


def test_an_uploaded_model_never_goes_into_a_link(tmp_path):
    from safetensors.torch import save_file

    app = _app("?page=spectra")
    path = Path(app.picker.upload_dir) / "mine.safetensors"
    save_file({"a.weight": torch.randn(24, 16), "b.weight": torch.randn(8, 24)}, path)
    app.picker.add_file(path)
    assert app.picker.model == str(path) and app.shown_page().model == str(path)
    link = app.link_bar.field.value
    assert "model=" not in link and "mine" not in link and link.startswith("?page=spectra")
    assert "an uploaded model is kept for this session only" in app.link_bar.note.object
    app.close()


def test_a_trajectory_link_carries_analyses_baseline_difference_and_step():
    query = "?page=trajectory&model=mlp&analyses=spectra&baseline=0&relative=true&select=200"
    app = _app(query)
    page = app.shown_page()
    assert page.slug == "trajectory" and page._analyses.value == ["spectra"]
    assert page.baseline_step() == 0 and page._relative.value is True
    assert page.result is not None and set(page.result.table["analysis"]) == {"spectra"}
    assert page.result.steps == [0, 25, 50, 100, 200, 400, 800, 1600]
    assert page._checkpoint.value == 200 and page.step == 200
    assert not app.link_bar.note.visible, app.link_bar.note.object
    assert app.link() == query
    # the field follows the view: the last step (the default) leaves the selection out
    page._checkpoint.value = 1600
    assert app.link_bar.field.value == "?page=trajectory&model=mlp&analyses=spectra&baseline=0&relative=true"
    app.close()


def test_a_trajectory_link_refuses_a_step_and_a_series_it_does_not_list():
    app = _app("?page=trajectory&model=mlp&analyses=spectra&series=/etc&select=7")
    page = app.shown_page()
    text = app.link_bar.note.object
    assert "(series=/etc): expected one of" in text and "kept" in text
    assert "Link: select=7: expected a step of the series (0, 25, 50, 100, 200, 400, 800, 1600)" in text
    assert page._checkpoint.value == 1600
    app.close()


def test_link_choice_reads_one_of_the_pages_integer_choices_or_says_which():
    """The one reader of ``select=`` on the IBP/Lipschitz, Connectivity and Trajectory pages."""
    from dashboard.components.links import link_choice

    assert link_choice("3", range(5), "a bar of the histogram") == (3, None)
    assert link_choice("5", range(5), "a bar of the histogram") == (
        None,
        "Link: select=5: expected a bar of the histogram from 0 to 4",
    )
    assert link_choice("-1", range(5), "a point")[0] is None
    assert link_choice("200", [0, 100, 200], "a step of the series") == (200, None)
    assert link_choice("7" * 60, [0, 100], "a step of the series") == (
        None,
        f"Link: select={'7' * 40}: expected a step of the series (0, 100)",
    )
    assert link_choice("1.5", [1], "a step")[0] is None

"""The Vitals page without a browser: its warning rules, its store lookups (the keys the analysis
pages use), what applies to which model, and that building it computes nothing."""

from __future__ import annotations

import time

import pytest
import torch

pn = pytest.importorskip("panel")

from analyses.core.report import value_text  # noqa: E402
from analyses.spectra.analysis import SpectralAnalysis  # noqa: E402
from dashboard.pages import vitals  # noqa: E402
from dashboard.pages.vitals import (  # noqa: E402
    RULES,
    VitalsPage,
    card_html,
    lookup,
    page_analyses,
    quick_reading,
    runnable,
    sparkline,
    warnings_for,
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path / "cache"


# --------------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    "kind, key, value, off",
    [
        ("spectra", "alpha", 1.9, True),
        ("spectra", "alpha", 2.0, False),
        ("spectra", "alpha", 4.0, False),
        ("spectra", "alpha", 6.5, True),
        ("ibp", "certified_accuracy", 0.3, True),
        ("ibp", "certified_accuracy", 0.9, False),
        ("ibp", "tightness", 0.001, True),
        ("ibp", "tightness", 0.2, False),
        ("lipschitz", "ratio", 50.0, True),
        ("lipschitz", "ratio", 1.3, False),
        ("orbits", "gap", 0.5, True),
        ("orbits", "gap", 0.05, False),
        ("connectivity", "barrier_matched", 0.4, True),
        ("connectivity", "barrier_matched", 0.02, False),
        ("connectivity", "barrier_naive", 5.0, False),  # the matched barrier is the reading
    ],
)
def test_warning_rules(kind, key, value, off):
    lines = warnings_for(kind, {key: value})
    assert bool(lines) is off
    if off:
        assert len(lines) == 1 and value_text(value) in lines[0]


def test_rules_skip_what_is_not_a_number():
    assert warnings_for("spectra", {"alpha": float("nan")}) == []
    assert warnings_for("spectra", {"alpha": None}) == []
    assert warnings_for("spectra", [("alpha", "n/a")]) == []
    assert warnings_for("ibp", {"alpha": 1.0}) == []  # another analysis's key
    assert {r.kind for r in RULES} == set(vitals.KINDS)  # every card has a rule


def test_runnable_from_the_name_alone(tmp_path):
    assert runnable("mlp") and runnable("rot-cnn")
    assert runnable(tmp_path / "m.pt2") and runnable(str(tmp_path / "m.PT2"))
    assert not runnable(tmp_path / "m.safetensors") and not runnable("nope") and not runnable(None)


def test_sparkline_draws_svg_and_nothing_for_no_data():
    svg = sparkline([([1.0, 3.0, 2.0], "#4477AA")], band=(2.0, 6.0), bars=True, title="a <b>")
    assert svg.startswith("<svg") and svg.count("<rect") == 4 and "a &lt;b&gt;" in svg
    assert "polyline" in sparkline([([1.0, 10.0, 100.0], "#000")], logy=True)
    assert sparkline([([float("nan")], "#000")]) == "" and sparkline([([-1.0], "#000")], logy=True) == ""


# --------------------------------------------------------------------------- the pages' keys
def test_cards_look_up_the_keys_the_pages_use(store):
    """A card shows what its page would show: its first analysis has the page's store key."""
    from dashboard.pages.bounds import BoundsPage
    from dashboard.pages.connectivity import ConnectivityPage
    from dashboard.pages.orbits import OrbitsPage
    from dashboard.pages.spectra import SpectraPage

    spectra = SpectraPage(model="mlp", run=False)
    assert page_analyses("spectra", "mlp")[0].cache_key() == spectra.snapshot(spectra.analysis).cache_key()
    bounds = BoundsPage(model="mlp", run=False)
    ibp, lip = bounds._analyses()
    assert page_analyses("ibp", "mlp")[0].cache_key() == ibp.cache_key()
    assert page_analyses("lipschitz", "mlp")[0].cache_key() == lip.cache_key()
    orbits = OrbitsPage(model=["rot-cnn"], run=False)
    values = {k: v for k, v in orbits.analysis.param.values().items() if k != "name"}
    page_key = type(orbits.analysis)(**values).cache_key()
    assert page_analyses("orbits", "rot-cnn")[0].cache_key() == page_key
    conn = ConnectivityPage(model=["mlp-w64-a", "mlp-w64-b"], run=False)
    assert (
        page_analyses("connectivity", "mlp-w64-a", "mlp-w64-b")[0].cache_key() == conn._analysis().cache_key()
    )


def test_a_card_reads_the_store_and_follows_it(store):
    page = VitalsPage(model="mlp", background=False)
    assert page.cards["spectra"].reading.state == "missing"
    assert "not run yet" in page.cards["spectra"].html.object
    assert set(page.missing()) == {"spectra", "orbits", "ibp", "lipschitz", "connectivity"}
    SpectralAnalysis(model="mlp", show_progress=False).run()  # what the Spectra page or CLI stores
    quick = quick_reading("spectra", "mlp")  # the keys are known: no model is opened
    assert quick is not None and quick.state == "ok"
    page.refresh()
    card = page.cards["spectra"]
    assert card.reading.state == "ok" and "nnv-vital-warn" in card.layout.css_classes  # mlp: alpha 1.89
    assert "alpha" in card.html.object and "below 2" in card.html.object and "<svg" not in card.html.object
    # its small plot: a Bokeh figure (a canvas in the page), alpha per layer as bars over the 2..6 band
    fig = card.figure.object
    assert card.figure_box.visible and fig is not None
    (bars,) = [r for r in fig.renderers if type(r.glyph).__name__ == "VBar"]
    alphas = quick.result.table.query("status == 'ok'")["alpha"].to_numpy(dtype=float)
    assert list(bars.data_source.data["top"]) == pytest.approx(list(alphas))
    page.refresh()  # the same result again: the same figure, not a new one
    assert card.figure.object is fig
    # the entry deleted from the store: the card says so (never a result the store no longer has)
    for f in store.rglob("*.nnv"):
        f.unlink()
    assert lookup("spectra", "mlp").state == "missing"


def test_weights_only_file_gets_spectra_and_reasons(store, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.randn(32, 16), "b.weight": torch.randn(10, 32)}, str(path))
    page = VitalsPage(model=str(path), background=False)
    states = {k: c.reading.state for k, c in page.cards.items()}
    assert states == {
        "spectra": "missing",
        "orbits": "na",
        "ibp": "na",
        "lipschitz": "na",
        "connectivity": "na",
    }
    assert "runnable model" in page.cards["ibp"].html.object
    assert "model B" in page.cards["connectivity"].html.object
    page.run_missing()  # runs spectra only, here in this thread (no server)
    assert page.cards["spectra"].reading.state == "ok" and page.missing() == []
    assert page.cards["spectra"].reading.result.summary["layers_analysed"] == 2


def test_building_the_page_computes_nothing(store, tmp_path):
    """Served (background lookups), a page for a model never looked up is built without opening it:
    its cards say "looking up" and fill when the lookups are done; a second page for the same model
    fills from memory while it is built."""
    from safetensors.torch import save_file

    path = tmp_path / "fresh.safetensors"
    save_file({"a.weight": torch.randn(64, 32)}, str(path))
    page = VitalsPage(model=str(path), background=True)
    assert page.cards["spectra"].reading.state == "looking"  # nothing looked up on this thread
    end = time.time() + 30
    while page.cards["spectra"].reading.state == "looking" and time.time() < end:
        time.sleep(0.05)
        page.poll()
    assert page.cards["spectra"].reading.state == "missing"
    page.close()
    again = VitalsPage(model=str(path), background=True)
    # filled while it was built: from memory, not by a background lookup (it would say "looking");
    # no time limit here, speed is measured in tests/benchmarks (1.07 s once under a loaded CI run)
    assert again.cards["spectra"].reading.state == "missing"
    again.close()


def test_card_html_names_the_error():
    r = vitals.Reading("orbits", "error", reason="model x: takes 3 channels")
    assert "takes 3 channels" in card_html(r)
    assert "looking up" in card_html(vitals.Reading("ibp", "looking"))


def test_a_card_shown_again_as_not_run_keeps_a_result_that_arrived():
    """The end of a run shows "not run" cards again; a card whose result arrived meanwhile (from the
    session's poll, another thread) keeps its numbers and its frame, text and frame together."""
    card = vitals.Card("ibp", on_open=lambda _k: None)
    card.show(vitals.Reading("ibp", "missing"))
    card.show_again_if("missing")
    assert "nnv-vital-missing" in card.layout.css_classes and "not run yet" in card.html.object
    card.show(vitals.Reading("ibp", "error", reason="model x: takes 3 channels"))
    card.show_again_if("missing")  # no longer missing: left as it is
    assert "nnv-vital-error" in card.layout.css_classes and "takes 3 channels" in card.html.object
    assert card.layout.styles == vitals.CARD_STYLES["error"]


def test_open_page_sets_the_apps_page():
    class App:
        page = "vitals"

    app = App()
    page = VitalsPage(model="nope-not-a-model.safetensors", app=app, background=False)
    page.open_page("lipschitz")
    assert app.page == "lipschitz"
    page.open_page("ibp")
    assert app.page == "bounds"


def test_cancelled_run_leaves_the_cards_not_run(store, tmp_path):
    """Run what is missing, then Cancel: the run stops, its card says "not run yet" again and the
    button is back."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    path = tmp_path / "big.safetensors"
    save_file({f"l{i}.weight": torch.randn(1500, 1500, generator=g) for i in range(6)}, str(path))
    page = VitalsPage(model=str(path), background=True)
    end = time.time() + 30
    while page.cards["spectra"].reading.state == "looking" and time.time() < end:
        time.sleep(0.05)
        page.poll()
    assert page.missing() == ["spectra"]
    page.run_missing()
    assert page.runs.running and page._run_button.disabled
    assert "queued to run" in page.cards["spectra"].html.object
    page.runs.cancel()
    end = time.time() + 60
    while page.runs.running and time.time() < end:
        time.sleep(0.05)
        page.runs.poll()
        page.poll()
    assert "cancelled" in page.runs.status
    assert (
        page.cards["spectra"].reading.state == "missing"
        and "not run yet" in page.cards["spectra"].html.object
    )
    assert not page._run_button.disabled
    page.close()


def test_a_trajectory_step_becomes_the_model_of_the_vitals_page(store, tmp_path):
    """The Trajectory page hands the checkpoint at a step to the picker as a runnable .pt2; the
    Vitals page then reads that model, and its readings are the trajectory's at that step."""
    from analyses.bounds.analysis import IBPTightness
    from dashboard.components.model_picker import ModelPicker
    from dashboard.pages.trajectory import TrajectoryPage

    picker = ModelPicker(upload_dir=tmp_path / "up")
    traj = TrajectoryPage(picker=picker)  # runs the zoo series (page defaults: spectra, ibp)
    r = traj.result
    assert r is not None and r.steps == [0, 25, 50, 100, 200, 400, 800, 1600]
    traj._streams[0].event(index=[5])  # a tap on the sixth marker of the first plot: step 400
    assert traj.step == 400 and traj.pick_jobs.error == ""
    assert picker.model == str(tmp_path / "up" / "cnn-train-step400.pt2")
    assert picker.name_of(picker.model) == "cnn-train step 400 (this session)"
    page = VitalsPage(picker=picker, background=False)
    states = {k: c.reading.state for k, c in page.cards.items()}
    assert states == {"spectra": "missing", "orbits": "missing", "ibp": "missing", "lipschitz": "missing",
                      "connectivity": "na"}  # fmt: skip
    spectra = SpectralAnalysis(model=picker.model, show_progress=False).run()
    for _, row in spectra.table.iterrows():
        assert row["alpha"] == pytest.approx(r.value(400, "spectra", "alpha", row["name"]), rel=1e-6)
    ibp = IBPTightness(model=picker.model, max_samples=64, show_progress=False).run()
    assert ibp.summary["certified_accuracy"] == pytest.approx(r.value(400, "ibp", "certified_accuracy"))
    page.refresh()  # the spectra result is in the store now: its card shows it
    assert page.cards["spectra"].reading.state == "ok"
    traj.close()


def test_trajectory_page_lists_server_series_and_refuses_code(store, tmp_path):
    """Series under --allow-dir are listed (names only); one whose manifest names an architecture
    that imports code other than the zoo's is refused in one line, before anything runs."""
    import json

    from safetensors.torch import save_file

    from dashboard.pages.trajectory import TrajectoryPage, list_series
    from dashboard.settings import AppSettings

    allow = tmp_path / "allow"
    run = allow / "runs" / "a"
    run.mkdir(parents=True)
    for s in (10, 20):
        save_file({"w.weight": torch.randn(8, 4)}, str(run / f"step_{s}.safetensors"))
    evil = allow / "evil"
    evil.mkdir()
    save_file({"w.weight": torch.randn(8, 4)}, str(evil / "step_1.safetensors"))
    (evil / "series.json").write_text(json.dumps({"architecture": "os:system", "checkpoints": [
        {"file": "step_1.safetensors", "step": 1}]}))  # fmt: skip
    (allow / "one").mkdir()
    save_file({"w.weight": torch.randn(8, 4)}, str(allow / "one" / "step_1.safetensors"))
    found = list_series((allow.resolve(),))
    assert sorted(found.values()) == sorted([str(evil.resolve()), str(run.resolve())])
    page = TrajectoryPage(settings=AppSettings(allow_dirs=(allow.resolve(),)), run=False)
    assert str(run.resolve()) in page._series_select.options.values()
    page.set_model(str(evil.resolve()))
    assert "imports code" in page.jobs.error and page.result is None
    page.set_model(str(run.resolve()))  # weights only, no architecture: spectra runs
    page._analyses.value = ["spectra"]
    page.run()
    assert page.jobs.error == "" and page.result.steps == [10, 20]
    assert "Series: **a**" in page.analysing.object


def test_trajectory_baseline_choice_shows_none_and_reads_a_step(store):
    """'Pinned baseline' shows "none" (not an empty box) until a step is pinned."""
    from dashboard.pages.trajectory import NO_BASELINE, TrajectoryPage

    page = TrajectoryPage()
    assert page._baseline.value == NO_BASELINE and page._baseline.get_root().value == NO_BASELINE
    assert page.baseline_step() is None
    page._baseline.value = 400
    assert page.baseline_step() == 400

"""The Spectra page's layer-name pattern: matched in linear time, refused patterns shown, never run stale.

A catastrophic-backtracking pattern (``(a+)+$`` against ``aaaa...!``) used to run in ``re``
holding the GIL, which froze the served app for every session; here it finishes at once.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("panel")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from analyses.core.errors import NNVitalsError  # noqa: E402
from analyses.spectra.analysis import SpectralAnalysis  # noqa: E402
from dashboard.pages.spectra import SpectraPage  # noqa: E402

EVIL_NAME = "a" * 40 + "!"  # re.search("(a+)+$", EVIL_NAME) takes about 2^40 steps


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def evil_names(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "names.safetensors"
    save_file(
        {EVIL_NAME: torch.randn(64, 32, generator=g), "fc.weight": torch.randn(64, 32, generator=g)},
        str(path),
    )
    return path


def _in_thread(fn, timeout: float):
    """Run ``fn`` in a thread; the caller's thread must stay responsive (``re`` would hold the GIL)."""
    out: dict = {}

    def work():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still matching after {timeout} s"
    return out, time.perf_counter() - t0


def test_catastrophic_pattern_on_the_page_finishes_at_once(evil_names):
    page = SpectraPage(model=str(evil_names))
    assert page.result.summary["layers_analysed"] == 2
    page._layers_input.value = "(a+)+$|^fc"
    assert page.analysis.layers == "(a+)+$|^fc"
    out, took = _in_thread(page.run, timeout=20)
    assert "error" not in out and took < 5
    assert list(page.result.table["name"]) == ["fc.weight"] and page.jobs.error == ""


def test_catastrophic_pattern_in_the_analysis(evil_names):
    analysis = SpectralAnalysis(
        model=str(evil_names), layers=r"(.*a){45}|(a+)+$", cache=False, show_progress=False
    )
    out, took = _in_thread(lambda: analysis.selected(analysis.subject()), timeout=20)
    assert isinstance(out.get("error"), NNVitalsError) and "no weight matrices matching" in str(out["error"])
    assert took < 5


def test_a_refused_pattern_is_shown_and_blocks_run(evil_names):
    page = SpectraPage(model=str(evil_names))
    first = page.result
    page._layers_input.value = r"(a)\1"
    assert "layers '(a)\\\\1': not supported: backreferences" in page.jobs.error
    assert page.analysis.layers == ""  # the analysis never holds a refused pattern
    page.run()
    assert page.result is first  # nothing ran with a stale pattern
    assert "not supported: backreferences" in page.jobs.error
    page._layers_input.value = "^fc"  # fixed: runs again
    page.run()
    assert list(page.result.table["name"]) == ["fc.weight"]


def test_the_parameter_refuses_what_the_matcher_refuses():
    a = SpectralAnalysis()
    with pytest.raises(NNVitalsError, match=r"^layers '\(\?<=x\)y': not supported: lookahead and lookbehind"):
        a.layers = "(?<=x)y"
    assert a.layers == ""
    with pytest.raises(NNVitalsError, match="not a valid regular expression"):
        SpectralAnalysis(layers="(")
    page = SpectraPage(model="mlp", run=False)
    page.analysis.layers = "fc[12]"  # set in Python: the input follows
    assert page._layers_input.value == "fc[12]"

"""Runs in the browser: the result on show is marked stale while a new run goes on, and Cancel is
honoured (a cancelled run never replaces the result on show, even a long Orbits run that scores
many batches inside one task).

Every test fails on a console error or a request to another host (see ``probe`` in conftest).
"""

from __future__ import annotations

import re
import time

import pytest
from ui_helpers import PageProbe, click_row, open_app, open_page, start_long_orbits_run

pytestmark = pytest.mark.browser

#: JavaScript: the opacity of every nnvitals part (shadow roots included) drawn faded, marked stale
#: or not (a part once kept its faded style after the run: only its class was taken away)
FADED_JS = """
() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      const cls = String(el.className || '');
      if (cls.includes('nnv-') && parseFloat(getComputedStyle(el).opacity) < 0.99) found.push(cls.slice(0, 60));
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
}
"""
#: JavaScript: the opacity of every element (shadow roots included) marked stale, and how many
STALE_JS = """
() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.classList && el.classList.contains('nnv-stale')) found.push(getComputedStyle(el).opacity);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
}
"""


def _pick_server_file(page, name: str) -> None:
    select = page.locator("select").first
    label = next(t for t in select.locator("option").all_inner_texts() if t.endswith(name))
    select.select_option(label=label)


def test_previous_result_is_marked_stale_while_a_run_goes_on(server, probe):
    page = open_app(probe, server.url)
    page.get_by_text("Loaded from the cache", exact=False).first.wait_for(timeout=30000)
    assert page.locator(".nnv-stale-note").first.is_hidden()
    assert page.evaluate(STALE_JS) == []
    _pick_server_file(page, "slow.safetensors")
    note = page.get_by_text("Showing the previous result — running Spectra of slow.safetensors …")
    note.first.wait_for(timeout=15000)
    page.wait_for_timeout(500)
    dimmed = page.evaluate(STALE_JS)
    assert dimmed and all(float(o) < 0.6 for o in dimmed), dimmed  # the summary and the tabs
    assert page.get_by_text(re.compile(r"mlp \(demo\): 3 weights")).first.is_visible()  # still shown
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Spectra of slow.safetensors: cancelled", exact=False).first.wait_for(timeout=20000)
    note.first.wait_for(state="hidden", timeout=5000)
    assert page.evaluate(STALE_JS) == []
    page.wait_for_timeout(400)  # the fade back (0.2 s)
    assert page.evaluate(FADED_JS) == []  # drawn at full strength again, not only unmarked
    assert page.get_by_text(re.compile(r"mlp \(demo\): 3 weights")).first.is_visible()


def test_cancelled_orbits_run_never_replaces_the_result(server, probe):
    """72 angles x 1000 samples (several seconds of batches inside one task per model), Cancel
    after a moment: the page says so at once and keeps the 36-angle result, for good."""
    page = probe.page
    page.goto(server.url + "?page=orbits", wait_until="networkidle", timeout=60000)
    page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at")).first.wait_for(timeout=120000)
    summary = page.get_by_text(re.compile(r"rotation\W+orbit, 36 elements"))
    summary.first.wait_for(timeout=10000)
    inputs = page.locator(".nnv-controls input")
    assert inputs.nth(1).input_value() == "36" and inputs.nth(2).input_value() == "200"
    cancel = start_long_orbits_run(page)
    page.wait_for_timeout(2000)
    t = time.time()
    cancel.click()
    page.get_by_text(re.compile(r"Orbits of .*: cancelled")).first.wait_for(timeout=10000)
    assert time.time() - t < 8, "Cancel took too long to be honoured"
    cancel.wait_for(state="hidden", timeout=5000)
    # long enough for the run to have ended had it gone on: the result on show stays
    page.wait_for_timeout(15000)
    assert summary.first.is_visible()
    assert page.get_by_text(re.compile(r"orbit, 72 elements")).count() == 0


def test_quick_runs_leave_nothing_dimmed(server, probe):
    """Runs that end in a fraction of a second (FARMS on the demo MLP, then the same settings again
    from the cache) leave no part of the page marked stale (a screenshot run once caught the FARMS
    tab dimmed after its run had ended)."""
    page = open_app(probe, server.url)
    page.get_by_text("Selected:").first.wait_for(timeout=60000)
    click_row(page, "fc2.weight")
    page.get_by_text("Selected: fc2.weight").first.wait_for()
    page.locator(".bk-tab", has_text="FARMS vs plain").first.click()
    buttons = [
        page.get_by_role("button", name="Run with FARMS"),
        page.get_by_role("button", name="Run", exact=True),
    ]
    for button in buttons:  # computed, then the same settings again: loaded from the cache
        button.first.click()
        page.get_by_text("FARMS alpha)", exact=False).first.wait_for(timeout=60000)
        page.wait_for_timeout(500)
        end = time.time() + 15
        while page.evaluate(STALE_JS) and time.time() < end:
            page.wait_for_timeout(250)
        assert page.evaluate(STALE_JS) == []
        page.wait_for_timeout(400)  # the fade back (0.2 s)
        assert page.evaluate(FADED_JS) == [], "the result stayed faded after its run"
        assert page.locator(".nnv-stale-note").first.is_hidden()


def test_a_run_waits_its_turn_while_another_session_runs_a_model(server, probe, browser):
    """Of the runs that call a model one computes at a time (analyses.core.threads.MODEL_TURN): a
    second session's Orbits run says it waits while the first session's long run goes on, can be
    seen to wait, and computes once the first is cancelled."""
    orbits = server.url + "?page=orbits"
    ready = re.compile(r"Sample \d+ \(label \d\) at")
    page = probe.page
    open_page(page, orbits, page.get_by_text(ready), timeout=60)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = PageProbe(ctx.new_page())
    try:
        open_page(other.page, orbits, other.page.get_by_text(ready), timeout=60)
        cancel = start_long_orbits_run(other.page)
        inputs = page.locator(".nnv-controls input")
        inputs.nth(1).fill("30")  # an orbit no earlier test computed: this run calls the model
        inputs.nth(1).press("Enter")
        page.wait_for_timeout(500)
        page.locator(".nnv-run").get_by_role("button").first.click()
        page.get_by_text("waiting for another run that calls a model to finish", exact=False).first.wait_for(
            timeout=15000
        )
        assert cancel.is_visible(), "the other session's run ended before this one asked: make it longer"
        assert page.get_by_text(re.compile(r"orbit, 30 elements")).count() == 0
        cancel.click()
        page.get_by_text(re.compile(r"rotation\W+orbit, 30 elements")).first.wait_for(timeout=60000)
    finally:
        ctx.close()
    other.assert_clean()

"""The Connectivity page in real headless Chromium: plots drawn, tap a point of the path, hand it on."""

from __future__ import annotations

import re
import time
import urllib.request

from ui_helpers import PageProbe, glyph, open_page, start_long_orbits_run, wait_drawn


def test_connectivity_page_tap_a_point_and_analyse_it(server, probe):
    page = probe.page
    open_page(
        page, server.url + "?page=connectivity", page.get_by_text(re.compile(r"\(A\) vs .*\(B\)")), timeout=60
    )
    assert page.get_by_text("loss barrier on test", exact=False).first.is_visible()
    for cls in ("nnv-plot-path-loss", "nnv-plot-path-accuracy"):
        wait_drawn(page.locator(f".{cls}").first)
    page.wait_for_timeout(500)
    found = glyph(page, ["point", "lam", "loss"])
    assert found is not None, "the path's points were not found"
    c = found["columns"]
    xy = glyph(page, ["point", "lam", "loss"], [c["lam"][12]], [c["loss"][12]])["points"][0]
    page.mouse.click(xy[0], xy[1])
    page.get_by_text(re.compile(r"θ\(λ = [0-9.]+\) on the \w+ path")).first.wait_for(timeout=15000)
    page.get_by_role("button", name="Analyse this interpolated model").click()
    page.get_by_text("it is now the model picked in the sidebar", exact=False).first.wait_for(timeout=15000)
    picked = page.locator(".nnv-model select").first.evaluate("s => s.options[s.selectedIndex].text")
    assert picked.startswith("θ(λ=") and "(this session)" in picked


def test_saving_a_point_waits_off_the_event_loop_while_another_session_runs_a_model(server, probe, browser):
    """Saving the interpolated model traces it (torch.export): while another session's Orbits run
    calls its model the trace waits its turn (a model called mid-trace broke it), and it waits
    off the server's event loop: the page says it is saving and waits for another run, the server
    answers everyone meanwhile, and the model is saved once the other run has ended."""
    page = probe.page
    open_page(
        page, server.url + "?page=connectivity", page.get_by_text(re.compile(r"\(A\) vs .*\(B\)")), timeout=60
    )
    wait_drawn(page.locator(".nnv-plot-path-loss").first)
    page.wait_for_timeout(500)
    c = glyph(page, ["point", "lam", "loss"])["columns"]
    xy = glyph(page, ["point", "lam", "loss"], [c["lam"][5]], [c["loss"][5]])["points"][0]
    page.mouse.click(xy[0], xy[1])
    analyse = page.get_by_role("button", name="Analyse this interpolated model")
    analyse.wait_for(timeout=15000)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = PageProbe(ctx.new_page())
    try:
        open_page(
            other.page,
            server.url + "?page=orbits",
            other.page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at")),
            timeout=60,
        )
        cancel = start_long_orbits_run(other.page)
        analyse.click()
        page.get_by_text(
            re.compile(r"Saving interpolated-.*\.pt2: waiting for another run that calls a model to finish")
        ).first.wait_for(timeout=10000)
        assert analyse.is_disabled()
        assert page.get_by_role("button", name="Cancel").count() == 1  # the save's own Cancel
        t = time.perf_counter()
        urllib.request.urlopen(server.url + "assets/logo.svg", timeout=30).read()
        assert time.perf_counter() - t < 2.0, "the server stopped answering while the model waited its turn"
        page.wait_for_timeout(1500)
        assert cancel.is_visible(), "the Orbits run ended before the check: make it longer"
        saved = page.get_by_text("it is now the model picked in the sidebar", exact=False)
        assert saved.count() == 0, "the model was traced while another session's run called its model"
        cancel.click()
        saved.first.wait_for(timeout=30000)
        assert analyse.is_enabled()
    finally:
        ctx.close()
    other.assert_clean()

"""The Connectivity page in real headless Chromium: plots drawn, tap a point of the path, hand it on."""

from __future__ import annotations

import re

from ui_helpers import glyph, open_page, wait_drawn


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

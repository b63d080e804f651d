"""The Trajectory page in real headless Chromium: the zoo series' readings drawn, tap a step and
that checkpoint becomes the sidebar's model."""

from __future__ import annotations

import pytest
from ui_helpers import glyph, open_trajectory, wait_drawn

pytestmark = pytest.mark.browser


def test_trajectory_page_draws_the_zoo_series_and_a_tap_picks_a_checkpoint(server, probe):
    page = probe.page
    open_trajectory(page, server.url + "?page=trajectory")
    for cls in ("nnv-traj-alpha-heatmap", "nnv-traj-mean-alpha", "nnv-traj-ibp"):
        wait_drawn(page.locator(f".{cls}").first)
    page.wait_for_timeout(500)
    found = glyph(page, ["step", "value", "checkpoint"])
    assert found is not None, "the step markers were not found"
    c = found["columns"]
    assert sorted(set(c["step"])) == [0, 25, 50, 100, 200, 400, 800, 1600]
    i = c["step"].index(400)
    xy = glyph(page, ["step", "value", "checkpoint"], [c["step"][i]], [c["value"][i]])["points"][0]
    page.mouse.click(xy[0], xy[1])
    page.get_by_text("is now the model picked in the sidebar", exact=False).first.wait_for(timeout=30000)
    picked = page.locator(".nnv-model select").first.evaluate("s => s.options[s.selectedIndex].text")
    assert picked.startswith("cnn-train step 400") and "(this session)" in picked

"""The Orbits page in real headless Chromium: plots drawn, tap a sample, walk the orbit."""

from __future__ import annotations

import re
import time

import numpy as np
from ui_helpers import glyph, open_page, wait_drawn


def _isolated_point(xs, ys, samples):
    """The point farthest from its nearest neighbour (a tap there hits it alone), not the first."""
    pts = np.c_[xs, ys]
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    nearest[0] = -1  # the first sample is selected already
    i = int(np.argmax(nearest))
    return float(xs[i]), float(ys[i]), int(samples[i])


def _wait_changed(locator, before: bytes, timeout: float = 15) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if locator.screenshot() != before:
            return
        time.sleep(0.3)
    raise AssertionError("the plot did not change")


def _open_orbits(probe, url):
    page = probe.page
    open_page(
        page, url + "?page=orbits", page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at")), timeout=60
    )
    return page


def test_orbits_page_renders_its_plots(server, probe):
    page = _open_orbits(probe, server.url)
    assert page.get_by_text(re.compile(r"rotation\W+orbit, 36 elements")).first.is_visible()
    for cls in ("nnv-plot-aggregate", "nnv-plot-scatter", "nnv-plot-individual", "nnv-plot-image"):
        wait_drawn(page.locator(f".{cls}").first)
    for name in ("rot-cnn", "rot-cnn-aug", "rot-cnn-c4"):
        assert page.get_by_text(f"{name}: mean", exact=False).count() >= 1


def test_tap_a_sample_and_walk_the_orbit(server, probe):
    page = _open_orbits(probe, server.url)
    individual = page.locator(".nnv-plot-individual").first
    wait_drawn(individual)
    before = individual.screenshot()
    page.wait_for_timeout(500)
    found = glyph(page, ["pc1", "pc2", "sample"])
    assert found is not None, "the sample scatter was not found"
    c = found["columns"]
    points = glyph(page, ["pc1", "pc2", "sample"], c["pc1"], c["pc2"])["points"]
    x, y, sample = _isolated_point([p[0] for p in points], [p[1] for p in points], c["sample"])
    page.mouse.click(x, y)
    page.get_by_text(re.compile(rf"Sample {sample} \(label \d\) at 0°")).first.wait_for(timeout=15000)
    # the individual plot (its title drawn on the canvas) is now that sample's orbit
    _wait_changed(individual, before)
    image = page.locator(".nnv-plot-image").first
    before_image = image.screenshot()
    # walk along the orbit with the slider's keyboard handle: 90 degrees is 9 steps of 10
    handle = page.locator(".noUi-handle").first
    handle.focus()
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    page.get_by_text(re.compile(rf"Sample {sample} \(label \d\) at 90°")).first.wait_for(timeout=15000)
    _wait_changed(image, before_image)  # the sample, now rotated by a quarter turn

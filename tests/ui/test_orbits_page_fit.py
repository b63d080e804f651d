"""The Orbits page in real headless Chromium: it fits 1280 and 1400 px wide windows, its settings
refuse bad values in words (all at once), its slider speaks degrees, and it runs the interpolated
model the Connectivity page hands on, on the digits that model takes."""

from __future__ import annotations

import re

import pytest
from ui_helpers import PageProbe, glyph, open_page, wait_drawn

PLOTS = ("nnv-plot-aggregate", "nnv-plot-scatter", "nnv-plot-individual", "nnv-plot-image", "nnv-plot-probs")
#: the plots drawn with a toolbar (the transformed image has none)
WITH_TOOLBAR = 4

#: horizontal overflow of the page, of every scrolling box (shadow roots included), and every
#: plot toolbar's box and whether its tools spill into an overflow menu
LAYOUT_JS = """
() => {
  const out = {doc: [document.documentElement.scrollWidth, window.innerWidth], scrolling: [], toolbars: []};
  const main = document.getElementById('main');
  const mr = main ? main.getBoundingClientRect() : {left: 0, right: window.innerWidth};
  out.main = [mr.left, mr.right];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      const cs = getComputedStyle(el);
      if ((cs.overflowX === 'auto' || cs.overflowX === 'scroll') && el.scrollWidth > el.clientWidth + 1)
        out.scrolling.push([el.id || el.className.toString().slice(0, 40), el.scrollWidth, el.clientWidth]);
      if (el.classList && el.classList.contains('bk-Toolbar')) {
        const b = el.getBoundingClientRect();
        const spill = el.shadowRoot ? el.shadowRoot.querySelectorAll('.bk-tool-overflow').length : 0;
        const hidden = b.width === 0 || b.height === 0;
        out.toolbars.push({left: b.left, right: b.right, top: b.top, bottom: b.bottom, spill, hidden});
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return out;
}
"""

#: every hover tool's tooltip names, and for each plot: legends drawn inside its frame, and its
#: title's width against the plot's width (canvas text metrics in the title's own font)
BOKEH_JS = """
() => {
  const tips = [], inside = [], titles = [];
  const ctx = document.createElement('canvas').getContext('2d');
  const views = [];
  const find = (view, seen) => {
    if (!view || seen.has(view)) return;
    seen.add(view);
    if (view.model && view.model.type === 'Plot') views.push(view);
    const kids = [];
    if (view.child_views) kids.push(...view.child_views);
    for (const k of kids) find(k, seen);
  };
  for (const root of Bokeh.index.roots) find(root, new Set());
  for (const m of Bokeh.documents[0].all_models) {
    if (m.type === 'HoverTool' && Array.isArray(m.tooltips)) for (const t of m.tooltips) tips.push(t[0]);
  }
  for (const v of views) {
    const p = v.model;
    for (const r of p.center) if (r.type === 'Legend' && r.items.length) inside.push(p.title ? p.title.text : '?');
    if (p.title && p.title.text) {
      const t = p.title;
      ctx.font = `${t.text_font_style} ${t.text_font_size} ${t.text_font}`;
      titles.push([t.text, ctx.measureText(t.text).width, v.frame.bbox.width]);
    }
  }
  return {tips, inside, titles};
}
"""


def _open_orbits(page, url: str) -> None:
    open_page(
        page, url + "?page=orbits", page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at")), timeout=90
    )


def _setting_input(page, label: str):
    return page.locator(".bk-input-group", has_text=label).locator("input").first


def _check_layout(page, width: int) -> None:
    """No sideways scrolling, every toolbar inside the main column with all its tools, legends
    outside the data, titles within their plots, tooltips in plain words."""
    for cls in PLOTS:
        wait_drawn(page.locator(f".{cls}").first, minimum=0.02)
    page.wait_for_timeout(500)
    lay = page.evaluate(LAYOUT_JS)
    assert lay["doc"][0] <= lay["doc"][1], f"the page scrolls sideways: {lay['doc']}"
    assert not lay["scrolling"], f"boxes scroll sideways at {width} px: {lay['scrolling']}"
    bars = [b for b in lay["toolbars"] if not b["hidden"]]
    assert len(bars) >= WITH_TOOLBAR, lay["toolbars"]
    for b in bars:
        assert lay["main"][0] <= b["left"] and b["right"] <= min(lay["main"][1], width), (b, lay["main"])
        assert b["spill"] == 0, f"a toolbar is too short for its tools (overflow menu): {b}"
    info = page.evaluate(BOKEH_JS)
    assert not info["inside"], f"legends drawn over the data of: {info['inside']}"
    for text, text_w, plot_w in info["titles"]:
        assert text_w <= plot_w + 10, (
            f"title {text!r} ({text_w:.0f} px) wider than its plot ({plot_w:.0f} px)"
        )
        assert "tap" not in text.lower()
    internal = {"x", "y", "pc1", "pc2", "color", "element", "point", "sample", "index", "angle", "score"}
    assert info["tips"] and not set(info["tips"]) & internal, info["tips"]


def _new_page(browser, width: int):
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30000)
    return ctx, page, PageProbe(page)


@pytest.mark.parametrize("width", [1280, 1400])
def test_orbits_page_fits_the_window_toolbars_legends_titles_tooltips(server, browser, width):
    ctx, page, probe = _new_page(browser, width)
    try:
        _open_orbits(page, server.url)
        _check_layout(page, width)
    finally:
        ctx.close()
    probe.assert_clean()


def test_every_group_fits_a_1280_px_window(server, browser):
    ctx, page, probe = _new_page(browser, 1280)
    try:
        _open_orbits(page, server.url)
        samples = _setting_input(page, "At most this many samples")
        samples.fill("40")  # the layout, not the numbers, is checked: a small run per group
        samples.press("Tab")
        group = page.locator(".bk-input-group", has_text="Group").locator("select").first
        for name in ("shift", "scale", "flip", "rotation-flip"):
            group.select_option(name)
            page.wait_for_timeout(500)  # the choice reaches the server before the click
            page.get_by_role("button", name="Run", exact=True).click()
            page.locator(".nnv-summary", has_text=f"{name} orbit").first.wait_for(timeout=90000)
            page.wait_for_timeout(1000)  # the plots of the new result replace the old ones
            _check_layout(page, 1280)
    finally:
        ctx.close()
    probe.assert_clean()


def test_bad_settings_are_refused_in_words_all_at_once(server, probe):
    page = probe.page
    _open_orbits(page, server.url)
    angles = _setting_input(page, "Rotation angles")
    angles.fill("0")
    angles.press("Tab")
    page.get_by_text(
        "Rotation angles (from 0°): expected a whole number from 1 to 3600, got 0", exact=False
    ).first.wait_for(timeout=15000)
    assert angles.input_value() == "0"  # kept as typed: not 36 (the last good value), not 1 (the bound)
    samples = _setting_input(page, "At most this many samples")
    samples.fill("0")
    samples.press("Tab")
    page.get_by_text(
        "At most this many samples: expected a whole number of at least 1", exact=False
    ).first.wait_for()
    assert page.get_by_text("Rotation angles (from 0°): expected", exact=False).first.is_visible()
    page.get_by_role("button", name="Run", exact=True).click()
    jobs = page.locator(".nnv-jobs").first  # the page's alert, above its results
    jobs.get_by_text("Not run: fix these settings first").first.wait_for(timeout=15000)
    for line in (
        "Rotation angles (from 0°): expected a whole number from 1 to 3600, got 0",
        "At most this many samples: expected a whole number of at least 1 (or empty), got 0",
    ):
        assert jobs.get_by_text(line).first.is_visible(), line
    assert page.get_by_text(re.compile(r"rotation\W+orbit, 36 elements")).first.is_visible()  # no new run


def test_the_slider_shows_the_angle_not_the_element_index(server, probe):
    page = probe.page
    _open_orbits(page, server.url)
    wait_drawn(page.locator(".nnv-plot-individual").first)
    page.get_by_text(re.compile(r"Rotation angle:\s*0°")).first.wait_for(timeout=15000)
    handle = page.locator(".noUi-handle").first
    handle.focus()
    for _ in range(18):  # 36 angles: 18 steps of 10 degrees
        page.keyboard.press("ArrowRight")
    page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at 180°")).first.wait_for(timeout=15000)
    # the slider says 180°, not "Group element: 18"
    page.get_by_text(re.compile(r"Rotation angle:\s*180°")).first.wait_for(timeout=15000)
    assert page.get_by_text(re.compile(r"Group element")).count() == 0


def test_orbits_runs_the_interpolated_model_connectivity_hands_on(server, probe):
    page = probe.page
    _open_orbits(page, server.url)  # Orbits first: it follows the sidebar's model from then on
    open_page(
        page, server.url + "?page=connectivity", page.get_by_text(re.compile(r"\(A\) vs .*\(B\)")), timeout=90
    )
    wait_drawn(page.locator(".nnv-plot-path-loss").first)
    page.wait_for_timeout(500)
    c = glyph(page, ["point", "lam", "loss"])["columns"]
    x, y = glyph(page, ["point", "lam", "loss"], [c["lam"][12]], [c["loss"][12]])["points"][0]
    page.mouse.click(x, y)
    page.get_by_role("button", name="Analyse this interpolated model").click()
    page.get_by_text("it is now the model picked in the sidebar", exact=False).first.wait_for(timeout=30000)
    page.locator(".nnv-nav button", has_text="Orbits").first.click()
    summary = page.locator(".nnv-summary", has_text=re.compile(r"samples of digits-"))
    summary.first.wait_for(timeout=90000)
    page.get_by_text(re.compile(r"interpolated-\w+-lam[0-9.]+\.pt2: mean")).first.wait_for(timeout=90000)
    assert page.locator(".alert-danger:visible").count() == 0, page.locator(".alert-danger").all_inner_texts()
    data = page.locator(".bk-input-group", has_text="Data").locator("select").first
    assert data.evaluate("s => s.options[s.selectedIndex].text") == "digits 8x8"

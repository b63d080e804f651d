"""The plots of Spectra, IBP/Lipschitz and Connectivity in real headless Chromium, as a new user sees them.

- Connectivity's Barriers and Layers tabs draw readable plots (they collapsed to a few pixels of
  overlapping text: a bokeh grid plot in a hidden tab), also after a resize, without bokeh's
  W-1005 "fixed sizing mode" warning in the server log;
- scrolling the page over a plot scrolls the page: wheel zoom is there but not active;
- points sit inside their plot (none cut in half at the edge), IBP's tightness vs eps starts at 0;
- no sideways scrolling at 1280 px;
- hover tooltips and page text in plain words.

The Spectra selection (box-select, then a table click) and the Lipschitz samples of a tapped bar
are in test_spectra_page.py and test_bounds.py.
"""

from __future__ import annotations

import re

from ui_helpers import glyph, wait_drawn

#: every drawn bokeh plot of the page: its title, size on screen, frame, ranges, y scale, whether
#: the wheel zoom is active, the screen positions of its scatter points and the edges of its
#: legends (canvas coordinates)
PLOTS_JS = """
() => {
  const out = [], seen = new Set();
  const walk = (v) => {
    if (!v || seen.has(v)) return;
    seen.add(v);
    const m = v.model;
    if (v.frame && m && m.x_range && m.y_range) {
      const r = v.el.getBoundingClientRect();
      const f = v.frame.bbox;
      const scroll = m.toolbar ? m.toolbar.active_scroll : null;
      const points = [];
      for (const g of m.renderers) {
        if (!g.glyph || g.glyph.type !== "Scatter" || !g.glyph.x.field || !g.glyph.y.field) continue;
        const xs = g.data_source.get_column(g.glyph.x.field), ys = g.data_source.get_column(g.glyph.y.field);
        if (!xs || !ys) continue;
        for (let i = 0; i < xs.length; i++) {
          if (!Number.isFinite(xs[i]) || !Number.isFinite(ys[i])) continue;
          points.push([v.frame.x_scale.compute(xs[i]), v.frame.y_scale.compute(ys[i])]);
        }
      }
      const legends = [];  // each legend's left and right edge on the plot's canvas
      for (const [lm, lv] of (v.renderer_views || new Map())) {
        if (lm.type === "Legend" && lm.items.length && lv.bbox) legends.push([lv.bbox.left, lv.bbox.right]);
      }
      out.push({
        title: m.title ? (m.title.text || "") : "", width: r.width, height: r.height, canvas: v.bbox.width, legends,
        shown: r.width > 0 && (!v.el.checkVisibility || v.el.checkVisibility()),
        frame: [f.left, f.top, f.right, f.bottom],
        x: [m.x_range.start, m.x_range.end], y: [m.y_range.start, m.y_range.end],
        log_y: m.y_scale.type === "LogScale",
        wheel_active: scroll != null && scroll !== "auto" && String(scroll.type || "").includes("WheelZoom"),
        points,
      });
    }
    for (const k of (v.child_views || [])) walk(k);
    if (v.renderer_views) for (const k of v.renderer_views.values()) walk(k);
  };
  for (const root of Bokeh.index.roots) walk(root);
  return out;
}
"""


def plots(page, visible: bool = True) -> list[dict]:
    found = page.evaluate(PLOTS_JS)
    return [p for p in found if p["shown"]] if visible else found


def _open(probe, url: str, slug: str, ready):
    page = probe.page
    page.goto(url + f"?page={slug}", wait_until="networkidle", timeout=60000)
    page.get_by_text(ready).first.wait_for(timeout=120000)
    return page


def _check_plots(found: list[dict], where: str, min_frame: float = 300) -> None:
    """Readable size (of the data area too), wheel zoom off, points inside the frame (by more than a
    marker's radius)."""
    assert found, f"{where}: no plot drawn"
    for p in found:
        what = f"{where}: {p['title']!r}"
        # the data area: a collapsed plot keeps its canvas size but draws its frame in 0 x 0 px
        left, top, right, bottom = p["frame"]
        assert right - left >= min_frame and bottom - top >= 150, (
            f"{what}: a {right - left:.0f} x {bottom - top:.0f} px frame"
        )
        assert p["width"] >= 300 and p["height"] >= 200, f"{what} is {p['width']:.0f} x {p['height']:.0f} px"
        assert not p["wheel_active"], f"{what}: the wheel zooms the plot"
        for x, y in p["points"]:
            assert left + 3 <= x <= right - 3 and top + 3 <= y <= bottom - 3, f"{what}: a point on the edge"


def test_connectivity_barriers_and_layers_readable_after_resize(server, probe):
    page = _open(probe, server.url, "connectivity", re.compile(r"\(A\) vs .*\(B\)"))
    wait_drawn(page.locator(".nnv-plot-path-loss").first)
    _check_plots(plots(page), "Path")
    for tab, titles in (
        ("Barriers", {"loss barrier", "error barrier"}),
        ("Layers", {"L2 distance to A (relative)", "alignment of top singular vectors"}),
    ):
        page.locator(".bk-tab", has_text=tab).first.click()
        page.wait_for_timeout(800)
        shown = {p["title"]: p for p in plots(page)}
        assert titles <= set(shown), f"{tab}: drew {sorted(shown)}"
        _check_plots([shown[t] for t in titles], tab)
        for t in titles:  # two per row, side by side on a wide page
            assert shown[t]["width"] >= 380, f"{tab}: {t!r} is {shown[t]['width']:.0f} px wide"
    # after a resize (narrower, then wide again) they stay readable
    for width in (1000, 1400):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(1000)
        shown = {p["title"]: p for p in plots(page)}
        pair = [shown["L2 distance to A (relative)"], shown["alignment of top singular vectors"]]
        _check_plots(pair, f"{width} px", min_frame=250 if width < 1280 else 300)
    assert "W-1005" not in server.log_text()


def test_wheel_over_a_plot_scrolls_the_page(server, probe):
    page = _open(probe, server.url, "bounds", re.compile(r"Bar \d+: \d+ samples?"))
    plot = page.locator(".nnv-plot-tightness").first
    wait_drawn(plot)
    page.evaluate("window.scrollTo(0, 0)")
    before = {p["title"]: p for p in plots(page)}
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 300)
    page.wait_for_timeout(800)
    after = {p["title"]: p for p in plots(page)}
    scrolled = page.evaluate(
        "document.scrollingElement.scrollTop + (document.querySelector('#main') || {}).scrollTop || 0"
    )
    title = next(t for t in before if t.startswith("IBP tightness per layer"))
    assert after[title]["x"] == before[title]["x"] and after[title]["y"] == before[title]["y"], (
        "the wheel zoomed"
    )
    assert scrolled > 0 or page.evaluate("window.scrollY") > 0, "the page did not scroll"


def test_bounds_plots_tightness_from_zero_and_points_inside(server, probe):
    page = _open(probe, server.url, "bounds", re.compile(r"Bar \d+: \d+ samples?"))
    for cls in ("nnv-plot-tightness", "nnv-plot-eps", "nnv-plot-stability", "nnv-plot-certified"):
        wait_drawn(page.locator(f".{cls}").first)
    found = [p for p in plots(page) if not p["title"][:1].isdigit()]  # (the samples: Lipschitz tab)
    _check_plots(found, "IBP tightness")
    (eps,) = [p for p in found if p["title"].startswith("Output tightness vs eps")]
    # tightness lives in [0, 1]: a 0.05% change must not fill the axis
    assert not eps["log_y"] and -0.1 * eps["y"][1] < eps["y"][0] <= 0
    page.locator(".bk-tab", has_text="Lipschitz").first.click()
    for cls in ("nnv-plot-lipschitz", "nnv-plot-gap", "nnv-plot-histogram"):
        wait_drawn(page.locator(f".{cls}").first)
    _check_plots([p for p in plots(page) if p["title"] and not p["title"][0].isdigit()], "Lipschitz")
    text = page.locator(".nnv-bounds").first.inner_text()
    for jargon in ("result store", "||J", "spec,", " mix "):
        assert jargon not in text, f"{jargon!r} on the page"


def test_no_sideways_scrolling_at_1280(server, probe):
    page = probe.page
    page.set_viewport_size({"width": 1280, "height": 900})
    for slug, ready in (
        ("spectra", "Selected:"),
        ("bounds", re.compile(r"Bar \d+: \d+ samples?")),
        ("connectivity", re.compile(r"\(A\) vs .*\(B\)")),
    ):
        page.goto(server.url + f"?page={slug}", wait_until="networkidle", timeout=60000)
        page.get_by_text(ready).first.wait_for(timeout=120000)
        page.wait_for_timeout(1500)
        wide = page.evaluate(
            """() => Array.from(document.querySelectorAll('#main, body, html'))
                 .map(e => e.scrollWidth - e.clientWidth)"""
        )
        assert max(wide) <= 1, f"{slug}: the page scrolls sideways by {max(wide)} px"
        for p in plots(page):
            left, _top, right, _bottom = p["frame"]
            assert right - left >= 250, f"{slug}: {p['title']!r} has a {right - left:.0f} px wide frame"


def test_legends_fit_inside_their_plots_at_1280(server, probe):
    """No legend below a plot is cut at the plot's edge (Lipschitz's was, at 1280 px)."""
    page = probe.page
    page.set_viewport_size({"width": 1280, "height": 900})
    seen = []
    for slug, ready, tab in (
        ("spectra", "Selected:", None),
        ("bounds", re.compile(r"Bar \d+: \d+ samples?"), None),
        ("bounds", re.compile(r"Bar \d+: \d+ samples?"), "Lipschitz"),
        ("connectivity", re.compile(r"\(A\) vs .*\(B\)"), None),
    ):
        if tab is None:
            page.goto(server.url + f"?page={slug}", wait_until="networkidle", timeout=60000)
            page.get_by_text(ready).first.wait_for(timeout=120000)
        else:
            page.locator(".bk-tab", has_text=tab).first.click()
        page.wait_for_timeout(1500)
        for p in plots(page):
            for left, right in p["legends"]:
                seen.append(p["title"])
                assert left >= 0 and right <= p["canvas"] + 0.5, (
                    f"{slug}: the legend of {p['title']!r} spans {left:.0f}..{right:.0f} px "
                    f"of a {p['canvas']:.0f} px plot"
                )
    assert any(t.startswith("Lipschitz bounds per layer") for t in seen), seen
    assert len(seen) >= 4, seen


def test_hover_shows_plain_words(server, probe):
    page = _open(probe, server.url, "connectivity", re.compile(r"\(A\) vs .*\(B\)"))
    wait_drawn(page.locator(".nnv-plot-path-loss").first)
    page.wait_for_timeout(500)
    c = glyph(page, ["point", "lam", "loss"])["columns"]
    x, y = glyph(page, ["point", "lam", "loss"], [c["lam"][12]], [c["loss"][12]])["points"][0]
    page.mouse.move(x, y)
    tip = page.locator(".bk-tooltip-content").first
    tip.wait_for(timeout=10000)
    text = tip.inner_text()
    assert "θ(λ = " in text and "loss" in text and " path" in text
    assert not re.search(r"\bpoint\b|_", text), text
    assert "result store" not in page.locator(".nnv-summary").first.inner_text()

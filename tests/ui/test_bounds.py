"""The Bounds page in real headless Chromium: both tabs draw, ?page=lipschitz opens its tab, tap a bar."""

from __future__ import annotations

import re

from ui_helpers import glyph, open_page, wait_drawn

#: the sample mosaic's plot: its title, x and y ranges, frame size (px) and image size (data units)
MOSAIC_JS = """
() => {
  const seen = new Set();
  let found = null;
  const walk = (v) => {
    if (!v || seen.has(v) || found) return;
    seen.add(v);
    const m = v.model;
    if (v.frame && m && m.renderers && m.renderers.some((r) => r.glyph && r.glyph.type === "Image")) {
      const r = m.renderers.find((g) => g.glyph && g.glyph.type === "Image");
      const spec = (s) => (s.field ? r.data_source.get_column(s.field)[0] : s.value !== undefined ? s.value : s);
      const dw = spec(r.glyph.dw), dh = spec(r.glyph.dh);
      found = {title: m.title.text, x: [m.x_range.start, m.x_range.end], y: [m.y_range.start, m.y_range.end],
               frame: [v.frame.bbox.width, v.frame.bbox.height], image: [dw, dh]};
      return;
    }
    for (const k of (v.child_views || [])) walk(k);
  };
  for (const root of Bokeh.index.roots) walk(root);
  return found;
}
"""


def _open(probe, url, slug):
    page = probe.page
    open_page(page, url + f"?page={slug}", page.get_by_text(re.compile(r"Bar \d+: \d+ samples?")), timeout=90)
    return page


def test_both_tabs_draw_and_lipschitz_entry_opens_its_tab(server, probe):
    page = _open(probe, server.url, "bounds")
    assert page.get_by_text("output tightness", exact=False).first.is_visible()
    for cls in ("nnv-plot-tightness", "nnv-plot-eps", "nnv-plot-stability"):
        wait_drawn(page.locator(f".{cls}").first)
    page.locator(".bk-tab", has_text="Lipschitz").first.click()
    for cls in ("nnv-plot-lipschitz", "nnv-plot-gap", "nnv-plot-histogram", "nnv-plot-samples"):
        wait_drawn(page.locator(f".{cls}").first)
    # the navigation's "Lipschitz" entry opens the same page on its Lipschitz tab
    open_page(
        page,
        server.url + "?page=lipschitz",
        page.get_by_text(re.compile(r"Bar \d+: \d+ samples?")),
        timeout=60,
    )
    wait_drawn(page.locator(".nnv-plot-lipschitz").first)
    assert page.locator(".nnv-plot-tightness").first.is_hidden()


def test_tap_a_histogram_bar_shows_its_samples(server, probe):
    page = _open(probe, server.url, "lipschitz")
    hist = page.locator(".nnv-plot-histogram").first
    wait_drawn(hist)
    wait_drawn(page.locator(".nnv-plot-samples").first)
    page.wait_for_timeout(500)
    found = glyph(page, ["n_samples", "left", "right", "top"])
    assert found is not None, "the histogram was not found"
    c = found["columns"]
    i = max(range(len(c["n_samples"])), key=lambda k: c["n_samples"][k])  # the fullest bar
    n = c["n_samples"][i]
    found = glyph(page, ["n_samples"], [(c["left"][i] + c["right"][i]) / 2], [c["top"][i] / 2])
    x, y = found["points"][0]
    page.mouse.click(x, y)
    page.get_by_text(re.compile(rf"Bar {i}: {int(n)} samples")).first.wait_for(timeout=15000)
    page.get_by_text(re.compile(r"(test|train) #\d+ \(label \d\)")).first.wait_for(timeout=15000)
    # the image shows all the bar's samples (up to 16), its ranges those of the new mosaic, every
    # input pixel square (the range stayed at the first, one-sample image's 0..8 x 0..8)
    shown = min(int(n), 16)
    page.wait_for_timeout(1000)
    m = page.evaluate(MOSAIC_JS)
    assert m is not None and m["title"].startswith(
        f"{shown} of {int(n)} samples" if n > 16 else f"{int(n)} samples"
    )
    (dw, dh), (fw, fh) = m["image"], m["frame"]
    assert m["x"] == [0, dw] and m["y"] == [0, dh]
    assert dw > 8 and dh >= 8  # more than one 8 x 8 sample
    assert abs(fw / dw - fh / dh) <= 0.03 * fw / dw, f"pixels not square: {fw / dw:.2f} x {fh / dh:.2f} px"

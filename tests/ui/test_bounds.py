"""The Bounds page in real headless Chromium: both tabs draw, ?page=lipschitz opens its tab, tap a bar."""

from __future__ import annotations

import re

from ui_helpers import wait_drawn

#: screen position of the centre of histogram bar ``i`` (the renderer whose source has n_samples)
BAR_JS = """
(i) => {
  const doc = Bokeh.documents[0];
  const find = (view, model, seen) => {
    if (!view || seen.has(view)) return null;
    seen.add(view);
    if (view.model === model) return view;
    const kids = [];
    if (view.child_views) kids.push(...view.child_views);
    if (view.renderer_views) kids.push(...view.renderer_views.values());
    for (const k of kids) { const r = find(k, model, seen); if (r) return r; }
    return null;
  };
  for (const m of doc.all_models) {
    if (m.type !== "GlyphRenderer") continue;
    const ds = m.data_source;
    if (!ds || !ds.get_column || !ds.get_column("n_samples")) continue;
    for (const root of Bokeh.index.roots) {
      const view = find(root, m, new Set());
      if (!view) continue;
      const plot = view.parent;
      const left = ds.get_column("left")[i], right = ds.get_column("right")[i];
      const top = ds.get_column("top")[i];
      const x = plot.frame.x_scale.compute((left + right) / 2);
      const y = plot.frame.y_scale.compute(top / 2);
      const r = plot.canvas_view.el.getBoundingClientRect();
      return [r.left + x, r.top + y, Number(ds.get_column("n_samples")[i])];
    }
  }
  return null;
}
"""


def _open(probe, url, slug):
    page = probe.page
    page.goto(url + f"?page={slug}", wait_until="networkidle", timeout=60000)
    page.get_by_text(re.compile(r"Bar \d+: \d+ samples")).first.wait_for(timeout=90000)
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
    page.goto(server.url + "?page=lipschitz", wait_until="networkidle", timeout=60000)
    page.get_by_text(re.compile(r"Bar \d+: \d+ samples")).first.wait_for(timeout=60000)
    wait_drawn(page.locator(".nnv-plot-lipschitz").first)
    assert page.locator(".nnv-plot-tightness").first.is_hidden()


def test_tap_a_histogram_bar_shows_its_samples(server, probe):
    page = _open(probe, server.url, "lipschitz")
    hist = page.locator(".nnv-plot-histogram").first
    wait_drawn(hist)
    wait_drawn(page.locator(".nnv-plot-samples").first)
    page.wait_for_timeout(500)
    bars = [page.evaluate(BAR_JS, i) for i in range(20)]
    assert bars[0] is not None, "the histogram was not found"
    i = max(range(20), key=lambda k: bars[k][2])  # the fullest bar
    x, y, n = bars[i]
    page.mouse.click(x, y)
    page.get_by_text(re.compile(rf"Bar {i}: {int(n)} samples")).first.wait_for(timeout=15000)
    page.get_by_text(re.compile(r"(test|train) #\d+ \(label \d\)")).first.wait_for(timeout=15000)

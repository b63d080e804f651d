"""The Connectivity page in real headless Chromium: plots drawn, tap a point of the path, hand it on."""

from __future__ import annotations

import re

from ui_helpers import wait_drawn

#: screen position of point ``i`` of the loss plot (the renderer whose source has lam/loss/point columns)
POINT_JS = """
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
    if (!ds || !ds.get_column || !ds.get_column("point") || !ds.get_column("loss")) continue;
    for (const root of Bokeh.index.roots) {
      const view = find(root, m, new Set());
      if (!view) continue;
      const plot = view.parent;
      const x = plot.frame.x_scale.compute(ds.get_column("lam")[i]);
      const y = plot.frame.y_scale.compute(ds.get_column("loss")[i]);
      const r = plot.canvas_view.el.getBoundingClientRect();
      return [r.left + x, r.top + y, Number(ds.get_column("lam")[i])];
    }
  }
  return null;
}
"""


def test_connectivity_page_tap_a_point_and_analyse_it(server, probe):
    page = probe.page
    page.goto(server.url + "?page=connectivity", wait_until="networkidle", timeout=60000)
    page.get_by_text(re.compile(r"\(A\) vs .*\(B\)")).first.wait_for(timeout=60000)
    assert page.get_by_text("loss barrier on test", exact=False).first.is_visible()
    for cls in ("nnv-plot-path-loss", "nnv-plot-path-accuracy"):
        wait_drawn(page.locator(f".{cls}").first)
    page.wait_for_timeout(500)
    xy = page.evaluate(POINT_JS, 12)
    assert xy is not None, "the path's points were not found"
    page.mouse.click(xy[0], xy[1])
    page.get_by_text(re.compile(r"θ\(λ = [0-9.]+\) on the \w+ path")).first.wait_for(timeout=15000)
    page.get_by_role("button", name="Analyse this interpolated model").click()
    page.get_by_text("it is now the model picked in the sidebar", exact=False).first.wait_for(timeout=15000)
    picked = page.locator(".nnv-model select").first.evaluate("s => s.options[s.selectedIndex].text")
    assert picked.startswith("θ(λ=") and "(this session)" in picked

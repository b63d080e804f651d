"""The Spectra page in real headless Chromium: one selection everywhere, FARMS tab in plain words."""

from __future__ import annotations

from ui_helpers import click_row, glyph, open_app, wait_drawn

#: the selected point indices of the metric plot's scatter (its data has layer, alpha and warning)
SELECTED_JS = """
() => {
  for (const m of Bokeh.documents[0].all_models) {
    if (m.type !== "GlyphRenderer" || !m.data_source || !m.data_source.get_column) continue;
    const ds = m.data_source;
    if (["layer", "alpha", "warning"].every((c) => ds.get_column(c))) return Array.from(ds.selected.indices);
  }
  return null;
}
"""


#: every text drawn on the plots' canvases (titles, text glyphs): it is not in the page's DOM text
DRAWN_TEXT_JS = """
() => {
  const out = [];
  for (const m of Bokeh.documents[0].all_models) {
    if (m.title && typeof m.title.text === "string") out.push(m.title.text);
    if (m.type === "GlyphRenderer" && m.glyph && m.glyph.type === "Text" && m.data_source.get_column) {
      for (const t of (m.data_source.get_column("text") || [])) out.push(String(t));
    }
  }
  return out;
}
"""


def test_box_select_then_table_click_moves_the_plot_selection(server, probe):
    """Box-select fc1 and fc2 in the alpha plot, then click fc3's row: the plot highlights fc3 only
    (it kept highlighting fc1 and fc2 while the rest of the page showed fc3)."""
    page = open_app(probe, server.url)
    plot = page.locator(".nnv-plot-0").first
    wait_drawn(plot)
    page.wait_for_timeout(500)
    found = glyph(page, ["layer", "alpha", "warning"])
    assert found is not None, "the alpha plot's points were not found"
    c = found["columns"]
    layers = list(c["layer"])
    i1, i2 = layers.index("fc1.weight"), layers.index("fc2.weight")
    # a box around the two points, 12 px beyond them (inside the plot's frame)
    pts = glyph(
        page,
        ["layer", "alpha", "warning"],
        [c["layer_id"][i1], c["layer_id"][i2]],
        [c["alpha"][i1], c["alpha"][i2]],
    )
    xs, ys = [p[0] for p in pts["points"]], [p[1] for p in pts["points"]]
    x0, y0, x1, y1 = min(xs) - 12, min(ys) - 12, max(xs) + 12, max(ys) + 12
    plot.locator("[title='Box Select']").first.click()
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.get_by_text("(+1 more)", exact=False).first.wait_for(timeout=15000)
    assert sorted(page.evaluate(SELECTED_JS)) == sorted([i1, i2])
    click_row(page, "fc3.weight")
    page.get_by_text("Selected: fc3.weight", exact=False).first.wait_for(timeout=15000)
    page.wait_for_timeout(1000)
    assert page.evaluate(SELECTED_JS) == [layers.index("fc3.weight")]
    assert page.get_by_text("(+1 more)", exact=False).count() == 0


def test_farms_tab_says_what_to_do_in_plain_words(server, probe):
    page = open_app(probe, server.url)
    page.locator(".bk-tab", has_text="FARMS vs plain").first.click()
    page.get_by_role("button", name="Run with FARMS").wait_for(timeout=15000)
    page.wait_for_timeout(1500)
    drawn = "\n".join(page.evaluate(DRAWN_TEXT_JS))
    for jargon in ("farms=True", "--farms", "result store"):
        assert jargon not in drawn and page.get_by_text(jargon, exact=False).count() == 0, jargon
    assert page.get_by_text("Run with FARMS", exact=False).count() >= 2  # the button and the note

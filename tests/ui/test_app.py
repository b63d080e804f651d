"""The served app in real Chromium: landing page, linked views, models, runs, export, sessions.

Every test fails on a console error or a request to another host (see ``probe`` in conftest).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from ui_helpers import UPLOAD_LIMIT_MB, click_row, glyph, open_app, wait_drawn

pytestmark = pytest.mark.browser

#: JavaScript: screen position of the scatter point of layer ``name`` in the metric-by-layer plot


def _selected_text(page) -> str:
    return page.get_by_text(re.compile(r"^Selected:")).first.inner_text()


def test_spectra_page_renders(server, probe):
    page = open_app(probe, server.url)
    assert page.locator(".bk-Canvas, canvas").count() >= 3
    for title in ("Spectra", "Orbits", "IBP tightness", "Lipschitz", "Connectivity"):
        assert page.get_by_text(title, exact=False).count() >= 1
    # the frame speaks plainly: where analyses run, and how the result on show was obtained
    assert page.get_by_text(re.compile(r"Analyses run on this server, \d+ at a time")).first.is_visible()
    assert page.get_by_text("Runner").count() == 0 and page.get_by_text("threads").count() == 0
    how = re.compile(
        r"^(Loaded from the cache \(computed earlier with the same settings\)|Computed in [\d.]+ s)$"
    )
    assert page.get_by_text(how).first.is_visible()
    assert page.get_by_text("result store").count() == 0
    assert "mlp" in _selected_text(page) or "fc1.weight" in _selected_text(page)
    assert page.get_by_text(re.compile(r"mlp \(demo\): 3 weights, 3 analysed, 0 skipped")).first.is_visible()


def test_pages_load_no_mathjax_or_webgl_bundle(server, probe):
    """Bokeh's MathJax (1.8 MB) and WebGL bundles are never used (no TeX, plots on a 2D canvas):
    the served page leaves them out, and it still draws its plots and Markdown with no console error."""
    page = probe.page
    scripts: list[str] = []
    page.on("request", lambda r: r.resource_type == "script" and scripts.append(r.url))
    open_app(probe, server.url)
    for i in range(3):  # the metric, ESD and KS plots
        assert wait_drawn(page.locator(f".nnv-plot-{i}").first) > 0.04
    assert any("bokeh.min.js" in u for u in scripts) and any("panel.min.js" in u for u in scripts), scripts
    assert not [u for u in scripts if "bokeh-mathjax" in u or "bokeh-gl" in u], scripts
    assert page.get_by_text("Layer table").first.is_visible()  # Markdown headings render


def test_table_selection_updates_esd(server, probe):
    page = open_app(probe, server.url)
    esd = page.locator(".nnv-plot-1").first
    before = esd.screenshot()
    click_row(page, "fc2.weight")
    page.get_by_text("Selected: fc2.weight", exact=False).first.wait_for()
    page.wait_for_timeout(800)  # the ESD plot redraws
    assert esd.screenshot() != before
    # ctrl-click a second row: both ESDs side by side
    click_row(page, "fc3.weight", ctrl=True)
    page.get_by_text("ESDs of the selected layers").first.wait_for()
    assert "+1 more" in _selected_text(page)
    grid = page.locator(".nnv-grid-plot")
    grid.nth(1).wait_for()
    assert grid.count() == 2
    for i in range(2):
        wait_drawn(grid.nth(i))


def test_tapping_a_point_selects_its_layer(server, probe):
    page = open_app(probe, server.url)
    page.wait_for_timeout(500)
    found = glyph(page, ["layer_id", "layer", "alpha"])
    assert found is not None, "the metric-by-layer scatter was not found"
    i = found["columns"]["layer"].index("fc3.weight")
    x_data, y_data = found["columns"]["layer_id"][i], found["columns"]["alpha"][i]
    (xy,) = glyph(page, ["layer_id", "layer", "alpha"], [x_data], [y_data])["points"]
    page.mouse.click(xy[0], xy[1])
    page.get_by_text("Selected: fc3.weight", exact=False).first.wait_for(timeout=15000)


def test_pick_another_demo_model(server, probe):
    page = open_app(probe, server.url)
    select = page.locator("select").first
    label = next(t for t in select.locator("option").all_inner_texts() if t.startswith("cnn —"))
    select.select_option(label=label)
    page.get_by_text("cnn (demo): 4 weights", exact=False).first.wait_for()
    page.locator(".tabulator-cell", has_text="conv1.weight").first.wait_for()
    # the selected layer is kept by name when the new model has it (trained vs untrained twin)
    assert "fc1.weight" in _selected_text(page)


def test_upload_safetensors_and_sessions_are_isolated(server, probe, browser, tmp_path):
    import torch
    from safetensors.torch import save_file

    page = open_app(probe, server.url)
    model = tmp_path / "tiny_upload.safetensors"
    g = torch.Generator().manual_seed(1)
    save_file(
        {"a.weight": torch.randn(80, 40, generator=g), "b.weight": torch.randn(20, 80, generator=g)}, model
    )
    page.locator("input.filepond--browser").set_input_files(str(model))
    page.get_by_text("Uploaded tiny_upload.safetensors", exact=False).first.wait_for()
    page.get_by_text("tiny_upload.safetensors (safetensors)", exact=False).first.wait_for()
    page.get_by_text("Selected: a.weight", exact=False).first.wait_for()

    # a file that is not a model: the reader's message, nothing else changes
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    page.locator("input.filepond--browser").set_input_files(str(junk))
    page.get_by_text("not a .safetensors file", exact=False).first.wait_for()

    # past the size limit: refused with a message naming the limit
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\x00" * int((UPLOAD_LIMIT_MB + 0.5) * 1e6))
    page.locator("input.filepond--browser").set_input_files(str(big))
    page.get_by_text("File is too large", exact=False).first.wait_for()
    page.get_by_text(f"Maximum file size is {UPLOAD_LIMIT_MB}", exact=False).first.wait_for()

    # another session does not see this session's upload
    other_ctx = browser.new_context()
    try:
        other = other_ctx.new_page()
        other.goto(server.url + "?page=spectra", wait_until="networkidle")
        other.get_by_text("Selected:", exact=False).first.wait_for(timeout=30000)
        options = other.locator("select").first.locator("option").all_inner_texts()
        assert not [o for o in options if "tiny_upload" in o], options
        assert [
            o for o in page.locator("select").first.locator("option").all_inner_texts() if "tiny_upload" in o
        ]
    finally:
        other_ctx.close()


def _pick_server_file(page, name: str) -> None:
    select = page.locator("select").first
    label = next(t for t in select.locator("option").all_inner_texts() if t.endswith(name))
    select.select_option(label=label)


def test_cancel_a_run(server, probe):
    page = open_app(probe, server.url)
    _pick_server_file(page, "slow.safetensors")
    cancel = page.get_by_role("button", name="Cancel")
    cancel.wait_for(state="visible", timeout=15000)
    page.get_by_text("Spectra of slow.safetensors:", exact=False).first.wait_for()
    cancel.click()
    page.get_by_text("Spectra of slow.safetensors: cancelled", exact=False).first.wait_for(timeout=20000)
    cancel.wait_for(state="hidden", timeout=5000)
    assert page.get_by_text(re.compile(r"mlp \(demo\): 3 weights")).first.is_visible()  # the result stays
    server.wait_log("cancelled Spectra of slow.safetensors", timeout=10)


def test_closed_session_cancels_its_run_and_others_stay_responsive(server, browser, probe):
    other = open_app(probe, server.url)  # a second session, idle
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server.url + "?page=spectra", wait_until="networkidle")
    page.get_by_text("Selected:", exact=False).first.wait_for(timeout=30000)
    before = server.log_text().count("closed: cancelled Spectra of slow.safetensors")
    _pick_server_file(page, "slow.safetensors")
    page.get_by_role("button", name="Cancel").wait_for(state="visible", timeout=15000)
    # while that run goes on, the other session answers its clicks
    for name in ("fc2.weight", "fc3.weight"):
        t = time.time()
        click_row(other, name)
        other.get_by_text(f"Selected: {name}", exact=False).first.wait_for(timeout=10000)
        assert time.time() - t < 10
    assert page.get_by_role("button", name="Cancel").is_visible()  # still running
    ctx.close()
    end = time.time() + 30
    while time.time() < end:
        if server.log_text().count("closed: cancelled Spectra of slow.safetensors") > before:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"closing the session did not cancel its run:\n{server.log_text()[-2000:]}")


def _download(page, button_text: str, tmp_path: Path) -> Path:
    with page.expect_download(timeout=60000) as info:
        page.get_by_role("button", name=button_text).first.click()
    d = info.value
    target = tmp_path / d.suggested_filename
    d.save_as(target)
    return target


def test_export_figures_and_table(server, probe, tmp_path):
    page = open_app(probe, server.url)
    page.locator(".bk-tab", has_text="Export").first.click()
    svg = _download(page, "SVG", tmp_path)
    assert svg.suffix == ".svg" and "alpha_by_layer" in svg.name
    assert "<svg" in svg.read_text()[:2000]
    png = _download(page, "PNG", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = _download(page, "PDF", tmp_path)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    html = _download(page, "HTML", tmp_path)
    text = html.read_text()
    assert "Bokeh" in text and not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", text)
    csv = _download(page, "Layer table (CSV)", tmp_path)
    header = csv.read_text().splitlines()[0].split(",")
    assert {"name", "alpha", "warning"} <= set(header)
    # the exported HTML opens offline in the browser and draws the figure
    probe.page.goto(html.as_uri())
    probe.page.locator(".bk-Canvas, canvas").first.wait_for(timeout=20000)


def test_compare_and_farms_tabs(server, probe):
    page = open_app(probe, server.url)
    page.locator(".bk-tab", has_text="Compare").first.click()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.locator(".tabulator-col", has_text="alpha_delta").first.wait_for(timeout=30000)
    plots = page.locator(".nnv-compare-plot")
    assert plots.count() == 2  # the metric of both models, and the delta
    for i in range(2):
        wait_drawn(plots.nth(i))
    page.locator(".bk-tab", has_text="FARMS vs plain").first.click()
    page.get_by_role("button", name="Run with FARMS").click()
    page.get_by_text("FARMS alpha)", exact=False).first.wait_for(timeout=60000)
    page.get_by_role("button", name="Run with FARMS").wait_for(state="hidden", timeout=10000)


def test_navigation_between_pages(server, probe):
    page = open_app(probe, server.url)
    page.get_by_role("button", name=re.compile("IBP tightness")).click()
    page.get_by_text("IBP tightness & Lipschitz bounds", exact=False).first.wait_for(timeout=30000)
    assert "page=bounds" in page.url
    page.get_by_role("button", name=re.compile("^Connectivity")).click()
    page.get_by_text("Linear mode connectivity", exact=False).first.wait_for(timeout=30000)
    assert "page=connectivity" in page.url
    page.get_by_role("button", name=re.compile("^Spectra")).click()
    page.get_by_text("Selected:", exact=False).first.wait_for(timeout=30000)


#: JavaScript: the font size and weight of every visible h2 and h4 of the page, shadow roots included
HEADINGS_JS = """
() => {
  const out = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if ((el.tagName === 'H2' || el.tagName === 'H4') && el.getBoundingClientRect().width > 0) {
        const s = getComputedStyle(el);
        out.push([el.tagName, el.textContent.replace('¶', '').trim(), s.fontSize, s.fontWeight]);
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return out;
}
"""


def test_headings_are_one_size_on_every_page(server, probe):
    """A page's heading and its sections' headings look the same on the page opened first and on
    pages reached from it (Panel styled panes attached after the first render with Bootstrap's
    whole stylesheet: '####' at 24 px on some pages, 12 px on others)."""
    page = open_app(probe, server.url)
    seen = page.evaluate(HEADINGS_JS)
    page.get_by_role("button", name=re.compile("IBP tightness")).click()
    page.get_by_text("Bounds settings", exact=True).first.wait_for(timeout=30000)
    page.wait_for_timeout(500)
    seen += page.evaluate(HEADINGS_JS)
    page.get_by_role("button", name=re.compile("^Vitals")).click()
    page.get_by_text("Run what is missing", exact=False).first.wait_for(timeout=30000)
    page.wait_for_timeout(500)
    seen += page.evaluate(HEADINGS_JS)
    texts = {text for _, text, _, _ in seen}
    assert {
        "Spectra",
        "Spectra settings",
        "Layer table",
        "Bounds settings",
        "Vital signs",
        "Model",
    } <= texts, seen
    for tag in ("H2", "H4"):
        looks = {(size, weight) for t, _, size, weight in seen if t == tag}
        assert len(looks) == 1, f"{tag} headings in several sizes: {[s for s in seen if s[0] == tag]}"
    (h2,) = {float(size.rstrip("px")) for t, _, size, _ in seen if t == "H2"}
    (h4,) = {float(size.rstrip("px")) for t, _, size, _ in seen if t == "H4"}
    assert 12 < h4 < h2, seen

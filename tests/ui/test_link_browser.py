"""Links that reproduce a view, in real headless Chromium: a link taken from one browser context
opens the same page, model, settings and selection in another; a bad link says what is wrong.

Every browser context here fails its test on a console error or a request to another host.
"""

from __future__ import annotations

import re

import pytest
from ui_helpers import DEEP_TEXT_JS, PageProbe, click_row, glyph, open_page, open_trajectory, wait_drawn

pytestmark = pytest.mark.browser


def _link_of(page) -> str:
    field = page.locator(".nnv-link-field input").first
    field.wait_for()
    return field.input_value()


def _wait_link(page, *parts: str, timeout: float = 15000) -> str:
    """The page's link once it holds every one of ``parts``."""
    end = page.evaluate("Date.now()") + timeout
    link = ""
    while page.evaluate("Date.now()") < end:
        link = _link_of(page)
        if all(p in link for p in parts):
            return link
        page.wait_for_timeout(250)
    raise AssertionError(f"the link {link!r} lacks one of {parts}")


def _new_probe(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30000)
    return ctx, PageProbe(page)


def test_a_copied_spectra_link_opens_the_same_view_in_a_new_context(server, browser, probe):
    page = probe.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url.rstrip("/"))
    open_page(page, server.url + "?page=spectra", page.get_by_text("Selected:", exact=False), timeout=60)
    # a server file as the model, FARMS on (run), the second layer selected
    small = str(server.files["small"].resolve())
    select = page.locator(".nnv-model select").first
    select.select_option(
        label=next(t for t in select.locator("option").all_inner_texts() if t.endswith("small.safetensors"))
    )
    page.get_by_text("Selected: enc.weight", exact=False).first.wait_for(timeout=30000)
    page.locator(".nnv-controls input[type=checkbox]").first.check()  # FARMS, the first setting
    for attempt in range(3):  # a run replaced by the picker's own (the new model's) is run again
        page.get_by_role("button", name="Run", exact=True).first.click()
        try:
            page.get_by_text(re.compile(r"xmin rule \w+, FARMS alpha")).first.wait_for(timeout=10000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.wait_for_timeout(1000)  # the new result's table is filled
    for attempt in range(3):  # a click while the table was redrawn is lost: click again
        click_row(page, "mid.weight")
        try:
            page.get_by_text("Selected: mid.weight", exact=False).first.wait_for(timeout=5000)
            break
        except Exception:
            if attempt == 2:
                raise
    link = _wait_link(page, "select=mid.weight", "farms=true")
    assert link.startswith(server.url + "?page=spectra&"), link
    assert f"model={small}" in link
    # the button copies it (the clipboard holds what the field shows)
    page.get_by_role("button", name="Copy link").first.click()
    page.get_by_role("button", name="Copied").first.wait_for(timeout=5000)
    assert page.evaluate("navigator.clipboard.readText()") == link

    ctx, other = _new_probe(browser)
    try:
        p2 = other.page
        open_page(p2, link, p2.get_by_text("Selected: mid.weight", exact=False), timeout=60)
        assert p2.get_by_text(re.compile(r"^Analysing: (\S*/)?small\.safetensors$")).first.is_visible()
        p2.get_by_text(re.compile(r"xmin rule \w+, FARMS alpha")).first.wait_for(timeout=15000)
        assert p2.locator(".nnv-controls input[type=checkbox]").first.is_checked()  # FARMS
        chosen = p2.locator(".nnv-model select").first.evaluate("(s) => s.options[s.selectedIndex].text")
        assert chosen.endswith("small.safetensors")
        assert p2.locator(".nnv-page-head h2").first.inner_text().strip() == "Spectra"
        assert _wait_link(p2, "select=mid.weight") == link  # the same view has the same link
        assert p2.locator(".nnv-link-note").first.is_hidden()
        other.assert_clean()
    finally:
        ctx.close()


def test_a_lipschitz_bar_link_opens_that_bar_in_a_new_context(server, browser, probe):
    page = probe.page
    open_page(
        page,
        server.url + "?page=lipschitz&max_samples=32",
        page.get_by_text(re.compile(r"Bar \d+: \d+ samples?")),
        timeout=60,
    )
    wait_drawn(page.locator(".nnv-plot-histogram").first)
    page.wait_for_timeout(500)
    found = glyph(page, ["n_samples", "left", "right", "top"])
    assert found is not None, "the histogram was not found"
    c = found["columns"]
    shown = int(
        re.search(r"Bar (\d+):", page.get_by_text(re.compile(r"^Bar \d+:")).first.inner_text()).group(1)
    )
    i = max((k for k in range(len(c["n_samples"])) if k != shown), key=lambda k: c["n_samples"][k])
    n = int(c["n_samples"][i])
    found = glyph(page, ["n_samples"], [(c["left"][i] + c["right"][i]) / 2], [c["top"][i] / 2])
    x, y = found["points"][0]
    page.mouse.click(x, y)
    page.get_by_text(re.compile(rf"Bar {i}: {n} samples?")).first.wait_for(timeout=15000)
    link = _wait_link(page, f"select={i}", "max_samples=32")
    assert "page=lipschitz" in link

    ctx, other = _new_probe(browser)
    try:
        p2 = other.page
        open_page(p2, link, p2.get_by_text(re.compile(rf"Bar {i}: {n} samples?")), timeout=60)
        wait_drawn(p2.locator(".nnv-plot-lipschitz").first)  # the Lipschitz tab is open
        p2.get_by_text(re.compile(r" on \w+, 32 samples")).first.wait_for(timeout=5000)
        assert _wait_link(p2, f"select={i}") == link
        other.assert_clean()
    finally:
        ctx.close()


def test_a_bad_link_says_what_is_wrong_and_opens_the_rest(server, probe):
    page = probe.page
    query = "?page=spectra&model=/etc/passwd&farms=maybe&nosuch=1&select=zz.weight"
    open_page(page, server.url + query, page.get_by_text("Selected:", exact=False), timeout=60)
    note = page.locator(".nnv-link-note").first
    note.get_by_text("select=zz.weight", exact=False).wait_for(timeout=15000)
    text = note.evaluate(DEEP_TEXT_JS)
    assert "model /etc/passwd refused" in text
    assert "(farms=maybe): expected true or false" in text
    assert "no setting nosuch on the Spectra page" in text
    assert "layer 'zz.weight': not in the alpha plot" in text
    assert "Traceback" not in page.content()
    # the rest of the link still opened: the Spectra page on the server's default model
    assert page.get_by_text(re.compile(r"^Analysing: mlp$")).first.is_visible()


def test_an_unknown_page_in_the_link_opens_the_landing_page_with_a_note(server, probe):
    """``?page=ibp`` (the IBP page's slug is ``bounds``) once broke the whole session: the nav's
    value became None and nothing rendered. It opens the landing page and says which pages exist."""
    page = probe.page
    page.goto(server.url + "?page=ibp", wait_until="networkidle", timeout=60000)
    note = page.locator(".nnv-link-note").first
    note.get_by_text("no page ibp", exact=False).wait_for(timeout=30000)
    assert "pages: vitals, spectra" in note.evaluate(DEEP_TEXT_JS)
    page.locator(".nnv-vital").first.wait_for(timeout=30000)  # the landing page, built
    assert "Traceback" not in page.content()


def test_a_trajectory_link_opens_its_analyses_baseline_and_step_in_a_new_context(server, browser, probe):
    page = probe.page
    open_trajectory(page, server.url + "?page=trajectory")
    # the view changed in the page: Spectra only, step 0 pinned, differences to it, checkpoint 200
    page.locator(".nnv-traj-analyses input[type=checkbox]").nth(1).uncheck()  # IBP
    baseline = page.locator(".nnv-controls select").nth(1)
    baseline.select_option(label="step 0")
    page.locator(".nnv-traj-relative input[type=checkbox]").first.check()
    checkpoint = page.locator(".nnv-main select").first
    checkpoint.select_option(
        label=next(t for t in checkpoint.locator("option").all_inner_texts() if t.startswith("step 200 "))
    )
    link = _wait_link(page, "baseline=0", "relative=true", "select=200")
    assert "page=trajectory" in link and "analyses=spectra" in link and "ibp" not in link

    ctx, other = _new_probe(browser)
    try:
        p2 = other.page
        open_trajectory(p2, link)
        wait_drawn(p2.locator(".nnv-traj-mean-alpha").first)
        assert p2.locator(".nnv-traj-ibp").count() == 0  # IBP is not run
        boxes = p2.locator(".nnv-traj-analyses input[type=checkbox]")
        assert boxes.nth(0).is_checked() and not boxes.nth(1).is_checked()
        shown = p2.locator(".nnv-controls select").nth(1).evaluate("s => s.options[s.selectedIndex].text")
        assert shown == "step 0"
        assert p2.locator(".nnv-traj-relative input[type=checkbox]").first.is_checked()
        chosen = p2.locator(".nnv-main select").first.evaluate("s => s.options[s.selectedIndex].text")
        assert chosen.startswith("step 200")
        assert _wait_link(p2, "select=200") == link  # the same view has the same link
        assert p2.locator(".nnv-link-note").first.is_hidden()
        other.assert_clean()
    finally:
        ctx.close()

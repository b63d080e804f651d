"""One truth about the model, in real headless Chromium: every page's own "Analysing" line names
the model the sidebar's picker shows (Connectivity's model A), whatever page is opened first, after
a page opens on demos of its own (Orbits' rotation models, Connectivity's pair) and after a model is
picked in the sidebar (issue 11)."""

from __future__ import annotations

import re
import time

from ui_helpers import open_app, open_page

#: what a page's line says: "Analysing: X · compared with Y, Z" or "Model A: X · Model B: Y"
LINE = re.compile(r"^(?:Analysing|Model A):\s*(.+?)(?:\s+·\s+|$)")


def sidebar_model(page) -> str:
    """The model the sidebar's select shows (its option text without a demo's description)."""
    select = page.locator(".nnv-model select").first
    return select.evaluate("s => s.options[s.selectedIndex].text").split(" — ")[0].strip()


def analysing_line(page) -> str:
    """The current page's own "Analysing" line ('' while the page has none)."""
    line = page.locator(".nnv-main .nnv-analysing p")  # the pane's text lives in its shadow root
    return line.first.inner_text().strip() if line.count() else ""


def line_model(text: str) -> str | None:
    m = LINE.match(text)
    return m.group(1).strip() if m else None


def agree(page, expected: str, timeout: float = 90, also: str = "") -> str:
    """Wait until the sidebar and the page's line both name ``expected`` (and the line holds
    ``also``: a page names the models it compares once it has them); returns the line."""
    end = time.time() + timeout
    while True:
        side, line = sidebar_model(page), analysing_line(page)
        if side == expected and line_model(line) == expected and also in line:
            return line
        if time.time() > end:
            raise AssertionError(
                f"the sidebar shows {side!r}, the page's line says {line!r}; expected {expected!r}"
            )
        page.wait_for_timeout(250)


#: the page each navigation button shows (its main column's class is ``nnv-<slug>``)
SLUGS = {
    "Spectra": "spectra", "Orbits": "orbits", "IBP tightness": "bounds", "Lipschitz": "bounds",
    "Connectivity": "connectivity",
}  # fmt: skip


def go(page, title: str) -> None:
    """Open the page of the navigation button ``title`` and wait until that page is shown (the page
    on show until then keeps its own line, following the sidebar: it is not the new page's)."""
    page.locator(".nnv-nav button", has_text=title).first.click()
    page.locator(f".nnv-main .nnv-{SLUGS[title]} .nnv-analysing").first.wait_for(timeout=90000)


def test_every_page_names_the_model_the_sidebar_shows(server, probe):
    page = open_app(probe, server.url)
    agree(page, "mlp")  # Spectra, the landing page
    go(page, "Orbits")  # its rotation demos: the sidebar shows their first model, not mlp
    line = agree(page, "rot-cnn", also="compared with rot-cnn-aug, rot-cnn-c4")
    assert "compared with rot-cnn-aug, rot-cnn-c4" in line, line
    page.locator(".nnv-summary", has_text="rot-cnn-c4: mean").first.wait_for(timeout=120000)
    go(page, "Connectivity")  # its demo pair: model A is the sidebar's model
    line = agree(page, "mlp-w64-a")
    assert re.search(r"Model B:\s*mlp-w64-b", line), line
    page.get_by_text(re.compile(r"\(A\) vs .*\(B\)")).first.wait_for(timeout=120000)
    for title in ("IBP tightness", "Spectra", "Orbits"):  # every page follows the one model
        go(page, title)
        agree(page, "mlp-w64-a")
    # a model picked in the sidebar: the page on show and every other page analyse it
    select = page.locator(".nnv-model select").first
    label = next(t for t in select.locator("option").all_inner_texts() if t.startswith("cnn —"))
    select.select_option(label=label)
    agree(page, "cnn")
    for title in ("Connectivity", "Lipschitz", "Spectra"):
        go(page, title)
        agree(page, "cnn")
    assert page.locator(".nnv-note", has_text="Model A is the model picked above").count() == 0


def test_a_page_opened_first_names_the_sidebars_model(server, probe):
    page = probe.page
    for slug, expected in (("orbits", "rot-cnn"), ("connectivity", "mlp-w64-a"), ("bounds", "mlp")):
        open_page(page, server.url + f"?page={slug}", page.locator(".nnv-main .nnv-analysing"), timeout=90)
        agree(page, expected)

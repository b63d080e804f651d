"""The Vitals landing page in real headless Chromium: every card rendered (no console errors, no
request to another host: see ``probe``), "Run what is missing" fills a card, a card opens its page."""

from __future__ import annotations

import re
import uuid

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from ui_helpers import open_page  # noqa: E402

pytestmark = pytest.mark.browser

TITLES = ("Spectra", "Orbits", "IBP tightness", "Lipschitz", "Connectivity")


def _open(server, probe):
    page = probe.page
    open_page(page, server.url, page.locator(".nnv-vital"), timeout=60)
    return page


def _card(page, kind: str):
    return page.locator(f".nnv-vital-{kind}").first


def test_vitals_is_the_landing_page_with_every_card(server, probe):
    page = _open(server, probe)
    assert page.get_by_text("Vital signs", exact=False).first.is_visible()
    assert page.locator(".nnv-vital").count() == len(TITLES)
    for kind, title in zip(("spectra", "orbits", "ibp", "lipschitz", "connectivity"), TITLES, strict=True):
        card = _card(page, kind)
        card.get_by_text(title, exact=True).first.wait_for()
        card.get_by_role("button", name=f"Open {title}").wait_for()
    # the lookups finish: every card says what it holds (numbers, "not run yet", or why not)
    expect(page.get_by_text("looking up earlier results", exact=False)).to_have_count(0, timeout=60000)
    _card(page, "spectra").get_by_text(re.compile(r"not run yet|alpha")).first.wait_for()


def test_run_what_is_missing_fills_a_card(server, probe):
    import torch
    from safetensors.torch import save_file

    name = f"vitals-{uuid.uuid4().hex[:8]}.safetensors"
    g = torch.Generator().manual_seed(1)
    save_file({"a.weight": torch.randn(48, 24, generator=g), "b.weight": torch.randn(10, 48, generator=g)},
              str(server.allow_dir / name))  # fmt: skip
    page = _open(server, probe)
    box = page.get_by_placeholder(re.compile("a file under"))
    box.fill(str(server.allow_dir / name))
    box.press("Enter")
    spectra = _card(page, "spectra")
    spectra.get_by_text("not run yet").wait_for(timeout=60000)
    _card(page, "ibp").get_by_text("needs a runnable model", exact=False).wait_for()
    page.get_by_role("button", name="Run what is missing").click()
    spectra.get_by_text("alpha", exact=True).first.wait_for(timeout=30000)
    spectra.locator("canvas").first.wait_for(timeout=10000)  # its small plot: a Bokeh figure
    assert page.get_by_text("Every analysis that applies has been run").first.is_visible()
    assert page.get_by_text(re.compile("store")).count() == 0  # plain words: no "result store"


def test_a_card_opens_its_page(server, probe):
    page = _open(server, probe)
    page.get_by_role("button", name="Open Lipschitz").click()
    page.get_by_text("How loose are interval bounds", exact=False).first.wait_for(timeout=30000)
    page.wait_for_url(re.compile(r"page=lipschitz"), timeout=10000)

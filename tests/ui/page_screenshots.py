"""Screenshots of every page (Vitals, Spectra, Orbits, IBP, Lipschitz, Connectivity, Trajectory) at two
widths, to look at.

``python tests/ui/page_screenshots.py [OUT_DIR]`` starts ``nnvitals serve`` on the demo models, opens
each page in headless Chromium (Debian's ``chromium``) at 1400 and 1280 px and writes
``screenshot-<page>.png`` (1400 px, as the README shows them) and ``screenshot-<page>-1280.png``
(default: ``assets/``), plus the tabs a first look misses (``-barriers``, ``-layers``, ``-farms``,
``-compare``): the README's screenshots. Not a test module.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ui_helpers import CHROMIUM_ARGS, ROOT, click_row, start_server, stop_server  # noqa: E402

HEIGHT = 900
TALL = 1320
WIDTHS = (1400, 1280)


def _settle(page, ms: int = 2500) -> None:
    """Wait until the page shows its result: no run going on, nothing dimmed as stale."""
    page.get_by_text("The analysis is running").first.wait_for(state="hidden", timeout=60000)
    for _ in range(240):
        if page.locator(".nnv-stale").count() == 0:
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(ms)


def _shot(page, out: Path, name: str, width: int, written: list[Path]) -> None:
    path = out / (f"screenshot-{name}.png" if width == WIDTHS[0] else f"screenshot-{name}-{width}.png")
    page.screenshot(path=path)
    written.append(path)


def main(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="nnv-shots-") as tmp:
        srv = start_server(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
                for width in WIDTHS:
                    page = browser.new_page(viewport={"width": width, "height": TALL})
                    page.goto(srv.url, wait_until="networkidle")  # the landing page: Vitals
                    page.locator(".nnv-vital").first.wait_for(timeout=60000)
                    if width == WIDTHS[0]:  # fill every card once (the store keeps them)
                        page.get_by_text("looking up earlier results").first.wait_for(
                            state="hidden", timeout=60000
                        )
                        missing = page.get_by_role("button", name="Run what is missing")
                        if missing.is_enabled():
                            missing.click()
                    page.get_by_text("Every analysis that applies has been run").first.wait_for(
                        timeout=300000
                    )
                    _settle(page, 1500)
                    _shot(page, out, "vitals", width, written)
                    page.goto(f"{srv.url}?page=spectra", wait_until="networkidle")
                    page.get_by_text("Selected:").first.wait_for(timeout=60000)
                    click_row(page, "fc2.weight")
                    page.get_by_text("Selected: fc2.weight").first.wait_for()
                    page.get_by_text("How heavy-tailed").first.scroll_into_view_if_needed()
                    _settle(page, 1500)
                    _shot(page, out, "spectra", width, written)
                    page.set_viewport_size({"width": width, "height": HEIGHT})
                    page.locator(".bk-tab", has_text="FARMS vs plain").first.click()
                    page.get_by_role("button", name="Run with FARMS").click()
                    page.get_by_text("FARMS alpha)").first.wait_for(timeout=60000)
                    _settle(page, 2000)
                    _shot(page, out, "spectra-farms", width, written)
                    page.locator(".bk-tab", has_text="Compare").first.click()
                    page.get_by_role("button", name="Compare", exact=True).click()
                    page.locator(".tabulator-col", has_text="alpha_delta").first.wait_for(timeout=60000)
                    _settle(page, 1500)
                    _shot(page, out, "spectra-compare", width, written)

                    for slug, tabs in (
                        ("orbits", ()),
                        ("bounds", ()),
                        ("lipschitz", ()),
                        ("connectivity", ("Barriers", "Layers")),
                    ):
                        page.set_viewport_size(
                            {"width": width, "height": TALL if slug in ("lipschitz", "orbits") else HEIGHT}
                        )
                        page.goto(f"{srv.url}?page={slug}", wait_until="networkidle")
                        page.locator(".nnv-summary", has_text=re.compile(r"\w")).first.wait_for(
                            timeout=120000
                        )
                        _settle(page, 3000)
                        _shot(page, out, slug, width, written)
                        for tab in tabs:
                            page.locator(".bk-tab", has_text=tab).first.click()
                            page.wait_for_timeout(2000)
                            _shot(page, out, f"{slug}-{tab.lower()}", width, written)
                    page.set_viewport_size({"width": width, "height": TALL})
                    page.goto(f"{srv.url}?page=trajectory", wait_until="networkidle")
                    page.get_by_text(re.compile(r"8 checkpoints of .*cnn-train")).first.wait_for(
                        timeout=300000
                    )
                    _settle(page, 3000)
                    _shot(page, out, "trajectory", width, written)
                    page.close()
                browser.close()
        finally:
            stop_server(srv.proc)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets"
    for path in main(target):
        print(path)

"""Screenshots of every page for the README: ``python tests/ui/make_screenshots.py [OUT_DIR]``.

Starts ``nnvitals serve`` on the demo models, opens each page in headless Chromium (Debian's
``chromium``) and writes ``screenshot-<page>.png`` (default: ``assets/``).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ui_helpers import CHROMIUM_ARGS, ROOT, click_row, start_server, stop_server  # noqa: E402

VIEWPORT = {"width": 1400, "height": 900}
TALL = {"width": 1400, "height": 1320}


def main(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="nnv-shots-") as tmp:
        srv = start_server(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(srv.url, wait_until="networkidle")
                page.get_by_text("Selected:").first.wait_for(timeout=60000)
                click_row(page, "fc2.weight")
                page.get_by_text("Selected: fc2.weight").first.wait_for()
                page.set_viewport_size(TALL)
                page.get_by_text("How heavy-tailed").first.scroll_into_view_if_needed()
                page.wait_for_timeout(1500)
                written.append(out / "screenshot-spectra.png")
                page.screenshot(path=written[-1])
                page.set_viewport_size(VIEWPORT)

                page.locator(".bk-tab", has_text="FARMS vs plain").first.click()
                page.get_by_role("button", name="Run with FARMS").click()
                page.get_by_text("FARMS alpha)").first.wait_for(timeout=60000)
                page.wait_for_timeout(2000)
                written.append(out / "screenshot-spectra-farms.png")
                page.screenshot(path=written[-1])

                page.locator(".bk-tab", has_text="Compare").first.click()
                page.get_by_role("button", name="Compare", exact=True).click()
                page.locator(".tabulator-col", has_text="alpha_delta").first.wait_for(timeout=60000)
                page.wait_for_timeout(1500)
                written.append(out / "screenshot-spectra-compare.png")
                page.screenshot(path=written[-1])

                page.set_viewport_size(TALL)
                page.goto(f"{srv.url}?page=orbits", wait_until="networkidle")
                page.get_by_text(re.compile(r"Sample \d+ \(label \d\) at")).first.wait_for(timeout=90000)
                page.wait_for_timeout(2500)
                written.append(out / "screenshot-orbits.png")
                page.screenshot(path=written[-1])
                page.set_viewport_size(VIEWPORT)

                for slug in ("bounds", "lipschitz", "connectivity"):
                    page.goto(f"{srv.url}?page={slug}", wait_until="networkidle")
                    # the page's summary line fills in when its run is done
                    page.locator(".nnv-summary", has_text=re.compile(r"\w")).first.wait_for(timeout=120000)
                    page.get_by_text("The analysis is running").first.wait_for(state="hidden", timeout=60000)
                    page.wait_for_timeout(4000)
                    written.append(out / f"screenshot-{slug}.png")
                    page.screenshot(path=written[-1])
                browser.close()
        finally:
            stop_server(srv.proc)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets"
    for path in main(target):
        print(path)

"""Take a full-page screenshot of every page of a built site with headless Chromium.

Run after ``mkdocs build`` (``nox -s screenshots`` does both):

    python docs/scripts/screenshots.py [site] [out]

Pages are opened from disk (the site is built with ``use_directory_urls: false``), at a laptop
width (1280 px) and at a phone width (412 px), in light mode. A page wider than the window (it
would scroll sideways as a whole; wide tables and code scroll inside their own box) is reported,
and the script then exits 1. Playwright drives the browser: a
system Chromium is used when one is found (``CHROMIUM``, ``chromium``, ``chromium-browser``,
``google-chrome``), otherwise the one ``playwright install chromium`` downloads.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

WIDTHS = {"desktop": 1280, "phone": 412}
"""Viewport widths in CSS pixels; the height follows the page."""


def chromium() -> str | None:
    """A Chromium executable on this machine, or None to use Playwright's own."""
    names = [
        os.environ.get("CHROMIUM", ""),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]
    return next(
        (path for name in names if name and (path := shutil.which(name))), None
    )


def main() -> int:
    from playwright.sync_api import sync_playwright

    site = Path(sys.argv[1] if len(sys.argv) > 1 else "site").resolve()
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    too_wide: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox"]
        )
        for label, width in WIDTHS.items():
            tab = browser.new_page(
                viewport={"width": width, "height": 900}, color_scheme="light"
            )
            for page in pages:
                tab.goto(page.as_uri(), wait_until="load")
                width = tab.evaluate("document.documentElement.scrollWidth")
                if width > tab.viewport_size["width"]:
                    too_wide.append(
                        f"{page.relative_to(site)} at {label}: {width} px wide"
                    )
                name = (
                    page.relative_to(site)
                    .with_suffix("")
                    .as_posix()
                    .replace("/", "-")
                )
                target = out / f"{name}-{label}.png"
                tab.screenshot(path=str(target), full_page=True)
                print(target)
            tab.close()
        browser.close()
    print("\n".join(too_wide) or "no page is wider than its window")
    return 1 if too_wide else 0


if __name__ == "__main__":
    sys.exit(main())

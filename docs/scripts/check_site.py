"""Check a built site for what a reader would see as broken, without a browser.

Run after ``mkdocs build`` from the repository root:

    python docs/scripts/check_site.py [site]

It reads every page's HTML and reports code lines wider than the column (``MAX_CODE``
characters in a ``<pre>`` block), raw reST roles (``:class:`...```) left in the text,
requests to outside servers (scripts, styles, fonts, images; links are fine), and a missing constructor signature on
the API page. It exits non-zero when anything not in ``KNOWN`` is found, so ``nox -s docs``
fails on it.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

MAX_CODE = 80
"""Widest code line that fits the content column at the default font size, in characters."""

ROLE = re.compile(
    r":(?:class|func|data|meth|attr|mod|obj|exc|ref|doc):(?=\S)"
)  # rendered: the backticks became <code>
OUTSIDE = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["'](?:https?:)?//[^"']*"""
)
ALLOWED = ("/npm/mathjax@3.2.2/es5/tex-mml-chtml.js",)
"""Outside loads that are pinned and hash-checked (see ``hooks.py``)."""
KNOWN: set[str] = set()
"""Problems known today, reported but not failing; each is to be fixed where it is named."""
CONSTRUCTOR_ARGUMENTS = (
    "num_train_timesteps: int = 1000",
    "beta_start",
    "use_karras_sigmas",
    "s_churn",
)


class Page(HTMLParser):
    """The text of a page, with the lines of its ``<pre>`` blocks kept apart."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pre_depth = 0
        self.skip_depth = 0
        self.pre: list[str] = []
        self.text: list[str] = []
        self._block: list[str] = []

    def handle_starttag(
        self, tag: str, attrs: list[tuple[str, str | None]]
    ) -> None:
        if tag == "pre":
            self.pre_depth += 1
            self._block = []
        elif tag in ("script", "style"):
            self.skip_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
            self.pre.append("".join(self._block))
        elif tag in ("script", "style") and self.skip_depth:
            self.skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            self._block.append(data)
        self.text.append(data)


def problems(site: Path) -> list[str]:
    """Everything wrong with the built pages under ``site``, one line each."""
    found = []
    for path in sorted(site.rglob("*.html")):
        if path.name == "404.html":
            continue
        name = path.relative_to(site).as_posix()
        html = path.read_text(encoding="utf-8")
        page = Page()
        page.feed(html)
        for block in page.pre:
            for line in block.splitlines():
                if len(line) > MAX_CODE:
                    found.append(
                        f"{name}: code line of {len(line)} > {MAX_CODE} characters: {line[:60]}..."
                    )
        text = "".join(page.text)
        found += [
            f"{name}: raw reST role {m.group()!r}" for m in ROLE.finditer(text)
        ]
        found += [
            f"{name}: loads from an outside server: {m.group()}"
            for m in OUTSIDE.finditer(html)
            if not m.group().endswith(ALLOWED)
            and 'rel="canonical"' not in m.group()  # a name, not a load
        ]
        if "mathjax" in html.lower() and "arithmatex" not in html:
            found.append(f"{name}: loads MathJax but has no math")
    found += not_found_page(site)
    api = site / "api.html"
    if api.exists():
        page = Page()
        page.feed(api.read_text(encoding="utf-8"))
        signature = next(
            (b for b in page.pre if b.startswith("KDPM2DiscreteScheduler(")), ""
        )
        missing = [a for a in CONSTRUCTOR_ARGUMENTS if a not in signature]
        if not signature or missing:
            found.append(
                f"api.html: the constructor's signature is missing or lacks {missing}"
            )
    return found


def not_found_page(site: Path) -> list[str]:
    """Links of ``404.html`` outside the site's path (they break when the site lives under a subpath).

    The 404 page is served at any depth, so its links are absolute: they are right only when
    ``site_url`` is set (the docs workflow sets it), and then must start with its path, read from
    the home page's canonical link. Without ``site_url`` there is nothing to check against.
    """
    page, home = site / "404.html", site / "index.html"
    if not page.exists() or not home.exists():
        return []
    canonical = re.search(
        r'<link rel="canonical" href="([^"]+)"',
        home.read_text(encoding="utf-8"),
    )
    if canonical is None:
        return []
    path = urlparse(
        canonical.group(1)
    ).path  # .../index.html, or .../ with directory URLs
    prefix = path if path.endswith("/") else path.rsplit("/", 1)[0] + "/"
    links = re.findall(
        r'(?:href|src)="(/[^"/][^"]*)"', page.read_text(encoding="utf-8")
    )
    return [
        f"404.html: link {link!r} is outside the site's path {prefix!r}"
        for link in links
        if not link.startswith(prefix)
    ]


def main() -> int:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "site")
    found = problems(site)
    new = [p for p in found if p not in KNOWN]
    print(
        "\n".join(
            [*new, *(f"known, not failing: {p}" for p in found if p in KNOWN)]
        )
    )
    print(f"{site}: {len(new)} problems, {len(found) - len(new)} known")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())

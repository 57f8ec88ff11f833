"""MkDocs hook: MathJax only where there is math.

MathJax: ``pymdownx.arithmatex`` (generic mode) wraps math in ``class="arithmatex"``; only such pages get
the two script tags, so the other pages fetch nothing from outside. The integrity hash is the
SHA-384 of ``es5/tex-mml-chtml.js`` in the npm package ``mathjax@3.2.2`` (Apache-2.0): a
browser refuses the script if the CDN serves anything else.
"""

from __future__ import annotations

from typing import Any

MATHJAX = "https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-mml-chtml.js"
INTEGRITY = (
    "sha384-Wuix6BuhrWbjDBs24bXrjf4ZQ5aFeFWBuKkFekO2t8xFU0iNaLQfp2K6/1Nxveei"
)
CONFIG = """<script>
window.MathJax = {
  tex: {inline: [["\\\\(", "\\\\)"]], display: [["\\\\[", "\\\\]"]],
        processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"}
};
</script>"""
TAGS = f'{CONFIG}\n<script src="{MATHJAX}" integrity="{INTEGRITY}" crossorigin="anonymous" defer></script>\n'


def on_page_content(html: str, **kwargs: Any) -> str:
    """Add MathJax's configuration and loader to a page that has math."""
    return html + TAGS if 'class="arithmatex"' in html else html

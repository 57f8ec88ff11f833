"""MkDocs hooks: MathJax only where there is math, and no reST roles showing as text.

MathJax: ``pymdownx.arithmatex`` (generic mode) wraps math in ``class="arithmatex"``; only such pages get
the two script tags, so the other pages fetch nothing from outside. The integrity hash is the
SHA-384 of ``es5/tex-mml-chtml.js`` in the npm package ``mathjax@3.2.2`` (Apache-2.0): a
browser refuses the script if the CDN serves anything else.
"""

from __future__ import annotations

import re
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

ROLE = re.compile(r":(?:class|func|data|meth|attr|mod|obj|exc):(?=<code>)")
"""A reST role left in a docstring (``:class:`Foo```), as Markdown renders it: the role's name
in front of a code span. Docstrings are in Google style with Markdown; until every one is
converted, the role's name is dropped and the code span kept."""


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop leftover reST role names; add MathJax's configuration and loader where there is math."""
    html = ROLE.sub("", html)
    return html + TAGS if 'class="arithmatex"' in html else html

"""MkDocs hooks: MathJax only where there is math, and break points in inline code.

Break points: inline code (``<code>`` outside ``<pre>``) gets ``<wbr>`` after ``.``, ``/``,
``_``, ``(``, ``,`` and ``=``, so that a long name wraps at those and nowhere else on a phone
(``docs/stylesheets/extra.css`` forbids breaks inside words).

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


INLINE_CODE = re.compile(
    r"(<pre\b.*?</pre>)|(<code\b[^>]*>)(.*?)(</code>)", re.DOTALL
)
BREAK_AFTER = re.compile(r"([./_(,=])(?=[^<>]*(?:<|$))")
"""A break character in text (not inside a tag): ``<wbr>`` goes after it."""


def break_points(html: str) -> str:
    """``html`` with ``<wbr>`` after the break characters of every inline ``<code>`` element."""

    def one(m: re.Match[str]) -> str:
        if m.group(1):  # a code block: untouched
            return m.group(1)
        text = m.group(3)
        return m.group(2) + BREAK_AFTER.sub(r"\1<wbr>", text) + m.group(4)

    return INLINE_CODE.sub(one, html)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Add break points to inline code; add MathJax's configuration and loader to a page that has math."""
    html = break_points(html)
    return html + TAGS if 'class="arithmatex"' in html else html

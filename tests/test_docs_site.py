"""The built documentation site, read without a browser: what a reader would see as broken.

Builds the site with ``mkdocs build --strict`` (a few seconds; skipped where the docs
dependencies are not installed, as in ``nox -s tests``; ``nox -s docs`` runs the same check) and
runs ``docs/scripts/check_site.py`` on it: no code line wider than the column, no raw reST role,
nothing loaded from outside but the pinned MathJax and only on pages with math, and the
constructor's full signature on the API page. The checker itself is tested on small pages.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_checker():
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "scripts" / "check_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def page(tmp_path: Path, name: str, body: str) -> Path:
    (tmp_path / name).write_text(f"<html><head></head><body>{body}</body></html>", encoding="utf-8")
    return tmp_path


def test_checker_finds_wide_code_roles_and_outside_loads(tmp_path: Path) -> None:
    check = load_checker()
    wide = "x" * (check.MAX_CODE + 1)
    page(tmp_path, "a.html", f"<pre><code>ok\n{wide}</code></pre><p>see :class:`Foo`</p>")
    page(tmp_path, "b.html", '<script src="https://cdn.example/x.js"></script><a href="https://x.org">fine</a>')
    found = check.problems(tmp_path)
    assert any(p.startswith("a.html: code line of") for p in found), found
    assert "a.html: raw reST role ':class:'" in found
    assert found[-1].startswith('b.html: loads from an outside server: <script src="https://cdn.example/x.js')
    assert len(found) == 3, found


def test_checker_accepts_a_clean_page_and_wants_the_constructor(tmp_path: Path) -> None:
    check = load_checker()
    page(tmp_path, "a.html", "<pre><code>" + "x" * check.MAX_CODE + "</code></pre><p>:class: alone is fine</p>")
    assert check.problems(tmp_path) == []
    page(tmp_path, "api.html", "<pre><code>KDPM2DiscreteScheduler(beta_start=1)</code></pre>")
    assert [p.split(" lacks")[0] for p in check.problems(tmp_path)] == [
        "api.html: the constructor's signature is missing or"
    ]


def test_checker_finds_404_links_outside_the_site_path(tmp_path: Path) -> None:
    check = load_checker()
    page(tmp_path, "index.html", '<link rel="canonical" href="https://docs.example.org/kdpm2/">')
    page(tmp_path, "404.html", '<a href="/kdpm2/guide.html">ok</a><link href="/assets/x.css"><a href="//cdn">x</a>')
    assert check.not_found_page(tmp_path) == ["404.html: link '/assets/x.css' is outside the site's path '/kdpm2/'"]


def test_built_site_has_no_visible_defects(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs dependencies are not installed (nox -s docs checks the site)")
    site = tmp_path / "site"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")]),
        "NO_MKDOCS_2_WARNING": "1",
        "KDPM2_SITE_URL": "https://docs.example.org/kdpm2/",  # a subpath, as a project site has
    }
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    check = load_checker()
    found = set(check.problems(site))
    assert found <= check.KNOWN, sorted(found - check.KNOWN)

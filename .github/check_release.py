"""Check a release before it is published: the tag, the built files, the version and the changelog agree.

    python .github/check_release.py vX.Y.Z dist

Fails (exit 1, one line per problem) unless the tag is ``v`` + ``kdpm2.__version__``, that
version is a release (no ``.dev``), ``dist/`` holds exactly its sdist and its wheel, and
``docs/changelog.md`` has a dated ``## X.Y.Z (YYYY-MM-DD)`` section. The release workflow runs it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version() -> str:
    text = (ROOT / "src" / "kdpm2" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit("src/kdpm2/__init__.py has no __version__")
    return match.group(1)


def problems(tag: str, dist: Path) -> list[str]:
    found = []
    v = version()
    if tag != f"v{v}":
        found.append(f"tag {tag!r} is not 'v' + kdpm2.__version__ ({v!r})")
    if ".dev" in v:
        found.append(f"{v} is a development version: set the release's version in src/kdpm2/__init__.py")
    files = sorted(p.name for p in dist.iterdir())
    wanted = [f"kdpm2-{v}-py3-none-any.whl", f"kdpm2-{v}.tar.gz"]
    if files != wanted:
        found.append(f"{dist}/ holds {files}, not {wanted}")
    changelog = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    if not re.search(rf"^## {re.escape(v)} \(\d{{4}}-\d{{2}}-\d{{2}}\)$", changelog, re.MULTILINE):
        found.append(f"docs/changelog.md has no '## {v} (YYYY-MM-DD)' section")
    return found


def main() -> int:
    tag, dist = sys.argv[1], Path(sys.argv[2])
    found = problems(tag, dist)
    print("\n".join(found) or f"{tag}: version, files and changelog agree")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

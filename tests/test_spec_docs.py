"""docs/ci.md ("Use the spec in your CI") stays in step with the code: options, dtypes, every property."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdpm2_spec import catalog, conformance

ROOT = Path(__file__).resolve().parents[1]


def _tables():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ci_tables", ROOT / "docs" / "scripts" / "ci_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_tables_are_current() -> None:
    module = _tables()
    text = module.OUT.read_text(encoding="utf-8")
    assert module.render(text) == text, "regenerate: PYTHONPATH=src:spec python docs/scripts/ci_tables.py"


def test_every_property_is_defined_with_its_tolerance() -> None:
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith('| <a id="')]
    names = [row.split("`")[1] for row in rows]
    assert names == list(conformance.PROPERTIES)
    assert all(row.startswith(f'| <a id="{name}"></a>') for row, name in zip(rows, names, strict=True))
    for row, name in zip(rows, names, strict=True):
        assert catalog.TOLERANCES[name].split(":")[0] in row


def test_the_page_is_in_the_site_navigation() -> None:
    assert "Use the spec in your CI: ci.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def _script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_release_table_is_the_saved_run() -> None:
    """docs/ci.md's release table is rendered from conformance_releases.json, and the verdicts agree with the diffs."""
    import json

    module = _script("conformance_releases")
    data = json.loads(module.DATA.read_text(encoding="utf-8"))
    assert list(data["rows"]) == list(module.RELEASES)
    assert module.table(data) in (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    for version, row in data["rows"].items():
        if row["import"]:
            continue
        differs = bool(row["diff"]["kinds"])
        assert (row["gate"]["status"] != 0) == differs, (version, row)


def test_the_planted_table_covers_the_whole_set_and_all_are_caught() -> None:
    import json
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    import planted_diffusers

    data = json.loads((ROOT / "docs" / "scripts" / "planted_diffusers.json").read_text(encoding="utf-8"))
    assert [o["bug"] for o in data["outcomes"]] == [b.name for b in planted_diffusers.BUGS]
    assert all(o["caught"] for o in data["outcomes"]), [o["bug"] for o in data["outcomes"] if not o["caught"]]

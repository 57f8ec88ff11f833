"""The package's declarations agree with each other: version, changelog, citation, workflows, floors.

No workflow can run from here, so what they run is checked against ``noxfile.py`` and
``pyproject.toml``: every ``nox -s`` session they call exists, the CI matrix is the classifiers'
Python versions, and the floors job runs on ``requires-python``'s lower bound. The release check
(``.github/check_release.py``) is run on good and bad inputs.
"""

from __future__ import annotations

import importlib.util
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself needs there
    import tomli as tomllib
from pathlib import Path

import pytest

import kdpm2

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
yaml = pytest.importorskip("yaml")


def workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text(encoding="utf-8"))


def runs(flow: dict) -> list[str]:
    return [step["run"] for job in flow["jobs"].values() for step in job.get("steps", []) if "run" in step]


def sessions() -> set[str]:
    """The session names of noxfile.py, read from its source (nox need not be importable)."""
    source = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    return set(re.findall(r"@nox\.session(?:\([^)]*\))?\ndef (\w+)", source))


def classifier_pythons() -> list[str]:
    prefix = "Programming Language :: Python :: 3."
    return [
        c.removeprefix("Programming Language :: Python :: ")
        for c in PYPROJECT["project"]["classifiers"]
        if c.startswith(prefix)
    ]


def test_version_is_single_sourced_and_in_the_changelog_and_citation() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/kdpm2/__init__.py"
    version = kdpm2.__version__
    release = version.split(".dev")[0]
    first = re.search(r"^## (.+)$", (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert first is not None
    if ".dev" in version:
        assert first.group(1) == f"{release} (unreleased)"
    else:
        assert re.fullmatch(rf"{re.escape(version)} \(\d{{4}}-\d{{2}}-\d{{2}}\)", first.group(1))
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["version"] == version
    assert (
        citation["preferred-citation"]["title"] == "Elucidating the Design Space of Diffusion-Based Generative Models"
    )
    assert [a["family-names"] for a in citation["preferred-citation"]["authors"]] == [
        "Karras",
        "Aittala",
        "Aila",
        "Laine",
    ]


def test_workflows_call_existing_nox_sessions() -> None:
    known = sessions()
    assert {"tests", "lint", "docs", "floors"} <= known
    called = [
        s for flow in ("ci.yml", "docs.yml") for run in runs(workflow(flow)) for s in re.findall(r"nox -s (\w+)", run)
    ]
    assert called and set(called) <= known, (called, known)
    assert {"tests", "lint", "docs", "floors"} <= set(called)


def test_ci_matrix_is_the_declared_pythons_and_floors_run_on_the_lowest() -> None:
    ci = workflow("ci.yml")
    matrix = ci["jobs"]["tests"]["strategy"]["matrix"]["python-version"]
    floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    # the floor runs in the floors job: diffusers 0.42.1 (the parity tests' pin) needs 3.11
    assert [floor, *matrix] == classifier_pythons() == ["3.10", "3.11", "3.12", "3.13"]
    floors_python = next(
        s["with"]["python-version"] for s in ci["jobs"]["floors"]["steps"] if "setup-python" in s.get("uses", "")
    )
    assert floors_python == floor


def test_release_workflow_builds_checks_and_publishes_by_trusted_publishing() -> None:
    release = workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    commands = "\n".join(runs(release))
    assert "python -m build" in commands and "twine check --strict dist/*" in commands
    assert "check_release.py" in commands
    publish = release["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert [s.get("uses", "").split("@")[0] for s in publish["steps"]][-1] == "pypa/gh-action-pypi-publish"
    assert all("password" not in s.get("with", {}) for s in publish["steps"]), "trusted publishing: no token"


def test_classifiers_say_typed_pytest_and_os() -> None:
    classifiers = set(PYPROJECT["project"]["classifiers"])
    assert {"Typing :: Typed", "Framework :: Pytest", "Operating System :: OS Independent"} <= classifiers
    assert (ROOT / "src" / "kdpm2" / "py.typed").exists() and (ROOT / "spec" / "kdpm2_spec" / "py.typed").exists()
    assert PYPROJECT["project"]["license"] == "MIT"  # SPDX expression: no license classifier (PEP 639)
    assert not any(c.startswith("License ::") for c in classifiers)


def load_release_check():
    spec = importlib.util.spec_from_file_location("check_release", ROOT / ".github" / "check_release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_release"] = module
    spec.loader.exec_module(module)
    return module


def test_release_check_refuses_a_dev_version_a_wrong_tag_and_stray_files(tmp_path: Path) -> None:
    check = load_release_check()
    version = kdpm2.__version__
    (tmp_path / f"kdpm2-{version}-py3-none-any.whl").write_text("")
    (tmp_path / f"kdpm2-{version}.tar.gz").write_text("")
    found = check.problems(f"v{version}", tmp_path)
    if ".dev" in version:
        assert found[0] == f"{version} is a development version: set the release's version in src/kdpm2/__init__.py"
    (tmp_path / "extra.whl").write_text("")
    found = check.problems("v9.9.9", tmp_path)
    assert found[0] == f"tag 'v9.9.9' is not 'v' + kdpm2.__version__ ({version!r})"
    assert any(p.startswith(f"{tmp_path}/ holds ['extra.whl'") for p in found), found
    assert found[-1] == f"docs/changelog.md has no '## {version} (YYYY-MM-DD)' section" or ".dev" not in version

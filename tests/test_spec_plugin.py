"""The pytest plugin: ``--kdpm2-target`` adds one test per property to a user's suite, and nothing without it.

Each test runs pytest in a subprocess on a scratch project (its own ``pytest.ini``), with the
plugin enabled by ``-p`` as the ``pytest11`` entry point does once the package is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself needs there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

USER_TEST = """
import sys


def test_users_own():
    assert "torch" not in sys.modules, "the plugin must not import torch without --kdpm2-target"
"""

BROKEN = """
from kdpm2 import KDPM2DiscreteScheduler


class Broken(KDPM2DiscreteScheduler):
    def scale_model_input(self, sample, timestep):
        return super().scale_model_input(sample, timestep) * 1.01
"""


def pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest with the plugin in ``project`` (a scratch folder with a user's test)."""
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_user.py").write_text(USER_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec"), str(project)])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "kdpm2_spec.pytest_plugin", "-p", "no:cacheprovider", "-q", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


def test_the_entry_point_names_the_plugin_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["entry-points"]["pytest11"] == {"kdpm2_spec.pytest_plugin": "kdpm2_spec.pytest_plugin"}


def test_without_the_option_it_adds_nothing(tmp_path: Path) -> None:
    done = pytest_in(tmp_path, "-rA")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED test_user.py::test_users_own" in done.stdout and "kdpm2_spec::" not in done.stdout
    assert "1 passed" in done.stdout


def test_each_property_is_a_test_with_markers_k_xfail_and_junit(tmp_path: Path) -> None:
    """float32, one expected failure (xfail), one stale expectation, one new failure, two float64-only skips."""
    (tmp_path / "broken.py").write_text(BROKEN)
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"tables_finite": "once NaN", "sampling_loop": "its model input is off"}))
    xml = tmp_path / "report.xml"
    done = pytest_in(
        tmp_path,
        "--kdpm2-target=broken:Broken",
        "--kdpm2-dtype=float32",
        "--kdpm2-profile=dev",
        "--kdpm2-no-shrink",
        f"--kdpm2-expect={expect}",
        "-m",
        "kdpm2",
        "-k",
        "tables_finite or step_alternates or exact_denoiser or scale_model_input or sampling_loop",
        f"--junitxml={xml}",
        "-rxs",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        child = next(iter(case), None)
        outcomes[case.get("name")] = (case.get("classname"), "passed" if child is None else child.tag)
    assert outcomes == {
        "tables_finite": ("kdpm2_spec", "failure"),  # stale: listed as failing, but passes
        "scale_model_input": ("kdpm2_spec", "failure"),  # the planted defect
        "step_alternates": ("kdpm2_spec", "passed"),
        "exact_denoiser": ("kdpm2_spec", "skipped"),  # float64 only
        "sampling_loop": ("kdpm2_spec", "skipped"),  # xfail: listed, and fails
        "step_alternates_from_begin": ("kdpm2_spec", "passed"),
    }
    assert "stale expectation: tables_finite no longer fails as listed: any failure (once NaN)" in done.stdout
    assert "XFAIL kdpm2_spec::sampling_loop - expected: its model input is off" in done.stdout
    assert "scale_model_input at call 0" in done.stdout and "case: Schedule(" in done.stdout
    assert "reproduce: python -m kdpm2_spec check broken:Broken --only scale_model_input --dtype float32 --case" in (
        done.stdout
    )
    assert "deselected" in done.stdout  # the user's own test, by -m kdpm2 (and the other properties, by -k)


def test_a_bad_target_is_a_usage_error(tmp_path: Path) -> None:
    done = pytest_in(tmp_path, "--kdpm2-target=os:Nope")
    assert done.returncode == 4
    assert "--kdpm2-target os:Nope: module 'os' has no 'Nope'" in done.stderr
    assert "INTERNALERROR" not in done.stdout + done.stderr


def test_without_hypothesis_it_is_a_usage_error_not_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "import importlib.abc, sys\n\n\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'hypothesis':\n"
        "            raise ModuleNotFoundError(name, name=name)\n\n\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    done = pytest_in(tmp_path, "--kdpm2-target=kdpm2:KDPM2DiscreteScheduler")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert (
        "ERROR: --kdpm2-target kdpm2:KDPM2DiscreteScheduler: the gate needs hypothesis, which is not installed: "
        'pip install "kdpm2[spec]"'
    ) in done.stderr

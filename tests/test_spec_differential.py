"""The differential mode: two implementations (or one and a snapshot) driven with the same draws.

``python -m kdpm2_spec diff`` in a subprocess, on kdpm2 and a subclass with one planted change,
with a few drawn runs each; and the comparison of two recorded behaviours in-process.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from kdpm2_spec.differential import compare

ROOT = Path(__file__).resolve().parents[1]
OURS = "kdpm2:KDPM2DiscreteScheduler"

CHANGED = """
from kdpm2 import KDPM2DiscreteScheduler


class Changed(KDPM2DiscreteScheduler):
    def add_noise(self, original_samples, noise, timesteps):
        # before diffusers' #7386: after the first step, the begin index instead of the step index
        saved = self._step_index
        self._step_index = None
        try:
            return super().add_noise(original_samples, noise, timesteps)
        finally:
            self._step_index = saved
"""


def kdpm2_spec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")])}
    return subprocess.run(
        [sys.executable, "-m", "kdpm2_spec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )


def test_the_same_implementation_twice_shows_no_difference(tmp_path: Path) -> None:
    done = kdpm2_spec("diff", OURS, OURS, "--examples", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("0 kinds of difference in ")
    assert list(tmp_path.iterdir()) == []


def test_a_changed_add_noise_is_found_with_a_reproducer_and_a_snapshot_finds_it_too(tmp_path: Path) -> None:
    (tmp_path / "changed.py").write_text(CHANGED)
    changed = f"changed:Changed@{tmp_path}"
    report = tmp_path / "diff.json"
    done = kdpm2_spec("diff", OURS, changed, "--examples", "4", "--json", str(report), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(report.read_text())
    kinds = {d["what"] for d in data["differences"]}
    assert any(k.startswith("add_noise after the call") for k in kinds), kinds
    assert not any(k.startswith(("sigmas", "timesteps")) for k in kinds), kinds  # the tables did not change
    line = next(line for line in done.stdout.splitlines() if line.startswith("DIFF add_noise after the call"))
    command = shlex.split(line.split("| reproduce: ")[1])
    again = kdpm2_spec(*command[3:], cwd=tmp_path)
    assert again.returncode == 1 and "DIFF add_noise after the call" in again.stdout, again.stdout + again.stderr

    snap = tmp_path / "good.json"
    done = kdpm2_spec("snapshot", OURS, "--out", str(snap), "--examples", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert kdpm2_spec("diff", OURS, str(snap), cwd=tmp_path).returncode == 0
    bad = kdpm2_spec("diff", changed, str(snap), cwd=tmp_path)
    assert bad.returncode == 1 and "DIFF add_noise after the call" in bad.stdout


def test_a_side_that_does_not_load_is_a_usage_error(tmp_path: Path) -> None:
    done = kdpm2_spec("diff", OURS, "nowhere:Nothing", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "nowhere:Nothing" in done.stderr.strip().splitlines()[-1]


def test_float32_rounding_is_not_a_difference_and_a_missing_method_is() -> None:
    base = {"timesteps": [999.0, 500.0], "sigmas": [14.6, 1.0, 0.0], "has set_begin_index": True, "calls": []}
    rounded = {**base, "sigmas": [14.6 * (1 + 1.6e-6), 1.0, 0.0]}
    assert compare(base, rounded) == []
    older = {**base, "has set_begin_index": False}
    assert compare(base, older) == [("has set_begin_index", "True vs False")]
    calls = [{"call": 0, "prev_sample": [1.0, 2.0]}, {"call": 1, "prev_sample": [0.5, 0.25]}]
    changed = [{"call": 0, "prev_sample": [1.0, 2.0]}, {"call": 1, "prev_sample": [0.5, 0.3]}]
    found = compare({**base, "calls": calls}, {**base, "calls": changed})
    assert [what for what, _ in found] == ["prev_sample at a second-order call"]

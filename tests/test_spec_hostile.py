"""The gate against hostile targets and missing dependencies: it judges, or says on one line why it cannot.

Each test runs ``python -m kdpm2_spec check`` in a subprocess, in an empty working directory, on
a small target module written into a separate folder (``--path``) and a property or two under
the ``dev`` profile. Exit statuses: 0 conforms, 1 a property failed (or errored), 2 cannot judge.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK = """
import importlib.abc, sys


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Block())
"""


def gate(cwd: Path, *args: str, block: tuple[str, ...] = (), timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``python -m kdpm2_spec check ARGS`` in ``cwd``; ``block``: packages made unimportable first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")])}
    if block:
        code = BLOCK.format(blocked=set(block)) + "from kdpm2_spec.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
        command = [sys.executable, "-c", code, "check", *args]
    else:
        command = [sys.executable, "-m", "kdpm2_spec", "check", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False, timeout=timeout)


def module(tmp_path: Path, text: str) -> Path:
    """A folder holding ``hostile.py`` (the target module) apart from the working directory."""
    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "hostile.py").write_text(text)
    (tmp_path / "cwd").mkdir()
    return folder


def only(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--only", name)]


HEADER = "from kdpm2 import KDPM2DiscreteScheduler\nimport os, sys, time\n\n\nclass Hostile(KDPM2DiscreteScheduler):\n"


def test_without_hypothesis_the_gate_names_it_and_exits_2(tmp_path: Path) -> None:
    done = gate(tmp_path, "kdpm2:KDPM2DiscreteScheduler", block=("hypothesis",))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        'python -m kdpm2_spec: error: the gate needs hypothesis, which is not installed: pip install "kdpm2[spec]"'
    ]


def test_without_scipy_a_target_with_beta_sigmas_is_refused_before_any_check(tmp_path: Path) -> None:
    done = gate(tmp_path, "kdpm2:KDPM2DiscreteScheduler", "--only", "tables_finite", block=("scipy",))
    assert done.returncode == 2 and done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m kdpm2_spec: error: the gate needs scipy, which is not installed")
    assert lines[-1].endswith('pip install "kdpm2[spec]"')


def test_an_unimportable_target_exits_2_on_one_line(tmp_path: Path) -> None:
    folder = module(tmp_path, "raise RuntimeError('broken at import')\n")
    done = gate(tmp_path / "cwd", "hostile:Hostile", "--path", str(folder))
    assert done.returncode == 2 and done.stdout == ""
    assert (
        "importing 'hostile' of 'hostile:Hostile' raised RuntimeError: broken at import" in done.stderr.splitlines()[-1]
    )


def test_a_target_that_ends_the_process_at_import_exits_2(tmp_path: Path) -> None:
    folder = module(tmp_path, "import os\nos._exit(0)\n")
    done = gate(tmp_path / "cwd", "hostile:Hostile", "--path", str(folder))
    assert done.returncode == 2 and done.stdout == ""
    assert "ended the process (exit status 0)" in done.stderr


def test_a_step_that_blocks_is_an_error_after_the_time_limit_and_the_rest_still_runs(tmp_path: Path) -> None:
    folder = module(tmp_path, HEADER + "    def step(self, *args, **kwargs):\n        time.sleep(10**6)\n")
    done = gate(
        tmp_path / "cwd", "hostile:Hostile", "--path", str(folder), "--profile", "dev", "--timeout", "20",
        *only("step_alternates", "tables_finite"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("ERROR step_alternates: no answer within 20 s (--timeout)")
    assert lines[2].startswith("PASS tables_finite")
    assert lines[-1].startswith("1 passed, 1 failed")


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("sys.exit(0)", "FAIL step_alternates: TargetExited: the target called sys.exit(0)"),
        ("os._exit(0)", "ERROR step_alternates: the target ended the process (exit status 0) without an answer"),
    ],
)
def test_a_target_that_exits_never_yields_exit_0(tmp_path: Path, body: str, line: str) -> None:
    folder = module(tmp_path, HEADER + f"    def step(self, *args, **kwargs):\n        {body}\n")
    done = gate(
        tmp_path / "cwd", "hostile:Hostile", "--path", str(folder), "--profile", "dev", "--no-shrink",
        *only("step_alternates", "tables_finite"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith(line), lines[1]
    assert lines[2].startswith("PASS tables_finite") and lines[-1].startswith("1 passed, 1 failed")


def test_an_exception_in_a_reproducer_is_that_cases_failure_not_a_traceback(tmp_path: Path) -> None:
    folder = module(
        tmp_path, HEADER + "    def step(self, *args, **kwargs):\n        raise AttributeError('no such thing')\n"
    )
    case = "Schedule(config={}, steps=3)"
    done = gate(tmp_path / "cwd", "hostile:Hostile", "--path", str(folder), "--only", "step_alternates", "--case", case)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"FAIL step_alternates on {case}: AttributeError: no such thing | signature: call: raises AttributeError [any configuration]"
    )


def test_what_the_target_prints_stays_out_of_the_report_and_nothing_is_written(tmp_path: Path) -> None:
    folder = module(
        tmp_path,
        HEADER
        + "    def step(self, *args, **kwargs):\n        print('NOISE')\n        return super().step(*args, **kwargs)\n",
    )
    cwd = tmp_path / "cwd"
    done = gate(cwd, "hostile:Hostile", "--path", str(folder), "--profile", "dev", *only("step_alternates"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NOISE" not in done.stdout and "NOISE" in done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["#", "PASS", "1"]
    assert list(cwd.iterdir()) == [], "a run must write nothing into the working directory (.hypothesis/)"


def test_a_missing_method_is_unsupported_for_what_needs_it(tmp_path: Path) -> None:
    text = HEADER + "    set_begin_index = property(lambda self: (_ for _ in ()).throw(AttributeError('none')))\n"
    folder = module(tmp_path, text)
    done = gate(
        tmp_path / "cwd", "hostile:Hostile", "--path", str(folder), "--profile", "dev",
        *only("illegal_calls", "step_alternates_from_begin", "sampling_loop"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "UNSUPPORTED illegal_calls: the scheduler has no set_begin_index"
    assert lines[2] == "UNSUPPORTED step_alternates_from_begin: the scheduler has no set_begin_index"
    assert (
        lines[3].startswith("PASS sampling_loop") and "not checked: the scheduler has no set_begin_index in" in lines[3]
    )


def test_a_step_output_without_pred_original_sample_is_partly_unchecked(tmp_path: Path) -> None:
    text = HEADER + (
        "    def step(self, *args, **kwargs):\n"
        "        out = super().step(*args, **kwargs)\n"
        "        return type('Out', (), {'prev_sample': out.prev_sample})()\n"
    )
    folder = module(tmp_path, text)
    done = gate(tmp_path / "cwd", "hostile:Hostile", "--path", str(folder), "--profile", "dev", *only("sampling_loop"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not checked: the step output has no pred_original_sample in" in done.stdout.splitlines()[1]


def test_a_long_message_keeps_the_value_that_failed(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    case = "Schedule(config={'timestep_spacing': 'trailing'}, steps=61)"  # 123 timesteps, the last -1
    done = gate(tmp_path, "diffusers:KDPM2DiscreteScheduler", "--only", "timesteps_range", "--case", case)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "timesteps[122]=-1.0 is negative: [..., 15.0, 3.1291732788085938, >-1.0<] (index 122 of 123)" in line, line

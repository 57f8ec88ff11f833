"""The planted-bug set against diffusers' own scheduler: every bug applies, and a few are caught quickly here.

The whole set runs in ``nox -s planted`` (``tests/planted_diffusers.py``: each bug a full gate run
with ``--expect diffusers-0.42``, too long for the default test run); here every bug is checked to
apply exactly where its description says, and two are run with only the property that must catch them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

diffusers = pytest.importorskip("diffusers")

import planted_diffusers as planted  # noqa: E402 - after the skip: it reads diffusers' file


def test_the_set_is_large_and_its_names_are_unique() -> None:
    names = [bug.name for bug in planted.BUGS]
    assert len(names) >= 30 and len(set(names)) == len(names)


@pytest.mark.parametrize("bug", planted.BUGS, ids=lambda bug: bug.name)
def test_each_bug_applies_to_the_installed_file_and_compiles(bug: planted.Bug, tmp_path: Path) -> None:
    text = planted.source().read_text(encoding="utf-8")
    assert text.count(bug.old) > bug.nth, f"{bug.old!r} is not in diffusers {diffusers.__version__}'s file"
    edited = planted.planted_text(bug, text)
    assert edited != text and len(edited.splitlines()) <= len(text.splitlines())
    compile(edited, f"{bug.name}.py", "exec")


@pytest.mark.parametrize(
    ("name", "prop"),
    [("add_noise_pre_7386", "add_noise_mid_loop"), ("v_prediction_power", "sampling_loop")],
)
def test_a_planted_bug_fails_the_gate_with_the_shipped_expectation(name: str, prop: str) -> None:
    bug = next(b for b in planted.BUGS if b.name == name)
    outcome = planted.gate(bug, 0, ("--only", prop))
    assert outcome["status"] == 1, outcome
    assert any(line.startswith(f"FAIL {prop}: ") for line in outcome["lines"]), outcome

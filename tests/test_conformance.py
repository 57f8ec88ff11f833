"""The conformance suite run against the reference, our scheduler and diffusers' (which must fail exactly its known deviations)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdpm2_spec import conformance, gate
from kdpm2_spec import strategies as ks
from kdpm2_spec.reference import Reference

ROOT = Path(__file__).resolve().parents[1]

DIFFUSERS_FAILURES = {
    "tables_finite": "sigmas_interpol[0] is NaN (log 0 in the midpoint lerp; diffusers #14368)",
    "timesteps_range": "Karras main timesteps are rounded, midpoints not: from ~48 steps they repeat and rise "
    "(#5746); trailing spacing yields a -1 timestep for some n (61 of 1000)",
    "tables_match_reference": "same three: NaN sigmas_interpol[0], rounded Karras timesteps, n + 1 trailing timesteps",
    "sampling_loop": "trailing spacing with n = 61 gives 123 calls instead of 121 (np.arange(T, 0, -T / n) overshoots)",
    "sampling_loop_exact": "float32 sigma tables: a float64 loop is 1e-9 relative off the float64 spec",
    "prediction_sample": "prediction_type='sample' raises NotImplementedError in step",
    "float32_loop": "the n + 1 trailing timesteps again (the float32 arithmetic itself is within 1e-5)",
    "low_precision_step": "float16/bfloat16 step computed in the tensor dtype, several roundings (x - (x - s eps)) / s",
    "illegal_calls": "set_begin_index accepts any value; out-of-range indices fail later or never",
    "exact_denoiser": "dt = sigma_next - sigma_hat is taken between float32 0-d tensors, so with squaredcos_cap_v2 "
    "(sigma about 2e4) a float64 loop lands 1e-6 of sigma_max away from x0 + s * noise",
}
"""diffusers 0.42.1 fails exactly these properties, for these reasons."""

DIFFUSERS_UNSUPPORTED = {
    "custom_sigmas": "set_timesteps has no sigmas argument",
    "custom_timesteps": "set_timesteps has no timesteps argument",
    "churn": "no s_churn/s_tmin/s_tmax/s_noise (only gamma = 0)",
    "convergence_order": "needs set_timesteps(sigmas=...)",
}
"""Properties diffusers cannot be asked (reported ``unsupported``, not failed)."""


def test_reference_conforms_to_itself() -> None:
    report = conformance.run(Reference)
    assert report.ok, str(report)
    assert set(report.unsupported) == {"float32_loop", "low_precision_step", "save_reload"}, str(report)


def test_ours_conforms() -> None:
    from kdpm2 import KDPM2DiscreteScheduler

    report = conformance.run(KDPM2DiscreteScheduler)
    assert report.ok and not report.unsupported, str(report)
    assert report.summary() == f"{len(conformance.PROPERTIES)} passed, 0 failed"


def test_diffusers_fails_exactly_its_known_deviations() -> None:
    diffusers = pytest.importorskip("diffusers")
    report = conformance.run(diffusers.KDPM2DiscreteScheduler, shrink=False, expect=gate.load("diffusers-0.42"))
    assert set(report.failed) == set(DIFFUSERS_FAILURES), str(report)
    assert report.exit_status == 0, "the shipped expectation file must gate diffusers 0.42"
    assert set(report.unsupported) == set(DIFFUSERS_UNSUPPORTED), str(report)
    assert "NotImplementedError" in report["prediction_sample"].message
    assert "sigmas_interpol[0]" in report["tables_finite"].message
    assert "python -m kdpm2_spec check" in report["illegal_calls"].reproducer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")])}
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "kdpm2_spec", "check", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


def test_cli_passes_ours_and_prints_the_summary_line() -> None:
    done = _cli("kdpm2:KDPM2DiscreteScheduler", "--only", "tables_finite", "--only", "illegal_calls")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "2 passed, 0 failed"
    assert lines[0].startswith("# kdpm2.scheduler:KDPM2DiscreteScheduler on cpu in float64")
    assert [line.split()[0] for line in lines[1:-1]] == ["PASS", "PASS"]


def test_cli_fails_diffusers_with_a_reproducer_that_reproduces() -> None:
    pytest.importorskip("diffusers")
    done = _cli("diffusers:KDPM2DiscreteScheduler", "--only", "illegal_calls", "--no-shrink")
    assert done.returncode == 1
    _, line, summary = done.stdout.strip().splitlines()
    assert summary == "0 passed, 1 failed"
    assert line.startswith("FAIL illegal_calls: set_begin_index(")
    command = line.split("reproduce: ")[1]
    import shlex  # a reproducer is one shell command

    case = shlex.split(command)[-1]
    again = _cli("diffusers:KDPM2DiscreteScheduler", "--only", "illegal_calls", "--case", case)
    assert again.returncode != 0 and "must raise ValueError" in again.stderr


def test_spec_never_imports_torch_statically() -> None:
    for path in (ROOT / "spec" / "kdpm2_spec").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name


def test_configs_respect_the_constructor_signature() -> None:
    diffusers = pytest.importorskip("diffusers")
    args = ks.supported_args(diffusers.KDPM2DiscreteScheduler)
    assert args == set(ks.DIFFUSERS_ARGS)
    from hypothesis import given

    @given(ks.configs(args))
    def only_supported(config: dict) -> None:
        assert set(config) <= args

    only_supported()


def test_docs_conformance_table_matches_the_suite() -> None:
    """docs/conformance.md (generated from a real run) lists every property and diffusers' exact failures."""
    rows = [line.split("|") for line in (ROOT / "docs" / "conformance.md").read_text().splitlines()]
    unlink = re.compile(r"^\[(.+)\]\(ci\.md#.+\)$")  # a property linked to its definition in docs/ci.md
    table = {
        unlink.sub(r"\1", cells[1].strip()).strip("`"): [c.strip() for c in cells[2:5]]
        for cells in rows
        if len(cells) == 6
    }
    table.pop("property", None)
    table = {name: marks for name, marks in table.items() if not set(name) <= set("-")}
    assert list(table) == list(conformance.PROPERTIES), "regenerate: python docs/scripts/conformance_table.py"
    assert {n for n, marks in table.items() if marks[2] == "**fail**"} == set(DIFFUSERS_FAILURES)
    assert {n for n, marks in table.items() if marks[2] == "n/a"} == set(DIFFUSERS_UNSUPPORTED)
    assert all(marks[1] == "pass" for marks in table.values()), "kdpm2 must pass every property"

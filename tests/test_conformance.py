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
    "tables_finite": {"sigmas_interpol: not finite at the first entry [any configuration]"},
    "timesteps_range": {
        "timesteps: rise by less than 0.5 [use_karras_sigmas=True]",
        "timesteps: below 0 [timestep_spacing=trailing]",
    },
    "timestep_of_sigma": {
        "timesteps: not the timestep of the call's sigma at main entries [timestep_spacing=trailing]"
    },
    "reference_sigmas": {"sigmas: 2 entries too many [timestep_spacing=trailing]"},
    "reference_sigmas_interpol": {
        "sigmas_interpol: not finite at the first entry [any configuration]",
        "sigmas_interpol: 2 entries too many [timestep_spacing=trailing]",
    },
    "reference_timesteps": {
        "timesteps: main Karras timesteps rounded [use_karras_sigmas=True]",
        "timesteps: 2 entries too many [timestep_spacing=trailing]",
    },
    "sampling_loop": {"timesteps: 2 entries too many [timestep_spacing=trailing]"},
    "prediction_sample": {"step: raises NotImplementedError [prediction_type=sample]"},
    "float32_loop": {"timesteps: 2 entries too many [timestep_spacing=trailing]"},
    "low_precision_step": {
        "prev_sample: beyond one ulp [dtype=float16]",
        "prev_sample: beyond one ulp [dtype=bfloat16]",
    },
    "illegal_calls": {
        "set_begin_index(len(timesteps)): no error [any configuration]",
        "set_begin_index(-1): no error [any configuration]",
        "step past the end: no error [any configuration]",
    },
}
"""Signatures diffusers 0.42.1 shows at the ``ci`` profile's seed, by property (each is in the shipped file)."""

DIFFUSERS_UNSUPPORTED = {
    "custom_sigmas": "set_timesteps has no sigmas argument",
    "custom_timesteps": "set_timesteps has no timesteps argument",
    "churn": "the constructor has no s_churn, s_tmin, s_tmax, s_noise",
    "convergence_order": "set_timesteps has no sigmas argument",
}
"""Properties diffusers cannot be asked (reported ``unsupported``, not failed)."""


def test_reference_conforms_to_itself() -> None:
    report = conformance.run(Reference)
    assert report.ok, str(report)
    assert set(report.unsupported) == {"float32_loop", "low_precision_step", "save_reload"}, str(report)
    assert report.level == "exact"


def test_ours_conforms() -> None:
    from kdpm2 import KDPM2DiscreteScheduler

    report = conformance.run(KDPM2DiscreteScheduler)
    assert report.ok and not report.unsupported, str(report)
    assert report.summary() == f"{len(conformance.PROPERTIES)} passed, 0 failed; numerical level: exact"


def test_diffusers_fails_exactly_its_known_deviations() -> None:
    diffusers = pytest.importorskip("diffusers")
    report = conformance.run(diffusers.KDPM2DiscreteScheduler, shrink=False, expect=gate.load("diffusers-0.42"))
    assert report.exit_status == 0, str(report)
    assert set(report.failed) == set(DIFFUSERS_FAILURES), str(report)
    seen = {r.name: {k["signature"] for k in r.known} for r in report.results if r.known}
    for name, signatures in DIFFUSERS_FAILURES.items():
        assert signatures <= seen[name], (name, seen[name])
    assert {r.name: r.message for r in report.results if r.status == "unsupported"} == DIFFUSERS_UNSUPPORTED
    assert report.level == "float32 tables"


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
    assert lines[0].startswith("# kdpm2:KDPM2DiscreteScheduler on cpu in float64")
    assert [line.split()[0] for line in lines[1:-1]] == ["PASS", "PASS"]


def test_cli_fails_diffusers_with_a_reproducer_that_reproduces() -> None:
    pytest.importorskip("diffusers")
    done = _cli("diffusers:KDPM2DiscreteScheduler", "--only", "illegal_calls", "--no-shrink")
    assert done.returncode == 1
    _, line, summary = done.stdout.strip().splitlines()
    assert summary == "0 passed, 1 failed"
    assert line.startswith("FAIL illegal_calls: set_begin_index(")
    assert "| signature: set_begin_index(len(timesteps)): no error [" in line
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
    header = next(cells for cells in rows if len(cells) > 2 and cells[1].strip() == "property")
    columns = [c.strip() for c in header[2:-1]]
    assert columns == ["Reference", "float32-table model", "kdpm2", "diffusers"]
    table = {
        unlink.sub(r"\1", cells[1].strip()).strip("`"): dict(
            zip(columns, (c.strip() for c in cells[2:-1]), strict=True)
        )
        for cells in rows
        if len(cells) == len(header) and cells[1].strip().startswith("[")
    }
    assert list(table) == list(conformance.PROPERTIES), "regenerate: python docs/scripts/conformance_table.py"
    assert {n for n, marks in table.items() if marks["diffusers"] == "**fail**"} == set(DIFFUSERS_FAILURES)
    assert {n for n, marks in table.items() if marks["diffusers"] == "n/a"} == set(DIFFUSERS_UNSUPPORTED)
    assert all(marks["kdpm2"] == "pass" for marks in table.values()), "kdpm2 must pass every property"
    assert all(marks["float32-table model"] in ("pass", "n/a") for marks in table.values())


@pytest.mark.parametrize(
    ("target", "summary"),
    [
        ("kdpm2:KDPM2DiscreteScheduler", "27 passed, 0 failed; numerical level: exact"),
        ("kdpm2:KDPM2AncestralDiscreteScheduler", "9 passed, 0 failed"),
    ],
)
def test_ours_is_exact_on_torch_s_scalar_kernels_too(
    target: str, summary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU without AVX2 torch's float32 ``linspace`` rounds some betas to the other neighbour
    (emulated here with ``ATEN_CPU_CAPABILITY=default``); kdpm2 and diffusers compute them with it,
    and so does the spec where torch is loaded: both families still pass, DPM2 at level exact."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    done = _cli(target, "--profile", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == summary

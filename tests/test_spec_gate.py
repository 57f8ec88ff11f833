"""``python -m kdpm2_spec check`` as a CI gate: expectation files, exit statuses, JSON and JUnit, seeds.

Most run the command line in-process (``main(argv)``, output captured) on a few properties under
the ``dev`` profile; diffusers' known failures make it the gated implementation.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kdpm2_spec import catalog, conformance, gate
from kdpm2_spec.__main__ import main

DIFFUSERS = "diffusers:KDPM2DiscreteScheduler"
OURS = "kdpm2:KDPM2DiscreteScheduler"
QUICK_DIFFUSERS = ["illegal_calls", "custom_sigmas"]
"""diffusers fails the first on a pinned example and cannot be asked the second: both are quick
(diffusers' ``set_timesteps`` is a Python loop, so properties it passes take seconds; the whole
run with the shipped file is ``test_diffusers_fails_exactly_its_known_deviations``)."""


def _only(names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--only", name)]


def check(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Exit status, standard output and standard error of ``python -m kdpm2_spec check ARGS``."""
    status = main(["check", *args])
    out, err = capfd.readouterr()
    return status, out, err


def test_shipped_expectations_are_diffusers_known_failures() -> None:
    from test_conformance import DIFFUSERS_FAILURES, DIFFUSERS_UNSUPPORTED

    assert "diffusers-0.42" in gate.shipped()
    expect = gate.load("diffusers-0.42", conformance.PROPERTIES)
    shipped: dict[str, set[str]] = {}
    for entry in expect.entries:
        shipped.setdefault(entry.signature.prop, set()).add(str(entry.signature))
    for name, signatures in DIFFUSERS_FAILURES.items():
        assert signatures <= shipped[name], name
    assert set(shipped) <= set(DIFFUSERS_FAILURES) | {"add_noise_mid_loop", "set_timesteps_again", "exact_denoiser"}
    assert {name for name, notes in expect.unsupported.items() if notes} >= set(DIFFUSERS_UNSUPPORTED)
    assert expect.level == "float32 tables" and expect.target == DIFFUSERS


def test_shipped_expectations_are_in_the_wheel(tmp_path: Path) -> None:
    builders = pytest.importorskip("hatchling.builders.wheel", reason="building the wheel needs hatchling")
    import zipfile

    wheel = builders.WheelBuilder(str(Path(__file__).resolve().parents[1])).build(directory=str(tmp_path))
    names = zipfile.ZipFile(next(iter(wheel))).namelist()
    assert "kdpm2_spec/expectations/diffusers-0.42.json" in names
    assert "kdpm2_spec/pytest_plugin.py" in names


def test_diffusers_with_the_shipped_expectations_exits_0(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    report, xml = tmp_path / "report.json", tmp_path / "report.xml"
    args = [DIFFUSERS, *_only(QUICK_DIFFUSERS), "--no-shrink", "--profile", "dev", "--expect", "diffusers-0.42"]
    status, out, err = check(capfd, *args, "--json", str(report), "--junit-xml", str(xml))
    assert status == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("# diffusers:KDPM2DiscreteScheduler on cpu")
    assert [line.split()[0] for line in lines[1:-1]] == ["XFAIL", "UNSUPPORTED"]
    assert lines[-1] == "0 passed, 1 failed (1 expected), 0 stale"

    data = json.loads(report.read_text())
    assert data["exit_status"] == 0 and data["dtype"] == "float64" and data["device"] == "cpu"
    statuses = {r["name"]: (r["status"], r["new_failure"]) for r in data["results"]}
    assert statuses["illegal_calls"] == ("xfail", False) and statuses["custom_sigmas"] == ("unsupported", False)
    failed = next(r for r in data["results"] if r["name"] == "illegal_calls")
    assert [k["signature"] for k in failed["known"]] == [
        "set_begin_index(len(timesteps)): no error [any configuration]",
        "set_begin_index(-1): no error [any configuration]",
        "step past the end: no error [any configuration]",
    ]
    assert failed["known"][0]["case"].startswith("Schedule(") and failed["expected"]

    suite = ET.parse(xml).getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == QUICK_DIFFUSERS
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert cases["illegal_calls"].find("skipped").get("type") == "xfail"  # type: ignore[union-attr]
    assert cases["custom_sigmas"].find("skipped").get("type") == "unsupported"  # type: ignore[union-attr]


def test_a_planted_defect_fails_the_gate_and_is_named(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setattr(diffusers.KDPM2DiscreteScheduler, "scale_model_input", lambda self, sample, timestep: sample)
    xml = tmp_path / "report.xml"
    only = _only(["illegal_calls", "scale_model_input"])
    status, out, _ = check(
        capfd, DIFFUSERS, *only, "--no-shrink", "--expect", "diffusers-0.42", "--junit-xml", str(xml), "--in-process"
    )
    assert status == conformance.EXIT_FAILED
    assert out.splitlines()[1].startswith("XFAIL illegal_calls")
    assert out.splitlines()[2].startswith("FAIL scale_model_input: scale_model_input at call 0")
    assert "| signature: model input: wrong value at first-order calls [" in out.splitlines()[2]
    failure = next(c for c in ET.parse(xml).getroot().iter("testcase") if c.get("name") == "scale_model_input")
    text = failure.find("failure").text or ""  # type: ignore[union-attr]
    assert "case: Schedule(" in text and "reproduce: python -m kdpm2_spec check" in text


def test_a_listed_failure_that_passes_is_stale(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    expect, xml = tmp_path / "expect.json", tmp_path / "report.xml"
    expect.write_text(json.dumps({"tables_finite": "was NaN once"}))
    only = _only(["tables_finite", "illegal_calls"])
    status, out, _ = check(capfd, OURS, *only, "--profile", "dev", "--expect", str(expect), "--junit-xml", str(xml))
    assert status == conformance.EXIT_STALE
    assert out.splitlines()[1] == (
        "STALE tables_finite: expected failures no longer seen (their recorded cases pass): any failure (was NaN once)"
    )
    assert out.splitlines()[2].startswith("PASS illegal_calls")
    assert out.splitlines()[-1] == "2 passed, 0 failed (0 expected), 1 stale"
    stale, passed = ET.parse(xml).getroot().iter("testcase")
    assert [child.get("type") for child in stale] == ["stale"] and len(list(passed)) == 0


def test_a_new_failure_outranks_a_stale_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdpm2 import KDPM2DiscreteScheduler

    class Broken(KDPM2DiscreteScheduler):
        def scale_model_input(self, sample, timestep):  # type: ignore[no-untyped-def]
            return sample

    report = conformance.run(
        Broken, profile="dev", only=["tables_finite", "scale_model_input"], shrink=False, expect={"tables_finite": "?"}
    )
    assert report.stale == ["tables_finite"] and report.new_failures == ["scale_model_input"]
    assert report.exit_status == conformance.EXIT_FAILED


def test_write_expect_records_the_failures_and_then_gates_them(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("diffusers")
    written = tmp_path / "expect.json"
    args = [DIFFUSERS, *_only(QUICK_DIFFUSERS), "--no-shrink", "--profile", "dev"]
    status, out, _ = check(capfd, *args, "--write-expect", str(written))
    assert status == 0, out
    recorded = gate.load(str(written), conformance.PROPERTIES)
    assert {e.signature.prop for e in recorded.entries} == {"illegal_calls"}
    assert recorded.entries[0].reason.startswith("set_begin_index(")
    assert recorded.unsupported == {"custom_sigmas": ["set_timesteps has no sigmas argument"]}
    status, out, _ = check(capfd, *args, "--expect", str(written))
    assert status == 0, out


def test_the_same_seed_gives_the_same_report(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reports = []
    for run in ("a", "b"):
        path = tmp_path / f"{run}.json"
        status, out, _ = check(
            capfd,
            OURS,
            *_only(["reference_timesteps", "illegal_calls"]),
            "--profile",
            "dev",
            "--seed",
            "7",
            "--json",
            str(path),
        )
        assert status == 0, out
        data = json.loads(path.read_text())
        for result in data["results"]:
            result.pop("seconds")
        reports.append((out, data))
    assert reports[0] == reports[1]
    assert reports[0][1]["seed"] == 7 and "seed 7," in reports[0][0]


class BrokenStep:
    """kdpm2 with a defect in ``step`` (used where a failure must come from a generated case)."""

    @staticmethod
    def make() -> type:
        from kdpm2 import KDPM2DiscreteScheduler

        class Broken(KDPM2DiscreteScheduler):
            def step(self, model_output, timestep, sample, *args, **kwargs):  # type: ignore[no-untyped-def]
                out = super().step(model_output, timestep, sample, *args, **kwargs)
                out.prev_sample = out.prev_sample * 1.001
                return out

        return Broken


def test_no_example_database_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    broken = BrokenStep.make()
    report = conformance.run(broken, profile="dev", only=["custom_sigmas"], shrink=False)
    assert report.failed == ["custom_sigmas"]
    assert not any(tmp_path.iterdir()), "a run without a database must write nothing"
    report = conformance.run(broken, profile="dev", only=["custom_sigmas"], shrink=False, database=str(tmp_path / "db"))
    assert report.failed == ["custom_sigmas"]
    assert any(p.is_file() for p in (tmp_path / "db").rglob("*")), str(report)


@pytest.mark.parametrize("dtype", catalog.DTYPE_NAMES)
def test_ours_passes_on_the_cpu_in_every_dtype(dtype: str) -> None:
    """The dtype-dependent properties (and one of each kind) in each dtype; all in float64 is ``test_ours_conforms``."""
    from kdpm2 import KDPM2DiscreteScheduler

    only = ["scale_model_input", "sampling_loop", "custom_sigmas"]
    report = conformance.run(KDPM2DiscreteScheduler, profile="dev", only=only, device="cpu", dtype=dtype)
    assert report.ok and report.exit_status == 0, str(report)
    float64_only = {n for n in only if dtype not in catalog.dtypes_of(n)}
    assert set(report.unsupported) == float64_only, str(report)
    assert set(report.passed) == set(only) - float64_only
    floor = catalog.DTYPE_RTOL[dtype]
    assert report.header().endswith("level float32 tables" if floor == 0 else f"at least {floor:g} relative (loops)")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ours_passes_every_property_in_every_dtype(dtype: str) -> None:
    """Every property under the ``ci`` profile (20-30 s per dtype here, hence ``slow``)."""
    from kdpm2 import KDPM2DiscreteScheduler

    report = conformance.run(KDPM2DiscreteScheduler, profile="ci", device="cpu", dtype=dtype)
    assert report.ok, str(report)
    assert set(report.unsupported) == {n for n in conformance.PROPERTIES if dtype not in catalog.dtypes_of(n)}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", catalog.DTYPE_NAMES)
def test_ours_passes_on_cuda_in_every_dtype(dtype: str) -> None:
    """The same subset on the GPU (``--device cuda``); skipped without one."""
    from kdpm2 import KDPM2DiscreteScheduler

    only = ["reference_sigmas", "scale_model_input", "sampling_loop", "custom_sigmas", "churn"]
    report = conformance.run(KDPM2DiscreteScheduler, profile="dev", only=only, device="cuda", dtype=dtype)
    assert report.ok and report.device == "cuda", str(report)


def test_device_reaches_set_timesteps() -> None:
    """The adapter passes its device to ``set_timesteps`` (here ``meta``: no tables, but the call shows it)."""
    from kdpm2_spec import TorchAdapter

    seen = []

    class Recording:
        def set_timesteps(self, num_inference_steps=None, device=None):  # type: ignore[no-untyped-def]
            seen.append(device)

    adapter = TorchAdapter(Recording, device="cuda:1", dtype="float16")
    adapter.create().set_timesteps(5)
    adapter.create().set_timesteps(5, device="cpu")
    import copy

    copy.deepcopy(adapter.create()).set_timesteps(3)
    assert seen == ["cuda:1", "cpu", "cuda:1"]
    assert adapter.with_dtype("float32").device == "cuda:1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float8"}, "dtype must be one of float64, float32, float16, bfloat16, got 'float8'"),
        ({"device": "bogus"}, "device must be a torch device string"),
    ],
)
def test_bad_device_or_dtype_is_a_value_error(kwargs: dict[str, str], message: str) -> None:
    from kdpm2 import KDPM2DiscreteScheduler

    with pytest.raises(ValueError, match=message):
        conformance.run(KDPM2DiscreteScheduler, only=["tables_finite"], **kwargs)


def test_the_reference_runs_in_float64_on_the_cpu_only() -> None:
    from kdpm2_spec import Reference

    with pytest.raises(ValueError, match="runs on cpu in float64 only"):
        conformance.run(Reference, only=["tables_finite"], dtype="float32")


def test_the_catalog_covers_every_property() -> None:
    from kdpm2_spec import pytest_plugin
    from kdpm2_spec.registry import FAMILIES

    assert list(catalog.TOLERANCES) == list(conformance.PROPERTIES)
    every = {name for family in FAMILIES.values() for name in family.properties}  # the ancestral family's too
    assert set(catalog.DTYPES) <= every
    assert all(set(d) <= set(catalog.DTYPE_NAMES) and "float64" in d for d in catalog.DTYPES.values())
    assert pytest_plugin.DTYPES == catalog.DTYPE_NAMES

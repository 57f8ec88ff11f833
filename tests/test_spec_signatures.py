"""Failure signatures and expectation files: a new kind of failure in an already failing property fails the gate.

In-process runs (``conformance.run``) of kdpm2 with defects planted by subclassing, under the
``dev`` profile and a few properties each, with expectations built in the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import conformance, gate
from kdpm2_spec import strategies as ks
from kdpm2_spec.discrepancy import Discrepancy, Finding, compare, excerpt, findings_of
from kdpm2_spec.signatures import ANY, Signature, features, minimal_family


class NanFirstMidpoint(KDPM2DiscreteScheduler):
    """diffusers' NaN in ``sigmas_interpol[0]``, and nothing else wrong."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.sigmas_interpol = self.sigmas_interpol.clone()
        self.sigmas_interpol[0] = float("nan")


class NanAndWrongMidpoints(NanFirstMidpoint):
    """The known NaN, and midpoints 1 % off for v-prediction only (a new kind in the same table)."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        if self.config.prediction_type == "v_prediction":
            self.sigmas_interpol[1:] = self.sigmas_interpol[1:] * 1.01


NAN = Signature("reference_sigmas_interpol", "sigmas_interpol", "not finite at the first entry", frozenset())


def _expect(*signatures: Signature, unsupported: dict[str, list[str]] | None = None) -> gate.Expectation:
    return gate.Expectation(
        [gate.Entry(s, "known", "Schedule(config={}, steps=3)") for s in signatures], dict(unsupported or {})
    )


def test_features_name_flags_and_names_not_numbers() -> None:
    case = ks.Loop(
        {"use_karras_sigmas": True, "beta_start": 0.001, "timestep_spacing": "linspace", "steps_offset": 1},
        5,
        2,
        0.1,
        3,
        (2, 3),
    )
    assert features(case) == {"use_karras_sigmas=True", "beta_start", "steps_offset", "image to image"}
    low = ks.LowPrecision({"num_train_timesteps": 1000}, 3, 1, "float16", 0, 1.0)
    assert features(low) == {"dtype=float16"}


def test_a_signature_covers_the_same_finding_in_any_wider_family() -> None:
    karras = Signature("p", "timesteps", "rise", frozenset({"use_karras_sigmas=True"}))
    finding = Finding("timesteps", "rise")
    assert karras.covers("p", finding, frozenset({"use_karras_sigmas=True", "beta_start"}))
    assert not karras.covers("p", finding, frozenset({"timestep_spacing=trailing"}))
    assert not karras.covers("p", Finding("timesteps", "below 0"), frozenset({"use_karras_sigmas=True"}))
    assert not karras.covers("q", finding, frozenset({"use_karras_sigmas=True"}))
    assert str(NAN) == f"sigmas_interpol: not finite at the first entry [{ANY}]"


def test_minimal_family_drops_what_the_failure_does_not_need() -> None:
    case = ks.Schedule({"timestep_spacing": "trailing", "beta_start": 0.001, "use_karras_sigmas": True}, 61)
    family, smallest = minimal_family(case, Finding("t", "k"), lambda c: c.config.get("timestep_spacing") == "trailing")
    assert family == {"timestep_spacing=trailing"} and smallest == ks.Schedule({"timestep_spacing": "trailing"}, 61)


def test_compare_names_every_kind_of_difference_at_once() -> None:
    want = np.array([5.0, 4.0, 4.0, 2.0, 2.0])
    got = np.array([np.nan, 4.0, 4.4, 2.0, 2.0])
    found, _ = compare("sigmas_interpol", want, got, 1e-6)
    assert [d.findings for d in found] == [
        (Finding("sigmas_interpol", "not finite"),),
        (Finding("sigmas_interpol", "wrong value"),),
    ]
    assert "4.4" in str(found[1])
    found, _ = compare("timesteps", np.arange(5.0), np.arange(7.0), 1e-6)
    assert found[0].findings == (Finding("timesteps", "2 entries too many"),)


def test_a_message_shows_the_value_that_failed_however_long_the_table() -> None:
    table = np.concatenate([np.linspace(999, 0, 200), [-1.0]])
    assert excerpt(table, 200).endswith(">-1.0<] (index 200 of 201)")
    assert excerpt(table, 100).startswith("[...,") and "..." in excerpt(table, 100)[-30:]


def test_a_plain_error_is_a_raises_finding() -> None:
    assert findings_of(NotImplementedError("x")) == (Finding("call", "raises NotImplementedError"),)
    assert findings_of(Discrepancy.one("a", "b", "c")) == (Finding("a", "b"),)


def test_the_known_failure_passes_and_a_new_kind_in_the_same_property_fails() -> None:
    only = ["reference_sigmas_interpol"]
    known = conformance.run(NanFirstMidpoint, profile="dev", only=only, expect=_expect(NAN), seed=1)
    assert known.exit_status == 0 and known["reference_sigmas_interpol"].xfail, str(known)
    new = conformance.run(NanAndWrongMidpoints, profile="dev", only=only, expect=_expect(NAN), seed=1, shrink=False)
    assert new.exit_status == conformance.EXIT_FAILED, str(new)
    result = new["reference_sigmas_interpol"]
    assert result.findings and all("wrong value" in f for f in result.findings), result.findings
    assert any("prediction_type=v_prediction" in f for f in result.findings)


def test_an_expected_failure_does_not_stop_the_search() -> None:
    """Every pinned example shows the known NaN first; the v-prediction defect is still found."""
    report = conformance.run(
        NanAndWrongMidpoints, profile="dev", only=["reference_sigmas_interpol"], expect=_expect(NAN), seed=3
    )
    assert report["reference_sigmas_interpol"].status == "fail", str(report)
    assert "v_prediction" in repr(report["reference_sigmas_interpol"].case)


def test_write_then_gate_then_stale(tmp_path: Path) -> None:
    only = ["reference_sigmas_interpol", "tables_finite"]
    recorded = conformance.run(NanFirstMidpoint, profile="dev", only=only, record=True, seed=2)
    assert recorded.exit_status == 0
    path = tmp_path / "expect.json"
    written = gate.write(recorded, str(path))
    assert {str(e.signature) for e in written.entries} == {
        str(NAN),
        "sigmas_interpol: not finite at the first entry [any configuration]",
    }
    assert {e.signature.prop for e in written.entries} == set(only)
    data = json.loads(path.read_text())
    assert data["kdpm2_spec_expectations"] == 2 and data["level"] is None  # no loop: no level measured
    expect = gate.load(str(path), conformance.PROPERTIES)
    assert conformance.run(NanFirstMidpoint, profile="dev", only=only, expect=expect, seed=5).exit_status == 0
    fixed = conformance.run(KDPM2DiscreteScheduler, profile="dev", only=only, expect=expect, seed=5)
    assert fixed.exit_status == conformance.EXIT_STALE, str(fixed)
    assert fixed["tables_finite"].stale == ["sigmas_interpol: not finite at the first entry [any configuration]"]
    assert fixed.summary().startswith("2 passed, 0 failed (0 expected), 2 stale")


def test_merging_keeps_the_most_general_family() -> None:
    narrow = Signature("p", "t", "k", frozenset({"a", "b"}))
    wide = Signature("p", "t", "k", frozenset({"a"}))
    previous = gate.Expectation([gate.Entry(narrow, "why", "c")])

    class Fake:
        target, family, level = "x:Y", "kdpm2", "-"
        results: ClassVar = [
            conformance.Result(
                "p", "pass", "", recorded=[{"what": "t", "kind": "k", "family": ["a"], "case": "c2", "message": "m"}]
            )
        ]

    merged = gate.from_report(Fake(), previous)
    assert [e.signature for e in merged.entries] == [wide]


def test_a_newly_unsupported_check_fails_an_expectation() -> None:
    class NoBeginIndex(KDPM2DiscreteScheduler):
        set_begin_index = property(lambda self: (_ for _ in ()).throw(AttributeError("no")))  # type: ignore[assignment]

    only = ["illegal_calls"]
    report = conformance.run(NoBeginIndex, profile="dev", only=only, expect=_expect())
    assert report["illegal_calls"].status == "unsupported" and report.exit_status == 1, str(report)
    allowed = _expect(unsupported={"illegal_calls": ["the scheduler has no set_begin_index"]})
    assert conformance.run(NoBeginIndex, profile="dev", only=only, expect=allowed).exit_status == 0
    assert conformance.run(NoBeginIndex, profile="dev", only=only).exit_status == 0  # no expectation: never a failure


def test_the_first_format_masks_whole_properties_and_renamed_ones() -> None:
    legacy = gate.parse(
        {"tables_match_reference": "old name", "tables_finite": "NaN"}, "old.json", conformance.PROPERTIES
    )
    assert legacy.legacy and {e.signature.prop for e in legacy.entries} == {
        "reference_sigmas",
        "reference_sigmas_interpol",
        "reference_timesteps",
        "reference_init_noise_sigma",
        "tables_finite",
    }
    report = conformance.run(NanFirstMidpoint, profile="dev", only=["tables_finite"], expect=legacy)
    assert report.exit_status == 0 and report["tables_finite"].xfail


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kdpm2_spec_expectations": 2, "properties": {"nope": {}}}, "unknown properties"),
        (
            {"kdpm2_spec_expectations": 2, "properties": {"churn": {"failures": [{"what": "x"}]}}},
            "lacks 'what' or 'kind'",
        ),
        ({"kdpm2_spec_expectations": 2, "level": "perfect", "properties": {}}, "level must be one of"),
        ({"kdpm2_spec_expectations": 2, "properties": {"churn": {"other": 1}}}, "'failures' and/or 'unsupported'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_malformed_expectation_is_a_value_error(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gate.parse(data, "x.json", conformance.PROPERTIES)


def test_the_shipped_file_parses_and_names_known_properties() -> None:
    expect = gate.load("diffusers-0.42", conformance.PROPERTIES)
    assert not expect.legacy and expect.level == "float32 tables"
    assert "use_karras_sigmas" in expect.arguments["constructor"] and "sigmas" not in expect.arguments["set_timesteps"]
    assert all(e.reason and e.case for e in expect.entries)
    assert "custom_sigmas" in expect.unsupported


def test_kdpm2_float64_steps_meet_the_exact_level() -> None:
    report = conformance.run(KDPM2DiscreteScheduler, profile="dev", only=["sampling_loop", "exact_denoiser"], seed=4)
    assert report.level == "exact", report.summary()
    assert report.summary().endswith("numerical level: exact")


def test_a_looser_level_than_the_expectation_records_fails() -> None:
    from kdpm2_spec.float32 import Float32TablesReference

    only = ["sampling_loop", "exact_denoiser"]
    loose = conformance.run(Float32TablesReference, profile="dev", only=only, seed=4)
    assert loose.exit_status == 0 and loose.level == "float32 tables", str(loose)
    strict = conformance.run(
        Float32TablesReference, profile="dev", only=only, seed=4, expect=gate.Expectation(level="exact")
    )
    assert strict.level_dropped and strict.exit_status == conformance.EXIT_FAILED
    assert "but the expectation records exact" in strict.summary()
    gated = conformance.run(
        Float32TablesReference, profile="dev", only=["sampling_loop"], seed=4, level="exact", shrink=False
    )
    assert gated["sampling_loop"].status == "fail" and "e-12 * " in gated["sampling_loop"].message


def test_an_argument_the_class_no_longer_takes_fails_the_expectation() -> None:
    class NoKarras(KDPM2DiscreteScheduler):
        def __init__(self, num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> None:
            super().__init__(num_train_timesteps=num_train_timesteps, prediction_type=prediction_type)

    recorded = gate.Expectation(arguments={"constructor": ["num_train_timesteps", "use_karras_sigmas"]})
    report = conformance.run(NoKarras, profile="dev", only=["tables_finite"], expect=recorded)
    assert report.lost_arguments == {"constructor": ["use_karras_sigmas"]}
    assert report.exit_status == conformance.EXIT_FAILED
    assert "FAIL arguments: constructor no longer accepts use_karras_sigmas (the expectation records them)" in str(
        report
    )
    same = gate.Expectation(arguments={"constructor": ["num_train_timesteps"]})
    assert conformance.run(NoKarras, profile="dev", only=["tables_finite"], expect=same).exit_status == 0

"""The gate's ``ancestral`` family: DPM2 a classes are checked with ``ancestral_invariants``.

Ours passes every property; diffusers' 0.42 class fails exactly what the shipped
``diffusers-0.42-ancestral`` expectation records, and bugs planted in it (noise of the wrong size,
a generator ignored, a wrong step) still fail the gate with that expectation: the file does not
mask them.
"""

from __future__ import annotations

from typing import Any

import pytest

from kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from kdpm2_spec import ancestral_invariants as ai
from kdpm2_spec import catalog, conformance, gate
from kdpm2_spec.registry import FAMILIES, Target

diffusers = pytest.importorskip("diffusers")


def test_the_family_is_detected_and_can_be_overridden() -> None:
    assert Target.of(KDPM2AncestralDiscreteScheduler).family == "ancestral"
    assert Target.of(diffusers.KDPM2AncestralDiscreteScheduler).family == "ancestral"
    assert Target.of(KDPM2DiscreteScheduler).family == "kdpm2"
    assert Target.of(KDPM2AncestralDiscreteScheduler, family="kdpm2").family == "kdpm2"
    assert list(FAMILIES["ancestral"].properties) == list(ai.CHECKS)
    with pytest.raises(ValueError, match="family must be one of"):
        Target.of(KDPM2AncestralDiscreteScheduler, family="dpm2a")


def test_every_description_is_one_whole_sentence() -> None:
    for made in FAMILIES["ancestral"].properties.values():
        assert made.doc.endswith(".") and "\n" not in made.doc, made.doc


def test_ours_passes_every_ancestral_property() -> None:
    report = conformance.run(KDPM2AncestralDiscreteScheduler, profile="ci")
    assert report.exit_status == conformance.EXIT_OK, str(report)
    assert {r.name for r in report.results} == set(ai.CHECKS)
    assert all(r.status == "pass" for r in report.results), str(report)


def test_the_shipped_file_records_diffusers_known_failures() -> None:
    expect = gate.load("diffusers-0.42-ancestral")
    assert expect.target == "diffusers:KDPM2AncestralDiscreteScheduler" and expect.family == "ancestral"
    assert {e.signature.prop for e in expect.entries} == set(ai.expected_diffusers())
    assert all(e.reason and e.case for e in expect.entries)
    assert expect.unsupported["ancestral_eta_zero_is_dpm2"] == ["the class has no eta"]


def test_diffusers_fails_without_the_file_and_passes_with_it() -> None:
    cls = diffusers.KDPM2AncestralDiscreteScheduler
    bare = conformance.run(cls, profile="dev", seed=1, shrink=False)
    assert bare.exit_status == conformance.EXIT_FAILED
    failed, expected = {r.name for r in bare.results if r.status == "fail"}, set(ai.expected_diffusers())
    where_nan = {"ancestral_noise_statistics"}  # fails only on a case whose tables are NaN
    assert expected - where_nan <= failed <= expected
    gated = conformance.run(cls, profile="dev", seed=1, shrink=False, expect=gate.load("diffusers-0.42-ancestral"))
    assert gated.exit_status == conformance.EXIT_OK, str(gated)


class HalfNoise(diffusers.KDPM2AncestralDiscreteScheduler):  # type: ignore[misc,name-defined]
    """Planted: the noise a second-order call adds is half its size."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.sigmas_up = self.sigmas_up * 0.5


class IgnoresGenerator(diffusers.KDPM2AncestralDiscreteScheduler):  # type: ignore[misc,name-defined]
    """Planted: ``step`` draws from the global generator, not the one it is given."""

    def step(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["generator"] = None
        return super().step(*args, **kwargs)


class DenoisedTwice(diffusers.KDPM2AncestralDiscreteScheduler):  # type: ignore[misc,name-defined]
    """Planted: the second-order call's derivative uses the model output scaled by 1.001."""

    def step(self, model_output: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.state_in_first_order:
            model_output = model_output * 1.001
        return super().step(model_output, *args, **kwargs)


class ShiftedNoise(diffusers.KDPM2AncestralDiscreteScheduler):  # type: ignore[misc,name-defined]
    """Planted: the noise a second-order call adds has mean 0.1 sigma_up, not 0."""

    def step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        second = not self.state_in_first_order
        up = self.sigmas_up[self.step_index - 1] if second else 0.0
        out = super().step(model_output, timestep, sample, *args, **kwargs)
        out.prev_sample = out.prev_sample + 0.1 * up
        return out


@pytest.mark.parametrize(
    ("planted", "caught_by"),
    [
        (HalfNoise, {"ancestral_matches_reference", "ancestral_noise_split", "ancestral_noise_statistics"}),
        (IgnoresGenerator, {"ancestral_same_seeds", "ancestral_batch_independent"}),
        (DenoisedTwice, {"ancestral_matches_reference"}),
        (ShiftedNoise, {"ancestral_matches_reference", "ancestral_noise_statistics"}),
    ],
)
def test_a_bug_planted_in_diffusers_fails_the_gate_despite_the_file(planted: type, caught_by: set[str]) -> None:
    report = conformance.run(
        planted, profile="dev", seed=0, shrink=False, expect=gate.load("diffusers-0.42-ancestral"), family="ancestral"
    )
    assert report.exit_status == conformance.EXIT_FAILED
    failed = {r.name for r in report.results if r.status in ("fail", "error")}
    assert caught_by <= failed, str(report)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ours_passes_in_every_dtype_and_what_cannot_be_judged_is_unsupported(dtype: str) -> None:
    report = conformance.run(KDPM2AncestralDiscreteScheduler, profile="ci", dtype=dtype, shrink=False)
    assert report.exit_status == conformance.EXIT_OK, str(report)
    unsupported = {r.name for r in report.results if r.status == "unsupported"}
    judged = {name for name in ai.CHECKS if dtype in catalog.dtypes_of(name)}
    assert unsupported == set(ai.CHECKS) - judged
    assert "ancestral_tables_finite" in judged and "ancestral_matches_reference_exact" not in judged

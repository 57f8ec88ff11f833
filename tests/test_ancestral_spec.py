"""The ancestral spec (``kdpm2_spec.ancestral``, ``kdpm2_spec.ancestral_invariants``) against k-diffusion,
exact arithmetic, our class and diffusers' class.

Every check of ``ancestral_invariants.CHECKS`` runs under Hypothesis on ``KDPM2AncestralDiscreteScheduler``
(float64 and float32) and on ``AncestralReference`` itself; on diffusers' class the checks run on
pinned cases, and those it fails are exactly ``expected_diffusers()`` (its known defects).
"""

from __future__ import annotations

import contextlib
import math
from decimal import Decimal, getcontext
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k_diffusion import sampling

from kdpm2 import KDPM2AncestralDiscreteScheduler, ancestral_tables, functional
from kdpm2_spec import AncestralReference, Reference, ancestral_step
from kdpm2_spec import ancestral_invariants as ai
from kdpm2_spec.adapter import NumpyAdapter, TorchAdapter

OURS = {
    "float64": TorchAdapter(KDPM2AncestralDiscreteScheduler, "cpu", "float64"),
    "float32": TorchAdapter(KDPM2AncestralDiscreteScheduler, "cpu", "float32"),
}
REFERENCE = NumpyAdapter(AncestralReference)
DIFFUSERS = TorchAdapter(diffusers.KDPM2AncestralDiscreteScheduler, "cpu", "float64")

sigma_pairs = st.tuples(st.floats(1e-3, 200.0), st.floats(1e-6, 0.999)).map(lambda p: (p[0], p[0] * p[1]))
etas = st.sampled_from([0.0, 0.3, 0.5, 1.0, 1.0, 1.0, 1.2, 2.0])


def exact_split(sigma: float, sigma_next: float, eta: float) -> tuple[Decimal, Decimal]:
    """k-diffusion's formula evaluated with 60 significant digits."""
    getcontext().prec = 60
    s, sn, e = Decimal(sigma), Decimal(sigma_next), Decimal(eta)
    if e == 0:
        return sn, Decimal(0)
    up = min(sn, e * (sn * sn * (s * s - sn * sn) / (s * s)).sqrt())
    return (sn * sn - up * up).sqrt(), up


# -- the split -----------------------------------------------------------------------------------


@given(pair=sigma_pairs, eta=etas)
def test_reference_split_is_k_diffusions_to_the_last_bits(pair: tuple[float, float], eta: float) -> None:
    """``ancestral_step`` is k-diffusion's ``get_ancestral_step`` evaluated exactly, to a few float64 ulps."""
    sigma, sigma_next = pair
    down, up = ancestral_step(sigma, sigma_next, eta)
    want_down, want_up = exact_split(sigma, sigma_next, eta)
    assert abs(Decimal(up) - want_up) <= Decimal("8e-16") * want_up + Decimal("1e-300")
    # the exact value where the clamp binds is 0; near the boundary the radicand is a difference
    tolerance = Decimal("8e-16") * want_down + Decimal("4e-16") * Decimal(sigma_next) * Decimal(eta * eta * 2) / (
        want_down / Decimal(sigma_next) + Decimal("1e-8")
    )
    assert abs(Decimal(down) - want_down) <= tolerance, (down, want_down)
    float_down, float_up = sampling.get_ancestral_step(sigma, sigma_next, eta)  # k-diffusion's own, in float64
    # its sigma^2 - sigma_next^2 loses digits as sigma_next approaches sigma
    assert abs(float_up - up) <= 4e-16 * sigma_next * sigma**2 / ((sigma - sigma_next) * (sigma + sigma_next))
    assert abs(float(float_down) - down) <= 1e-15 * sigma_next**2 / max(down, 1e-300) + 1e-15 * down


@given(pair=sigma_pairs, eta=etas)
def test_split_matches_reference(pair: tuple[float, float], eta: float) -> None:
    """``ancestral_tables.split`` (float64, vectorised) equals the reference's per step to rounding."""
    sigma, sigma_next = pair
    levels = ancestral_tables.split(torch.tensor([sigma, sigma_next, 0.0], dtype=torch.float64), eta)
    down, up = ancestral_step(sigma, sigma_next, eta)
    assert math.isclose(float(levels.up[0]), up, rel_tol=4e-16, abs_tol=0.0)
    assert math.isclose(float(levels.down[0]), down, rel_tol=4e-16, abs_tol=1e-300)
    assert float(levels.down[1]) == float(levels.up[1]) == float(levels.mids[1]) == 0.0  # the step to 0
    if down > 0:
        assert math.isclose(float(levels.mids[0]), math.sqrt(sigma * down), rel_tol=4e-16)


@given(pair=sigma_pairs, eta=etas)
def test_frontend_split_is_k_diffusion_in_float32_bit_for_bit(pair: tuple[float, float], eta: float) -> None:
    """The presets' split: k-diffusion's ``get_ancestral_step`` and midpoint on 0-d float32 tensors, bit for bit."""
    sigmas = torch.tensor([pair[0], pair[1], 0.0], dtype=torch.float32)
    levels = ancestral_tables.frontend_split(sigmas.double(), eta)
    down, up = sampling.get_ancestral_step(sigmas[0], sigmas[1], eta=eta)
    down, up = torch.as_tensor(down, dtype=torch.float32), torch.as_tensor(up, dtype=torch.float32)
    assert float(levels.up[0]) == float(up) and float(levels.down[0]) == float(down)
    if float(down) != 0:
        mid = sigmas[0].log().lerp(down.log(), 0.5).exp()
        assert float(levels.mids[0]) == float(mid)
    else:
        assert float(levels.mids[0]) == 0.0


def test_eta_one_midpoint_is_the_next_sigma() -> None:
    """At eta = 1, sigma_down = s_next^2 / s, so the midpoint sqrt(s sigma_down) is s_next itself."""
    ref = AncestralReference(beta_schedule="scaled_linear", use_karras_sigmas=True)
    ref.set_timesteps(20)
    for step in ref.steps[:-1]:
        assert step.sigma_mid is not None and math.isclose(step.sigma_mid, step.sigma_next, rel_tol=1e-15)
        assert math.isclose(step.sigma_down, step.sigma_next**2 / step.sigma, rel_tol=1e-15)


# -- the checks on our class and on the reference ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(ai.CHECKS))
@pytest.mark.parametrize("dtype", sorted(OURS))
def test_checks_hold_for_ours(name: str, dtype: str) -> None:
    adapter = OURS[dtype]
    check = ai.CHECKS[name]

    @settings(max_examples=_examples(name))
    @given(case=ai.STRATEGIES[name](adapter))
    def run(case: ai.AncestralLoop) -> None:
        _run(check, adapter, case)

    for case in ai.EXAMPLES:
        _run(check, adapter, case)
    run()


@pytest.mark.parametrize("name", sorted(ai.CHECKS))
def test_checks_hold_for_the_reference(name: str) -> None:
    check = ai.CHECKS[name]
    for case in ai.EXAMPLES:
        _run(check, REFERENCE, case)

    @settings(max_examples=5)
    @given(case=ai.STRATEGIES[name](REFERENCE))
    def run(case: ai.AncestralLoop) -> None:
        _run(check, REFERENCE, case)

    run()


def _examples(name: str) -> int:
    """Fewer examples for the slow checks (65536-value noise statistics, batch and seed loops)."""
    current = settings().max_examples
    return current if name.endswith(("split", "finite", "layout", "reference", "exact")) else max(current // 3, 4)


def _run(check: Any, adapter: Any, case: ai.AncestralLoop) -> None:
    with contextlib.suppress(ai.Unsupported):
        check(adapter, case)


def test_eta_zero_check_compares_with_dpm2_reference() -> None:
    """The eta = 0 check fails for a scheduler that adds noise anyway (a mutant: eta ignored)."""

    class IgnoresEta(KDPM2AncestralDiscreteScheduler):
        def _check_sampler_args(self, config: dict[str, Any]) -> None:
            super()._check_sampler_args(config)
            self._eta_given = config["eta"]
            config["eta"] = 1.0

    case = ai.AncestralLoop({"beta_schedule": "scaled_linear"}, 10, 0.1, 0, (2, 4, 8, 8))
    ai.check_eta_zero_is_dpm2(OURS["float64"], case)
    with pytest.raises(AssertionError):
        ai.check_eta_zero_is_dpm2(TorchAdapter(IgnoresEta, "cpu", "float64"), case)


def test_noise_statistics_catch_wrong_noise_scale() -> None:
    """The statistics check fails when the added noise is scaled wrongly (s_noise applied twice)."""

    class Doubled(KDPM2AncestralDiscreteScheduler):
        def _call_tables(self) -> Any:
            tables = super()._call_tables()
            columns = tables.columns.copy()
            columns[functional.SECOND, 3] *= 1.1  # the noise coefficient of every second-order call
            return functional.CallTables(columns, tables.churn, None, tables.epsilon, tables.second)

    case = ai.AncestralLoop({}, 10, 0.0, 3, (2, 64))
    ai.check_noise_statistics(OURS["float64"], case)
    with pytest.raises(AssertionError, match="variance"):
        ai.check_noise_statistics(TorchAdapter(Doubled, "cpu", "float64"), case)


def test_batch_check_catches_one_generator_for_the_batch() -> None:
    """The batch check fails for a scheduler that draws the batch's noise from the first generator only."""

    class FirstOnly(KDPM2AncestralDiscreteScheduler):
        def step(self, model_output: Any, timestep: Any, sample: Any, generator: Any = None, **kwargs: Any) -> Any:
            if isinstance(generator, list):
                generator = generator[0]
            return super().step(model_output, timestep, sample, generator, **kwargs)

    case = ai.AncestralLoop({}, 5, 0.0, 3, (2, 4, 4, 4))
    ai.check_batch_independent(OURS["float32"], case)
    with pytest.raises(AssertionError, match="batch item"):
        ai.check_batch_independent(TorchAdapter(FirstOnly, "cpu", "float32"), case)


# -- diffusers' class: its expected failures -----------------------------------------------------------

DIFFUSERS_CASES = [
    ai.AncestralLoop({"beta_schedule": "squaredcos_cap_v2"}, 3, 0.0, 0, (2, 4, 8, 8)),
    ai.AncestralLoop({"beta_schedule": "squaredcos_cap_v2"}, 2, 0.5, 1, (1, 2, 4, 4)),  # NaN on every CPU measured
    ai.AncestralLoop({"beta_schedule": "scaled_linear"}, 2, 0.1, 2, (2, 4, 8, 8)),
    ai.AncestralLoop({"beta_schedule": "scaled_linear", "use_karras_sigmas": True}, 25, 0.1, 3, (2, 4, 8, 8)),
    ai.AncestralLoop({"timestep_spacing": "leading", "steps_offset": 1}, 10, 0.1, 4, (2, 4, 8, 8)),
]


@pytest.mark.parametrize("name", sorted(ai.CHECKS))
def test_diffusers_fails_exactly_the_expected_checks(name: str) -> None:
    """On the pinned cases diffusers 0.42 fails the checks ``expected_diffusers()`` names, and passes or lacks the others."""
    failed = []
    for case in DIFFUSERS_CASES:
        try:
            ai.CHECKS[name](DIFFUSERS, case)
        except ai.Unsupported:
            continue
        except AssertionError as error:
            failed.append(f"{case.config} n={case.steps}: {str(error)[:120]}")
    if name in ai.expected_diffusers():
        assert failed, f"diffusers passes {name}; update expected_diffusers()"
    else:
        assert not failed, f"diffusers fails {name}, not expected: {failed}"


def test_reference_eta_zero_is_the_dpm2_reference() -> None:
    """The two references agree where they must: eta = 0 gives DPM2's calls and samples."""
    for config in (
        {},
        {"beta_schedule": "scaled_linear", "use_karras_sigmas": True},
        {"discard_penultimate_sigma": True},
    ):
        ancestral = AncestralReference(**config, eta=0.0)
        dpm2 = Reference(**config)
        for n in (1, 2, 7):
            ancestral.set_timesteps(n)
            dpm2.set_timesteps(n)
            np.testing.assert_allclose(ancestral.timesteps, dpm2.timesteps, rtol=1e-12)
            x = np.linspace(-2, 2, 12).reshape(3, 4) * ancestral.init_noise_sigma
            a, b = x.copy(), x.copy()
            for t in ancestral.timesteps:
                ancestral.scale_model_input(a, t)
                dpm2.scale_model_input(b, t)
                noise = np.ones_like(a) if ancestral.adds_noise() else None
                a = ancestral.step(0.3 * a, t, a, noise=noise).prev_sample
                b = dpm2.step(0.3 * b, t, b).prev_sample
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ancestral_noise_statistics", "ancestral_same_seeds", "ancestral_batch_independent"])
def test_diffusers_passes_the_noise_checks(name: str) -> None:
    """diffusers' generator semantics are the spec's: its noise checks hold (away from its NaN schedules)."""
    check = ai.CHECKS[name]
    strategy = ai.STRATEGIES[name](DIFFUSERS).filter(lambda c: c.config.get("beta_schedule") != "squaredcos_cap_v2")

    @settings(max_examples=3)
    @given(case=strategy)
    def run(case: ai.AncestralLoop) -> None:
        _run(check, DIFFUSERS, case)

    run()

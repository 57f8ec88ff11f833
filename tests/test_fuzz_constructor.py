"""Fuzzing the constructor and ``from_config``: finite tables and loops, or an error naming the argument.

Each defect of issue 11 found here is pinned as an ``@example``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from helpers_fuzz import (
    ARGS,
    K,
    assert_finite,
    assert_finite_tables,
    assert_names_argument,
    call_and_check,
    describe,
    finish_loop,
    overrides,
)
from kdpm2 import validation
from kdpm2_spec import strategies as ks

bases = st.one_of(st.just({}), ks.configs(ARGS), st.just({"use_karras_sigmas": True}))
"""Valid configurations the hostile arguments are put into."""


def check_constructed(s: K, call: str) -> None:
    """A constructed scheduler: finite tables, and a short loop with finite outputs."""
    assert_finite_tables(s, call)
    steps = {"num_inference_steps": 3 if s.config.num_train_timesteps >= 8 else 1}
    # a bound taken from the schedule may cross a given one at this step count only (issue 11, defect 5)
    _, error = call_and_check(s.set_timesteps, steps, ["sigma_min", "sigma_max"], f"{call}.set_timesteps")
    if error is None:
        assert_finite_tables(s, f"{call}.set_timesteps({steps})")
        assert_finite([finish_loop(s)], f"a loop after {call}")


@given(base=bases, hostile=overrides())
# 2. NumPy and 0-d tensor scalars are accepted and their validated value used
@example(base={}, hostile={"s_churn": np.float64(0.5)})
@example(base={}, hostile={"beta_start": torch.tensor(0.001), "num_train_timesteps": np.int64(500)})
# 3. betas whose training sigmas are NaN, infinite or zero are rejected
@example(base={}, hostile={"beta_end": 0.2})
@example(base={}, hostile={"beta_end": 2.0})
@example(base={}, hostile={"beta_start": 0.5})
@example(base={}, hostile={"trained_betas": [0.999] * 1000})
@example(base={}, hostile={"beta_start": 1e-30, "beta_end": 1e-30})
@example(base={"use_karras_sigmas": True}, hostile={"sigma_min": 1e-300})
# 4. wrong exception types: huge values, non-numeric and complex arrays, Fraction
@example(base={}, hostile={"beta_start": 1e300})
@example(base={}, hostile={"beta_start": 10**400})
@example(base={"timestep_spacing": "leading"}, hostile={"steps_offset": 10**30})
@example(base={}, hostile={"trained_betas": ["a"] * 1000})
@example(base={}, hostile={"trained_betas": np.full(1000, 0.01, dtype=np.complex128)})
@example(base={}, hostile={"beta_end": Fraction(1, 100)})
@example(base={}, hostile={"s_noise": 1j})
@example(base={}, hostile={"trained_betas": [torch.tensor(0.0, requires_grad=True)]})  # found by the fuzzer
@example(base={}, hostile={"trained_betas": [torch.empty((), device="meta")]})  # found by the fuzzer
@example(base={}, hostile={"beta_end": 2.33e-116})  # found by the fuzzer: a float32 beta of 0
@example(base={}, hostile={"trained_betas": [1e-3] * 500 + [1e-12] * 500})  # flat log-sigmas: no 0 / 0
# 5. one bound given, the other from the schedule, crossing it
@example(base={"use_karras_sigmas": True}, hostile={"sigma_min": 100.0})
@example(base={"use_exponential_sigmas": True}, hostile={"sigma_max": 0.01})
# 6. flags are bools or NumPy bools only
@example(base={}, hostile={"use_karras_sigmas": "False"})
@example(base={}, hostile={"quantize_timesteps": 1})
@example(base={}, hostile={"use_karras_sigmas": np.bool_(True)})
# 8. num_train_timesteps is bounded before memory runs out
@example(base={}, hostile={"num_train_timesteps": 10**7})
def test_constructor(base, hostile):
    kwargs = {**base, **hostile}
    call = describe("KDPM2DiscreteScheduler", kwargs)
    s, error = call_and_check(K, kwargs, hostile, call)
    if error is None:
        check_constructed(s, call)
        for name, value in hostile.items():
            stored = s.config[name]
            if name in validation.FLAGS:
                assert type(stored) is bool, f"{call}: config.{name} is {stored!r}, not a bool"
            elif isinstance(value, (np.generic, torch.Tensor, Fraction)):
                assert type(stored) in (int, float, list), f"{call}: config.{name} keeps {type(stored).__name__}"


@given(base=bases, hostile=overrides())
@example(base={}, hostile={"use_karras_sigmas": "false"})  # 6: a config file's string flag
@example(base={}, hostile={"s_churn": np.float64(0.5)})  # 2: through from_config too
def test_from_config_agrees_with_the_constructor(base, hostile):
    """``from_config`` accepts and rejects exactly what the constructor does, with the same message."""
    config = {**base, **hostile}
    call = describe("from_config", config)
    direct, refused = None, None
    try:
        direct = K(**config)
    except (ValueError, TypeError) as error:
        refused = error
    if refused is not None:
        with pytest.raises(type(refused)) as info:
            K.from_config(config)
        assert str(info.value) == str(refused), call
        assert_names_argument(info.value, hostile, call)
        return
    loaded, error = call_and_check(K.from_config, {"config": config}, hostile, call)
    assert error is None, f"{call} failed where the constructor did not: {error}"
    assert dict(loaded.config) == dict(direct.config), call


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta_end": 0.2}, "beta_start=0.00085, beta_end=0.2 (linear) give training sigmas outside"),
        ({"beta_start": 1e-30, "beta_end": 1e-30}, "give training sigmas outside"),
        ({"trained_betas": [0.999] * 1000}, "trained_betas give training sigmas outside"),
        ({"beta_end": 2.0}, "beta_end must be less than 1.0; got 2.0"),
        ({"beta_start": 10**400}, "beta_start must be a finite real number; got 1000000"),
        ({"steps_offset": 10**30, "timestep_spacing": "leading"}, "steps_offset must be between 0 and 999"),
        ({"use_karras_sigmas": "False"}, "use_karras_sigmas must be True or False; got str 'False'"),
        ({"sigma_min": 1e-300}, "sigma_min must lie in [1.08e-19, 9.22e+18]; got 1e-300"),
        ({"num_train_timesteps": 10**7}, "num_train_timesteps must be between 2 and 100000; got 10000000"),
        ({"trained_betas": ["a"] * 1000}, "trained_betas must be a sequence of real numbers"),
        ({"s_noise": 1j}, "s_noise must be a finite real number; got 1j"),
        (
            {"use_karras_sigmas": True, "sigma_min": 100.0},
            "sigma_min must be smaller than sigma_max for the karras sigmas; got sigma_min=100 (given) and "
            "sigma_max=25.1461 (from the schedule of num_inference_steps=1000)",  # the linear schedule's largest sigma, 25.1 in the issue
        ),
    ],
)
def test_constructor_domain_messages(kwargs, message):
    """The valid domain, one message per rule: each names the argument and what is allowed."""
    with pytest.raises((ValueError, TypeError)) as info:
        K(**kwargs)
    assert message in str(info.value)


def test_validated_values_are_stored():
    """NumPy and tensor scalars reach the config as Python numbers, so it saves as plain JSON."""
    s = K(s_churn=np.float64(0.5), beta_end=torch.tensor(0.02, dtype=torch.float64), steps_offset=np.int64(1))
    assert (s.config.s_churn, s.config.beta_end, s.config.steps_offset) == (0.5, 0.02, 1)
    assert [type(s.config[k]) for k in ("s_churn", "beta_end", "steps_offset")] == [float, float, int]
    reference = K(s_churn=0.5, beta_end=0.02, steps_offset=1)
    assert torch.equal(s.sigmas, reference.sigmas) and torch.equal(s.timesteps, reference.timesteps)

"""Bad input: each raises ValueError or TypeError naming the argument; inputs are never modified."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_sched import stand_in_model, unchanged
from kdpm2 import KDPM2DiscreteScheduler


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"beta_schedule": "cosine"}, ValueError, ["beta_schedule", "linear", "scaled_linear", "squaredcos_cap_v2"]),
        ({"prediction_type": "x0"}, ValueError, ["prediction_type", "epsilon", "v_prediction", "sample"]),
        ({"timestep_spacing": "uniform"}, ValueError, ["timestep_spacing", "linspace", "leading", "trailing"]),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, ValueError, ["use_karras_sigmas", "use_beta_sigmas"]),
        ({"use_exponential_sigmas": True, "use_karras_sigmas": True}, ValueError, ["use_exponential_sigmas"]),
        ({"trained_betas": [0.01] * 999}, ValueError, ["trained_betas", "1000"]),
        ({"trained_betas": [0.0] * 1000}, ValueError, ["trained_betas", "(0, 1)"]),
        ({"trained_betas": [1.0] * 1000}, ValueError, ["trained_betas", "(0, 1)"]),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, ValueError, ["sigma_min", "sigma_max"]),
        ({"sigma_min": -1.0}, ValueError, ["sigma_min"]),
        ({"sigma_interpolation": "cubic"}, ValueError, ["sigma_interpolation", "linear", "log"]),
        ({"num_train_timesteps": 1.5}, TypeError, ["num_train_timesteps"]),
        ({"steps_offset": -1}, ValueError, ["steps_offset"]),
        ({"s_churn": -1.0}, ValueError, ["s_churn"]),
    ],
)
def test_bad_constructor_arguments(kwargs, error, names):
    with pytest.raises(error) as info:
        KDPM2DiscreteScheduler(**kwargs)
    for name in names:
        assert name in str(info.value), f"{name!r} not in {info.value}"


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError), (1001, ValueError)]
)
def test_bad_num_inference_steps(value, error):
    s = KDPM2DiscreteScheduler()
    with pytest.raises(error, match="num_inference_steps"):
        s.set_timesteps(value)


def test_num_inference_steps_bounds():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(1000)
    s.set_timesteps(np.int64(3))
    assert len(s.timesteps) == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_inference_steps": 5, "timesteps": [900, 500]},
        {"num_inference_steps": 5, "sigmas": [3.0, 1.0, 0.0]},
        {"timesteps": [900, 500], "sigmas": [3.0, 1.0, 0.0]},
        {},
    ],
)
def test_exactly_one_schedule_source(kwargs):
    with pytest.raises(ValueError, match=r"num_inference_steps.*timesteps.*sigmas"):
        KDPM2DiscreteScheduler().set_timesteps(**kwargs)


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        ([3.0, -1.0, 0.0], "positive"),
        ([1.0, 3.0, 0.0], "decreasing"),
        ([3.0, 3.0, 0.0], "decreasing"),
        ([3.0, float("nan"), 0.0], "finite"),
        ([3.0], "at least 2"),
    ],
)
def test_bad_custom_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=f"sigmas.*{match}|{match}.*sigmas|sigmas must"):
        KDPM2DiscreteScheduler().set_timesteps(sigmas=sigmas)


@pytest.mark.parametrize("timesteps", [[500, 900], [1000, 10], [500, -1], [500, 500]])
def test_bad_custom_timesteps(timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        KDPM2DiscreteScheduler().set_timesteps(timesteps=timesteps)


def test_custom_timesteps_with_sigma_family():
    """As diffusers' Euler: custom timesteps contradict a Karras/exponential/beta schedule."""
    with pytest.raises(ValueError, match=r"timesteps.*use_karras"):
        KDPM2DiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])


def test_timestep_not_in_schedule():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(5)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"timestep.*not in the schedule"):
        s.step(x, 123.25, x)
    with pytest.raises(ValueError, match=r"timestep.*not in the schedule"):
        s.scale_model_input(x, torch.tensor(3.0))
    with pytest.raises(ValueError, match="not in the schedule"):
        s.index_for_timestep(17.5)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.add_noise(x, x, torch.tensor([17.5]))


def test_step_past_the_end():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(2)
    x = torch.ones(1, 2, 2, 2)
    for t in s.timesteps:
        x = s.step(stand_in_model(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="past the end"):
        s.step(x, s.timesteps[-1], x)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.scale_model_input(x, s.timesteps[-1])


def test_shape_mismatch():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(3)
    with pytest.raises(ValueError, match=r"model_output shape.*sample shape"):
        s.step(torch.zeros(1, 2, 2, 2), s.timesteps[0], torch.zeros(1, 2, 2, 3))


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (10**6, ValueError), (6, ValueError), (1.0, TypeError)])
def test_begin_index_out_of_range(value, error):
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(3)  # 5 calls: valid begin indices 0..4
    with pytest.raises(error, match="begin_index"):
        s.set_begin_index(value)
    s.set_begin_index(4)


def test_non_tensor_inputs():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(3)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(TypeError, match="model_output"):
        s.step(np.zeros((1, 2, 2, 2)), s.timesteps[0], x)
    with pytest.raises(TypeError, match="sample"):
        s.step(x, s.timesteps[0], x.long())
    with pytest.raises(TypeError, match="timesteps"):
        s.add_noise(x, x, [1.0])


# -- inputs are never modified in place -------------------------------------------------------

CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "prediction_type": st.sampled_from(["epsilon", "v_prediction", "sample"]),
        "use_karras_sigmas": st.booleans(),
        "timestep_spacing": st.sampled_from(["linspace", "leading", "trailing"]),
        "s_churn": st.sampled_from([0.0, 0.5]),
    },
)
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@settings(max_examples=25, deadline=None)
@given(config=CONFIGS, dtype=DTYPES, n=st.integers(1, 4), begin=st.booleans())
def test_inputs_never_modified(config, dtype, n, begin):
    s = KDPM2DiscreteScheduler(**config)
    timesteps = torch.tensor([900.0, 400.0, 100.0])
    if not config.get("use_karras_sigmas"):
        with unchanged(timesteps):
            s.set_timesteps(timesteps=timesteps)
    sigmas = torch.tensor([10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    with unchanged(sigmas):
        s.set_timesteps(sigmas=sigmas)
    s.set_timesteps(n)
    if begin:
        s.set_begin_index(0)
    original = torch.randn(2, 3, 4, 4).to(dtype)
    noise = torch.randn(2, 3, 4, 4).to(dtype)
    t0 = s.timesteps[:1].repeat(2)
    with unchanged(original, noise, t0):
        sample = s.add_noise(original, noise, t0)
    generator = torch.Generator().manual_seed(0)
    for t in s.timesteps:
        t_copy = t.clone()
        with unchanged(sample, t_copy):
            scaled = s.scale_model_input(sample, t_copy)
        model_output = stand_in_model(scaled, t)
        with unchanged(model_output, sample, t_copy):
            out = s.step(model_output, t_copy, sample, generator=generator)
        assert out.prev_sample.dtype == dtype
        assert out.prev_sample.data_ptr() not in (sample.data_ptr(), model_output.data_ptr())
        with unchanged(original, noise, t_copy):
            s.add_noise(original, noise, t_copy.reshape(1))
        sample = out.prev_sample


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigmas": [3.0]}, "sigmas must be a 1-D sequence of at least 2 values (the last is final); got (1,)"),
        (
            {"sigmas": [[3.0, 0.0]]},
            "sigmas must be a 1-D sequence of at least 2 values (the last is final); got (1, 2)",
        ),
        ({"sigmas": [1.0, 0.0, 0.0]}, "sigmas must be finite and positive (the final one may be 0)"),
        ({"sigmas": [2.0, 1.0, -1.0]}, "sigmas must be finite and positive (the final one may be 0)"),
        ({"sigmas": [2.0, float("inf"), 0.0]}, "sigmas must be finite and positive (the final one may be 0)"),
        ({"sigmas": torch.tensor([1.0, 2.0, 0.0])}, "sigmas must be strictly decreasing"),
        ({"sigmas": np.array([2.0, 2.0, 1.0])}, "sigmas must be strictly decreasing"),
        ({"timesteps": []}, "timesteps must be a non-empty 1-D sequence; got shape (0,)"),
        ({"timesteps": [[900, 100]]}, "timesteps must be a non-empty 1-D sequence; got shape (1, 2)"),
        ({"timesteps": [1000, 10]}, "timesteps must lie in [0, 999]"),
        ({"timesteps": [500, -0.5]}, "timesteps must lie in [0, 999]"),
        ({"timesteps": [500, float("nan")]}, "timesteps must lie in [0, 999]"),
        ({"timesteps": torch.tensor([100, 900])}, "timesteps must be strictly decreasing"),
        ({"timesteps": np.array([500, 500])}, "timesteps must be strictly decreasing"),
    ],
)
def test_custom_schedule_messages(kwargs, message):
    """Each bad custom schedule gets its own message, naming the argument and the rule it breaks."""
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        KDPM2DiscreteScheduler().set_timesteps(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"trained_betas": [0.01] * 9},
            ValueError,
            "trained_betas must hold num_train_timesteps=10 values; got shape (9,)",
        ),
        ({"trained_betas": [0.5] * 9 + [1.0]}, ValueError, "trained_betas must lie in the open interval (0, 1)"),
        ({"trained_betas": torch.full((10,), 0.0)}, ValueError, "trained_betas must lie in the open interval (0, 1)"),
        ({"beta_start": 0.0}, ValueError, "beta_start must be greater than 0.0; got 0.0"),
        ({"beta_end": float("inf")}, TypeError, "beta_end must be a finite real number; got inf"),
        ({"beta_end": True}, TypeError, "beta_end must be a finite real number; got True"),
        ({"s_noise": "1"}, TypeError, "s_noise must be a finite real number; got '1'"),
        ({"beta_start": None}, TypeError, "beta_start must be a finite real number; got None"),
        (
            {"prediction_type": "x0"},
            ValueError,
            "prediction_type must be one of 'epsilon', 'v_prediction', 'sample'; got 'x0'",
        ),
        (
            {"timestep_spacing": "uniform"},
            ValueError,
            "timestep_spacing must be one of 'linspace', 'leading', 'trailing'; got 'uniform'",
        ),
        (
            {"sigma_interpolation": "cubic"},
            ValueError,
            "sigma_interpolation must be one of 'linear', 'log'; got 'cubic'",
        ),
        ({"steps_offset": -1}, ValueError, "steps_offset must be between 0 and 999; got -1"),
        ({"beta_end": 0.0}, ValueError, "beta_end must be greater than 0.0; got 0.0"),
        ({"sigma_min": 0.0}, ValueError, "sigma_min must be greater than 0.0; got 0.0"),
        ({"beta_end": -0.5}, ValueError, "beta_end must be greater than 0.0; got -0.5"),
        (
            {"use_karras_sigmas": True, "use_beta_sigmas": True},
            ValueError,
            "use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas: at most one may be True",
        ),
        ({"s_tmin": -0.5}, ValueError, "s_tmin must be at least 0.0; got -0.5"),
        ({"s_tmax": -1}, ValueError, "s_tmax must be at least 0.0; got -1"),
        ({"sigma_max": 0.0}, ValueError, "sigma_max must be greater than 0.0; got 0.0"),
        ({"sigma_min": 2.0, "sigma_max": 2.0}, ValueError, "sigma_min (2.0) must be smaller than sigma_max (2.0)"),
        ({"num_train_timesteps": 1}, ValueError, "num_train_timesteps must be between 2 and 100000; got 1"),
        ({"num_train_timesteps": True}, TypeError, "num_train_timesteps must be an integer; got bool True"),
        (
            {"beta_schedule": "cosine"},
            ValueError,
            "beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'; got 'cosine'",
        ),
    ],
)
def test_constructor_messages(kwargs, error, message):
    """Constructor errors name the argument, the allowed values and the value given."""
    kwargs = {"num_train_timesteps": 10, **kwargs} if "trained_betas" in kwargs else kwargs
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        KDPM2DiscreteScheduler(**kwargs)

"""Fuzzing ``set_timesteps`` and ``set_begin_index``: a rejected call changes nothing.

A scheduler and its twin are built alike and advanced alike; the scheduler gets the hostile call.
If it is rejected, the two must have the same public state and run the same rest of the loop;
if it is accepted, every table must be finite and a loop must give finite samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from helpers_fuzz import (
    ARGS,
    K,
    advance,
    assert_finite,
    assert_finite_tables,
    assert_same_state,
    call_and_check,
    describe,
    finish_loop,
    hostile_arrays,
    hostile_devices,
    hostile_scalars,
    prepare,
)
from kdpm2_spec import strategies as ks

SET_TIMESTEPS = ("num_inference_steps", "device", "num_train_timesteps", "timesteps", "sigmas")

set_timesteps_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "num_inference_steps": st.one_of(hostile_scalars, st.integers(-2, 1002)),
        "device": hostile_devices,
        "num_train_timesteps": st.one_of(hostile_scalars, st.sampled_from([1000, 999])),
        "timesteps": st.one_of(hostile_arrays, ks.custom_timesteps()),
        "sigmas": st.one_of(hostile_arrays, ks.custom_sigmas()),
    },
)
"""Hostile ``set_timesteps`` arguments, each left out half the time (valid ones mixed in)."""


@st.composite
def prepared(draw):
    """A valid configuration, a step count and how many calls of its loop have run."""
    config, steps = draw(ks.schedules(ARGS))
    calls = draw(st.integers(0, 2 * steps - 1))
    return config, steps, calls


def twins(config, steps, calls):
    """Two schedulers in the same state: built from ``config``, set to ``steps``, ``calls`` calls run."""
    pair = []
    for _ in range(2):
        s = K(**config)
        prepare(s, steps)
        advance(s, calls)
        pair.append(s)
    return pair


def names_of(kwargs):
    """The arguments a message may name: those given, and the three sources unless exactly one is given."""
    sources = ["num_inference_steps", "timesteps", "sigmas"]
    return list(kwargs) + (sources if sum(k in kwargs for k in sources) != 1 else [])


@given(case=prepared(), kwargs=set_timesteps_kwargs)
# 1. a bad or unavailable device leaves the scheduler as it was
@example(case=({}, 10, 0), kwargs={"num_inference_steps": 20, "device": "bogus"})
@example(case=({}, 10, 0), kwargs={"num_inference_steps": 3, "device": "cuda"})
@example(case=({}, 10, 5), kwargs={"num_inference_steps": 3, "device": "mps"})
# 2. NumPy and 0-d tensor step counts
@example(case=({}, 10, 0), kwargs={"num_inference_steps": np.int64(7)})
@example(case=({}, 10, 0), kwargs={"num_inference_steps": torch.tensor(7)})
# 3. sigmas out of the float32 range are refused (no infinite init_noise_sigma, no division by 0)
@example(case=({}, 10, 3), kwargs={"sigmas": [1e39, 1.0, 0.0]})
@example(case=({}, 10, 3), kwargs={"sigmas": [1e-300, 1e-301, 0.0]})
# 4. non-numeric, complex, bfloat16, requires_grad and meta sigmas
@example(case=({}, 10, 0), kwargs={"sigmas": ["a", "b"]})
@example(case=({}, 10, 0), kwargs={"timesteps": [900, "x"]})
@example(case=({}, 10, 0), kwargs={"sigmas": [3.0 + 1j, 1.0, 0.0]})
@example(case=({}, 10, 0), kwargs={"sigmas": torch.tensor([3.0, 1.0, 0.0], dtype=torch.bfloat16)})
@example(case=({}, 10, 0), kwargs={"sigmas": torch.tensor([3.0, 1.0, 0.0], requires_grad=True)})
@example(case=({}, 10, 0), kwargs={"sigmas": torch.empty(3, device="meta")})
@example(case=({"timestep_spacing": "leading", "steps_offset": 1}, 10, 0), kwargs={"num_inference_steps": 10**30})
# 5. the bound from the schedule crosses the given one only at some step counts
@example(
    case=({"use_karras_sigmas": True, "sigma_max": 0.5, "timestep_spacing": "trailing"}, 100, 0),
    kwargs={"num_inference_steps": 2},
)
def test_set_timesteps(case, kwargs):
    config, steps, calls = case
    s, twin = twins(config, steps, calls)
    call = describe("set_timesteps", kwargs)
    _, error = call_and_check(s.set_timesteps, kwargs, names_of(kwargs), call)
    if error is not None:
        assert_same_state(s, twin, call)
        return
    assert_finite_tables(s, call)
    if s.timesteps.device.type == "cpu":
        assert_finite([finish_loop(s)], f"a loop after {call}")


@given(case=prepared(), value=st.one_of(hostile_scalars, st.integers(-3, 200)))
@example(case=({}, 3, 0), value=np.int64(2))
@example(case=({}, 3, 2), value=5)
def test_set_begin_index(case, value):
    s, twin = twins(*case)
    call = describe("set_begin_index", {"begin_index": value})
    _, error = call_and_check(s.set_begin_index, {"begin_index": value}, ["begin_index"], call)
    if error is not None:
        assert_same_state(s, twin, call)
        return
    assert s.begin_index == int(value)
    assert_finite([finish_loop(s)], f"a loop after {call}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 20, "device": "bogus"}, "device must name a torch device"),
        ({"num_inference_steps": 3, "device": "cuda"}, "device 'cuda' is not available"),
        ({"sigmas": [1e39, 1.0, 0.0]}, "sigmas must lie in [1.08e-19, 9.22e+18] (the final one may be 0)"),
        ({"sigmas": [1e-300, 1e-301, 0.0]}, "sigmas must lie in [1.08e-19, 9.22e+18]"),
        ({"sigmas": ["a", "b"]}, "sigmas must be a sequence of real numbers"),
        ({"timesteps": [900, "x"]}, "timesteps must be a sequence of real numbers"),
        ({"sigmas": [3.0 + 1j, 1.0, 0.0]}, "sigmas must be a sequence of real numbers"),
        ({"sigmas": torch.tensor([3.0, 1.0, 0.0], dtype=torch.complex64)}, "sigmas must hold real numbers"),
        ({"sigmas": torch.empty(3, device="meta")}, "sigmas must be a tensor with values"),
        ({"sigmas": torch.tensor([3.0, 1.0, 0.0]).to_sparse()}, "sigmas must be a tensor with values"),
    ],
)
def test_set_timesteps_messages(kwargs, message):
    s = K()
    with pytest.raises((ValueError, TypeError)) as info:
        s.set_timesteps(**kwargs)
    assert message in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA where there is none")
def test_the_issue_reproducer_without_cuda():
    """Issue 11, defect 1: a rejected call used to leave 19 timesteps and a loop off by 6.45."""
    s, clean = K(), K()
    s.set_timesteps(10)
    clean.set_timesteps(10)
    for device in ("bogus", "cuda"):
        with pytest.raises(ValueError, match="device"):
            s.set_timesteps(20 if device == "bogus" else 3, device=device)
        assert len(s.timesteps) == 19 and s.num_inference_steps == 10
        assert_same_state(s, clean, f"set_timesteps(device={device!r})")


@pytest.mark.parametrize(
    "sigmas",
    [
        torch.tensor([3.0, 1.0, 0.0], dtype=torch.bfloat16),
        torch.tensor([3.0, 1.0, 0.0], requires_grad=True),
        torch.tensor([3.0, 1.0, 0.0], dtype=torch.float16),
        [np.float32(3.0), np.float64(1.0), 0],
    ],
    ids=["bfloat16", "requires_grad", "float16", "numpy-scalars"],
)
def test_convertible_sigmas_are_accepted(sigmas):
    """bfloat16, float16, requires_grad tensors and NumPy scalars give the tables of the same float64 values."""
    s, reference = K(), K()
    s.set_timesteps(sigmas=sigmas)
    reference.set_timesteps(sigmas=[3.0, 1.0, 0.0])
    assert torch.equal(s.sigmas, reference.sigmas) and torch.equal(s.timesteps, reference.timesteps)


def test_family_bound_from_the_schedule_checked_per_step_count():
    """Issue 11, defect 5: trailing spacing ends higher with fewer steps, crossing a given sigma_max."""
    s = K(use_karras_sigmas=True, sigma_max=0.5, timestep_spacing="trailing")
    s.set_timesteps(100)  # ends at timestep 9, whose training sigma is below 0.5
    clean = K(use_karras_sigmas=True, sigma_max=0.5, timestep_spacing="trailing")
    clean.set_timesteps(100)
    with pytest.raises(ValueError, match=r"sigma_min=\S+ \(from the schedule of num_inference_steps=2\)"):
        s.set_timesteps(2)  # ends at timestep 499
    assert_same_state(s, clean, "set_timesteps(2)")
    assert bool((s.sigmas[:-1] <= 0.5).all())

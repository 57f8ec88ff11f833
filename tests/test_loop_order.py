"""A loop over ``scheduler.timesteps`` visits every call in order, and a timestep that is not the call's is named.

Issue 22: where the first timesteps repeat (sigmas above the training range all map to the last
training timestep, quantised or nearly equal sigmas share one), diffusers' lookup rule (the
second match) started a plain loop one call late. Here a view of ``scheduler.timesteps`` is
located by its position, a plain value by its first step start (``lookup.step_start_index``), and
every call after the first checks its timestep where that needs no device sync. The spec states
the loop property as ``invariants.check_plain_loop``; these tests run it on hostile schedules.
"""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, lookup
from kdpm2_spec import AncestralReference, invariants
from kdpm2_spec.adapter import TorchAdapter
from kdpm2_spec.reference import Reference

ADAPTER = TorchAdapter(KDPM2DiscreteScheduler)


def karras(n: int, lo: float = 0.0292, hi: float = 80.0) -> list[float]:
    """EDM's Karras sigmas (rho 7) and a final 0: ``n + 1`` values."""
    ramp = np.linspace(0, 1, n)
    return [*((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7).tolist(), 0.0]


ISSUE_CASES = [
    pytest.param({}, {"sigmas": karras(10)}, id="karras-sigmas-to-80"),
    pytest.param({"use_karras_sigmas": True, "sigma_max": 80.0}, {"num_inference_steps": 10}, id="karras-80"),
    pytest.param({"use_exponential_sigmas": True, "sigma_max": 80.0}, {"num_inference_steps": 10}, id="exp-80"),
    pytest.param(
        {"use_karras_sigmas": True, "sigma_max": 80.0, "quantize_timesteps": True},
        {"num_inference_steps": 10},
        id="karras-80-quantized",
    ),
    pytest.param({"quantize_timesteps": True}, {"sigmas": karras(10)}, id="quantized-sigmas"),
    pytest.param({}, {"sigmas": [1 + 1e-9, 1, 0]}, id="three-equal-float32-timesteps"),
    pytest.param({"s_churn": 8.0}, {"num_inference_steps": 18}, id="churn-above-training-range"),
    pytest.param(
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True, "round_karras_timesteps": True},
        {"num_inference_steps": 10},
        id="cosine-rounded-karras",
    ),
]


def built(config: dict, request: dict) -> KDPM2DiscreteScheduler:
    s = KDPM2DiscreteScheduler(**config)
    s.set_timesteps(**request)
    return s


def walk(s: KDPM2DiscreteScheduler, timesteps, start: int = 0) -> None:
    """``scale_model_input`` and ``step`` per timestep; the call index must follow (``start`` first)."""
    x = torch.ones(1, 2, 3)
    for k, t in enumerate(timesteps, start):
        s.scale_model_input(x, t)
        assert s.step_index == k, f"call {k}: step_index {s.step_index} [{t!r}]"
        x = s.step(torch.zeros_like(x), t, x, generator=torch.Generator().manual_seed(k)).prev_sample
        assert s.step_index == k + 1
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(("config", "request_"), ISSUE_CASES)
def test_the_issue_cases_visit_every_call(config: dict, request_: dict) -> None:
    """The issue's schedules: the first timesteps repeat, and every kind of loop starts at call 0."""
    s = built(config, request_)
    values = s.timesteps.tolist()
    assert values.count(values[0]) > 1, f"timesteps[0] no longer repeats: {values[:4]}"
    calls = len(values)
    for timesteps in (s.timesteps, s.timesteps.tolist(), s.timesteps.clone(), list(s.timesteps.numpy())):
        walk(built(config, request_), timesteps)
    invariants.check_plain_loop(s, ADAPTER)
    ref = Reference(**config)
    ref.set_timesteps(**request_)
    invariants.check_plain_loop(ref)
    # the last call of the loop raised "all have run" before; it is call calls - 1 now
    last = built(config, request_)
    walk(last, last.timesteps)
    with pytest.raises(ValueError, match=r"all \d+ calls have run"):
        last.step(torch.zeros(1, 2, 3), last.timesteps[-1], torch.ones(1, 2, 3))
    assert last.step_index == calls


# -- hostile schedules --------------------------------------------------------------------------


@st.composite
def hostile(draw: st.DrawFn) -> tuple[dict, dict]:
    """Constructor arguments and a ``set_timesteps`` request that tend to repeat timesteps."""
    config: dict = {"beta_schedule": draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]))}
    if draw(st.booleans()):
        config["quantize_timesteps"] = True
    if draw(st.integers(0, 3)) == 0:
        config["s_churn"] = draw(st.sampled_from([0.5, 4.0, 40.0]))
    kind = draw(st.sampled_from(["family", "sigmas", "steps"]))
    if kind == "family":
        family = draw(st.sampled_from(["karras", "exponential"]))
        config[f"use_{family}_sigmas"] = True
        config["sigma_max"] = draw(st.sampled_from([20.0, 80.0, 157.0, 1000.0, 25000.0]))
        config["round_karras_timesteps"] = family == "karras" and draw(st.booleans())
        return config, {"num_inference_steps": draw(st.integers(1, 30))}
    if kind == "sigmas":
        top = draw(st.floats(0.5, 3000.0))
        close = draw(st.integers(0, 3))  # sigmas a hair apart: one float32 timestep
        sigmas = [top * (1 + (close - i) * 1e-9) for i in range(close)] + [top]
        for ratio in draw(st.lists(st.floats(0.2, 0.9), min_size=0, max_size=12)):
            sigmas.append(sigmas[-1] * ratio)
        if len(sigmas) < 2 or draw(st.booleans()):
            sigmas.append(0.0)
        return config, {"sigmas": sigmas}
    config["timestep_spacing"] = draw(st.sampled_from(["linspace", "leading", "trailing"]))
    if config["timestep_spacing"] == "leading":
        config["steps_offset"] = 1
    return config, {"num_inference_steps": draw(st.sampled_from([1, 2, 7, 25, 999, 1000]))}


@given(hostile())
@example(({}, {"sigmas": [1 + 1e-9, 1, 0]}))
@example(({"use_karras_sigmas": True, "sigma_max": 80.0, "quantize_timesteps": True}, {"num_inference_steps": 10}))
@example(({"timestep_spacing": "leading", "steps_offset": 1}, {"num_inference_steps": 1000}))
def test_every_loop_visits_every_call_in_order(case: tuple[dict, dict]) -> None:
    """Views (with and without a begin index, image to image), plain floats and CPU copies from the start."""
    config, request_ = case
    s = built(config, request_)
    invariants.check_plain_loop(s, ADAPTER)
    calls = len(s.timesteps)
    if calls > 60:
        return  # long schedules: the views above are enough
    walk(built(config, request_), s.timesteps.tolist())
    walk(built(config, request_), s.timesteps.clone())
    # pipelines that slice timesteps[t_start * order:] and never call set_begin_index (diffusers < 0.27)
    for start in range(2, calls, 2):
        fresh = built(config, request_)
        walk(fresh, fresh.timesteps[start:], start)


@given(st.lists(st.sampled_from([3.0, 2.0, 1.0, 0.5]), min_size=1, max_size=12))
def test_step_start_index_is_the_first_even_match(values: list[float]) -> None:
    """``step_start_index``: each value's first even position, else its first position."""
    index = lookup.step_start_index(values)
    for v in set(values):
        positions = [i for i, w in enumerate(values) if w == v]
        even = [i for i in positions if i % 2 == 0]
        assert index[v] == (even[0] if even else positions[0])
        got, found = lookup.device_step_start_indices(torch.tensor([v]), torch.tensor(values))
        assert bool(found[0]) and int(got[0]) == index[v], "the device rule is the host rule"


def test_plain_value_rule_for_a_midpoint_shared_with_the_next_step() -> None:
    """A plain value that a midpoint (odd call) shares with the next step start (even) means the step start."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(5)
    table = s.timesteps.clone()
    table[3] = table[4]  # call 3 (a midpoint) takes the value of call 4 (a step start)
    assert lookup.step_start_index(table.tolist())[float(table[4])] == 4
    assert lookup.first_or_second_index(table.tolist())[float(table[4])] == 4, "diffusers' rule agrees here"


def test_index_for_timestep_keeps_diffusers_rule() -> None:
    """The public lookup is diffusers' (second match); only the loop's first call uses the position."""
    s = built({"use_karras_sigmas": True, "sigma_max": 80.0}, {"num_inference_steps": 10})
    assert s.index_for_timestep(s.timesteps[0]) == 1
    assert s.index_for_timestep(float(s.timesteps[0])) == 1
    s.scale_model_input(torch.ones(2), s.timesteps[0])
    assert s.step_index == 0


# -- the timestep check -------------------------------------------------------------------------


def started(steps: int = 10) -> tuple[KDPM2DiscreteScheduler, torch.Tensor]:
    """A scheduler after its first call (call 1 is next) and the sample for call 1."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(steps)
    x = torch.ones(1, 2, 3)
    return s, s.step(torch.zeros_like(x), s.timesteps[0], x).prev_sample


def assert_refused(s: KDPM2DiscreteScheduler, call, *args) -> None:
    """``call`` raises a ValueError naming ``timestep`` and changes nothing."""
    before = (s.step_index, s.sample, s.state_in_first_order)
    with pytest.raises(ValueError, match="timestep") as error:
        call(*args)
    assert "is not this call's" in str(error.value) or "but this is call" in str(error.value)
    assert (s.step_index, s.sample, s.state_in_first_order) == before


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(lambda s: s.timesteps[0], id="view-of-another-call"),
        pytest.param(lambda s: s.timesteps[2:3], id="1-element-view"),
        pytest.param(lambda s: float(s.timesteps[0]), id="float"),
        pytest.param(lambda s: int(s.timesteps[0]), id="int"),
        pytest.param(lambda s: np.float32(s.timesteps[0]), id="numpy"),
        pytest.param(lambda s: s.timesteps[0].clone(), id="cpu-copy"),
        pytest.param(lambda s: s.timesteps[0].double(), id="cpu-float64-copy"),
        pytest.param(lambda s: s.timesteps[[0, 1]], id="two-values"),
        pytest.param(lambda s: torch.tensor(float("nan")), id="nan"),
    ],
)
def test_a_timestep_of_another_call_is_refused(wrong) -> None:
    """After the first call, ``scale_model_input`` and ``step`` check the timestep (two loops, a repeated call)."""
    s, x = started()
    assert_refused(s, s.scale_model_input, x, wrong(s))
    assert_refused(s, s.step, torch.zeros_like(x), wrong(s), x)


@pytest.mark.parametrize(
    "right",
    [
        pytest.param(lambda s: s.timesteps[1], id="view"),
        pytest.param(lambda s: s.timesteps[1:2], id="1-element-view"),
        pytest.param(lambda s: s.timesteps[1:2].expand(3), id="expanded-view"),
        pytest.param(lambda s: float(s.timesteps[1]), id="float"),
        pytest.param(lambda s: float(s.timesteps[1]) + 1e-6, id="float-equal-in-float32"),
        pytest.param(lambda s: np.float64(s.timesteps[1]), id="numpy"),
        pytest.param(lambda s: s.timesteps[1].clone(), id="cpu-copy"),
        pytest.param(lambda s: s.timesteps[1].double().repeat(4), id="cpu-batch"),
        pytest.param(lambda s: s.timesteps.clone()[1], id="view-of-a-copy"),
        pytest.param(lambda s: torch.empty((), device="meta"), id="meta-not-checked"),
    ],
)
def test_this_calls_timestep_is_accepted(right) -> None:
    s, x = started()
    s.scale_model_input(x, right(s))
    s.step(torch.zeros_like(x), right(s), x)
    assert s.step_index == 2


def test_two_interleaved_loops_and_a_repeated_call_are_named() -> None:
    """The two misuses of the issue: a second loop on the same scheduler, and one call made twice."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    x = torch.ones(2, 2)
    first, second = iter(s.timesteps), iter(s.timesteps)
    t = next(first)
    x = s.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match=r"timestep is scheduler.timesteps\[0\], but this is call 1"):
        s.step(torch.zeros_like(x), next(second), x)
    t = next(first)
    s.step(torch.zeros_like(x), t, x)
    with pytest.raises(ValueError, match=r"timesteps\[1\], but this is call 2 of 19"):
        s.step(torch.zeros_like(x), t, x)


def test_the_first_call_with_a_begin_index_reads_no_timestep() -> None:
    """As diffusers: the begin index places the first call; the timestep is checked from the next call on."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    s.set_begin_index(4)
    x = torch.ones(2)
    x = s.step(torch.zeros_like(x), s.timesteps[0], x).prev_sample
    assert s.step_index == 5
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.zeros_like(x), s.timesteps[1], x)
    s.step(torch.zeros_like(x), s.timesteps[5], x)


@given(st.integers(1, 30), st.data())
def test_any_call_out_of_place_is_refused(steps: int, data: st.DataObject) -> None:
    """Hypothesis: at call ``k`` a view of any other call (or its differing value) is refused."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(steps)
    calls = len(s.timesteps)
    k = data.draw(st.integers(1, calls - 1)) if calls > 1 else 0
    if k == 0:
        return
    s.set_begin_index(k - 1)
    x = s.step(torch.zeros(3), s.timesteps[k - 1], torch.ones(3)).prev_sample
    j = data.draw(st.integers(0, calls - 1).filter(lambda j: j != k))
    assert_refused(s, s.step, torch.zeros(3), s.timesteps[j], x)
    if s.timesteps[j] != s.timesteps[k]:
        assert_refused(s, s.step, torch.zeros(3), float(s.timesteps[j]), x)
    s.step(torch.zeros(3), s.timesteps[k], x)


def test_copies_and_pickles_check_their_own_table() -> None:
    """A deep copy or an unpickled scheduler locates views of its own table (their addresses moved)."""
    import pickle

    s, x = started()
    for other in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        other.step(torch.zeros_like(x), other.timesteps[1], x)
        with pytest.raises(ValueError, match="timestep"):
            other.step(torch.zeros_like(x), other.timesteps[1], x)


# -- the autograd graph -------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [{"num_inference_steps": 4}, {"sigmas": [10.0, 2.0, 0.5]}], ids=["to-0", "2n"])
def test_the_last_call_releases_the_graph(request_: dict) -> None:
    """Nothing of a differentiable loop stays alive in the scheduler once the loop has run."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(**request_)
    w = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    seen = []
    for t in s.timesteps:
        seen.append(weakref.ref(x))
        x = s.step(s.scale_model_input(x, t) * w, t, x).prev_sample
    x.sum().backward()
    assert w.grad is not None
    assert s.sample is None
    assert s.state_in_first_order == ("sigmas" in request_)  # as diffusers after a last Euler call
    del x
    gc.collect()
    assert all(ref() is None for ref in seen), "a sample of the loop is still referenced"


# -- float16 range ------------------------------------------------------------------------------


def test_float16_beyond_its_range_is_refused_up_front() -> None:
    """sigma 70000 in float16 gave -inf silently; it is refused, naming sample, float16 and its range."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(sigmas=[70000, 1, 0])
    s.set_begin_index(0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    for call in (
        lambda: s.step(torch.randn_like(x), s.timesteps[0], x),
        lambda: s.add_noise(x, torch.randn_like(x), s.timesteps[:1]),
    ):
        with pytest.raises(ValueError, match=r"float16.*65504"):
            call()
        assert s.step_index is None and s.sample is None
    for dtype in (torch.float32, torch.bfloat16):
        out = s.step(torch.randn_like(x).to(dtype), s.timesteps[0], x.to(dtype))
        assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()
        s.set_timesteps(sigmas=[70000, 1, 0])
        s.set_begin_index(0)


@given(st.floats(1.0, 60000.0), st.sampled_from(["epsilon", "v_prediction", "sample"]), st.integers(0, 2**16))
def test_float16_steps_are_finite_or_refused(top: float, prediction_type: str, seed: int) -> None:
    """Never a silent non-finite result: unit-scale inputs give finite outputs, or the call is refused."""
    s = KDPM2DiscreteScheduler(prediction_type=prediction_type)
    s.set_timesteps(sigmas=[top, top / 3, 0.0])
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, generator=g) * min(top, 4000.0)).half()
    if top > 65504 / 16:  # the call works beyond float16's range (with a margin): refused, naming it
        with pytest.raises(ValueError, match=r"float16.*65504"):
            s.step(torch.randn(64, generator=g).half(), s.timesteps[0], x)
        return
    for t in s.timesteps:
        out = s.step(torch.randn(64, generator=g).half(), t, x)
        assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()
        x = out.prev_sample


# -- the ancestral class: the same core, so the same rules ------------------------------------------

ANCESTRAL = TorchAdapter(KDPM2AncestralDiscreteScheduler)


def ancestral(config: dict, request: dict) -> KDPM2AncestralDiscreteScheduler:
    s = KDPM2AncestralDiscreteScheduler(**config)
    s.set_timesteps(**request)
    return s


EULER_INSIDE = ({"eta": 2.0}, {"sigmas": [10.0, 2.0, 1.9, 0.5, 0.0]})
"""eta 2 clamps the steps 10 -> 2 and 1.9 -> 0.5 (sigma_down 0): one Euler call each, so the steps
start at calls 0, 1, 3 and 4, not at the even positions."""


@pytest.mark.parametrize(("config", "request_"), ISSUE_CASES[:6])
def test_ancestral_issue_cases_visit_every_call(config: dict, request_: dict) -> None:
    """DPM2 a on the issue's schedules (first timesteps repeated): views, floats and copies start at call 0."""
    s = ancestral(config, request_)
    values = s.timesteps.tolist()
    assert values.count(values[0]) > 1, f"timesteps[0] no longer repeats: {values[:4]}"
    for timesteps in (s.timesteps, s.timesteps.tolist(), s.timesteps.clone()):
        walk(ancestral(config, request_), timesteps)
    invariants.check_plain_loop(s, ANCESTRAL)
    last = ancestral(config, request_)
    walk(last, last.timesteps)
    with pytest.raises(ValueError, match=r"all \d+ calls have run"):
        last.step(torch.zeros(1, 2, 3), last.timesteps[-1], torch.ones(1, 2, 3))


def test_ancestral_euler_steps_inside_keep_the_loop_in_order() -> None:
    """Steps of one call (eta > 1) shift the step starts off the even positions; loops and lookups follow them."""
    config, request_ = EULER_INSIDE
    s = ancestral(config, request_)
    assert len(s.timesteps) == 5 and [lv.sigma_mid is None for lv in s.step_levels] == [True, False, True, True]
    for timesteps in (s.timesteps, s.timesteps.tolist(), s.timesteps.clone()):
        walk(ancestral(config, request_), timesteps)
    for start in (1, 3, 4):  # image to image from each step start after the first, with and without a begin index
        fresh = ancestral(config, request_)
        fresh.set_begin_index(start)
        walk(fresh, fresh.timesteps[start:], start)
        walk(ancestral(config, request_), s.timesteps[start:].tolist(), start)
    starts = [0, 1, 3, 4]
    values = [5.0, 4.0, 3.0, 3.0, 1.0]  # call 2 (a midpoint) shares its value with call 3 (a step start)
    assert lookup.step_start_index(values, starts)[3.0] == 3, "the step start, not the midpoint"
    assert lookup.step_start_index(values)[3.0] == 2, "even positions: the first even match"


SHARED_MIDPOINT = ({"eta": 2.0, "quantize_timesteps": True}, {"sigmas": [10.0, 2.0, 1.999, 0.5, 0.0]})
"""Calls 1-3 share the integer timestep 465: the start of step 1, its midpoint (call 2, even) and the
start of the one-call step 2 (call 3, odd), so "the first even match" would be a midpoint."""


def test_reference_and_kdpm2_start_a_plain_value_at_the_same_step_start() -> None:
    """AncestralReference follows the real step starts (``step_starts``), not the even positions."""
    config, request_ = SHARED_MIDPOINT
    ref = AncestralReference(**config)
    ref.set_timesteps(**request_)
    assert [order for _, order in ref.calls] == [1, 1, 2, 1, 1]
    values = ancestral(config, request_).timesteps.tolist()
    assert values == ref.timesteps.tolist() and values[1] == values[2] == values[3], values
    for p, value in enumerate(values):
        s = ancestral(config, request_)
        s.scale_model_input(torch.ones(1, 2, 3), value)
        want = 1 if p in (1, 2, 3) else p  # the first step start holding the value
        assert (s.step_index, ref.first_call_index(value)) == (want, want), p


def test_ancestral_timestep_of_another_call_is_refused() -> None:
    """The timestep check is the core's: a second loop or a repeated call on DPM2 a is named, and changes nothing."""
    s = KDPM2AncestralDiscreteScheduler()
    s.set_timesteps(10)
    x = torch.ones(1, 2, 3)
    x = s.step(torch.zeros_like(x), s.timesteps[0], x).prev_sample
    for wrong in (s.timesteps[0], s.timesteps[2], float(s.timesteps[3]), s.timesteps[3].clone()):
        assert_refused(s, s.scale_model_input, x, wrong)
        assert_refused(s, s.step, torch.zeros_like(x), wrong, x, torch.Generator().manual_seed(0))
    s.step(torch.zeros_like(x), s.timesteps[1], x, torch.Generator().manual_seed(0))
    assert s.step_index == 2


def test_ancestral_last_call_releases_the_graph() -> None:
    """DPM2 a keeps nothing of a differentiable loop (noise drawn at every second-order call)."""
    s = KDPM2AncestralDiscreteScheduler()
    s.set_timesteps(4)
    w = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    seen = []
    g = torch.Generator().manual_seed(0)
    for t in s.timesteps:
        seen.append(weakref.ref(x))
        x = s.step(s.scale_model_input(x, t) * w, t, x, g).prev_sample
    x.sum().backward()
    assert w.grad is not None and s.sample is None
    del x
    gc.collect()
    assert all(ref() is None for ref in seen), "a sample of the loop is still referenced"


def test_ancestral_float16_beyond_its_range_is_refused_up_front() -> None:
    """The float16 range check is the core's: DPM2 a at sigma 70000 is refused before any work."""
    s = KDPM2AncestralDiscreteScheduler()
    s.set_timesteps(sigmas=[70000, 1, 0])
    s.set_begin_index(0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    with pytest.raises(ValueError, match=r"float16.*65504"):
        s.step(torch.randn_like(x), s.timesteps[0], x)
    assert s.step_index is None and s.sample is None
    out = s.step(torch.randn_like(x).float(), s.timesteps[0], x.float())
    assert torch.isfinite(out.prev_sample).all()


def test_the_spec_accepts_a_float16_refusal_only_beyond_the_range() -> None:
    """The gate's low-precision check takes a refusal naming the dtype where the call's sigmas exceed 65504 / 16."""
    from kdpm2_spec.conformance import refusable

    wide, narrow = Reference(), Reference()
    wide.set_timesteps(sigmas=[70000.0, 1.0, 0.0])
    narrow.set_timesteps(10)
    refused = ValueError("sample is float16, whose largest finite value is 65504, but ...")
    assert refusable(wide, 0, "float16", refused)
    assert not refusable(narrow, 0, "float16", refused), "sigmas within the range: a result is due"
    assert not refusable(wide, 0, "bfloat16", refused), "the error must name the call's dtype"
    assert not refusable(wide, 0, "float16", TypeError(str(refused)))
    assert not refusable(wide, 2, "float16", refused), "the last call works at sigmas 1 and 265"

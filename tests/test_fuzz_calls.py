"""Fuzzing the per-call methods: ``scale_model_input``, ``step``, ``add_noise`` and ``index_for_timestep``.

Tensors of every dtype and layout (float8, sparse, nested, meta, integer, complex), wrong shapes
and devices, non-tensors, hostile timesteps and generators. Each call returns finite outputs or
raises ValueError/TypeError naming an argument; after a rejected call the scheduler equals a twin
that never saw it. Tensor values are finite here: the hot path never reads values (no sync), so
NaN in, NaN out is the caller's business.
"""

from __future__ import annotations

import warnings

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
    assert_same_state,
    call_and_check,
    describe,
    hostile_scalars,
    prepare,
)
from kdpm2_spec import strategies as ks

SHAPE = (2, 3)

tensor_specs = st.one_of(
    st.tuples(st.just("dense"), st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])),
    st.tuples(
        st.just("dense"),
        st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2, torch.int64, torch.bool, torch.complex64]),
    ),
    st.tuples(st.sampled_from(["sparse", "nested", "meta", "grad", "strided", "shape", "scalar"]), st.none()),
    st.tuples(st.sampled_from(["numpy", "list"]), st.none()),
    hostile_scalars.map(lambda v: ("raw", v)),
)
"""Descriptions of a tensor argument (built in the test so that each example gets fresh tensors)."""


def make_tensor(spec, scale=1.0):
    """The tensor (or non-tensor) a spec describes; finite values of the size of the loop's samples."""
    kind, detail = spec
    base = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(SHAPE) * scale
    if kind == "dense":
        return base.to(detail)
    if kind == "sparse":
        return base.float().to_sparse()
    if kind == "nested":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.nested.nested_tensor([base[0].float(), base[1, :2].float()])
    if kind == "meta":
        return torch.empty(SHAPE, device="meta")
    if kind == "grad":
        return base.float().requires_grad_()
    if kind == "strided":
        return base.float().t().contiguous().t()  # same values, transposed strides
    if kind == "shape":
        return torch.zeros(3, 2)
    if kind == "scalar":
        return torch.tensor(0.5)
    if kind == "numpy":
        return base.numpy()
    if kind == "list":
        return base.tolist()
    return detail


timestep_specs = st.one_of(
    st.tuples(st.sampled_from(["view", "copy", "float", "int"]), st.integers(0, 10**4)),
    hostile_scalars.map(lambda v: ("raw", v)),
)
"""A timestep: a view or copy of a scheduled one, its value as a Python number, or anything."""


def make_timestep(s, spec):
    kind, detail = spec
    if kind == "raw":
        return detail
    t = s.timesteps[detail % len(s.timesteps)]
    return {"view": t, "copy": t.clone(), "float": float(t), "int": int(t)}[kind]


batch_timestep_specs = st.one_of(
    st.tuples(
        st.sampled_from(["slice", "batch-copy", "one", "empty", "three", "int64", "float8", "complex"]), st.none()
    ),
    st.tuples(st.sampled_from(["nested", "sparse", "meta", "list", "numpy"]), st.none()),
    hostile_scalars.map(lambda v: ("raw", v)),
)
"""``add_noise``'s timesteps: one per batch item, one for all, none, too many, or not a tensor."""


def make_batch_timesteps(s, spec):
    kind, detail = spec
    t = s.timesteps
    if kind == "raw":
        return detail
    table = {
        "slice": lambda: t[:2],
        "batch-copy": lambda: t[:2].clone(),
        "one": lambda: t[:1].clone(),
        "empty": lambda: torch.tensor([]),
        "three": lambda: t[:3].clone(),
        "int64": lambda: t[:2].round().long(),
        "float8": lambda: t[:2].float().to(torch.float8_e5m2),
        "complex": lambda: t[:2].to(torch.complex64),
        "nested": lambda: _nested_timesteps(),
        "sparse": lambda: t[:2].float().to_sparse(),
        "meta": lambda: torch.empty(2, device="meta"),
        "list": lambda: t[:2].tolist(),
        "numpy": lambda: t[:2].numpy(),
    }
    return table[kind]()


def _nested_timesteps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.ones(1), torch.ones(2)])


generator_specs = st.sampled_from(["none", "torch", "numpy", "int", "str", "meta-device"])


def make_generator(spec):
    return {
        "none": None,
        "torch": torch.Generator().manual_seed(3),
        "numpy": np.random.default_rng(0),
        "int": 0,
        "str": "seed",
        "meta-device": object(),
    }[spec]


@st.composite
def prepared(draw):
    """A valid configuration (churn included, so that generators matter), step count and progress."""
    config, steps = draw(ks.schedules(ARGS))
    calls = draw(st.integers(0, 2 * steps - 1))
    begin = draw(st.booleans())
    return config, steps, calls, begin


def twins(config, steps, calls, begin):
    pair = []
    for _ in range(2):
        s = K(**config)
        prepare(s, steps)
        if calls:
            advance(s, calls)
        elif begin:
            s.set_begin_index(0)
        pair.append(s)
    return pair


def check(s, twin, method, kwargs, names, finite=()):
    """Call ``s.method(**kwargs)``: checked error and an untouched scheduler, or finite outputs."""
    call = describe(method, kwargs)
    result, error = call_and_check(getattr(s, method), kwargs, names, call)
    if error is not None:
        assert_same_state(s, twin, call)
    else:
        assert_finite([getattr(result, name) if name else result for name in finite], call)
    return result, error


@given(case=prepared(), sample=tensor_specs, timestep=timestep_specs)
@example(case=({}, 3, 0, False), sample=("dense", torch.float8_e4m3fn), timestep=("view", 0))  # 7
@example(case=({}, 3, 0, False), sample=("nested", None), timestep=("view", 0))  # 7
@example(case=({}, 3, 0, False), sample=("dense", torch.float32), timestep=("raw", 1j))  # 4: complex
def test_scale_model_input(case, sample, timestep):
    s, twin = twins(*case)
    kwargs = {"sample": make_tensor(sample), "timestep": make_timestep(s, timestep)}
    check(s, twin, "scale_model_input", kwargs, ["sample", "timestep"], finite=[None])


@given(
    case=prepared(),
    model_output=tensor_specs,
    sample=tensor_specs,
    timestep=timestep_specs,
    generator=generator_specs,
    return_dict=st.booleans(),
)
# 7. tensors torch cannot step, rejected by name before anything changes (a first call included)
@example(
    case=({}, 3, 0, False),
    model_output=("dense", torch.float8_e4m3fn),
    sample=("dense", torch.float32),
    timestep=("view", 0),
    generator="none",
    return_dict=True,
)
@example(
    case=({}, 3, 0, False),
    model_output=("sparse", None),
    sample=("sparse", None),
    timestep=("view", 0),
    generator="none",
    return_dict=True,
)
@example(
    case=({}, 3, 0, False),
    model_output=("nested", None),
    sample=("dense", torch.float32),
    timestep=("view", 0),
    generator="none",
    return_dict=True,
)
@example(
    case=({}, 3, 0, False),
    model_output=("dense", torch.float32),
    sample=("dense", torch.float32),
    timestep=("raw", torch.empty((), device="meta")),
    generator="none",
    return_dict=True,
)
@example(
    case=({"s_churn": 1.0}, 3, 1, False),
    model_output=("dense", torch.float32),
    sample=("dense", torch.float32),
    timestep=("view", 1),
    generator="numpy",
    return_dict=True,
)
def test_step(case, model_output, sample, timestep, generator, return_dict):
    s, twin = twins(*case)
    kwargs = {
        "model_output": make_tensor(model_output),
        "timestep": make_timestep(s, timestep),
        "sample": make_tensor(sample),
        "return_dict": return_dict,
        "generator": make_generator(generator),
    }
    names = ["model_output", "sample", "timestep", "generator", "step past the end"]
    result, error = check(s, twin, "step", kwargs, names)
    if error is None:
        outputs = [result.prev_sample, result.pred_original_sample] if return_dict else list(result)
        assert_finite(outputs, describe("step", kwargs))


@given(case=prepared(), original=tensor_specs, noise=tensor_specs, timesteps=batch_timestep_specs)
@example(
    case=({}, 3, 0, False), original=("dense", torch.float32), noise=("dense", torch.float32), timesteps=("empty", None)
)  # 7: no timestep for a batch of 2
@example(
    case=({}, 3, 0, False),
    original=("dense", torch.float32),
    noise=("dense", torch.float32),
    timesteps=("complex", None),
)
@example(case=({}, 3, 0, False), original=("dense", torch.float32), noise=("shape", None), timesteps=("slice", None))
def test_add_noise(case, original, noise, timesteps):
    s, twin = twins(*case)
    kwargs = {
        "original_samples": make_tensor(original),
        "noise": make_tensor(noise),
        "timesteps": make_batch_timesteps(s, timesteps),
    }
    names = ["original_samples", "noise", "timesteps"]
    check(s, twin, "add_noise", kwargs, names, finite=[None])


@given(case=prepared(), timestep=timestep_specs, table=st.sampled_from(["none", "own", "list", "meta", "complex"]))
@example(case=({}, 3, 0, False), timestep=("raw", 10**400), table="none")
@example(case=({}, 3, 0, False), timestep=("raw", torch.tensor(1 + 1j)), table="none")
@example(case=({}, 3, 0, False), timestep=("view", 0), table="list")
def test_index_for_timestep(case, timestep, table):
    s, twin = twins(*case)
    schedule = {
        "none": None,
        "own": s.timesteps.clone(),
        "list": s.timesteps.tolist(),
        "meta": torch.empty(3, device="meta"),
        "complex": s.timesteps.to(torch.complex64),
    }[table]
    kwargs = {"timestep": make_timestep(s, timestep), "schedule_timesteps": schedule}
    index, error = check(
        s, twin, "index_for_timestep", kwargs, ["timestep", "schedule_timesteps", "not in the schedule"]
    )
    if error is None:
        assert type(index) is int and 0 <= index < len(s.timesteps)


def test_a_failing_first_step_leaves_no_step_index():
    """Issue 11, defect 7: the first call's lookup used to be kept when the call then failed."""
    s = K()
    s.set_timesteps(3)
    x = torch.ones(SHAPE)
    for bad in (x.to(torch.float8_e4m3fn), x.to_sparse(), "x"):
        with pytest.raises(TypeError, match="model_output"):
            s.step(bad, s.timesteps[0], x)
        assert s.step_index is None
    with pytest.raises(TypeError, match="generator"):
        s.step(x, s.timesteps[0], x, generator=np.random.default_rng(0))
    assert s.step_index is None


@pytest.mark.parametrize(
    ("timesteps", "message"),
    [
        (torch.tensor([]), "timesteps must hold 1 value or one per batch item (2); got 0"),
        (torch.tensor([999.0, 0.0, 0.0]), "timesteps must hold 1 value or one per batch item (2); got 3"),
        (torch.tensor([999.0, 0.0]).to(torch.complex64), "timesteps must hold integers or float16"),
        ([999.0, 0.0], "timesteps must be a torch.Tensor; got list"),
    ],
)
def test_add_noise_messages(timesteps, message):
    s = K()
    s.set_timesteps(3)
    x = torch.ones(SHAPE)
    with pytest.raises((ValueError, TypeError)) as info:
        s.add_noise(x, x, timesteps)
    assert message in str(info.value)

"""Shared pieces of the fuzz tests: hostile values, input snapshots, public state and the call check.

Every fuzzed call must either return finite outputs or raise ``ValueError``/``TypeError`` whose
message names one of the arguments; its inputs must be unchanged; and after a rejected call the
scheduler must be indistinguishable from a twin that never saw it (same public state, same loop).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from hypothesis import reject
from hypothesis import strategies as st

from helpers_sched import stand_in_model
from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import strategies as ks

K = KDPM2DiscreteScheduler
ARGS = ks.supported_args(K)
"""Every constructor argument (the fuzz bases draw over all of them)."""


# -- hostile values ---------------------------------------------------------------------------


def _tensor(value: float, dtype: torch.dtype = torch.float32, **kwargs: Any) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, **kwargs)


def _nested() -> torch.Tensor:
    with warnings.catch_warnings():  # "nested tensors are a prototype": not what is tested here
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])


hostile_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 10**30, 0, 1, -1, 2, 1e-300, 1e39, 1e300, 0.5, 0.999]),
    st.floats(-1e3, 1e3).map(np.float64),
    st.floats(-1e3, 1e3, width=32).map(np.float32),
    st.integers(-(2**40), 2**40).map(np.int64),
    st.booleans().map(np.bool_),
    st.floats(-1e3, 1e3).map(_tensor),
    st.integers(-100, 100).map(lambda v: torch.tensor(v)),
    st.floats(0, 10).map(lambda v: torch.tensor([v])),
    st.floats(0, 10).map(lambda v: torch.tensor(v, requires_grad=True)),
    st.floats(0, 10).map(lambda v: _tensor(v, torch.bfloat16)),
    st.just(None).map(lambda _: torch.empty((), device="meta")),
    st.floats(0, 1).map(lambda v: torch.tensor(complex(v, 1.0))),
    st.builds(Fraction, st.integers(-10, 10), st.integers(1, 10)),
    st.complex_numbers(max_magnitude=10, allow_nan=False),
    st.just(Decimal("0.5")),
    st.text(max_size=4),
    st.sampled_from(["False", "false", "1", "0.5", "nan"]),
    st.none(),
    st.booleans(),
    st.builds(list),
    st.builds(dict),
    st.builds(object),
)
"""Values a hostile caller passes for a number or a flag: right and wrong types, huge, tiny, NaN."""

hostile_flags = st.one_of(st.booleans(), st.booleans().map(np.bool_), hostile_scalars)
"""Values for a boolean flag."""

hostile_names = st.one_of(
    st.sampled_from(["linear", "leading", "epsilon", "log", "LINEAR", "bogus", "", "trailing "]), hostile_scalars
)
"""Values for an argument that takes a name."""


def _sigmas_like(values: list[float]) -> list[float]:
    return sorted(values, reverse=True)


hostile_arrays = st.one_of(
    st.lists(hostile_scalars, max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5).map(_sigmas_like),
    st.lists(st.floats(1e-320, 1e40), min_size=2, max_size=5).map(_sigmas_like),
    ks.custom_sigmas().map(lambda s: torch.tensor(s, dtype=torch.bfloat16)),
    ks.custom_sigmas().map(lambda s: torch.tensor(s, requires_grad=True)),
    ks.custom_sigmas().map(lambda s: torch.tensor(s, dtype=torch.float16)),
    ks.custom_sigmas().map(lambda s: torch.tensor(s).to(torch.float8_e4m3fn)),
    ks.custom_sigmas().map(lambda s: torch.tensor(s).to_sparse()),
    ks.custom_sigmas().map(lambda s: torch.empty(len(s), device="meta")),
    ks.custom_sigmas().map(lambda s: torch.tensor(s, dtype=torch.complex64)),
    ks.custom_sigmas().map(lambda s: np.array(s, dtype=np.complex128)),
    ks.custom_sigmas().map(lambda s: np.array(s).astype(str)),
    ks.custom_sigmas().map(lambda s: [Fraction(v).limit_denominator(1000) for v in s]),
    ks.custom_sigmas().map(lambda s: [np.float32(v) for v in s]),
    ks.custom_timesteps().map(lambda t: torch.tensor(t, dtype=torch.int64)),
    ks.custom_timesteps().map(lambda t: np.array(t, dtype=np.float32)),
    st.integers(1, 200).map(lambda depth: _deep_list(depth)),
    st.sampled_from([[True, False], [[1.0, 0.5], [0.2]], "1,0.5,0", b"\x00", {"a": 1}, [10**400, 1, 0]]),
    st.just(None).map(lambda _: _nested()),
)
"""Values a hostile caller passes for ``sigmas``, ``timesteps`` or ``trained_betas``."""


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = [1.0, 0.0]
    for _ in range(depth):
        value = [value]
    return value


hostile_devices = st.one_of(
    st.sampled_from(["cpu", "bogus", "cuda", "cuda:7", "mps", "xpu", "cpu:0", "", "meta"]),
    st.sampled_from([torch.device("cpu"), 0, -1, True]),
    hostile_scalars,
)
"""Values for ``device``: good, unknown, unavailable and of the wrong type."""


def hostile_for(name: str) -> st.SearchStrategy[Any]:
    """Hostile values for one constructor argument, mixed with values near its valid domain."""
    if name in ("trained_betas",):
        near = st.sampled_from([[0.999] * 1000, [1e-30] * 1000, [0.5] * 999 + [1.0 - 1e-12]])
        return st.one_of(hostile_arrays, near)
    if name in ks.FAMILIES or name in ("discard_penultimate_sigma", "quantize_timesteps", "round_karras_timesteps"):
        return hostile_flags
    if name in ("beta_schedule", "prediction_type", "timestep_spacing", "sigma_interpolation"):
        return hostile_names
    near = {
        "num_train_timesteps": st.sampled_from([1, 2, 3, 10**5, 10**5 + 1, 10**7, 10**30]),
        "steps_offset": st.sampled_from([0, 1, 999, 1000, 10**30]),
        "beta_start": st.floats(0, 2),
        "beta_end": st.floats(0, 2),
        "sigma_min": st.floats(0, 1e20) | st.sampled_from([1e-300, 1e-19, 100.0]),
        "sigma_max": st.floats(0, 1e20) | st.sampled_from([1e-300, 1e19, 0.01]),
        "s_noise": st.floats(0, 1e30),
    }.get(name, st.floats(-1, 1e30))
    return st.one_of(hostile_scalars, near)


@st.composite
def overrides(draw: Any, max_size: int = 2) -> dict[str, Any]:
    """One or two constructor arguments set to hostile values."""
    names = draw(st.lists(st.sampled_from(sorted(ARGS)), min_size=1, max_size=max_size, unique=True))
    return {name: draw(hostile_for(name)) for name in names}


# -- snapshots of inputs --------------------------------------------------------------------------


def snapshot(value: Any) -> Any:
    """A deep copy to compare against after the call (tensors cloned, meta ones by metadata)."""
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.is_nested:
            return ("tensor", value.dtype, value.device, value.layout)
        return value.detach().clone()
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def same(before: Any, after: Any) -> bool:
    """``after`` holds what ``before`` held (NaN equals NaN; tensors by dtype, shape and values)."""
    if isinstance(before, tuple) and before[:1] == ("tensor",):
        return (after.dtype, after.device, after.layout) == before[1:]
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or before.dtype != after.dtype or before.shape != after.shape:
            return False
        if before.is_meta or before.is_nested:
            return after.device == before.device and after.layout == before.layout
        if before.layout != torch.strided:
            before, after = before.to_dense(), after.to_dense()
        if before.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            before, after = before.float(), after.float()
        return bool(torch.equal(before.isnan(), after.isnan()) and torch.equal(before.nan_to_num(), after.nan_to_num()))
    if isinstance(before, np.ndarray):
        if not isinstance(after, np.ndarray) or before.shape != after.shape or before.dtype != after.dtype:
            return False
        return all(same(b, a) for b, a in zip(before.reshape(-1).tolist(), after.reshape(-1).tolist(), strict=True))
    if isinstance(before, (list, tuple)):
        return (
            type(before) is type(after)
            and len(before) == len(after)
            and all(same(b, a) for b, a in zip(before, after, strict=True))
        )
    if isinstance(before, dict):
        return before.keys() == after.keys() and all(same(before[k], after[k]) for k in before)
    if isinstance(before, float) and math.isnan(before):
        return isinstance(after, float) and math.isnan(after)
    if type(before).__eq__ is object.__eq__:
        return True  # no value semantics (object(), a NumPy Generator): a deep copy is never "equal"
    try:
        return bool(before == after)
    except Exception:
        return before is after


def assert_unchanged(before: dict[str, Any], after: dict[str, Any], call: str) -> None:
    for name in before:
        assert same(before[name], after[name]), f"{call} modified its argument {name}"


# -- the scheduler's public state and a following loop ------------------------------------------

TABLES = ("timesteps", "sigmas", "sigmas_interpol", "log_sigmas", "betas", "alphas", "alphas_cumprod")
"""The public tensors of a scheduler."""


def public_state(s: KDPM2DiscreteScheduler) -> dict[str, Any]:
    """Everything a user can read off a scheduler."""
    state: dict[str, Any] = {name: getattr(s, name) for name in TABLES}
    state.update(
        config=dict(s.config),
        num_inference_steps=s.num_inference_steps,
        step_index=s.step_index,
        begin_index=s.begin_index,
        init_noise_sigma=s.init_noise_sigma,
        sample=s.sample,
        state_in_first_order=s.state_in_first_order,
    )
    return state


def assert_same_state(s: KDPM2DiscreteScheduler, twin: KDPM2DiscreteScheduler, call: str) -> None:
    """``s`` and ``twin`` have the same public state, and the rest of their loops agree exactly."""
    ours, theirs = public_state(s), public_state(twin)
    for name, value in theirs.items():
        other = ours[name]
        if isinstance(value, torch.Tensor):
            ok = (
                isinstance(other, torch.Tensor)
                and other.dtype == value.dtype
                and other.device == value.device
                and (value.is_meta or torch.equal(other, value))
            )
        else:
            ok = same(value, other)
        assert ok, f"after the rejected {call}, {name} is {other!r}; a scheduler that never saw it has {value!r}"
    a, b = finish_loop(s), finish_loop(twin)
    assert torch.equal(a, b), f"after the rejected {call}, the following loop differs by {float((a - b).abs().max())}"


def finish_loop(s: KDPM2DiscreteScheduler, sample: torch.Tensor | None = None) -> torch.Tensor:
    """Run the rest of the current loop (from the step index, begin index or start) on a fixed sample."""
    start = s.step_index if s.step_index is not None else (s.begin_index or 0)
    if s.step_index is None:
        s.set_begin_index(start)  # as pipelines do: clamped timesteps may repeat (diffusers' lookup quirk)
    if sample is None:
        sample = torch.linspace(-1, 1, 6, dtype=torch.float32).reshape(2, 3) * s.init_noise_sigma
    generator = torch.Generator().manual_seed(0)
    for t in s.timesteps[start:]:
        model_input = s.scale_model_input(sample, t)
        sample = s.step(stand_in_model(model_input, t), t, sample, generator=generator).prev_sample
    return sample


def prepare(s: KDPM2DiscreteScheduler, steps: int) -> None:
    """``s.set_timesteps(steps)``; a draw whose given sigma bound crosses the schedule's (defect 5) is skipped.

    ``ks.schedules`` may draw a ``sigma_max`` below the end of a short trailing schedule: a valid
    refusal, not something to fuzz from.
    """
    try:
        s.set_timesteps(steps)
    except ValueError as error:
        if "sigma_min must be smaller than sigma_max" not in str(error):
            raise
        reject()


def advance(s: KDPM2DiscreteScheduler, calls: int) -> None:
    """Run the first ``calls`` calls of the loop (the same inputs for every scheduler)."""
    sample = torch.linspace(-1, 1, 6, dtype=torch.float32).reshape(2, 3) * s.init_noise_sigma
    generator = torch.Generator().manual_seed(1)
    s.set_begin_index(0)
    for t in s.timesteps[:calls]:
        sample = s.step(stand_in_model(s.scale_model_input(sample, t), t), t, sample, generator=generator).prev_sample


def assert_finite_tables(s: KDPM2DiscreteScheduler, call: str) -> None:
    """Every public table and ``init_noise_sigma`` is finite (meta tables have no values to check)."""
    for name in TABLES:
        table = getattr(s, name)
        assert table.is_meta or bool(torch.isfinite(table).all()), f"{call} left a non-finite {name}: {table}"
    assert math.isfinite(float(s.init_noise_sigma)), f"{call} gave init_noise_sigma {s.init_noise_sigma}"


def assert_finite(outputs: Iterable[torch.Tensor], call: str) -> None:
    for out in outputs:
        assert out.is_meta or bool(torch.isfinite(out).all()), f"{call} returned non-finite values: {out}"


def assert_names_argument(error: BaseException, names: Iterable[str], call: str) -> None:
    """The error is a ValueError/TypeError whose message names one of ``names``."""
    names = list(names)
    assert isinstance(error, (ValueError, TypeError)), f"{call} raised {type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), f"{call}: the message {str(error)!r} names none of {names}"


def call_and_check(
    function: Callable[..., Any], kwargs: dict[str, Any], names: Iterable[str], call: str
) -> tuple[Any, BaseException | None]:
    """Call ``function(**kwargs)``; returns ``(result, None)`` or ``(None, error)`` with the error checked.

    Any other exception than a ValueError/TypeError naming an argument fails the test; the
    arguments must be unchanged either way.
    """
    before = {name: snapshot(value) for name, value in kwargs.items()}
    try:
        result = function(**kwargs)
    except Exception as error:  # the check below turns anything unexpected into a failure
        assert_names_argument(error, names, call)
        assert_unchanged(before, kwargs, call)
        return None, error
    assert_unchanged(before, kwargs, call)
    return result, None


def describe(name: str, kwargs: dict[str, Any]) -> str:
    """``name(k=v, ...)`` with short reprs, for assertion messages."""
    from kdpm2.validation import show

    return f"{name}({', '.join(f'{k}={show(v, 40)}' for k, v in kwargs.items())})"

"""The invariants of a KDPM2 scheduler, one executable check each.

Every check takes a scheduler on which ``set_timesteps`` has run (and an ``Adapter`` for
its arrays) and raises ``AssertionError`` with a message naming the broken relation. They hold
for the reference model and for any correct implementation of diffusers' API.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdpm2_spec.adapter import Adapter, NumpyAdapter
from kdpm2_spec.gaussian import Gaussian, convergence_order
from kdpm2_spec.reference import model_output_for

NUMPY = NumpyAdapter()

RTOL = 1e-9
"""Relative tolerance of the float64 relations below (rounding, not approximation)."""


FLOAT32_RTOL = 1e-6
"""Relative tolerance of the same relations on float32 tables (diffusers' public ``sigmas``)."""


def table_rtol(sched: Any) -> float:
    """``RTOL``, or ``FLOAT32_RTOL`` when the scheduler keeps its public tables in float32."""
    return FLOAT32_RTOL if str(getattr(sched.sigmas, "dtype", "float64")).endswith("float32") else RTOL


def _tables(sched: Any, adapter: Adapter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return adapter.array(sched.sigmas), adapter.array(sched.sigmas_interpol), adapter.array(sched.timesteps)


def _call_sigma(sigmas: np.ndarray, interpol: np.ndarray, k: int, first_order: bool) -> float:
    """The noise level at which the model is evaluated in call ``k``."""
    return float(sigmas[k] if first_order else interpol[k])


def _start_at_first_call(sched: Any, adapter: Adapter) -> None:
    """Make a loop start at call 0: ``set_begin_index(0)`` when the first timestep repeats.

    Without a begin index the first call looks its timestep up, and ``index_for_timestep`` picks
    the *second* match of a repeated timestep (diffusers' image-to-image rule): sigmas above the
    training range all map to timestep ``T - 1``, and the loop would skip its first calls.
    """
    values = adapter.array(sched.timesteps)
    if np.count_nonzero(values == values[0]) > 1:
        sched.set_begin_index(0)


def check_tables_finite(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``sigmas``, ``sigmas_interpol`` and ``timesteps`` hold no NaN or infinity (not even unread entries)."""
    for name, table in zip(("sigmas", "sigmas_interpol", "timesteps"), _tables(sched, adapter), strict=True):
        bad = np.flatnonzero(~np.isfinite(table))
        assert len(bad) == 0, f"{name}[{bad[0] if len(bad) else 0}]={table[bad[:1]]} is not finite"


def check_sigmas_decreasing(sched: Any, adapter: Adapter = NUMPY) -> None:
    """Main sigmas are positive and strictly decreasing before the final value (0 or more)."""
    sigmas, _, _ = _tables(sched, adapter)
    main = np.append(sigmas[0], sigmas[1:-2:2])
    assert np.all(main[:-1] > 0), f"sigmas must be positive before the last, got {main}"
    assert np.all(np.diff(main) < 0), f"main sigmas must strictly decrease, got {main}"
    assert main[-1] >= 0, f"final sigma must not be negative, got {main[-1]}"


def check_interleaved_layout(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``sigmas`` is ``[s_0, s_1, s_1, ..., s_n, s_n, s_n]`` and ``timesteps`` has one entry per call.

    That is ``2n + 2`` sigmas and ``2n - 1`` timesteps (``2n`` when the final sigma is not 0);
    ``sigmas_interpol`` has the same length; the first timestep is the largest.
    """
    sigmas, interpol, timesteps = _tables(sched, adapter)
    n = len(sigmas) // 2 - 1
    calls = 2 * n - 1 if sigmas[-1] == 0 else 2 * n
    assert len(sigmas) == 2 * n + 2 and n >= 1, f"len(sigmas)={len(sigmas)} must be 2n + 2"
    assert len(interpol) == len(sigmas), f"len(sigmas_interpol)={len(interpol)} != len(sigmas)={len(sigmas)}"
    assert len(timesteps) == calls, f"len(timesteps)={len(timesteps)}, but {calls} calls for n={n}"
    assert sigmas[-1] == sigmas[-2] == sigmas[-3], f"last three sigmas must repeat the final one: {sigmas[-3:]}"
    assert np.all(sigmas[2:-2:2] >= sigmas[1:-3:2]), "a step's first sigma must not be below the last target"
    assert np.array_equal(interpol[1:-1:2], interpol[2::2]), f"midpoints must come in pairs: {interpol}"
    assert timesteps[0] == timesteps.max(), f"timesteps[0]={timesteps[0]} must be the largest"


ROUNDING_RISE = 0.5
"""How far a timestep may exceed the one before it when the main Karras timesteps are rounded."""


def rounds_timesteps(config: Any) -> bool:
    """True when ``config`` rounds the main Karras timesteps (``round_karras_timesteps``, diffusers)."""
    return bool(config.get("use_karras_sigmas")) and bool(config.get("round_karras_timesteps"))


def check_timesteps_range(sched: Any, adapter: Adapter = NUMPY, num_train_timesteps: int = 1000) -> None:
    """Timesteps lie in ``[0, num_train_timesteps - 1]`` and never increase (beyond rounding).

    The unrounded timesteps, ``sigma_to_t`` of each call's sigma, never increase since the sigmas
    do not. ``round_karras_timesteps=True`` is diffusers' schedule: it rounds the main Karras
    timesteps to integers and leaves the midpoints fractional. Rounding moves each main timestep
    by at most 0.5, so there a timestep may exceed the one before it, by less than
    ``ROUNDING_RISE`` (``[..., 1, 0.97, 1, 0.33, 0]`` at 50 steps; ``[0, 0.2475, 0]`` at the
    end of a 34-step schedule whose last main timestep rounds down to 0). That is the spec's
    statement of this option: rises below 0.5 are rounding, any other rise is a defect.
    """
    _, _, timesteps = _tables(sched, adapter)
    assert np.all(timesteps >= 0), f"negative timestep in {timesteps}"
    assert np.all(timesteps <= num_train_timesteps - 1), f"timestep above {num_train_timesteps - 1} in {timesteps}"
    rise = np.diff(timesteps)
    rounded = rounds_timesteps(getattr(sched, "config", {}))
    rises = np.flatnonzero(rise >= ROUNDING_RISE if rounded else rise > 0)
    assert len(rises) == 0, (
        f"timesteps increase{' by 0.5 or more' if rounded else ''} at {rises.tolist()}: "
        f"{timesteps[rises[:1][0] : rises[:1][0] + 2] if len(rises) else ''}"
    )


def check_midpoints_geometric(sched: Any, adapter: Adapter = NUMPY) -> None:
    """Each midpoint sigma is the geometric mean of the sigmas it lies between."""
    sigmas, interpol, _ = _tables(sched, adapter)
    n = len(sigmas) // 2 - 1
    start, end = sigmas[0 : 2 * n : 2], sigmas[1 : 2 * n : 2]
    expected = np.sqrt(start * end)
    got = interpol[1 : 2 * n : 2]
    rtol = table_rtol(sched)
    assert np.allclose(got, expected, rtol=rtol, atol=0), f"midpoints {got} != sqrt(s_i * s_(i+1)) {expected}"


def check_index_for_timestep(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``index_for_timestep`` gives the first match, the second when repeated, and raises if absent."""
    timesteps = sched.timesteps
    values = adapter.array(timesteps)
    for k in range(len(values)):
        matches = np.flatnonzero(values == values[k])
        expected = int(matches[1] if len(matches) > 1 else matches[0])
        got = sched.index_for_timestep(timesteps[k])
        assert got == expected, f"index_for_timestep(timesteps[{k}]={values[k]}) = {got}, but should be {expected}"
    absent = float(values.max()) + 0.5
    try:
        sched.index_for_timestep(adapter.tensor(np.array(absent)))
    except (ValueError, LookupError):
        return
    raise AssertionError(f"index_for_timestep({absent}) must raise for a timestep not in the schedule")


def check_scale_model_input(sched: Any, adapter: Adapter = NUMPY, shape: tuple[int, ...] = (2, 3)) -> None:
    """``scale_model_input`` divides by ``sqrt(sigma^2 + 1)`` of the call's sigma, over a whole loop."""
    sigmas, interpol, _ = _tables(sched, adapter)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    sample = adapter.tensor(x)
    _start_at_first_call(sched, adapter)
    for k, t in enumerate(sched.timesteps):
        first = bool(sched.state_in_first_order)
        sigma = _call_sigma(sigmas, interpol, k, first)
        got = adapter.array(sched.scale_model_input(sample, t))
        want = x / math.sqrt(sigma**2 + 1)
        assert np.allclose(got, want, rtol=1e-6, atol=0), f"scale_model_input at call {k}: {got} != {want}"
        sched.step(adapter.tensor(np.zeros(shape)), t, sample)


def check_step_alternates(sched: Any, adapter: Adapter = NUMPY, shape: tuple[int, ...] = (2, 3)) -> None:
    """``step`` alternates first and second order (Euler last) and advances ``step_index`` by one."""
    sample = adapter.tensor(np.ones(shape))
    sigmas = adapter.array(sched.sigmas)
    n = len(sigmas) // 2 - 1
    _start_at_first_call(sched, adapter)
    for k, t in enumerate(sched.timesteps):
        sched.scale_model_input(sample, t)
        assert sched.step_index == k, f"step_index={sched.step_index} before call {k}"
        assert bool(sched.state_in_first_order) == (k % 2 == 0), (
            f"call {k} must be {'first' if k % 2 == 0 else 'second'} order"
        )
        sample = sched.step(adapter.tensor(np.zeros(shape)), t, sample).prev_sample
        assert sched.step_index == k + 1, f"step_index={sched.step_index} after call {k}, should be {k + 1}"
    assert len(sched.timesteps) in (2 * n - 1, 2 * n)


def check_exact_denoiser(
    sched: Any,
    adapter: Adapter = NUMPY,
    begin_index: int = 0,
    prediction_type: str = "epsilon",
    rtol: float | None = None,
    exact_tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """With the exact denoiser of one point ``x0``, sampling from ``add_noise(x0, noise, t_k)`` lands
    on ``x0 + s_(i+1) * noise`` after every full step and on ``x0`` after the last.

    This ties ``add_noise``, the tables, every prediction type and both orders of ``step``.
    ``rtol`` defaults to ``table_rtol`` (the sigmas read back are the public tables).
    ``exact_tables`` (float64 ``sigmas`` and ``sigmas_interpol``, the reference's) make the denoiser
    exact for the true noise levels rather than for float32 public tables: a second-order call
    amplifies a relative error ``e`` of the denoiser's sigma by ``s_i / m_i`` (1800 from
    ``s_0 = 20291`` to ``m_0 = 11.4`` with ``squaredcos_cap_v2`` at 2 steps), which float32 tables
    turn into a failure of a correct float64 implementation.
    """
    rtol = table_rtol(sched) if rtol is None else rtol
    sigmas, interpol, values = _tables(sched, adapter)
    if exact_tables is not None:
        sigmas, interpol = (np.asarray(table, dtype=np.float64) for table in exact_tables)
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    sched.set_begin_index(begin_index)
    timesteps = sched.timesteps
    sample = adapter.tensor(np.zeros_like(x0))
    noisy = sched.add_noise(adapter.tensor(x0), adapter.tensor(noise), timesteps[begin_index : begin_index + 1])
    x = adapter.array(noisy)
    want = x0 + sigmas[begin_index] * noise
    assert np.allclose(x, want, rtol=rtol, atol=rtol), f"add_noise at call {begin_index}: {x} != {want}"
    sample = noisy
    for k in range(begin_index, len(values)):
        t = timesteps[k]
        first = bool(sched.state_in_first_order)
        sigma = _call_sigma(sigmas, interpol, k, first)
        output = model_output_for(x0, adapter.array(sample), sigma, prediction_type)
        sample = sched.step(adapter.tensor(output), t, sample).prev_sample
        if not first or interpol[k + 1] == 0:
            x = adapter.array(sample)
            target = x0 + sigmas[k + 1 if first else k] * noise
            scale = 1 + np.abs(target) + sigmas[begin_index] * np.abs(noise)  # rounding is relative to operands
            assert np.all(np.abs(x - target) <= rtol * scale), f"after call {k}: {x} != x0 + sigma * noise {target}"
    final = np.abs(adapter.array(sample) - x0 - sigmas[-1] * noise)
    assert np.all(final <= rtol * (1 + np.abs(x0) + sigmas[begin_index] * np.abs(noise))), (
        f"final sample off by {final}"
    )


def gaussian_error(sched: Any, adapter: Adapter, data: Gaussian, x_start: np.ndarray) -> float:
    """Max error, at the final sigma, of a sampling loop with the exact Gaussian denoiser."""
    sigmas, interpol, _ = _tables(sched, adapter)
    sample = adapter.tensor(x_start)
    _start_at_first_call(sched, adapter)
    for k, t in enumerate(sched.timesteps):
        first = bool(sched.state_in_first_order)
        sigma = _call_sigma(sigmas, interpol, k, first)
        x = adapter.array(sample)
        output = model_output_for(data.denoise(x, sigma), x, sigma, sched.config["prediction_type"])
        sample = sched.step(adapter.tensor(output), t, sample).prev_sample
    exact = data.ode_solution(x_start, float(sigmas[0]), float(sigmas[-1]))
    return float(np.max(np.abs(adapter.array(sample) - exact)))


def check_convergence_order(
    make: Any, adapter: Adapter = NUMPY, step_counts: tuple[int, ...] = (8, 16, 32, 64), sigma_max: float = 10.0
) -> float:
    """DPM-2 is second order: the fitted slope of log error against log step count is within 0.25 of 2.

    ``make()`` returns a fresh scheduler; it is run on Karras sigmas from ``sigma_max`` down to a
    final sigma of 0.1 (every step a DPM-2 step) with the exact denoiser of a Gaussian.
    """
    from kdpm2_spec.schedule import karras_sigmas

    data = Gaussian()
    x_start = np.linspace(-3, 3, 7) * sigma_max
    errors = []
    for n in step_counts:
        sched = make()
        sched.set_timesteps(sigmas=karras_sigmas(n + 1, 0.1, sigma_max).tolist())
        errors.append(gaussian_error(sched, adapter, data, x_start))
    order = convergence_order(np.array(step_counts), np.array(errors))
    assert abs(order - 2) <= 0.25, f"convergence order {order:.3f} (errors {errors}) is not 2 +- 0.25"
    return order


def check_plain_loop(sched: Any, adapter: Adapter = NUMPY, shape: tuple[int, ...] = (2, 3)) -> None:
    """A plain loop over ``timesteps`` visits every call in order, with or without a begin index, and from mid-schedule.

    Run on copies of ``sched``: ``for t in timesteps`` without a begin index and after
    ``set_begin_index(0)``; and image to image as pipelines do it, ``set_begin_index(s)`` then a
    loop over ``timesteps[s:]`` from a step start ``s`` half-way, also without the begin index
    when ``timesteps[s]`` is unique. Call ``k`` must find ``step_index == k`` before ``step`` and
    ``k + 1`` after, even where the first timesteps repeat (sigmas above the training range).
    """
    import copy

    from kdpm2_spec.reference import Reference

    calls = len(adapter.array(sched.timesteps))
    values = adapter.array(sched.timesteps)
    middle = 2 * (calls // 4)
    runs: list[tuple[int, int | None]] = [(0, None), (0, 0)]
    if middle > 0:
        runs.append((middle, middle))
        if np.count_nonzero(values == values[middle]) == 1:
            runs.append((middle, None))
    for start, begin in runs:
        s = copy.deepcopy(sched)
        if begin is not None:
            s.set_begin_index(begin)
        where = f"loop over timesteps[{start}:]" + ("" if begin is None else f" after set_begin_index({begin})")
        sample = adapter.tensor(np.ones(shape))
        for k, t in enumerate(s.timesteps[start:], start):
            s.scale_model_input(sample, t)
            assert s.step_index == k, f"call {k} of {calls}: step_index={s.step_index} [{where}]"
            extra = {"noise": np.zeros(shape)} if isinstance(s, Reference) else {}
            sample = s.step(adapter.tensor(np.zeros(shape)), t, sample, **extra).prev_sample
            assert s.step_index == k + 1, f"after call {k}: step_index={s.step_index}, should be {k + 1} [{where}]"

"""The invariants of a KDPM2 scheduler, one executable check each.

Every check takes a scheduler on which ``set_timesteps`` has run (and an ``Adapter`` for
its arrays) and raises ``Discrepancy`` (an ``AssertionError``) with a message naming the broken
relation and the entries around the one that breaks it, and a finding that names the table and
the kind of break (see ``kdpm2_spec.discrepancy``). They hold for the reference model and for any
correct implementation of diffusers' API.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdpm2_spec.adapter import Adapter, NumpyAdapter
from kdpm2_spec.discrepancy import Discrepancy, call_order, excerpt, first_or_rest
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
    found = []
    for name, table in zip(("sigmas", "sigmas_interpol", "timesteps"), _tables(sched, adapter), strict=True):
        bad = np.flatnonzero(~np.isfinite(table))
        if len(bad):
            where = call_order if name == "timesteps" else first_or_rest
            kinds = " and ".join(sorted({where(int(i)) for i in bad}))
            i = int(bad[0])
            found.append(
                Discrepancy.one(
                    name, f"not finite at {kinds}", f"{name}[{i}]={table[i]!r} is not finite: {excerpt(table, i)}"
                )
            )
    if found:
        raise Discrepancy.merge(found)


def check_sigmas_decreasing(sched: Any, adapter: Adapter = NUMPY) -> None:
    """Main sigmas are positive and strictly decreasing before the final value (0 or more)."""
    sigmas, _, _ = _tables(sched, adapter)
    main = np.append(sigmas[0], sigmas[1:-2:2])
    bad = np.flatnonzero(~(main[:-1] > 0))
    if len(bad):
        i = int(bad[0])
        raise Discrepancy.one(
            "sigmas", "not positive", f"main sigma {i} must be positive before the last: {excerpt(main, i)}"
        )
    rise = np.flatnonzero(~(np.diff(main) < 0))
    if len(rise):
        i = int(rise[0]) + 1
        raise Discrepancy.one(
            "sigmas",
            "not decreasing",
            f"main sigmas must strictly decrease, but sigma {i} does not: {excerpt(main, i)}",
        )
    if not main[-1] >= 0:
        raise Discrepancy.one("sigmas", "negative final sigma", f"final sigma must not be negative, got {main[-1]!r}")


def check_interleaved_layout(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``sigmas`` is ``[s_0, s_1, s_1, ..., s_n, s_n, s_n]`` and ``timesteps`` has one entry per call.

    That is ``2n + 2`` sigmas and ``2n - 1`` timesteps (``2n`` when the final sigma is not 0);
    ``sigmas_interpol`` has the same length; the first timestep is the largest.
    """
    sigmas, interpol, timesteps = _tables(sched, adapter)
    n = len(sigmas) // 2 - 1
    calls = 2 * n - 1 if sigmas[-1] == 0 else 2 * n

    def fail(what: str, kind: str, message: str) -> Discrepancy:
        return Discrepancy.one(what, kind, message)

    if not (len(sigmas) == 2 * n + 2 and n >= 1):
        raise fail("sigmas", "length not 2n + 2", f"len(sigmas)={len(sigmas)} must be 2n + 2")
    if len(interpol) != len(sigmas):
        raise fail("sigmas_interpol", "length", f"len(sigmas_interpol)={len(interpol)} != len(sigmas)={len(sigmas)}")
    if len(timesteps) != calls:
        raise fail("timesteps", "not one per call", f"len(timesteps)={len(timesteps)}, but {calls} calls for n={n}")
    if not sigmas[-1] == sigmas[-2] == sigmas[-3]:
        raise fail("sigmas", "last three differ", f"last three sigmas must repeat the final one: {sigmas[-3:]}")
    low = np.flatnonzero(~(sigmas[2:-2:2] >= sigmas[1:-3:2]))
    if len(low):
        i = 2 * int(low[0]) + 2
        raise fail(
            "sigmas",
            "first sigma of a step below the last target",
            f"sigmas[{i}] < sigmas[{i - 1}]: {excerpt(sigmas, i)}",
        )
    pairs = np.flatnonzero(interpol[1:-1:2] != interpol[2::2])
    if len(pairs):
        i = 2 * int(pairs[0]) + 1
        raise fail("sigmas_interpol", "midpoints not in pairs", f"midpoints must come in pairs: {excerpt(interpol, i)}")
    if timesteps[0] != timesteps.max():
        i = int(np.argmax(timesteps))
        raise fail(
            "timesteps",
            "first not the largest",
            f"timesteps[0]={timesteps[0]!r} must be the largest: {excerpt(timesteps, i)}",
        )


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
    found = []
    below = np.flatnonzero(~(timesteps >= 0))
    if len(below):
        i = int(below[0])
        found.append(
            Discrepancy.one(
                "timesteps", "below 0", f"timesteps[{i}]={timesteps[i]!r} is negative: {excerpt(timesteps, i)}"
            )
        )
    above = np.flatnonzero(timesteps > num_train_timesteps - 1)
    if len(above):
        i = int(above[0])
        found.append(
            Discrepancy.one(
                "timesteps",
                "above T - 1",
                f"timesteps[{i}]={timesteps[i]!r} is above {num_train_timesteps - 1}: {excerpt(timesteps, i)}",
            )
        )
    rise = np.diff(timesteps)
    rounded = rounds_timesteps(getattr(sched, "config", {}))
    rises = np.flatnonzero(rise >= ROUNDING_RISE if rounded else rise > 0)
    if len(rises):
        i = int(rises[0])
        small = bool(np.all(rise[rises] < ROUNDING_RISE))
        found.append(
            Discrepancy.one(
                "timesteps",
                "rise by less than 0.5" if small else "rise by 0.5 or more",
                f"timesteps increase{' by 0.5 or more' if rounded else ''} at {rises[:8].tolist()}"
                f"{' ...' if len(rises) > 8 else ''}: timesteps[{i + 1}]={timesteps[i + 1]!r} > "
                f"timesteps[{i}]={timesteps[i]!r}: {excerpt(timesteps, i + 1)}",
            )
        )
    if found:
        raise Discrepancy.merge(found)


def check_midpoints_geometric(sched: Any, adapter: Adapter = NUMPY) -> None:
    """Each midpoint sigma is the geometric mean of the sigmas it lies between."""
    sigmas, interpol, _ = _tables(sched, adapter)
    n = len(sigmas) // 2 - 1
    start, end = sigmas[0 : 2 * n : 2], sigmas[1 : 2 * n : 2]
    expected = np.sqrt(start * end)
    got = interpol[1 : 2 * n : 2]
    rtol = table_rtol(sched)
    bad = np.flatnonzero(~np.isclose(got, expected, rtol=rtol, atol=0))
    if len(bad):
        i = int(bad[0])
        raise Discrepancy.one(
            "sigmas_interpol",
            "midpoint not the geometric mean",
            f"midpoint {i + 1} is {got[i]!r}, but sqrt(s_{i} * s_{i + 1}) = {expected[i]!r} (rtol {rtol:g}): "
            f"{excerpt(got, i)}",
        )


def check_index_for_timestep(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``index_for_timestep`` gives the first match, the second when repeated, and raises if absent."""
    timesteps = sched.timesteps
    values = adapter.array(timesteps)
    for k in range(len(values)):
        matches = np.flatnonzero(values == values[k])
        expected = int(matches[1] if len(matches) > 1 else matches[0])
        got = sched.index_for_timestep(timesteps[k])
        if got != expected:
            kind = "wrong index for a repeated timestep" if len(matches) > 1 else "wrong index"
            raise Discrepancy.one(
                "index_for_timestep",
                kind,
                f"index_for_timestep(timesteps[{k}]={values[k]!r}) = {got}, but should be {expected}: {excerpt(values, k)}",
            )
    absent = float(values.max()) + 0.5
    try:
        sched.index_for_timestep(adapter.tensor(np.array(absent)))
    except (ValueError, LookupError):
        return
    except Exception as error:
        raise Discrepancy.one(
            "index_for_timestep",
            f"raises {type(error).__name__} for an absent timestep",
            f"index_for_timestep({absent}) raised {type(error).__name__}: {error}, but should raise ValueError",
        ) from None
    raise Discrepancy.one(
        "index_for_timestep",
        "no error for an absent timestep",
        f"index_for_timestep({absent}) must raise for a timestep not in the schedule",
    )


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
        if not np.allclose(got, want, rtol=1e-6, atol=0):
            i = int(np.argmax(np.abs(got - want)))
            kind = "wrong value at " + ("first-order calls" if first else "second-order calls")
            raise Discrepancy.one(
                "model input",
                kind,
                f"scale_model_input at call {k}: {got.flat[i]!r}, but should be {want.flat[i]!r} = sample / sqrt({sigma!r}^2 + 1)",
            )
        sched.step(adapter.tensor(np.zeros(shape)), t, sample)


def check_step_alternates(sched: Any, adapter: Adapter = NUMPY, shape: tuple[int, ...] = (2, 3)) -> None:
    """``step`` alternates first and second order (Euler last) and advances ``step_index`` by one."""
    sample = adapter.tensor(np.ones(shape))
    sigmas = adapter.array(sched.sigmas)
    n = len(sigmas) // 2 - 1
    _start_at_first_call(sched, adapter)
    walk_calls(sched, adapter, sched.timesteps, 0, shape, sample)
    if len(sched.timesteps) not in (2 * n - 1, 2 * n):
        raise Discrepancy.one("timesteps", "not one per call", f"len(timesteps)={len(sched.timesteps)} for n={n}")


def walk_calls(sched: Any, adapter: Adapter, timesteps: Any, begin: int, shape: tuple[int, ...], sample: Any) -> None:
    """Call ``scale_model_input`` and ``step`` for each timestep from call ``begin``, checking the counters.

    Before each call ``k`` (after ``scale_model_input``), ``step_index`` is ``k`` and the call is
    first order when ``k - begin`` is even; after it, ``step_index`` is ``k + 1``.
    """
    for j, t in enumerate(timesteps):
        k = begin + j
        sched.scale_model_input(sample, t)
        if sched.step_index != k:
            raise Discrepancy.one("step_index", "wrong before a call", f"step_index={sched.step_index} before call {k}")
        first = j % 2 == 0
        if bool(sched.state_in_first_order) != first:
            raise Discrepancy.one(
                "state_in_first_order",
                "wrong order",
                f"call {k} must be {'first' if first else 'second'} order (begin {begin})",
            )
        sample = sched.step(adapter.tensor(np.zeros(shape)), t, sample).prev_sample
        if sched.step_index != k + 1:
            raise Discrepancy.one(
                "step_index", "not advanced by one", f"step_index={sched.step_index} after call {k}, should be {k + 1}"
            )


def check_exact_denoiser(
    sched: Any,
    adapter: Adapter = NUMPY,
    begin_index: int = 0,
    prediction_type: str = "epsilon",
    rtol: float | None = None,
    exact_tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """With the exact denoiser of one point ``x0``, sampling from ``add_noise(x0, noise, t_k)`` lands
    on ``x0 + s_(i+1) * noise`` after every full step and on ``x0`` after the last.

    This ties ``add_noise``, the tables, every prediction type and both orders of ``step``.
    ``rtol`` (relative to the operands ``1 + |x0| + s_k |noise|``) defaults to ``table_rtol`` (the
    sigmas read back are the public tables). Returns the largest error ratio met.
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
    noisy = sched.add_noise(adapter.tensor(x0), adapter.tensor(noise), timesteps[begin_index : begin_index + 1])
    x = adapter.array(noisy)
    operands = 1 + np.abs(x0) + sigmas[begin_index] * np.abs(noise)  # rounding is relative to operands
    worst = 0.0

    def land(what: str, kind: str, got: np.ndarray, want: np.ndarray, text: str) -> float:
        ratio = float(np.max(np.abs(got - want) / operands))
        if not ratio <= rtol:
            i = int(np.argmax(np.abs(got - want) / operands))
            raise Discrepancy.one(
                what,
                kind,
                f"{text}: {got.flat[i]!r}, but x0 + sigma * noise = {want.flat[i]!r} "
                f"(error {ratio:.3g} > {rtol:g} relative to the operands)",
            )
        return ratio

    worst = land(
        "add_noise", "not x0 + sigma * noise", x, x0 + sigmas[begin_index] * noise, f"add_noise at call {begin_index}"
    )
    sample = noisy
    for k in range(begin_index, len(values)):
        t = timesteps[k]
        first = bool(sched.state_in_first_order)
        sigma = _call_sigma(sigmas, interpol, k, first)
        output = model_output_for(x0, adapter.array(sample), sigma, prediction_type)
        sample = sched.step(adapter.tensor(output), t, sample).prev_sample
        if not first or interpol[k + 1] == 0:
            target = x0 + sigmas[k + 1 if first else k] * noise
            kind = "off x0 + sigma * noise after " + ("a last Euler call" if first else "a full step")
            worst = max(worst, land("prev_sample", kind, adapter.array(sample), target, f"after call {k}"))
    final = adapter.array(sample)
    return max(worst, land("prev_sample", "off x0 at the end", final, x0 + sigmas[-1] * noise, "final sample"))


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
    if not abs(order - 2) <= 0.25:
        raise Discrepancy.one(
            "convergence order", "not 2", f"convergence order {order:.3f} (errors {errors}) is not 2 +- 0.25"
        )
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

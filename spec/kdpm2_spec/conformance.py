"""The conformance suite: every invariant, and equivalence to ``Reference``, as Hypothesis properties.

``run(cls_or_adapter, profile="ci")`` checks a diffusers-style scheduler class and returns a
``Report``; ``python -m kdpm2_spec check MODULE:CLASS`` prints it. Each property:

1. draws a case (a NamedTuple from ``kdpm2_spec.strategies``) restricted to the constructor
   arguments the class accepts;
2. builds the class and the reference from the same arguments and drives both;
3. compares them, and raises a ``Discrepancy`` naming every kind of difference it found.

A case that needs a method or argument the class lacks (``set_begin_index``, custom ``sigmas``,
churn, a dtype other than float64...) is skipped as unsupported, and the property's other cases
still run; a property none of whose cases could run is reported ``unsupported``. A failure
carries its signatures, the shrunk case and a command that reproduces it.

This module holds the properties of the ``kdpm2`` family (``kdpm2_spec.registry``); the running,
expectations and levels are ``kdpm2_spec.runner``'s, re-exported here (``run``, ``check_one``,
``check_case``, the exit statuses).
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from hypothesis import reject

from kdpm2_spec import invariants, levels, schedule
from kdpm2_spec import strategies as ks
from kdpm2_spec.discrepancy import Discrepancy, call_order, compare, excerpt, first_or_rest
from kdpm2_spec.loops import amplification, built, call, run_loop, stand_in_model
from kdpm2_spec.reference import Reference
from kdpm2_spec.registry import FAMILIES, Property, Target, Unsupported, need, prop
from kdpm2_spec.report import EXIT_FAILED as EXIT_FAILED  # re-exported: the exit statuses of a run
from kdpm2_spec.report import EXIT_OK as EXIT_OK
from kdpm2_spec.report import EXIT_STALE as EXIT_STALE
from kdpm2_spec.report import EXIT_USAGE as EXIT_USAGE
from kdpm2_spec.report import Report, Result

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_STALE",
    "EXIT_USAGE",
    "INVARIANTS",
    "PROPERTIES",
    "Property",
    "Report",
    "Result",
    "Target",
    "Unsupported",
    "check_case",
    "check_one",
    "run",
    "run_loop",
    "stand_in_model",
]

TABLE_RTOL = 1e-6
"""Public tables compared at float32 precision (diffusers and kdpm2 both keep them in float32)."""

FLOAT32_RTOL = 1e-5
"""float32 loops with a well-conditioned model, relative to the largest value."""

PROPERTIES: dict[str, Property] = FAMILIES["kdpm2"].properties
"""Every property of the ``kdpm2`` family by name, in the order they run."""


def _close(call_text: str, what: str, ref: Any, got: Any, rtol: float, scale: float = 1.0) -> None:
    """``got`` equals ``ref`` within ``rtol`` of the largest of ``|ref|``, 1 and ``scale``; else a ``Discrepancy``."""
    found, _ = compare(what, ref, got, rtol, scale)
    if found:
        raise Discrepancy.merge(found, call_text)


# -- pinned cases -------------------------------------------------------------------------------

SCHEDULE_EXAMPLES = (
    ks.Schedule({"use_karras_sigmas": True}, 50),  # diffusers: a timestep repeats (#5746)
    ks.Schedule({"use_karras_sigmas": True}, 100),  # diffusers: several repeat and rise
    ks.Schedule({"timestep_spacing": "leading", "steps_offset": 1}, 25),
    ks.Schedule({"timestep_spacing": "trailing"}, 61),  # diffusers: 62 timesteps, the last -1
    ks.Schedule({}, 1),  # one inference step: a single Euler call
    ks.Schedule({"beta_schedule": "squaredcos_cap_v2"}, 25),  # sigma_max about 157
    ks.Schedule({"discard_penultimate_sigma": True}, 1),  # bug: the constructor raised
    ks.Schedule({}, 3),  # bug: set_begin_index(5) was accepted for 5 calls
    ks.Schedule(  # spec contradiction: rounded Karras timesteps rise by rounding (0 -> 0.2475 -> 0)
        {
            "beta_start": 0.000776,
            "prediction_type": "v_prediction",
            "steps_offset": 1,
            "use_karras_sigmas": True,
            "round_karras_timesteps": True,
            "sigma_max": 1.9,
        },
        34,
    ),
    # spec contradiction: at 2-3 steps the spaced end (trailing: t = T/n - 1) lies above sigma_max=1,
    # so the bounds cross and the request is invalid; 4 steps is the first valid count
    ks.Schedule({"timestep_spacing": "trailing", "use_exponential_sigmas": True, "sigma_max": 1.0}, 4),
    ks.Schedule({"timestep_spacing": "trailing"}, 25),  # trailing without diffusers' extra step
    ks.Schedule({"prediction_type": "v_prediction", "use_exponential_sigmas": True}, 10),
    ks.Schedule({"use_beta_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}, 12),
)
"""Pinned schedules: diffusers' known edge cases, the bugs this suite found, and one of each family."""

REPEATED_BEGIN = (
    # the begin index must win over the lookup: with diffusers' rounded Karras timesteps, call 94 of 50
    # steps has timestep 1.0, as call 96 has, and a lookup would pick call 96
    ks.Resume({"use_karras_sigmas": True}, 50, 47),
    ks.Resume({"use_karras_sigmas": True, "round_karras_timesteps": True}, 50, 47),
)
"""Pinned resumptions at a timestep that repeats (for the implementations that repeat it)."""

LOOP_EXAMPLES = (
    *(ks.Loop(s.config, s.steps, None, 0.1, 0, (2, 3)) for s in SCHEDULE_EXAMPLES),
    ks.Loop({"beta_schedule": "squaredcos_cap_v2", "discard_penultimate_sigma": True}, 1, None, 0.0, 0, (2, 3)),
    ks.Loop({"use_exponential_sigmas": True, "sigma_max": 20.0}, 7, None, 0.0, 0, (2, 3)),  # repeated first timestep
    ks.Loop({"use_karras_sigmas": True}, 50, 10, 0.1, 0, (2, 3)),  # image to image
    # spec contradiction: the exact denoiser built from float32 tables is off by 1800 float32 ulps
    # after s_0 = 20291 -> m_0 = 11.4; it now uses the reference's float64 sigmas
    ks.Loop({"beta_schedule": "squaredcos_cap_v2"}, 2, 0, 0.0, 0, (2, 3)),
    ks.Loop({"prediction_type": "v_prediction", "timestep_spacing": "leading"}, 20, 4, 0.5, 3, (2, 3)),
    *(ks.Loop(r.config, r.steps, r.begin, 0.1, 0, (2, 3)) for r in REPEATED_BEGIN),
)
"""Pinned loops: the schedules above, plus cancellation at sigma 157, a skipped first call, image to image."""


# -- the invariants, one property each ------------------------------------------------------------

INVARIANTS = {
    "tables_finite": invariants.check_tables_finite,
    "sigmas_decreasing": invariants.check_sigmas_decreasing,
    "interleaved_layout": invariants.check_interleaved_layout,
    "timesteps_range": lambda sched, adapter: invariants.check_timesteps_range(
        sched, adapter, int(sched.config["num_train_timesteps"])
    ),
    "midpoints_geometric": invariants.check_midpoints_geometric,
    "index_for_timestep": invariants.check_index_for_timestep,
    "scale_model_input": invariants.check_scale_model_input,
    "step_alternates": invariants.check_step_alternates,
}
"""The spec invariants checked on a scheduler after ``set_timesteps``, one property each (run in this order)."""

INVARIANT_NEEDS = {
    "index_for_timestep": ("index_for_timestep",),
    "scale_model_input": ("sigmas_interpol", "state_in_first_order"),
    "step_alternates": ("step_index", "state_in_first_order"),
    "midpoints_geometric": ("sigmas_interpol",),
    "interleaved_layout": ("sigmas_interpol",),
    "tables_finite": ("sigmas_interpol",),
}
"""Attributes an invariant reads besides ``timesteps`` and ``sigmas`` (a class without one: unsupported)."""


STEPPING_INVARIANTS = ("step_alternates",)
"""The invariants that call ``step`` (a low-precision run checks them within the dtype's range only)."""


def within_dtype_range(target: Target, config: dict[str, Any], steps: int) -> None:
    """Leave out (Hypothesis ``reject``) a case whose sigmas a low-precision run's dtype cannot hold.

    In float16, a schedule with sigmas beyond ``LARGEST / RANGE_MARGIN`` (``squaredcos_cap_v2``
    starts at 20291) overflows with Gaussian data: an implementation may refuse such calls, naming
    the dtype (kdpm2 does), or return what the dtype holds. Loops and step sequences are checked
    within the range; ``low_precision_step`` checks single calls beyond it (``refusable``).
    """
    dtype = str(getattr(target.adapter, "dtype_name", "float64"))
    if dtype not in LARGEST or dtype == "float64":
        return
    ref = Reference(**config)
    ref.set_timesteps(steps)
    level = max(np.abs(ref.sigmas).max(), np.abs(ref.sigmas_interpol).max())
    if level > LARGEST[dtype] / RANGE_MARGIN:
        reject()


def _invariant(name: str) -> None:
    check = INVARIANTS[name]

    def run_check(target: Target, case: ks.Schedule) -> None:
        if name in STEPPING_INVARIANTS:
            within_dtype_range(target, case.config, case.steps)
        impl = call("constructor", target.create, case.config)
        call("set_timesteps", impl.set_timesteps, case.steps)
        for attribute in ("timesteps", "sigmas", *INVARIANT_NEEDS.get(name, ())):
            need(impl, attribute)
        if not hasattr(impl, "set_begin_index") and name in ("scale_model_input", "step_alternates"):
            values = target.adapter.array(impl.timesteps)
            if np.count_nonzero(values == values[0]) > 1:
                raise Unsupported("the scheduler has no set_begin_index (needed when the first timestep repeats)")
        where = f"{target.name}(**{case.config!r}).set_timesteps({case.steps})"
        try:
            check(impl, target.adapter)
        except Discrepancy as error:
            raise Discrepancy(f"{error} [{where}]", error.findings) from None
        except AssertionError as error:
            raise AssertionError(f"{error} [{where}]") from None

    doc = getattr(invariants, f"check_{name}").__doc__ or name
    strategy = lambda target: ks.schedules(target.args, churn=False)  # noqa: E731 - churn lifts timesteps
    PROPERTIES[name] = Property(
        name, " ".join(doc.strip().splitlines()[0].split()), strategy, run_check, SCHEDULE_EXAMPLES
    )


for _name in INVARIANTS:
    _invariant(_name)


# -- more of the scheduler's contract -------------------------------------------------------------


@prop(
    lambda target: ks.resumes(target.args, churn=False),
    (*REPEATED_BEGIN, *(ks.Resume(s.config, s.steps, s.steps // 2) for s in SCHEDULE_EXAMPLES[:6])),
)
def step_alternates_from_begin(target: Target, case: ks.Resume) -> None:
    """After ``set_begin_index(2i)``, ``step`` alternates first and second order from call ``2i`` on, one index a call."""
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.steps)
    need(impl, "set_begin_index")
    need(impl, "state_in_first_order")
    need(impl, "step_index")
    calls = len(impl.timesteps)
    begin = min(2 * case.begin, calls - 1)
    call("set_begin_index", impl.set_begin_index, begin)
    where = f"{target.name}(**{case.config!r}).set_timesteps({case.steps}); set_begin_index({begin})"
    try:
        invariants.walk_calls(
            impl, target.adapter, impl.timesteps[begin:], begin, (2, 3), target.adapter.tensor(np.ones((2, 3)))
        )
    except Discrepancy as error:
        raise Discrepancy(f"{error} [{where}]", error.findings) from None


TIMESTEP_ATOL = 1e-3
"""How far an unrounded timestep may lie from ``sigma_to_t`` of its call's sigma, besides the
timesteps of the sigma's float32 rounding (``SIGMA_RTOL``): float32 rounding of ``t`` itself."""

SIGMA_RTOL = 4e-7
"""A public float32 sigma is the call's sigma within a few float32 ulps (2^-24 = 6e-8 each)."""


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def timestep_of_sigma(target: Target, case: ks.Schedule) -> None:
    """Each call's timestep is the timestep of that call's sigma, both ways round (within 0.5 where it is an integer).

    A main timestep of the spaced schedule maps to its sigma by the configured interpolation
    (``t_to_sigma``); a midpoint's, or a sigma family's, is ``sigma_to_t`` of its sigma. Either
    relation holding is enough; rounding to an integer (diffusers' Karras timesteps, ComfyUI's
    quantized ones) may move a timestep by 0.5.
    """
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.steps)
    a = target.adapter
    sigmas = a.array(need(impl, "sigmas"))
    interpol = a.array(need(impl, "sigmas_interpol"))
    timesteps = a.array(need(impl, "timesteps"))
    calls = min(len(timesteps), len(sigmas) - 2)
    ref = Reference(**case.config)
    call_sigmas = np.array([sigmas[k] if k % 2 == 0 else interpol[k] for k in range(calls)])
    got = timesteps[:calls]
    finite = np.isfinite(call_sigmas) & (call_sigmas > 0) & np.isfinite(got)
    want = np.full(calls, np.nan)
    want[finite] = ref.sigma_to_t(call_sigmas[finite])
    # a public float32 sigma is the call's sigma to a few float32 ulps: the timesteps of that interval
    spread = np.zeros(calls)
    spread[finite] = np.abs(
        ref.sigma_to_t(call_sigmas[finite] * (1 + SIGMA_RTOL)) - ref.sigma_to_t(call_sigmas[finite] * (1 - SIGMA_RTOL))
    )
    allowed = spread + np.where(got == np.round(got), 0.5 + TIMESTEP_ATOL, TIMESTEP_ATOL)
    back = np.full(calls, np.nan)
    inside = finite & (got >= 0) & (got <= len(ref.train_sigmas) - 1)
    back[inside] = schedule.t_to_sigma(got[inside], ref.train_sigmas, ref.config["sigma_interpolation"])
    forward = np.abs(got - want) <= allowed
    backward = np.abs(back - call_sigmas) <= SIGMA_RTOL * np.abs(call_sigmas)
    bad = np.flatnonzero(finite & ~forward & ~backward)
    if len(bad):
        i = int(bad[0])
        raise Discrepancy.one(
            "timesteps",
            "not the timestep of the call's sigma at " + " and ".join(sorted({call_order(int(k)) for k in bad})),
            f"timesteps[{i}]={got[i]!r}, but the call's sigma {call_sigmas[i]!r} has timestep {want[i]!r} "
            f"(allowed {allowed[i]:g}; the timestep's sigma is {back[i]!r}): {excerpt(got, i)} "
            f"[{target.name}(**{case.config!r}).set_timesteps({case.steps})]",
        )


@prop(
    lambda target: ks.loops(target.args, churn=False).filter(lambda c: c.begin is not None),
    (
        *(c._replace(begin=c.steps // 2) for c in LOOP_EXAMPLES[:8]),
        *(ks.Loop(r.config, r.steps, r.begin, 0.1, 0, (2, 3)) for r in REPEATED_BEGIN),
        # diffusers: sigma differences taken in float32 (about 2e4 here) move a float64 loop off x0 + s * noise
        ks.Loop(
            {"beta_schedule": "squaredcos_cap_v2", "steps_offset": 1, "use_beta_sigmas": True}, 5, 0, 0.1, 13914, (2, 3)
        ),
    ),
)
def exact_denoiser(target: Target, case: ks.Loop) -> None:
    """With the exact denoiser of one point, image-to-image sampling lands on ``x0 + s_i * noise`` (spec invariant)."""
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.steps)
    for name in ("set_begin_index", "add_noise", "state_in_first_order", "sigmas_interpol"):
        need(impl, name)
    begin = min(2 * (case.begin or 0), len(impl.timesteps) - 1)
    prediction = case.config.get("prediction_type", "epsilon")
    ref = Reference(**case.config)
    ref.set_timesteps(case.steps)
    where = f"{target.name}(**{case.config!r}).set_timesteps({case.steps}); set_begin_index({begin})"
    a = target.adapter
    if a.dtype_name != "float64":
        _denoise(impl, a, begin, prediction, invariants.FLOAT32_RTOL, None, where)
        return
    amp = amplification(ref)
    rtol = levels.tolerance("relation") * amp
    exact_rtol = levels.LEVELS["exact"]["relation"] * amp
    # the reference's float64 tables where the implementation's are the same schedule (the
    # implementation's own where its schedule differs: other properties report that)
    if len(a.array(impl.sigmas)) == len(ref.sigmas):
        float32 = str(getattr(impl.sigmas, "dtype", "")).endswith("float32") and rtol > exact_rtol
        ratio: float | None = None
        try:
            ratio = _denoise(impl, a, begin, prediction, rtol, (ref.sigmas, ref.sigmas_interpol), where)
        except Discrepancy:
            if not float32:
                raise
        if ratio is not None and (ratio <= exact_rtol or not float32):
            levels.record("relation", ratio / amp)
            return
        # float32 tables, not exact: the denoiser exact for the implementation's own float32 sigmas
        # is the fair one at this level (the float64 one amplifies their rounding by s_i / m_i)
        levels.record("relation", 2 * levels.LEVELS["exact"]["relation"])
        impl = call("constructor", target.create, case.config)
        call("set_timesteps", impl.set_timesteps, case.steps)
    levels.record("relation", _denoise(impl, a, begin, prediction, rtol, None, where) / amp)


def _denoise(impl: Any, adapter: Any, begin: int, prediction: str, rtol: float, exact: Any, where: str) -> float:
    try:
        return invariants.check_exact_denoiser(impl, adapter, begin, prediction, rtol=rtol, exact_tables=exact)
    except Discrepancy as error:
        raise Discrepancy(f"{error} [{where}]", error.findings) from None
    except Unsupported:
        raise
    except Exception as error:
        raise Discrepancy.one(
            "call", f"raises {type(error).__name__}", f"{type(error).__name__}: {error} [{where}]"
        ) from error


# -- the tables, each against the reference -------------------------------------------------------


def _table(name: str, positions: Any) -> None:
    def check(target: Target, case: ks.Schedule) -> None:
        ref, impl, text = built(target, case.config, num_inference_steps=case.steps)
        got = target.adapter.array(call(name, need, impl, name))
        want = np.asarray(getattr(ref, name), dtype=np.float64)
        found, _ = compare(name, want, got, TABLE_RTOL, positions=positions)
        if (
            found
            and name == "timesteps"
            and case.config.get("use_karras_sigmas")
            and not case.config.get("round_karras_timesteps")
        ):
            # diffusers' rule: the main Karras timesteps rounded, the midpoints not (#5746)
            rounded = Reference(**case.config, round_karras_timesteps=True)
            rounded.set_timesteps(case.steps)
            if not compare(name, rounded.timesteps, got, TABLE_RTOL)[0]:
                found = [Discrepancy.one(name, "main Karras timesteps rounded", "main Karras timesteps are rounded")]
        if found:
            raise Discrepancy.merge(found, text)

    doc = f"``{name}`` equals the reference's (float32 precision, every entry compared)."
    strategy = lambda target: ks.schedules(target.args)  # noqa: E731
    PROPERTIES[f"reference_{name}"] = Property(f"reference_{name}", doc, strategy, check, SCHEDULE_EXAMPLES)


_table("sigmas", first_or_rest)
_table("sigmas_interpol", first_or_rest)
_table("timesteps", call_order)


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def reference_init_noise_sigma(target: Target, case: ks.Schedule) -> None:
    """``init_noise_sigma`` equals the reference's (float32 precision; ``sqrt(s_0^2 + 1)`` for ``leading``)."""
    ref, impl, text = built(target, case.config, num_inference_steps=case.steps)
    got = target.adapter.array(call("init_noise_sigma", need, impl, "init_noise_sigma"))
    found, _ = compare("init_noise_sigma", np.array(ref.init_noise_sigma), got, TABLE_RTOL)
    if found:
        raise Discrepancy.merge(found, text)


# -- sampling loops -------------------------------------------------------------------------------


def _loop(target: Target, case: ks.Loop, inpaint: bool = False) -> None:
    run_loop(
        target,
        target.adapter,
        case.config,
        {"num_inference_steps": case.steps},
        case.begin,
        case.model,
        case.seed,
        case.shape,
        inpaint=inpaint,
    )


@prop(lambda target: ks.loops(target.args), LOOP_EXAMPLES)
def sampling_loop(target: Target, case: ks.Loop) -> None:
    """Whole sampling loops (from noise or image to image) equal the reference's, at the run's numerical level."""
    within_dtype_range(target, case.config, case.steps)
    _loop(target, case)


@prop(
    lambda target: ks.loops(target.args, churn=False),
    (
        ks.Loop({}, 10, None, 0.1, 0, (2, 3)),
        ks.Loop({"use_karras_sigmas": True}, 25, 5, 0.1, 1, (2, 3)),
        ks.Loop({"timestep_spacing": "leading", "steps_offset": 1}, 12, 3, 0.0, 2, (2, 3)),
    ),
)
def add_noise_mid_loop(target: Target, case: ks.Loop) -> None:
    """Inpainting: ``add_noise(x0, noise, timesteps[k + 1])`` after every call ``k`` uses the next call's sigma (#7386)."""
    within_dtype_range(target, case.config, case.steps)
    _loop(target, case, inpaint=True)


@prop(
    lambda target: ks.reruns(target.args, churn=False),
    (
        ks.Rerun({}, 10, None, 3, 10, 0.1, 0),
        ks.Rerun({"use_karras_sigmas": True}, 25, 5, 4, 12, 0.1, 1),
        ks.Rerun({"timestep_spacing": "trailing"}, 7, None, 13, 5, 0.0, 2),
    ),
)
def set_timesteps_again(target: Target, case: ks.Rerun) -> None:
    """``set_timesteps`` after a partial loop (image to image or not) leaves a scheduler that samples as a fresh one."""
    within_dtype_range(target, case.config, case.first)
    within_dtype_range(target, case.config, case.steps)
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.first)
    a = target.adapter
    start = 0
    if case.first_begin is not None:
        need(impl, "set_begin_index")
        start = min(2 * case.first_begin, len(impl.timesteps) - 1)
        call("set_begin_index", impl.set_begin_index, start)
    sample = a.tensor(np.ones((2, 3)))
    for k in range(start, min(start + case.done, len(impl.timesteps))):
        t = impl.timesteps[k]
        call("scale_model_input", impl.scale_model_input, sample, t)
        sample = call("step", impl.step, a.tensor(np.full((2, 3), 0.1)), t, sample).prev_sample
    try:
        run_loop(
            target, a, case.config, {"num_inference_steps": case.steps}, None, case.model, case.seed, (2, 3), impl=impl
        )
    except Discrepancy as error:
        raise Discrepancy(
            f"{error} [after set_timesteps({case.first}), "
            f"{'set_begin_index(' + str(start) + '), ' if case.first_begin is not None else ''}{case.done} calls]",
            error.findings,
        ) from None


def _needs_arg(target: Target, *names: str) -> None:
    missing = [n for n in names if n not in target.args]
    if missing:
        raise Unsupported(f"the constructor has no {', '.join(missing)}")


@prop(lambda target: ks.loops(target.args, prediction=ks.st.just("sample"), churn=False))
def prediction_sample(target: Target, case: ks.Loop) -> None:
    """``prediction_type="sample"`` (the model predicts x0) samples as the reference."""
    _needs_arg(target, "prediction_type")
    _loop(target, case)


@prop(lambda target: ks.customs(target.args, "sigmas"))
def custom_sigmas(target: Target, case: ks.Custom) -> None:
    """``set_timesteps(sigmas=...)`` (final value included, 0 or not) samples as the reference."""
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    run_loop(target, target.adapter, case.config, {"sigmas": case.values}, None, case.model, case.seed, (2, 3))


@prop(lambda target: ks.customs(target.args, "timesteps"))
def custom_timesteps(target: Target, case: ks.Custom) -> None:
    """``set_timesteps(timesteps=...)`` (training sigma at each, then 0) samples as the reference."""
    if "timesteps" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no timesteps argument")
    run_loop(target, target.adapter, case.config, {"timesteps": case.values}, None, case.model, case.seed, (2, 3))


@prop(lambda target: ks.churn_settings())
def churn(target: Target, case: ks.Churn) -> None:
    """Churned sampling (Karras et al. Algorithm 2) equals the reference given the same noise draws."""
    _needs_arg(target, "s_churn", "s_tmin", "s_tmax", "s_noise")
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    config = {"s_churn": case.s_churn, "s_tmin": case.s_tmin, "s_tmax": case.s_tmax, "s_noise": case.s_noise}
    run_loop(target, target.adapter, config, {"sigmas": case.sigmas}, None, case.model, case.seed, (2, 3))


def _with_dtype(target: Target, dtype: str) -> Any:
    if not hasattr(target.adapter, "with_dtype"):
        raise Unsupported(f"the adapter has no with_dtype (needed for {dtype})")
    return target.adapter.with_dtype(dtype)


@prop(lambda target: ks.loops(target.args, churn=False), LOOP_EXAMPLES)
def float32_loop(target: Target, case: ks.Loop) -> None:
    """float32 sampling loops stay within 1e-5 (relative to the largest value) of the float64 reference."""
    adapter = _with_dtype(target, "float32")
    run_loop(
        target,
        adapter,
        case.config,
        {"num_inference_steps": case.steps},
        case.begin,
        case.model,
        case.seed,
        case.shape,
        FLOAT32_RTOL,
    )


LOW_PRECISION_EXAMPLES = (
    # spec contradiction: the exact prev_sample (-121121) lies beyond float16's range, so its float16
    # rounding is -inf; the check asked for one ulp of the unrepresentable value
    ks.LowPrecision({"beta_schedule": "squaredcos_cap_v2"}, 2, 0, "float16", 0, 4.0),
)
"""Pinned low-precision steps."""


def ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` (float16 or bfloat16) at each ``|x|`` (subnormals included)."""
    mantissa, min_exp = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126)}[dtype]
    exponent = np.floor(np.log2(np.maximum(np.abs(x), 2.0**min_exp)))
    return 2.0 ** (exponent - mantissa)


LARGEST = {"float16": 65504.0, "bfloat16": float(2**128 - 2**120), "float32": float(2**128 - 2**104)}
"""The largest finite value of each low-precision dtype; beyond it, round to nearest may give infinity."""

RANGE_MARGIN = 16
"""A call may be refused in a dtype where its noise levels exceed the largest value over this margin.

A Gaussian sample at noise level sigma reaches about 5 sigma, and a step adds a model output
scaled by up to about sigma: beyond ``LARGEST / 16`` a result can overflow. There a ``ValueError``
naming the dtype (refused before any work, nothing changed) is as correct as a result.
"""


def refusable(ref: Reference, k: int, dtype: str, error: BaseException | None) -> bool:
    """``error`` is a refusal the spec accepts at call ``k``: a ``ValueError`` naming ``dtype`` where
    the call's sigmas (``sigmas`` and ``sigmas_interpol`` at ``k - 1 .. k + 1``) exceed ``LARGEST / RANGE_MARGIN``."""
    if not isinstance(error, ValueError) or dtype not in LARGEST or dtype not in str(error):
        return False
    window = slice(max(k - 1, 0), k + 2)
    level = max(np.abs(ref.sigmas[window]).max(), np.abs(ref.sigmas_interpol[window]).max())
    return bool(level > LARGEST[dtype] / RANGE_MARGIN)


@prop(lambda target: ks.low_precision_steps(target.args), LOW_PRECISION_EXAMPLES)
def low_precision_step(target: Target, case: ks.LowPrecision) -> None:
    """float16/bfloat16 ``step`` outputs are within one ulp of the float64 reference step on the same inputs.

    Where the exact value lies beyond the dtype's largest finite value, its rounding may be the
    infinity of the same sign (IEEE round to nearest overflows), and that is accepted too; so is a
    refusal naming the dtype of a call whose noise levels exceed ``LARGEST / RANGE_MARGIN``.
    """
    adapter = _with_dtype(target, case.dtype)
    ref, impl, text = built(target, case.config, num_inference_steps=case.steps)
    calls = len(ref.timesteps)
    call_index = case.call % calls
    begin = call_index - (call_index % 2)
    ref.set_begin_index(begin)
    need(impl, "set_begin_index")
    call("set_begin_index", impl.set_begin_index, begin)
    rng = np.random.default_rng(case.seed)
    prediction = case.config.get("prediction_type", "epsilon")
    found = []
    for k in range(begin, call_index + 1):
        sample = adapter.array(adapter.tensor(case.scale * rng.standard_normal((4, 8))))
        output = adapter.array(adapter.tensor(case.scale * rng.standard_normal((4, 8))))
        want = ref.step(output, ref.timesteps[k], sample)
        t = impl.timesteps[k]
        try:
            got = call("step", impl.step, adapter.tensor(output), t, adapter.tensor(sample))
        except Discrepancy as discrepancy:
            if refusable(ref, k, case.dtype, discrepancy.__cause__):
                break  # refused before any work: the later calls of this case cannot follow
            raise
        where = f"step(model_output, timesteps[{k}], sample) in {case.dtype} [{text}; set_begin_index({begin})]"
        for name, exact in (("prev_sample", want.prev_sample), ("pred_original_sample", want.pred_original_sample)):
            value = getattr(got, name, None)
            if value is None:
                continue
            value = adapter.array(value)
            with np.errstate(invalid="ignore"):
                err = np.abs(value - exact)
            overflow = (np.abs(exact) > LARGEST[case.dtype]) & np.isinf(value) & (np.sign(value) == np.sign(exact))
            bad = np.flatnonzero(~(err <= ulp(exact, case.dtype)) & ~overflow)
            if len(bad):
                i = int(bad[0])
                found.append(
                    Discrepancy.one(
                        name,
                        "beyond one ulp",
                        f"{name}.flat[{i}]={value.flat[i]!r}, but should be {exact.flat[i]!r} "
                        f"to one {case.dtype} ulp ({ulp(exact, case.dtype).flat[i]:.3g}) [{where}, {prediction}]",
                    )
                )
    if found:
        raise Discrepancy.merge(found)


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def illegal_calls(target: Target, case: ks.Schedule) -> None:
    """``step`` past the end and ``set_begin_index`` out of range raise ``ValueError``."""
    within_dtype_range(target, case.config, case.steps)
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.steps)
    need(impl, "set_begin_index")
    a = target.adapter
    text = f"{target.name}(**{case.config!r}).set_timesteps({case.steps})"
    calls = len(impl.timesteps)
    found = []
    for bad, label in ((calls, "len(timesteps)"), (-1, "-1")):
        try:
            impl.set_begin_index(bad)
        except ValueError:
            continue
        except Exception as error:
            found.append(
                Discrepancy.one(
                    f"set_begin_index({label})",
                    f"raises {type(error).__name__}",
                    f"set_begin_index({bad}) raised {type(error).__name__}: {error}, but should raise ValueError [{text}]",
                )
            )
            continue
        found.append(
            Discrepancy.one(
                f"set_begin_index({label})",
                "no error",
                f"set_begin_index({bad}) must raise ValueError for {calls} calls [{text}]",
            )
        )
    impl = call("constructor", target.create, case.config)
    call("set_timesteps", impl.set_timesteps, case.steps)
    call("set_begin_index", impl.set_begin_index, calls - 1)
    x = a.tensor(np.ones((2, 2)))
    call("step", impl.step, a.tensor(np.zeros((2, 2))), impl.timesteps[calls - 1], x)
    try:
        impl.step(a.tensor(np.zeros((2, 2))), impl.timesteps[calls - 1], x)
    except ValueError:
        pass
    except Exception as error:
        found.append(
            Discrepancy.one(
                "step past the end",
                f"raises {type(error).__name__}",
                f"step past the end raised {type(error).__name__}: {error}, but should raise ValueError [{text}]",
            )
        )
    else:
        found.append(
            Discrepancy.one(
                "step past the end",
                "no error",
                f"step past the end (call {calls} of {calls}) must raise ValueError [{text}]",
            )
        )
    if found:
        raise Discrepancy.merge(found)


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def save_reload(target: Target, case: ks.Schedule) -> None:
    """``save_config`` then ``from_pretrained`` gives the same config and tables."""
    impl = call("constructor", target.create, case.config)
    if not hasattr(impl, "save_config") or not hasattr(type(impl), "from_pretrained"):
        raise Unsupported("no save_config/from_pretrained")
    text = f"{target.name}(**{case.config!r})"
    with tempfile.TemporaryDirectory() as directory:
        call("save_config", impl.save_config, directory)
        again = call("from_pretrained", type(impl).from_pretrained, directory)
    found = []
    for key in case.config:
        want, got = impl.config[key], again.config[key]
        if not np.array_equal(np.asarray(want), np.asarray(got)):
            found.append(
                Discrepancy.one(
                    "config", "differs after reload", f"config[{key!r}]={got!r} after reload, but should be {want!r}"
                )
            )
    call("set_timesteps", impl.set_timesteps, case.steps)
    call("set_timesteps", again.set_timesteps, case.steps)
    for name in ("timesteps", "sigmas", "sigmas_interpol"):
        if hasattr(impl, name):
            want_table, got_table = (
                target.adapter.array(getattr(impl, name)),
                target.adapter.array(getattr(again, name)),
            )
            same = want_table.shape == got_table.shape and np.array_equal(want_table, got_table, equal_nan=True)
            if not same:
                found.append(Discrepancy.one(name, "differs after reload", f"{name} differs after reload"))
    if found:
        raise Discrepancy.merge(found, f"{text} saved and reloaded, set_timesteps({case.steps})")


@prop(lambda target: ks.st.just(None))
def convergence_order(target: Target, case: None) -> None:
    """Sampling a Gaussian with its exact denoiser converges with order 2 +- 0.25 (spec invariant)."""
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    invariants.check_convergence_order(lambda: target.create({}), target.adapter)


from kdpm2_spec import ancestral_family as ancestral_family  # noqa: E402 - registers the DPM2 a family
from kdpm2_spec.runner import check_case, check_one, run  # noqa: E402 - the runner reads PROPERTIES at call time

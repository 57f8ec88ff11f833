"""The conformance suite: every invariant, and equivalence to ``Reference``, as Hypothesis properties.

``run(cls_or_adapter, profile="ci")`` checks a diffusers-style scheduler class and returns a
``Report``; ``python -m kdpm2_spec check MODULE:CLASS`` prints it. Each property:

1. draws a case (a NamedTuple from ``kdpm2_spec.strategies``) restricted to the constructor
   arguments the class accepts;
2. builds the class and the reference from the same arguments and drives both;
3. compares them with ``check_same``, whose messages name the call.

A property that needs an argument or method the class lacks (custom ``sigmas``, churn, a dtype
other than float64...) is reported ``unsupported`` rather than failed. A failure carries the
shrunk case and a command that reproduces it.

``run(..., device="cuda", dtype="float16")`` drives the implementation with tensors there (see
``kdpm2_spec.catalog`` for which properties run in which dtype, and the tolerance floor of
each dtype); ``seed=N`` fixes Hypothesis' draws, ``database=DIR`` replays and saves examples
(none by default, so a verdict depends only on the seed, the versions and the arguments);
``expect={name: reason}`` marks known failures (see ``kdpm2_spec.gate``).
"""

from __future__ import annotations

import inspect
import math
import tempfile
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from kdpm2_spec import catalog, invariants
from kdpm2_spec import strategies as ks
from kdpm2_spec.adapter import NumpyAdapter, TorchAdapter
from kdpm2_spec.reference import Reference, model_output_for
from kdpm2_spec.report import EXIT_FAILED as EXIT_FAILED  # re-exported: the exit statuses of a run
from kdpm2_spec.report import EXIT_OK as EXIT_OK
from kdpm2_spec.report import EXIT_STALE as EXIT_STALE
from kdpm2_spec.report import EXIT_USAGE as EXIT_USAGE
from kdpm2_spec.report import Report, Result

EXACT_RTOL = 1e-12
"""float64 loops: the implementation may differ from the reference by rounding only."""

TABLE_RTOL = 1e-6
"""Public tables and loops compared at float32 precision (diffusers stores float32 tables)."""

LOOP_RTOL = 1e-5
"""Loops compared at float32 table precision: rounding of a float32 table entry, relative to the operands."""

FLOAT32_RTOL = 1e-5
"""float32 loops with a well-conditioned model, relative to the largest value."""


# -- the class under test ---------------------------------------------------------------------


@dataclass
class Target:
    """A scheduler class, how to talk to it, and what it supports."""

    adapter: Any
    name: str
    args: frozenset[str]
    set_timesteps_args: frozenset[str]

    @classmethod
    def of(cls, cls_or_adapter: Any, device: str = "cpu", dtype: str = "float64") -> Target:
        """A target for a class (torch unless it is ``Reference``) or a ready adapter.

        A class gets tensors on ``device`` in ``dtype``; ``Reference`` works in NumPy float64.
        """
        if dtype not in catalog.DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(catalog.DTYPE_NAMES)}, got {dtype!r}")
        adapter: Any
        if isinstance(cls_or_adapter, type):
            if issubclass(cls_or_adapter, Reference):
                if (device, dtype) != ("cpu", "float64"):
                    raise ValueError(f"the NumPy Reference runs on cpu in float64 only, not {device} {dtype}")
                adapter = NumpyAdapter(cls_or_adapter)
            else:
                adapter = TorchAdapter(cls_or_adapter, device, dtype)
        else:
            adapter = cls_or_adapter
        klass = adapter.cls
        name = f"{klass.__module__}:{klass.__qualname__}"
        return cls(adapter, name, ks.supported_args(klass), ks.set_timesteps_args(klass))

    def create(self, config: dict[str, Any]) -> Any:
        return self.adapter.create(**config)


class Unsupported(Exception):
    """The class lacks what a property needs; reported apart from failures."""


# -- comparison ---------------------------------------------------------------------------------


def _close(call: str, what: str, ref: np.ndarray, got: np.ndarray, rtol: float, scale: float = 1.0) -> None:
    """``got`` equals ``ref`` within ``rtol`` of the largest of ``|ref|``, 1 and ``scale``.

    ``scale`` is the size of the operands (rounding errors are relative to them, not to a
    result that cancellation made small).
    """
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    assert ref.shape == got.shape, f"{what} has shape {got.shape}, but should be {ref.shape} [{call}]"
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(got), finite), f"{what}={got} is not finite where {ref} is [{call}]"
    if not finite.any():
        return
    scale = max(1.0, scale, float(np.max(np.abs(ref[finite]))))
    err = np.abs(got[finite] - ref[finite])
    if np.all(err <= rtol * scale):
        return
    i = int(np.argmax(err))
    raise AssertionError(
        f"{what}[{i}]={got[finite][i]!r}, but should be {ref[finite][i]!r} "
        f"(error {err[i]:.3g} > {rtol:g} * {scale:.3g}) [{call}]"
    )


def check_same(
    call: str, ref: Callable[[], Any], impl: Callable[[], Any], adapter: Any, rtol: float, what: str = "result"
) -> tuple[Any, Any]:
    """Run the reference and the implementation of ``call``: equal results, or both raise.

    The reference states preconditions as ``assert``; the implementation must then raise a
    ``ValueError`` (or a ``LookupError`` for lookups) or the same exception type.
    """
    try:
        want = ref()
    except Exception as error:
        try:
            impl()
        except (ValueError, LookupError, type(error)):
            return None, None
        raise AssertionError(f"{call} must raise (the reference raises {type(error).__name__}: {error})") from None
    try:
        got = impl()
    except Exception as error:
        raise AssertionError(f"{call} raised {type(error).__name__}: {error}, but should return {what}") from error
    _close(call, what, want, adapter.array(got), rtol)
    return want, got


# -- helpers ------------------------------------------------------------------------------------


def stand_in_model(x: np.ndarray, sigma: float, strength: float) -> np.ndarray:
    """A well-conditioned denoiser: the exact one of N(0.5, 0.5^2) data plus a bounded non-linear term."""
    var = 0.25
    exact = (var * x + sigma**2 * 0.5) / (var + sigma**2)
    return exact + strength * np.tanh(x) / (1 + sigma)


def _built(target: Target, config: dict[str, Any], **timesteps_args: Any) -> tuple[Reference, Any, str]:
    """The reference and the implementation after the same ``set_timesteps`` call (and its text)."""
    text = f"{target.name}(**{config!r}).set_timesteps({', '.join(f'{k}={v!r}' for k, v in timesteps_args.items())})"
    ref = Reference(**config)
    impl = target.create(config)
    ref.set_timesteps(**timesteps_args)
    impl.set_timesteps(**timesteps_args)
    return ref, impl, text


def _steps(n: int) -> dict[str, Any]:
    return {"num_inference_steps": n}


def run_loop(
    target: Target,
    adapter: Any,
    config: dict[str, Any],
    timesteps_args: dict[str, Any],
    begin: int | None,
    strength: float,
    seed: int,
    shape: tuple[int, ...],
    rtol: float,
) -> None:
    """Sample with the reference and the implementation, feeding both the reference's model output.

    ``begin`` (full steps) starts mid-schedule from ``add_noise`` after ``set_begin_index``.
    ``rtol`` is raised to the floor of the adapter's dtype (``catalog.DTYPE_RTOL``).
    """
    rtol = max(rtol, catalog.DTYPE_RTOL.get(getattr(adapter, "dtype_name", "float64"), 0.0))
    ref, impl, text = _built(target, config, **timesteps_args)
    calls = len(ref.timesteps)
    assert len(impl.timesteps) == calls, f"len(timesteps)={len(impl.timesteps)}, but should be {calls} [{text}]"
    rng = np.random.default_rng(seed)
    x0, eps = 0.5 + 0.5 * rng.standard_normal(shape), rng.standard_normal(shape)
    noise = adapter.noise(seed) if config.get("s_churn", 0) > 0 else None
    start = 0
    scale = 1.0  # the largest operand so far: rounding errors are relative to it and carry over
    if begin is None:
        x_ref = eps * ref.init_noise_sigma
        x_impl = adapter.tensor(x_ref)
    else:
        start = min(2 * begin, calls - 1)
        ref.set_begin_index(start)
        impl.set_begin_index(start)
        x_ref, x_impl = check_same(
            f"add_noise(x0, noise, timesteps[{start}:{start + 1}]) [{text}; set_begin_index({start})]",
            lambda: ref.add_noise(x0, eps, ref.timesteps[start : start + 1]),
            lambda: impl.add_noise(adapter.tensor(x0), adapter.tensor(eps), impl.timesteps[start : start + 1]),
            adapter,
            rtol,
        )
    if noise is not None and ref.sigmas[start] > ref.main_sigmas_table[start // 2]:
        # the caller applies the first churn (the scheduler adds it at the end of each full step)
        lift = config.get("s_noise", 1.0) * math.sqrt(ref.sigmas[start] ** 2 - ref.main_sigmas_table[start // 2] ** 2)
        first = noise.draw(shape)
        x_ref = x_ref + first * lift
        x_impl = adapter.tensor(adapter.array(x_impl) + first * lift)
    elif noise is not None:
        noise.draw(shape)
    for k in range(start, calls):
        if ref.step_index is not None and ref.step_index >= calls:
            # a repeated first timestep made the lookup skip a call: the reference's next step raises
            try:
                impl.scale_model_input(x_impl, impl.timesteps[k])
                impl.step(adapter.tensor(np.zeros(shape)), impl.timesteps[k], x_impl)
            except (ValueError, LookupError):
                return
            raise AssertionError(
                f"call {k}: step past the end (step_index={ref.step_index}) must raise ValueError [{text}]"
            )
        where = f"call {k} of {text}" + (f"; set_begin_index({start})" if begin is not None else "")
        t_ref, t_impl = ref.timesteps[k], impl.timesteps[k]
        first_order = ref.state_in_first_order
        scale = max(scale, float(np.max(np.abs(x_ref))))
        want_in = ref.scale_model_input(x_ref, t_ref)
        got_in = adapter.array(impl.scale_model_input(x_impl, t_impl))
        _close(f"scale_model_input(sample, timesteps[{k}]) [{where}]", "model input", want_in, got_in, rtol, scale)
        sigma = ref.current_sigma
        if sigma == 0:  # only after a skipped call (see below): the next step raises
            sigma = 1.0
        prediction = config.get("prediction_type", "epsilon")
        out = model_output_for(stand_in_model(x_ref, sigma, strength), x_ref, sigma, prediction)
        drawn = None
        if noise is not None and not first_order and k + 1 < calls:
            drawn = noise.step_draw(shape)
        try:
            want = ref.step(out, t_ref, x_ref, noise=drawn)
        except ValueError as error:  # e.g. a repeated first timestep made the lookup skip a call
            try:
                impl.step(adapter.tensor(out), t_impl, x_impl, **noise.step_kwargs(drawn) if noise else {})
            except (ValueError, LookupError):
                return
            raise AssertionError(
                f"step(model_output, timesteps[{k}], sample) must raise ValueError ({error}) [{where}]"
            ) from None
        got = impl.step(adapter.tensor(out), t_impl, x_impl, **noise.step_kwargs(drawn) if noise else {})
        # rounding is relative to the operands: sigma * model_output can be 100x the result
        scale = max(scale, sigma * float(np.max(np.abs(out))), float(np.max(np.abs(drawn if drawn is not None else 0))))
        operands = scale
        call = f"step(model_output, timesteps[{k}], sample) [{where}]"
        _close(call, "prev_sample", want.prev_sample, adapter.array(got.prev_sample), rtol, operands)
        _close(
            call,
            "pred_original_sample",
            want.pred_original_sample,
            adapter.array(got.pred_original_sample),
            rtol,
            operands,
        )
        x_ref, x_impl = want.prev_sample, got.prev_sample


def ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` (float16 or bfloat16) at each ``|x|`` (subnormals included)."""
    mantissa, min_exp = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126)}[dtype]
    exponent = np.floor(np.log2(np.maximum(np.abs(x), 2.0**min_exp)))
    return 2.0 ** (exponent - mantissa)


LARGEST = {"float16": 65504.0, "bfloat16": float(2**128 - 2**120), "float32": float(2**128 - 2**104)}
"""The largest finite value of each low-precision dtype; beyond it, round to nearest may give infinity."""


# -- properties ---------------------------------------------------------------------------------


class Property(NamedTuple):
    """One checked relation: a strategy of cases (given the target) and a check of one case."""

    name: str
    doc: str
    strategy: Callable[[Target], Any]
    check: Callable[[Target, Any], None]
    examples: tuple[Any, ...] = ()


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
)
"""Pinned schedules: diffusers' known edge cases and the bugs this suite found."""

LOOP_EXAMPLES = (
    *(ks.Loop(s.config, s.steps, None, 0.1, 0, (2, 3)) for s in SCHEDULE_EXAMPLES),
    ks.Loop({"beta_schedule": "squaredcos_cap_v2", "discard_penultimate_sigma": True}, 1, None, 0.0, 0, (2, 3)),
    ks.Loop({"use_exponential_sigmas": True, "sigma_max": 20.0}, 7, None, 0.0, 0, (2, 3)),  # repeated first timestep
    ks.Loop({"use_karras_sigmas": True}, 50, 10, 0.1, 0, (2, 3)),  # image to image
    # spec contradiction: the exact denoiser built from float32 tables is off by 1800 float32 ulps
    # after s_0 = 20291 -> m_0 = 11.4; it now uses the reference's float64 sigmas
    ks.Loop({"beta_schedule": "squaredcos_cap_v2"}, 2, 0, 0.0, 0, (2, 3)),
)
"""Pinned loops: the schedules above, plus cancellation at sigma 157 and a skipped first call."""

PROPERTIES: dict[str, Property] = {}
"""Every property by name, in the order they run."""


def prop(
    strategy: Callable[[Target], Any], examples: tuple[Any, ...] = ()
) -> Callable[[Callable[[Target, Any], None]], Callable[[Target, Any], None]]:
    """Register a check under its function name; its docstring's first line describes it."""

    def register(check: Callable[[Target, Any], None]) -> Callable[[Target, Any], None]:
        doc = (inspect.getdoc(check) or "").splitlines()[0]
        PROPERTIES[check.__name__] = Property(check.__name__, doc, strategy, check, examples)
        return check

    return register


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
    "plain_loop": invariants.check_plain_loop,
}
"""The spec invariants checked on a scheduler after ``set_timesteps``, one property each."""


def _invariant(name: str) -> None:
    check = INVARIANTS[name]

    def run_check(target: Target, case: ks.Schedule) -> None:
        impl = target.create(case.config)
        impl.set_timesteps(case.steps)
        try:
            check(impl, target.adapter)
        except AssertionError as error:
            raise AssertionError(f"{error} [{target.name}(**{case.config!r}).set_timesteps({case.steps})]") from None

    doc = inspect.getdoc(getattr(invariants, f"check_{name}")) or name
    strategy = lambda target: ks.schedules(target.args, churn=False)  # noqa: E731 - churn lifts timesteps
    PROPERTIES[name] = Property(name, doc.splitlines()[0], strategy, run_check, SCHEDULE_EXAMPLES)


for _name in INVARIANTS:
    _invariant(_name)


@prop(
    lambda target: ks.loops(target.args, churn=False).filter(lambda c: c.begin is not None),
    (
        *(c._replace(begin=c.steps // 2) for c in LOOP_EXAMPLES[:8]),
        # diffusers: sigma differences taken in float32 (about 2e4 here) move a float64 loop off x0 + s * noise
        ks.Loop(
            {"beta_schedule": "squaredcos_cap_v2", "steps_offset": 1, "use_beta_sigmas": True}, 5, 0, 0.1, 13914, (2, 3)
        ),
    ),
)
def exact_denoiser(target: Target, case: ks.Loop) -> None:
    """With the exact denoiser of one point, image-to-image sampling lands on ``x0 + s_i * noise`` (spec invariant)."""
    impl = target.create(case.config)
    impl.set_timesteps(case.steps)
    begin = min(2 * (case.begin or 0), len(impl.timesteps) - 1)
    prediction = case.config.get("prediction_type", "epsilon")
    ref = Reference(**case.config)
    ref.set_timesteps(case.steps)
    try:
        invariants.check_exact_denoiser(
            impl, target.adapter, begin, prediction, exact_tables=(ref.sigmas, ref.sigmas_interpol)
        )
    except AssertionError as error:
        raise AssertionError(
            f"{error} [{target.name}(**{case.config!r}).set_timesteps({case.steps}); set_begin_index({begin})]"
        ) from None


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def tables_match_reference(target: Target, case: ks.Schedule) -> None:
    """``sigmas``, ``sigmas_interpol``, ``timesteps`` and ``init_noise_sigma`` equal the reference's (float32 precision)."""
    ref, impl, text = _built(target, case.config, **_steps(case.steps))
    a = target.adapter
    for name in ("timesteps", "sigmas", "sigmas_interpol"):
        _close(text, name, getattr(ref, name), a.array(getattr(impl, name)), TABLE_RTOL)
    _close(text, "init_noise_sigma", np.array(ref.init_noise_sigma), a.array(impl.init_noise_sigma), TABLE_RTOL)


@prop(lambda target: ks.loops(target.args), LOOP_EXAMPLES)
def sampling_loop(target: Target, case: ks.Loop) -> None:
    """Whole sampling loops (from noise or image to image) equal the reference's, to float32 table precision."""
    _loop(target, case, LOOP_RTOL)


@prop(lambda target: ks.loops(target.args), LOOP_EXAMPLES)
def sampling_loop_exact(target: Target, case: ks.Loop) -> None:
    """Whole float64 sampling loops equal the reference's to 1e-12 relative (rounding only)."""
    _loop(target, case, EXACT_RTOL)


def _loop(target: Target, case: ks.Loop, rtol: float) -> None:
    run_loop(
        target, target.adapter, case.config, _steps(case.steps), case.begin, case.model, case.seed, case.shape, rtol
    )


def _needs_arg(target: Target, *names: str) -> None:
    missing = [n for n in names if n not in target.args]
    if missing:
        raise Unsupported(f"the constructor has no {', '.join(missing)}")


@prop(lambda target: ks.loops(target.args, prediction=ks.st.just("sample"), churn=False))
def prediction_sample(target: Target, case: ks.Loop) -> None:
    """``prediction_type="sample"`` (the model predicts x0) samples as the reference."""
    run_loop(
        target,
        target.adapter,
        case.config,
        _steps(case.steps),
        case.begin,
        case.model,
        case.seed,
        case.shape,
        LOOP_RTOL,
    )


@prop(lambda target: ks.customs(target.args, "sigmas"))
def custom_sigmas(target: Target, case: ks.Custom) -> None:
    """``set_timesteps(sigmas=...)`` (final value included, 0 or not) samples as the reference."""
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    run_loop(
        target, target.adapter, case.config, {"sigmas": case.values}, None, case.model, case.seed, (2, 3), EXACT_RTOL
    )


@prop(lambda target: ks.customs(target.args, "timesteps"))
def custom_timesteps(target: Target, case: ks.Custom) -> None:
    """``set_timesteps(timesteps=...)`` (training sigma at each, then 0) samples as the reference."""
    if "timesteps" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no timesteps argument")
    run_loop(
        target, target.adapter, case.config, {"timesteps": case.values}, None, case.model, case.seed, (2, 3), EXACT_RTOL
    )


@prop(lambda target: ks.churn_settings())
def churn(target: Target, case: ks.Churn) -> None:
    """Churned sampling (Karras et al. Algorithm 2) equals the reference given the same noise draws."""
    _needs_arg(target, "s_churn", "s_tmin", "s_tmax", "s_noise")
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    config = {"s_churn": case.s_churn, "s_tmin": case.s_tmin, "s_tmax": case.s_tmax, "s_noise": case.s_noise}
    run_loop(target, target.adapter, config, {"sigmas": case.sigmas}, None, case.model, case.seed, (2, 3), EXACT_RTOL)


def _with_dtype(target: Target, dtype: str) -> Any:
    if not hasattr(target.adapter, "with_dtype"):
        raise Unsupported(f"the adapter has no with_dtype (needed for {dtype})")
    return target.adapter.with_dtype(dtype)


@prop(lambda target: ks.loops(target.args, churn=False), LOOP_EXAMPLES)
def float32_loop(target: Target, case: ks.Loop) -> None:
    """float32 sampling loops stay within 1e-5 (relative to the largest value) of the float64 reference."""
    adapter = _with_dtype(target, "float32")
    run_loop(
        target, adapter, case.config, _steps(case.steps), case.begin, case.model, case.seed, case.shape, FLOAT32_RTOL
    )


LOW_PRECISION_EXAMPLES = (
    # spec contradiction: the exact prev_sample (-121121) lies beyond float16's range, so its float16
    # rounding is -inf; the check asked for one ulp of the unrepresentable value
    ks.LowPrecision({"beta_schedule": "squaredcos_cap_v2"}, 2, 0, "float16", 0, 4.0),
)
"""Pinned low-precision steps."""


@prop(lambda target: ks.low_precision_steps(target.args), LOW_PRECISION_EXAMPLES)
def low_precision_step(target: Target, case: ks.LowPrecision) -> None:
    """float16/bfloat16 ``step`` outputs are within one ulp of the float64 reference step on the same inputs.

    Where the exact value lies beyond the dtype's largest finite value, its rounding may be the
    infinity of the same sign (IEEE round to nearest overflows), and that is accepted too.
    """
    adapter = _with_dtype(target, case.dtype)
    ref, impl, text = _built(target, case.config, **_steps(case.steps))
    calls = len(ref.timesteps)
    call = case.call % calls
    begin = call - (call % 2)
    ref.set_begin_index(begin)
    impl.set_begin_index(begin)
    rng = np.random.default_rng(case.seed)
    prediction = case.config.get("prediction_type", "epsilon")
    for k in range(begin, call + 1):
        sample = adapter.array(adapter.tensor(case.scale * rng.standard_normal((4, 8))))
        output = adapter.array(adapter.tensor(case.scale * rng.standard_normal((4, 8))))
        want = ref.step(output, ref.timesteps[k], sample)
        got = impl.step(adapter.tensor(output), impl.timesteps[k], adapter.tensor(sample))
        where = f"step(model_output, timesteps[{k}], sample) in {case.dtype} [{text}; set_begin_index({begin})]"
        for name, exact, value in (
            ("prev_sample", want.prev_sample, got.prev_sample),
            ("pred_original_sample", want.pred_original_sample, got.pred_original_sample),
        ):
            value = adapter.array(value)
            with np.errstate(invalid="ignore"):
                err = np.abs(value - exact)
            overflow = (np.abs(exact) > LARGEST[case.dtype]) & np.isinf(value) & (np.sign(value) == np.sign(exact))
            bad = np.flatnonzero(~(err <= ulp(exact, case.dtype)) & ~overflow)
            assert len(bad) == 0, (
                f"{name}.flat[{bad[0]}]={value.flat[bad[0]]!r}, but should be {exact.flat[bad[0]]!r} "
                f"to one {case.dtype} ulp ({ulp(exact, case.dtype).flat[bad[0]]:.3g}) [{where}, {prediction}]"
            )


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def illegal_calls(target: Target, case: ks.Schedule) -> None:
    """``step`` past the end and ``set_begin_index`` out of range raise ``ValueError``."""
    impl = target.create(case.config)
    impl.set_timesteps(case.steps)
    a = target.adapter
    text = f"{target.name}(**{case.config!r}).set_timesteps({case.steps})"
    calls = len(impl.timesteps)
    for bad in (calls, -1):
        try:
            impl.set_begin_index(bad)
        except ValueError:
            continue
        raise AssertionError(f"set_begin_index({bad}) must raise ValueError for {calls} calls [{text}]")
    impl.set_begin_index(calls - 1)
    x = a.tensor(np.ones((2, 2)))
    impl.step(a.tensor(np.zeros((2, 2))), impl.timesteps[calls - 1], x)
    try:
        impl.step(a.tensor(np.zeros((2, 2))), impl.timesteps[calls - 1], x)
    except ValueError:
        return
    except Exception as error:
        raise AssertionError(
            f"step past the end raised {type(error).__name__}: {error}, but should raise ValueError [{text}]"
        ) from None
    raise AssertionError(f"step past the end (call {calls} of {calls}) must raise ValueError [{text}]")


@prop(lambda target: ks.schedules(target.args), SCHEDULE_EXAMPLES)
def save_reload(target: Target, case: ks.Schedule) -> None:
    """``save_config`` then ``from_pretrained`` gives the same config and tables."""
    impl = target.create(case.config)
    if not hasattr(impl, "save_config") or not hasattr(type(impl), "from_pretrained"):
        raise Unsupported("no save_config/from_pretrained")
    text = f"{target.name}(**{case.config!r})"
    with tempfile.TemporaryDirectory() as directory:
        impl.save_config(directory)
        again = type(impl).from_pretrained(directory)
    for key in case.config:
        want, got = impl.config[key], again.config[key]
        assert np.array_equal(np.asarray(want), np.asarray(got)), (
            f"config[{key!r}]={got!r} after reload, but should be {want!r} [{text}]"
        )
    impl.set_timesteps(case.steps)
    again.set_timesteps(case.steps)
    for name in ("timesteps", "sigmas", "sigmas_interpol"):
        _close(
            f"{text} saved and reloaded, set_timesteps({case.steps})",
            name,
            target.adapter.array(getattr(impl, name)),
            target.adapter.array(getattr(again, name)),
            0.0,
        )


@prop(lambda target: ks.st.just(None))
def convergence_order(target: Target, case: None) -> None:
    """Sampling a Gaussian with its exact denoiser converges with order 2 +- 0.25 (spec invariant)."""
    if "sigmas" not in target.set_timesteps_args:
        raise Unsupported("set_timesteps has no sigmas argument")
    invariants.check_convergence_order(lambda: target.create({}), target.adapter)


# -- running ------------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    group = getattr(error, "exceptions", None)  # an ExceptionGroup: Hypothesis found distinct failures
    if isinstance(group, tuple):
        return " / ".join(_first_line(e) for e in group)
    text = f"{type(error).__name__}: {error}" if not isinstance(error, AssertionError) else str(error)
    return " ".join(text.split())[:600]


def derandomized(profile: str | None, default: bool = False) -> bool:
    """Whether ``profile`` fixes the draws (``ci`` does), read from ``strategies.PROFILES``.

    Read there, not from the registered profile, which inherits whatever profile was loaded.
    """
    return bool(ks.PROFILES.get(profile or "", {}).get("derandomize", default))


def _dtype_name(target: Target) -> str:
    return str(getattr(target.adapter, "dtype_name", "float64"))


def _options(target: Target, seed: int | None) -> str:
    """The ``check`` options that reproduce a run's device, dtype and seed (defaults left out)."""
    device = str(getattr(target.adapter, "device", "cpu"))
    options = [] if device == "cpu" else [f"--device {device}"]
    options += [] if _dtype_name(target) == "float64" else [f"--dtype {_dtype_name(target)}"]
    return " ".join(options + ([] if seed is None else [f"--seed {seed}"]))


def check_one(
    target: Target,
    name: str,
    profile: str | None = None,
    shrink: bool = True,
    seed: int | None = None,
    database: str | None = None,
) -> Result:
    """Run one property under the Hypothesis ``profile`` (the loaded one if ``None``).

    Pinned examples whose configuration the class does not accept are skipped; ``shrink=False``
    reports the first failing case as found (diffusers' constructor makes shrinking slow).
    ``seed`` fixes the random draws (else the profile decides: ``ci`` is derandomized);
    ``database`` is a directory of saved examples (default: none, so nothing carries over; with
    one, draws are random unless ``seed`` is given, as Hypothesis requires).
    A property that does not run in the target's dtype (``catalog.DTYPES``) is ``unsupported``.
    """
    from hypothesis import Phase, example, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from kdpm2_spec.cases import reproducer

    ks.register_profiles(load=False)
    prop_ = PROPERTIES[name]
    dtypes = catalog.dtypes_of(name)
    if _dtype_name(target) not in dtypes:
        return Result(name, "unsupported", prop_.doc, f"runs in {' or '.join(dtypes)} only (tolerance: see docs/ci.md)")
    failing: list[tuple[Any, BaseException]] = []
    unsupported: list[str] = []

    def test(case: Any) -> None:
        try:
            prop_.check(target, case)
        except Unsupported as why:
            unsupported.append(str(why))
        except BaseException as error:
            failing.append((case, error))
            raise

    chosen = settings() if profile is None else settings.get_profile(profile)
    phases = chosen.phases if shrink else tuple(p for p in chosen.phases if p is not Phase.shrink)
    runner = given(prop_.strategy(target))(test)
    for pinned in reversed(prop_.examples):
        if set(getattr(pinned, "config", {})) <= target.args:
            runner = example(pinned)(runner)
    db = None if database is None else DirectoryBasedExampleDatabase(database)
    if seed is not None:
        runner = fix_seed(seed)(runner)
    derandomize = derandomized(profile, chosen.derandomize) and seed is None and database is None
    wrapped = settings(chosen, database=db, phases=phases, derandomize=derandomize)(runner)
    try:
        wrapped()
    except Exception as error:
        case = _failing_case(error, failing)
        command = reproducer(target.name, name, case, _options(target, seed))
        return Result(name, "fail", prop_.doc, _first_line(error), case, command)
    if unsupported:
        return Result(name, "unsupported", prop_.doc, unsupported[0])
    return Result(name, "pass", prop_.doc)


def _failing_case(error: BaseException, failing: list[tuple[Any, BaseException]]) -> Any:
    """The case that raised ``error`` (the first of a group): the report's message and case must match.

    Hypothesis raises the first failing pinned example's error after running them all, but a
    shrunk failure from a final replay, the last call.
    """
    group = getattr(error, "exceptions", None)
    first = group[0] if isinstance(group, tuple) and group else error
    return next((case for case, raised in failing if raised is first), failing[-1][0] if failing else None)


def check_case(cls_or_adapter: Any, name: str, case: Any, device: str = "cpu", dtype: str = "float64") -> None:
    """Check one property on one case (a reproducer): raises what the property raises.

    Raises ``Unsupported`` when the property does not run in ``dtype``.
    """
    target = Target.of(cls_or_adapter, device, dtype)
    if _dtype_name(target) not in catalog.dtypes_of(name):
        raise Unsupported(f"{name} runs in {' or '.join(catalog.dtypes_of(name))} only")
    PROPERTIES[name].check(target, case)


def run(
    cls_or_adapter: Any,
    profile: str | None = None,
    only: list[str] | None = None,
    echo: Callable[[str], None] | None = None,
    shrink: bool = True,
    device: str = "cpu",
    dtype: str = "float64",
    seed: int | None = None,
    database: str | None = None,
    expect: Mapping[str, str] | None = None,
) -> Report:
    """Check every property (or ``only`` these) against a scheduler class or adapter.

    ``profile`` names a Hypothesis settings profile (``ci``, ``dev``, ``thorough``; default: the
    one ``$HYPOTHESIS_PROFILE`` names). ``echo`` receives the header and each report line as it
    is decided. ``device`` and ``dtype`` place a class's tensors (an adapter keeps its own);
    ``seed`` and ``database`` as in ``check_one``; ``expect`` maps known failures to their reason.
    """
    name = ks.register_profiles(load=False)
    profile = profile or name
    unknown = sorted(set(only or ()) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {sorted(PROPERTIES)}")
    target = Target.of(cls_or_adapter, device, dtype)
    expected = None if expect is None else dict(expect)
    device = str(getattr(target.adapter, "device", "cpu"))
    fixed = derandomized(profile) and database is None
    report = Report(target.name, [], device, _dtype_name(target), profile, seed, expected, fixed)
    if echo is not None:
        echo(report.header())
    for prop_name in only or list(PROPERTIES):
        try:
            result = check_one(target, prop_name, profile, shrink, seed, database)
        except Exception as error:  # the harness itself must not crash on a broken class
            result = Result(
                prop_name, "fail", "", f"harness error: {_first_line(error)}", None, traceback.format_exc(limit=1)
            )
        result.expected = (expected or {}).get(prop_name, "")
        report.results.append(result)
        if echo is not None:
            echo(result.line())
    return report

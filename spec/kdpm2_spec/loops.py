"""Sampling loops run side by side: the reference and an implementation, fed the same model outputs.

``run_loop`` samples as a pipeline does (``scale_model_input``, the model, ``step``; optionally
image to image from ``add_noise`` after ``set_begin_index``, and inpainting's ``add_noise`` after
every call) and compares every output of every call with the reference's. After the first call
that differs it goes on from the reference's sample, so that one defect does not hide another:
the ``Discrepancy`` it raises holds every kind of difference the loop met (see
``kdpm2_spec.discrepancy``). A call the implementation cannot be asked (no ``set_begin_index``, no
``add_noise``) makes the case ``Unsupported``; an output it does not return
(``pred_original_sample``) is noted as unchecked, and the rest of the case runs.

float64 comparisons are made at the run's numerical level (``kdpm2_spec.levels``) and their errors
recorded; other dtypes at the dtype's own tolerance (``kdpm2_spec.catalog.DTYPE_RTOL``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kdpm2_spec import catalog, levels
from kdpm2_spec.discrepancy import Discrepancy, compare, raised
from kdpm2_spec.reference import Reference, model_output_for
from kdpm2_spec.registry import Target, Unsupported, need, unsupported_part


def stand_in_model(x: np.ndarray, sigma: float, strength: float) -> np.ndarray:
    """A well-conditioned denoiser: the exact one of N(0.5, 0.5^2) data plus a bounded non-linear term."""
    var = 0.25
    exact = (var * x + sigma**2 * 0.5) / (var + sigma**2)
    return exact + strength * np.tanh(x) / (1 + sigma)


def call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or a ``Discrepancy`` naming the implementation's call ``what`` that raised."""
    try:
        return fn(*args, **kwargs)
    except (Unsupported, Discrepancy):
        raise
    except Exception as error:
        raise raised(what, error, "return") from error


def built(
    target: Target, config: dict[str, Any], impl: Any = None, **timesteps_args: Any
) -> tuple[Reference, Any, str]:
    """The reference and the implementation after the same ``set_timesteps`` call (and its text).

    The reference must accept the request (a case strategy never draws one it rejects); the
    implementation's constructor and ``set_timesteps`` raising is a discrepancy. ``impl``: a
    scheduler to use instead of a new one (``set_timesteps`` is still called on it).
    """
    args = ", ".join(f"{k}={v!r}" for k, v in timesteps_args.items())
    text = f"{target.name}(**{config!r}).set_timesteps({args})"
    ref = Reference(**config)
    ref.set_timesteps(**timesteps_args)
    if impl is None:
        impl = call("constructor", target.create, config)
    call("set_timesteps", impl.set_timesteps, **timesteps_args)
    return ref, impl, text


def loop_rtol(adapter: Any, rtol: float | None = None, kind: str = "loop") -> tuple[float, bool]:
    """The tolerance of a loop comparison in the adapter's dtype, and whether it counts towards the level.

    float64: ``rtol`` if given, else the run level's tolerance of ``kind`` (``loop``, or ``churn``
    for churned loops), measured. Other dtypes: the larger of ``rtol`` and the dtype's floor (not
    measured: a dtype is not a level).
    """
    dtype = str(getattr(adapter, "dtype_name", "float64"))
    if dtype == "float64":
        return (levels.tolerance(kind) if rtol is None else rtol), rtol is None
    return max(rtol or 0.0, catalog.DTYPE_RTOL.get(dtype, 0.0)), False


def amplification(ref: Reference) -> float:
    """The largest factor ``s_i / m_i`` by which a second-order call multiplies an error in its midpoint sample.

    The second call moves the stored sample by ``d' (s_(i+1) - s_i)`` with ``d' = (x_m - x0') / m_i``:
    an error ``e`` in ``x_m`` comes out as ``e (s_i - s_(i+1)) / m_i``. In float64 that is still
    rounding; with float32 tables it is what separates a correct implementation from the
    reference after a step from ``s_0 = 20291`` to ``s_1 = 15.4`` (``squaredcos_cap_v2`` at 25
    steps: 36). Level tolerances are per unit of it (at least 1).
    """
    hat = np.asarray(ref.sigmas[0:-2:2], dtype=np.float64)
    mids = np.asarray(ref.sigmas_interpol[1:-1:2], dtype=np.float64)
    n = min(len(hat), len(mids))
    hat, mids = hat[:n], mids[:n]
    ok = mids > 0
    return max(1.0, float(np.max(hat[ok] / mids[ok]))) if ok.any() else 1.0


class Comparer:
    """Compares outputs, remembers every kind of discrepancy (its first message) and records errors.

    ``amp`` (``amplification``) scales a measured tolerance and divides the error recorded for the level.
    """

    def __init__(self, rtol: float, measured: bool, kind: str = "loop", amp: float = 1.0) -> None:
        self.measured, self.kind, self.amp = measured, kind, amp
        self.rtol = rtol * amp if measured else rtol
        self.found: list[Discrepancy] = []

    def check(
        self,
        where: str,
        what: str,
        want: Any,
        got: Any,
        scale: float = 1.0,
        positions: Callable[[int], str] | None = None,
    ) -> bool:
        """Whether ``got`` equals ``want``; a new kind of difference is remembered (with ``where``)."""
        found, ratio = compare(what, want, got, self.rtol, scale, positions)
        if self.measured:
            levels.record(self.kind, ratio / self.amp)
        known = {f for d in self.found for f in d.findings}
        for d in found:
            if not set(d.findings) <= known:
                self.found.append(Discrepancy(f"{d} [{where}]", d.findings))
        return not found

    def fail(self, discrepancy: Discrepancy) -> None:
        self.found.append(discrepancy)

    def raise_found(self) -> None:
        if self.found:
            raise Discrepancy.merge(self.found)


def _after(first: bool) -> Callable[[int], str]:
    text = "after first-order calls" if first else "after second-order calls"
    return lambda _i: text


def _order(first: bool) -> Callable[[int], str]:
    text = "first-order calls" if first else "second-order calls"
    return lambda _i: text


def run_loop(
    target: Target,
    adapter: Any,
    config: dict[str, Any],
    timesteps_args: dict[str, Any],
    begin: int | None,
    strength: float,
    seed: int,
    shape: tuple[int, ...],
    rtol: float | None = None,
    inpaint: bool = False,
    impl: Any = None,
) -> None:
    """Sample with the reference and the implementation, feeding both the reference's model output.

    ``begin`` (full steps) starts mid-schedule from ``add_noise`` after ``set_begin_index``.
    ``inpaint`` calls ``add_noise(x0, noise, timesteps[k + 1])`` after every call ``k`` and blends
    it into the sample outside a mask, as inpainting pipelines do (``set_begin_index`` is then
    always called, as those pipelines do). ``rtol`` overrides the level's tolerance (float64).
    ``impl``: an already used scheduler to run the loop on (after its ``set_timesteps``).
    """
    # churn lifts the sample by s_noise * sqrt(sh^2 - s^2), a difference of squares that turns a
    # table's rounding into a much larger relative error: a level has a looser tolerance for it
    kind = "churn" if config.get("s_churn", 0) > 0 else "loop"
    rtol, measured = loop_rtol(adapter, rtol, kind)
    ref, impl, text = built(target, config, impl, **timesteps_args)
    cmp = Comparer(rtol, measured, kind, amplification(ref))
    calls = len(ref.timesteps)
    impl_timesteps = call("timesteps", need, impl, "timesteps")
    if len(impl_timesteps) != calls:
        cmp.check(text, "timesteps", ref.timesteps, adapter.array(impl_timesteps))
        cmp.raise_found()
    rng = np.random.default_rng(seed)
    x0, eps = 0.5 + 0.5 * rng.standard_normal(shape), rng.standard_normal(shape)
    mask = rng.random(shape) < 0.5
    noise = adapter.noise(seed) if config.get("s_churn", 0) > 0 else None
    start = 0
    scale = 1.0  # the largest operand so far: rounding errors are relative to it and carry over
    setup = text
    if begin is not None or inpaint:
        start = 0 if begin is None else min(2 * begin, calls - 1)
        ref.set_begin_index(start)
        need(impl, "set_begin_index")
        call("set_begin_index", impl.set_begin_index, start)
        setup = f"{text}; set_begin_index({start})"
    if begin is None:
        x_ref = eps * ref.init_noise_sigma
        x_impl = adapter.tensor(x_ref)
    else:
        need(impl, "add_noise")
        x_ref = ref.add_noise(x0, eps, ref.timesteps[start : start + 1])
        got = call(
            "add_noise", impl.add_noise, adapter.tensor(x0), adapter.tensor(eps), impl_timesteps[start : start + 1]
        )
        where = f"add_noise(x0, noise, timesteps[{start}:{start + 1}]) [{setup}]"
        cmp.check(where, "add_noise", x_ref, adapter.array(got), float(np.max(np.abs(x_ref))))
        x_impl = adapter.tensor(x_ref)
    if noise is not None and ref.sigmas[start] > ref.main_sigmas_table[start // 2]:
        # the caller applies the first churn (the scheduler adds it at the end of each full step)
        lift = config.get("s_noise", 1.0) * math.sqrt(ref.sigmas[start] ** 2 - ref.main_sigmas_table[start // 2] ** 2)
        first = noise.draw(shape)
        x_ref = x_ref + first * lift
        x_impl = adapter.tensor(adapter.array(x_impl) + first * lift)
    elif noise is not None:
        noise.draw(shape)
    prediction = config.get("prediction_type", "epsilon")
    for k in range(start, calls):
        where = f"call {k} of {setup}"
        if ref.step_index is not None and ref.step_index >= calls:
            # a repeated first timestep made the lookup skip a call: the reference's next step raises
            try:
                impl.scale_model_input(x_impl, impl_timesteps[k])
                impl.step(adapter.tensor(np.zeros(shape)), impl_timesteps[k], x_impl)
            except (ValueError, LookupError):
                break
            cmp.fail(
                Discrepancy.one(
                    "step past the end",
                    "no error",
                    f"call {k}: step past the end (step_index={ref.step_index}) must raise ValueError [{setup}]",
                )
            )
            break
        t_ref, t_impl = ref.timesteps[k], impl_timesteps[k]
        first_order = ref.state_in_first_order
        scale = max(scale, float(np.max(np.abs(x_ref))))
        want_in = ref.scale_model_input(x_ref, t_ref)
        got_in = call("scale_model_input", impl.scale_model_input, x_impl, t_impl)
        if k == start and getattr(impl, "step_index", None) not in (None, ref.step_index):
            cmp.fail(
                Discrepancy.one(
                    "first call",
                    "at another step index",
                    f"the first call looked up step_index {impl.step_index}, but the reference's is {ref.step_index} "
                    f"(timesteps[{k}]={float(adapter.array(t_impl))!r}) [{where}]",
                )
            )
            break
        cmp.check(
            f"scale_model_input(sample, timesteps[{k}]) [{where}]",
            "model input",
            want_in,
            adapter.array(got_in),
            scale,
            _order(first_order),
        )
        sigma = ref.current_sigma
        if sigma == 0:  # only after a skipped call (see below): the next step raises
            sigma = 1.0
        out = model_output_for(stand_in_model(x_ref, sigma, strength), x_ref, sigma, prediction)
        drawn = None
        if noise is not None and not first_order and k + 1 < calls:
            drawn = noise.step_draw(shape)
        kwargs = noise.step_kwargs(drawn) if noise else {}
        try:
            want = ref.step(out, t_ref, x_ref, noise=drawn)
        except ValueError as error:  # e.g. a repeated first timestep made the lookup skip a call
            try:
                impl.step(adapter.tensor(out), t_impl, x_impl, **kwargs)
            except (ValueError, LookupError):
                break
            cmp.fail(
                Discrepancy.one(
                    "step past the end",
                    "no error",
                    f"step(model_output, timesteps[{k}], sample) must raise ValueError ({error}) [{where}]",
                )
            )
            break
        got = call("step", impl.step, adapter.tensor(out), t_impl, x_impl, **kwargs)
        # rounding is relative to the operands: sigma * model_output can be 100x the result
        scale = max(scale, sigma * float(np.max(np.abs(out))), float(np.max(np.abs(drawn if drawn is not None else 0))))
        step_call = f"step(model_output, timesteps[{k}], sample) [{where}]"
        prev = call("step output", need, got, "prev_sample", "the step output")
        same = cmp.check(step_call, "prev_sample", want.prev_sample, adapter.array(prev), scale, _order(first_order))
        denoised = getattr(got, "pred_original_sample", None)
        if denoised is None:
            unsupported_part("the step output has no pred_original_sample")
        else:
            cmp.check(
                step_call,
                "pred_original_sample",
                want.pred_original_sample,
                adapter.array(denoised),
                scale,
                _order(first_order),
            )
        x_ref = want.prev_sample
        x_impl = prev if same else adapter.tensor(x_ref)  # after a difference, go on from the reference's sample
        if inpaint and k + 1 < calls:
            t_next = impl_timesteps[k + 1 : k + 2]
            noised_ref = ref.add_noise(x0, eps, ref.timesteps[k + 1 : k + 2])
            noised = call("add_noise", impl.add_noise, adapter.tensor(x0), adapter.tensor(eps), t_next)
            after = _after(first_order)
            same = cmp.check(
                f"add_noise(x0, noise, timesteps[{k + 1}:{k + 2}]) after call {k} [{setup}]",
                "add_noise after a step",
                noised_ref,
                adapter.array(noised),
                float(np.max(np.abs(noised_ref))),
                after,
            )
            x_ref = np.where(mask, x_ref, noised_ref)
            blended = np.where(mask, adapter.array(x_impl), adapter.array(noised))
            x_impl = adapter.tensor(blended if same else x_ref)  # after a difference, the reference's sample
    cmp.raise_found()

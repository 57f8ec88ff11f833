"""The invariants of an ancestral (DPM2 a) scheduler, one executable check each.

Two kinds, like ``invariants``:

- table checks ``check_*(sched, adapter)`` on a scheduler after ``set_timesteps``;
- loop checks ``check_*(adapter, case)`` that build schedulers through an ``Adapter`` and run a
  sampling loop (``case`` is an ``AncestralLoop``).

``CHECKS`` maps each property name to a ``check(adapter, case)`` and ``STRATEGIES`` to the
Hypothesis strategy of its cases, so a gate can register them as they are. Every check raises
``AssertionError`` naming the broken relation, or ``Unsupported`` when the class lacks what it
needs (``eta``, ``noise=``, a list of generators). Each holds for ``AncestralReference`` and for
any correct implementation; ``expected_diffusers()`` says which diffusers 0.42's class fails, and why.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st

from kdpm2_spec import strategies as ks
from kdpm2_spec.adapter import Adapter, NumpyAdapter
from kdpm2_spec.ancestral import AncestralReference, ancestral_step
from kdpm2_spec.discrepancy import Discrepancy
from kdpm2_spec.invariants import table_rtol
from kdpm2_spec.reference import Reference, model_output_for
from kdpm2_spec.registry import Unsupported  # the gate's: a check that cannot run is reported apart

NUMPY = NumpyAdapter(AncestralReference)

NOISE_Z = 5.33
"""Two-sided z bound of the noise statistics: a false alarm in 1e-7 per statistic (Gaussian tail)."""


# -- tables -----------------------------------------------------------------------------------


def calls_of(sched: Any, adapter: Adapter = NUMPY) -> list[tuple[int, int]]:
    """``(index, order)`` of each call, walking the tables as a loop does: a first-order call is
    followed by a second-order one unless its step descends to 0 (``sigmas_down[k] == 0``)."""
    down = adapter.array(sched.sigmas_down)
    out, k, calls = [], 0, len(adapter.array(sched.timesteps))
    while k < calls:
        out.append((k, 1))
        if down[k] > 0 and k + 1 < calls:
            out.append((k + 1, 2))
            k += 1
        k += 1
    return out


def check_tables_finite(sched: Any, adapter: Adapter = NUMPY) -> None:
    """``sigmas``, ``sigmas_interpol``, ``sigmas_up``, ``sigmas_down`` and ``timesteps`` hold no NaN or infinity."""
    parts = []
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down", "timesteps"):
        table = adapter.array(getattr(sched, name))
        bad = np.flatnonzero(~np.isfinite(table))
        if len(bad):
            parts.append(Discrepancy.one(name, "not finite", f"{name}[{bad[0]}]={table[bad[:1]]} is not finite"))
    if parts:
        raise Discrepancy.merge(parts)


def check_noise_split(sched: Any, adapter: Adapter = NUMPY) -> None:
    """Each step's ``sigma_up^2 + sigma_down^2 = sigma_next^2`` (within rounding), ``0 <= sigma_up <= sigma_next``,
    ``sigma_up`` is k-diffusion's clamped value for the config's ``eta`` (1 if it has none), and the midpoint is
    ``sqrt(sigma sigma_down)`` (0 where ``sigma_down`` is 0)."""
    rtol = table_rtol(sched)
    sigmas, interpol = adapter.array(sched.sigmas), adapter.array(sched.sigmas_interpol)
    up, down = adapter.array(sched.sigmas_up), adapter.array(sched.sigmas_down)
    eta = _eta(sched)
    calls = calls_of(sched, adapter)
    for j, (k, order) in enumerate(calls):
        if order != 1:
            continue
        nxt = calls[j + 1][0] if j + 1 < len(calls) else len(calls)
        s, s_next = sigmas[k], sigmas[nxt]  # the next call's entry holds the next step's sigma
        where = f"step at call {k} (sigma {s:.6g} -> {s_next:.6g})"
        if s_next == 0:
            _require(
                up[k] == 0 and down[k] == 0 and interpol[k] == 0,
                ("step to 0", "adds noise or has a midpoint"),
                f"a step to 0 adds no noise and has no midpoint at {where}",
            )
            continue
        # each quantity against k-diffusion's first: a NaN or an out-of-range value fails there, so one
        # defect gives one finding whatever value the rounding of a given CPU makes of it
        want_down, want_up = ancestral_step(float(s), float(s_next), eta)
        _require(
            abs(up[k] - want_up) <= 4 * rtol * s_next,
            ("sigma_up", "not k-diffusion's"),
            f"sigma_up {up[k]!r}, k-diffusion's {want_up!r} at {where}",
        )
        # relative to sigma_down itself: the rounding of s and s_next moves it by a few of their ulps
        # (at eta = 1 it is s_next^2 / s); near the clamp the radicand's sensitivity adds the second term
        r = s_next / s
        flat = (eta * r) ** 2 * s_next / max(want_down / s_next, math.sqrt(rtol))
        bound = 4 * rtol * (want_down + flat)
        _require(
            abs(down[k] - want_down) <= bound,
            ("sigma_down", "not k-diffusion's"),
            f"sigma_down {down[k]!r}, k-diffusion's {want_down!r} at {where}",
        )
        _require(
            0 <= up[k] <= s_next * (1 + rtol) and 0 <= down[k] <= s_next * (1 + rtol),
            ("sigma_up, sigma_down", "outside [0, sigma_next]"),
            f"sigma_up {up[k]!r} or sigma_down {down[k]!r} outside [0, sigma_next] at {where}",
        )
        total = up[k] ** 2 + down[k] ** 2
        _require(
            abs(total - s_next**2) <= 4 * rtol * s_next**2,
            ("sigma_up^2 + sigma_down^2", "not sigma_next^2"),
            f"sigma_up^2 + sigma_down^2 = {total!r} != sigma_next^2 = {s_next**2!r} at {where}",
        )
        mid = math.sqrt(s * down[k])
        _require(
            abs(interpol[k] - mid) <= 4 * rtol * max(mid, rtol * s),
            ("sigmas_interpol", "not sqrt(sigma sigma_down)"),
            f"midpoint {interpol[k]!r} != {mid!r} at {where}",
        )


def _eta(sched: Any) -> float:
    """The scheduler's ``eta`` (1, DPM2 a, for a class without one)."""
    return float(getattr(sched, "config", {}).get("eta", 1.0))


def _require(condition: Any, finding: tuple[str, str], message: str) -> None:
    """Raise the ``Discrepancy`` of ``finding`` (what, kind) unless ``condition`` holds."""
    if not condition:
        raise Discrepancy.one(*finding, message)


def check_calls_layout(sched: Any, adapter: Adapter = NUMPY) -> None:
    """One timestep per call (two per step, one for a step to 0); the tables are ``len(timesteps) + 3`` long
    (``+ 2`` when the final sigma is not 0) and a second-order call's entry repeats the next first-order call's."""
    sigmas, timesteps = adapter.array(sched.sigmas), adapter.array(sched.timesteps)
    calls = calls_of(sched, adapter)
    # the cause before its effects: a sigma_down of 0 or NaN where k-diffusion's is not walks as one call
    down, eta = adapter.array(sched.sigmas_down), _eta(sched)
    for j, (k, order) in enumerate(calls):
        if order == 1 and j + 1 < len(calls) and not down[k] > 0:
            s, s_next = float(sigmas[k]), float(sigmas[calls[j + 1][0]])
            _require(
                not (s_next > 0 and ancestral_step(s, s_next, eta)[0] > 0),
                ("sigmas_down", "0 or NaN where k-diffusion's is not: the step walks as one call"),
                f"sigmas_down[{k}]={down[k]!r} (sigma {s:.6g} -> {s_next:.6g}): the tables walk this step as one call",
            )
    _require(
        len(calls) == len(timesteps),
        ("timesteps", "not one per call the tables walk"),
        f"{len(timesteps)} timesteps but the tables walk {len(calls)} calls",
    )
    extra = 3 if sigmas[-1] == 0 else 2
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        table = adapter.array(getattr(sched, name))
        _require(
            len(table) == len(timesteps) + extra,
            (name, "wrong length"),
            f"len({name})={len(table)}, expected {len(timesteps) + extra}",
        )
    for j, (k, order) in enumerate(calls):
        if order == 2 and j + 1 < len(calls):
            _require(
                sigmas[k] == sigmas[calls[j + 1][0]],
                ("sigmas", "a second-order entry is not the next step's sigma"),
                f"sigmas[{k}] must repeat the next step's sigma",
            )


# -- loops --------------------------------------------------------------------------------------


class AncestralLoop(NamedTuple):
    """A sampling loop: configuration (``eta``/``s_noise`` included where supported), steps, model, seed, shape."""

    config: dict[str, Any]
    steps: int
    model: float
    seed: int
    shape: tuple[int, ...]


etas = st.sampled_from([1.0, 1.0, 0.0, 0.5, 0.85, 1.25])
"""``eta`` values: 1 (DPM2 a) most often, 0 (DPM2), in between, and above 1 (the clamp binds)."""

s_noises = st.sampled_from([1.0, 1.0, 0.5, 1.003])


def supported(adapter: Adapter) -> frozenset[str]:
    """The constructor arguments of the adapter's class."""
    return ks.supported_args(adapter.cls)  # type: ignore[attr-defined]


@st.composite
def ancestral_loops(draw: Any, args: frozenset[str]) -> AncestralLoop:
    """A loop over a configuration from ``args`` (``eta`` and ``s_noise`` drawn when the class has them)."""
    config, steps = draw(ks.schedules(args, churn=False))
    config = dict(config)
    if "eta" in args and draw(st.booleans()):
        config["eta"] = draw(etas)
    if "s_noise" in args and draw(st.booleans()):
        config["s_noise"] = draw(s_noises)
    shape = draw(st.sampled_from([(2, 4, 8, 8), (1, 2, 4, 4), (2, 64)]))
    return AncestralLoop(config, steps, draw(ks.model_strengths), draw(ks.seeds), shape)


def stand_in(x: np.ndarray, sigma: float, strength: float) -> np.ndarray:
    """The denoiser of the loops: the exact one of N(0.5, 0.5^2) data plus a bounded non-linear term."""
    var = 0.25
    return (var * x + sigma**2 * 0.5) / (var + sigma**2) + strength * np.tanh(x) / (1 + sigma)


def _reference(case: AncestralLoop) -> AncestralReference:
    ref = AncestralReference(**case.config)
    ref.set_timesteps(case.steps)
    return ref


def _takes_noise(sched: Any) -> bool:
    return "noise" in inspect.signature(sched.step).parameters


class _Feed:
    """The unit noise of each second-order call: given as ``noise=`` where ``step`` takes it, else
    drawn by the scheduler from a ``torch.Generator`` and repeated here from a twin generator."""

    def __init__(self, adapter: Any, sched: Any, seed: int) -> None:
        self.adapter, self.explicit, self.seed = adapter, _takes_noise(sched), seed
        self.rng = np.random.default_rng(seed)
        torch: Any = getattr(adapter, "torch", None)
        if not self.explicit and torch is None:
            raise Unsupported("step takes neither noise= nor a torch generator")
        if not self.explicit:
            self.torch = torch
            self.generator = torch.Generator().manual_seed(seed)
            self.twin = torch.Generator().manual_seed(seed)

    def next(self, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        """This call's noise for the reference, and the ``step`` keywords that give the scheduler the same."""
        if self.explicit:
            z = self.rng.standard_normal(shape)
            return z, {"noise": self.adapter.tensor(z)}
        dtype = self.adapter.dtype
        z = self.torch.randn(shape, generator=self.twin, dtype=dtype).double().numpy()
        return z, {"generator": self.generator}


def run_against_reference(adapter: Any, case: AncestralLoop, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Run the loop of ``case`` on the adapter's class and on ``AncestralReference`` with the same noise.

    Every call's ``prev_sample`` must agree to ``rtol`` relative to the largest operand so far.
    Returns both final samples. A call that does not agree is a ``Discrepancy`` of ``prev_sample``
    (``off_kind``): off where the reference run on some of the implementation's own per-call
    tables agrees (those tables are wrong, its step is right), else off by its step, or not finite.
    """
    ref = _reference(case)
    impl = adapter.create(**case.config)
    impl.set_timesteps(case.steps)
    text = f"{getattr(adapter.cls, '__name__', adapter.cls)}(**{case.config!r}).set_timesteps({case.steps})"
    calls = len(ref.timesteps)
    got_calls = len(adapter.array(impl.timesteps))
    if got_calls != calls:
        raise Discrepancy.one(
            "timesteps", "wrong number of calls", f"{got_calls} calls, the reference makes {calls} [{text}]"
        )
    feed = _Feed(adapter, impl, case.seed)
    rng = np.random.default_rng(case.seed + 1)
    x_ref = rng.standard_normal(case.shape) * ref.init_noise_sigma
    x_impl = adapter.tensor(x_ref)
    if np.count_nonzero(ref.timesteps == ref.timesteps[0]) > 1:  # see invariants._start_at_first_call
        ref.set_begin_index(0)
        impl.set_begin_index(0)
    scale = float(np.abs(x_ref).max())
    prediction = case.config.get("prediction_type", "epsilon")
    for k in range(calls):
        t_ref, t_impl = ref.timesteps[k], impl.timesteps[k]
        ref.scale_model_input(x_ref, t_ref)
        impl.scale_model_input(x_impl, t_impl)
        sigma = ref.current_sigma
        out = model_output_for(stand_in(x_ref, sigma, case.model), x_ref, sigma, prediction)
        kwargs: dict[str, Any] = {}
        z = None
        if ref.adds_noise():
            z, kwargs = feed.next(case.shape)
        before = copy.copy(ref)  # this call's state, for off_kind (the step replaces, never mutates, its arrays)
        want = ref.step(out, t_ref, x_ref, noise=z)
        got = adapter.array(impl.step(adapter.tensor(out), t_impl, x_impl, **kwargs).prev_sample)
        scale = max(scale, sigma * float(np.abs(out).max()), float(np.abs(want.prev_sample).max()))
        err = float(np.abs(got - want.prev_sample).max())
        if not err <= rtol * scale:
            kind = off_kind(adapter, impl, before, (out, t_ref, x_ref, z), got, max(rtol, LOOP_RTOL) * scale)
            raise Discrepancy.one(
                "prev_sample",
                kind,
                f"call {k}: prev_sample off by {err:.3g} (> {rtol:.1g} x {scale:.3g}), {kind} [{text}]",
            )
        x_ref, x_impl = want.prev_sample, adapter.tensor(got)
    return x_ref, got


TABLES = ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down")
"""The per-call tables of diffusers' layout that a call reads (``AncestralReference`` keeps the same)."""


def own_tables(adapter: Any, impl: Any, ref: AncestralReference) -> dict[str, np.ndarray] | None:
    """The implementation's ``TABLES`` in float64, where it has all four in the reference's layout, else None."""
    try:
        own = {name: np.asarray(adapter.array(getattr(impl, name)), dtype=np.float64) for name in TABLES}
    except (AttributeError, TypeError, ValueError):
        return None
    return own if all(own[name].shape == getattr(ref, name).shape for name in TABLES) else None


BLAME = (
    ("sigma_down and midpoint", ("sigmas_interpol", "sigmas_down")),
    ("sigma_up", ("sigmas_up",)),
    ("sigmas", ("sigmas",)),
    ("tables", TABLES),
)
"""The tables ``off_kind`` tries in turn, by the quantity they hold: the midpoint is sqrt(sigma sigma_down)."""


def off_kind(
    adapter: Any, impl: Any, before: AncestralReference, call: tuple[Any, ...], got: np.ndarray, tol: float
) -> str:
    """Why a call's ``prev_sample`` is off: ``off, its own QUANTITY``, ``off, its step`` or ``not finite``.

    ``before`` is the reference as the call found it. It runs the call again with some of the
    implementation's own tables in place of its own (where the implementation has all four, in the
    reference's layout): first ``sigmas_interpol`` and ``sigmas_down``, then ``sigmas_up``, then
    ``sigmas``, then all four (``BLAME``). The first whose result is within ``tol`` of ``got`` (at
    least the float32-table tolerance, whatever the level checked), or non-finite as ``got`` is,
    names the quantity that is off while the step is right: diffusers' float32 ``sigma_down``
    cancels at few steps (a few percent off, 0 or NaN, by the last bit of its sigmas on a given
    CPU); a wrong noise scale is ``sigma_up``. The table properties then say how. Anything else is
    the step's own: ``not finite`` where it makes a NaN from finite tables, else ``off, its step``.
    """
    finite = bool(np.isfinite(got).all())
    step = "off, its step" if finite else "not finite"
    own = own_tables(adapter, impl, before)
    if own is None:
        return step
    out, t, x, z = call
    for quantity, names in BLAME:
        trial = copy.copy(before)
        for name in names:
            setattr(trial, name, own[name])
        with np.errstate(all="ignore"):
            again = trial.step(out, t, x, noise=z).prev_sample
        # a NaN its own tables make (diffusers' 0 or NaN sigma_down) is theirs too
        if (not np.isfinite(again).all()) if not finite else float(np.abs(got - again).max()) <= tol:
            return f"off, its own {quantity}"
    return step


LOOP_RTOL = 1e-5
"""Loops at float32 table precision (diffusers keeps float32 tables), relative to the largest operand."""


def check_matches_reference(adapter: Any, case: AncestralLoop) -> None:
    """Given the noise, each call equals ``AncestralReference``'s to float32 table precision (``LOOP_RTOL``)."""
    run_against_reference(adapter, case, max(LOOP_RTOL, _rtol(adapter, 0.0)))


def check_matches_reference_exact(adapter: Any, case: AncestralLoop) -> None:
    """Given the noise, each call is deterministic and equals ``AncestralReference``'s (float64: rounding only)."""
    run_against_reference(adapter, case, _rtol(adapter, 1e-11))


def _rtol(adapter: Any, float64: float) -> float:
    name = getattr(adapter, "dtype_name", "float64")
    return float64 if name == "float64" else {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}[name]


def check_eta_zero_is_dpm2(adapter: Any, case: AncestralLoop) -> None:
    """``eta = 0`` is DPM2: the same calls (timesteps and sigmas) and the same samples as the DPM2 ``Reference``."""
    if "eta" not in supported(adapter):
        raise Unsupported("the class has no eta")
    config = {**case.config, "eta": 0.0}
    dpm2_config = {k: v for k, v in config.items() if k not in ("eta", "s_noise")}
    dpm2 = Reference(**dpm2_config)
    dpm2.set_timesteps(case.steps)
    impl = adapter.create(**config)
    impl.set_timesteps(case.steps)
    text = f"{getattr(adapter.cls, '__name__', adapter.cls)}(**{config!r}).set_timesteps({case.steps})"
    rtol = _rtol(adapter, 1e-11)
    timesteps = adapter.array(impl.timesteps)
    assert len(timesteps) == len(dpm2.timesteps), f"{len(timesteps)} calls, DPM2 makes {len(dpm2.timesteps)} [{text}]"
    t_rtol = max(rtol, 1e-6) if str(getattr(impl.timesteps, "dtype", "")).endswith("float32") else rtol
    close = np.abs(timesteps - dpm2.timesteps) <= t_rtol * np.maximum(np.abs(dpm2.timesteps), 1.0)
    assert close.all(), f"timesteps {timesteps[~close][:3]} differ from DPM2's {dpm2.timesteps[~close][:3]} [{text}]"
    feed = _Feed(adapter, impl, case.seed)
    rng = np.random.default_rng(case.seed + 1)
    x_ref = rng.standard_normal(case.shape) * dpm2.init_noise_sigma
    x_impl = adapter.tensor(x_ref)
    if np.count_nonzero(dpm2.timesteps == dpm2.timesteps[0]) > 1:
        dpm2.set_begin_index(0)
        impl.set_begin_index(0)
    scale = float(np.abs(x_ref).max())
    prediction = config.get("prediction_type", "epsilon")
    for k, t in enumerate(dpm2.timesteps):
        first = dpm2.state_in_first_order
        dpm2.scale_model_input(x_ref, t)
        sigma = dpm2.current_sigma
        out = model_output_for(stand_in(x_ref, sigma, case.model), x_ref, sigma, prediction)
        kwargs = feed.next(case.shape)[1] if not first else {}
        want = dpm2.step(out, t, x_ref).prev_sample
        got = adapter.array(impl.step(adapter.tensor(out), impl.timesteps[k], x_impl, **kwargs).prev_sample)
        scale = max(scale, sigma * float(np.abs(out).max()), float(np.abs(want).max()))
        err = float(np.abs(got - want).max())
        assert err <= rtol * scale, f"call {k}: eta=0 is {err:.3g} away from DPM2 (> {rtol:.1g} x {scale:.3g}) [{text}]"
        x_ref, x_impl = want, adapter.tensor(got)


def _torch(adapter: Any) -> Any:
    torch = getattr(adapter, "torch", None)
    if torch is None:
        raise Unsupported("needs a torch scheduler (generator semantics)")
    return torch


def _generator_loop(adapter: Any, case: AncestralLoop, generator: Any, x: np.ndarray) -> np.ndarray:
    """A loop from ``x`` (before ``init_noise_sigma``) drawing its noise from ``generator``; the final sample."""
    impl = adapter.create(**case.config)
    impl.set_timesteps(case.steps)
    timesteps = adapter.array(impl.timesteps)
    if np.count_nonzero(timesteps == timesteps[0]) > 1:
        impl.set_begin_index(0)
    sample = adapter.tensor(x * float(adapter.array(impl.init_noise_sigma)))
    prediction = case.config.get("prediction_type", "epsilon")
    sigmas, interpol = adapter.array(impl.sigmas), adapter.array(impl.sigmas_interpol)
    for k, t in enumerate(impl.timesteps):
        first = impl.state_in_first_order
        sigma = float(sigmas[k] if first else interpol[k - 1])
        x_np = adapter.array(sample)
        out = model_output_for(stand_in(x_np, sigma, case.model), x_np, sigma, prediction)
        impl.scale_model_input(sample, t)
        sample = impl.step(adapter.tensor(out), t, sample, generator=generator).prev_sample
    return adapter.array(sample)


def check_same_seeds_same_result(adapter: Any, case: AncestralLoop) -> None:
    """Two loops with generators seeded alike give the same sample, bit for bit; another seed gives another."""
    torch = _torch(adapter)
    x = np.random.default_rng(case.seed + 1).standard_normal(case.shape)
    a = _generator_loop(adapter, case, torch.Generator().manual_seed(case.seed), x)
    b = _generator_loop(adapter, case, torch.Generator().manual_seed(case.seed), x)
    assert np.array_equal(a, b, equal_nan=True), f"same seed {case.seed}, different samples [{case.config!r}]"
    ref = _reference(case)
    if any(s.sigma_mid is not None and s.sigma_up > 0 for s in ref.steps) and case.config.get("s_noise", 1.0) > 0:
        c = _generator_loop(adapter, case, torch.Generator().manual_seed(case.seed + 7919), x)
        assert not np.array_equal(a, c), f"seeds {case.seed} and {case.seed + 7919} give the same sample"


def check_batch_independent(adapter: Any, case: AncestralLoop) -> None:
    """With one generator per batch item, each item's result is the item run alone with its generator."""
    torch = _torch(adapter)
    shape = case.shape if len(case.shape) > 1 and case.shape[0] > 1 else (2, *case.shape[1:])
    x = np.random.default_rng(case.seed + 1).standard_normal(shape)
    seeds = [case.seed + 1000 * i for i in range(shape[0])]
    batch = _generator_loop(adapter, case._replace(shape=shape), [torch.Generator().manual_seed(s) for s in seeds], x)
    for i, seed in enumerate(seeds):
        alone = _generator_loop(
            adapter, case._replace(shape=(1, *shape[1:])), torch.Generator().manual_seed(seed), x[i : i + 1]
        )
        # elementwise float arithmetic: equal up to the vectorised kernels' treatment of a tail (an ulp)
        scale = float(np.nanmax(np.abs(alone), initial=0.0)) or 1.0
        atol = 8 * float(np.finfo(np.float32).eps) * scale
        same = np.isclose(batch[i : i + 1], alone, rtol=0.0, atol=atol, equal_nan=True)
        assert same.all(), f"batch item {i} (seed {seed}) differs from the item run alone [{case.config!r}]"


def check_noise_statistics(adapter: Any, case: AncestralLoop) -> None:
    """A second-order call adds noise of mean 0 and standard deviation ``s_noise * sigma_up``.

    One second-order call on 65536 values, made twice from the same state with two generators.
    The mean: the first result minus the reference's noiseless update on the implementation's own
    tables (``own_tables``: a table error, which the other properties name, does not bias it) must
    lie within ``NOISE_Z`` standard errors of 0. The variance: the difference of the two results,
    two independent draws of the added noise whatever the deterministic part, must have variance
    ``2 (s_noise sigma_up)^2`` within ``NOISE_Z`` standard errors. A false alarm in 1e-7 for each,
    2e-7 for the check.
    """
    torch = _torch(adapter)
    ref = _reference(case)
    seconds = [k for k, order in calls_of(ref) if order == 2]
    if not seconds:
        raise Unsupported("the schedule has no second-order call")
    k = seconds[len(seconds) // 2]
    up = float(ref.sigmas_up[k - 1]) * case.config.get("s_noise", 1.0)
    if up == 0:
        return  # no noise to measure (eta = 0 or s_noise = 0): the deterministic checks cover it
    shape = (1, 65536)
    rng = np.random.default_rng(case.seed)
    x = rng.standard_normal(shape) * ref.sigmas[k - 1]
    prediction = case.config.get("prediction_type", "epsilon")
    ref.set_begin_index(k - 1)
    out1 = model_output_for(stand_in(x, ref.sigmas[k - 1], case.model), x, ref.sigmas[k - 1], prediction)
    x_mid = ref.step(out1, ref.timesteps[k - 1], x).prev_sample
    mid = ref.sigmas_interpol[k - 1]
    out2 = model_output_for(stand_in(x_mid, mid, case.model), x_mid, mid, prediction)
    results, impls = [], []
    for seed in (case.seed, case.seed + 1):
        impl = adapter.create(**case.config)
        impls.append(impl)
        impl.set_timesteps(case.steps)
        impl.set_begin_index(k - 1)
        impl.step(adapter.tensor(out1), impl.timesteps[k - 1], adapter.tensor(x))
        generator = torch.Generator().manual_seed(seed)
        step = impl.step(adapter.tensor(out2), impl.timesteps[k], adapter.tensor(x_mid), generator=generator)
        results.append(adapter.array(step.prev_sample))
    diff = (results[0] - results[1]).ravel()
    _require(np.isfinite(diff).all(), ("added noise", "not finite"), "the added noise is not finite")
    own = own_tables(adapter, impls[0], ref)
    noiseless = copy.copy(ref)
    for name, table in (own or {}).items():
        setattr(noiseless, name, table)
    added = (results[0] - noiseless.step(out2, ref.timesteps[k], x_mid, noise=np.zeros(shape)).prev_sample).ravel()
    count, spread2 = diff.size, 2 * up**2
    mean, var = float(added.mean()), float(diff.var(ddof=1))
    bound = NOISE_Z * up / math.sqrt(count)
    _require(
        abs(mean) <= bound,
        ("added noise", "mean not 0"),
        f"added noise has mean {mean:.4g}; expected 0 +- {bound:.3g}",
    )
    spread = NOISE_Z * math.sqrt(2 / (count - 1))
    _require(
        abs(var / spread2 - 1) <= spread,
        ("added noise", "variance not (s_noise sigma_up)^2"),
        f"added noise has variance {var / 2:.5g}; expected (s_noise sigma_up)^2 = {up**2:.5g} "
        f"within a factor 1 +- {spread:.3g}",
    )


def _tables_check(check: Callable[[Any, Adapter], None]) -> Callable[[Any, AncestralLoop], None]:
    def run(adapter: Any, case: AncestralLoop) -> None:
        impl = adapter.create(**case.config)
        impl.set_timesteps(case.steps)
        try:
            check(impl, adapter)
        except AssertionError as error:
            name = getattr(adapter.cls, "__name__", adapter.cls)
            where = f"{name}(**{case.config!r}).set_timesteps({case.steps})"
            if isinstance(error, Discrepancy):
                raise Discrepancy.merge([error], where) from None
            raise AssertionError(f"{error} [{where}]") from None

    run.__doc__ = check.__doc__
    return run


CHECKS: dict[str, Callable[[Any, AncestralLoop], None]] = {
    "ancestral_tables_finite": _tables_check(check_tables_finite),
    "ancestral_noise_split": _tables_check(check_noise_split),
    "ancestral_calls_layout": _tables_check(check_calls_layout),
    "ancestral_matches_reference": check_matches_reference,
    "ancestral_matches_reference_exact": check_matches_reference_exact,
    "ancestral_eta_zero_is_dpm2": check_eta_zero_is_dpm2,
    "ancestral_noise_statistics": check_noise_statistics,
    "ancestral_same_seeds": check_same_seeds_same_result,
    "ancestral_batch_independent": check_batch_independent,
}
"""Every ancestral property: ``check(adapter, case)`` with ``case`` from ``STRATEGIES[name](adapter)``."""


def strategy(adapter: Any) -> Any:
    """The cases of every check: ancestral loops over the class's constructor arguments."""
    return ancestral_loops(supported(adapter))


STRATEGIES: dict[str, Callable[[Any], Any]] = dict.fromkeys(CHECKS, strategy)

EXAMPLES: tuple[AncestralLoop, ...] = (
    AncestralLoop({"beta_schedule": "squaredcos_cap_v2"}, 3, 0.0, 0, (2, 4, 8, 8)),  # diffusers #14213: NaN
    AncestralLoop({"beta_schedule": "squaredcos_cap_v2"}, 8, 0.1, 1, (2, 4, 8, 8)),
    AncestralLoop({"beta_schedule": "scaled_linear"}, 2, 0.1, 2, (2, 4, 8, 8)),  # s_1 << s_0: cancellation
    AncestralLoop({"beta_schedule": "scaled_linear", "use_karras_sigmas": True}, 25, 0.1, 3, (2, 4, 8, 8)),
    AncestralLoop({}, 1, 0.0, 4, (2, 64)),  # one Euler call
)
"""Pinned cases: diffusers' NaN schedules, a large step ratio, a common config, one step."""


def expected_diffusers() -> dict[str, str]:
    """What diffusers 0.42.1's ``KDPM2AncestralDiscreteScheduler`` fails, by check, and why.

    Most of it is one defect (#14213): its float32 ``sigma_down = sqrt(s_next^2 - sigma_up^2)``
    cancels at few steps (a few percent off, 0 or NaN). Which cases turn NaN depends on the last
    bit of its float32 sigmas, so on the CPU; ``diffusers-0.42-ancestral`` records those failures
    for any configuration. ``ancestral_noise_statistics`` fails only where the tables are NaN. It
    passes ``ancestral_same_seeds`` and ``ancestral_batch_independent``;
    ``ancestral_eta_zero_is_dpm2`` is unsupported (no ``eta``).
    """
    return {
        "ancestral_tables_finite": "sigmas_up ends in NaN (0 * 0 / 0 at the final sigma 0) at every step count; "
        "a 0 or NaN sigma_down makes a NaN midpoint and its timestep (#14213)",
        "ancestral_noise_split": "sigma_down = sqrt(s_next^2 - sigma_up^2) in float32 cancels: a few percent off at "
        "2 steps with the SD betas, 0 or NaN for squaredcos_cap_v2 at few steps (#14213)",
        "ancestral_calls_layout": "its 0 or NaN sigma_down reads as an Euler step where it makes two calls",
        "ancestral_matches_reference": "its step on its own (cancelled, #14213) tables; v_prediction's float32 "
        "coefficients at sigma 20291",
        "ancestral_matches_reference_exact": "float32 tables and float32 coefficients: float64 loops move by float32 "
        "rounding, far beyond rounding in float64",
        "ancestral_noise_statistics": "NaN noise where its tables are NaN (#14213)",
    }

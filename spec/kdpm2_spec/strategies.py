"""Hypothesis strategies for KDPM2 schedulers: configurations, schedules, loops and tensors.

Import it under one short alias (``from kdpm2_spec import strategies as ks``). Every strategy is a
module-level name; values are capped so that tables stay well conditioned; paired draws come
back as NamedTuples whose ``repr`` is valid Python, so a failing case can be pasted into
``python -m kdpm2_spec check MODULE:CLASS --only NAME --case "..."``.

``configs`` draws constructor arguments restricted to the names a class accepts (see
``supported_args``) and leaves each out about half the time, so defaults are tested too.
Settings profiles ``ci``, ``dev`` and ``thorough`` are registered by ``register_profiles``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Collection
from typing import Any, NamedTuple

import numpy as np
from hypothesis import HealthCheck, reject, settings
from hypothesis import strategies as st

PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 25, "derandomize": True},
    "dev": {"max_examples": 10},
    "thorough": {"max_examples": 500},
}
"""Hypothesis settings profiles: ``ci`` (default; deterministic), ``dev`` (a quick local loop), ``thorough``."""

PROFILE_ENV = "HYPOTHESIS_PROFILE"
"""The environment variable naming the profile to load (default ``ci``)."""


def register_profiles(load: bool = True) -> str:
    """Register the ``ci``/``dev``/``thorough`` profiles and load the one ``$HYPOTHESIS_PROFILE`` names."""
    common: dict[str, Any] = {
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    }
    for name, values in PROFILES.items():
        settings.register_profile(name, **common, **values)
    name = os.environ.get(PROFILE_ENV, "ci")
    if load:
        settings.load_profile(name)
    return name


# -- configurations ---------------------------------------------------------------------------

FAMILIES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
"""The constructor flags that replace the spaced sigmas by a family (at most one is set)."""

DIFFUSERS_ARGS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    *FAMILIES,
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
)
"""The constructor arguments of ``diffusers.KDPM2DiscreteScheduler``."""


def supported_args(cls: Any) -> frozenset[str]:
    """Names of the keyword arguments ``cls(...)`` accepts (all of ours when it takes ``**kwargs``)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        from kdpm2_spec.reference import Reference

        return supported_args(Reference)
    return frozenset(k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def set_timesteps_args(cls: Any) -> frozenset[str]:
    """Names of the keyword arguments ``cls.set_timesteps`` accepts (custom ``timesteps``/``sigmas``?).

    A ``**kwargs`` (a subclass passing everything on) accepts the reference's arguments.
    """
    params = inspect.signature(cls.set_timesteps).parameters
    named = frozenset(k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        from kdpm2_spec.reference import Reference

        return named | set_timesteps_args(Reference)
    return named


num_train_timesteps = st.sampled_from([1000, 1000, 1000, 200])
beta_schedules = st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"])
spacings = st.sampled_from(["linspace", "leading", "trailing"])
prediction_types = st.sampled_from(["epsilon", "v_prediction"])
"""The prediction types every KDPM2 supports (``sample`` is checked on its own: diffusers lacks it)."""
all_prediction_types = st.sampled_from(["epsilon", "v_prediction", "sample"])
beta_starts = st.floats(1e-4, 2e-3).map(lambda x: round(x, 6))
beta_ends = st.floats(5e-3, 3e-2).map(lambda x: round(x, 5))
steps_offsets = st.integers(0, 1)
sigma_interpolations = st.sampled_from(["linear", "log"])
sigma_mins = st.floats(0.002, 0.1).map(lambda x: round(x, 4))
sigma_maxs = st.floats(1.0, 20.0).map(lambda x: round(x, 3))
churns = st.floats(0.0, 2.0).map(lambda x: round(x, 3))
s_tmins = st.sampled_from([0.0, 0.05, 0.5])
s_tmaxs = st.sampled_from([None, 1.0, 10.0])
s_noises = st.sampled_from([1.0, 1.003, 0.5])
step_counts = st.integers(1, 60)
"""Inference step counts (capped: every step count above is the same code, only slower)."""


class linear_betas(list):
    """``n`` betas on a line from ``start`` to ``end``: a plain list whose repr is the call that made it.

    Used as ``trained_betas`` so that a failing case stays short enough to paste.
    """

    def __init__(self, start: float, end: float, n: int) -> None:
        super().__init__(float(v) for v in np.linspace(start, end, n))
        self.args = (start, end, n)

    def __repr__(self) -> str:
        return f"linear_betas{self.args!r}"


@st.composite
def trained_betas(draw: Any, n: int) -> list[float]:
    """``n`` increasing betas from a random linear ramp (what ``trained_betas`` usually holds)."""
    return linear_betas(draw(beta_starts), draw(beta_ends), n)


@st.composite
def configs(
    draw: Any,
    supported: Collection[str] = DIFFUSERS_ARGS,
    prediction: st.SearchStrategy[str] = prediction_types,
    churn: bool = True,
) -> dict[str, Any]:
    """Constructor arguments over every option in ``supported``; each left out half the time.

    At most one sigma family; ``sigma_min``/``sigma_max`` only with a family; churn only when
    ``churn`` is true (a loop with churn needs the implementation's noise).
    """
    want: dict[str, st.SearchStrategy[Any]] = {
        "num_train_timesteps": num_train_timesteps,
        "beta_start": beta_starts,
        "beta_end": beta_ends,
        "beta_schedule": beta_schedules,
        "prediction_type": prediction,
        "timestep_spacing": spacings,
        "steps_offset": steps_offsets,
        "sigma_interpolation": sigma_interpolations,
        "discard_penultimate_sigma": st.booleans(),
        "quantize_timesteps": st.booleans(),
    }
    config: dict[str, Any] = {}
    for name, strategy in want.items():
        if name in supported and draw(st.booleans()):
            config[name] = draw(strategy)
    big_t = config.get("num_train_timesteps", 1000)
    if "trained_betas" in supported and draw(st.integers(0, 7)) == 0:
        config["trained_betas"] = draw(trained_betas(big_t))
    family = draw(st.sampled_from([None, *FAMILIES]))
    if family is not None and family in supported:
        config[family] = True
        if family == "use_karras_sigmas" and "round_karras_timesteps" in supported and draw(st.booleans()):
            config["round_karras_timesteps"] = draw(st.booleans())
        if "sigma_min" in supported and draw(st.booleans()):
            config["sigma_min"] = draw(sigma_mins)
        if "sigma_max" in supported and draw(st.booleans()):
            config["sigma_max"] = draw(sigma_maxs)
    if churn and "s_churn" in supported and draw(st.booleans()):
        config["s_churn"] = draw(churns)
        for name, strategy in (("s_tmin", s_tmins), ("s_tmax", s_tmaxs), ("s_noise", s_noises)):
            if draw(st.booleans()):
                config[name] = draw(strategy)
    return config


def max_steps(config: dict[str, Any]) -> int:
    """The largest step count the checks draw for a config (leading spacing needs ``T // n > 1``)."""
    big_t = config.get("num_train_timesteps", 1000)
    return min(60, big_t // 2 - 1)


class Schedule(NamedTuple):
    """A configuration and a step count for ``set_timesteps``."""

    config: dict[str, Any]
    steps: int


def bounds_cross(config: dict[str, Any], steps: int) -> bool:
    """True when a sigma family's effective bounds cross at ``steps`` (the spec rejects the request).

    Only possible with exactly one of ``sigma_min``/``sigma_max`` given: the other is the end of
    the spaced schedule, which moves with the step count.
    """
    if not any(config.get(f) for f in FAMILIES) or ("sigma_min" in config) == ("sigma_max" in config):
        return False
    from kdpm2_spec.reference import Reference

    try:
        Reference(**config).main_sigmas(steps)
    except ValueError:
        return True
    return False


@st.composite
def schedules(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS, **kwargs: Any) -> Schedule:
    """A configuration over ``supported`` and a step count that suits it (family bounds that do not cross)."""
    config = draw(configs(supported, **kwargs))
    steps = draw(st.integers(1, max_steps(config)))
    if bounds_cross(config, steps):
        valid = [n for n in range(1, max_steps(config) + 1) if not bounds_cross(config, n)]
        if not valid:
            reject()
        steps = draw(st.sampled_from(valid))
    return Schedule(config, steps)


class Loop(NamedTuple):
    """A sampling loop: schedule, where it starts (``None``: from pure noise), model and data seed.

    ``begin`` counts full steps; the loop starts at call ``2 * begin`` with ``add_noise`` of a
    clean sample (image to image). ``model`` scales the non-linear part of the stand-in model.
    """

    config: dict[str, Any]
    steps: int
    begin: int | None
    model: float
    seed: int
    shape: tuple[int, ...]


shapes = st.sampled_from([(2, 3), (1, 2, 2, 2), (3,)])
"""Sample shapes (small: the checks compare every element)."""

model_strengths = st.sampled_from([0.0, 0.1, 0.5])
"""Strength of the non-linear term of the stand-in model (0: the exact Gaussian denoiser)."""

seeds = st.integers(0, 2**16)


@st.composite
def loops(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS, **kwargs: Any) -> Loop:
    """A sampling loop over a configuration from ``supported``, from noise or mid-schedule."""
    config, steps = draw(schedules(supported, **kwargs))
    begin = draw(st.none() | st.integers(0, max(steps - 1, 0)))
    return Loop(config, steps, begin, draw(model_strengths), draw(seeds), draw(shapes))


@st.composite
def custom_sigmas(draw: Any, max_len: int = 12) -> list[float]:
    """Strictly decreasing sigmas (the last is final: 0 half the time), ratios capped in [0.3, 0.95]."""
    top = draw(st.floats(0.2, 30.0))
    ratios = draw(st.lists(st.floats(0.3, 0.95), min_size=1, max_size=max_len - 1))
    sigmas = [top]
    for r in ratios:
        sigmas.append(sigmas[-1] * r)
    if draw(st.booleans()):
        sigmas.append(0.0)
    return [round(s, 6) for s in sigmas[:-1]] + [sigmas[-1] if sigmas[-1] == 0 else round(sigmas[-1], 8)]


@st.composite
def custom_timesteps(draw: Any, num_train: int = 1000, max_len: int = 12) -> list[float]:
    """Strictly decreasing timesteps in ``[0, T - 1]`` (integers, as pipelines pass them)."""
    values = draw(st.sets(st.integers(0, num_train - 1), min_size=1, max_size=max_len))
    return [float(t) for t in sorted(values, reverse=True)]


class Custom(NamedTuple):
    """A configuration with custom ``sigmas`` or ``timesteps`` for ``set_timesteps``, and a loop seed."""

    config: dict[str, Any]
    kind: str
    values: list[float]
    model: float
    seed: int


@st.composite
def customs(draw: Any, supported: Collection[str], kind: str) -> Custom:
    """A configuration (no sigma family for timesteps) with custom ``kind`` values."""
    config = draw(configs(supported, churn=False))
    if kind == "timesteps":
        for family in FAMILIES:
            config.pop(family, None)
        config.pop("discard_penultimate_sigma", None)
        config.pop("quantize_timesteps", None)
        values = draw(custom_timesteps(config.get("num_train_timesteps", 1000)))
    else:
        values = draw(custom_sigmas())
    return Custom(config, kind, values, draw(model_strengths), draw(seeds))


class Churn(NamedTuple):
    """Churn settings of Karras et al. Algorithm 2 with custom sigmas and a noise seed."""

    sigmas: list[float]
    s_churn: float
    s_tmin: float
    s_tmax: float | None
    s_noise: float
    model: float
    seed: int


@st.composite
def churn_settings(draw: Any) -> Churn:
    """Custom sigmas and churn parameters (``s_churn`` 0 a quarter of the time)."""
    return Churn(
        draw(custom_sigmas()),
        draw(st.sampled_from([0.0, 0.5]) | churns),
        draw(s_tmins),
        draw(s_tmaxs),
        draw(s_noises),
        draw(model_strengths),
        draw(seeds),
    )


class Resume(NamedTuple):
    """A schedule resumed at full step ``begin`` (call ``2 * begin``) with ``set_begin_index``."""

    config: dict[str, Any]
    steps: int
    begin: int


@st.composite
def resumes(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS, **kwargs: Any) -> Resume:
    """A schedule and any full step to begin at (0 included)."""
    config, steps = draw(schedules(supported, **kwargs))
    return Resume(config, steps, draw(st.integers(0, max(steps - 1, 0))))


class Rerun(NamedTuple):
    """A loop of ``first`` steps stopped after ``done`` calls, then ``set_timesteps(steps)`` and a new loop.

    ``first_begin`` (full steps, or ``None``) starts the first loop with ``set_begin_index`` as
    image to image does; the second loop starts from noise.
    """

    config: dict[str, Any]
    first: int
    first_begin: int | None
    done: int
    steps: int
    model: float
    seed: int


@st.composite
def reruns(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS, **kwargs: Any) -> Rerun:
    """A partial loop over one schedule of a configuration, then a whole loop over another step count."""
    config, first = draw(schedules(supported, **kwargs))
    first_begin = draw(st.none() | st.integers(0, max(first - 1, 0)))
    calls = 2 * first - 1 - 2 * (first_begin or 0)
    done = draw(st.integers(1, max(calls, 1)))
    steps = draw(st.integers(1, max_steps(config)))
    if bounds_cross(config, steps) or bounds_cross(config, first):
        reject()
    return Rerun(config, first, first_begin, done, steps, draw(model_strengths), draw(seeds))


class Probe(NamedTuple):
    """A pipeline run for the differential mode: a schedule, image to image from full step ``begin``
    (``None``: from noise), inpainting's ``add_noise`` after every call, and the data seed."""

    config: dict[str, Any]
    steps: int
    begin: int | None
    inpaint: bool
    seed: int


@st.composite
def probes(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS) -> Probe:
    """A pipeline run over a configuration from ``supported`` (no churn: the two sides share no noise)."""
    config, steps = draw(schedules(supported, churn=False))
    begin = draw(st.none() | st.integers(0, max(steps - 1, 0)))
    return Probe(config, steps, begin, draw(st.booleans()), draw(seeds))


# -- tensors, dtypes, devices -------------------------------------------------------------------

low_precision_dtypes = st.sampled_from(["float16", "bfloat16"])
float_dtypes = st.sampled_from(["float64", "float32", "float16", "bfloat16"])


def available_devices() -> list[str]:
    """``cpu``, plus ``cuda`` when torch sees a GPU (torch is imported lazily)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return ["cpu"]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


devices = st.deferred(lambda: st.sampled_from(available_devices()))


class LowPrecision(NamedTuple):
    """One step in a low-precision dtype: schedule, call index, dtype and data seed."""

    config: dict[str, Any]
    steps: int
    call: int
    dtype: str
    seed: int
    scale: float


@st.composite
def low_precision_steps(draw: Any, supported: Collection[str] = DIFFUSERS_ARGS) -> LowPrecision:
    """A call of a schedule run in float16 or bfloat16, with inputs of magnitude up to ``scale``."""
    config, steps = draw(schedules(supported, prediction=prediction_types, churn=False))
    calls = 2 * steps - 1
    call = draw(st.integers(0, calls - 1))
    return LowPrecision(config, steps, call, draw(low_precision_dtypes), draw(seeds), draw(st.sampled_from([1.0, 4.0])))


def kwargs(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments from ``strategies``, each left out about half the time."""
    return st.fixed_dictionaries({}, optional=strategies)

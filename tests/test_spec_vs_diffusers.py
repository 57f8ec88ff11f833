"""The spec equals diffusers' ``KDPM2DiscreteScheduler`` wherever diffusers is not known to be wrong.

The spec runs in float64, diffusers in float32: tables agree to 1e-5 relative (timesteps also
to 1e-4 absolute, for those near 0), whole sampling loops to 1e-4. Known diffusers defects are
compared against the spec's opt-in reproduction and asserted to exist, so that these tests show
the spec differs where it says it does:

- ``sigmas_interpol[0]`` is NaN in diffusers (never read);
- rounded Karras timesteps (``round_karras_timesteps=True`` reproduces them) that rise at 50
  and 100 steps, where the spec's unrounded ones never do;
- ``trailing`` spacing yields ``n + 1`` steps, the last at timestep ``-1``, for some ``n``;
- no ``prediction_type="sample"``, custom ``timesteps``/``sigmas``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from diffusers import KDPM2DiscreteScheduler

from kdpm2_spec import Reference, schedule

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas")
FAMILIES = (None, "karras", "exponential", "beta")
SPACINGS = ("linspace", "leading", "trailing")
STEP_COUNTS = (1, 2, 3, 10, 25, 50, 100, 999)
LOOP_STEP_COUNTS = (1, 2, 3, 10, 25)
TRAINED_BETAS = np.linspace(1e-4, 0.02, 1000).tolist()

TABLE_RTOL = 1e-5
TIMESTEP_ATOL = 1e-4
LOOP_RTOL = 1e-4


class Config(NamedTuple):
    """One grid point; ``kwargs()`` gives the constructor arguments shared by both schedulers."""

    beta_schedule: str
    family: str | None
    spacing: str
    steps_offset: int

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timestep_spacing": self.spacing, "steps_offset": self.steps_offset}
        if self.beta_schedule == "trained_betas":
            kwargs["trained_betas"] = TRAINED_BETAS
        else:
            kwargs["beta_schedule"] = self.beta_schedule
        if self.family is not None:
            kwargs[f"use_{self.family}_sigmas"] = True
        return kwargs

    def __str__(self) -> str:
        shown = {k: ("[...]" if k == "trained_betas" else v) for k, v in self.kwargs().items()}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())


GRID = [Config(*c) for c in itertools.product(BETA_SCHEDULES, FAMILIES, SPACINGS, (0, 1))]


@functools.cache
def constructed(config: Config) -> KDPM2DiscreteScheduler:
    """diffusers' scheduler as constructed (its constructor runs ``set_timesteps(1000)``: 150 ms)."""
    return KDPM2DiscreteScheduler(**config.kwargs())


def fresh(config: Config, prediction_type: str = "epsilon") -> tuple[KDPM2DiscreteScheduler, Reference]:
    """A copy of diffusers' constructed scheduler and a new Reference, with this prediction type.

    ``prediction_type`` only changes ``step``, so the diffusers copy gets it through
    ``register_to_config`` (what ``from_config`` would store) instead of a second constructor call;
    ``test_reregistered_prediction_type_equals_constructed`` checks that this is the same.
    """
    theirs = copy.deepcopy(constructed(config))
    theirs.register_to_config(prediction_type=prediction_type)
    return theirs, Reference(**config.kwargs(), prediction_type=prediction_type)


def call(config: Config | str, what: str) -> str:
    return f"[KDPM2DiscreteScheduler({config}).{what}]"


def as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(name: str, theirs: Any, ours: Any, where: str, rtol: float, atol: float = 0.0) -> None:
    """Elementwise ``|theirs - ours| <= atol + rtol |ours|``; the message names the first bad entry."""
    theirs, ours = as_numpy(theirs), as_numpy(ours)
    assert theirs.shape == ours.shape, f"{name} has shape {theirs.shape}, but should have {ours.shape} {where}"
    bad = np.flatnonzero(~(np.abs(theirs - ours) <= atol + rtol * np.abs(ours)))
    if len(bad):
        i = np.unravel_index(bad[0], ours.shape)
        index = ",".join(map(str, i))
        raise AssertionError(
            f"{name}[{index}]={theirs[i]:.9g}, but should be {ours[i]:.9g} "
            f"(rtol {rtol:g}, atol {atol:g}; {len(bad)} entries off) {where}"
        )


def assert_tables_equal(theirs: KDPM2DiscreteScheduler, ours: Reference, where: str) -> None:
    """diffusers' float32 tables against the spec's float64 ones (not the timesteps: see callers)."""
    assert_close("sigmas", theirs.sigmas, ours.sigmas, where, TABLE_RTOL)
    interpol = as_numpy(theirs.sigmas_interpol)
    assert math.isnan(interpol[0]), f"sigmas_interpol[0]={interpol[0]}, diffusers' NaN is gone {where}"
    assert ours.sigmas_interpol[0] == ours.sigmas[0], f"spec sigmas_interpol[0] should be sigmas[0] {where}"
    assert_close("sigmas_interpol[1:]", interpol[1:], ours.sigmas_interpol[1:], where, TABLE_RTOL)
    assert_close("init_noise_sigma", theirs.init_noise_sigma, ours.init_noise_sigma, where, TABLE_RTOL)


def assert_timesteps_equal(theirs: Any, ours: Any, where: str) -> None:
    assert_close("timesteps", theirs, ours, where, TABLE_RTOL, TIMESTEP_ATOL)


# -- tables ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", GRID, ids=map(str, GRID))
def test_training_schedule_is_bit_exact(config: Config) -> None:
    theirs, ours = fresh(config)
    for name in ("betas", "alphas_cumprod"):
        a, b = getattr(theirs, name).numpy(), getattr(ours, name)
        assert a.dtype == b.dtype == np.float32, f"{name} dtypes {a.dtype}, {b.dtype} {call(config, '__init__')}"
        bad = np.flatnonzero(a != b)
        assert len(bad) == 0, f"{name}[{bad[0]}]={a[bad[0]]!r}, but should be {b[bad[0]]!r} {call(config, '__init__')}"


@pytest.mark.parametrize("config", GRID, ids=map(str, GRID))
def test_tables_equal(config: Config) -> None:
    """Every table after the constructor (``n = 1000``) and after ``set_timesteps(n)``."""
    theirs, base = fresh(config)
    # diffusers' Karras timesteps are rounded: compare with the spec's reproduction of that.
    rounded = Reference(**config.kwargs(), round_karras_timesteps=True) if config.family == "karras" else base
    for n in (None, *STEP_COUNTS):
        where = call(config, "__init__" if n is None else f"set_timesteps({n})")
        if n is not None:
            theirs.set_timesteps(n)
            base.set_timesteps(n)
            rounded.set_timesteps(n)
        assert_tables_equal(theirs, base, where)
        assert_timesteps_equal(theirs.timesteps, rounded.timesteps, where)
        if config.family == "karras":
            # The spec's own (unrounded) timesteps differ from diffusers' only by the rounding.
            assert_close("timesteps (unrounded)", theirs.timesteps, base.timesteps, where, 0.0, 0.5 + TIMESTEP_ATOL)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
@pytest.mark.parametrize("n", [50, 100])
def test_karras_timesteps_rise_in_diffusers_not_in_spec(beta_schedule: str, spacing: str, n: int) -> None:
    """diffusers rounds the main Karras timesteps but not the midpoints: at 50 and 100 steps a
    timestep repeats and the table rises (diffusers #5746). The spec's timesteps never rise."""
    config = Config(beta_schedule, "karras", spacing, 0)
    theirs, ours = fresh(config)
    theirs.set_timesteps(n)
    ours.set_timesteps(n)
    where = call(config, f"set_timesteps({n})")
    t = as_numpy(theirs.timesteps)
    assert np.any(np.diff(t) > 0), f"diffusers' timesteps no longer rise: the defect is fixed {where}"
    assert len(np.unique(t)) < len(t), f"diffusers' timesteps no longer repeat {where}"
    rises = np.flatnonzero(np.diff(ours.timesteps) > 0)
    assert len(rises) == 0, f"spec timesteps[{rises[0] + 1}]={ours.timesteps[rises[0] + 1]} rises {where}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n", [61, 103])
def test_trailing_extra_timestep_in_diffusers(family: str | None, n: int) -> None:
    """``np.arange(T, 0, -T / n)`` yields ``n + 1`` spaced timesteps for some ``n``, the last ``-1``
    (its sigma clamps to the training minimum); the spec keeps ``n``.

    Without a sigma family diffusers takes ``n + 1`` steps and its first ``2n - 1`` calls equal
    the spec's. With a family it rebuilds ``n`` sigmas down to that clamped sigma (the spec: down
    to the sigma of the last true trailing timestep), so every table differs.
    """
    config = Config("scaled_linear", family, "trailing", 0)
    theirs, ours = fresh(config)
    theirs.set_timesteps(n)
    ours.set_timesteps(n)
    where = call(config, f"set_timesteps({n})")
    t = as_numpy(theirs.timesteps)
    assert len(ours.timesteps) == 2 * n - 1, f"len(timesteps)={len(ours.timesteps)}, but should be {2 * n - 1} {where}"
    if family is None:
        assert len(t) == 2 * n + 1, f"len(timesteps)={len(t)}: diffusers' extra step is gone {where}"
        assert t[-1] == -1, f"timesteps[-1]={t[-1]}: diffusers' -1 timestep is gone {where}"
        assert_close("sigmas[:2n-1]", as_numpy(theirs.sigmas)[: 2 * n - 1], ours.sigmas[: 2 * n - 1], where, TABLE_RTOL)
        interpol = as_numpy(theirs.sigmas_interpol)[1 : 2 * n - 1]
        assert_close("sigmas_interpol[1:2n-1]", interpol, ours.sigmas_interpol[1 : 2 * n - 1], where, TABLE_RTOL)
        assert_timesteps_equal(t[: 2 * n - 1], ours.timesteps, where)
    else:
        assert len(t) == 2 * n - 1, f"len(timesteps)={len(t)}, but should be {2 * n - 1} {where}"
        lowest = as_numpy(theirs.sigmas)[-4]
        train_min = ours.train_sigmas[0]
        assert abs(lowest - train_min) <= TABLE_RTOL * train_min, (
            f"sigmas[-4]={lowest}: diffusers' family no longer ends at the clamped sigma {train_min} {where}"
        )
        last = schedule.spaced_timesteps(n, 1000, "trailing", 0)[-1]
        spaced_min = np.interp(last, np.arange(1000), ours.train_sigmas)
        assert_close("spec sigmas[-4]", ours.sigmas[-4], spaced_min, where, 1e-12)


# -- whole sampling loops -------------------------------------------------------------------------


def fake_model(model_input: np.ndarray, timestep: float) -> np.ndarray:
    """A fixed smooth function of the scaled input and the timestep: a deterministic stand-in model."""
    return np.tanh(model_input) * (1 + timestep / 1000) + 0.1 * np.cos(timestep / 100 + model_input)


class Loop(NamedTuple):
    """What a sampling loop produced: the final sample, each call's ``pred_original_sample``, and
    its scale (the largest magnitude of any sample or prediction, the initial sample included)."""

    sample: np.ndarray
    pred_original: list[np.ndarray]
    scale: float


def loop(sched: Any, n: int, noise: np.ndarray) -> Loop:
    """A pipeline's loop: ``init_noise_sigma``, ``scale_model_input``, model, ``step``; float32 for torch."""
    sched.set_timesteps(n)
    first = as_numpy(sched.timesteps)
    if np.count_nonzero(first == first[0]) > 1:  # see test_repeated_first_timestep_gives_nan_in_diffusers
        sched.set_begin_index(0)
    is_torch = isinstance(sched, KDPM2DiscreteScheduler)
    convert = (lambda a: torch.from_numpy(a).to(torch.float32)) if is_torch else (lambda a: a)
    sample = convert(noise) * sched.init_noise_sigma
    scale = float(np.abs(as_numpy(sample)).max())
    preds = []
    for t in sched.timesteps:
        model_input = as_numpy(sched.scale_model_input(sample, t))
        output = convert(fake_model(model_input, float(t)))
        result = sched.step(output, t, sample)
        sample = result.prev_sample
        preds.append(as_numpy(result.pred_original_sample))
        scale = max(scale, float(np.abs(preds[-1]).max()), float(np.abs(as_numpy(sample)).max()))
    return Loop(as_numpy(sample), preds, scale)


NOISE = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32).astype(np.float64)


def assert_loops_equal(theirs: Loop, ours: Loop, where: str) -> None:
    """Every output agrees to ``LOOP_RTOL`` of the loop's scale (float32 against float64).

    The scale is the whole loop's, not each output's: a step cancels terms the size of the
    sample it starts from. With ``squaredcos_cap_v2`` (``s_0 = 2.0e4``) and ``v_prediction`` the
    float32 rounding of ``s_0`` alone moves outputs of size 1 by 1e-3 (8e-5 of the loop's scale).
    """
    assert len(theirs.pred_original) == len(ours.pred_original), f"number of calls differs {where}"
    atol = LOOP_RTOL * ours.scale
    for k, (a, b) in enumerate(zip(theirs.pred_original, ours.pred_original, strict=True)):
        assert_close(f"step() call {k}: pred_original_sample", a, b, where, LOOP_RTOL, atol)
    assert_close("final sample", theirs.sample, ours.sample, where, LOOP_RTOL, atol)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("config", GRID, ids=map(str, GRID))
def test_sampling_loops_equal(config: Config, prediction_type: str) -> None:
    theirs, ours = fresh(config, prediction_type)
    if config.family == "karras":  # the model sees the timesteps: give the spec diffusers' rounded ones
        ours = Reference(**config.kwargs(), prediction_type=prediction_type, round_karras_timesteps=True)
    for n in LOOP_STEP_COUNTS:
        where = call(f"{config}, prediction_type={prediction_type!r}", f"set_timesteps({n}) loop")
        assert_loops_equal(loop(theirs, n, NOISE), loop(ours, n, NOISE), where)


@pytest.mark.parametrize("n", [10, 25])
def test_repeated_first_timestep_gives_nan_in_diffusers(n: int) -> None:
    """``squaredcos_cap_v2`` with Karras sigmas: diffusers rounds ``t_1`` to 999 = ``t_0``, so a loop
    without ``set_begin_index`` starts at call 2 (``index_for_timestep`` takes the second match),
    runs two calls past the schedule onto sigma 0 and returns NaN. The spec's unrounded timesteps
    do not repeat, and its loop ends finite without a begin index."""
    config = Config("squaredcos_cap_v2", "karras", "linspace", 0)
    theirs, ours = fresh(config)
    where = call(config, f"set_timesteps({n}) loop without set_begin_index")
    for sched in (theirs, ours):
        sched.set_timesteps(n)
    t = as_numpy(theirs.timesteps)
    assert t[0] == t[2] == 999, f"timesteps[0]={t[0]}, timesteps[2]={t[2]}: no longer repeated {where}"
    assert len(np.unique(ours.timesteps)) == len(ours.timesteps), f"spec timesteps repeat {where}"
    results = []
    for sched in (theirs, ours):
        x = torch.from_numpy(NOISE).float() if sched is theirs else NOISE.copy()
        x = x * sched.init_noise_sigma
        for t_k in sched.timesteps:
            model_input = as_numpy(sched.scale_model_input(x, t_k))
            output = fake_model(model_input, float(t_k))
            x = sched.step(torch.from_numpy(output).float() if sched is theirs else output, t_k, x).prev_sample
        results.append(as_numpy(x))
    assert np.all(np.isnan(results[0])), f"diffusers' loop no longer ends in NaN {where}"
    assert np.all(np.isfinite(results[1])), f"spec loop should end finite {where}"


def test_reregistered_prediction_type_equals_constructed() -> None:
    config = Config("scaled_linear", "karras", "leading", 1)
    reregistered, _ = fresh(config, "v_prediction")
    built = KDPM2DiscreteScheduler(**config.kwargs(), prediction_type="v_prediction")
    a, b = loop(reregistered, 10, NOISE), loop(built, 10, NOISE)
    np.testing.assert_array_equal(a.sample, b.sample)


# -- what diffusers lacks (the spec's extensions), asserted so that a change shows -----------------


def test_diffusers_rejects_sample_prediction() -> None:
    theirs = KDPM2DiscreteScheduler(prediction_type="sample")
    theirs.set_timesteps(3)
    x = torch.zeros(2)
    with pytest.raises(NotImplementedError):
        theirs.step(x, theirs.timesteps[0], x)
    ours = Reference(prediction_type="sample")
    ours.set_timesteps(3)
    assert np.all(ours.step(np.ones(2), ours.timesteps[0], np.zeros(2)).pred_original_sample == 1)


@pytest.mark.parametrize("kwargs", [{"timesteps": [999, 500, 0]}, {"sigmas": [14.6, 1.0, 0.0]}])
def test_diffusers_rejects_custom_schedules(kwargs: dict) -> None:
    with pytest.raises(TypeError):
        KDPM2DiscreteScheduler().set_timesteps(**kwargs)
    Reference().set_timesteps(**kwargs)


@pytest.mark.parametrize(
    ("start", "end", "steps"),
    [
        (0.00085, 0.012, 1000),
        (0.00085**0.5, 0.012**0.5, 1000),
        (1e-4, 0.02, 1000),
        (1e-4, 0.02, 7),
        (0.5, 0.5, 3),
        (0.1, 0.2, 1),
    ],
)
def test_the_spec_emulates_torch_s_vectorized_float32_linspace(start: float, end: float, steps: int) -> None:
    """Without torch loaded the spec's float32 betas come from its NumPy model of torch's vectorized
    ``linspace`` kernel: bit for bit wherever torch runs it (every x86-64 CPU with AVX2)."""
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torch runs its scalar linspace kernel here (no AVX2), which the model does not describe")
    want = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
    assert np.array_equal(schedule.vectorized_float32_linspace(start, end, steps), want)

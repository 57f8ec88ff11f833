"""Every invariant of ``kdpm2_spec.invariants`` holds on the ``Reference``.

Each check runs twice: exhaustively on a small grid (configurations x ``num_inference_steps`` in
{1, 2, 3, 10, 25}) and with ``@given`` over random configurations and schedule requests
(``n`` steps, custom ``sigmas``, custom ``timesteps``). Then one relation per test: the
``init_noise_sigma`` rule, ``len``, no NaN in any table, churned tables, and the documented limits
of the invariants (the spec's and diffusers' quirks the checks reject or tolerate).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kdpm2_spec import PREDICTION_TYPES, Reference, invariants, schedule
from kdpm2_spec import strategies as ks

# -- configurations and schedule requests ---------------------------------------------------------

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas")
FAMILIES = (None, "karras", "exponential", "beta")
SPACINGS = (("linspace", 0), ("linspace", 1), ("leading", 0), ("leading", 1), ("trailing", 0), ("trailing", 1))
STEP_COUNTS = (1, 2, 3, 10, 25)


def trained_betas(num_train_timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> list[float]:
    """A custom training schedule (DDPM's linear betas) passed as ``trained_betas``."""
    return np.linspace(start, end, num_train_timesteps).tolist()


def make_config(beta_schedule: str, family: str | None, spacing: str, steps_offset: int, **extra: Any) -> dict:
    """Constructor arguments of one grid point; ``"trained_betas"`` stands for a custom schedule."""
    config: dict[str, Any] = {"timestep_spacing": spacing, "steps_offset": steps_offset, **extra}
    if beta_schedule == "trained_betas":
        config["trained_betas"] = trained_betas(config.get("num_train_timesteps", 1000))
    else:
        config["beta_schedule"] = beta_schedule
    if family is not None:
        config[f"use_{family}_sigmas"] = True
    return config


class Request(NamedTuple):
    """One ``set_timesteps`` call: ``n`` steps, custom ``timesteps`` or custom ``sigmas``."""

    num_inference_steps: int | None = None
    timesteps: tuple[float, ...] | None = None
    sigmas: tuple[float, ...] | None = None

    def apply(self, sched: Any) -> None:
        sched.set_timesteps(**{k: v for k, v in self._asdict().items() if v is not None})

    def __str__(self) -> str:
        if self.num_inference_steps is not None:
            return f"set_timesteps({self.num_inference_steps})"
        name, values = ("timesteps", self.timesteps) if self.timesteps is not None else ("sigmas", self.sigmas)
        return f"set_timesteps({name}={list(values)!r})"


_CONSTRUCTED: dict[str, Reference] = {}


class Case(NamedTuple):
    """A configuration and a schedule request: a reproducible Reference state."""

    config: dict
    request: Request

    def build(self) -> Reference:
        """A fresh Reference in this state (a copy of a cached constructor call: they are pure)."""
        key = repr(sorted(self.config.items()))
        if key not in _CONSTRUCTED:
            _CONSTRUCTED[key] = Reference(**self.config)
        ref = copy.deepcopy(_CONSTRUCTED[key])
        self.request.apply(ref)
        return ref

    def __str__(self) -> str:
        shown = {k: ("[...]" if k == "trained_betas" else v) for k, v in self.config.items()}
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Reference({args}).{self.request}"


def grid_configs() -> list[dict]:
    """The exhaustive grid: beta schedules x sigma families x spacings, plus the extra options."""
    configs = [make_config(b, f, s, o) for b, f, (s, o) in itertools.product(BETA_SCHEDULES, FAMILIES, SPACINGS)]
    configs += [
        make_config("scaled_linear", None, "linspace", 0, sigma_interpolation="log"),
        make_config("scaled_linear", None, "leading", 1, discard_penultimate_sigma=True),
        make_config(
            "scaled_linear", "karras", "linspace", 0, sigma_interpolation="log", discard_penultimate_sigma=True
        ),
        make_config("scaled_linear", None, "linspace", 0, quantize_timesteps=True),
        make_config("scaled_linear", "karras", "leading", 1, quantize_timesteps=True),
        make_config("linear", "karras", "linspace", 0, sigma_min=0.002, sigma_max=80.0),
        make_config("linear", "exponential", "trailing", 0, sigma_min=0.03, sigma_max=20.0),
        make_config("squaredcos_cap_v2", "beta", "linspace", 0, sigma_min=0.01),
        make_config("linear", None, "linspace", 0, num_train_timesteps=100),
        make_config("trained_betas", "karras", "trailing", 1, num_train_timesteps=100),
    ]
    return configs


GRID = grid_configs()
GRID_IDS = [str(Case(c, Request(0)))[len("Reference(") : -len(").set_timesteps(0)")] for c in GRID]


def grid_cases(config: dict) -> list[Case]:
    return [Case(config, Request(n)) for n in STEP_COUNTS]


def optional(draw: Callable, kwargs: dict, name: str, strategy: st.SearchStrategy) -> None:
    """Draw ``name`` into ``kwargs`` about half the time, so that defaults get tested too."""
    if draw(st.booleans()):
        kwargs[name] = draw(strategy)


@st.composite
def configs(draw: Callable, churn: bool = False) -> dict:
    """Constructor arguments of the Reference (without churn unless asked, never Karras rounding)."""
    kwargs: dict[str, Any] = {}
    num_train_timesteps = draw(st.sampled_from([1000, 100]))
    if num_train_timesteps != 1000 or draw(st.booleans()):
        kwargs["num_train_timesteps"] = num_train_timesteps
    beta_schedule = draw(st.sampled_from(BETA_SCHEDULES))
    if beta_schedule == "trained_betas":
        start, end = draw(st.floats(1e-4, 1e-3)), draw(st.floats(0.01, 0.03))
        kwargs["trained_betas"] = trained_betas(num_train_timesteps, start, end)
    else:
        optional(draw, kwargs, "beta_schedule", st.just(beta_schedule))
        if beta_schedule != "squaredcos_cap_v2" and draw(st.booleans()):
            kwargs["beta_start"], kwargs["beta_end"] = draw(st.sampled_from([(0.00085, 0.012), (0.0001, 0.02)]))
    family = draw(st.sampled_from(FAMILIES))
    if family is not None:
        kwargs[f"use_{family}_sigmas"] = True
        optional(draw, kwargs, "sigma_min", st.floats(0.002, 0.05))
        optional(draw, kwargs, "sigma_max", st.floats(1.0, 80.0))
    optional(draw, kwargs, "prediction_type", st.sampled_from(PREDICTION_TYPES))
    optional(draw, kwargs, "timestep_spacing", st.sampled_from(schedule.TIMESTEP_SPACINGS))
    optional(draw, kwargs, "steps_offset", st.sampled_from([0, 1]))
    optional(draw, kwargs, "sigma_interpolation", st.sampled_from(schedule.SIGMA_INTERPOLATIONS))
    optional(draw, kwargs, "discard_penultimate_sigma", st.booleans())
    optional(draw, kwargs, "quantize_timesteps", st.booleans())
    if churn:
        kwargs["s_churn"] = draw(st.floats(0.1, 80.0))
        optional(draw, kwargs, "s_tmin", st.floats(0.0, 1.0))
        optional(draw, kwargs, "s_tmax", st.floats(1.0, 20.0))
        optional(draw, kwargs, "s_noise", st.floats(0.5, 1.5))
    return kwargs


custom_sigmas = st.builds(
    lambda values, final: tuple(sorted(values, reverse=True)) + final,
    st.lists(st.floats(0.01, 100.0, allow_subnormal=False), min_size=1, max_size=30, unique=True),
    st.sampled_from([(0.0,), ()]),
).filter(lambda s: len(s) >= 2)
"""Custom sigma arrays: strictly decreasing and positive, ending in 0 or not (k-diffusion arrays)."""


def custom_timesteps(num_train_timesteps: int) -> st.SearchStrategy:
    """Custom timesteps: distinct integers of the training range, descending (as AYS lists)."""
    values = st.lists(st.integers(0, num_train_timesteps - 1), min_size=1, max_size=30, unique=True)
    return values.map(lambda v: tuple(float(t) for t in sorted(v, reverse=True)))


@st.composite
def cases(draw: Callable, churn: bool = False) -> Case:
    """A configuration and a schedule request valid for it."""
    config = draw(configs(churn=churn))
    big_t = config.get("num_train_timesteps", 1000)
    kind = draw(st.sampled_from(["n", "n", "sigmas", "timesteps"]))
    if kind == "sigmas":
        return Case(config, Request(sigmas=draw(custom_sigmas)))
    if kind == "timesteps":
        return Case(config, Request(timesteps=draw(custom_timesteps(big_t))))
    # n = T with leading spacing and steps_offset = 1 is diffusers' quirk, tested on its own below.
    n = draw(st.one_of(st.integers(1, 30), st.integers(1, big_t - 1)))
    return Case(config, Request(n))


def run(check: Callable, case: Case, **kwargs: Any) -> Any:
    """Run one invariant on a fresh Reference and name the call on failure."""
    ref = case.build()
    try:
        return check(ref, **kwargs)
    except AssertionError as error:
        error.add_note(f"[{check.__name__} on {case}]")
        raise


def table_checks(case: Case) -> list[Callable]:
    """The table invariants; ``check_timesteps_range`` only without churn (churn raises levels)."""
    config = case.config
    big_t = config.get("num_train_timesteps", 1000)
    checks: list[Callable] = [
        invariants.check_sigmas_decreasing,
        invariants.check_interleaved_layout,
        invariants.check_midpoints_geometric,
        invariants.check_index_for_timestep,
    ]
    if config.get("s_churn", 0) == 0:
        checks.append(lambda sched: invariants.check_timesteps_range(sched, num_train_timesteps=big_t))
        checks[-1].__name__ = "check_timesteps_range"
    return checks


LOOP_CHECKS = (invariants.check_scale_model_input, invariants.check_step_alternates)


def check_all_exact_denoisers(case: Case, begin_indices: list[int] | None = None) -> None:
    """``check_exact_denoiser`` for every prediction type and every even begin index."""
    length = len(case.build().timesteps)
    for prediction_type in PREDICTION_TYPES:
        sub = Case({**case.config, "prediction_type": prediction_type}, case.request)
        for begin in range(0, length, 2) if begin_indices is None else begin_indices:
            run(invariants.check_exact_denoiser, sub, begin_index=begin, prediction_type=prediction_type)


# -- the grid -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_table_invariants_on_grid(config: dict) -> None:
    for case in grid_cases(config):
        for check in table_checks(case):
            run(check, case)


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_loop_invariants_on_grid(config: dict) -> None:
    for case in grid_cases(config):
        for check in LOOP_CHECKS:
            run(check, case)


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_exact_denoiser_on_grid(config: dict) -> None:
    for case in grid_cases(config):
        check_all_exact_denoisers(case)


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_no_nan_in_tables_on_grid(config: dict) -> None:
    for case in grid_cases(config):
        assert_no_nan(case)


# -- random configurations ------------------------------------------------------------------------


@given(cases())
@example(Case({"discard_penultimate_sigma": True}, Request(25)))  # the constructor raised (spec bug)
def test_table_invariants_hold(case: Case) -> None:
    for check in table_checks(case):
        run(check, case)


@given(cases(churn=True))
def test_table_invariants_hold_with_churn(case: Case) -> None:
    for check in table_checks(case):
        run(check, case)


@given(cases())
@example(Case({"use_karras_sigmas": True, "sigma_min": 0.002, "sigma_max": 80.0}, Request(10)))  # repeated t_0
@example(Case({}, Request(sigmas=(80.0, 40.0, 1.0, 0.0))))  # sigmas above the training range share t = 999
def test_loop_invariants_hold(case: Case) -> None:
    for check in LOOP_CHECKS:
        run(check, case)


@given(cases(), st.integers(0, 10**6))
@example(Case({"beta_schedule": "squaredcos_cap_v2"}, Request(2)), 0)  # s_0 = 2.0e4: rounding scale
@example(Case({"use_karras_sigmas": True, "sigma_max": 80.0}, Request(10)), 0)  # timesteps[0] repeats
def test_exact_denoiser_holds(case: Case, begin_draw: int) -> None:
    """``check_exact_denoiser`` from an even begin index (drawn as a number, folded into range)."""
    calls = len(case.build().timesteps)
    begin = 2 * (begin_draw % ((calls + 1) // 2))
    prediction_type = case.config.get("prediction_type", "epsilon")
    run(invariants.check_exact_denoiser, case, begin_index=begin, prediction_type=prediction_type)


@given(cases(churn=True))
def test_no_nan_in_tables(case: Case) -> None:
    assert_no_nan(case)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_convergence_order_is_two(prediction_type: str) -> None:
    order = invariants.check_convergence_order(lambda: Reference(prediction_type=prediction_type))
    assert abs(order - 2) <= 0.25


# -- one relation each ----------------------------------------------------------------------------


def assert_no_nan(case: Case) -> None:
    ref = case.build()
    tables = {
        "betas": ref.betas,
        "alphas_cumprod": ref.alphas_cumprod,
        "sigmas": ref.sigmas,
        "sigmas_interpol": ref.sigmas_interpol,
        "timesteps": ref.timesteps,
        "init_noise_sigma": np.array(ref.init_noise_sigma),
    }
    for name, table in tables.items():
        bad = np.flatnonzero(~np.isfinite(table))
        assert len(bad) == 0, f"{name}[{bad[0]}]={np.ravel(table)[bad[0]]}, but should be finite [{case}]"


@pytest.mark.parametrize(("spacing", "steps_offset"), SPACINGS)
@pytest.mark.parametrize("n", [1, 10, 25])
def test_init_noise_sigma_rule(spacing: str, steps_offset: int, n: int) -> None:
    """``init_noise_sigma`` is ``max(sigmas)``, with 1 added in quadrature for ``leading`` (diffusers)."""
    ref = Reference(beta_schedule="scaled_linear", timestep_spacing=spacing, steps_offset=steps_offset)
    ref.set_timesteps(n)
    top = ref.sigmas.max()
    want = math.sqrt(top**2 + 1) if spacing == "leading" else top
    assert ref.init_noise_sigma == want, (
        f"init_noise_sigma={ref.init_noise_sigma}, but should be {want} "
        f"[Reference(timestep_spacing={spacing!r}).set_timesteps({n})]"
    )


@pytest.mark.parametrize("num_train_timesteps", [10, 100, 1000])
def test_len_is_num_train_timesteps(num_train_timesteps: int) -> None:
    ref = Reference(num_train_timesteps=num_train_timesteps)
    assert len(ref) == num_train_timesteps, f"len(ref)={len(ref)}, but should be {num_train_timesteps}"


@given(cases(churn=True))
@example(Case({"s_churn": 1.0, "s_tmax": 1.0}, Request(3)))  # unchurned calls keep their spaced timestep
def test_churn_tables_hold_sigma_hat(case: Case) -> None:
    """First-order entries hold ``sh_i = s_i (1 + gamma)`` where ``s_tmin <= s_i <= s_tmax``; targets are
    the unchurned ``s_(i+1)``; timesteps of first-order calls are those of ``sh_i``."""
    churned = case.build()
    config = {k: v for k, v in case.config.items() if not k.startswith("s_")}
    plain = Case(config, case.request).build()
    c = churned.config
    n = churned.num_inference_steps
    main = plain.main_sigmas_table[:-1]
    gamma = min(c["s_churn"] / n, 2**0.5 - 1)
    s_tmax = math.inf if c["s_tmax"] is None else c["s_tmax"]
    in_range = (c["s_tmin"] <= main) & (main <= s_tmax)
    want = np.where(in_range, main * (1 + gamma), main)
    got = churned.sigmas[0 : 2 * n : 2]
    assert np.allclose(got, want, rtol=1e-12, atol=0), f"sigmas[0::2]={got}, but should be {want} [{case}]"
    np.testing.assert_array_equal(churned.sigmas[1::2], plain.sigmas[1::2], err_msg=f"targets changed [{case}]")
    # Churned calls get the timestep of sh_i; the others keep the unchurned schedule's timestep.
    want_t = np.where(in_range, churned.sigma_to_t(want), plain.timesteps[0::2])
    got_t = churned.timesteps[0::2]
    bad = np.flatnonzero(np.abs(got_t - want_t) > 1e-12 * np.abs(want_t))
    assert len(bad) == 0, f"timesteps[{2 * bad[0]}]={got_t[bad[0]]}, but should be {want_t[bad[0]]} [{case}]"


@given(cases(churn=True))
def test_churn_loop_invariants_hold_with_noise(case: Case) -> None:
    """With churn, a loop fed noise alternates orders and steps through every call."""
    ref = case.build()
    ref.set_begin_index(0)  # churned first levels may all map to timestep T - 1: see below
    sample = np.ones((2, 3))
    for k, t in enumerate(ref.timesteps):
        assert ref.state_in_first_order == (k % 2 == 0)
        sample = ref.step(np.zeros((2, 3)), t, sample, noise=np.ones((2, 3))).prev_sample
        assert ref.step_index == k + 1
    assert np.all(np.isfinite(sample))


# -- the limits of the invariants (pinned, so that a change shows) --------------------------------


def test_churn_can_raise_timesteps() -> None:
    """Churn evaluates the model above the last target, so timesteps may rise: the range check
    is only an invariant of churn-free schedules (Karras et al. Algorithm 2 does this on purpose)."""
    case = Case({"use_karras_sigmas": True, "s_churn": 10.0}, Request(25))
    ref = case.build()
    assert np.any(np.diff(ref.timesteps) > 0), f"timesteps={ref.timesteps} should rise somewhere [{case}]"
    with pytest.raises(AssertionError, match="timesteps increase"):
        invariants.check_timesteps_range(ref)


@pytest.mark.parametrize("n", [34, 50, 100])
def test_rounded_karras_timesteps_rise_by_rounding_only(n: int) -> None:
    """diffusers' rounding (``round_karras_timesteps=True``) makes timesteps rise, by less than 0.5:
    the spec allows exactly that (rounding), and the same tables without the option fail the check."""
    config = {"use_karras_sigmas": True, "round_karras_timesteps": True}
    if n == 34:  # the case the conformance suite found: the last main timestep rounds down to 0
        config.update(beta_start=0.000776, prediction_type="v_prediction", steps_offset=1, sigma_max=1.9)
    ref = Case(config, Request(n)).build()
    rise = np.diff(ref.timesteps)
    assert 0 < rise.max() < invariants.ROUNDING_RISE, f"max rise {rise.max()} [{config}, {n} steps]"
    invariants.check_timesteps_range(ref)
    ref.config["round_karras_timesteps"] = False  # the same tables, claimed unrounded
    with pytest.raises(AssertionError, match="timesteps increase at"):
        invariants.check_timesteps_range(ref)
    run(invariants.check_timesteps_range, Case({"use_karras_sigmas": True}, Request(n)))


def test_family_bounds_that_cross_are_rejected() -> None:
    """The conformance suite's second contradiction: ``sigma_max=1`` alone with ``trailing`` spacing at
    2 steps (the spaced end, about 2.28, is the lower bound) asked for rising sigmas; the spec rejects it."""
    config = {"timestep_spacing": "trailing", "use_exponential_sigmas": True, "sigma_max": 1.0}
    with pytest.raises(ValueError, match=r"sigma_min=2\.27\d* must be below sigma_max=1\.0 for 2 sigmas"):
        Reference(**config).set_timesteps(2)
    assert [n for n in range(1, 8) if ks.bounds_cross(config, n)] == [2, 3]  # one sigma is sigma_max
    ref = Reference(**config)
    ref.set_timesteps(4)
    invariants.check_sigmas_decreasing(ref)
    invariants.check_timesteps_range(ref)


@given(case=ks.schedules(ks.supported_args(Reference)))
@example(case=ks.Schedule({"timestep_spacing": "trailing", "use_exponential_sigmas": True, "sigma_max": 1.0}, 4))
def test_every_drawn_schedule_is_valid_for_the_spec(case: ks.Schedule) -> None:
    """The conformance strategies draw only requests the Reference accepts (else the suite would
    fail a correct implementation that rejects them)."""
    ref = Reference(**case.config)
    ref.set_timesteps(case.steps)
    invariants.check_sigmas_decreasing(ref)


def test_rounded_timesteps_may_not_rise_by_half_or_more() -> None:
    """With rounding, a rise of 0.5 is no longer rounding: the check names it."""
    ref = Case({"use_karras_sigmas": True, "round_karras_timesteps": True}, Request(5)).build()
    ref.timesteps = np.array([9.0, 4.0, 4.5, 0.0])
    with pytest.raises(AssertionError, match=r"timesteps increase by 0.5 or more at \[1\]"):
        invariants.check_timesteps_range(ref)


def test_leading_offset_at_full_step_count_repeats_the_top_sigma() -> None:
    """``leading`` with ``steps_offset=1`` and ``n = T`` gives timestep ``T`` (as diffusers): the
    training sigma clamps, ``s_0 = s_1``, and the spaced schedule is no longer strictly decreasing."""
    ref = Reference(timestep_spacing="leading", steps_offset=1)  # the constructor runs set_timesteps(1000)
    assert ref.timesteps[0] == 1000
    assert ref.sigmas[0] == ref.sigmas[1]
    with pytest.raises(AssertionError, match="strictly decrease"):
        invariants.check_sigmas_decreasing(ref)
    ref.set_timesteps(999)
    invariants.check_sigmas_decreasing(ref)
    invariants.check_timesteps_range(ref)


def test_repeated_first_timestep_starts_a_plain_loop_at_call_0() -> None:
    """Levels above the training range all get timestep ``T - 1`` (here the churned ``sh_0`` and the
    first midpoint). ``index_for_timestep`` keeps diffusers' rule (the second match), but a loop's
    first call takes the first step start holding the value, so a loop without ``set_begin_index``
    starts at call 0 and skips nothing."""
    case = Case({"s_churn": 8.0}, Request(18))
    ref = case.build()
    assert ref.timesteps[0] == ref.timesteps[1] == 999, f"timesteps[:2]={ref.timesteps[:2]} [{case}]"
    assert ref.index_for_timestep(ref.timesteps[0]) == 1, "diffusers' rule: the second match"
    ref.scale_model_input(np.ones(3), ref.timesteps[0])
    assert ref.step_index == 0, f"step_index={ref.step_index}, the first step start [{case}]"
    ref = case.build()
    ref.set_begin_index(0)
    ref.scale_model_input(np.ones(3), ref.timesteps[0])
    assert ref.step_index == 0

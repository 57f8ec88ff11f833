"""The pure functions under the scheduler, each against its counterpart in the spec.

``kdpm2.functional`` (step coefficients and their application), ``kdpm2.tables`` (schedules) and
``kdpm2.lookup`` (timestep positions) are checked one relation at a time, on a small grid and
with ``@given``, against ``kdpm2_spec`` or a brute-force definition. These tests are fast, so the
mutation run (``nox -s mutation``) uses them first.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kdpm2 import functional, lookup, tables
from kdpm2_spec import denoise, schedule

PREDICTIONS = ("epsilon", "v_prediction", "sample")
SIGMAS = st.floats(0.01, 200.0)
SEEDS = st.integers(0, 2**16)


def tensors(seed: int, n: int = 3, shape: tuple[int, ...] = (2, 3, 4)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def close(got: torch.Tensor, want: torch.Tensor, scale: float, what: str) -> None:
    err = float((got - want).abs().max())
    assert err <= 1e-13 * scale, f"{what}: off by {err:.3g} (scale {scale:.3g})"


# -- functional -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sigma", [0.03, 1.0, 14.6])
def test_denoiser_coefficients_match_spec(prediction: str, sigma: float) -> None:
    x, m, _ = tensors(0)
    a, b = functional.denoiser_coefficients(sigma, prediction)
    want = torch.from_numpy(denoise(m.numpy(), x.numpy(), sigma, prediction))
    close(a * x + b * m, want, 1 + sigma, f"denoiser_coefficients({sigma}, {prediction!r})")


def test_denoiser_coefficients_reject_unknown_prediction() -> None:
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        functional.denoiser_coefficients(1.0, "noise")


@given(sigma=SIGMAS, ratio=st.floats(0.0, 0.99), prediction=st.sampled_from(PREDICTIONS), seed=SEEDS)
def test_first_order_is_an_euler_move_to_the_midpoint(sigma: float, ratio: float, prediction: str, seed: int) -> None:
    """``prev = x + d (m - sigma)`` with ``d = (x - x0) / sigma``; ``x0`` from the spec's denoise."""
    x, m, _ = tensors(seed)
    mid = sigma * ratio
    c = functional.first_order(sigma, mid, prediction)
    prev, x0 = functional.apply_step(c, x, m)
    want_x0 = torch.from_numpy(denoise(m.numpy(), x.numpy(), sigma, prediction))
    close(x0, want_x0, 1 + sigma, "pred_original_sample")
    close(prev, x + (x - want_x0) / sigma * (mid - sigma), 1 + sigma, f"first_order({sigma}, {mid}, {prediction!r})")
    assert c.stored == 0.0 and c.noise == 0.0


@given(
    sigma=SIGMAS,
    ratios=st.tuples(st.floats(0.01, 0.99), st.floats(0.05, 1.0)),
    prediction=st.sampled_from(PREDICTIONS),
    churn=st.sampled_from([0.0, 0.7]),
    seed=SEEDS,
)
def test_second_order_moves_the_stored_sample_with_the_midpoint_slope(
    sigma: float, ratios: tuple[float, float], prediction: str, churn: float, seed: int
) -> None:
    """``prev = stored + d_m (s_next - sigma) + churn * noise`` with ``d_m = (x_m - x0_m) / m``."""
    x, m, stored = tensors(seed)
    noise = tensors(seed + 1, 1)[0]
    nxt = sigma * ratios[0] * ratios[1]
    mid = math.sqrt(sigma * nxt)
    c = functional.second_order(sigma, mid, nxt, prediction, churn)
    prev, x0 = functional.apply_step(c, x, m, stored, noise if churn else None)
    want_x0 = torch.from_numpy(denoise(m.numpy(), x.numpy(), mid, prediction))
    want = stored + (x - want_x0) / mid * (nxt - sigma) + churn * noise
    close(x0, want_x0, 1 + mid, "pred_original_sample")
    close(prev, want, 1 + sigma, f"second_order({sigma}, {mid}, {nxt}, {prediction!r}, churn={churn})")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_low_precision_rounds_once(dtype: torch.dtype, prediction: str) -> None:
    """Half precision: the float64 result on the same inputs, rounded once (one ulp of the result).

    float32 is combined in float32, so its error is a few roundings of the terms, not of the result.
    """
    x, m, stored = (t.to(dtype) for t in tensors(3))
    eps = torch.finfo(dtype).eps
    for c in (functional.first_order(7.0, 3.0, prediction), functional.second_order(7.0, 3.0, 1.3, prediction)):
        prev, x0 = functional.apply_step(c, x, m, stored if c.stored else None)
        want_prev, want_x0 = functional.apply_step(c, x.double(), m.double(), stored.double() if c.stored else None)
        terms_prev = (
            abs(c.sample) * x.double().abs() + abs(c.model) * m.double().abs() + abs(c.stored) * stored.double().abs()
        )
        terms_x0 = abs(c.x0_sample) * x.double().abs() + abs(c.x0_model) * m.double().abs()
        for got, want, terms in ((prev, want_prev, terms_prev), (x0, want_x0, terms_x0)):
            assert got.dtype == dtype
            bound = eps * want.abs() if dtype != torch.float32 else 3 * eps * terms
            bound = bound.clamp(min=torch.finfo(dtype).tiny)
            assert bool(((got.double() - want).abs() <= bound).all()), f"{dtype} {prediction}: beyond rounding"


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_apply_step_neither_modifies_nor_returns_its_inputs(prediction: str) -> None:
    x, m, stored = tensors(4)
    noise = tensors(5, 1)[0]
    copies = [t.clone() for t in (x, m, stored, noise)]
    for c in (functional.first_order(5.0, 0.0, prediction), functional.second_order(5.0, 2.0, 0.8, prediction, 0.3)):
        prev, x0 = functional.apply_step(c, x, m, stored if c.stored else None, noise if c.noise else None)
        ptrs = {t.data_ptr() for t in (x, m, stored, noise)}
        assert prev.data_ptr() not in ptrs and x0.data_ptr() not in ptrs
        assert prev.data_ptr() != x0.data_ptr()
    for t, copy in zip((x, m, stored, noise), copies, strict=True):
        assert torch.equal(t, copy)


def test_apply_step_skips_unused_terms() -> None:
    """A term with coefficient 0 is not read: an infinite unused input leaves the result finite."""
    x, m, _ = tensors(6)
    c = functional.first_order(2.0, 1.0, "sample")  # x0 = model output alone
    _, x0 = functional.apply_step(c, torch.full_like(x, math.inf), m)
    assert torch.equal(x0, m)
    zero = functional.Coefficients(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    prev, _ = functional.apply_step(zero, x, m)
    assert torch.equal(prev, torch.zeros_like(x))


# -- tables ---------------------------------------------------------------------------------------

TRAIN = st.tuples(st.floats(1e-5, 5e-3), st.floats(5e-3, 4e-2), st.integers(2, 1500))


@given(train=TRAIN, beta_schedule=st.sampled_from(schedule.BETA_SCHEDULES))
def test_train_betas_equal_spec_bitwise(train: tuple[float, float, int], beta_schedule: str) -> None:
    start, end, steps = train
    got = tables.train_betas(steps, start, end, beta_schedule).numpy()
    want = schedule.train_betas(steps, start, end, beta_schedule)
    assert got.dtype == np.float32
    if beta_schedule == "squaredcos_cap_v2":  # torch's cos and Python's may differ by one float32 ulp
        np.testing.assert_allclose(got, want, rtol=2**-23, atol=0)
    else:
        np.testing.assert_array_equal(got, want)
    cumprod = torch.cumprod(1.0 - torch.from_numpy(got), 0).numpy()
    np.testing.assert_array_equal(cumprod, schedule.alphas_cumprod(want))


def test_trained_betas_are_taken_as_given() -> None:
    given_betas = np.linspace(1e-4, 2e-2, 50)
    np.testing.assert_array_equal(
        tables.train_betas(50, 0.1, 0.2, "linear", given_betas).numpy(), given_betas.astype(np.float32)
    )


@pytest.mark.parametrize("spacing", schedule.TIMESTEP_SPACINGS)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 25, 61, 103, 999, 1000])
def test_spaced_timesteps_equal_spec(spacing: str, offset: int, n: int) -> None:
    got = tables.spaced_timesteps(n, 1000, spacing, offset).numpy()
    np.testing.assert_array_equal(got, schedule.spaced_timesteps(n, 1000, spacing, offset))


@given(t=st.lists(st.floats(-5, 1005), min_size=1, max_size=20), seed=SEEDS)
def test_interp_equals_numpy(t: list[float], seed: int) -> None:
    values = np.cumsum(np.random.default_rng(seed).random(1000)) + 0.01
    got = tables.interp(torch.tensor(t, dtype=torch.float64), torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(got, np.interp(t, np.arange(1000), values), rtol=1e-14, atol=0)


LOG_SIGMAS = np.log(
    schedule.train_sigmas(schedule.alphas_cumprod(schedule.train_betas(1000, 0.00085, 0.012, "linear")))
)


@given(sigmas=st.lists(st.floats(1e-4, 500.0), min_size=1, max_size=20))
def test_sigma_to_t_equals_spec(sigmas: list[float]) -> None:
    s = np.array(sigmas)
    log = torch.from_numpy(LOG_SIGMAS)
    got = tables.sigma_to_t(torch.from_numpy(s), log).numpy()
    np.testing.assert_allclose(got, schedule.sigma_to_t(s, LOG_SIGMAS), rtol=1e-12, atol=1e-9)
    nearest = tables.sigma_to_t(torch.from_numpy(s), log, quantize=True).numpy()
    np.testing.assert_array_equal(nearest, schedule.sigma_to_nearest_t(s, LOG_SIGMAS))


def test_sigma_to_t_clamps_and_hits_the_grid() -> None:
    log = torch.from_numpy(LOG_SIGMAS)
    train = np.exp(LOG_SIGMAS)
    grid = tables.sigma_to_t(torch.from_numpy(train[[0, 1, 500, 998, 999]]), log).numpy()
    np.testing.assert_allclose(grid, [0, 1, 500, 998, 999], atol=1e-9)
    ends = tables.sigma_to_t(torch.tensor([0.0, 1e-3, 1e4], dtype=torch.float64), log).numpy()
    np.testing.assert_array_equal(ends, [0.0, 0.0, 999.0])


SPEC_FAMILIES = {
    "karras": schedule.karras_sigmas,
    "exponential": schedule.exponential_sigmas,
    "beta": schedule.beta_sigmas,
}


@given(
    family=st.sampled_from(sorted(SPEC_FAMILIES)),
    n=st.integers(1, 60),
    bounds=st.tuples(st.floats(0.002, 1.0), st.floats(1.5, 200.0)),
)
def test_sigma_families_equal_spec(family: str, n: int, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    got = tables.sigma_family(family, n, lo, hi).numpy()
    np.testing.assert_allclose(got, SPEC_FAMILIES[family](n, lo, hi), rtol=1e-13, atol=0)


def test_beta_family_without_scipy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beta sigmas need scipy; without it the ImportError names the package and the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(
        ImportError, match=r"^use_beta_sigmas=True needs scipy: pip install scipy \(or kdpm2\[beta\]\)$"
    ):
        tables.sigma_family("beta", 5, 0.1, 10.0)


def test_sigma_family_rejects_unknown_names() -> None:
    """A family name that is not one of the three is an error, not a silent beta schedule."""
    with pytest.raises(ValueError, match=r"^family must be one of 'karras', 'exponential', 'beta'; got 'Beta'$"):
        tables.sigma_family("Beta", 5, 0.1, 10.0)


@given(
    n=st.integers(1, 30),
    churn=st.floats(0.0, 80.0),
    window=st.tuples(st.floats(0.0, 5.0), st.floats(0.5, 100.0)),
)
def test_churned_sigmas_follow_algorithm_2(n: int, churn: float, window: tuple[float, float]) -> None:
    sigmas = np.append(schedule.karras_sigmas(n, 0.03, 80.0), 0.0)
    got = tables.churned_sigmas(torch.from_numpy(sigmas), churn, *window).numpy()
    gamma = min(churn / n, 2**0.5 - 1)
    inside = (sigmas[:-1] >= window[0]) & (sigmas[:-1] <= window[1]) & (churn > 0)
    np.testing.assert_allclose(got, np.where(inside, sigmas[:-1] * (1 + gamma), sigmas[:-1]), rtol=1e-15)


@pytest.mark.parametrize("final", [0.0, 0.02])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_interleave_equals_spec_layout(final: float, n: int) -> None:
    sigmas = np.append(schedule.karras_sigmas(n, 0.1, 14.6), final)
    t = np.linspace(999, 10, n)
    mids = np.sqrt(sigmas[:-1] * sigmas[1:])
    mid_t = lambda s: torch.from_numpy(np.interp(-np.log(np.maximum(s.numpy(), 1e-10)), -np.log(sigmas[:-1]), t))  # noqa: E731
    built = tables.interleave(torch.from_numpy(sigmas), torch.from_numpy(sigmas[:-1]), torch.from_numpy(t), mid_t)
    assert built.num_steps == n
    np.testing.assert_array_equal(built.sigmas.numpy(), schedule.interleave_sigmas(sigmas))
    np.testing.assert_allclose(built.sigmas_interpol.numpy()[1:], schedule.interleave_midpoints(sigmas)[1:], rtol=1e-15)
    want_t = schedule.interleave_timesteps(t, mid_t(torch.from_numpy(mids)).numpy(), final == 0)
    np.testing.assert_array_equal(built.timesteps.numpy(), want_t)


# -- lookup ---------------------------------------------------------------------------------------

VALUES = st.lists(st.integers(0, 6).map(float), min_size=1, max_size=15)


def brute_index(values: list[float], v: float) -> int:
    hits = [i for i, x in enumerate(values) if x == v]
    return hits[1] if len(hits) > 1 else hits[0]


@given(values=VALUES)
def test_first_or_second_index_is_diffusers_rule(values: list[float]) -> None:
    index = lookup.first_or_second_index(values)
    assert index == {v: brute_index(values, v) for v in values}


@given(values=VALUES, queries=st.lists(st.integers(-1, 7).map(float), min_size=1, max_size=6))
def test_device_indices_match_the_rule(values: list[float], queries: list[float]) -> None:
    indices, found = lookup.device_indices(torch.tensor(queries), torch.tensor(values))
    for q, i, f in zip(queries, indices.tolist(), found.tolist(), strict=True):
        assert f == (q in values)
        if f:
            assert i == brute_index(values, q), f"device_indices({q}) = {i}"


def test_device_indices_compare_in_the_schedule_dtype() -> None:
    """As diffusers' ``==`` on a float32 table: a float64 query is rounded to float32 first."""
    indices, found = lookup.device_indices(torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.3, 0.1]))
    assert found.tolist() == [True, True]
    assert indices.tolist() == [1, 0]


def test_view_positions_read_metadata() -> None:
    table = torch.arange(10, dtype=torch.float32) * 1.5
    assert lookup.view_positions(table[3], table) == [3]
    assert lookup.view_positions(table[2:8:3], table) == [2, 5]
    assert lookup.view_positions(table[4].expand(3), table) == [4, 4, 4]
    assert lookup.view_positions(table[1:][2], table) == [3]
    assert lookup.view_positions(table[3].clone(), table) is None  # a copy: compare values instead
    assert lookup.view_positions(table[3].double(), table) is None
    assert lookup.view_positions(3.0, table) is None
    assert lookup.view_positions(table.view(2, 5), table) is None
    sub = table[2:7]
    assert lookup.view_positions(sub[1], sub) == [1]
    assert lookup.view_positions(table[0], sub) is None  # before the sub-table's start
    assert lookup.view_positions(table[9], sub) is None  # past its end
    strided = table[::2]
    assert lookup.view_positions(table[3], strided) is None  # between its elements
    assert lookup.view_positions(table[4], strided) == [2]
    assert lookup.view_positions(table[7], sub) is None  # one past its end


def test_view_positions_refuse_other_layouts() -> None:
    """Same storage is not enough: another dtype, a 2-D table or view, or a zero-stride table give ``None``."""
    table = torch.arange(10, dtype=torch.float32) * 1.5
    assert lookup.view_positions(table.view(torch.int32)[3], table) is None  # same bytes, other dtype
    square = table.view(2, 5)
    assert lookup.view_positions(square[0, 1], square) is None  # 2-D table
    assert lookup.view_positions(table[:4].view(2, 2), table) is None  # 2-D view inside the table
    flat = torch.tensor(2.0).expand(4)
    assert lookup.view_positions(flat[1], flat) is None  # every element at one address


def test_as_float_rounds_to_the_schedule_dtype() -> None:
    assert lookup.as_float(0.1, torch.float32) == float(np.float32(0.1))
    assert lookup.as_float(torch.tensor([[0.1]], dtype=torch.float64), torch.float64) == 0.1
    assert lookup.as_float(7, torch.float32) == 7.0
    assert lookup.as_float(0.1, torch.float64) == 0.1  # a Python float keeps its float64 value
    with pytest.raises(ValueError, match="single value"):
        lookup.as_float(torch.tensor([1.0, 2.0]), torch.float32)
    with pytest.raises(TypeError, match="timestep must be a number"):
        lookup.as_float("t", torch.float32)


def test_index_of_value_names_a_missing_timestep() -> None:
    assert lookup.index_of_value({5.0: 2}, 5.0, 5) == 2
    with pytest.raises(ValueError, match=r"timestep 4 is not in the schedule"):
        lookup.index_of_value({5.0: 2}, 4.0, 4)


def test_second_order_without_churn_adds_no_noise() -> None:
    """The default call (no churn) has a zero noise coefficient: no noise term is ever combined."""
    for prediction in functional.PREDICTION_TYPES:
        assert functional.second_order(3.0, 1.7, 1.1, prediction).noise == 0.0


def test_apply_step_without_a_unit_coefficient_leaves_inputs_alone() -> None:
    """With no coefficient equal to 1 the sum starts from a product: still a new tensor, inputs untouched."""
    x = torch.linspace(-1.0, 1.0, 7)
    m = torch.linspace(2.0, 3.0, 7)
    before = (x.clone(), m.clone())
    c = functional.Coefficients(stored=0.0, sample=2.0, model=0.5, noise=0.0, x0_sample=2.0, x0_model=-1.5)
    prev, x0 = functional.apply_step(c, x, m)
    torch.testing.assert_close(prev, 2.0 * x + 0.5 * m)
    torch.testing.assert_close(x0, 2.0 * x - 1.5 * m)
    assert torch.equal(x, before[0]) and torch.equal(m, before[1])


def test_churn_window_includes_both_ends() -> None:
    """Algorithm 2 churns where ``s_tmin <= sigma <= s_tmax``: a sigma equal to either end is churned."""
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    gamma = min(1.0 / 4, math.sqrt(2) - 1)  # s_churn / n, capped
    hat = tables.churned_sigmas(sigmas, 1.0, 2.0, 4.0)
    assert hat.tolist() == [8.0, 4.0 * (1 + gamma), 2.0 * (1 + gamma), 1.0]


# -- the vectorised call tables (issue 23): the scalar formulas, bit for bit ----------------------


@st.composite
def host_tables(draw: st.DrawFn) -> tuple[list[float], list[float], int]:
    """Interleaved ``sigmas``/``sigmas_interpol`` host tables of a decreasing schedule, and its call count."""
    top = draw(st.floats(0.05, 20000.0))
    ratios = draw(st.lists(st.floats(0.05, 0.99), min_size=1, max_size=12))
    main = [top]
    for r in ratios:
        main.append(main[-1] * r)
    final_zero = draw(st.booleans())
    if final_zero:
        main.append(0.0)
    main_t = torch.tensor(main, dtype=torch.float64)
    hat = main_t[:-1] * draw(st.sampled_from([1.0, 1.1]))
    built = tables.interleave(main_t, hat, torch.zeros(len(main) - 1, dtype=torch.float64), lambda m: m * 0)
    return built.sigmas.tolist(), built.sigmas_interpol.tolist(), len(built.timesteps)


@given(host_tables(), st.sampled_from(functional.PREDICTION_TYPES), st.sampled_from([0.0, 0.7]), st.floats(0.5, 1.5))
def test_call_tables_are_the_scalar_formulas_bitwise(
    case: tuple[list[float], list[float], int], prediction: str, churn: float, s_noise: float
) -> None:
    """Every call's ``Coefficients`` and scale equal ``first_order``/``second_order`` exactly."""
    sigmas, interpol, n = case
    calls = functional.call_tables(sigmas, interpol, n, prediction, churn, s_noise)
    assert calls.table.shape == (2, n, 7) and calls.as_tensor().shape == (2, n, 7)
    for k in range(n):
        want = functional.first_order(sigmas[k], interpol[k + 1], prediction)
        assert calls.coefficients(functional.FIRST, k) == want
        assert calls.lane(functional.FIRST).scales[k] == math.sqrt(sigmas[k] * sigmas[k] + 1.0)
        if k == 0:
            assert calls.coefficients(functional.SECOND, 0) == functional.Coefficients(0, 0, 0, 0, 0, 0)
            continue
        spread = 0.0
        if churn > 0 and k + 1 < n:
            spread = s_noise * math.sqrt(max(sigmas[k + 1] ** 2 - sigmas[k] ** 2, 0.0))
        want2 = functional.second_order(sigmas[k - 1], interpol[k], sigmas[k], prediction, spread)
        assert calls.coefficients(functional.SECOND, k) == want2
        assert calls.lane(functional.SECOND).scales[k] == math.sqrt(interpol[k] * interpol[k] + 1.0)
        assert calls.noise(k) == (churn > 0 and k + 1 < n)
    rows = np.asarray(calls.table)
    assert calls.live == tuple(tuple(bool((rows[o, :, i] != 0).any()) for i in range(6)) for o in (0, 1))


@given(host_tables(), st.sampled_from(functional.PREDICTION_TYPES), st.sampled_from([0.0, 0.7]))
def test_sum_codes_and_lanes_are_plan_sum(
    case: tuple[list[float], list[float], int], prediction: str, churn: float
) -> None:
    """A call's code is its ``plan_step`` structure; the lanes mark exactly the ``TWO_TERMS`` calls
    (epsilon prediction, no churn noise), where ``step`` makes two ``torch.add`` and no plan."""
    sigmas, interpol, n = case
    calls = functional.call_tables(sigmas, interpol, n, prediction, churn)
    for order in (functional.FIRST, functional.SECOND):
        lane = calls.lane(order)
        for k in range(1 if order == functional.SECOND else 0, n):
            c = calls.coefficients(order, k)
            second = order == functional.SECOND
            prev, x0 = functional.plan_step(c, second, second and calls.noise(k))
            kind = int(calls.kinds[order, k])
            if not (second and calls.noise(k)) and not (second and c.noise):
                assert kind >> 7 == functional.code_of(prev), (order, k, c)
            assert kind & 127 == functional.code_of(x0), (order, k, c)
            if second and calls.noise(k):
                continue  # a churned call is never the two-term one (step checks the noise first)
            two = bool(lane.model[k]) and bool(lane.x0_model[k])
            assert two == (kind == functional.TWO_TERMS[order] and prediction == "epsilon"), (order, k, c)


@given(st.lists(st.sampled_from([0.0, 1.0, 0.5, -2.0]), min_size=2, max_size=4))
def test_run_coded_is_run_sum_of_plan_sum(coefficients: list[float]) -> None:
    """``run_coded`` on the code of ``plan_sum``'s plan gives ``run_sum``'s tensor bit for bit."""
    g = torch.Generator().manual_seed(len(coefficients))
    inputs = tuple(torch.randn(5, generator=g) for _ in range(4))
    plan = functional.plan_sum([(c, i) for i, c in enumerate(coefficients)])
    code = functional.code_of(plan)
    padded = tuple(coefficients) + (0.0,) * (4 - len(coefficients))
    got = functional.run_coded(code, padded, inputs, inputs[0])
    assert torch.equal(got, functional.run_sum(plan, inputs, inputs[0]))


@given(st.lists(st.sampled_from([3.0, 2.0, 1.0]), min_size=1, max_size=10))
def test_step_start_index_prefers_step_starts(values: list[float]) -> None:
    """``step_start_index``: the first even position of each value, else its first position."""
    index = lookup.step_start_index(values)
    for v in set(values):
        positions = [i for i, w in enumerate(values) if w == v]
        assert index[v] == next((i for i in positions if i % 2 == 0), positions[0])

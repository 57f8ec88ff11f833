"""The spec equals k-diffusion (crowsonkb/k-diffusion 0.1.1.post1), all in float64.

- The Karras and exponential families equal ``get_sigmas_karras`` / ``get_sigmas_exponential``
  between the same bounds (and A1111's "discard next to last sigma" cut of them).
- ``sigma_interpolation="log"`` equals ``DiscreteSchedule`` (``CompVisDenoiser``): ``t_to_sigma``,
  ``sigma_to_t`` (also quantized, as ComfyUI) and ``get_sigmas(n)``, A1111's ``get_sigmas(n + 1)``
  without the penultimate sigma included.
- A whole sampling loop of the Reference on custom ``sigmas=`` equals ``sample_dpm_2`` with the
  same denoiser (the Gaussian of ``kdpm2_spec.gaussian``) to 1e-10, with and without churn.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from kdpm2_spec import PREDICTION_TYPES, Gaussian, Reference, model_output_for, schedule

with warnings.catch_warnings():
    # k-diffusion imports CLIP (pkg_resources) and jsonmerge (a deprecated jsonschema API).
    warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from k_diffusion import external, sampling

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*pkg_resources.*:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jsonmerge"),
]

RTOL = 1e-10
BOUNDS = ((0.0292, 14.6146), (0.002, 80.0), (0.1, 10.0))
STEP_COUNTS = (1, 2, 3, 10, 25, 50)


@contextlib.contextmanager
def torch_float64() -> Iterator[None]:
    """Make torch's default dtype float64, so that k-diffusion's ``torch.linspace`` is float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_close(name: str, got: Any, want: Any, where: str, rtol: float = RTOL, atol: float = 0.0) -> None:
    """Elementwise ``|got - want| <= atol + rtol |want|``, the message naming the first bad entry."""
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name} has shape {got.shape}, but should have {want.shape} [{where}]"
    bad = np.flatnonzero(~(np.abs(got - want) <= atol + rtol * np.abs(want)))
    if len(bad):
        i = np.unravel_index(bad[0], want.shape)
        raise AssertionError(
            f"{name}[{','.join(map(str, i))}]={got[i]:.17g}, but should be {want[i]:.17g} "
            f"(rtol {rtol:g}; {len(bad)} entries off) [{where}]"
        )


# -- sigma families -------------------------------------------------------------------------------


def family_sigmas(family: str, n: int, lo: float, hi: float, discard: bool = False) -> np.ndarray:
    """The Reference's main sigmas (final 0 included) of one family between given bounds."""
    ref = Reference(**{f"use_{family}_sigmas": True}, sigma_min=lo, sigma_max=hi, discard_penultimate_sigma=discard)
    ref.set_timesteps(n)
    return ref.main_sigmas_table


def kdiffusion_family(family: str, n: int, lo: float, hi: float, discard: bool = False) -> torch.Tensor:
    """k-diffusion's schedule; with ``discard``, A1111's ``n + 1`` sigmas without the penultimate."""
    build = sampling.get_sigmas_karras if family == "karras" else sampling.get_sigmas_exponential
    with torch_float64():
        sigmas = build(n + 1 if discard else n, lo, hi)
    assert sigmas.dtype == torch.float64
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def check_family(family: str, lo: float, hi: float, n: int, discard: bool) -> None:
    """Our Karras/exponential family equals k-diffusion's constructor for the same bounds."""
    where = f"Reference(use_{family}_sigmas=True, sigma_min={lo}, sigma_max={hi}, discard_penultimate_sigma={discard})"
    assert_close(
        "sigmas",
        family_sigmas(family, n, lo, hi, discard),
        kdiffusion_family(family, n, lo, hi, discard),
        f"{where}.set_timesteps({n})",
        rtol=1e-13,
    )


@pytest.mark.parametrize("family", ["karras", "exponential"])
@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("discard", [False, True])
def test_family_equals_kdiffusion(family: str, lo: float, hi: float, n: int, discard: bool) -> None:
    check_family(family, lo, hi, n, discard)


@given(
    st.sampled_from(["karras", "exponential"]),
    st.floats(1e-3, 1.0),
    st.floats(2.0, 200.0),
    st.integers(1, 200),
    st.booleans(),
)
def test_family_equals_kdiffusion_given(family: str, lo: float, hi: float, n: int, discard: bool) -> None:
    check_family(family, lo, hi, n, discard)


# -- the discrete schedule (log-sigma interpolation) ----------------------------------------------


class FakeCompVisModel:
    """What ``CompVisDenoiser`` reads from an LDM model: its ``alphas_cumprod`` buffer."""

    def __init__(self, alphas_cumprod: np.ndarray) -> None:
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod.astype(np.float64))


CONFIGS = (
    {"beta_schedule": "scaled_linear"},
    {"beta_schedule": "linear"},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
)
CONFIG_IDS = ("scaled_linear", "linear", "squaredcos_cap_v2", "trained_betas")


def denoiser_for(ref: Reference, quantize: bool = False) -> external.CompVisDenoiser:
    return external.CompVisDenoiser(FakeCompVisModel(ref.alphas_cumprod), quantize=quantize)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_train_sigmas_equal_discrete_schedule(config: dict) -> None:
    ref = Reference(**config)
    assert_close("train_sigmas", ref.train_sigmas, denoiser_for(ref).sigmas, f"Reference({config})", rtol=1e-15)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_t_to_sigma_and_back_equal_discrete_schedule(config: dict) -> None:
    ref = Reference(**config, sigma_interpolation="log")
    model = denoiser_for(ref)
    # k-diffusion casts t to float32 (t.float()): use float32 timesteps on both sides.
    t = np.random.default_rng(0).uniform(0, 999, 200).astype(np.float32).astype(np.float64)
    t = np.concatenate([t, np.arange(1000.0)])
    ours = schedule.t_to_sigma(t, ref.train_sigmas, "log")
    assert_close("t_to_sigma(t)", ours, model.t_to_sigma(torch.from_numpy(t)), f"{config}", rtol=1e-13)
    sigmas = np.exp(np.random.default_rng(1).uniform(np.log(ref.train_sigmas[0]), np.log(ref.train_sigmas[-1]), 200))
    sigmas = np.concatenate([sigmas, ref.train_sigmas])
    theirs_t = model.sigma_to_t(torch.from_numpy(sigmas))
    assert_close("sigma_to_t(sigma)", ref.sigma_to_t(sigmas), theirs_t, f"{config}", rtol=1e-10, atol=1e-9)
    nearest = model.sigma_to_t(torch.from_numpy(sigmas), quantize=True).to(torch.float64)
    assert_close("sigma_to_nearest_t(sigma)", schedule.sigma_to_nearest_t(sigmas, ref.log_sigmas), nearest, f"{config}")


def kdiffusion_get_sigmas(ref: Reference, n: int, discard: bool = False) -> torch.Tensor:
    """``model_wrap.get_sigmas(n)``; A1111 asks for ``n + 1`` and drops the penultimate one."""
    sigmas = denoiser_for(ref).get_sigmas(n + 1 if discard else n)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("n", [*STEP_COUNTS, 999])
@pytest.mark.parametrize("discard", [False, True])
def test_log_interpolated_sigmas_equal_get_sigmas(config: dict, n: int, discard: bool) -> None:
    """``Reference(sigma_interpolation="log")`` equals ``get_sigmas``: its spaced timesteps equal
    k-diffusion's ``torch.linspace(T - 1, 0, n)`` in float32 to two ulps (``np.linspace`` rounds
    differently), and on k-diffusion's own timesteps the main sigmas agree to 1e-13."""
    ref = Reference(**config, sigma_interpolation="log", discard_penultimate_sigma=discard)
    where = f"Reference({config}, sigma_interpolation='log', discard_penultimate_sigma={discard}).set_timesteps({n})"
    theirs = kdiffusion_get_sigmas(ref, n, discard)
    t = torch.linspace(999, 0, n + 1 if discard else n).float().to(torch.float64).numpy()
    t = np.delete(t, -1) if discard else t
    ref.set_timesteps(n)
    if n == 1 and not discard:
        # diffusers' linspace spacing (kept by the spec) puts one step at t = 0, k-diffusion at T - 1.
        assert ref.main_timesteps[0] == 0, f"main_timesteps={ref.main_timesteps}, but should be [0.] [{where}]"
        assert_close("sigmas", ref.main_sigmas_table, [ref.train_sigmas[0], 0.0], where)
        assert_close("k-diffusion sigmas", theirs, [ref.train_sigmas[-1], 0.0], where, rtol=1e-13)
        return
    assert_close("main_timesteps", ref.main_timesteps, t, where, rtol=0, atol=2 * np.spacing(np.float32(999)))
    ref.set_timesteps(timesteps=t.tolist())
    where = where.replace(f"({n})", "(timesteps=<k-diffusion's>)")
    assert_close("sigmas", ref.main_sigmas_table, theirs, where, rtol=1e-13)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("family", [None, "karras", "exponential"])
@pytest.mark.parametrize("n", [1, 3, 10, 25])
def test_quantized_timesteps_equal_comfyui(config: dict, family: str | None, n: int) -> None:
    """With ``quantize_timesteps`` each call's timestep is k-diffusion's ``sigma_to_t(quantize=True)``
    of the sigma the model is evaluated at (ComfyUI's ``model_sampling.timestep``)."""
    extra = {} if family is None else {f"use_{family}_sigmas": True}
    ref = Reference(**config, **extra, sigma_interpolation="log", quantize_timesteps=True)
    ref.set_timesteps(n)
    levels = np.array([ref.sigmas[k] if k % 2 == 0 else ref.sigmas_interpol[k] for k in range(len(ref.timesteps))])
    theirs = denoiser_for(ref, quantize=True).sigma_to_t(torch.from_numpy(levels)).to(torch.float64)
    assert_close(
        "timesteps", ref.timesteps, theirs, f"Reference({config}, {extra}, quantize_timesteps=True).set_timesteps({n})"
    )


# -- whole sampling loops -------------------------------------------------------------------------


class Run(NamedTuple):
    """A loop's final sample and the noise level of each model call."""

    sample: np.ndarray
    levels: list[float]


def reference_loop(
    ref: Reference, sigmas: np.ndarray, x: np.ndarray, data: Gaussian, noise: list[np.ndarray] | None = None
) -> Run:
    """The Reference driven as a pipeline: custom ``sigmas``, begin index 0, exact denoiser outputs.

    With churn, ``noise[i]`` is k-diffusion's draw of full step ``i``: the caller applies the first
    (``x + s_noise * eps_0 * sqrt(sh_0^2 - s_0^2)``), ``step`` takes ``eps_(i+1)`` at the end of step ``i``.
    """
    ref.set_timesteps(sigmas=sigmas.tolist())
    ref.set_begin_index(0)  # sigmas above the training range share timestep 999
    prediction_type = ref.config["prediction_type"]
    if noise is not None:
        spread = math.sqrt(ref.sigmas[0] ** 2 - sigmas[0] ** 2)
        x = x + ref.config["s_noise"] * noise[0] * spread
    levels = []
    for k, t in enumerate(ref.timesteps):
        ref.scale_model_input(x, t)
        sigma = ref.current_sigma
        levels.append(sigma)
        output = model_output_for(data.denoise(x, sigma), x, sigma, prediction_type)
        step = k // 2  # the full step this call belongs to
        eps = noise[step + 1] if noise is not None and step + 1 < len(noise) else None
        x = ref.step(output, t, x, noise=eps).prev_sample
    return Run(x, levels)


def kdiffusion_loop(sigmas: np.ndarray, x: np.ndarray, data: Gaussian, **churn: float) -> Run:
    levels = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        levels.append(float(sigma[0]))
        return torch.from_numpy(data.denoise(x.numpy(), float(sigma[0])))

    out = sampling.sample_dpm_2(model, torch.from_numpy(x), torch.from_numpy(sigmas), disable=True, **churn)
    return Run(out.numpy(), levels)


def assert_runs_equal(ours: Run, theirs: Run, where: str) -> None:
    assert_close("model call sigmas", ours.levels, theirs.levels, where, rtol=1e-13)
    scale = float(np.abs(theirs.sample).max())
    assert_close("final sample", ours.sample, theirs.sample, where, rtol=RTOL, atol=RTOL * scale)


def loop_sigmas(family: str, n: int, lo: float, hi: float, final_zero: bool) -> np.ndarray:
    sigmas = kdiffusion_family(family, n, lo, hi).numpy()
    return sigmas if final_zero else sigmas[:-1]


X_START = np.random.default_rng(2).standard_normal((2, 3, 4))


@pytest.mark.parametrize("family", ["karras", "exponential"])
@pytest.mark.parametrize("n", [2, 3, 10, 25])
@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("lo", "hi"), BOUNDS[:2])
def test_sampling_loop_equals_sample_dpm_2(
    family: str, n: int, final_zero: bool, prediction_type: str, lo: float, hi: float
) -> None:
    sigmas = loop_sigmas(family, n, lo, hi, final_zero)
    data = Gaussian()
    x = X_START * sigmas[0]
    ours = reference_loop(Reference(prediction_type=prediction_type), sigmas, x, data)
    where = f"Reference(prediction_type={prediction_type!r}).set_timesteps(sigmas={family}({n}, {lo}, {hi}))"
    assert_runs_equal(ours, kdiffusion_loop(sigmas, x, data), where)


custom_sigmas = st.builds(
    lambda values, final: np.array(sorted(values, reverse=True) + final),
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=25, unique=True),
    st.sampled_from([[0.0], []]),
).filter(lambda s: len(s) >= 2 and np.all(np.diff(s) < 0))


@given(custom_sigmas, st.sampled_from(PREDICTION_TYPES), st.floats(-1, 1), st.floats(0.1, 2.0))
def test_sampling_loop_equals_sample_dpm_2_given(
    sigmas: np.ndarray, prediction_type: str, mean: float, std: float
) -> None:
    data = Gaussian(mean, std)
    x = X_START * sigmas[0]
    ours = reference_loop(Reference(prediction_type=prediction_type), sigmas, x, data)
    where = f"Reference(prediction_type={prediction_type!r}).set_timesteps(sigmas={sigmas.tolist()}), {data}"
    assert_runs_equal(ours, kdiffusion_loop(sigmas, x, data), where)


# -- churn (Karras et al. Algorithm 2) ------------------------------------------------------------


class Churn(NamedTuple):
    s_churn: float
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0


def churn_noise(x: np.ndarray, steps: int, seed: int) -> list[np.ndarray]:
    """k-diffusion's draws: one ``torch.randn_like(x)`` per full step, before the model call."""
    torch.manual_seed(seed)
    sample = torch.from_numpy(x)
    return [torch.randn_like(sample).numpy() for _ in range(steps)]


def check_churn(sigmas: np.ndarray, churn: Churn, prediction_type: str, seed: int) -> None:
    data = Gaussian()
    x = X_START * sigmas[0]
    s_tmax = None if math.isinf(churn.s_tmax) else churn.s_tmax
    ref = Reference(
        prediction_type=prediction_type,
        s_churn=churn.s_churn,
        s_tmin=churn.s_tmin,
        s_tmax=s_tmax,
        s_noise=churn.s_noise,
    )
    ours = reference_loop(ref, sigmas, x, data, noise=churn_noise(x, len(sigmas) - 1, seed))
    torch.manual_seed(seed)
    theirs = kdiffusion_loop(sigmas, x, data, **churn._asdict())
    where = f"Reference(prediction_type={prediction_type!r}, {churn}).set_timesteps(sigmas={sigmas.tolist()})"
    assert_runs_equal(ours, theirs, where)


@pytest.mark.parametrize(
    "churn",
    [Churn(1.0), Churn(10.0), Churn(80.0, s_noise=1.003), Churn(40.0, s_tmin=0.05, s_tmax=1.0), Churn(5.0, s_tmin=3.0)],
    ids=str,
)
@pytest.mark.parametrize(("n", "final_zero"), [(1, True), (2, True), (2, False), (10, True), (10, False), (25, True)])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_churn_equals_sample_dpm_2(churn: Churn, n: int, final_zero: bool, prediction_type: str) -> None:
    check_churn(loop_sigmas("karras", n, 0.0292, 14.6146, final_zero), churn, prediction_type, seed=n)


@given(
    custom_sigmas,
    st.builds(Churn, st.floats(0.01, 100.0), st.floats(0.0, 1.0), st.floats(1.0, 100.0), st.floats(0.5, 1.5)),
    st.sampled_from(PREDICTION_TYPES),
    st.integers(0, 2**32 - 1),
)
@example(np.array([10.0, 1.0, 0.0]), Churn(1.0), "epsilon", 0)
def test_churn_equals_sample_dpm_2_given(sigmas: np.ndarray, churn: Churn, prediction_type: str, seed: int) -> None:
    check_churn(sigmas, churn, prediction_type, seed)

"""The demo's functions one by one, fast (a few points and steps), for the mutation run.

Every expected value is a closed form, an independent computation written here (numpy, torch: the
posterior mean, RK4, DPM-Solver-2), the spec package or the documentation. k-diffusion and diffusers
are imported only by the tests of their samplers; ``run`` is tested with stand-ins for them. The
slow end-to-end demo tests (order about 2 at 16 .. 64 steps, the command line) are in ``test_cli.py``.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdpm2 import demo
from kdpm2_spec import schedule

FLOAT32_SIGMA_RTOL = 1e-5  # our loop reads sigmas from the public float32 tables, as diffusers keeps them


def _assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """``|got - want| <= atol + rtol |want|`` elementwise, same shape (numpy's check: no lazy torch imports)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=atol)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _points(count: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(count, 2, generator=_generator(seed), dtype=torch.float64)


def _rms(difference: torch.Tensor) -> float:
    """RMS of the rows' Euclidean lengths, written out."""
    return math.sqrt(float((difference**2).sum(1).mean()))


def _training_range() -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of the default training schedule, from the spec."""
    sigmas = schedule.train_sigmas(schedule.alphas_cumprod(schedule.train_betas(1000, 0.00085, 0.012, "linear")))
    return float(sigmas[0]), float(sigmas[-1])


def _karras(steps: int) -> np.ndarray:
    """Karras et al. (2022) eq. (5) with rho = 7 over the training range, then 0."""
    sigma_min, sigma_max = _training_range()
    i = np.arange(steps)
    hi, lo = sigma_max ** (1 / 7), sigma_min ** (1 / 7)
    return np.append((hi + i / (steps - 1) * (lo - hi)) ** 7, 0.0)


def _posterior_mean(
    means: np.ndarray, stds: np.ndarray, weights: np.ndarray, x: np.ndarray, sigma: float
) -> np.ndarray:
    """``E[x0 | x]`` of a 2-D mixture, from per-component log densities (stabilised by their maximum)."""
    var = stds**2 + sigma**2  # (K,)
    distance = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)  # (N, K)
    log_density = np.log(weights) - np.log(2 * np.pi * var) - distance / (2 * var)
    w = np.exp(log_density - log_density.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    component_means = (stds[:, None] ** 2 * x[:, None, :] + sigma**2 * means[None]) / var[:, None]  # (N, K, 2)
    return (w[..., None] * component_means).sum(1)


def _rk4(denoise: demo.Denoiser, x: torch.Tensor, sigma_start: float, sigma_end: float, steps: int) -> torch.Tensor:
    """Classical RK4 on ``dx/du = x - D(x, e^u)``, ``u = log sigma``, written out here."""
    u0, u1 = math.log(sigma_start), math.log(sigma_end)
    h = (u1 - u0) / steps
    for k in range(steps):
        u = u0 + k * h
        k1 = x - denoise(x, math.exp(u))
        x2 = x + 0.5 * h * k1
        k2 = x2 - denoise(x2, math.exp(u + 0.5 * h))
        x3 = x + 0.5 * h * k2
        k3 = x3 - denoise(x3, math.exp(u + 0.5 * h))
        x4 = x + h * k3
        k4 = x4 - denoise(x4, math.exp(u + h))
        x = x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    return x


def _gaussian(s: float) -> demo.Denoiser:
    """The ideal denoiser of data ``N(0, s^2 I)``: ``D(x, sigma) = x s^2 / (s^2 + sigma^2)``."""
    return lambda x, sigma: x * (s * s / (s * s + sigma * sigma))


def _gaussian_flow(x: torch.Tensor, s: float, sigma_start: float, sigma: float) -> torch.Tensor:
    """The exact probability-flow ODE solution for data ``N(0, s^2 I)``: ``x ~ sqrt(s^2 + sigma^2)``."""
    return x * math.sqrt(s * s + sigma * sigma) / math.sqrt(s * s + sigma_start * sigma_start)


class _Stream:
    """A stderr that logs what is written and when it is flushed; a terminal if ``tty``."""

    def __init__(self, tty: bool = False) -> None:
        self.events: list[str] = []
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.events.append(text)
        return len(text)

    def flush(self) -> None:
        self.events.append("<flush>")


def _result(
    step_counts: tuple[int, ...], names: tuple[str, ...] = ("kdpm2", "k-diffusion", "diffusers")
) -> demo.Result:
    """A hand-made result: distinct errors and seconds per sampler and step count."""
    result = demo.Result(step_counts, "cpu:test")
    for j, name in enumerate(names):
        result.errors[name] = [(3.14159 + j) * 10.0 ** (-k - j) * 1.2345 for k in range(len(step_counts))]
        result.seconds[name] = [0.0123 * (k + 1) + 0.5 * j + 0.00004 for k in range(len(step_counts))]
    result.missing = ["alpha is not installed: skipped", "beta could not be imported (X: y): skipped"]
    result.sigma_max, result.sigma_min, result.reference_accuracy = 25.146116, 0.029167533, 3.1e-9
    return result


# -- the mixture -------------------------------------------------------------------------------


def test_ring_places_equal_components_counter_clockwise_on_the_circle() -> None:
    """Means ``radius (cos 2 pi k / K, sin 2 pi k / K)``, equal stds and weights, float64 on the device."""
    mixture = demo.Mixture.ring(components=5, radius=2.5, std=0.3, device="cpu")
    angle = 2 * np.pi * np.arange(5) / 5
    want = 2.5 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    np.testing.assert_allclose(mixture.means.numpy(), want, rtol=0, atol=1e-14)
    np.testing.assert_allclose(mixture.stds.numpy(), np.full(5, 0.3), rtol=0, atol=1e-15)
    np.testing.assert_allclose(mixture.weights.numpy(), np.full(5, 0.2), rtol=0, atol=1e-15)
    assert float(mixture.weights.sum()) == pytest.approx(1.0, abs=1e-15)
    for tensor in (mixture.means, mixture.stds, mixture.weights):
        assert tensor.dtype == torch.float64
        assert tensor.device.type == "cpu"


def test_ring_defaults_are_the_documented_eight_gaussians() -> None:
    """The defaults: 8 components on the unit circle (docs: "a mixture of 8 Gaussians on a ring"), std 0.2."""
    mixture = demo.Mixture.ring()
    assert mixture.means.shape == (8, 2)
    np.testing.assert_allclose(mixture.means.norm(dim=1).numpy(), np.ones(8), rtol=1e-14)
    np.testing.assert_allclose(mixture.means[0].numpy(), [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(mixture.stds.numpy(), np.full(8, 0.2), rtol=1e-15)
    np.testing.assert_allclose(mixture.weights.numpy(), np.full(8, 1 / 8), rtol=1e-15)
    assert mixture.means.device.type == "cpu"


def test_ring_is_placed_on_the_requested_device() -> None:
    """Means, stds and weights all on ``device`` (torch's data-less "meta" device stands in for a GPU)."""
    mixture = demo.Mixture.ring(components=3, device="meta")
    assert [t.device.type for t in (mixture.means, mixture.stds, mixture.weights)] == ["meta"] * 3
    assert mixture.means.shape == (3, 2)


UNEVEN = (
    np.array([[1.0, 0.5], [-2.0, 1.0], [0.5, -3.0]]),  # means
    np.array([0.1, 0.6, 0.3]),  # stds
    np.array([0.2, 0.5, 0.3]),  # weights
)


def _uneven_mixture() -> demo.Mixture:
    means, stds, weights = (torch.tensor(a, dtype=torch.float64) for a in UNEVEN)
    return demo.Mixture(means, stds, weights)


@pytest.mark.parametrize("sigma", [0.05, 0.4, 2.0, 30.0])
def test_denoise_is_the_posterior_mean_with_uneven_weights_and_stds(sigma: float) -> None:
    """Against the closed-form posterior mean computed here from per-component densities; input untouched."""
    mixture = _uneven_mixture()
    x = torch.cat([_points(40, 1, scale=2.0), torch.tensor([[0.0, 0.0], [1.0, 0.5], [-2.0, 1.0]])])
    before = x.clone()
    got = mixture.denoise(x, sigma)
    assert got.shape == x.shape
    assert got.dtype == torch.float64
    want = _posterior_mean(*UNEVEN, x.numpy(), sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    assert torch.equal(x, before), "denoise must not modify its input"


@pytest.mark.parametrize("sigma", [0.05, 30.0])
def test_denoise_is_stable_far_from_the_means(sigma: float) -> None:
    """Points hundreds of standard deviations away: finite, and the stabilised closed form."""
    mixture = _uneven_mixture()
    x = torch.tensor([[400.0, -300.0], [-1000.0, 20.0], [3.0, 900.0], [-250.0, -250.0]], dtype=torch.float64)
    got = mixture.denoise(x, sigma)
    assert torch.isfinite(got).all(), got
    want = _posterior_mean(*UNEVEN, x.numpy(), sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)


def test_sample_shape_dtype_device_and_seed() -> None:
    """``(count, 2)`` float64 on the mixture's device; the generator alone decides the draws."""
    mixture = demo.Mixture.ring(components=3)
    a = mixture.sample(17, _generator(5))
    assert a.shape == (17, 2)
    assert a.dtype == torch.float64
    assert a.device == mixture.means.device
    assert torch.equal(a, mixture.sample(17, _generator(5)))
    assert not torch.equal(a, mixture.sample(17, _generator(6)))


def test_sample_draws_a_component_then_float64_noise() -> None:
    """``mu_k + s_k n``: ``k`` by ``torch.multinomial`` of the weights, then float64 normal ``n``, one generator."""
    means = torch.tensor([[3.0, -1.0], [0.0, 2.0], [-4.0, 0.5]], dtype=torch.float64)
    stds, weights = torch.tensor([0.5, 1.5, 0.25], dtype=torch.float64), torch.tensor([0.3, 0.2, 0.5]).double()
    got = demo.Mixture(means, stds, weights).sample(500, _generator(9))
    generator = _generator(9)
    k = torch.multinomial(weights, 500, replacement=True, generator=generator)
    noise = torch.randn(500, 2, generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), (means[k] + stds[k, None] * noise).numpy(), rtol=1e-15, atol=1e-15)
    standard = demo.Mixture(torch.zeros(1, 2).double(), torch.ones(1).double(), torch.ones(1).double())
    draws = standard.sample(100, _generator(1))
    assert bool((draws.float().double() != draws).all()), "the noise must be drawn in float64, not float32"


def test_sample_follows_the_weights_and_the_stds() -> None:
    """20000 draws of ``0.25 N((-10, 0), 0.5^2) + 0.75 N((10, 0), 2^2)``: fractions, centres and spreads."""
    means = torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    mixture = demo.Mixture(means, torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.25, 0.75]).double())
    n = 20000
    x = mixture.sample(n, _generator(0)).numpy()
    left = x[:, 0] < 0
    assert abs(left.mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), left.mean()
    for side, mean, std in ((left, (-10.0, 0.0), 0.5), (~left, (10.0, 0.0), 2.0)):
        points = x[side]
        np.testing.assert_allclose(points.mean(0), mean, atol=5 * std / math.sqrt(len(points)))
        spread = points.std(0, ddof=1)  # per coordinate; relative standard error about 1 / sqrt(2 count)
        np.testing.assert_allclose(spread, [std, std], rtol=5 / math.sqrt(2 * len(points)))


# -- the reference solve -----------------------------------------------------------------------


@pytest.mark.parametrize(("sigma_start", "sigma_end"), [(2.0, 0.5), (0.5, 2.0)])
def test_reference_solve_follows_the_gaussian_flow_in_both_directions(sigma_start: float, sigma_end: float) -> None:
    """Data ``N(0, I)``: end point, every path entry at ``sigma = exp(u0 + k h)``, 48-point path."""
    x = _points(60, 2)
    steps = 50
    end, path = demo.reference_solve(_gaussian(1.0), x, sigma_start, sigma_end, steps)
    _assert_close(end, _gaussian_flow(x, 1.0, sigma_start, sigma_end), rtol=1e-9, atol=0)
    assert len(path) == steps + 1
    assert all(entry.shape == (48, 2) for entry in path)
    assert torch.equal(path[0], x[:48])
    assert torch.equal(path[-1], end[:48])
    u0, h = math.log(sigma_start), (math.log(sigma_end) - math.log(sigma_start)) / steps
    for k in (1, 17, 33, 49):
        want = _gaussian_flow(x[:48], 1.0, sigma_start, math.exp(u0 + k * h))
        _assert_close(path[k], want, rtol=1e-9, atol=0)


def test_reference_solve_is_fourth_order() -> None:
    """Over the demo's sigma range the error falls about 16x per doubling of the step count."""
    x = _points(5, 3)
    sigma_max, sigma_min = 25.0, 0.03
    exact = _gaussian_flow(x, 1.0, sigma_max, sigma_min)
    errors = []
    for steps in (32, 64, 128):
        end, _ = demo.reference_solve(_gaussian(1.0), x, sigma_max, sigma_min, steps)
        errors.append(float(((end - exact) / exact).abs().max()))
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert all(13 < r < 20 for r in ratios), (errors, ratios)


def test_reference_solve_matches_rk4_written_out() -> None:
    """A nonlinear denoiser (the mixture): end point equal to the RK4 steps written out here."""
    mixture = demo.Mixture.ring(components=4, std=0.3)
    x = _points(50, 4, scale=5.0)
    end, path = demo.reference_solve(mixture.denoise, x, 5.0, 0.05, 7)
    _assert_close(end, _rk4(mixture.denoise, x, 5.0, 0.05, 7), rtol=1e-12, atol=1e-13)
    sigma_3 = math.exp(math.log(5.0) + 3 * (math.log(0.05) - math.log(5.0)) / 7)  # after 3 of the 7 steps
    _assert_close(path[3], _rk4(mixture.denoise, x, 5.0, sigma_3, 3)[:48], rtol=1e-12, atol=1e-13)
    assert len(path) == 8


def test_reference_solve_default_steps() -> None:
    """The default is ``REFERENCE_STEPS`` = 400 (docs: "RK4 in float64 (400 steps in log sigma)")."""
    assert demo.REFERENCE_STEPS == 400
    assert inspect.signature(demo.reference_solve).parameters["steps"].default == demo.REFERENCE_STEPS


# -- the schedules -----------------------------------------------------------------------------


def test_training_sigma_range_is_the_default_linear_schedule() -> None:
    """``sqrt((1 - acp) / acp)`` at both ends, ``acp = cumprod(1 - linspace(0.00085, 0.012, 1000))`` in float32."""
    got = demo.training_sigma_range()
    assert got == pytest.approx(_training_range(), rel=1e-14)
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    acp = torch.cumprod(1 - betas, 0).double()
    sigmas = ((1 - acp) / acp).sqrt()
    assert got == pytest.approx((float(sigmas[0]), float(sigmas[-1])), rel=1e-12)
    assert got[0] == pytest.approx(0.0292, rel=2e-3)  # docs: "Karras sigmas from 25.15 to 0.0292"
    assert got[1] == pytest.approx(25.15, rel=2e-4)


@pytest.mark.parametrize("steps", [2, 3, 8])
def test_karras_sigmas_are_eq5_then_zero(steps: int) -> None:
    """Eq. (5), rho = 7, from sigma_max to sigma_min, then 0: ``steps + 1`` decreasing float64 values."""
    sigmas = demo.karras_sigmas(steps)
    assert sigmas.dtype == torch.float64
    np.testing.assert_allclose(sigmas.numpy(), _karras(steps), rtol=1e-13, atol=0)
    sigma_min, sigma_max = _training_range()
    assert len(sigmas) == steps + 1
    assert float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(sigma_max, rel=1e-13)
    assert float(sigmas[-2]) == pytest.approx(sigma_min, rel=1e-13)
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    spec = schedule.karras_sigmas(steps, sigma_min, sigma_max)
    np.testing.assert_allclose(sigmas[:-1].numpy(), spec, rtol=1e-13)


# -- the samplers ------------------------------------------------------------------------------


def _dpm2(denoise: demo.Denoiser, sigmas: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DPM-Solver-2 written out (midpoint at the geometric mean, Euler step to a final 0): final and states."""
    states = []
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        states.append(x)
        d = (x - denoise(x, s)) / s
        if s_next == 0:
            x = x + d * (s_next - s)
        else:
            mid = math.sqrt(s * s_next)
            x_mid = x + d * (mid - s)
            x = x + (x_mid - denoise(x_mid, mid)) / mid * (s_next - s)
    return x, states


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = FLOAT32_SIGMA_RTOL) -> None:
    _assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize("steps", [2, 3])
def test_kdpm2_sampler_is_dpm2_step_by_step(steps: int) -> None:
    """Final sample, the sample at sigma_min and every path entry (first 48 points) against DPM-2 written out."""
    mixture = demo.Mixture.ring()
    x = _points(60, 7, scale=_training_range()[1])
    final, before_last, path = demo.kdpm2_sampler(mixture.denoise, (3,))(steps, x)
    want_final, states = _dpm2(mixture.denoise, _karras(steps), x)
    _close(final, want_final)
    _close(before_last, states[-1])
    assert len(path) == steps + 1
    assert all(entry.shape == (48, 2) for entry in path)
    assert torch.equal(path[0], x[:48])
    for entry, state in zip(path[:-1], states, strict=True):
        _close(entry, state[:48])
    assert torch.equal(path[-1], final[:48])


def test_the_last_call_is_the_denoiser_at_sigma_min() -> None:
    """The final call is an Euler step to 0: ``final = D(before_last, sigma_min)`` (float32 sigma)."""
    mixture = demo.Mixture.ring()
    x = _points(30, 8, scale=_training_range()[1])
    final, before_last, _ = demo.kdpm2_sampler(mixture.denoise, (4,))(4, x)
    _close(final, mixture.denoise(before_last, _training_range()[0]))
    assert not torch.equal(final, before_last)


def test_k_diffusion_sampler_returns_the_state_at_sigma_min() -> None:
    """``k_diffusion_sampler``: DPM-2's final sample and its state at sigma_min (float64 sigmas), no path."""
    pytest.importorskip("k_diffusion.sampling")
    mixture = demo.Mixture.ring()
    x = _points(20, 9, scale=_training_range()[1])
    sample = demo.k_diffusion_sampler(mixture.denoise, (3,))
    for steps in (2, 3):
        final, before_last, path = sample(steps, x)
        want_final, states = _dpm2(mixture.denoise, _karras(steps), x)
        _close(final, want_final, rtol=1e-10)
        _close(before_last, states[-1], rtol=1e-10)
        assert path == []


def test_k_diffusion_sampler_with_one_point_and_no_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A single point works (the model reads sigma from a batch of one), and tqdm draws nothing, even on a terminal."""
    pytest.importorskip("k_diffusion.sampling")
    terminal = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    mixture = demo.Mixture.ring()
    x = _points(1, 13, scale=_training_range()[1])
    final, before_last, _ = demo.k_diffusion_sampler(mixture.denoise, (2,))(2, x)
    want_final, states = _dpm2(mixture.denoise, _karras(2), x)
    _close(final, want_final, rtol=1e-10)
    _close(before_last, states[-1], rtol=1e-10)
    assert terminal.events == []


def test_diffusers_sampler_is_dpm2_on_karras_sigmas() -> None:
    """diffusers' scheduler with Karras sigmas through the same loop: DPM-2's samples and path."""
    pytest.importorskip("diffusers")
    mixture = demo.Mixture.ring()
    x = _points(50, 10, scale=_training_range()[1])
    final, before_last, path = demo.diffusers_sampler(mixture.denoise, (3,))(3, x)
    want_final, states = _dpm2(mixture.denoise, _karras(3), x)
    _close(final, want_final)
    _close(before_last, states[-1])
    assert len(path) == 4
    for entry, state in zip(path[:-1], states, strict=True):
        _close(entry, state[:48])


def test_available_samplers_without_compare_is_ours_only() -> None:
    """``compare=False``: only "kdpm2", nothing missing; it samples like ``kdpm2_sampler``."""
    mixture = demo.Mixture.ring()
    samplers, missing = demo.available_samplers(mixture.denoise, (3,), compare=False)
    assert list(samplers) == ["kdpm2"]
    assert missing == []
    x = _points(10, 11, scale=10.0)
    assert torch.equal(samplers["kdpm2"](3, x)[0], demo.kdpm2_sampler(mixture.denoise, (3,))(3, x)[0])


def test_available_samplers_with_compare_lists_all_three() -> None:
    """``compare=True`` with both installed: kdpm2, k-diffusion, diffusers in that order, all DPM-2, no warning."""
    pytest.importorskip("k_diffusion.sampling")
    pytest.importorskip("diffusers")
    mixture = demo.Mixture.ring()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samplers, missing = demo.available_samplers(mixture.denoise, (3,), compare=True)
    assert list(samplers) == ["kdpm2", "k-diffusion", "diffusers"]
    assert missing == []
    assert caught == []
    x = _points(10, 12, scale=10.0)
    for steps in (2, 3):
        want_final, states = _dpm2(mixture.denoise, _karras(steps), x)
        for sample in samplers.values():
            final, before_last, _ = sample(steps, x)
            _close(final, want_final)
            _close(before_last, states[-1])


def test_available_samplers_hides_warnings_of_the_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning raised while a comparison sampler is made does not reach the caller."""

    def noisy(denoise: demo.Denoiser, step_counts: tuple[int, ...]) -> demo.Sampler:
        warnings.warn("pkg_resources-like noise", UserWarning, stacklevel=1)
        return demo.kdpm2_sampler(denoise, step_counts)

    monkeypatch.setattr(demo, "k_diffusion_sampler", noisy)
    monkeypatch.setattr(demo, "diffusers_sampler", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samplers, missing = demo.available_samplers(demo.Mixture.ring().denoise, (3,), compare=True)
    assert caught == []
    assert list(samplers) == ["kdpm2", "k-diffusion", "diffusers"]
    assert missing == []


def test_available_samplers_skips_what_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing imports leave those samplers out with "NAME is not installed: skipped", in the order tried."""
    monkeypatch.setitem(sys.modules, "k_diffusion", None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "k_diffusion.sampling", None)  # also once it has been imported
    monkeypatch.setitem(sys.modules, "diffusers", None)
    samplers, missing = demo.available_samplers(demo.Mixture.ring().denoise, (3,), compare=True)
    assert list(samplers) == ["kdpm2"]
    assert missing == ["k-diffusion is not installed: skipped", "diffusers is not installed: skipped"]


def test_available_samplers_reports_a_broken_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any other exception: "NAME could not be imported (TYPE: MESSAGE): skipped"; the other sampler stays."""

    def broken(denoise: demo.Denoiser, step_counts: tuple[int, ...]) -> demo.Sampler:
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "k_diffusion_sampler", demo.kdpm2_sampler)
    monkeypatch.setattr(demo, "diffusers_sampler", broken)
    samplers, missing = demo.available_samplers(demo.Mixture.ring().denoise, (3,), compare=True)
    assert list(samplers) == ["kdpm2", "k-diffusion"]
    assert missing == ["diffusers could not be imported (RuntimeError: boom): skipped"]


def test_available_samplers_import_error_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError subclass from a maker counts as not installed; a broken one as could not be imported."""

    def absent(denoise: demo.Denoiser, step_counts: tuple[int, ...]) -> demo.Sampler:
        raise ModuleNotFoundError("no module")

    def broken(denoise: demo.Denoiser, step_counts: tuple[int, ...]) -> demo.Sampler:
        raise OSError("bad library")

    monkeypatch.setattr(demo, "k_diffusion_sampler", broken)
    monkeypatch.setattr(demo, "diffusers_sampler", absent)
    samplers, missing = demo.available_samplers(demo.Mixture.ring().denoise, (3,), compare=True)
    assert list(samplers) == ["kdpm2"]
    assert missing == [
        "k-diffusion could not be imported (OSError: bad library): skipped",
        "diffusers is not installed: skipped",
    ]


# -- run -------------------------------------------------------------------------------------------

RUN_STEPS, RUN_POINTS, RUN_SEED = (4, 2, 3, 4), 60, 3
RUN_SORTED = (2, 3, 4)
OFFSETS = {"k-diffusion": 0.5, "diffusers": -1.5}  # the stand-ins' shifts of the state at sigma_min


@dataclass
class Ran:
    """A run's result, its wall time and the stand-ins' calls ``(steps, x)``."""

    result: demo.Result
    wall: float
    calls: dict[str, list[tuple[int, torch.Tensor]]]


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> Ran:
    """A small run with stand-ins for k-diffusion and diffusers (DPM-2 written out, shifted), recording calls.

    Per test, not per module: mutmut selects the tests that call a function, fixtures included.
    """
    calls: dict[str, list[tuple[int, torch.Tensor]]] = {name: [] for name in OFFSETS}

    def stand_in(name: str) -> Any:
        def make(denoise: demo.Denoiser, step_counts: tuple[int, ...]) -> demo.Sampler:
            def sample(steps: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
                calls[name].append((steps, x))
                final, states = _dpm2(denoise, _karras(steps), x)
                return final, states[-1] + OFFSETS[name], []

            return sample

        return make

    monkeypatch.setattr(demo, "k_diffusion_sampler", stand_in("k-diffusion"))
    monkeypatch.setattr(demo, "diffusers_sampler", stand_in("diffusers"))
    start = time.perf_counter()
    result = demo.run(RUN_STEPS, points=RUN_POINTS, seed=RUN_SEED, device="cpu", compare=True)
    wall = time.perf_counter() - start
    return Ran(result, wall, calls)


@pytest.fixture(scope="module")
def recomputed() -> dict[str, Any]:  # test-side only, so shared
    """The run's inputs from its seed, and the reference solutions by RK4 written out."""
    sigma_min, sigma_max = _training_range()
    generator = _generator(RUN_SEED)
    x_start = sigma_max * torch.randn(RUN_POINTS, 2, generator=generator, dtype=torch.float64)
    mixture = demo.Mixture.ring()
    data = mixture.sample(RUN_POINTS, generator)
    exact = _rk4(mixture.denoise, x_start, sigma_max, sigma_min, demo.REFERENCE_STEPS)
    coarse = _rk4(mixture.denoise, x_start, sigma_max, sigma_min, demo.REFERENCE_STEPS // 2)
    return {"x_start": x_start, "data": data, "exact": exact, "coarse": coarse, "mixture": mixture}


def test_run_sorts_warms_up_and_times_each_step_count(ran: Ran, recomputed: dict[str, Any]) -> None:
    """(4, 2, 3, 4) runs (2, 3, 4); each sampler warms up on 8 points, then one timed sampling per step count."""
    result = ran.result
    assert result.step_counts == RUN_SORTED
    assert result.device == "cpu"
    assert list(result.errors) == ["kdpm2", "k-diffusion", "diffusers"]
    assert list(result.seconds) == ["kdpm2", "k-diffusion", "diffusers"]
    assert result.missing == []
    for name in result.errors:
        assert len(result.errors[name]) == 3
        assert len(result.seconds[name]) == 3
    x_start = recomputed["x_start"]
    for name, calls in ran.calls.items():
        assert [steps for steps, _ in calls] == [2, *RUN_SORTED], name
        assert torch.equal(calls[0][1], x_start[:8])
        assert all(torch.equal(x, x_start) for _, x in calls[1:])
    times = [s for values in result.seconds.values() for s in values]
    assert all(s > 0 for s in times), times
    assert sum(times) < ran.wall


def test_run_errors_against_a_recomputation(ran: Ran, recomputed: dict[str, Any]) -> None:
    """Errors of every sampler, reference accuracy, data, samples and paths recomputed from the seed."""
    result = ran.result
    sigma_min, sigma_max = _training_range()
    assert (result.sigma_min, result.sigma_max) == pytest.approx((sigma_min, sigma_max), rel=1e-14)
    x_start, exact, mixture = recomputed["x_start"], recomputed["exact"], recomputed["mixture"]
    assert result.data is not None
    assert torch.equal(result.data, recomputed["data"])
    assert result.reference_accuracy == pytest.approx(_rms(recomputed["coarse"] - exact) / 15, rel=1e-4)
    assert 0 < result.reference_accuracy < 1e-3 * min(result.errors["kdpm2"])
    assert len(result.reference_path) == demo.REFERENCE_STEPS + 1
    assert torch.equal(result.reference_path[0], x_start[:48])
    _assert_close(result.reference_path[-1], exact[:48], rtol=1e-12, atol=1e-12)

    sample = demo.kdpm2_sampler(mixture.denoise, RUN_SORTED)
    for i, steps in enumerate(RUN_SORTED):
        final, before_last, path = sample(steps, x_start)
        assert result.errors["kdpm2"][i] == pytest.approx(_rms(before_last - exact), rel=1e-9)
        state = _dpm2(mixture.denoise, _karras(steps), x_start)[1][-1]
        for name, offset in OFFSETS.items():
            assert result.errors[name][i] == pytest.approx(_rms(state + offset - exact), rel=1e-9), name
            # the stand-ins shift the state by (offset, offset): sqrt(2) |offset| from kdpm2's, up to rounding
            assert result.from_kdpm2[name][i] == pytest.approx(abs(offset) * 2**0.5, rel=1e-6), name
        if steps == 2:  # the smallest step count: its path
            assert len(result.kdpm2_path) == 3
            for got, want in zip(result.kdpm2_path, path, strict=True):
                assert torch.equal(got, want)
        if steps == 4:  # the largest: its samples
            assert result.samples is not None
            assert result.samples.shape == (RUN_POINTS, 2)
            assert torch.equal(result.samples, final)


@pytest.mark.parametrize("step_counts", [(1, 3), (3, 0), (), (1,)])
def test_run_rejects_fewer_than_two_steps(step_counts: tuple[int, ...]) -> None:
    """Step counts below 2, or none: ValueError saying "at least 2"."""
    with pytest.raises(ValueError, match="at least 2"):
        demo.run(step_counts, points=4, compare=False)


def test_run_default_device_and_progress(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``device=None`` picks the CPU without CUDA; progress counts the solves and the jobs; times from the clock."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clock = iter(np.arange(0.0, 1e6, 0.75))
    monkeypatch.setattr(demo.time, "perf_counter", lambda: float(next(clock)))
    result = demo.run((3, 2, 3), points=16, seed=1, compare=False)
    assert result.device == "cpu"
    assert result.step_counts == (2, 3)
    err = capsys.readouterr().err
    steps, half = demo.REFERENCE_STEPS, demo.REFERENCE_STEPS // 2
    assert f"\rreference ODE solve (RK4): {steps}/{steps} (" in err
    assert f"\rreference ODE solve (RK4): {half}/{half} (" in err
    assert re.findall(r"\r([^\r]*): (\d+)/(\d+) \(", err)[-1] == ("sampling", "2", "2"), "two sampling jobs"
    assert result.seconds["kdpm2"] == [0.75, 0.75], "the time between the clock readings around each sampling"


def test_run_defaults_with_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run()``: 2000 points from seed 0, steps 8 .. 128, comparison asked for, CUDA or else the CPU."""
    seen: dict[str, Any] = {"steps": []}

    def solve(denoise: demo.Denoiser, x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen["x_start"] = x
        return x, [x[:48]]

    def samplers(denoise: demo.Denoiser, step_counts: tuple[int, ...], compare: bool) -> Any:
        seen["compare"], seen["step_counts"] = compare, step_counts
        return {"kdpm2": lambda steps, x: (seen["steps"].append(steps), x, x, [x[:48]])[1:]}, []

    monkeypatch.setattr(demo, "reference_solve", solve)
    monkeypatch.setattr(demo, "available_samplers", samplers)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = demo.run()
    sigma_max = _training_range()[1]
    assert torch.equal(seen["x_start"], sigma_max * torch.randn(2000, 2, generator=_generator(0), dtype=torch.float64))
    assert seen["compare"] is True
    assert seen["step_counts"] == result.step_counts == (8, 16, 32, 64, 128)
    assert seen["steps"] == [2, 8, 16, 32, 64, 128]
    assert result.device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.run((2,), points=3, device="cpu").device == "cpu", "an explicit device wins over CUDA"


def test_run_defaults_are_documented() -> None:
    """Defaults of ``run`` and ``main``: steps 8 .. 128, 2000 points, seed 0, auto device, compare, out "."."""
    assert demo.STEP_COUNTS == (8, 16, 32, 64, 128)
    for function in (demo.run, demo.main):
        parameters = inspect.signature(function).parameters
        assert parameters["step_counts"].default == demo.STEP_COUNTS
        assert parameters["points"].default == 2000
        assert parameters["seed"].default == 0
        assert parameters["device"].default is None
        assert parameters["compare"].default is True
    assert inspect.signature(demo.main).parameters["out"].default == "."


# -- choose_device -----------------------------------------------------------------------------


@pytest.mark.parametrize(("available", "want"), [(False, "cpu"), (True, "cuda")])
def test_choose_device_default(monkeypatch: pytest.MonkeyPatch, available: bool, want: str) -> None:
    """``None``: CUDA when available, else the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert demo.choose_device(None) == want


@pytest.mark.parametrize("available", [False, True])
def test_choose_device_passes_valid_devices_through(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    """ "cpu" always, "cuda:0" when CUDA is available: returned as given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert demo.choose_device("cpu") == "cpu"
    if available:
        assert demo.choose_device("cuda:0") == "cuda:0"


def test_choose_device_rejects_unknown_and_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name torch does not know, or CUDA without CUDA: ValueError naming the device."""
    with pytest.raises(ValueError, match="unknown device 'nonsense'"):
        demo.choose_device("nonsense")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda:1': CUDA is not available"):
        demo.choose_device("cuda:1")
    with pytest.raises(ValueError, match="CUDA is not available"):
        demo.choose_device("cuda")


# -- the result, the table and the report ------------------------------------------------------


def test_result_calls_and_order() -> None:
    """``2n - 1`` calls; order = minus the least-squares slope of log error against log steps."""
    result = demo.Result((4, 8, 16, 32), "cpu")
    assert [result.calls(n) for n in (2, 3, 64)] == [3, 5, 127]
    result.errors["kdpm2"] = [7.0 * n**-2.0 for n in result.step_counts]
    result.errors["other"] = [0.3 * n**-1.5 for n in result.step_counts]
    result.errors["noisy"] = [1.0 * 4**-1, 1.3 * 8**-1, 0.8 * 16**-1, 1.1 * 32**-1]
    assert result.order() == pytest.approx(2.0, abs=1e-12)
    assert result.order("other") == pytest.approx(1.5, abs=1e-12)
    x, y = np.log([4, 8, 16, 32]), np.log(result.errors["noisy"])
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert result.order("noisy") == pytest.approx(-slope, abs=1e-12)


def test_format_table_columns_and_rows() -> None:
    """A header naming each sampler's error and seconds; one aligned row per step count with its values."""
    result = _result((3, 6, 12))
    names = list(result.errors)
    lines = demo.format_table(result).split("\n")
    assert len(lines) == 1 + 3
    assert lines[0].split() == ["steps", "calls", *[w for name in names for w in (name, "error", "seconds")]]
    ends = {m.end() for m in re.finditer(r"\S+", lines[0])}
    for row, steps, i in zip(lines[1:], (3, 6, 12), range(3), strict=True):
        fields = row.split()
        assert int(fields[0]) == steps
        assert int(fields[1]) == 2 * steps - 1
        for j, name in enumerate(names):
            error, seconds = fields[2 + 2 * j], fields[3 + 2 * j]
            assert re.fullmatch(r"\d\.\d{3}e[+-]\d\d", error), error
            assert float(error) == pytest.approx(result.errors[name][i], rel=5e-4)
            assert re.fullmatch(r"\d+\.\d{4}", seconds), seconds
            assert float(seconds) == pytest.approx(result.seconds[name][i], abs=5e-5)
        assert len(row) == len(lines[0])
        assert {m.end() for m in re.finditer(r"\S+", row)} <= ends, "columns must line up under the header"


def test_report_states_the_setting_the_table_and_the_order() -> None:
    """Device, sigma bounds (4 digits), reference steps and accuracy, the table, the order (2 decimals), what is missing."""
    result = _result((4, 8, 16))
    result.errors["kdpm2"] = [0.5 * n**-1.873 for n in (4, 8, 16)]
    text = demo.report(result)
    lines = text.split("\n")
    assert "float64 on cpu:test;" in lines[0]
    bounds = re.search(r"Karras sigmas (\S+) \.\. (\S+), then 0\.", lines[0])
    assert bounds is not None, lines[0]
    assert float(bounds[1]) == pytest.approx(result.sigma_max, rel=5e-4)
    assert float(bounds[2]) == pytest.approx(result.sigma_min, rel=5e-4)
    assert re.search(r"mixture of 8 Gaussians", lines[0])
    steps = re.search(r"\((\d+) steps, accurate to about (\S+)\)", lines[1])
    assert steps is not None, lines[1]
    assert int(steps[1]) == demo.REFERENCE_STEPS
    assert float(steps[2]) == pytest.approx(3e-9, rel=1e-12)
    assert lines[1].startswith("error: ")
    assert lines[2].startswith("seconds: ")
    assert "\n\n" + demo.format_table(result) + "\n\n" in text
    order = re.findall(r"order fitted from the kdpm2 errors: (\S+) ", text)
    assert order == ["1.87"]
    assert lines[-2:] == result.missing


def test_report_fits_an_order_from_two_step_counts() -> None:
    """Two step counts are enough for the fitted order: the slope between them."""
    result = _result((4, 8))
    result.errors["kdpm2"] = [0.5 * 4**-2.5, 0.5 * 8**-2.5]
    assert "order fitted from the kdpm2 errors: 2.50 " in demo.report(result)


def test_report_without_an_order_for_one_step_count() -> None:
    """One step count: no fitted order; the missing lines still close the report."""
    result = _result((5,))
    text = demo.report(result)
    assert "order" not in text
    assert text.split("\n")[-2:] == result.missing
    assert demo.format_table(result) in text


# -- the figure --------------------------------------------------------------------------------


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """``Figure.savefig`` recording its figure and arguments instead of writing."""
    figure_module = pytest.importorskip("matplotlib.figure")
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(figure_module.Figure, "savefig", lambda self, *a, **k: calls.append((self, a, k)))
    return calls


def _plotted_result() -> demo.Result:
    result = _result((3, 5, 9))
    result.sigma_max, result.sigma_min = 10.0, 0.1  # not the Karras range: the two paths scale differently
    result.data = _points(50, 20)
    result.samples = _points(50, 21)
    result.reference_path = [_points(30, 30 + k) for k in range(7)]
    result.kdpm2_path = [_points(30, 40 + k) for k in range(4)]
    result.from_kdpm2 = {"k-diffusion": [1e-16, 0.0, 3e-16], "diffusers": [2e-9, 4e-9, 0.0]}
    return result


def test_plot_draws_samples_paths_and_errors(saved: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]) -> None:
    """Three panels: scatter of data and samples, scaled paths, log-log errors with a slope -2 line."""
    from matplotlib.colors import to_hex

    result = _plotted_result()
    demo.plot(result, "somewhere/figure.png")
    assert len(saved) == 1
    figure, args, _ = saved[0]
    assert args == ("somewhere/figure.png",)
    samples, paths, errors = figure.axes
    assert len(figure.axes) == 3
    geometry = [axes.get_subplotspec().get_geometry() for axes in figure.axes]
    assert geometry == [(1, 3, 0, 0), (1, 3, 1, 1), (1, 3, 2, 2)], "three panels side by side"

    assert result.data is not None and result.samples is not None
    data_dots, sample_dots = samples.collections
    np.testing.assert_array_equal(data_dots.get_offsets(), result.data.numpy())
    np.testing.assert_array_equal(sample_dots.get_offsets(), result.samples.numpy())
    labels = [t.get_text() for t in samples.get_legend().get_texts()]
    assert labels[0] == "data"
    assert "kdpm2" in labels[1] and "9 steps" in labels[1]
    assert samples.get_aspect() == 1.0
    assert samples.get_title() == "samples"

    fine = np.geomspace(10.0, 0.1, 7)
    exact = np.stack([p.numpy() for p in result.reference_path])[:, :24] / np.sqrt(1 + fine**2)[:, None, None]
    coarse_sigmas = _karras(3)
    coarse = np.stack([p.numpy() for p in result.kdpm2_path])[:, :24] / np.sqrt(1 + coarse_sigmas**2)[:, None, None]
    lines = paths.get_lines()
    assert len(lines) == 48
    for j in range(24):
        np.testing.assert_allclose(lines[j].get_xdata(), exact[:, j, 0], rtol=1e-12)
        np.testing.assert_allclose(lines[j].get_ydata(), exact[:, j, 1], rtol=1e-12)
        np.testing.assert_allclose(lines[24 + j].get_xdata(), coarse[:, j, 0], rtol=1e-12)
        np.testing.assert_allclose(lines[24 + j].get_ydata(), coarse[:, j, 1], rtol=1e-12)
        assert to_hex(lines[j].get_color()) == to_hex("gray")
        assert to_hex(lines[24 + j].get_color()) != to_hex("gray")
    assert "exact (gray)" in paths.get_title()
    assert "kdpm2 3 steps" in paths.get_title()
    assert paths.get_aspect() == 1.0

    assert errors.get_xscale() == "log"
    assert errors.get_yscale() == "log"
    assert errors.get_xlabel() == "steps"
    assert errors.get_ylabel() == "RMS distance"
    steps = np.array([3.0, 5.0, 9.0])
    np.testing.assert_array_equal(errors.get_xticks(), steps)
    curves = errors.get_lines()
    labels = ["kdpm2: error vs exact", "slope -2", "k-diffusion - kdpm2", "diffusers - kdpm2"]
    assert [c.get_label() for c in curves] == labels
    np.testing.assert_array_equal(curves[0].get_ydata(), result.errors["kdpm2"])
    anchor = result.errors["kdpm2"][-1] / 2
    np.testing.assert_allclose(curves[1].get_ydata(), anchor * (steps / 9) ** -2.0, rtol=1e-13)
    for curve, values in zip(curves[2:], result.from_kdpm2.values(), strict=True):
        np.testing.assert_array_equal(curve.get_xdata(), steps)
        np.testing.assert_array_equal(curve.get_ydata(), np.maximum(values, 1e-17))  # 0 at the axis' floor
    assert len({(c.get_marker(), c.get_linestyle()) for c in curves}) == 4, "each curve its own style"
    assert [t.get_text() for t in errors.get_legend().get_texts()] == labels
    assert "RMS at" in errors.get_title()


@pytest.mark.parametrize("missing", ["samples", "data"])
def test_plot_needs_samples_and_data(saved: list[tuple[Any, tuple[Any, ...], dict[str, Any]]], missing: str) -> None:
    """A result without samples or without data is refused (AssertionError), nothing saved."""
    result = _plotted_result()
    setattr(result, missing, None)
    with pytest.raises(AssertionError):
        demo.plot(result, "x.png")
    assert saved == []


def test_plot_labels_the_step_axis_plainly(saved: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]) -> None:
    """The step axis of the log-log panel has plain numbers and no minor labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    demo.plot(_plotted_result(), "x.png")
    errors = saved[0][0].axes[2]
    assert isinstance(errors.xaxis.get_major_formatter(), ScalarFormatter)
    assert isinstance(errors.xaxis.get_minor_formatter(), NullFormatter)


# -- progress ----------------------------------------------------------------------------------


def _clock(monkeypatch: pytest.MonkeyPatch, times: list[float]) -> None:
    """Make ``time.perf_counter`` return ``times`` in turn."""
    values = iter(times)
    monkeypatch.setattr(demo.time, "perf_counter", lambda: next(values))


def test_progress_is_silent_when_fast(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A clock that never advances: every item in order, nothing on stderr."""
    monkeypatch.setattr(demo.time, "perf_counter", lambda: 5.0)
    assert list(demo.progress(iter("abcdef"), "label", 6)) == list("abcdef")
    assert capsys.readouterr() == ("", "")


def test_progress_draws_after_a_second(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """0.25 s per item: lines "\\rLABEL: i/total (t s)" once more than 1 s has passed, then a newline."""
    _clock(monkeypatch, [0.25 * k for k in range(8)])
    assert list(demo.progress(range(7), "solve", 7)) == list(range(7))
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "".join(f"\rsolve: {i}/7 ({0.25 * i:.1f} s)" for i in (5, 6, 7)) + "\n"


def test_progress_redraws_at_most_every_tenth_of_a_second(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No redraw within 0.1 s of the last (exactly 0.1 included), except for the last item."""
    start = -1.0
    times = [0.125, 0.225, 0.2375, 0.24, 0.245]  # 0.225 - 0.125 == 0.1 exactly; 0.1125 later; 0.0025 later; last
    assert times[1] - times[0] == 0.1
    _clock(monkeypatch, [start, *times])
    assert list(demo.progress(["a", "b", "c", "d", "e"], "L", 5)) == ["a", "b", "c", "d", "e"]
    drawn = [(1, times[0]), (3, times[2]), (5, times[4])]
    assert capsys.readouterr().err == "".join(f"\rL: {i}/5 ({t - start:.1f} s)" for i, t in drawn) + "\n"


def test_progress_flushes_each_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each drawn line and the final newline reach the terminal at once (flushed), on stderr."""
    stream = _Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    _clock(monkeypatch, [0.0, 2.0, 3.0])
    assert list(demo.progress("ab", "L", 2)) == ["a", "b"]
    events = [e for e in stream.events if e]  # print may also write an empty end
    assert events == ["\rL: 1/2 (2.0 s)", "<flush>", "\rL: 2/2 (3.0 s)", "<flush>", "\n", "<flush>"]


def test_progress_throttles_a_fast_clock(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """0.0625 s per item: from 1 s on, every second item is drawn, and the last one always."""
    _clock(monkeypatch, [0.0625 * k for k in range(25)])
    list(demo.progress(range(24), "fast", 24))
    err = capsys.readouterr().err
    assert re.findall(r"\rfast: (\d+)/24 ", err) == ["17", "19", "21", "23", "24"]
    assert err.endswith("(1.5 s)\n")


# -- main --------------------------------------------------------------------------------------


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's thread count as a plain number starting at 2, read and set through torch's functions.

    The real pool is left alone: resizing it in a process that is later forked (as the mutation
    runner forks per mutant) can deadlock the child's next parallel torch op.
    """
    count = [2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: count[0])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: count.__setitem__(0, n))


def _fake_run(monkeypatch: pytest.MonkeyPatch, result: demo.Result) -> list[dict[str, Any]]:
    """Replace ``demo.run`` by a recorder of its arguments and of torch's thread count."""
    calls: list[dict[str, Any]] = []

    def fake(step_counts: Any, **kwargs: Any) -> demo.Result:
        calls.append({"step_counts": step_counts, **kwargs, "threads": torch.get_num_threads()})
        return result

    monkeypatch.setattr(demo, "run", fake)
    return calls


@pytest.mark.usefixtures("threads")
def test_main_forwards_its_arguments_on_one_thread(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the CPU, run sees one thread and the arguments; main prints the report, restores threads, returns."""
    result = _result((2, 5))
    calls = _fake_run(monkeypatch, result)
    got = demo.main(step_counts=(2, 5), out=None, points=7, seed=5, device="cpu", compare=False)
    assert got is result
    assert calls == [{"step_counts": (2, 5), "points": 7, "seed": 5, "device": "cpu", "compare": False, "threads": 1}]
    assert torch.get_num_threads() == 2
    out = capsys.readouterr().out
    assert out == demo.report(result) + "\n"
    assert "wrote" not in out


@pytest.mark.usefixtures("threads")
def test_main_defaults(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """No arguments: run with its documented defaults, and the figure in the current directory."""
    calls = _fake_run(monkeypatch, _result((2, 5)))
    plotted: list[str] = []
    monkeypatch.setattr(demo, "plot", lambda result, path: plotted.append(path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    demo.main()
    assert calls == [
        {"step_counts": demo.STEP_COUNTS, "points": 2000, "seed": 0, "device": None, "compare": True, "threads": 1}
    ]
    assert plotted == [os.path.join(".", "kdpm2-demo.png")]
    assert capsys.readouterr().out.endswith(f"wrote {plotted[0]}\n")


def test_main_without_matplotlib_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No matplotlib: one line telling how to install it after the report, no figure and no directory."""
    result = _result((2, 5))
    _fake_run(monkeypatch, result)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    demo.main((2, 5), out=str(tmp_path / "figure"), device="cpu")
    out = capsys.readouterr().out
    assert out.startswith(demo.report(result) + "\n")
    last = out[len(demo.report(result)) + 1 :]
    assert last.startswith("matplotlib is not installed")
    assert "pip install matplotlib" in last
    assert last.count("\n") == 1
    assert not (tmp_path / "figure").exists()


@pytest.mark.usefixtures("threads")
def test_main_keeps_the_threads_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA chosen, torch's thread count is left alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = _fake_run(monkeypatch, _result((2, 5)))
    demo.main((2, 5), out=None)
    assert calls[0]["threads"] == 2
    assert calls[0]["device"] is None


@pytest.mark.usefixtures("threads")
def test_main_uses_one_thread_on_the_cpu_even_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cpu"`` chosen with CUDA present: one thread (the device asked for decides, not the default)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = _fake_run(monkeypatch, _result((2, 5)))
    demo.main((2, 5), out=None, device="cpu")
    assert calls[0]["threads"] == 1
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("threads")
def test_main_restores_the_threads_when_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in run still gives torch its thread count back."""

    def failing(*args: Any, **kwargs: Any) -> demo.Result:
        raise RuntimeError("failed")

    monkeypatch.setattr(demo, "run", failing)
    with pytest.raises(RuntimeError, match="failed"):
        demo.main((2, 3), out=None, device="cpu")
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("threads")
def test_main_writes_the_png_into_a_new_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A small real run: the report, then "wrote DIR/kdpm2-demo.png" (a PNG) in a directory it creates."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "dir"
    result = demo.main((2, 3), out=str(out), points=16, device="cpu", compare=False)
    assert isinstance(result, demo.Result)
    assert result.step_counts == (2, 3)
    path = out / "kdpm2-demo.png"
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    documented = Path(__file__).parents[1] / "docs" / "images" / "demo.png"  # the figure on the home page
    if documented.exists():
        assert png[16:24] == documented.read_bytes()[16:24], "width and height as in the documented figure"
    assert capsys.readouterr().out == demo.report(result) + f"\nwrote {path}\n"
    assert torch.get_num_threads() == 2


def test_k_diffusion_sampler_prints_no_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """k-diffusion's own progress bar is disabled: the demo draws a single progress line of its own."""
    pytest.importorskip("k_diffusion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = demo.k_diffusion_sampler(demo.Mixture.ring().denoise, (2,))
    capsys.readouterr()
    sample(2, _points(4, 0, 10.0))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_record_holds_the_numbers_of_the_run() -> None:
    """``record`` is JSON-ready and holds the result's errors, times, distances and fitted order."""
    import json

    result = _plotted_result()
    result.seconds = {name: [0.5, 1.0, 2.0] for name in result.errors}
    data = json.loads(json.dumps(demo.record(result)))  # JSON round trip: plain types only
    assert data["step_counts"] == [3, 5, 9] and data["calls"] == [5, 9, 17]
    assert data["errors"] == result.errors and data["seconds"] == result.seconds
    assert data["from_kdpm2"] == result.from_kdpm2
    slope = np.polyfit(np.log([3, 5, 9]), np.log(result.errors["kdpm2"]), 1)[0]
    assert data["order"] == pytest.approx(-slope, rel=1e-12)
    assert (data["sigma_max"], data["sigma_min"], data["device"]) == (10.0, 0.1, "cpu:test")

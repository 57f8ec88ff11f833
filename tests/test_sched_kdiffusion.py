"""Equality with k-diffusion's ``sample_dpm_2`` (float64, relative 1e-6) with a real random UNet.

Both sides evaluate the same diffusers ``UNet2DModel`` (tiny, random, float64) as an epsilon
model. k-diffusion wraps it in ``CompVisDenoiser`` built on our ``alphas_cumprod``, so its
``sigma_to_t`` gives the model the timestep our scheduler gives (log-sigma interpolation, or the
nearest training timestep with ``quantize``). The UNet embeds timesteps in float32 on both sides.
"""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import UNet2DModel
from k_diffusion import external, sampling

from helpers_sched import assert_rel_close, one_thread
from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import Reference

RTOL = 1e-6
SHAPE = (1, 3, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@functools.lru_cache(maxsize=1)
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    )
    return model.double().eval()


class CompVisLike(torch.nn.Module):
    """What ``CompVisDenoiser`` expects: ``alphas_cumprod`` and ``apply_model(x, t)``."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod.double()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet()(x, t).sample


def denoiser(scheduler: KDPM2DiscreteScheduler, quantize: bool = False) -> external.CompVisDenoiser:
    return external.CompVisDenoiser(CompVisLike(scheduler.alphas_cumprod), quantize=quantize)


def noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@torch.no_grad()
def k_diffusion_loop(model, sigmas: torch.Tensor, seed: int | None = None, **churn) -> torch.Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    return sampling.sample_dpm_2(model, noise() * sigmas[0], sigmas, disable=True, **churn)


@torch.no_grad()
def our_loop(scheduler: KDPM2DiscreteScheduler, seed: int | None = None, unchurned_first: float | None = None, **kw):
    """The pipeline loop; with churn, the caller lifts the first sample as k-diffusion's step 0 does."""
    scheduler.set_timesteps(**kw)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    if unchurned_first is None:
        sample = noise() * scheduler.init_noise_sigma.double()
    else:
        s0, sh0 = unchurned_first, float(scheduler.sigmas[0])
        eps0 = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        sample = noise() * s0 + scheduler.config.s_noise * eps0 * (sh0**2 - s0**2) ** 0.5
    for t in scheduler.timesteps:
        model_output = unet()(scheduler.scale_model_input(sample, t), t).sample
        sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
    return sample


def sigma_arrays(scheduler: KDPM2DiscreteScheduler, n: int) -> dict[str, torch.Tensor]:
    model = denoiser(scheduler)
    lo, hi = float(model.sigma_min), float(model.sigma_max)
    return {
        "karras": sampling.get_sigmas_karras(n, lo, hi).double(),
        "exponential": sampling.get_sigmas_exponential(n, lo, hi).double(),
        "model": model.get_sigmas(n).double(),
    }


@pytest.mark.parametrize("kind", ["karras", "exponential", "model"])
@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_custom_sigmas_equal_sample_dpm_2(kind, beta_schedule):
    ours = KDPM2DiscreteScheduler(beta_schedule=beta_schedule)
    sigmas = sigma_arrays(ours, 5)[kind]
    expected = k_diffusion_loop(denoiser(ours), sigmas)
    actual = our_loop(ours, sigmas=sigmas)
    assert len(ours.timesteps) == 2 * 5 - 1
    assert_rel_close(actual, expected, RTOL, f"sample_dpm_2 with {kind} sigmas")


def test_custom_sigmas_not_ending_in_zero():
    """A schedule that stops at a positive sigma: every step is a full DPM-2 step (2n calls)."""
    ours = KDPM2DiscreteScheduler(beta_schedule="scaled_linear")
    sigmas = sampling.get_sigmas_karras(4, 0.5, 14.6).double()[:-1]
    expected = k_diffusion_loop(denoiser(ours), sigmas)
    actual = our_loop(ours, sigmas=sigmas)
    assert len(ours.timesteps) == 2 * 3
    assert_rel_close(actual, expected, RTOL, "sample_dpm_2 to sigma 0.5")


@pytest.mark.parametrize(
    ("s_churn", "extra"),
    [(1.0, {}), (3.0, {"s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003}), (80.0, {})],
)
def test_churn_equals_sample_dpm_2(s_churn, extra):
    """Same seed on both sides: k-diffusion draws ``randn_like(x)`` from the global RNG at each step;
    ours draws from ``generator`` after each full step, after the caller's draw for step 0."""
    ours = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", s_churn=s_churn, **extra)
    sigmas = sigma_arrays(ours, 5)["karras"]
    expected = k_diffusion_loop(denoiser(ours), sigmas, seed=7, s_churn=s_churn, **extra)
    actual = our_loop(ours, seed=7, unchurned_first=float(sigmas[0]), sigmas=sigmas)
    assert_rel_close(actual, expected, RTOL, f"sample_dpm_2(s_churn={s_churn}, {extra})")
    assert torch.isfinite(ours.sigmas).all() and torch.isfinite(ours.sigmas_interpol).all()


# -- front ends built on k-diffusion: which options reproduce them (docs/parity.md) -------------


def a1111_discard(sigmas: torch.Tensor) -> torch.Tensor:
    """A1111's ``discard_next_to_last_sigma``: drop the last nonzero sigma."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


@pytest.mark.parametrize("n", [3, 6])
def test_a1111_dpm2(n):
    """A1111 "DPM2": ``get_sigmas(n + 1)`` without its last nonzero sigma, continuous timesteps."""
    ours = KDPM2DiscreteScheduler(
        beta_schedule="scaled_linear", sigma_interpolation="log", discard_penultimate_sigma=True
    )
    model = denoiser(ours)
    sigmas = a1111_discard(model.get_sigmas(n + 1).double())
    ours.set_timesteps(n)
    assert_rel_close(ours.sigmas[0::2][:n].double(), sigmas[:n], RTOL, "A1111 DPM2 sigmas")
    expected = k_diffusion_loop(model, sigmas)
    actual = our_loop(ours, num_inference_steps=n)
    assert_rel_close(actual, expected, RTOL, f"A1111 DPM2, {n} steps")


@pytest.mark.parametrize("n", [3, 6])
def test_a1111_dpm2_karras(n):
    """A1111 "DPM2 Karras": ``get_sigmas_karras(n + 1, model min, model max)`` with the discard."""
    probe = KDPM2DiscreteScheduler(beta_schedule="scaled_linear")
    model = denoiser(probe)
    lo, hi = float(model.sigma_min), float(model.sigma_max)
    ours = KDPM2DiscreteScheduler(
        beta_schedule="scaled_linear",
        use_karras_sigmas=True,
        sigma_min=lo,
        sigma_max=hi,
        discard_penultimate_sigma=True,
    )
    # k-diffusion builds Karras sigmas in float32; the same formula in float64 is the exact schedule
    sigmas32 = a1111_discard(sampling.get_sigmas_karras(n + 1, lo, hi))
    ours.set_timesteps(n)
    assert_rel_close(ours.sigmas[0::2][:n].double(), sigmas32[:n].double(), 1e-6, "A1111 DPM2 Karras sigmas")
    with torch.device("cpu"):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            sigmas = a1111_discard(sampling.get_sigmas_karras(n + 1, lo, hi))
        finally:
            torch.set_default_dtype(default)
    expected = k_diffusion_loop(model, sigmas)
    actual = our_loop(ours, num_inference_steps=n)
    assert_rel_close(actual, expected, RTOL, f"A1111 DPM2 Karras, {n} steps")


@pytest.mark.parametrize("n", [4, 7])
def test_comfyui_dpm_2_quantized(n):
    """ComfyUI "dpm_2" (normal): n + 1 log-interpolated sigmas, discard, nearest-training timesteps."""
    ours = KDPM2DiscreteScheduler(
        beta_schedule="scaled_linear",
        sigma_interpolation="log",
        discard_penultimate_sigma=True,
        quantize_timesteps=True,
    )
    model = denoiser(ours, quantize=True)
    sigmas = a1111_discard(model.get_sigmas(n + 1).double())
    ours.set_timesteps(n)
    mids = (sigmas[:-2] * sigmas[1:-1]).sqrt()
    expected_t = torch.stack([model.sigma_to_t(sigmas[:-2]), model.sigma_to_t(mids)], 1).reshape(-1)
    expected_t = torch.cat([expected_t, model.sigma_to_t(sigmas[-2:-1])])
    assert torch.equal(ours.timesteps.double(), expected_t.double()), "quantized timesteps"
    assert torch.equal(ours.timesteps, ours.timesteps.round())
    expected = k_diffusion_loop(model, sigmas)
    actual = our_loop(ours, num_inference_steps=n)
    assert_rel_close(actual, expected, RTOL, f"ComfyUI dpm_2, {n} steps")


def test_quantized_karras_timesteps():
    """``quantize_timesteps`` with a Karras schedule: every timestep is CompVisDenoiser(quantize=True)'s."""
    ours = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True, quantize_timesteps=True)
    model = denoiser(ours, quantize=True)
    ours.set_timesteps(8)
    ref = Reference(beta_schedule="scaled_linear", use_karras_sigmas=True, quantize_timesteps=True)
    ref.set_timesteps(8)
    sigmas, interpol = torch.from_numpy(ref.sigmas), torch.from_numpy(ref.sigmas_interpol)
    calls = [sigmas[k] if k % 2 == 0 else interpol[k] for k in range(len(ours.timesteps))]
    expected = model.sigma_to_t(torch.stack(calls))
    assert torch.equal(ours.timesteps.double(), expected.double())

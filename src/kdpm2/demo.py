"""The demo: sample a Gaussian data set whose exact ODE solution is known, and print the error."""

from __future__ import annotations

import math
import time

import torch

from kdpm2.scheduler import KDPM2DiscreteScheduler

MEAN, STD = 0.5, 0.5
"""The data distribution N(MEAN, STD^2) per coordinate."""


def exact_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x] for Gaussian data: ``(STD^2 x + sigma^2 MEAN) / (STD^2 + sigma^2)``."""
    return (STD**2 * x + sigma**2 * MEAN) / (STD**2 + sigma**2)


def sample_error(steps: int, points: int = 4096, device: str = "cpu") -> tuple[int, float, float]:
    """Model calls, max distance to the exact ODE solution and seconds for one sampling loop."""
    scheduler = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(steps, device=device)
    sigma_max = float(scheduler.init_noise_sigma)
    x_start = torch.randn(points, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    x_start = x_start * sigma_max
    x, calls, start = x_start, 0, time.perf_counter()
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)  # the exact denoiser needs no scaled input; this sets step_index
        table = scheduler.sigmas if scheduler.state_in_first_order else scheduler.sigmas_interpol
        sigma = float(table[scheduler.step_index])
        eps = (x - exact_denoiser(x, sigma)) / sigma
        x = scheduler.step(eps, t, x).prev_sample
        calls += 1
    seconds = time.perf_counter() - start
    exact = MEAN + (x_start - MEAN) * STD / math.sqrt(STD**2 + sigma_max**2)
    return calls, float((x - exact).abs().max()), seconds


def main(step_counts: tuple[int, ...] = (5, 10, 20, 40)) -> None:
    """Print step count, model calls, error against the exact solution and time per loop."""
    print(f"{'steps':>5} {'calls':>5} {'max error':>10} {'seconds':>8}")
    for steps in step_counts:
        calls, error, seconds = sample_error(steps)
        print(f"{steps:>5} {calls:>5} {error:>10.2e} {seconds:>8.4f}")

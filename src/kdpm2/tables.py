"""Schedule tables as pure torch float64 functions, computed once per ``set_timesteps``.

The training schedule is float32 exactly as diffusers builds it (same torch calls); everything
derived from it is float64 on the CPU, vectorised, so ``set_timesteps(1000)`` costs well under a
millisecond. ``kdpm2_spec.schedule`` is the readable NumPy model these functions are tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

F64 = torch.float64


def train_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, trained_betas: object = None
) -> torch.Tensor:
    """float32 betas of the training schedule, as diffusers computes them."""
    if trained_betas is not None:
        return torch.as_tensor(trained_betas, dtype=F64).to(torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    # squaredcos_cap_v2: betas of the GLIDE cosine alpha_bar, capped at 0.999
    t = torch.arange(num_train_timesteps + 1, dtype=F64) / num_train_timesteps
    alpha_bar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999).to(torch.float32)


def ldm_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """float64 betas of LDM's "linear" schedule (diffusers' ``scaled_linear``), as LDM builds them.

    LDM, ComfyUI and AUTOMATIC1111 square a float64 ``linspace`` of the square roots and take the
    cumulative product in float64 (``ldm_alphas_cumprod``); diffusers does the same arithmetic
    in float32, which moves the training sigmas by up to 1.3e-5 (relative, at t=0). The front-ends
    round the table differently afterwards (``kdpm2.frontends``).
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=F64) ** 2


def ldm_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """float64 ``alphas_cumprod`` of LDM's "linear" betas: the cumulative product in float64."""
    return torch.cumprod(1 - ldm_betas(num_train_timesteps, beta_start, beta_end), dim=0)


def spaced_timesteps(n: int, num_train_timesteps: int, spacing: str, steps_offset: int) -> torch.Tensor:
    """``n`` descending timesteps of a spacing rule (always exactly ``n``, unlike diffusers' trailing)."""
    if spacing == "linspace":
        return torch.linspace(0, num_train_timesteps - 1, n, dtype=F64).to(torch.float32).to(F64).flip(0)
    i = torch.arange(n, dtype=F64)
    if spacing == "leading":
        return torch.round(i * (num_train_timesteps // n)).flip(0) + steps_offset
    return torch.round(num_train_timesteps - i * (num_train_timesteps / n)) - 1  # trailing


def interp(t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values`` (on the grid 0..len-1) at ``t``, clamped."""
    t = t.clamp(0, len(values) - 1)
    low = t.floor().clamp(max=len(values) - 2).long()
    w = t - low
    return torch.lerp(values[low], values[low + 1], w)


def sigma_to_t(sigmas: torch.Tensor, log_sigmas: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """Timestep of each sigma by log-sigma interpolation (nearest training timestep if ``quantize``)."""
    log_sigma = sigmas.clamp(min=1e-10).log()
    if quantize:
        return nearest_index(log_sigma, log_sigmas).to(F64)
    found = np.searchsorted(log_sigmas.numpy(), log_sigma.numpy(), side="right")  # torch's is 50x slower here
    low = (torch.from_numpy(found) - 1).clamp(0, len(log_sigmas) - 2)
    width = log_sigmas[low] - log_sigmas[low + 1]
    # a flat segment (float32 alphas_cumprod stalls under tiny betas) would be 0 / 0: take its start
    w = torch.where(width != 0, (log_sigmas[low] - log_sigma) / width, 0.0).clamp(0, 1)
    return low + w


def nearest_index(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the non-decreasing ``grid`` to each value, the first one on a tie.

    The same as ``(values[:, None] - grid[None, :]).abs().argmin(dim=1)`` (k-diffusion's
    ``sigma_to_t(quantize=True)``) in O(N log N) time and O(N) memory, where that builds an
    N x len(grid) matrix. Only two candidates can be nearest: the last entry below the value and the
    first at or above it; each is moved to the first position holding its value, as argmin would.
    Training log-sigmas are non-decreasing: ``alphas_cumprod`` is a running product of factors below 1.
    """
    sorted_grid = grid.numpy()
    probe = values.numpy()
    above = np.searchsorted(sorted_grid, probe, side="left").clip(0, len(grid) - 1)
    below = np.searchsorted(sorted_grid, sorted_grid[(above - 1).clip(0)], side="left")
    d_below = np.abs(probe - sorted_grid[below])
    d_above = np.abs(probe - sorted_grid[above])
    # argmin returns the first minimum: the lower index wins ties (and equal distances)
    pick = np.where(d_below <= d_above, below, above)
    return torch.from_numpy(pick.astype(np.int64))


def sigma_family(family: str, n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """``n`` sigmas from ``sigma_max`` to ``sigma_min``: Karras (rho 7), exponential or beta(0.6, 0.6)."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    if family == "karras":
        lo, hi = sigma_min ** (1 / 7.0), sigma_max ** (1 / 7.0)
        return (hi + ramp * (lo - hi)) ** 7.0
    if family == "exponential":
        return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64).exp()
    if family != "beta":
        raise ValueError(f"family must be one of 'karras', 'exponential', 'beta'; got {family!r}")
    try:
        import scipy.stats
    except ImportError as error:
        raise ImportError("use_beta_sigmas=True needs scipy: pip install scipy (or kdpm2[beta])") from error
    ppf = torch.as_tensor(scipy.stats.beta.ppf((1 - ramp).numpy(), 0.6, 0.6), dtype=F64)
    return sigma_min + ppf * (sigma_max - sigma_min)


class Tables(NamedTuple):
    """Per-call float64 tables of one schedule (layout of diffusers' attributes)."""

    sigmas: torch.Tensor  # [sh_0, s_1, sh_1, ..., s_n, s_n, s_n], 2n + 2
    sigmas_interpol: torch.Tensor  # [sh_0, m_1, m_1, ..., m_n, m_n, m_n], 2n + 2
    timesteps: torch.Tensor  # one per model call: 2n - 1 (final sigma 0) or 2n
    num_steps: int


def churned_sigmas(sigmas: torch.Tensor, s_churn: float, s_tmin: float, s_tmax: float) -> torch.Tensor:
    """First-order levels ``sh_i = s_i (1 + gamma)`` of Karras et al. Algorithm 2 (``s_i`` outside the window)."""
    n = len(sigmas) - 1
    gamma = min(s_churn / n, 2**0.5 - 1)
    start = sigmas[:-1]
    inside = (start >= s_tmin) & (start <= s_tmax)
    return torch.where(inside & (s_churn > 0), start * (1 + gamma), start)


def interleave(
    sigmas: torch.Tensor, hat: torch.Tensor, timesteps: torch.Tensor, mid_timesteps_of: object, midpoints: object = None
) -> Tables:
    """Interleave main sigmas ``s_0..s_n``, churned levels ``sh_i`` and their timesteps per call.

    The midpoints are ``sqrt(sh_i s_{i+1})`` in float64 unless ``midpoints(hat, next)`` computes them.
    """
    n = len(sigmas) - 1
    mids = (hat * sigmas[1:]).sqrt() if midpoints is None else midpoints(hat, sigmas[1:])  # type: ignore[operator]
    table = torch.cat([sigmas[:1], sigmas[1:].repeat_interleave(2), sigmas[-1:]])
    table[0 : 2 * n : 2] = hat
    interpol = torch.cat([hat[:1], mids.repeat_interleave(2), mids[-1:]])
    mid_t = mid_timesteps_of(mids)  # type: ignore[operator]
    calls = torch.stack([mid_t[:-1], timesteps[1:]], dim=1).reshape(-1)
    calls = torch.cat([timesteps[:1], calls])
    if sigmas[-1] != 0:
        calls = torch.cat([calls, mid_t[-1:]])
    return Tables(table, interpol, calls, n)

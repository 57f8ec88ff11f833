"""The float32 arithmetic of ComfyUI's and AUTOMATIC1111's DPM2 samplers, as pure torch functions.

Both front-ends run k-diffusion's ``sample_dpm_2`` on a float32 sigma array; to give a diffusers
loop the same sigmas and timesteps bit for bit, every value here is computed with the same float32
torch operations, in the same order, as the front-end does (read from their public source; see
``docs/parity.md``). Each function returns float32 tensors; ``kdpm2.presets`` turns them into a
schedule.

1. Training table: LDM's float64 ``alphas_cumprod`` (``tables.ldm_alphas_cumprod``), then
   ComfyUI takes sigma and its log in float64 and rounds both (``comfyui_table``), while
   AUTOMATIC1111 rounds ``alphas_cumprod`` first and takes sigma and log in float32
   (``a1111_table``).
2. Schedule of ``count`` sigmas (the front-ends build ``n + 1`` and drop the next-to-last):
   ``uniform`` (ComfyUI ``normal`` and ``sgm_uniform``, A1111 ``Uniform``), ``simple``,
   ``karras``, ``exponential``.
3. Midpoints: ``midpoints``, ``exp`` of the mean of the logs, as ``sample_dpm_2``.
4. Timestep the model receives: ``quantized_timesteps`` (ComfyUI) or
   ``continuous_timesteps`` (A1111, k-diffusion's ``sigma_to_t``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

F32 = torch.float32


class Table(NamedTuple):
    """A front-end's training sigmas and the log table its timestep mapping compares against (float32)."""

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor


def comfyui_table(alphas_cumprod: torch.Tensor) -> Table:
    """ComfyUI's ``ModelSamplingDiscrete``: sigma and log(sigma) in float64, each rounded to float32."""
    a = alphas_cumprod.to(torch.float64)
    sigmas = ((1 - a) / a) ** 0.5
    return Table(sigmas.to(F32), sigmas.log().to(F32))


def a1111_table(alphas_cumprod: torch.Tensor) -> Table:
    """k-diffusion's ``CompVisDenoiser`` on A1111's float32 ``alphas_cumprod``: sigma and log in float32."""
    a = alphas_cumprod.to(F32)
    sigmas = ((1 - a) / a) ** 0.5
    return Table(sigmas, sigmas.log())


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Sigma at fractional timesteps: linear interpolation of the log table in float32, then exp."""
    t = t.to(F32)
    w = t.frac()
    log_sigma = (1 - w) * log_sigmas[t.floor().long()] + w * log_sigmas[t.ceil().long()]
    return log_sigma.exp()


def quantized_timesteps(sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``timestep(sigma)``: the index of the nearest log table entry (float32; first wins a tie)."""
    distances = sigmas.to(F32).log()[None, :] - log_sigmas[:, None]
    return distances.abs().argmin(dim=0).to(F32)


def continuous_timesteps(sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """k-diffusion's ``sigma_to_t``: the two bracketing log entries blended linearly, in float32, clamped.

    ``log_sigmas`` must increase (training tables do).
    """
    log_sigma = sigmas.to(F32).log()
    # k-diffusion: the last entry with log_sigma - entry >= 0 (exactly entry <= log_sigma), else 0
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


def uniform(count: int, table: Table, sgm: bool = False) -> torch.Tensor:
    """``count`` sigmas at evenly spaced timesteps from the table's top to its bottom (float32 ``linspace``).

    ``sgm`` (ComfyUI ``sgm_uniform``) spaces ``count + 1`` points and leaves out the last (t = 0).
    The ends are the timesteps of the table's extreme sigmas, as ComfyUI computes them.
    """
    start = int(quantized_timesteps(table.sigmas[-1:], table.log_sigmas)[0])
    end = int(quantized_timesteps(table.sigmas[:1], table.log_sigmas)[0])
    t = torch.linspace(start, end, count + 1, dtype=F32)[:-1] if sgm else torch.linspace(start, end, count, dtype=F32)
    return t_to_sigma(t, table.log_sigmas)


def simple(count: int, table: Table) -> torch.Tensor:
    """ComfyUI ``simple``: stored table entries at ``T - 1 - floor(x T / count)``, no interpolation."""
    stride = len(table.sigmas) / count
    return table.sigmas[[len(table.sigmas) - 1 - int(x * stride) for x in range(count)]]


def table_ends(table: Table) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of the table as the Python floats the front-ends pass on."""
    return float(table.sigmas[0]), float(table.sigmas[-1])


def karras(count: int, table: Table) -> torch.Tensor:
    """Karras et al. (rho = 7) between the table's ends: k-diffusion's ``get_sigmas_karras`` in float32."""
    sigma_min, sigma_max = table_ends(table)
    ramp = torch.linspace(0, 1, count, dtype=F32)
    lo, hi = sigma_min ** (1 / 7.0), sigma_max ** (1 / 7.0)
    return (hi + ramp * (lo - hi)) ** 7.0


def exponential(count: int, table: Table) -> torch.Tensor:
    """Evenly spaced in log sigma between the table's ends: k-diffusion's ``get_sigmas_exponential``."""
    sigma_min, sigma_max = table_ends(table)
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), count, dtype=F32).exp()


def discard_penultimate(sigmas: torch.Tensor) -> torch.Tensor:
    """Drop the last (smallest) of ``n + 1`` sigmas and append the final 0: ``n`` steps."""
    return torch.cat([sigmas[:-1], sigmas.new_zeros(1)])


def midpoints(sigmas: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """``sample_dpm_2``'s midpoints ``exp(lerp(log s_i, log s_{i+1}, 0.5))`` in float32 (0 where s_{i+1} = 0)."""
    a, b = sigmas.to(F32), following.to(F32)
    mids = a.log().lerp(b.clamp(min=torch.finfo(F32).tiny).log(), 0.5).exp()
    return torch.where(b > 0, mids, torch.zeros_like(mids))


def init_noise_scale(frontend: str, sigma_0: float, table: Table) -> float:
    """The factor on unit noise that gives the first sample.

    AUTOMATIC1111: ``sigma_0``. ComfyUI (EPS ``noise_scaling``): ``sqrt(1 + sigma_0^2)`` in float32
    when ``sigma_0`` is within a relative 1e-5 of the table maximum or above it (full denoise),
    else ``sigma_0``.
    """
    sigma = torch.tensor(sigma_0, dtype=F32)
    if frontend == "comfyui":
        top = float(table.sigmas[-1])
        if math.isclose(top, sigma_0, rel_tol=1e-5) or sigma_0 > top:
            return float(torch.sqrt(1.0 + sigma**2.0))
    return float(sigma)

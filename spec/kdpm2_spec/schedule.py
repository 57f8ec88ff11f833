"""Noise schedules of the KDPM2 scheduler, as pure NumPy functions.

The inference schedule is built in five steps:

1. The *training* schedule: betas, then ``alphas_cumprod``, then the training sigmas
   ``sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`` for ``t = 0 .. T-1``.
2. The *spaced* timesteps: ``n`` timesteps chosen by ``timestep_spacing`` (or given).
3. The *main* sigmas ``s_0 > s_1 > ... > s_{n-1}``: the training sigmas interpolated at the
   spaced timesteps, optionally replaced by a Karras, exponential or beta family between the
   same bounds (or given), followed by a final sigma ``s_n`` (normally 0).
4. The *midpoint* sigmas ``m_i = sqrt(s_{i-1} * s_i)``: the geometric mean of neighbours,
   where DPM-Solver-2 evaluates the model a second time.
5. The *interleaved* tables of one model call each: see ``interleave_sigmas`` and
   ``interleave_timesteps``.

Everything after step 1 is float64. Step 1 reproduces the float32 training schedule that
diffusers builds with torch (and that model configs describe), rounding by rounding, because a
float32 ``alphas_cumprod`` moves the smallest sigma by about 2e-5 relative.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""Names of the built-in training beta schedules."""

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
"""How ``n`` timesteps are chosen from ``0 .. T-1`` (Lin et al. 2023, Table 2)."""

SIGMA_INTERPOLATIONS = ("linear", "log")
"""How the training sigmas are interpolated at fractional timesteps: diffusers interpolates
sigma linearly, k-diffusion (and so A1111 and ComfyUI) interpolates log-sigma."""

KARRAS_RHO = 7.0
"""The exponent rho of the Karras et al. (2022) schedule, eq. (5)."""

BETA_SIGMAS_ALPHA = 0.6
"""The alpha parameter of the beta-distribution schedule (Lee et al. 2024)."""

BETA_SIGMAS_BETA = 0.6
"""The beta parameter of the beta-distribution schedule (Lee et al. 2024)."""

GLIDE_MAX_BETA = 0.999
"""The cap on each beta of the squared-cosine schedule (Nichol & Dhariwal 2021)."""


def torch_float32_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)``, bit for bit.

    torch's vectorized kernel (every x86-64 CPU with AVX2, which is what this emulates) rounds the
    ends and the float32 step, then forms each value in float64 from the nearer end and rounds it
    once. Its scalar kernel (a CPU without AVX2, or ``ATEN_CPU_CAPABILITY=default``) rounds some
    values to the other neighbour, and diffusers' betas are what torch computes on the machine:
    so where torch is already loaded (a torch implementation is being checked in this process),
    its own ``linspace`` gives the values. The spec itself never imports torch.
    """
    assert steps >= 1
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "linspace"):
        return np.asarray(torch.linspace(start, end, steps, dtype=torch.float32).numpy(), dtype=np.float32)
    return vectorized_float32_linspace(start, end, steps)


def vectorized_float32_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch's vectorized float32 ``linspace`` kernel in NumPy: the ends and the step rounded to
    float32, each value formed in float64 from the nearer end and rounded once."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    from_start = np.float64(start32) + step * i
    from_end = np.float64(end32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, from_start, from_end).astype(np.float32)


def glide_cosine_betas(num_train_timesteps: int) -> np.ndarray:
    """Betas of the squared-cosine ``alpha_bar`` of Nichol & Dhariwal (2021), capped at 0.999."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), GLIDE_MAX_BETA)
        for i in range(num_train_timesteps)
    ]
    return np.array(betas, dtype=np.float32)


def train_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """The float32 betas of the training schedule; ``trained_betas`` wins when given."""
    if trained_betas is not None:
        return np.asarray(trained_betas, dtype=np.float64).astype(np.float32)
    if beta_schedule == "linear":
        return torch_float32_linspace(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        roots = torch_float32_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps)
        return roots * roots
    if beta_schedule == "squaredcos_cap_v2":
        return glide_cosine_betas(num_train_timesteps)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """float32 cumulative product of ``1 - betas``, accumulated in float64 as torch does."""
    alphas = (np.float32(1) - betas.astype(np.float32)).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Training sigmas ``sqrt((1 - a) / a)`` in float64, one per training timestep."""
    a = alphas_cumprod.astype(np.float64)
    return np.sqrt((1.0 - a) / a)


def spaced_timesteps(num_inference_steps: int, num_train_timesteps: int, spacing: str, steps_offset: int) -> np.ndarray:
    """The ``n`` descending timesteps of one spacing rule, in float64.

    ``linspace`` spreads them evenly over ``[0, T-1]``; ``leading`` takes multiples of ``T // n``
    plus ``steps_offset``; ``trailing`` counts down from ``T - 1`` by ``T / n``.
    """
    n, big_t = num_inference_steps, num_train_timesteps
    assert 1 <= n <= big_t
    if spacing == "linspace":
        return np.linspace(0, big_t - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return np.round(np.arange(n) * (big_t // n))[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(big_t - np.arange(n) * (big_t / n)) - 1.0
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def t_to_sigma(timesteps: np.ndarray, sigmas: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Training sigma at fractional timesteps: linear in sigma (diffusers) or in log-sigma."""
    grid = np.arange(len(sigmas), dtype=np.float64)
    if interpolation == "linear":
        return np.interp(timesteps, grid, sigmas)
    if interpolation == "log":
        return np.exp(np.interp(timesteps, grid, np.log(sigmas)))
    raise ValueError(f"sigma_interpolation must be one of {SIGMA_INTERPOLATIONS}, got {interpolation!r}")


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep of each sigma by linear interpolation of log-sigma.

    Sigmas outside the training range clamp to ``0`` or ``T - 1``; a sigma of 0 maps to 0.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
    w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])
    return low + np.clip(w, 0.0, 1.0)


def sigma_to_nearest_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Integer timestep of the training sigma nearest in log (k-diffusion's ``quantize=True``)."""
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    return np.argmin(np.abs(log_sigma[..., None] - log_sigmas), axis=-1).astype(np.float64)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. (2022) eq. (5): ``n`` sigmas even in ``sigma**(1/rho)`` from max to min."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """``n`` sigmas even in log-sigma from max to min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(
    n: int, sigma_min: float, sigma_max: float, alpha: float = BETA_SIGMAS_ALPHA, beta: float = BETA_SIGMAS_BETA
) -> np.ndarray:
    """``n`` sigmas at the quantiles ``1, ..., 0`` of a Beta(alpha, beta) law (Lee et al. 2024)."""
    try:
        import scipy.stats
    except ImportError as error:  # pragma: no cover - scipy is a test dependency
        raise ImportError("use_beta_sigmas needs scipy: pip install scipy") from error
    ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return sigma_min + ppf * (sigma_max - sigma_min)


def midpoint_sigmas(sigmas: np.ndarray) -> np.ndarray:
    """Geometric means ``sqrt(s_{i-1} * s_i)`` of neighbours, ``i = 1 .. len - 1``."""
    return np.sqrt(sigmas[:-1] * sigmas[1:])


def interleave_sigmas(sigmas: np.ndarray) -> np.ndarray:
    """diffusers' per-call sigma table ``[s_0, s_1, s_1, ..., s_n, s_n, s_n]`` (``2n + 2`` long).

    Entry ``k`` is the sigma of a first-order call at sub-step ``k``; entry ``k`` is also the
    target of the second-order call at ``k``.
    """
    return np.concatenate([sigmas[:1], np.repeat(sigmas[1:], 2), sigmas[-1:]])


def interleave_midpoints(sigmas: np.ndarray) -> np.ndarray:
    """diffusers' ``sigmas_interpol`` table: ``[s_0, m_1, m_1, ..., m_n, m_n, m_n]``.

    ``m_i`` is the midpoint of ``s_{i-1}`` and ``s_i``; ``m_n`` is 0 when the final sigma is.
    diffusers puts NaN first (``log 0`` in a lerp): the entry is never read, and here it is
    ``s_0`` so that no table holds NaN.
    """
    mids = midpoint_sigmas(sigmas)
    return np.concatenate([sigmas[:1], np.repeat(mids, 2), mids[-1:]])


def interleave_timesteps(timesteps: np.ndarray, mid_timesteps: np.ndarray, final_sigma_is_zero: bool) -> np.ndarray:
    """Per-call timesteps ``[t_0, u_1, t_1, u_2, ..., u_{n-1}, t_{n-1}]`` (``2n - 1`` long).

    ``t_i`` are the main timesteps, ``u_i`` those of the midpoints. When the final sigma is not
    zero, the last full step is a DPM-2 step too and ``u_n`` ends the table (``2n`` long).
    """
    pairs = np.stack([mid_timesteps[:-1], timesteps[1:]], axis=-1).reshape(-1)
    table = np.concatenate([timesteps[:1], pairs])
    return table if final_sigma_is_zero else np.concatenate([table, mid_timesteps[-1:]])

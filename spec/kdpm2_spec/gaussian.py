"""A Gaussian data model whose denoiser and probability-flow ODE have closed forms.

For data ``x0 ~ N(mu, s_d^2)`` (per coordinate) and ``x = x0 + sigma * n``, the ideal denoiser is
``D(x, sigma) = (s_d^2 x + sigma^2 mu) / (s_d^2 + sigma^2)`` and the ODE ``dx/dsigma =
(x - D(x, sigma)) / sigma`` moves ``x`` along ``mu + (x - mu) sqrt((s_d^2 + sigma^2) / (s_d^2 +
sigma_start^2))``. Samplers can therefore be checked against the exact solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    """Data distribution ``N(mean, std^2)`` in each coordinate."""

    mean: float = 0.5
    std: float = 0.5

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The ideal denoiser ``E[x0 | x]`` at noise level ``sigma``."""
        var = self.std**2
        return (var * x + sigma**2 * self.mean) / (var + sigma**2)

    def ode_solution(self, x_start: np.ndarray, sigma_start: float, sigma_end: float) -> np.ndarray:
        """Exact probability-flow ODE solution from ``sigma_start`` to ``sigma_end``."""
        var = self.std**2
        return self.mean + (x_start - self.mean) * math.sqrt((var + sigma_end**2) / (var + sigma_start**2))


def convergence_order(step_counts: np.ndarray, errors: np.ndarray) -> float:
    """Order of a solver: minus the least-squares slope of log error against log step count."""
    slope = np.polyfit(np.log(step_counts), np.log(errors), 1)[0]
    return float(-slope)

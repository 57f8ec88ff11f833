"""Argument checks shared by the scheduler: each error names the argument and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SIGMA_INTERPOLATIONS = ("linear", "log")


def choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` must be an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return value


def real(name: str, value: Any, low: float | None = None, *, strict: bool = False, optional: bool = False) -> Any:
    """``value`` must be a finite real number (``None`` too when ``optional``), above ``low``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite real number; got {value!r}")
    if low is not None and (float(value) < low or (strict and float(value) == low)):
        raise ValueError(f"{name} must be {'greater than' if strict else 'at least'} {low}; got {value}")
    return float(value)


def trained_betas(value: Any, num_train_timesteps: int) -> None:
    """Trained betas: ``num_train_timesteps`` values in the open interval (0, 1)."""
    array = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if array.shape != (num_train_timesteps,):
        raise ValueError(
            f"trained_betas must hold num_train_timesteps={num_train_timesteps} values; got shape {array.shape}"
        )
    if not np.all((array > 0) & (array < 1)):
        raise ValueError("trained_betas must lie in the open interval (0, 1)")


def custom_sigmas(sigmas: Any) -> np.ndarray:
    """Custom sigmas: at least two, positive and strictly decreasing, the final one at least 0."""
    array = np.asarray(sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 values (the last is final); got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array[:-1] <= 0) or array[-1] < 0:
        raise ValueError("sigmas must be finite and positive (the final one may be 0)")
    if np.any(np.diff(array) >= 0):
        raise ValueError("sigmas must be strictly decreasing")
    return array


def custom_timesteps(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """Custom timesteps: strictly decreasing values within ``[0, num_train_timesteps - 1]``."""
    array = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64)
    if array.ndim != 1 or len(array) < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence; got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(array > num_train_timesteps - 1):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}]")
    if np.any(np.diff(array) >= 0):
        raise ValueError("timesteps must be strictly decreasing")
    return array


def tensor(name: str, value: Any) -> torch.Tensor:
    """A floating-point torch tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")
    return value

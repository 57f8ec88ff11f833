"""Upstream figures and float32 ulp distances, for the parity tests (DPM2 and DPM2 a).

``tests/parity/`` holds the figures ComfyUI and AUTOMATIC1111 were recorded giving the UNet
(see its README) and ``spread.json``, how far those figures move between CPU code paths
(``docs/scripts/parity_spread.py`` measures it). A missing file is an error, never a skip: a
clone or an sdist without them cannot verify the presets.

Distances are counted in float32 ulps: the number of float32 values between two numbers, plus
one (``ulps(1.0, nextafter(1.0, 2.0)) == 1``; +0.0 and -0.0 are 0 apart). A value a float64
computation produced is rounded to float32 first, since every upstream figure is a float32 value.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

PARITY_DIR = Path(__file__).resolve().parent / "parity"
"""The figures and their measured spread, inside the repository (and the sdist)."""

FIGURES = {"comfyui": "comfyui.json", "a1111": "a1111.json", "ancestral": "ancestral.json"}
SPREAD_FILE = "spread.json"


@functools.cache
def figures(name: str) -> dict[str, Any]:
    """``comfyui``, ``a1111`` or ``ancestral`` figures; ``FileNotFoundError`` (a failure) when absent."""
    return _load(FIGURES[name])


@functools.cache
def spread() -> dict[str, Any]:
    """The measured spread of every figure across CPU code paths (``tests/parity/spread.json``)."""
    return _load(SPREAD_FILE)


def _load(file: str) -> dict[str, Any]:
    path = PARITY_DIR / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the parity figures ship with the repository and the sdist")
    return json.loads(path.read_text(encoding="utf-8"))


def ordinal(values: Any) -> np.ndarray:
    """Each value rounded to float32, as an int64 that counts float32 values in order (-0.0 == +0.0)."""
    bits = np.asarray(values, dtype=np.float64).astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def ulps(a: Any, b: Any) -> np.ndarray:
    """Elementwise float32 ulp distance between ``a`` and ``b`` (both rounded to float32 first)."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.isnan(a_arr).any() or np.isnan(b_arr).any():
        raise ValueError("ulps: NaN has no place among float32 values")
    return np.abs(ordinal(a_arr) - ordinal(b_arr))


def max_ulps(a: Any, b: Any) -> int:
    """The largest elementwise float32 ulp distance (0 for empty arrays)."""
    distances = ulps(a, b)
    return int(distances.max()) if distances.size else 0


def scaled_ulps(a: Any, b: Any) -> int:
    """The largest ``|a - b|`` in ulps of the largest float32 magnitude in ``b``.

    For arrays whose entries pass near zero (a log table, a latent), where an elementwise ulp is
    tiny beside the values' rounding: the error of ``x`` computed as ``u - v`` is an ulp of ``u``,
    not of ``x``.
    """
    a_arr = np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)
    b_arr = np.asarray(b, dtype=np.float64).astype(np.float32).astype(np.float64)
    if not b_arr.size:
        return 0
    scale = float(np.spacing(np.float32(np.abs(b_arr).max())))
    return math.ceil(float(np.abs(a_arr - b_arr).max()) / scale)


def within(a: float, b: float, tolerance: int) -> bool:
    """``a`` and ``b`` (rounded to float32) at most ``tolerance`` float32 ulps apart."""
    return max_ulps([a], [b]) <= tolerance


def tie_margin(sigma: float, log_table: Sequence[float], index: int) -> tuple[int, float]:
    """How close ``log(sigma)`` is to the point where the nearest training timestep changes.

    Returns ``(other, margin)``: ``other`` is the neighbour of ``index`` on ``log(sigma)``'s side,
    ``margin`` the distance (in log sigma, float64) from ``log(sigma)`` to the midpoint of the two
    table entries, where ComfyUI's float32 ``argmin`` of ``|log(sigma) - entry|`` switches index.
    A timestep may differ by one between CPUs only where the margin is within the spread of the
    float32 ``log(sigma)`` across CPUs (``spread.json``: ``timestep_tie_log``).
    """
    log_sigma = math.log(sigma)
    entry = log_table[index]
    other = index + 1 if log_sigma > entry else index - 1
    other = min(max(other, 0), len(log_table) - 1)
    return other, abs(log_sigma - (entry + log_table[other]) / 2)


# -- tolerances: the measured spread (tests/parity/spread.json) ---------------------------------


class Spread(NamedTuple):
    """The largest distance from a recorded figure over every measured CPU code path, by ATen capability.

    ``default`` is ATen's generic build (CPUs without AVX2), ``avx2`` and ``avx512`` its
    vectorised ones; each is the worst over oneMKL's branches (generic, SSE2, SSE4.2, AVX2,
    AVX-512). Units as the field's (float32 ulps, ulps of the array's largest entry, or a log
    sigma distance for ComfyUI's timestep ties).
    """

    default: float
    avx2: float
    avx512: float

    def here(self) -> float:
        """The tolerance for this machine: its ATen capability's, the widest for one not measured."""
        import torch

        capability = torch.backends.cpu.get_cpu_capability().lower()
        return float(getattr(self, capability)) if capability in self._fields else float(max(self))


EXACT = Spread(0, 0, 0)
"""Equal on every code path."""

# Measured 2026-12-04 on an AMD EPYC (Zen 4, AVX-512), torch 2.14.1 with oneMKL 2024.2, over 33
# code paths (docs/scripts/parity_spread.py): kdpm2's presets against comfyui.json / a1111.json.

COMFYUI_TRAIN_SIGMAS = EXACT
"""ComfyUI's training sigmas: float64 arithmetic rounded to float32 once; equal on every path."""
COMFYUI_TRAIN_LOG_SIGMAS = EXACT
"""ComfyUI's log table: float64 log rounded to float32 once; equal on every path."""
COMFYUI_SIGMAS = Spread(14, 1, 1)
"""ComfyUI schedule sigmas (float32 exp, pow): 1 ulp with AVX2 / AVX-512, 14 (karras' pow) without
AVX2. ``simple`` takes table entries: exact, and compared bit for bit."""
COMFYUI_MIDPOINTS = Spread(6, 4, 4)
"""ComfyUI midpoints (float32 log, lerp, exp): 4 ulps (oneMKL's AVX-512 branch), 6 without AVX2."""
COMFYUI_C_IN = Spread(5, 4, 4)
"""ComfyUI ``c_in`` (kdpm2: float64 1/sqrt(sigma^2 + 1) rounded; upstream float32 sqrt): 4 ulps, 5 without AVX2."""
COMFYUI_C_IN_DIVISORS = Spread(6, 4, 4)
"""ComfyUI's divisor sqrt(sigma^2 + 1) (float32 sqrt upstream): 4 ulps, 6 without AVX2."""
COMFYUI_INIT_NOISE = Spread(1, 1, 1)
"""ComfyUI's noise factor sqrt(1 + sigma_0^2) (float32 sqrt): 1 ulp (``simple``), on oneMKL's Intel branches."""
COMFYUI_TIE_LOG = Spread(8.845740193663687e-07, 2.8308712085589605e-07, 2.8308712085589605e-07)
"""ComfyUI timesteps: the largest distance of a path's float32 log(sigma) from the log of the recorded
sigma. A timestep may move by one, to the neighbour, only where log(sigma) is this close to the
midpoint of two table entries (``tie_margin``); measured: 10 calls at t = 499.5 give 499 for 500
on oneMKL's AVX2 branch, at 5.1e-8 from the tie."""

A1111_TRAIN_SIGMAS = Spread(1, 1, 1)
"""A1111's training sigmas (float32 sqrt of float32 (1 - a) / a): 1 ulp."""
A1111_TRAIN_LOG_SIGMAS = Spread(1, 1, 1)
"""A1111's log table (float32 log): 1 ulp of its largest entry (``scaled_ulps``; entries near 0 have tiny ulps)."""
A1111_SIGMAS = Spread(13, 2, 2)
"""A1111 schedule sigmas (float32 exp, pow): 2 ulps with AVX2 / AVX-512, 13 (Karras' pow) without AVX2."""
A1111_MIDPOINTS = Spread(6, 3, 3)
"""A1111 midpoints (float32 log, lerp, exp): 3 ulps, 6 without AVX2."""
A1111_C_IN = Spread(5, 5, 5)
"""A1111 ``c_in`` (kdpm2: float64, rounded; upstream: float32 sqrt and division): 5 ulps."""
A1111_INIT_NOISE = EXACT
"""A1111's noise factor is sigma_0: equal on every path."""
A1111_TIMESTEPS = Spread(14, 8, 8)
"""A1111's continuous timesteps (float32 log and interpolation): 8 ulps, 14 without AVX2."""

DPM2: dict[str, dict[str, Spread]] = {
    "comfyui": {
        "train_sigmas": COMFYUI_TRAIN_SIGMAS,
        "train_log_sigmas": COMFYUI_TRAIN_LOG_SIGMAS,
        "sigmas": COMFYUI_SIGMAS,
        "midpoints": COMFYUI_MIDPOINTS,
        "c_in": COMFYUI_C_IN,
        "c_in_divisors": COMFYUI_C_IN_DIVISORS,
        "init_noise_scale": COMFYUI_INIT_NOISE,
        "timestep": COMFYUI_TIE_LOG,
    },
    "a1111": {
        "train_sigmas": A1111_TRAIN_SIGMAS,
        "train_log_sigmas": A1111_TRAIN_LOG_SIGMAS,
        "sigmas": A1111_SIGMAS,
        "midpoints": A1111_MIDPOINTS,
        "c_in": A1111_C_IN,
        "init_noise_scale": A1111_INIT_NOISE,
        "timestep": A1111_TIMESTEPS,
    },
}
"""kdpm2's presets against the DPM2 figures, per front-end and field (``spread.json``'s ``dpm2``, ``ours``)."""

# The ancestral figures (ancestral.json, recorded on an Intel Xeon with AVX-512): how far upstream's
# own sample_dpm_2_ancestral lands from them on each code path (spread.json's ``ancestral``,
# ``upstream``), for an implementation that does upstream's float32 arithmetic in upstream's order.

ANCESTRAL: dict[str, dict[str, Spread]] = {
    "comfyui": {
        "sigmas": Spread(14, 1, 1),
        "init_noise_scale": EXACT,
        "call_sigma": Spread(18, 18, 18),
        "sigma_down": Spread(27, 27, 27),
        "sigma_up": Spread(23, 4, 4),
        "sigma_mid": Spread(18, 18, 18),
        "final_latent": Spread(106, 106, 106),
        "timestep": Spread(1.4512899617624697e-06, 1.4512899617624697e-06, 1.4512899617624697e-06),
    },
    "a1111": {
        "sigmas": Spread(13, 2, 2),
        "init_noise_scale": EXACT,
        "call_sigma": Spread(14, 14, 14),
        "sigma_down": Spread(23, 23, 23),
        "sigma_up": Spread(23, 9, 9),
        "sigma_mid": Spread(14, 14, 14),
        "final_latent": Spread(32, 32, 32),
        "timestep": Spread(15, 5, 5),
    },
}
"""DPM2 a: ulps, except ``final_latent`` (ulps of the case's largest entry, ``scaled_ulps``) and
ComfyUI's ``timestep`` (the log sigma tie spread, as ``COMFYUI_TIE_LOG``). sigma_down is a square
root of a difference of close squares, hence its larger spread; the latents carry every step's."""


def timestep_error(
    frontend: str, got: float, recorded: float, sigma: float, log_table: Sequence[float], tolerance: float
) -> str | None:
    """Why ``got`` is not an acceptable timestep for the recorded call, or None.

    A1111 (continuous): within ``tolerance`` float32 ulps. ComfyUI (an integer): equal, or one
    off to the neighbour on log(sigma)'s side where the recorded sigma's log is within
    ``tolerance`` of the midpoint of the two table entries (a float32 near-tie).
    """
    if frontend == "a1111":
        return None if within(got, recorded, int(tolerance)) else f"{got!r} is not within {tolerance:g} ulps"
    if got == recorded:
        return None
    other, margin = tie_margin(sigma, log_table, int(recorded))
    if got == other and margin <= tolerance:
        return None
    return f"{got!r} (upstream {recorded!r}; log sigma is {margin:.3g} from the {int(recorded)}/{other} tie, allowed {tolerance:.3g})"

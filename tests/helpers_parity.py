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
from typing import Any

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

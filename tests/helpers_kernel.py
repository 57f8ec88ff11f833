"""Shared by the kernel tests (CUDA and Triton interpreter): the call kinds and the ulp of a dtype."""

from __future__ import annotations

import torch

from kdpm2 import functional

MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}
SMALLEST_SUBNORMAL = {torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}


def ulp(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at each float64 ``value``."""
    _, exponent = torch.frexp(value.abs())
    spacing = torch.pow(2.0, (exponent - 1 - MANTISSA_BITS[dtype]).double())
    return spacing.clamp(min=SMALLEST_SUBNORMAL[dtype])


def calls() -> list[tuple[str, functional.Coefficients, bool, bool]]:
    """(name, coefficients, has stored, has noise) for each kind of call and prediction type."""
    out = []
    for p in functional.PREDICTION_TYPES:
        out.append((f"first-{p}", functional.first_order(3.0, 1.7, p), False, False))
        out.append((f"last-{p}", functional.first_order(0.03, 0.0, p), False, False))
        out.append((f"second-{p}", functional.second_order(3.0, 1.7, 1.1, p), True, False))
        out.append((f"churn-{p}", functional.second_order(3.0, 1.7, 1.1, p, churn=0.4), True, True))
    return out


def inputs(shape: tuple[int, ...], dtype: torch.dtype, stored: bool, noise: bool, device: str = "cpu", seed: int = 0):
    """Sample, model output, stored sample and noise (``None`` where the call has none)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x, m, s, z = (torch.randn(shape, generator=g, device=device).mul(3).to(dtype) for _ in range(4))
    return [x, m, s if stored else None, z if noise else None]


def exact(c: functional.Coefficients, x, m, s, z, magnitude: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Both outputs in float64 from the same (upcast) inputs, zero coefficients skipped.

    With ``magnitude``, the sums of ``|c * t|`` instead (the scale of float32 rounding errors).
    """

    def combine(terms):
        acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        for coefficient, t in terms:
            if t is not None and coefficient != 0.0:
                term = coefficient * t.double()
                acc = acc + (term.abs() if magnitude else term)
        return acc

    prev = combine([(c.stored, s), (c.sample, x), (c.model, m), (c.noise, z)])
    return prev, combine([(c.x0_sample, x), (c.x0_model, m)])

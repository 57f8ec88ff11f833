"""Where the ancestral step's noise comes from: diffusers' generator rules, or noise the caller gives.

diffusers' ``KDPM2AncestralDiscreteScheduler.step`` draws its noise with ``randn_tensor``: shaped
like ``model_output``, in its dtype, on its device; a CPU generator draws on the CPU and the
result is moved; a list of generators draws one batch item from each (a list of one is the lone
generator). ``randn`` repeats those rules, so the same seeds give diffusers' numbers. A CPU
generator for CUDA tensors draws on the CPU and copies the noise over at each call, as diffusers
does; a generator on the sample's device draws there, without waiting for the device. The other
sources (a ``noise`` tensor, a k-diffusion style ``noise_sampler``) are checked by ``given``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdpm2 import validation

Generators = torch.Generator | list[torch.Generator]
"""What ``step(generator=...)`` takes: one generator, or one per batch item."""


def generators(value: Any, like: torch.Tensor) -> Generators | None:
    """``value`` checked as diffusers uses it for noise shaped like ``like``; a list of one is its generator.

    A list must hold one ``torch.Generator`` per batch item (``like.shape[0]``), all on one device
    type. A generator on another device type than ``like`` must be a CPU one (it draws on the CPU
    and the noise is moved), as in diffusers.
    """
    if value is None or isinstance(value, torch.Generator):
        found: Generators | None = value
        first = value
    else:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise TypeError(f"generator must be a torch.Generator, a list of them or None; got {type(value).__name__}")
        items = list(value)
        if not items or not all(isinstance(g, torch.Generator) for g in items):
            kinds = sorted({type(g).__name__ for g in items}) or ["nothing"]
            raise TypeError(f"generator: a list must hold torch.Generator objects only; got {', '.join(kinds)}")
        if len({g.device.type for g in items}) > 1:
            raise ValueError("generator: every generator of the list must be on the same device type")
        first = items[0]
        if len(items) == 1:
            found = first
        else:
            batch = like.shape[0] if like.dim() else None
            if batch != len(items):
                raise ValueError(
                    f"generator: a list needs one generator per batch item ({batch if batch is not None else 'a 0-d sample has none'}); "
                    f"got {len(items)}"
                )
            found = items
    if first is not None and first.device.type not in ("cpu", like.device.type):
        raise ValueError(
            f"generator: cannot draw noise for a {like.device.type} tensor from a {first.device.type} generator"
        )
    return found


def randn(shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: Generators | None) -> torch.Tensor:
    """Standard normal noise as diffusers' ``randn_tensor`` draws it (``generator`` from ``generators``)."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    first = generator if isinstance(generator, torch.Generator) else generator[0]
    where = torch.device("cpu") if first.device.type != device.type else device
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)
    item = (1, *shape[1:])
    parts = [torch.randn(item, generator=g, dtype=dtype, device=where) for g in generator]
    return torch.cat(parts).to(device)


def given(name: str, noise: Any, like: torch.Tensor) -> torch.Tensor:
    """A noise tensor from the caller: a floating-point tensor shaped like ``like``, on its device."""
    validation.tensor(name, noise)
    if noise.shape != like.shape:
        raise ValueError(f"{name} shape {tuple(noise.shape)} != sample shape {tuple(like.shape)}")
    if noise.device != like.device:
        raise ValueError(f"{name} is on {noise.device} but sample is on {like.device}")
    return noise

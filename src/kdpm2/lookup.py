"""Finding a timestep's position in the schedule, with diffusers' rule and without device syncs.

diffusers' rule: the first match, or the second when the value repeats (so that an image-to-image
start at a repeated timestep does not skip a sigma). A timestep that is a view of the schedule
tensor (what iterating ``scheduler.timesteps`` yields) is located from its storage offset alone,
so no device value is read; other values are compared with a host copy or on their own device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdpm2 import validation


def first_or_second_index(values: list[float]) -> dict[float, int]:
    """Map each value to its first position, or its second when it repeats."""
    index = dict(zip(reversed(values), range(len(values) - 1, -1, -1), strict=True))
    if len(index) < len(values):
        seen: dict[float, int] = {}
        for i, v in enumerate(values):
            seen[v] = seen.get(v, 0) + 1
            if seen[v] == 2:
                index[v] = i
    return index


def step_start_index(values: list[float], starts: list[int] | None = None) -> dict[float, int]:
    """Map each value to its first step start (a step's first call), else to its first position.

    ``starts`` are the positions of the steps' first calls, in order (``None``: the even positions,
    as when every step makes two calls). The rule of a loop's first call given a plain timestep
    value: a value that repeats at the start (sigmas above the training range all map to the last
    training timestep) starts the loop at call 0; one that a midpoint shares with the next step
    starts at the step.
    """
    index = dict(zip(reversed(values), range(len(values) - 1, -1, -1), strict=True))
    if len(index) < len(values):
        if starts is None:
            starts = list(range(0, len(values), 2))
        index.update((values[p], p) for p in reversed(starts))
    return index


def view_positions(view: Any, table: torch.Tensor) -> list[int] | None:
    """Positions in the 1-D ``table`` of the elements of a 0-D or 1-D view of it, else ``None``.

    Reads tensor metadata only (storage, offset, stride), never a value.
    """
    if (
        not isinstance(view, torch.Tensor)
        or view.dim() > 1
        or table.dim() != 1
        or view.dtype != table.dtype
        or view.device != table.device
        or view.untyped_storage().data_ptr() != table.untyped_storage().data_ptr()
    ):
        return None
    step = int(table.stride(0))
    start = int(view.storage_offset() - table.storage_offset())
    stride = int(view.stride(0)) if view.dim() else 0
    offsets = [start + i * stride for i in range(view.numel())]
    if step <= 0 or any(p % step or not 0 <= p // step < len(table) for p in offsets):
        return None
    return [int(p // step) for p in offsets]


def as_float(timestep: Any, dtype: torch.dtype) -> float:
    """A single timestep's value rounded to the schedule's dtype, as diffusers' comparison sees it."""
    if isinstance(timestep, torch.Tensor):
        if timestep.is_nested or timestep.layout != torch.strided or timestep.is_meta or timestep.is_complex():
            raise TypeError(f"timestep must be a real number or a one-element tensor with a value; got {timestep!r}")
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single value; got shape {tuple(timestep.shape)}")
        timestep = timestep.detach().reshape(())
    elif isinstance(timestep, complex) or (isinstance(timestep, np.generic) and np.iscomplexobj(timestep)):
        raise TypeError(f"timestep must be a real number or a one-element tensor; got {timestep!r}")
    try:
        return float(torch.as_tensor(timestep, dtype=torch.float64).to(dtype))
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise TypeError(
            f"timestep must be a number or a one-element tensor; got {validation.show(timestep)}"
        ) from error


def index_of_value(index: dict[float, int], value: float, original: Any) -> int:
    """The position of ``value``; ``ValueError`` naming the timestep when it is not scheduled."""
    if value not in index:
        raise ValueError(f"timestep {original!r} is not in the schedule (see scheduler.timesteps)")
    return index[value]


def device_indices(timesteps: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' rule for a batch of timesteps, computed on their device: ``(indices, found)``."""
    equal = timesteps.to(table.dtype)[:, None] == table[None, :]
    matches = equal.sum(dim=1)
    wanted = torch.where(matches > 1, 2, 1)
    indices = (equal & (equal.cumsum(dim=1) == wanted[:, None])).int().argmax(dim=1)
    return indices, matches > 0


def device_step_start_indices(timesteps: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``step_start_index``'s rule for a batch of timesteps, computed on their device: ``(indices, found)``.

    The steps start at the even positions (every step makes two calls, as in every schedule a
    traced call runs).
    """
    equal = timesteps.to(table.dtype)[:, None] == table[None, :]
    even = torch.arange(table.shape[0], device=table.device) % 2 == 0
    score = equal.int() * (2 + even.int())[None, :]  # an even match (3) beats any other match (2)
    return score.argmax(dim=1), equal.any(dim=1)

"""``add_noise`` with a timestep taken from ``scheduler.timesteps``: ours against diffusers.

``lookup``: no begin index, so each timestep is located in the schedule (training, img2img before
``set_begin_index``); ``begin_index``: the pipeline set one. Batch 4, one timestep per item.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, IMPLS, make_scheduler

SHAPE = (4, 4, 64, 64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["lookup", "begin_index"])
@pytest.mark.parametrize("device", DEVICES)
def test_add_noise(bench, device, mode, impl) -> None:
    s = make_scheduler(impl)
    s.set_timesteps(25, device=device)
    if mode == "begin_index":
        s.set_begin_index(10)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(SHAPE, generator=g, device=device)
    noise = torch.randn(SHAPE, generator=g, device=device)
    t = s.timesteps[10:11].expand(SHAPE[0])  # a view of the schedule, one per batch item
    b = bench(f"add_noise {device} {mode} 4x4x64x64", impl, device, mode=mode, shape="4x4x64x64", calls_per_round=1)
    b(s.add_noise, x, noise, t)

"""``set_timesteps`` for 25 and 1000 steps, and the constructor (which runs ``set_timesteps(1000)``): ours against diffusers."""

from __future__ import annotations

import pytest

from conftest import DEVICES, IMPLS, make_scheduler


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("steps", [25, 1000])
@pytest.mark.parametrize("device", DEVICES)
def test_set_timesteps(bench, device, steps, impl) -> None:
    s = make_scheduler(impl)
    b = bench(f"set_timesteps {device} {steps}", impl, device, steps=steps, calls_per_round=1)
    b(s.set_timesteps, steps, device=device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES[:1])
def test_constructor(bench, device, impl) -> None:
    b = bench(f"constructor {device}", impl, device, calls_per_round=1)
    b(make_scheduler, impl)

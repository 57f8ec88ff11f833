"""DPM2 a: ``KDPM2AncestralDiscreteScheduler`` against diffusers' class of the same name.

- ``step``: a round is one first-order and one second-order call from the middle of a 25-step
  schedule (``calls_per_round = 2``); the second draws its noise from a ``torch.Generator``. Both
  draw the same numbers with the same ``torch.randn`` call (diffusers' generator semantics), which
  costs most of a round on a CPU; impl ``randn`` times that draw alone, so a round's overhead is
  its time over that floor.
- ``set_timesteps`` for 25 and 1000 steps.
- a whole 25-step loop (49 calls) with a one-op stand-in model.

Ratios are taken within one run (``bench/report.py``, or the group's min/median columns).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import DEVICES, IMPLS

SHAPES = [(1, 4, 64, 64), (1, 4, 128, 128)]
K = 10  # a first-order call index in the middle of the schedule


def ancestral(impl: str, **config: Any) -> Any:
    """Our ancestral scheduler or diffusers' with the same config."""
    if impl == "kdpm2":
        from kdpm2 import KDPM2AncestralDiscreteScheduler
    else:
        from diffusers import KDPM2AncestralDiscreteScheduler
    return KDPM2AncestralDiscreteScheduler(**config)


def label(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@pytest.mark.parametrize("impl", [*IMPLS, "randn"])
@pytest.mark.parametrize("shape", SHAPES, ids=label)
@pytest.mark.parametrize("device", DEVICES)
def test_ancestral_step(bench: Any, device: str, shape: tuple[int, ...], impl: str) -> None:
    s = ancestral("kdpm2" if impl == "randn" else impl)
    s.set_timesteps(25, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device)
    e = torch.randn(shape, generator=g, device=device)
    t0, t1 = s.timesteps[K], s.timesteps[K + 1]

    def run() -> torch.Tensor:
        s._step_index = K
        s.sample = None
        y = s.step(e, t0, x, generator=g).prev_sample
        return s.step(e, t1, y, generator=g).prev_sample

    def draw() -> torch.Tensor:  # the noise draw of a round alone: the floor both share
        return torch.randn(shape, generator=g, device=device)

    b = bench(f"ancestral step {device} float32 {label(shape)}", impl, device, shape=label(shape), calls_per_round=2)
    b(draw if impl == "randn" else run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("steps", [25, 1000])
@pytest.mark.parametrize("device", DEVICES)
def test_ancestral_set_timesteps(bench: Any, device: str, steps: int, impl: str) -> None:
    s = ancestral(impl)
    b = bench(f"ancestral set_timesteps {device} {steps}", impl, device, steps=steps, calls_per_round=1)
    b(s.set_timesteps, steps, device=device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_ancestral_loop(bench: Any, device: str, impl: str) -> None:
    """A 25-step loop (49 calls, 24 noise draws) with a one-op model, as a pipeline runs it."""
    s = ancestral(impl)
    s.set_timesteps(25, device=device)
    shape = (1, 4, 64, 64)
    x = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(0), device=device)
    g = torch.Generator(device=device)

    def run() -> torch.Tensor:
        s._step_index, s.sample = None, None
        g.manual_seed(1)
        sample = x * s.init_noise_sigma
        for t in s.timesteps:
            sample = s.step(0.3 * s.scale_model_input(sample, t), t, sample, generator=g).prev_sample
        return sample

    b = bench(f"ancestral loop {device} float32 {label(shape)} 25 steps", impl, device, calls_per_round=49)
    b(run)

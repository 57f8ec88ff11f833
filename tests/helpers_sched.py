"""Shared pieces of the scheduler tests: option grids, stand-in models, loops and input guards."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from kdpm2 import KDPM2DiscreteScheduler

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas")
FAMILIES = (None, "karras", "exponential", "beta")
SPACINGS = ("linspace", "leading", "trailing")
OFFSETS = (0, 1)
PREDICTIONS = ("epsilon", "v_prediction")
STEP_COUNTS = (1, 2, 3, 10, 25, 50)

TRAINED_BETAS = np.linspace(1e-4, 0.02, 1000) ** 1.1
"""An arbitrary valid trained-betas array (neither linear nor scaled-linear)."""


def diffusers_kwargs(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> dict:
    """Constructor arguments that diffusers' KDPM2DiscreteScheduler also accepts."""
    kwargs: dict[str, Any] = {
        "beta_schedule": "linear" if beta == "trained_betas" else beta,
        "timestep_spacing": spacing,
        "steps_offset": offset,
        "prediction_type": prediction,
    }
    if beta == "trained_betas":
        kwargs["trained_betas"] = TRAINED_BETAS.tolist()
    if family is not None:
        kwargs[f"use_{family}_sigmas"] = True
    return kwargs


CONFIGS = list(itertools.product(BETA_SCHEDULES, FAMILIES, SPACINGS, OFFSETS))
"""Every combination of diffusers' schedule options (prediction type does not change tables)."""


def config_id(config: tuple) -> str:
    beta, family, spacing, offset = config
    return f"{beta}-{family or 'plain'}-{spacing}-off{offset}"


@functools.cache
def _diffusers_base(beta: str) -> Any:
    import diffusers

    return diffusers.KDPM2DiscreteScheduler(**diffusers_kwargs(beta, None, "linspace", 0))


def diffusers_scheduler(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> Any:
    """diffusers' scheduler for one option combination, built cheaply.

    diffusers' constructor runs ``set_timesteps(1000)`` in a Python loop (about 0.5 s), and only
    the beta schedule matters to it: the other options are read from the config by
    ``set_timesteps`` and ``step``. So one instance per beta schedule is built once, deep-copied,
    and the options are written with diffusers' own ``register_to_config``
    (``test_patched_diffusers_matches_fresh`` checks that this equals a fresh instance).
    """
    theirs = copy.deepcopy(_diffusers_base(beta))
    kwargs = diffusers_kwargs(beta, family, spacing, offset, prediction)
    kwargs.pop("trained_betas", None)
    kwargs.pop("beta_schedule")
    theirs.register_to_config(**kwargs)
    return theirs


def ours_for(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> Any:
    """Our scheduler for one option combination, rounding Karras timesteps as diffusers does."""
    return KDPM2DiscreteScheduler(
        **diffusers_kwargs(beta, family, spacing, offset, prediction), round_karras_timesteps=family == "karras"
    )


def pair(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> tuple[Any, Any]:
    """(diffusers scheduler, ours) for one option combination."""
    return diffusers_scheduler(beta, family, spacing, offset, prediction), ours_for(
        beta, family, spacing, offset, prediction
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny networks on one intra-op thread: on a busy 2-core machine, OpenMP spin-waiting
    between two threads made a tiny UNet call 200 times slower (0.6 s instead of 3 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stand_in_model(x: torch.Tensor, t: Any) -> torch.Tensor:
    """A well-conditioned model: ``0.3 x + 0.1 sin(t)`` (a chaotic one would amplify table rounding)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return 0.3 * x + (0.1 * torch.sin(t)).to(x.dtype)


def run_loop(
    scheduler: Any,
    n: int,
    latents: torch.Tensor,
    model: Callable[[torch.Tensor, Any], torch.Tensor] = stand_in_model,
    **set_kwargs: Any,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A pipeline's denoising loop; returns the final sample and every ``pred_original_sample``."""
    if set_kwargs:
        scheduler.set_timesteps(**set_kwargs)
    else:
        scheduler.set_timesteps(n)
    sample = latents * scheduler.init_noise_sigma.to(latents.dtype)
    denoised = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        out = scheduler.step(model(model_input, t), t, sample)
        sample = out.prev_sample
        denoised.append(out.pred_original_sample)
    return sample, denoised


@contextlib.contextmanager
def unchanged(*tensors: torch.Tensor) -> Iterator[None]:
    """Asserts that the tensors hold the same values (and dtypes) after the block as before it."""
    before = [t.clone() for t in tensors]
    yield
    for i, (old, new) in enumerate(zip(before, tensors, strict=True)):
        assert new.dtype == old.dtype, f"argument {i} changed dtype in place"
        assert torch.equal(old, new), f"argument {i} was modified in place"


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``|actual - expected| <= rtol * max|expected|`` (relative to the array's scale)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual - expected).abs().max() / scale
    assert err <= rtol, f"{what}: relative error {float(err):.3g} > {rtol:g}"

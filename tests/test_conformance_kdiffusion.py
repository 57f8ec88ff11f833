"""Our scheduler against k-diffusion's ``sample_dpm_2``: random sigma arrays, models and churn settings.

k-diffusion draws ``torch.randn_like(x)`` from the global RNG at every iteration; we draw from the
generator given to ``step`` at the end of each full step (for the next one), and the caller applies
the first churn, ``x + s_noise * eps0 * sqrt(sh0^2 - s0^2)``. Seeding both alike gives equal draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, note

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import strategies as ks
from kdpm2_spec.conformance import stand_in_model

sampling = pytest.importorskip("k_diffusion.sampling")


def ours(case: ks.Churn, x: torch.Tensor) -> torch.Tensor:
    sched = KDPM2DiscreteScheduler(s_churn=case.s_churn, s_tmin=case.s_tmin, s_tmax=case.s_tmax, s_noise=case.s_noise)
    sched.set_timesteps(sigmas=case.sigmas)
    sched.set_begin_index(0)  # sigmas above the training range repeat timestep 999: no lookup
    generator = torch.Generator().manual_seed(case.seed)
    eps0 = torch.randn(x.shape, generator=generator, dtype=x.dtype)  # k-diffusion's first draw
    s0, sh0 = case.sigmas[0], float(sched._host_sigmas[0])
    x = x + case.s_noise * eps0 * math.sqrt(max(sh0**2 - s0**2, 0.0))
    for t in sched.timesteps:
        sched.scale_model_input(x, t)
        sigma = sched._call_sigma(sched.step_index)
        denoised = torch.from_numpy(stand_in_model(x.numpy(), sigma, case.model))
        x = sched.step((x - denoised) / sigma, t, x, generator=generator).prev_sample
    return x


def theirs(case: ks.Churn, x: torch.Tensor) -> torch.Tensor:
    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(stand_in_model(x.numpy(), float(sigma[0]), case.model))

    torch.manual_seed(case.seed)
    s_tmax = math.inf if case.s_tmax is None else case.s_tmax
    sigmas = torch.tensor(case.sigmas, dtype=torch.float64)
    return sampling.sample_dpm_2(
        model, x, sigmas, disable=True, s_churn=case.s_churn, s_tmin=case.s_tmin, s_tmax=s_tmax, s_noise=case.s_noise
    )


@example(ks.Churn([14.6, 5.0, 1.0, 0.0], 0.0, 0.0, None, 1.0, 0.1, 0))  # deterministic, ends in 0 (Euler last)
@example(ks.Churn([14.6, 5.0, 1.0, 0.3], 1.0, 0.0, None, 1.0, 0.5, 1))  # final sigma not 0: DPM-2 last
@example(ks.Churn([3.0, 2.0, 1.0, 0.5, 0.0], 2.0, 0.5, 2.5, 1.003, 0.1, 2))  # churn window excludes some steps
@example(ks.Churn([27.0, 23.625], 0.0, 0.0, None, 1.0, 0.0, 0))  # above the training range: t = 999 twice
@given(ks.churn_settings())
def test_sample_dpm_2(case: ks.Churn) -> None:
    state = torch.random.get_rng_state()
    try:
        x = torch.from_numpy(np.random.default_rng(case.seed).standard_normal((2, 3)) * case.sigmas[0])
        want = theirs(case, x.clone())
        got = ours(case, x.clone())
    finally:
        torch.random.set_rng_state(state)
    note(f"ours={got.tolist()}\nk-diffusion={want.tolist()}")
    scale = max(1.0, float(x.abs().max()))
    err = float((got - want).abs().max())
    assert err <= 1e-12 * scale, (
        f"sample_dpm_2 and KDPM2DiscreteScheduler differ by {err:.3g} "
        f"[set_timesteps(sigmas={case.sigmas}), s_churn={case.s_churn}, s_tmin={case.s_tmin}, "
        f"s_tmax={case.s_tmax}, s_noise={case.s_noise}]"
    )

"""Our scheduler against diffusers' on random diffusers-supported configurations.

Ours is built with ``round_karras_timesteps=True`` for Karras (diffusers' rounding); diffusers keeps
float32 tables, so results agree to float32 rounding relative to the operands. Configurations where
diffusers' trailing spacing yields ``n + 1`` timesteps are a known deviation, checked on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, note

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import strategies as ks
from kdpm2_spec.conformance import stand_in_model
from kdpm2_spec.reference import model_output_for

diffusers = pytest.importorskip("diffusers")

RTOL = 1e-5


def pair(config: dict, steps: int) -> tuple[KDPM2DiscreteScheduler, object]:
    theirs = diffusers.KDPM2DiscreteScheduler(**config)
    ours = KDPM2DiscreteScheduler(**config, round_karras_timesteps=bool(config.get("use_karras_sigmas")))
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    return ours, theirs


def close(what: str, got: torch.Tensor, want: torch.Tensor, scale: float, call: str) -> None:
    got64, want64 = got.double(), want.double()
    err = float((got64 - want64).abs().max()) if got64.numel() else 0.0
    assert err <= RTOL * max(1.0, scale), f"{what} differs by {err:.3g} (scale {scale:.3g}) [{call}]"


@example(ks.Loop({"use_karras_sigmas": True}, 50, None, 0.1, 0, (2, 3)))
@example(ks.Loop({"use_karras_sigmas": True}, 100, None, 0.1, 0, (2, 3)))
@example(ks.Loop({"timestep_spacing": "leading", "steps_offset": 1}, 25, 5, 0.1, 0, (2, 3)))
@example(ks.Loop({}, 1, None, 0.0, 0, (2, 3)))
@example(ks.Loop({"beta_schedule": "squaredcos_cap_v2"}, 25, None, 0.1, 0, (2, 3)))
@example(ks.Loop({"prediction_type": "v_prediction", "use_exponential_sigmas": True}, 30, 3, 0.5, 1, (2, 3)))
@example(ks.Loop({"trained_betas": ks.linear_betas(0.000667, 0.02469, 1000)}, 2, None, 0.0, 0, (2, 3)))  # sigma_max 400
@given(ks.loops(ks.DIFFUSERS_ARGS))
def test_same_as_diffusers(case: ks.Loop) -> None:
    ours, theirs = pair(case.config, case.steps)
    call = f"KDPM2DiscreteScheduler(**{case.config!r}).set_timesteps({case.steps})"
    assume(len(theirs.timesteps) == len(ours.timesteps))  # diffusers' trailing n + 1: see below
    close("timesteps", ours.timesteps, theirs.timesteps, 999.0, call)
    close("sigmas", ours.sigmas, theirs.sigmas, float(theirs.sigmas.max()), call)
    close("sigmas_interpol[1:]", ours.sigmas_interpol[1:], theirs.sigmas_interpol[1:], float(theirs.sigmas.max()), call)
    close("init_noise_sigma", ours.init_noise_sigma, theirs.init_noise_sigma, float(theirs.init_noise_sigma), call)
    rng = np.random.default_rng(case.seed)
    x0, eps = rng.standard_normal(case.shape), rng.standard_normal(case.shape)
    if case.begin is None:
        x = torch.from_numpy(eps) * float(ours.init_noise_sigma)
        start = 0
    else:
        start = 2 * case.begin
        ours.set_begin_index(start)
        theirs.set_begin_index(start)
        t = theirs.timesteps[start : start + 1]
        x = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), t)
        close(
            "add_noise", ours.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), t), x, float(x.abs().max()), call
        )
    x_ours, scale = x.clone(), float(x.abs().max())
    prediction = case.config.get("prediction_type", "epsilon")
    for k in range(start, len(theirs.timesteps)):
        t_ours, t_theirs = ours.timesteps[k], theirs.timesteps[k]
        theirs_in = theirs.scale_model_input(x, t_theirs)
        close(f"scale_model_input at call {k}", ours.scale_model_input(x_ours, t_ours), theirs_in, scale, call)
        table = theirs.sigmas if theirs.state_in_first_order else theirs.sigmas_interpol
        sigma = float(table[theirs.step_index])
        out = model_output_for(stand_in_model(x.numpy(), sigma, case.model), x.numpy(), sigma, prediction)
        scale = max(scale, sigma * float(np.abs(out).max()))
        want = theirs.step(torch.from_numpy(out), t_theirs, x)
        got = ours.step(torch.from_numpy(out), t_ours, x_ours)
        close(f"step at call {k}: prev_sample", got.prev_sample, want.prev_sample, scale, call)
        close(
            f"step at call {k}: pred_original_sample", got.pred_original_sample, want.pred_original_sample, scale, call
        )
        x, x_ours = want.prev_sample, got.prev_sample
    note(f"final: {x.tolist()}")


@pytest.mark.parametrize("steps", [61, 103])
def test_diffusers_trailing_overshoots_where_we_do_not(steps: int) -> None:
    ours, theirs = pair({"timestep_spacing": "trailing"}, steps)
    assert len(ours.timesteps) == 2 * steps - 1
    assert len(theirs.timesteps) == 2 * (steps + 1) - 1 and float(theirs.timesteps[-1]) == -1.0


def test_diffusers_karras_timesteps_rise_at_50_steps_where_ours_do_not() -> None:
    theirs = diffusers.KDPM2DiscreteScheduler(use_karras_sigmas=True)
    ours = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    theirs.set_timesteps(50)
    ours.set_timesteps(50)
    assert (theirs.timesteps.diff() > 0).any()
    assert not (ours.timesteps.diff() > 0).any()

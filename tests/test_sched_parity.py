"""Parity with diffusers.KDPM2DiscreteScheduler: same tables, same loops, same state machine.

Tolerances. Our tables are computed in float64 and rounded once to float32; diffusers computes
some entries in float32 (``np.linspace(..., dtype=float32)``, ``log/lerp/exp`` of float32 sigmas).
The two differ by at most a few float32 ulps (measured: 4e-7 relative), hence ``rtol=2e-6``.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from helpers_sched import (
    CONFIGS,
    PREDICTIONS,
    STEP_COUNTS,
    assert_rel_close,
    config_id,
    diffusers_kwargs,
    diffusers_scheduler,
    pair,
    run_loop,
    stand_in_model,
    unchanged,
)
from kdpm2 import KDPM2DiscreteScheduler, KDPM2DiscreteSchedulerOutput
from kdpm2_spec import Reference

TABLE_RTOL = 2e-6
LOOP_RTOL = 1e-5


def latents(dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (2, 3, 4, 4), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def first_timestep_repeats(scheduler) -> bool:
    """diffusers' ``index_for_timestep`` takes the 2nd match of a repeated first timestep (skips a step)."""
    return bool((scheduler.timesteps == scheduler.timesteps[0]).sum() > 1)


@pytest.mark.parametrize(
    "config",
    [
        ("linear", None, "linspace", 0),
        ("squaredcos_cap_v2", "karras", "trailing", 1),
        ("trained_betas", "beta", "leading", 1),
    ],
)
def test_patched_diffusers_matches_fresh(config):
    """The cheap diffusers instances of the helpers equal freshly constructed ones."""
    patched = diffusers_scheduler(*config, prediction="v_prediction")
    fresh = diffusers.KDPM2DiscreteScheduler(**diffusers_kwargs(*config, prediction="v_prediction"))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(patched.config) == public(fresh.config)
    for n in (3, 25):
        patched.set_timesteps(n)
        fresh.set_timesteps(n)
        for name in ("timesteps", "sigmas", "betas", "alphas_cumprod"):
            assert torch.equal(getattr(patched, name), getattr(fresh, name)), name


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_tables_equal_diffusers(config):
    theirs, ours = pair(*config)
    assert torch.equal(ours.betas, theirs.betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    assert len(ours) == len(theirs) == 1000
    assert ours.order == theirs.order == 2
    for n in STEP_COUNTS:
        call = f"[set_timesteps({n}) with {config_id(config)}]"
        theirs.set_timesteps(n)
        ours.set_timesteps(n)
        assert ours.num_inference_steps == theirs.num_inference_steps == n, call
        assert ours.timesteps.dtype == theirs.timesteps.dtype, f"timesteps dtype {call}"
        assert ours.timesteps.shape == theirs.timesteps.shape == (2 * n - 1,), f"timesteps shape {call}"
        torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=TABLE_RTOL, atol=1e-5, msg=call)
        assert ours.sigmas.dtype == theirs.sigmas.dtype == torch.float32
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=TABLE_RTOL, atol=0, msg=call)
        # diffusers' entry 0 is NaN (log(0) lerp, diffusers #14368); ours is s_0 and never read
        assert torch.isnan(theirs.sigmas_interpol[0]) or n == 1000
        torch.testing.assert_close(
            ours.sigmas_interpol[1:], theirs.sigmas_interpol[1:], rtol=TABLE_RTOL, atol=0, msg=call
        )
        torch.testing.assert_close(ours.init_noise_sigma, theirs.init_noise_sigma, rtol=TABLE_RTOL, atol=0, msg=call)
        for name in ("timesteps", "sigmas", "sigmas_interpol"):
            assert torch.isfinite(getattr(ours, name)).all(), f"{name} has NaN/inf {call}"


def _exact_diffusers(config, prediction: str, n: int, x: torch.Tensor) -> torch.Tensor:
    """diffusers' loop in float64 on float64 tables (the spec's): its result without table rounding."""
    theirs = diffusers_scheduler(*config, prediction=prediction)
    ref = Reference(**diffusers_kwargs(*config, prediction=prediction), round_karras_timesteps=config[1] == "karras")
    ref.set_timesteps(n)
    theirs.set_timesteps(n)
    timesteps = theirs.timesteps
    theirs.sigmas = torch.from_numpy(ref.sigmas)
    theirs.sigmas_interpol = torch.from_numpy(ref.sigmas_interpol)
    sample = x.double() * float(ref.init_noise_sigma)
    for t in timesteps:
        sample = theirs.step(stand_in_model(theirs.scale_model_input(sample, t), t), t, sample).prev_sample
    return sample


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_float32_loop_equals_diffusers(config, prediction):
    """Whole denoising loops agree to 1e-5 (relative to the sample's scale).

    One exception, checked differently: ``squaredcos_cap_v2`` starts at sigma 2.0e4, and a few
    steps from there cancel terms 1e4 times larger than the result, so diffusers' own float32
    table rounding moves its output by up to 2% (v_prediction). There ours must be at least as
    close as diffusers to diffusers' loop run on exact (float64) tables.
    """
    x = latents()
    for n in STEP_COUNTS:
        theirs, ours = pair(*config, prediction=prediction)
        theirs.set_timesteps(n)
        if first_timestep_repeats(theirs):
            continue  # diffusers skips the first step and ends in NaN: test_repeated_first_timestep
        expected, expected_x0 = run_loop(theirs, n, x)
        actual, actual_x0 = run_loop(ours, n, x)
        assert actual.dtype == torch.float32
        scale = expected.abs().max()
        err = float((actual - expected).abs().max() / scale)
        if err <= LOOP_RTOL:
            for i, (a, e) in enumerate(zip(actual_x0, expected_x0, strict=True)):
                # x0 is a cancellation of terms of the latents' scale (v_prediction): measure it on that scale
                x0_err = float((a - e).abs().max() / max(e.abs().max(), scale, 1.0))
                assert x0_err <= LOOP_RTOL, f"pred_original_sample[{i}] n={n}: {x0_err:.3g}"
            continue
        assert config[0] == "squaredcos_cap_v2", f"loop n={n}: relative error {err:.3g} > {LOOP_RTOL}"
        exact = _exact_diffusers(config, prediction, n, x)
        ours_err = float((actual.double() - exact).abs().max() / exact.abs().max())
        theirs_err = float((expected.double() - exact).abs().max() / exact.abs().max())
        assert ours_err <= max(theirs_err, LOOP_RTOL), f"n={n}: ours {ours_err:.3g} vs diffusers {theirs_err:.3g}"


LOW_PRECISION_CONFIGS = [
    ("scaled_linear", None, "linspace", 0),
    ("scaled_linear", "karras", "leading", 1),
    ("linear", "exponential", "trailing", 0),
    ("trained_betas", "beta", "linspace", 1),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("config", LOW_PRECISION_CONFIGS, ids=config_id)
def test_low_precision_loop(config, prediction, dtype):
    """fp16/bf16 loops: ours stays in the dtype, and is at least as accurate as diffusers.

    diffusers evaluates ``(x - (x - sigma*eps)) / sigma`` in the tensor dtype, a cancellation; ours
    computes each call in float32 and rounds once. Accuracy is measured against diffusers' float32
    loop: ours must be within 3 units of the dtype's epsilon (relative to the sample's scale) per
    model call, and no worse than diffusers' own low-precision loop (plus one epsilon).
    """
    x = latents()
    eps = torch.finfo(dtype).eps
    for n in (2, 10, 25):
        reference, _ = run_loop(pair(*config, prediction=prediction)[0], n, x)
        theirs, ours = pair(*config, prediction=prediction)
        low_theirs, _ = run_loop(theirs, n, x.to(dtype))
        low_ours, _ = run_loop(ours, n, x.to(dtype))
        assert low_ours.dtype == dtype
        scale = reference.abs().max()
        ours_err = float((low_ours.float() - reference).abs().max() / scale)
        theirs_err = float((low_theirs.float() - reference).abs().max() / scale)
        assert ours_err <= 3 * eps * (2 * n - 1), f"n={n}: {ours_err:.3g}"
        assert ours_err <= theirs_err + eps, f"n={n}: ours {ours_err:.3g} vs diffusers {theirs_err:.3g}"


def test_repeated_first_timestep():
    """cosine + rounded Karras repeats timestep 999: diffusers skips a step and ends in NaN; ours runs
    every call (a view of ``timesteps`` is located by its position) and equals diffusers' loop with a
    begin index."""
    config = ("squaredcos_cap_v2", "karras", "linspace", 0)
    theirs, ours = pair(*config)
    x = latents()
    theirs.set_timesteps(10)
    assert first_timestep_repeats(theirs)
    result, _ = run_loop(theirs, 10, x)
    assert torch.isnan(result).any()
    plain, _ = run_loop(ours, 10, x)
    assert torch.isfinite(plain).all()
    # with the begin index set, as pipelines do, both run every step and agree
    for scheduler in (theirs, ours):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(0)
    outs = []
    for scheduler in (theirs, ours):
        sample = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_output = stand_in_model(scheduler.scale_model_input(sample, t), t)
            sample = scheduler.step(model_output, t, sample).prev_sample
        outs.append(sample)
    assert torch.isfinite(outs[1]).all()
    assert_rel_close(outs[1], outs[0], LOOP_RTOL, "begin_index=0 loop")
    assert torch.equal(plain, outs[1]), "a plain loop is the begin_index=0 loop"


# -- deliberate deviations --------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 50, 100])
def test_karras_timesteps_not_rounded_by_default(n):
    """Ours gives the unrounded ``sigma_to_t`` of each Karras sigma; ``round_karras_timesteps`` is diffusers'."""
    theirs = diffusers_scheduler("scaled_linear", "karras", "linspace", 0)
    theirs.set_timesteps(n)
    default = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True)
    default.set_timesteps(n)
    rounded = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True, round_karras_timesteps=True)
    rounded.set_timesteps(n)
    torch.testing.assert_close(rounded.timesteps, theirs.timesteps, rtol=TABLE_RTOL, atol=1e-5)
    main = default.timesteps[0::2]
    assert not torch.equal(main, main.round()), "default Karras timesteps are fractional"
    torch.testing.assert_close(main.round(), theirs.timesteps[0::2], rtol=0, atol=0)
    assert (default.timesteps.diff() < 0).all(), "unrounded timesteps strictly decrease"
    torch.testing.assert_close(default.sigmas, theirs.sigmas, rtol=TABLE_RTOL, atol=0)
    if n >= 50:
        assert not (theirs.timesteps.diff() < 0).all(), "diffusers' rounded timesteps repeat (#5746)"


@pytest.mark.parametrize("n", [61, 103])
def test_trailing_gives_n_timesteps(n):
    """diffusers' ``np.arange(T, 0, -T/n)`` gives n + 1 steps (the last one -1); ours always n."""
    theirs = diffusers_scheduler("linear", None, "trailing", 0)
    theirs.set_timesteps(n)
    ours = KDPM2DiscreteScheduler(timestep_spacing="trailing")
    ours.set_timesteps(n)
    assert len(theirs.timesteps) == 2 * (n + 1) - 1
    assert float(theirs.timesteps[-1]) == -1.0
    assert len(ours.timesteps) == 2 * n - 1
    assert float(ours.timesteps.min()) >= 0
    torch.testing.assert_close(ours.timesteps[0::2], theirs.timesteps[0 : 2 * n : 2], rtol=0, atol=0)


# -- step outputs and state -------------------------------------------------------------------


def test_step_outputs_both_ways():
    theirs, ours = pair("scaled_linear", None, "leading", 1, "v_prediction")
    for s in (theirs, ours):
        s.set_timesteps(4)
    x = latents() * ours.init_noise_sigma
    t = ours.timesteps[0]
    model_output = stand_in_model(ours.scale_model_input(x, t), t)
    with unchanged(x, model_output):
        out = ours.step(model_output, t, x)
    expected = theirs.step(model_output, theirs.timesteps[0], x)
    assert isinstance(out, KDPM2DiscreteSchedulerOutput)
    torch.testing.assert_close(out.prev_sample, expected.prev_sample, rtol=LOOP_RTOL, atol=1e-6)
    torch.testing.assert_close(out.pred_original_sample, expected.pred_original_sample, rtol=LOOP_RTOL, atol=1e-6)
    assert out[0] is out.prev_sample and out["prev_sample"] is out.prev_sample
    assert out[1] is out.pred_original_sample
    assert out.to_tuple() == (out.prev_sample, out.pred_original_sample)
    assert list(out.keys()) == ["prev_sample", "pred_original_sample"] == list(expected.keys())
    assert len(out) == 2
    ours.set_timesteps(4)
    as_tuple = ours.step(model_output, t, x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], out.prev_sample) and torch.equal(as_tuple[1], out.pred_original_sample)


def test_state_machine_matches_diffusers():
    """step_index, state_in_first_order and scale_model_input move in lockstep with diffusers."""
    theirs, ours = pair("linear", "exponential", "linspace", 0)
    for s in (theirs, ours):
        s.set_timesteps(5)
        assert s.step_index is None and s.begin_index is None and s.state_in_first_order
    sample = latents() * ours.init_noise_sigma
    for i, t in enumerate(ours.timesteps):
        with unchanged(sample):
            scaled = ours.scale_model_input(sample, t)
        torch.testing.assert_close(scaled, theirs.scale_model_input(sample, theirs.timesteps[i]), rtol=1e-6, atol=0)
        assert ours.step_index == theirs.step_index == i
        assert ours.state_in_first_order == theirs.state_in_first_order == (i % 2 == 0)
        model_output = stand_in_model(scaled, t)
        sample_next = ours.step(model_output, t, sample).prev_sample
        theirs.step(model_output, theirs.timesteps[i], sample)
        sample = sample_next
    assert ours.step_index == theirs.step_index == len(ours.timesteps)


def test_index_for_timestep_matches_diffusers():
    """Every table entry, as tensor and float, with and without ``schedule_timesteps`` (repeats too)."""
    for config, n in [(("linear", None, "linspace", 0), 10), (("scaled_linear", "karras", "linspace", 0), 100)]:
        theirs, ours = pair(*config)
        theirs.set_timesteps(n)
        ours.set_timesteps(n)
        for i in range(len(ours.timesteps)):
            expected = theirs.index_for_timestep(theirs.timesteps[i])
            assert ours.index_for_timestep(ours.timesteps[i]) == expected, f"timesteps[{i}]"
            assert ours.index_for_timestep(ours.timesteps[i].clone()) == expected
            assert ours.index_for_timestep(float(ours.timesteps[i])) == expected
            assert ours.index_for_timestep(theirs.timesteps[i], theirs.timesteps) == expected
        assert len(set(ours.timesteps.tolist())) < len(ours.timesteps) or n < 50


def test_set_begin_index():
    ours = KDPM2DiscreteScheduler()
    ours.set_timesteps(5)
    ours.set_begin_index(4)
    assert ours.begin_index == 4 and ours.step_index is None
    sample = latents()
    ours.scale_model_input(sample, ours.timesteps[0])  # the timestep is ignored once a begin index is set
    assert ours.step_index == 4
    ours.set_timesteps(5)
    assert ours.begin_index is None, "set_timesteps resets the begin index, as diffusers"
    ours.set_begin_index()
    assert ours.begin_index == 0


# -- add_noise ----------------------------------------------------------------------------------


def test_add_noise_training_lookup():
    """No begin index (training): one sigma per batch item, looked up from its timestep."""
    theirs, ours = pair("scaled_linear", None, "linspace", 0)
    for s in (theirs, ours):
        s.set_timesteps(10)
    x, noise = latents(), latents(seed=1)
    for idx in ([0, 5], [18, 3]):
        t = ours.timesteps[idx]
        with unchanged(x, noise, t):
            out = ours.add_noise(x, noise, t)
        torch.testing.assert_close(out, theirs.add_noise(x, noise, theirs.timesteps[idx]), rtol=1e-6, atol=0)


def test_add_noise_img2img_and_inpainting():
    """Begin index set: its sigma before the first call (img2img), the current call's after (inpainting)."""
    theirs, ours = pair("scaled_linear", "karras", "leading", 1)
    x, noise = latents(), latents(seed=1)
    for s in (theirs, ours):
        s.set_timesteps(10)
        s.set_begin_index(6)
    t = ours.timesteps[6:7].repeat(2)
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), rtol=TABLE_RTOL, atol=1e-6)
    sample = ours.add_noise(x, noise, t)
    for k in range(3):
        tk = ours.timesteps[6 + k]
        model_output = stand_in_model(sample, tk)
        next_sample = ours.step(model_output, tk, sample).prev_sample
        theirs.step(model_output, tk, sample)
        sample = next_sample
        with unchanged(x, noise):
            got = ours.add_noise(x, noise, tk.reshape(1))
        torch.testing.assert_close(got, theirs.add_noise(x, noise, tk.reshape(1)), rtol=TABLE_RTOL, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_add_noise_dtypes(dtype):
    theirs, ours = pair("linear", None, "linspace", 0)
    for s in (theirs, ours):
        s.set_timesteps(7)
    x, noise = latents(dtype), latents(dtype, seed=1)
    t = ours.timesteps[2:4]
    out = ours.add_noise(x, noise, t)
    assert out.dtype == dtype
    torch.testing.assert_close(out, theirs.add_noise(x, noise, t))


def test_float64_tables_no_nan_across_sizes():
    """No NaN or inf in any table, including the single-step and the full-length schedules."""
    ours = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    for n in (1, 2, 999, 1000):
        ours.set_timesteps(n)
        for name in ("timesteps", "sigmas", "sigmas_interpol", "log_sigmas"):
            assert torch.isfinite(getattr(ours, name)).all(), f"{name} [set_timesteps({n})]"
        assert np.isfinite(float(ours.init_noise_sigma))

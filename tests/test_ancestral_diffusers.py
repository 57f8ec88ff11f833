"""KDPM2AncestralDiscreteScheduler against diffusers 0.42's class of the same name.

Same seeds, same noise: our draws are diffusers' ``randn_tensor`` draws (one generator, a list per
batch item, a list of one), consumed on the same calls. With diffusers' settings the schedules
agree to float32 rounding, except ``sigma_down``, which diffusers computes as ``sqrt(s_next^2 -
sigma_up^2)`` in float32: its error there is bounded by the cancellation (``eps32 s_next^2 /
sigma_down``), and for ``squaredcos_cap_v2`` at 3 to 8 steps the difference goes negative and
diffusers returns NaN (#14213) where ours is finite. diffusers' ``step`` fed our tables gives our
samples to float32 rounding, so the step arithmetic agrees; whole loops agree to the table
differences (measured below 1e-4 relative on the grid here).
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from helpers_pipelines import tiny_pipeline, tiny_unet
from helpers_sched import TRAINED_BETAS, one_thread
from kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from kdpm2 import noise as noise_sources
from kdpm2_spec import AncestralReference

F32_EPS = float(np.finfo(np.float32).eps)
BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas")
FAMILIES = (None, "karras", "exponential", "beta")
SPACINGS = (("linspace", 0), ("leading", 1), ("trailing", 0))
STEPS = (1, 2, 3, 5, 10, 25)
LOOP_RTOL = 2e-5
"""Whole loops, ours against diffusers where diffusers is finite: the largest difference of the final
samples over the largest sample magnitude of the loop (float32 rounding scales with the operands),
beyond what diffusers' float32 ``sigma_down`` cancellation explains (``cancellation``)."""


def cancellation(scheduler: Any) -> float:
    """The relative error of diffusers' float32 ``sqrt(s_next^2 - sigma_up^2)``, largest over the steps.

    Its squares carry relative errors of a few eps32 (more where ``s_next`` nears ``s`` and
    ``s^2 - s_next^2`` cancels too); the difference divides them by ``(sigma_down / s_next)^2``.
    """
    worst = 0.0
    for level in scheduler.step_levels:
        if level.sigma_mid is None:
            continue
        s, s_next = level.sigma, level.sigma_next
        amplify = s * s / ((s - s_next) * (s + s_next))
        worst = max(worst, 4 * F32_EPS * amplify * (s_next / level.sigma_down) ** 2)
    return worst


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    with one_thread():
        yield


def kwargs_of(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> dict:
    out: dict[str, Any] = {"timestep_spacing": spacing, "steps_offset": offset, "prediction_type": prediction}
    out["beta_schedule"] = "linear" if beta == "trained_betas" else beta
    if beta == "trained_betas":
        out["trained_betas"] = TRAINED_BETAS.tolist()
    if family is not None:
        out[f"use_{family}_sigmas"] = True
    return out


@functools.cache
def _diffusers_base(beta: str) -> Any:
    kw = kwargs_of(beta, None, "linspace", 0)
    return diffusers.KDPM2AncestralDiscreteScheduler(**kw)


def pair(beta: str, family: str | None, spacing: str, offset: int, prediction: str = "epsilon") -> tuple[Any, Any]:
    """(diffusers', ours) for one option combination (diffusers' built once per beta schedule, then patched)."""
    theirs = copy.deepcopy(_diffusers_base(beta))
    kw = kwargs_of(beta, family, spacing, offset, prediction)
    theirs.register_to_config(**{k: v for k, v in kw.items() if k not in ("trained_betas", "beta_schedule")})
    ours = KDPM2AncestralDiscreteScheduler(**kw, round_karras_timesteps=family == "karras")
    return theirs, ours


def model(x: torch.Tensor, t: Any) -> torch.Tensor:
    return 0.3 * x + 0.1 * torch.sin(torch.as_tensor(float(t), dtype=x.dtype))


def loop(scheduler: Any, n: int, x: torch.Tensor, generator: Any) -> torch.Tensor:
    return scaled_loop(scheduler, n, x, generator)[0]


def scaled_loop(scheduler: Any, n: int, x: torch.Tensor, generator: Any) -> tuple[torch.Tensor, float]:
    """The final sample of a pipeline's loop, and the largest sample magnitude on the way (float32 errors scale with it)."""
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps
    if bool(
        (timesteps == timesteps[0]).sum() > 1
    ):  # a repeated first timestep: start at call 0 (see kdpm2_spec.invariants)
        scheduler.set_begin_index(0)
    sample = x * scheduler.init_noise_sigma
    scale = float(sample.abs().max())
    for t in timesteps:
        output = model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(output, t, sample, generator=generator).prev_sample
        scale = max(scale, float(sample.abs().max()))
    return sample, scale


# -- the noise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["one", "list", "list of one", "none"])
def test_noise_is_randn_tensor(kind: str, dtype: torch.dtype) -> None:
    """``kdpm2.noise.randn`` draws diffusers' ``randn_tensor`` numbers, and leaves the generators alike."""
    shape = (3, 4, 5, 5)
    like = torch.empty(shape, dtype=dtype)

    def gens() -> Any:
        if kind == "one":
            return torch.Generator().manual_seed(5)
        if kind == "none":
            torch.manual_seed(5)
            return None
        count = 3 if kind == "list" else 1
        return [torch.Generator().manual_seed(5 + i) for i in range(count)]

    theirs_gen, ours_gen = gens(), None
    theirs = randn_tensor(shape, generator=theirs_gen, dtype=dtype, device=torch.device("cpu"))
    ours_gen = gens()
    ours = noise_sources.randn(like.shape, dtype, like.device, noise_sources.generators(ours_gen, like))
    assert torch.equal(theirs, ours), kind
    if isinstance(theirs_gen, torch.Generator):
        assert torch.equal(theirs_gen.get_state(), ours_gen.get_state())  # type: ignore[union-attr]


# -- schedules -----------------------------------------------------------------------------------

GRID = [
    (beta, family, spacing, offset, n)
    for beta, family, (spacing, offset), n in itertools.product(BETAS, FAMILIES, SPACINGS, STEPS)
    if not (family == "beta" and beta == "trained_betas")
]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@pytest.mark.parametrize(("beta", "family", "spacing", "offset", "n"), GRID, ids=str)
def test_tables_agree_with_diffusers_where_it_is_finite(beta, family, spacing, offset, n) -> None:
    """Per step: sigmas to float32 rounding; sigma_up, sigma_down and the midpoint (and its timestep) to the error
    of diffusers' float32 formulas, given how far its sigmas are from ours. Only cos at 3-8 steps is NaN there."""
    theirs, ours = pair(beta, family, spacing, offset)
    theirs.set_timesteps(n)
    ours.set_timesteps(n)
    assert len(ours.timesteps) == len(theirs.timesteps)
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down", "timesteps"):
        assert _finite(getattr(ours, name)), f"ours: {name} not finite"
    np.testing.assert_allclose(ours.sigmas.numpy(), theirs.sigmas.numpy(), rtol=2e-6)
    main_t = ours.timesteps[0::2].double().numpy()
    np.testing.assert_allclose(main_t, theirs.timesteps[0::2].double().numpy(), rtol=2e-6, atol=1e-4)
    d_sig, d_up, d_down = (getattr(theirs, name).double().tolist() for name in ("sigmas", "sigmas_up", "sigmas_down"))
    d_mid, d_t = theirs.sigmas_interpol.double().tolist(), theirs.timesteps.double().tolist()
    calls = len(ours.timesteps)
    # diffusers' NaNs have one cause (#14213): its float32 s_next^2 - sigma_up^2 is negative (NaN sigma_down)
    # or rounds to 0 (the log-lerp of its midpoint is then -inf - -inf). Which steps that hits depends on
    # the last bit of its float32 sigmas, so on the CPU: with squaredcos_cap_v2 on any, and e.g. with
    # these trained betas at 2 steps on an Intel AVX-512 Xeon (not on an AMD EPYC).
    for k in range(calls):
        if not (np.isfinite(d_down[k]) and np.isfinite(d_mid[k])):
            assert not d_down[k] > 0, f"diffusers' NaN at call {k} without its sigma_down rounding to 0 or below"
    for i, level in enumerate(ours.step_levels[:-1]):  # the last step goes to 0: no split to compare
        k = 2 * i  # diffusers alternates: step i's first call
        s, s_next = level.sigma, level.sigma_next
        if not (np.isfinite(d_down[k]) and np.isfinite(d_mid[k])):
            continue  # diffusers' NaN (or its log(0) lerp when its sigma_down rounds to 0)
        # relative distance of diffusers' ends from ours, then what its float32 formulas add
        rho = abs(d_sig[k] - s) / s + abs(d_sig[k + 1] - s_next) / s_next + 4 * F32_EPS
        amplify = s * s / ((s - s_next) * (s + s_next))  # of s^2 - s_next^2 under sigma_up's square root
        where = f"step {i}: sigma {s:.6g} -> {s_next:.6g}"
        assert abs(d_up[k] - level.sigma_up) <= 2 * rho * amplify * level.sigma_up, f"sigma_up, {where}"
        # sqrt(s_next^2 - sigma_up^2): an error rho of the squares is amplified by s_next^2 / sigma_down^2
        down_rel = 2 * rho * amplify * s_next**2 / level.sigma_down**2
        assert abs(d_down[k] - level.sigma_down) <= down_rel * level.sigma_down, f"sigma_down, {where}"
        mid_rel = 0.5 * (down_rel + rho) + 4 * F32_EPS
        assert level.sigma_mid is not None
        assert abs(d_mid[k] - level.sigma_mid) <= mid_rel * level.sigma_mid, f"midpoint, {where}"
        # the midpoint's timestep moves by its relative error over d log(sigma) / dt (at least 0.002 per step)
        assert abs(d_t[k + 1] - float(ours.timesteps[k + 1])) <= mid_rel / 0.002 + 2e-3, f"midpoint timestep, {where}"


NAN_ALWAYS = (2, 3)
"""Step counts where diffusers 0.42.1's squaredcos_cap_v2 tables are NaN on every CPU measured, linspace and trailing.

Its float32 ``s_next^2 - sigma_up^2`` goes negative (#14213) or rounds to 0, whose log makes a NaN
midpoint. Where else that happens depends on the last bit of its float32 sigmas, so on the CPU (for
1 to 100 steps, linspace: 2-10 on an AMD EPYC, 2-9 on an Intel Xeon with AVX-512; trailing: 2-7 and 9,
against 2-5, 7 and 10)."""


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_squaredcos_is_finite_where_diffusers_is_nan(spacing: str) -> None:
    """#14213: diffusers' output is all NaN for squaredcos_cap_v2 at few steps; ours is finite and the reference's."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nan = []
    for n in range(1, 13):
        theirs, ours = pair("squaredcos_cap_v2", None, spacing, 0)
        bad = loop(theirs, n, x, torch.Generator().manual_seed(1))
        good = loop(ours, n, x, torch.Generator().manual_seed(1))
        assert _finite(good), n
        ref = AncestralReference(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing)
        ref.set_timesteps(n)
        assert np.allclose(ours.sigmas_down.numpy(), ref.sigmas_down, rtol=2e-7, atol=0), n
        if not _finite(bad):
            nan.append(n)
            # step i's sigma_down is entry 2i - 1 of diffusers' layout (entry 0 for step 0); the last step's is 0
            down = theirs.sigmas_down[[0, *range(1, 2 * n - 4, 2)]].double()
            assert not bool((down > 0).all()), f"{n} steps: NaN without a sigma_down of 0 or NaN (#14213's cause)"
    assert set(NAN_ALWAYS) <= set(nan), nan


# -- loops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("beta", "family", "spacing", "offset", "n"), GRID[::2], ids=str)
def test_same_seeds_give_diffusers_numbers(beta, family, spacing, offset, n, prediction) -> None:
    """Same generator seeds: the same draws on the same calls (generators end alike) and, where diffusers
    is finite, the same final sample to its table rounding."""
    theirs, ours = pair(beta, family, spacing, offset, prediction)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(n))
    for kind in ("one", "list"):
        gens = [[torch.Generator().manual_seed(10 + i) for i in range(2)] for _ in range(2)]
        g_theirs, g_ours = (g if kind == "list" else g[0] for g in gens)
        want, scale = scaled_loop(theirs, n, x, g_theirs)
        got = loop(ours, n, x, g_ours)
        for a, b in zip(gens[0], gens[1], strict=True):
            assert torch.equal(a.get_state(), b.get_state()), f"{kind}: the generators were drawn differently"
        if _finite(want):
            error = float((got - want).abs().max()) / scale
            bound = LOOP_RTOL + 4 * cancellation(ours)
            assert error <= bound, f"{kind}: {error:.3g} x the largest sample from diffusers' sample (> {bound:.3g})"


@pytest.mark.parametrize(
    ("beta", "family", "n"), [("scaled_linear", None, 2), ("scaled_linear", "karras", 25), ("linear", None, 10)]
)
def test_diffusers_step_on_our_tables_is_our_step(beta, family, n) -> None:
    """diffusers' ``step`` and ``scale_model_input`` reading our tables give our samples to float32 rounding:
    the step arithmetic agrees, and the loop differences come from the tables alone."""
    theirs, ours = pair(beta, family, "linspace", 0)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        setattr(theirs, name, getattr(ours, name).clone())
    theirs.timesteps = ours.timesteps.clone()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * ours.init_noise_sigma
    a, b = x.clone(), x.clone()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for t in ours.timesteps:
        a = theirs.step(model(theirs.scale_model_input(a, t), t), t, a, generator=g1).prev_sample
        b = ours.step(model(ours.scale_model_input(b, t), t), t, b, generator=g2).prev_sample
        scale = float(a.abs().max())
        assert float((a - b).abs().max()) <= 8 * F32_EPS * max(scale, 1.0) * (1 + float(ours.sigmas.max()))


def test_batch_of_generators_is_each_item_alone() -> None:
    """One generator per batch item: each item equals its run alone (bit for bit), for ours and diffusers."""
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    for make in (
        lambda: pair("scaled_linear", "karras", "linspace", 0)[1],
        lambda: pair("scaled_linear", None, "linspace", 0)[0],
    ):
        batch = loop(make(), 10, x, [torch.Generator().manual_seed(100 + i) for i in range(3)])
        for i in range(3):
            alone = loop(make(), 10, x[i : i + 1], torch.Generator().manual_seed(100 + i))
            assert torch.equal(batch[i : i + 1], alone), f"item {i}"


def test_one_generator_is_not_batch_independent() -> None:
    """The contrast: one generator for a batch draws the batch at once, so an item differs from its run alone."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    batch = loop(KDPM2AncestralDiscreteScheduler(), 5, x, torch.Generator().manual_seed(7))
    alone = loop(KDPM2AncestralDiscreteScheduler(), 5, x[1:], torch.Generator().manual_seed(7))
    assert not torch.equal(batch[1:], alone)


# -- drop-in ---------------------------------------------------------------------------------------


def test_loads_diffusers_configs_both_ways(tmp_path) -> None:
    """from_config / save_pretrained / from_pretrained between diffusers' class and ours, and with our DPM2."""
    theirs = diffusers.KDPM2AncestralDiscreteScheduler(
        beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    ours = KDPM2AncestralDiscreteScheduler.from_config(theirs.config)
    for key in ("beta_schedule", "timestep_spacing", "steps_offset", "num_train_timesteps"):
        assert ours.config[key] == theirs.config[key]
    ours.save_pretrained(tmp_path)
    back = diffusers.KDPM2AncestralDiscreteScheduler.from_pretrained(tmp_path)
    assert back.config.timestep_spacing == "leading"
    dpm2 = KDPM2DiscreteScheduler(s_churn=0.5)
    swapped = KDPM2AncestralDiscreteScheduler.from_config(dpm2.config)
    assert "eta" in swapped.config and swapped.config.eta == 1.0
    assert KDPM2DiscreteScheduler.from_config(swapped.config).config.s_churn == 0.5


def test_constructor_is_diffusers_then_more() -> None:
    """Diffusers' arguments first, in order, with its defaults; then ours."""
    import inspect

    theirs = list(inspect.signature(diffusers.KDPM2AncestralDiscreteScheduler.__init__).parameters.values())[1:]
    ours = list(inspect.signature(KDPM2AncestralDiscreteScheduler.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [(p.name, p.default) for p in theirs]
    assert [p.name for p in ours[len(theirs) :]] == [
        "sigma_min",
        "sigma_max",
        "sigma_interpolation",
        "discard_penultimate_sigma",
        "quantize_timesteps",
        "round_karras_timesteps",
        "eta",
        "s_noise",
        "preset",
    ]
    step = list(inspect.signature(KDPM2AncestralDiscreteScheduler.step).parameters)
    assert step[:6] == ["self", "model_output", "timestep", "sample", "generator", "return_dict"]
    assert "eta" not in step  # a pipeline would pass its DDIM eta (0.0) to a step that takes one


def test_pipeline_swap(tmp_path) -> None:
    """A Stable Diffusion pipeline (tiny, random) runs with our scheduler swapped in from diffusers' config,
    gives the UNet the same timesteps and lands near diffusers' result with the same generator."""
    unet = tiny_unet()
    base = diffusers.KDPM2AncestralDiscreteScheduler(
        beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    embeds = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    results = {}
    for name, scheduler in (("diffusers", base), ("kdpm2", KDPM2AncestralDiscreteScheduler.from_config(base.config))):
        pipe = tiny_pipeline(scheduler)
        seen: list[float] = []

        def record(module: Any, args: tuple, kwargs: dict, seen: list[float] = seen) -> None:
            seen.append(float(args[1]))

        handle = unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            out = pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=torch.zeros_like(embeds),
                num_inference_steps=6,
                generator=[torch.Generator().manual_seed(s) for s in (11, 12)],
                output_type="latent",
            ).images
        finally:
            handle.remove()
        results[name] = (out, seen)
    (theirs, t_theirs), (ours, t_ours) = results["diffusers"], results["kdpm2"]
    assert len(t_ours) == len(t_theirs) and np.allclose(t_ours, t_theirs, rtol=1e-6, atol=1e-4), "UNet timesteps"
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-4

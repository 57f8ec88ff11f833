"""Presets against the front-ends: upstream's recorded figures, and k-diffusion's own code.

``tests/parity/`` (see its README) holds what ComfyUI and AUTOMATIC1111 feed the UNet during
DPM2 runs, recorded from their code on one machine. Every case there is compared with the
preset: each call's sigma and timestep, the input scale and divisor, and the initial-noise
factor, bit for bit where no CPU rounds them differently and otherwise within the spread measured
across CPU code paths (``helpers_parity``; ``docs/parity.md`` has the numbers). A whole
loop per preset then runs k-diffusion's ``sample_dpm_2`` on the recorded sigmas, with a model
wrapper that gives the UNet the recorded timestep, from the recorded starting noise, and checks
that a diffusers-style loop with the preset lands on the same sample.

Beyond the recorded step counts, a property test runs k-diffusion itself (``CompVisDenoiser``'s
``get_sigmas`` / ``sigma_to_t``, ``get_sigmas_karras`` / ``_exponential`` and ``sample_dpm_2``)
on the front-end's training table, which the test builds in NumPy float64 as LDM does: both run
on this machine, so they must agree bit for bit.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from k_diffusion import external, sampling

import helpers_parity as hp
from helpers_parity import figures
from helpers_pipelines import tiny_pipeline, tiny_unet
from helpers_sched import assert_rel_close, one_thread
from kdpm2 import KDPM2DiscreteScheduler, presets

SHAPE = (2, 4, 4, 4)


def preset_of(frontend: str, scheduler: str) -> str:
    return f"{frontend}/{scheduler.lower()}"


def case_ids() -> list[tuple[str, str, int]]:
    """(preset, figures label, steps) for every recorded case; A1111's "Automatic" is its Karras run."""
    scheduler_names = {
        "comfyui": ["normal", "karras", "exponential", "simple", "sgm_uniform"],
        "a1111": ["Uniform", "Karras", "Exponential"],
    }
    steps = [1, 2, 3, 5, 6, 10, 12, 14, 20, 25, 30, 50]
    out = [(preset_of(fe, s), s, n) for fe, names in scheduler_names.items() for s in names for n in steps]
    return out + [("a1111/automatic", "Karras", n) for n in steps]


def recorded(preset: str, label: str, steps: int) -> dict[str, Any]:
    frontend = presets.get(preset).frontend
    matches = [c for c in figures(frontend)["cases"] if c["scheduler"] == label and c["steps"] == steps]
    assert matches, f"tests/parity/{frontend}.json has no case ({label}, {steps})"
    return matches[0]


@functools.cache
def scheduler_for(preset: str) -> KDPM2DiscreteScheduler:
    """One scheduler per preset (each test calls ``set_timesteps``, which resets its state)."""
    return KDPM2DiscreteScheduler.from_preset(preset)


def model_calls(scheduler: KDPM2DiscreteScheduler) -> list[tuple[float, float, float]]:
    """(sigma, timestep, c_in) per model call, as a diffusers loop sees them (c_in from scale_model_input)."""
    sigmas, interpol = scheduler.sigmas.tolist(), scheduler.sigmas_interpol.tolist()
    calls, one = [], torch.ones(1, dtype=torch.float64)
    sample = one
    for k, t in enumerate(scheduler.timesteps):
        c_in = float(scheduler.scale_model_input(one, t))
        calls.append((sigmas[k] if k % 2 == 0 else interpol[k], float(t), c_in))
        sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    return calls


def check_calls(preset: str, calls: list[tuple[float, float, float]], case: dict[str, Any], where: str) -> None:
    """Each call's (sigma, timestep, c_in) against the recorded call, within the measured spread.

    Main sigmas of ``comfyui/simple`` are table entries and must be equal; a ComfyUI timestep
    may be one off only at a float32 near-tie (``hp.timestep_error``).
    """
    frontend = presets.get(preset).frontend
    spread, log_table = hp.DPM2[frontend], figures(frontend)["train_log_sigmas"]
    exact_main = presets.get(preset).rule == "simple"
    for k, ((sigma, t, c_in), (up_sigma, up_t, up_c_in)) in enumerate(zip(calls, case["calls"], strict=True)):
        allowed = 0.0 if k % 2 == 0 and exact_main else spread["sigmas" if k % 2 == 0 else "midpoints"].here()
        assert hp.within(sigma, up_sigma, int(allowed)), (
            f"call {k}: sigma {sigma!r}, but upstream has {up_sigma!r} (allowed {allowed:g} ulps) {where}"
        )
        error = hp.timestep_error(frontend, t, up_t, up_sigma, log_table, spread["timestep"].here())
        assert error is None, f"call {k}: timestep {error} {where}"
        allowed = spread["c_in"].here()
        assert hp.within(c_in, up_c_in, int(allowed)), f"call {k}: c_in {c_in!r}, upstream {up_c_in!r} {where}"
        if "c_in_divisors" in case:  # ComfyUI divides by sqrt(sigma^2 + 1)
            divisor, up_divisor = 1.0 / c_in, case["c_in_divisors"][k]
            allowed = spread["c_in_divisors"].here()
            assert hp.within(divisor, up_divisor, int(allowed)), (
                f"call {k}: divisor {divisor!r}, upstream {up_divisor!r} {where}"
            )


@pytest.mark.parametrize(("preset", "label", "steps"), case_ids(), ids=lambda v: str(v))
def test_calls_match_upstream_figures(preset, label, steps):
    case = recorded(preset, label, steps)
    frontend = presets.get(preset).frontend
    scheduler = scheduler_for(preset)
    scheduler.set_timesteps(steps)
    calls = model_calls(scheduler)
    where = f"[from_preset({preset!r}).set_timesteps({steps})]"
    assert len(calls) == case["n_calls"] == 2 * steps - 1, where
    check_calls(preset, calls, case, where)
    init, allowed = float(scheduler.init_noise_sigma), hp.DPM2[frontend]["init_noise_scale"].here()
    assert hp.within(init, case["init_noise_scale"], int(allowed)), f"init_noise_sigma {init!r} {where}"
    main = scheduler.sigmas[0 : 2 * steps : 2].tolist()
    allowed = 0.0 if presets.get(preset).rule == "simple" else hp.DPM2[frontend]["sigmas"].here()
    assert hp.max_ulps(main, case["sigmas"][:-1]) <= allowed, f"main sigmas {where}"


@pytest.mark.parametrize("frontend", ["comfyui", "a1111"])
def test_training_table_matches_upstream(frontend):
    data = figures(frontend)
    sd = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
    table = presets.training_table(f"{frontend}/karras", sd)
    spread = hp.DPM2[frontend]
    if frontend == "comfyui":  # float64 arithmetic rounded once: the same on every CPU
        assert table.sigmas.tolist() == data["train_sigmas"], "comfyui training sigmas"
        assert table.log_sigmas.tolist() == data["train_log_sigmas"], "comfyui log table"
    distance = hp.max_ulps(table.sigmas.tolist(), data["train_sigmas"])
    assert distance <= spread["train_sigmas"].here(), f"{frontend} training sigmas {distance} ulps apart"
    distance = hp.scaled_ulps(table.log_sigmas.tolist(), data["train_log_sigmas"])
    assert distance <= spread["train_log_sigmas"].here(), f"{frontend} log table {distance} ulps apart"


def eps_model(x_in: torch.Tensor, t: float) -> torch.Tensor:
    """A smooth, timestep-dependent stand-in UNet (epsilon prediction)."""
    return 0.8 * torch.tanh(x_in * (1.0 + t / 1000.0)) + 0.05 * math.sin(t / 37.0)


def start_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@torch.no_grad()
def front_end_loop(case: dict[str, Any], timesteps: list[float]) -> torch.Tensor:
    """k-diffusion's ``sample_dpm_2`` fed the front-end's float32 sigmas, starting noise and ``timesteps``.

    The timesteps are the ones the model is given (upstream's, or at a near-tie the neighbour
    this CPU's float32 rounding picks, as ``assert_timesteps`` allows); the midpoints are
    computed here, so they are upstream's within the measured spread.
    """
    sigmas = torch.tensor(case["sigmas"], dtype=torch.float32)
    calls, given = iter(case["calls"]), iter(timesteps)
    frontend = "comfyui" if "c_in_divisors" in case else "a1111"
    allowed = int(hp.DPM2[frontend]["midpoints"].here())

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        up_sigma, _, _ = next(calls)
        s = float(sigma[0])
        assert hp.within(s, up_sigma, allowed), f"sample_dpm_2 evaluated sigma {s!r}, the front-end {up_sigma!r}"
        return x - s * eps_model(x / math.sqrt(s * s + 1), next(given))

    x = sampling.sample_dpm_2(denoiser, start_noise() * case["init_noise_scale"], sigmas, disable=True)
    assert next(calls, None) is None, "sample_dpm_2 made fewer calls than the front-end"
    return x


def assert_timesteps(preset: str, seen: list[float], case: dict[str, Any], where: str) -> None:
    """Every timestep upstream's, up to the measured spread (``hp.timestep_error``)."""
    frontend = presets.get(preset).frontend
    allowed, log_table = hp.DPM2[frontend]["timestep"].here(), figures(frontend)["train_log_sigmas"]
    assert len(seen) == len(case["calls"]), where
    for k, (t, (up_sigma, up_t, _)) in enumerate(zip(seen, case["calls"], strict=True)):
        error = hp.timestep_error(frontend, t, up_t, up_sigma, log_table, allowed)
        assert error is None, f"call {k}: {error} {where}"


@torch.no_grad()
def diffusers_loop(scheduler: KDPM2DiscreteScheduler, steps: int) -> tuple[torch.Tensor, list[float]]:
    """The pipeline loop: noise times ``init_noise_sigma``, then scale, model, step."""
    scheduler.set_timesteps(steps)
    sample, seen = start_noise() * scheduler.init_noise_sigma.double(), []
    for t in scheduler.timesteps:
        seen.append(float(t))
        output = eps_model(scheduler.scale_model_input(sample, t), float(t))
        sample = scheduler.step(output, t, sample).prev_sample
    return sample, seen


LOOP_CASES = [(p, label, 25) for p, label, n in case_ids() if n == 25] + [
    ("comfyui/normal", "normal", 6),  # timestep ties
    ("comfyui/sgm_uniform", "sgm_uniform", 5),
    ("a1111/uniform", "Uniform", 1),  # one Euler step
]
"""One loop per preset at 25 steps, and a few step counts with upstream quirks."""


@pytest.mark.parametrize(("preset", "label", "steps"), LOOP_CASES, ids=lambda v: str(v))
def test_loop_lands_where_front_end_lands(preset, label, steps):
    case = recorded(preset, label, steps)
    scheduler = KDPM2DiscreteScheduler.from_preset(preset)
    actual, seen = diffusers_loop(scheduler, steps)
    assert_timesteps(preset, seen, case, f"timesteps given to the model [{preset}, {steps} steps]")
    expected = front_end_loop(case, seen)
    assert_rel_close(actual, expected, 1e-6, f"{preset}, {steps} steps: diffusers loop vs sample_dpm_2")


# -- beyond the recorded step counts: k-diffusion's own code on the front-end's table ----------


@functools.cache
def ldm_table(frontend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The front-end's (sigmas, log_sigmas), built in NumPy as LDM builds ``alphas_cumprod``."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    if frontend == "comfyui":  # float64 sigma and log, each rounded
        sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
        return torch.from_numpy(sigmas.astype(np.float32)), torch.from_numpy(np.log(sigmas).astype(np.float32))
    a = torch.from_numpy(alphas_cumprod.astype(np.float32))  # A1111: CompVisDenoiser on float32 alphas_cumprod
    sigmas = external.CompVisDenoiser(_HasAlphas(a)).sigmas
    return sigmas, sigmas.log()


class _HasAlphas(torch.nn.Module):
    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod


def k_schedule(frontend: str, rule: str) -> external.DiscreteSchedule:
    sigmas, log_sigmas = ldm_table(frontend)
    schedule = external.DiscreteSchedule(sigmas.clone(), quantize=frontend == "comfyui")
    schedule.log_sigmas = log_sigmas.clone()  # ComfyUI's log table is rounded from float64
    return schedule


def k_sigmas(frontend: str, rule: str, n: int) -> torch.Tensor:
    """The front-end's n + 1 sigmas through k-diffusion's functions, next-to-last dropped."""
    model = k_schedule(frontend, rule)
    lo, hi = float(model.sigmas[0]), float(model.sigmas[-1])
    if rule == "karras":
        sigmas = sampling.get_sigmas_karras(n + 1, lo, hi)
    elif rule == "exponential":
        sigmas = sampling.get_sigmas_exponential(n + 1, lo, hi)
    elif rule == "normal":
        sigmas = model.get_sigmas(n + 1)
    elif rule == "sgm_uniform":  # n + 2 timesteps, the t = 0 one left out
        sigmas = sampling.append_zero(model.t_to_sigma(torch.linspace(999, 0, n + 2)[:-1]))
    else:  # simple: raw entries at 999 - floor(x * 1000 / (n + 1))
        sigmas = sampling.append_zero(model.sigmas[[999 - int(x * 1000 / (n + 1)) for x in range(n + 1)]])
    return torch.cat([sigmas[:-2], sigmas[-1:]])


@example(preset="comfyui/normal", n=6)  # the 832.5 / 166.5 timestep ties
@example(preset="comfyui/normal", n=14)  # float32 linspace gives 499.49997
@example(preset="a1111/automatic", n=1)
@given(preset=st.sampled_from(presets.NAMES), n=st.integers(1, 120))
def test_schedule_equals_k_diffusion(preset, n):
    frontend, rule = presets.get(preset).frontend, presets.get(preset).rule
    model = k_schedule(frontend, rule)
    sigmas = k_sigmas(frontend, rule, n)
    recorded_calls: list[tuple[float, float]] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        recorded_calls.append((float(sigma[0]), float(model.sigma_to_t(sigma.float())[0])))
        return x * 0.5

    sampling.sample_dpm_2(denoiser, torch.ones(1, 1), sigmas, disable=True)
    scheduler = scheduler_for(preset)
    scheduler.set_timesteps(n)
    ours = [(s, t) for s, t, _ in model_calls(scheduler)]
    assert ours == recorded_calls, f"(sigma, timestep) per call differ from k-diffusion [{preset}, n={n}]"


def test_comfyui_near_ties_pick_upstream_index():
    """The calls upstream lists as float32 near-ties (832.5 -> 833, 166.5 -> 166, 499.49997 -> 499...).

    Each gives upstream's index, or its neighbour only where this CPU's float32 log may fall on
    the other side of the tie (within the measured spread, ``hp.COMFYUI_TIE_LOG``).
    """
    ties = figures("comfyui")["metadata"]["near_ties"]
    assert ties, "the figures list no near-ties"
    log_table = figures("comfyui")["train_log_sigmas"]
    for tie in ties:
        scheduler = scheduler_for(preset_of("comfyui", tie["scheduler"]))
        scheduler.set_timesteps(tie["steps"])
        got = float(scheduler.timesteps[tie["call"]])
        error = hp.timestep_error("comfyui", got, tie["chosen"], tie["sigma"], log_table, hp.COMFYUI_TIE_LOG.here())
        assert error is None, f"{tie['scheduler']} n={tie['steps']} call {tie['call']}: {error}"


@pytest.mark.parametrize(("preset", "label", "steps"), [("comfyui/normal", "normal", 6), ("a1111/karras", "Karras", 5)])
def test_cli_prints_upstream_calls(preset, label, steps, capsys):
    from kdpm2 import cli

    case = recorded(preset, label, steps)
    assert cli.main(["schedule", "--preset", preset, "--steps", str(steps), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    frontend = presets.get(preset).frontend
    allowed = hp.DPM2[frontend]["init_noise_scale"].here()
    assert hp.within(out["init_noise_scale"], case["init_noise_scale"], int(allowed)), "init_noise_scale"
    check_calls(preset, [tuple(call) for call in out["calls"]], case, f"[kdpm2 schedule --preset {preset}]")


@pytest.mark.parametrize(
    ("preset", "label", "steps"), [("comfyui/normal", "normal", 6), ("a1111/automatic", "Karras", 5)]
)
def test_stable_diffusion_pipeline_feeds_the_unet_what_the_front_end_does(preset, label, steps):
    """A real diffusers pipeline (tiny random UNet): every UNet timestep and the scaled first latent."""
    from diffusers import EulerDiscreteScheduler

    case = recorded(preset, label, steps)
    sd_config = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    ).config
    unet = tiny_unet()
    pipe = tiny_pipeline(KDPM2DiscreteScheduler.from_preset(preset, sd_config))
    seen: list[tuple[float, torch.Tensor]] = []

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        seen.append((float(args[1]), args[0][0].detach().clone()))

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(42))  # ComfyUI's noise draw
        embeds = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
        with one_thread():  # OpenMP spin-waiting makes tiny networks crawl on a busy machine
            pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=torch.zeros_like(embeds),
                latents=latents,
                num_inference_steps=steps,
                output_type="latent",
            )
    finally:
        handle.remove()
    assert_timesteps(preset, [t for t, _ in seen], case, f"UNet timesteps [{preset}, {steps} steps]")
    first = latents[0] * case["init_noise_scale"] * case["calls"][0][2]
    spread = hp.DPM2[presets.get(preset).frontend]
    # the factor and the scale each within their spread, and two float32 roundings of the products
    ulps = spread["init_noise_scale"].here() + spread["c_in"].here() + 2
    assert_rel_close(seen[0][1], first, ulps * 2.0**-23, f"first UNet input [{preset}]")

"""Presets as configuration: what they override, what they refuse, and that they survive a save.

The reference for every schedule here is the same preset built without a config (checked against
upstream's figures in ``test_presets_parity.py``), or diffusers' own config objects.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers import KDPM2DiscreteScheduler as DiffusersKDPM2
from hypothesis import given
from hypothesis import strategies as st

from kdpm2 import KDPM2DiscreteScheduler, cli, presets
from kdpm2_spec import strategies as ks

SD15 = dict(
    EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    ).config
)
"""What a Stable Diffusion 1.5 pipeline's scheduler config holds (``leading``, ``steps_offset=1``)."""


def tables(scheduler: KDPM2DiscreteScheduler, n: int) -> tuple[list[float], list[float], list[float], float]:
    scheduler.set_timesteps(n)
    return (
        scheduler.timesteps.tolist(),
        scheduler.sigmas.tolist(),
        scheduler.sigmas_interpol.tolist(),
        float(scheduler.init_noise_sigma),
    )


@pytest.mark.parametrize("name", presets.NAMES)
def test_pipeline_config_is_overridden(name):
    loaded = KDPM2DiscreteScheduler.from_preset(name, SD15)
    assert loaded.config.timestep_spacing == "linspace", name
    assert loaded.config.preset == name
    assert tables(loaded, 10) == tables(KDPM2DiscreteScheduler.from_preset(name), 10), name
    plain = KDPM2DiscreteScheduler.from_config(SD15)
    assert tables(plain, 10)[1] != tables(loaded, 10)[1], "the SD 1.5 config alone must give other sigmas"


@functools.cache
def plain_preset(name: str) -> tuple:
    return tables(KDPM2DiscreteScheduler.from_preset(name), 8)


@given(name=st.sampled_from(presets.NAMES), config=ks.configs(ks.supported_args(KDPM2DiscreteScheduler)))
def test_any_sd_config_gives_the_preset(name, config):
    """Whatever spacing, offset, flags, family or churn a config holds, the preset's schedule wins."""
    config.update(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    config.pop("trained_betas", None)
    assert tables(KDPM2DiscreteScheduler.from_preset(name, config), 8) == plain_preset(name), config


def test_diffusers_kdpm2_config_too():
    config = DiffusersKDPM2(beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1).config
    loaded = KDPM2DiscreteScheduler.from_preset("a1111/karras", config)
    assert tables(loaded, 7) == tables(KDPM2DiscreteScheduler.from_preset("a1111/karras"), 7)


@pytest.mark.parametrize("name", ["comfyui/karras", "a1111/uniform"])
def test_save_and_load_keep_the_preset(name, tmp_path):
    original = KDPM2DiscreteScheduler.from_preset(name, SD15, prediction_type="v_prediction")
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["preset"] == name
    loaded = KDPM2DiscreteScheduler.from_pretrained(tmp_path)
    assert loaded.config.preset == name
    assert loaded.config.prediction_type == "v_prediction"
    assert tables(loaded, 12) == tables(original, 12)
    again = KDPM2DiscreteScheduler.from_config(loaded.config)
    assert tables(again, 3) == tables(original, 3)


def test_names_ignore_case_and_automatic_is_karras():
    scheduler = KDPM2DiscreteScheduler.from_preset("A1111/Automatic")
    assert scheduler.config.preset == "a1111/automatic"
    assert tables(scheduler, 9)[:3] == tables(KDPM2DiscreteScheduler.from_preset("a1111/karras"), 9)[:3]


def test_unknown_or_mistyped_name():
    with pytest.raises(ValueError, match=r"preset must be one of 'comfyui/normal'.*got 'comfyui/beta'"):
        KDPM2DiscreteScheduler.from_preset("comfyui/beta")
    with pytest.raises(TypeError, match="preset must be a string"):
        KDPM2DiscreteScheduler.from_preset(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preset must be one of"):
        KDPM2DiscreteScheduler(preset="karras")
    with pytest.raises(ValueError, match=r"beta_schedule='linear'; KDPM2DiscreteScheduler.from_preset\(name\) sets it"):
        KDPM2DiscreteScheduler(preset="comfyui/normal")  # the constructor's default betas are diffusers' "linear"


def test_override_that_contradicts_the_preset_is_refused():
    with pytest.raises(ValueError, match=r"use_karras_sigmas=False contradicts preset 'a1111/karras'"):
        KDPM2DiscreteScheduler.from_preset("a1111/karras", use_karras_sigmas=False)
    with pytest.raises(ValueError, match=r"s_churn=1.0 contradicts preset 'comfyui/normal'"):
        KDPM2DiscreteScheduler.from_preset("comfyui/normal", s_churn=1.0)
    kept = KDPM2DiscreteScheduler.from_preset("comfyui/normal", use_karras_sigmas=False, steps_offset=1)
    assert kept.config.steps_offset == 1  # agreeing with the preset, or left open by it, is fine


def test_constructor_with_inconsistent_arguments_points_to_from_preset():
    with pytest.raises(ValueError, match=r"timestep_spacing='leading' contradicts preset.*from_preset"):
        KDPM2DiscreteScheduler.from_config(SD15, preset="comfyui/normal")


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "scaled_linear", "trained_betas": [0.01] * 1000},
    ],
)
def test_other_training_schedules_are_refused(config):
    with pytest.raises(ValueError, match=r"reproduces LDM's 'linear' betas .*beta_schedule="):
        KDPM2DiscreteScheduler.from_preset("comfyui/simple", config)


def test_inputs_are_not_modified():
    config = copy.deepcopy(SD15)
    overrides = {"prediction_type": "v_prediction"}
    KDPM2DiscreteScheduler.from_preset("comfyui/normal", config, **overrides)
    assert config == SD15
    assert overrides == {"prediction_type": "v_prediction"}


def test_training_table_is_ldm_float64():
    """alphas_cumprod is LDM's float64 product rounded once, not diffusers' float32 product."""
    scheduler = KDPM2DiscreteScheduler.from_preset("a1111/uniform")
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    exact = torch.cumprod(1 - betas, dim=0).float()
    assert torch.equal(scheduler.alphas_cumprod, exact)
    assert torch.equal(scheduler.betas, betas.float())
    diffusers_table = DiffusersKDPM2(beta_schedule="scaled_linear").alphas_cumprod
    assert not torch.equal(diffusers_table, exact), "diffusers' float32 table differs, or this test proves nothing"


def test_custom_sigmas_use_the_front_end_timesteps():
    """``sigmas=`` with a ComfyUI preset: quantized timesteps and float32 midpoints (k-diffusion's formula)."""
    scheduler = KDPM2DiscreteScheduler.from_preset("comfyui/normal")
    scheduler.set_timesteps(sigmas=[10.0, 2.0, 0.0])
    mid = torch.tensor(10.0).log().lerp(torch.tensor(2.0).log(), 0.5).exp()
    assert float(scheduler.sigmas_interpol[1]) == float(mid)
    assert all(float(t).is_integer() for t in scheduler.timesteps)


def test_cli_preset_json_is_the_scheduler(capsys):
    status = cli.main(["schedule", "--preset", "comfyui/sgm_uniform", "--steps", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    scheduler = KDPM2DiscreteScheduler.from_preset("comfyui/sgm_uniform")
    timesteps, sigmas, interpol, init = tables(scheduler, 5)
    assert out["init_noise_scale"] == init
    assert [c[1] for c in out["calls"]] == timesteps
    assert [c[0] for c in out["calls"]] == [sigmas[k] if k % 2 == 0 else interpol[k] for k in range(9)]
    assert all(c == pytest.approx(1 / (s * s + 1) ** 0.5, rel=1e-15) for s, _, c in out["calls"])
    assert out["config"]["preset"] == "comfyui/sgm_uniform"


def test_cli_preset_table_and_errors(capsys):
    assert cli.main(["schedule", "--preset", "a1111/uniform", "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("preset a1111/uniform: 3 steps, 5 model calls, initial noise = unit noise x 14.6146")
    assert [int(line.split()[0]) for line in lines[2:]] == list(range(5))
    assert float(lines[2].split()[2]) == 999.0
    assert cli.main(["schedule", "--preset", "a1111/uniform", "--steps", "3", "--quantize-timesteps"]) == 2
    assert "quantize_timesteps=True contradicts preset 'a1111/uniform'" in capsys.readouterr().err

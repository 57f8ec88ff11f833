"""Configuration: access, from_config, save/load with diffusers both ways, copies and pickles."""

from __future__ import annotations

import copy
import json
import logging
import pickle

import diffusers
import pytest
import torch
from diffusers.configuration_utils import FrozenDict as DiffusersFrozenDict

from helpers_sched import run_loop, stand_in_model
from kdpm2 import KDPM2DiscreteScheduler

EXTRA_KEYS = (
    "sigma_min",
    "sigma_max",
    "sigma_interpolation",
    "discard_penultimate_sigma",
    "quantize_timesteps",
    "round_karras_timesteps",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "preset",
)


def test_attribute_and_key_access():
    s = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True, steps_offset=1)
    assert s.config.beta_schedule == s.config["beta_schedule"] == "scaled_linear"
    assert s.config.use_karras_sigmas is True and s.config["steps_offset"] == 1
    with pytest.raises(AttributeError):
        _ = s.config.no_such_key
    with pytest.raises(KeyError):
        _ = s.config["no_such_key"]
    with pytest.raises((AttributeError, TypeError)):
        s.config.beta_schedule = "linear"
    with pytest.raises(TypeError):
        s.config["beta_schedule"] = "linear"


def test_diffusers_config_keys_are_a_subset():
    ours = KDPM2DiscreteScheduler()
    theirs = diffusers.KDPM2DiscreteScheduler()
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    public = {k for k in ours.config if not k.startswith("_")}
    assert public - {k for k in theirs.config if not k.startswith("_")} == set(EXTRA_KEYS)


def test_from_diffusers_config():
    theirs = diffusers.KDPM2DiscreteScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    ours = KDPM2DiscreteScheduler.from_config(theirs.config)
    assert ours.config.beta_schedule == "scaled_linear" and ours.config.prediction_type == "v_prediction"
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=2e-6, atol=0)


def test_from_euler_config_ignores_unknown_keys(caplog):
    euler = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1, interpolation_type="log_linear"
    )
    with caplog.at_level(logging.WARNING, logger="kdpm2"):
        ours, unused = KDPM2DiscreteScheduler.from_config(euler.config, return_unused_kwargs=True)
    assert ours.config.timestep_spacing == "leading" and ours.config.steps_offset == 1
    # as diffusers' own class: Euler's non-default keys come back unused, kept without a warning
    _, theirs = diffusers.KDPM2DiscreteScheduler.from_config(euler.config, return_unused_kwargs=True)
    assert unused == theirs == {"interpolation_type": "log_linear"}
    assert ours.config.interpolation_type == "log_linear"
    assert not any("interpolation_type" in record.getMessage() for record in caplog.records)
    # diffusers' own route: our config loads into any compatible diffusers scheduler
    assert KDPM2DiscreteScheduler.__name__ in diffusers.EulerDiscreteScheduler._compatibles


def test_from_plain_dict_and_overrides():
    ours = KDPM2DiscreteScheduler.from_config({"beta_schedule": "squaredcos_cap_v2", "steps_offset": 1})
    assert ours.config.beta_schedule == "squaredcos_cap_v2"
    over = KDPM2DiscreteScheduler.from_config(ours.config, use_exponential_sigmas=True, steps_offset=0)
    assert over.config.use_exponential_sigmas and over.config.steps_offset == 0
    assert over.config.beta_schedule == "squaredcos_cap_v2"
    with pytest.raises(ValueError, match="provide a config"):  # as diffusers
        KDPM2DiscreteScheduler.from_config()


def test_save_ours_load_diffusers(tmp_path):
    ours = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True, sigma_interpolation="log")
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "KDPM2DiscreteScheduler" and data["sigma_interpolation"] == "log"
    theirs = diffusers.KDPM2DiscreteScheduler.from_pretrained(tmp_path)
    assert theirs.config.beta_schedule == "scaled_linear" and theirs.config.use_karras_sigmas

    def saved(config):  # what a file keeps: no _use_default_values, no unset (None) sigma bounds
        return {k: v for k, v in config.items() if k not in ("_use_default_values", "sigma_min", "sigma_max", "s_tmax")}

    again = KDPM2DiscreteScheduler.from_pretrained(tmp_path)
    assert saved(again.config) == saved(ours.config)
    sub = tmp_path / "pipe"
    ours.save_config(sub / "scheduler")
    assert saved(KDPM2DiscreteScheduler.from_pretrained(sub, subfolder="scheduler").config) == saved(ours.config)


def test_save_diffusers_load_ours(tmp_path):
    theirs = diffusers.KDPM2DiscreteScheduler(
        trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist(), timestep_spacing="trailing"
    )
    theirs.save_pretrained(tmp_path)
    ours = KDPM2DiscreteScheduler.from_pretrained(tmp_path)
    assert ours.config.timestep_spacing == "trailing"
    assert torch.equal(ours.betas, theirs.betas)
    assert KDPM2DiscreteScheduler.load_config(tmp_path)["timestep_spacing"] == "trailing"


def _mid_loop(scheduler):
    scheduler.set_timesteps(6)
    sample = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in scheduler.timesteps[:3]:
        sample = scheduler.step(stand_in_model(scheduler.scale_model_input(sample, t), t), t, sample).prev_sample
    return sample


def _finish(scheduler, sample):
    for t in scheduler.timesteps[scheduler.step_index :]:
        sample = scheduler.step(stand_in_model(scheduler.scale_model_input(sample, t), t), t, sample).prev_sample
    return sample


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))], ids=["deepcopy", "pickle"])
def test_copies_mid_loop(clone):
    ours = KDPM2DiscreteScheduler(use_karras_sigmas=True, s_churn=0.0)
    sample = _mid_loop(ours)
    assert not ours.state_in_first_order
    twin = clone(ours)
    assert twin.config == ours.config and twin.step_index == ours.step_index == 3
    assert torch.equal(_finish(twin, sample), _finish(ours, sample))
    fresh = clone(KDPM2DiscreteScheduler())
    assert fresh.config == KDPM2DiscreteScheduler().config


def test_pipeline_style_config_rewrite():
    """StableDiffusionPipeline rewrites ``scheduler._internal_dict = FrozenDict(new_config)`` (steps_offset)."""
    ours = KDPM2DiscreteScheduler(timestep_spacing="leading")
    reference = KDPM2DiscreteScheduler(timestep_spacing="leading", steps_offset=1)
    new_config = dict(ours.config)
    new_config["steps_offset"] = 1
    ours._internal_dict = DiffusersFrozenDict(new_config)
    assert ours.config.steps_offset == 1
    x = torch.randn(1, 2, 4, 4)
    expected, _ = run_loop(reference, 5, x)
    actual, _ = run_loop(ours, 5, x)
    assert torch.equal(ours.timesteps, reference.timesteps)
    assert torch.equal(actual, expected)
    copy.deepcopy(ours)
    ours.register_to_config(prediction_type="v_prediction")
    assert ours.config.prediction_type == "v_prediction" and ours.config.steps_offset == 1

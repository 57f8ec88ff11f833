"""Named presets that reproduce ComfyUI's and AUTOMATIC1111's DPM2 samplers in a diffusers loop.

A preset fixes everything a front-end decides for DPM2 on an LDM-style model (SD 1.x/2.x, SDXL):
its float64-built training table, the schedule rule, the discarded next-to-last sigma, the float32
midpoints, the timestep the model receives, and the factor on the initial noise
(``init_noise_sigma``). Build one with ``KDPM2DiscreteScheduler.from_preset(name, config)``: the
preset's settings replace what a loaded pipeline config says (``timestep_spacing="leading"``, the
sigma flags...; its ``steps_offset=1`` is kept, and has no effect), and ``preset`` is saved in the
config, so a save/load round trip keeps it.

| name | front-end setting |
|---|---|
| `comfyui/normal` | KSampler `dpm_2`, scheduler `normal` |
| `comfyui/karras` | ... `karras` |
| `comfyui/exponential` | ... `exponential` |
| `comfyui/simple` | ... `simple` |
| `comfyui/sgm_uniform` | ... `sgm_uniform` |
| `a1111/automatic` | "DPM2", schedule type "Automatic" (= Karras since A1111 1.9) |
| `a1111/uniform` | "DPM2", "Uniform" (also "DPM2" before 1.9) |
| `a1111/karras` | "DPM2", "Karras" (also "DPM2 Karras" before 1.9) |
| `a1111/exponential` | "DPM2", "Exponential" |

Names are matched without regard to case (``"a1111/Karras"`` works).

The same names build the front-ends' DPM2 a (ComfyUI ``dpm_2_ancestral``, A1111 "DPM2 a") with
``KDPM2AncestralDiscreteScheduler.from_preset``: both front-ends run it on the same schedule as
DPM2 (the next-to-last sigma dropped, "Automatic" = Karras). There a preset leaves ``eta`` and
``s_noise`` free (default 1, as both front-ends), since A1111's settings and ComfyUI's
``SamplerDPM2Ancestral`` node set them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kdpm2 import frontends, tables

logger = logging.getLogger("kdpm2")

F64 = torch.float64

COMMON_SETTINGS: dict[str, Any] = {
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "timestep_spacing": "linspace",
    "sigma_interpolation": "log",
    "discard_penultimate_sigma": True,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
    "round_karras_timesteps": False,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": None,
    "s_noise": 1.0,
}
"""Settings every preset fixes. ``num_train_timesteps``, ``beta_start``, ``beta_end``,
``prediction_type`` and ``steps_offset`` (unused with ``linspace``) come from the config."""

SAMPLERS = {"dpm2": "KDPM2DiscreteScheduler", "dpm2a": "KDPM2AncestralDiscreteScheduler"}
"""The schedulers a preset builds: DPM2 (``dpm_2``, "DPM2") and DPM2 a (``dpm_2_ancestral``, "DPM2 a")."""

DPM2_ONLY = ("s_churn", "s_tmin", "s_tmax", "s_noise")
"""Settings a DPM2 preset fixes and a DPM2 a preset does not (it has no churn; ``s_noise`` is free)."""

RULES = ("normal", "sgm_uniform", "simple", "karras", "exponential")
"""Schedule rules: ``normal`` is also A1111's ``Uniform`` (``CompVisDenoiser.get_sigmas``)."""


@dataclass(frozen=True)
class Preset:
    """One front-end sampler setting: which front-end, and which schedule rule it runs."""

    name: str
    frontend: str  # "comfyui" or "a1111"
    rule: str  # one of RULES
    label: str  # what the user picks in the front-end

    def settings(self, sampler: str = "dpm2") -> dict[str, Any]:
        """The arguments this preset fixes for ``sampler`` (a key of ``SAMPLERS``); the rest come from the config."""
        common = (
            COMMON_SETTINGS if sampler == "dpm2" else {k: v for k, v in COMMON_SETTINGS.items() if k not in DPM2_ONLY}
        )
        return {
            **common,
            "quantize_timesteps": self.frontend == "comfyui",
            "use_karras_sigmas": self.rule == "karras",
            "use_exponential_sigmas": self.rule == "exponential",
            "preset": self.name,
        }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("comfyui/normal", "comfyui", "normal", "KSampler dpm_2, scheduler normal"),
        Preset("comfyui/karras", "comfyui", "karras", "KSampler dpm_2, scheduler karras"),
        Preset("comfyui/exponential", "comfyui", "exponential", "KSampler dpm_2, scheduler exponential"),
        Preset("comfyui/simple", "comfyui", "simple", "KSampler dpm_2, scheduler simple"),
        Preset("comfyui/sgm_uniform", "comfyui", "sgm_uniform", "KSampler dpm_2, scheduler sgm_uniform"),
        Preset("a1111/automatic", "a1111", "karras", 'DPM2, schedule type "Automatic" (Karras since 1.9)'),
        Preset("a1111/uniform", "a1111", "normal", 'DPM2, schedule type "Uniform" (DPM2 before 1.9)'),
        Preset("a1111/karras", "a1111", "karras", 'DPM2, schedule type "Karras" (DPM2 Karras before 1.9)'),
        Preset("a1111/exponential", "a1111", "exponential", 'DPM2, schedule type "Exponential"'),
    )
}
"""The registry, by canonical name."""

NAMES = tuple(PRESETS)
"""Canonical preset names, in the registry's order."""


def get(name: Any) -> Preset:
    """The preset called ``name`` (any case); ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"preset must be a string naming a preset; got {type(name).__name__} {name!r}")
    preset = PRESETS.get(name.lower())
    if preset is None:
        raise ValueError(f"preset must be one of {', '.join(map(repr, NAMES))}; got {name!r}")
    return preset


def configure(
    name: str, config: Mapping[str, Any] | None, overrides: Mapping[str, Any], sampler: str = "dpm2"
) -> dict[str, Any]:
    """Constructor arguments for preset ``name``: ``config``, then the preset's settings, then ``overrides``.

    The preset's settings replace the config's (a pipeline's SD 1.5 config says ``leading`` spacing,
    for instance); an override that contradicts the preset is a ``ValueError``, because the front-end
    does not do that. A config whose training schedule is not LDM's linear betas is refused too.
    ``sampler`` (a key of ``SAMPLERS``) says which settings the preset fixes.
    """
    preset = get(name)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a scheduler config; got {type(config).__name__}")
    merged = dict(config or {})
    _check_training(preset, merged, "config")
    settings = preset.settings(sampler)
    changed = {k: merged[k] for k in settings if k in merged and merged[k] != settings[k] and k != "preset"}
    if changed:
        logger.info("preset %r replaces these config values: %s", preset.name, changed)
    merged.update(settings)
    for key, value in overrides.items():
        if key in settings and value != settings[key]:
            raise ValueError(
                f"{key}={value!r} contradicts preset {preset.name!r}, which sets {key}={settings[key]!r}; "
                "leave it out, or build the scheduler without a preset"
            )
        merged[key] = value
    defaults = merged.get("_use_default_values")
    if defaults is not None:  # what the preset or an override sets is given, not a default to drop
        merged["_use_default_values"] = [k for k in defaults if k not in settings and k not in overrides]
    return merged


def _check_training(preset: Preset, config: Mapping[str, Any], where: str) -> None:
    """The front-ends' arithmetic applies to LDM's linear betas only (diffusers' ``scaled_linear``)."""
    schedule = config.get("beta_schedule", "scaled_linear")
    if config.get("trained_betas") is not None or schedule != "scaled_linear":
        raise ValueError(
            f"preset {preset.name!r} reproduces LDM's 'linear' betas (diffusers' beta_schedule='scaled_linear', "
            f"no trained_betas); the {where} has beta_schedule={schedule!r}"
            + (" and trained_betas" if config.get("trained_betas") is not None else "")
        )


def check(config: Mapping[str, Any], sampler: str = "dpm2") -> str:
    """The canonical preset name of a full constructor config, after checking it agrees with the preset.

    ``ValueError`` names the first argument that differs and points to ``from_preset`` of the
    ``sampler``'s class (a key of ``SAMPLERS``).
    """
    preset = get(config["preset"])
    cls = SAMPLERS[sampler]
    try:
        _check_training(preset, config, "configuration")
    except ValueError as error:
        raise ValueError(f"{error}; {cls}.from_preset(name) sets it") from None
    for key, value in preset.settings(sampler).items():
        if key != "preset" and config[key] != value:
            raise ValueError(
                f"{key}={config[key]!r} contradicts preset {preset.name!r}, which sets {key}={value!r}; "
                f"use {cls}.from_preset(name, config) to apply a preset to a loaded config"
            )
    return preset.name


@functools.lru_cache(maxsize=16)
def _table(frontend: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> frontends.Table:
    alphas_cumprod = tables.ldm_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
    make = frontends.comfyui_table if frontend == "comfyui" else frontends.a1111_table
    return make(alphas_cumprod)


def training_table(name: str, config: Mapping[str, Any]) -> frontends.Table:
    """The front-end's float32 training sigmas and log table for the config's training schedule.

    Cached; the tensors are shared, so treat them as read-only.
    """
    return _table(get(name).frontend, config["num_train_timesteps"], config["beta_start"], config["beta_end"])


def spaced(name: str, n: int, table: frontends.Table) -> torch.Tensor:
    """The ``n`` sigmas the front-end's sampler walks through, then 0 (float32 values, float64 tensor)."""
    preset = get(name)
    count = n + 1  # both front-ends build n + 1 and drop the next-to-last for DPM2
    if preset.rule in ("normal", "sgm_uniform"):
        sigmas = frontends.uniform(count, table, sgm=preset.rule == "sgm_uniform")
    elif preset.rule == "simple":
        sigmas = frontends.simple(count, table)
    elif preset.rule == "karras":
        sigmas = frontends.karras(count, table)
    else:
        sigmas = frontends.exponential(count, table)
    return frontends.discard_penultimate(sigmas).to(F64)


def timesteps(name: str, sigmas: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """The timesteps the front-end's UNet receives at ``sigmas`` (float32 arithmetic, float64 result)."""
    table = training_table(name, config)
    rule = frontends.quantized_timesteps if get(name).frontend == "comfyui" else frontends.continuous_timesteps
    return rule(sigmas, table.log_sigmas).to(F64)


def midpoints(sigmas: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """``sample_dpm_2``'s float32 midpoints, as a float64 tensor."""
    return frontends.midpoints(sigmas, following).to(F64)


def init_noise_scale(name: str, sigma_0: float, table: frontends.Table) -> float:
    """The front-end's factor on unit noise for the first sample (see ``frontends.init_noise_scale``)."""
    return frontends.init_noise_scale(get(name).frontend, sigma_0, table)

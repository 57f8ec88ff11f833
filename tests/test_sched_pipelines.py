"""Stable Diffusion pipelines (tiny, random, offline) with our scheduler and with diffusers'."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers import KDPM2DiscreteScheduler as DiffusersKDPM2
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from helpers_sched import one_thread
from kdpm2 import KDPM2DiscreteScheduler

ATOL = 1e-4  # images in [0, 1]; both schedulers run in float32 with tables a few ulps apart


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def tokenizer(directory) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single letters, written to ``directory`` (no download)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"] + list(letters) + [c + "</w>" for c in letters]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token="!", model_max_length=16
    )


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=64,
        max_position_embeddings=16,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": CLIPTextModel(text_config).eval(),
        "tokenizer": tokenizer(tmp_path_factory.mktemp("tok")),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


SCHEDULER_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def run(pipeline_class, components, scheduler, **call):
    pipe = pipeline_class(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return pipe(prompt="a cat", generator=generator, output_type="np", **call).images, pipe


@pytest.mark.parametrize(
    "options", [{}, {"use_karras_sigmas": True}, {"timestep_spacing": "leading", "steps_offset": 1}]
)
def test_text_to_image(components, options):
    config = {**SCHEDULER_CONFIG, **options}
    expected, _ = run(
        StableDiffusionPipeline,
        components,
        DiffusersKDPM2(**config),
        num_inference_steps=3,
        height=32,
        width=32,
        guidance_scale=5.0,
    )
    ours_scheduler = KDPM2DiscreteScheduler(**config, round_karras_timesteps=bool(options.get("use_karras_sigmas")))
    actual, pipe = run(
        StableDiffusionPipeline,
        components,
        ours_scheduler,
        num_inference_steps=3,
        height=32,
        width=32,
        guidance_scale=5.0,
    )
    assert pipe.scheduler is ours_scheduler
    assert actual.shape == expected.shape == (1, 32, 32, 3)
    assert np.isfinite(actual).all()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


def test_text_to_image_steps_offset_rewrite(components):
    """The pipeline rewrites ``steps_offset`` to 1 through ``_internal_dict``; ours keeps working."""
    ours = KDPM2DiscreteScheduler(**SCHEDULER_CONFIG, timestep_spacing="leading")
    actual, pipe = run(StableDiffusionPipeline, components, ours, num_inference_steps=2, height=32, width=32)
    expected, _ = run(
        StableDiffusionPipeline,
        components,
        DiffusersKDPM2(**SCHEDULER_CONFIG, timestep_spacing="leading"),
        num_inference_steps=2,
        height=32,
        width=32,
    )
    assert pipe.scheduler.config.steps_offset == 1
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)
    # control: another sampler gives a visibly different image, so the comparison has teeth
    euler = EulerDiscreteScheduler(**SCHEDULER_CONFIG, timestep_spacing="leading")
    other, _ = run(StableDiffusionPipeline, components, euler, num_inference_steps=2, height=32, width=32)
    assert np.abs(other - expected).max() > 100 * ATOL


def test_text_to_image_custom_sigmas(components):
    """``pipe(sigmas=...)`` reaches our ``set_timesteps(sigmas=...)`` through retrieve_timesteps."""
    ours = KDPM2DiscreteScheduler(**SCHEDULER_CONFIG)
    images, pipe = run(StableDiffusionPipeline, components, ours, sigmas=[14.6, 3.0, 0.5, 0.0], height=32, width=32)
    assert np.isfinite(images).all()
    assert len(pipe.scheduler.timesteps) == 5


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_image_to_image(components, strength):
    """img2img: set_begin_index(t_start * order) and add_noise at the begin index's sigma."""
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    call = {"image": image, "strength": strength, "num_inference_steps": 4, "guidance_scale": 5.0}
    expected, _ = run(StableDiffusionImg2ImgPipeline, components, DiffusersKDPM2(**SCHEDULER_CONFIG), **call)
    actual, pipe = run(StableDiffusionImg2ImgPipeline, components, KDPM2DiscreteScheduler(**SCHEDULER_CONFIG), **call)
    assert pipe.scheduler.begin_index is not None and pipe.scheduler.begin_index > 0
    assert np.isfinite(actual).all()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)

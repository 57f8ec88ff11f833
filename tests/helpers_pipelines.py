"""A tiny Stable Diffusion pipeline (random weights, no text encoder) for tests that swap a scheduler in.

The weights do not matter to those tests: they compare the timesteps the UNet is given, the
first latent, or our scheduler against diffusers' with the same models and generators. The
models are built once per session (seeded, so every run has the same ones).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def tiny_unet() -> Any:
    """A two-block conditional UNet with 4 latent channels, 8x8 samples and 8-wide cross-attention."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=2,
    ).eval()


@functools.cache
def tiny_vae() -> Any:
    """A one-block VAE with 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )


def tiny_pipeline(scheduler: Any) -> Any:
    """A ``StableDiffusionPipeline`` over the tiny models with ``scheduler``; give it ``prompt_embeds``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=tiny_unet(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""Random-weight Stable Diffusion pipelines built from configs, for tests and benchmarks.

``build_random_sd(folder, size)`` writes a diffusers pipeline folder that loads through the same
``from_pretrained`` code as a real model. Sizes: ``test`` (16 px, fast unit tests), ``tiny``
(64 px, for CPU benchmarks) and ``sd15`` (the real SD 1.5 UNet and VAE
architecture at 512 px, random weights, for GPU benchmarks).
"""

from __future__ import annotations

import os

import torch

SIZES = {
    "test": {
        "unet": dict(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=8,
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "vae": dict(block_out_channels=(8, 16), norm_num_groups=4, sample_size=16),
        "text": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2),
    },
    "tiny": {
        "unet": dict(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            cross_attention_dim=32,
            attention_head_dim=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "vae": dict(block_out_channels=(32, 64), sample_size=64),
        "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5),
    },
    "sd15": {
        "unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    },
}


def build_random_sd(
    folder: str, size: str = "test", tokenizer=None, seed: int = 0, prediction_type: str = "epsilon"
) -> str:
    """Build a random-weight SD-structured pipeline and ``save_pretrained`` it to ``folder``.

    Args:
        folder: Output folder.
        size: One of ``SIZES``.
        tokenizer: A ``CLIPTokenizer``; default: the real CLIP tokenizer rebuilt offline.
        seed: Seed of the random weights.
        prediction_type: ``epsilon`` or ``v_prediction``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.clip_tokenizer import build_clip_tokenizer

    spec = SIZES[size]
    tokenizer = tokenizer or build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
        blocks = len(spec["vae"]["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            **spec["vae"],
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **spec["text"],
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

"""Tiny Stable Diffusion pipelines built from configs, saved to disk, loaded back like real ones."""

from __future__ import annotations

import os

import torch

from trainers.clip_tokenizer import build_clip_tokenizer


def save_clip_tokenizer(folder: str) -> str:
    """Write the real CLIP tokenizer (rebuilt offline) to ``folder`` and return it."""
    build_clip_tokenizer().save_pretrained(folder)
    return folder


def build_tiny_sd(folder: str, tokenizer_folder: str, seed: int = 0, prediction_type: str = "epsilon") -> str:
    """Build a tiny SD-structured pipeline (16 px images, 8x8x4 latents) and ``save_pretrained`` it.

    Args:
        folder: Where to write the pipeline.
        tokenizer_folder: A saved CLIPTokenizer (see :func:`save_clip_tokenizer`).
        seed: Seed of the random weights.
        prediction_type: Scheduler prediction type (``epsilon`` or ``v_prediction``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

"""A tiny PixArt-α pipeline for tests (docs/families.md): a T5 encoder with an offline Unigram tokenizer, a
PixArt transformer with learned sigma (8 output channels) and the SD VAE layout, saved with
``save_pretrained`` and loaded back through the same code as a real PixArt."""

from __future__ import annotations

import os

import torch


def t5_tokenizer():
    """A small T5 Unigram tokenizer (pad 0, eos 1, unk 2), built offline."""
    from pipeline.random_models import small_t5_tokenizer

    return small_t5_tokenizer()


def build_tiny_pixart(folder: str, seed: int = 0, sample_size: int = 8) -> str:
    """``sample_size=128`` gives the layout of the 1024 px model: conditioned on resolution and aspect ratio."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        transformer = PixArtTransformer2DModel(
            sample_size=sample_size,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            out_channels=8,
            cross_attention_dim=24,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=4,
            sample_size=16,
        )
    # PixArt ships a DPM-Solver config on the linear SD betas; the family samples it with DDIM
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=encoder.eval(), vae=vae, transformer=transformer, scheduler=scheduler
    )
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

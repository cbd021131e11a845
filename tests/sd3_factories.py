"""A tiny SD3 pipeline for tests (docs/families.md): two CLIP encoders with projection (the offline CLIP
tokenizer), T5 with the offline Unigram tokenizer, a two-block SD3.5-M-shaped transformer and a 16-channel VAE with a
shift factor, saved with ``save_pretrained`` and loaded back through the same code as a real SD3."""

from __future__ import annotations

import os

import torch


def build_tiny_sd3(
    folder: str, tokenizer_folder: str, seed: int = 0, dynamic_shifting: bool = False, **scheduler_options
) -> str:
    """``dynamic_shifting`` gives the resolution-dependent shift (``mu`` from the latent size); the
    ``scheduler_options`` go into the scheduler config as they are."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from pixart_factories import t5_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    tokenizer, tokenizer_3 = CLIPTokenizer.from_pretrained(tokenizer_folder), t5_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=3,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, encoder_2 = (CLIPTextModelWithProjection(CLIPTextConfig(**text)) for _ in range(2))
        encoder_3 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_3),
                d_model=48,
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
        # joint_attention_dim = T5's d_model, wider than the 16 + 16 CLIP features it zero-pads; SD3.5-M's
        # layout: a second image self-attention in the first block, RMS-normalised queries and keys
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=48,
            caption_projection_dim=32,
            pooled_projection_dim=32,
            out_channels=16,
            pos_embed_max_size=16,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=16,
            sample_size=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic_shifting, **scheduler_options)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=encoder_2.eval(),
        tokenizer_2=tokenizer,
        text_encoder_3=encoder_3.eval(),
        tokenizer_3=tokenizer_3,
    )
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

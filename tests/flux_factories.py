"""A tiny FLUX.1 pipeline for tests (docs/families.md): CLIP (pooled output, the offline CLIP tokenizer), T5 with the
offline Unigram tokenizer, a transformer with one double-stream and one single-stream block, and a 4-channel VAE
with a shift factor, saved with ``save_pretrained`` and loaded back through the same code as a real FLUX.1.
``guidance_embeds=True`` is [dev]'s layout, False [schnell]'s. Its native size is FLUX's 128 latent pixels
(256 px here); tests sample it at ``model.resolution=16``."""

from __future__ import annotations

import os

import torch


def build_tiny_flux(
    folder: str, tokenizer_folder: str, seed: int = 0, guidance_embeds: bool = True, **scheduler_options
) -> str:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from pixart_factories import t5_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_folder), t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_attention_heads=2,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
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
        # in_channels = 4 latent channels x a 2x2 patch; rope axes (4, 6, 6) sum to the head width 16
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=4,
            sample_size=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    options = {"shift": 3.0, "use_dynamic_shifting": True, **scheduler_options}
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**options),
        vae=vae,
        text_encoder=encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

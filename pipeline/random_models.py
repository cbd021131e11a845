"""Random-weight Stable Diffusion and FLUX.1 pipelines built from configs, for tests and benchmarks.

``build_random_sd(folder, size)`` writes a diffusers pipeline folder that loads through the same
``from_pretrained`` code as a real model. Sizes: ``test`` (16 px, fast unit tests), ``tiny``
(64 px, for CPU benchmarks) and ``sd15`` (the real SD 1.5 UNet and VAE
architecture at 512 px, random weights, for GPU benchmarks). ``build_random_flux(folder, size)``: ``test`` and
``tiny``, the same roles.
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
        text_encoder = clip_text_encoder(tokenizer, spec["text"])
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


def clip_text_encoder(tokenizer, text: dict):
    """A random ``CLIPTextModel`` of the sizes in ``text`` for ``tokenizer`` (its vocabulary and special tokens)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        )
    )


def small_t5_tokenizer():
    """A small T5 Unigram tokenizer built offline (pad 0, eos 1, unk 2): a piece per lowercase letter, digit and
    sign, and each letter after a word boundary."""
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


FLUX_SIZES = {  # test: unit tests at 16 px; tiny: CPU benchmarks at model.resolution=64 (16 x 16 packed patches)
    "test": {
        "transformer": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2),
        "text": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2),
        "t5": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
        "vae": dict(
            block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=16
        ),
    },
    "tiny": {
        "transformer": dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4),
        "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3),
        "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        "vae": dict(block_out_channels=(32, 64), latent_channels=16, sample_size=64),
    },
}


def build_random_flux(
    folder: str,
    size: str = "tiny",
    seed: int = 0,
    tokenizer=None,
    guidance_embeds: bool = True,
    **scheduler_options,
) -> str:
    """A random-weight FLUX.1-structured pipeline, ``save_pretrained`` to ``folder``: [dev]'s layout (embedded
    guidance) or, with ``guidance_embeds=False``, [schnell]'s; a VAE with FLUX's scaling and shift; dynamic
    shifting unless ``scheduler_options`` say otherwise. ``tokenizer``: a ``CLIPTokenizer`` (default: the real
    CLIP tokenizer rebuilt offline)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from pipeline.clip_tokenizer import build_clip_tokenizer

    spec, tokenizer, tokenizer_2 = FLUX_SIZES[size], tokenizer or build_clip_tokenizer(), small_t5_tokenizer()
    head = spec["transformer"]["attention_head_dim"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, spec["text"])
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
                **spec["t5"],
            )
        )
        # in_channels: the latent channels times a 2x2 patch; the rope axes sum to the head width
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * spec["vae"]["latent_channels"],
            joint_attention_dim=spec["t5"]["d_model"],
            pooled_projection_dim=spec["text"]["hidden_size"],
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(head // 4, 3 * head // 8, 3 * head // 8),
            **spec["transformer"],
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
            **spec["vae"],
        )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**{"shift": 3.0, "use_dynamic_shifting": True, **scheduler_options}),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=t5.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    os.makedirs(folder, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder

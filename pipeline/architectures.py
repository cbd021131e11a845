"""Published model architectures as pipeline folders of config files alone, to plan a run before the weights are
at hand: ``python -m pipeline.plan --config pipeline/configs/sdxl_drtune_hps.yaml --architecture sdxl``.

Each folder holds ``model_index.json``, every component's ``config.json`` and the scheduler's config, as the
published pipelines do, and no weights. The sizes are those of the released models (diffusers' defaults for
UNet2DConditionModel (SD 1.5), PixArtTransformer2DModel and FluxTransformer2DModel; the published configs of
SDXL base 1.0, SD 3.5 Medium, CLIP ViT-L/14, OpenCLIP ViT-bigG/14 and T5-XXL). ``pipeline.plan`` prints each
component's parameter count, which names the architecture unambiguously (SD 1.5's UNet 859.5 M, SDXL's 2.57 B,
FLUX.1's transformer 11.9 B). Tokenizers are the real CLIP tokenizer rebuilt offline and, for T5, a small
tokenizer: the families pad prompts to a fixed length, so only that length matters here.
"""

from __future__ import annotations

import json
import os

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
CLIP_L_PROJECTED = dict(CLIP_L, projection_dim=768)
CLIP_BIG_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
    hidden_act="gelu",
)
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    feed_forward_proj="gated-gelu",
    vocab_size=32128,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
SD_VAE = dict(
    _class_name="AutoencoderKL",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
)
FLOW_VAE = dict(SD_VAE, latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False)
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)

SD15 = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ("UNet2DConditionModel", dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)),
    "vae": ("AutoencoderKL", SD_VAE),
    "text_encoder": ("CLIPTextModel", CLIP_L),
    "tokenizer": ("CLIPTokenizer", None),
    "scheduler": ("DDIMScheduler", dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False)),
}
SDXL = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "unet": (
        "UNet2DConditionModel",
        dict(
            sample_size=128,
            block_out_channels=[320, 640, 1280],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10],
            attention_head_dim=[5, 10, 20],
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
    ),
    "vae": ("AutoencoderKL", dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)),
    "text_encoder": ("CLIPTextModel", CLIP_L),
    "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIG_G),
    "tokenizer": ("CLIPTokenizer", None),
    "tokenizer_2": ("CLIPTokenizer", None),
    "scheduler": ("EulerDiscreteScheduler", dict(SD_BETAS, timestep_spacing="leading")),
}
PIXART_512 = {
    "_class_name": "PixArtAlphaPipeline",
    "transformer": ("PixArtTransformer2DModel", dict(sample_size=64, caption_channels=4096)),
    "vae": ("AutoencoderKL", SD_VAE),
    "text_encoder": ("T5EncoderModel", T5_XXL),
    "tokenizer": ("T5Tokenizer", None),
    "scheduler": ("DPMSolverMultistepScheduler", dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")),
}
SD35_MEDIUM = {
    "_class_name": "StableDiffusion3Pipeline",
    "transformer": (
        "SD3Transformer2DModel",
        dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=list(range(13)),
            qk_norm="rms_norm",
        ),
    ),
    "vae": ("AutoencoderKL", dict(FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609)),
    "text_encoder": ("CLIPTextModelWithProjection", CLIP_L_PROJECTED),
    "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIG_G),
    "text_encoder_3": ("T5EncoderModel", T5_XXL),
    "tokenizer": ("CLIPTokenizer", None),
    "tokenizer_2": ("CLIPTokenizer", None),
    "tokenizer_3": ("T5Tokenizer", None),
    "scheduler": ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0)),
}
FLUX_DEV = {
    "_class_name": "FluxPipeline",
    "transformer": ("FluxTransformer2DModel", dict(guidance_embeds=True)),
    "vae": ("AutoencoderKL", dict(FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159)),
    "text_encoder": ("CLIPTextModel", CLIP_L),
    "text_encoder_2": ("T5EncoderModel", T5_XXL),
    "tokenizer": ("CLIPTokenizer", None),
    "tokenizer_2": ("T5Tokenizer", None),
    "scheduler": (
        "FlowMatchEulerDiscreteScheduler",
        dict(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
    ),
}
FLUX_SCHNELL = dict(
    FLUX_DEV,
    transformer=("FluxTransformer2DModel", dict(guidance_embeds=False)),
    scheduler=("FlowMatchEulerDiscreteScheduler", dict(shift=1.0, use_dynamic_shifting=False)),
)

ARCHITECTURES = {
    "sd15": SD15,
    "sdxl": SDXL,
    "pixart-512": PIXART_512,
    "sd35-medium": SD35_MEDIUM,
    "flux-dev": FLUX_DEV,
    "flux-schnell": FLUX_SCHNELL,
}
# the released models' folder names (as the shipped recipes' model.path ends), for the hint to use an architecture
RELEASED_NAMES = {
    "stable-diffusion-v1-5": "sd15",
    "stable-diffusion-xl-base-1.0": "sdxl",
    "PixArt-XL-2-512x512": "pixart-512",
    "stable-diffusion-3.5-medium": "sd35-medium",
    "FLUX.1-dev": "flux-dev",
    "FLUX.1-schnell": "flux-schnell",
}
LIBRARIES = {
    "CLIPTextModel": "transformers",
    "CLIPTextModelWithProjection": "transformers",
    "T5EncoderModel": "transformers",
    "CLIPTokenizer": "transformers",
    "T5Tokenizer": "transformers",
}


def write_architecture(name: str, folder: str) -> str:
    """Write architecture ``name``'s pipeline folder of config files (no weights) to ``folder``; return it."""
    spec = ARCHITECTURES[name]
    index = {"_class_name": spec["_class_name"], "_diffusers_version": _diffusers_version()}
    for component, value in spec.items():
        if component == "_class_name":
            continue
        if not isinstance(value, tuple):  # a pipeline setting, e.g. force_zeros_for_empty_prompt
            index[component] = value
            continue
        class_name, config = value
        index[component] = [LIBRARIES.get(class_name, "diffusers"), class_name]
        _write_component(os.path.join(folder, component), class_name, config)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    return folder


def _write_component(folder: str, class_name: str, config: dict | None) -> None:
    os.makedirs(folder, exist_ok=True)
    if class_name == "CLIPTokenizer":
        from pipeline.clip_tokenizer import build_clip_tokenizer

        build_clip_tokenizer().save_pretrained(folder)
    elif class_name == "T5Tokenizer":
        from pipeline.random_models import small_t5_tokenizer

        small_t5_tokenizer().save_pretrained(folder)
    elif class_name == "T5EncoderModel":
        from transformers import T5Config

        T5Config(**config).save_pretrained(folder)
    elif class_name.startswith("CLIPTextModel"):
        from transformers import CLIPTextConfig

        CLIPTextConfig(max_position_embeddings=77, **config).save_pretrained(folder)
    else:
        name = "scheduler_config.json" if class_name.endswith("Scheduler") else "config.json"
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump({"_class_name": class_name, **{k: v for k, v in config.items() if k != "_class_name"}}, f)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__

"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): one CLIP text encoder whose last hidden
state conditions a UNet; images are ``vae.decode(z / scaling_factor)``.

The UNet functions (load, denoise, LoRA loading) are module functions that SDXL's family also uses: the two
families share functions, not a class, so that each family's file lists everything it does.
"""

from __future__ import annotations

import torch

from trainers.families.base import (
    ATTENTION_PROJECTIONS,
    Conditioning,
    DiffusionModel,
    ddim_sampling,
    decode_images,
    diffusers_lora_layers,
    frozen,
    native_resolution,
    tokenize,
)

LORA_FILE = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes


class StableDiffusion:
    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_folder = "unet"
    trained_files = (LORA_FILE,)
    sampler = "ddim"
    lora_targets = ATTENTION_PROJECTIONS
    kohya_prefix = "lora_unet_"  # pipeline.export's key prefix (None: no ComfyUI export)

    def latent_multiple(self, denoiser: torch.nn.Module) -> int:
        """What the latent side must be a multiple of (UNet: any latent size)."""
        return 1

    def guidance_of(self, denoiser: torch.nn.Module) -> str:
        return "cfg"

    schedule = staticmethod(ddim_sampling)

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool, **components) -> DiffusionModel:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            path,
            dtype=dtype,
            local_files_only=offline,
            safety_checker=None,
            requires_safety_checker=False,
            **components,
        )
        return DiffusionModel(
            self,
            frozen(pipe.unet, device),
            frozen(pipe.vae, device),
            (frozen(pipe.text_encoder, device),),
            (pipe.tokenizer,),
            self.scheduler(pipe.scheduler.config),
            device,
            dtype,
            native_resolution(pipe.unet, pipe.vae),
        )

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        return load_unet(path, dtype, offline)

    def scheduler(self, scheduler_config):
        """DDIM on the config as it stands (SD's configs carry ``clip_sample`` and ``set_alpha_to_one``)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler_config)

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """The last hidden state of the text encoder at the tokenizer's max length: ``(B, 77, D)``."""
        (encoder,), (tokenizer,) = model.text_encoders, model.tokenizers
        with torch.no_grad():
            states = encoder(tokenize(tokenizer, prompts, model.device))[0]
        return Conditioning(states.to(model.dtype))

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        """The encoding of the empty prompt, as ``StableDiffusionPipeline`` uses without a negative prompt."""
        return self.encode_prompts(model, [""] * n)

    def denoise(self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return unet_denoise(model, x_t, t, cond)

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        return decode_images(model.vae, latents.to(model.dtype) / model.vae.config.scaling_factor)

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        from diffusers import StableDiffusionPipeline

        layers, metadata = diffusers_lora_layers(denoiser)
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        load_unet_lora(denoiser, folder, adapter_name)


def load_unet(path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
    """The pipeline's ``unet/`` alone, as stored."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype, local_files_only=offline)


def unet_denoise(model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """The UNet's output, with SDXL's pooled embedding and time ids when the conditioning has them."""
    return model.denoiser(
        x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=cond.added or None, return_dict=False
    )[0]


def load_unet_lora(denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
    """Add the LoRA that ``save_lora_weights`` wrote (``unet.*`` keys) as the active adapter ``adapter_name``."""
    denoiser.load_lora_adapter(folder, weight_name=LORA_FILE, prefix="unet", adapter_name=adapter_name)

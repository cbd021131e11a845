"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): one CLIP text encoder whose last hidden
state conditions a UNet; images are ``vae.decode(z / scaling_factor)``."""

from __future__ import annotations

import torch

from trainers.families.base import Conditioning, DiffusionModel, decode_images, frozen, tokenize


class StableDiffusion:
    name = "sd"
    pipeline_class = "StableDiffusionPipeline"

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool) -> DiffusionModel:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=offline,
                                                       safety_checker=None, requires_safety_checker=False)
        return DiffusionModel(self, frozen(pipe.unet, device), frozen(pipe.vae, device),
                              (frozen(pipe.text_encoder, device),), (pipe.tokenizer,),
                              DDIMScheduler.from_config(pipe.scheduler.config), device, dtype,
                              native_resolution(pipe.unet, pipe.vae))

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
        added = cond.added or None
        return model.denoiser(x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added,
                              return_dict=False)[0]

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        return decode_images(model.vae, latents.to(model.dtype) / model.vae.config.scaling_factor)

    def save_lora(self, folder: str, layers: dict[str, torch.Tensor], metadata: dict) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)


def native_resolution(unet: torch.nn.Module, vae: torch.nn.Module) -> int:
    """The image side the UNet was built for, in pixels: ``sample_size`` times the VAE's downscaling."""
    return unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)

"""SDXL (``StableDiffusionXLPipeline``), as its pipeline conditions and decodes (docs/families.md):

- two CLIP text encoders; their penultimate hidden states are concatenated on the feature axis, and the
  pooled embedding is the second encoder's projected ``text_embeds``;
- ``time_ids = (H, W, 0, 0, H, W)``: original size = target size = the resolution, no crop;
- without a negative prompt, the unconditional branch is zeros when ``force_zeros_for_empty_prompt`` is
  set (the SDXL default), else the encoding of "";
- decoding ``z * latents_std / scale + latents_mean`` when the VAE config has both, else ``z / scale``;
  an fp16 VAE marked ``force_upcast`` (SDXL's overflows in fp16) is kept in fp32.
"""

from __future__ import annotations

import torch

from trainers.families.base import (
    ATTENTION_PROJECTIONS,
    Conditioning,
    DiffusionModel,
    ddim_sampling,
    ddim_scheduler,
    decode_images,
    diffusers_lora_layers,
    frozen,
    native_resolution,
    tokenize,
)
from trainers.families.sd import LORA_FILE, load_unet, load_unet_lora, unet_denoise


class StableDiffusionXL:
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
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
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(path, dtype=dtype, local_files_only=offline, **components)
        vae = pipe.vae.float() if dtype == torch.float16 and pipe.vae.config.get("force_upcast") else pipe.vae
        return DiffusionModel(
            self,
            frozen(pipe.unet, device),
            frozen(vae, device),
            (frozen(pipe.text_encoder, device), frozen(pipe.text_encoder_2, device)),
            (pipe.tokenizer, pipe.tokenizer_2),
            self.scheduler(pipe.scheduler.config),
            device,
            dtype,
            native_resolution(pipe.unet, pipe.vae),
            {"force_zeros_for_empty_prompt": bool(pipe.config.force_zeros_for_empty_prompt)},
        )

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        return load_unet(path, dtype, offline)

    def scheduler(self, scheduler_config):
        return ddim_scheduler(scheduler_config)

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """``(B, 77, D1 + D2)`` penultimate states, pooled ``text_embeds`` ``(B, P)`` and ``time_ids`` ``(B, 6)``."""
        states, pooled = [], None
        with torch.no_grad():
            for encoder, tokenizer in zip(model.text_encoders, model.tokenizers):
                out = encoder(tokenize(tokenizer, prompts, model.device), output_hidden_states=True)
                pooled = out[0] if out[0].dim() == 2 else pooled  # CLIPTextModelWithProjection's text_embeds
                states.append(out.hidden_states[-2])
        side = float(model.resolution)
        time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]] * len(prompts), device=model.device)
        return Conditioning(
            torch.cat(states, dim=-1).to(model.dtype),
            {"text_embeds": pooled.to(model.dtype), "time_ids": time_ids.to(model.dtype)},
        )

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        empty = self.encode_prompts(model, [""] * n)
        if not model.pipeline_config.get("force_zeros_for_empty_prompt"):
            return empty
        return Conditioning(
            torch.zeros_like(empty.hidden_states),
            {**empty.added, "text_embeds": torch.zeros_like(empty.added["text_embeds"])},
        )

    def denoise(self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return unet_denoise(model, x_t, t, cond)

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        vae = model.vae
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        z = latents.to(vae.dtype)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape)
            std = torch.tensor(std, device=z.device, dtype=z.dtype).view(shape)
            return decode_images(vae, z * std / vae.config.scaling_factor + mean)
        return decode_images(vae, z / vae.config.scaling_factor)

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        from diffusers import StableDiffusionXLPipeline

        layers, metadata = diffusers_lora_layers(denoiser)
        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata
        )

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        load_unet_lora(denoiser, folder, adapter_name)

"""PixArt-α (``PixArtAlphaPipeline``), as its pipeline conditions and denoises (docs/families.md):

- one T5 encoder, captions lowercased and stripped (the pipeline's ``clean_caption=False`` preprocessing),
  120 tokens, with the attention mask, which reaches the transformer as ``encoder_attention_mask``
  (carried in ``Conditioning.added``, so it travels through ``cat`` and ``repeat``);
- the unconditional branch is the encoding of "" with its own mask;
- the 1024 px model (``sample_size == 128``) is conditioned on the resolution and aspect ratio;
- learned sigma: the transformer outputs 8 channels and ε is the first 4. Guidance is linear in each
  channel, so keeping them before or after guidance gives the same ε;
- there is no diffusers LoRA loader for PixArt: a LoRA is saved as a peft adapter folder, which
  ``peft.PeftModel.from_pretrained(pipe.transformer, folder)`` loads.
"""

from __future__ import annotations

import json
import os

import torch

from trainers.families.base import (
    ATTENTION_PROJECTIONS,
    Conditioning,
    DiffusionModel,
    ddim_sampling,
    ddim_scheduler,
    decode_images,
    frozen,
    native_resolution,
)

MAX_TOKENS = 120  # the pipeline's max_sequence_length
MASK = "encoder_attention_mask"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # peft's file names
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before the module names


class PixArtAlpha:
    name = "pixart"
    pipeline_class = "PixArtAlphaPipeline"
    denoiser_folder = "transformer"
    trained_files = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    sampler = "ddim"
    lora_targets = ATTENTION_PROJECTIONS
    kohya_prefix = None  # pipeline.export's key prefix (None: no ComfyUI export)

    def latent_multiple(self, denoiser: torch.nn.Module) -> int:
        """What the latent side must be a multiple of (patchified)."""
        return denoiser.config.patch_size

    def guidance_of(self, denoiser: torch.nn.Module) -> str:
        return "cfg"

    schedule = staticmethod(ddim_sampling)

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool, **components) -> DiffusionModel:
        from diffusers import PixArtAlphaPipeline

        pipe = PixArtAlphaPipeline.from_pretrained(path, dtype=dtype, local_files_only=offline, **components)
        return DiffusionModel(
            self,
            frozen(pipe.transformer, device),
            frozen(pipe.vae, device),
            (frozen(pipe.text_encoder, device),),
            (pipe.tokenizer,),
            self.scheduler(pipe.scheduler.config),
            device,
            dtype,
            native_resolution(pipe.transformer, pipe.vae),
        )

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        from diffusers import PixArtTransformer2DModel

        return PixArtTransformer2DModel.from_pretrained(
            path, subfolder=self.denoiser_folder, dtype=dtype, local_files_only=offline
        )

    def scheduler(self, scheduler_config):
        """DDIM without clipping, ending at alpha-bar 1 (the clean x0), as PixArt's DPM-Solver ends at sigma 0:
        its timesteps reach 0, where a step to alpha-bar(0) would change nothing (and train nothing at K=1)."""
        return ddim_scheduler(scheduler_config, set_alpha_to_one=True)

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """T5's last hidden state ``(B, 120, D)``, its mask ``(B, 120)`` and, for the 1024 px model, the
        resolution ``(B, 2)`` and aspect ratio ``(B, 1)``."""
        (encoder,), (tokenizer,) = model.text_encoders, model.tokenizers
        tokens = tokenizer(
            [p.lower().strip() for p in prompts],
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(model.device), tokens.attention_mask.to(model.device)
        with torch.no_grad():
            states = encoder(ids, attention_mask=mask)[0]
        added = {MASK: mask.to(model.dtype)}
        if model.denoiser.config.sample_size == 128:  # use_additional_conditions (pixart_transformer_2d.py)
            side = float(model.resolution)
            added |= {
                "resolution": torch.tensor([[side, side]] * len(prompts), device=model.device, dtype=model.dtype),
                "aspect_ratio": torch.ones(len(prompts), 1, device=model.device, dtype=model.dtype),
            }
        return Conditioning(states.to(model.dtype), added)

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        return self.encode_prompts(model, [""] * n)

    def denoise(self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extra = {k: cond.added.get(k) for k in ("resolution", "aspect_ratio")}
        out = model.denoiser(
            x_t,
            encoder_hidden_states=cond.hidden_states,
            encoder_attention_mask=cond.added[MASK],
            timestep=t.expand(x_t.shape[0]),
            added_cond_kwargs=extra,
            return_dict=False,
        )[0]
        channels = x_t.shape[1]
        return out[:, :channels] if out.shape[1] == 2 * channels else out

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        return decode_images(model.vae, latents.to(model.dtype) / model.vae.config.scaling_factor)

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        """``adapter_config.json`` and ``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        config = denoiser.peft_config["default"]
        layers = get_peft_model_state_dict(denoiser, adapter_name="default")
        save_file({PEFT_PREFIX + k: v.contiguous() for k, v in layers.items()}, os.path.join(folder, ADAPTER_WEIGHTS))
        config.save_pretrained(folder)

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from trainers.adapters import add_lora

        with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as f:
            fields = json.load(f)
        config = LoraConfig(**{k: v for k, v in fields.items() if k in LoraConfig.__dataclass_fields__})
        add_lora(denoiser, config, adapter_name)
        layers = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(os.path.join(folder, ADAPTER_WEIGHTS)).items()}
        result = set_peft_model_state_dict(denoiser, layers, adapter_name=adapter_name)
        if result.unexpected_keys:
            raise ValueError(
                f"{folder!r}: LoRA tensors this transformer has no place for: {result.unexpected_keys[:3]}"
            )
        denoiser.requires_grad_(False)

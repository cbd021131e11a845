"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``), a flow-matching model, as its pipeline conditions,
samples and decodes (docs/families.md):

- two CLIP encoders with projection (penultimate hidden states, pooled ``text_embeds``) and T5 at 256 tokens
  with no attention mask (zeros when the pipeline was saved without T5);
- the two CLIP feature sets, concatenated on the feature axis, are zero-padded to the T5 width and put
  before the T5 tokens on the sequence axis; the pooled vector is both encoders' ``text_embeds`` side by side;
- the unconditional branch is the encoding of "";
- the transformer predicts the flow velocity at the timestep ``sigma * 1000``, sampled by
  :mod:`trainers.samplers.flow` on the sigmas of the pipeline's ``FlowMatchEulerDiscreteScheduler``;
- decoding ``vae.decode(z / scaling_factor + shift_factor)``;
- a LoRA is saved with ``StableDiffusion3Pipeline.save_lora_weights``, so ``pipe.load_lora_weights`` loads it.
"""

from __future__ import annotations

import torch

from trainers.families.base import (
    ATTENTION_PROJECTIONS,
    Conditioning,
    DiffusionModel,
    decode_images,
    flow_match_scheduler,
    frozen,
    native_resolution,
)
from trainers.families.sd import LORA_FILE

T5_TOKENS = 256  # the pipeline's max_sequence_length
POOLED = "pooled_projections"
# the joint blocks' image stream (to_*, also SD3.5-M's attn2) and text stream (add_*_proj, to_add_out)
LORA_TARGETS = (*ATTENTION_PROJECTIONS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


class StableDiffusion3:
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_folder = "transformer"
    trained_files = (LORA_FILE,)
    sampler = "flow"
    lora_targets = LORA_TARGETS
    kohya_prefix = None  # pipeline.export's key prefix (None: no ComfyUI export)

    def latent_multiple(self, denoiser: torch.nn.Module) -> int:
        """What the latent side must be a multiple of (patchified)."""
        return denoiser.config.patch_size

    def guidance_of(self, denoiser: torch.nn.Module) -> str:
        return "cfg"

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool, **components) -> DiffusionModel:
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=dtype, local_files_only=offline, **components)
        pairs = [
            (e, t)
            for e, t in (
                (pipe.text_encoder, pipe.tokenizer),
                (pipe.text_encoder_2, pipe.tokenizer_2),
                (pipe.text_encoder_3, pipe.tokenizer_3),
            )
            if e is not None
        ]
        return DiffusionModel(
            self,
            frozen(pipe.transformer, device),
            frozen(pipe.vae, device),
            tuple(frozen(e, device) for e, _ in pairs),
            tuple(t for _, t in pairs),
            self.scheduler(pipe.scheduler.config),
            device,
            dtype,
            native_resolution(pipe.transformer, pipe.vae),
        )

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel.from_pretrained(
            path, subfolder=self.denoiser_folder, dtype=dtype, local_files_only=offline
        )

    def scheduler(self, scheduler_config):
        return flow_match_scheduler(scheduler_config)

    def schedule(self, model: DiffusionModel, num_steps: int):
        """Flow-matching Euler sigmas; under dynamic shifting ``mu`` follows the latent's patch count."""
        from trainers.samplers.flow import flow_schedule

        _, h, w = model.latent_shape
        patch = model.denoiser.config.patch_size
        return flow_schedule(model.scheduler.config, num_steps, (h // patch) * (w // patch))

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """``(B, 77 + 256, D_T5)`` token states and ``(B, P1 + P2)`` pooled projections."""
        clip_length = model.tokenizers[0].model_max_length  # both CLIP tokenizers pad to the first's length
        clip_states, pooled = [], []
        with torch.no_grad():
            for encoder, tokenizer in zip(model.text_encoders[:2], model.tokenizers[:2]):
                ids = tokenizer(
                    list(prompts), padding="max_length", max_length=clip_length, truncation=True, return_tensors="pt"
                ).input_ids.to(model.device)
                out = encoder(ids, output_hidden_states=True)
                pooled.append(out[0])
                clip_states.append(out.hidden_states[-2])
            t5 = self._t5_states(model, prompts)
        clip = torch.cat(clip_states, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        states = torch.cat([clip.to(model.dtype), t5.to(model.dtype)], dim=-2)
        return Conditioning(states, {POOLED: torch.cat(pooled, dim=-1).to(model.dtype)})

    def _t5_states(self, model: DiffusionModel, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden state over all 256 tokens, padding included (no mask); zeros without a T5."""
        if len(model.text_encoders) < 3:
            width = model.denoiser.config.joint_attention_dim
            return torch.zeros(len(prompts), T5_TOKENS, width, device=model.device, dtype=model.dtype)
        ids = model.tokenizers[2](
            list(prompts),
            padding="max_length",
            max_length=T5_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(model.device)
        return model.text_encoders[2](ids)[0]

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        return self.encode_prompts(model, [""] * n)

    def denoise(self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return model.denoiser(
            hidden_states=x_t,
            timestep=t.expand(x_t.shape[0]),
            encoder_hidden_states=cond.hidden_states,
            pooled_projections=cond.added[POOLED],
            return_dict=False,
        )[0]

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        config = model.vae.config
        return decode_images(model.vae, latents.to(model.dtype) / config.scaling_factor + config.shift_factor)

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        """peft's key names (``...to_q.lora_A.weight``) under ``transformer.``, as the SD3 loader reads them: the
        old ``lora.down``/``lora.up`` names the UNet families convert to would be skipped on load."""
        from diffusers import StableDiffusion3Pipeline
        from peft.utils import get_peft_model_state_dict

        StableDiffusion3Pipeline.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(denoiser, adapter_name="default"),
            transformer_lora_adapter_metadata=denoiser.peft_config["default"].to_dict(),
        )

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        denoiser.load_lora_adapter(folder, weight_name=LORA_FILE, prefix="transformer", adapter_name=adapter_name)

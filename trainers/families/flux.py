"""FLUX.1 [dev] and [schnell] (``FluxPipeline``), flow-matching transformers, as their pipeline conditions,
samples and decodes (docs/families.md):

- CLIP's pooled output (``CLIPTextModel.pooler_output``, no projection) and T5's last hidden state at
  512 tokens for [dev], 256 for [schnell], with no attention mask; the text tokens' positions are zeros;
- no classifier-free guidance batch: [dev] is guidance-distilled and takes the guidance scale as an input
  (``guidance``, raw), [schnell] takes none;
- the engine's latents ``(B, C, h, w)`` are packed into 2x2 patches ``(B, h/2 * w/2, 4C)`` (channel order
  ``c, dy, dx``) for the transformer, with image positions ``(0, row, col)``, and unpacked after;
- the transformer takes the timestep as ``sigma`` (it multiplies by 1000 itself); the sigmas are the
  pipeline's ``linspace(1, 1/T, T)`` shifted by its ``FlowMatchEulerDiscreteScheduler`` (``mu`` from the
  packed sequence length under dynamic shifting);
- decoding ``vae.decode(z / scaling_factor + shift_factor)``;
- a LoRA on the double-stream blocks' image and text attention and the single-stream blocks' q/k/v (which have
  no ``to_out``) is saved with ``FluxPipeline.save_lora_weights``, so ``pipe.load_lora_weights`` loads it.
"""

from __future__ import annotations

import numpy as np
import torch

from trainers.families.base import Conditioning, DiffusionModel, decode_images, flow_match_scheduler, frozen
from trainers.families.sd import LORA_FILE
from trainers.families.sd3 import LORA_TARGETS

POOLED, GUIDED_T5_TOKENS, T5_TOKENS = "pooled_projections", 512, 256  # [dev]'s max_sequence_length, [schnell]'s
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size: latent side before the VAE's scaling (1024 px)


class Flux:
    name = "flux"
    pipeline_class = "FluxPipeline"
    denoiser_folder = "transformer"
    trained_files = (LORA_FILE,)
    sampler = "flow"
    lora_targets = LORA_TARGETS  # both streams' attention; single blocks match to_q/to_k/to_v
    kohya_prefix = "lora_transformer_"  # pipeline.export's key prefix (None: no ComfyUI export)

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool, **components) -> DiffusionModel:
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(path, dtype=dtype, local_files_only=offline, **components)
        return DiffusionModel(
            self,
            frozen(pipe.transformer, device),
            frozen(pipe.vae, device),
            (frozen(pipe.text_encoder, device), frozen(pipe.text_encoder_2, device)),
            (pipe.tokenizer, pipe.tokenizer_2),
            self.scheduler(pipe.scheduler.config),
            device,
            dtype,
            DEFAULT_SAMPLE_SIZE * 2 ** (len(pipe.vae.config.block_out_channels) - 1),
            guidance=self.guidance_of(pipe.transformer),
        )

    def latent_multiple(self, denoiser: torch.nn.Module) -> int:
        """What the latent side must be a multiple of (packed into 2x2 patches)."""
        return 2

    def guidance_of(self, denoiser: torch.nn.Module) -> str:
        """[dev] takes the guidance scale as an input; [schnell] has none."""
        return "embedded" if denoiser.config.guidance_embeds else "none"

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel.from_pretrained(
            path, subfolder=self.denoiser_folder, dtype=dtype, local_files_only=offline
        )

    def scheduler(self, scheduler_config):
        return flow_match_scheduler(scheduler_config)

    def schedule(self, model: DiffusionModel, num_steps: int):
        """The pipeline's sigmas ``linspace(1, 1/T, T)``, shifted; ``mu`` from the packed sequence length."""
        from trainers.samplers.flow import flow_schedule

        _, h, w = model.latent_shape
        base = np.linspace(1.0, 1 / num_steps, num_steps)
        return flow_schedule(model.scheduler.config, num_steps, (h // 2) * (w // 2), base_sigmas=base)

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """``(B, L_T5, D_T5)`` T5 states and ``(B, D_CLIP)`` CLIP pooled outputs."""
        (clip, t5), (clip_tokenizer, t5_tokenizer) = model.text_encoders, model.tokenizers
        length = GUIDED_T5_TOKENS if model.guidance == "embedded" else T5_TOKENS
        with torch.no_grad():
            ids = clip_tokenizer(
                list(prompts),
                padding="max_length",
                max_length=clip_tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(model.device)
            pooled = clip(ids, output_hidden_states=False).pooler_output
            ids = t5_tokenizer(
                list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids.to(model.device)
            states = t5(ids, output_hidden_states=False)[0]
        return Conditioning(states.to(model.dtype), {POOLED: pooled.to(model.dtype)})

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        raise ValueError("FLUX is sampled without a classifier-free guidance batch; it has no negative branch")

    def denoise(
        self,
        model: DiffusionModel,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance: float | None = None,
    ) -> torch.Tensor:
        b, c, h, w = x_t.shape
        timestep = t.expand(b).to(x_t.dtype) / 1000  # as the pipeline: sigma, which the transformer scales by 1000
        embedded = None
        if model.guidance == "embedded":
            embedded = torch.full((b,), float(guidance), device=x_t.device, dtype=torch.float32)
        states = cond.hidden_states
        out = model.denoiser(
            hidden_states=pack(x_t),
            timestep=timestep,
            guidance=embedded,
            pooled_projections=cond.added[POOLED],
            encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3, device=x_t.device, dtype=states.dtype),
            img_ids=image_positions(h // 2, w // 2, x_t.device, x_t.dtype),
            return_dict=False,
        )[0]
        return unpack(out, c, h, w)

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        config = model.vae.config
        return decode_images(model.vae, latents.to(model.dtype) / config.scaling_factor + config.shift_factor)

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        """peft's key names under ``transformer.``, as ``FluxPipeline.load_lora_weights`` reads them."""
        from diffusers import FluxPipeline
        from peft.utils import get_peft_model_state_dict

        FluxPipeline.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(denoiser, adapter_name="default"),
            transformer_lora_adapter_metadata=denoiser.peft_config["default"].to_dict(),
        )

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        denoiser.load_lora_adapter(folder, weight_name=LORA_FILE, prefix="transformer", adapter_name=adapter_name)


def pack(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/2 * w/2, 4C)``: 2x2 patches, row-major, each patch's channels as ``(c, dy, dx)``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack`."""
    b = x.shape[0]
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_positions(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(rows * cols, 3)`` positions ``(0, row, col)`` of the packed patches, row-major."""
    grid = torch.zeros(rows, cols, 3)
    grid[..., 1] += torch.arange(rows)[:, None]
    grid[..., 2] += torch.arange(cols)[None, :]
    return grid.reshape(rows * cols, 3).to(device=device, dtype=dtype)

"""What the engine sees of a model, whatever its family: :class:`DiffusionModel`, :class:`Conditioning`
and the :class:`ModelFamily` protocol that each family module implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' attention, in UNets and transformers


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, batch-first.

    Attributes:
        hidden_states: Text-encoder states for cross-attention, shape ``(B, L, D)``.
        added: Extra conditioning tensors by name (SDXL: ``text_embeds``, ``time_ids``), each ``(B, ...)``.
    """

    hidden_states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch axis."""
        added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return Conditioning(torch.cat([p.hidden_states for p in parts]), added)

    def repeat(self, n: int) -> Conditioning:
        """Tile the batch ``n`` times: ``(B, ...) -> (n*B, ...)``."""
        return Conditioning.cat([self] * n)


@dataclass
class DiffusionModel:
    """A loaded text-to-image latent diffusion model; ``denoiser`` is what training changes.

    Attributes:
        text_encoders: The frozen text encoders, in the pipeline's order (``text_encoder``, ``text_encoder_2``).
        tokenizers: Their tokenizers, in the same order.
        pipeline_config: The non-component entries of the pipeline's ``model_index.json``
            (SDXL: ``force_zeros_for_empty_prompt``).
        guidance: How the guidance scale is applied: ``cfg`` (classifier-free, an unconditional batch),
            ``embedded`` (an input of the denoiser: FLUX.1 [dev]) or ``none`` (FLUX.1 [schnell]).
    """

    family: ModelFamily
    denoiser: torch.nn.Module
    vae: torch.nn.Module | None
    text_encoders: tuple[torch.nn.Module, ...]
    tokenizers: tuple[Any, ...]
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    resolution: int
    pipeline_config: dict[str, Any] = field(default_factory=dict)
    guidance: Literal["cfg", "embedded", "none"] = "cfg"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent, as the VAE encodes an image (FLUX's transformer sees it packed)."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.resolution // scale
        return (self.vae.config.latent_channels, side, side)

    def unconditional(self, n: int, guidance: float) -> Conditioning | None:
        """Classifier-free guidance's unconditional branch for a batch of ``n`` at scale ``guidance``, or None
        when there is none: guidance off (``<= 1``), or applied otherwise (:attr:`guidance`)."""
        return self.family.encode_negative(self, n) if self.guidance == "cfg" and guidance > 1 else None

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The VAE and text encoders (what training never changes)."""
        return [m for m in (self.vae, *self.text_encoders) if m is not None]


class ModelFamily(Protocol):
    """What differs between model families; one module per family implements it."""

    name: str
    pipeline_class: str  # the diffusers pipeline class of the family's model_index.json
    denoiser_folder: str  # the denoiser's component folder in the pipeline ("unet", "transformer")
    trained_files: tuple[str, ...]  # the files a saved LoRA folder holds
    sampler: str  # "ddim" (trainers/samplers/ddim.py) or "flow" (trainers/samplers/flow.py)
    lora_targets: tuple[str, ...]  # the denoiser modules given LoRA adapters when trainable.target_modules is unset
    kohya_prefix: str | None  # the key prefix of pipeline.export's ComfyUI/kohya file; None: not exported

    def load_denoiser(self, path: str, dtype: torch.dtype, offline: bool) -> torch.nn.Module:
        """The pipeline's denoiser alone (a distillation teacher), as stored."""

    def latent_multiple(self, denoiser: torch.nn.Module) -> int:
        """What the latent side must be a multiple of (a transformer's patch size; FLUX's 2x2 packing)."""

    def guidance_of(self, denoiser: torch.nn.Module) -> str:
        """How ``denoiser`` is guided: :attr:`DiffusionModel.guidance`."""

    def scheduler(self, scheduler_config) -> Any:
        """The diffusers scheduler whose maths sampling follows, from the pipeline's scheduler config."""

    def schedule(self, model: DiffusionModel, num_steps: int) -> Any:
        """The :class:`~trainers.samplers.schedule.Schedule` of a ``num_steps`` sampling run of ``model``."""

    def load(self, path: str, dtype: torch.dtype, device: torch.device, offline: bool, **components) -> DiffusionModel:
        """The pipeline folder's (or hub id's) components, frozen, in eval mode, on ``device``;
        ``resolution`` is the denoiser's native size. ``components`` (by ``model_index.json`` name) are used as
        given instead of being loaded (``trainers.models.skeleton_model``: built on the meta device)."""

    def encode_prompts(self, model: DiffusionModel, prompts: list[str]) -> Conditioning:
        """The conditioning of each prompt, without gradient."""

    def encode_negative(self, model: DiffusionModel, n: int) -> Conditioning:
        """The unconditional branch of classifier-free guidance for a batch of ``n``, as the family's pipeline
        builds it for an absent negative prompt."""

    def denoise(self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's output for latents ``(B, C, h, w)`` at timestep ``t`` (0-dim or ``(B,)``). A family
        whose models take the guidance scale as an input (``model.guidance == "embedded"``) also takes it here,
        as a fifth argument."""

    def decode(self, model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` -> images ``(B, 3, H, W)`` in [0, 1], differentiable, at least fp32."""

    def save_lora(self, folder: str, denoiser: torch.nn.Module) -> None:
        """Write the denoiser's ``default`` LoRA adapter in the format the family's users load."""

    def load_lora(self, denoiser: torch.nn.Module, folder: str, adapter_name: str) -> None:
        """Add the LoRA that :meth:`save_lora` wrote to ``denoiser`` as the active adapter ``adapter_name``."""


def frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` without gradients, in eval mode, on ``device``."""
    return module.requires_grad_(False).eval().to(device)


def native_resolution(denoiser: torch.nn.Module, vae: torch.nn.Module) -> int:
    """The image side the denoiser was built for, in pixels: its ``sample_size`` times the VAE's downscaling."""
    return denoiser.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)


def decode_images(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z)`` mapped from [-1, 1] to [0, 1], kept at least fp32 for the rewards."""
    images = vae.decode(z, return_dict=False)[0]
    images = images.to(torch.promote_types(images.dtype, torch.float32))
    return (images / 2 + 0.5).clamp(0, 1)


def tokenize(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Token ids padded (and truncated) to the tokenizer's max length, ``(B, L)``."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


# DDIM's own defaults for keys absent from another scheduler's config (SDXL ships EulerDiscrete, PixArt
# DPMSolver) would clip x0 and use alpha-bar 1 at the end; their pipelines do neither (docs/families.md)
DDIM_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}


def ddim_scheduler(config, **defaults) -> Any:
    """A DDIM scheduler on the noise schedule of another scheduler's ``config``; keys the config lacks take
    ``defaults``, else :data:`DDIM_DEFAULTS` (no clipping), not DDIM's own."""
    from diffusers import DDIMScheduler

    defaults = {**DDIM_DEFAULTS, **defaults}
    return DDIMScheduler.from_config(config, **{k: v for k, v in defaults.items() if k not in config})


def flow_match_scheduler(config) -> Any:
    """The pipeline's ``FlowMatchEulerDiscreteScheduler`` (SD3, FLUX); flow sampling reads only its config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(config)


def ddim_sampling(model: DiffusionModel, num_steps: int) -> Any:
    """The DDIM schedule of ``num_steps`` steps on the model's (DDIM) scheduler."""
    from trainers.samplers.ddim import ddim_schedule

    return ddim_schedule(model.scheduler, num_steps)


def diffusers_lora_layers(denoiser: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The ``default`` adapter's tensors in diffusers' key format, and its config (``save_lora_weights``'s inputs)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser, adapter_name="default"))
    return layers, denoiser.peft_config["default"].to_dict()

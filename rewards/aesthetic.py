"""LAION aesthetic predictor v2 ("sac+logos+ava1-l14-linearMSE") as a differentiable reward.

The score is a linear MLP on the L2-normalised OpenAI CLIP ViT-L/14 image embedding
(Schuhmann et al., improved-aesthetic-predictor; used by DRaFT, Clark et al. 2024, Sec. 5):

    e = f_I(x̂) / ‖f_I(x̂)‖,   r(x) = W_7 W_6 (W_4 (W_2 (W_0 e + b_0) + b_2) + b_4) + ...,

i.e. ``Linear(d,1024) → Dropout(0.2) → Linear(1024,128) → Dropout(0.2) → Linear(128,64) →
Dropout(0.1) → Linear(64,16) → Linear(16,1)`` with no nonlinearities (dropouts are inactive in eval).
Scores are roughly 1–10 (SD 1.x images ≈ 5–6). Prompts are ignored.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import RewardLoadError, check_images, describe_state_dict_mismatch, freeze, model_device_dtype
from rewards.descriptor import OPEN_CLIP_ARCH, OPEN_CLIP_TENSORS, RewardDescriptor, WeightsFile
from rewards.open_clip_loading import load_open_clip, meta_open_clip, open_clip_preprocess, register_arch_config
from rewards.preprocess import ImagePreprocess

if TYPE_CHECKING:
    from rewards.config import RewardSpec


class AestheticMLP(nn.Module):
    """The aesthetic head; its state-dict keys match the official ``.pth`` (``layers.{0,2,4,6,7}.*``).

    Args:
        embed_dim: ``d``, the CLIP image-embedding size (768 for ViT-L/14).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Map ``(B, d)`` normalised embeddings to ``(B,)`` scores."""
        return self.layers(embeddings).squeeze(-1)


class AestheticReward(nn.Module):
    """``r(x) = MLP(f_I(x̂) / ‖f_I(x̂)‖)``; prompts are checked but not used.

    Args:
        visual: The open_clip image tower (``CLIP.visual``), mapping ``x̂`` to ``(B, d)`` embeddings.
        head: The :class:`AestheticMLP`.
        preprocess: The differentiable image preprocessing for ``visual``.
    """

    def __init__(self, visual: nn.Module, head: AestheticMLP, preprocess: ImagePreprocess) -> None:
        super().__init__()
        self.visual = freeze(visual)
        self.head = freeze(head)
        self.preprocess = preprocess
        self.name = "aesthetic"

    def train(self, mode: bool = True) -> AestheticReward:
        """Stay in eval mode (dropout off) whatever ``mode`` is: a reward's network is frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1]; returns ``(B,)`` float32."""
        check_images(images, prompts)
        device, dtype = model_device_dtype(self.visual)
        x_hat = self.preprocess(images.to(device=device, dtype=dtype))  # (B, 3, h, w)
        embeddings = F.normalize(self.visual(x_hat), dim=-1)  # (B, d)
        return self.head(embeddings).float()


def aesthetic_skeleton(spec: RewardSpec) -> AestheticReward:
    """The aesthetic reward's modules on the meta device (``RewardDescriptor.skeleton``)."""
    import open_clip

    if spec.arch_config is not None:
        register_arch_config(spec.arch_config)
    arch = spec.resolved_arch()
    clip = meta_open_clip(arch)
    with torch.device("meta"):
        head = AestheticMLP(open_clip.get_model_config(arch)["embed_dim"])
    return AestheticReward(clip.visual, head, open_clip_preprocess(clip))


def load_aesthetic(spec: RewardSpec) -> AestheticReward:
    """Load the aesthetic reward: CLIP image tower from ``spec.clip_checkpoint``, head from ``spec.checkpoint``.

    Raises:
        RewardLoadError: If a file is missing or its tensors do not fit (including a head whose input
            size differs from the CLIP embedding size).
    """
    import open_clip

    if spec.arch_config is not None:
        register_arch_config(spec.arch_config)
    arch = spec.resolved_arch()
    assert arch is not None and spec.checkpoint is not None and spec.clip_checkpoint is not None
    clip = load_open_clip(arch, spec.clip_checkpoint, "aesthetic CLIP image-encoder weights file")
    embed_dim = open_clip.get_model_config(arch)["embed_dim"]
    head = load_aesthetic_head(spec.checkpoint, embed_dim)
    return AestheticReward(clip.visual, head, open_clip_preprocess(clip))


def load_aesthetic_head(path: str, embed_dim: int) -> AestheticMLP:
    """Load an :class:`AestheticMLP` state dict from ``path``, strictly.

    Accepts the official layout (``layers.0.weight`` ...), a ``{'state_dict': ...}`` wrapper and a
    ``module.`` prefix.

    Raises:
        RewardLoadError: If the file is missing, unreadable, or its tensors do not match
            ``AestheticMLP(embed_dim)``.
    """
    if not os.path.isfile(path):
        raise RewardLoadError(
            f"aesthetic head file not found at {path!r}; expected the MLP state dict "
            "such as sac+logos+ava1-l14-linearMSE.pth"
        )
    state = _unwrap(_read_tensors(path))
    head = AestheticMLP(embed_dim)
    mismatch = describe_state_dict_mismatch(head.state_dict(), state)
    if mismatch:
        raise RewardLoadError(
            f"aesthetic head file {path!r} does not match AestheticMLP(embed_dim={embed_dim}) "
            f"(the CLIP image-embedding size): {mismatch}"
        )
    head.load_state_dict(state, strict=True)
    return head


def _read_tensors(path: str) -> Mapping[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RewardLoadError(
            f"aesthetic head file {path!r} holds non-tensor objects; if you trust it, "
            "re-save its state_dict() with torch.save"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise several types for corrupt files
        raise RewardLoadError(f"aesthetic head file {path!r} could not be read: {e}") from e


def _unwrap(state: Mapping) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise RewardLoadError(f"aesthetic head file holds a {type(state).__name__}, expected a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


# The LAION head was trained on OpenAI CLIP ViT-L/14 features, and OpenAI's CLIP uses QuickGELU: the plain
# "ViT-L-14" config has the same tensors but GELU, so it would load OpenAI weights without error and score wrongly.
DESCRIPTOR = RewardDescriptor(
    skeleton=aesthetic_skeleton,
    name="aesthetic",
    load=load_aesthetic,
    unit="aesthetic score (1-10)",
    required={
        "checkpoint": "the aesthetic MLP head, e.g. sac+logos+ava1-l14-linearMSE.pth",
        "clip_checkpoint": "the OpenAI CLIP ViT-L/14 weights in open_clip format",
    },
    allowed=OPEN_CLIP_ARCH,
    files={
        "checkpoint": WeightsFile(
            what="the aesthetic MLP head (sac+logos+ava1-l14-linearMSE.pth)", prefixes=("layers.",)
        ),
        "clip_checkpoint": WeightsFile(
            what="the OpenAI CLIP ViT-L/14 weights in open_clip format", prefixes=OPEN_CLIP_TENSORS
        ),
    },
    default_arch="ViT-L-14-quickgelu",
)

"""Image–text similarity rewards on open_clip models: HPSv2 / HPSv2.1 and CLIP score.

Both embed the image and the prompt with a CLIP model and score the cosine of the two embeddings,

    r(x, c) = s · ⟨f_I(x̂) / ‖f_I(x̂)‖, f_T(c) / ‖f_T(c)‖⟩,

where ``x̂`` is the resized, normalised image. HPSv2 (Wu et al., 2023, "Human Preference Score v2")
is OpenCLIP ViT-H/14 fine-tuned on HPDv2 and uses ``s = 1`` with no logit scale, as the ``hpsv2``
package's ``img_score`` does (benchmarks report ×100). CLIP score (Hessel et al., 2021) uses
``s = 100``; unlike torchmetrics we do not clamp at 0, which would zero the gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import check_images, freeze, model_device_dtype
from rewards.descriptor import OPEN_CLIP_ARCH, OPEN_CLIP_TENSORS, RewardDescriptor, WeightsFile
from rewards.open_clip_loading import load_open_clip, meta_open_clip, open_clip_preprocess, register_arch_config
from rewards.preprocess import ImagePreprocess

if TYPE_CHECKING:
    from rewards.config import RewardSpec


class ClipSimilarityReward(nn.Module):
    """``r(x, c) = scale · cos(f_I(x̂), f_T(c))`` on an open_clip model.

    Args:
        model: An open_clip ``CLIP`` model (frozen here).
        tokenizer: Maps a list of ``B`` prompts to ``(B, L)`` token ids.
        preprocess: The differentiable image preprocessing for ``model``.
        scale: ``s``: 1 for HPSv2, 100 for CLIP score.
        name: Reward name for logging.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        preprocess: ImagePreprocess,
        scale: float,
        name: str,
    ) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.scale = scale
        self.name = name

    def train(self, mode: bool = True) -> ClipSimilarityReward:
        """Stay in eval mode whatever ``mode`` is: a reward's network is frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1] against ``B`` prompts; returns ``(B,)`` float32."""
        check_images(images, prompts)
        image_emb = self.image_features(images)  # (B, D)
        tokens = self.tokenizer(list(prompts)).to(image_emb.device)  # (B, L)
        text_emb = F.normalize(self.model.encode_text(tokens), dim=-1)  # (B, D)
        return self.scale * (image_emb * text_emb).sum(dim=-1).float()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings ``f_I(x̂) / ||f_I(x̂)||`` of ``(B, 3, H, W)`` images in [0, 1]: ``(B, D)``."""
        device, dtype = model_device_dtype(self.model)
        x_hat = self.preprocess(images.to(device=device, dtype=dtype))  # (B, 3, h, w)
        return F.normalize(self.model.encode_image(x_hat), dim=-1)


def load_hpsv2(spec: RewardSpec) -> ClipSimilarityReward:
    """Load the HPSv2 / HPSv2.1 reward from ``spec.checkpoint`` (architecture ViT-H-14 by default).

    Raises:
        RewardLoadError: If the checkpoint or architecture config is missing or does not match.
    """
    return _load_similarity(spec, "HPSv2 checkpoint file (HPS_v2.1_compressed.pt)", HPSV2.scale)


def load_clip_score(spec: RewardSpec) -> ClipSimilarityReward:
    """Load a CLIP-score reward: ``spec.arch`` (or ``spec.arch_config``) with weights ``spec.checkpoint``.

    Raises:
        RewardLoadError: If the weights or architecture config are missing or do not match.
    """
    return _load_similarity(spec, "open_clip weights file for clip_score", CLIP_SCORE.scale)


def _load_similarity(spec: RewardSpec, what: str, scale: float, meta: bool = False) -> ClipSimilarityReward:
    import open_clip

    if spec.arch_config is not None:
        register_arch_config(spec.arch_config)
    arch = spec.resolved_arch()
    assert arch is not None and spec.checkpoint is not None, "spec.validate() should have caught this"
    model = meta_open_clip(arch) if meta else load_open_clip(arch, spec.checkpoint, what)
    # Built-in CLIP configs and configs without hf_tokenizer_name get open_clip's bundled BPE
    # tokenizer, which needs no network.
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipSimilarityReward(model, tokenizer, open_clip_preprocess(model), scale, spec.name)


def _skeleton(spec: RewardSpec) -> ClipSimilarityReward:
    scale = HPSV2.scale if spec.name == "hpsv2" else CLIP_SCORE.scale
    return _load_similarity(spec, "", scale, meta=True)


HPSV2 = RewardDescriptor(
    name="hpsv2",
    load=load_hpsv2,
    skeleton=_skeleton,
    unit="cosine (HPS; benchmarks print 100 × it)",
    required={"checkpoint": "the HPS_v2.1_compressed.pt or HPS_v2_compressed.pt file"},
    allowed=OPEN_CLIP_ARCH,
    files={
        "checkpoint": WeightsFile(what="the HPSv2 checkpoint (an open_clip state dict)", prefixes=OPEN_CLIP_TENSORS)
    },
    default_arch="ViT-H-14",
    image_encoder=True,
)
CLIP_SCORE = RewardDescriptor(
    name="clip_score",
    load=load_clip_score,
    skeleton=_skeleton,
    unit="cosine",
    scale=100.0,
    required={"checkpoint": "an open_clip weights file (.pt, .bin or .safetensors)"},
    allowed=OPEN_CLIP_ARCH,
    files={"checkpoint": WeightsFile(what="the open_clip weights file", prefixes=OPEN_CLIP_TENSORS)},
    image_encoder=True,
)

"""Low-level pixel rewards: simple differentiable image statistics, no network and no weights.

DRTune (Wu et al., ECCV 2024) also tunes on low-level rewards such as symmetry; these are our own
differentiable definitions (the paper's exact formulas are unverified). All take ``x ∈ [0, 1]^{B×3×H×W}``
at full resolution, ignore the prompts, and return ``(B,)`` float32 scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import check_images
from rewards.descriptor import RewardDescriptor

if TYPE_CHECKING:
    from rewards.config import RewardSpec

# Rec. 601 luma weights: Y = 0.299 R + 0.587 G + 0.114 B.
REC601_LUMA = (0.299, 0.587, 0.114)
# Added under square roots so their gradient stays finite at 0: √(v + ε) with ε = 1e-8.
SQRT_EPS = 1e-8


def luma(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of ``(B, 3, H, W)`` images, shape ``(B, H, W)``."""
    weights = torch.tensor(REC601_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1)


class Symmetry(nn.Module):
    """Left–right mirror symmetry: ``r(x) = -mean_{c,i,j} |x_{c,i,j} - x_{c,i,W-1-j}|`` in [-1, 0].

    A mirror-symmetric image scores 0; any asymmetry makes the score negative.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "symmetry"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1]; returns ``(B,)``."""
        check_images(images, prompts)
        mirrored = images.flip(dims=(-1,))  # (B, 3, H, W)
        return -(images - mirrored).abs().mean(dim=(1, 2, 3)).float()


class Colourfulness(nn.Module):
    """Hasler–Süsstrunk colourfulness (Hasler & Süsstrunk, 2003, "Measuring colourfulness in natural images").

    On the opponent channels ``rg = R - G`` and ``yb = (R + G) / 2 - B`` over each image's pixels,

        r(x) = √(σ_rg² + σ_yb² + ε) + 0.3 · √(μ_rg² + μ_yb² + ε),

    with population standard deviations ``σ`` and means ``μ``, and ``ε = 1e-8`` keeping the gradient
    finite for grey images. Computed on [0, 1] values, so it is the paper's 0–255 value divided by 255
    (up to ε): grey scores ≈ 0, a half red / half green image scores 1 + 0.3 · 0.5 = 1.15.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "colourfulness"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1]; returns ``(B,)``."""
        check_images(images, prompts)
        red, green, blue = images.flatten(2).unbind(dim=1)  # each (B, H*W)
        rg = red - green
        yb = 0.5 * (red + green) - blue
        spread = rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)  # σ_rg² + σ_yb², (B,)
        offset = rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2  # μ_rg² + μ_yb², (B,)
        return (torch.sqrt(spread + SQRT_EPS) + 0.3 * torch.sqrt(offset + SQRT_EPS)).float()


class Sharpness(nn.Module):
    """Mean squared Laplacian response: ``r(x) = mean_{c,i,j} (Δx)_{c,i,j}²``.

    ``Δ`` is the 3×3 Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` applied per channel without padding
    (only interior pixels), so image borders add no false edges. A flat image scores 0; fine detail and
    noise score high (a one-pixel checkerboard of 0/1 scores 16).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "sharpness"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1] with ``H, W >= 3``; returns ``(B,)``."""
        check_images(images, prompts)
        if min(images.shape[-2:]) < 3:
            raise ValueError(f"sharpness needs images of at least 3x3 pixels, got shape {tuple(images.shape)}")
        kernel = torch.tensor(
            [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device, dtype=images.dtype
        )
        kernel = kernel.expand(3, 1, 3, 3)  # one filter per channel (depthwise)
        laplacian = F.conv2d(images, kernel, groups=3)  # (B, 3, H-2, W-2)
        return laplacian.square().mean(dim=(1, 2, 3)).float()


class Brightness(nn.Module):
    """Mean Rec. 601 luma: ``r(x) = mean_{i,j} (0.299 R + 0.587 G + 0.114 B)`` in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "brightness"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1]; returns ``(B,)``."""
        check_images(images, prompts)
        return luma(images).mean(dim=(1, 2)).float()


PIXEL_REWARDS: dict[str, type[nn.Module]] = {
    "symmetry": Symmetry,
    "colourfulness": Colourfulness,
    "sharpness": Sharpness,
    "brightness": Brightness,
}


def load_pixel_reward(spec: RewardSpec) -> nn.Module:
    """The pixel reward ``spec`` names; it has no weights."""
    return PIXEL_REWARDS[spec.name]()


DESCRIPTORS = tuple(RewardDescriptor(name=name, load=load_pixel_reward, unit=name) for name in PIXEL_REWARDS)

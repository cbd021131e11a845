"""Differentiable image preprocessing for CLIP-style backbones, done in torch instead of PIL.

PIL/torchvision preprocessing of a ``uint8`` image cuts the gradient, so each reward resizes and
normalises the float image itself: resize so the image covers the backbone's input size (bicubic,
antialiased), centre-crop to that size, then ``x̂ = (x - μ) / σ`` per channel. On an image already at
the input size this equals CLIP's own preprocessing exactly; with resizing it differs slightly from
PIL's bicubic filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class ImagePreprocess:
    """Resize, crop and normalise ``(B, 3, H, W)`` images in [0, 1] for a backbone.

    Attributes:
        size: Backbone input ``(height, width)`` in pixels.
        mean: Per-channel mean ``μ`` (RGB) subtracted after resizing.
        std: Per-channel standard deviation ``σ`` (RGB) divided by after subtracting ``μ``.
        crop: If True, resize keeping the aspect ratio, then centre-crop to ``size`` (CLIP's "resize
            shortest side + centre crop"); if False, squash the image to ``size``.
        resize_shortest: With ``crop``, the length the shorter side is resized to before cropping
            (e.g. 256 for a 224 crop); None scales the image just enough to cover ``size``.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = True
    resize_shortest: int | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images in [0, 1] to the normalised ``(B, 3, *size)`` backbone input."""
        if self.crop:
            x = resize_and_crop(images, self.size, self.resize_shortest)  # (B, 3, *size)
        else:
            x = resize(images, self.size)  # (B, 3, *size)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of ``(B, C, H, W)`` to ``(B, C, *size)``; identity if already that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize_and_crop(images: torch.Tensor, size: tuple[int, int], shortest: int | None = None) -> torch.Tensor:
    """Scale ``(B, C, H, W)`` keeping the aspect ratio, then centre-crop to ``size``.

    The scale is ``s = shortest / min(H, W)`` when ``shortest`` is given, else ``s = max(h / H, w / W)``
    (just covering the target).

    Args:
        images: ``(B, C, H, W)`` images.
        size: Target ``(h, w)``.
        shortest: Optional length of the shorter side after resizing.

    Returns:
        ``(B, C, h, w)`` images.
    """
    (height, width), (h, w) = images.shape[-2:], size
    scale = shortest / min(height, width) if shortest is not None else max(h / height, w / width)
    # Round like torchvision's Resize, never below the target so the crop always fits.
    scaled = (max(h, math.floor(height * scale + 0.5)), max(w, math.floor(width * scale + 0.5)))
    x = resize(images, scaled)
    top, left = (scaled[0] - h) // 2, (scaled[1] - w) // 2
    return x[..., top : top + h, left : left + w]

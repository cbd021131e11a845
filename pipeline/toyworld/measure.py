"""Read the object and background colour back out of a shapes-world image, to score prompt adherence.

Background colour ``b``: the per-channel median of the outer 2-px ring. Object colour ``o``: the
per-channel median of the quarter of the central 16x16 window that lies farthest (in RGB) from ``b``;
every shape covers well over a quarter of that window. If ``‖o - b‖ < 0.3`` the image shows no object.
Each is then named by the nearest palette colour (object palette for ``o``, background palette for ``b``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.toyworld.shapes import BACKGROUND_COLOURS, OBJECT_COLOURS, Combo

RING = 2  # border ring width in px
MIN_CONTRAST = 0.3  # RGB distance in [0, 1] units below which no object is seen


@dataclass(frozen=True, slots=True)
class SeenColours:
    """Colour names read from one image; ``colour`` is None when no object stands out."""

    colour: str | None
    background: str


def _nearest(rgb: torch.Tensor, palette: dict[str, tuple[float, float, float]]) -> str:
    """Name of the palette colour nearest to ``rgb`` ``(3,)`` in Euclidean RGB distance."""
    names = list(palette)
    dist = (torch.tensor([palette[n] for n in names]) - rgb).norm(dim=1)  # (P,)
    return names[int(dist.argmin())]


def border_rgb(image: torch.Tensor) -> torch.Tensor:
    """Median colour ``(3,)`` of the outer ``RING`` px of a ``(3, H, W)`` image in [0, 1]."""
    mask = torch.ones(image.shape[-2:], dtype=torch.bool)
    mask[RING:-RING, RING:-RING] = False
    return image[:, mask].median(dim=1).values


def object_rgb(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Median colour ``(3,)`` of the central-window quarter farthest from ``background`` ``(3,)``."""
    h, w = image.shape[-2:]
    centre = image[:, h // 4 : h - h // 4, w // 4 : w - w // 4].reshape(3, -1)  # (3, N)
    dist = (centre - background[:, None]).norm(dim=0)  # (N,)
    far = dist.topk(max(1, dist.numel() // 4)).indices
    return centre[:, far].median(dim=1).values


def read_colours(image: torch.Tensor) -> SeenColours:
    """Name the object and background colours of one ``(3, H, W)`` image in [0, 1]."""
    b = border_rgb(image.float())
    o = object_rgb(image.float(), b)
    colour = _nearest(o, OBJECT_COLOURS) if (o - b).norm() >= MIN_CONTRAST else None
    return SeenColours(colour, _nearest(b, BACKGROUND_COLOURS))


def colour_adherence(images: torch.Tensor, combos: list[Combo]) -> dict[str, float]:
    """Fractions of ``(B, 3, H, W)`` images whose colours match their combos.

    Returns:
        ``object``, ``background`` and ``both``: fractions in [0, 1] (chance is about 1/5, 1/5, 1/25).
    """
    seen = [read_colours(img) for img in images]
    obj = [s.colour == c.colour for s, c in zip(seen, combos)]
    bg = [s.background == c.background for s, c in zip(seen, combos)]
    n = max(1, len(combos))
    return {"object": sum(obj) / n, "background": sum(bg) / n, "both": sum(a and b for a, b in zip(obj, bg)) / n}

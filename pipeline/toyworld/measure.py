"""Read the object and background colour, and the shape, back out of a shapes-world image, to score
prompt adherence without the learned reward.

Background colour ``b``: the per-channel median of the outer 2-px ring. Object colour ``o``: the
per-channel median of the quarter of the central 16x16 window that lies farthest (in RGB) from ``b``;
every shape covers well over a quarter of that window. If ``‖o - b‖ < 0.3`` the image shows no object.
Each is then named by the nearest palette colour (object palette for ``o``, background palette for ``b``).

Shape: each pixel's object coverage is its position between ``b`` and ``o`` (projected on that line,
clipped to [0, 1]). Each of the three shapes is drawn with that coverage's area and centroid, and the
one whose drawing differs least from the coverage (L1, relative to the area) is the shape read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.toyworld.shapes import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPE_AREA, SHAPES, Combo, shape_coverage

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


def object_coverage(image: torch.Tensor, background: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` in [0, 1]: how far each pixel of a ``(3, H, W)`` image lies from the ``background``
    colour towards the ``obj`` colour (each ``(3,)``)."""
    towards = obj - background
    return ((image - background[:, None, None]) * towards[:, None, None]).sum(0).div(towards.dot(towards)).clamp(0, 1)


def read_shape(image: torch.Tensor) -> str | None:
    """The shape of ``SHAPES`` whose drawing best matches a ``(3, H, W)`` image's object, or None when
    no object stands out (as :func:`read_colours`)."""
    image = image.float()
    b = border_rgb(image)
    o = object_rgb(image, b)
    if (o - b).norm() < MIN_CONTRAST:
        return None
    cover = object_coverage(image, b, o)
    area = cover.sum()
    ys, xs = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) + 0.5 for n in cover.shape), indexing="ij")
    cx, cy = float((cover * xs).sum() / area), float((cover * ys).sum() / area)
    mismatch = {}
    for shape in SHAPES:
        s = math.sqrt(float(area) / SHAPE_AREA[shape])
        top = cy - 1.25 * s / 4 if shape == "triangle" else cy  # a triangle's centroid sits below its box centre
        mismatch[shape] = float((shape_coverage(shape, cx, top, s) - cover).abs().sum())
    return min(mismatch, key=mismatch.get)


def colour_checks(images: torch.Tensor, combos: list[Combo]) -> dict[str, torch.Tensor]:
    """Per image of ``(B, 3, H, W)``, whether its ``object`` colour, its ``background`` colour, and
    ``both``, are read as its combo's: ``(B,)`` bool each."""
    seen = [read_colours(img) for img in images]
    obj = torch.tensor([s.colour == c.colour for s, c in zip(seen, combos)], dtype=torch.bool)
    bg = torch.tensor([s.background == c.background for s, c in zip(seen, combos)], dtype=torch.bool)
    return {"object": obj, "background": bg, "both": obj & bg}


def colour_adherence(images: torch.Tensor, combos: list[Combo]) -> dict[str, float]:
    """Fractions of ``(B, 3, H, W)`` images whose colours match their combos.

    Returns:
        ``object``, ``background`` and ``both``: fractions in [0, 1] (chance is about 1/5, 1/5, 1/25).
    """
    return {k: float(v.float().mean()) if len(v) else 0.0 for k, v in colour_checks(images, combos).items()}


def prompt_checks(images: torch.Tensor, combos: list[Combo]) -> dict[str, torch.Tensor]:
    """:func:`colour_checks` plus whether each image's ``shape`` is read as its combo's, and whether it
    ``follows`` its prompt (both colours and the shape): ``(B,)`` bool each."""
    checks = colour_checks(images, combos)
    checks["shape"] = torch.tensor([read_shape(img) == c.shape for img, c in zip(images, combos)], dtype=torch.bool)
    checks["follows"] = checks["both"] & checks["shape"]
    return checks


def distances_by_adherence(
    features: torch.Tensor, follows: torch.Tensor, per_prompt: int
) -> dict[str, float | int | None]:
    """Mean cosine distance between unit embeddings ``(N, D)`` over the pairs of one prompt's samples
    (prompt-major, ``per_prompt`` each), split by how many of the two follow the prompt (``follows``, ``(N,)``).

    Feature diversity is the mean over all these pairs; the split shows how much of it is samples that
    differ because some of them are wrong.

    Returns:
        ``both``, ``one`` and ``neither``: the mean distance of those pairs (None where there are none),
        and ``pairs_<kind>``: how many there are.
    """
    x = features.float().view(-1, per_prompt, features.shape[1])
    first, second = torch.triu_indices(per_prompt, per_prompt, 1)
    distance = (1 - x @ x.transpose(1, 2))[:, first, second].flatten()
    ok = follows.view(-1, per_prompt)
    following = (ok[:, first].int() + ok[:, second].int()).flatten()
    out = {}
    for kind, count in (("both", 2), ("one", 1), ("neither", 0)):
        chosen = distance[following == count]
        out[kind] = float(chosen.mean()) if len(chosen) else None
        out[f"pairs_{kind}"] = len(chosen)
    return out

"""Shapes world: deterministic 32x32 images of one coloured shape on a plain background.

A *combo* ``(colour, shape, background)`` names an image class; its caption reads
"a red circle on a gray background". There are 5 object colours x 3 shapes x 5 backgrounds, minus
the combos whose object and background colour coincide: 66 combos. A fixed list of 9 (14 %) is held
out of every training set; each colour, shape and background still appears in training, so held-out
prompts test composition, not new words.

Each image draws a size ``s ~ U(8, 12)`` px (circle radius; square and triangle are scaled to a similar
area) and a centre offset ``(dx, dy) ~ U(-4, 4)^2`` px from the image centre, so the shape always
covers the central 4x4 pixels. Shapes are drawn 4x supersampled and box-filtered (antialiased).

Run ``python -m pipeline.toyworld.shapes --out pipeline/assets/toyworld`` to rewrite the prompt files.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 32  # output side in px
SUPERSAMPLE = 4  # draw at 4x and box-filter down: antialiased edges
SIZE_RANGE = (8.0, 12.0)  # s: circle radius in px (large shapes are learnt far better at 32 px)
MAX_OFFSET = 4.0  # shape centre within +-4 px of the image centre on each axis

# Object and background colours, RGB in [0, 1]. Names shared by both lists use the same RGB.
OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
    "blue": OBJECT_COLOURS["blue"],
    "white": OBJECT_COLOURS["white"],
    "green": OBJECT_COLOURS["green"],
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "toyworld"
PROMPT_FILES = {"train": "prompts_train.txt", "heldout": "prompts_heldout.txt"}


@dataclass(frozen=True, slots=True, order=True)
class Combo:
    """One image class: an object colour, a shape and a background colour."""

    colour: str  # a key of OBJECT_COLOURS
    shape: str  # one of SHAPES
    background: str  # a key of BACKGROUND_COLOURS, never equal to ``colour``


# Held out of training: 9 of 66 combos; each shape 3 times, each colour and background at most twice.
_HELD_OUT: tuple[Combo, ...] = (
    Combo("red", "triangle", "gray"),
    Combo("red", "square", "white"),
    Combo("green", "circle", "black"),
    Combo("green", "triangle", "blue"),
    Combo("blue", "square", "black"),
    Combo("blue", "circle", "white"),
    Combo("yellow", "circle", "gray"),
    Combo("yellow", "square", "green"),
    Combo("white", "triangle", "green"),
)


def all_combos() -> list[Combo]:
    """Every valid combo (object colour != background colour), in a fixed order: 66 of them."""
    return [Combo(c, s, b) for c in OBJECT_COLOURS for s in SHAPES for b in BACKGROUND_COLOURS if c != b]


def held_out_combos() -> list[Combo]:
    """The combos never used for training, in :func:`all_combos` order."""
    held = set(_HELD_OUT)
    return [c for c in all_combos() if c in held]


def train_combos() -> list[Combo]:
    """All combos except the held-out ones, in :func:`all_combos` order."""
    held = set(_HELD_OUT)
    return [c for c in all_combos() if c not in held]


def caption(combo: Combo) -> str:
    """The prompt of ``combo``: ``"a {colour} {shape} on a {background} background"``."""
    return f"a {combo.colour} {combo.shape} on a {combo.background} background"


def parse_caption(text: str) -> Combo:
    """Invert :func:`caption`.

    Raises:
        ValueError: If ``text`` is not a caption of a valid combo.
    """
    words = text.split()
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"{text!r} is not a shapes-world caption like 'a red circle on a gray background'")
    combo = Combo(words[1], words[2], words[5])
    if combo not in set(all_combos()):
        raise ValueError(
            f"{text!r} names no valid combo; colours {list(OBJECT_COLOURS)}, shapes {list(SHAPES)}, "
            f"backgrounds {list(BACKGROUND_COLOURS)}, object colour != background colour"
        )
    return combo


def _outline(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    """Vertices (or the ellipse bounding box for ``circle``) of a shape of size ``s`` centred at ``(cx, cy)``.

    The square has half-side ``0.89 s`` (area ``pi s^2``, as the circle); the upward triangle has
    circumradius ``R = 1.25 s`` and is shifted down by ``R / 4`` so its bounding box is centred.
    """
    if shape == "circle":
        return [(cx - s, cy - s), (cx + s, cy + s)]
    if shape == "square":
        a = 0.89 * s
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    r = 1.25 * s
    cy += r / 4
    return [(cx + r * math.sin(th), cy - r * math.cos(th)) for th in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]


# Area of each shape of size ``s``, in units of ``s^2`` (see :func:`_outline`).
SHAPE_AREA: dict[str, float] = {
    "circle": math.pi,
    "square": (2 * 0.89) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * 1.25**2,
}


def shape_coverage(shape: str, cx: float, cy: float, s: float) -> torch.Tensor:
    """``(32, 32)`` float in [0, 1]: the fraction of each pixel that a shape drawn as :func:`render`
    draws it (same outline, supersampling and box filter) covers."""
    k, big = SUPERSAMPLE, IMAGE_SIZE * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    points = [(k * x, k * y) for x, y in _outline(shape, cx, cy, s)]
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse(points, fill=255)
    else:
        draw.polygon(points, fill=255)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return torch.from_numpy(np.asarray(small).copy()).float() / 255


def _rgb255(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(round(255 * v) for v in rgb)


def render(combo: Combo, rng: torch.Generator) -> torch.Tensor:
    """Draw one image of ``combo`` with a random size and position.

    Args:
        combo: What to draw.
        rng: Source of the size ``s ~ U(8, 12)`` and the offset ``(dx, dy) ~ U(-4, 4)^2``: three
            ``torch.rand`` draws, so the image is a function of the generator's state.

    Returns:
        ``(3, 32, 32)`` uint8 RGB image.
    """
    u = torch.rand(3, generator=rng, dtype=torch.float64).tolist()
    s = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * u[0]
    cx, cy = (IMAGE_SIZE / 2 + MAX_OFFSET * (2 * v - 1) for v in u[1:])
    k, big = SUPERSAMPLE, IMAGE_SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), _rgb255(BACKGROUND_COLOURS[combo.background]))
    points = [(k * x, k * y) for x, y in _outline(combo.shape, cx, cy, s)]
    draw, fill = ImageDraw.Draw(canvas), _rgb255(OBJECT_COLOURS[combo.colour])
    if combo.shape == "circle":
        draw.ellipse(points, fill=fill)
    else:
        draw.polygon(points, fill=fill)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)  # (3, 32, 32)


def sample_batch(n: int, combos: list[Combo], generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Draw ``n`` images of combos chosen uniformly (with replacement) from ``combos``.

    Args:
        n: Batch size.
        combos: The combos to draw from, e.g. :func:`train_combos`.
        generator: Source of all randomness (combo choice, then each image's size and position).

    Returns:
        Images ``(n, 3, 32, 32)`` float32 in [0, 1] and their ``n`` captions.
    """
    picks = torch.randint(len(combos), (n,), generator=generator).tolist()
    chosen = [combos[i] for i in picks]
    images = torch.stack([render(c, generator) for c in chosen]).float() / 255  # (n, 3, 32, 32)
    return images, [caption(c) for c in chosen]


def write_prompt_files(folder: str | os.PathLike = ASSETS_DIR) -> dict[str, Path]:
    """Write ``prompts_train.txt`` and ``prompts_heldout.txt`` (one caption per line) into ``folder``.

    Returns:
        The written paths by split name (``train``, ``heldout``).
    """
    os.makedirs(folder, exist_ok=True)
    splits = {"train": train_combos(), "heldout": held_out_combos()}
    paths = {}
    for split, combos in splits.items():
        paths[split] = Path(folder) / PROMPT_FILES[split]
        paths[split].write_text("".join(caption(c) + "\n" for c in combos), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI: rewrite the prompt files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSETS_DIR), help="folder for prompts_train.txt / prompts_heldout.txt")
    for split, path in write_prompt_files(parser.parse_args(argv).out).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()

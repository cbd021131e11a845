"""Score image files with one reward: ``python -m pipeline.score --reward NAME [files of the reward] --prompt P IMAGE...``.

Prints one line per image: its score and path. Useful to check a downloaded reward against published
values, for example ImageReward's README example (see the README's reward table).
"""

from __future__ import annotations

import argparse
import os

from pipeline.config import ConfigError, run_cli
from rewards.catalog import REWARD_NAMES
from rewards.config import RewardSpec
from rewards.files import file_problems

FILE_FIELDS = ("checkpoint", "clip_checkpoint", "arch", "arch_config", "processor")  # RewardSpec's file options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.score",
        description=__doc__,
        epilog="Example: python -m pipeline.score --reward image_reward --checkpoint ImageReward.pt "
        "--processor bert-base-uncased --prompt 'a painting of an ocean' 1.webp 2.webp",
    )
    p.add_argument("--reward", required=True, choices=REWARD_NAMES, help="which reward")
    for field in FILE_FIELDS:
        p.add_argument(
            f"--{field.replace('_', '-')}", dest=field, help=f"the reward's {field} (as in a config's rewards)"
        )
    p.add_argument("--prompt", required=True, help="the prompt every image is scored against")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("images", nargs="+", help="image files (anything Pillow reads: PNG, JPEG, WebP)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fields = {k: getattr(args, k) for k in FILE_FIELDS if getattr(args, k) is not None}
    spec = RewardSpec(name=args.reward, **fields)
    problems = [_as_option(p) for p in spec.validate() or file_problems(spec)]
    problems += [problem for path in args.images for problem in image_problems(path)]
    if problems:
        raise ConfigError(problems, "command line")
    import torch

    from rewards.build import build_reward

    reward = build_reward([spec], device=args.device)
    with torch.no_grad():
        for path in args.images:
            scores = reward(read_image(path).to(args.device), [args.prompt])
            print(f"{float(scores[0]):.4f}  {path}")
    return 0


def _as_option(problem: str) -> str:
    """``"clip_checkpoint: ..."`` -> ``"--clip-checkpoint: ..."``."""
    field, _, rest = problem.partition(":")
    return f"--{field.replace('_', '-')}:{rest}"


def image_problems(path: str) -> list[str]:
    """``["<path>: ..."]`` when ``path`` is not an image file Pillow can decode; checks the header and the data
    without converting the pixels."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return [f"{path}: no such image file"]
    try:
        with Image.open(path) as image:
            image.verify()
    except UnidentifiedImageError:
        return [f"{path}: not an image file Pillow can read; give a PNG, JPEG or WebP file"]
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for a truncated or corrupt file
        return [f"{path}: a damaged image file ({err}); give an intact PNG, JPEG or WebP file"]
    return []


def read_image(path: str):
    """A ``(1, 3, H, W)`` float tensor in [0, 1] from an image file (converted to RGB)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


if __name__ == "__main__":
    run_cli(main)

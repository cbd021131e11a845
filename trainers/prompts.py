"""Prompt sources and a resumable, seeded prompt sampler."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

# DDPO's simple-animal prompts (Black et al., 2023), used by DRaFT's small-scale aesthetic runs.
BUILTIN_TRAIN = (
    "cat",
    "dog",
    "horse",
    "monkey",
    "rabbit",
    "zebra",
    "spider",
    "bird",
    "sheep",
    "deer",
    "cow",
    "goat",
    "lion",
    "tiger",
    "bear",
    "raccoon",
    "fox",
    "wolf",
    "lizard",
    "beetle",
    "ant",
    "butterfly",
    "fish",
    "shark",
    "whale",
    "dolphin",
    "squirrel",
    "mouse",
    "rat",
    "snake",
    "turtle",
    "frog",
    "chicken",
    "duck",
    "goose",
    "bee",
    "pig",
    "turkey",
    "fly",
    "llama",
    "camel",
    "bat",
    "gorilla",
    "hedgehog",
    "kangaroo",
)
BUILTIN_HELD_OUT = ("owl", "penguin", "elephant", "giraffe", "octopus", "panda", "koala", "crab")


def read_prompts(path: str) -> list[str]:
    """Read prompts from a ``.txt`` file (one per line) or ``.jsonl`` (objects with a ``prompt`` key).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a JSONL line is malformed, or the file holds no prompts.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"prompt file {path!r} does not exist; give a .txt (one prompt per line) "
            'or .jsonl file ({"prompt": ...} per line)'
        )
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if path.endswith(".jsonl"):
        prompts = []
        for n, line in enumerate(lines, 1):
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f'{path}:{n}: expected a JSON object with a "prompt" key ({err})') from None
        lines = prompts
    if not lines:
        raise ValueError(f"prompt file {path!r} holds no prompts")
    return lines


def load_prompts(path: str | None, builtin: tuple[str, ...]) -> list[str]:
    """Prompts from ``path``, or the built-in list when ``path`` is None."""
    return read_prompts(path) if path else list(builtin)


@dataclass
class PromptSampler:
    """Draws batches by walking seeded permutations of the prompt list, one permutation per epoch.

    The position ``(epoch, index)`` is all the state there is, so a resumed run continues with
    exactly the prompts an uninterrupted run would have drawn.
    """

    prompts: list[str]
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=gen).tolist()

    def next_batch(self, size: int) -> list[str]:
        """The next ``size`` prompts, crossing into the next epoch's permutation as needed."""
        batch, order = [], self._order()
        while len(batch) < size:
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            batch.append(self.prompts[order[self.index]])
            self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

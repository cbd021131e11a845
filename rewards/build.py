"""Build the training reward ``r = Σ_i w_i r_i`` from :class:`~rewards.config.RewardSpec` entries.

Every model is loaded from local files only (never a hub tag or download), moved to the requested
device and dtype, frozen and put in eval mode.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rewards.base import Reward, freeze
from rewards.combine import WeightedSum
from rewards.config import REWARD_NAMES, RewardSpec

__all__ = ["REWARD_NAMES", "build_reward", "load_reward"]

# Explicit registry: reward name -> "module:loader", a callable taking the spec and returning a CPU fp32
# module. Imported on first use, so that a process pays only for the rewards it builds (open_clip and
# transformers' processors take seconds to import; a Ray worker on pixel rewards needs neither).
_LOADERS: dict[str, str] = {
    "hpsv2": "rewards.clip_similarity:load_hpsv2",
    "pickscore": "rewards.pickscore:load_pickscore",
    "image_reward": "rewards.image_reward:load_image_reward",
    "aesthetic": "rewards.aesthetic:load_aesthetic",
    "clip_score": "rewards.clip_similarity:load_clip_score",
    "symmetry": "rewards.pixel:load_pixel_reward",
    "colourfulness": "rewards.pixel:load_pixel_reward",
    "sharpness": "rewards.pixel:load_pixel_reward",
    "brightness": "rewards.pixel:load_pixel_reward",
}
assert set(_LOADERS) == set(REWARD_NAMES)


def build_reward(
    specs: Sequence[RewardSpec], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Reward:
    """Load every spec and combine them into one reward.

    Args:
        specs: The reward terms; at least one.
        device: Where the reward networks run.
        dtype: Precision of the reward networks' weights (inputs are cast to it).

    Returns:
        The single reward when there is one spec with weight 1, else a
        :class:`~rewards.combine.WeightedSum` (which also reports each component).

    Raises:
        ValueError: If ``specs`` is empty, a name is unknown, or a spec is invalid.
        RewardLoadError: If a checkpoint is missing or does not fit its architecture.
    """
    if not specs:
        raise ValueError(f"build_reward needs at least one RewardSpec; valid names: {', '.join(REWARD_NAMES)}")
    rewards = [load_reward(spec, device, dtype) for spec in specs]
    if len(specs) == 1 and specs[0].weight == 1.0:
        return rewards[0]
    return WeightedSum([(spec.weight, reward) for spec, reward in zip(specs, rewards)])


def load_reward(
    spec: RewardSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Load one reward (ignoring its weight), frozen, in eval mode, on ``device`` in ``dtype``.

    Raises:
        ValueError: If the name is unknown or the spec is invalid.
        RewardLoadError: If a checkpoint is missing or does not fit its architecture.
    """
    if spec.name not in _LOADERS:
        raise ValueError(f"unknown reward name {spec.name!r}; valid names: {', '.join(REWARD_NAMES)}")
    problems = spec.validate()
    if problems:
        raise ValueError(f"invalid RewardSpec for {spec.name!r}: " + "; ".join(problems))
    reward = _loader(spec.name)(spec)
    return freeze(reward.to(device=device, dtype=dtype))


def _loader(name: str) -> Callable[[RewardSpec], nn.Module]:
    module, attr = _LOADERS[name].split(":")
    return getattr(importlib.import_module(module), attr)

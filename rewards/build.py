"""Build the training reward ``r = Σ_i w_i r_i`` from :class:`~rewards.config.RewardSpec` entries.

Every model is loaded from local files only (never a hub tag or download), moved to the requested
device and dtype, frozen and put in eval mode. Each reward's loader is its descriptor's (:mod:`rewards.catalog`);
heavy libraries (open_clip, transformers) are imported only when a reward that needs them is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rewards.base import Reward, freeze
from rewards.catalog import BY_NAME, REWARD_NAMES
from rewards.combine import WeightedSum, unique_names
from rewards.config import RewardSpec

__all__ = ["REWARD_NAMES", "build_reward", "load_reward", "reward_skeleton"]


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
    return _combined(specs, [load_reward(spec, device, dtype) for spec in specs])


def reward_skeleton(specs: Sequence[RewardSpec], dtype: torch.dtype = torch.float32) -> Reward:
    """What :func:`build_reward` builds from ``specs``, on the meta device with no weights file read (rewards
    without weights are built as they are); for counting FLOPs and memory."""
    rewards = []
    for spec in specs:
        describe = BY_NAME[spec.name]
        reward = describe.skeleton(spec) if describe.skeleton else describe.load(spec)
        rewards.append(freeze(reward.to(device="meta", dtype=dtype)))
    return _combined(specs, rewards)


def _combined(specs: Sequence[RewardSpec], rewards: list[nn.Module]) -> Reward:
    """The single reward of one spec with weight 1, else the weighted sum of ``rewards``."""
    if not term_names(specs):
        return rewards[0]
    return WeightedSum([(spec.weight, reward) for spec, reward in zip(specs, rewards)])


def term_names(specs: Sequence[RewardSpec]) -> list[str]:
    """The component names the reward :func:`build_reward` builds from ``specs`` reports (and the loop logs as
    ``<reward>/<term>``): none for one spec of weight 1, which is the reward itself."""
    if len(specs) == 1 and specs[0].weight == 1.0:
        return []
    return unique_names([spec.name for spec in specs])


def load_reward(spec: RewardSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load one reward (ignoring its weight), frozen, in eval mode, on ``device`` in ``dtype``.

    Raises:
        ValueError: If the name is unknown or the spec is invalid.
        RewardLoadError: If a checkpoint is missing or does not fit its architecture.
    """
    if spec.name not in BY_NAME:
        raise ValueError(f"unknown reward name {spec.name!r}; valid names: {', '.join(REWARD_NAMES)}")
    problems = spec.validate()
    if problems:
        raise ValueError(f"invalid RewardSpec for {spec.name!r}: " + "; ".join(problems))
    reward = BY_NAME[spec.name].load(spec)
    return freeze(reward.to(device=device, dtype=dtype))

"""A weighted sum of rewards, itself a reward: ``r(x, c) = Σ_i w_i r_i(x, c)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rewards.base import Reward, check_images


class WeightedSum(nn.Module):
    """``r(x, c) = Σ_i w_i r_i(x, c)`` over named components, each also available for logging.

    Components are keyed by their reward's ``name``; repeated names get ``_2``, ``_3``, ... suffixes.

    Args:
        terms: ``(w_i, r_i)`` pairs; at least one, each weight finite.

    Raises:
        ValueError: If ``terms`` is empty or a weight is not finite.
    """

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one (weight, reward) pair, got none")
        for weight, reward in terms:
            if not math.isfinite(weight):
                raise ValueError(f"weight of reward {reward.name!r} must be finite, got {weight!r}")
        keys = unique_names([reward.name for _, reward in terms])
        self.weights: dict[str, float] = {k: float(w) for k, (w, _) in zip(keys, terms)}
        # A ModuleDict moves network rewards with .to(); plain callables are kept as they are.
        modules = {k: r for k, (_, r) in zip(keys, terms) if isinstance(r, nn.Module)}
        self.reward_modules = nn.ModuleDict(modules)
        self.others = {k: r for k, (_, r) in zip(keys, terms) if not isinstance(r, nn.Module)}
        self.order = keys
        self.name = "weighted_sum"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Return ``Σ_i w_i r_i(images, prompts)``, shape ``(B,)`` float32."""
        return self.combine(self.components(images, prompts))

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return each component's unweighted ``(B,)`` scores ``r_i``, keyed by component name."""
        check_images(images, prompts)
        return {k: self._reward(k)(images, prompts) for k in self.order}

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weight and add the scores from :meth:`components`: ``Σ_i w_i r_i``, shape ``(B,)``."""
        return sum(self.weights[k] * components[k].float() for k in self.order)

    def parts(self) -> dict[str, Reward]:
        """The component rewards by name."""
        return {k: self._reward(k) for k in self.order}

    def _reward(self, key: str) -> Reward:
        return self.reward_modules[key] if key in self.reward_modules else self.others[key]


def terms_of(reward: Reward) -> list[Reward]:
    """The rewards a reward is made of: a weighted sum's components, else the reward itself."""
    return list(reward.parts().values()) if isinstance(reward, WeightedSum) else [reward]


def unique_names(names: Sequence[str]) -> list[str]:
    """The names with repeats suffixed ``_2``, ``_3``, ...: the keys of a weighted sum's components."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique

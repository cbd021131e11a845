"""Typed configuration of one reward term: which scorer, its weight, and where its weights live.

A run's reward is ``r(x, c) = Σ_i w_i r_i(x, c)`` over a list of :class:`RewardSpec`. ``validate()``
checks only the spec itself (which fields each reward needs or forbids); files are checked when
``rewards.build.build_reward`` loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rewards.catalog import BY_NAME, REWARD_NAMES
from rewards.descriptor import RewardDescriptor

# The names come from the catalog; the config loader checks a Literal, so the type is built from them.
RewardName = Literal[REWARD_NAMES]  # type: ignore[valid-type]
_OPTIONAL_FIELDS = ("checkpoint", "clip_checkpoint", "arch", "arch_config", "processor")


@dataclass(frozen=True, kw_only=True)
class RewardSpec:
    """One weighted reward term ``w_i r_i``; see ``rewards.build.build_reward``."""

    name: RewardName  # which reward: one of REWARD_NAMES (rewards.catalog)
    weight: float = 1.0  # w_i, multiplies this reward's score in the weighted sum
    checkpoint: str | None = (
        None  # HPS .pt, open_clip weights (clip_score), aesthetic head, PickScore folder, ImageReward.pt
    )
    clip_checkpoint: str | None = None  # aesthetic only: open_clip weights of the ViT-L/14 image encoder
    arch: str | None = None  # open_clip architecture; default ViT-H-14 (hpsv2), ViT-L-14-quickgelu (aesthetic)
    arch_config: str | None = None  # open_clip model-config JSON (its stem is the arch); image_reward: BLIP sizes JSON
    processor: str | None = None  # pickscore: processor folder (default: checkpoint); image_reward: bert vocab folder

    def validate(self) -> list[str]:
        """Return this spec's problems as ``"field: message"`` strings (empty when valid).

        Checks the name, that the weight is a finite number, and which path/architecture fields the
        named reward requires or forbids. File existence is checked at load time, not here.
        """
        if self.name not in BY_NAME:
            return [f"name: unknown reward {self.name!r}; valid names: {', '.join(REWARD_NAMES)}"]
        problems = self._weight_problems() + self._field_problems(self.descriptor)
        return problems + self._arch_problems()

    def scale_in_loss(self, coefficient: float) -> str:
        """This term's effective scale when the loss multiplies the reward sum by ``coefficient``:
        ``"hpsv2: 100 × cosine (HPS; ...)"``."""
        descriptor = self.descriptor
        return f"{self.name}: {coefficient * self.weight * descriptor.scale:g} × {descriptor.unit}"

    @property
    def descriptor(self) -> RewardDescriptor:
        """The named reward's facts (its loader, fields, files and unit)."""
        return BY_NAME[self.name]

    def resolved_arch(self) -> str | None:
        """The open_clip architecture to build: ``arch``, else the ``arch_config`` file stem, else the default."""
        if self.arch is not None:
            return self.arch
        if self.arch_config is not None:
            return Path(self.arch_config).stem
        return self.descriptor.default_arch

    def _weight_problems(self) -> list[str]:
        ok = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if ok and math.isfinite(self.weight):
            return []
        return [f"weight: must be a finite number, got {self.weight!r}"]

    def _field_problems(self, descriptor: RewardDescriptor) -> list[str]:
        problems = []
        for field in _OPTIONAL_FIELDS:
            value = getattr(self, field)
            if field in descriptor.required and not value:
                what = descriptor.required[field]
                problems.append(f"{field}: {self.name} needs {field} ({what}); got {value!r}")
            elif field not in descriptor.required and field not in descriptor.allowed and value is not None:
                problems.append(f"{field}: not used by {self.name}; remove it (got {value!r})")
        return problems

    def _arch_problems(self) -> list[str]:
        if self.arch is not None and ":" in self.arch:
            return [
                f"arch: schema prefixes such as hf-hub: or local-dir: are not supported (they download "
                f"or read their own weights), got {self.arch!r}; name a built-in architecture or use arch_config"
            ]
        if self.name == "clip_score" and self.arch is None and self.arch_config is None:
            return ["arch: clip_score needs arch (an open_clip architecture such as ViT-L-14) or arch_config; got None"]
        if self.arch_config is None:
            return []
        if not self.arch_config.endswith(".json"):
            return [f"arch_config: must be an open_clip model-config .json file, got {self.arch_config!r}"]
        stem = Path(self.arch_config).stem
        if self.arch is not None and self.arch != stem:
            return [
                f"arch: {self.arch!r} differs from the architecture {stem!r} that arch_config "
                f"registers (its file stem); set arch to {stem!r} or leave it unset"
            ]
        return []

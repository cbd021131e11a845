"""Typed configuration of one reward term: which scorer, its weight, and where its weights live.

A run's reward is ``r(x, c) = Σ_i w_i r_i(x, c)`` over a list of :class:`RewardSpec`. ``validate()``
checks only the spec itself (which fields each reward needs or forbids); files are checked when
``rewards.build.build_reward`` loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

RewardName = Literal[
    "hpsv2", "pickscore", "image_reward", "aesthetic", "clip_score", "symmetry", "colourfulness", "sharpness", "brightness"
]
REWARD_NAMES: tuple[str, ...] = get_args(RewardName)
IMAGE_ENCODER_REWARDS = ("clip_score", "hpsv2")  # CLIP-type rewards whose image embeddings can be read out

# open_clip architecture used when `arch` is not given. The LAION aesthetic head was trained on
# OpenAI CLIP ViT-L/14 features, and OpenAI's CLIP uses QuickGELU: the plain "ViT-L-14" config has
# the same tensors but GELU, so it would load OpenAI weights without error and score wrongly.
DEFAULT_ARCH: dict[str, str] = {"hpsv2": "ViT-H-14", "aesthetic": "ViT-L-14-quickgelu"}

_OPTIONAL_FIELDS = ("checkpoint", "clip_checkpoint", "arch", "arch_config", "processor")


@dataclass(frozen=True, kw_only=True)
class _FieldRules:
    """Which optional fields one reward requires (with what they mean) or accepts, the rest forbidden; and its
    score as ``scale × unit`` (HPSv2 is the raw cosine; CLIP score 100 × it)."""

    required: dict[str, str]
    allowed: tuple[str, ...] = ()
    scale: float = 1.0
    unit: str = "score"


_OPEN_CLIP_ARCH = ("arch", "arch_config")
_RULES: dict[str, _FieldRules] = {
    "hpsv2": _FieldRules(
        required={"checkpoint": "the HPS_v2.1_compressed.pt or HPS_v2_compressed.pt file"},
        allowed=_OPEN_CLIP_ARCH, unit="cosine (HPS; benchmarks print 100 × it)"),
    "clip_score": _FieldRules(
        required={"checkpoint": "an open_clip weights file (.pt, .bin or .safetensors)"},
        allowed=_OPEN_CLIP_ARCH, scale=100.0, unit="cosine"),
    "aesthetic": _FieldRules(
        required={"checkpoint": "the aesthetic MLP head, e.g. sac+logos+ava1-l14-linearMSE.pth",
                  "clip_checkpoint": "the OpenAI CLIP ViT-L/14 weights in open_clip format"},
        allowed=_OPEN_CLIP_ARCH, unit="aesthetic score (1-10)"),
    "pickscore": _FieldRules(
        required={"checkpoint": "the PickScore_v1 model folder (config.json + weights)"},
        allowed=("processor",), unit="PickScore (exp(logit_scale) × cosine; about 21-23)"),
    "image_reward": _FieldRules(
        required={"checkpoint": "the official ImageReward.pt", "processor": "a bert-base-uncased folder with vocab.txt"},
        allowed=("arch_config",), unit="ImageReward (standardised)"),
    "symmetry": _FieldRules(required={}, unit="symmetry"),
    "colourfulness": _FieldRules(required={}, unit="colourfulness"),
    "sharpness": _FieldRules(required={}, unit="sharpness"),
    "brightness": _FieldRules(required={}, unit="brightness"),
}
assert set(_RULES) == set(REWARD_NAMES)


@dataclass(frozen=True, kw_only=True)
class RewardSpec:
    """One weighted reward term ``w_i r_i``; see ``rewards.build.build_reward``."""

    name: RewardName  # which reward: one of REWARD_NAMES
    weight: float = 1.0  # w_i, multiplies this reward's score in the weighted sum
    checkpoint: str | None = None  # HPS .pt, open_clip weights (clip_score), aesthetic head, PickScore folder, ImageReward.pt
    clip_checkpoint: str | None = None  # aesthetic only: open_clip weights of the ViT-L/14 image encoder
    arch: str | None = None  # open_clip architecture; default ViT-H-14 (hpsv2), ViT-L-14-quickgelu (aesthetic)
    arch_config: str | None = None  # open_clip model-config JSON (its stem is the arch); image_reward: BLIP sizes JSON
    processor: str | None = None  # pickscore: processor folder (default: checkpoint); image_reward: bert vocab folder

    def validate(self) -> list[str]:
        """Return this spec's problems as ``"field: message"`` strings (empty when valid).

        Checks the name, that the weight is a finite number, and which path/architecture fields the
        named reward requires or forbids. File existence is checked at load time, not here.
        """
        if self.name not in _RULES:
            return [f"name: unknown reward {self.name!r}; valid names: {', '.join(REWARD_NAMES)}"]
        problems = self._weight_problems() + self._field_problems(_RULES[self.name])
        return problems + self._arch_problems()

    def scale_in_loss(self, coefficient: float) -> str:
        """This term's effective scale when the loss multiplies the reward sum by ``coefficient``:
        ``"hpsv2: 100 × cosine (HPS; ...)"``."""
        rules = _RULES[self.name]
        return f"{self.name}: {coefficient * self.weight * rules.scale:g} × {rules.unit}"

    def resolved_arch(self) -> str | None:
        """The open_clip architecture to build: ``arch``, else the ``arch_config`` file stem, else the default."""
        if self.arch is not None:
            return self.arch
        if self.arch_config is not None:
            return Path(self.arch_config).stem
        return DEFAULT_ARCH.get(self.name)

    def _weight_problems(self) -> list[str]:
        ok = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if ok and math.isfinite(self.weight):
            return []
        return [f"weight: must be a finite number, got {self.weight!r}"]

    def _field_problems(self, rules: _FieldRules) -> list[str]:
        problems = []
        for field in _OPTIONAL_FIELDS:
            value = getattr(self, field)
            if field in rules.required and not value:
                what = rules.required[field]
                problems.append(f"{field}: {self.name} needs {field} ({what}); got {value!r}")
            elif field not in rules.required and field not in rules.allowed and value is not None:
                problems.append(f"{field}: not used by {self.name}; remove it (got {value!r})")
        return problems

    def _arch_problems(self) -> list[str]:
        if self.arch is not None and ":" in self.arch:
            return [f"arch: schema prefixes such as hf-hub: or local-dir: are not supported (they download "
                    f"or read their own weights), got {self.arch!r}; name a built-in architecture or use arch_config"]
        if self.name == "clip_score" and self.arch is None and self.arch_config is None:
            return ["arch: clip_score needs arch (an open_clip architecture such as ViT-L-14) "
                    "or arch_config; got None"]
        if self.arch_config is None:
            return []
        if not self.arch_config.endswith(".json"):
            return [f"arch_config: must be an open_clip model-config .json file, got {self.arch_config!r}"]
        stem = Path(self.arch_config).stem
        if self.arch is not None and self.arch != stem:
            return [f"arch: {self.arch!r} differs from the architecture {stem!r} that arch_config "
                    f"registers (its file stem); set arch to {stem!r} or leave it unset"]
        return []

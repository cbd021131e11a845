"""What the project knows about one reward, in one place: its name, how to load it, which spec fields it
needs, what its files must look like, and the unit of its score.

Each reward module exports its descriptor(s); :mod:`rewards.catalog` lists them. Adding a reward is one new
module with a loader and a descriptor, and one line in the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from rewards.config import RewardSpec


@dataclass(frozen=True, kw_only=True)
class WeightsFile:
    """A weights file: what it is, and prefixes its tensor names must include (each at least once)."""

    what: str
    prefixes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Folder:
    """A folder: what it is, and a file it must hold (``""``: any folder)."""

    what: str
    must_hold: str = ""


@dataclass(frozen=True, kw_only=True)
class RewardDescriptor:
    """One reward's facts.

    Attributes:
        name: The ``rewards[].name`` users write.
        load: Builds the CPU fp32 module from a validated spec.
        unit: What one unit of the score is; the loss header prints ``scale × unit``.
        scale: The score is ``scale × unit`` (HPSv2 the raw cosine; CLIP score 100 × it).
        required: Spec fields the reward needs, each with what it holds.
        allowed: Further spec fields it accepts; every other optional field is refused.
        files: The layout each file or folder field must have, checked before anything loads.
        default_arch: The open_clip architecture when ``arch`` and ``arch_config`` are unset.
        image_encoder: Whether its CLIP image embeddings can be read out (the feature-diversity metric).
        skeleton: Builds the same module on the meta device without reading a weights file (``pipeline.plan``
            counts its FLOPs and memory); None for a reward without weights, which ``load`` builds as it is.
    """

    name: str
    load: Callable[[RewardSpec], nn.Module]
    unit: str
    scale: float = 1.0
    required: Mapping[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()
    files: Mapping[str, WeightsFile | Folder] = field(default_factory=dict)
    default_arch: str | None = None
    image_encoder: bool = False
    skeleton: Callable[[RewardSpec], nn.Module] | None = None


OPEN_CLIP_ARCH = ("arch", "arch_config")  # the fields that pick an open_clip architecture
OPEN_CLIP_TENSORS = ("visual.",)  # every open_clip state dict has its image tower under visual.*

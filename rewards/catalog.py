"""Every reward the project ships: one descriptor each (see :mod:`rewards.descriptor`). A new reward is a new
module exporting its descriptor and one line here."""

from __future__ import annotations

from rewards import aesthetic, clip_similarity, image_reward, pickscore, pixel
from rewards.descriptor import RewardDescriptor

DESCRIPTORS: tuple[RewardDescriptor, ...] = (
    clip_similarity.HPSV2,
    pickscore.DESCRIPTOR,
    image_reward.DESCRIPTOR,
    aesthetic.DESCRIPTOR,
    clip_similarity.CLIP_SCORE,
    *pixel.DESCRIPTORS,
)
BY_NAME: dict[str, RewardDescriptor] = {d.name: d for d in DESCRIPTORS}
REWARD_NAMES: tuple[str, ...] = tuple(BY_NAME)
IMAGE_ENCODER_REWARDS: tuple[str, ...] = tuple(d.name for d in DESCRIPTORS if d.image_encoder)

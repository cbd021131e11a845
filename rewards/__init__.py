"""Differentiable reward models for reward fine-tuning: HPSv2, PickScore, LAION aesthetic, CLIP score
and pixel rewards. Build them from ``RewardSpec`` entries with ``rewards.build.build_reward``."""

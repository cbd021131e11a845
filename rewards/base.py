"""The reward interface shared by every scorer, its input check, and checkpoint-loading errors.

A reward maps a batch of decoded images ``x ∈ [0, 1]^{B×3×H×W}`` and their prompts to scores
``r(x, c) ∈ R^B``. DRaFT (Clark et al., ICLR 2024, Eq. 1) and DRTune (Wu et al., ECCV 2024) maximise
``E_c[r(x_0(θ, c), c)]`` by back-propagating ``∂r/∂x_0`` into the sampler, so every reward here is
differentiable w.r.t. the images while its own weights are frozen (``requires_grad=False``, eval mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

_MAX_KEYS_SHOWN = 5


@runtime_checkable
class Reward(Protocol):
    """A differentiable image reward ``r(x, c)``.

    Attributes:
        name: Short name used for logging (``reward/<name>``).
    """

    name: str

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score a batch.

        Args:
            images: ``(B, 3, H, W)`` floating tensor with values in [0, 1].
            prompts: ``B`` prompts, one per image.

        Returns:
            ``(B,)`` float32 scores, differentiable w.r.t. ``images``.
        """
        ...


@runtime_checkable
class WeightedReward(Reward, Protocol):
    """A reward ``Σ_k w_k r_k`` that also reports its terms: :class:`~rewards.combine.WeightedSum` in one process,
    ``pipeline.reward_actors.RemoteReward`` over a pool of actors. The loop logs each term as ``reward/<k>``.

    Attributes:
        weights: ``{k: w_k}``; empty or None when the reward is a single term.
    """

    weights: dict[str, float] | None

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each term's unweighted ``(B,)`` scores ``r_k``, keyed by term name."""
        ...

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Σ_k w_k r_k`` of the scores from :meth:`components`, ``(B,)``."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    """A reward built on an image encoder whose embeddings can be read out (the CLIP-type rewards); the
    ``feature_diversity`` metric and the diversity term use them."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` unit-norm embeddings of images in [0, 1]."""
        ...


def weighted_terms(reward: Reward) -> WeightedReward | None:
    """``reward`` as a weighted sum when it reports more than its total, else None."""
    return reward if isinstance(reward, WeightedReward) and reward.weights else None


class RewardLoadError(ValueError):
    """A reward checkpoint is missing, unreadable, or does not fit the architecture it is loaded into."""


def check_images(images: object, prompts: Sequence[str]) -> None:
    """Validate a reward's input batch at the boundary, with one clear message per problem.

    Args:
        images: Expected a ``(B, 3, H, W)`` floating tensor with values in [0, 1].
        prompts: Expected a sequence of ``B`` strings.

    Raises:
        ValueError: If ``images`` is not a tensor, has the wrong shape or dtype, holds values outside
            [0, 1] (or NaN), or if ``prompts`` is not a sequence of ``B`` strings.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (B, 3, H, W) (RGB, channels first), got {tuple(images.shape)}; "
            "for a single image use images[None], for channels-last use images.permute(0, 3, 1, 2)"
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a floating tensor with values in [0, 1], got dtype {images.dtype}; "
            "for uint8 images use images.float() / 255"
        )
    _check_range(images)
    _check_prompts(prompts, images.shape[0])


def _check_range(images: torch.Tensor) -> None:
    if images.device.type == "meta":  # shapes only: pipeline.plan counts a step on the meta device
        return
    lo, hi = torch.aminmax(images.detach())
    lo, hi = lo.item(), hi.item()
    # Written so that NaN (which compares False with everything) also fails.
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(
            f"images must have values in [0, 1], got min {lo:.4g} and max {hi:.4g}; "
            "decoded VAE output in [-1, 1] maps to [0, 1] with (x / 2 + 0.5).clamp(0, 1)"
        )


def _check_prompts(prompts: Sequence[str], batch_size: int) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(
            f"prompts must be a sequence of {batch_size} strings (one per image), got {type(prompts).__name__}; "
            "for one prompt use [prompt] * B"
        )
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} images; pass exactly one prompt per image")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must all be str, got elements of type {sorted(set(bad))}")


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with every parameter frozen (``requires_grad=False``) and return it."""
    module.requires_grad_(False)
    return module.eval()


def describe_state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """Summarise how a checkpoint's tensors differ from a model's, naming the first few keys.

    Args:
        expected: The model's ``state_dict()``.
        found: The checkpoint's state dict.

    Returns:
        A ``"; "``-joined summary of missing keys, unexpected keys and shape mismatches, or ``""``
        when the two agree in keys and shapes.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        summarise_keys("missing keys", missing),
        summarise_keys("unexpected keys", unexpected),
        summarise_keys("shape mismatches", mismatched),
    ]
    return "; ".join(p for p in parts if p)


def summarise_keys(label: str, keys: Iterable[str]) -> str:
    """Return ``"<n> <label>: k1, k2, ... and <m> more"`` naming the first few keys, or ``""`` if none."""
    keys = list(keys)
    if not keys:
        return ""
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = f" and {len(keys) - _MAX_KEYS_SHOWN} more" if len(keys) > _MAX_KEYS_SHOWN else ""
    return f"{len(keys)} {label}: {shown}{more}"


def model_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Return the device and dtype of ``module``'s first parameter (where its inputs must go)."""
    param = next(module.parameters(), None)
    assert param is not None, f"{type(module).__name__} has no parameters"
    return param.device, param.dtype

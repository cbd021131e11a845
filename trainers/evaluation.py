"""Scoring sampled images, apart from training: held-out sampling and scoring, the two diversity measures,
image grids and the held-out summary (base against tuned with a paired interval).

The CLIs that only score or sample images (``pipeline.evaluate``, ``pipeline.generate``, the toy world's
report) import this module and never the training loop (``trainers.loop``), which calls it to evaluate.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from rewards.base import ImageEncoder, Reward, weighted_terms
from rewards.combine import terms_of
from trainers.config import SamplerConfig
from trainers.engine import generate
from trainers.models import DiffusionModel
from trainers.samplers.schedule import Schedule
from trainers.stats import paired_difference_ci


class OneStepGenerator(Protocol):
    """A one-step generator (``trainers.distill.DiStar``): images from prompts and initial noise."""

    def generate(self, prompts: list[str], z: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def sample_and_score(
    model: DiffusionModel,
    prompts: list[str],
    rewards: dict[str, Reward],
    sampler: SamplerConfig,
    schedule: Schedule,
    seed: int,
    one_step: OneStepGenerator | None = None,
    tuned_weights: list[float] | None = None,
    fold_lora: bool = True,
    batch_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sample ``prompts`` from noise seeded by ``seed`` (with the DDIM sampler, or the ``one_step``
    generator; ``tuned_weights``: annealed importance guidance) and score the images with every reward, in
    batches of ``batch_size`` prompts (None: all at once), each image from the same initial noise whatever the
    batches.

    Returns:
        ``(scores, images)``: per-image scores ``(N,)`` by reward name, images ``(N, 3, H, W)``, on CPU.
    """
    model.denoiser.eval()
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(len(prompts), *model.latent_shape, generator=gen).to(model.device)
    size = batch_size or len(prompts)
    parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
    for start in range(0, len(prompts), size):
        batch, noise = prompts[start : start + size], x_T[start : start + size]
        if one_step is not None:
            images = one_step.generate(batch, noise)
        else:
            images = generate(
                model,
                batch,
                noise,
                schedule,
                guidance=sampler.guidance_scale,
                eta=sampler.eta,
                gen=gen,
                tuned_weights=tuned_weights,
                fold_lora=fold_lora,
            )
        scores = {}
        for name, reward in rewards.items():
            scores.update(_score_with_components(name, reward, images, batch))
        parts.append((scores, images.float().cpu()))
    scores = {name: torch.cat([s[name] for s, _ in parts]) for name in parts[0][0]}
    return scores, torch.cat([images for _, images in parts])


def diversity(images: torch.Tensor, per_prompt: int, side: int = 32) -> torch.Tensor:
    """Mean pairwise RMS difference between the ``side``-pixel thumbnails of each prompt's images
    (prompt-major, ``per_prompt`` each): ``(N, 3, H, W) -> (N / per_prompt,)``. Low means mode collapse."""
    thumbs = torch.nn.functional.adaptive_avg_pool2d(images.float(), min(side, images.shape[-1])).flatten(1)
    x = thumbs.view(-1, per_prompt, thumbs.shape[1])
    return _mean_off_diagonal(torch.cdist(x, x) / thumbs.shape[1] ** 0.5)


def feature_diversity(features: torch.Tensor, per_prompt: int) -> torch.Tensor:
    """Mean pairwise cosine distance ``1 - cos`` between unit image embeddings ``(N, D)`` of each prompt's
    images: ``(N / per_prompt,)``."""
    x = features.float().view(-1, per_prompt, features.shape[1])
    return _mean_off_diagonal(1 - x @ x.transpose(1, 2))


def _mean_off_diagonal(dist: torch.Tensor) -> torch.Tensor:
    """``(P, k, k)`` pairwise distances (zero diagonal) -> mean over the ``k(k-1)`` pairs, ``(P,)``."""
    k = dist.shape[1]
    return (dist.sum(dim=(1, 2)) - dist.diagonal(dim1=1, dim2=2).sum(dim=1)) / (k * (k - 1))


def image_encoder(rewards: dict[str, Reward]):
    """The image encoder of the first reward (or weighted-sum component) that has one, e.g. CLIP's, or None."""
    encoders = [part for reward in rewards.values() for part in terms_of(reward) if isinstance(part, ImageEncoder)]
    return encoders[0].image_features if encoders else None


def _score_with_components(name: str, reward: Reward, images, prompts) -> dict[str, torch.Tensor]:
    """``{name: scores}``, plus ``{name/part: scores}`` for each term of a weighted sum (a reward with
    :class:`~rewards.base.WeightedReward`)."""
    weighted = weighted_terms(reward)
    if weighted is None:
        return {name: reward(images, prompts).float().cpu()}
    parts = weighted.components(images, prompts)
    out = {f"{name}/{part}": value.float().cpu() for part, value in parts.items()}
    return {name: weighted.combine(parts).float().cpu(), **out}


@torch.no_grad()
def diversity_scores(images: torch.Tensor, per_prompt: int, encoder, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-prompt ``diversity`` of pixels and, given an image ``encoder`` (a reward's), ``feature_diversity``."""
    scores = {"diversity": diversity(images, per_prompt)}
    if encoder is not None:
        scores["feature_diversity"] = feature_diversity(encoder(images.to(device)).cpu(), per_prompt)
    return scores


def save_grid(images: torch.Tensor, path: str, per_row: int) -> None:
    """Save images ``(N, 3, H, W)`` in [0, 1] as one PNG grid, ``per_row`` images per row."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_image(images, path, nrow=per_row, padding=1)


def held_out_summary(run_dir: str, step: int) -> dict[str, dict[str, float]]:
    """Base (step 0) versus tuned (``step``) held-out scores on the same prompts and noise, per reward,
    with a 95% bootstrap interval of the mean paired difference."""
    paths = [os.path.join(run_dir, "samples", f"scores_{s:06d}.pt") for s in (0, step)]
    if not all(os.path.isfile(p) for p in paths):
        return {}
    before, after = (torch.load(p, weights_only=True) for p in paths)
    summary = {}
    for name in after:
        diff, low, high = paired_difference_ci(after[name], before[name])
        summary[name] = {
            "base": float(before[name].mean()),
            "tuned": float(after[name].mean()),
            "diff": diff,
            "diff_low": low,
            "diff_high": high,
        }
    return summary


def held_out_metrics(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The held-out summary as flat metrics ``held_out/<reward>/<stat>``."""
    return {f"held_out/{name}/{stat}": value for name, stats in summary.items() for stat, value in stats.items()}


def held_out_from_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`held_out_metrics` (other metrics are ignored)."""
    summary: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("held_out/"):
            name, stat = key[len("held_out/") :].rsplit("/", 1)
            summary.setdefault(name, {})[stat] = value
    return summary

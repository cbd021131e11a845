"""Small statistics for evaluation: bootstrap confidence intervals."""

from __future__ import annotations

import torch


def bootstrap_mean_ci(
    values: torch.Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` ``(N,)`` and its percentile-bootstrap confidence interval ``(mean, low, high)``."""
    values = values.double().flatten()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (resamples, len(values)), generator=gen)
    means = values[idx].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(values.mean()), low, high


def paired_difference_ci(after: torch.Tensor, before: torch.Tensor, **kwargs) -> tuple[float, float, float]:
    """Bootstrap CI of the mean paired difference ``after - before`` (same prompts and noise)."""
    return bootstrap_mean_ci(after - before, **kwargs)


def crossed_bootstrap_ci(
    values: torch.Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` ``(S, P)`` (seeds x prompts, crossed) and its percentile-bootstrap interval
    ``(mean, low, high)``, resampling seeds and prompts independently, so both sources of variation count."""
    values = values.double()
    s, p = values.shape
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, s, (resamples, s), generator=gen)
    cols = torch.randint(0, p, (resamples, p), generator=gen)
    picked = values[rows]  # (R, S, P)
    means = picked.gather(2, cols[:, None, :].expand(-1, s, -1)).mean(dim=(1, 2))
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(values.mean()), low, high

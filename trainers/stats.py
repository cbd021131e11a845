"""Small statistics for evaluation: bootstrap confidence intervals."""

from __future__ import annotations

import torch


def bootstrap_mean_ci(values: torch.Tensor, level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
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

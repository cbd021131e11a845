"""The sampler interface the engine steps through: one :class:`Schedule` per sampling run.

Two implementations, both plain differentiable tensor maths:

- :class:`trainers.samplers.ddim.DDIMSchedule`: DDIM over epsilon, v or sample predictions (SD, SDXL, PixArt-α);
- :class:`trainers.samplers.flow.FlowSchedule`: flow-matching Euler over velocities (SD3, SD3.5).

A model's family builds the schedule for its scheduler (``model.family.schedule(model, num_steps)``).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Schedule(Protocol):
    """How to step, predict x0 and re-noise on one run's noise levels; step ``i = 0`` is the noisiest."""

    timesteps: torch.Tensor  # what the denoiser is given at each step, shape (T,)

    def __len__(self) -> int: ...

    def split(self, model_output: torch.Tensor, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)``: the clean latent and the noise the guided output at step ``i`` implies."""

    def predict_x0(self, model_output: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """The one-step prediction of the clean latent at step ``i`` (ReFL, DRTune early stop)."""

    def step(
        self, model_output: torch.Tensor, x: torch.Tensor, i: int, eta: float = 0.0, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The latent after step ``i``; ``noise`` is the fresh ``z`` a stochastic (``eta > 0``) step adds."""

    def refinement(self, timestep: int | None = None) -> Schedule:
        """A one-step schedule from the last step's noise level (or from training timestep ``timestep``) to
        where the last step lands (DRaFT-LV's copies)."""

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x0`` taken by the forward process to the first step's noise level."""

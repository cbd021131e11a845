"""Differentiable flow-matching Euler sampling (SD3, SD3.5), on the sigmas of a diffusers
``FlowMatchEulerDiscreteScheduler`` config (docs/families.md).

Notation (code name -> maths):

==============  ===============================================================
``sigma``       noise level in [0, 1]; the forward process is ``x_sigma = (1 - sigma) x0 + sigma eps``
``v``           the guided denoiser output, the velocity ``eps - x0``
``x0_hat``      ``x - sigma v``
``eps_hat``     ``x + (1 - sigma) v``
==============  ===============================================================

A step from ``sigma_i`` to ``sigma_{i+1}`` is ``x + (sigma_{i+1} - sigma_i) v``, and the denoiser sees the
timestep ``sigma * num_train_timesteps`` as a float. The sigmas are built once from the config, as
``set_timesteps`` builds them (shift or resolution-dependent shift, ``shift_terminal``, the terminal 0), so
training never calls ``scheduler.step``, which carries a step index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

# scheduler options whose sigmas or steps this sampler does not reproduce, and the value that turns each off
UNSUPPORTED = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "stochastic_sampling": False,
    "invert_sigmas": False,
}
TIME_SHIFTS = ("exponential", "linear")


def unsupported_options(config) -> dict[str, object]:
    """The scheduler options set to something this sampler does not reproduce, with their values."""
    found = {key: config.get(key) for key, off in UNSUPPORTED.items() if config.get(key, off) != off}
    if config.get("time_shift_type", "exponential") not in TIME_SHIFTS:
        found["time_shift_type"] = config.get("time_shift_type")
    return found


def option_fix(found: dict[str, object]) -> str:
    """How to turn the ``found`` options off: ``"use_karras_sigmas=false, time_shift_type=exponential"``."""
    return ", ".join(f"{k}=exponential" if k == "time_shift_type" else f"{k}=false" for k in found)


@dataclass(frozen=True)
class FlowSchedule:
    """The sigmas of one flow-matching Euler run.

    Attributes:
        sigmas: Noise levels visited, then the terminal 0, shape ``(T + 1,)``, float32 as diffusers keeps them.
        timesteps: What the denoiser is given at each step, ``sigma * num_train_timesteps``, shape ``(T,)``, float32.
        num_train_timesteps: The scheduler's ``num_train_timesteps``: a training timestep t is ``sigma = t / it``.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    num_train_timesteps: int = 1000

    def __len__(self) -> int:
        return len(self.timesteps)

    def _sigma(self, i: int, like: torch.Tensor) -> torch.Tensor:
        return self.sigmas[i].to(dtype=like.dtype, device=like.device)

    def split(self, v: torch.Tensor, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` from the velocity ``v`` at step ``i``."""
        sigma = self._sigma(i, x)
        return x - sigma * v, x + (1 - sigma) * v

    def predict_x0(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """One-step prediction of the clean latent at step ``i`` (ReFL, DRTune early stop)."""
        return self.split(v, x, i)[0]

    def step(
        self, v: torch.Tensor, x: torch.Tensor, i: int, eta: float = 0.0, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x + (sigma_{i+1} - sigma_i) v``, in ``x``'s dtype; the Euler sampler is deterministic (``eta = 0``)."""
        if eta > 0:
            raise ValueError(f"sampler.eta={eta}: the flow-matching Euler sampler is deterministic; set sampler.eta=0")
        return x + (self._sigma(i + 1, x) - self._sigma(i, x)) * v.to(x.dtype)

    def refinement(self, timestep: int | None = None) -> FlowSchedule:
        """One Euler step from the last step's sigma (or from ``timestep / num_train_timesteps``) to 0: where
        DRaFT-LV's re-noised copies are denoised."""
        if timestep is None:
            return replace(self, sigmas=self.sigmas[-2:], timesteps=self.timesteps[-1:])
        sigma = torch.tensor([timestep / self.num_train_timesteps, 0.0], dtype=torch.float32)
        return replace(self, sigmas=sigma, timesteps=sigma[:1] * self.num_train_timesteps)

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x0 + sigma eps`` at the first step's sigma (DRaFT-LV's copies, on a :meth:`refinement`)."""
        sigma = self._sigma(0, x0)
        return (1 - sigma) * x0 + sigma * noise


def flow_schedule(config, num_steps: int, image_seq_len: int, base_sigmas: np.ndarray | None = None) -> FlowSchedule:
    """The :class:`FlowSchedule` ``FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps, mu=..., sigmas=...)``
    builds from ``config``, with ``mu`` from ``image_seq_len`` (latent patches per image) under dynamic shifting,
    and ``base_sigmas`` the unshifted sigmas a pipeline passes (FLUX: ``linspace(1, 1/T, T)``); None = the
    scheduler's own, evenly spaced over its training grid.

    Raises:
        ValueError: for the options in :data:`UNSUPPORTED` (or an unknown ``time_shift_type``).
    """
    found = unsupported_options(config)
    if found:
        raise ValueError(
            f"scheduler config: {', '.join(f'{k}={v!r}' for k, v in found.items())} is not reproduced by "
            f"the flow sampler; set {option_fix(found)}"
        )
    n_train, shift = config["num_train_timesteps"], config["shift"]
    if base_sigmas is not None:
        sigmas = np.asarray(base_sigmas).astype(np.float32)  # set_timesteps casts given sigmas before shifting
    else:
        # the training grid's ends, in float32 as the scheduler's __init__ computes them
        ends = torch.tensor([n_train, 1], dtype=torch.float32) / n_train
        if not config["use_dynamic_shifting"]:
            ends = shift * ends / (1 + (shift - 1) * ends)
        sigma_max, sigma_min = ends.tolist()
        sigmas = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps) / n_train
    if config["use_dynamic_shifting"]:
        mu = dynamic_shift_mu(config, image_seq_len)
        sigmas = _time_shift(config.get("time_shift_type", "exponential"), mu, sigmas)
    else:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if config.get("shift_terminal"):
        if num_steps < 2:
            raise ValueError(
                "sampler.num_steps: a scheduler with shift_terminal needs at least 2 steps (its one "
                "step would be 0/0); set sampler.num_steps >= 2"
            )
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - config["shift_terminal"]))
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return FlowSchedule(torch.cat([sigmas, torch.zeros(1)]), sigmas * n_train, n_train)


def flow_one_step(timestep: int, num_train_timesteps: int = 1000) -> FlowSchedule:
    """One Euler step from ``sigma = timestep / num_train_timesteps`` to 0: its ``step`` returns the x0 prediction
    ``x - sigma v``, the one-step generator of trainers/distill.py on a flow model."""
    sigmas = torch.tensor([timestep / num_train_timesteps, 0.0], dtype=torch.float32)
    return FlowSchedule(sigmas, sigmas[:1] * num_train_timesteps, num_train_timesteps)


def dynamic_shift_mu(config, image_seq_len: int) -> float:
    """``mu`` linear in the number of latent patches, between (``base_image_seq_len``, ``base_shift``) and
    (``max_image_seq_len``, ``max_shift``), as the SD3 and FLUX pipelines compute it."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


def _time_shift(kind: str, mu: float, sigmas: np.ndarray) -> np.ndarray:
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return mu / (mu + (1 / sigmas - 1))

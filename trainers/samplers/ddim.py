"""Differentiable DDIM maths (Song et al., 2021, eqs. 12 and 16) on a diffusers scheduler's tables.

Notation (code name -> paper):

==============  ===============================================================
``abar_t``      cumulative product of alphas, alpha-bar_t (``scheduler.alphas_cumprod[t]``)
``eps_hat``     guided noise prediction epsilon_theta(x_t, t, c)
``x0_hat``      predicted clean latent f_theta(x_t, t) = (x_t - sqrt(1-abar_t) eps_hat) / sqrt(abar_t)
``sigma``       DDIM noise scale eta * sqrt((1-abar_prev)/(1-abar_t)) * sqrt(1 - abar_t/abar_prev)
==============  ===============================================================

One step from t to the previous timestep:
``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z``.
Everything here is plain tensor arithmetic, so gradients flow through ``x_t`` and ``model_output``.
The numbers follow ``diffusers.DDIMScheduler.step`` exactly, so sampling with gradients off
reproduces diffusers' pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DDIMSchedule:
    """The timesteps and alpha-bar tables of one DDIM sampling run.

    Attributes:
        timesteps: Integer training timesteps visited, decreasing, shape ``(T,)``.
        abar: alpha-bar at each visited timestep, shape ``(T,)``, float64.
        abar_prev: alpha-bar at the timestep each step lands on, shape ``(T,)``, float64.
        prediction_type: What the denoiser predicts: ``epsilon``, ``v_prediction`` or ``sample``.
        clip_sample_range: Clamp ``x0_hat`` to this range, or None for no clamp.
        train_abar: alpha-bar at every training timestep, shape ``(num_train_timesteps,)``, float64.
    """

    timesteps: torch.Tensor
    abar: torch.Tensor
    abar_prev: torch.Tensor
    prediction_type: str
    clip_sample_range: float | None
    train_abar: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)

    def split(self, model_output: torch.Tensor, x_t: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` from the guided denoiser output at step ``i``."""
        return split_prediction(model_output, x_t, self.abar[i], self.prediction_type, self.clip_sample_range)

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, i: int) -> torch.Tensor:
        """One-step prediction of the clean latent at step ``i`` (ReFL, DRTune early stop)."""
        return self.split(model_output, x_t, i)[0]

    def step(
        self, model_output: torch.Tensor, x_t: torch.Tensor, i: int, eta: float = 0.0, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One DDIM step from ``timesteps[i]`` to the next, differentiable in both inputs.

        Args:
            model_output: Guided denoiser output at step ``i``, shape ``(B, C, h, w)``.
            x_t: Latent at step ``i``, shape ``(B, C, h, w)``.
            i: Step index, 0 is the noisiest.
            eta: DDIM stochasticity (0 deterministic, 1 DDPM-like).
            noise: Standard normal noise ``z`` of ``x_t``'s shape; required when ``eta > 0``.

        Returns:
            ``x_prev``, shape ``(B, C, h, w)``.
        """
        abar_prev = self.abar_prev[i]
        x0_hat, eps_hat = self.split(model_output, x_t, i)
        sigma = ddim_sigma(self.abar[i], abar_prev, eta)
        x_prev = _coef(abar_prev.sqrt(), x_t) * x0_hat + _coef((1 - abar_prev - sigma**2).sqrt(), x_t) * eps_hat
        if eta > 0:
            if noise is None:
                raise ValueError("a DDIM step with eta > 0 needs noise")
            x_prev = x_prev + _coef(sigma, x_t) * noise
        return x_prev

    def refinement(self, timestep: int | None = None) -> DDIMSchedule:
        """One step from the last step's timestep (or from ``timestep``) to where the last step lands: where
        DRaFT-LV's re-noised copies are denoised."""
        if timestep is None:
            return replace(self, timesteps=self.timesteps[-1:], abar=self.abar[-1:], abar_prev=self.abar_prev[-1:])
        return replace(
            self, timesteps=torch.tensor([timestep]), abar=self.train_abar[[timestep]], abar_prev=self.abar_prev[-1:]
        )

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward process ``sqrt(abar) x0 + sqrt(1 - abar) noise`` to the first step's timestep (DRaFT-LV's
        copies, on a :meth:`refinement`)."""
        abar = self.abar[0]
        return _coef(abar.sqrt(), x0) * x0 + _coef((1 - abar).sqrt(), x0) * noise


def ddim_schedule(scheduler, num_steps: int) -> DDIMSchedule:
    """Build a :class:`DDIMSchedule` from a diffusers ``DDIMScheduler`` (its config is not changed).

    Raises:
        ValueError: for scheduler features this engine does not reproduce (dynamic thresholding,
            an unknown prediction type).
    """
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        raise ValueError(
            "scheduler.thresholding=True is not supported by the training sampler; "
            "set thresholding=False in the scheduler config"
        )
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {cfg.prediction_type!r} is not one of {PREDICTION_TYPES}")
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps.clone().long()
    alphas_cumprod = scheduler.alphas_cumprod.double()
    prev = timesteps - cfg.num_train_timesteps // num_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    abar_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final)
    clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
    return DDIMSchedule(timesteps, alphas_cumprod[timesteps], abar_prev, cfg.prediction_type, clip, alphas_cumprod)


def one_step_schedule(scheduler, timestep: int) -> DDIMSchedule:
    """A single step from ``timestep`` straight to the clean latent (alpha-bar 1), so its ``step`` returns
    the x0 prediction: the one-step generator of trainers/distill.py, and the teacher's one-step sample."""
    cfg = scheduler.config
    timesteps = torch.tensor([timestep])
    table = scheduler.alphas_cumprod.double()
    clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
    return DDIMSchedule(
        timesteps, table[timesteps], torch.ones(1, dtype=torch.float64), cfg.prediction_type, clip, table
    )


def _coef(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 scalar as a scalar tensor of ``like``'s dtype and device."""
    return value.to(dtype=like.dtype, device=like.device)


def split_prediction(model_output, x_t, abar_t, prediction_type: str, clip_range: float | None = None):
    """Turn a denoiser output into ``(x0_hat, eps_hat)``, as ``DDIMScheduler.step`` does.

    Args:
        model_output: Denoiser output (guided), shape ``(B, C, h, w)``.
        x_t: Current latent, shape ``(B, C, h, w)``.
        abar_t: alpha-bar at t (0-dim float64 tensor).
    """
    a, s = _coef(abar_t.sqrt(), x_t), _coef((1 - abar_t).sqrt(), x_t)
    if prediction_type == "epsilon":
        x0_hat, eps_hat = (x_t - s * model_output) / a, model_output
    elif prediction_type == "v_prediction":
        x0_hat, eps_hat = a * x_t - s * model_output, a * model_output + s * x_t
    else:  # "sample"
        x0_hat, eps_hat = model_output, (x_t - a * model_output) / s
    if clip_range is not None:
        x0_hat = x0_hat.clamp(-clip_range, clip_range)
    return x0_hat, eps_hat


def ddim_sigma(abar_t: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: ``eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))``."""
    return eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()

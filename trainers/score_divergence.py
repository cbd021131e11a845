"""Score-based divergences between a generator and a reference diffusion model, as tractable losses.

Diff-Instruct* (DI*, Luo et al. 2024, arXiv 2410.20898) and SIM (Luo et al. 2024, arXiv 2410.16794) train a
one-step generator ``x0 = g_θ(z, c)`` by minimising a score divergence to a (guided) reference model:

    D(θ) = E_t w(t) E_{x_t ~ π_t} [ d(y(x_t)) ],    y = s_θ,t(x_t) - s_ref,t(x_t),
    d(y) = sqrt(||y||² + c²) - c   (pseudo-Huber),

where ``s_θ,t`` is the score of ``p_θ,t``, the law of ``x_t = α_t x0 + σ_t ε`` (unknown; tracked by an online
fake-score network ``s_ψ``), and ``π_t`` is a sampling law that the papers hold fixed at ``sg(p_θ,t)``.

Derivation. Write ``x' = ∂x_t/∂θ``, ``u = d'(y)``, ``J_f`` for the Jacobian in ``x`` of a function ``f`` at
fixed θ, and ``∇log q = ∇_{x_t} log q(x_t | x0) = -ε/σ_t``, constant in θ for fixed ``(z, ε)``. With the
sampling law fixed, ``∇_θ D = E[uᵀ ∂_θ s_θ]``: only the score changes. By the denoising score identity
``E_{x_t}[uᵀ s_θ] = E_{x0, ε}[uᵀ ∇log q]`` for any fixed ``u(x)``; differentiating both sides in θ (pathwise
on the right, pathwise plus score change on the left) gives

    E[uᵀ ∂_θ s_θ] = E[ (∇log q - s_θ)ᵀ J_u x'  -  uᵀ J_s x' ],

the pathwise gradient (networks' weights frozen, ``x_t`` *not* detached) of SIM's generator loss

    L_SIM = -d'(y)ᵀ (s_ψ(x_t) - ∇log q),               with s_ψ ≈ s_θ   (``divergence: sim``),

differentiated through both networks' input Jacobians and through ``u``. This is the papers' surrogate
(SIM §3.2, Theorem 3.1; DI* Algorithm 1), and the default.

``divergence: sim_sampling_law`` adds ``d(y)`` to that loss. The sum's pathwise gradient,
``E[-uᵀ J_ref x' + (∇log q - s_θ)ᵀ J_u x']``, is the gradient of ``E_{x_t ~ p_θ,t}[d]`` with the sampling law
differentiated too: the objective this project trained before it was read against the papers. Both
vanish at ``p_θ = p_ref``, but they move the generator differently on the way (on a Gaussian, by a factor
``v_θ/v_ref`` of the two marginal variances: ``tests/test_score_divergence.py``).

Units. The networks predict noise, ``s = -ε̂/σ_t``. Everything here works on σ_t-scaled scores, i.e.
in noise-prediction units: ``σ_t y = ε̂_ref - ε̂_fake`` and ``σ_t (∇log q - s_ψ) = ε̂_fake - ε``, so the distance at each t is ``d_t(v) = d(σ_t v)``, a valid score
divergence at every t. :class:`PseudoHuber` takes ``||·||`` as the L2 norm over the latent (``norm: l2``,
the papers' form) or as its root mean square (``norm: rms``, so ``c`` is per element): rms with ``c`` equals
l2 with ``c·√n`` scaled by ``1/√n``, with n the latent's element count (16 384 for SD at 512 px).

The KL reading of Diff-Instruct / DMD / DI++ is the other option: ``∇_θ KL = E[(s_θ - s_ref)ᵀ x']``,
i.e. the pathwise gradient of ``<sg(s_ψ - s_ref), x_t>``, with no network Jacobians.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class PseudoHuber:
    """``d(y) = sqrt(||y||² + c²) - c`` per sample, ``(B, ...) -> (B,)``, with ``||·||`` the L2 norm over all but
    the batch axis (``norm="l2"``, the papers') or its root mean square (``norm="rms"``)."""

    c: float
    norm: str = "l2"

    def _root(self, y: torch.Tensor) -> torch.Tensor:
        """``sqrt(||y||² + c²)`` per sample, ``(B,)``."""
        square = y.flatten(1).pow(2).sum(dim=1)
        if self.norm == "rms":
            square = square / y[0].numel()
        return (square + self.c * self.c).sqrt()

    def value(self, y: torch.Tensor) -> torch.Tensor:
        return self._root(y) - self.c

    def grad(self, y: torch.Tensor) -> torch.Tensor:
        """``d'(y)``, the gradient of :meth:`value` in ``y``, same shape as ``y``."""
        per_element = 1.0 / y[0].numel() if self.norm == "rms" else 1.0
        return y * per_element / self._root(y).reshape(-1, *([1] * (y.dim() - 1)))


class Distance(Protocol):
    """A distance ``d`` between scores, per sample, and its gradient in ``y``."""

    def value(self, y: torch.Tensor) -> torch.Tensor: ...

    def grad(self, y: torch.Tensor) -> torch.Tensor: ...


def sim_loss(eps_fake: torch.Tensor, eps_ref: torch.Tensor, eps: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Per-sample SIM / DI* generator loss ``-d'(y)ᵀ(s_ψ - ∇log q)`` in noise units, ``d'(y)ᵀ(ε̂_fake - ε)``
    with ``σ y = ε̂_ref - ε̂_fake``, ``(B, ...) -> (B,)``. Keep the graph from both predictions to ``x_t``."""
    u = distance.grad(eps_ref - eps_fake)
    return (u * (eps_fake - eps)).flatten(1).sum(dim=1)


def sim_sampling_law_loss(
    eps_fake: torch.Tensor, eps_ref: torch.Tensor, eps: torch.Tensor, distance: Distance
) -> torch.Tensor:
    """:func:`sim_loss` plus ``d(y)``: the gradient of the divergence with the sampling law differentiated."""
    return distance.value(eps_ref - eps_fake) + sim_loss(eps_fake, eps_ref, eps, distance)


def kl_loss(eps_fake: torch.Tensor, eps_ref: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Per-sample Diff-Instruct / DMD surrogate ``<sg(ε̂_ref - ε̂_fake), x_t> / n``: its gradient in ``x_t``
    is σ-scaled ``s_fake - s_ref``, the KL's, ``(B, ...) -> (B,)``."""
    direction = (eps_ref - eps_fake).detach()
    return (direction * x_t).flatten(1).mean(dim=1)


def dsm_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Denoising score matching for the fake-score network, ``||ε̂ - ε||²`` (mean per sample), ``(B,)``."""
    return (eps_pred - eps).flatten(1).pow(2).mean(dim=1)


SIM_LOSSES = {"sim": sim_loss, "sim_sampling_law": sim_sampling_law_loss}


@dataclass(frozen=True)
class DivergenceSpec:
    """Which surrogate and its distance: ``kind`` sim (DI*, SIM as published), sim_sampling_law (the sampling
    law differentiated too) or kl (Diff-Instruct, DMD, DI++); ``distance`` the pseudo-Huber of the sim kinds."""

    kind: str
    distance: PseudoHuber

    @property
    def uses_fake_jacobian(self) -> bool:
        """Whether the surrogate's gradient runs through the fake score's input Jacobian (sim kinds)."""
        return self.kind in SIM_LOSSES


@dataclass
class DivergenceTerms:
    """The teacher's side of one divergence evaluation, all detached.

    Attributes:
        value: Per-sample divergence ``d(y)`` (sim kinds) or KL surrogate (kl), ``(B,)``: what is logged.
        grad_x: ``∂L/∂x_t`` of the surrogate L through the teacher's input Jacobian (and, for kl, the direct
            term), ``(B, C, h, w)``.
        grad_fake: ``∂L/∂ε̂_fake``, ``(B, C, h, w)`` (zero for kl).
    """

    value: torch.Tensor
    grad_x: torch.Tensor
    grad_fake: torch.Tensor


def divergence_terms(
    teacher_eps: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    eps_fake: torch.Tensor,
    eps: torch.Tensor,
    spec: DivergenceSpec,
) -> DivergenceTerms:
    """Evaluate the surrogate with ``x_t`` and ``ε̂_fake`` as leaves and differentiate it through the teacher
    ``teacher_eps(x_t) -> ε̂_ref`` (guided), so the teacher can run in another process; the caller adds
    ``J_fakeᵀ grad_fake`` for the fake score's path to get ``∂L/∂x_t``."""
    x = x_t.detach().requires_grad_(True)
    fake = eps_fake.detach().requires_grad_(spec.uses_fake_jacobian)
    with torch.enable_grad():
        if spec.uses_fake_jacobian:
            eps_ref = teacher_eps(x)
            surrogate = SIM_LOSSES[spec.kind](fake, eps_ref, eps, spec.distance)
            grad_x, grad_fake = torch.autograd.grad(surrogate.sum(), [x, fake])
            value = spec.distance.value(eps_ref.detach() - eps_fake.detach())
        else:
            with torch.no_grad():
                eps_ref = teacher_eps(x)
            value = kl_loss(fake, eps_ref, x)
            (grad_x,) = torch.autograd.grad(value.sum(), [x])
            grad_fake = torch.zeros_like(fake)
    return DivergenceTerms(value.detach(), grad_x.detach(), grad_fake.detach())

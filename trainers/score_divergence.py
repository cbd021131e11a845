"""Score-based divergences between a generator and a reference diffusion model, as tractable losses.

Diff-Instruct* (DI*, Luo et al. 2024) and SIM (Luo et al. 2024) train a one-step generator
``x0 = g_θ(z, c)`` by minimising a score divergence to a (guided) reference model:

    D(θ) = E_t w(t) E_{x_t ~ p_θ,t} [ d(y(x_t)) ],    y = s_θ,t(x_t) - s_ref,t(x_t),
    d(y) = sqrt(||y||² + C²) - C   (pseudo-Huber),

where ``p_θ,t`` is the law of ``x_t = α_t x0 + σ_t ε`` and ``s_θ,t`` its (unknown) score, tracked by an
online fake-score network ``s_ψ``. Which stop-gradients the papers use is not verified
(ALGORITHMS.md §3.2); this module implements the reading derived here, which is exact.

Derivation. Write ``x' = ∂x_t/∂θ``, ``u = d'(y)``, ``J_f`` for the Jacobian in ``x`` of a function
``f`` at fixed θ, and ``∇log q = ∇_{x_t} log q(x_t | x0) = -ε/σ_t``, which is constant in θ for
fixed ``(z, ε)``. The gradient of D has a pathwise part, ``E[uᵀ (J_s - J_ref) x']``, and a part from
the score itself changing with θ, ``E[uᵀ ∂_θ s_θ]``. By the denoising score identity
``E_{x_t}[uᵀ s_θ] = E_{x0, ε}[uᵀ ∇log q]`` for any fixed ``u(x)``; differentiating both sides in θ
(pathwise on the right, pathwise plus score change on the left) gives
``E[uᵀ ∂_θ s_θ] = E[(∇log q - s_θ)ᵀ J_u x'] - E[uᵀ J_s x']``. Adding the two parts, the ``J_s``
terms cancel:

    ∇_θ D = E[ -uᵀ J_ref x'  +  (∇log q - s_θ)ᵀ J_u x' ].

That is the pathwise gradient (networks' weights frozen, ``x_t`` *not* detached) of the surrogate

    L_SIM = d(y) + d'(y)ᵀ (∇log q - s_ψ(x_t)),         with s_ψ ≈ s_θ,

differentiated through both networks' input Jacobians and through ``u``. With ``d = ||·||²`` it is
SiD's loss ``||y||² + 2 yᵀ(∇log q - s_ψ)``. ``tests/test_score_divergence.py`` checks the identity
against the exact gradient of D for Gaussian generators whose scores are known in closed form.

Units. The networks predict noise, ``s = -ε̂/σ_t``. Everything here works on σ_t-scaled scores,
``σ_t y = ε̂_ref - ε̂_fake`` and ``σ_t (∇log q - s_ψ) = ε̂_fake - ε``, i.e. the divergence uses the
distance ``d_t(v) = d(σ_t v)`` at each t (a valid score divergence for every t), and ``||·||`` is the
root mean square over the latent's elements, so ``C`` is per element.

The KL reading of Diff-Instruct / DMD / DI++ is the other option: ``∇_θ KL = E[(s_θ - s_ref)ᵀ x']``,
i.e. the pathwise gradient of ``<sg(s_ψ - s_ref), x_t>``, with no network Jacobians.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _rms(v: torch.Tensor) -> torch.Tensor:
    """Root mean square over all but the batch axis: ``(B, ...) -> (B,)``."""
    return v.flatten(1).pow(2).mean(dim=1).sqrt()


def pseudo_huber(y: torch.Tensor, c: float) -> torch.Tensor:
    """``d(y) = sqrt(rms(y)² + c²) - c`` per sample: ``(B, ...) -> (B,)``."""
    return (_rms(y).pow(2) + c * c).sqrt() - c


def pseudo_huber_grad(y: torch.Tensor, c: float) -> torch.Tensor:
    """``d'(y) = (y / n) / sqrt(rms(y)² + c²)`` with n elements per sample (the gradient of
    :func:`pseudo_huber` in ``y``), same shape as ``y``."""
    n = y[0].numel()
    scale = (_rms(y).pow(2) + c * c).sqrt().reshape(-1, *([1] * (y.dim() - 1)))
    return y / (n * scale)


def sim_loss(eps_fake: torch.Tensor, eps_ref: torch.Tensor, eps: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample SIM / DI* surrogate ``d(y) + d'(y)ᵀ(ε̂_fake - ε)`` with ``y = ε̂_ref - ε̂_fake`` (σ-scaled
    ``s_fake - s_ref``), ``(B, ...) -> (B,)``. Keep the graph from both predictions to ``x_t``."""
    y = eps_ref - eps_fake
    u = pseudo_huber_grad(y, c)
    return pseudo_huber(y, c) + (u * (eps_fake - eps)).flatten(1).sum(dim=1)


def kl_loss(eps_fake: torch.Tensor, eps_ref: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Per-sample Diff-Instruct / DMD surrogate ``<sg(ε̂_ref - ε̂_fake), x_t> / n``: its gradient in ``x_t``
    is σ-scaled ``s_fake - s_ref``, the KL's, ``(B, ...) -> (B,)``."""
    direction = (eps_ref - eps_fake).detach()
    return (direction * x_t).flatten(1).mean(dim=1)


def dsm_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Denoising score matching for the fake-score network, ``||ε̂ - ε||²`` (mean per sample), ``(B,)``."""
    return (eps_pred - eps).flatten(1).pow(2).mean(dim=1)


@dataclass(frozen=True)
class DivergenceSpec:
    """Which surrogate and its constants: ``kind`` sim (DI*, SIM) or kl (Diff-Instruct, DMD, DI++)."""

    kind: str
    huber_c: float


@dataclass
class DivergenceTerms:
    """The teacher's side of one divergence evaluation, all detached.

    Attributes:
        value: Per-sample surrogate ``L(x_t, ε̂_fake)``, ``(B,)``.
        grad_x: ``∂L/∂x_t`` through the teacher's input Jacobian (and, for kl, the direct term), ``(B, C, h, w)``.
        grad_fake: ``∂L/∂ε̂_fake``, ``(B, C, h, w)`` (zero for kl).
    """

    value: torch.Tensor
    grad_x: torch.Tensor
    grad_fake: torch.Tensor


def divergence_terms(teacher_eps: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor,
                     eps_fake: torch.Tensor, eps: torch.Tensor, spec: DivergenceSpec) -> DivergenceTerms:
    """Evaluate the surrogate with ``x_t`` and ``ε̂_fake`` as leaves and differentiate it through the teacher
    ``teacher_eps(x_t) -> ε̂_ref`` (guided), so the teacher can run in another process; the caller adds
    ``J_fakeᵀ grad_fake`` for the fake score's path to get ``∂L/∂x_t``."""
    x = x_t.detach().requires_grad_(True)
    fake = eps_fake.detach().requires_grad_(spec.kind == "sim")
    with torch.enable_grad():
        if spec.kind == "sim":
            value = sim_loss(fake, teacher_eps(x), eps, spec.huber_c)
            grad_x, grad_fake = torch.autograd.grad(value.sum(), [x, fake])
        else:
            with torch.no_grad():
                eps_ref = teacher_eps(x)
            value = kl_loss(fake, eps_ref, x)
            (grad_x,) = torch.autograd.grad(value.sum(), [x])
            grad_fake = torch.zeros_like(fake)
    return DivergenceTerms(value.detach(), grad_x.detach(), grad_fake.detach())

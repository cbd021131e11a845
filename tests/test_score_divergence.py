"""The DI* / SIM surrogate's gradient equals the exact gradient of the score divergence, and the KL
surrogate's equals the KL's, for Gaussian generators whose scores are known in closed form (float64)."""

from __future__ import annotations

import math

import torch

from trainers.score_divergence import dsm_loss, kl_loss, pseudo_huber, pseudo_huber_grad, sim_loss

ALPHA, SIGMA = math.sqrt(0.6), math.sqrt(0.4)  # x_t = α x0 + σ ε at one t
REF_MEAN = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
REF_VAR = torch.tensor([0.5, 2.0, 1.3], dtype=torch.float64)


def gaussian_score(x, mean, var):
    """Score of N(α mean, α² var + σ²) at ``x``: the law of x_t when x0 ~ N(mean, var)."""
    return -(x - ALPHA * mean) / (ALPHA**2 * var + SIGMA**2)


def generator():
    """θ = (mean, log std) of a Gaussian one-step generator x0 = mean + std ⊙ z."""
    mean = torch.tensor([0.1, 0.4, -0.5], dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([0.2, -0.3, 0.1], dtype=torch.float64, requires_grad=True)
    return mean, log_std


def draws(n: int):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, generator=gen, dtype=torch.float64),
            torch.randn(n, 3, generator=gen, dtype=torch.float64))


def test_sim_surrogate_gradient_equals_the_exact_divergence_gradient():
    c, (z, eps) = 0.05, draws(400_000)
    mean, log_std = generator()

    # D(θ) written out: d(σ (s_θ - s_ref)) at x_t ~ p_θ,t, with s_θ the generator's exact score
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    y = SIGMA * (gaussian_score(x_t, mean, log_std.exp() ** 2) - gaussian_score(x_t, REF_MEAN, REF_VAR))
    exact = torch.autograd.grad(pseudo_huber(y, c).mean(), (mean, log_std))

    # the surrogate: networks frozen (θ detached inside the scores), x_t carries the gradient
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    eps_fake = -SIGMA * gaussian_score(x_t, mean.detach(), log_std.detach().exp() ** 2)
    eps_ref = -SIGMA * gaussian_score(x_t, REF_MEAN, REF_VAR)
    surrogate = torch.autograd.grad(sim_loss(eps_fake, eps_ref, eps, c).mean(), (mean, log_std))

    for a, b in zip(exact, surrogate):  # two Monte-Carlo estimators of the same gradient
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0.03, atol=2e-4)


def test_detaching_the_huber_weight_would_be_wrong():
    """With u = d'(y) detached the gradient misses the (∇log q - s_θ)ᵀ J_u x' term: not the divergence's."""
    c, (z, eps) = 0.05, draws(400_000)
    mean, log_std = generator()
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    eps_fake = -SIGMA * gaussian_score(x_t, mean.detach(), log_std.detach().exp() ** 2)
    eps_ref = -SIGMA * gaussian_score(x_t, REF_MEAN, REF_VAR)
    u = pseudo_huber_grad(eps_ref - eps_fake, c).detach()
    detached = torch.autograd.grad((u * (eps_fake - eps)).sum(dim=1).mean(), (mean, log_std), retain_graph=True)
    full = torch.autograd.grad(sim_loss(eps_fake, eps_ref, eps, c).mean(), (mean, log_std))
    assert (detached[1] - full[1]).abs().max() > 0.05 * full[1].abs().max()


def test_kl_surrogate_gradient_equals_the_kl_gradient():
    (z, eps), n = draws(400_000), 3
    mean, log_std = generator()
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    eps_fake = -SIGMA * gaussian_score(x_t, mean.detach(), log_std.detach().exp() ** 2)
    eps_ref = -SIGMA * gaussian_score(x_t, REF_MEAN, REF_VAR)
    surrogate = torch.autograd.grad(kl_loss(eps_fake, eps_ref, x_t).mean(), (mean, log_std))

    v1 = ALPHA**2 * log_std.exp() ** 2 + SIGMA**2  # KL(p_θ,t || p_ref,t) of two diagonal Gaussians
    v2 = ALPHA**2 * REF_VAR + SIGMA**2
    kl = 0.5 * (torch.log(v2 / v1) + (v1 + (ALPHA * mean - ALPHA * REF_MEAN) ** 2) / v2 - 1).sum()
    exact = torch.autograd.grad(kl * SIGMA / n, (mean, log_std))  # kl_loss is σ-scaled, mean over elements
    for a, b in zip(exact, surrogate):
        torch.testing.assert_close(b, a, rtol=0.03, atol=2e-4)


def test_pseudo_huber_grad_is_the_gradient_and_dsm_is_zero_at_the_truth():
    y = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(pseudo_huber(y, 0.1).sum(), y)
    torch.testing.assert_close(pseudo_huber_grad(y.detach(), 0.1), auto)
    eps = torch.randn(4, 3)
    assert torch.equal(dsm_loss(eps, eps), torch.zeros(4))

"""The DI* / SIM surrogate's gradient equals the exact gradient of the score divergence under a fixed sampling
law (the papers' objective), the sampling-law variant's equals the gradient with the law differentiated too,
and the KL surrogate's equals the KL's, for Gaussian generators whose scores are known in closed form (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.score_divergence import PseudoHuber, dsm_loss, kl_loss, sim_loss, sim_sampling_law_loss

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
    return (
        torch.randn(n, 3, generator=gen, dtype=torch.float64),
        torch.randn(n, 3, generator=gen, dtype=torch.float64),
    )


def scores_at(x_t, mean, log_std):
    """``(ε̂_fake, ε̂_ref)`` at ``x_t``: the generator's exact noise prediction (its weights frozen) and the reference's."""
    eps_fake = -SIGMA * gaussian_score(x_t, mean.detach(), log_std.detach().exp() ** 2)
    return eps_fake, -SIGMA * gaussian_score(x_t, REF_MEAN, REF_VAR)


@pytest.mark.parametrize("norm", ["l2", "rms"])
def test_sim_surrogate_gradient_equals_the_divergence_gradient_under_a_fixed_sampling_law(norm):
    distance, (z, eps) = PseudoHuber(0.05, norm), draws(400_000)
    mean, log_std = generator()

    # D(θ) written out: d(σ (s_θ - s_ref)) at x_t ~ sg(p_θ,t): the samples do not move, the score does
    x_t = (ALPHA * (mean + log_std.exp() * z) + SIGMA * eps).detach()
    y = SIGMA * (gaussian_score(x_t, mean, log_std.exp() ** 2) - gaussian_score(x_t, REF_MEAN, REF_VAR))
    exact = torch.autograd.grad(distance.value(y).mean(), (mean, log_std))

    # the papers' surrogate: networks frozen (θ detached inside the scores), x_t carries the gradient
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    surrogate = torch.autograd.grad(sim_loss(*scores_at(x_t, mean, log_std), eps, distance).mean(), (mean, log_std))

    for a, b in zip(exact, surrogate):  # two Monte-Carlo estimators of the same gradient
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0.03, atol=2e-4)


def test_sampling_law_surrogate_gradient_equals_the_gradient_with_the_law_differentiated():
    distance, (z, eps) = PseudoHuber(0.05, "rms"), draws(400_000)
    mean, log_std = generator()

    # E_{x_t ~ p_θ,t}[d(σ (s_θ - s_ref))]: the samples move with θ as well as the score
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    y = SIGMA * (gaussian_score(x_t, mean, log_std.exp() ** 2) - gaussian_score(x_t, REF_MEAN, REF_VAR))
    exact = torch.autograd.grad(distance.value(y).mean(), (mean, log_std))

    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    loss = sim_sampling_law_loss(*scores_at(x_t, mean, log_std), eps, distance).mean()
    surrogate = torch.autograd.grad(loss, (mean, log_std))
    for a, b in zip(exact, surrogate):
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0.03, atol=2e-4)


class Squared:
    """``d(y) = ||y||²``: SiD's distance, for which both objectives have closed-form gradients."""

    def value(self, y):
        return y.flatten(1).pow(2).sum(1)

    def grad(self, y):
        return 2 * y


def test_the_two_objectives_match_their_analytic_gradients_on_a_1d_gaussian_and_differ():
    """p_θ = N(θ, 1), q = N(0, τ²), d = y² at one noise level: with v_θ = α² + σ² and v_q = α² τ² + σ² the
    marginal variances, the fixed-law gradient is 2σ²α²θ/(v_θ v_q) (2θ(1+a) with a = 1/τ² - 1 at σ → 0), the
    differentiated-law one 2σ²α²θ/v_q² (2θ(1+a)²): they differ by v_θ/v_q."""
    theta, tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True), 0.5
    gen = torch.Generator().manual_seed(1)
    z, eps = (torch.randn(1_000_000, 1, generator=gen, dtype=torch.float64) for _ in range(2))
    v_theta, v_q = ALPHA**2 + SIGMA**2, ALPHA**2 * tau**2 + SIGMA**2
    x_t = ALPHA * (theta + z) + SIGMA * eps
    eps_fake = SIGMA * (x_t - ALPHA * theta.detach()) / v_theta
    eps_ref = SIGMA * x_t / v_q
    fixed = torch.autograd.grad(sim_loss(eps_fake, eps_ref, eps, Squared()).mean(), theta, retain_graph=True)[0]
    moving = torch.autograd.grad(sim_sampling_law_loss(eps_fake, eps_ref, eps, Squared()).mean(), theta)[0]
    want_fixed = 2 * SIGMA**2 * ALPHA**2 * 0.8 / (v_theta * v_q)
    want_moving = 2 * SIGMA**2 * ALPHA**2 * 0.8 / v_q**2
    assert abs(float(fixed) - want_fixed) < 0.01 * want_fixed
    assert abs(float(moving) - want_moving) < 0.01 * want_moving
    assert want_moving / want_fixed > 1.5  # the negative control: the two objectives are told apart


def test_detaching_the_huber_weight_would_be_wrong():
    """With u = d'(y) detached the gradient misses the (∇log q - s_θ)ᵀ J_u x' term: not the divergence's."""
    distance, (z, eps) = PseudoHuber(0.05, "rms"), draws(400_000)
    mean, log_std = generator()
    x_t = ALPHA * (mean + log_std.exp() * z) + SIGMA * eps
    eps_fake, eps_ref = scores_at(x_t, mean, log_std)
    u = distance.grad(eps_ref - eps_fake).detach()
    detached = torch.autograd.grad((u * (eps_fake - eps)).sum(dim=1).mean(), (mean, log_std), retain_graph=True)
    full = torch.autograd.grad(sim_loss(eps_fake, eps_ref, eps, distance).mean(), (mean, log_std))
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


@pytest.mark.parametrize("norm", ["l2", "rms"])
def test_pseudo_huber_grad_is_the_gradient_and_dsm_is_zero_at_the_truth(norm):
    y = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    distance = PseudoHuber(0.1, norm)
    (auto,) = torch.autograd.grad(distance.value(y).sum(), y)
    torch.testing.assert_close(distance.grad(y.detach()), auto)
    eps = torch.randn(4, 3)
    assert torch.equal(dsm_loss(eps, eps), torch.zeros(4))


def test_rms_form_is_the_l2_form_with_c_times_root_n_divided_by_root_n():
    y, n = torch.randn(5, 4, 8, 8, dtype=torch.float64), 4 * 8 * 8
    rms, l2 = PseudoHuber(0.03, "rms"), PseudoHuber(0.03 * n**0.5, "l2")
    torch.testing.assert_close(rms.value(y), l2.value(y) / n**0.5)
    torch.testing.assert_close(rms.grad(y), l2.grad(y) / n**0.5)


def test_a_flow_models_velocity_gives_the_noise_prediction_and_the_score_on_a_gaussian():
    """Flow matching (SD3, FLUX): ``x_σ = (1-σ) x0 + σ ε`` and the denoiser predicts ``v = E[ε - x0 | x_σ]``.
    ``FlowNoise.to_eps`` turns the exact velocity of a Gaussian into ``E[ε | x_σ] = -σ ∇log p(x_σ)``, and the
    DI* surrogate built on it has the score divergence's gradient, as for a DDPM teacher above."""
    from trainers.distill import FlowNoise

    flow, t = FlowNoise(1000), torch.full((400_000,), 400)
    sigma = 0.4
    alpha = 1 - sigma

    def posterior(x, mean, var):
        """``(E[x0 | x], E[ε | x])`` for x0 ~ N(mean, var) per dimension."""
        residual = (x - alpha * mean) / (alpha**2 * var + sigma**2)
        return mean + alpha * var * residual, sigma * residual

    def score(x, mean, var):
        return -(x - alpha * mean) / (alpha**2 * var + sigma**2)

    def eps_hat(x, mean, var):
        x0, eps = posterior(x, mean, var)
        return flow.to_eps(eps - x0, x, t)

    z, eps = draws(400_000)
    x = flow.add_noise(REF_MEAN + REF_VAR.sqrt() * z, t, eps)
    torch.testing.assert_close(x, alpha * (REF_MEAN + REF_VAR.sqrt() * z) + sigma * eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_hat(x, REF_MEAN, REF_VAR), -sigma * score(x, REF_MEAN, REF_VAR), rtol=0, atol=1e-12)

    distance, (mean, log_std) = PseudoHuber(0.05, "l2"), generator()
    x_t = flow.add_noise((mean + log_std.exp() * z).detach(), t, eps)
    y = sigma * (score(x_t, mean, log_std.exp() ** 2) - score(x_t, REF_MEAN, REF_VAR))
    exact = torch.autograd.grad(distance.value(y).mean(), (mean, log_std))
    x_t = flow.add_noise(mean + log_std.exp() * z, t, eps)
    fake, ref = eps_hat(x_t, mean.detach(), log_std.detach().exp() ** 2), eps_hat(x_t, REF_MEAN, REF_VAR)
    surrogate = torch.autograd.grad(sim_loss(fake, ref, eps, distance).mean(), (mean, log_std))
    for a, b in zip(exact, surrogate):  # two Monte-Carlo estimators of the same gradient, as above
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0.03, atol=2e-4)

"""Every gradient plan's parameter gradient equals brute-force autograd of its truncated objective, on the
tiny model of each family.

The reference below is written independently of the engine: an explicit loop over diffusers'
own ``DDIMScheduler.step`` (for the flow model, Euler steps written out on the sigmas of diffusers'
``FlowMatchEulerDiscreteScheduler``, whose own ``step`` rounds the latent to float32) with the
stop-gradients placed by hand, run in float64 without checkpointing. The engine runs in float64 too,
with step-level checkpointing on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.config import ModelConfig, TrainableConfig
from trainers.engine import guided_output, sample
from trainers.families.sd3 import LORA_TARGETS
from trainers.grad_plan import AlignProp, Draft, DraftK, DraftLV, DRTune, Refinement, ReFL, StepFlags, refinement
from trainers.models import load_model, make_trainable

T, GUIDANCE = 6, 3.0


def float64_lora_model(folder: str):
    """A tiny model in float64 with gaussian-initialised LoRA (so every adapter gets gradient)."""
    model = load_model(
        ModelConfig(path=folder, device="cpu", resolution=16)
    )  # every tiny model's size (FLUX: not native)
    targets = LORA_TARGETS if model.family.sampler == "flow" else ("to_q", "to_k", "to_v", "to_out.0")
    make_trainable(model, TrainableConfig(rank=2, alpha=2.0, init="gaussian", target_modules=targets))
    for module in (model.denoiser, *model.frozen_modules()):
        module.double()
    model.dtype = torch.float64
    if model.family.sampler == "ddim":  # diffusers keeps alpha-bar in float32; the reference must not round to it
        model.scheduler.alphas_cumprod = model.scheduler.alphas_cumprod.double()
        model.scheduler.final_alpha_cumprod = torch.as_tensor(model.scheduler.final_alpha_cumprod).double()
    return model


@pytest.fixture(scope="module")
def model64(tiny_sd_dir):
    return float64_lora_model(tiny_sd_dir)


@pytest.fixture(scope="module", params=["sd", "sdxl", "pixart", "sd3", "flux"])
def family_model64(request):
    """The tiny model of each family (SD, SDXL with pooled embeddings and time ids, PixArt with its T5 mask,
    SD3 with flow matching and LoRA on both streams, FLUX.1 [dev] with packed latents and embedded guidance)."""
    return float64_lora_model(request.getfixturevalue(f"tiny_{request.param}_dir"))


def reward(images: torch.Tensor) -> torch.Tensor:
    """A fixed random linear functional of the image, so every pixel's gradient matters."""
    w = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(7), dtype=images.dtype)
    return (images * w).sum((1, 2, 3))


def _inputs(model):
    prompts = ["a red circle", "a blue square"]
    cond = model.family.encode_prompts(model, prompts)
    uncond = model.unconditional(2, GUIDANCE)  # None for FLUX, which takes the scale as an input
    x_T = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return cond, uncond, x_T


def _params(model):
    return [p for p in model.denoiser.parameters() if p.requires_grad]


def engine_grads(model, flags, refine=None, eta=0.0, beta=0.0, fold_lora=False):
    cond, uncond, x_T = _inputs(model)
    schedule = model.family.schedule(model, T)
    traj = sample(
        model,
        cond,
        uncond,
        x_T,
        schedule,
        flags,
        guidance=GUIDANCE,
        eta=eta,
        gen=torch.Generator().manual_seed(5),
        refine=refine,
        step_checkpointing=True,
        drift=beta > 0,
        fold_lora=fold_lora,
    )
    loss = -sum(reward(model.family.decode(model, x)).mean() for x in traj.finals)
    if beta:
        loss = loss + beta * torch.stack(traj.drift).mean()
    return torch.autograd.grad(loss, _params(model)), traj


class Drift:
    """DRaFT+'s penalty by hand: each call with gradient adds ``mean((f - f_base)^2)``, ``f_base`` the same
    call with every LoRA layer's scaling set to 0 (not the engine's adapters-off switch) and no graph."""

    def __init__(self, model, call):
        self.model, self.call, self.terms = model, call, []

    def __call__(self, x_in, at):
        out = self.call(x_in, at)
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.model.denoiser.modules() if isinstance(m, LoraLayer)]
        saved = [dict(m.scaling) for m in layers]
        for m in layers:
            m.scaling = {name: 0.0 for name in m.scaling}
        with torch.no_grad():
            base = self.call(x_in.detach(), at)
        for m, scaling in zip(layers, saved):
            m.scaling = scaling
        self.terms.append(((out - base) ** 2).mean())
        return out

    def penalty(self, beta):
        return beta * torch.stack(self.terms).mean() if beta else 0.0


def reference_grads(model, flags, refine=None, eta=0.0, beta=0.0):
    """Unrolled DDIM with diffusers' scheduler; stop-gradients placed per flag, by hand. DRaFT-LV's copies are
    re-noised with ``add_noise`` and stepped by ``DDIMScheduler.step`` told there is one inference step, so it
    lands where the last step lands (the final alpha-bar)."""
    if model.family.sampler == "flow":
        return flow_reference_grads(model, flags, refine, beta)
    cond, uncond, x = _inputs(model)
    sched = model.scheduler
    sched.set_timesteps(T)
    gen = torch.Generator().manual_seed(5)

    def eps(x_in, t):
        return guided_output(model, x_in, t, cond, uncond, GUIDANCE)

    trained = Drift(model, eps)
    finals = None
    for i, f in enumerate(flags):
        t = sched.timesteps[i]
        if not f.chain:
            x = x.detach()
        if f.grad:
            e = trained(x.detach() if f.detach_input else x, t)
        else:
            e = eps(x, t).detach()
        out = sched.step(e, t, x, eta=eta, generator=gen)
        if f.stop:
            finals = [out.pred_original_sample]
            break
        x = out.prev_sample
    if finals is None:
        finals = [x]
    if refine is not None:
        finals = finals if refine.include_chain else []
        t_r = sched.timesteps[-1] if refine.timestep is None else torch.tensor(refine.timestep)
        steps, sched.num_inference_steps = sched.num_inference_steps, 1  # one step from t_r to the end
        for _ in range(refine.copies):
            x1 = sched.add_noise(x.detach(), torch.randn(x.shape, generator=gen, dtype=x.dtype), t_r)
            finals.append(sched.step(trained(x1, t_r), t_r, x1, eta=eta, generator=gen).prev_sample)
        sched.num_inference_steps = steps
    loss = -sum(reward(model.family.decode(model, x0)).mean() for x0 in finals) + trained.penalty(beta)
    return torch.autograd.grad(loss, _params(model))


def flow_reference_grads(model, flags, refine=None, beta=0.0):
    """Unrolled flow-matching Euler, ``x + (sigma_next - sigma) v``, on the sigmas diffusers' scheduler sets;
    ``x0 = x - sigma v`` at an early stop; stop-gradients placed per flag, by hand."""
    cond, uncond, x = _inputs(model)
    sched = model.scheduler
    if model.family.name == "flux":  # FluxPipeline's sigmas and mu (from the packed sequence length)
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c, (_, h, w) = sched.config, model.latent_shape
        mu = calculate_shift((h // 2) * (w // 2), c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        sched.set_timesteps(T, sigmas=np.linspace(1.0, 1 / T, T), mu=mu)
    else:
        sched.set_timesteps(T)
    sigmas, timesteps = sched.sigmas.double(), sched.timesteps
    gen = torch.Generator().manual_seed(5)

    def velocity(x_in, i):
        return guided_output(model, x_in, timesteps[i], cond, uncond, GUIDANCE)

    def velocity_at(x_in, timestep):
        return guided_output(model, x_in, timestep, cond, uncond, GUIDANCE)

    trained = Drift(model, velocity)
    finals = None
    for i, f in enumerate(flags):
        if not f.chain:
            x = x.detach()
        v = trained(x.detach() if f.detach_input else x, i) if f.grad else velocity(x, i).detach()
        if f.stop:
            finals = [x - sigmas[i] * v]
            break
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    if finals is None:
        finals = [x]
    if refine is not None:
        finals = finals if refine.include_chain else []
        if refine.timestep is None:
            sigma, timestep = sigmas[T - 1], timesteps[T - 1]
        else:
            sigma = torch.tensor(refine.timestep / 1000, dtype=torch.float32)  # float32, as diffusers keeps sigmas
            sigma, timestep = sigma.double(), sigma * 1000
        copy = Drift(model, velocity_at)
        for _ in range(refine.copies):
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            x1 = (1 - sigma) * x.detach() + sigma * noise
            finals.append(x1 - sigma * copy(x1, timestep))
        trained.terms += copy.terms
    loss = -sum(reward(model.family.decode(model, x0)).mean() for x0 in finals) + trained.penalty(beta)
    return torch.autograd.grad(loss, _params(model))


PLANS = {
    "draft": Draft(),
    "draft_k": DraftK(k=2),
    "draft_lv": DraftLV(Refinement(2)),
    "draft_lv_with_chain": DraftLV(Refinement(2, include_chain=True)),
    "draft_lv_timestep_99": DraftLV(Refinement(2, timestep=99)),
    "drtune": DRTune(k=2),
    "drtune_early_stop": DRTune(k=2, early_stop=3),
    "refl": ReFL(early_stop=3),
    "alignprop": AlignProp(),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_plan_gradient_matches_unrolled_autograd(family_model64, name):
    plan = PLANS[name]
    flags = plan.flags(T, torch.Generator().manual_seed(11))
    got, traj = engine_grads(family_model64, flags, refinement(plan))
    want = reference_grads(family_model64, flags, refinement(plan))
    assert traj.grad_calls == sum(f.grad for f in flags) + (refinement(plan).copies if refinement(plan) else 0)
    total = sum(w.abs().sum() for w in want)
    assert total > 0, "reference gradient is zero: the check would be vacuous"
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ["draft", "drtune_early_stop", "draft_lv"])
def test_draft_plus_penalty_gradient_matches_unrolled_autograd(family_model64, name):
    """DRaFT+: the reward plus beta * mean drift from the base network over the calls with gradient (the
    LoRA-off base computed by hand, by zeroing each LoRA layer's scaling), on every family."""
    plan, beta = PLANS[name], 50.0
    flags = plan.flags(T, torch.Generator().manual_seed(11))
    ups = [p for n, p in family_model64.denoiser.named_parameters() if "lora_B" in n]
    saved = [p.detach().clone() for p in ups]
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():  # peft starts B at zero, where tuned and base agree and the penalty is flat
        for p in ups:
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    try:
        got, traj = engine_grads(family_model64, flags, refinement(plan), beta=beta)
        want = reference_grads(family_model64, flags, refinement(plan), beta=beta)
        without = reference_grads(family_model64, flags, refinement(plan))
    finally:
        with torch.no_grad():
            for p, s in zip(ups, saved):
                p.copy_(s)
    assert len(traj.drift) == traj.grad_calls and all(d > 0 for d in traj.drift)
    assert sum((w - o).abs().sum() for w, o in zip(want, without)) > 1e-3 * sum(w.abs().sum() for w in want), (
        "the penalty must change the gradient, or the check is vacuous"
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


def test_stochastic_sampler_gradient_matches(family_model64):
    """eta > 0 draws the same noise as diffusers and still gives the same gradient (DDIM; the flow sampler
    refuses it)."""
    flags = DraftK(k=2).flags(T)
    if family_model64.family.sampler == "flow":
        with pytest.raises(ValueError, match="flow-matching Euler sampler is deterministic; set sampler.eta=0"):
            engine_grads(family_model64, flags, eta=1.0)
        return
    got, _ = engine_grads(family_model64, flags, eta=1.0)
    want = reference_grads(family_model64, flags, eta=1.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


def test_full_draft_gradient_matches_finite_differences(model64):
    """Full DRaFT has no stop-gradient, so its gradient is the true derivative of the reward."""
    flags = Draft().flags(T)
    got, _ = engine_grads(model64, flags)
    params = _params(model64)
    direction = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)
    ]
    analytic = sum((g * d).sum() for g, d in zip(got, direction))

    def loss_at(scale):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(scale * d)
            cond, uncond, x_T = _inputs(model64)
            traj = sample(model64, cond, uncond, x_T, model64.family.schedule(model64, T), flags, guidance=GUIDANCE)
            value = -reward(model64.family.decode(model64, traj.finals[0])).mean()
            for p, d in zip(params, direction):
                p.sub_(scale * d)
        return value

    h = 1e-5
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_drtune_unet_inputs_carry_no_gradient(model64):
    """Every denoiser call under DRTune sees a latent with no graph behind it."""
    seen = []
    hook = model64.denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
    try:
        engine_grads(model64, DRTune(k=3).flags(T, torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    assert seen and not any(seen)


def test_draft_k_makes_exactly_k_gradient_calls(model64):
    """Counted at the UNet: calls made with grad enabled (checkpoint replays excluded)."""
    for k in (1, 3, T):
        calls = []
        hook = model64.denoiser.register_forward_pre_hook(lambda m, a: calls.append(torch.is_grad_enabled()))  # noqa: B023
        try:
            flags = DraftK(k=k).flags(T)
            cond, uncond, x_T = _inputs(model64)
            traj = sample(
                model64,
                cond,
                uncond,
                x_T,
                model64.family.schedule(model64, T),
                flags,
                guidance=GUIDANCE,
                step_checkpointing=False,
            )
        finally:
            hook.remove()
        assert sum(calls) == k and len(calls) == T and traj.grad_calls == k


def test_drtune_places_k_equally_spaced_steps():
    for seed in range(20):
        flags = DRTune(k=3, early_stop=4).flags(20, torch.Generator().manual_seed(seed))
        trained = [i for i, f in enumerate(flags) if f.grad]
        assert len(trained) == 3
        assert len({b - a for a, b in zip(trained, trained[1:])}) == 1
        assert flags[-1].stop and 16 <= len(flags) - 1 <= 19
        assert all(f.detach_input and f.chain for f in flags)


def test_drtune_offsets_cover_the_whole_trajectory():
    """The offset is uniform over every placement that fits, so both the first and the last step get trained."""
    first, last = set(), set()
    for seed in range(200):
        flags = DRTune(k=3).flags(10, torch.Generator().manual_seed(seed))
        trained = [i for i, f in enumerate(flags) if f.grad]
        assert trained == [trained[0], trained[0] + 3, trained[0] + 6]
        first.add(trained[0])
        last.add(trained[-1])
    assert first == {0, 1, 2, 3} and 9 in last


def test_step_flags_defaults_are_no_gradient():
    assert StepFlags(grad=False) == StepFlags(grad=False, detach_input=False, chain=False, stop=False)


def _saved_bytes(model, flags, step_checkpointing):
    """Bytes autograd keeps for backward while sampling (what peak training memory is made of)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    cond, uncond, x_T = _inputs(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sample(
            model,
            cond,
            uncond,
            x_T,
            model.family.schedule(model, len(flags)),
            flags,
            guidance=GUIDANCE,
            step_checkpointing=step_checkpointing,
        )
    return total


def test_step_checkpointing_keeps_memory_flat_in_trained_steps(model64):
    """With step-level checkpointing each extra trained step stores a few latents, not UNet activations."""
    latent_bytes = 2 * 4 * 8 * 8 * 8  # (B, C, h, w) float64
    grow = {
        ckpt: _saved_bytes(model64, Draft().flags(8), ckpt) - _saved_bytes(model64, Draft().flags(2), ckpt)
        for ckpt in (True, False)
    }
    assert grow[True] <= 6 * 16 * latent_bytes
    assert grow[False] > 10 * grow[True], "without checkpointing the UNet's activations should dominate"


def test_alignprop_cuts_train_each_step_as_the_original_code_and_per_call_trains_a_suffix():
    """Per step (AlignProp's ``main.py``): ``c ~ U{0..T}`` drawn at every step, step i trained iff ``i >= c``, so
    with probability ``(i + 1) / (T + 1)`` and independently; per call (its TRL-style code): one cut, a suffix."""
    steps, draws = 5, 6000
    per_step = [AlignProp().flags(steps, torch.Generator().manual_seed(s)) for s in range(draws)]
    share = [sum(f[i].grad for f in per_step) / draws for i in range(steps)]
    for i, p in enumerate(share):
        assert abs(p - (i + 1) / (steps + 1)) < 0.02, (i, p)
    suffixes = 0
    for s in range(400):
        flags = AlignProp(per_call=True).flags(steps, torch.Generator().manual_seed(s))
        trained = [i for i, f in enumerate(flags) if f.grad]
        assert trained == list(range(steps - len(trained), steps)) and all(f.chain for f in flags)
        suffixes += 0 < len(trained) < steps
    assert suffixes > 200
    not_suffix = [
        f for f in per_step if [x.grad for x in f] not in ([False] * k + [True] * (steps - k) for k in range(steps + 1))
    ]
    assert len(not_suffix) > draws // 2, "per-step cuts train scattered steps, not only suffixes"


@pytest.mark.parametrize("timestep", [None, 19, 99])
def test_lv_copies_are_renoised_to_the_chosen_timestep(model64, timestep):
    """DRaFT-LV's re-noise: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, with t the last sampling step's timestep
    by default (1 for SD's leading spacing at T=6: noise std 0.041) or ``plan.lv_timestep``; the copy's one step
    lands where the chain's last step lands. Without the chain, no sampling step carries gradient."""
    schedule = model64.family.schedule(model64, T)
    one = schedule.refinement(timestep)
    t = int(schedule.timesteps[-1]) if timestep is None else timestep
    abar = model64.scheduler.alphas_cumprod.double()[t]
    x0, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(one.renoise(x0, eps), abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    assert int(one.timesteps[0]) == t and one.abar_prev[0] == schedule.abar_prev[-1]
    if timestep is None:
        assert t == 1 and abs(float((1 - abar).sqrt()) - 0.041) < 0.001
    assert not any(f.grad for f in DraftLV(Refinement(2, timestep)).flags(T))
    assert [f.grad for f in DraftLV(Refinement(2, timestep, include_chain=True)).flags(T)] == [False] * (T - 1) + [True]

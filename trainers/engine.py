"""The one sampling engine: a differentiable sampling loop driven by a gradient plan.

``sample`` runs T steps of a :class:`~trainers.samplers.schedule.Schedule` (DDIM, or flow-matching Euler) from
``x_T`` with classifier-free guidance. At step ``i`` the plan's :class:`~trainers.grad_plan.StepFlags` make the
engine's five decisions, each marked in the code: (1) fold the LoRA into the weights for calls without gradient,
(2) detach the denoiser's input, (3) run without a graph, (4) stop early with the one-step prediction ``x0_hat``,
(5) re-noise the sample for DRaFT-LV's copies. A trained step is checkpointed as a whole (both CFG branches) when
``step_checkpointing`` is on: only its input latent is kept and the denoiser is re-run during backward,
so memory grows by one latent per trained step rather than by one denoiser's activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from trainers.adapters import adapters_off, folded
from trainers.grad_plan import Refinement, StepFlags
from trainers.models import Conditioning, DiffusionModel
from trainers.samplers.schedule import Schedule


@dataclass
class Trajectory:
    """What one sampling run produced.

    Attributes:
        finals: Final latents, each ``(B, C, h, w)``: the sample, then DRaFT-LV's re-noised copies (the copies
            alone when its refinement leaves the chain out).
        flags: The plan's flags for the steps that ran.
        grad_calls: Number of denoiser calls that carried parameter gradients.
        drift: With ``drift=True``, per call with gradient, ``mean((f_theta - sg(f_base))^2)`` of the guided
            outputs with the adapters on and off at the same input (DRaFT+'s penalty); else empty.
    """

    finals: list[torch.Tensor]
    flags: list[StepFlags]
    grad_calls: int
    drift: list[torch.Tensor]


def guided_output(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance: float,
) -> torch.Tensor:
    """Classifier-free guided denoiser output ``u + w (c - u)``, shape ``(B, C, h, w)``.

    Both branches run in one batched call, unconditional first, as diffusers does. With
    ``uncond=None`` (guidance off) it is the conditional output alone. ``t`` is one timestep (0-dim)
    or one per sample (``(B,)``).
    """
    x_in = x_t.to(model.dtype)
    if model.guidance == "embedded":  # FLUX.1 [dev]: the scale is an input, one batch
        return model.family.denoise(model, x_in, t, cond, guidance).to(x_t.dtype)
    if uncond is None:
        return model.family.denoise(model, x_in, t, cond).to(x_t.dtype)
    t = torch.cat([t, t]) if t.dim() else t
    out = model.family.denoise(model, torch.cat([x_in, x_in]), t, Conditioning.cat([uncond, cond]))
    out_uncond, out_cond = out.to(x_t.dtype).chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


def _step_noise(x: torch.Tensor, eta: float, gen: torch.Generator | None) -> torch.Tensor | None:
    """Fresh ``z ~ N(0, I)`` of ``x``'s shape and dtype when ``eta > 0``, drawn as diffusers' ``randn_tensor`` does."""
    if eta <= 0:
        return None
    device = gen.device if gen is not None else x.device
    return torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype).to(x.device)


class Denoise:
    """Guided output at one timestep, as a function of the latent only (for checkpointing); with
    ``tuned_weight`` g, annealed importance guidance's ``g * f_tuned + (1 - g) * f_base`` (base: the
    adapters off)."""

    def __init__(self, model, t, cond, uncond, guidance, tuned_weight: float | None = None):
        self.model, self.t, self.cond, self.uncond, self.guidance = model, t, cond, uncond, guidance
        self.tuned_weight = tuned_weight

    def __call__(self, x_t: torch.Tensor) -> torch.Tensor:
        g = self.tuned_weight
        tuned = guided_output(self.model, x_t, self.t, self.cond, self.uncond, self.guidance) if g != 0 else 0.0
        if g is None or g == 1:
            return tuned
        with adapters_off(self.model.denoiser):
            base = guided_output(self.model, x_t, self.t, self.cond, self.uncond, self.guidance)
        return g * tuned + (1 - g) * base


def call_denoiser(
    fn: Denoise, x_t: torch.Tensor, flags: StepFlags, step_checkpointing: bool, drift: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Run the denoiser as the flags say: no graph, or a (checkpointed) graph; for a call with gradient,
    append its drift from the base network to ``drift`` when given."""
    # Decision 2, detach: DRTune's call sees sg(x_t), so its gradient stops at this step's input and the
    # trained steps' gradients do not compound through the chain.
    x_in = x_t.detach() if flags.detach_input else x_t
    # Decision 3, no grad: a step the plan does not train builds no graph at all.
    if not flags.grad:
        with torch.no_grad():
            return fn(x_in)
    out = torch.utils.checkpoint.checkpoint(fn, x_in, use_reentrant=False) if step_checkpointing else fn(x_in)
    if drift is not None:
        with torch.no_grad(), adapters_off(fn.model.denoiser):
            base = fn(x_in)
        drift.append((out - base).pow(2).mean())
    return out


class _Folding:
    """The LoRA folded into the base weights while ``set(True)``, unfolded on ``set(False)`` and at exit."""

    def __init__(self, denoiser: torch.nn.Module, enabled: bool):
        self.denoiser, self.enabled, self.active = denoiser, enabled, None

    def set(self, on: bool) -> None:
        if on and self.enabled and self.active is None:
            self.active = folded(self.denoiser)
            self.active.__enter__()
        elif not on and self.active is not None:
            self.active.__exit__(None, None, None)
            self.active = None

    def __enter__(self) -> _Folding:
        return self

    def __exit__(self, *exc) -> None:
        self.set(False)


def sample(
    model: DiffusionModel,
    cond: Conditioning,
    uncond: Conditioning | None,
    x_T: torch.Tensor,
    schedule: Schedule,
    flags: list[StepFlags],
    *,
    guidance: float,
    eta: float = 0.0,
    gen: torch.Generator | None = None,
    refine: Refinement | None = None,
    step_checkpointing: bool = True,
    drift: bool = False,
    tuned_weights: list[float] | None = None,
    fold_lora: bool = False,
) -> Trajectory:
    """Sample latents from ``x_T`` following a gradient plan.

    Args:
        model: The diffusion model; its ``denoiser`` holds the trainable parameters.
        cond: Prompt conditioning, batch ``B``.
        uncond: Empty-prompt conditioning of batch ``B``, or None to disable guidance.
        x_T: Initial noise, shape ``(B, C, h, w)``, float32.
        schedule: The run's noise levels and step rule (``len(schedule) == T``).
        flags: One :class:`StepFlags` per step that runs (``len(flags) <= T``).
        guidance: CFG weight w.
        eta: DDIM stochasticity; ``eta > 0`` draws noise from ``gen`` at every step (DDIM only).
        gen: Random generator for DDIM noise and DRaFT-LV re-noising.
        refine: DRaFT-LV's copies: re-noise ``sg(x0)`` to the refinement's timestep n times and denoise
            each once with gradient (``grad_plan.Refinement``).
        step_checkpointing: Recompute trained steps during backward instead of storing activations.
        drift: Also run each call with gradient through the base network (LoRA adapters off, no graph) and
            record DRaFT+'s drift (``Trajectory.drift``).
        tuned_weights: Annealed importance guidance (sampling only): per step, the weight of the tuned
            network's output against the base network's (adapters off), e.g. 0 at the first step to 1 at the last.
        fold_lora: Run each stretch of calls without gradient with the LoRA folded into the base weights
            (``trainers.adapters.folded``): the same outputs to float rounding, without peft's per-layer work.

    Returns:
        A :class:`Trajectory` whose ``finals[0]`` is ``x0`` (``(B, C, h, w)``), or the first copy.
    """
    x, grad_calls = x_T, 0
    drifts = [] if drift else None
    with _Folding(model.denoiser, fold_lora and tuned_weights is None) as folding:
        for i, f in enumerate(flags):
            t = schedule.timesteps[i].to(model.device)
            x = x if f.chain else x.detach()  # truncation: DRaFT-K's gradient does not reach the steps before K
            # Decision 1, fold: between trained calls the LoRA is folded into the weights (same outputs, no
            # per-layer adapter work); it is unfolded before any call that carries gradient.
            folding.set(not f.grad)
            g = tuned_weights[i] if tuned_weights is not None else None
            out = call_denoiser(Denoise(model, t, cond, uncond, guidance, g), x, f, step_checkpointing, drifts)
            grad_calls += f.grad
            # Decision 4, early stop: DRTune and ReFL stop at their last trained step with the one-step x0_hat.
            if f.stop:
                return Trajectory([schedule.predict_x0(out, x, i)], flags, grad_calls, drifts or [])
            x = schedule.step(out, x, i, eta, _step_noise(x, eta, gen))
    if refine is None:
        return Trajectory([x], flags, grad_calls, drifts or [])
    # Decision 5, re-noise: DRaFT-LV re-noises sg(x0) to one small timestep n times and trains each denoising.
    finals, one = [x] if refine.include_chain else [], schedule.refinement(refine.timestep)
    t_r = one.timesteps[0].to(model.device)
    for _ in range(refine.copies):
        x_r = one.renoise(x.detach(), _step_noise(x, 1.0, gen))
        out = call_denoiser(
            Denoise(model, t_r, cond, uncond, guidance), x_r, StepFlags(grad=True), step_checkpointing, drifts
        )
        finals.append(one.step(out, x_r, 0, eta, _step_noise(x_r, eta, gen)))
        grad_calls += 1
    return Trajectory(finals, flags, grad_calls, drifts or [])


def no_grad_flags(num_steps: int) -> list[StepFlags]:
    """Flags for plain sampling: no step carries gradient."""
    return [StepFlags(grad=False) for _ in range(num_steps)]


def annealed_weights(num_steps: int, power: float) -> list[float]:
    """Annealed importance guidance's tuned-network weights: ``(i / (T - 1)) ** power`` at step i, from the
    base network alone at the first (noisiest) step to the tuned one alone at the last (Jena et al., 2025)."""
    return [1.0] if num_steps == 1 else [(i / (num_steps - 1)) ** power for i in range(num_steps)]


@torch.no_grad()
def generate(
    model: DiffusionModel,
    prompts: list[str],
    x_T: torch.Tensor,
    schedule: Schedule,
    *,
    guidance: float,
    eta: float = 0.0,
    gen: torch.Generator | None = None,
    tuned_weights: list[float] | None = None,
    fold_lora: bool = True,
) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] for ``prompts`` from noise ``x_T``, with no gradients (with
    annealed importance guidance when ``tuned_weights`` are given; LoRA folded unless ``fold_lora=False``)."""
    cond = model.family.encode_prompts(model, prompts)
    uncond = model.unconditional(len(prompts), guidance)
    traj = sample(
        model,
        cond,
        uncond,
        x_T,
        schedule,
        no_grad_flags(len(schedule)),
        guidance=guidance,
        eta=eta,
        gen=gen,
        tuned_weights=tuned_weights,
        fold_lora=fold_lora,
    )
    return model.family.decode(model, traj.finals[0])

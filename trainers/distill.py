"""Diff-Instruct* (DI*, Luo et al. 2024) and its baselines: a one-step generator distilled from a guided
teacher while it maximises a reward.

Three roles (docs/methods.md), each a denoiser predicting noise (or v, or x0, or a flow model's velocity:
everything is converted to the noise prediction ``ε̂``, :class:`NoiseSchedule` and :class:`FlowNoise`):

============  ===============================================================================
generator     ``x0 = g_θ(z, c) = x̂0(ε_θ(z, t_g, c), z, t_g)``, ``z ~ N(0, I)``: the engine run on the
              one-step schedule (``ddim.one_step_schedule``) with the one-step plan; ``model.denoiser``
              with ``trainable`` weights, initialised from ``model.path``
teacher       ``ε̂_ref(x_t, t, c) = ε_u + α_cfg (ε_c - ε_u)``, frozen (``distill.teacher_path``)
fake score    ``ε̂_ψ(x_t, t, c)``, initialised from the teacher, ``distill.fake`` weights
============  ===============================================================================

One optimiser step on a batch of prompts ``c``:

1. ``fake_updates`` times: ``x0 = sg(g(z, c))``, ``t ~ U{t_min..t_max}``, ``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε``;
   one AdamW step of ``ψ`` on ``||ε̂_ψ(x_t) - ε||²`` (denoising score matching on generator samples).
2. Generator: fresh ``z, t, ε``, ``x0 = g(z, c)`` and ``x_t`` keep their graph;
   ``L = -α_rew r(decode(x0), c) + w(t) D(x_t)`` with D the score-divergence surrogate
   (``score_divergence.sim_loss``, DI* / SIM as published; ``sim_sampling_law_loss``, the sampling law
   differentiated too) or the KL one (``kl_loss``, Diff-Instruct / DMD / DI++), differentiated through both
   networks' input Jacobians with their weights frozen.

The score networks run on a detached copy of ``x_t``: the teacher's side of D comes from
``score_divergence.divergence_terms`` (here, or in a Ray actor), the fake score's input Jacobian is
applied here, and their sum ``g = ∂D/∂x_t`` joins the generator's graph as ``<sg(g), x_t>``, whose
gradient in θ is exactly D's. ``w(t)`` is 1 or ``min(SNR(t), 5)``. All noise is drawn from the trainer's
checkpointed generator as one global batch and sliced per replica, as in ``trainers.replicas``.

With ``shared_base`` one UNet holds the generator adapter (``default``) and the fake adapter
(``fake``); the teacher is that UNet with adapters off. peft's adapter switches also flip
``requires_grad``, so :class:`Networks` sets the flags itself after every switch, and every
backward through a role runs while that role is active (``model.unet_checkpointing`` recomputes
activations then).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from trainers.adapters import activate, adapters_off, copy_adapter
from trainers.config import Config, DistillConfig
from trainers.engine import guided_output, sample
from trainers.grad_plan import OneStep
from trainers.models import Conditioning, DiffusionModel, load_denoiser, make_trainable, pair_problems
from trainers.samplers.ddim import one_step_schedule, split_prediction
from trainers.samplers.flow import flow_one_step
from trainers.score_divergence import DivergenceSpec, DivergenceTerms, PseudoHuber, divergence_terms, dsm_loss

FAKE = "fake"  # adapter name of the fake score under shared_base; the generator's is peft's "default"
MIN_SNR = 5.0
ONE_STEP_FILE = "one_step.json"  # in a generator's weights folder: {"generator_timestep": t_g}


@dataclass
class NoiseSchedule:
    """The teacher's forward process: ``ᾱ`` per training timestep ``(1000,)`` float64, and what its UNet predicts."""

    abar: torch.Tensor
    prediction_type: str

    @classmethod
    def of(cls, scheduler) -> NoiseSchedule:
        return cls(scheduler.alphas_cumprod.double(), scheduler.config.prediction_type)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.abar[t.cpu()].view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε`` per sample."""
        abar = self._abar(t, x0).to(x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction ``ε̂`` from a UNet output ``(B, C, h, w)`` at per-sample timesteps ``t``."""
        return split_prediction(out, x_t, self._abar(t, x_t), self.prediction_type)[1]

    def weight(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """``w(t)`` per sample, ``(B,)``: 1 (uniform) or ``min(ᾱ/(1-ᾱ), 5)`` (min_snr)."""
        if kind == "uniform":
            return torch.ones(len(t), dtype=torch.float64)
        abar = self.abar[t.cpu()]
        return (abar / (1 - abar)).clamp(max=MIN_SNR)

    def one_step(self, scheduler, timestep: int):
        """The generator's schedule: the x0 prediction from ``timestep`` (``ddim.one_step_schedule``)."""
        return one_step_schedule(scheduler, timestep)


@dataclass
class FlowNoise:
    """A flow-matching teacher's forward process ``x_σ = (1-σ) x0 + σ ε`` with ``σ = t / num_train_timesteps``
    (SD3, FLUX): the denoiser predicts the velocity ``v = ε - x0``, so ``ε̂ = x_σ + (1-σ) v`` and ``x̂0 = x_σ - σ v``;
    the score is ``-ε̂ / σ`` (``tests/test_score_divergence.py`` checks this on a Gaussian)."""

    num_train_timesteps: int = 1000

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sigma = t.to(torch.float64) / self.num_train_timesteps
        return sigma.view(-1, *([1] * (like.dim() - 1))).to(device=like.device, dtype=like.dtype)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * eps

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t + (1 - self._sigma(t, x_t)) * out.to(x_t.dtype)

    def weight(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """``w(t)``: 1 (uniform) or ``min(SNR, 5)`` with ``SNR = ((1-σ)/σ)²`` (min_snr)."""
        if kind == "uniform":
            return torch.ones(len(t), dtype=torch.float64)
        sigma = t.to(torch.float64) / self.num_train_timesteps
        return ((1 - sigma) / sigma).square().clamp(max=MIN_SNR)

    def one_step(self, scheduler, timestep: int):
        """The generator's schedule: one Euler step from ``σ_g = timestep / num_train_timesteps`` to 0, which lands
        on the x0 prediction ``z - σ_g v``."""
        return flow_one_step(timestep, self.num_train_timesteps)


def forward_process(model: DiffusionModel, scheduler) -> NoiseSchedule | FlowNoise:
    """The teacher's forward process: DDPM's (``ᾱ``) for a DDIM family, the flow's for SD3 and FLUX."""
    if model.family.sampler == "flow":
        return FlowNoise(scheduler.config.num_train_timesteps)
    return NoiseSchedule.of(scheduler)


def generator_timestep(weights: str | None) -> int | None:
    """The timestep a one-step generator's weights folder records in ``one_step.json``, or None."""
    path = os.path.join(weights, ONE_STEP_FILE) if weights else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return int(json.load(f)["generator_timestep"])


@dataclass(frozen=True)
class FakeInputs:
    """The fake score's training batch: ``x_t`` ``(B, C, h, w)`` at timesteps ``t`` ``(B,)`` from noise ``eps``."""

    x_t: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor


class Teacher(Protocol):
    """Serves the teacher's side of the divergence (in this process, or from Ray actors)."""

    def terms(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        eps_fake: torch.Tensor,
        eps: torch.Tensor,
    ) -> DivergenceTerms: ...


class LocalTeacher:
    """The guided teacher on a UNet in this process; ``use()`` yields the UNet (a context, so a shared
    base can turn its adapters off for the call)."""

    def __init__(
        self, model: DiffusionModel, use, noise: NoiseSchedule | FlowNoise, spec: DivergenceSpec, alpha_cfg: float
    ):
        self.model, self.use, self.noise, self.spec, self.alpha_cfg = model, use, noise, spec, alpha_cfg

    def eps(
        self, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning | None
    ) -> torch.Tensor:
        """Guided ``ε̂_ref(x_t, t, c)`` of ``model``, ``(B, C, h, w)``; conditional only when ``alpha_cfg <= 1``."""
        guided = uncond if self.alpha_cfg > 1 else None
        out = guided_output(model, x_t, t.to(x_t.device), cond, guided, self.alpha_cfg)
        return self.noise.to_eps(out, x_t, t)

    def terms(self, x_t, t, cond, uncond, eps_fake, eps) -> DivergenceTerms:
        with self.use() as unet:  # held through the backward too, which may recompute checkpointed activations
            model = replace(self.model, denoiser=unet)
            return divergence_terms(lambda x: self.eps(model, x, t, cond, uncond), x_t, eps_fake, eps, self.spec)


def _score(reward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``r(images, prompts)``, ``(B,)``; NaN (so the step is skipped) when an image is not finite."""
    if images.device.type != "meta" and not torch.isfinite(images).all():  # meta: pipeline.plan's count
        return torch.full((len(prompts),), float("nan"), device=images.device)
    return reward(images, prompts)


def divergence_spec(cfg: DistillConfig) -> DivergenceSpec:
    return DivergenceSpec(cfg.divergence, PseudoHuber(cfg.huber_c, cfg.huber_norm))


class Networks:
    """Generator, fake score and teacher UNets: three modules, or one shared base with two adapters.

    At rest the generator's weights require grad and the fake's do not; :meth:`training_fake` flips that.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        fake: torch.nn.Module,
        teacher: torch.nn.Module | None,
        generator_params: list,
        fake_params: list,
        shared: bool,
    ):
        self.generator, self.fake, self.teacher = generator, fake, teacher
        self.generator_params, self.fake_params, self.shared = generator_params, fake_params, shared
        self._fake_trains = False
        self._set_flags()

    def _set_flags(self) -> None:
        for p in self.generator_params:
            p.requires_grad_(not self._fake_trains)
        for p in self.fake_params:
            p.requires_grad_(self._fake_trains)

    @contextmanager
    def training_fake(self) -> Iterator[None]:
        self._fake_trains = True
        self._set_flags()
        try:
            yield
        finally:
            self._fake_trains = False
            self._set_flags()

    @contextmanager
    def role(self, name: str) -> Iterator[torch.nn.Module]:
        """The UNet playing ``name`` (generator, fake or teacher), with the right adapter active."""
        if not self.shared:
            yield {"generator": self.generator, "fake": self.fake, "teacher": self.teacher}[name]
            return
        unet = self.generator
        try:
            with adapters_off(unet) if name == "teacher" else nullcontext():
                if name != "teacher":
                    activate(unet, "default" if name == "generator" else FAKE)
                self._set_flags()
                yield unet
        finally:
            activate(unet, "default")
            self._set_flags()

    def fake_state_dict(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.fake.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.fake_params}

    def load_fake_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.fake.named_parameters())
        mine = set(self.fake_state_dict())
        if set(state) != mine:
            raise ValueError(
                f"checkpoint's fake score does not match: missing {sorted(mine - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - mine)[:3]}; was it written with another distill.fake?"
            )
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)


def warm_start(model: DiffusionModel, folder: str) -> None:
    """Start the generator's LoRA adapter (``default``) from the LoRA a one-step run saved in ``folder``
    (``distill.generator_init``: post-training an already distilled generator, as DI* post-trains DMD2).

    Raises:
        ValueError: the LoRA's rank or target modules differ from ``trainable``'s.
    """
    try:
        with warnings.catch_warnings():  # peft warns of a second adapter and of deleting the active one: both meant
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            warnings.filterwarnings("ignore", message="Adapter init was active")
            model.family.load_lora(model.denoiser, folder, "init")
            copy_adapter(model.denoiser, "init", "default")
    except ValueError as e:
        raise ValueError(f"distill.generator_init: {folder!r}: {e}") from e
    activate(model.denoiser, "default")


def build_networks(cfg: Config, model: DiffusionModel, local_teacher: bool) -> tuple[Networks, object]:
    """Give ``model.denoiser`` the generator's weights (``distill.generator_init``'s LoRA when set) and build the
    fake score (and the teacher when ``local_teacher``), initialised from the teacher; returns the networks and
    the teacher's scheduler."""
    d = cfg.distill
    if d.shared_base:
        generator_params = make_trainable(model, cfg.trainable)
        if d.generator_init:
            warm_start(model, d.generator_init)
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: here it is meant
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            fake_params = make_trainable(model, d.fake, adapter_name=FAKE)
        activate(model.denoiser, "default")
        unet = model.denoiser
        return Networks(unet, unet, unet, generator_params, fake_params, shared=True), model.scheduler
    if d.teacher_path is None:
        teacher, scheduler = copy.deepcopy(model.denoiser), model.scheduler
    else:
        problems = pair_problems(cfg.model.path, d.teacher_path)
        if problems:
            raise ValueError("; ".join(problems))
        teacher, scheduler = load_denoiser(d.teacher_path, model.family, model.dtype, model.device)
    fake = copy.deepcopy(teacher) if local_teacher else teacher  # actors serve the teacher: this copy is free
    fake_params = make_trainable(replace(model, denoiser=fake), d.fake)
    generator_params = make_trainable(model, cfg.trainable)
    if d.generator_init:
        warm_start(model, d.generator_init)
    return (
        Networks(model.denoiser, fake, teacher if local_teacher else None, generator_params, fake_params, shared=False),
        scheduler,
    )


class DiStar:
    """The fake score's optimiser and the two losses of one DI* step (see the module docstring)."""

    def __init__(self, cfg: Config, model: DiffusionModel, teacher: Teacher | None = None):
        d, o = cfg.distill, cfg.optim
        self.cfg, self.model = d, model
        self.nets, self.teacher_scheduler = build_networks(cfg, model, local_teacher=teacher is None)
        self.noise, self.teacher_path = forward_process(model, self.teacher_scheduler), d.teacher_path or cfg.model.path
        self.spec = divergence_spec(d)
        self.teacher = teacher or LocalTeacher(
            model, lambda: self.nets.role("teacher"), self.noise, self.spec, d.alpha_cfg
        )
        self.one_step = self.noise.one_step(model.scheduler, d.generator_timestep)
        self.plan = OneStep()
        self.fake_optimizer = torch.optim.AdamW(
            self.nets.fake_params, lr=d.fake_lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.grad_clip = o.grad_clip or float("inf")

    def state_dict(self) -> dict:
        return {"fake": self.nets.fake_state_dict(), "fake_optimizer": self.fake_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_fake_state_dict(state["fake"])
        self.fake_optimizer.load_state_dict(state["fake_optimizer"])

    def save_info(self, folder: str) -> None:
        """Write ``one_step.json`` next to the generator's weights: how to sample it (``pipeline.generate``)."""
        with open(os.path.join(folder, ONE_STEP_FILE), "w", encoding="utf-8") as f:
            json.dump({"generator_timestep": self.cfg.generator_timestep}, f)

    def generator_latents(self, cond: Conditioning, z: torch.Tensor) -> torch.Tensor:
        """``x0 = g(z, c)``, ``(B, C, h, w)``, differentiable when grad is enabled."""
        with self.nets.role("generator") as unet:
            traj = sample(
                replace(self.model, denoiser=unet),
                cond,
                None,
                z,
                self.one_step,
                self.plan.flags(1),
                guidance=1.0,
                step_checkpointing=False,
            )
        return traj.finals[0]

    def fake_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """``ε̂_ψ(x_t, t, c)``; call it, and differentiate it, inside ``nets.role("fake")``: a shared base
        must have the fake adapter active whenever checkpointed activations are recomputed."""
        out = guided_output(replace(self.model, denoiser=self.nets.fake), x_t, t.to(x_t.device), cond, None, 1.0)
        return self.noise.to_eps(out, x_t, t)

    def draw(self, gen: torch.Generator, replicas, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This replica's ``(z, t, ε)`` from one global draw: ``(b, C, h, w)``, ``(b,)``, ``(b, C, h, w)``."""
        n, shape, own = b * replicas.world_size, self.model.latent_shape, replicas.own_slice(b)
        z = torch.randn(n, *shape, generator=gen)[own]
        t = torch.randint(self.cfg.t_min, self.cfg.t_max + 1, (n,), generator=gen)[own]
        eps = torch.randn(n, *shape, generator=gen)[own]
        like = {"device": self.model.device, "dtype": torch.promote_types(self.model.dtype, torch.float32)}
        return z.to(**like), t, eps.to(**like)

    def fake_inputs(self, cond: Conditioning, gen: torch.Generator, replicas) -> FakeInputs:
        """Noised detached generator samples for the fake score's DSM loss."""
        z, t, eps = self.draw(gen, replicas, len(cond))
        with torch.no_grad():
            x0 = self.generator_latents(cond, z)
        return FakeInputs(self.noise.add_noise(x0, t, eps), t, eps)

    def fake_loss(self, cond: Conditioning, inputs: FakeInputs) -> torch.Tensor:
        """The fake score's DSM loss; call it, and differentiate it, inside ``nets.training_fake()`` and
        ``nets.role("fake")``."""
        return dsm_loss(self.fake_eps(inputs.x_t, inputs.t, cond), inputs.eps).mean()

    def fake_update(self, cond: Conditioning, gen: torch.Generator, replicas) -> tuple[float, float]:
        """One AdamW step of the fake score on :meth:`fake_loss`; ``(loss, grad norm)``, both NaN when the step
        was skipped for a non-finite loss or gradient on any replica."""
        inputs = self.fake_inputs(cond, gen, replicas)
        with self.nets.training_fake(), self.nets.role("fake"):
            self.fake_optimizer.zero_grad(set_to_none=True)
            loss = self.fake_loss(cond, inputs)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
            replicas.mean_grads_(self.nets.fake_params, finite)
            norm = torch.nn.utils.clip_grad_norm_(self.nets.fake_params, self.grad_clip)
            if not torch.isfinite(norm):
                self.fake_optimizer.zero_grad(set_to_none=True)
                return float("nan"), float("nan")
            self.fake_optimizer.step()
        mean = loss.detach().float().reshape(1).to(self.model.device)
        replicas.mean_([mean])
        return float(mean), float(norm)

    def generator_loss(self, cond, uncond, prompts, reward, gen, replicas) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(loss, rewards (b,), metrics as 0-dim tensors)``: the loss's value is ``-α_rew r̄ + mean(w D)`` and its
        gradient in the generator's weights is exactly that of the divergence and reward."""
        d = self.cfg
        z, t, eps = self.draw(gen, replicas, len(prompts))
        x0 = self.generator_latents(cond, z)
        x_t = self.noise.add_noise(x0, t, eps)
        grad_x, value = self.divergence_grad(x_t.detach(), t, cond, uncond, eps)
        w = self.noise.weight(t, d.weighting).to(x0)
        div_value = (w * value.to(x0)).mean()
        div_grad = (w * (grad_x * x_t).flatten(1).sum(1)).mean()  # its gradient: mean_b w_b ∂D_b/∂θ
        with torch.set_grad_enabled(d.alpha_rew > 0):  # alpha_rew = 0: scored for the log only
            scores = _score(reward, self.model.family.decode(self.model, x0), prompts)
        loss = -d.alpha_rew * scores.mean() + div_grad + (div_value - div_grad).detach()
        return loss, scores, {"train/divergence": div_value.detach(), "train/t_mean": t.float().mean()}

    def divergence_grad(self, x_t, t, cond, uncond, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∂D/∂x_t (B, C, h, w), D (B,))`` at detached ``x_t``, through both score networks: the fake
        score's input Jacobian here, the teacher's in ``teacher.terms`` (maybe in an actor)."""
        sim = self.spec.uses_fake_jacobian  # kl: the fake score is a constant
        x_in = x_t.requires_grad_(sim)
        with torch.set_grad_enabled(sim), self.nets.role("fake"):
            eps_fake = self.fake_eps(x_in, t, cond)
        terms = self.teacher.terms(x_t.detach(), t, cond, uncond, eps_fake.detach(), eps)
        if not sim:
            return terms.grad_x, terms.value
        with self.nets.role("fake"):
            (through_fake,) = torch.autograd.grad(eps_fake, x_in, terms.grad_fake)
        return terms.grad_x + through_fake, terms.value

    @torch.no_grad()
    def generate(self, prompts: list[str], z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] from the one-step generator."""
        cond = self.model.family.encode_prompts(self.model, prompts)
        return self.model.family.decode(self.model, self.generator_latents(cond, z.to(self.model.device)))

    @contextmanager
    def teacher_model(self) -> Iterator[DiffusionModel]:
        """The teacher as a :class:`DiffusionModel`, for its baseline samples; when actors serve it, it is
        loaded from disk for the duration."""
        if self.nets.teacher is not None:
            with self.nets.role("teacher") as unet:
                yield replace(self.model, denoiser=unet, scheduler=self.teacher_scheduler)
            return
        unet, scheduler = load_denoiser(self.teacher_path, self.model.family, self.model.dtype, self.model.device)
        yield replace(self.model, denoiser=unet, scheduler=scheduler)

"""What a training step minimises: an :class:`Objective` strategy the loop calls without knowing which.

- :class:`RewardObjective`: a gradient plan through the sampler (DRaFT, DRaFT-K/LV, DRTune, ReFL, AlignProp).
  Draw prompts ``c`` and noise ``x_T``, draw the plan's step flags, sample ``x0`` with the engine, decode, and
  minimise ``L = -sum_j mean_b r(decode(x0_j)_b, c_b)`` over the final latents ``x0_j`` (one, or DRaFT-LV's n
  copies, plus the chain's sample with ``plan.lv_include_chain``; ``plan.hinge_margin`` and
  ``plan.loss_scale`` reshape it as ReFL's official code does: :func:`reward_objective`), plus DRaFT+'s drift
  penalty and the diversity reward when configured.
- :class:`DistillObjective`: Diff-Instruct* and its baselines (``plan.name=di_star``): the fake-score
  updates, then the one-step generator's loss (``trainers.distill``); it also brings the teacher's baselines,
  the fake score's state and the generator's ``one_step.json``.

Prompts, ``x_T`` and plan draws come from the trainer's checkpointed generator, per-step noise from the
replica's step generator, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from trainers.config import Config, PlanConfig
from trainers.distill import DiStar, Teacher
from trainers.engine import sample
from trainers.evaluation import OneStepGenerator, feature_diversity, image_encoder
from trainers.grad_plan import GradPlan, refinement
from trainers.models import DiffusionModel, make_trainable
from trainers.registry import build_plan
from trainers.samplers.schedule import Schedule

if TYPE_CHECKING:
    from trainers.loop import Trainer

Loss = tuple[torch.Tensor, torch.Tensor, list[str], dict[str, float]]
"""``(loss, scores (J, b), prompts, metrics)``: a loss that is NaN when the step must be skipped."""
Evaluation = Callable[[DiffusionModel, Schedule], tuple[dict[str, float], dict[str, torch.Tensor], torch.Tensor]]
"""Held-out evaluation of another model on a schedule: ``(means, per-image scores, images)``."""
Baselines = tuple[dict[str, float], dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""Step 0's references: ``(means by metric name, per-image scores by baseline, images by baseline)``."""


class Objective(Protocol):
    """What the loop trains and how it samples, for one kind of method."""

    params: list[torch.nn.Parameter]  # the weights the optimiser steps
    schedule: Schedule  # what the model is sampled on (training and evaluation)
    one_step: OneStepGenerator | None  # evaluation samples from it instead of the schedule, when set
    extra_params: list[torch.nn.Parameter]  # other trained weights (DI*'s fake score), for the replica check

    def loss(self, tr: Trainer) -> Loss: ...

    def baselines(self, evaluate: Evaluation) -> Baselines:
        """Step 0's reference scores and images besides the model's own (all ``{}`` when there are none)."""

    def save_info(self, folder: str) -> None:
        """Write what sampling the trained weights needs beside them (nothing, for most)."""

    def state_dict(self) -> dict | None: ...

    def load_state_dict(self, state: dict | None) -> None: ...


@dataclass
class RewardObjective:
    """A gradient plan through the sampler, scored by the reward (see the module docstring)."""

    plan: GradPlan
    params: list[torch.nn.Parameter]
    schedule: Schedule
    one_step: None = None
    extra_params: list[torch.nn.Parameter] = field(default_factory=list)

    def loss(self, tr: Trainer) -> Loss:
        return reward_loss(tr)

    def baselines(self, evaluate: Evaluation) -> Baselines:
        return {}, {}, {}

    def save_info(self, folder: str) -> None:
        pass

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


@dataclass
class DistillObjective:
    """Diff-Instruct* and its baselines: the one-step generator's loss after the fake-score updates."""

    distill: DiStar
    teacher_steps: int  # the teacher's multi-step baseline: sampler.num_steps DDIM steps

    def __post_init__(self) -> None:
        self.params, self.schedule = self.distill.nets.generator_params, self.distill.one_step
        self.one_step, self.extra_params = self.distill, self.distill.nets.fake_params

    def loss(self, tr: Trainer) -> Loss:
        return distill_loss(tr, self.distill)

    def baselines(self, evaluate: Evaluation) -> Baselines:
        """The teacher's held-out scores with one step (from ``t_g``) and with ``sampler.num_steps`` DDIM steps,
        both guided as the sampler says: ``(teacher/{one_step,multi_step}/<reward> means, {one_step,
        multi_step}: per-image scores, {one_step, multi_step}: images)``."""
        metrics, per_image, images = {}, {}, {}
        with self.distill.teacher_model() as teacher:
            schedules = {
                "one_step": self.distill.noise.one_step(teacher.scheduler, self.distill.cfg.generator_timestep),
                "multi_step": teacher.family.schedule(teacher, self.teacher_steps),
            }
            for name, schedule in schedules.items():
                means, per_image[name], images[name] = evaluate(teacher, schedule)
                metrics |= {f"teacher/{name}/{key[len('eval/') :]}": value for key, value in means.items()}
        return metrics, per_image, images

    def save_info(self, folder: str) -> None:
        self.distill.save_info(folder)

    def state_dict(self) -> dict:
        return self.distill.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.distill.load_state_dict(state)


def build_objective(cfg: Config, model: DiffusionModel, teacher: Teacher | None = None) -> Objective:
    """The objective ``plan.name`` names, with its trainable weights added to ``model`` (for ``di_star`` also the
    fake score and, unless ``teacher`` serves it, the teacher)."""
    if cfg.plan.name == "di_star":
        return DistillObjective(DiStar(cfg, model, teacher), cfg.sampler.num_steps)
    return RewardObjective(
        build_plan(cfg.plan), make_trainable(model, cfg.trainable), model.family.schedule(model, cfg.sampler.num_steps)
    )


def reward_loss(tr: Trainer) -> Loss:
    """Draw this replica's batch and plan flags, then :func:`plan_loss` on them."""
    model, s, b, rep = tr.model, tr.cfg.sampler, tr.cfg.train.batch_size, tr.replicas
    m = tr.cfg.plan.samples_per_prompt  # whole groups per replica: b is a multiple of m
    prompts = [p for p in tr.sampler.next_batch(b * rep.world_size // m) for _ in range(m)][rep.own_slice(b)]
    flags = tr.objective.plan.flags(s.num_steps, tr.gen)
    x_T = torch.randn(b * rep.world_size, *model.latent_shape, generator=tr.gen)[rep.own_slice(b)].to(model.device)
    return plan_loss(tr, prompts, x_T, flags, rep.step_generator(tr.cfg.train.seed, tr.step))


def plan_loss(tr: Trainer, prompts: list[str], x_T: torch.Tensor, flags: list, gen: torch.Generator | None) -> Loss:
    """Sample from ``x_T`` with the plan's ``flags`` and return ``(loss, scores, prompts, metrics)``;
    scores ``(J, b)`` for the J final latents of the b prompts. With ``plan.kl_coeff`` = beta > 0 the loss
    adds DRaFT+'s ``beta * mean(drift)`` over the calls with gradient (``train/kl``: the mean drift). With
    ``plan.diversity_coeff`` = lambda > 0 it adds ``lambda *`` :func:`diversity_loss` of the feature
    diversity of each group of ``plan.samples_per_prompt`` consecutive prompts' images, summed over the J
    final latents as the reward is (``train/feature_diversity``: the mean)."""
    model, s, guidance = tr.model, tr.cfg.sampler, tr.cfg.sampler.training_guidance
    cond = model.family.encode_prompts(model, prompts)
    uncond = model.unconditional(len(prompts), guidance)
    beta = tr.cfg.plan.kl_coeff
    traj = sample(
        model,
        cond,
        uncond,
        x_T,
        tr.schedule,
        flags,
        guidance=guidance,
        eta=s.eta,
        gen=gen,
        refine=refinement(tr.objective.plan),
        step_checkpointing=tr.cfg.model.step_checkpointing,
        drift=beta > 0,
        fold_lora=tr.cfg.model.fold_lora,
    )
    images = [model.family.decode(model, x0) for x0 in traj.finals]
    if not all(torch.isfinite(x).all() for x in images):  # rewards reject NaN images; skip the step instead
        nan = torch.full((len(images), len(prompts)), float("nan"))
        return nan.sum(), nan, prompts, {}
    scores = torch.stack([tr.reward(x, prompts) for x in images])
    loss, metrics = reward_objective(scores, tr.cfg.plan), {}
    if traj.drift:
        drift = torch.stack(traj.drift).mean()
        loss, metrics["train/kl"] = loss + beta * drift, float(drift.detach())
    if tr.cfg.plan.diversity_coeff:
        term, metrics["train/feature_diversity"] = diversity_term(tr, images)
        loss = loss + term
    return loss, scores, prompts, metrics


def reward_objective(scores: torch.Tensor, plan: PlanConfig) -> torch.Tensor:
    """The loss on the rewards ``(J, b)`` of the J final latents: ``loss_scale * sum_j mean_b -r``, or with
    ``plan.hinge_margin`` m ``loss_scale * sum_j mean_b relu(m - r)`` (ReFL's official loss)."""
    per_image = -scores if plan.hinge_margin is None else (plan.hinge_margin - scores).clamp(min=0)
    return plan.loss_scale * per_image.mean(dim=1).sum()


def diversity_term(tr: Trainer, images: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """``plan.diversity_coeff *`` :func:`diversity_loss`, summed over the final latents' images as the reward
    is, and the mean feature diversity of the batch's groups of ``plan.samples_per_prompt`` samples."""
    plan, encoder = tr.cfg.plan, image_encoder({"trained": tr.reward})
    spreads = [feature_diversity(encoder(x), plan.samples_per_prompt) for x in images]  # each (groups,)
    term = plan.diversity_coeff * sum(diversity_loss(d, plan.diversity_floor) for d in spreads)
    return term, float(torch.stack(spreads).mean())


def diversity_loss(spread: torch.Tensor, floor: float | None) -> torch.Tensor:
    """The diversity term per unit coefficient from each group's feature diversity ``(groups,)``: ``-mean(d)``,
    or with a floor ``mean(max(0, floor - d))``."""
    return -spread.mean() if floor is None else (floor - spread).clamp(min=0).mean()


def distill_loss(tr: Trainer, d: DiStar) -> Loss:
    """DI*: this replica's prompts, ``distill.fake_updates`` fake-score steps, then the generator loss;
    ``(loss, scores (1, b), prompts, metrics)``, the loss NaN (the step skipped) if a fake step was."""
    b, rep = tr.cfg.train.batch_size, tr.replicas
    prompts = tr.sampler.next_batch(b * rep.world_size)[rep.own_slice(b)]
    cond = tr.model.family.encode_prompts(tr.model, prompts)
    uncond = tr.model.unconditional(b, tr.cfg.distill.alpha_cfg)
    fake = [d.fake_update(cond, tr.gen, rep) for _ in range(tr.cfg.distill.fake_updates)]
    metrics = {"train/fake_loss": fake[-1][0], "train/fake_grad_norm": fake[-1][1]}
    if not all(math.isfinite(value) for f in fake for value in f):
        nan = torch.full((1, b), float("nan"))
        return nan.sum(), nan, prompts, metrics
    loss, scores, more = d.generator_loss(cond, uncond, prompts, tr.reward, tr.gen, rep)
    return loss, scores[None], prompts, metrics | {key: float(value) for key, value in more.items()}

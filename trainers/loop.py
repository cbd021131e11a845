"""The Ray-free training core: ``run(cfg)`` samples, scores, backpropagates, evaluates and checkpoints.

The recipe of a run: build the trainer (model, the :class:`~trainers.objectives.Objective` the plan names,
rewards, optimiser, prompts); evaluate the held-out prompts at step 0 (with the objective's baselines); then
each step asks the objective for its loss, backpropagates, averages gradients over replicas, clips and
steps; evaluates every ``eval.every`` steps, checkpoints every ``train.checkpoint_every``, and writes the
final weights and the held-out summary. Non-finite losses or gradients skip the step;
``train.max_bad_steps`` in a row abort. Prompts, noise and plan draws come from one checkpointed
``torch.Generator`` and per-step noise from a generator seeded by (seed, rank, step), so a resumed run
equals an uninterrupted one. Under data parallelism (``trainers.replicas``) gradients are averaged over
replicas and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import dataclass, field

import torch

from rewards.base import Reward
from rewards.build import build_reward
from trainers.checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_folder_atomic,
    write_text_atomic,
)
from trainers.config import Config
from trainers.constraints import broken, parse_constraints
from trainers.distill import Teacher
from trainers.evaluation import (
    diversity_scores,
    held_out_from_metrics,
    held_out_metrics,
    held_out_summary,
    image_encoder,
    sample_and_score,
    save_grid,
)
from trainers.models import (
    DiffusionModel,
    load_model,
    load_trainable_state_dict,
    save_denoiser_state,
    save_trained,
    trainable_state_dict,
)
from trainers.objectives import Objective, build_objective
from trainers.prompts import BUILTIN_HELD_OUT, BUILTIN_TRAIN, PromptSampler, load_prompts
from trainers.replicas import Replicas
from trainers.reporting import JsonlLog, Reporter
from trainers.samplers.schedule import Schedule
from trainers.sharding import full_state, full_weights, load_full_state, local_fraction, shard_unet


class TrainingAborted(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclass
class Trainer:
    """Everything a run holds; ``state_dict`` captures what resume needs."""

    cfg: Config
    model: DiffusionModel
    params: list[torch.nn.Parameter]
    objective: Objective
    reward: Reward
    eval_rewards: dict[str, Reward]
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    sampler: PromptSampler
    eval_prompts: list[str]
    gen: torch.Generator
    replicas: Replicas = field(default_factory=Replicas)
    sharded: bool = False  # train.fsdp over several replicas: weights, gradients and AdamW state sharded
    step: int = 0
    bad_in_a_row: int = 0
    skipped: int = 0
    clipped: int = 0  # optimiser steps whose gradient norm exceeded optim.grad_clip
    extra: dict = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        """What the model is sampled on, in training and evaluation: the objective's."""
        return self.objective.schedule

    def state_dict(self) -> dict:
        """Everything resume needs; a collective under FSDP (every replica calls it, rank 0 gets the state)."""
        if self.sharded:
            trainable, optimizer = full_state(self.model.denoiser, self.optimizer)
        else:
            trainable, optimizer = trainable_state_dict(self.model), self.optimizer.state_dict()
        return {
            "step": self.step,
            "trainable": trainable,
            "optimizer": optimizer,
            "lr_schedule": self.lr_schedule.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "sampler": self.sampler.state_dict(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "bad_in_a_row": self.bad_in_a_row,
            "skipped": self.skipped,
            "clipped": self.clipped,
            "extra": self.extra,
            "objective": self.objective.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if self.sharded:
            load_full_state(self.model.denoiser, self.optimizer, state["trainable"], state["optimizer"])
        else:
            load_trainable_state_dict(self.model, state["trainable"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.bad_in_a_row, self.skipped = state["step"], state["bad_in_a_row"], state["skipped"]
        self.clipped = state.get("clipped", 0)
        self.extra = state.get("extra", {})
        self.objective.load_state_dict(state.get("objective", state.get("distill")))  # "distill": before 2026-12


def build_trainer(
    cfg: Config, model: DiffusionModel | None = None, reward: Reward | None = None, teacher: Teacher | None = None
) -> Trainer:
    """Load the model, add trainable weights, build rewards, optimiser and prompt sampler (and for
    ``di_star`` the fake score and the teacher, in process unless ``teacher`` serves it)."""
    model = model or load_model(cfg.model)
    cuda = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # adapter init is seeded, and leaves global RNG alone
        torch.manual_seed(cfg.train.seed)
        objective = build_objective(cfg, model, teacher)
    params = objective.params
    replicas = Replicas.current()
    sharded = cfg.train.fsdp and replicas.world_size > 1
    if sharded:
        params = shard_unet(model.denoiser)
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = max(o.warmup_steps, 1)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    eval_rewards = {spec.name: build_reward([spec], device=model.device) for spec in cfg.eval.rewards}
    return Trainer(
        cfg=cfg,
        model=model,
        params=params,
        objective=objective,
        reward=reward or build_reward(cfg.rewards, device=model.device),
        eval_rewards=eval_rewards,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        sampler=PromptSampler(load_prompts(cfg.data.prompts, BUILTIN_TRAIN), cfg.train.seed),
        eval_prompts=load_prompts(cfg.data.eval_prompts, BUILTIN_HELD_OUT)[: cfg.eval.max_prompts],
        gen=torch.Generator().manual_seed(cfg.train.seed),
        replicas=replicas,
        sharded=sharded,
    )


def train_step(tr: Trainer) -> dict[str, float]:
    """One optimiser step (skipped, and counted, when the loss or gradient is not finite on any replica)."""
    start = time.perf_counter()
    tr.model.denoiser.train()
    tr.optimizer.zero_grad(set_to_none=True)
    loss, scores, prompts, side = tr.objective.loss(tr)
    loss_finite = bool(torch.isfinite(loss))
    if tr.sharded:  # FSDP's backward is a collective: every replica runs it, or none does
        loss_finite = tr.replicas.all_true(loss_finite)
    if loss_finite and loss.requires_grad:  # AlignProp's cuts may leave no step with gradient: a zero gradient
        loss.backward()
    if not tr.sharded:  # FSDP averaged the gradients in backward
        tr.replicas.mean_grads_(tr.params, loss_finite)
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.optim.grad_clip or float("inf"))
    finite = loss_finite and bool(torch.isfinite(grad_norm))
    if finite:
        tr.optimizer.step()
        tr.bad_in_a_row = 0
        tr.clipped += bool(tr.cfg.optim.grad_clip and grad_norm > tr.cfg.optim.grad_clip)
    else:
        tr.optimizer.zero_grad(set_to_none=True)
        tr.bad_in_a_row, tr.skipped = tr.bad_in_a_row + 1, tr.skipped + 1
    tr.lr_schedule.step()
    tr.step += 1
    seconds = time.perf_counter() - start
    means = torch.stack([loss.detach(), scores[0].detach().mean()]).float().to(tr.model.device)
    tr.replicas.mean_([means])  # the global batch's loss and reward
    return {
        "train/loss": float(means[0]),
        "train/reward": float(means[1]),
        "train/grad_norm": float(grad_norm),
        "train/clip_frac": tr.clipped / tr.step,  # share of the run's steps so far whose gradient was clipped
        "train/lr": tr.optimizer.param_groups[0]["lr"],
        "train/skipped_steps": tr.skipped,
        "perf/step_seconds": seconds,
        "perf/images_per_second": len(prompts) * tr.replicas.world_size / seconds,
        "perf/peak_memory_mb": peak_memory_mb(tr.model.device),
        **side,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(
    tr: Trainer, model: DiffusionModel | None = None, schedule: Schedule | None = None
) -> tuple[dict[str, float], dict[str, torch.Tensor], torch.Tensor]:
    """Score the held-out prompts (``images_per_prompt`` each, prompt-major) on fixed noise: the trained
    model by default, or ``model`` sampled on ``schedule`` (DI*'s teacher baselines).

    Returns:
        ``(metrics, scores, images)``: ``eval/<reward>`` means, per-image scores (and, with two or more
        images per prompt, per-prompt ``diversity`` of pixels and ``feature_diversity`` of the first
        reward's image embeddings, when a reward has an image encoder), the images.
    """
    k = tr.cfg.eval.images_per_prompt
    prompts = [p for p in tr.eval_prompts for _ in range(k)]
    rewards = {"trained": tr.reward, **tr.eval_rewards}
    one_step = tr.objective.one_step if model is None else None
    scores, images = sample_and_score(
        model or tr.model,
        prompts,
        rewards,
        tr.cfg.sampler,
        schedule or tr.schedule,
        tr.cfg.eval.seed,
        one_step,
        fold_lora=tr.cfg.model.fold_lora,
        batch_size=tr.cfg.eval.batch_size,
    )
    if k > 1:
        scores |= diversity_scores(images, k, image_encoder(rewards), tr.model.device)
    return {f"eval/{name}": float(v.mean()) for name, v in scores.items()}, scores, images


@dataclass
class RunResult:
    """Where a run wrote its outputs and its last metrics."""

    run_dir: str
    step: int
    final_model_dir: str | None  # None on replicas other than rank 0
    held_out: dict[str, dict[str, float]]  # per reward: base, tuned, diff, diff_low, diff_high (95% bootstrap)
    metrics: dict[str, float]


def run_folder(cfg: Config) -> str:
    """``<output_dir>/<run_name>``, with a default name from the plan and seed; absolute."""
    name = cfg.train.run_name or f"{cfg.plan.name}-seed{cfg.train.seed}"
    return os.path.abspath(os.path.join(cfg.train.output_dir, name))


def _save_weights(tr: Trainer, folder: str, trainable: dict | None) -> None:
    """The trained weights in diffusers format (and a one-step generator's ``one_step.json``); under FSDP
    from ``trainable``, the gathered full weights."""
    if tr.sharded:
        save_denoiser_state(tr.model, trainable, folder)
    else:
        save_trained(tr.model, tr.cfg.trainable, folder)
    tr.objective.save_info(folder)


def _mark_best(tr: Trainer) -> None:
    """With ``eval.require``, the weights of an evaluation step that meet every constraint with the highest
    held-out trained reward so far become the run's best (``tr.extra["best"]``; their checkpoint is kept)."""
    judged, best = tr.extra.get("judged"), tr.extra.get("best")
    evaluated_now = judged and judged["step"] == tr.step  # weights judged by an earlier evaluation are not
    if evaluated_now and not judged["broken"] and (best is None or judged["trained"] > best["trained"]):
        tr.extra["best"] = {"step": tr.step, "evaluated": judged["step"], "trained": judged["trained"]}


def _checkpoint(tr: Trainer, run_dir: str) -> str | None:
    """Rank 0 writes a checkpoint (marking the run's best) and returns its folder; under FSDP every replica
    helps gather it."""
    if not (tr.replicas.lead or tr.sharded):
        return None
    state = tr.state_dict()
    if not tr.replicas.lead:
        return None
    best_step = tr.extra["best"]["step"] if tr.extra.get("best") else None
    return save_checkpoint(
        run_dir, tr.step, state, lambda folder: _save_weights(tr, folder, state["trainable"]), best=best_step
    )


def _judge(tr: Trainer, metrics: dict[str, float]) -> dict[str, float]:
    """Check an evaluation against ``eval.require`` (recorded for the next checkpoint); ``require/met``."""
    if not tr.cfg.eval.require:
        return {}
    breaks = broken(parse_constraints(tr.cfg.eval.require), metrics)
    tr.extra["judged"] = {"step": tr.step, "broken": breaks, "trained": metrics.get("eval/trained", math.nan)}
    return {"require/met": float(not breaks)}


def _stops(tr: Trainer, metrics: dict[str, float]) -> bool:
    """``eval.stop_when_broken``: this evaluation (after step 0) broke a constraint; the same answer on every
    replica (a collective, called at evaluation steps only)."""
    met = metrics.get("require/met", 1.0) == 1.0  # replicas that do not evaluate do not object
    return tr.cfg.eval.stop_when_broken and not tr.replicas.all_true(met)


def _evaluate_and_save(tr: Trainer, run_dir: str) -> dict[str, float]:
    """Evaluate (rank 0, or under FSDP every replica: each forward is a collective); rank 0 saves."""
    metrics, scores, images = evaluate(tr)
    if tr.replicas.lead:
        save_grid(images, os.path.join(run_dir, "samples", f"step_{tr.step:06d}.png"), tr.cfg.eval.images_per_prompt)
        torch.save(scores, os.path.join(run_dir, "samples", f"scores_{tr.step:06d}.pt"))
    return metrics


def run(
    cfg: Config,
    *,
    reporters: tuple[Reporter, ...] = (),
    reward: Reward | None = None,
    teacher: Teacher | None = None,
    run_dir: str | None = None,
    resume_from: str | None = None,
) -> RunResult:
    """Train as ``cfg`` says, resuming from ``resume_from`` (a checkpoint folder), else from the run
    folder's latest checkpoint when there is one (and ``train.resume``).

    Writes ``metrics.jsonl``, sample grids and held-out scores under ``samples/``, resumable
    checkpoints under ``checkpoints/``, and the trained weights in diffusers format under ``final/``.
    The last step's metrics carry the held-out summary as ``held_out/<reward>/<stat>``
    (:func:`held_out_from_metrics` reads it back), so a launcher on another machine gets it too.

    Raises:
        TrainingAborted: ``train.max_bad_steps`` non-finite steps in a row (a checkpoint of the last
            good weights is written first).
    """
    run_dir = run_dir or run_folder(cfg)
    tr = build_trainer(cfg, reward=reward, teacher=teacher)
    lead = tr.replicas.lead  # only rank 0 writes the run folder
    evaluates = lead or tr.sharded
    os.makedirs(run_dir, exist_ok=True)
    if resume_from is None and cfg.train.resume:
        resume_from = latest_checkpoint(run_dir)
    if resume_from:
        tr.load_state_dict(load_checkpoint(resume_from))
    if "stopped" in tr.extra and not cfg.eval.stop_when_broken:  # resumed with the stop turned off: go on
        del tr.extra["stopped"]
    history = (JsonlLog(os.path.join(run_dir, "metrics.jsonl"), tr.step),) if lead else ()
    sinks = history + tuple(reporters)
    for sink in sinks:
        sink.start(tr.extra)
    if tr.step == 0:
        tr.extra["eval_before"] = _evaluate_and_save(tr, run_dir) if evaluates else {}
        metrics, per_image, images = (
            tr.objective.baselines(lambda model, schedule: evaluate(tr, model, schedule)) if lead else ({}, {}, {})
        )
        if per_image:
            tr.extra["eval_before"] |= metrics
            torch.save(per_image, os.path.join(run_dir, "samples", "teacher_scores.pt"))
            for name, grid in images.items():
                save_grid(grid, os.path.join(run_dir, "samples", f"teacher_{name}.png"), cfg.eval.images_per_prompt)
        for sink in sinks:
            sink.report(0, tr.extra["eval_before"])
    metrics, every = {}, cfg.eval.every
    while tr.step < cfg.train.steps and "stopped" not in tr.extra:
        metrics = train_step(tr)
        if tr.bad_in_a_row >= cfg.train.max_bad_steps:
            folder = _checkpoint(tr, run_dir)
            raise TrainingAborted(
                f"{tr.bad_in_a_row} steps in a row had a non-finite loss or gradient (limit train.max_bad_steps="
                f"{cfg.train.max_bad_steps}); stopped at step {tr.step}, last good weights saved in {folder}. "
                "Lower optim.lr, keep optim.grad_clip > 0, use model.dtype=fp32 or a smaller plan.k"
            )
        last = tr.step == cfg.train.steps
        evaluation = last or bool(every and tr.step % every == 0)
        if evaluates and evaluation:
            metrics.update(_evaluate_and_save(tr, run_dir))
            metrics.update(_judge(tr, metrics))
        if evaluation and _stops(tr, metrics) and not last:
            tr.extra["stopped"] = {"step": tr.step, "broken": tr.extra["judged"]["broken"] if lead else []}
            last = True
        checkpoints = last or tr.step % cfg.train.checkpoint_every == 0
        if checkpoints:
            trained = tr.params + tr.objective.extra_params
            if tr.sharded:  # each replica holds its own shard: report how much
                metrics["dp/local_weight_fraction"] = local_fraction(trained)
            else:
                metrics["dp/max_weight_divergence"] = tr.replicas.max_divergence(trained)
            _mark_best(tr)
        if last:  # before the last report: a launcher may stop the process once it has seen it
            metrics.update(held_out_metrics(_write_final(tr, run_dir)))
            metrics.update(_teacher_metrics(tr))
        # The step's metrics reach the run folder before its checkpoint, so a checkpoint never stands for a step
        # whose history a kill lost (the reporters after it replay from metrics.jsonl on resume).
        for sink in history:
            sink.report(tr.step, metrics)
        folder = _checkpoint(tr, run_dir) if checkpoints else None
        for sink in reporters:
            sink.report(tr.step, metrics, folder)
    held_out = held_out_from_metrics(metrics) if metrics else _write_final(tr, run_dir)  # else: resumed at the end
    if not lead:
        return RunResult(run_dir, tr.step, None, {}, metrics)
    for sink in sinks:
        sink.close()
    return RunResult(run_dir, tr.step, os.path.join(run_dir, "final"), held_out, metrics)


def _write_final(tr: Trainer, run_dir: str) -> dict[str, dict[str, float]]:
    """Rank 0 saves the trained weights to ``final/`` and the held-out summary to ``summary.json`` and
    returns it (other replicas: ``{}``, after helping gather the weights under FSDP)."""
    trainable = full_weights(tr.model.denoiser) if tr.sharded else None
    if not tr.replicas.lead:
        return {}
    final_dir = write_folder_atomic(os.path.join(run_dir, "final"), lambda folder: _save_weights(tr, folder, trainable))
    held_out = held_out_summary(run_dir, tr.step)
    teacher = _teacher_metrics(tr)
    best = tr.extra.get("best")
    if best:
        best = {**best, "model_dir": os.path.join(checkpoint_root(run_dir), f"step_{best['step']:06d}", "model")}
    extra = {"teacher": teacher, "best_meeting_require": best, "stopped": tr.extra.get("stopped")}
    summary = {
        "step": tr.step,
        "held_out": held_out,
        "final_model_dir": final_dir,
        **{k: v for k, v in extra.items() if v},
    }
    write_text_atomic(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=1))
    return held_out


def _teacher_metrics(tr: Trainer) -> dict[str, float]:
    """DI*'s teacher baselines, measured at step 0 (``teacher/*``; empty for other plans)."""
    return {k: v for k, v in tr.extra.get("eval_before", {}).items() if k.startswith("teacher/")}

"""Typed configuration of a training run: frozen dataclasses, one per section, defaults only here.

``pipeline.config.load_config(Config, path, overrides)`` builds a :class:`Config` from YAML plus
dotted overrides (``plan.k=5``) and reports every problem at once; each ``validate()`` here returns
the problems of its own section as ``"field: message"`` strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from rewards.build import term_names
from rewards.catalog import IMAGE_ENCODER_REWARDS
from rewards.config import RewardSpec
from trainers.constraints import constraint_problems, unknown_metric_problems

GPU_NAMES = ("h100", "h200", "a100", "a100-40gb", "l40s")  # pipeline.plan's GPU table
PLAN_NAMES = ("draft", "draft_k", "draft_lv", "drtune", "refl", "alignprop", "di_star")


def _positive(name: str, value: float, minimum: float = 1) -> list[str]:
    return [] if value >= minimum else [f"{name}: must be >= {minimum}, got {value!r}"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which diffusion model to tune and how to run it."""

    family: Literal["auto", "sd", "sdxl", "pixart", "sd3", "flux"] = (
        "auto"  # auto: from model_index.json; sd = SD 1.x/2.x
    )
    path: str = "pipeline/assets/toyworld/sd"  # diffusers pipeline folder, or a hub id when online
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # frozen weights' precision; trained weights stay fp32
    device: str = "auto"  # "auto" (cuda if present, else cpu), "cpu", "cuda", "cuda:1", ...
    resolution: int | None = None  # image side in px; None = the UNet's native size
    unet_checkpointing: bool = False  # activation checkpointing inside the UNet (less memory, ~1.5x time)
    vae_checkpointing: bool = False  # activation checkpointing inside the VAE decoder
    step_checkpointing: bool = True  # recompute each trained sampling step in backward (memory flat in K)
    fold_lora: bool = True  # denoiser calls without gradient use the LoRA folded into the base weights

    def validate(self) -> list[str]:
        ok = self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")
        problems = [] if ok else [f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}"]
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            problems.append(f"resolution: must be a multiple of 8 and >= 8, got {self.resolution}")
        return problems


@dataclass(frozen=True, kw_only=True)
class TrainableConfig:
    """Which parameters are trained: LoRA adapters on the UNet attention projections, or the full UNet."""

    kind: Literal["lora", "full"] = "lora"  # lora = peft adapters; full = every UNet weight
    rank: int = 4  # LoRA rank r
    alpha: float = 4.0  # LoRA alpha; the update is scaled by alpha / r
    # denoiser module names given adapters; null = the family's (attention projections; SD3 adds the text stream's)
    target_modules: tuple[str, ...] | None = None
    init: Literal["kaiming", "gaussian"] = (
        "kaiming"  # init of A; B starts at 0 either way, so tuning starts at the base
    )
    dropout: float = 0.0  # LoRA dropout probability

    def validate(self) -> list[str]:
        problems = _positive("rank", self.rank)
        problems += [] if self.alpha > 0 else [f"alpha: must be > 0, got {self.alpha}"]
        problems += [] if 0 <= self.dropout < 1 else [f"dropout: must be in [0, 1), got {self.dropout}"]
        if self.target_modules is not None and not self.target_modules:
            problems.append("target_modules: must name at least one module, or be null for the family's; got []")
        return problems


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The sampler used for training and evaluation: DDIM, or flow-matching Euler for flow models (SD3)."""

    num_steps: int = 20  # T, sampling steps
    guidance_scale: float = 7.5  # classifier-free guidance w (<= 1 turns guidance off)
    # w while training, when it differs from evaluation's (ReFL's official code trains without CFG: 1); null = guidance_scale
    train_guidance_scale: float | None = None
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM ancestral sampling (flow models: 0 only)

    @property
    def training_guidance(self) -> float:
        return self.guidance_scale if self.train_guidance_scale is None else self.train_guidance_scale

    def validate(self) -> list[str]:
        problems = _positive("num_steps", self.num_steps)
        if self.train_guidance_scale is not None and not self.train_guidance_scale >= 0:
            problems.append(f"train_guidance_scale: must be >= 0 or null, got {self.train_guidance_scale}")
        problems += [] if 0 <= self.eta <= 1 else [f"eta: must be in [0, 1], got {self.eta}"]
        if self.num_steps > 1000:
            problems.append(f"num_steps: must be <= 1000 (the schedulers' training timesteps), got {self.num_steps}")
        problems += [] if self.guidance_scale >= 0 else [f"guidance_scale: must be >= 0, got {self.guidance_scale}"]
        return problems


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """The algorithm: a gradient plan through the sampler (trainers/grad_plan.py), or ``di_star``, the
    one-step distillation of trainers/distill.py (set up in the ``distill`` section)."""

    name: Literal["draft", "draft_k", "draft_lv", "drtune", "refl", "alignprop", "di_star"] = "drtune"
    k: int = 1  # trained steps: last k (draft_k) or spread over the chain (drtune)
    lv_copies: int = 2  # draft_lv: n re-noised copies of sg(x0), each denoised once more with gradient
    lv_include_chain: bool = False  # draft_lv: also train the chain's own last step (false: the copies only)
    lv_timestep: int | None = None  # draft_lv: training timestep the copies are re-noised to; null = the last step's
    early_stop: int = 0  # m: stop at a step drawn from the last m (drtune: 0 = off; refl: required)
    alignprop_cuts: Literal["per_step", "per_call"] = "per_step"  # alignprop: a cut drawn at every step (the
    # original code), or one per sampling call, training a suffix of random length (its later TRL-style code)
    # the loss on the reward r (the rewards section's weighted sum): loss_scale * -r, or with a hinge margin
    # loss_scale * relu(margin - r) (ReFL's official code: margin 2 on ImageReward, loss_scale 1e-3)
    hinge_margin: float | None = None
    loss_scale: float = 1.0
    # DRaFT+: beta * mean ||f_theta(x_t) - f_base(x_t)||^2 over the trained steps, f the guided denoiser output
    # and f_base the same network with its LoRA adapters off (0: off, the plain objective)
    kl_coeff: float = 0.0
    # diversity reward (as in diversity-rewarded distillation, Cideron et al. 2024): with d the mean pairwise
    # cosine distance between the trained reward's image embeddings of a prompt's samples_per_prompt samples
    # in the batch, the loss subtracts lambda * mean(d) (0: off, the plain objective); with a floor, it adds
    # lambda * mean(max(0, floor - d)) instead: only samples closer than the floor are pushed apart
    diversity_coeff: float = 0.0
    diversity_floor: float | None = None
    samples_per_prompt: int = 1  # each drawn prompt appears this many times in a batch, one after another

    def validate(self) -> list[str]:
        problems = _positive("k", self.k) + _positive("lv_copies", self.lv_copies)
        problems += _positive("samples_per_prompt", self.samples_per_prompt)
        if not (math.isfinite(self.diversity_coeff) and self.diversity_coeff >= 0):
            problems.append(f"diversity_coeff: must be a finite number >= 0, got {self.diversity_coeff}")
        if self.diversity_floor is not None and not 0 < self.diversity_floor <= 2:
            problems.append(f"diversity_floor: a cosine distance in (0, 2], got {self.diversity_floor}")
        if self.diversity_coeff and self.samples_per_prompt < 2:
            problems.append(
                f"samples_per_prompt: the diversity reward compares samples of the same prompt; set it "
                f">= 2 (got {self.samples_per_prompt}), or diversity_coeff=0"
            )
        problems += _positive("early_stop", self.early_stop, 0)
        if not (math.isfinite(self.kl_coeff) and self.kl_coeff >= 0):
            problems.append(f"kl_coeff: must be a finite number >= 0, got {self.kl_coeff}")
        if self.name == "refl" and self.early_stop < 1:
            problems.append("early_stop: refl draws its stop step from the last m steps; set early_stop >= 1")
        if self.lv_timestep is not None and not 0 <= self.lv_timestep <= 999:
            problems.append(f"lv_timestep: must be a training timestep in [0, 999] or null, got {self.lv_timestep}")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            problems.append(f"loss_scale: must be a finite number > 0, got {self.loss_scale}")
        if self.hinge_margin is not None and not math.isfinite(self.hinge_margin):
            problems.append(f"hinge_margin: must be a finite number or null, got {self.hinge_margin}")
        problems += self._unused_problems()
        return problems

    def _unused_problems(self) -> list[str]:
        """Settings of one plan given to another: refused, so a typo in plan.name is not silently ignored."""
        owners = {
            "lv_include_chain": ("draft_lv", False),
            "lv_timestep": ("draft_lv", None),
            "alignprop_cuts": ("alignprop", "per_step"),
        }
        problems = [
            f"{key}: only {owner} reads it; remove it for {self.name} (got {getattr(self, key)!r})"
            for key, (owner, default) in owners.items()
            if self.name != owner and getattr(self, key) != default
        ]
        if self.name == "di_star" and (self.hinge_margin is not None or self.loss_scale != 1.0):
            problems.append(
                "hinge_margin: di_star weighs its reward with distill.alpha_rew; leave hinge_margin and "
                "loss_scale unset"
            )
        return problems


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Diff-Instruct* and its baselines (``plan.name=di_star``): a one-step generator ``x0 = g(z, c)``
    distilled from a guided teacher with a reward (trainers/distill.py).

    DI* = divergence sim, alpha_rew > 0; SIM = sim, alpha_rew 0; Diff-Instruct / DMD = kl, alpha_rew 0;
    DI++ = kl, alpha_rew > 0.
    """

    # sim: SIM's / DI*'s pseudo-Huber score divergence under a fixed sampling law, their generator loss
    # -d'(y)ᵀ(s_fake - ∇log q) (as published); sim_sampling_law: that loss plus d(y), the divergence's gradient
    # with the sampling law differentiated too (this project's objective before 2026-12); kl: Diff-Instruct / DMD / DI++
    divergence: Literal["sim", "sim_sampling_law", "kl"] = "sim"
    alpha_rew: float = 1.0  # reward weight: L = -alpha_rew * r + w(t) * D (r as the rewards section sums it)
    alpha_cfg: float = 7.5  # CFG scale of the teacher inside the divergence (<= 1: conditional teacher only)
    # pseudo-Huber d(y) = sqrt(||y||² + c²) - c on noise-prediction units: ||·|| the L2 norm over the latent (l2,
    # the papers' form) or its root mean square (rms, c per element; l2's value with c·√n, divided by √n)
    huber_norm: Literal["l2", "rms"] = "l2"
    huber_c: float = 0.03
    generator_timestep: int = 999  # t_g: the generator is the UNet's x0 prediction from pure noise at this timestep
    t_min: int = 20  # noise levels of the divergence and of the fake score's training: t ~ U{t_min..t_max}
    t_max: int = 980
    weighting: Literal["uniform", "min_snr"] = "uniform"  # w(t): 1, or min(SNR(t), 5) (Hang et al. 2023)
    fake_updates: int = 1  # fake-score optimiser steps per generator step
    fake_lr: float = 1e-3  # fake-score learning rate (AdamW; betas, eps, decay, clipping as in optim)
    fake: TrainableConfig = field(default_factory=TrainableConfig)  # the fake score's trained weights
    teacher_path: str | None = None  # reference diffusers pipeline; None = model.path (the generator's initialisation)
    # a one-step generator's LoRA folder (a di_star run's final/) to start the generator from: post-training an
    # already distilled generator, as DI* post-trains DMD2 (a full distilled model: set model.path to it instead)
    generator_init: str | None = None
    shared_base: bool = False  # one UNet: generator and fake score as two LoRA adapters, teacher = adapters off

    def validate(self) -> list[str]:
        problems = [] if self.alpha_rew >= 0 else [f"alpha_rew: must be >= 0, got {self.alpha_rew}"]
        problems += [] if self.alpha_cfg >= 0 else [f"alpha_cfg: must be >= 0, got {self.alpha_cfg}"]
        problems += [] if self.huber_c > 0 else [f"huber_c: must be > 0, got {self.huber_c}"]
        problems += [] if self.fake_lr > 0 else [f"fake_lr: must be > 0, got {self.fake_lr}"]
        problems += _positive("fake_updates", self.fake_updates)
        for key in ("generator_timestep", "t_min", "t_max"):
            value = getattr(self, key)
            problems += [] if 0 <= value <= 999 else [f"{key}: must be a training timestep in [0, 999], got {value}"]
        if self.t_min > self.t_max:
            problems.append(f"t_min: must be <= t_max={self.t_max}, got {self.t_min}")
        problems += [f"fake.{p}" for p in self.fake.validate()]
        if self.shared_base and self.fake.kind != "lora":
            problems.append("shared_base: the fake score is a LoRA adapter on the shared UNet; set fake.kind=lora")
        if self.shared_base and self.teacher_path is not None:
            problems.append(
                f"shared_base: the teacher is the shared UNet with adapters off, so it cannot come from "
                f"teacher_path={self.teacher_path!r}; set teacher_path=null or shared_base=false"
            )
        return problems


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up and gradient-norm clipping."""

    lr: float = 1e-4  # peak learning rate
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam (beta1, beta2)
    weight_decay: float = 0.01  # decoupled weight decay
    eps: float = 1e-8  # Adam epsilon
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping

    def validate(self) -> list[str]:
        problems = [] if self.lr > 0 else [f"lr: must be > 0, got {self.lr}"]
        ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        problems += [] if ok else [f"betas: expected two values in [0, 1), got {list(self.betas)}"]
        problems += _positive("warmup_steps", self.warmup_steps, 0) + _positive("grad_clip", self.grad_clip, 0)
        problems += [] if self.eps > 0 else [f"eps: must be > 0, got {self.eps}"]
        problems += _positive("weight_decay", self.weight_decay, 0)
        return problems


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where prompts come from."""

    prompts: str | None = None  # .txt (one per line) or .jsonl ({"prompt": ...}); None = built-in list
    eval_prompts: str | None = None  # held-out prompts, same formats; None = built-in held-out list


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out evaluation: base vs tuned on fixed noise, with rewards not used for training."""

    every: int = 50  # evaluate every this many steps (and at the start and end); 0 = start and end only
    images_per_prompt: int = 2  # samples per held-out prompt
    max_prompts: int = 8  # at most this many held-out prompts
    seed: int = 1234  # noise seed, fixed so evaluations are comparable
    rewards: list[RewardSpec] = field(default_factory=list)  # extra rewards scored but not trained on
    # held-out constraints each evaluation is checked against, e.g. "eval/feature_diversity>=0.3": the best
    # checkpoint that meets them all is marked (checkpoints/best, kept from pruning)
    require: list[str] = field(default_factory=list)
    stop_when_broken: bool = False  # stop the run at the first evaluation after step 0 that breaks one
    batch_size: int = 8  # images sampled and scored at once (pipeline.plan counts the evaluation's peak at it)

    def validate(self) -> list[str]:
        problems = (
            _positive("every", self.every, 0)
            + _positive("images_per_prompt", self.images_per_prompt)
            + _positive("max_prompts", self.max_prompts)
            + constraint_problems("require", self.require)
            + _positive("batch_size", self.batch_size)
        )
        if self.stop_when_broken and not self.require:
            problems.append("stop_when_broken: true needs constraints in eval.require")
        return problems


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop length, batch, checkpoints and the run folder."""

    steps: int = 100  # optimiser steps
    batch_size: int = 2  # prompts per step (per worker)
    seed: int = 0  # seeds prompt order, initial noise and plan draws
    checkpoint_every: int = 50  # save a resumable checkpoint every this many steps (and at the end)
    output_dir: str = "runs"  # run folders are created under here
    run_name: str | None = None  # folder name; None = derived from plan and seed
    resume: bool = True  # continue from the run folder's latest checkpoint if there is one
    max_bad_steps: int = 5  # consecutive non-finite losses before aborting
    fsdp: bool = False  # full fine-tunes over several workers: shard weights, gradients and AdamW state (FSDP2)
    # the GPU each worker runs on: pipeline.train checks that a step fits it before starting (pipeline.plan's
    # figures; exit 2 if not); null: no check. It does not place workers (ray.worker_resources does)
    gpu: Literal["h100", "h200", "a100", "a100-40gb", "l40s"] | None = None

    def validate(self) -> list[str]:
        return (
            _positive("steps", self.steps)
            + _positive("batch_size", self.batch_size)
            + _positive("checkpoint_every", self.checkpoint_every)
            + _positive("max_bad_steps", self.max_bad_steps)
        )


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """How the run is placed on Ray (read only by pipeline/; the core never imports Ray)."""

    enabled: bool = True  # run as a Ray Train job; false = plain in-process loop, no Ray at all
    address: str | None = None  # Ray cluster to join; None = RAY_ADDRESS if set, else a local in-process Ray
    num_workers: int = 1  # data-parallel training workers
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    worker_resources: dict[str, float] = field(
        default_factory=dict
    )  # custom resources per worker, e.g. {train_node: 1}
    num_cpus: int | None = None  # CPUs of the local in-process Ray; None = all
    storage_path: str | None = (
        None  # Ray Train run storage: a folder every node sees, or s3://bucket/prefix; None = <output_dir>/ray
    )
    s3_endpoint: str | None = None  # S3-compatible endpoint for an s3:// storage_path (http://host:port); None = AWS
    storage_retry_s: float = 900.0  # an s3:// storage that fails mid-transfer is retried for up to this many seconds
    max_failures: int = 0  # worker-group restarts after a failure (resumes from the last checkpoint)
    autoscaling: bool = False  # nodes start on demand: skip the check of the request against the live nodes
    report_every: int = 10  # forward metrics to Ray every this many steps, and at each evaluation and checkpoint
    reward_actors: int = 0  # trained reward served by this many Ray actor replicas; 0 = in the training worker
    reward_num_gpus: float = 0.0  # GPUs per reward actor (fractions share a GPU)
    reward_num_cpus: float = 1.0  # CPUs per reward actor
    reward_resources: dict[str, float] = field(
        default_factory=dict
    )  # custom resources per reward actor, e.g. {reward_node: 1}
    teacher_actors: int = 0  # plan di_star: the teacher's scores served by this many Ray actors; 0 = in the worker
    teacher_num_gpus: float = 0.0  # GPUs per teacher actor
    teacher_num_cpus: float = 1.0  # CPUs per teacher actor
    teacher_resources: dict[str, float] = field(default_factory=dict)  # custom resources per teacher actor

    def validate(self) -> list[str]:
        problems = _positive("num_workers", self.num_workers) + _positive("max_failures", self.max_failures, 0)
        problems += _positive("report_every", self.report_every) + _positive("reward_actors", self.reward_actors, 0)
        problems += _positive("storage_retry_s", self.storage_retry_s, 0)
        problems += _positive("reward_num_gpus", self.reward_num_gpus, 0) + _positive(
            "reward_num_cpus", self.reward_num_cpus, 0
        )
        problems += _positive("teacher_actors", self.teacher_actors, 0)
        problems += _positive("teacher_num_gpus", self.teacher_num_gpus, 0) + _positive(
            "teacher_num_cpus", self.teacher_num_cpus, 0
        )
        for key in ("worker_resources", "reward_resources", "teacher_resources"):
            problems += [f"{key}.{k}: must be > 0, got {v}" for k, v in getattr(self, key).items() if v <= 0]
            problems += [
                f"{key}.{k}: CPU and GPU have their own fields (cpus_per_worker, use_gpu, reward_num_*)"
                for k in getattr(self, key)
                if k in ("CPU", "GPU")
            ]
        if self.teacher_actors and not self.enabled:
            problems.append(
                "teacher_actors: Ray actors need ray.enabled=true; set teacher_actors=0 to keep the teacher "
                "in the training process"
            )
        problems += [] if self.cpus_per_worker > 0 else [f"cpus_per_worker: must be > 0, got {self.cpus_per_worker}"]
        if self.num_cpus is not None and self.num_cpus < 1:
            problems.append(f"num_cpus: must be >= 1 or null, got {self.num_cpus}")
        if (
            self.storage_path
            and "://" in self.storage_path
            and not re.fullmatch(r"s3://[^/]+(/.*)?", self.storage_path)
        ):
            problems.append(f"storage_path: expected a folder or s3://bucket/prefix, got {self.storage_path!r}")
        if self.s3_endpoint and not re.fullmatch(r"https?://[^/\s]+/?", self.s3_endpoint):
            problems.append(f"s3_endpoint: expected http(s)://host[:port], got {self.s3_endpoint!r}")
        return problems


# MLflow's registered-model names: letters, digits and . _ - (kept conservative so every store and the UI take them)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """MLflow tracking and model registry (read only by pipeline/; the core never imports MLflow)."""

    enabled: bool = True  # record the run in MLflow (rank 0 only)
    uri: str | None = (
        None  # tracking server (http://host:5000) or sqlite:///abs/path; None = $MLFLOW_TRACKING_URI, else sqlite at <output_dir>/mlflow.db
    )
    experiment: str = "reward-tuning"  # MLflow experiment holding the runs
    registered_model: str | None = None  # register every checkpoint as a version of this model; None = log models only
    log_models: bool = True  # log each checkpoint as an MLflow model (mlflow.diffusers LoRA + base-model reference)
    parent_run: str | None = None  # MLflow run this run is a child of (pipeline.tune sets it for its trials)

    def validate(self) -> list[str]:
        problems = [] if self.experiment.strip() else ["experiment: must not be empty"]
        if self.registered_model is not None and not MODEL_NAME.fullmatch(self.registered_model):
            problems.append(
                f"registered_model: {self.registered_model!r} is not a valid model name; use letters, "
                "digits and . _ - (up to 255), starting with a letter or digit"
            )
        if self.registered_model and not self.log_models:
            problems.append("registered_model: registering needs log_models=true")
        if self.uri is not None and not re.match(r"(https?|sqlite|postgresql|mysql|databricks)(\+\w+)?:", self.uri):
            problems.append(f"uri: expected http(s)://host:port or sqlite:///abs/path.db, got {self.uri!r}")
        return problems


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # read only when plan.name=di_star
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: list[RewardSpec] = field(
        default_factory=lambda: [RewardSpec(name="brightness")]
    )  # trained reward: weighted sum
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def reward_scales(self) -> str:
        """Each reward term's effective scale in the loss: its weight times the loss's coefficient on the reward
        sum (``distill.alpha_rew`` for di_star, else ``plan.loss_scale``), in the reward's own unit, e.g.
        ``"hpsv2: 100 × cosine (HPS; ...)"``; shipped recipes state it in their header, run folders in config.yaml."""
        coefficient = self.distill.alpha_rew if self.plan.name == "di_star" else self.plan.loss_scale
        terms = "; ".join(spec.scale_in_loss(coefficient) for spec in self.rewards)
        hinge = self.plan.hinge_margin
        return terms if hinge is None or self.plan.name == "di_star" else f"{terms} (while r < {hinge:g}: a hinge)"

    def eval_metrics(self) -> list[str]:
        """Every metric an evaluation logs, named as the loop names them: ``eval/trained`` (and ``eval/trained/<term>``
        for a weighted sum), ``eval/<name>`` per ``eval.rewards`` entry, and with two or more images per prompt
        ``eval/diversity`` and, when a reward scored in the worker has an image encoder, ``eval/feature_diversity``.
        Constraints and searches may name only these."""
        names = ["eval/trained", *(f"eval/trained/{term}" for term in term_names(self.rewards))]
        for spec in self.eval.rewards:
            names += [f"eval/{spec.name}", *(f"eval/{spec.name}/{term}" for term in term_names([spec]))]
        if self.eval.images_per_prompt > 1:
            names.append("eval/diversity")
            in_worker = [*([] if self.ray.reward_actors else self.rewards), *self.eval.rewards]
            if any(spec.name in IMAGE_ENCODER_REWARDS for spec in in_worker):
                names.append("eval/feature_diversity")
        return list(dict.fromkeys(names))

    def validate(self) -> list[str]:
        """Cross-section checks: the plan must fit in the sampler's steps."""
        problems, steps, plan = [], self.sampler.num_steps, self.plan
        if plan.early_stop and plan.name not in ("drtune", "refl"):
            problems.append(f"plan.early_stop: only drtune and refl stop early; set it to 0 for {plan.name}")
        if plan.name in ("draft_k", "drtune") and plan.k > steps - plan.early_stop:
            problems.append(
                f"plan.k: {plan.name} trains k={plan.k} of the {steps - plan.early_stop} steps "
                f"it runs (sampler.num_steps={steps}, plan.early_stop={plan.early_stop}); lower k"
            )
        if plan.early_stop >= steps:
            problems.append(f"plan.early_stop: must be < sampler.num_steps={steps}, got {plan.early_stop}")
        if not self.rewards:
            problems.append("rewards: list at least one reward to train on")
        if self.trainable.kind == "full" and self.model.dtype != "fp32":
            problems.append(
                f"trainable.kind: full fine-tuning trains the UNet in fp32; set model.dtype=fp32 "
                f"(got {self.model.dtype}) or use kind=lora"
            )
        problems += self._distill_problems()
        if plan.kl_coeff and (self.trainable.kind != "lora" or plan.name == "di_star"):
            problems.append(
                f"plan.kl_coeff: the DRaFT+ penalty compares the network with its LoRA adapters on and "
                f"off; it needs trainable.kind=lora and a gradient plan (got trainable.kind="
                f"{self.trainable.kind}, plan.name={plan.name}); set plan.kl_coeff=0"
            )
        problems += self._diversity_problems()
        if self.train.fsdp and self.trainable.kind != "full":
            problems.append(
                "train.fsdp: shards a full fine-tune's weights; set trainable.kind=full, or train.fsdp=false "
                "for LoRA (its adapters are small enough to replicate)"
            )
        if self.train.fsdp and self.plan.name == "di_star":
            problems.append("train.fsdp: not supported for plan.name=di_star yet (three UNets); set train.fsdp=false")
        if not math.isfinite(self.optim.lr):
            problems.append(f"optim.lr: must be finite, got {self.optim.lr}")
        return problems + unknown_metric_problems("eval.require", self.eval.require, self.eval_metrics())

    def _diversity_problems(self) -> list[str]:
        plan, problems = self.plan, []
        if self.train.batch_size % plan.samples_per_prompt:
            problems.append(
                f"plan.samples_per_prompt: train.batch_size={self.train.batch_size} must hold whole groups "
                f"of {plan.samples_per_prompt} samples of one prompt; make the batch a multiple of it"
            )
        if plan.samples_per_prompt > 1 and plan.name == "di_star":
            problems.append("plan.samples_per_prompt: di_star draws one sample per prompt; set it to 1")
        if not plan.diversity_coeff:
            return problems
        if not any(r.name in IMAGE_ENCODER_REWARDS for r in self.rewards) or self.ray.reward_actors:
            problems.append(
                f"plan.diversity_coeff: the diversity reward embeds the samples with a trained reward's "
                f"image encoder, in the training worker; list one of {', '.join(IMAGE_ENCODER_REWARDS)} "
                f"in rewards with ray.reward_actors=0, or set plan.diversity_coeff=0"
            )
        return problems

    def _distill_problems(self) -> list[str]:
        if self.plan.name != "di_star":
            return (
                []
                if not self.ray.teacher_actors
                else [f"ray.teacher_actors: only plan.name=di_star has a teacher; set it to 0 for {self.plan.name}"]
            )
        problems = []
        if self.distill.shared_base and self.trainable.kind != "lora":
            problems.append(
                "distill.shared_base: the generator is a LoRA adapter on the shared UNet; set "
                "trainable.kind=lora or distill.shared_base=false"
            )
        if self.distill.shared_base and self.ray.teacher_actors:
            problems.append(
                "ray.teacher_actors: with distill.shared_base the teacher is the worker's own UNet with "
                "adapters off; set ray.teacher_actors=0 or distill.shared_base=false"
            )
        if self.distill.generator_init is not None and self.trainable.kind != "lora":
            problems.append(
                "distill.generator_init: starts the generator's LoRA from another one; set trainable.kind="
                "lora, or for a full fine-tune set model.path to the one-step model"
            )
        if self.distill.fake.kind == "full" and self.model.dtype != "fp32":
            problems.append(
                f"distill.fake.kind: a full fake score trains in fp32; set model.dtype=fp32 (got "
                f"{self.model.dtype}) or fake.kind=lora"
            )
        return problems

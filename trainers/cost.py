"""What one optimiser step costs, known before any weight is loaded: FLOPs and peak memory per worker.

The model, rewards and trainable weights are built on the meta device from the pipeline's config files
(``trainers.models.skeleton_model``, ``rewards.build.reward_skeleton``): every shape, no values. The step's own
calls then run once each on them, counted by :class:`Counter` (FLOPs with ``torch.utils.flop_counter``'s
formulas; the bytes of tensors allocated and still alive, and their peak), and a step is composed of them:

- a gradient plan's step (:func:`plan_step`) walks the plan's step flags as ``trainers.engine.sample`` does: the
  prompt encoding; each denoiser call without gradient (LoRA folded or not); each fold of the LoRA into the
  weights; each call with gradient (with or without its input's gradient, checkpointed as configured) and
  DRaFT+'s base call; then for each final latent the VAE decode and the reward, forward and backward. Its memory
  is the largest, over the forward and the backward, of what is kept so far plus the running call's own peak;
- a DI* step (:func:`distill_step`) is short: its fake-score loss and generator loss run whole, with backward;
- a held-out evaluation (:func:`_evaluation`) is ``eval.batch_size`` prompts at a time encoded, sampled, decoded
  and scored.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts: matrix products, convolutions and attention
(its two products forward, four backward; CPU's fused attention kernel is counted the same way). Elementwise work,
the optimiser and communication are not counted. Bytes are tensor storage as an allocator sees it, without
fragmentation. ``tests/test_cost.py`` checks both against real steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

from trainers.adapters import adapters_off, folded
from trainers.config import Config
from trainers.engine import Denoise, call_denoiser
from trainers.evaluation import image_encoder
from trainers.grad_plan import StepFlags, refinement
from trainers.models import DiffusionModel
from trainers.objectives import DistillObjective, Objective, RewardObjective
from trainers.replicas import Replicas

aten = torch.ops.aten

PEAK_SLACK = 0.005  # the peak bytes are counted to this fraction
PROMPT = "a photograph of an astronaut riding a horse"  # prompts are padded to a fixed length: any will do
DRAWS = 32  # plan draws averaged for a plan with random steps (DRTune's offset, ReFL's stop, AlignProp's cuts)


def _cpu_attention(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return 2 * sdpa_flop_count(query, key, value)  # four products: dV, dP, dQ, dK


# CPU's fused attention, which FlopCounterMode leaves uncounted, counted as the meta device's attention
# (``FlopCounterMode(custom_mapping=CPU_ATTENTION)`` counts it too)
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
FLOP_RULES = {**flop_registry, **{op: shape_wrapper(rule) for op, rule in CPU_ATTENTION.items()}}


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        return None


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class Counter(TorchDispatchMode):
    """Counts the ops run inside: their :attr:`flops` (``FlopCounterMode``'s formulas, without its module hooks,
    which keep tensors alive), and the bytes of tensor storage they allocated that are still alive (:meth:`now`)
    and their :attr:`peak`. An op's output that shares an input's storage (a view, an in-place op) allocates
    nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._tracked: dict[int, tuple[StorageWeakRef, int]] = {}
        self._sum = 0  # bytes of the tracked storages, freed ones included until the next sweep
        self.peak = 0
        self.flops = 0
        self.recompute = 0  # of the flops, those of checkpointed functions rerun in backward
        self.backward = False  # set while a backward runs: a checkpointed function called then is a rerun
        self.rerunning = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = FLOP_RULES.get(func._overloadpacket)
        if rule is not None:
            flops = rule(*args, **kwargs, out_val=out)
            self.flops += flops
            self.recompute += flops if self.rerunning else 0
        inputs = {s._cdata for s in map(_storage, _tensors((args, kwargs))) if s is not None}
        for storage in map(_storage, _tensors(out)):
            if storage is not None and storage._cdata not in inputs:
                self._add(storage)
        return out

    def _add(self, storage: torch.UntypedStorage) -> None:
        known = self._tracked.get(storage._cdata)
        if known is not None and not known[0].expired():
            return
        self._tracked[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        self._sum += storage.nbytes()
        # live <= _sum, so only a _sum above the peak can be a new one; sweeping (O(tracked)) only past a slack of
        # PEAK_SLACK keeps a growing forward linear, and the peak exact to that fraction
        if self._sum > self.peak * (1 + PEAK_SLACK):
            self.peak = max(self.peak, self.now())

    def now(self) -> int:
        """Bytes allocated inside and alive now."""
        self._tracked = {k: v for k, v in self._tracked.items() if not v[0].expired()}
        self._sum = sum(n for _, n in self._tracked.values())
        return self._sum

    def restart(self) -> None:
        """Count FLOPs from 0 and the peak from the bytes alive now."""
        self.flops, self.recompute, self.peak = 0, 0, self.now()


@contextmanager
def meta_execution(counter: Counter) -> Iterator[None]:
    """Three functions swapped for the duration (not modes: checkpointing's reruns in backward must see them):

    - attention on the meta device runs as a fused kernel does, keeping O(L) bytes for the backward (the output
      and the log-sum-exp) where the meta device's default, the math form, keeps the L x L weights: the memory of
      GPUs' flash and memory-efficient kernels and of CPU's fused kernel;
    - ``torch.utils.checkpoint.checkpoint`` (the engine's step checkpointing, diffusers' in-network
      checkpointing) marks its function's rerun in ``counter``'s backward as recomputation;
    - transformers' masks treat a meta tensor as a traced one (its values unknown), so the padding mask is built,
      as for prompts shorter than the padded length, instead of read.
    """
    import transformers.masking_utils as masking

    attention, checkpoint, tracing = (
        F.scaled_dot_product_attention,
        torch.utils.checkpoint.checkpoint,
        masking.is_tracing,
    )

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta" or enable_gqa:
            return attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        kernel = aten._scaled_dot_product_flash_attention_for_cpu
        return kernel(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    def counted(function, *args, **kwargs):
        def rerun(*inner, **options):
            counter.rerunning += counter.backward
            try:
                return function(*inner, **options)
            finally:
                counter.rerunning -= counter.backward

        return checkpoint(rerun, *args, **kwargs)

    def traced(tensor=None) -> bool:
        return tracing(tensor) or (isinstance(tensor, torch.Tensor) and tensor.device.type == "meta")

    F.scaled_dot_product_attention, torch.utils.checkpoint.checkpoint, masking.is_tracing = fused, counted, traced
    try:
        yield
    finally:
        F.scaled_dot_product_attention, torch.utils.checkpoint.checkpoint = attention, checkpoint
        masking.is_tracing = tracing


@dataclass(frozen=True)
class Unit:
    """One call's cost: FLOPs forward and backward (recomputation included, and of it ``recompute``); bytes above
    those alive at its start: the forward's peak, what it keeps for the backward (its output included), and the
    backward's peak (the kept bytes included)."""

    flops: int = 0
    back_flops: int = 0
    recompute: int = 0
    peak: int = 0
    kept: int = 0
    back_peak: int = 0


def measure(forward: Callable[[], torch.Tensor], backward: bool = True) -> Unit:
    """Run ``forward`` (and the backward of its output, with a gradient of ones) and count it."""
    counter = Counter()
    with meta_execution(counter), counter:
        out = forward()
    unit = Unit(counter.flops, peak=counter.peak, kept=counter.now())
    if not backward:
        return unit
    counter.restart()
    counter.backward = True
    with meta_execution(counter), counter:
        out.backward(torch.ones_like(out))
    return replace(unit, back_flops=counter.flops, recompute=counter.recompute, back_peak=counter.peak)


PARTS = (
    "text encoding",
    "sampling without gradient",
    "trained steps, forward and backward",
    "recomputation (checkpointing)",
    "VAE decode, forward and backward",
    "reward, forward and backward",
    "fake score updates",
    "generator loss",
)


@dataclass
class StepCost:
    """One optimiser step of one worker.

    Attributes:
        flops: FLOPs by part (:data:`PARTS`), the mean over the plan's draws for a plan with random steps.
        activations: Peak bytes above the static memory (the largest over the draws).
        peak_at: The call during which that peak falls.
        static: Bytes held through the step: ``weights`` (frozen and trained; the held-out rewards' too),
            ``gradients``, ``optimizer``.
        eval_flops: FLOPs of one held-out evaluation (``eval.max_prompts`` x ``eval.images_per_prompt`` images
            sampled and scored by every reward, ``eval.batch_size`` at once), or None where not counted (DI*).
        eval_activations: The evaluation's peak bytes above the static memory (0 where not counted).
        not_counted: What the figures leave out, and why (a reward whose config files are not at hand).
    """

    flops: dict[str, float] = field(default_factory=dict)
    activations: int = 0
    peak_at: str = ""
    static: dict[str, int] = field(default_factory=dict)
    eval_flops: float | None = None
    eval_activations: int = 0
    not_counted: list[str] = field(default_factory=list)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @property
    def minimum_flops(self) -> float:
        """The step's FLOPs without recomputation."""
        return self.total_flops - self.flops.get("recomputation (checkpointing)", 0.0)

    @property
    def step_bytes(self) -> int:
        """The step's peak: the static bytes and the step's activations."""
        return sum(self.static.values()) + self.activations

    @property
    def peak_bytes(self) -> int:
        """The larger of a step's and an evaluation's peak."""
        return sum(self.static.values()) + max(self.activations, self.eval_activations)


@dataclass
class _Walk:
    """A gradient plan's step, call by call: FLOPs by part, kept bytes, and the peak so far."""

    flops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS[:6], 0.0))
    kept: int = 0
    peak: int = 0
    peak_at: str = ""
    backward: list[tuple[int, Unit, str]] = field(default_factory=list)  # (kept before, unit, name) to undo

    def candidate(self, size: int, where: str) -> None:
        if size > self.peak:
            self.peak, self.peak_at = size, where

    def forward(self, unit: Unit, part: str, where: str, graph: bool) -> None:
        self.flops[part] += unit.flops
        self.candidate(self.kept + unit.peak, where)
        if graph:
            self.backward.append((self.kept, unit, where))
            self.kept += unit.kept

    def run_backward(self, parts: dict[str, str]) -> None:
        for kept_before, unit, where in reversed(self.backward):
            self.flops[parts[where]] += unit.back_flops - unit.recompute
            self.flops["recomputation (checkpointing)"] += unit.recompute
            self.candidate(kept_before + unit.back_peak, f"backward of the {where}")


@dataclass
class PlanUnits:
    """The calls a gradient plan's step is made of, each measured once at the run's batch size."""

    text: Unit
    call: Unit  # a denoiser call without gradient
    grad: Callable[[bool], Unit]  # a call with gradient, by whether its input's gradient is needed (cached)
    decode: Unit
    reward: Unit | None  # None: served by reward actors
    fold: Unit | None = None  # folding the LoRA in (kept: the folded weights); None: calls run unfolded
    drift: Unit | None = None  # DRaFT+'s base call
    features: Unit | None = None  # the diversity term's image features

    def walk(self, flags: list[StepFlags], copies: int, include_chain: bool) -> _Walk:
        """A step with these flags (and DRaFT-LV's ``copies``), as ``trainers.engine.sample`` runs it."""
        w, x_grad, folded_in = _Walk(), False, False
        w.forward(self.text, "text encoding", "text encoders", graph=False)
        w.kept += self.text.kept
        for i, f in enumerate(flags):
            x_grad = x_grad and f.chain
            if self.fold is not None and (not f.grad) != folded_in:  # fold before calls without gradient
                folded_in = not folded_in
                if folded_in:
                    w.forward(self.fold, "sampling without gradient", "LoRA fold", graph=False)
                w.kept += self.fold.kept if folded_in else -self.fold.kept
            if not f.grad:
                w.forward(self.call, "sampling without gradient", f"denoiser call {i} (no gradient)", graph=False)
            else:
                unit = self.grad(x_grad and not f.detach_input)
                w.forward(unit, "trained steps, forward and backward", "trained denoiser call", graph=True)
                x_grad = True
                if self.drift is not None:
                    w.forward(self.drift, "sampling without gradient", "DRaFT+ base call", graph=False)
            if f.stop:
                break
        if folded_in:
            w.kept -= self.fold.kept
        finals = [x_grad] if include_chain or not copies else []
        for _ in range(copies):
            w.forward(self.grad(False), "trained steps, forward and backward", "trained denoiser call", graph=True)
            finals.append(True)
        for graph in finals:
            w.forward(self.decode, "VAE decode, forward and backward", "VAE decode", graph=graph)
            if self.reward is not None:
                w.forward(self.reward, "reward, forward and backward", "reward", graph=graph)
            if self.features is not None:
                w.forward(self.features, "reward, forward and backward", "diversity features", graph=graph)
        w.run_backward(
            {
                "trained denoiser call": "trained steps, forward and backward",
                "VAE decode": "VAE decode, forward and backward",
                "reward": "reward, forward and backward",
                "diversity features": "reward, forward and backward",
            }
        )
        return w


def _encoding(model: DiffusionModel, prompts: list[str], guidance: float):
    """The prompt encoding (and CFG's empty-prompt branch) counted: ``(unit, cond, uncond)``."""
    state: dict = {}

    def text() -> torch.Tensor:
        state["cond"] = model.family.encode_prompts(model, prompts)
        state["uncond"] = model.unconditional(len(prompts), guidance)
        return state["cond"].hidden_states

    unit = measure(text, backward=False)
    return unit, state["cond"], state["uncond"]


def measure_plan_units(cfg: Config, model: DiffusionModel, objective: RewardObjective, reward) -> PlanUnits:
    """Measure each call of a gradient plan's step once, on ``model`` as ``objective`` made it trainable."""
    b, guidance = cfg.train.batch_size, cfg.sampler.training_guidance
    prompts = [PROMPT] * b
    text_unit, cond, uncond = _encoding(model, prompts, guidance)
    latent = torch.zeros(b, *model.latent_shape, device=model.device)
    denoise = Denoise(model, objective.schedule.timesteps[0].to(model.device), cond, uncond, guidance)
    ckpt = cfg.model.step_checkpointing

    @functools.cache
    def grad_unit(input_grad: bool) -> Unit:
        x = latent.clone().requires_grad_(input_grad)
        return measure(lambda: call_denoiser(denoise, x, StepFlags(grad=True, chain=True), ckpt))

    lora = cfg.trainable.kind == "lora"
    fold = _fold_unit(model.denoiser) if lora and cfg.model.fold_lora else None
    with folded(model.denoiser) if fold is not None else nullcontext(), torch.no_grad():
        call = measure(lambda: denoise(latent), backward=False)
    drift = None
    if cfg.plan.kl_coeff:
        with torch.no_grad(), adapters_off(model.denoiser):
            drift = measure(lambda: denoise(latent), backward=False)
    x0 = latent.clone().requires_grad_(True)
    decode = measure(lambda: model.family.decode(model, x0))
    images = torch.zeros(b, 3, model.resolution, model.resolution, device=model.device, requires_grad=True)
    reward_unit = None if reward is None else measure(lambda: reward(images, prompts))
    features = None
    if cfg.plan.diversity_coeff and reward is not None:
        features = measure(lambda: image_encoder({"trained": reward})(images))
    return PlanUnits(text_unit, call, grad_unit, decode, reward_unit, fold, drift, features)


def _fold_unit(denoiser: torch.nn.Module) -> Unit | None:
    """Folding the LoRA into the base weights: its FLOPs, and the folded copies it keeps while folded."""
    context = folded(denoiser)
    unit = measure(lambda: context.__enter__(), backward=False)
    context.__exit__(None, None, None)
    return unit if unit.kept else None  # nothing to fold (no LoRA layers)


def plan_step(cfg: Config, model: DiffusionModel, objective: RewardObjective, reward, eval_rewards: list) -> StepCost:
    """A gradient plan's step: FLOPs averaged and peak bytes maximised over :data:`DRAWS` draws of its flags;
    and one held-out evaluation's FLOPs and peak."""
    units = measure_plan_units(cfg, model, objective, reward)
    refine = refinement(objective.plan)
    copies, include_chain = (refine.copies, refine.include_chain) if refine else (0, True)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    walks = {}
    for _ in range(DRAWS):
        flags = tuple(objective.plan.flags(cfg.sampler.num_steps, gen))
        walks.setdefault(flags, []).append(None)
    cost = StepCost()
    for flags, hits in walks.items():
        w = units.walk(list(flags), copies, include_chain)
        for part, value in w.flops.items():
            cost.flops[part] = cost.flops.get(part, 0.0) + value * len(hits) / DRAWS
        if w.peak > cost.activations:
            cost.activations, cost.peak_at = w.peak, w.peak_at
    scorers = [r for r in (reward, *eval_rewards) if r is not None]
    cost.eval_flops, cost.eval_activations = _evaluation(cfg, model, objective, units.fold, scorers)
    return cost


def _evaluation(cfg: Config, model: DiffusionModel, objective: RewardObjective, fold: Unit | None, rewards: list):
    """One held-out evaluation, ``(FLOPs, peak bytes)``: ``eval.batch_size`` prompts at a time encoded, sampled
    with ``sampler.num_steps`` calls without gradient (the LoRA folded as in training), decoded and scored by
    every reward, for ``eval.max_prompts x eval.images_per_prompt`` images."""
    e, guidance = cfg.eval.batch_size, cfg.sampler.guidance_scale
    prompts = [PROMPT] * e
    latent = torch.zeros(e, *model.latent_shape, device=model.device)
    images = torch.zeros(e, 3, model.resolution, model.resolution, device=model.device)
    with torch.no_grad():
        encoding, cond, uncond = _encoding(model, prompts, guidance)
        denoise = Denoise(model, objective.schedule.timesteps[0].to(model.device), cond, uncond, guidance)
        with folded(model.denoiser) if fold is not None else nullcontext():
            call = measure(lambda: denoise(latent), backward=False)
        decode = measure(lambda: model.family.decode(model, latent), backward=False)
        scoring = [measure(lambda r=r: r(images, prompts), backward=False) for r in rewards]
    batch = encoding.flops + cfg.sampler.num_steps * call.flops + decode.flops + sum(u.flops for u in scoring)
    flops = batch * cfg.eval.max_prompts * cfg.eval.images_per_prompt / e
    sampling = call.peak + (fold.kept if fold is not None else 0)
    peak = encoding.kept + max([sampling, decode.peak, *(decode.kept + u.peak for u in scoring)])
    return flops, peak


def distill_step(cfg: Config, model: DiffusionModel, objective: DistillObjective, reward) -> StepCost:
    """A DI* step, run whole: ``distill.fake_updates`` fake-score updates and the generator loss."""
    d, prompts = objective.distill, [PROMPT] * cfg.train.batch_size
    text_unit, cond, uncond = _encoding(model, prompts, cfg.distill.alpha_cfg)
    gen, replicas = torch.Generator().manual_seed(cfg.train.seed), Replicas()

    def fake_unit() -> Unit:
        state = {}
        sampling = measure(lambda: state.setdefault("inputs", d.fake_inputs(cond, gen, replicas)).x_t, backward=False)
        with d.nets.training_fake(), d.nets.role("fake"):
            loss = measure(lambda: d.fake_loss(cond, state["inputs"]))
        return replace(loss, flops=loss.flops + sampling.flops, peak=max(loss.peak, sampling.peak))

    def generator_unit() -> Unit:
        return measure(lambda: d.generator_loss(cond, uncond, prompts, reward, gen, replicas)[0])

    fake, generator = fake_unit(), generator_unit()
    n = cfg.distill.fake_updates
    cost = StepCost(
        flops={
            "text encoding": text_unit.flops,
            "fake score updates": n * (fake.flops + fake.back_flops - fake.recompute),
            "generator loss": (generator.flops + generator.back_flops - generator.recompute),
            "recomputation (checkpointing)": n * fake.recompute + generator.recompute,
        }
    )
    peaks = {
        "fake score update": max(fake.peak, fake.back_peak),
        "generator loss": max(generator.peak, generator.back_peak),
    }
    cost.peak_at = max(peaks, key=peaks.get)
    cost.activations = text_unit.kept + peaks[cost.peak_at]
    return cost


def tensor_bytes(tensors) -> int:
    """The bytes of ``tensors``, each counted once."""
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def static_bytes(modules: list[torch.nn.Module], trained: list[torch.nn.Parameter], shards: int = 1) -> dict[str, int]:
    """Bytes held through a step: every weight and buffer of ``modules`` (the trained ones included), and for the
    trained parameters their gradients and AdamW's two moments; with ``shards`` > 1 (FSDP) the trained parameters,
    their gradients and moments are split over the workers."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    trained_bytes = tensor_bytes(trained)
    frozen = tensor_bytes(tensors) - trained_bytes
    return {
        "weights": frozen + trained_bytes // shards,
        "gradients": trained_bytes // shards,
        "optimizer": 2 * trained_bytes // shards,
    }


def step_cost(
    cfg: Config, model: DiffusionModel, objective: Objective, reward, eval_rewards: list, shards: int = 1
) -> StepCost:
    """The cost of one step of ``cfg`` on ``model`` (meta device, made trainable by ``objective``); ``reward``
    is None when reward actors serve it (then neither its FLOPs nor its memory are the worker's);
    ``eval_rewards``, the held-out rewards, are held by the worker too."""
    if isinstance(objective, DistillObjective):
        cost = distill_step(cfg, model, objective, reward)
        nets = objective.distill.nets
        modules = [model.denoiser, nets.fake, *([nets.teacher] if nets.teacher is not None else [])]
        trained = [*objective.params, *objective.extra_params]
    else:
        cost = plan_step(cfg, model, objective, reward, eval_rewards)
        modules, trained = [model.denoiser], objective.params
    modules += model.frozen_modules() + ([reward] if reward is not None else []) + eval_rewards
    cost.static = static_bytes(list({id(m): m for m in modules}.values()), trained, shards)
    return cost


def predict(cfg: Config, shards: int = 1) -> tuple[StepCost, DiffusionModel]:
    """The cost of one step of ``cfg``, from its model's and rewards' config files alone (meta device); also
    the skeleton model, for what the caller reports of it."""
    from rewards.base import RewardLoadError
    from rewards.build import reward_skeleton
    from trainers.models import skeleton_model
    from trainers.objectives import build_objective

    model = skeleton_model(cfg.model)
    objective = build_objective(cfg, model)
    model.denoiser.to("meta")  # peft builds a second adapter (DI*'s shared base) off the meta device
    missing = []

    def skeleton(specs: list) -> object | None:
        try:
            return reward_skeleton(specs)
        except (OSError, RewardLoadError) as err:  # a reward's config or tokenizer files are not at hand
            missing.append(f"{', '.join(s.name for s in specs)} ({err})")
            return None

    reward = None if cfg.ray.reward_actors else skeleton(cfg.rewards)
    eval_rewards = [r for r in (skeleton([spec]) for spec in cfg.eval.rewards) if r is not None]
    cost = step_cost(cfg, model, objective, reward, eval_rewards, shards)
    cost.not_counted = missing
    return cost, model

"""Will it fit, and how long will it take: ``python -m pipeline.plan --config FILE [key=value ...] [--gpu h100]
[--gpus N]``.

Builds the config's model and rewards from their config files on the meta device (no weight is read, nothing
runs on a GPU), counts one optimiser step per worker (``trainers.cost``: FLOPs by part, the minimum without
recomputation, peak memory by part) and prints, for the named GPU, whether it fits, the predicted time per step
at a stated utilisation, images per second on N GPUs, and when it does not fit the knobs that make it fit.
``--architecture NAME`` plans a released architecture (``pipeline.architectures``) when its weights are not at
hand yet. ``pipeline.train`` runs the same check before a run whose ``train.gpu`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import ConfigError, at_least, load_config, run_cli, to_dict
from trainers.config import GPU_NAMES, Config

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    """A GPU's memory (GiB, as ``nvidia-smi`` reports its total) and dense peak TFLOP/s by dtype (spec sheets;
    fp32 without TF32, which the project does not enable)."""

    label: str
    memory_gib: float
    tflops: dict[str, float]


GPUS = {
    "h100": Gpu("H100 SXM 80GB", 79.6, {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    "h200": Gpu("H200 SXM 141GB", 140.4, {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    "a100": Gpu("A100 SXM 80GB", 80.0, {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    "a100-40gb": Gpu("A100 SXM 40GB", 40.0, {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    "l40s": Gpu("L40S 48GB", 45.0, {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
}
assert set(GPUS) == set(GPU_NAMES), "trainers.config.GPU_NAMES lists the GPUs this table describes"

# Model-FLOP utilisation assumed for the time (an assumption, docs/cost_model.md): in the team's platform notes a
# DRaFT-1 step of SD 1.5 (batch 8, T=50, CFG, ViT-H reward) took 4.83 s on an H100 in bf16 for about 747 TFLOP,
# 155 TFLOP/s, 16% of 989; scripts/gpu_check.sh measures it for this code.
UTILISATION = 0.16
CONTEXT_GIB = 1.0  # CUDA context and libraries' workspaces, outside PyTorch's allocator
FRAGMENTATION = 1.05  # the caching allocator's reserve over the bytes allocated at the peak


@dataclass
class Verdict:
    """What the plan says of one config on one GPU."""

    peak_gib: float
    needed_gib: float
    available_gib: float
    seconds: float

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.available_gib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.architectures import ARCHITECTURES

    p = argparse.ArgumentParser(
        prog="python -m pipeline.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="training config YAML (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as model.resolution=768 plan.k=3")
    p.add_argument("--gpu", choices=sorted(GPUS), help="the GPU each worker runs on (default: train.gpu, else h100)")
    p.add_argument("--gpus", type=at_least(1), help="data-parallel workers (default: ray.num_workers)")
    p.add_argument(
        "--architecture",
        choices=sorted(ARCHITECTURES),
        help="plan this released architecture instead of model.path (config files only, written to a temporary folder)",
    )
    p.add_argument(
        "--utilisation", type=float, default=UTILISATION, help=f"model-FLOP utilisation (default {UTILISATION})"
    )
    p.add_argument("--json", help="also write the plan here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.utilisation <= 1:
        raise ConfigError([f"--utilisation: a fraction in (0, 1], got {args.utilisation}"], "the command line")
    cfg = load_config(Config, args.config, args.overrides)
    gpu = args.gpu or cfg.train.gpu or "h100"
    workers = args.gpus or cfg.ray.num_workers
    with tempfile.TemporaryDirectory() as folder:
        if args.architecture:
            from pipeline.architectures import write_architecture

            cfg = _with(cfg, [f"model.path={write_architecture(args.architecture, folder)}"])
        _check_model_path(cfg)
        try:
            report = plan(cfg, GPUS[gpu], workers, args.utilisation, name=args.architecture)
        except FileNotFoundError as err:  # a folder the config names (distill.teacher_path): the message names it
            raise ConfigError([str(err)], args.config or "the command line") from None
    print(report["text"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in report.items() if k != "text"}, f, indent=2)
    return 0


def _with(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``overrides`` on top, checked as a loaded config is."""
    return load_config(Config, None, overrides, data=to_dict(cfg))


def _check_model_path(cfg: Config) -> None:
    from pipeline.architectures import RELEASED_NAMES

    if os.path.isfile(os.path.join(cfg.model.path, "model_index.json")):
        return
    known = RELEASED_NAMES.get(os.path.basename(cfg.model.path.rstrip("/")))
    hint = f"--architecture {known}" if known else "--architecture NAME (python -m pipeline.plan --help lists them)"
    raise ConfigError(
        [
            f"model.path: {cfg.model.path!r} is not a pipeline folder with a model_index.json; the plan reads its "
            f"config files (no weights); point it at the folder, or plan a released architecture with {hint}"
        ],
        "the command line",
    )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No loading bars, and no warnings that weights were not loaded (they never are here), while building."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = {name: logging.getLogger(name).level for name in ("", "diffusers", "transformers")}
    bars = {lib: lib.is_progress_bar_enabled() for lib in (diffusers_logging, transformers_logging)}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    for lib in bars:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for lib, enabled in bars.items():
            if enabled:
                lib.enable_progress_bar()


def predict_verdict(cfg: Config, gpu: Gpu, workers: int, utilisation: float):
    """``(StepCost, Verdict, model)`` of ``cfg`` on ``workers`` of ``gpu``."""
    from trainers.cost import predict

    shards = workers if cfg.train.fsdp else 1
    with quiet_loading():
        cost, model = predict(cfg, shards)
    peak = cost.peak_bytes / GIB
    rate = gpu.tflops[cfg.model.dtype] * 1e12 * utilisation
    return cost, Verdict(peak, peak * FRAGMENTATION + CONTEXT_GIB, gpu.memory_gib, cost.total_flops / rate), model


def knobs(cfg: Config, workers: int) -> list[list[str]]:
    """Changes that lower the peak memory, each a list of overrides, in the order worth trying."""
    m, changes = cfg.model, []
    for key in ("step_checkpointing", "vae_checkpointing", "unet_checkpointing"):
        if not getattr(m, key):
            changes.append([f"model.{key}=true"])
    if cfg.train.batch_size > 1:
        changes.append([f"train.batch_size={cfg.train.batch_size // 2}"])
    if cfg.eval.batch_size > 1:
        changes.append([f"eval.batch_size={max(1, cfg.eval.batch_size // 4)}"])
    if cfg.trainable.kind == "full" and workers > 1 and not cfg.train.fsdp and cfg.plan.name != "di_star":
        changes.append(["train.fsdp=true"])
    if m.dtype == "fp32" and cfg.trainable.kind == "lora":
        changes.append(["model.dtype=bf16"])
    return changes


def _run_time(cfg: Config, cost, verdict: Verdict) -> str:
    """The whole run: ``train.steps`` steps and the held-out evaluations (at the start, every ``eval.every``
    steps and at the end), at the step's rate."""
    steps = cfg.train.steps
    if cost.eval_flops is None:
        return f"a run of {steps} steps: {steps * verdict.seconds / 3600:.1f} h (evaluations not counted)"
    evaluations = 1 + (math.ceil(steps / cfg.eval.every) if cfg.eval.every else 1)
    each = cost.eval_flops / cost.total_flops * verdict.seconds
    images = cfg.eval.max_prompts * cfg.eval.images_per_prompt
    hours = (steps * verdict.seconds + evaluations * each) / 3600
    return (
        f"a run of {steps} steps with {evaluations} held-out evaluations (up to {images} images, "
        f"{cost.eval_flops / 1e12:.0f} TFLOP, {each:.0f} s each): {hours:.1f} h"
    )


def _changes(cfg: Config, workers: int) -> list[list[str]]:
    """Each knob alone, then the knobs together, one more at a time (the caller stops once one fits)."""
    single = knobs(cfg, workers)
    together = [sum(single[:n], []) for n in range(2, len(single) + 1)]
    return single + together


def plan(cfg: Config, gpu: Gpu, workers: int, utilisation: float, name: str | None = None) -> dict:
    """Count ``cfg``'s step and say whether it fits ``gpu``; ``{"text": the report, ...its figures}``."""
    cost, verdict, model = predict_verdict(cfg, gpu, workers, utilisation)
    lines = [_header(cfg, model, gpu, workers, name)]
    lines += [f"not counted, its files are not at hand: {what}" for what in cost.not_counted]
    lines += ["", "FLOPs per optimiser step, per worker     TFLOP   share"]
    total = cost.total_flops or 1.0
    for part, flops in cost.flops.items():
        if flops:
            lines.append(f"  {part:<38}{flops / 1e12:>7.2f}  {100 * flops / total:>5.1f}%")
    extra = cost.total_flops / cost.minimum_flops - 1 if cost.minimum_flops else 0.0
    lines += [
        f"  {'total':<38}{cost.total_flops / 1e12:>7.2f}",
        f"  {'minimum (no recomputation)':<38}{cost.minimum_flops / 1e12:>7.2f}  (recomputation adds {100 * extra:.0f}%)",
        "",
        "peak memory, per worker                  GiB",
    ]
    for part, size in cost.static.items():
        lines.append(f"  {part:<38}{size / GIB:>6.2f}")
    lines += [
        f"  {'activations at the peak':<38}{cost.activations / GIB:>6.2f}  ({cost.peak_at})",
        f"  {'held-out evaluation instead':<38}"
        + (
            f"{cost.eval_activations / GIB:>6.2f}  (eval.batch_size={cfg.eval.batch_size} images at once)"
            if cost.eval_flops is not None
            else "  not counted (DI*)"
        ),
        f"  {'total':<38}{verdict.peak_gib:>6.2f}",
        f"  {'with allocator and CUDA context':<38}{verdict.needed_gib:>6.2f}  "
        f"(x{FRAGMENTATION} + {CONTEXT_GIB:g} GiB) of {gpu.memory_gib:g} GiB on the {gpu.label}",
        "",
        f"time at {100 * utilisation:.0f}% of the {gpu.label}'s {gpu.tflops[cfg.model.dtype]:g} TFLOP/s "
        f"({cfg.model.dtype}): {verdict.seconds:.2f} s/step; {workers * cfg.train.batch_size / verdict.seconds:.2f} "
        f"images/s on {workers} GPU{'s' if workers > 1 else ''} (communication not counted)",
        _run_time(cfg, cost, verdict),
    ]
    suggestions = []
    if verdict.fits:
        lines.append(f"verdict: fits ({verdict.needed_gib:.1f} of {gpu.memory_gib:g} GiB)")
    else:
        lines.append(
            f"verdict: does not fit: needs {verdict.needed_gib:.1f} GiB, the {gpu.label} has {gpu.memory_gib:g}"
        )
        for change in _changes(cfg, workers):
            if len(change) > 1 and any(s["fits"] for s in suggestions):
                break  # one knob alone is enough
            try:
                changed = _with(cfg, change)
            except ConfigError:  # e.g. a batch that no longer holds whole groups of plan.samples_per_prompt
                continue
            _, alternative, _ = predict_verdict(changed, gpu, workers, utilisation)
            suggestions.append({"overrides": change, "needed_gib": alternative.needed_gib, "fits": alternative.fits})
            mark = "fits" if alternative.fits else "still too large"
            lines.append(
                f"  {' '.join(change)}: {alternative.needed_gib:.1f} GiB, {alternative.seconds:.2f} s/step ({mark})"
            )
            if len(change) > 1 and alternative.fits:
                break
    return {
        "text": "\n".join(lines),
        "gpu": gpu.label,
        "workers": workers,
        "flops": cost.flops,
        "minimum_flops": cost.minimum_flops,
        "memory_bytes": {**cost.static, "activations": cost.activations, "evaluation": cost.eval_activations},
        "peak_at": cost.peak_at,
        "eval_flops": cost.eval_flops,
        "not_counted": cost.not_counted,
        **dataclasses.asdict(verdict),
        "fits": verdict.fits,
        "utilisation": utilisation,
        "suggestions": suggestions,
    }


def _header(cfg: Config, model, gpu: Gpu, workers: int, name: str | None) -> str:
    def millions(module, trained: bool = False) -> float:
        return sum(p.numel() for p in module.parameters() if p.requires_grad == trained) / 1e6

    encoders = " + ".join(f"{millions(e):.1f}" for e in model.text_encoders)
    frozen, trained = millions(model.denoiser), millions(model.denoiser, trained=True)
    denoiser = f"{frozen:.1f} M + {trained:.1f} M LoRA" if frozen else f"{trained:.1f} M, all trained"
    source = f"architecture {name}" if name else cfg.model.path
    p = cfg.plan
    knobs_of = {"draft_k": f" K={p.k}", "drtune": f" K={p.k} m={p.early_stop}", "refl": f" m={p.early_stop}"}
    return (
        f"{type(model.family).__name__} ({source}; config files only, no weights read): denoiser {denoiser}, "
        f"VAE {millions(model.vae):.1f} M, text {encoders} M parameters\n"
        f"step: {p.name}{knobs_of.get(p.name, '')}, T={cfg.sampler.num_steps}, batch {cfg.train.batch_size} per "
        f"worker, {model.resolution} px, {cfg.model.dtype}, {cfg.trainable.kind}"
        f"{f' r{cfg.trainable.rank}' if cfg.trainable.kind == 'lora' else ''}; {workers} x {gpu.label}"
    )


def fit_check(cfg: Config, refuse: bool = True) -> str:
    """``pipeline.train``'s check when ``train.gpu`` is set: the plan's verdict line; when the step cannot fit,
    raises ``ConfigError`` (exit 2) naming the knobs, or with ``refuse=False`` says so in the line."""
    gpu = GPUS[cfg.train.gpu]
    if not os.path.isfile(os.path.join(cfg.model.path, "model_index.json")):  # a hub id: no config files here
        return "plan: not checked: model.path is not a local pipeline folder (python -m pipeline.plan --architecture)"
    cost, verdict, _ = predict_verdict(cfg, gpu, cfg.ray.num_workers, UTILISATION)
    line = (
        f"plan: {verdict.needed_gib:.1f} of {gpu.memory_gib:g} GiB on the {gpu.label} (train.gpu), "
        f"{cost.total_flops / 1e12:.1f} TFLOP per step, about {verdict.seconds:.1f} s/step at "
        f"{100 * UTILISATION:.0f}% utilisation"
    )
    if verdict.fits:
        return line
    if not refuse:
        return f"{line}; it does not fit, starting anyway (--skip-fit-check)"
    ways = [" ".join(c) for c in knobs(cfg, cfg.ray.num_workers)]
    raise ConfigError(
        [
            f"train.gpu: a step needs {verdict.needed_gib:.1f} GiB but the {gpu.label} has {gpu.memory_gib:g} "
            f"(python -m pipeline.plan --config ... shows where it goes); lower it with one of: "
            f"{'; '.join(ways) or 'a smaller model.resolution'}, or pass --skip-fit-check to start anyway"
        ],
        "the fit check",
    )


if __name__ == "__main__":
    run_cli(main)

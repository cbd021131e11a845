"""Benchmark every gradient plan: seconds per step, images per second, peak memory.

``python -m pipeline.bench`` builds a random-weight model of the chosen size (``tiny`` on CPU,
``sd15`` when a GPU is present), then times a few optimiser steps of each plan in a fresh
subprocess so that each plan's peak memory is its own. CPU memory is the peak resident set size
(and its rise over the loaded model); GPU memory is ``torch.cuda.max_memory_allocated``.

``--baseline naive`` runs, on the same model, prompts, noise and plan flags, the loop users write
first (:func:`naive_loss`: peft's unmerged LoRA in every call, an eager no-gradient prefix, plain
autograd through the trained steps, diffusers' ``DDIMScheduler.step``), interleaved step by step with
the engine's, and prints the ratio; it first checks that both give the same gradient. Peak memory of
each comes from its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PLANS = {  # label -> config overrides
    "draft (full)": ["plan.name=draft"],
    "draft_k K=1": ["plan.name=draft_k", "plan.k=1"],
    "draft_k K=5": ["plan.name=draft_k", "plan.k=5"],
    "draft_lv n=2": ["plan.name=draft_lv", "plan.lv_copies=2"],
    "drtune K=5": ["plan.name=drtune", "plan.k=5"],
    "drtune K=5 m=10": ["plan.name=drtune", "plan.k=5", "plan.early_stop=10"],
    "refl m=10": ["plan.name=refl", "plan.early_stop=10"],
    "alignprop": ["plan.name=alignprop"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.config import at_least

    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--family", choices=["sd", "flux"], default="sd", help="random model's family (default sd)")
    p.add_argument("--size", choices=["tiny", "sd15"], help="model size (default: sd15 on GPU, tiny on CPU)")
    p.add_argument("--model", help="use this pipeline folder instead of building a random one")
    p.add_argument("--steps", type=at_least(1), nargs="+", default=[20, 50], help="sampling step counts T to measure")
    p.add_argument("--batch-size", type=at_least(1), default=1)
    p.add_argument("--iters", type=at_least(1), default=3, help="timed optimiser steps per plan (after 1 warm-up)")
    p.add_argument("--plans", nargs="+", choices=list(PLANS), default=list(PLANS), metavar="PLAN")
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides, e.g. model.dtype=bf16")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--baseline", choices=["naive"], help="time the engine side by side with a naive loop")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: run one measurement
    p.add_argument("--job", nargs="+", help=argparse.SUPPRESS)  # internal: side|engine|naive MODEL OVERRIDES...
    return p.parse_args(argv)


def measure(model_dir: str, overrides: list[str], iters: int) -> dict:
    """Time ``iters`` optimiser steps after one warm-up step, in this process."""
    import resource
    import time

    import torch

    from pipeline.config import load_config
    from trainers.config import Config
    from trainers.loop import build_trainer, peak_memory_mb, train_step

    cfg = load_config(Config, None, [f"model.path={model_dir}", "rewards=[{name: brightness}]", *overrides])
    tr = build_trainer(cfg)
    cuda = tr.model.device.type == "cuda"
    loaded_mb = (
        (torch.cuda.memory_allocated() / 2**20) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    train_step(tr)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        train_step(tr)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = peak_memory_mb(tr.model.device)
    step = sorted(seconds)[len(seconds) // 2]
    return {
        "s_per_step": step,
        "images_per_s": cfg.train.batch_size / step,
        "peak_mb": peak,
        "peak_over_model_mb": peak - loaded_mb,
        "device": str(tr.model.device),
    }


def naive_loss(tr, prompts: list[str], x_T, flags):
    """The loop a user writes first, on the trainer's model and reward: every call through peft's
    unmerged LoRA, no-gradient steps under ``torch.no_grad``, trained steps with plain autograd (no
    recomputation), diffusers' ``DDIMScheduler.step``, the VAE decoded without checkpointing. DDIM
    families only; DRaFT-LV's re-noised copies are not written here."""
    import torch
    from diffusers import DDIMScheduler

    model, s = tr.model, tr.cfg.sampler
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(s.num_steps)
    cond = model.family.encode_prompts(model, prompts)
    uncond = model.family.encode_negative(model, len(prompts))
    both = type(cond).cat([uncond, cond])
    x = x_T
    for t, f in zip(scheduler.timesteps, flags):
        x = x if f.chain else x.detach()
        x_in = x.detach() if f.detach_input else x
        with torch.set_grad_enabled(f.grad):
            out_uncond, out_cond = model.family.denoise(model, torch.cat([x_in, x_in]), t.to(x.device), both).chunk(2)
        eps = out_uncond + s.guidance_scale * (out_cond - out_uncond)
        eps = eps if f.grad else eps.detach()
        step = scheduler.step(eps, t, x, eta=s.eta)
        if f.stop:
            x = step.pred_original_sample
            break
        x = step.prev_sample
    return -tr.reward(model.family.decode(model, x), prompts).mean()


def same_work(model_dir: str, overrides: list[str]) -> dict:
    """A trainer and one fixed batch (prompts, noise, plan flags); ``loss[loop]()`` is that batch's loss
    through the engine (``engine``) or the naive loop (``naive``)."""
    import torch

    from pipeline.config import load_config
    from trainers.config import Config
    from trainers.loop import build_trainer
    from trainers.objectives import plan_loss

    cfg = load_config(Config, None, [f"model.path={model_dir}", "rewards=[{name: brightness}]", *overrides])
    tr = build_trainer(cfg)
    prompts = tr.sampler.next_batch(cfg.train.batch_size)
    x_T = torch.randn(len(prompts), *tr.model.latent_shape, generator=torch.Generator().manual_seed(0)).to(
        tr.model.device
    )
    flags = tr.objective.plan.flags(cfg.sampler.num_steps, torch.Generator().manual_seed(1))
    return {
        "tr": tr,
        "loss": {
            "engine": lambda: plan_loss(tr, prompts, x_T, flags, None)[0],
            "naive": lambda: naive_loss(tr, prompts, x_T, flags),
        },
    }


def optimiser_step(tr, loss) -> None:
    tr.optimizer.zero_grad(set_to_none=True)
    loss().backward()
    tr.optimizer.step()


def side_by_side(model_dir: str, overrides: list[str], iters: int) -> dict:
    """The engine's optimiser step and the naive loop's on the same prompts, noise and flags, alternating,
    after checking that their first gradients agree: the median seconds of each."""
    import time

    import torch

    work = same_work(model_dir, overrides)
    tr, losses = work["tr"], work["loss"]
    grads = {name: torch.autograd.grad(loss(), tr.params) for name, loss in losses.items()}
    scale = max(float(g.abs().max()) for g in grads["naive"])
    gap = max(float((e - n).abs().max()) for e, n in zip(grads["engine"], grads["naive"])) / scale
    seconds = {name: [] for name in losses}
    for _ in range(iters + 1):  # the first round warms up
        for name, loss in losses.items():
            start = time.perf_counter()
            optimiser_step(tr, loss)
            if tr.model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    median = {name: sorted(v[1:])[len(v[1:]) // 2] for name, v in seconds.items()}
    return {
        "engine_s": median["engine"],
        "naive_s": median["naive"],
        "grad_gap": gap,
        "images_per_s": tr.cfg.train.batch_size / median["engine"],
    }


def in_subprocess(job: str, model_dir: str, overrides: list[str], iters: int):
    """Run ``side`` (:func:`side_by_side`) or ``engine``/``naive`` (:func:`peak_memory`) in a fresh interpreter
    started from this small one: Linux carries a process's peak RSS over ``fork`` and ``exec``, so a child of
    a process that has already trained would report its parent's peak."""
    cmd = [sys.executable, "-m", "pipeline.bench", "--iters", str(iters), "--job", job, model_dir, *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(model_dir: str, overrides: list[str], iters: int, loop: str) -> float:
    """Peak memory (MB) of ``iters`` optimiser steps of ``loop`` (``engine`` or ``naive``) in this process."""
    from trainers.loop import peak_memory_mb

    work = same_work(model_dir, overrides)
    for _ in range(iters):
        optimiser_step(work["tr"], work["loss"][loop])
    return peak_memory_mb(work["tr"].model.device)


def run_one(model_dir: str, overrides: list[str], iters: int) -> dict:
    """Measure in a fresh interpreter so the peak memory belongs to this plan alone."""
    cmd = [sys.executable, "-m", "pipeline.bench", "--iters", str(iters), "--one", model_dir, *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1:], args.iters)))
        return 0
    if args.job:
        job, model_dir, *overrides = args.job
        result = (
            side_by_side(model_dir, overrides, args.iters)
            if job == "side"
            else peak_memory(model_dir, overrides, args.iters, job)
        )
        print(json.dumps(result))
        return 0
    import torch

    if args.baseline and args.family != "sd":
        from pipeline.config import ConfigError

        raise ConfigError(["--baseline: the naive loop is written for DDIM families; use --family sd"], "command line")
    size = args.size or ("sd15" if torch.cuda.is_available() and args.family == "sd" else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or _build(tmp, args.family, size)
        rows = []
        what = args.model or f"{args.family} {size} (random weights)"
        print(f"model: {what}, batch {args.batch_size}, guidance 7.5 (FLUX: embedded), LoRA r4")
        if args.baseline:
            return compare_naive(model_dir, args)
        print(f"{'plan':<18}{'T':>4}{'s/step':>10}{'img/s':>9}{'peak MB':>10}{'over model MB':>15}")
        for steps in args.steps:
            for label in args.plans:
                overrides = [
                    *PLANS[label],
                    f"sampler.num_steps={steps}",
                    f"train.batch_size={args.batch_size}",
                    "model.step_checkpointing=true",
                    *args.extra,
                ]
                row = {"plan": label, "T": steps, **run_one(model_dir, overrides, args.iters)}
                rows.append(row)
                print(_format(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


NAIVE_PLANS = ("draft_k K=1", "draft (full)", "drtune K=5", "refl m=10", "alignprop")  # the naive loop has no LV copies


def compare_naive(model_dir: str, args: argparse.Namespace) -> int:
    """One line per plan and T: engine and naive s/step, the speedup, both peaks, images/s, the gradient check."""
    rows = []
    for steps in args.steps:
        for label in [p for p in args.plans if p in NAIVE_PLANS]:
            overrides = [
                *PLANS[label],
                f"sampler.num_steps={steps}",
                f"train.batch_size={args.batch_size}",
                *args.extra,
            ]
            row = {"plan": label, "T": steps, **in_subprocess("side", model_dir, overrides, args.iters)}
            row |= {f"peak_{loop}_mb": in_subprocess(loop, model_dir, overrides, 2) for loop in ("engine", "naive")}
            rows.append(row)
            print(
                f"{label} T={steps} | engine {row['engine_s']:.3f} s/step | naive {row['naive_s']:.3f} s/step | "
                f"speedup {row['naive_s'] / row['engine_s']:.2f}x | peak MB {row['peak_engine_mb']:.0f} / "
                f"{row['peak_naive_mb']:.0f} | {row['images_per_s']:.2f} images/s | first-step gradients agree to "
                f"{row['grad_gap']:.1e} of their largest entry",
                flush=True,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


def _build(tmp: str, family: str, size: str) -> str:
    from pipeline.config import ConfigError
    from pipeline.random_models import build_random_flux, build_random_sd

    if family == "flux":
        if size != "tiny":
            raise ConfigError([f"--size: the random FLUX model comes in size tiny, got {size!r}"], "command line")
        return build_random_flux(os.path.join(tmp, "flux"), size)
    return build_random_sd(os.path.join(tmp, size), size)


def _format(row: dict) -> str:
    if "error" in row:
        return f"{row['plan']:<18}{row['T']:>4}  failed: {row['error']}"
    return (
        f"{row['plan']:<18}{row['T']:>4}{row['s_per_step']:>10.3f}{row['images_per_s']:>9.2f}"
        f"{row['peak_mb']:>10.0f}{row['peak_over_model_mb']:>15.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())

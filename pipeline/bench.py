"""Benchmark every gradient plan: seconds per step, images per second, peak memory.

``python -m pipeline.bench`` builds a random-weight model of the chosen size (``tiny`` on CPU,
``sd15`` when a GPU is present), then times a few optimiser steps of each plan in a fresh
subprocess so that each plan's peak memory is its own. CPU memory is the peak resident set size
(and its rise over the loaded model); GPU memory is ``torch.cuda.max_memory_allocated``.
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
    p = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "sd15"], help="model size (default: sd15 on GPU, tiny on CPU)")
    p.add_argument("--model", help="use this pipeline folder instead of building a random one")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="sampling step counts T to measure")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed optimiser steps per plan (after 1 warm-up)")
    p.add_argument("--plans", nargs="+", choices=list(PLANS), default=list(PLANS), metavar="PLAN")
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides, e.g. model.dtype=bf16")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: run one measurement
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
    loaded_mb = (torch.cuda.memory_allocated() / 2**20) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
    return {"s_per_step": step, "images_per_s": cfg.train.batch_size / step, "peak_mb": peak,
            "peak_over_model_mb": peak - loaded_mb, "device": str(tr.model.device)}


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
    import torch

    size = args.size or ("sd15" if torch.cuda.is_available() else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or _build(tmp, size)
        rows = []
        print(f"model: {args.model or size + ' (random weights)'}, batch {args.batch_size}, CFG 7.5, LoRA r4")
        print(f"{'plan':<18}{'T':>4}{'s/step':>10}{'img/s':>9}{'peak MB':>10}{'over model MB':>15}")
        for steps in args.steps:
            for label in args.plans:
                overrides = [*PLANS[label], f"sampler.num_steps={steps}", f"train.batch_size={args.batch_size}",
                             "model.step_checkpointing=true", *args.extra]
                row = {"plan": label, "T": steps, **run_one(model_dir, overrides, args.iters)}
                rows.append(row)
                print(_format(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


def _build(tmp: str, size: str) -> str:
    from pipeline.random_models import build_random_sd

    return build_random_sd(os.path.join(tmp, size), size)


def _format(row: dict) -> str:
    if "error" in row:
        return f"{row['plan']:<18}{row['T']:>4}  failed: {row['error']}"
    return (f"{row['plan']:<18}{row['T']:>4}{row['s_per_step']:>10.3f}{row['images_per_s']:>9.2f}"
            f"{row['peak_mb']:>10.0f}{row['peak_over_model_mb']:>15.0f}")


if __name__ == "__main__":
    sys.exit(main())

"""Predicted against measured: ``python -m pipeline.bench.cost --architecture sd15 [--plans ...] [--extra k=v ...]``.

For each plan, the cost model's figures (``trainers.cost``, from the config files alone) beside a real optimiser
step of the same config on a model built from the same files with random weights (``--architecture``: a released
architecture, ``pipeline.architectures``; or ``--model FOLDER``): FLOPs (the real step counted by
``trainers.cost.Counter``), and peak memory (on CPU the peak of tensor bytes, weights and AdamW state included; on
CUDA ``torch.cuda.max_memory_allocated``). On CUDA it also times the step and gives the model-FLOP utilisation
against a bf16 matmul measured in the same run, and the plan's predicted time at that utilisation. The reward is
``brightness`` unless ``--reward hpsv2`` (an open_clip ViT-H-14 with random weights, saved and loaded as a user's
checkpoint is). One line per plan; ``--json`` keeps them. ``scripts/gpu_check.sh`` runs it for every family.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from pipeline.bench.plans import PLANS

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.architectures import ARCHITECTURES
    from pipeline.config import at_least

    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench.cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--architecture", choices=sorted(ARCHITECTURES), help="a released architecture")
    where.add_argument("--model", help="a pipeline folder (its config files; its weights are not read)")
    p.add_argument("--plans", nargs="+", choices=list(PLANS), default=["draft_k K=1"], metavar="PLAN")
    p.add_argument("--steps", type=at_least(1), default=20, help="sampling steps T (default 20)")
    p.add_argument("--batch-size", type=at_least(1), default=1)
    p.add_argument("--iters", type=at_least(1), default=2, help="timed steps on CUDA, after one warm-up")
    p.add_argument("--reward", choices=["brightness", "hpsv2"], default="brightness")
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides, e.g. model.resolution=128")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model
        if args.architecture:
            from pipeline.architectures import write_architecture

            model_dir = write_architecture(args.architecture, os.path.join(folder, "model"))
        reward = reward_overrides(args.reward, folder)
        peak = matmul_tflops() if torch.cuda.is_available() else None
        rows = []
        for label in args.plans:
            overrides = [
                f"model.path={model_dir}",
                f"sampler.num_steps={args.steps}",
                f"train.batch_size={args.batch_size}",
                *reward,
                *PLANS[label],
                *args.extra,
            ]
            row = {"plan": label, **compare(overrides, args.iters, peak)}
            rows.append(row)
            print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


def reward_overrides(name: str, folder: str) -> list[str]:
    if name == "brightness":
        return ["rewards=[{name: brightness}]"]
    import open_clip

    path = os.path.join(folder, "random_vit_h_14.pt")
    torch.save(open_clip.create_model("ViT-H-14").state_dict(), path)
    return [f"rewards=[{{name: hpsv2, checkpoint: {path}}}]"]


def matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    """The bf16 matmul rate this GPU reaches, TFLOP/s (the utilisation's reference)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def compare(overrides: list[str], iters: int, matmul: float | None) -> dict:
    """The plan's prediction and a real step's measurement of one config."""
    from pipeline.config import load_config
    from trainers.config import Config
    from trainers.cost import predict

    cfg = load_config(Config, None, overrides)
    cost, _ = predict(cfg)
    flops, peak, seconds = real_step(cfg, iters)
    row = {
        "predicted_tflop": cost.total_flops / 1e12,
        "measured_tflop": flops / 1e12,
        "predicted_gib": cost.step_bytes / GIB,
        "measured_gib": peak / GIB,
        "peak_at": cost.peak_at,
    }
    if seconds is not None:
        row |= {"s_per_step": seconds, "achieved_tflops": flops / seconds / 1e12, "matmul_tflops": matmul}
        row["mfu"] = row["achieved_tflops"] / matmul
    return row


def real_step(cfg, iters: int) -> tuple[int, int, float | None]:
    """``(FLOPs, peak bytes, s/step or None)`` of real steps of ``cfg`` on a model built from its config files
    with random weights: after a warm-up step (AdamW's state), one step counted by ``trainers.cost.Counter``;
    on CUDA then ``iters`` timed steps and their ``max_memory_allocated``."""
    from trainers.cost import Counter
    from trainers.loop import build_trainer, train_step
    from trainers.models import model_from_configs, resolve_device

    device = resolve_device(cfg.model.device)
    tr = build_trainer(cfg, model=model_from_configs(cfg.model, device))
    train_step(tr)
    counter = Counter()
    with counter:
        train_step(tr)
    if device.type != "cuda":
        return counter.flops, held_bytes(tr) + counter.peak, None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        train_step(tr)
    torch.cuda.synchronize()
    return counter.flops, torch.cuda.max_memory_allocated(), (time.perf_counter() - start) / iters


def held_bytes(tr) -> int:
    """The tensor bytes a trainer holds between steps: every weight and buffer of its networks, and the optimisers'
    moments (gradients are freed at the start of a step)."""
    from trainers.cost import tensor_bytes

    distill = getattr(tr.objective, "distill", None)
    networks = [tr.model.denoiser, *tr.model.frozen_modules(), tr.reward]
    optimizers = [tr.optimizer]
    if distill is not None:
        networks += [m for m in (distill.nets.fake, distill.nets.teacher) if m is not None]
        optimizers.append(distill.fake_optimizer)
    tensors = [t for m in networks for t in (*m.parameters(), *m.buffers())]
    tensors += [v for o in optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    return tensor_bytes(tensors)


def format_row(row: dict) -> str:
    line = (
        f"{row['plan']:<18} TFLOP predicted {row['predicted_tflop']:.3f} measured {row['measured_tflop']:.3f}; "
        f"GiB predicted {row['predicted_gib']:.2f} measured {row['measured_gib']:.2f} "
        f"(ratio {row['predicted_gib'] / row['measured_gib']:.3f}, peak at {row['peak_at']})"
    )
    if "s_per_step" in row:
        line += (
            f"; {row['s_per_step']:.2f} s/step, {row['achieved_tflops']:.0f} TFLOP/s = {100 * row['mfu']:.0f}% "
            f"of the {row['matmul_tflops']:.0f} TFLOP/s bf16 matmul"
        )
    return line


if __name__ == "__main__":
    from pipeline.config import run_cli

    run_cli(main)

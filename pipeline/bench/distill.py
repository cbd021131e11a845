"""Benchmark Diff-Instruct* and its baselines on the toy world: held-out reward and diversity of the one-step
generator against the teacher's one-step and multi-step samples, seconds per step, images per second, memory.

``python -m pipeline.bench.distill`` trains ``pipeline/configs/distar_toy.yaml`` once per variant, each in
its own process (so peak memory is its own, and without Ray or MLflow so the timings are the algorithm's),
and prints one row per variant. The target (issue 6): DI*'s held-out reward beats the teacher's one-step
output, comes within 10% of (or beats) its multi-step output, and its diversity (of the first reward's image
features, such as CLIP's, else of pixels) is at least half the multi-step teacher's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pipeline.config import run_cli

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "distar_toy.yaml")
VARIANTS = {  # label -> overrides of the config (DI* as shipped: the papers' loss)
    "di_star": [],
    "sim": ["distill.alpha_rew=0"],
    "diff_instruct": ["distill.divergence=kl", "distill.alpha_rew=0"],
    "di_plus_plus": ["distill.divergence=kl"],
    "di_star_sampling_law": ["distill.divergence=sim_sampling_law"],  # the objective trained before 2026-12
    "sim_sampling_law": ["distill.divergence=sim_sampling_law", "distill.alpha_rew=0"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench.distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=CONFIG, help="DI* training config (default: the toy world's)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--metric", default="trained", help="held-out score compared (default: the trained reward)")
    p.add_argument("--output-dir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="more config overrides, e.g. train.steps=200")
    return p.parse_args(argv)


def run_variant(config: str, name: str, overrides: list[str], out: str) -> dict:
    """Train one variant in a subprocess; its summary plus mean step timings and peak memory."""
    command = [
        sys.executable,
        "-m",
        "pipeline.train",
        "--config",
        config,
        *overrides,
        "ray.enabled=false",
        "tracking.enabled=false",
        f"train.output_dir={out}",
        f"train.run_name={name}",
        "train.resume=false",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    run_dir = os.path.join(out, name)
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    steps = timed_steps(run_dir)
    perf = {key: statistics.median(m[key] for m in steps) for key in ("perf/step_seconds", "perf/images_per_second")}
    return {**summary, **perf, "perf/peak_memory_mb": max(m["perf/peak_memory_mb"] for m in steps)}


def timed_steps(run_dir: str) -> list[dict]:
    """The metrics of a run's optimiser steps from its ``metrics.jsonl``, without the first (it warms up)."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [m for m in map(json.loads, f) if "perf/step_seconds" in m][1:]


def row(name: str, result: dict, metric: str) -> dict:
    """What the table shows for one variant, and whether DI*'s target holds (on the feature diversity of
    the first reward with an image encoder, else on the pixel diversity)."""
    held, teacher = result["held_out"], result["teacher"]
    gen, one, multi = (
        held[metric]["tuned"],
        teacher[f"teacher/one_step/{metric}"],
        teacher[f"teacher/multi_step/{metric}"],
    )
    key = "feature_diversity" if "feature_diversity" in held else "diversity"
    diversity = {k: (held[k]["tuned"], teacher[f"teacher/multi_step/{k}"]) for k in ("diversity", key)}
    return {
        "variant": name,
        "generator": gen,
        "init": held[metric]["base"],
        "teacher_one_step": one,
        "teacher_multi_step": multi,
        "of_multi_step": gen / multi,
        "diversity": diversity,
        "s_per_step": result["perf/step_seconds"],
        "images_per_s": result["perf/images_per_second"],
        "peak_mb": result["perf/peak_memory_mb"],
        "target_met": gen > one and gen >= 0.9 * multi and diversity[key][0] >= 0.5 * diversity[key][1],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.output_dir or tempfile.mkdtemp(prefix="bench-distill-")
    rows = [
        row(name, run_variant(args.config, name, VARIANTS[name] + args.overrides, out), args.metric)
        for name in args.variants
    ]
    print(
        f"held-out {args.metric} (generator after training; init = before); diversity = mean pairwise distance "
        "per prompt of pixels (px) and of image features (feat), generator / multi-step teacher"
    )
    print(
        f"{'variant':<14} {'init':>6} {'gen':>6} {'T 1-step':>8} {'T multi':>8} {'gen/multi':>9} {'div px':>13} "
        f"{'div feat':>13} {'s/step':>7} {'img/s':>6} {'peak MB':>8}  target"
    )
    for r in rows:
        px, feat = r["diversity"]["diversity"], r["diversity"].get("feature_diversity", (float("nan"),) * 2)
        print(
            f"{r['variant']:<14} {r['init']:6.1f} {r['generator']:6.1f} {r['teacher_one_step']:8.1f} "
            f"{r['teacher_multi_step']:8.1f} {r['of_multi_step']:9.2f} {px[0]:6.3f}/{px[1]:6.3f} "
            f"{feat[0]:6.3f}/{feat[1]:6.3f} {r['s_per_step']:7.3f} {r['images_per_s']:6.1f} {r['peak_mb']:8.0f}  "
            f"{'met' if r['target_met'] else 'not met'}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main)

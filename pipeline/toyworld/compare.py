"""Run every algorithm the quickstart lists on the toy world and print one comparison table.

For each ``plan:`` line in ``pipeline/configs/quickstart.yaml`` (the run itself is that config with the
line swapped in, in-process, no Ray): held-out reward gain with its bootstrap 95% interval, both
held-out diversity measures (feature: CLIP image embeddings; pixel: 32 px thumbnails), the held-out
colour adherence read back from the pixels (``pipeline.toyworld.measure``, independent of the learned
reward; 8 samples per held-out prompt, DDIM at the config's steps and guidance), seconds per step,
images per second and peak resident memory.

    python -m pipeline.toyworld.compare --out runs/compare   # about 15 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor

import yaml


def plan_lines(config_path: str) -> list[str]:
    """The ``plan:`` line of a config and the commented alternatives under it."""
    with open(config_path, encoding="utf-8") as f:
        return [m.group(1) for line in f if (m := re.match(r"^#? ?(plan: \{.*?\})", line))]


def run_plan(line: str, config_path: str, out: str, overrides: list[str]) -> dict:
    """Train the config with ``line`` as its plan; return the row of the table."""
    from pipeline.config import from_dict, load_config, to_dict
    from trainers.config import Config
    from trainers.loop import run

    data = to_dict(load_config(Config, config_path, overrides))
    data["plan"] = yaml.safe_load(line)["plan"]
    plan = data["plan"]
    knobs = (("kl_coeff", "kl"), ("diversity_coeff", "div"), ("diversity_floor", "floor"))
    data["train"]["run_name"] = plan["name"] + "".join(
        f"-{short}{plan[key]:g}" for key, short in knobs if plan.get(key)
    )
    data["train"]["output_dir"] = out
    cfg = from_dict(Config, data)
    result = run(cfg)
    with open(os.path.join(result.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        steps = [json.loads(row) for row in f if '"train/loss"' in row]
    adherence = {
        "base": held_out_colour_adherence(cfg, None),
        "tuned": held_out_colour_adherence(cfg, result.final_model_dir),
    }
    seconds = sorted(s["perf/step_seconds"] for s in steps)[len(steps) // 2]
    return {
        "plan": line,
        "held_out": result.held_out,
        "colour_both": adherence,
        "step_seconds": seconds,
        "images_per_second": cfg.train.batch_size / seconds,
        "peak_mb": max(s["perf/peak_memory_mb"] for s in steps),
    }


def held_out_colour_adherence(cfg, weights: str | None, n: int = 8, seed: int = 0) -> float:
    """Fraction of ``n`` samples per held-out prompt whose object and background colours both match it."""
    from pipeline.toyworld.measure import colour_adherence
    from pipeline.toyworld.report import sample_images
    from pipeline.toyworld.shapes import held_out_combos
    from trainers.models import load_model, load_trained

    model = load_model(cfg.model)
    if weights:
        load_trained(model, weights)
    combos = held_out_combos()
    images = sample_images(model, combos, n, cfg.sampler.num_steps, cfg.sampler.guidance_scale, seed)
    return colour_adherence(images, [c for c in combos for _ in range(n)])["both"]


def table(rows: list[dict], reward: str) -> str:
    """A markdown table of the rows."""
    lines = [
        f"| plan | held-out `{reward}` base -> tuned (gain, 95% CI) | feature diversity base -> tuned "
        "| pixel diversity base -> tuned | colour adherence base -> tuned | s/step | images/s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        h = r["held_out"][reward]
        diversity = [
            f"{d['base']:.3f} -> {d['tuned']:.3f} ({d['tuned'] / d['base']:.0%})" if d else "-"
            for d in (r["held_out"].get("feature_diversity"), r["held_out"].get("diversity"))
        ]
        lines.append(
            f"| `{r['plan']}` | {h['base']:.1f} -> {h['tuned']:.1f} ({h['diff']:+.1f}, "
            f"[{h['diff_low']:+.1f}, {h['diff_high']:+.1f}]) | {diversity[0]} | {diversity[1]} | "
            f"{r['colour_both']['base']:.2f} -> {r['colour_both']['tuned']:.2f} | {r['step_seconds']:.2f} | "
            f"{r['images_per_second']:.1f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pipeline.train import QUICKSTART

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=QUICKSTART, help="config whose plan lines are compared")
    parser.add_argument("--out", default="runs/compare", help="folder for the runs and results.json")
    parser.add_argument("--reward", default="trained/clip_score", help="held-out metric shown in the table")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. train.steps=50")
    args = parser.parse_args(argv)
    rows = []
    for line in plan_lines(args.config):  # a fresh process per run, so peak memory is that run's own
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(run_plan, line, args.config, args.out, args.overrides).result())
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print(table(rows, args.reward))


if __name__ == "__main__":
    main()

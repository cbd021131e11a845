"""Score a model on held-out prompts with chosen rewards and print a table: ``python -m pipeline.evaluate``.

Uses a training config for the model, sampler, rewards (``rewards`` and ``eval.rewards``) and prompts
(``data.eval_prompts``); ``--weights`` adds trained weights, ``--compare-base`` also scores the base
model on the same noise and reports the paired difference with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse

from pipeline.config import ConfigError, run_cli
from pipeline.preflight import load_checked, weights_problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training config YAML (model, sampler, rewards, data.eval_prompts)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.eval_prompts=prompts.txt")
    p.add_argument("--weights", help="trained weights: a run's final/ folder or a checkpoint's model/ folder")
    p.add_argument("--compare-base", action="store_true", help="also score the base model and the difference")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, args.overrides)
    problems = weights_problems("--weights", args.weights, cfg.model.path)
    if problems:
        raise ConfigError(problems, "command line")
    from rewards.build import build_reward
    from trainers.loop import sample_and_score
    from trainers.models import load_model, load_trained
    from trainers.prompts import BUILTIN_HELD_OUT, load_prompts

    model = load_model(cfg.model)
    specs = [*cfg.rewards, *cfg.eval.rewards]
    rewards = {f"{s.name}" if [x.name for x in specs].count(s.name) == 1 else f"{s.name}_{i}": build_reward(
        [s], device=model.device) for i, s in enumerate(specs)}
    prompts = load_prompts(cfg.data.eval_prompts, BUILTIN_HELD_OUT)[: cfg.eval.max_prompts]
    prompts = [p for p in prompts for _ in range(cfg.eval.images_per_prompt)]
    schedule = model.family.schedule(model, cfg.sampler.num_steps)
    base = sample_and_score(model, prompts, rewards, cfg.sampler, schedule, cfg.eval.seed)[0] \
        if args.compare_base or not args.weights else None
    tuned = None
    if args.weights:
        load_trained(model, args.weights)
        tuned = sample_and_score(model, prompts, rewards, cfg.sampler, schedule, cfg.eval.seed)[0]
    print(format_table(base, tuned, len(prompts)))
    return 0


def format_table(base, tuned, n: int) -> str:
    """One row per reward: mean [95% CI] of each model scored, and the paired difference."""
    from trainers.stats import bootstrap_mean_ci

    def cell(values):
        mean, low, high = bootstrap_mean_ci(values)
        return f"{mean:10.4f} [{low:.4f}, {high:.4f}]"

    columns = [name for name, scores in (("base", base), ("tuned", tuned)) if scores is not None]
    if base is not None and tuned is not None:
        columns.append("tuned - base")
    rows = [f"{'reward':<16}" + "".join(f"{c:>32}" for c in columns) + f"   (n={n} images)"]
    for name in (tuned or base):
        cells = [cell(s[name]) for s in (base, tuned) if s is not None]
        if base is not None and tuned is not None:
            cells.append(cell(tuned[name] - base[name]))
        rows.append(f"{name:<16}" + "".join(f"{c:>32}" for c in cells))
    return "\n".join(rows)


if __name__ == "__main__":
    run_cli(main)

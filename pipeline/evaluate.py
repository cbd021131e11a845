"""Score a model on held-out prompts with chosen rewards and print a table: ``python -m pipeline.evaluate``.

Uses a training config for the model, sampler, rewards (``rewards`` and ``eval.rewards``) and prompts
(``data.eval_prompts``); ``--weights`` adds trained weights, ``--compare-base`` also scores the base
model on the same noise and reports the paired difference with a bootstrap 95% interval.

``--lora-scales 0,0.25,0.5,0.75,1`` scores the LoRA at each scale (0: the base model, 1: as trained),
and ``--aig-powers 1,2`` adds annealed importance guidance at each power: one row each with the
held-out rewards and both diversity measures (with 95% intervals), and a PNG plot of reward against
feature diversity (``--plot``), the trade-off to choose a scale from.
"""

from __future__ import annotations

import argparse
import os

from pipeline.config import ConfigError, finite_float, run_cli
from pipeline.preflight import load_checked, weights_problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="training config YAML (model, sampler, rewards, data.eval_prompts)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.eval_prompts=prompts.txt")
    p.add_argument("--weights", help="trained weights: a run's final/ folder or a checkpoint's model/ folder")
    p.add_argument("--compare-base", action="store_true", help="also score the base model and the difference")
    p.add_argument(
        "--lora-scales",
        type=_floats,
        metavar="S,S,...",
        help="score the LoRA of --weights at each scale (0: base, 1: as trained), with diversity",
    )
    p.add_argument(
        "--aig-powers",
        type=_floats,
        default=[],
        metavar="P,P,...",
        help="with --lora-scales: also score annealed importance guidance at each power",
    )
    p.add_argument(
        "--plot",
        default="reward_diversity.png",
        help="with --lora-scales: where to write the reward/diversity plot (default reward_diversity.png)",
    )
    return p.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [finite_float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, args.overrides)
    problems = weights_problems("--weights", args.weights, cfg.model.path)
    if args.lora_scales is not None:
        problems += sweep_problems(args, cfg)
    if problems:
        raise ConfigError(problems, "command line")
    from rewards.build import build_reward
    from trainers.evaluation import sample_and_score
    from trainers.models import load_model, load_trained
    from trainers.prompts import BUILTIN_HELD_OUT, load_prompts

    model = load_model(cfg.model)
    specs = [*cfg.rewards, *cfg.eval.rewards]
    rewards = {
        f"{s.name}" if [x.name for x in specs].count(s.name) == 1 else f"{s.name}_{i}": build_reward(
            [s], device=model.device
        )
        for i, s in enumerate(specs)
    }
    prompts = load_prompts(cfg.data.eval_prompts, BUILTIN_HELD_OUT)[: cfg.eval.max_prompts]
    prompts = [p for p in prompts for _ in range(cfg.eval.images_per_prompt)]
    schedule, batch = model.family.schedule(model, cfg.sampler.num_steps), cfg.eval.batch_size
    if args.lora_scales is not None:
        rows = sweep(model, args, cfg, prompts, rewards, schedule)
        print(sweep_table(rows, cfg.eval.images_per_prompt))
        plot_sweep(rows, next(iter(rewards)), args.plot)
        print(f"plot: {os.path.abspath(args.plot)}")
        return 0
    base = (
        sample_and_score(model, prompts, rewards, cfg.sampler, schedule, cfg.eval.seed, batch_size=batch)[0]
        if args.compare_base or not args.weights
        else None
    )
    tuned = None
    if args.weights:
        load_trained(model, args.weights)
        tuned = sample_and_score(model, prompts, rewards, cfg.sampler, schedule, cfg.eval.seed, batch_size=batch)[0]
    print(format_table(base, tuned, len(prompts)))
    return 0


def sweep_problems(args: argparse.Namespace, cfg) -> list[str]:
    from pipeline.preflight import lora_file

    problems = []
    if not args.weights or not lora_file(args.weights):
        problems.append(f"--lora-scales: needs LoRA weights in --weights (got {args.weights!r})")
    if not args.lora_scales:
        problems.append("--lora-scales: give at least one scale, e.g. 0,0.5,1")
    if any(not p > 0 for p in args.aig_powers):
        problems.append(f"--aig-powers: powers must be > 0, got {args.aig_powers}")
    if cfg.eval.images_per_prompt < 2:
        problems.append(
            f"eval.images_per_prompt: diversity needs at least 2 images per prompt, got {cfg.eval.images_per_prompt}"
        )
    return problems


def sweep(model, args: argparse.Namespace, cfg, prompts: list[str], rewards: dict, schedule) -> list[dict]:
    """Score the LoRA at each scale, then annealed guidance at each power (at scale 1), on the same noise:
    one row each, ``{"label", "scores": {name: per-image scores, diversity/feature_diversity: per prompt}}``."""
    from trainers.adapters import weigh
    from trainers.engine import annealed_weights
    from trainers.evaluation import diversity_scores, image_encoder, sample_and_score
    from trainers.models import load_trained

    load_trained(model, args.weights)
    k, encoder = cfg.eval.images_per_prompt, image_encoder(rewards)
    settings = [(f"scale {s:g}", s, None) for s in args.lora_scales]
    settings += [(f"AIG power {p:g}", 1.0, annealed_weights(len(schedule), p)) for p in args.aig_powers]
    rows = []
    for label, scale, tuned_weights in settings:
        weigh(model.denoiser, {"tuned": scale})
        scores, images = sample_and_score(
            model,
            prompts,
            rewards,
            cfg.sampler,
            schedule,
            cfg.eval.seed,
            tuned_weights=tuned_weights,
            batch_size=cfg.eval.batch_size,
        )
        scores |= diversity_scores(images, k, encoder, model.device)
        rows.append({"label": label, "scores": scores})
    return rows


def sweep_table(rows: list[dict], per_prompt: int) -> str:
    """One line per setting: each reward's and diversity's mean [95% CI]."""
    from trainers.stats import bootstrap_mean_ci

    names = list(rows[0]["scores"])
    lines = [f"{'setting':<14}" + "".join(f"{name:>30}" for name in names) + f"   ({per_prompt} images per prompt)"]
    for row in rows:
        cells = []
        for name in names:
            mean, low, high = bootstrap_mean_ci(row["scores"][name])
            cells.append(f"{mean:.4g} [{low:.4g}, {high:.4g}]")
        lines.append(f"{row['label']:<14}" + "".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


def plot_sweep(rows: list[dict], reward: str, path: str) -> None:
    """Reward against diversity (feature diversity when a reward has an image encoder), one point per
    setting with its 95% intervals on both axes; the LoRA scales joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainers.stats import bootstrap_mean_ci

    measure = "feature_diversity" if "feature_diversity" in rows[0]["scores"] else "diversity"
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for group, marker in (("scale", "o-"), ("AIG", "s")):
        chosen = [r for r in rows if r["label"].startswith(group)]
        if not chosen:
            continue
        x = [bootstrap_mean_ci(r["scores"][measure]) for r in chosen]
        y = [bootstrap_mean_ci(r["scores"][reward]) for r in chosen]
        ax.errorbar(
            [m for m, _, _ in x],
            [m for m, _, _ in y],
            fmt=marker,
            xerr=[[m - lo for m, lo, _ in x], [hi - m for m, _, hi in x]],
            yerr=[[m - lo for m, lo, _ in y], [hi - m for m, _, hi in y]],
            capsize=3,
            label="LoRA scale" if group == "scale" else "annealed importance guidance",
        )
        for r, (xm, _, _), (ym, _, _) in zip(chosen, x, y):
            ax.annotate(
                r["label"].replace("scale ", "").replace("AIG power ", "AIG p="),
                (xm, ym),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
    ax.set_xlabel(f"held-out {measure.replace('_', ' ')} (higher: more varied samples)")
    ax.set_ylabel(f"held-out {reward}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


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
    for name in tuned or base:
        cells = [cell(s[name]) for s in (base, tuned) if s is not None]
        if base is not None and tuned is not None:
            cells.append(cell(tuned[name] - base[name]))
        rows.append(f"{name:<16}" + "".join(f"{c:>32}" for c in cells))
    return "\n".join(rows)


if __name__ == "__main__":
    run_cli(main)

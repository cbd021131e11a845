"""Where a toy-world model's held-out feature diversity comes from: varied right images, or mistakes.

For the base model and each set of trained weights given, sample the held-out prompts exactly as the
training run's evaluation does (same prompts, DDIM steps, guidance and noise seed), read every sample's
colours and shape back from its pixels (``pipeline.toyworld.measure``), and report (``report.split_metrics``):
the ``clip_score``, the share of samples that follow their prompt, the feature diversity, the same over
the pairs of right samples only and over right/wrong pairs, and the pixel diversity. A row for the
rendered images of the same prompts (the data, varied only in size and position) is the reference.

It writes ``audit.json``, ``audit.md`` (the table) and ``audit.png``: feature diversity against the
share of samples that follow the prompt (left) and against the ``clip_score`` gain over the base model
(right), with a target region when ``--target-gain`` and ``--target-diversity`` are given.

    python -m pipeline.toyworld.audit --out runs/audit quickstart=runs/drtune-seed0/final \\
        other=runs/<another run>/final
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from pipeline.config import at_least, finite_float
from pipeline.toyworld.build_reward import load_shipped_reward, render_set
from pipeline.toyworld.report import sample_images, split_metrics
from pipeline.toyworld.shapes import ASSETS_DIR, held_out_combos

COLUMNS = (
    ("reward", "clip_score", "{:.1f}"),
    ("follows", "follows its prompt", "{:.0%}"),
    ("feature_diversity", "feature diversity", "{:.3f}"),
    ("feature_distance_both", "between right samples", "{:.3f}"),
    ("feature_distance_one", "right vs wrong", "{:.3f}"),
    ("pixel_diversity", "pixel diversity", "{:.3f}"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="*", metavar="NAME=FOLDER", help="trained weights (a run's final/ folder)")
    parser.add_argument("--out", default="runs/audit", help="folder for audit.json, audit.md and audit.png")
    parser.add_argument("--sd", default=str(ASSETS_DIR / "sd"), help="the base diffusers pipeline folder")
    parser.add_argument("--clip", default=str(ASSETS_DIR / "clip"), help="folder with toy-clip.json and weights")
    parser.add_argument(
        "--n", type=at_least(1), default=8, help="samples per held-out prompt (the quickstart's eval: 8)"
    )
    parser.add_argument("--steps", type=at_least(1), default=10, help="DDIM steps (the quickstart's sampler: 10)")
    parser.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=1234, help="noise seed (the evaluation's eval.seed: 1234)")
    parser.add_argument("--target-gain", type=finite_float, default=None, help="clip_score gain the target asks for")
    parser.add_argument("--target-diversity", type=finite_float, default=None, help="feature diversity it asks for")
    args = parser.parse_args(argv)
    bad = [w for w in args.weights if "=" not in w or not os.path.isdir(w.split("=", 1)[1])]
    if bad:
        parser.error(f"weights: give NAME=FOLDER with an existing folder (a run's final/), got {bad}")
    return args


@torch.no_grad()
def audit(args: argparse.Namespace) -> dict[str, dict[str, float | int | None]]:
    """``{name: metrics}`` for ``base``, each of ``args.weights`` and ``data`` (the rendered images)."""
    from trainers.config import ModelConfig
    from trainers.models import load_model, load_trained

    combos, reward = held_out_combos(), load_shipped_reward(args.clip)
    real, _ = render_set(combos, args.n, torch.Generator().manual_seed(args.seed))
    rows = {}
    for name, folder in [("base", None)] + [w.split("=", 1) for w in args.weights]:
        model = load_model(ModelConfig(path=args.sd, device="cpu"))
        if folder:
            load_trained(model, folder)
        images = sample_images(model, combos, args.n, args.steps, args.guidance, args.seed)
        rows[name] = split_metrics(reward, images, combos, args.n, args.seed)
        print(table({name: rows[name]}, header=not rows.keys() - {name}), flush=True)
    rows["data"] = split_metrics(reward, real, combos, args.n, args.seed)
    return rows


def table(rows: dict[str, dict], header: bool = True) -> str:
    """A markdown table, one row per model."""
    lines = (
        ["| model | " + " | ".join(label for _, label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        if header
        else []
    )
    for name, metrics in rows.items():
        cells = ["–" if metrics[key] is None else fmt.format(metrics[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: str, target_gain: float | None, target_diversity: float | None) -> None:
    """Feature diversity against the share following the prompt, and against the clip_score gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, data = rows["base"]["reward"], rows["data"]
    models = {k: v for k, v in rows.items() if k != "data"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120, sharey=True)
    for ax, key in ((left, "follows"), (right, "reward")):
        for name, m in models.items():
            x = m[key] - (base if key == "reward" else 0)
            colour = {"base": "tab:red", "quickstart": "tab:orange"}.get(name, "tab:blue")
            ax.scatter([x], [m["feature_diversity"]], s=18, color=colour)
            ax.annotate(
                name, (x, m["feature_diversity"]), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour
            )
        ax.axhline(data["feature_diversity"], ls=":", color="black", label="rendered images of the prompts")
        ax.grid(alpha=0.3)
    left.scatter([data["follows"]], [data["feature_diversity"]], marker="*", s=90, color="black")
    left.set_xlabel("share of samples that follow their prompt (read from the pixels)")
    left.set_ylabel("held-out feature diversity")
    left.legend(fontsize=7)
    right.set_xlabel("held-out clip_score gain over the base model")
    if target_gain is not None and target_diversity is not None:
        (x0, x1), (_, y1) = right.get_xlim(), right.get_ylim()
        right.fill_between(
            [target_gain, max(x1, target_gain + 1)],
            target_diversity,
            max(y1, target_diversity + 0.05),
            alpha=0.15,
            color="green",
            label="the target",
        )
        right.set_xlim(x0, max(x1, target_gain + 1))
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(2)
    rows = audit(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "audit.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    text = table(rows)
    with open(os.path.join(args.out, "audit.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(rows, os.path.join(args.out, "audit.png"), args.target_gain, args.target_diversity)
    print(f"\n{text}\n\nwritten: {args.out}/audit.json, audit.md, audit.png")
    return rows


if __name__ == "__main__":
    main()

"""Measure how well the shapes-world base pipeline (or a tuned one, ``--weights``) follows its prompts.

For every held-out prompt and an evenly spaced subset of training prompts, sample ``n`` images with
the project's own sampler (``trainers.engine.generate``, DDIM, classifier-free guidance) and report
per split:

* ``reward``: the mean shipped ``clip_score`` reward ``100 · cos(I, T)`` with the prompt, next to
  ``reward_real``, the same on rendered ground-truth images of those prompts (the ceiling);
* ``reward_top1`` / ``reward_shape``: how often the reward's best caption among all 66 is the prompt,
  or names the prompt's shape;
* adherence read from the pixels (``pipeline.toyworld.measure``): the fraction of samples whose
  object colour, background colour, or both, are read back as the prompt's (``colour_*``), whose
  shape is (``shape``), and whose colours and shape all are (``follows``);
* diversity: ``feature_diversity`` (mean pairwise cosine distance of the reward's image embeddings
  among a prompt's samples) and ``pixel_diversity`` (32 px thumbnails), each beside the same on the
  rendered images (``_real``); and the feature distances split by adherence (``feature_distance_both``,
  ``_one``, ``_neither``: pairs where both samples, one, or neither follow the prompt), with the reward
  of the samples that follow (``reward_following``) and of those that do not. Right images of one
  prompt look much alike to the reward, so much of a model's feature diversity can be its mistakes;
  the split says how much.

A grid (one row per prompt: a rendered reference, then the samples) is written as a PNG.

    python -m pipeline.toyworld.report --n 8 --guidance 7.5
    python -m pipeline.toyworld.report --steps 10 --seed 1234 --n-train 0 --weights runs/drtune-seed0/final
        # the quickstart's held-out evaluation: same prompts, steps and noise
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from pipeline.config import at_least, finite_float
from pipeline.toyworld.build_reward import load_shipped_reward, render_set, score_matrix
from pipeline.toyworld.measure import distances_by_adherence, prompt_checks
from pipeline.toyworld.shapes import ASSETS_DIR, Combo, all_combos, caption, held_out_combos, train_combos


def pick_prompts(n_train: int) -> dict[str, list[Combo]]:
    """All held-out combos and ``n_train`` evenly spaced training combos."""
    train = train_combos()
    if n_train <= 0:
        return {"heldout": held_out_combos()}
    stride = max(1, len(train) // n_train)
    return {"heldout": held_out_combos(), "train": train[::stride][:n_train]}


@torch.no_grad()
def sample_images(
    model, combos: list[Combo], n: int, steps: int, guidance: float, seed: int, one_step: int | None = None
) -> torch.Tensor:
    """``n`` samples per combo, ``(len(combos) * n, 3, H, W)`` in [0, 1], combo-major, from seeded noise:
    ``steps`` DDIM steps, or a one-step generator's x0 prediction at timestep ``one_step`` (no guidance)."""
    from trainers.engine import generate
    from trainers.samplers.ddim import one_step_schedule

    prompts = [caption(c) for c in combos for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(prompts), *model.latent_shape), generator=gen)
    if one_step is not None:
        return generate(model, prompts, x_T.to(model.device), one_step_schedule(model.scheduler, one_step), guidance=0)
    return generate(model, prompts, x_T.to(model.device), model.family.schedule(model, steps), guidance=guidance)


def split_metrics(reward, images: torch.Tensor, combos: list[Combo], n: int, seed: int) -> dict[str, float | None]:
    """Reward, colour-adherence and diversity metrics of ``n`` samples per combo (``images`` combo-major)."""
    labels = [c for c in combos for _ in range(n)]
    candidates = all_combos()
    scores = score_matrix(reward, images, [caption(c) for c in candidates])  # (N, 66)
    own = scores[torch.arange(len(labels)), torch.tensor([candidates.index(c) for c in labels])]  # (N,)
    best = [candidates[i] for i in scores.argmax(dim=1).tolist()]
    real, _ = render_set(combos, n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        real_scores = reward(real, [caption(c) for c in labels])
    checks = prompt_checks(images, labels)
    follows = checks["follows"]
    metrics = {
        "reward": own.mean().item(),
        "reward_real": real_scores.mean().item(),
        "reward_following": own[follows].mean().item() if follows.any() else None,
        "reward_not_following": own[~follows].mean().item() if not follows.all() else None,
        "reward_top1": sum(b == c for b, c in zip(best, labels)) / len(labels),
        "reward_shape": sum(b.shape == c.shape for b, c in zip(best, labels)) / len(labels),
    }
    share = {k: v.float().mean().item() for k, v in checks.items()}
    metrics |= {f"colour_{k}": share[k] for k in ("object", "background", "both")}
    metrics |= {"shape": share["shape"], "follows": share["follows"]}
    return metrics | diversity_metrics(reward, images, real, follows, n)


@torch.no_grad()
def diversity_metrics(
    reward, images: torch.Tensor, real: torch.Tensor, follows: torch.Tensor, n: int
) -> dict[str, float | int | None]:
    """Feature and pixel diversity of the samples and of the rendered images (``_real``), and the
    samples' feature distances split by how many of each pair follow the prompt (``follows``)."""
    from trainers.evaluation import diversity, feature_diversity

    features = reward.image_features(images)
    metrics = {
        "feature_diversity": feature_diversity(features, n).mean().item(),
        "feature_diversity_real": feature_diversity(reward.image_features(real), n).mean().item(),
        "pixel_diversity": diversity(images, n).mean().item(),
        "pixel_diversity_real": diversity(real, n).mean().item(),
    }
    split = distances_by_adherence(features, follows, n)
    return metrics | {f"feature_distance_{kind}": value for kind, value in split.items()}


def save_grid(rows: list[torch.Tensor], path: str, zoom: int = 3) -> None:
    """Save rows of ``(k, 3, H, W)`` images in [0, 1] as one PNG, each pixel ``zoom`` x ``zoom``."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*H, k*W)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    image.resize((image.width * zoom, image.height * zoom), Image.NEAREST).save(path)


def run(args: argparse.Namespace) -> dict:
    """Sample every split, compute its metrics and write the grid; returns ``{split: metrics}``."""
    from trainers.config import ModelConfig
    from trainers.distill import generator_timestep
    from trainers.models import load_model, load_trained

    torch.set_num_threads(args.threads)
    model = load_model(ModelConfig(path=args.sd, device="cpu"))
    if args.weights:
        load_trained(model, args.weights)
    reward = load_shipped_reward(args.clip)
    one_step = args.one_step if args.one_step is not None else generator_timestep(args.weights)
    results, rows = {}, []
    for split, combos in pick_prompts(args.n_train).items():
        images = sample_images(model, combos, args.n, args.steps, args.guidance, args.seed, one_step)
        results[split] = split_metrics(reward, images, combos, args.n, args.seed)
        reference, _ = render_set(combos, 1, torch.Generator().manual_seed(args.seed))
        rows += [torch.cat([reference[i : i + 1], images[i * args.n : (i + 1) * args.n]]) for i in range(len(combos))]
    save_grid(rows, args.grid)
    return results


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: print the metrics as JSON (and write them to ``--json`` if given)."""
    parser = argparse.ArgumentParser(description="Prompt adherence of the shapes-world pipeline.")
    parser.add_argument("--sd", default=str(ASSETS_DIR / "sd"), help="diffusers pipeline folder")
    parser.add_argument("--weights", default=None, help="trained weights to apply (a run's final/ folder)")
    parser.add_argument("--clip", default=str(ASSETS_DIR / "clip"), help="folder with toy-clip.json and weights")
    parser.add_argument("--n", type=at_least(1), default=8, help="samples per prompt")
    parser.add_argument("--n-train", type=at_least(0), default=9, help="training prompts to include (0: held-out only)")
    parser.add_argument("--steps", type=at_least(1), default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument(
        "--one-step",
        type=int,
        default=None,
        metavar="TIMESTEP",
        help="sample a one-step generator at this timestep (default: the weights' one_step.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads")
    parser.add_argument("--grid", default="/tmp/toy_samples.png", help="sample grid PNG to write")
    parser.add_argument("--json", default=None, help="also write the metrics here")
    args = parser.parse_args(argv)
    results = run(args)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

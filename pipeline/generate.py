"""Generate images from a base model plus optional trained weights: ``python -m pipeline.generate``."""

from __future__ import annotations

import argparse
import math
import os

from pipeline.config import ConfigError, at_least, finite_float, run_cli
from pipeline.preflight import (
    device_problems,
    flow_family,
    flow_scheduler_problems,
    model_problems,
    prompt_problems,
    weights_problems,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__)
    p.add_argument(
        "--model",
        required=True,
        help="base diffusers pipeline folder (or hub id when online), or an MLflow model such as "
        "models:/NAME@champion, models:/NAME/3 or runs:/RUN_ID/checkpoint-000100 (base + LoRA)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="FOLDER[:W]",
        help="trained weights: a run's final/ folder or a checkpoint's model/ folder; repeat with "
        "weights to mix LoRAs trained on different rewards, e.g. --weights A:0.6 --weights B:0.4 "
        "(the weighted sum of their deltas)",
    )
    p.add_argument(
        "--lora-scale",
        type=finite_float,
        default=1.0,
        metavar="S",
        help="scale the LoRA delta(s): 0 is the base model, 1 the tuned one (default 1)",
    )
    p.add_argument(
        "--aig",
        type=finite_float,
        metavar="POWER",
        help="annealed importance guidance: at step i of T, mix the tuned and base outputs with weight "
        "(i/(T-1))**POWER on the tuned one, base alone first, tuned alone last (LoRA weights)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for an MLflow --model (default: $MLFLOW_TRACKING_URI, else ./runs/mlflow.db)",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="prompt file (.txt or .jsonl)")
    p.add_argument("--num-images", type=at_least(1), default=4, help="images per prompt")
    p.add_argument(
        "--steps", type=at_least(1), default=20, help="sampling steps (DDIM, or flow-matching Euler for SD3)"
    )
    p.add_argument(
        "--one-step",
        type=int,
        metavar="TIMESTEP",
        help="sample a one-step generator (Diff-Instruct*): the x0 prediction from pure noise at this "
        "timestep, no guidance (default: the weights' one_step.json when they have one)",
    )
    p.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale")
    p.add_argument(
        "--resolution",
        type=at_least(8),
        metavar="PX",
        help="image side in pixels, a multiple of 8 (default: the model's native size; FLUX.1: 1024)",
    )
    p.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta (0 for flow models)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--out", default="samples", help="output folder for PNGs and grid.png")
    return p.parse_args(argv)


MLFLOW_MODEL = ("models:/", "runs:/")


def resolve_mlflow_model(args: argparse.Namespace) -> None:
    """Replace an MLflow ``--model`` URI by the base model it references and its downloaded LoRA."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.promote import default_tracking_uri
    from pipeline.tracking import fluent_tracking, redact

    if args.weights:
        raise ConfigError(
            ["--weights: an MLflow --model already holds its weights; leave --weights out"], "command line"
        )
    uri = default_tracking_uri(args.tracking_uri)
    try:
        with fluent_tracking(uri):
            model = mlflow.diffusers.load_model(args.model)
    except (MlflowException, OSError) as err:
        raise ConfigError(
            [
                f"--model: cannot load {args.model} from {redact(uri)}: {str(err).splitlines()[0][:300]}; "
                "list versions with `mlflow ui` or set --tracking-uri"
            ],
            "command line",
        ) from None
    print(f"{args.model}: base {model.base_model} + LoRA {model.adapter_path}")
    args.model, args.weights = model.base_model, [model.adapter_path]


def weighted_folders(given: list[str]) -> list[tuple[str, float]]:
    """``FOLDER`` or ``FOLDER:W`` entries as ``(folder, w)`` (w = 1 when not given)."""
    weighted = []
    for entry in given:
        folder, _, tail = entry.rpartition(":")
        try:
            weighted.append((folder, float(tail)) if folder else (entry, 1.0))
        except ValueError:
            weighted.append((entry, 1.0))
    return weighted


def check(args: argparse.Namespace) -> None:
    if args.model.startswith(MLFLOW_MODEL):
        resolve_mlflow_model(args)
    args.weighted = weighted_folders(args.weights)
    problems = model_problems("--model", args.model) + device_problems("--device", args.device)
    for folder, weight in args.weighted:
        problems += weights_problems("--weights", folder, args.model)
        problems += (
            [] if math.isfinite(weight) else [f"--weights: the weight of {folder!r} must be finite, got {weight}"]
        )
    problems += prompt_problems("--prompts", args.prompts) + blend_problems(args)
    if not 0 <= args.eta <= 1:
        problems.append(f"--eta: must be in [0, 1], got {args.eta}")
    if not args.prompt and not args.prompts:
        problems.append("--prompt: give at least one --prompt TEXT or a --prompts FILE")
    if args.one_step is not None and not 0 <= args.one_step <= 999:
        problems.append(f"--one-step: must be a training timestep in [0, 999], got {args.one_step}")
    if not problems and flow_family(args.model):
        problems += flow_scheduler_problems("--model", args.model)
        problems += (
            [f"--eta: {args.eta} but {args.model!r} is a flow-matching model, sampled deterministically; use --eta 0"]
            if args.eta > 0
            else []
        )
    if args.resolution is not None and args.resolution % 8:
        problems.append(f"--resolution: must be a multiple of 8, got {args.resolution}")
    if args.num_images < 1 or not 1 <= args.steps <= 1000:
        problems.append(f"--num-images/--steps: need >= 1 and 1..1000, got {args.num_images}/{args.steps}")
    if problems:
        raise ConfigError(problems, "command line")


def blended(args: argparse.Namespace) -> bool:
    """Scaled or mixed weights, or annealed guidance, rather than one set of trained weights as they are."""
    return (
        len(args.weighted) > 1 or args.lora_scale != 1 or args.aig is not None or any(w != 1 for _, w in args.weighted)
    )


def blend_problems(args: argparse.Namespace) -> list[str]:
    """Scaling, mixing and annealed guidance need LoRA weights (a full fine-tune has no delta to scale)."""
    if not blended(args):
        return []
    if not args.weighted:
        return ["--weights: --lora-scale, --aig and weights in --weights act on trained LoRA weights; give --weights"]
    from pipeline.preflight import lora_file

    full = [f for f, _ in args.weighted if not lora_file(f)]
    problems = [
        f"--weights: {f!r} is a full fine-tune; only LoRA weights can be scaled, mixed or annealed" for f in full
    ]
    if args.aig is not None and not args.aig > 0:
        problems.append(f"--aig: the power must be > 0, got {args.aig}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check(args)
    import torch

    from trainers.config import ModelConfig
    from trainers.distill import forward_process, generator_timestep
    from trainers.engine import annealed_weights, generate
    from trainers.models import load_model, load_trained, load_weighted
    from trainers.prompts import read_prompts

    model = load_model(ModelConfig(path=args.model, device=args.device, resolution=args.resolution))
    if blended(args):  # AIG alone (one weight of 1) loads one adapter at scale 1, as load_trained would
        load_weighted(model, [(folder, w * args.lora_scale) for folder, w in args.weighted])
    elif args.weighted:
        load_trained(model, args.weighted[0][0])
    prompts = [
        p for p in args.prompt + (read_prompts(args.prompts) if args.prompts else []) for _ in range(args.num_images)
    ]
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(len(prompts), *model.latent_shape, generator=gen).to(model.device)
    one_step = (
        args.one_step
        if args.one_step is not None
        else generator_timestep(args.weighted[0][0] if args.weighted else None)
    )
    if one_step is None:
        schedule, guidance = model.family.schedule(model, args.steps), args.guidance
    else:
        print(f"one-step generator: x0 prediction at timestep {one_step}, no guidance")
        # guidance 1: the conditional output alone, as the generator was trained (FLUX.1 [dev]: the embedded scale 1)
        schedule, guidance = forward_process(model, model.scheduler).one_step(model.scheduler, one_step), 1.0
    aig = annealed_weights(len(schedule), args.aig) if args.aig is not None else None
    images = generate(model, prompts, x_T, schedule, guidance=guidance, eta=args.eta, gen=gen, tuned_weights=aig)
    save_images(images.float().cpu(), prompts, args.out, args.num_images)
    print(f"wrote {len(prompts)} images and grid.png to {os.path.abspath(args.out)}")
    return 0


def save_images(images, prompts: list[str], out: str, per_row: int) -> None:
    from torchvision.utils import save_image

    from trainers.evaluation import save_grid

    os.makedirs(out, exist_ok=True)
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        slug = "".join(c if c.isalnum() else "_" for c in prompt)[:40]
        save_image(image, os.path.join(out, f"{i:03d}_{slug}.png"))
    save_grid(images, os.path.join(out, "grid.png"), per_row)


if __name__ == "__main__":
    run_cli(main)

"""Train a diffusion model against rewards: ``python -m pipeline.train --config FILE [key=value ...]``."""

from __future__ import annotations

import argparse

from pipeline.config import dump_yaml, run_cli
from pipeline.preflight import load_checked


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train", description=__doc__,
        epilog="Example: python -m pipeline.train --config pipeline/configs/draft_k_sd15.yaml plan.k=5 train.steps=200")
    parser.add_argument("--config", help="YAML config file (defaults apply to keys it leaves out)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as plan.name=drtune plan.k=5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, args.overrides, check_files=not args.print_config)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from trainers.loop import run

    result = run(cfg)
    print(f"run folder: {result.run_dir}")
    print(f"trained weights (diffusers format): {result.final_model_dir}")
    for key, value in result.eval_after.items():
        print(f"{key}: {result.eval_before.get(key, float('nan')):.4f} -> {value:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Train a diffusion model against rewards: ``python -m pipeline.train [--config FILE] [key=value ...]``.

With no arguments it runs the quickstart: DRTune on the shipped toy shapes world, on a local Ray.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import dump_yaml, run_cli
from pipeline.preflight import load_checked, service_preflight, write_run_config

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train", description=__doc__,
        epilog="Example: python -m pipeline.train --config pipeline/configs/draft_k_sd15.yaml plan.k=5 train.steps=200")
    parser.add_argument("--config", default=QUICKSTART,
                        help="YAML config file; defaults apply to keys it leaves out (default: the toy-world quickstart)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as plan.name=drtune plan.k=5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, args.overrides, check_files=not args.print_config, training=True)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    service_preflight(cfg)
    from trainers.checkpoint import latest_checkpoint
    from trainers.loop import run, run_folder

    run_dir = run_folder(cfg)
    resume_from = latest_checkpoint(run_dir) if cfg.train.resume else None
    if resume_from:
        print(f"resuming {run_dir} from {os.path.basename(resume_from)} (train.run_name=NEW starts a new run)")
    write_run_config(cfg, run_dir)
    if cfg.ray.enabled:
        from pipeline.ray_train import WorkerFailed, fit, run_outputs

        try:
            result = fit(cfg, run_dir)
        except WorkerFailed as err:
            print(err, file=sys.stderr)
            return 1
        held_out, final_dir = run_outputs(result, run_dir)
        metrics = result.metrics or {}
    else:
        reporters = ()
        if cfg.tracking.enabled:
            from pipeline.tracking import MlflowReporter

            reporters = (MlflowReporter(cfg, run_dir),)
        result = run(cfg, run_dir=run_dir, reporters=reporters)
        held_out, final_dir, metrics = result.held_out, result.final_model_dir, result.metrics
    print_held_out(held_out, metrics)
    print(f"trained weights (diffusers format): {final_dir}")
    print(f"run folder: {run_dir}")
    if cfg.tracking.enabled:
        from pipeline.tracking import ui_command

        print(ui_command(cfg))
    return 0


def print_held_out(held_out: dict[str, dict[str, float]], metrics: dict[str, float] | None = None) -> None:
    """One line per reward: base -> tuned on the held-out prompts, with the 95% interval of the gain, and
    for a one-step generator (DI*) the teacher's one-step and multi-step scores."""
    for name, r in held_out.items():
        teacher = [f"{kind.replace('_', '-')} {metrics[key]:.4f}" for kind in ("one_step", "multi_step")
                   if (key := f"teacher/{kind}/{name}") in (metrics or {})]
        print(f"held-out {name}: base {r['base']:.4f} -> tuned {r['tuned']:.4f}, "
              f"gain {r['diff']:+.4f} [95% CI {r['diff_low']:+.4f}, {r['diff_high']:+.4f}]"
              + (f"; teacher {', '.join(teacher)}" if teacher else ""))


if __name__ == "__main__":
    run_cli(main)

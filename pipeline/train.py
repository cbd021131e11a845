"""Train a diffusion model against rewards: ``python -m pipeline.train [--config FILE] [key=value ...]``.

With no arguments it runs the quickstart: DRTune on the shipped toy shapes world, on a local Ray.
"""

from __future__ import annotations

import argparse
import os

from pipeline.config import at_least, dump_yaml, run_cli
from pipeline.console import LOG_NAME, Console, ConsoleReporter, held_out_table, output_to
from pipeline.preflight import load_checked, service_preflight, write_run_config
from pipeline.ray_train import WorkerFailed  # Ray itself is imported only when a run starts
from trainers.config import Config

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__,
        epilog="Example: python -m pipeline.train --config pipeline/configs/sd15_draft_k_aesthetic.yaml plan.k=5 train.steps=200",
    )
    parser.add_argument(
        "--config",
        default=QUICKSTART,
        help="YAML config file; defaults apply to keys it leaves out (default: the toy-world quickstart)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as plan.name=drtune plan.k=5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--skip-fit-check",
        action="store_true",
        help="with train.gpu set, start even if the plan says a step does not fit that GPU's memory",
    )
    parser.add_argument(
        "--progress-every",
        type=at_least(1),
        metavar="N",
        help="off a terminal (job logs), print progress every N steps (default: a tenth of the run)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, args.overrides, check_files=not args.print_config, training=True)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if cfg.train.gpu:  # the cost model's verdict, from the config files alone (pipeline.plan)
        from pipeline.plan import fit_check

        print(fit_check(cfg, refuse=not args.skip_fit_check), flush=True)
    service_preflight(cfg)
    from trainers.checkpoint import latest_checkpoint
    from trainers.loop import run_folder

    run_dir = run_folder(cfg)
    damaged: list[str] = []
    resume_from = latest_checkpoint(run_dir, damaged) if cfg.train.resume else None
    write_run_config(cfg, run_dir)
    log = os.path.join(run_dir, LOG_NAME)
    with output_to(log) as (out, err):  # everything but the console goes to the log
        console = Console(cfg.train.steps, out, err, every=args.progress_every)
        for problem in damaged:
            console.line(f"note: passing over a damaged checkpoint, {problem}", error=True)
        if damaged and not resume_from:
            console.line("note: no intact checkpoint is left; the run starts from step 0", error=True)
        if resume_from:
            console.line(
                f"resuming {run_dir} from {os.path.basename(resume_from)} (train.run_name=NEW starts a new run)"
            )
        console.line(f"log of Ray and the libraries: {log}")
        try:
            held_out, final_dir, metrics = train(cfg, run_dir, console)
        except WorkerFailed as failed:
            console.close()
            console.line(str(failed), error=True)
            return 1
        finally:
            console.close()
        console.line(held_out_table(held_out, metrics))
        console.line(f"trained weights (diffusers format): {final_dir}")
        console.line(f"run folder: {run_dir}")
        if cfg.tracking.enabled:
            from pipeline.tracking import ui_command

            console.line(ui_command(cfg))
    return 0


def train(cfg: Config, run_dir: str, console: Console) -> tuple[dict, str, dict]:
    """Train through Ray Train (or in this process with ``ray.enabled: false``), showing progress on
    ``console``; ``(held-out summary, trained-weights folder, last metrics)``."""
    if cfg.ray.enabled:
        from pipeline.ray_train import fit, run_outputs

        result = fit(cfg, run_dir, events=console)
        held_out, final_dir = run_outputs(result, run_dir)
        return held_out, final_dir, result.metrics or {}
    from trainers.loop import run

    reporters = ()
    if cfg.tracking.enabled:
        from pipeline.tracking import MlflowReporter

        reporters = (MlflowReporter(cfg, run_dir, emit=console),)
    result = run(cfg, run_dir=run_dir, reporters=(*reporters, ConsoleReporter(console, cfg.eval.require)))
    return result.held_out, result.final_model_dir, result.metrics


if __name__ == "__main__":
    run_cli(main)

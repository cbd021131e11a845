"""Benchmark the trained reward in-process versus served by Ray actors: seconds per optimiser step.

``python -m pipeline.bench.reward_actors`` trains the quickstart config (toy world, DRTune) twice side
by side, steps interleaved: once with the reward in the training process, once through a pool of
``--actors`` :mod:`pipeline.reward_actors` servers on a local Ray, and prints the median step time of
each and the overhead. Any training config works (``--config``, dotted overrides).
"""

from __future__ import annotations

import argparse
import statistics

from pipeline.config import at_least, run_cli
from pipeline.preflight import load_checked
from pipeline.train import QUICKSTART


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench.reward_actors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=QUICKSTART, help="training config (default: the toy-world quickstart)")
    p.add_argument("--actors", type=at_least(1), default=1, help="reward actor replicas")
    p.add_argument("--iters", type=at_least(1), default=10, help="timed steps per setting (after 2 warm-up steps)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.batch_size=8")
    return p.parse_args(argv)


def median_step_seconds(trainers: list, iters: int) -> list[float]:
    """Median step time of each trainer, their steps interleaved so background load hits all alike."""
    from trainers.loop import train_step

    times: list[list[float]] = [[] for _ in trainers]
    for i in range(iters + 2):  # 2 warm-up rounds
        for tr, seconds in zip(trainers, times):
            step_seconds = train_step(tr)["perf/step_seconds"]
            if i >= 2:
                seconds.append(step_seconds)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_checked(args.config, [*args.overrides, f"ray.reward_actors={args.actors}"])
    import ray

    from pipeline.ray_env import init_ray
    from pipeline.reward_actors import RemoteReward, start_reward_actors
    from trainers.loop import build_trainer

    init_ray(cfg)
    actors = start_reward_actors(cfg.rewards, cfg.ray)
    try:
        local, remote = median_step_seconds(
            [build_trainer(cfg), build_trainer(cfg, reward=RemoteReward(actors))], args.iters
        )
    finally:
        for actor in actors:
            ray.kill(actor)
    print(f"batch {cfg.train.batch_size}, {cfg.sampler.num_steps} steps, plan {cfg.plan.name}, {args.actors} actor(s)")
    print(f"in-process reward: {local:.3f} s/step")
    print(f"remote reward:     {remote:.3f} s/step ({100 * (remote / local - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    run_cli(main)

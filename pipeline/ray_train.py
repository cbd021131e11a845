"""Run the training core as a Ray Train job (Train V2 API): one ``TorchTrainer`` worker group.

Each worker rebuilds the typed config from ``train_loop_config``, runs ``trainers.loop.run`` and
reports every step through :class:`RayReporter`: all ranks call ``ray.train.report``, and rank 0
attaches the checkpoint folder the core just wrote atomically. Ray is started here, at the edge,
only after the config and the files it names have been checked.
"""

from __future__ import annotations

import os
import tempfile

from pipeline.config import ConfigError, from_dict, to_dict
from trainers.config import Config

# Settings that keep a local Ray on 127.0.0.1 and quiet (PLATFORM.md §2)
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class RayReporter:
    """Forwards the core's metrics to Ray Train at step 0, every ``ray.report_every`` steps, and at each
    evaluation, checkpoint and the last step; rank 0 attaches checkpoints.

    Every ``ray.train.report`` is a barrier across workers (about a second on a busy 2-core machine), so
    per-step metrics stay in the run folder's ``metrics.jsonl``. Which steps report depends only on the
    step number, so all ranks call ``report`` equally often even though only rank 0 evaluates.
    """

    def __init__(self, cfg: Config):
        t = cfg.train
        self.periods = [p for p in (cfg.ray.report_every, cfg.eval.every, t.checkpoint_every) if p]
        self.last = t.steps

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        import ray.train

        if not (step in (0, self.last) or any(step % p == 0 for p in self.periods)):
            return
        checkpoint = None
        if checkpoint_dir and ray.train.get_context().get_world_rank() == 0:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report({"step": step, **metrics}, checkpoint=checkpoint)


def train_fn_per_worker(config: dict) -> None:
    """Ray Train worker entry point: ``config`` holds the plain-data training config and run folder."""
    from trainers.loop import run

    import ray.train

    cfg = from_dict(Config, config["cfg"], "train_loop_config")
    reward = None
    if config["reward_actors"]:
        from pipeline.reward_actors import RemoteReward

        reward = RemoteReward(config["reward_actors"], first=ray.train.get_context().get_world_rank())
    run(cfg, reporters=(RayReporter(cfg),), reward=reward, run_dir=config["run_dir"])


def init_ray(cfg: Config) -> None:
    """Join the configured (or job's) cluster, else start a local in-process Ray bound to 127.0.0.1."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:  # Ray reads these when it is imported, so set them first
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "rt-ray"))
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=1 << 30, log_to_driver=True, configure_logging=False)


def resource_problems(cfg: Config, available: dict[str, float]) -> list[str]:
    """What the training workers and reward actors ask for that the cluster does not have in total."""
    r = cfg.ray
    need: dict[str, float] = {"CPU": r.num_workers * r.cpus_per_worker + r.reward_actors * r.reward_num_cpus,
                              "GPU": r.num_workers * r.use_gpu + r.reward_actors * r.reward_num_gpus}
    for name, amount in r.reward_resources.items():
        need[name] = need.get(name, 0.0) + r.reward_actors * amount
    return [f"ray: the run needs {amount:g} {name} (ray.num_workers={r.num_workers}, ray.reward_actors="
            f"{r.reward_actors}) but the cluster has {available.get(name, 0.0):g}; lower those, or add nodes "
            f"with {name}" for name, amount in need.items() if amount > available.get(name, 0.0) + 1e-9]


def fit(cfg: Config, run_dir: str):
    """Run ``cfg`` on Ray Train and return the ``ray.train.Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.reward_actors import start_reward_actors

    init_ray(cfg)
    problems = resource_problems(cfg, ray.cluster_resources())
    if problems:
        raise ConfigError(problems, f"config (against the Ray cluster's resources {ray.cluster_resources()})")
    # Ray Train would chdir workers into its own trial folder; relative paths in the config mean the
    # directory the command was run from (or the job's working_dir), so keep the workers there.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    r = cfg.ray
    storage = os.path.abspath(r.storage_path or os.path.join(cfg.train.output_dir, "ray"))
    actors = start_reward_actors(cfg.rewards, r) if r.reward_actors else []
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "run_dir": run_dir, "reward_actors": actors},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=RunConfig(name=os.path.basename(run_dir), storage_path=storage,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    try:
        return trainer.fit()
    finally:
        for actor in actors:
            ray.kill(actor)

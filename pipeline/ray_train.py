"""Run the training core as a Ray Train job (Train V2 API): one ``TorchTrainer`` worker group.

Each worker rebuilds the typed config from ``train_loop_config``, runs ``trainers.loop.run`` and
reports every step through :class:`RayReporter`: all ranks call ``ray.train.report``, and rank 0
attaches the checkpoint folder the core just wrote atomically. Ray is started here, at the edge,
only after the config and the files it names have been checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.console import note
from pipeline.ray_env import init_ray, say_on_console
from pipeline.storage import Patience, local_copy, run_storage, stored_run_exists
from trainers.config import Config
from trainers.reporting import Reporter


class RayReporter(Reporter):
    """Forwards the core's metrics to Ray Train at step 0, every ``ray.report_every`` steps, and at each
    evaluation, checkpoint and the last step; rank 0 attaches checkpoints.

    Every ``ray.train.report`` is a barrier across workers (about a second on a busy 2-core machine), so
    per-step metrics stay in the run folder's ``metrics.jsonl``. Which steps report depends only on the
    step number, so all ranks call ``report`` equally often even though only rank 0 evaluates. An upload
    to S3 storage that fails is retried with ``patience`` while the other ranks wait in the barrier.
    """

    def __init__(self, cfg: Config, patience: Patience):
        t = cfg.train
        self.periods = [p for p in (cfg.ray.report_every, cfg.eval.every, t.checkpoint_every) if p]
        self.last = t.steps
        self.held_out: dict[str, float] = {}  # the latest evaluation, repeated in every report (Ray Tune ranks on it)
        self.patience = patience

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        import ray.train

        self.held_out |= {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if not (step in (0, self.last) or any(step % p == 0 for p in self.periods)):
            return
        checkpoint = None
        if checkpoint_dir and ray.train.get_context().get_world_rank() == 0:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        upload = self._patient_upload(step) if checkpoint and self.patience.remote else None  # None: Ray's own
        ray.train.report({"step": step, **self.held_out, **metrics}, checkpoint=checkpoint, checkpoint_upload_fn=upload)

    def _patient_upload(self, step: int):
        """Ray Train's ``checkpoint_upload_fn``: its own upload to the run storage, retried with ``patience``."""
        import ray.train

        def upload(checkpoint, folder_name: str):
            storage = ray.train.get_context().get_storage()
            return self.patience(
                f"uploading checkpoint step {step}", lambda: storage.persist_current_checkpoint(checkpoint, folder_name)
            )

        return upload


def train_fn_per_worker(config: dict) -> None:
    """Ray Train worker entry point: ``config`` holds the plain-data training config and run folder.

    A restarted worker group (``ray.max_failures``) or a rerun of the same run resumes from the latest
    checkpoint Ray Train holds in its run storage, which every node can read; without one, from the
    run folder. The worker's own output (Ray's reports, the libraries' logs) goes to the run folder's
    ``train.log``; rank 0 sends what the console shows to the driver's ``events`` queue, when it has one.
    """
    import ray.train

    from pipeline.console import LOG_NAME, output_to
    from trainers.loop import run

    cfg = from_dict(Config, config["cfg"], "train_loop_config")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    emit = queue_emitter(config.get("events")) if rank == 0 else None
    say = (lambda text, error=False: emit(note(text, error))) if emit else say_on_console  # else into train.log
    patience = Patience(cfg, say)
    with output_to(os.path.join(config["run_dir"], LOG_NAME)):
        kwargs = {
            "reporters": worker_reporters(cfg, config["run_dir"], rank, context.get_world_size(), emit, patience),
            "reward": None,
            "teacher": None,
            "run_dir": config["run_dir"],
        }
        if config["reward_actors"]:
            from pipeline.reward_actors import RemoteReward

            kwargs["reward"] = RemoteReward(config["reward_actors"], first=rank)
        if config.get("teacher_actors"):
            from pipeline.teacher_actors import RemoteTeacher

            kwargs["teacher"] = RemoteTeacher(config["teacher_actors"], first=rank)
        stored = ray.train.get_checkpoint()
        if stored is None:
            run(cfg, **kwargs)
            return
        with local_copy(stored, patience) as folder:
            run(cfg, resume_from=folder, **kwargs)


def worker_reporters(cfg: Config, run_dir: str, rank: int, world_size: int, emit, patience: Patience) -> tuple:
    """Rank 0: MLflow, then the console's events (``emit``; after MLflow, whose model events its checkpoint
    lines name); every rank: Ray Train's reports, last, since after Ray sees the last step Tune may stop the
    trial."""
    reporters = ()
    if cfg.tracking.enabled and rank == 0:
        from pipeline.console import print_event
        from pipeline.tracking import MlflowReporter

        reporters += (MlflowReporter(cfg, run_dir, world_size=world_size, emit=emit or print_event),)
    if emit:
        from pipeline.console import ConsoleReporter

        reporters += (ConsoleReporter(emit, cfg.eval.require),)
    return reporters + (RayReporter(cfg, patience),)


def queue_emitter(queue):
    """Put events on the driver's queue; a driver that has gone away does not stop training."""
    if queue is None:
        return None

    def emit(event: dict) -> None:
        try:
            queue.put(event, timeout=10)
        except Exception:  # noqa: BLE001 - the console is not worth a failed run
            pass

    return emit


def resource_problems(cfg: Config, nodes: list[dict[str, float]]) -> list[str]:
    """What the training workers and reward actors ask for that the cluster's ``nodes`` (each node's
    total resources) cannot give: a bundle no single node holds, too few places for all of them, or
    more than the cluster has in total. Ray would leave such a request pending forever."""
    r = cfg.ray
    kinds = [
        (
            "training worker",
            r.num_workers,
            {"CPU": r.cpus_per_worker, "GPU": float(r.use_gpu), **r.worker_resources},
            "ray.num_workers, ray.cpus_per_worker, ray.use_gpu, ray.worker_resources",
        ),
        (
            "reward actor",
            r.reward_actors,
            {"CPU": r.reward_num_cpus, "GPU": r.reward_num_gpus, **r.reward_resources},
            "ray.reward_actors, ray.reward_num_cpus, ray.reward_num_gpus, ray.reward_resources",
        ),
        (
            "teacher actor",
            r.teacher_actors,
            {"CPU": r.teacher_num_cpus, "GPU": r.teacher_num_gpus, **r.teacher_resources},
            "ray.teacher_actors, ray.teacher_num_cpus, ray.teacher_num_gpus, ray.teacher_resources",
        ),
    ]
    offered = "; ".join(_show(n) for n in nodes) or "no nodes"
    problems, total_need = [], {}
    for what, count, bundle, keys in kinds:
        bundle = {k: v for k, v in bundle.items() if v > 0}
        if not count:
            continue
        fits = sum(_fits(node, bundle) for node in nodes)
        if fits < count:
            problems.append(
                f"ray: {count} {what}(s) each needing {_show(bundle)} fit only {fits} time(s) on the "
                f"cluster's nodes ({offered}); lower {keys}, or add nodes with what is missing"
            )
        for k, v in bundle.items():
            total_need[k] = total_need.get(k, 0.0) + count * v
    if not problems:
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in total_need}
        problems += [
            f"ray: the training workers and actors together need {need:g} {k} but the cluster "
            f"has {total[k]:g}; lower ray.num_workers, ray.reward_actors or ray.teacher_actors, or add nodes with {k}"
            for k, need in total_need.items()
            if need > total[k] + 1e-9
        ]
    return problems


def _fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node holds."""
    return min((int(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items()), default=1 << 30)


def _show(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if not k.startswith(("node:", "memory", "object_store"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def cluster_nodes() -> list[dict[str, float]]:
    """Each live node's total resources."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def fit(cfg: Config, run_dir: str, callbacks: list | None = None, events: Callable[[dict], None] | None = None):
    """Run ``cfg`` on Ray Train and return the ``ray.train.Result`` (``callbacks``: Ray Train callbacks,
    such as Ray Tune's report forwarding; ``events``: gets rank 0's console events, ``pipeline.console``,
    here on the driver, while the run goes on)."""
    r = cfg.ray
    storage, filesystem = run_storage(cfg)
    if not cfg.train.resume and stored_run_exists(storage, filesystem, os.path.basename(run_dir)):
        raise ConfigError(
            [
                f"train.resume: false, but Ray's run storage {r.storage_path or storage} already holds "
                f"run {os.path.basename(run_dir)!r}, which the workers would resume; set train.run_name "
                "to a new name or delete it there"
            ]
        )
    say = say_on_console if events is None else (lambda text, error=False: events(note(text, error)))
    init_ray(cfg, say)  # before anything imports Ray, which reads the local settings at import
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError

    from pipeline.reward_actors import start_reward_actors
    from pipeline.teacher_actors import start_teacher_actors

    problems = [] if r.autoscaling else resource_problems(cfg, cluster_nodes())
    if problems:
        raise ConfigError(problems, "config (against the Ray cluster's nodes)")
    # Ray Train would chdir workers into its own trial folder; relative paths in the config mean the
    # directory the command was run from (or the job's working_dir), so keep the workers there.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    actors = start_reward_actors(cfg.rewards, r) if r.reward_actors else []
    teachers = start_teacher_actors(cfg) if r.teacher_actors else []
    pump = EventPump(events) if events else None
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "run_dir": run_dir,
            "reward_actors": actors,
            "teacher_actors": teachers,
            "events": pump and pump.queue,
        },
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **r.worker_resources},
        ),
        run_config=RunConfig(
            name=os.path.basename(run_dir),
            storage_path=storage,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=r.max_failures),
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's own console lines (a failed worker's traceback is printed by the worker,
            # then by the controller): Ray's session logs keep them all; WorkerFailed says it once
            logging_config=LoggingConfig(log_level="CRITICAL"),
        ),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as err:
        raise worker_failed(err, run_dir) from None
    finally:
        if pump:
            pump.stop()
        for actor in actors + teachers:
            ray.kill(actor)


class EventPump:
    """A Ray queue the workers put console events on, drained into ``handle`` by a driver thread."""

    def __init__(self, handle: Callable[[dict], None]):
        import threading

        from ray.util.queue import Queue

        self.queue, self.handle = Queue(actor_options={"num_cpus": 0}), handle
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._drain, name="console-events", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        import traceback

        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while True:
            try:
                event = self.queue.get(timeout=0.5)
            except Empty:
                if self.done.is_set():
                    return
                continue
            except RayError:  # the queue's actor is gone: nothing more will come
                return
            try:
                self.handle(event)
            except Exception:  # noqa: BLE001 - a console that cannot show one event goes on with the next
                traceback.print_exc()  # into the run's log

    def stop(self) -> None:
        """Show what is still queued, then remove the queue."""
        import ray

        self.done.set()
        self.thread.join()
        ray.kill(self.queue.actor)


class WorkerFailed(RuntimeError):
    """Training failed on Ray Train's workers: one line per failed rank, and the file with the tracebacks."""


def worker_failed(err: Exception, run_dir: str) -> WorkerFailed:
    """Write ``err`` (each worker's traceback included) to ``<run_dir>/error.log``; a :class:`WorkerFailed`
    naming each failed rank's exception type and message, and that file."""
    import traceback

    from trainers.checkpoint import write_text_atomic

    path = os.path.join(run_dir, "error.log")
    try:
        os.makedirs(run_dir, exist_ok=True)
        write_text_atomic(path, "".join(traceback.format_exception(err)))
    except OSError as write_error:  # a full disk: say so instead of failing here
        path = f"not written ({write_error.strerror or write_error})"
    failures = getattr(err, "worker_failures", None) or {"?": err}
    lines = []
    for rank, failure in sorted(failures.items(), key=lambda item: str(item[0])):
        original = getattr(failure, "_base_exc", failure)  # Ray Train wraps a worker's exception with its traceback
        lines.append(f"  rank {rank}: {type(original).__name__}: {str(original).strip()}")
    return WorkerFailed("training failed on the Ray Train workers:\n" + "\n".join(lines) + f"\nfull tracebacks: {path}")


def run_outputs(result, run_dir: str) -> tuple[dict[str, dict[str, float]], str]:
    """The held-out summary and the trained-weights folder of a finished fit, on the driver's machine.

    Both come through Ray Train's result (the last report's metrics and checkpoint), not the run
    folder, which on a cluster lives on the node of worker 0: the weights are copied from the last
    checkpoint into ``<run_dir>/final`` when that folder is not here.
    """
    import shutil

    from trainers.evaluation import held_out_from_metrics

    if result.error is not None:
        raise result.error
    final_dir = os.path.join(run_dir, "final")
    if not os.path.isdir(final_dir) and result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            shutil.copytree(os.path.join(folder, "model"), final_dir)
    return held_out_from_metrics(result.metrics or {}), final_dir

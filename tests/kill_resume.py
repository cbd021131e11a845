"""Kill a training job at random moments, resume it, and repeat until it ends; then compare it with a run that
was never interrupted.

    python tests/kill_resume.py --mode inprocess --kills 100 --out /tmp/kill-resume
    python tests/kill_resume.py --mode ray --kills 20 --out /tmp/kill-resume-ray [ray.storage_path=s3://...]

The job is the toy world's quickstart, shortened, with a checkpoint at every step. ``inprocess`` runs the training
core (``trainers.loop.run``) in a child process; ``ray`` runs ``python -m pipeline.train``: Ray Train, MLflow (a
sqlite store in the output folder, every checkpoint registered) and, with ``ray.storage_path=s3://...`` among the
overrides, Ray's checkpoints in S3. Each kill is a SIGKILL of the job's whole process tree at a moment drawn from a
seeded generator: at a random time, or just after a checkpoint starts to be written, or just after one is queued
for MLflow. The final weights and the metric history (timings aside) must equal the uninterrupted run's bit for
bit; in ``ray`` mode every step is logged to MLflow once and every checkpoint registered as one version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
SETTINGS = [
    f"train.steps={STEPS}",
    "train.checkpoint_every=1",
    "train.batch_size=2",
    "sampler.num_steps=4",
    "plan.k=2",
    "eval.every=4",
    "eval.images_per_prompt=2",
    "eval.max_prompts=2",
    "eval.require=[]",
    "ray.num_cpus=2",
    "tracking.registered_model=kill-resume",
]
MOMENTS = ("any time", "checkpoint write", "model upload")  # the last only where MLflow is on (ray mode)


@dataclass
class Outcome:
    """What one killed-and-resumed run went through."""

    kills: list[str] = field(default_factory=list)  # "<moment> at <s> s", one per kill
    starts: int = 0
    seconds: float = 0.0


def job_command(mode: str, output_dir: str, overrides: list[str]) -> list[str]:
    """The job; each run's Ray storage is its own (a shared one would hand one run the other's checkpoints)."""
    own = [f"{o}/{os.path.basename(output_dir)}" if o.startswith("ray.storage_path=") else o for o in overrides]
    settings = [*SETTINGS, f"train.output_dir={output_dir}", *own]
    if mode == "ray":
        return [sys.executable, "-m", "pipeline.train", *settings]
    script = (
        "import sys\n"
        "from pipeline.config import load_config\n"
        "from trainers.config import Config\n"
        "from trainers.loop import run\n"
        "run(load_config(Config, 'pipeline/configs/quickstart.yaml', sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", script, *settings]


def run_folder(output_dir: str) -> str:
    return os.path.join(output_dir, "drtune-seed0")


def finished(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_folder(output_dir), "summary.json"))


def run_uninterrupted(mode: str, output_dir: str, overrides: list[str], log) -> tuple[float, float]:
    """Run the job once; ``(seconds outside training steps, seconds in them)``."""
    start = time.monotonic()
    subprocess.run(job_command(mode, output_dir, overrides), cwd=ROOT, stdout=log, stderr=log, check=True)
    total = time.monotonic() - start
    training = sum(line.get("perf/step_seconds", 0.0) for line in metric_history(run_folder(output_dir), perf=True))
    return total - training, training


def run_with_kills(mode: str, output_dir: str, overrides: list[str], kills: int, seed: int, timing, log):
    """Start the job, kill it at a drawn moment, restart it, until ``kills`` kills are done and a start ends.
    ``timing`` is the uninterrupted run's ``(seconds outside training steps, seconds in them)``: a time-drawn
    kill falls within what a start still needs, so that most land before the end."""
    rng, outcome, start = random.Random(seed), Outcome(), time.monotonic()
    overhead, training = timing
    while True:
        outcome.starts += 1
        began = time.monotonic()
        job = subprocess.Popen(
            job_command(mode, output_dir, overrides), cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
        if len(outcome.kills) < kills:
            moment = rng.choice(MOMENTS if mode == "ray" else MOMENTS[:2])
            if resume_point(output_dir) >= STEPS - 1:  # one write left, which a busy machine may miss
                moment = MOMENTS[0]
            needs = overhead + training * (1 - steps_logged(output_dir) / STEPS)  # what this start still needs
            latest = 0.9 * needs if moment != MOMENTS[0] else rng.uniform(0.2, 0.7 * needs)  # events: a fallback
            came = wait_for_moment(job, output_dir, moment, began + latest, rng)
            if came:
                kill_tree(job.pid)
                if job.wait() == -signal.SIGKILL:  # not a job that had just ended on its own
                    outcome.kills.append(f"{came} at {time.monotonic() - began:.2f} s")
        code = job.wait()
        if code == 0 and finished(output_dir):
            outcome.seconds = time.monotonic() - start
            return outcome
        if code >= 0 and code != 0:
            raise RuntimeError(f"the job failed on its own (exit {code}) after {len(outcome.kills)} kills; see the log")


def resume_point(output_dir: str) -> int:
    """The step the next start resumes from: the one the run folder's ``latest`` names (0 without one). Read
    without checking the checkpoint's manifest (``trainers.checkpoint.latest_checkpoint``), which hashing every
    poll would slow down."""
    try:
        with open(os.path.join(run_folder(output_dir), "checkpoints", "latest"), encoding="utf-8") as f:
            return int(f.read().strip().removeprefix("step_"))
    except (OSError, ValueError):
        return 0


def steps_logged(output_dir: str) -> int:
    """Training steps in the run folder's history (its step-0 line aside; a line being written left out)."""
    from trainers.reporting import read_history

    return max(0, len(read_history(os.path.join(run_folder(output_dir), "metrics.jsonl"))) - 1)


def wait_for_moment(
    job: subprocess.Popen, output_dir: str, moment: str, deadline: float, rng: random.Random
) -> str | None:
    """Wait for the drawn moment: a checkpoint being written, or a model queued for MLflow (then a random instant
    up to 50 ms later), or the deadline (``any time``); failing the event, the deadline or this start's reaching
    the last step (a busy machine may miss a fast write) is an ``any time`` kill. The moment, or None if the job
    ended first."""
    watched = {
        "checkpoint write": os.path.join(run_folder(output_dir), "checkpoints"),
        "model upload": os.path.join(run_folder(output_dir), "pending_models"),
    }.get(moment)
    earlier = _entries(watched) if watched else set()  # left by the start before: not this start's moment
    resumed_at = resume_point(output_dir)
    while job.poll() is None:
        if watched and _busy(watched, moment, earlier):
            time.sleep(rng.uniform(0.0, 0.05))
            return moment if job.poll() is None else None
        in_last_step = resumed_at < steps_logged(output_dir) >= STEPS - 1  # this start reached the last step
        if time.monotonic() >= deadline or in_last_step:
            return MOMENTS[0]
        time.sleep(0.0005)
    return None


def _entries(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _busy(folder: str, moment: str, earlier: set[str]) -> bool:
    new = _entries(folder) - earlier
    return any(n.startswith(".tmp_") for n in new) if moment == "checkpoint write" else bool(new)


def kill_tree(pid: int) -> None:
    """SIGKILL the job and everything it started (its session, and descendants that left it, such as Ray's)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    session = [p for p in psutil.process_iter() if _sid(p) == pid]
    for process in {p.pid: p for p in family + session}.values():
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    # the job itself is left to Popen.wait, which reads its status (-SIGKILL); waiting here would reap it first
    psutil.wait_procs([p for p in family + session if p.pid != pid], timeout=30)


def _sid(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def differences(reference_dir: str, killed_dir: str, mode: str) -> list[str]:
    """How the killed run differs from the reference: final weights (bitwise), metric history (timings aside),
    and in ``ray`` mode MLflow's record (each step once, each checkpoint one registered version)."""
    from safetensors.torch import load_file

    problems = []
    weights = "final/pytorch_lora_weights.safetensors"
    a, b = (load_file(os.path.join(run_folder(d), weights)) for d in (reference_dir, killed_dir))
    if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
        problems.append("the final weights differ")
    history_a, history_b = (metric_history(run_folder(d)) for d in (reference_dir, killed_dir))
    if history_a != history_b:
        steps = [h["step"] for h in history_b]
        problems.append(f"the metric histories differ (steps logged after the kills: {steps})")
    if mode == "ray":
        problems += mlflow_problems(killed_dir)
    return problems


def metric_history(run_dir: str, perf: bool = False) -> list[dict]:
    """The lines of ``metrics.jsonl``; without the ``perf/`` timings unless ``perf``."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if perf or not k.startswith("perf/")} for line in f]


def mlflow_problems(output_dir: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{os.path.join(output_dir, 'mlflow.db')}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    problems = []
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    if steps != list(range(1, STEPS + 1)):
        problems.append(f"MLflow's train/loss steps are {steps}, not 1..{STEPS} once each")
    versions = client.search_model_versions("name = 'kill-resume'")
    logged = sorted(int(v.tags.get("step", -1)) for v in versions)
    if logged != list(range(1, STEPS + 1)):
        problems.append(f"the registered versions are of steps {logged}, not one for each of 1..{STEPS}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/kill_resume.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("inprocess", "ray"), default="inprocess")
    p.add_argument("--kills", type=int, default=10, help="how many times to kill the job before letting it end")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--out", required=True, help="a new folder for both runs and the jobs' log")
    p.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. ray.storage_path=s3://b/p")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    reference, killed = os.path.join(args.out, "reference"), os.path.join(args.out, "killed")
    with open(os.path.join(args.out, "jobs.log"), "a", encoding="utf-8") as log:
        timing = run_uninterrupted(args.mode, reference, args.overrides, log)
        outcome = run_with_kills(args.mode, killed, args.overrides, args.kills, args.seed, timing, log)
    seconds = sum(timing)
    problems = differences(reference, killed, args.mode)
    by_moment = {m: sum(k.startswith(m) for k in outcome.kills) for m in MOMENTS}
    print(
        f"{args.mode}: {len(outcome.kills)} kills ({', '.join(f'{n} {m}' for m, n in by_moment.items())}), "
        f"{outcome.starts} starts, {outcome.seconds:.0f} s (uninterrupted: {seconds:.0f} s); "
        + ("identical to the uninterrupted run" if not problems else "; ".join(problems))
    )
    if len(outcome.kills) < args.kills:
        print(f"the run ended after {len(outcome.kills)} of the {args.kills} kills asked for")
    return 1 if problems or len(outcome.kills) < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())

"""A training worker killed mid-run: Ray Train restarts the worker group (``ray.max_failures``), which
resumes from the last checkpoint in Ray's run storage, and the run ends with the weights an
uninterrupted run reaches."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import ray
import torch
from ray.util.state import list_actors
from test_training import _trained, make_config

from pipeline.ray_train import fit
from trainers.checkpoint import latest_checkpoint
from trainers.loop import run, run_folder


def alive_train_worker_pids() -> list[int]:
    """This driver's live training workers (the session's cluster is shared with other test workers)."""
    mine = ("job_id", "=", ray.get_runtime_context().get_job_id())
    return [a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"), mine])]


def kill_worker_mid_run(run_dir: str, last_step: int, killed: dict) -> None:
    """SIGKILL the training worker once the run folder holds the step-4 checkpoint (so Ray's storage holds
    the step-2 one, reported before step 3 began) and the run is not finished; keep the metrics so far."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    while not killed:
        folder = latest_checkpoint(run_dir) if os.path.isdir(os.path.join(run_dir, "checkpoints")) else None
        if folder and 4 <= int(os.path.basename(folder).split("_")[1]) < last_step:
            pids = alive_train_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                with open(metrics, encoding="utf-8") as f:
                    killed.update(pid=pids[0], lines=f.readlines())
        time.sleep(0.05)


def test_killed_worker_restarts_from_its_checkpoint_and_matches_an_uninterrupted_run(
    ray_session, tiny_sd_dir, tmp_path
):
    sections = {"train": {"steps": 8, "checkpoint_every": 2}, "plan": {"name": "drtune", "k": 2}}
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path / "ray-run"),
        **sections,
        ray={"max_failures": 1, "storage_path": str(tmp_path / "storage"), "report_every": 1},
    )
    killed: dict = {}
    killer = threading.Thread(target=kill_worker_mid_run, args=(run_folder(cfg), 8, killed), daemon=True)
    killer.start()
    result = fit(cfg, run_folder(cfg))
    killer.join(timeout=1)
    assert killed, "the worker must have been killed mid-run"
    assert result.error is None and result.metrics["step"] == 8
    assert killed["pid"] not in alive_train_worker_pids()
    with open(os.path.join(run_folder(cfg), "metrics.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(9)), "each step once, replayed steps replaced"
    assert lines[:3] == killed["lines"][:3], "steps 0-2 (before the stored checkpoint) must not have been rerun"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker (OMP_NUM_THREADS = its 1 CPU): same kernels, same sums
    try:
        straight = run(make_config(tiny_sd_dir, str(tmp_path / "straight"), **sections))
    finally:
        torch.set_num_threads(threads)
    a, b = _trained(straight.run_dir), _trained(run_folder(cfg))
    assert a["step"] == b["step"] == 8 and a["sampler"] == b["sampler"]
    for name, tensor in a["trainable"].items():
        torch.testing.assert_close(b["trainable"][name], tensor, rtol=0, atol=0, msg=name)

"""Placement on a multi-node cluster (the session's two Ray nodes on this machine): training workers
go where ``ray.worker_resources`` are, reward actors where ``ray.reward_resources`` are, by the same
custom-resource rules a real cluster's node groups use (cluster/)."""

from __future__ import annotations

import threading
import time

import ray
from ray.util.state import list_actors
from test_training import make_config

from pipeline.ray_train import fit
from pipeline.reward_actors import NAME_PREFIX
from trainers.loop import run_folder


def node_with(resource: str) -> str:
    (node,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    return node


def watch_placement(seen: dict[str, set[str]], done: threading.Event) -> None:
    """Record the nodes of this driver's live training workers and reward actors while a run goes on."""
    mine = ("job_id", "=", ray.get_runtime_context().get_job_id())
    while not done.is_set():
        for actor in list_actors(filters=[("state", "=", "ALIVE"), mine]):
            if actor.class_name == "RayTrainWorker":
                seen["workers"].add(actor.node_id)
            elif (actor.name or "").startswith(NAME_PREFIX):
                seen["reward"].add(actor.node_id)
        time.sleep(0.2)


def test_workers_and_reward_actors_run_on_the_nodes_their_resources_name(ray_session, tiny_sd_dir, tmp_path):
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path),
        train={"steps": 3, "checkpoint_every": 3},
        ray={
            "num_workers": 2,
            "worker_resources": {"train_node": 1},
            "reward_actors": 1,
            "reward_num_cpus": 0.5,
            "reward_resources": {"reward_node": 1},
            "storage_path": str(tmp_path / "storage"),
        },
    )
    seen: dict[str, set[str]] = {"workers": set(), "reward": set()}
    done = threading.Event()
    watcher = threading.Thread(target=watch_placement, args=(seen, done), daemon=True)
    watcher.start()
    try:
        result = fit(cfg, run_folder(cfg))
    finally:
        done.set()
        watcher.join(timeout=5)
    assert result.error is None and result.metrics["step"] == 3
    train_node, reward_node = node_with("train_node"), node_with("reward_node")
    assert train_node != reward_node
    assert seen == {"workers": {train_node}, "reward": {reward_node}}

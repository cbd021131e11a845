"""Rewards served by Ray actors: the same parameter gradients as in-process, batches split over the
pool, a killed actor restarted with training going on, impossible resource requests refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import ray
import torch
from conftest import HEAD_NODE
from reward_factories import make_image_reward_spec
from test_training import make_config

from pipeline.config import ConfigError
from pipeline.ray_train import fit, resource_problems
from pipeline.reward_actors import NAME_PREFIX, RemoteReward, start_reward_actors
from rewards.config import RewardSpec
from trainers.config import RayConfig
from trainers.loop import build_trainer, run_folder
from trainers.objectives import reward_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "pipeline", "assets", "toyworld", "clip")
REWARDS = [
    {
        "name": "clip_score",
        "arch_config": os.path.join(CLIP, "toy-clip.json"),
        "checkpoint": os.path.join(CLIP, "toy-clip.safetensors"),
    },
    {"name": "symmetry", "weight": 5.0},
]


def _grads(tr) -> list[torch.Tensor]:
    loss, _, _, _ = reward_loss(tr)
    return torch.autograd.grad(loss, tr.params)


def test_remote_reward_gives_the_same_parameter_gradients(ray_session, tiny_sdxl_dir, tmp_path):
    """On SDXL (pooled embeddings and time ids in every sampling call)."""
    cfg = make_config(
        tiny_sdxl_dir,
        str(tmp_path),
        train={"batch_size": 3},
        ray={"reward_actors": 2, "reward_num_cpus": 0.5},
        plan={"name": "drtune", "k": 2},
    )
    image_reward = make_image_reward_spec(str(tmp_path / "image_reward"), weight=0.5)  # a BLIP reward in the mix
    cfg = type(cfg)(**{**cfg.__dict__, "rewards": [RewardSpec(**r) for r in REWARDS] + [image_reward]})
    local = _grads(build_trainer(cfg))
    actors = start_reward_actors(cfg.rewards, cfg.ray)
    try:
        remote_reward = RemoteReward(actors)
        remote = _grads(build_trainer(cfg, reward=remote_reward))
        images = torch.rand(3, 3, 64, 64)
        parts = remote_reward.components(images, ["a", "b", "c"])
        assert set(parts) == {"clip_score", "symmetry", "image_reward"} and parts["symmetry"].shape == (3,)
    finally:
        for actor in actors:
            ray.kill(actor)
    scale = max(float(g.abs().max()) for g in local)
    assert scale > 0
    for a, b in zip(local, remote):  # float32: the actors see chunks of the batch, so kernels sum in other orders
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def fit_with_an_actor_killed(cfg, prefix: str) -> tuple:
    """Run ``fit(cfg)`` while a thread SIGKILLs the one actor named ``prefix*`` once step 1 is logged; check
    that the actor restarted and the run finished every step once, unskipped; return ``(result, steps)``."""
    metrics, pids = os.path.join(run_folder(cfg), "metrics.jsonl"), []

    def kill():
        while not (os.path.isfile(metrics) and sum(1 for _ in open(metrics)) >= 2):
            time.sleep(0.2)
        (name,) = [a for a in ray.util.list_named_actors() if a.startswith(prefix)]
        actor = ray.get_actor(name)
        pids.append(ray.get(actor.pid.remote()))
        os.kill(pids[0], signal.SIGKILL)
        pids.append(ray.get(actor.pid.remote(), timeout=120))  # the restarted actor answers

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    result = fit(cfg, run_folder(cfg))
    killer.join(timeout=5)
    assert len(pids) == 2 and pids[0] != pids[1], "the actor must have been killed and restarted"
    assert result.error is None and result.metrics["step"] == cfg.train.steps
    steps = [json.loads(line) for line in open(metrics)]
    assert [s["step"] for s in steps] == list(range(cfg.train.steps + 1)) and steps[-1]["train/skipped_steps"] == 0
    return result, steps


def test_killed_reward_actor_restarts_and_training_goes_on(ray_session, tiny_sd_dir, tmp_path):
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path),
        train={"steps": 4, "checkpoint_every": 2},
        ray={"reward_actors": 1, "reward_num_cpus": 0.5, "storage_path": str(tmp_path / "ray")},
    )
    fit_with_an_actor_killed(cfg, NAME_PREFIX)


def test_impossible_resource_requests_are_refused_before_training(ray_session, tiny_sd_dir, tmp_path):
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path),
        ray={"reward_actors": 2, "reward_num_gpus": 1, "reward_resources": {"reward_node": 1}},
    )
    problems = resource_problems(cfg, [{"CPU": 8.0}])
    assert any("2 reward actor(s)" in p and "GPU: 1" in p and "fit only 0" in p for p in problems), problems
    assert resource_problems(make_config(tiny_sd_dir, str(tmp_path)), [{"CPU": 1.0}]) == []
    with pytest.raises(ConfigError, match="GPU"):
        fit(cfg, run_folder(cfg))
    assert not os.path.exists(run_folder(cfg)), "nothing may start or be written"


def test_a_worker_no_single_node_can_hold_is_refused_naming_the_nodes(ray_session, tiny_sd_dir, tmp_path):
    # the session cluster has head + reward CPUs in all, but no node has head + 1: Ray would wait forever
    head, train_node = HEAD_NODE["num_cpus"], HEAD_NODE["resources"]["train_node"]
    cfg = make_config(tiny_sd_dir, str(tmp_path), ray={"cpus_per_worker": head + 1})
    with pytest.raises(ConfigError, match=rf"needing \{{CPU: {head + 1}\}} fit only 0 time\(s\)") as err:
        fit(cfg, run_folder(cfg))
    assert "ray.cpus_per_worker" in str(err.value) and f"{{CPU: {head}, train_node: {train_node}}}" in str(err.value)
    totals = resource_problems(
        make_config(tiny_sd_dir, str(tmp_path), ray={"num_workers": 2, "reward_actors": 2}), [{"CPU": 3.0}]
    )
    assert totals and "together need 4 CPU but the cluster has 3" in totals[0]


def test_malformed_images_get_a_clear_error_from_the_actor(ray_session):
    (actor,) = start_reward_actors([RewardSpec(name="symmetry")], RayConfig(reward_actors=1, reward_num_cpus=0.5))
    try:
        for images, message in [
            (torch.rand(2, 16, 16), r"shape \(B, 3, H, W\)"),
            (torch.full((2, 3, 8, 8), float("nan")), r"values in \[0, 1\]"),
        ]:
            with pytest.raises(ray.exceptions.RayTaskError, match=message):
                ray.get(actor.score.remote(images, ["a", "b"], True), timeout=60)
        with pytest.raises(ray.exceptions.RayTaskError, match="2 prompts"):
            ray.get(actor.score.remote(torch.rand(3, 3, 8, 8), ["a", "b"], False), timeout=60)
    finally:
        ray.kill(actor)

"""The DI* teacher served by Ray actors: the same generator gradients as in-process, a killed actor
restarted with training going on, and teacher actors counted in the resource check."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import ray
import torch
from test_distill import PROMPTS, distill_config

from pipeline.ray_train import fit, resource_problems
from pipeline.teacher_actors import NAME_PREFIX, RemoteTeacher, start_teacher_actors
from trainers.loop import build_trainer, run_folder


def _generator_grads(tr) -> list[torch.Tensor]:
    model, d = tr.model, tr.distill
    cond = model.family.encode_prompts(model, PROMPTS)
    uncond = model.family.encode_prompts(model, [""] * len(PROMPTS))
    loss, _, _ = d.generator_loss(cond, uncond, PROMPTS, tr.reward, tr.gen, tr.replicas)
    return list(torch.autograd.grad(loss, tr.params))


def test_remote_teacher_gives_the_same_generator_gradients(ray_session, tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"ray": {"teacher_actors": 2, "teacher_num_cpus": 0.5}})
    local_tr = build_trainer(cfg)
    with torch.no_grad():  # move the generator off the teacher so the divergence has a gradient to give
        for p in local_tr.params:
            p.add_(0.1)
    local = _generator_grads(local_tr)
    actors = start_teacher_actors(cfg)
    try:
        remote_tr = build_trainer(cfg, teacher=RemoteTeacher(actors))
        assert remote_tr.distill.nets.teacher is None, "with actors the worker holds no teacher"
        with torch.no_grad():
            for p in remote_tr.params:
                p.add_(0.1)
        remote = _generator_grads(remote_tr)
    finally:
        for actor in actors:
            ray.kill(actor)
    scale = max(float(g.abs().max()) for g in local)
    assert scale > 0
    for a, b in zip(local, remote, strict=True):  # float32: chunks of the batch run in other kernel orders
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_killed_teacher_actor_restarts_and_training_goes_on(ray_session, tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"train": {"steps": 4, "checkpoint_every": 2}, "ray": {
        "teacher_actors": 1, "teacher_num_cpus": 0.5, "storage_path": str(tmp_path / "ray")}})
    metrics = os.path.join(run_folder(cfg), "metrics.jsonl")
    pids = []

    def kill_after_step_1():
        while not (os.path.isfile(metrics) and sum(1 for _ in open(metrics)) >= 2):
            time.sleep(0.2)
        (name,) = [a for a in ray.util.list_named_actors() if a.startswith(NAME_PREFIX)]
        actor = ray.get_actor(name)
        pids.append(ray.get(actor.pid.remote()))
        os.kill(pids[0], signal.SIGKILL)
        pids.append(ray.get(actor.pid.remote(), timeout=120))  # the restarted actor answers

    killer = threading.Thread(target=kill_after_step_1, daemon=True)
    killer.start()
    result = fit(cfg, run_folder(cfg))
    killer.join(timeout=5)
    assert len(pids) == 2 and pids[0] != pids[1], "the actor must have been killed and restarted"
    assert result.error is None and result.metrics["step"] == 4
    steps = [json.loads(line) for line in open(metrics)]
    assert [s["step"] for s in steps] == list(range(5)) and steps[-1]["train/skipped_steps"] == 0
    assert "teacher/multi_step/trained" in result.metrics, "the teacher baselines reach the driver"


def test_teacher_actors_count_in_the_resource_check(tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"ray": {"teacher_actors": 2, "teacher_num_gpus": 1}})
    problems = resource_problems(cfg, [{"CPU": 8.0, "GPU": 1.0}])
    assert any("2 teacher actor(s)" in p and "fit only 1" in p and "ray.teacher_num_gpus" in p for p in problems)

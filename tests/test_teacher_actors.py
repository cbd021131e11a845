"""The DI* teacher served by Ray actors: the same generator gradients as in-process, a killed actor
restarted with training going on, and teacher actors counted in the resource check."""

from __future__ import annotations

import ray
import torch
from test_distill import PROMPTS, distill_config
from test_reward_actors import fit_with_an_actor_killed

from pipeline.ray_train import resource_problems
from pipeline.teacher_actors import NAME_PREFIX, RemoteTeacher, start_teacher_actors
from trainers.loop import build_trainer


def _generator_grads(tr) -> list[torch.Tensor]:
    model, d = tr.model, tr.objective.distill
    cond = model.family.encode_prompts(model, PROMPTS)
    uncond = model.family.encode_prompts(model, [""] * len(PROMPTS))
    loss, _, _ = d.generator_loss(cond, uncond, PROMPTS, tr.reward, tr.gen, tr.replicas)
    return list(torch.autograd.grad(loss, tr.params))


def _moved_grads(cfg, teacher=None) -> torch.Tensor:
    """All generator gradients, flat, with the generator moved off the teacher so the divergence has one."""
    tr = build_trainer(cfg, teacher=teacher)
    with torch.no_grad():
        for p in tr.params:
            p.add_(0.1)
    return torch.cat([g.flatten() for g in _generator_grads(tr)])


def test_remote_teacher_gives_the_same_generator_gradients(ray_session, tiny_sd_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors (teacher_num_cpus < 1), so kernels sum in the same order
    try:
        for actors, tolerance in ((1, 0.0), (2, 1e-5)):
            cfg = distill_config(
                tiny_sd_dir, str(tmp_path), {"ray": {"teacher_actors": actors, "teacher_num_cpus": 0.5}}
            )
            local = _moved_grads(cfg)
            pool = start_teacher_actors(cfg)
            try:
                assert build_trainer(cfg, teacher=RemoteTeacher(pool)).objective.distill.nets.teacher is None, (
                    "with actors the worker holds no teacher"
                )
                remote = _moved_grads(cfg, RemoteTeacher(pool))
            finally:
                for actor in pool:
                    ray.kill(actor)
            # one actor sees the whole batch: bit-identical; two see chunks, whose kernels sum in other orders
            assert float(local.norm()) > 0
            assert float((remote - local).norm() / local.norm()) <= tolerance, actors
    finally:
        torch.set_num_threads(threads)


def test_a_remote_flux_teacher_gives_the_same_generator_gradients(ray_session, tiny_flux_dir, tmp_path):
    """The actor builds a flow teacher as the worker does: FLUX.1 [dev]'s embedded guidance and the velocity's
    noise prediction (``FlowNoise``), so one actor gives the in-process gradients bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = {"model": {"path": tiny_flux_dir, "device": "cpu", "resolution": 16}}
        cfg = distill_config(
            tiny_flux_dir, str(tmp_path), model | {"ray": {"teacher_actors": 1, "teacher_num_cpus": 0.5}}
        )
        local = _moved_grads(cfg)
        pool = start_teacher_actors(cfg)
        try:
            remote = _moved_grads(cfg, RemoteTeacher(pool))
        finally:
            for actor in pool:
                ray.kill(actor)
        assert float(local.norm()) > 0 and torch.equal(remote, local)
    finally:
        torch.set_num_threads(threads)


def test_killed_teacher_actor_restarts_and_training_goes_on(ray_session, tiny_sd_dir, tmp_path):
    cfg = distill_config(
        tiny_sd_dir,
        str(tmp_path),
        {
            "train": {"steps": 4, "checkpoint_every": 2},
            "ray": {"teacher_actors": 1, "teacher_num_cpus": 0.5, "storage_path": str(tmp_path / "ray")},
        },
    )
    result, _ = fit_with_an_actor_killed(cfg, NAME_PREFIX)
    assert "teacher/multi_step/trained" in result.metrics, "the teacher baselines reach the driver"


def test_teacher_actors_count_in_the_resource_check(tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"ray": {"teacher_actors": 2, "teacher_num_gpus": 1}})
    problems = resource_problems(cfg, [{"CPU": 8.0, "GPU": 1.0}])
    assert any("2 teacher actor(s)" in p and "fit only 1" in p and "ray.teacher_num_gpus" in p for p in problems)

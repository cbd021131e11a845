"""Data parallelism on Ray Train: two workers with batch b take the same steps as one worker with batch 2b
(the ddpo-pytorch#10 class of bug: replicas that silently train on their own, or average wrongly)."""

from __future__ import annotations

import torch
from test_training import _trained, make_config

from pipeline.ray_train import fit
from trainers.loop import run, run_folder
from trainers.replicas import Replicas


def test_two_workers_equal_one_worker_with_the_doubled_batch(ray_session, tiny_sdxl_dir, tmp_path):
    """On SDXL, so that pooled embeddings and time ids travel through the workers' sampling too."""
    # Adam's first steps are lr * sign(g) for tiny g, which turns float reassociation in the all-reduce
    # into lr-sized differences; eps = 1 makes the update linear in g, so equal gradients show as equal weights
    sections = {"plan": {"name": "drtune", "k": 2}, "optim": {"lr": 0.5, "eps": 1.0}}
    one = run(make_config(tiny_sdxl_dir, str(tmp_path / "one"), train={"batch_size": 2, "steps": 3}, **sections))
    cfg = make_config(
        tiny_sdxl_dir,
        str(tmp_path / "two"),
        train={"batch_size": 1, "steps": 3},
        ray={"num_workers": 2, "storage_path": str(tmp_path / "ray")},
        **sections,
    )
    result = fit(cfg, run_folder(cfg))
    assert result.error is None and result.metrics["step"] == 3
    assert result.metrics["dp/max_weight_divergence"] == 0.0, "replicas must hold identical weights"
    a, b = _trained(one.run_dir), _trained(run_folder(cfg))
    assert a["step"] == b["step"] == 3
    moved = 0.0
    for name, tensor in a["trainable"].items():
        torch.testing.assert_close(b["trainable"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((tensor - make_initial(tiny_sdxl_dir, tmp_path)[name]).abs().max()))
    assert moved > 1e-3, "the comparison must be between weights that actually trained"
    assert abs(result.metrics["train/loss"] - one.metrics["train/loss"]) < 1e-4


_initial: dict = {}


def make_initial(tiny_sd_dir, tmp_path) -> dict[str, torch.Tensor]:
    """The seeded initial adapter weights (the same on every replica)."""
    if not _initial:
        from trainers.loop import build_trainer
        from trainers.models import trainable_state_dict

        _initial.update(trainable_state_dict(build_trainer(make_config(tiny_sd_dir, str(tmp_path / "init"))).model))
    return _initial


def test_replica_slices_and_generators():
    two = [Replicas(rank, 2) for rank in (0, 1)]
    assert [r.own_slice(3) for r in two] == [slice(0, 3), slice(3, 6)]
    draws = [torch.randn(4, generator=r.step_generator(0, 5)) for r in two]
    assert not torch.equal(draws[0], draws[1]), "replicas must not share sampling noise"
    assert torch.equal(draws[0], torch.randn(4, generator=two[0].step_generator(0, 5))), "noise is reproducible"
    assert Replicas.current() == Replicas() and Replicas().max_divergence([torch.ones(2)]) == 0.0


def test_two_distill_workers_equal_one_worker_with_the_doubled_batch(ray_session, tiny_sd_dir, tmp_path):
    """DI*: the generator and the fake score (its own optimiser, its gradients all-reduced too) both match."""
    from test_distill import distill_config

    # eps = 1 keeps Adam linear in g only while |g| << 1 (see above); the l2 distance's gradients are sqrt(n) = 32
    # times the rms form's on this latent, so the rms form keeps the comparison in that regime
    optim, distance = {"lr": 0.5, "eps": 1.0}, {"huber_norm": "rms"}
    one = distill_config(
        tiny_sd_dir, str(tmp_path / "one"), {"train": {"batch_size": 2, "steps": 2}, "optim": optim}, **distance
    )
    two = distill_config(
        tiny_sd_dir,
        str(tmp_path / "two"),
        {
            "train": {"batch_size": 1, "steps": 2},
            "optim": optim,
            "ray": {"num_workers": 2, "storage_path": str(tmp_path / "ray")},
        },
        **distance,
    )
    run(one)
    result = fit(two, run_folder(two))
    assert result.error is None and result.metrics["dp/max_weight_divergence"] == 0.0
    a, b = _trained(run_folder(one)), _trained(run_folder(two))
    for mine, theirs in ((a["trainable"], b["trainable"]), (a["objective"]["fake"], b["objective"]["fake"])):
        for name, tensor in mine.items():
            torch.testing.assert_close(theirs[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")  # noqa: B023
    assert any(float(t.abs().max()) > 0 for n, t in a["objective"]["fake"].items() if "lora_B" in n), "fake trained"

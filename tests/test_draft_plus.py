"""DRaFT+'s penalty in the training loop (``plan.kl_coeff``): beta = 0 is the plain objective, beta > 0
keeps the tuned network closer to its base, and what cannot take the penalty is refused before a run.
Its gradient against autograd is in ``tests/test_grad_plans.py``."""

from __future__ import annotations

import pytest
import torch
from test_training import make_config

from pipeline.config import ConfigError
from trainers.engine import sample
from trainers.loop import build_trainer, train_step
from trainers.models import trainable_state_dict

SECTIONS = {"plan": {"name": "draft_k", "k": 2}, "optim": {"lr": 0.05, "warmup_steps": 1}}


def trained(folder: str, out: str, steps: int, **plan) -> tuple[object, list[dict[str, float]]]:
    cfg = make_config(folder, out, **{**SECTIONS, "plan": {**SECTIONS["plan"], **plan}})
    tr = build_trainer(cfg)
    return tr, [train_step(tr) for _ in range(steps)]


def drift_of(tr) -> float:
    """The mean drift from the base network over a full no-shortcut sampling run (every step with gradient)."""
    from trainers.grad_plan import StepFlags

    model = tr.model
    prompts = ["a red circle", "a blue square"]
    x_T = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(9))
    with torch.enable_grad():
        traj = sample(
            model,
            model.family.encode_prompts(model, prompts),
            model.family.encode_negative(model, 2),
            x_T,
            tr.schedule,
            [StepFlags(grad=True) for _ in range(len(tr.schedule))],
            guidance=3.0,
            drift=True,
        )
    return float(torch.stack(traj.drift).mean())


def test_beta_zero_is_the_plain_objective_bit_for_bit(tiny_sd_dir, tmp_path):
    plain, plain_metrics = trained(tiny_sd_dir, str(tmp_path / "a"), 3)
    zero, zero_metrics = trained(tiny_sd_dir, str(tmp_path / "b"), 3, kl_coeff=0.0)
    penalised, metrics = trained(tiny_sd_dir, str(tmp_path / "c"), 3, kl_coeff=1.0)
    for key, value in trainable_state_dict(plain.model).items():
        assert torch.equal(trainable_state_dict(zero.model)[key], value), key
    assert not any("train/kl" in m for m in zero_metrics), "beta = 0 runs no base-network calls"
    assert [m["train/loss"] for m in zero_metrics] == [m["train/loss"] for m in plain_metrics]
    assert all(m["train/kl"] >= 0 for m in metrics) and metrics[-1]["train/kl"] > 0
    changed = [
        k
        for k, v in trainable_state_dict(penalised.model).items()
        if not torch.equal(v, trainable_state_dict(plain.model)[k])
    ]
    assert changed, "beta > 0 must change the update"


def test_the_penalty_keeps_the_tuned_network_near_its_base(tiny_sd_dir, tmp_path):
    free, _ = trained(tiny_sd_dir, str(tmp_path / "a"), 4)
    held, _ = trained(tiny_sd_dir, str(tmp_path / "b"), 4, kl_coeff=1000.0)
    assert drift_of(held) < 0.5 * drift_of(free)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"plan": {"kl_coeff": -1.0}}, "plan.kl_coeff: must be a finite number >= 0, got -1.0"),
        (
            {"plan": {"kl_coeff": 0.1}, "trainable": {"kind": "full"}},
            "plan.kl_coeff: the DRaFT+ penalty compares the network with its LoRA adapters on and off; it needs "
            "trainable.kind=lora and a gradient plan (got trainable.kind=full, plan.name=draft_k); set plan.kl_coeff=0",
        ),
    ],
)
def test_what_cannot_take_the_penalty_is_refused(tiny_sd_dir, tmp_path, sections, message):
    with pytest.raises(ConfigError) as err:
        make_config(tiny_sd_dir, str(tmp_path), **sections)
    assert message in str(err.value)

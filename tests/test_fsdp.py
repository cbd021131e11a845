"""FSDP for full fine-tunes: two Ray Train workers with sharded weights, gradients and AdamW state take the
steps one unsharded worker takes with the doubled batch, also across a resume from Ray storage, and the
gathered weights load through plain diffusers."""

from __future__ import annotations

import os

import pytest
import torch
from test_training import _trained, make_config

from pipeline.config import ConfigError, load_config
from pipeline.ray_train import fit
from trainers.config import Config
from trainers.loop import run, run_folder

FULL = {"trainable": {"kind": "full"}, "plan": {"name": "drtune", "k": 2}, "optim": {"lr": 0.05, "eps": 1.0}}


def test_fsdp_workers_equal_one_worker_with_the_doubled_batch_across_a_resume(ray_session, tiny_sd_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    one = run(make_config(tiny_sd_dir, str(tmp_path / "one"), train={"batch_size": 2, "steps": 4}, **FULL))

    def sharded(steps: int) -> Config:
        return make_config(
            tiny_sd_dir,
            str(tmp_path / "two"),
            train={"batch_size": 1, "steps": steps, "fsdp": True},
            ray={"num_workers": 2, "storage_path": str(tmp_path / "ray")},
            **FULL,
        )

    first = fit(sharded(2), run_folder(sharded(2)))
    assert first.error is None and first.metrics["dp/local_weight_fraction"] == pytest.approx(0.5, abs=0.01)
    second = fit(sharded(4), run_folder(sharded(4)))  # resumes the sharded state from Ray's storage
    assert second.error is None and second.metrics["step"] == 4
    a, b = _trained(one.run_dir), _trained(run_folder(sharded(4)))
    assert a["step"] == b["step"] == 4 and set(a["trainable"]) == set(b["trainable"])
    moved = 0.0
    initial = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").state_dict()
    for name, tensor in a["trainable"].items():
        torch.testing.assert_close(b["trainable"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((tensor - initial[name]).abs().max()))
    assert moved > 1e-3, "the comparison must be between weights that actually trained"
    final = UNet2DConditionModel.from_pretrained(os.path.join(run_folder(sharded(4)), "final", "unet")).state_dict()
    for name, tensor in b["trainable"].items():
        assert torch.equal(final[name], tensor), name


def test_fsdp_needs_a_full_fine_tune():
    with pytest.raises(ConfigError, match="train.fsdp: shards a full fine-tune"):
        load_config(Config, None, ["train.fsdp=true"])

"""The training core as a Ray Train job on a real local Ray."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_training import make_config

from pipeline.config import ConfigError
from pipeline.ray_train import fit, run_outputs
from trainers.checkpoint import latest_checkpoint, load_checkpoint
from trainers.loop import run_folder


def test_ray_train_job_writes_run_folder_and_reports_checkpoints(ray_session, tiny_sd_dir, tmp_path):
    cfg = make_config(tiny_sd_dir, str(tmp_path), train={"steps": 3, "checkpoint_every": 2},
                      ray={"storage_path": str(tmp_path / "ray")})
    run_dir = run_folder(cfg)
    result = fit(cfg, run_dir)
    assert result.error is None
    assert result.checkpoint is not None and result.metrics["step"] == 3
    with result.checkpoint.as_directory() as folder:
        assert load_checkpoint(folder)["step"] == 3
        assert os.path.isfile(os.path.join(folder, "model", "pytorch_lora_weights.safetensors"))
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 3
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["step"] == 3 and "trained" in summary["held_out"]

    held_out, final_dir = run_outputs(result, run_dir)
    assert held_out == summary["held_out"] and final_dir == os.path.join(run_dir, "final")
    shutil.rmtree(final_dir)  # as on a driver that is not on worker 0's machine
    assert run_outputs(result, run_dir)[1] == final_dir
    assert os.path.isfile(os.path.join(final_dir, "pytorch_lora_weights.safetensors"))

    with pytest.raises(ConfigError, match="already holds run"):
        fit(make_config(tiny_sd_dir, str(tmp_path), train={"resume": False}, ray={"storage_path": str(tmp_path / "ray")}),
            run_dir)


def test_a_run_resumes_from_ray_storage_without_its_run_folder(ray_session, tiny_sd_dir, tmp_path):
    storage = {"storage_path": str(tmp_path / "ray")}
    first = make_config(tiny_sd_dir, str(tmp_path), train={"steps": 2}, ray=storage)
    fit(first, run_folder(first))
    shutil.rmtree(run_folder(first))  # e.g. a new node, or a lost local disk
    longer = make_config(tiny_sd_dir, str(tmp_path), train={"steps": 4}, ray=storage)
    result = fit(longer, run_folder(longer))
    assert result.error is None and result.metrics["step"] == 4
    with open(os.path.join(run_folder(longer), "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [3, 4], "steps 1-2 came from the stored checkpoint"

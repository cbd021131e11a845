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


def test_ray_train_job_writes_run_folder_reports_checkpoints_and_resumes_from_ray_storage(
    ray_session, tiny_sd_dir, tmp_path
):
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path),
        train={"steps": 3, "checkpoint_every": 2},
        ray={"storage_path": str(tmp_path / "ray")},
    )
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
        fit(
            make_config(
                tiny_sd_dir, str(tmp_path), train={"resume": False}, ray={"storage_path": str(tmp_path / "ray")}
            ),
            run_dir,
        )

    # the run resumes from Ray's storage without its run folder (e.g. on a new node, or after a lost disk)
    shutil.rmtree(run_dir)
    longer = make_config(
        tiny_sd_dir,
        str(tmp_path),
        train={"steps": 5, "checkpoint_every": 2},
        ray={"storage_path": str(tmp_path / "ray")},
    )
    result = fit(longer, run_folder(longer))
    assert result.error is None and result.metrics["step"] == 5
    with open(os.path.join(run_folder(longer), "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [4, 5], "steps 1-3 came from the stored checkpoint"

"""The training core as a Ray Train job on a real local Ray."""

from __future__ import annotations

import json
import os

from test_training import make_config

from pipeline.ray_train import fit
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

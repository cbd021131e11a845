"""Kills at random moments (seeded), each followed by a restart of the same command: the run ends as if it had
never been interrupted (``tests/kill_resume.py``; ``python tests/kill_resume.py --kills 100`` for a long run)."""

from __future__ import annotations

import kill_resume
import pytest


@pytest.mark.slow
def test_ten_kills_of_the_training_core_at_random_moments_change_nothing(tmp_path, capsys):
    """The core in a child process (no Ray), a checkpoint every step, killed 10 times: about half of the kills
    land while a checkpoint is being written."""
    assert kill_resume.main(["--mode", "inprocess", "--kills", "10", "--seed", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "inprocess: 10 kills" in printed and "identical to the uninterrupted run" in printed


@pytest.mark.slow
def test_ten_kills_of_the_ray_job_with_s3_storage_change_nothing(tracking_stack, tmp_path, capsys):
    """``python -m pipeline.train`` (in-process Ray, Ray Train, MLflow in the run folder, Ray's checkpoints in S3
    on the moto server) killed 10 times with its whole process tree, while a checkpoint is written, while a model
    waits for MLflow, or at any time: same weights and history, each step logged and each checkpoint registered
    once."""
    overrides = [
        f"ray.storage_path=s3://{tracking_stack['bucket']}/kill-resume",
        f"ray.s3_endpoint={tracking_stack['s3']}",
    ]
    args = ["--mode", "ray", "--kills", "10", "--seed", "5", "--out", str(tmp_path), *overrides]
    assert kill_resume.main(args) == 0
    printed = capsys.readouterr().out
    assert "ray: 10 kills" in printed and "identical to the uninterrupted run" in printed

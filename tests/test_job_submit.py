"""The toy-world training run as a Ray job: ``ray job submit --working-dir .`` against a real local head.

The head comes from ``python -m cluster.local up`` on ports free at test time (not the in-process
``ray_session`` fixture) and is stopped with ``down`` afterwards. The job runs the quickstart config,
whose paths are relative to the repository root: that it finds its model and reward weights shows
the Ray Train worker stayed in the job's uploaded working directory (``pipeline/ray_train.py`` sets
``RAY_CHDIR_TO_TRIAL_DIR=0``). About a minute on 2 cores: ~6-15 s up, ~30-45 s job, ~4 s down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import shell_env
from test_quickstart import SHORT  # the quickstart cut to two steps

from cluster.local import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's bin: its `ray`, and the job's `python` via the head's PATH
# .gitignore'd folders (.venv, runs) are skipped by Ray anyway; listed so the upload stays ~15 MB
# (mostly pipeline/assets, which the job needs) even without that file.
RUNTIME_ENV = {
    "excludes": [".git", ".venv", "runs", "docs", "tests", ".pytest_cache", "**/__pycache__", "*.egg-info"],
    "env_vars": {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    },
}


def run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = shell_env(PATH=BIN + os.pathsep + os.environ.get("PATH", ""))  # with the session's Ray token
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - t0


@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    """A Ray head from ``python -m cluster.local up``; yields its job address and the timings."""
    state = tmp_path_factory.mktemp("stack")
    ports = dict(zip(("--port-gcs", "--port-dashboard", "--port-client", "--port-agent"), free_ports(4)))
    stack = [sys.executable, "-m", "cluster.local"]
    up, up_s = run(
        [
            *stack,
            "up",
            "--services",
            "ray",
            "--state-dir",
            str(state),
            "--num-cpus",
            "2",
            *(str(x) for item in ports.items() for x in item),
        ],
        timeout=240,
    )
    timings = {"up": up_s}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{ports['--port-dashboard']}", timings
    finally:
        down, timings["down"] = run([*stack, "down", "--state-dir", str(state)], timeout=120)
        print(f"\nlocal head: up {timings['up']:.1f} s, down {timings['down']:.1f} s ({down.stdout.strip()})")
        assert down.returncode == 0, down.stdout + down.stderr


def free_ports(n: int) -> list[int]:
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def test_toy_world_job_trains_and_writes_checkpoint_and_lora(local_head, tmp_path):
    address, timings = local_head
    out = tmp_path / "runs"
    submit = [
        os.path.join(BIN, "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(RUNTIME_ENV),
        "--",
        "python",
        "-m",
        "pipeline.train",
        *SHORT,
        f"train.output_dir={out}",
    ]
    result, timings["job"] = run(submit, timeout=600)
    print(f"\nray job submit: {timings['job']:.1f} s")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log)

    run_dir = re.search(r"^run folder: (.+)$", log, re.MULTILINE).group(1).strip()
    assert run_dir == str(out / "drtune-seed0")
    assert_clean_console(result.stdout, run_dir)
    with open(os.path.join(run_dir, "checkpoints", "latest"), encoding="utf-8") as f:
        latest = os.path.join(run_dir, "checkpoints", f.read().strip())
    assert os.path.basename(latest) == "step_000002" and os.path.isfile(os.path.join(latest, "state.pt"))
    assert os.path.isfile(os.path.join(run_dir, "final", "pytorch_lora_weights.safetensors"))
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    # the relative paths were used as written, from the worker's working directory
    assert cfg["model"]["path"] == "pipeline/assets/toyworld/sd" and cfg["ray"]["address"] is None
    assert timings["job"] < 300, f"the job took {timings['job']:.0f} s"


def test_the_heads_job_api_answers_only_with_the_token(local_head):
    from test_security import job_api_answers

    from pipeline.ray_env import TOKEN_PATH

    address, _ = local_head
    with open(os.environ[TOKEN_PATH], encoding="utf-8") as f:
        assert job_api_answers(address, f.read()) == (401, 200)


def assert_clean_console(console: str, run_dir: str) -> None:
    """The job's console (2 steps, evaluations at 0 and 2, a checkpoint at 2): a progress line per step,
    a line per evaluation and per checkpoint, the held-out table, no line twice, nothing of Ray Train's
    reports, which went to the run's log with the libraries' output."""
    lines = [line.rstrip() for line in console.splitlines() if line.strip().strip("-")]
    assert "TrainingReport(" not in console and "Loading pipeline components" not in console, console[-3000:]
    assert [
        m[1] for line in lines if (m := re.match(r"step (\d+)/2 \| reward \S+ \| loss \S+ \| \S+ s/step \| ETA ", line))
    ] == ["1", "2"], console[-3000:]
    assert sum(line.startswith("eval step 0 (base): trained ") for line in lines) == 1
    assert sum(line.startswith("eval step 2: trained ") for line in lines) == 1
    checkpoints = [line for line in lines if line.startswith("checkpoint step")]
    assert len(checkpoints) == 1 and re.fullmatch(
        rf"checkpoint step 2: {re.escape(run_dir)}/checkpoints/step_000002 \| MLflow toyworld version \d+ "
        r"\(models:/m-\w+\)",
        checkpoints[0],
    ), checkpoints
    assert any(re.match(r"trained/clip_score +\S+ +\S+ +[+-]\S+ \[", line) for line in lines), "the held-out table"
    duplicated = sorted({line for line in lines if lines.count(line) > 1})
    assert not duplicated, duplicated
    log = os.path.join(run_dir, "train.log")
    assert lines.count(f"log of Ray and the libraries: {log}") == 1
    with open(log, encoding="utf-8") as f:
        assert "TrainingReport(" in f.read(), "Ray Train's reports are in the log"

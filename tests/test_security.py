"""The main job (``python -m pipeline.train``) is reachable only from this machine, and its Ray only with
the token; a worker that fails anyway is reported in one message."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest
from conftest import shell_env

from pipeline.ray_env import TOKEN_PATH, token_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = [
    "train.steps=6",
    "train.checkpoint_every=3",
    "eval.max_prompts=2",
    "eval.images_per_prompt=1",
    "eval.require=[]",
]


def test_the_token_file_is_made_once_and_readable_by_its_owner_only(tmp_path, monkeypatch):
    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv(TOKEN_PATH, str(path))
    assert token_file() == str(path)
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token) and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert token_file() == str(path) and path.read_text() == token  # kept, and closed to others
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def listeners(root: psutil.Process) -> set[tuple[str, int, str]]:
    """(address, port, process name) of each TCP socket that ``root`` or a descendant listens on."""
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            found |= {
                (c.laddr.ip, c.laddr.port, process.name())
                for c in process.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def http_status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def job_api_answers(dashboard: str, token: str) -> tuple[int, int]:
    """The job API's status without and with the token, once the dashboard's job module is up."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return http_status(f"{dashboard}/api/jobs/"), http_status(f"{dashboard}/api/jobs/", token)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_the_main_job_listens_on_loopback_needs_the_token_and_reports_a_failing_worker_once(tmp_path):
    """A real toy run through Ray Train, with tracking and a reward actor, that diverges (a learning rate of
    1e30) at its second step:

    - every TCP listener of its process tree is on loopback, except torch's TCPStore in the rank-0 worker,
      which binds every address (README, Security);
    - the dashboard's job API answers 401 without the token and 200 with it;
    - the job exits 1 with the worker's exception type and message once, and the file holding the full
      traceback; no traceback reaches the console.
    """
    command = [
        sys.executable,
        "-m",
        "pipeline.train",
        *SHORT,
        "ray.reward_actors=1",
        "optim.lr=1e30",
        "train.max_bad_steps=1",
        f"train.output_dir={tmp_path}",
    ]
    job = subprocess.Popen(
        command, cwd=ROOT, env=shell_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    root, seen, answers = psutil.Process(job.pid), set(), None
    while job.poll() is None:
        seen |= listeners(root)
        dashboard = next((m[1] for line in list(lines) if (m := re.match(r"Ray dashboard: (http://\S+)", line))), None)
        if dashboard and answers is None:
            answers = job_api_answers(dashboard, open(os.environ[TOKEN_PATH], encoding="utf-8").read())
        time.sleep(0.2)
    reader.join(10)
    output = "".join(lines)

    names = {name for _, _, name in seen}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::RayTrainWo") for n in names), names
    assert any(n.startswith("ray::RewardServer") for n in names), names
    exposed = {(ip, port, name) for ip, port, name in seen if not is_loopback(ip)}
    store = {(ip, port) for ip, port, name in exposed if name.startswith("ray::RayTrainWo")}
    assert {(ip, port) for ip, port, _ in exposed} == store and len(store) <= 1, f"beyond loopback: {sorted(exposed)}"
    assert answers == (401, 200), f"job API without / with the token: {answers}"

    assert job.returncode == 1, output[-3000:]
    assert "Traceback" not in output and output.count("TrainingAborted") == 1, output[-3000:]
    assert "TrainingReport(" not in output and "Loading pipeline components" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), f"a line printed twice: {output[-3000:]}"
    assert "rank 0: TrainingAborted: 1 steps in a row had a non-finite loss" in output
    log = re.search(r"^full tracebacks: (\S+)$", output, re.MULTILINE).group(1)
    assert log == str(tmp_path / "drtune-seed0" / "error.log")
    with open(log, encoding="utf-8") as f:
        text = f.read()
    assert "Traceback (most recent call last)" in text and 'trainers/loop.py", line' in text

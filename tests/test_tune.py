"""Ray Tune searches: the space is validated before Ray starts; a search over tiny trials runs with ASHA
(stopping at least one early), survives its driver being killed (``Tuner.restore``), and records a
parent MLflow run with one child per trial, a summary table and the best trial registered with an alias."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from conftest import shell_env
from mlflow import MlflowClient
from test_training import make_config

from pipeline.config import ConfigError, dump_yaml
from pipeline.tune import load_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def search_file(tmp_path, tiny_sd_dir: str, search: dict, **sections) -> str:
    cfg = make_config(tiny_sd_dir, str(tmp_path / "runs"), **sections)
    data = yaml.safe_load(dump_yaml(cfg))
    data["search"] = search
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"plan.kk": {"choice": [1, 2]}}, "search.space.plan.kk: not a config key; did you mean plan.k?"),
        ({"plan.k": {"normal": [0, 1]}}, "search.space.plan.k: expected one of choice, grid, randint"),
        ({"plan.k": {"choice": [1, 9]}}, "with {'plan.k': 9}: plan.k: draft_k trains k=9 of the 4 steps"),
        ({"optim.lr": {"loguniform": [0, 0.1]}}, "search.space.optim.lr.loguniform: expected 0 < low < high"),
        ({"plan.name": {"choice": ["draft", "ddpo"]}}, "with {'plan.name': 'ddpo'}: plan.name: expected one of"),
        ({"trainable.rank": {"randint": [0, 4]}}, "with {'trainable.rank': 0}: trainable.rank: must be >= 1"),
    ],
)
def test_an_invalid_search_space_fails_naming_the_key(tiny_sd_dir, tmp_path, space, message):
    path = search_file(tmp_path, tiny_sd_dir, {"space": space})
    with pytest.raises(ConfigError) as err:
        load_search(path, [])
    assert message in str(err.value)


def test_the_command_exits_2_before_ray_starts(tiny_sd_dir, tmp_path):
    path = search_file(tmp_path, tiny_sd_dir, {"space": {"plan.k": {"choice": [1, 9]}}, "metric": "eval/nope"})
    env = shell_env(RAY_ADDRESS="127.0.0.1:1")  # joining Ray would fail loudly, not exit 2
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tune", "--config", path],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "search.metric: 'eval/nope' is not evaluated" in result.stderr and "plan.k: draft_k trains k=9" in result.stderr
    )
    assert not os.path.exists(tmp_path / "runs"), "nothing may be written"


@pytest.mark.slow
def test_search_runs_with_asha_resumes_after_its_driver_is_killed_and_records_mlflow(tiny_sd_dir, tmp_path):
    # one trial at a time, best first; the driver is killed while the first trial runs, so that the
    # restored driver finishes it (resuming its Ray Train run) and the second meets it at ASHA's first rung
    search = {
        "space": {"optim.lr": {"grid": [0.05, 0.0005]}},
        "metric": "eval/trained",
        "max_concurrent_trials": 1,
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "name": "lr-search",
    }
    path = search_file(
        tmp_path,
        tiny_sd_dir,
        search,
        train={"steps": 3, "checkpoint_every": 1},
        eval={"every": 1},
        ray={"num_cpus": 2, "cpus_per_worker": 0.9},
        tracking={"enabled": True, "experiment": "search", "registered_model": "tiny-tuned"},
    )
    folder = tmp_path / "runs" / "lr-search"
    # the search starts its own local Ray in its own temp folder, as from a shell: not the test session's
    # cluster, where the killed driver's trials would linger
    env = shell_env(
        TUNE_GLOBAL_CHECKPOINT_S="1",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        RAY_TMPDIR=tempfile.mkdtemp(prefix="rt", dir="/tmp"),
    )
    command = [sys.executable, "-m", "pipeline.tune", "--config", path]
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 400
    while steps_logged(folder) < 2:  # the first trial's evaluations at steps 0 and 1: it is mid-run
        assert first.poll() is None and time.monotonic() < deadline, "the first trial did not start training"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not list(folder.glob("trials/*/summary.json")), "killed too late: the first trial had finished"

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "tune: continuing the search" in second.stdout
    table = second.stdout[second.stdout.index("| trial") :]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "trial" not in line]
    assert len(rows) == 2 and any("| yes |" in row for row in rows), table  # ASHA stopped the second early

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("search")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`reward_tuning.search` = '" + str(folder) + "'")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.params["optim.lr"] for c in children) == ["0.0005", "0.05"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.md", "base_config.yaml"}
    champion = client.get_model_version_by_alias("tiny-tuned", "champion")
    best = parent.data.tags["best_trial"]
    assert champion.tags["trial"] == best and "eval/trained" in champion.tags
    assert json.load(open(folder / "trials" / best / "summary.json"))["step"] == 3


def steps_logged(folder) -> int:
    """The most lines any trial's ``metrics.jsonl`` holds so far."""
    return max((len(f.read_text().splitlines()) for f in folder.glob("trials/*/metrics.jsonl")), default=0)


def test_optuna_samples_a_continuous_space_on_the_running_cluster(ray_session, tiny_sd_dir, tmp_path, capsys):
    from pipeline import tune

    search = {
        "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "algorithm": "optuna",
        "num_samples": 2,
        "max_concurrent_trials": 2,
        "scheduler": {"name": "fifo"},
        "metric": "eval/trained",
    }
    path = search_file(
        tmp_path, tiny_sd_dir, search, train={"steps": 2, "checkpoint_every": 2}, ray={"cpus_per_worker": 0.9}
    )  # both trials at once on the session head's 2 CPUs
    assert tune.main(["--config", path]) == 0
    out = capsys.readouterr().out
    table = out[out.index("| trial |") :].splitlines()[2:]  # after the header and |---| lines
    rows = [line.split("|") for line in itertools.takewhile(lambda line: line.startswith("| "), table)]
    lrs = [float(row[2]) for row in rows]
    assert len(rows) == 2 and len(set(lrs)) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs), out
    assert all(row[-2].strip() == "no" for row in rows), "fifo runs every trial to its end"


def test_a_search_registers_no_trial_that_breaks_its_constraints(ray_session, tiny_sd_dir, tmp_path, capsys):
    """``search.require``: the champion is the best trial among those meeting every constraint. The
    constraint here is on the learning rate each trial reports, so which trial breaks it is known in advance."""
    from pipeline import tune

    search = {
        "space": {"optim.lr": {"grid": [0.05, 0.0005]}},
        "scheduler": {"name": "fifo"},
        "metric": "eval/trained",
        "max_concurrent_trials": 2,
        "require": ["train/lr<=0.001"],
    }
    path = search_file(
        tmp_path,
        tiny_sd_dir,
        search,
        train={"steps": 2, "checkpoint_every": 2},
        ray={"cpus_per_worker": 0.9},
        tracking={"enabled": True, "experiment": "required", "registered_model": "tiny-required"},
    )
    assert tune.main(["--config", path]) == 0
    out = capsys.readouterr().out
    table = out[out.index("| trial |") :].splitlines()
    assert table[0].endswith("| require |")
    rows = {float(line.split("|")[2]): line.split("|")[-2].strip() for line in table[2:4]}
    assert rows == {0.05: "train/lr<=0.001 (0.05)", 0.0005: "met"}, table
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("tiny-required", "champion")
    assert client.get_run(champion.run_id).data.params["optim.lr"] == "0.0005"
    assert len(client.search_model_versions("name = 'tiny-required'")) == 1

    with pytest.raises(ConfigError, match=r"require.0: .eval/trained=3. is not METRIC OP NUMBER"):
        load_search(search_file(tmp_path, tiny_sd_dir, {**search, "require": ["eval/trained=3"]}), [])

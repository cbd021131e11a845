"""MLflow tracking, model registry and S3 run storage, against a real MLflow server and S3 endpoint.

Each training run is one MLflow run (rank 0 only) that a resumed run continues without duplicating
steps; every checkpoint is a registered model version carrying its held-out metrics; ``promote`` sets
an alias and ``generate`` samples from ``models:/NAME@alias``; Ray Train checkpoints go to S3 and a run
resumes from there without its run folder; unreachable services fail before anything starts; no
secret reaches the stored run.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import boto3
import pytest
from conftest import S3_SECRET
from mlflow import MlflowClient
from test_training import StopAt, make_config

from pipeline import generate, promote
from pipeline.config import ConfigError, dump_yaml
from pipeline.tracking import RUN_FOLDER_TAG, MlflowReporter
from pipeline.train import main as train_main
from trainers.constraints import parse_constraint
from trainers.loop import run, run_folder
from trainers.reporting import Reporter

PASSWORD = "rt-uri-password-77"


def tracked(tiny_sd_dir: str, out: str, uri: str | None, **sections):
    tracking = {
        "enabled": True,
        "uri": uri,
        "experiment": "tests",
        "registered_model": "tiny",
        **sections.pop("tracking", {}),
    }
    return make_config(tiny_sd_dir, out, tracking=tracking, eval={"every": 2, **sections.pop("eval", {})}, **sections)


def the_run(client: MlflowClient, run_name: str):
    exp = client.get_experiment_by_name("tests")
    (found,) = client.search_runs([exp.experiment_id], f"tags.`{RUN_FOLDER_TAG}` = '{run_name}'")
    return found


def write_config(cfg, path) -> str:
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_embedded_default_records_the_run_and_its_models_then_promote_and_generate(tiny_sd_dir, tmp_path, capsys):
    """No server: a sqlite store at an absolute path under the output folder (the embedded default)."""
    cfg = tracked(tiny_sd_dir, str(tmp_path / "runs"), None, ray={"enabled": False})
    assert train_main(["--config", write_config(cfg, tmp_path / "cfg.yaml")]) == 0
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    assert (
        f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/#/experiments/{experiment}/models"
        "?workflowType=machine_learning"
    ) in capsys.readouterr().out
    found = the_run(client, "draft_k-seed0")
    assert found.info.status == "FINISHED"
    assert found.data.params["plan.name"] == "draft_k" and found.data.params["train.steps"] == "4"
    assert found.data.tags["version.torch"] and found.data.tags["cluster.workers"] == "1"
    assert "mlflow.source.git.commit" in found.data.tags
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "eval/trained")] == [0, 2, 4]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "images"} <= artifacts

    versions = sorted(client.search_model_versions("name = 'tiny'"), key=lambda v: int(v.version))
    assert [v.tags["step"] for v in versions] == ["2", "4"]
    models = [client.get_logged_model(v.source.removeprefix("models:/")) for v in versions]
    held_out = [{m.key: m.value for m in model.metrics} for model in models]
    assert all("eval/trained" in metrics for metrics in held_out)
    assert "gain" in versions[1].tags["held_out/trained"] and "| trained |" in versions[1].description
    for model in models:  # the models live with the run, in the store's artifact folder (not ./mlruns)
        assert model.artifact_location.startswith(f"file://{tmp_path / 'runs' / 'mlartifacts'}")
    assert promote.main(["--model", "tiny", "--metric", "eval/trained", "--tracking-uri", uri]) == 0
    best = max(zip(versions, held_out), key=lambda pair: pair[1]["eval/trained"])[0]
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    assert promote.main(["--model", "tiny", "--metric", "eval/trained", "--lowest", "--tracking-uri", uri]) == 0
    worst = min(zip(versions, held_out), key=lambda pair: pair[1]["eval/trained"])[0]
    assert worst.version != best.version
    assert client.get_model_version_by_alias("tiny", "champion").version == worst.version

    # a constraint the best version breaks: it is skipped, and the output says which constraint rejected it
    capsys.readouterr()
    below_best = f"eval/trained<{max(m['eval/trained'] for m in held_out)}"
    assert (
        promote.main(
            [
                "--model",
                "tiny",
                "--metric",
                "eval/trained",
                "--require",
                below_best,
                "--require",
                "eval/trained/brightness>=0",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    assert client.get_model_version_by_alias("tiny", "champion").version == worst.version
    printed = capsys.readouterr().out
    assert f"{parse_constraint(below_best)}: rejects versions {best.version}\n" in printed
    assert "eval/trained/brightness>=0: rejects no version" in printed
    with pytest.raises(ConfigError, match="--require: no version of 'tiny' meets eval/trained>1e9"):
        promote.main(
            ["--model", "tiny", "--metric", "eval/trained", "--require", "eval/trained>1e9", "--tracking-uri", uri]
        )
    with pytest.raises(ConfigError, match="--require: 'eval/trained=3' is not METRIC OP NUMBER"):
        promote.main(["--model", "tiny", "--require", "eval/trained=3", "--tracking-uri", uri])
    with pytest.raises(ConfigError, match="--require: no version of 'tiny' logs 'eval/no_such_metric'; its held-out"):
        promote.main(["--model", "tiny", "--require", "eval/no_such_metric>=1", "--tracking-uri", uri])

    out = tmp_path / "samples"
    assert (
        generate.main(
            [
                "--model",
                "models:/tiny@champion",
                "--tracking-uri",
                uri,
                "--prompt",
                "a red circle",
                "--num-images",
                "2",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file() and len(list(out.glob("0*.png"))) == 2


def test_killed_run_resumes_the_same_mlflow_run_with_each_step_once(tiny_sd_dir, tmp_path, tracking_stack):
    uri = tracking_stack["mlflow"].replace("http://", f"http://tester:{PASSWORD}@")
    cfg = tracked(tiny_sd_dir, str(tmp_path / "runs"), uri, ray={"enabled": False})
    with pytest.raises(KeyboardInterrupt):  # after step 3 was logged; the last checkpoint is step 2
        run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)), StopAt(3)))
    run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)),))

    client = MlflowClient(tracking_stack["mlflow"])
    found = the_run(client, "draft_k-seed0")  # one run only: the resumed run continued it
    assert found.info.status == "FINISHED"
    for key in ("train/loss", "train/reward", "perf/step_seconds"):
        assert [m.step for m in client.get_metric_history(found.info.run_id, key)] == [1, 2, 3, 4], key
    assert found.data.params["tracking.uri"] == uri.replace(f"tester:{PASSWORD}@", "***@")
    assert_no_secrets(client, found, tmp_path, tracking_stack)


def rest(server: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """GET (with ``body``: POST) an MLflow REST endpoint (``/api/2.0/mlflow/...``); its JSON answer."""
    import urllib.parse
    import urllib.request

    url = f"{server}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_checkpoint_models_carry_their_held_out_metrics_and_versions_read_well(tiny_sd_dir, tmp_path, tracking_stack):
    """What the UI shows, read through MLflow's REST API: a model-training experiment; each checkpoint's
    logged model with the held-out metrics of its latest evaluation (also one from an earlier step,
    without a second copy in the run's history); versions with a few readable tags and the held-out
    table with the sample grid as description."""
    server = tracking_stack["mlflow"]
    cfg = tracked(
        tiny_sd_dir,
        str(tmp_path / "runs"),
        server,
        ray={"enabled": False},
        train={"steps": 3, "checkpoint_every": 1, "run_name": "rest"},
        eval={"every": 2, "images_per_prompt": 2, "require": ["eval/trained/brightness>=0"]},
        tracking={"experiment": "tests-rest"},
    )
    run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)),))

    experiment = rest(server, "experiments/get-by-name", experiment_name="tests-rest")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    (found,) = rest(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    run_id = found["info"]["run_id"]
    history = rest(server, "metrics/get-history", run_id=run_id, metric_key="eval/trained")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 2, 3], "each evaluation once in the run"

    versions = rest(server, "model-versions/search", filter=f"name='tiny' and run_id='{run_id}'")["model_versions"]
    versions = sorted(versions, key=lambda v: int(v["version"]))
    assert len(versions) == 3
    for checkpoint, evaluated, version in zip((1, 2, 3), (0, 2, 3), versions):
        model_id = version["source"].removeprefix("models:/")
        metrics = rest(server, f"logged-models/{model_id}")["model"]["data"]["metrics"]
        linked = {m["key"]: m for m in metrics}
        assert {"eval/trained", "eval/trained/brightness", "eval/trained/symmetry", "eval/diversity"} <= set(linked)
        assert all(key.startswith("eval/") for key in linked), "held-out metrics only, no train/*"
        assert {m["dataset_name"] for m in metrics} == {"held-out prompts"}, "one column group in the model table"
        assert linked["eval/trained"]["step"] == evaluated and linked["eval/trained"]["value"] == next(
            m["value"] for m in history if m["step"] == evaluated
        )

        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags["step"] == str(checkpoint) and tags["plan"] == "draft_k k=2" and tags["eval_step"] == str(evaluated)
        assert re.fullmatch(
            r"-?\d+\.\d+, gain [+-]\d+\.\d+ \[[+-]\d+\.\d+, [+-]\d+\.\d+\] \(95% CI\)", tags["held_out/trained"]
        ), tags["held_out/trained"]
        assert re.fullmatch(r"pixel \d\.\d{3} \(base \d\.\d{3}\)", tags["diversity"]), tags["diversity"]
        shown = [key for key in tags if not key.startswith("mlflow.")]  # the UI hides MLflow's own tags
        assert tags["eval.require"] == "met" and len(shown) <= 8, tags

        description = version["description"]
        assert f"Checkpoint at step {checkpoint} of 3 (`draft_k k=2`)" in description
        assert f"| held-out | base | step {evaluated} | gain [95% CI] |" in description
        assert {f"| {name} |" in description for name in ("trained", "trained/symmetry", "diversity")} == {True}
        grid = f"samples/step_{evaluated:06d}.png"
        assert f"(get-artifact?path={grid}&run_uuid={run_id})" in description
        artifacts = {a["path"] for a in rest(server, "artifacts/list", run_id=run_id, path="samples")["files"]}
        assert grid in artifacts


def assert_no_secrets(client: MlflowClient, found, tmp_path, stack) -> None:
    """Neither the URI's password nor the S3 secret key is in the run's params, tags, artifacts, or the
    server's database."""
    stored = [json.dumps(found.data.params), json.dumps(found.data.tags)]
    local = client.download_artifacts(found.info.run_id, "", str(tmp_path / "artifacts"))
    for base, _, files in os.walk(local):
        stored += [open(os.path.join(base, f), "rb").read().decode("latin-1") for f in files]
    with open(stack["mlflow_db"], "rb") as f:
        stored.append(f.read().decode("latin-1"))
    for secret in (PASSWORD, S3_SECRET):
        assert not any(secret in text for text in stored), secret


def test_ray_run_stores_checkpoints_in_s3_and_resumes_from_there(ray_session, tiny_sd_dir, tmp_path, tracking_stack):
    storage = {"storage_path": f"s3://{tracking_stack['bucket']}/ray-runs", "s3_endpoint": tracking_stack["s3"]}
    name = "s3-resume"
    first = tracked(
        tiny_sd_dir,
        str(tmp_path / "runs"),
        tracking_stack["mlflow"],
        train={"steps": 2, "run_name": name},
        ray=storage,
        tracking={"registered_model": None},
    )
    assert train_main(["--config", write_config(first, tmp_path / "first.yaml")]) == 0
    s3 = boto3.client("s3", endpoint_url=tracking_stack["s3"])
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=tracking_stack["bucket"], Prefix=f"ray-runs/{name}/")["Contents"]
    ]
    assert any(k.endswith("/state.pt") for k in keys), keys
    artifacts = s3.list_objects_v2(Bucket=tracking_stack["bucket"], Prefix="mlflow/")["Contents"]
    assert any(o["Key"].endswith("config.yaml") for o in artifacts), "MLflow artifacts go to S3 through the server"

    shutil.rmtree(run_folder(first))  # the local run folder is lost
    longer = tracked(
        tiny_sd_dir,
        str(tmp_path / "runs"),
        tracking_stack["mlflow"],
        train={"steps": 4, "run_name": name},
        ray=storage,
        tracking={"registered_model": None},
    )
    assert train_main(["--config", write_config(longer, tmp_path / "longer.yaml")]) == 0
    with open(os.path.join(run_folder(longer), "metrics.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == [3, 4], "steps 1-2 came from the checkpoint in S3"
    client = MlflowClient(tracking_stack["mlflow"])
    found = the_run(client, name)
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]


def test_unreachable_services_and_bad_names_fail_before_anything_starts(tiny_sd_dir, tmp_path, tracking_stack):
    from cluster.local import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        ({"tracking": {"uri": dead}}, f"tracking.uri: the MLflow server {dead} does not answer"),
        (
            {
                "tracking": {"uri": tracking_stack["mlflow"]},
                "ray": {"storage_path": "s3://no-such-bucket/x", "s3_endpoint": tracking_stack["s3"]},
            },
            f"ray.storage_path: cannot reach bucket 'no-such-bucket' at {tracking_stack['s3']}",
        ),
        (
            {"tracking": {"uri": tracking_stack["mlflow"]}, "ray": {"storage_path": "s3://b/x", "s3_endpoint": dead}},
            f"ray.storage_path: cannot reach bucket 'b' at {dead}",
        ),
    ]
    for i, (sections, message) in enumerate(cases):
        cfg = tracked(tiny_sd_dir, str(tmp_path / f"runs{i}"), None, **sections)
        with pytest.raises(ConfigError) as err:
            train_main(["--config", write_config(cfg, tmp_path / f"cfg{i}.yaml")])
        assert message in str(err.value)
        assert not os.path.exists(run_folder(cfg)), "nothing may be written"
    with pytest.raises(ConfigError, match="registered_model: 'bad/name' is not a valid model name"):
        tracked(tiny_sd_dir, str(tmp_path), None, tracking={"registered_model": "bad/name"})


class MlflowServer:
    """The local stack's MLflow server (``cluster.local.mlflow_server``), started and stopped with the
    stack's own ``start``/``wait_ready``/``stop``, again on the same port and database."""

    def __init__(self, workdir: str):
        import argparse

        from cluster.local import free_port, mlflow_server

        self.svc = mlflow_server(argparse.Namespace(port_mlflow=free_port(), services=("mlflow",)), workdir)
        self.uri, self.record = self.svc.addresses["tracking"], None

    def start(self) -> None:
        from cluster.local import start, wait_ready

        self.record = start(self.svc)
        wait_ready(self.record, timeout=120)

    def stop(self) -> None:
        from cluster.local import stop

        _, left = stop(self.record, keep_logs=True)  # keep its folder: the database lives there
        assert not left, "the MLflow server did not stop"


class Outage(Reporter):
    """A reporter that stops the server once step ``down`` is reported and restarts it after step ``up``."""

    def __init__(self, server: MlflowServer, down: int, up: int):
        self.server, self.down, self.up = server, down, up

    def report(self, step, metrics, checkpoint_dir=None):
        if step == self.down:
            self.server.stop()
        if step == self.up:
            self.server.start()


@pytest.mark.slow
def test_an_mlflow_outage_mid_run_loses_nothing(tiny_sd_dir, tmp_path, capfd):
    server = MlflowServer(str(tmp_path / "server"))
    os.makedirs(tmp_path / "server")
    server.start()
    try:
        cfg = tracked(tiny_sd_dir, str(tmp_path / "runs"), server.uri, ray={"enabled": False})
        reporter = MlflowReporter(cfg, run_folder(cfg))
        run(cfg, reporters=(reporter, Outage(server, down=1, up=3)))  # steps 2 (a checkpoint) and 3 cannot log
        err = capfd.readouterr().err
        assert "mlflow: could not log" in err and "training goes on" in err
        client = MlflowClient(server.uri)
        found = the_run(client, "draft_k-seed0")
        assert found.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
        versions = client.search_model_versions("name = 'tiny'")
        assert sorted(v.tags["step"] for v in versions) == ["2", "4"], "the step-2 checkpoint waited, then was logged"
        assert not os.listdir(os.path.join(run_folder(cfg), "pending_models"))
    finally:
        server.stop()


@pytest.mark.slow
def test_a_kill_during_an_mlflow_outage_loses_no_metric_and_registers_each_checkpoint_once(tiny_sd_dir, tmp_path):
    """MLflow stops after step 1; the job dies after step 3 with steps 2-3 and the step-2 model still waiting.
    The rerun (MLflow back) resumes from the step-2 checkpoint, logs step 2 from the run folder's history and the
    waiting model from pending_models/: every step once, every checkpoint one version."""
    server = MlflowServer(str(tmp_path / "server"))
    os.makedirs(tmp_path / "server")
    server.start()
    try:
        cfg = tracked(tiny_sd_dir, str(tmp_path / "runs"), server.uri, ray={"enabled": False})
        with pytest.raises(KeyboardInterrupt):
            run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)), Outage(server, down=1, up=99), StopAt(3)))
        server.start()
        run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)),))
        client = MlflowClient(server.uri)
        found = the_run(client, "draft_k-seed0")
        assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
        assert sorted(v.tags["step"] for v in client.search_model_versions("name = 'tiny'")) == ["2", "4"]
    finally:
        server.stop()


def test_a_failure_after_the_model_is_logged_registers_no_second_version(
    tiny_sd_dir, tmp_path, tracking_stack, monkeypatch, capfd
):
    """The version is registered, then tagging it fails: the retry (here at close) tags that version and
    registers no second one."""
    failures = []
    tag_version = MlflowClient.set_model_version_tag

    def fails_once(self, *args, **kwargs):
        if not failures:
            failures.append(args)
            raise ConnectionError("the server went away after registering")
        return tag_version(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", fails_once)
    cfg = tracked(
        tiny_sd_dir,
        str(tmp_path / "runs"),
        tracking_stack["mlflow"],
        ray={"enabled": False},
        train={"steps": 2, "checkpoint_every": 2, "run_name": "once"},
        tracking={"experiment": "tests-once", "registered_model": "once"},
    )
    run(cfg, reporters=(MlflowReporter(cfg, run_folder(cfg)),))
    assert failures and "could not log checkpoint model" in capfd.readouterr().err
    (version,) = MlflowClient(tracking_stack["mlflow"]).search_model_versions("name = 'once'")
    assert version.tags["step"] == "2" and "Checkpoint at step 2 of 2" in version.description
    assert not os.listdir(os.path.join(run_folder(cfg), "pending_models"))


def stored_checkpoints(s3, bucket: str, prefix: str, into) -> list[str]:
    """Ray Train's checkpoint folders under ``prefix`` in S3, downloaded under ``into``, oldest first."""
    folders = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if (
                not rel.startswith("checkpoint_") or "/" not in rel or rel.endswith("/")
            ):  # Ray's own files, folder markers
                continue
            folders.add(str(into / rel.split("/")[0]))
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(into / rel))
    return sorted(folders)


@pytest.mark.slow
def test_an_s3_outage_during_a_checkpoint_upload_waits_and_loses_nothing(
    ray_session, tiny_sd_dir, tmp_path, tracking_stack, capfd
):
    """The S3 endpoint goes down halfway through the first checkpoint's upload and comes back 15 s later (longer than Ray Train's own three tries): the
    worker says so on the console, retries, and the run finishes with every checkpoint whole in storage,
    identical to the run folder's, every step logged once and every checkpoint registered once."""
    from outage_proxy import OutageProxy

    from trainers.checkpoint import MANIFEST, checkpoint_problem, latest_checkpoint

    proxy = OutageProxy(int(tracking_stack["s3"].rsplit(":", 1)[1]), cut_at=rb"PUT /\S+/checkpoint_\d{4}-", down_s=15.0)
    name = "s3-outage"
    try:
        cfg = tracked(
            tiny_sd_dir,
            str(tmp_path / "runs"),
            tracking_stack["mlflow"],
            train={"steps": 4, "run_name": name},
            ray={"storage_path": f"s3://{tracking_stack['bucket']}/outage", "s3_endpoint": proxy.url},
            tracking={"registered_model": "s3-outage"},
        )
        assert train_main(["--config", write_config(cfg, tmp_path / "cfg.yaml")]) == 0
    finally:
        proxy.close()
    ((went_down, came_back),) = proxy.outages
    assert came_back - went_down >= 15.0
    out = capfd.readouterr()
    where = f"s3://{tracking_stack['bucket']}/outage"
    assert f"storage: uploading checkpoint step 2 at {where} failed" in out.out + out.err
    assert re.search(rf"storage: uploading checkpoint step 2 at {where} done after [1-9]\d* failed tries", out.out)

    s3 = boto3.client("s3", endpoint_url=tracking_stack["s3"])
    stored = stored_checkpoints(s3, tracking_stack["bucket"], f"outage/{name}/", tmp_path / "stored")
    assert len(stored) == 2, "Ray keeps the last two checkpoints: steps 2 and 4"
    assert [checkpoint_problem(folder) for folder in stored] == [None, None]
    with (
        open(os.path.join(stored[-1], MANIFEST)) as a,
        open(os.path.join(latest_checkpoint(run_folder(cfg)), MANIFEST)) as b,
    ):
        assert json.load(a) == json.load(b), "storage holds the run folder's last checkpoint, byte for byte"

    client = MlflowClient(tracking_stack["mlflow"])
    found = the_run(client, name)
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert sorted(v.tags["step"] for v in client.search_model_versions("name = 's3-outage'")) == ["2", "4"]


def test_storage_patience_retries_s3_with_growing_waits_and_gives_up_with_the_key_to_raise(tiny_sd_dir, tmp_path):
    """S3 transfers are retried after 1, 2, 4 ... s until ``ray.storage_retry_s`` has passed; a local storage
    folder's error (a full disk) is raised at once."""
    from pipeline.storage import Patience, StorageUnavailable

    clock, said = [0.0], []

    def sleep(s):
        clock[0] += s

    def say(text, error=False):
        said.append(text)

    def failing(times):
        calls = []

        def transfer():
            calls.append(clock[0])
            if len(calls) <= times:
                raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation")
            return "stored"

        return transfer, calls

    remote = make_config(tiny_sd_dir, str(tmp_path), ray={"storage_path": "s3://b/p", "storage_retry_s": 20})
    patience = Patience(remote, say, sleep=sleep, clock=lambda: clock[0])
    transfer, calls = failing(3)
    assert patience("uploading checkpoint step 2", transfer) == "stored"
    assert calls == [0, 1, 3, 7]
    assert said[-1] == "storage: uploading checkpoint step 2 at s3://b/p done after 3 failed tries"
    assert said[0].startswith("storage: uploading checkpoint step 2 at s3://b/p failed (AWS Error NETWORK_CONNECTION")

    transfer, calls = failing(99)
    with pytest.raises(StorageUnavailable, match=r"still failing after 15 s and 5 tries .* raise ray.storage_retry_s"):
        patience("uploading checkpoint step 4", transfer)

    local = Patience(make_config(tiny_sd_dir, str(tmp_path)), say, sleep=sleep)
    transfer, calls = failing(1)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        local("uploading checkpoint step 2", transfer)
    assert len(calls) == 1

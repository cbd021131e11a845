"""MLflow at the edge: one MLflow run per training run, every checkpoint a model you can pick in the UI.

:class:`MlflowReporter` is a reporter of the training core (``trainers.loop.run``), created on rank 0
only. At ``start`` it continues the MLflow run whose id the resumed checkpoint carries
(``state["mlflow_run_id"]``), or creates one (in an experiment marked for MLflow's model-training
view) and logs the resolved config (YAML artifact and flattened params), package versions, git commit
and cluster size (tags). Each report logs the metrics with their step, the evaluation's sample grid as
an image (the UI's image view steps through them), and a checkpoint as an ``mlflow.diffusers`` model
(the LoRA plus a reference to the base model). The model carries the held-out metrics of the latest
evaluation as model metrics, so the experiment's model table shows and sorts them, and is registered
as a version of ``tracking.registered_model`` with a few readable tags (step, plan, the held-out
trained reward with the 95% interval of its gain, diversity) and the held-out table and sample grid
as its description. After a crash, steps already logged are replayed by the resumed run but not
logged again, so each step appears once.

When MLflow is unreachable, nothing is lost and training goes on: metrics wait in memory and a
checkpoint's model folder is copied to ``<run>/pending_models/`` until a later report manages to log
it, and the run says so. Secrets never reach MLflow: URIs are logged without their user-info part,
and config values under keys that look like credentials are replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata

from pipeline.config import dump_yaml, flatten
from pipeline.console import Emit, decimals, gain_text, note, print_event
from pipeline.preflight import config_text
from trainers.checkpoint import write_folder_atomic, write_text_atomic
from trainers.config import Config
from trainers.constraints import broken, parse_constraints
from trainers.reporting import Reporter, read_history

RUN_ID_KEY = "mlflow_run_id"  # in the checkpointed state
RUN_ID_FILE = "mlflow_run_id"  # in the run folder, written as soon as the run exists (before any checkpoint)
RUN_FOLDER_TAG = "reward_tuning.run_folder"  # the run folder's name, to find a run from the command line
PACKAGES = ("torch", "diffusers", "transformers", "peft", "open_clip_torch", "ray", "mlflow", "reward-tuning")
RETRY_FIRST_S, RETRY_MAX_S = 5.0, 300.0  # backoff between tries while MLflow is unreachable
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")
_SECRET_KEY = re.compile(r"secret|password|passwd|token|access_key|credential", re.IGNORECASE)
# the experiment tag MLflow's UI reads to open an experiment in its model-training view (not the GenAI one)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
HEADLINE = "trained"  # the held-out reward a version's tags and description lead with


def redact(text: str) -> str:
    """``text`` with the user-info of every URI in it replaced (``http://u:p@h`` -> ``http://***@h``)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def strip_userinfo(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (for clients that cannot take it, such as urllib)."""
    return _USERINFO.sub(r"\g<scheme>", uri)


def tracking_uri(cfg: Config) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store at an absolute path under the
    output folder (Ray workers run elsewhere, so a relative one would split the store)."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or "sqlite:///" + os.path.join(os.path.abspath(cfg.train.output_dir), "mlflow.db")


def is_server(uri: str) -> bool:
    """True for a tracking server (HTTP), False for a database the client writes itself."""
    return uri.startswith(("http://", "https://"))


def local_artifact_root(cfg: Config, uri: str) -> str | None:
    """Where a database store (no server) keeps artifacts: next to the database; None with a server."""
    if is_server(uri) or uri.startswith("databricks"):
        return None
    return os.path.join(os.path.abspath(cfg.train.output_dir), "mlartifacts")


@contextlib.contextmanager
def fluent_tracking(uri: str) -> Iterator[None]:
    """MLflow's module-level API pointed at ``uri`` for the block. ``mlflow.set_tracking_uri`` also sets
    ``$MLFLOW_TRACKING_URI``, which would leak into every later run of this process; it is put back."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable again


def ui_command(cfg: Config) -> str:
    """How to look at the runs: the page of the experiment's checkpoint models in the model-training view,
    on the server, or on ``mlflow ui`` (its default address) over the local store."""
    uri = tracking_uri(cfg)
    found = None
    quick_requests()
    with contextlib.suppress(Exception):  # the run is over: a store that does not answer now costs only the link
        from mlflow import MlflowClient

        found = MlflowClient(uri).get_experiment_by_name(cfg.tracking.experiment)
    page = f"#/experiments/{found.experiment_id}/models?workflowType=machine_learning" if found else ""
    if is_server(uri):
        return f"MLflow UI: {strip_userinfo(uri).rstrip('/')}/{page} (experiment {cfg.tracking.experiment!r})"
    return (
        f"MLflow UI: mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{page} "
        f"(experiment {cfg.tracking.experiment!r})"
    )


def quick_requests() -> None:
    """MLflow's client retries each request 7 times over minutes by default; training (and the job's last
    lines) must not stall on an unreachable server."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def experiment_id(client, cfg: Config) -> str:
    """The configured experiment's id, created if missing, and marked as a model-training experiment
    unless its kind was already chosen (in the UI, or by an earlier run)."""
    name = cfg.tracking.experiment
    key, kind = EXPERIMENT_KIND
    found = client.get_experiment_by_name(name)
    if found is None:
        root = local_artifact_root(cfg, client.tracking_uri)
        return client.create_experiment(name, artifact_location=root and f"file://{root}", tags={key: kind})
    if key not in found.tags:
        client.set_experiment_tag(found.experiment_id, key, kind)
    return found.experiment_id


def params_of(cfg: Config) -> dict[str, str]:
    """The flattened config as MLflow params, secrets masked, values cut to MLflow's 6000 characters."""
    params = {}
    for key, value in flatten(cfg).items():
        text = "***" if _SECRET_KEY.search(key) and value else redact(str(value))
        params[key] = text[:6000]
    return params


def environment_tags(cfg: Config, world_size: int) -> dict[str, str]:
    """Package versions, git commit and cluster size."""
    tags = {f"version.{name}": _version(name) for name in PACKAGES}
    tags["python"] = sys.version.split()[0]
    tags["cluster.workers"] = str(world_size)
    tags["cluster.reward_actors"] = str(cfg.ray.reward_actors if cfg.ray.enabled else 0)
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def base_model_reference(path: str) -> str:
    """The base model as a loader finds it again: an absolute folder, or the hub id as given."""
    return os.path.abspath(path) if os.path.exists(path) else path


class MlflowReporter(Reporter):
    """Records one training run in MLflow (see the module docstring). Create it on rank 0 only.

    What it has to say (the run it records to, outages, each logged checkpoint model) goes to ``emit``
    as console events (``pipeline.console``)."""

    def __init__(self, cfg: Config, run_dir: str, world_size: int = 1, emit: Emit = print_event):
        self.cfg, self.run_dir, self.world_size, self.emit = cfg, run_dir, world_size, emit
        self.uri = tracking_uri(cfg)
        self.client = None
        self.run_id: str | None = None
        self.logged_through = -1  # steps up to here are already in the MLflow run
        self.step = 0  # the step being reported
        self.evaluation: dict = {}  # the latest evaluation, attached to later models (see _queue_model)
        self.pending_metrics: list = []
        self.pending_models = os.path.join(run_dir, "pending_models")
        self.held_out_set = held_out_set(cfg)
        self.retry_at, self.backoff = 0.0, RETRY_FIRST_S
        self.closing = False
        quick_requests()

    # ------------------------------------------------------------ lifecycle

    def start(self, state: dict) -> None:
        """Continue the run named in the checkpointed ``state``, or create it; record its id there."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.client = MlflowClient(self.uri)
        run_id = state.get(RUN_ID_KEY) or self._run_id_on_disk()
        if run_id:
            try:
                self.client.get_run(run_id)
                self.run_id = run_id
                self.logged_through = self._last_logged_step()
                self.client.update_run(run_id, status="RUNNING")
                self.emit(note(f"mlflow: continuing run {run_id} after step {self.logged_through}"))
                self._catch_up()
            except MlflowException:
                self.emit(
                    note(
                        f"mlflow: run {run_id} from the checkpoint is not in {redact(self.uri)}; starting a new one",
                        error=True,
                    )
                )
        if self.run_id is None:
            self.run_id = self._create_run()
            write_text_atomic(os.path.join(self.run_dir, RUN_ID_FILE), self.run_id)
        state[RUN_ID_KEY] = self.run_id

    def _run_id_on_disk(self) -> str | None:
        """The run a killed start of this run folder created before it wrote a checkpoint."""
        path = os.path.join(self.run_dir, RUN_ID_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None

    def _catch_up(self) -> None:
        """After a kill: queue the steps the run folder's history holds but MLflow lacks (they waited in memory),
        and the resumed checkpoint's model if it was never queued or logged."""
        from mlflow.entities import Metric

        from trainers.checkpoint import latest_checkpoint

        now = int(time.time() * 1000)
        for entry in read_history(os.path.join(self.run_dir, "metrics.jsonl")):
            step, numbers = entry.pop("step"), {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
            evaluation = {k: v for k, v in numbers.items() if k.startswith("eval/")}
            if evaluation:
                self.evaluation = {"step": step, "time": now, "metrics": evaluation}
            if step > self.logged_through:
                self.pending_metrics.append([Metric(k, v, now, step) for k, v in numbers.items()])
                self.logged_through = step
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None or not self.cfg.tracking.log_models:
            return
        step = int(os.path.basename(checkpoint).removeprefix("step_"))
        queued = os.path.isdir(os.path.join(self.pending_models, f"step_{step:06d}"))
        if not queued and self._logged_model(step) is None:
            self._queue_model(checkpoint, step)

    def close(self) -> None:
        """Mark the run finished (after a last try to log what is pending)."""
        self.closing = True  # a model logged now comes after its checkpoint line
        self._flush(force=True)
        if self.pending_metrics or self._pending_folders():
            self.emit(
                note(
                    f"mlflow: {len(self.pending_metrics)} metric batches and {len(self._pending_folders())} "
                    f"checkpoint models could not be logged; the models stay in {self.pending_models}",
                    error=True,
                )
            )
            return
        self.client.set_terminated(self.run_id, "FINISHED")

    # ------------------------------------------------------------ reports

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        if step <= self.logged_through:  # replayed after a resume: already logged
            return
        from mlflow.entities import Metric

        self.step, now = step, int(time.time() * 1000)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.pending_metrics.append([Metric(k, v, now, step) for k, v in numbers.items()])
        if any(k.startswith("eval/") for k in numbers):
            self.evaluation = {
                "step": step,
                "time": now,
                "metrics": {k: v for k, v in numbers.items() if k.startswith("eval/")},
            }
        grid = os.path.join(self.run_dir, "samples", f"step_{step:06d}.png")
        if self.evaluation.get("step") == step and os.path.isfile(grid):
            self._try("sample grid", lambda: self._log_grid(grid, step))
        if checkpoint_dir and self.cfg.tracking.log_models:
            self._queue_model(checkpoint_dir, step)
        self._flush()
        self.logged_through = step

    def _flush(self, force: bool = False) -> None:
        """Log the waiting checkpoint models, then the waiting metric batches, oldest first (after a failure,
        not before the backoff has passed, unless ``force``). Models go first: MLflow links to a new model
        every run metric of its step already logged, and a model should carry its held-out metrics only."""
        if time.monotonic() < self.retry_at and not force:
            return
        for folder in self._pending_folders():
            if not self._try("checkpoint model", lambda: self._log_model(folder)):  # noqa: B023 - called at once
                return
            shutil.rmtree(folder)
        while self.pending_metrics:
            batch = self.pending_metrics[0]
            if not self._try("metrics", lambda: self.client.log_batch(self.run_id, metrics=batch)):  # noqa: B023
                return
            self.pending_metrics.pop(0)

    def _try(self, what: str, call) -> bool:
        """Run ``call``; on an MLflow or network error say so and return False (it is retried later)."""
        try:
            call()
        except Exception as err:  # noqa: BLE001 - MLflow raises many types; none may stop training
            self.emit(
                note(
                    f"mlflow: could not log {what} to {redact(self.uri)} ({redact(str(err))[:300]}); "
                    f"retrying in {self.backoff:.0f} s, training goes on",
                    error=True,
                )
            )
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(2 * self.backoff, RETRY_MAX_S)
            return False
        if self.backoff > RETRY_FIRST_S:
            self.emit(note(f"mlflow: {what} logged again after the outage"))
        self.retry_at, self.backoff = 0.0, RETRY_FIRST_S
        return True

    # ------------------------------------------------------------ what is logged

    def _create_run(self) -> str:
        from mlflow.entities import Param

        exp = experiment_id(self.client, self.cfg)
        name = os.path.basename(self.run_dir)
        tags = {**environment_tags(self.cfg, self.world_size), RUN_FOLDER_TAG: name}
        if self.cfg.tracking.parent_run:
            tags["mlflow.parentRunId"] = self.cfg.tracking.parent_run  # a Ray Tune trial under its search
        run = self.client.create_run(exp, run_name=name, tags=tags)
        params = [Param(k, v) for k, v in params_of(self.cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        self.client.log_text(run.info.run_id, redact(config_text(self.cfg)), "config.yaml")
        self.emit(
            note(f"mlflow: run {run.info.run_id} in experiment {self.cfg.tracking.experiment!r} at {redact(self.uri)}")
        )
        return run.info.run_id

    def _last_logged_step(self) -> int:
        """The last step in the run: of ``train/loss``, else 0 if step 0's evaluation is there, else -1."""
        history = self.client.get_metric_history(self.run_id, "train/loss")
        if history:
            return max(m.step for m in history)
        return 0 if self.client.get_metric_history(self.run_id, "eval/trained") else -1

    def _logged_model(self, step: int):
        """The model this run logged for checkpoint ``step`` (a start killed after logging it), or None."""
        experiment = self.client.get_run(self.run_id).info.experiment_id
        found = self.client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{self.run_id}' AND name = 'checkpoint-{step:06d}'"
        )
        return next((m for m in found if str(m.status).endswith("READY")), None)

    def _log_grid(self, path: str, step: int) -> None:
        """The grid in the run's image view (a step slider), and as ``samples/step_N.png`` for descriptions."""
        from PIL import Image

        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key="samples", step=step)
        self.client.log_artifact(self.run_id, path, "samples")

    def _queue_model(self, checkpoint_dir: str, step: int) -> None:
        """Copy the checkpoint's model folder to pending_models/, with the evaluation it is judged by: the
        latest one's metrics and, against the base model, the 95% intervals of the gains."""
        from trainers.evaluation import held_out_summary

        evaluation = self.evaluation and {
            **self.evaluation,
            "summary": held_out_summary(self.run_dir, self.evaluation["step"]),
        }

        def fill(folder: str) -> None:
            shutil.copytree(os.path.join(checkpoint_dir, "model"), os.path.join(folder, "model"))
            with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as f:
                json.dump({"step": step, "evaluation": evaluation}, f)

        os.makedirs(self.pending_models, exist_ok=True)  # whole or absent: a kill mid-copy must not block the queue
        write_folder_atomic(os.path.join(self.pending_models, f"step_{step:06d}"), fill)

    def _pending_folders(self) -> list[str]:
        if not os.path.isdir(self.pending_models):
            return []
        names = sorted(n for n in os.listdir(self.pending_models) if not n.startswith("."))  # .tmp_*: a killed copy
        return [os.path.join(self.pending_models, n) for n in names]

    def _log_model(self, folder: str) -> None:
        """Log one pending checkpoint as a model with its held-out metrics, and register it as a version
        with a few readable tags and the held-out table as its description."""
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
            info = json.load(f)
        step, evaluation = int(info["step"]), info["evaluation"]
        weights = os.path.join(folder, "model")
        if not os.path.isfile(os.path.join(weights, "pytorch_lora_weights.safetensors")):
            self.client.log_artifacts(self.run_id, weights, f"checkpoints/step_{step:06d}")  # full fine-tune
            return
        t = self.cfg.tracking
        if "logged" not in info:  # a retry after a later call failed must not log and register it twice
            info["logged"] = self._registered(self._logged_model(step)) or self._log_lora_model(weights, step)
            write_text_atomic(os.path.join(folder, "metrics.json"), json.dumps(info))
        model_id, uri, version = (info["logged"][k] for k in ("model_id", "uri", "version"))
        # the evaluation it is judged by, linked with its own step and timestamp: the run's history, which gets
        # the same values in their step's batch (now, or earlier for an older evaluation), keeps each once
        if evaluation:
            self.client.log_batch(self.run_id, metrics=model_metrics(evaluation, model_id, self.held_out_set))
        if t.registered_model and version is not None:
            for key, value in version_tags(self.cfg, step, evaluation).items():
                self.client.set_model_version_tag(t.registered_model, str(version), key, value)
            self.client.update_model_version(
                t.registered_model,
                str(version),
                description=version_description(self.cfg, self.run_id, step, evaluation),
            )
        self.emit(
            {
                "kind": "model",
                "step": step,
                "uri": uri,
                "name": t.registered_model,
                "version": version,
                "late": self.closing or step < self.step,
            }
        )

    def _registered(self, model) -> dict | None:
        """``{model_id, uri, version}`` of a model logged by a killed start, registered now if it was not yet."""
        if model is None:
            return None
        name, version = self.cfg.tracking.registered_model, None
        if name:
            versions = self.client.search_model_versions(f"name = '{name}'")
            version = next((v.version for v in versions if v.model_id == model.model_id), None)
            if version is None:  # killed between logging and registering: register it (the name too, if new)
                import mlflow

                with fluent_tracking(self.uri):
                    version = mlflow.register_model(model.model_uri, name).version
        return {"model_id": model.model_id, "uri": model.model_uri, "version": version}

    def _log_lora_model(self, weights: str, step: int) -> dict:
        """Log a checkpoint's LoRA folder as an MLflow model (registered as a version when the config names a
        registered model): ``{model_id, uri, version}``."""
        import mlflow

        with fluent_tracking(self.uri):
            # the logged model goes to the active experiment, not its run's: make that the run's
            mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
            model = mlflow.diffusers.log_model(
                weights,
                base_model=base_model_reference(self.cfg.model.path),
                name=f"checkpoint-{step:06d}",
                step=step,
                run_id=self.run_id,
                registered_model_name=self.cfg.tracking.registered_model,
                pip_requirements=[f"reward-tuning=={_version('reward-tuning')}"],
                tags={
                    "step": str(step),
                    RUN_FOLDER_TAG: os.path.basename(self.run_dir),
                    "mlflow.source.name": "pipeline.train",
                    "mlflow.source.type": "JOB",
                },
            )
        return {"model_id": model.model_id, "uri": model.model_uri, "version": model.registered_model_version}


def model_metrics(evaluation: dict, model_id: str, dataset: tuple[str, str]) -> list:
    """An evaluation's metrics as MLflow metrics linked to ``model_id`` and measured on ``dataset``
    (name, digest): the model table shows them as one column group."""
    from mlflow.entities import Metric

    name, digest = dataset
    return [
        Metric(
            k, v, evaluation["time"], evaluation["step"], model_id=model_id, dataset_name=name, dataset_digest=digest
        )
        for k, v in evaluation["metrics"].items()
    ]


def held_out_set(cfg: Config) -> tuple[str, str]:
    """The held-out evaluation as a named dataset: its name and a digest of its prompts, images per prompt
    and noise seed (runs evaluated alike share a column group in the model table)."""
    import hashlib

    from trainers.prompts import BUILTIN_HELD_OUT, load_prompts

    e = cfg.eval
    prompts = load_prompts(cfg.data.eval_prompts, BUILTIN_HELD_OUT)[: e.max_prompts]
    text = json.dumps([prompts, e.images_per_prompt, e.seed])
    return "held-out prompts", hashlib.sha256(text.encode()).hexdigest()[:8]


def plan_text(cfg: Config) -> str:
    """The algorithm and its knobs in a few words, e.g. ``drtune k=3``."""
    from trainers.registry import build_plan

    p = cfg.plan
    knobs = {"divergence": cfg.distill.divergence} if p.name == "di_star" else build_plan(p).knobs()
    knobs |= {
        "hinge_margin": p.hinge_margin,
        "kl_coeff": f"{p.kl_coeff:g}" if p.kl_coeff else 0,
        "diversity_coeff": f"{p.diversity_coeff:g}" if p.diversity_coeff else 0,
    }
    return " ".join([p.name] + [f"{k}={v}" for k, v in knobs.items() if v])


def version_tags(cfg: Config, step: int, evaluation: dict) -> dict[str, str]:
    """A registered version's tags: step, plan, the headline held-out reward with the 95% interval of its
    gain over the base model, and both diversity measures (base in brackets). The numbers themselves are
    the logged model's metrics."""
    tags = {"step": str(step), "plan": plan_text(cfg)}
    summary = evaluation.get("summary", {}) if evaluation else {}
    if not summary:
        return tags
    tags["eval_step"] = str(evaluation["step"])
    if HEADLINE in summary:
        stats = summary[HEADLINE]
        tags[f"held_out/{HEADLINE}"] = f"{stats['tuned']:.{decimals(stats['base'])}f}, gain {gain_text(stats)} (95% CI)"
    diversity = [
        f"{label} {summary[key]['tuned']:.3f} (base {summary[key]['base']:.3f})"
        for key, label in (("feature_diversity", "feature"), ("diversity", "pixel"))
        if key in summary
    ]
    if diversity:
        tags["diversity"] = ", ".join(diversity)
    if cfg.eval.require:
        breaks = broken(parse_constraints(cfg.eval.require), evaluation["metrics"])
        tags["eval.require"] = "; ".join(breaks) if breaks else "met"
    return tags


def version_description(cfg: Config, run_id: str, step: int, evaluation: dict) -> str:
    """Markdown: what the checkpoint is, its held-out table against the base model, and its sample grid."""
    e = cfg.eval
    text = [f"Checkpoint at step {step} of {cfg.train.steps} (`{plan_text(cfg)}`), MLflow run `{run_id}`."]
    summary = evaluation.get("summary", {}) if evaluation else {}
    if summary:
        at = evaluation["step"]
        text += [
            "",
            f"Held-out prompts ({e.max_prompts} prompts x {e.images_per_prompt} images, fixed noise), "
            f"evaluated at step {at}; the gain is paired with the base model, with a 95% bootstrap interval.",
            "",
            f"| held-out | base | step {at} | gain [95% CI] |",
            "|---|---|---|---|",
        ]
        text += [
            f"| {name} | {s['base']:.{decimals(s['base'])}f} | {s['tuned']:.{decimals(s['base'])}f} | {gain_text(s)} |"
            for name, s in summary.items()
        ]
        text += ["", f"![held-out samples at step {at}](get-artifact?path=samples/step_{at:06d}.png&run_uuid={run_id})"]
    return "\n".join(text)


SEARCH_TAG = "reward_tuning.search"  # the search folder of a Ray Tune search's parent run


class SearchRecord:
    """The parent MLflow run of a Ray Tune search (``pipeline.tune``): the space and settings as params,
    the summary table as an artifact, and the best trial's last checkpoint registered with an alias.
    Each trial's :class:`MlflowReporter` makes its run a child of this one (``tracking.parent_run``).
    A restored search continues the parent run it finds by its folder."""

    def __init__(self, cfg: Config, search, folder: str):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.cfg, self.search, self.folder = cfg, search, folder
        self.client = MlflowClient(tracking_uri(cfg))
        self.experiment = experiment_id(self.client, cfg)
        found = self.client.search_runs([self.experiment], f"tags.`{SEARCH_TAG}` = '{folder}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            return
        tags = {**environment_tags(cfg, cfg.ray.num_workers), SEARCH_TAG: folder}
        self.run_id = self.client.create_run(self.experiment, run_name=os.path.basename(folder), tags=tags).info.run_id
        params = {f"search.{k}": str(v) for k, v in flatten(search).items() if k != "space"}
        params |= {f"space.{k}": redact(str(v)) for k, v in search.space.items()}
        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        self.client.log_text(self.run_id, redact(dump_yaml(cfg)), "base_config.yaml")
        print(f"mlflow: search run {self.run_id} in experiment {cfg.tracking.experiment!r}", flush=True)

    def child_run(self, trial_id: str):
        """The trial's MLflow run."""
        runs = self.client.search_runs(
            [self.experiment],
            f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`{RUN_FOLDER_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def finish(
        self, table: str, rows: list[dict], best_trial: str | None, best_metrics: dict[str, float] | None
    ) -> None:
        """Log the summary, close the trials' runs (Tune stops trials without letting them end their run),
        register the best trial's last model (none when no trial met ``search.require``), mark the search
        finished."""
        self.client.log_text(self.run_id, table, "summary.md")
        self.client.set_tag(self.run_id, "best_trial", best_trial or "none")
        for row in rows:
            child = self.child_run(row["trial"])
            if child is not None and child.info.status == "RUNNING":
                stopped = row["stopped early"] != "no"
                self.client.set_tag(child.info.run_id, "stopped_early", str(row["stopped early"] == "yes"))
                self.client.set_terminated(child.info.run_id, "KILLED" if stopped else "FINISHED")
        name = self.cfg.tracking.registered_model
        child = self.child_run(best_trial) if best_trial else None
        if name and child is not None:
            models = self.client.search_logged_models(
                [self.experiment],
                filter_string=f"source_run_id = '{child.info.run_id}'",
                order_by=[{"field_name": "creation_timestamp", "ascending": False}],
                max_results=1,
            )
            if models:
                model = models[0]
                if not self.client.search_registered_models(f"name = '{name}'"):
                    self.client.create_registered_model(name)
                with fluent_tracking(self.client.tracking_uri):  # the registry looks the model up through it
                    version = self.client.create_model_version(
                        name, f"models:/{model.model_id}", run_id=child.info.run_id, model_id=model.model_id
                    )
                tags = {"trial": best_trial, "search": os.path.basename(self.folder), **best_metrics}
                for key, value in tags.items():
                    self.client.set_model_version_tag(name, version.version, key, str(value))
                self.client.set_registered_model_alias(name, self.search.alias, version.version)
                print(
                    f"mlflow: best trial {best_trial} registered as {name} version {version.version} "
                    f"(alias {self.search.alias!r})",
                    flush=True,
                )
        self.client.set_terminated(self.run_id, "FINISHED")

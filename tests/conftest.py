"""Shared fixtures: tiny models built from configs once per session, written to disk."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import pytest

# pytest-xdist workers share the cores: give each its share of torch threads (OpenMP pools that together
# ask for more threads than there are cores spin against each other and run many times slower)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, os.path.dirname(__file__))

from shared_services import shared  # noqa: E402

from pipeline.ray_env import TOKEN_PATH, local_ray_env  # noqa: E402  (imports no Ray)

# before any test module imports ray, which reads them at import; the session's token file, not ~/.ray's
os.environ.setdefault(TOKEN_PATH, os.path.join(tempfile.mkdtemp(prefix="rt-token-"), "auth_token"))
os.environ.update(local_ray_env())
# S3 credentials for the moto server, set before Ray starts so its workers inherit them; distinctive,
# so tests/test_tracking.py can check that they never reach MLflow
S3_SECRET = "rt-test-secret-5c1f9e"
os.environ.update(
    {"AWS_ACCESS_KEY_ID": "rt-test-key-9a2b", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
)
for _name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)


def shell_env(**extra: str) -> dict[str, str]:
    """The environment for a command run as from a shell on this machine: without the session cluster's
    address variables, which ``ray.init`` and the ``ray_session`` fixture export (a subprocess would
    otherwise join or query that cluster)."""
    from pipeline.ray_env import API_SERVER_ADDRESS

    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", API_SERVER_ADDRESS)} | extra


# Fixtures that start services: a test using one is in the slow tier (pytest -m "not slow" skips it)
SERVICE_FIXTURES = {"ray_session", "tracking_stack", "local_head"}


DURATIONS_KEY = "reward_tuning/durations"  # each test's last duration in seconds, in .pytest_cache


@pytest.hookimpl(tryfirst=True)  # before pytest-random-order, so that its --random-order-* options still shuffle
def pytest_collection_modifyitems(config, items):
    """Mark the slow tier, then order the longest tests first, so that pytest-xdist's workers (fed one
    test at a time, ``--maxschedchunk 1``) finish together. Durations come from the last run's cache;
    without one (a fresh clone), tests marked slow by hand (those that start services of their own) go
    first, then the other slow ones."""
    by_hand = {item.nodeid for item in items if item.get_closest_marker("slow")}
    uses_service = {item.nodeid for item in items if SERVICE_FIXTURES & set(item.fixturenames)}
    for item in items:
        if item.nodeid in uses_service:
            item.add_marker(pytest.mark.slow)
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    known = cache.get(DURATIONS_KEY, {}) if cache else {}
    items.sort(
        key=lambda item: (-known.get(item.nodeid, 0.0), item.nodeid not in by_hand, item.nodeid not in uses_service)
    )


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    """Remember durations in the process that saw every report (xdist's controller, or a serial run)."""
    cache = getattr(session.config, "cache", None)
    if cache and not os.environ.get("PYTEST_XDIST_WORKER") and _durations:
        cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **_durations})


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory) -> str:
    """The real CLIP tokenizer, rebuilt offline and saved (a few seconds, once)."""
    from sd_factories import save_clip_tokenizer

    return save_clip_tokenizer(str(tmp_path_factory.mktemp("clip_tokenizer")))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, clip_tokenizer_dir) -> str:
    """A tiny Stable-Diffusion-structured pipeline folder (16 px images)."""
    from sd_factories import build_tiny_sd

    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny_sd")), clip_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory, clip_tokenizer_dir) -> str:
    """A tiny SDXL pipeline folder (16 px images, two CLIP encoders)."""
    from sdxl_factories import build_tiny_sdxl

    return build_tiny_sdxl(str(tmp_path_factory.mktemp("tiny_sdxl")), clip_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory) -> str:
    """A tiny PixArt-α pipeline folder (16 px images, T5, learned sigma)."""
    from pixart_factories import build_tiny_pixart

    return build_tiny_pixart(str(tmp_path_factory.mktemp("tiny_pixart")))


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory, clip_tokenizer_dir) -> str:
    """A tiny SD3 pipeline folder (16 px images, two CLIP encoders and T5, flow matching with a static shift)."""
    from sd3_factories import build_tiny_sd3

    return build_tiny_sd3(str(tmp_path_factory.mktemp("tiny_sd3")), clip_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory, clip_tokenizer_dir) -> str:
    """A tiny FLUX.1 [dev] pipeline folder (embedded guidance, dynamic shifting; sampled at 16 px in tests)."""
    from flux_factories import build_tiny_flux

    return build_tiny_flux(str(tmp_path_factory.mktemp("tiny_flux")), clip_tokenizer_dir)


def _shared_folder(tmp_path_factory) -> str | None:
    """The folder all of this run's pytest-xdist workers share (their temp folders' parent), else None."""
    return str(tmp_path_factory.getbasetemp().parent) if os.environ.get("PYTEST_XDIST_WORKER") else None


# The session's Ray cluster: two nodes on this machine (Ray's own multi-node test cluster), placed like a
# real one, and shared by the run's xdist workers (an idle two-node Ray costs about a tenth of a core). The
# head holds the training workers' custom resource, the second node the reward actors'
# (tests/test_placement.py); tests that ask for neither may land on either node. The resources are
# logical, counted for two workers' tests at once; tests that look at actors look at their own job's.
HEAD_NODE = {"num_cpus": 4, "resources": {"train_node": 4}}
REWARD_NODE = {"num_cpus": 2, "resources": {"reward_node": 2}}


def _start_ray() -> tuple[dict, Callable[[], None]]:
    from ray.cluster_utils import Cluster

    from pipeline.ray_env import own_dashboard_port

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = own_dashboard_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **HEAD_NODE,
            "object_store_memory": 1 << 30,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
            "node_ip_address": "127.0.0.1",
        },
    )
    cluster.add_node(**REWARD_NODE, object_store_memory=256 << 20, node_ip_address="127.0.0.1")
    return {
        "address": cluster.address,
        "dashboard": f"http://127.0.0.1:{port}",
        "tmpdir": os.environ["RAY_TMPDIR"],
    }, cluster.shutdown


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local two-node Ray for the whole test run, bound to 127.0.0.1 (docs/platform.md)."""
    import ray

    from pipeline.ray_env import API_SERVER_ADDRESS

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    with shared("ray", _shared_folder(tmp_path_factory), _start_ray) as cluster:
        os.environ.update({API_SERVER_ADDRESS: cluster["dashboard"], "RAY_TMPDIR": cluster["tmpdir"]})
        ray.init(address=cluster["address"], configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def _start_tracking_stack(state: str) -> tuple[dict, Callable[[], None]]:
    import json
    import subprocess

    from pipeline.ray_env import free_port

    ports = {"--port-s3": free_port(), "--port-mlflow": free_port()}
    command = [sys.executable, "-m", "cluster.local"]
    up = subprocess.run(
        [
            *command,
            "up",
            "--services",
            "s3,mlflow",
            "--state-dir",
            state,
            *(str(x) for item in ports.items() for x in item),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    with open(os.path.join(state, "local-stack.json"), encoding="utf-8") as f:
        s3, mlflow = json.load(f)["services"]

    def down() -> None:
        result = subprocess.run([*command, "down", "--state-dir", state], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    return {
        "s3": s3["addresses"]["endpoint"],
        "bucket": "reward-tuning",
        "mlflow": mlflow["addresses"]["tracking"],
        "mlflow_db": os.path.join(mlflow["workdir"], "mlflow.db"),
    }, down


@pytest.fixture(scope="session")
def tracking_stack(tmp_path_factory):
    """A real S3 endpoint (moto) and MLflow server (sqlite, artifacts in that S3) on free loopback ports,
    from ``python -m cluster.local up --services s3,mlflow``, stopped by PID with ``down``; shared by the
    run's xdist workers."""
    state = str(tmp_path_factory.mktemp("tracking_stack"))
    with shared("tracking_stack", _shared_folder(tmp_path_factory), lambda: _start_tracking_stack(state)) as stack:
        yield stack

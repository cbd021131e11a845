"""Shared fixtures: tiny models built from configs once per session, written to disk."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, os.path.dirname(__file__))

from pipeline.ray_train import LOCAL_RAY_ENV  # noqa: E402  (imports no Ray)

os.environ.update(LOCAL_RAY_ENV)  # before any test module imports ray: Ray reads them at import


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
def ray_session(tmp_path_factory):
    """One local Ray for the whole test session, bound to 127.0.0.1 (PLATFORM.md §2, §7)."""
    import tempfile

    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(address="local", num_cpus=2, object_store_memory=1 << 30, include_dashboard=True,
             dashboard_host="127.0.0.1", configure_logging=False)
    yield ray
    ray.shutdown()

"""Shared fixtures: tiny models built from configs once per session, written to disk."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, os.path.dirname(__file__))


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

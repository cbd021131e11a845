"""Cheap checks of everything a config points at, run before any model, Ray or tracking resource.

Each problem names the config key, the value and the fix; all are raised together as one
``ConfigError`` so the command line exits with status 2 and one message.
"""

from __future__ import annotations

import os

from pipeline.config import ConfigError, load_config
from rewards.config import RewardSpec
from trainers.config import Config

_REWARD_FILES = {  # RewardSpec field -> what the file or folder is
    "checkpoint": "the reward's checkpoint (file, or the model folder for pickscore)",
    "clip_checkpoint": "the open_clip ViT-L-14 weights file",
    "arch_config": "the open_clip model-config JSON",
    "processor": "the processor folder",
}


def _is_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") != 1


def model_problems(key: str, path: str) -> list[str]:
    """A local model path must be a diffusers pipeline folder; hub ids need the network."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if not (_is_local(path) or offline) or os.path.isfile(os.path.join(path, "model_index.json")):
        return []
    why = "does not exist" if not os.path.exists(path) else "has no model_index.json"
    return [f"{key}: {path!r} {why}; point it at a folder written by StableDiffusionPipeline.save_pretrained"
            + (" (HF_HUB_OFFLINE is set, so hub ids cannot be fetched)" if offline and not _is_local(path) else "")]


def reward_problems(key: str, specs: list[RewardSpec]) -> list[str]:
    problems = []
    for i, spec in enumerate(specs):
        for name, what in _REWARD_FILES.items():
            path = getattr(spec, name)
            if path is not None and not os.path.exists(path):
                problems.append(f"{key}.{i}.{name}: {path!r} does not exist; expected {what} for reward "
                                f"{spec.name!r}")
    return problems


def device_problems(key: str, device: str) -> list[str]:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return [f"{key}: {device!r} requested but no CUDA device is visible; use {key}=cpu or auto"]
    return []


def preflight(cfg: Config, source: str = "config") -> None:
    """Raise one ``ConfigError`` listing every missing file or unavailable device the config names."""
    problems = model_problems("model.path", cfg.model.path) + device_problems("model.device", cfg.model.device)
    problems += reward_problems("rewards", cfg.rewards) + reward_problems("eval.rewards", cfg.eval.rewards)
    for key, path in (("data.prompts", cfg.data.prompts), ("data.eval_prompts", cfg.data.eval_prompts)):
        if path is not None and not os.path.isfile(path):
            problems.append(f"{key}: prompt file {path!r} does not exist; give a .txt or .jsonl file, or null "
                            "for the built-in prompts")
    if problems:
        raise ConfigError(problems, f"{source} (files and devices it names)")


def load_checked(path: str | None, overrides: list[str], check_files: bool = True) -> Config:
    """Load and validate a training config, then (``check_files``) preflight what it names."""
    cfg = load_config(Config, path, overrides)
    if check_files:
        preflight(cfg, path or "default config")
    return cfg

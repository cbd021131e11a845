"""Cheap checks of everything a config points at, run before any model, Ray or tracking resource.

Each problem names the config key, the value and the fix; all are raised together as one
``ConfigError`` so the command line exits with status 2 and one message.
"""

from __future__ import annotations

import os

from pipeline.config import ConfigError, load_config
from rewards.config import RewardSpec
from trainers.config import Config
from trainers.models import model_path_problem
from trainers.prompts import read_prompts

_REWARD_FILES = {  # RewardSpec field -> what the file or folder is
    "checkpoint": "the reward's checkpoint (file, or the model folder for pickscore)",
    "clip_checkpoint": "the open_clip ViT-L-14 weights file",
    "arch_config": "the open_clip model-config JSON",
    "processor": "the processor folder",
}


def model_problems(key: str, path: str) -> list[str]:
    """A local model path must be a diffusers pipeline folder; hub ids need the network or the cache."""
    problem = model_path_problem(path)
    return [f"{key}: {problem}"] if problem else []


def prompt_problems(key: str, path: str | None) -> list[str]:
    """The prompt file must exist and hold prompts in a supported format."""
    if path is None:
        return []
    try:
        read_prompts(path)
    except (OSError, ValueError) as err:
        return [f"{key}: {err}"]
    return []


def run_folder_problems(cfg: Config) -> list[str]:
    """``train.resume=false`` must not write into a folder that already holds another run's checkpoints."""
    from trainers.checkpoint import latest_checkpoint
    from trainers.loop import run_folder

    folder = run_folder(cfg)
    if cfg.train.resume or not os.path.isdir(folder) or latest_checkpoint(folder) is None:
        return []
    return [f"train.resume: false, but {folder} already holds checkpoints; set train.run_name to a new name, "
            "delete the folder, or set train.resume=true to continue it"]


def reward_problems(key: str, specs: list[RewardSpec]) -> list[str]:
    problems = []
    for i, spec in enumerate(specs):
        for name, what in _REWARD_FILES.items():
            path = getattr(spec, name)
            if path is not None and not os.path.exists(path):
                problems.append(f"{key}.{i}.{name}: {path!r} does not exist; expected {what} for reward "
                                f"{spec.name!r}")
    return problems


def weights_problems(key: str, folder: str | None) -> list[str]:
    """Trained weights: a folder with a LoRA file or a full ``unet/`` folder."""
    if folder is None:
        return []
    lora = os.path.join(folder, "pytorch_lora_weights.safetensors")
    if os.path.isfile(lora) or os.path.isdir(os.path.join(folder, "unet")):
        return []
    return [f"{key}: {folder!r} holds no trained weights; expected pytorch_lora_weights.safetensors or a unet/ "
            "folder, as in a run's final/ folder or a checkpoint's model/ folder"]


def device_problems(key: str, device: str) -> list[str]:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return [f"{key}: {device!r} requested but no CUDA device is visible; use {key}=cpu or auto"]
    return []


def preflight(cfg: Config, source: str = "config") -> None:
    """Raise one ``ConfigError`` listing every missing file or unavailable device the config names."""
    problems = model_problems("model.path", cfg.model.path) + device_problems("model.device", cfg.model.device)
    problems += reward_problems("rewards", cfg.rewards) + reward_problems("eval.rewards", cfg.eval.rewards)
    problems += prompt_problems("data.prompts", cfg.data.prompts)
    problems += prompt_problems("data.eval_prompts", cfg.data.eval_prompts) + run_folder_problems(cfg)
    if problems:
        raise ConfigError(problems, f"{source} (files and devices it names)")


def load_checked(path: str | None, overrides: list[str], check_files: bool = True) -> Config:
    """Load and validate a training config, then (``check_files``) preflight what it names."""
    cfg = load_config(Config, path, overrides)
    if check_files:
        preflight(cfg, path or "default config")
    return cfg

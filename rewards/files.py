"""Cheap checks that a reward's files are what its spec says, without loading a tensor.

A weights file is opened the way its loader will open it, but only its tensor names are read: a
safetensors header, or a torch checkpoint through ``torch.load(mmap=True, weights_only=True)``, which
maps the tensors without reading them. The names must then look like the file the reward expects
(an open_clip model has ``visual.*`` tensors, the aesthetic head ``layers.*``), so a swapped or
corrupt file is reported before any model is built.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

from rewards.config import RewardSpec
from rewards.descriptor import Folder, WeightsFile

_ARCH_CONFIG = "the open_clip model-config JSON"
_FIX = "replace it with an intact copy of the original file"


def file_problems(spec: RewardSpec) -> list[str]:
    """``"field: message"`` for each file of ``spec`` that is missing, unreadable or of another kind."""
    problems = []
    for field in ("checkpoint", "clip_checkpoint", "arch_config", "processor"):
        path, layout = getattr(spec, field), spec.descriptor.files.get(field)
        problem = path and _problem(layout, path)
        if problem:
            what = layout.what if layout else _ARCH_CONFIG
            problems.append(f"{field}: {path!r} {problem}; expected {what} for reward {spec.name!r}")
    return problems


def _problem(layout: WeightsFile | Folder | None, path: str) -> str | None:
    if not os.path.exists(path):
        return "does not exist"
    if isinstance(layout, WeightsFile):
        return _weights_problem(path, layout.prefixes)
    if isinstance(layout, Folder):
        return _folder_problem(path, layout.must_hold)
    return None


def _folder_problem(path: str, required_file: str) -> str | None:
    if not os.path.isdir(path):
        return "is not a folder"
    if required_file and not os.path.isfile(os.path.join(path, required_file)):
        return f"has no {required_file}"
    return None


def _weights_problem(path: str, prefixes: tuple[str, ...]) -> str | None:
    if not os.path.isfile(path):
        return "is not a file"
    try:
        names = tensor_names(path)
    except ValueError as err:
        return f"{err}; {_FIX}"
    absent = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if absent:
        shown = ", ".join(sorted(names)[:4]) or "none"
        return (
            f"holds no {' or '.join(p + '*' for p in absent)} tensors (it has {len(names)}: {shown}, ...), "
            "so it is another model's file"
        )
    return None


def tensor_names(path: str) -> list[str]:
    """The tensor names of a safetensors file or torch checkpoint (a ``{'state_dict': ...}`` wrapper and a
    ``module.`` prefix removed), read without loading the tensors.

    Raises:
        ValueError: If the file cannot be read as either format.
    """
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a bad header
            raise ValueError(f"is not a readable safetensors file ({err})") from None
    import torch

    try:  # mmap maps the tensors without reading them; the old (non-zip) format can only be read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - torch raises several types for a corrupt or foreign file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"is not a readable torch checkpoint ({first_line})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict of tensors")
    return [name.removeprefix("module.") for name in state]

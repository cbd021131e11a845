"""Load open_clip models from local weights files only, strictly, with clear errors.

``open_clip.create_model(arch, pretrained=<file>)`` unwraps ``{'state_dict': ...}`` checkpoints (the
HPSv2 layout) and a ``module.`` prefix, ``torch.load``s with ``weights_only=True``, and loads with
``strict=True``. Two things it does not do for us: it raises a bare ``RuntimeError`` on mismatching
tensors, and a ``pretrained`` string that is not an existing file is looked up as a hub tag (a
download). So we check the file first, pass an absolute path (never a tag), and translate failures
into :class:`~rewards.base.RewardLoadError` naming the keys.

open_clip is imported where it is used: it takes seconds, and a process that only checks a config or scores
with pixel rewards never needs it.
"""

from __future__ import annotations

import json
import os
import pickle

import torch
from torch import nn

from rewards.base import RewardLoadError, describe_state_dict_mismatch
from rewards.preprocess import ImagePreprocess

_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def register_arch_config(path: str) -> str:
    """Register an open_clip model-config JSON so its file stem becomes an architecture name.

    Args:
        path: A JSON file holding ``embed_dim``, ``vision_cfg`` and ``text_cfg``.

    Returns:
        The architecture name (the file stem).

    Raises:
        RewardLoadError: If the file is missing, is not JSON, or lacks the keys open_clip needs
            (open_clip silently skips such files).
    """
    import open_clip

    config = _read_arch_config(path)
    arch = os.path.splitext(os.path.basename(path))[0]
    # Re-adding moves this file to the end of open_clip's search list, so the latest wins when two
    # files share a stem; skipping when already current keeps that list from growing.
    if open_clip.get_model_config(arch) != config:
        open_clip.add_model_config(path)
    assert open_clip.get_model_config(arch) == config, f"open_clip did not register {path}"
    return arch


def _read_arch_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise RewardLoadError(
            f"open_clip model-config file {path!r} does not exist; "
            "arch_config must point to a JSON file with embed_dim, vision_cfg and text_cfg"
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RewardLoadError(f"open_clip model-config file {path!r} is not valid JSON: {e}") from e
    missing = [k for k in _REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise RewardLoadError(
            f"open_clip model-config file {path!r} lacks {missing}; "
            f"an open_clip model config needs {list(_REQUIRED_CONFIG_KEYS)}"
        )
    return config


def load_open_clip(arch: str, weights: str, what: str) -> nn.Module:
    """Build open_clip architecture ``arch`` and load ``weights`` into it strictly, on CPU in fp32.

    Args:
        arch: A registered open_clip architecture name (built in, or from :func:`register_arch_config`).
        weights: Local weights file: a state dict, ``{'state_dict': ...}``, or ``.safetensors``.
        what: Human description of the file for messages, e.g. ``"HPSv2 checkpoint file HPS_v2.1_compressed.pt"``.

    Returns:
        The open_clip ``CLIP`` model in eval mode.

    Raises:
        RewardLoadError: If the architecture is unknown, the file is missing or unreadable, or its
            tensors do not match the architecture.
    """
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise RewardLoadError(
            f"unknown open_clip architecture {arch!r}; use a built-in name (open_clip.list_models()) "
            "or register a model-config JSON with arch_config"
        )
    if not os.path.isfile(weights):
        raise RewardLoadError(
            f"{what} not found at {weights!r}; expected a file (state dict, "
            "{'state_dict': ...} checkpoint, or .safetensors)"
        )
    path = os.path.abspath(weights)  # an absolute path can never be mistaken for a hub tag
    try:
        model = open_clip.create_model(arch, pretrained=path, device="cpu", precision="fp32")
    except pickle.UnpicklingError as e:
        raise RewardLoadError(
            f"{what} {weights!r} holds non-tensor objects, which torch.load(weights_only=True) refuses; "
            "if you trust it, re-save only its tensors: torch.save(torch.load(path, weights_only=False)"
            "['state_dict'], new_path)"
        ) from e
    except RuntimeError as e:
        raise RewardLoadError(_mismatch_message(arch, path, what, e)) from e
    return model.eval()


def _mismatch_message(arch: str, path: str, what: str, error: RuntimeError) -> str:
    # Rebuild an empty model and compare keys/shapes ourselves: torch's message is long and unordered.
    import open_clip
    from open_clip.factory import load_state_dict as load_open_clip_state_dict

    try:
        found = load_open_clip_state_dict(path)
    except Exception:  # noqa: BLE001 - any failure here means the file itself is unreadable
        return f"{what} {path!r} could not be read as a torch or safetensors file: {error}"
    expected = open_clip.create_model(arch, device="cpu").state_dict()
    detail = describe_state_dict_mismatch(expected, found) or str(error)
    return (
        f"{what} {path!r} does not match open_clip architecture {arch!r}: {detail}; "
        "check that arch/arch_config name the architecture the weights were trained with"
    )


def meta_open_clip(arch: str) -> nn.Module:
    """Open_clip architecture ``arch`` on the meta device: its shapes, no weights (``RewardDescriptor.skeleton``)."""
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise RewardLoadError(f"unknown open_clip architecture {arch!r}; use a built-in name (open_clip.list_models())")
    with torch.device("meta"):
        return open_clip.create_model(arch, device="meta")


def open_clip_preprocess(model: nn.Module) -> ImagePreprocess:
    """The differentiable equivalent of ``model``'s open_clip validation transform.

    Raises:
        RewardLoadError: If the model asks for a resize mode other than ``shortest`` or ``squash``.
    """
    cfg = model.visual.preprocess_cfg
    if cfg.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise RewardLoadError(
            f"open_clip resize_mode {cfg['resize_mode']!r} is not supported; "
            "use an architecture with resize_mode 'shortest' or 'squash'"
        )
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ImagePreprocess(
        size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop=cfg.get("resize_mode", "shortest") == "shortest"
    )

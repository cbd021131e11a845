"""Checks of adapters and trained weights against a denoiser's module tree, before any weight is loaded.

The denoiser is a skeleton built from its config on the meta device (``trainers.models.denoiser_skeleton``),
so these checks read only config files and safetensors headers.
"""

from __future__ import annotations

import os
import re

from torch import nn

# layers peft's LoRA can wrap
LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
# a diffusers (lora.down/up) or peft (lora_A/B) key of a UNet adapter: unet.<module>.<part>[.<adapter>].weight
# diffusers' LoRA files name the UNet's modules "unet.<module>", peft adapter files (PixArt's transformer)
# "base_model.model.<module>"
_LORA_KEY = re.compile(
    r"^(unet|transformer|base_model\.model)\.(?P<module>.+)\.(?P<part>lora\.down|lora\.up|lora_A|lora_B)"
    r"(\.[^.]+)?\.weight$"
)


def lora_target_problems(denoiser: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Why each of ``targets`` (peft's rule: a module's full name, or its last dotted parts) cannot carry a
    LoRA adapter in ``denoiser``: it names no module, or only modules LoRA cannot wrap."""
    modules = dict(denoiser.named_modules())
    problems = []
    for target in targets:
        matched = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not matched:
            problems.append(f"{target!r} names no module of the model")
        elif not any(isinstance(m, LORA_LAYERS) for m in matched):
            kinds = sorted({type(m).__name__ for m in matched})
            problems.append(f"{target!r} names only {'/'.join(kinds)} modules, which LoRA cannot wrap")
    return problems


def lora_file_problems(denoiser: nn.Module, path: str) -> list[str]:
    """Why the LoRA file ``path`` does not fit ``denoiser``: no UNet adapter tensors, adapters on modules it
    lacks, or ranks on the wrong feature sizes."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a bad header
        return [f"{os.path.basename(path)} is not a readable safetensors file ({err})"]
    modules = dict(denoiser.named_modules())
    problems, seen = [], 0
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if not match:
            continue
        seen += 1
        name, down = match["module"], match["part"] in ("lora.down", "lora_A")
        module = modules.get(name)
        if module is None:
            problems.append(f"{key} adapts {name}, which this model does not have")
            continue
        expected = _features(module, down)
        got = shape[1] if down else shape[0]
        if expected is not None and got != expected:
            problems.append(
                f"{key} has shape {list(shape)} but {name} has {expected} {'input' if down else 'output'} features"
            )
    if not seen:
        problems.append(
            f"{os.path.basename(path)} holds no denoiser LoRA tensors (unet.*, transformer.* or "
            "base_model.model.*.lora_A/B.weight)"
        )
    return problems


def _features(module: nn.Module, down: bool) -> int | None:
    """The size a LoRA down (input) or up (output) matrix of ``module`` must have."""
    if isinstance(module, nn.Linear):
        return module.in_features if down else module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.in_channels if down else module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings if down else module.embedding_dim
    return None


def architecture_problems(base: nn.Module, trained: nn.Module) -> list[str]:
    """Tensors whose name or shape differ between two denoisers (at most three are named)."""
    mine = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in trained.state_dict().items()}
    differing = [
        f"{k}: {list(theirs[k]) if k in theirs else 'missing'} vs {list(mine[k]) if k in mine else 'absent'}"
        for k in sorted(mine.keys() | theirs.keys())
        if mine.get(k) != theirs.get(k)
    ]
    if not differing:
        return []
    return [f"{len(differing)} tensors differ from the base model's (trained vs base: {'; '.join(differing[:3])})"]

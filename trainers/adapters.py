"""LoRA adapters on any denoiser (UNet or transformer), through peft's functional API: what diffusers'
``add_adapter``/``set_adapter``/``disable_adapters`` do for a UNet, also for a denoiser that has no such
methods (PixArt's transformer, docs/families.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def add_lora(denoiser: torch.nn.Module, config, name: str) -> None:
    """Inject the adapter ``name`` and make it the only active (and trainable) one.

    Raises:
        ValueError: none of ``config.target_modules`` is in the denoiser (peft's message).
    """
    from peft.functional import inject_adapter_in_model, set_adapter

    inject_adapter_in_model(config, denoiser, adapter_name=name)
    set_adapter(denoiser, name)
    if hasattr(denoiser, "_hf_peft_config_loaded"):  # a diffusers PeftAdapterMixin: its own adapter API works too
        denoiser._hf_peft_config_loaded = True


def activate(denoiser: torch.nn.Module, name: str) -> None:
    """Make the adapter ``name`` the active one (it alone takes gradients)."""
    from peft.functional import set_adapter

    set_adapter(denoiser, name)


@contextmanager
def adapters_off(denoiser: torch.nn.Module) -> Iterator[None]:
    """The base denoiser: every adapter layer bypassed inside the block."""
    layers = _tuner_layers(denoiser)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def _tuner_layers(denoiser: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]


def weigh(denoiser: torch.nn.Module, weights: dict[str, float]) -> None:
    """Make the adapters named in ``weights`` active together, each LoRA delta scaled by its weight: the
    denoiser's weights become ``W + sum_i w_i * Delta_i`` (0: that adapter off, 1: as trained). For LoRA
    scaling at inference (one adapter) and mixing adapters trained on different rewards (several)."""
    from peft.tuners.lora import LoraLayer

    for layer in denoiser.modules():
        if isinstance(layer, LoraLayer):
            names = [name for name in weights if name in layer.lora_A]
            layer.set_adapter(names)
            for name in names:
                layer.set_scale(name, weights[name])
    denoiser.requires_grad_(False)  # set_adapter makes the active adapters trainable; inference needs none


@contextmanager
def folded(denoiser: torch.nn.Module) -> Iterator[bool]:
    """For calls without gradient: each LoRA layer's active deltas added into its base weight and the
    adapter path skipped, the same function without peft's extra matmuls and per-layer Python. Yields
    whether it folded (not when the adapters are off or merged already, e.g. a teacher with its adapters
    disabled). The original weight tensors are put back as they were, bit for bit."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in denoiser.modules() if isinstance(m, LoraLayer)]
    if not layers or any(layer.disable_adapters or layer.merged for layer in layers):
        yield False
        return
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)
                originals.append((layer, base, base.weight.data))
                base.weight.data = (base.weight.data + delta).to(base.weight.dtype)
                layer._disable_adapters = (
                    True  # peft's switch, set directly: enable_adapters() also flips requires_grad
                )
        yield True
    finally:
        for layer, base, weight in originals:
            base.weight.data = weight
            layer._disable_adapters = False


def copy_adapter(denoiser: torch.nn.Module, source: str, target: str) -> int:
    """Give adapter ``target`` the LoRA delta of adapter ``source`` (A as is, B rescaled by the ratio of their
    ``alpha / r`` scalings), then delete ``source``; the number of layers copied.

    Raises:
        ValueError: the two adapters' ranks differ in some layer, or they share no layer.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in denoiser.modules() if isinstance(m, LoraLayer) and source in m.lora_A and target in m.lora_A]
    if not layers:
        raise ValueError(f"adapters {source!r} and {target!r} share no layer: were they trained on other modules?")
    with torch.no_grad():
        for layer in layers:
            a, b = layer.lora_A[source].weight, layer.lora_B[source].weight
            if a.shape != layer.lora_A[target].weight.shape:
                raise ValueError(
                    f"a LoRA of rank {a.shape[0]} cannot start an adapter of rank "
                    f"{layer.lora_A[target].weight.shape[0]}; give both the same rank"
                )
            layer.lora_A[target].weight.copy_(a)
            layer.lora_B[target].weight.copy_(b * (layer.scaling[source] / layer.scaling[target]))
    for layer in layers:
        layer.delete_adapter(source)
    return len(layers)

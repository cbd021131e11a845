"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for full fine-tunes.

With ``train.fsdp`` and N > 1 replicas, each UNet block (and then the UNet) is sharded: every replica
keeps 1/N of the trained weights, their gradients and the AdamW state, all-gathers a block's weights
for its forward and backward and reduce-scatters (averages) the gradients in backward. The maths is
that of ``trainers.replicas``: N replicas with batch b take the step one replica takes with batch N·b.

Every forward is then a collective, so all replicas evaluate, and every replica takes part in
gathering the full state for a checkpoint (rank 0 alone writes it, see ``trainers.loop``).
"""

from __future__ import annotations

import torch


def shard_unet(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Shard ``unet``'s down, mid and up blocks, then the rest; return its (now sharded) trained parameters."""
    from torch.distributed.fsdp import fully_shard

    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    for block in blocks:
        fully_shard(block)
    fully_shard(unet)
    return [p for p in unet.parameters() if p.requires_grad]


def _full():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights by name, on CPU, on rank 0 (empty on the others). Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(unet, options=_full())


def full_state(unet: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``(weights, AdamW state)`` unsharded, on CPU and keyed by parameter name, on rank 0 (empty on
    the others). Collective: every replica must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return full_weights(unet), get_optimizer_state_dict(unet, optimizer, options=_full())


def load_full_state(unet: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict) -> None:
    """Shard a state written by :func:`full_state` back onto every replica (each passes the full dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(unet, weights, options=options)
    set_optimizer_state_dict(unet, optimizer, optim_state, options=options)


def local_fraction(params: list[torch.nn.Parameter]) -> float:
    """This replica's share of the trained elements (1/N when sharded)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    return local / max(sum(p.numel() for p in params), 1)

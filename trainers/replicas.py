"""Data-parallel replicas over ``torch.distributed`` (set up by a launcher such as Ray Train).

With N replicas and ``train.batch_size = b``, every replica draws the same global batch of N·b prompts
and initial latents from the shared, checkpointed generator and keeps its own slice ``[r·b, (r+1)·b)``.
Each replica's loss is the mean over its slice, so the mean of the N local gradients is the gradient of
the mean over the global batch: N replicas with batch b take exactly the step one replica with batch
N·b takes (up to the order of floating-point sums). The per-step DDIM and re-noising noise is drawn
from a generator seeded by ``(seed, rank, step)``, so replicas never share it and resume needs no
per-rank state. Alone (no process group), every operation here is a no-op.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Replicas:
    """This process's place among the data-parallel replicas."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Replicas:
        """The running process group's rank and size, or a single replica."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def lead(self) -> bool:
        """Rank 0 writes the run folder: metrics, evaluations, checkpoints."""
        return self.rank == 0

    def own_slice(self, per_replica: int) -> slice:
        """This replica's part of a global batch of ``world_size * per_replica`` items."""
        return slice(self.rank * per_replica, (self.rank + 1) * per_replica)

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the replicas."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every replica."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([float(flag)], device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def mean_grads_(self, params: list[torch.nn.Parameter], finite: bool) -> None:
        """Average ``params``' gradients over the replicas (a missing gradient counts as zero); a replica
        whose loss was not ``finite`` contributes NaN, so every replica skips the step together."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if not finite:
                p.grad.fill_(float("nan"))
        self.mean_([p.grad for p in params])

    def max_divergence(self, tensors: list[torch.Tensor]) -> float:
        """Largest absolute difference between any replica's tensors and rank 0's (0.0 when in sync)."""
        if self.world_size == 1:
            return 0.0
        import torch.distributed as dist

        mine = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        lead = mine.clone()
        dist.broadcast(lead, src=0)
        gap = (mine - lead).abs().max().reshape(1)
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        return float(gap)

    def step_generator(self, seed: int, step: int) -> torch.Generator:
        """A generator for step ``step``'s sampling noise on this replica, independent of every other."""
        digest = hashlib.blake2b(f"{seed}/{self.rank}/{step}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

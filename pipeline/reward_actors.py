"""Reward models served by a pool of Ray actors, with gradients, so large rewards stay off the training GPUs.

A training worker sends decoded images ``x (B, 3, H, W)`` and prompts; an actor returns the scores
``r(x_b, c_b)`` and ``g = ∂(Σ_b r(x_b, c_b))/∂x``. Each reward here scores every image on its own, so
``∂r_b/∂x_{b'} = 0`` for ``b ≠ b'`` and the vector-Jacobian product the trainer needs is
``v^T ∂r/∂x = v_b · g_b`` per image: :class:`RemoteReward` applies exactly that in backward, giving the
same parameter gradients as the same reward in-process. A batch is split into one contiguous chunk
per actor and gathered with a single ``ray.get``. Actors restart when they die (``max_restarts``) and
Ray retries the failed call on the new one (``max_task_retries``), so training goes on.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Sequence

import torch

from rewards.base import check_images, weighted_terms
from rewards.config import RewardSpec
from trainers.config import RayConfig

ACTOR_RESTARTS = 5  # per actor; each restart reloads the reward model
NAME_PREFIX = "reward-server-"  # actors are named NAME_PREFIX + <pool id>-<index>, visible in the dashboard


class RewardServer:
    """The actor: one copy of the (weighted-sum) reward on its own device."""

    def __init__(self, specs: list[dict]):
        from pipeline.config import from_dict
        from rewards.build import build_reward

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.reward = build_reward([from_dict(RewardSpec, s, "reward spec") for s in specs], device=self.device)

    def pid(self) -> int:
        return os.getpid()

    def weights(self) -> dict[str, float] | None:
        """Component weights of a weighted sum, or None for a single reward."""
        weighted = weighted_terms(self.reward)
        return dict(weighted.weights) if weighted is not None else None

    def score(self, images: torch.Tensor, prompts: list[str], with_grad: bool):
        """``(total (B,), parts {name: (B,)} or None, ∂Σ total/∂images or None)``, all on CPU.

        Raises:
            ValueError: malformed ``images`` or ``prompts`` (not retried: the caller gets it at once).
        """
        check_images(images, prompts)
        x = images.to(self.device).requires_grad_(with_grad)
        with torch.set_grad_enabled(with_grad):
            weighted = weighted_terms(self.reward)
            parts = weighted.components(x, prompts) if weighted is not None else None
            total = weighted.combine(parts) if weighted is not None else self.reward(x, prompts)
            grad = torch.autograd.grad(total.sum(), x)[0].cpu() if with_grad else None
        parts = {k: v.detach().float().cpu() for k, v in parts.items()} if parts is not None else None
        return total.detach().float().cpu(), parts, grad


class _RemoteScore(torch.autograd.Function):
    """Scores from the actors in forward; ``v_b · g_b`` per image in backward."""

    @staticmethod
    def forward(ctx, images, remote, prompts):
        total, _, grad = remote.call(images, prompts, with_grad=True)
        ctx.save_for_backward(grad.to(images.device, images.dtype))
        return total.to(images.device)

    @staticmethod
    def backward(ctx, v):
        (grad,) = ctx.saved_tensors
        return v.to(grad.dtype).view(-1, 1, 1, 1) * grad, None, None


def split_over(actors: Sequence, size: int, turn: int) -> list[tuple[object, slice]]:
    """A batch of ``size`` in one contiguous chunk per actor (at most ``size`` chunks), the first chunk
    going to actor ``turn`` (mod the pool), so consecutive calls rotate over the pool."""
    n = min(len(actors), size)
    bounds = [round(i * size / n) for i in range(n + 1)]
    return [(actors[(turn + i) % len(actors)], slice(a, b)) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


class RemoteReward:
    """A reward (``images, prompts -> (B,)``) computed by a pool of :class:`RewardServer` actors."""

    def __init__(self, actors: Sequence, first: int = 0):
        import ray

        self.actors = list(actors)
        self._turn = itertools.count(first)  # rotate which actor gets the first chunk
        self.weights = ray.get(self.actors[0].weights.remote()) or None
        self.name = "remote"

    def call(self, images: torch.Tensor, prompts: Sequence[str], with_grad: bool):
        """Split the batch over the actors, one ``ray.get`` for all chunks; concatenate the answers."""
        import ray

        x = images.detach().float().cpu()
        calls = [
            actor.score.remote(x[part], list(prompts[part]), with_grad)
            for actor, part in split_over(self.actors, len(prompts), next(self._turn))
        ]
        answers = ray.get(calls)
        total = torch.cat([a[0] for a in answers])
        parts = {k: torch.cat([a[1][k] for a in answers]) for k in answers[0][1]} if answers[0][1] else None
        grad = torch.cat([a[2] for a in answers]) if with_grad else None
        return total, parts, grad

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if torch.is_grad_enabled() and images.requires_grad:
            return _RemoteScore.apply(images, self, list(prompts))
        return self.call(images, prompts, with_grad=False)[0].to(images.device)

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each component's unweighted scores, for a weighted sum (``weights`` is not None)."""
        return self.call(images, prompts, with_grad=False)[1]

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Σ_k w_k r_k``, as the weighted sum on the actors computes it."""
        return sum(self.weights[k] * parts[k].float() for k in self.weights)


def start_reward_actors(specs: Sequence[RewardSpec], ray_cfg: RayConfig) -> list:
    """Start ``ray_cfg.reward_actors`` reward servers with the configured resources; wait until loaded."""
    import ray

    from pipeline.config import to_dict

    server, pool = ray.remote(RewardServer), uuid.uuid4().hex[:8]
    options = dict(
        num_cpus=ray_cfg.reward_num_cpus,
        num_gpus=ray_cfg.reward_num_gpus,
        resources=dict(ray_cfg.reward_resources),
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=-1,
    )
    actors = [
        server.options(name=f"{NAME_PREFIX}{pool}-{i}", **options).remote([to_dict(s) for s in specs])
        for i in range(ray_cfg.reward_actors)
    ]
    ray.get([a.pid.remote() for a in actors])  # surface load errors here, before training starts
    return actors

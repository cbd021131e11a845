"""The DI* teacher's scores served by a pool of Ray actors, so the frozen reference stays off the training GPUs.

A training worker sends, per step, the noised generator samples ``x_t (B, C, h, w)``, their timesteps,
the prompt (and empty-prompt) text states, the fake score's prediction and the noise; an actor runs
``score_divergence.divergence_terms`` on its copy of the guided teacher and returns the per-sample
divergence and its gradients in ``x_t`` (through the teacher's input Jacobian) and in ``ε̂_fake``. The
worker adds the fake score's path and joins the sum to its own graph (``DiStar.divergence_grad``), so
the generator's gradients equal those of an in-process teacher. Every sample's terms depend on that
sample alone, so a batch is split into one contiguous chunk per actor and gathered with a single
``ray.get``; actors restart when they die and Ray retries the failed call, as for reward actors
(``pipeline.reward_actors``).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Sequence

import torch

from pipeline.reward_actors import ACTOR_RESTARTS, split_over
from trainers.config import Config
from trainers.models import Conditioning
from trainers.score_divergence import DivergenceTerms

NAME_PREFIX = "teacher-server-"  # actors are named NAME_PREFIX + <pool id>-<index>


class TeacherServer:
    """The actor: one frozen copy of the teacher UNet, guided as ``distill.alpha_cfg`` says."""

    def __init__(self, cfg: dict):
        from pipeline.config import from_dict
        from trainers.distill import LocalTeacher, divergence_spec, forward_process
        from trainers.families import family_of
        from trainers.models import DTYPES, DiffusionModel, load_denoiser

        c = from_dict(Config, cfg, "teacher config")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        family = family_of(c.model.path, c.model.family, os.path.isdir(c.model.path))
        unet, scheduler = load_denoiser(c.distill.teacher_path or c.model.path, family, DTYPES[c.model.dtype], device)
        dtype = DTYPES[c.model.dtype]
        model = DiffusionModel(
            family, unet, None, (), (), scheduler, device, dtype, 0, guidance=family.guidance_of(unet)
        )
        self.device = device
        self.teacher = LocalTeacher(
            model, _unet_of(unet), forward_process(model, scheduler), divergence_spec(c.distill), c.distill.alpha_cfg
        )

    def pid(self) -> int:
        return os.getpid()

    def terms(self, x_t, t, cond: dict, uncond: dict | None, eps_fake, eps) -> tuple[torch.Tensor, ...]:
        """``(value (B,), grad_x, grad_fake)`` on CPU for one chunk."""

        def put(v):
            return v.to(self.device)

        out = self.teacher.terms(
            put(x_t),
            t,
            _conditioning(cond, put),
            _conditioning(uncond, put) if uncond else None,
            put(eps_fake),
            put(eps),
        )
        return out.value.cpu(), out.grad_x.cpu(), out.grad_fake.cpu()


def _unet_of(unet):
    """``use()`` for a teacher that is always this UNet."""
    from contextlib import nullcontext

    return lambda: nullcontext(unet)


def _plain(c: Conditioning, part: slice) -> dict:
    return {"hidden_states": c.hidden_states[part].cpu(), "added": {k: v[part].cpu() for k, v in c.added.items()}}


def _conditioning(data: dict, put) -> Conditioning:
    return Conditioning(put(data["hidden_states"]), {k: put(v) for k, v in data["added"].items()})


class RemoteTeacher:
    """A :class:`~trainers.distill.Teacher` computed by a pool of :class:`TeacherServer` actors."""

    def __init__(self, actors: Sequence, first: int = 0):
        self.actors = list(actors)
        self._turn = itertools.count(first)  # rotate which actor gets the first chunk

    def terms(self, x_t, t, cond: Conditioning, uncond: Conditioning | None, eps_fake, eps) -> DivergenceTerms:
        import ray

        calls = [
            actor.terms.remote(
                x_t[part].detach().cpu(),
                t[part].cpu(),
                _plain(cond, part),
                _plain(uncond, part) if uncond else None,
                eps_fake[part].detach().cpu(),
                eps[part].cpu(),
            )
            for actor, part in split_over(self.actors, len(x_t), next(self._turn))
        ]
        value, grad_x, grad_fake = (torch.cat(parts).to(x_t.device) for parts in zip(*ray.get(calls)))
        return DivergenceTerms(value, grad_x, grad_fake)


def start_teacher_actors(cfg: Config) -> list:
    """Start ``ray.teacher_actors`` teacher servers with the configured resources; wait until loaded."""
    import ray

    from pipeline.config import to_dict

    r, server, pool = cfg.ray, ray.remote(TeacherServer), uuid.uuid4().hex[:8]
    options = dict(
        num_cpus=r.teacher_num_cpus,
        num_gpus=r.teacher_num_gpus,
        resources=dict(r.teacher_resources),
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=-1,
    )
    actors = [
        server.options(name=f"{NAME_PREFIX}{pool}-{i}", **options).remote(to_dict(cfg)) for i in range(r.teacher_actors)
    ]
    ray.get([a.pid.remote() for a in actors])  # surface load errors here, before training starts
    return actors

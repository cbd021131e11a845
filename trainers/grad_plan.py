"""Gradient plans: which sampling steps carry gradient, and how.

Every gradient-based reward-tuning method in this project is the same sampler with a different
*plan* (docs/methods.md). For each of the T sampling steps ``i = 0 .. T-1`` (0 is the noisiest) a
plan gives :class:`StepFlags`:

* ``grad``: the denoiser call carries parameter gradients (otherwise its output is a constant);
* ``detach_input``: the denoiser sees ``sg(x_t)`` (DRTune), so gradient reaches earlier steps only
  along the sampler's linear skip path ``x_prev = a_t x_t + b_t eps_hat``;
* ``chain``: the latent ``x_t`` entering the step keeps its graph (otherwise it is detached);
* ``stop``: sampling stops after this step's denoiser call, with the one-step prediction
  ``x0_hat`` as the final latent (ReFL, DRTune early stop).

With paper step numbers ``t = T - i`` (t = 1 is the last step):

=============  ======================================================================
DRaFT          all steps grad and chain (full backprop through the sampler)
DRaFT-K        last K steps grad and chain; the first T-K run without a graph
DRaFT-LV       the chain without gradient, then n copies ``x_1 = add_noise(sg(x0), t_r)`` each denoised once
               with grad (t_r the last step's timestep unless set); optionally the chain's last step trained too
DRTune         K steps ``o + j*floor(L/K)``, ``o ~ U{0..L-1-(K-1)floor(L/K)}``, inputs detached, chain on,
               optional early stop at ``t_min ~ U{1..m}``; L is the number of steps run
ReFL           stop at ``t_min ~ U{1..m}``; only that step has grad; no chain
AlignProp      chain everywhere; step i has grad iff ``i >= c_i``, ``c_i ~ U{0..T}`` drawn per step (the
               original code), or one ``c ~ U{0..T}`` per call (its later TRL-style code)
OneStep        T = 1 (the one-step generator of Diff-Instruct*): that step has grad
=============  ======================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from trainers.config import PlanConfig


@dataclass(frozen=True)
class StepFlags:
    """How one sampling step is differentiated (see module docstring)."""

    grad: bool
    detach_input: bool = False
    chain: bool = False
    stop: bool = False


def _randint(low: int, high: int, gen: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive) from ``gen``."""
    return int(torch.randint(low, high + 1, (), generator=gen))


@dataclass(frozen=True)
class Refinement:
    """DRaFT-LV's re-noised copies: ``copies`` times, ``x_r = add_noise(sg(x0), timestep)`` (None: the last
    step's timestep) denoised once with gradient to where the last step lands; ``include_chain`` keeps the
    chain's own sample among the scored finals."""

    copies: int
    timestep: int | None = None
    include_chain: bool = False


class _Named:
    """A plan's ``plan.name``, how it reads its knobs from the config, and the knobs a run's tag shows."""

    name: ClassVar[str]

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> _Named:
        return cls()

    def knobs(self) -> dict[str, object]:
        """The settings that tell two runs of this plan apart, e.g. ``{"k": 3}``."""
        return asdict(self)


@dataclass(frozen=True)
class Draft(_Named):
    """DRaFT (Clark et al., 2024): backpropagate through the whole sampling chain."""

    name: ClassVar[str] = "draft"

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        return [StepFlags(grad=True, chain=True) for _ in range(num_steps)]


@dataclass(frozen=True)
class DraftK(_Named):
    """DRaFT-K: gradients through the last ``k`` steps only.

    Attributes:
        k: Number of trained steps at the end of the chain.
    """

    name: ClassVar[str] = "draft_k"
    k: int = 1

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> DraftK:
        return cls(k=cfg.k)

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        first = num_steps - self.k
        return [StepFlags(grad=i >= first, chain=i >= first) for i in range(num_steps)]


@dataclass(frozen=True)
class DraftLV(_Named):
    """DRaFT-LV (Clark et al., 2024, Algorithm 2): sample ``sg(x0)``, re-noise it ``n`` times and denoise each
    copy once with gradient (:class:`Refinement`); with ``include_chain`` the chain's last step is trained
    too (DRaFT-1 plus the copies, as FlowBP's port does)."""

    name: ClassVar[str] = "draft_lv"
    refine: Refinement

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> DraftLV:
        return cls(Refinement(cfg.lv_copies, cfg.lv_timestep, cfg.lv_include_chain))

    def knobs(self) -> dict[str, object]:
        r = self.refine
        return {"lv_copies": r.copies, "lv_timestep": r.timestep, "lv_include_chain": r.include_chain}

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        last = num_steps - 1 if self.refine.include_chain else None
        return [StepFlags(grad=i == last, chain=i == last) for i in range(num_steps)]


@dataclass(frozen=True)
class DRTune(_Named):
    """DRTune (Wu et al., 2024): K equally spaced trained steps, stop-gradient on every denoiser input.

    Attributes:
        k: Number of trained steps.
        early_stop: m; stop at a step drawn from the last m (0 = run all steps).
    """

    name: ClassVar[str] = "drtune"
    k: int = 5
    early_stop: int = 0

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> DRTune:
        return cls(k=cfg.k, early_stop=cfg.early_stop)

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        stop = num_steps - _randint(1, self.early_stop, gen) if self.early_stop else num_steps - 1
        run = stop + 1
        stride = run // self.k
        offset = _randint(0, run - 1 - (self.k - 1) * stride, gen)  # the last trained step may be the last step
        trained = {offset + j * stride for j in range(self.k)}
        return [
            StepFlags(grad=i in trained, detach_input=True, chain=True, stop=i == stop and self.early_stop > 0)
            for i in range(run)
        ]


@dataclass(frozen=True)
class ReFL(_Named):
    """ReFL (Xu et al., 2023): one grad step at a random late step, scored on its x0 prediction.

    Attributes:
        early_stop: m; the stop step is drawn from the last m steps.
    """

    name: ClassVar[str] = "refl"
    early_stop: int = 10

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> ReFL:
        return cls(early_stop=cfg.early_stop)

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        stop = num_steps - _randint(1, self.early_stop, gen)
        return [StepFlags(grad=i == stop, stop=i == stop) for i in range(stop + 1)]


@dataclass(frozen=True)
class AlignProp(_Named):
    """AlignProp (Prabhudesai et al., 2023): randomised truncation. The original code (``main.py``) draws a
    cut ``c ~ U{0..T}`` inside the step loop and detaches step i's prediction when ``i < c``, so each step
    trains with probability ``(i + 1) / (T + 1)`` independently; ``per_call`` draws one cut per sampling call
    (its later TRL-style ``sd_pipeline.py``), which trains a suffix of random length."""

    name: ClassVar[str] = "alignprop"
    per_call: bool = False

    @classmethod
    def from_config(cls, cfg: PlanConfig) -> AlignProp:
        return cls(per_call=cfg.alignprop_cuts == "per_call")

    def knobs(self) -> dict[str, object]:
        return {"alignprop_cuts": "per_call"} if self.per_call else {}

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        draws = 1 if self.per_call else num_steps
        cuts = torch.randint(0, num_steps + 1, (draws,), generator=gen).expand(num_steps).tolist()
        return [StepFlags(grad=i >= cuts[i], chain=True) for i in range(num_steps)]


@dataclass(frozen=True)
class OneStep:
    """A one-step generator (Diff-Instruct*, trainers/distill.py): its single step carries gradient."""

    def flags(self, num_steps: int, gen: torch.Generator | None = None) -> list[StepFlags]:
        return [StepFlags(grad=True) for _ in range(num_steps)]


GradPlan = Draft | DraftK | DraftLV | DRTune | ReFL | AlignProp | OneStep


def refinement(plan: GradPlan) -> Refinement | None:
    """The re-noised copies a plan adds after the chain (DRaFT-LV), or None."""
    return plan.refine if isinstance(plan, DraftLV) else None

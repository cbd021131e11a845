"""Plan names -> gradient plans. An explicit table, so an unknown name lists the valid ones."""

from __future__ import annotations

from trainers.config import PLAN_NAMES, PlanConfig
from trainers.grad_plan import AlignProp, Draft, DraftK, DraftLV, DRTune, GradPlan, OneStep, ReFL, Refinement


def build_plan(cfg: PlanConfig) -> GradPlan:
    """The gradient plan a config names.

    Raises:
        ValueError: unknown plan name.
    """
    builders = {
        "draft": lambda: Draft(),
        "draft_k": lambda: DraftK(k=cfg.k),
        "draft_lv": lambda: DraftLV(Refinement(cfg.lv_copies, cfg.lv_timestep, cfg.lv_include_chain)),
        "drtune": lambda: DRTune(k=cfg.k, early_stop=cfg.early_stop),
        "refl": lambda: ReFL(early_stop=cfg.early_stop),
        "alignprop": lambda: AlignProp(per_call=cfg.alignprop_cuts == "per_call"),
        "di_star": lambda: OneStep(),
    }
    assert set(builders) == set(PLAN_NAMES)
    if cfg.name not in builders:
        raise ValueError(f"plan.name={cfg.name!r} is not a known plan; choose one of {', '.join(PLAN_NAMES)}")
    return builders[cfg.name]()

"""Plan names -> gradient plans, derived from the plan classes (each owns its ``name`` and ``from_config``), so an
unknown name lists the valid ones. ``di_star`` is not a gradient plan: ``trainers.objectives`` builds it."""

from __future__ import annotations

from trainers.config import PLAN_NAMES, PlanConfig
from trainers.grad_plan import AlignProp, Draft, DraftK, DraftLV, DRTune, GradPlan, ReFL

PLANS = {cls.name: cls for cls in (Draft, DraftK, DraftLV, DRTune, ReFL, AlignProp)}
assert set(PLANS) | {"di_star"} == set(PLAN_NAMES), "every gradient plan class, and only those, has a config name"


def build_plan(cfg: PlanConfig) -> GradPlan:
    """The gradient plan a config names.

    Raises:
        ValueError: an unknown name, or ``di_star`` (a distillation objective, not a gradient plan).
    """
    if cfg.name not in PLANS:
        raise ValueError(f"plan.name={cfg.name!r} is not a gradient plan; choose one of {', '.join(PLANS)}")
    return PLANS[cfg.name].from_config(cfg)

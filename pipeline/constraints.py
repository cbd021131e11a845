"""Held-out constraints such as ``eval/feature_diversity>=0.3``: what a chosen model must keep.

``pipeline.promote --require`` skips the registered versions that break one; each constraint is a
metric name, a comparison (``>=``, ``<=``, ``>``, ``<``) and a number.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

_FORM = re.compile(r"^\s*(?P<metric>[\w./-]+)\s*(?P<op>>=|<=|>|<)\s*(?P<bound>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, metrics: dict[str, float]) -> bool:
        """False when the metric is missing or not finite, as well as when it breaks the bound."""
        value = metrics.get(self.metric, math.nan)
        return math.isfinite(value) and _OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_constraint(text: str) -> Constraint:
    """``METRIC OP NUMBER``.

    Raises:
        ValueError: naming the expected form.
    """
    found = _FORM.match(text)
    if not found:
        raise ValueError(f"{text!r} is not METRIC OP NUMBER with OP one of >=, <=, >, < "
                         "(e.g. 'eval/feature_diversity>=0.3')")
    return Constraint(found["metric"], found["op"], float(found["bound"]))

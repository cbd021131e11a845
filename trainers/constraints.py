"""Held-out constraints such as ``eval/feature_diversity>=0.3``: what a chosen model must keep.

Each is a metric name, a comparison (``>=``, ``<=``, ``>``, ``<``) and a number. A run checks its
evaluations against ``eval.require`` (and can stop when one breaks), a Ray Tune search registers no
trial that breaks ``search.require``, and ``pipeline.promote --require`` skips the versions that do.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass

_FORM = re.compile(
    r"^\s*(?P<metric>[\w./-]+)\s*(?P<op>>=|<=|>|<)\s*(?P<bound>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$"
)
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
        raise ValueError(
            f"{text!r} is not METRIC OP NUMBER with OP one of >=, <=, >, < (e.g. 'eval/feature_diversity>=0.3')"
        )
    return Constraint(found["metric"], found["op"], float(found["bound"]))


def parse_constraints(texts: list[str]) -> list[Constraint]:
    return [parse_constraint(text) for text in texts]


def broken(constraints: list[Constraint], metrics: dict[str, float]) -> list[str]:
    """The constraints ``metrics`` break, each with the value, e.g. ``eval/feature_diversity>=0.3 (0.21)``."""
    return [f"{c} ({metrics.get(c.metric, math.nan):.4g})" for c in constraints if not c.holds(metrics)]


def unknown_metric_problems(key: str, texts: list[str], known: list[str]) -> list[str]:
    """Each parsable entry of ``key`` on a held-out metric (``eval/...``) names one of the ``known`` ones (what an
    evaluation logs); a constraint on any other could never be met. Training metrics (``train/...``) are not
    checked here."""
    problems = []
    for i, text in enumerate(texts):
        metric = _FORM.match(text) and _FORM.match(text)["metric"]
        if metric and metric.startswith("eval/") and metric not in known:
            close = difflib.get_close_matches(metric, known, n=1, cutoff=0.8)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"{key}.{i}: {metric!r} is not a metric the evaluation logs (got {text!r}); "
                f"{hint}name one of {', '.join(known)}"
            )
    return problems


def constraint_problems(key: str, texts: list[str]) -> list[str]:
    """Config validation: each entry of ``key`` must parse."""
    problems = []
    for i, text in enumerate(texts):
        try:
            parse_constraint(text)
        except ValueError as err:
            problems.append(f"{key}.{i}: {err}")
    return problems

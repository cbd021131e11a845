"""Point an alias at the best checkpoint of a registered model:
``python -m pipeline.promote --model NAME --metric eval/clip_score [--require METRIC>=X ...] [--alias champion]``.

Every checkpoint a run registers is a logged model carrying its held-out metrics (``eval/<reward>``,
``eval/diversity``, ``eval/feature_diversity``), as the experiment's model table shows them. This picks
the version whose model has the highest (``--lowest``: lowest) value of ``--metric`` among those that
meet every ``--require`` constraint (e.g. ``'eval/feature_diversity>=0.3'``, against reward hacking),
sets ``--alias`` on it and prints the ranking and which versions each constraint rejected;
``python -m pipeline.generate --model models:/NAME@ALIAS`` then generates from it. A version without a
logged model (registered by hand, or by an earlier release) is ranked by a numeric tag of that name.
"""

from __future__ import annotations

import argparse
import contextlib
import math

from pipeline.config import ConfigError, run_cli
from trainers.constraints import Constraint, parse_constraints


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registered model name (tracking.registered_model of the runs)")
    p.add_argument("--metric", default="eval/trained", help="held-out metric to rank by (default eval/trained)")
    p.add_argument("--alias", default="champion", help="alias to set on the best version (default champion)")
    p.add_argument("--lowest", action="store_true", help="lower is better")
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="CONSTRAINT",
        help="a held-out constraint the version must meet, e.g. 'eval/feature_diversity>=0.3' (repeat for several)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./runs/mlflow.db)")
    return p.parse_args(argv)


def default_tracking_uri(given: str | None) -> str:
    """``given``, else what a run with the default config would use."""
    from pipeline.tracking import tracking_uri
    from trainers.config import Config

    return given or tracking_uri(Config())


def version_metrics(client, version) -> dict[str, float]:
    """A version's numeric tags (how earlier releases recorded held-out metrics), overridden by the metrics
    of its logged model (the latest step of each)."""
    numbers = {}
    for key, text in version.tags.items():
        with contextlib.suppress(ValueError):
            numbers[key] = float(text)
    model_id = version.model_id or (version.source or "").removeprefix("models:/")
    if model_id.startswith("m-"):
        latest: dict[str, tuple[int, float]] = {}
        for m in client.get_logged_model(model_id).metrics or []:
            if m.key not in latest or m.step >= latest[m.key][0]:
                latest[m.key] = (m.step, m.value)
        numbers |= {key: value for key, (_, value) in latest.items()}
    return numbers


def ranked_versions(client, name: str, metric: str, lowest: bool) -> tuple[list[tuple[float, object, dict]], set[str]]:
    """``(value, version, its metrics)`` of every version that has ``metric``, best first, and every metric
    name seen."""
    found, seen = [], set()
    for version in client.search_model_versions(f"name = '{name}'"):
        metrics = version_metrics(client, version)
        seen |= set(metrics)
        value = metrics.get(metric, math.nan)
        if math.isfinite(value):
            found.append((value, version, metrics))
    return sorted(found, key=lambda item: item[0], reverse=not lowest), seen


def rejections(ranked: list[tuple[float, object, dict]], constraints: list[Constraint]) -> dict[str, list[str]]:
    """For each version, the constraints it breaks (none: it qualifies)."""
    return {version.version: [str(c) for c in constraints if not c.holds(metrics)] for _, version, metrics in ranked}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import redact

    try:
        constraints = parse_constraints(args.require)
    except ValueError as err:
        raise ConfigError([f"--require: {err}"], "command line") from None
    uri = default_tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    try:
        client.get_registered_model(args.model)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ConfigError(
            [
                f"--model: no registered model {args.model!r} in {redact(uri)}; registered: {names or 'none'} "
                "(set tracking.registered_model in the training config to register checkpoints)"
            ],
            "command line",
        ) from None
    ranked, seen = ranked_versions(client, args.model, args.metric, args.lowest)
    held_out = sorted(m for m in seen if m.startswith(("eval/", "held_out/"))) or sorted(seen)
    if not ranked:
        raise ConfigError(
            [f"--metric: no version of {args.model!r} has {args.metric!r}; its held-out metrics: {held_out or 'none'}"],
            "command line",
        )
    unknown = [
        f"--require: no version of {args.model!r} logs {c.metric!r}; its held-out metrics: {held_out}"
        for c in constraints
        if c.metric not in seen
    ]
    if unknown:
        raise ConfigError(unknown, "command line")
    broken = rejections(ranked, constraints)
    for constraint in constraints:
        rejected = [str(v.version) for _, v, _ in ranked if str(constraint) in broken[v.version]]
        print(f"{constraint}: rejects {'versions ' + ', '.join(rejected) if rejected else 'no version'}")
    qualified = [(value, version) for value, version, _ in ranked if not broken[version.version]]
    if not qualified:
        raise ConfigError(
            [
                f"--require: no version of {args.model!r} meets {' and '.join(args.require)}; "
                "relax a constraint, or train with a regulariser (plan.kl_coeff)"
            ],
            "command line",
        )
    best_value, best = qualified[0]
    client.set_registered_model_alias(args.model, args.alias, best.version)
    print(f"{'version':>7}  {args.metric:>20}  step  run")
    for value, version, _ in ranked:
        mark = f"  <- {args.alias}" if version.version == best.version else ""
        note = f"  (breaks {', '.join(broken[version.version])})" if broken[version.version] else ""
        print(f"{version.version:>7}  {value:>20.6g}  {version.tags.get('step', '?'):>4}  {version.run_id}{mark}{note}")
    print(
        f"set alias {args.alias!r} on {args.model} version {best.version} ({args.metric} = {best_value:.6g}); "
        f"generate with: python -m pipeline.generate --model models:/{args.model}@{args.alias} --prompt ..."
    )
    return 0


if __name__ == "__main__":
    run_cli(main)

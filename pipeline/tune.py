"""Ray Tune searches over any config key: ``python -m pipeline.tune --config FILE [key=value ...]``.

The file is a training config plus a ``search:`` section::

    search:
      metric: eval/symmetry          # held-out metric ASHA and the final pick use (default: the first
      mode: max                      #   eval.rewards entry, a reward the run is not trained on)
      space:                         # any dotted config key -> one distribution
        plan.name: {grid: [draft_k, drtune]}
        plan.k: {choice: [1, 2, 3]}
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      num_samples: 1                 # samples of the space (grid points are each run this many times)
      max_concurrent_trials: 2
      algorithm: random              # random | optuna (needs the optuna package; no grid keys)
      scheduler: {name: asha, grace_period: 20, reduction_factor: 2}   # grace_period in optimiser steps
      trial_cpus: 0.1                # CPUs held by each trial's driver function (its workers hold ray.*)
      alias: champion                # set on the best trial's registered model version
      require: ["eval/feature_diversity>=0.3"]   # the best trial is chosen among those meeting every one

Distributions: ``choice`` and ``grid`` (a list of values), ``randint`` ``[low, high)``, ``uniform``
and ``loguniform`` ``[low, high]``. Everything is validated before Ray starts: a key that is not in
the config, a distribution Tune does not have, or a value the training config would reject (each
choice, each range end, and every combination of them) exits with status 2 naming the key.

Each trial is one Ray Train run in the Train V2 pattern: a driver function per trial runs
``pipeline.ray_train.fit`` (a ``TorchTrainer``) whose reports are forwarded to Tune; ASHA stops weak
trials on ``metric`` by optimiser step. Trials write run folders and checkpoints like any run, and a
search whose driver died is continued with ``Tuner.restore`` by running the same command again. The
search is one parent MLflow run; each trial is a child run with its params, curves and sample grids;
the best trial's last checkpoint is registered as a version of ``tracking.registered_model`` with
``search.alias``, and the summary table (trial, params, metrics, steps run, stopped early) is
printed and logged to the parent run.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import ConfigError, flatten, from_dict, load_config, read_yaml, run_cli, to_dict
from trainers.config import Config
from trainers.constraints import broken, constraint_problems, parse_constraints, unknown_metric_problems

DISTRIBUTIONS = ("choice", "grid", "randint", "uniform", "loguniform")


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Early stopping of trials."""

    name: Literal["asha", "fifo"] = "asha"  # asha = asynchronous successive halving; fifo = run every trial out
    grace_period: int = 1  # optimiser steps a trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung

    def validate(self) -> list[str]:
        problems = [] if self.grace_period >= 1 else [f"grace_period: must be >= 1, got {self.grace_period}"]
        return problems + (
            [] if self.reduction_factor > 1 else [f"reduction_factor: must be > 1, got {self.reduction_factor}"]
        )


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """The ``search:`` section (see the module docstring)."""

    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    num_samples: int = 1
    max_concurrent_trials: int = 2
    algorithm: Literal["random", "optuna"] = "random"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trial_cpus: float = 0.1
    alias: str = "champion"
    name: str | None = None  # search folder under train.output_dir; None = tune-<config file stem>
    require: list[str] = field(default_factory=list)  # constraints on a trial's last metrics (trainers.constraints)

    def validate(self) -> list[str]:
        problems = [] if self.space else ["space: name at least one config key to search over"]
        problems += constraint_problems("require", self.require)
        problems += [] if self.num_samples >= 1 else [f"num_samples: must be >= 1, got {self.num_samples}"]
        problems += (
            []
            if self.max_concurrent_trials >= 1
            else [f"max_concurrent_trials: must be >= 1, got {self.max_concurrent_trials}"]
        )
        problems += (
            []
            if self.trial_cpus > 0
            else [f"trial_cpus: must be > 0 (Ray refuses an empty trial), got {self.trial_cpus}"]
        )
        return problems


# ---------------------------------------------------------------- loading and validation


@dataclass(frozen=True, kw_only=True)
class SearchSection:
    """A config file's ``search:`` section alone."""

    search: SearchConfig


def load_search(path: str, overrides: list[str]) -> tuple[Config, SearchConfig]:
    """The base training config and the search, both checked; one ``ConfigError`` with every problem."""
    data = read_yaml(path)
    search_data = data.pop("search", None)
    if not isinstance(search_data, dict):
        raise ConfigError(
            ["search: missing; add a search: section with a space (python -m pipeline.tune --help)"], path
        )
    ours = [o for o in overrides if o.startswith("search.")]
    base = load_config(Config, path, [o for o in overrides if o not in ours], data=data)
    search = load_config(SearchSection, path, ours, data={"search": search_data}).search  # problems name search.*
    problems = space_problems(base, search) + metric_problems(base, search)
    if problems:
        raise ConfigError(problems, f"{path} (search:)")
    return base, search


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"`` (list items by index: ``rewards.0.weight``)."""
    *parents, last = key.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def candidate_values(key: str, dist: dict[str, list[Any]]) -> tuple[list[Any], list[str]]:
    """The values a distribution can produce that must each be valid (choices, range ends), or problems."""
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        return [], [
            f"search.space.{key}: expected one of {', '.join(DISTRIBUTIONS)}, e.g. {{choice: [1, 2]}}, got {dist!r}"
        ]
    kind, args = next(iter(dist.items()))
    if kind in ("choice", "grid"):
        return (list(args), []) if args else ([], [f"search.space.{key}.{kind}: list at least one value"])
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        return [], [f"search.space.{key}.{kind}: expected [low, high] numbers, got {args!r}"]
    low, high = args
    if kind == "randint":
        ok = isinstance(low, int) and isinstance(high, int) and high > low
        return (
            ([low, high - 1], [])
            if ok
            else ([], [f"search.space.{key}.randint: expected whole numbers low < high (high excluded), got {args!r}"])
        )
    if not low < high or (kind == "loguniform" and low <= 0):
        return [], [
            f"search.space.{key}.{kind}: expected 0 < low < high for loguniform, low < high for uniform, got {args!r}"
        ]
    return [low, high], []


def space_problems(base: Config, search: SearchConfig) -> list[str]:
    """Unknown keys, bad distributions, and values (alone or combined) the training config rejects."""
    known = flatten(base)
    problems, candidates = [], {}
    for key, dist in search.space.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            problems.append(f"search.space.{key}: not a config key" + (f"; did you mean {close[0]}?" if close else ""))
            continue
        values, bad = candidate_values(key, dist)
        problems += bad
        if values:
            candidates[key] = values
        if search.algorithm == "optuna" and "grid" in dist:
            problems.append(f"search.space.{key}: optuna does not take grid; use choice")
    if problems:
        return problems
    combos = list(itertools.islice(itertools.product(*candidates.values()), 512))
    seen = set()
    for combo in combos:
        data = to_dict(base)
        for key, value in zip(candidates, combo):
            set_dotted(data, key, value)
        try:
            from_dict(Config, data, "search")
        except ConfigError as err:
            for problem in err.problems:
                if problem not in seen:
                    seen.add(problem)
                    problems.append(f"search.space: with {dict(zip(candidates, combo))}: {problem}")
    return problems


def metric_name(base: Config, search: SearchConfig) -> str:
    """``search.metric``, else the first held-out reward that is not trained on, else the trained reward."""
    if search.metric:
        return search.metric
    return f"eval/{base.eval.rewards[0].name}" if base.eval.rewards else "eval/trained"


def metric_problems(base: Config, search: SearchConfig) -> list[str]:
    """``search.metric`` and every ``search.require`` name a metric the trials' evaluations log."""
    names, metric = base.eval_metrics(), metric_name(base, search)
    problems = [] if metric in names else [f"search.metric: {metric!r} is not evaluated; choose one of {names}"]
    return problems + unknown_metric_problems("search.require", search.require, names)


# ---------------------------------------------------------------- the trial (runs inside Ray Tune)


def trial_config(
    base: dict, params: dict[str, Any], trial_id: str, trials_dir: str, parent_run: str | None, tracking_uri: str | None
) -> Config:
    """The training config of one trial: the base with the sampled values, its own run folder, reports at
    every evaluation (so each Tune result carries the held-out metric), a child MLflow run in the
    search's store."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    set_dotted(data, "train.output_dir", trials_dir)
    set_dotted(data, "train.run_name", trial_id)
    every = data.get("eval", {}).get("every") or data.get("train", {}).get("steps", 100)
    set_dotted(data, "ray.report_every", every)
    set_dotted(data, "tracking.uri", tracking_uri)
    set_dotted(data, "tracking.parent_run", parent_run)
    set_dotted(data, "tracking.registered_model", None)  # the search registers its best trial alone
    return from_dict(Config, data, f"trial {trial_id}")


def run_trial(
    params: dict[str, Any], *, base: dict, trials_dir: str, parent_run: str | None, tracking_uri: str | None
) -> None:
    """Tune's function trainable: one Ray Train run whose reports become this trial's results."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.preflight import write_run_config
    from pipeline.ray_train import fit
    from trainers.loop import run_folder

    cfg = trial_config(base, params, tune.get_context().get_trial_id(), trials_dir, parent_run, tracking_uri)
    run_dir = run_folder(cfg)
    write_run_config(cfg, run_dir)
    result = fit(cfg, run_dir, callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


# ---------------------------------------------------------------- the driver


def tune_space(search: SearchConfig) -> dict[str, Any]:
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "randint": lambda a: tune.randint(*a),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
    }
    return {key: make[kind](args) for key, dist in search.space.items() for kind, args in dist.items()}


def search_folder(base: Config, search: SearchConfig, config_path: str) -> str:
    name = search.name or "tune-" + os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(os.path.abspath(base.train.output_dir), name)


def make_tuner(base: Config, search: SearchConfig, folder: str, parent_run: str | None):
    """A new ``Tuner``, or the restored one when ``folder`` holds a search that did not finish."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from pipeline.tracking import tracking_uri

    metric, s = metric_name(base, search), search.scheduler
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=to_dict(base),
            trials_dir=os.path.join(folder, "trials"),
            parent_run=parent_run,
            tracking_uri=tracking_uri(base) if parent_run else None,
        ),
        {"cpu": search.trial_cpus},
    )
    experiment = os.path.join(folder, "tune")
    if tune.Tuner.can_restore(experiment):
        print(f"tune: continuing the search in {experiment}", flush=True)
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    scheduler = (
        ASHAScheduler(
            time_attr="step", max_t=base.train.steps, grace_period=s.grace_period, reduction_factor=s.reduction_factor
        )
        if s.name == "asha"
        else FIFOScheduler()
    )
    search_alg = None
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=base.train.seed)
    return tune.Tuner(
        trainable,
        param_space=tune_space(search),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=search.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=folder),
    )


def summary_rows(results, base: Config, search: SearchConfig) -> list[dict[str, Any]]:
    """One row per trial: id, sampled params, the metric, steps run, stopped early or not."""
    metric, rows = metric_name(base, search), []
    for result in results:
        metrics = result.metrics or {}
        step = int(metrics.get("step", 0))
        rows.append(
            {
                "trial": metrics.get("trial_id", "?"),
                **{k: result.config.get(k) for k in search.space},
                metric: metrics.get(metric, math.nan),
                "eval/trained": metrics.get("eval/trained", math.nan),
                "steps": step,
                "stopped early": "yes"
                if step < base.train.steps and result.error is None
                else ("error" if result.error is not None else "no"),
                **({"require": "; ".join(breaks(search, metrics)) or "met"} if search.require else {}),
            }
        )
    return sorted(rows, key=lambda r: (math.isnan(r[metric]), -r[metric] if search.mode == "max" else r[metric]))


def breaks(search: SearchConfig, metrics: dict[str, float]) -> list[str]:
    """The ``search.require`` constraints a trial's last metrics break."""
    return broken(parse_constraints(search.require), metrics)


def best_result(results, metric: str, search: SearchConfig):
    """The trial with the best last ``metric`` among those that meet every ``search.require``; None if none does."""
    qualified = [
        r
        for r in results
        if r.error is None and math.isfinite((r.metrics or {}).get(metric, math.nan)) and not breaks(search, r.metrics)
    ]
    if not qualified:
        return None
    sign = 1 if search.mode == "max" else -1
    return max(qualified, key=lambda r: sign * r.metrics[metric])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    heads = list(rows[0])
    show = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(show(r[h]) for h in heads) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.tune",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m pipeline.tune --config pipeline/configs/tune_toy.yaml",
    )
    p.add_argument("--config", required=True, help="training config with a search: section")
    p.add_argument("overrides", nargs="*", help="dotted overrides, also of search.* (search.num_samples=2)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base, search = load_search(args.config, args.overrides)
    from pipeline.preflight import preflight, service_preflight

    preflight(base, args.config)
    service_preflight(base)
    if search.algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                ["search.algorithm: optuna is not installed; pip install optuna, or use random"], args.config
            ) from None
    folder = search_folder(base, search, args.config)
    os.makedirs(folder, exist_ok=True)
    from pipeline.ray_env import init_ray
    from pipeline.tracking import SearchRecord

    init_ray(base)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the command's working directory
    record = SearchRecord(base, search, folder) if base.tracking.enabled else None
    tuner = make_tuner(base, search, folder, record.run_id if record else None)
    results = tuner.fit()
    rows = summary_rows(results, base, search)
    table = markdown_table(rows)
    print(table, end="")
    metric = metric_name(base, search)
    best = best_result(results, metric, search)
    if best is None:
        print(
            f"no trial meets {' and '.join(search.require) or 'the search'} with a finite {metric}; "
            "nothing is registered"
        )
    else:
        print(
            f"best trial: {best.metrics['trial_id']} {dict((k, best.config.get(k)) for k in search.space)} "
            f"(run folder {os.path.join(folder, 'trials', best.metrics['trial_id'])})"
        )
    if record:
        record.finish(table, rows, best and best.metrics["trial_id"], best and {metric: best.metrics[metric]})
    print(f"search folder: {folder}")
    return 0


if __name__ == "__main__":
    run_cli(main)

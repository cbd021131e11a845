"""The claims report's numbers and pages: intervals, verdict helpers, paired values of the records,
markdown tables and figures.

A record is one training run (``claims_runs.train``); ``records[label]`` lists an arm's runs, one per
seed, each with per-prompt values by split (``validation``, ``heldout``), by moment (``base``, ``tuned``,
``teacher one_step``, ``teacher multi_step``) and by metric (``trained``, each scored reward,
``adherence``, ``diversity``, ``feature_diversity``).
"""

from __future__ import annotations

import json
import os
import statistics

import torch

from trainers.stats import crossed_bootstrap_ci

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # Student t, df 1..10


def verdict_from(lows: list[float], highs: list[float]) -> str:
    """Every interval above 0: holds. Any interval below 0: does not hold. Otherwise inconclusive."""
    if all(low > 0 for low in lows):
        return HOLDS
    if any(high < 0 for high in highs):
        return FAILS
    return UNSURE


def interval(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean and 95% interval of ``(seeds, prompts)`` values: the wider of the crossed bootstrap's and a
    t interval over the per-seed means (df = seeds - 1; the df-10 quantile beyond, which is wider)."""
    mean, low, high = crossed_bootstrap_ci(values)
    per_seed = values.double().mean(dim=1)
    half = T_975[min(len(per_seed) - 1, len(T_975)) - 1] * float(per_seed.std()) / len(per_seed) ** 0.5
    return mean, min(low, mean - half), max(high, mean + half)


def show(ci: tuple[float, float, float], digits: int | None = None) -> str:
    """``+mean [+low, +high]``, with 3 decimals for values under 1 in size unless ``digits`` says."""
    mean, low, high = ci
    digits = digits if digits is not None else 3 if max(abs(low), abs(high)) < 1 else 2
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


# ------------------------------------------------------------------------------------------------ values


def values(records: dict, label: str, metric: str = "trained", when: str = "tuned", split: str = "heldout"):
    """``(seeds, prompts)`` values of one arm."""
    return torch.tensor([r[split][when][metric] for r in records[label]], dtype=torch.float64)


def mean_of(record: dict, split: str, when: str, metric: str) -> float:
    """One run's mean over the prompts of ``split``."""
    return statistics.mean(record[split][when][metric])


def paired(records: dict, a: str, b: str, metric: str = "trained", when: str = "tuned") -> tuple:
    """Held-out ``(seeds, prompts)`` values of arms ``a`` and ``b`` on the seeds both ran."""
    common = sorted({r["seed"] for r in records[a]} & {r["seed"] for r in records[b]})

    def on(label: str) -> torch.Tensor:
        by_seed = {r["seed"]: r for r in records[label]}
        return torch.tensor([by_seed[s]["heldout"][when][metric] for s in common], dtype=torch.float64)

    return on(a), on(b)


def difference(records: dict, a: str, b: str, metric: str = "trained") -> tuple[float, float, float]:
    """The paired interval of ``a − b`` on the held-out prompts (the seeds both ran)."""
    x, y = paired(records, a, b, metric)
    return interval(x - y)


def gain(records: dict, label: str, metric: str = "trained") -> torch.Tensor:
    return values(records, label, metric) - values(records, label, metric, "base")


# ------------------------------------------------------------------------------------------------ tables


def arm_table(records: dict, chosen: dict[str, float], flops: dict[str, float]) -> list[str]:
    """Markdown rows per arm: its learning rate, held-out trained reward base → tuned (gain), adherence,
    both diversities (share of base kept), GFLOP and s per step."""
    lines = [
        "| arm | lr | seeds | held-out reward base → tuned | gain [95% CI] | adherence base → tuned "
        "| feature diversity (kept) | pixel diversity (kept) | GFLOP/step | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in records:
        before, after = values(records, label, when="base"), values(records, label)
        cells = []
        for name in ("feature_diversity", "diversity"):
            b, t = values(records, label, name, "base").mean(), values(records, label, name).mean()
            cells.append(f"{b:.3f} → {t:.3f} ({t / b:.0%})")
        adh = f"{values(records, label, 'adherence', 'base').mean():.2f} → {values(records, label, 'adherence').mean():.2f}"
        gflop = f"{flops[label] / 1e9:.1f}" if label in flops else "–"
        seconds = statistics.mean(r["s_per_step"] for r in records[label])
        lines.append(
            f"| {label} | {chosen[label]:g} | {len(records[label])} | {before.mean():.3f} → {after.mean():.3f} "
            f"| {show(interval(after - before), 3)} | {adh} | {cells[0]} | {cells[1]} | {gflop} | {seconds:.2f} |"
        )
    return lines


def teacher_rows(records: dict) -> list[str]:
    """DI*: the teacher's held-out scores (the same for every run: fixed teacher and noise)."""
    first = next(iter(records))
    rows = []
    for kind in ("one_step", "multi_step"):
        when = f"teacher {kind}"
        cells = [f"{values(records, first, name, when).mean():.3f}" for name in ("feature_diversity", "diversity")]
        rows.append(
            f"| teacher, {kind.replace('_', ' ')} | – | – | {values(records, first, when=when).mean():.3f} | – "
            f"| {values(records, first, 'adherence', when).mean():.2f} | {cells[0]} | {cells[1]} | – | – |"
        )
    return rows


def grid_table(grids: dict[str, dict[float, dict]], chosen: dict[str, float]) -> list[str]:
    """The learning-rate grid (seed 0, validation prompts): reward and adherence per arm and lr."""
    lines = [
        "| arm | lr | validation reward base → tuned | validation adherence base → tuned | chosen |",
        "|---|---|---|---|---|",
    ]
    for label, grid in grids.items():
        for lr, r in grid.items():
            base, tuned = (mean_of(r, "validation", when, "trained") for when in ("base", "tuned"))
            adh_base, adh_tuned = (mean_of(r, "validation", when, "adherence") for when in ("base", "tuned"))
            reward, adh = f"{base:.3f} → {tuned:.3f}", f"{adh_base:.2f} → {adh_tuned:.2f}"
            lines.append(f"| {label} | {lr:g} | {reward} | {adh} | {'✓' if chosen[label] == lr else ''} |")
    return lines


# ------------------------------------------------------------------------------------------------ figures


def figure(
    path: str,
    title: str,
    panels: list[tuple[str, list[str], list[tuple[float, float, float]], float | None]],
    reference_label: str = "base",
) -> None:
    """One PNG with a bar chart per panel: ``(y label, bar labels, (mean, low, high) each, reference line)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=110, squeeze=False)
    for ax, (ylabel, labels, cis, reference) in zip(axes[0], panels):
        means = [m for m, _, _ in cis]
        ax.bar(
            range(len(labels)),
            means,
            yerr=[[m - lo for m, lo, _ in cis], [hi - m for m, _, hi in cis]],
            capsize=4,
            color="#6d8fc7",
        )
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        lowest = min(min(lo for _, lo, _ in cis), reference if reference is not None else float("inf"))
        highest = max(max(hi for _, _, hi in cis), reference if reference is not None else float("-inf"))
        pad = 0.15 * (highest - lowest or 1)
        ax.set_ylim(lowest - pad, highest + pad)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def arms_figure(path: str, title: str, records: dict, extra: list | None = None, reference: str = "base") -> None:
    """Held-out tuned reward and adherence per arm, with ``reference``'s (a moment of the records: the base
    model, or DI*'s ``teacher multi_step``) as a line, and ``extra`` panels."""
    labels = list(records)
    panels = [
        (
            f"held-out {name} (tuned)",
            labels,
            [interval(values(records, a, metric)) for a in labels],
            float(values(records, labels[0], metric, reference).mean()),
        )
        for name, metric in (("trained reward", "trained"), ("adherence", "adherence"))
    ]
    figure(path, title, panels + (extra or []), reference.replace("_", " "))


# ------------------------------------------------------------------------------------------------ pages


def section(title: str, verdict: str, texts: dict[str, str], body: list[str], image: str, minutes: float) -> list[str]:
    """One claim's section: verdict, the paper, settings, the rule and what changed, tables, figure."""
    return [
        f"## {title}",
        "",
        f"**Verdict: {verdict}.**",
        "",
        f"*The paper.* {texts['paper']}",
        "",
        f"*Settings.* {texts['settings']}",
        "",
        f"*Rule (fixed before the runs).* {texts['rule']}",
        "",
        f"*Changed from the first edition.* {texts['changed']}",
        "",
        *body,
        "",
        f"![{title}]({image})",
        "",
        f"Compute of this claim's own measurements: {minutes:.1f} min.",
        "",
    ]


def write_report(out: str, head: list[str], summary: list[tuple[str, str]], sections: list[str], raw: dict) -> None:
    """``claims.md`` and ``claims.json`` with the claims judged so far."""
    table = ["| claim | verdict |", "|---|---|", *[f"| {k} | {v} |" for k, v in summary], ""]
    with open(os.path.join(out, "claims.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(head + table + sections))
    with open(os.path.join(out, "claims.json"), "w", encoding="utf-8") as f:
        json.dump({"verdicts": dict(summary), **raw}, f)


def no_loading_bars() -> None:
    """No loading bars from diffusers and transformers between the report's lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

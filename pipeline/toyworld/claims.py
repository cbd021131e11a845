"""The papers' qualitative claims, rerun on the shipped toy world with several seeds and intervals.

    python -m pipeline.toyworld.claims --out runs/claims            # all five claims, 3 seeds
    python -m pipeline.toyworld.claims --claims lv_variance --seeds 5
    python -m pipeline.toyworld.claims --quick --out /tmp/claims   # 2 seeds, a few steps: a smoke run

Each claim trains its arms (in-process, no Ray or MLflow, one after another so that s/step is each
run's own) once per seed, then writes ``claims.md`` (tables, verdicts, settings), ``claims.json``
(every run's per-prompt numbers) and one figure per claim. A finished run is not trained again, so an
interrupted report resumes where it stopped.

Numbers are held-out (9 prompts never trained on, 8 samples each, fixed evaluation noise). A mean is
over seeds and prompts. Its 95% interval is the wider of two: a bootstrap that resamples seeds and
prompts independently (``trainers.stats.crossed_bootstrap_ci``), and a Student t interval over the
per-seed means (with 3 seeds the bootstrap alone is too narrow). A comparison of two arms is paired:
the same seed and prompt.

Each claim's verdict rule is written in ``CLAIMS`` below, before any run, and nothing here is tuned
until a claim holds: the settings are the shipped configs', with the papers' values where they give
them (noted per claim in ``settings``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.bench.distill import VARIANTS, timed_steps
from pipeline.config import at_least
from trainers.stats import bootstrap_mean_ci, crossed_bootstrap_ci

HERE = os.path.dirname(os.path.abspath(__file__))
QUICKSTART = os.path.join(HERE, "..", "configs", "quickstart.yaml")
DISTAR = os.path.join(HERE, "..", "configs", "distar_toy.yaml")
CLIP_SCORE = (
    "{name: clip_score, arch_config: pipeline/assets/toyworld/clip/toy-clip.json, "
    "checkpoint: pipeline/assets/toyworld/clip/toy-clip.safetensors}"
)  # the world's alignment reward
HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Arm:
    """One training setting of a claim: a label, the config overrides it makes, and those it makes for
    ``--quick`` (a plan that fits its tiny T)."""

    label: str
    overrides: tuple[str, ...]
    quick: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A paper's claim: where it comes from, what is run, and the verdict rule fixed before the runs."""

    key: str
    title: str
    paper: str
    settings: str
    rule: str
    config: str
    overrides: tuple[str, ...]  # for every arm (then the arm's own, then with --quick FEW_STEPS and quick)
    arms: tuple[Arm, ...]
    judge: Callable[[dict], tuple[str, list[str]]]  # the claim's records -> (verdict, lines of evidence)
    quick: tuple[str, ...]


# ---------------------------------------------------------------------------------------------- verdicts


def verdict_from(lows: list[float], highs: list[float]) -> str:
    """Every interval above 0: holds. Any interval below 0: does not hold. Otherwise inconclusive."""
    if all(low > 0 for low in lows):
        return HOLDS
    if any(high < 0 for high in highs):
        return FAILS
    return UNSURE


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # Student t, df 1..10


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


def judge_beats_all(lead: str, metric: str = "trained") -> Callable[[dict], tuple[str, list[str]]]:
    """``lead`` beats every other arm: each paired difference's interval is above 0."""

    def judge(records: dict) -> tuple[str, list[str]]:
        cis = {
            other: interval(tuned(records, lead, metric) - tuned(records, other, metric))
            for other in records
            if other != lead
        }
        lines = [f"{lead} − {other}: {show(ci)}" for other, ci in cis.items()]
        return verdict_from([c[1] for c in cis.values()], [c[2] for c in cis.values()]), lines

    return judge


def judge_truncation(records: dict) -> tuple[str, list[str]]:
    """Holds if some small K is non-inferior to the full chain (interval of the difference above −10% of
    the full chain's gain) and has a lower s/step in every seed. Does not hold if each small K is inferior
    (interval below the margin) or not cheaper. Otherwise inconclusive."""
    full = "full DRaFT"
    margin = 0.1 * abs(float((tuned(records, full) - base(records, full)).mean()))
    lines, good, bad = [f"non-inferiority margin: −{margin:.2f} (10% of the full chain's mean gain)"], [], []
    for small in (label for label in records if label != full):
        ci = interval(tuned(records, small) - tuned(records, full))
        ratios = [a / b for a, b in zip(step_seconds(records, small), step_seconds(records, full))]
        cheaper = all(r < 1 for r in ratios)
        lines.append(f"{small} − {full}: {show(ci)}; s/step {statistics.mean(ratios):.2f}× the full chain's")
        good.append(ci[1] > -margin and cheaper)
        bad.append(ci[2] < -margin or not cheaper)
    return (HOLDS if any(good) else FAILS if all(bad) else UNSURE), lines


def judge_early_stop(records: dict) -> tuple[str, list[str]]:
    """Holds if the s/step is lower with early stop in every seed and the paired interval of (with − without)
    held-out reward reaches 0 or above (no significant loss). Does not hold if that interval is below 0,
    or no seed is faster. Otherwise (faster in some seeds only) inconclusive."""
    without, stopped = "DRTune", "DRTune + early stop"
    ci = interval(tuned(records, stopped) - tuned(records, without))
    ratios = [a / b for a, b in zip(step_seconds(records, stopped), step_seconds(records, without))]
    lines = [f"{stopped} − {without}: {show(ci)}", "s/step ratio per seed: " + ", ".join(f"{r:.2f}" for r in ratios)]
    if ci[2] < 0 or all(r >= 1 for r in ratios):
        return FAILS, lines
    return (HOLDS if all(r < 1 for r in ratios) else UNSURE), lines


def judge_distill(records: dict) -> tuple[str, list[str]]:
    """DI*'s generator beats the teacher's one-step output, reaches 90% of its multi-step output, and keeps
    half its multi-step feature diversity: each paired interval above 0 holds; any below 0 does not."""
    gen = tuned(records, "DI*")
    one, multi = teacher(records, "DI*", "one_step"), teacher(records, "DI*", "multi_step")
    gen_div, teacher_div = (
        tuned(records, "DI*", "feature_diversity"),
        teacher(records, "DI*", "multi_step", "feature_diversity"),
    )
    cis = {
        "generator − teacher 1 step": interval(gen - one),
        "generator − 0.9 × teacher multi-step": interval(gen - 0.9 * multi),
        "feature diversity − 0.5 × teacher multi-step's": interval(gen_div - 0.5 * teacher_div),
    }
    lines = [f"{name}: {show(ci)}" for name, ci in cis.items()]
    for label in records:
        if label != "DI*":
            lines.append(f"DI* − {label}: {show(interval(gen - tuned(records, label)))}")
    return verdict_from([c[1] for c in cis.values()], [c[2] for c in cis.values()]), lines


# ------------------------------------------------------------------------------------------------ claims

FEW_STEPS = ("train.steps=3", "train.batch_size=2", "eval.images_per_prompt=2", "eval.max_prompts=3")
ON_CLIP_SCORE = (f"rewards=[{CLIP_SCORE}]", "train.steps=100")
CLAIMS = {
    claim.key: claim
    for claim in (
        Claim(
            "drtune_low_level",
            "DRTune beats shallow and late-only supervision on a low-level reward",
            "DRTune (Wu et al., ECCV 2024): training early steps with the denoiser's input detached matters for "
            "low-level rewards such as symmetry, where shallow supervision (ReFL, DRaFT-1) fails.",
            "Trained on `symmetry` only; T=20 DDIM steps, guidance 7.5. DRTune K=5 (the paper's order of "
            "magnitude; its exact K is not in our notes). DRaFT-K with the same 5 trained steps, DRaFT-1, and "
            "ReFL stopping in the last 8 steps (40% of T, a public DRTune port's window). 100 optimiser steps, "
            "batch 4, LoRA rank 4, lr 3e-3 as in the quickstart. Held-out metric: `symmetry`; `clip_score` is "
            "scored (never trained) for the feature diversity.",
            "Holds if the 95% interval of DRTune − X is above 0 for every X in {DRaFT-1, ReFL, DRaFT-K=5}; "
            "does not hold if any is below 0; otherwise inconclusive.",
            QUICKSTART,
            (
                "sampler.num_steps=20",
                "rewards=[{name: symmetry}]",
                f"eval.rewards=[{CLIP_SCORE}, {{name: sharpness}}]",
                "train.steps=100",
            ),
            (
                Arm("DRTune", ("plan.name=drtune", "plan.k=5"), ("plan.k=2",)),
                Arm("DRaFT-1", ("plan.name=draft_k", "plan.k=1")),
                Arm("ReFL", ("plan.name=refl", "plan.early_stop=8"), ("plan.early_stop=2",)),
                Arm("DRaFT-K=5", ("plan.name=draft_k", "plan.k=5"), ("plan.k=2",)),
            ),
            judge_beats_all("DRTune"),
            ("sampler.num_steps=6",),
        ),
        Claim(
            "draft_truncation",
            "DRaFT-K with small K reaches full DRaFT's reward per step, at a fraction of the cost",
            "DRaFT (Clark et al., ICLR 2024): truncating backpropagation to the last K steps (K=1 or a few) "
            "works as well as or better than the full chain per step, and is much cheaper.",
            "The quickstart (T=10, guidance 7.5, LoRA rank 4, lr 3e-3, batch 4) trained on the alignment reward "
            "`clip_score` alone; DRaFT-1, DRaFT-K=2 and full DRaFT (all 10 steps), 100 optimiser steps each.",
            "Holds if for DRaFT-1 or K=2 the interval of (small K − full) lies above −10% of the full chain's "
            "mean gain (non-inferior) and its s/step is lower in every seed. Does not hold if each small K is "
            "either inferior (interval below the margin) or not cheaper. Otherwise inconclusive.",
            QUICKSTART,
            ON_CLIP_SCORE,
            (
                Arm("DRaFT-1", ("plan.name=draft_k", "plan.k=1")),
                Arm("DRaFT-K=2", ("plan.name=draft_k", "plan.k=2")),
                Arm("full DRaFT", ("plan.name=draft",)),
            ),
            judge_truncation,
            ("sampler.num_steps=4",),
        ),
        Claim(
            "drtune_early_stop",
            "DRTune's early stop cuts the time per step without losing reward",
            "DRTune: stopping the chain at a random late step and scoring the one-step x0 prediction saves compute.",
            "The quickstart (T=10, DRTune K=3, lr 3e-3, batch 4) on `clip_score` alone, 100 optimiser steps, "
            "with and without early stop in the last 4 steps (40% of T, as in a public DRTune port).",
            "Holds if s/step is lower with early stop in every seed and the paired interval of (with − without) "
            "held-out reward reaches 0 or above (no significant loss). Does not hold if that interval is below "
            "0, or no seed is faster. Otherwise inconclusive.",
            QUICKSTART,
            ON_CLIP_SCORE,
            (
                Arm("DRTune", ("plan.name=drtune", "plan.k=3"), ("plan.k=2",)),
                Arm(
                    "DRTune + early stop",
                    ("plan.name=drtune", "plan.k=3", "plan.early_stop=4"),
                    ("plan.k=2", "plan.early_stop=2"),
                ),
            ),
            judge_early_stop,
            ("sampler.num_steps=6",),
        ),
        Claim(
            "di_star",
            "A one-step DI* generator beats the teacher's one step and nears its multi-step output",
            "Diff-Instruct* (Luo et al., 2024): a one-step generator distilled under a score divergence while "
            "maximising a reward beats its multi-step reference on that reward, keeping diversity. SIM and "
            "Diff-Instruct (no reward) are the baselines.",
            "`pipeline/configs/distar_toy.yaml` as shipped (the `pipeline.bench.distill` setting): 400 steps, batch 4, "
            "LoRA rank 8, alpha_rew 0.02, alpha_cfg 7.5, teacher 20 guided DDIM steps. SIM = alpha_rew 0; "
            "Diff-Instruct = KL divergence, alpha_rew 0.",
            "Holds if each interval is above 0: generator − teacher 1-step, generator − 0.9 × teacher "
            "multi-step, and generator feature diversity − 0.5 × the multi-step teacher's. Does not hold if "
            "any is below 0. Otherwise inconclusive.",
            DISTAR,
            (),
            tuple(
                Arm(label, tuple(VARIANTS[name]))
                for label, name in (("DI*", "di_star"), ("SIM", "sim"), ("Diff-Instruct", "diff_instruct"))
            ),
            judge_distill,
            ("sampler.num_steps=4",),
        ),
    )
}
LV = {
    "key": "lv_variance",
    "title": "DRaFT-LV's gradient has lower variance than DRaFT-1's",
    "paper": "DRaFT: DRaFT-LV re-noises the last step's input n times and denoises each copy with gradient, "
    "lowering the variance of the K=1 gradient estimate at little extra cost.",
    "settings": "The quickstart's model with a freshly initialised LoRA (the same fixed weights for every "
    "draw), T=10, guidance 7.5, batch 4, trained reward `clip_score`. DRaFT-LV as this project "
    "runs it: the last step with gradient plus n=2 re-noised copies of it (the DRaFT paper's n), "
    "its loss averaged over those 3 final latents so both estimate a gradient of the mean "
    "reward. 32 draws per seed (the seeds only reseed the draws: prompts, initial noise, "
    "re-noising), the same prompts and initial noise for both.",
    "rule": "Variance = the mean squared distance of a draw's LoRA gradient from the draws' mean gradient. "
    "Holds if the 95% bootstrap interval (over draws) of var(DRaFT-LV) / var(DRaFT-1) is below 1; "
    "does not hold if above 1; otherwise inconclusive. The cosine between the two mean gradients "
    "is reported: the re-noised copies' last step starts from q(x_1 | x_0), not from the chain, so "
    "the two need not estimate exactly the same gradient.",
}


# ------------------------------------------------------------------------------------------------ runs


def arm_config(claim: Claim, arm: Arm, seed: int, out: str, quick: bool):
    """The typed config of one arm and seed, its run folder under ``out``: evaluated at step 0 and at the
    end only, one checkpoint at the end, no constraints."""
    from pipeline.config import load_config
    from trainers.config import Config

    overrides = [*claim.overrides, *arm.overrides, *((*FEW_STEPS, *claim.quick, *arm.quick) if quick else ())]
    steps = load_config(Config, claim.config, overrides).train.steps
    name = arm.label.replace(" ", "_").replace("*", "star")
    return load_config(
        Config,
        claim.config,
        [
            *overrides,
            f"eval.every={steps}",
            "eval.require=[]",
            f"train.seed={seed}",
            f"train.checkpoint_every={steps}",
            f"train.output_dir={os.path.join(out, claim.key)}",
            f"train.run_name={name}-seed{seed}",
        ],
    )


def train_arm(claim: Claim, arm: Arm, seed: int, out: str, quick: bool) -> dict:
    """Train one arm for one seed (or read it back when finished) and return its record: per-prompt
    held-out scores before and after, the teacher's (DI*), and the median s/step."""
    from trainers.loop import run

    cfg = arm_config(claim, arm, seed, out, quick)
    check_run_folder(cfg)
    result = run(cfg)
    samples = os.path.join(result.run_dir, "samples")
    scores = [torch.load(os.path.join(samples, f"scores_{s:06d}.pt"), weights_only=True) for s in (0, result.step)]
    prompts = len(scores[0]["trained"]) // cfg.eval.images_per_prompt
    record = {"base": per_prompt(scores[0], prompts), "tuned": per_prompt(scores[1], prompts)}
    teacher_path = os.path.join(samples, "teacher_scores.pt")
    if os.path.isfile(teacher_path):
        record["teacher"] = {
            name: per_prompt(s, prompts) for name, s in torch.load(teacher_path, weights_only=True).items()
        }
    record["s_per_step"] = statistics.median(m["perf/step_seconds"] for m in timed_steps(result.run_dir))
    return record


def check_run_folder(cfg) -> None:
    """Refuse a run folder holding a run with other settings (say, a ``--quick`` one), which would otherwise
    be resumed as if it were this one, as ``pipeline.train`` does; then record the settings in it."""
    from pipeline.config import ConfigError
    from pipeline.preflight import run_folder_problems, write_run_config
    from trainers.loop import run_folder

    problems = run_folder_problems(cfg)
    if problems:
        raise ConfigError(problems, "a run folder of the claims report (choose another --out to start afresh)")
    write_run_config(cfg, run_folder(cfg))


def per_prompt(scores: dict[str, torch.Tensor], prompts: int) -> dict[str, list[float]]:
    """Per-image (or per-prompt) scores averaged to one value per prompt."""
    return {name: v.float().view(prompts, -1).mean(dim=1).tolist() for name, v in scores.items()}


def base(records: dict, label: str, metric: str = "trained") -> torch.Tensor:
    return torch.tensor([r["base"][metric] for r in records[label]])  # (seeds, prompts)


def tuned(records: dict, label: str, metric: str = "trained") -> torch.Tensor:
    return torch.tensor([r["tuned"][metric] for r in records[label]])


def teacher(records: dict, label: str, kind: str, metric: str = "trained") -> torch.Tensor:
    return torch.tensor([r["teacher"][kind][metric] for r in records[label]])


def step_seconds(records: dict, label: str) -> list[float]:
    return [r["s_per_step"] for r in records[label]]


# ------------------------------------------------------------------------------------------ LV variance


def lv_variance(seeds: list[int], quick: bool) -> dict:
    """Per-draw LoRA gradients of DRaFT-1 and DRaFT-LV (n=2) at the same fixed weights and draws."""
    from pipeline.config import load_config
    from trainers.config import Config
    from trainers.loop import build_trainer

    draws = 4 if quick else 32
    common = [f"rewards=[{CLIP_SCORE}]", f"sampler.num_steps={4 if quick else 10}"]
    trainers = {
        label: build_trainer(load_config(Config, QUICKSTART, common + plan))
        for label, plan in (
            ("DRaFT-1", ["plan.name=draft_k", "plan.k=1"]),
            ("DRaFT-LV n=2", ["plan.name=draft_lv", "plan.lv_copies=2"]),
        )
    }
    grads = {label: [] for label in trainers}
    seconds = {label: 0.0 for label in trainers}
    for tr in trainers.values():  # warm-up, untimed and unrecorded
        lora_gradient(tr, 10**9)
    for seed in seeds:
        for draw in range(draws):
            for label, tr in trainers.items():
                start = time.perf_counter()
                grads[label].append(lora_gradient(tr, seed * 100_003 + draw))
                seconds[label] += time.perf_counter() - start
    stacked = {label: torch.stack(g) for label, g in grads.items()}  # (draws, params)
    means = {label: g.mean(dim=0) for label, g in stacked.items()}
    spread = {label: (g - means[label]).square().sum(dim=1) for label, g in stacked.items()}  # (draws,)
    one, lv = means.values()
    return {
        "draws": len(seeds) * draws,
        "spread": {k: v.tolist() for k, v in spread.items()},
        "mean_gradient_norm": {k: m.norm().item() for k, m in means.items()},
        "mean_gradient_cosine": float(one @ lv / (one.norm() * lv.norm())),
        "s_per_draw": {k: v / (len(seeds) * draws) for k, v in seconds.items()},
    }


def lora_gradient(tr, draw_seed: int) -> torch.Tensor:
    """The LoRA gradient ``(params,)`` of the mean reward over a batch of 4 drawn with ``draw_seed``
    (prompts, initial noise, plan flags and re-noising), averaged over the plan's final latents."""
    from trainers.objectives import plan_loss

    gen = torch.Generator().manual_seed(draw_seed)
    prompts = [tr.sampler.prompts[i] for i in torch.randint(len(tr.sampler.prompts), (4,), generator=gen)]
    x_T = torch.randn(4, *tr.model.latent_shape, generator=gen)
    loss, scores, _, _ = plan_loss(tr, prompts, x_T, tr.objective.plan.flags(tr.cfg.sampler.num_steps, gen), gen)
    grad = torch.autograd.grad(loss / scores.shape[0], tr.params)
    return torch.cat([g.flatten() for g in grad]).double()


def variance_ratio_ci(
    spread_lv: torch.Tensor, spread_one: torch.Tensor, resamples: int = 2000
) -> tuple[float, float, float]:
    """var(LV) / var(DRaFT-1) and its 95% bootstrap interval over draws (paired: the same draws).
    Each spread is a draw's squared distance from its method's mean gradient; their means are the variances."""
    n = len(spread_lv)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    ratios = spread_lv[idx].mean(dim=1) / spread_one[idx].mean(dim=1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(spread_lv.mean() / spread_one.mean()), low, high


def judge_lv(result: dict) -> tuple[str, list[str], tuple[float, float, float]]:
    spread = {k: torch.tensor(v, dtype=torch.float64) for k, v in result["spread"].items()}
    ratio = variance_ratio_ci(spread["DRaFT-LV n=2"], spread["DRaFT-1"])
    verdict = HOLDS if ratio[2] < 1 else FAILS if ratio[1] > 1 else UNSURE
    cost = result["s_per_draw"]["DRaFT-LV n=2"] / result["s_per_draw"]["DRaFT-1"]
    lines = [
        f"var(DRaFT-LV) / var(DRaFT-1) = {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] over {result['draws']} draws",
        "norm of the mean gradient: "
        + ", ".join(f"{k} {v:.3g}" for k, v in result["mean_gradient_norm"].items())
        + f"; cosine between the two mean gradients {result['mean_gradient_cosine']:.3f}",
        f"time per draw (forward and backward): DRaFT-LV {cost:.2f}× DRaFT-1's",
    ]
    return verdict, lines, ratio


# ------------------------------------------------------------------------------------------------ report


def arm_table(records: dict, metric: str = "trained") -> list[str]:
    """Markdown rows: held-out base → tuned (gain), both diversities (share of base kept), s/step."""
    lines = [
        "| arm | held-out reward base → tuned | gain [95% CI] | feature diversity (kept) "
        "| pixel diversity (kept) | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for label in records:
        before, after = base(records, label, metric), tuned(records, label, metric)
        cells = []
        for name in ("feature_diversity", "diversity"):
            if name in records[label][0]["tuned"]:
                b, t = base(records, label, name).mean(), tuned(records, label, name).mean()
                cells.append(f"{b:.3f} → {t:.3f} ({t / b:.0%})")
            else:
                cells.append("–")
        seconds = step_seconds(records, label)
        lines.append(
            f"| {label} | {before.mean():.3f} → {after.mean():.3f} | {show(interval(after - before), 3)} "
            f"| {cells[0]} | {cells[1]} | {statistics.mean(seconds):.2f} |"
        )
    return lines


def teacher_rows(records: dict) -> list[str]:
    """DI*: the teacher's held-out scores (the same for every seed: fixed teacher and noise)."""
    first = next(iter(records))
    rows = []
    for kind in ("one_step", "multi_step"):
        cells = [
            f"{teacher(records, first, kind, name).mean():.3f}" if name in records[first][0]["teacher"][kind] else "–"
            for name in ("feature_diversity", "diversity")
        ]
        rows.append(
            f"| teacher, {kind.replace('_', ' ')} | {teacher(records, first, kind).mean():.3f} | – | "
            f"{cells[0]} | {cells[1]} | – |"
        )
    return rows


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
        highest = max(hi for _, _, hi in cis)
        pad = 0.15 * (highest - lowest or 1)
        ax.set_ylim(lowest - pad, highest + pad)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def claim_figure(path: str, claim: Claim, records: dict) -> None:
    labels = list(records)
    panels = [
        (
            "held-out trained reward (tuned)",
            labels,
            [interval(tuned(records, a)) for a in labels],
            float(base(records, labels[0]).mean()),
        )
    ]
    if "feature_diversity" in records[labels[0]][0]["tuned"]:
        panels.append(
            (
                "held-out feature diversity (tuned)",
                labels,
                [interval(tuned(records, a, "feature_diversity")) for a in labels],
                float(base(records, labels[0], "feature_diversity").mean()),
            )
        )
    figure(path, claim.title, panels)


def section(
    title: str,
    paper: str,
    settings: str,
    rule: str,
    verdict: str,
    table: list[str],
    evidence: list[str],
    image: str,
    seconds: float,
) -> list[str]:
    return [
        f"## {title}",
        "",
        f"**Verdict: {verdict}.**",
        "",
        f"*The paper.* {paper}",
        "",
        f"*Settings.* {settings}",
        "",
        f"*Rule (fixed before the runs).* {rule}",
        "",
        *table,
        "",
        *[f"- {line}" for line in evidence],
        "",
        f"![{title}]({image})",
        "",
        f"Wall time in this invocation: {seconds / 60:.1f} min.",
        "",
    ]


def write_report(
    out: str, seeds: list[int], quick: bool, minutes: float, summary: list, sections: list[str], raw: dict
) -> None:
    """``claims.md`` and ``claims.json`` with the claims run so far."""
    head = [
        "# What the papers claim, and what we see on the toy world",
        "",
        f"Seeds {seeds}{' (quick: a smoke run, not evidence)' if quick else ''}; this invocation's wall time "
        f"{minutes:.1f} min (runs finished earlier in the same folder are read back, not trained again). "
        "Means over seeds and held-out prompts; a 95% interval is the wider of a bootstrap over seeds and "
        "prompts and a t interval over the per-seed means.",
        "",
        "| claim | verdict |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary],
        "",
    ]
    with open(os.path.join(out, "claims.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(head + sections))
    with open(os.path.join(out, "claims.json"), "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "quick": quick, "minutes": minutes, "verdicts": dict(summary), "runs": raw}, f)


def lv_claim(seeds: list[int], out: str, quick: bool) -> tuple[str, list[str], list[str], dict]:
    """Measure claim 3 and draw its figure: ``(verdict, table, evidence, raw result)``."""
    result = lv_variance(seeds, quick)
    verdict, evidence, ratio = judge_lv(result)
    figure(
        os.path.join(out, f"{LV['key']}.png"),
        LV["title"],
        [("var(DRaFT-LV) / var(DRaFT-1)", ["ratio"], [ratio], 1.0)],
        reference_label="equal variance",
    )
    table = ["| estimator | mean squared distance from the mean gradient [95% CI] | s per draw |", "|---|---|---|"]
    table += [
        f"| {label} | {show(bootstrap_mean_ci(torch.tensor(spread)), 4)} | {result['s_per_draw'][label]:.2f} |"
        for label, spread in result["spread"].items()
    ]
    return verdict, table, evidence, result


def training_claim(claim: Claim, seeds: list[int], out: str, quick: bool) -> tuple[str, list[str], list[str], dict]:
    """Train (or read back) every arm and seed of ``claim``, judge it and draw its figure:
    ``(verdict, table, evidence, records)``."""
    records = {arm.label: [train_arm(claim, arm, seed, out, quick) for seed in seeds] for arm in claim.arms}
    verdict, evidence = claim.judge(records)
    claim_figure(os.path.join(out, f"{claim.key}.png"), claim, records)
    table = arm_table(records) + (teacher_rows(records) if "teacher" in records[claim.arms[0].label][0] else [])
    return verdict, table, evidence, records


def run_claims(keys: list[str], seeds: list[int], out: str, quick: bool) -> dict:
    """Run the chosen claims and write ``claims.md``, ``claims.json`` and the figures under ``out``, the
    report rewritten after each claim."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    sections, summary, raw = [], [], {}
    for key in keys:
        began = time.perf_counter()
        claim = CLAIMS.get(key)
        verdict, table, evidence, raw[key] = (
            training_claim(claim, seeds, out, quick) if claim else lv_claim(seeds, out, quick)
        )
        text = vars(claim) if claim else LV
        sections += section(
            text["title"],
            text["paper"],
            text["settings"],
            text["rule"],
            verdict,
            table,
            evidence,
            f"{key}.png",
            time.perf_counter() - began,
        )
        summary.append((key, verdict))
        print(f"{key}: {verdict}", flush=True)
        write_report(out, seeds, quick, (time.perf_counter() - start) / 60, summary, sections, raw)
    return dict(summary)


def quiet_loading() -> None:
    """No loading bars from diffusers and transformers between the report's lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


ALL = ["drtune_low_level", "draft_truncation", "lv_variance", "drtune_early_stop", "di_star"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.toyworld.claims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--claims", nargs="+", choices=ALL, default=ALL, metavar="CLAIM", help="which claims to run: " + ", ".join(ALL)
    )
    parser.add_argument("--seeds", type=at_least(1), default=None, help="seeds per arm (default 3; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="a few steps, tiny T, 2 seeds: checks the machinery")
    parser.add_argument("--out", default="runs/claims", help="folder for the runs, claims.md and the figures")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads")
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 3)
    if seeds < 2:
        parser.error(f"--seeds: an interval over seeds needs at least 2, got {seeds}")
    torch.set_num_threads(args.threads)
    quiet_loading()
    run_claims(args.claims, list(range(seeds)), args.out, args.quick)
    print(f"report: {os.path.join(args.out, 'claims.md')}")
    return 0


if __name__ == "__main__":
    from pipeline.config import run_cli

    run_cli(main)

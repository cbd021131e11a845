"""What the claims report runs: the prompt split, training jobs (in a pool of processes), their records,
the learning-rate choice, the cost of a step, and the gradients measured at fixed weights.

Prompts. The 57 training prompts are split once: every 6th (from the 4th) is a **validation** prompt,
never trained on (9 prompts); the other 48 are trained on. Each run's evaluation scores the 9 validation
prompts and then the 9 held-out prompts (combinations the base model never saw), 8 samples each on fixed
noise. Settings are chosen on the validation prompts only; only the held-out prompts are reported.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch

from pipeline.toyworld.shapes import ASSETS_DIR, PROMPT_FILES, parse_caption

VALIDATION_EVERY, VALIDATION_FROM = 6, 3
KEEP_ADHERENCE = 0.8  # the lr choice keeps at least this share of the base model's validation adherence


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompts:
    """The split's files and sizes: ``fit`` is trained on; ``evaluation`` lists the validation prompts,
    then the held-out ones."""

    fit: str
    evaluation: str
    validation: int
    heldout: int


def write_prompts(out: str, quick: bool) -> Prompts:
    """Write the split under ``out/prompts`` (``--quick``: 2 validation and 3 held-out prompts)."""
    lines = (ASSETS_DIR / PROMPT_FILES["train"]).read_text().split("\n")
    train = [line for line in lines if line.strip()]
    heldout = [line for line in (ASSETS_DIR / PROMPT_FILES["heldout"]).read_text().split("\n") if line.strip()]
    is_validation = [i % VALIDATION_EVERY == VALIDATION_FROM for i in range(len(train))]
    validation = [p for p, v in zip(train, is_validation) if v]
    fit = [p for p, v in zip(train, is_validation) if not v]
    if quick:
        validation, heldout = validation[:2], heldout[:3]
    folder = os.path.join(out, "prompts")
    os.makedirs(folder, exist_ok=True)
    paths = {"fit": os.path.join(folder, "fit.txt"), "evaluation": os.path.join(folder, "evaluation.txt")}
    for name, rows in (("fit", fit), ("evaluation", validation + heldout)):
        text = "\n".join(rows) + "\n"
        if os.path.isfile(paths[name]) and open(paths[name], encoding="utf-8").read() != text:
            from pipeline.config import ConfigError

            raise ConfigError(
                [f"{paths[name]}: holds another prompt split (one of a --quick report?)"],
                "the claims report's folder (choose another --out to start afresh)",
            )
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write(text)
    return Prompts(paths["fit"], paths["evaluation"], len(validation), len(heldout))


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class Job:
    """One training run: a config file, its overrides, and the run folder ``output_dir/name``."""

    config: str
    overrides: tuple[str, ...]
    output_dir: str
    name: str
    validation: int  # how many of the evaluation prompts come first as validation prompts


def job_config(job: Job):
    """The typed config of ``job``: evaluated at step 0 and at the end only, one checkpoint at the end,
    no constraints, in process (no Ray or MLflow)."""
    from pipeline.config import load_config
    from trainers.config import Config

    steps = load_config(Config, job.config, list(job.overrides)).train.steps
    return load_config(
        Config,
        job.config,
        [
            *job.overrides,
            f"eval.every={steps}",
            "eval.require=[]",
            f"train.checkpoint_every={steps}",
            f"train.output_dir={job.output_dir}",
            f"train.run_name={job.name}",
        ],
    )


def train(job: Job, threads: int) -> dict:
    """Train ``job`` (or read it back when finished) and return its record: per-prompt scores before and
    after (and the teacher's, for DI*) on the validation and held-out prompts, the wall seconds, and the
    median s/step."""
    from pipeline.bench.distill import timed_steps
    from pipeline.toyworld.claims_report import no_loading_bars
    from trainers.loop import run

    torch.set_num_threads(threads)
    no_loading_bars()
    cfg = job_config(job)
    check_run_folder(cfg)
    began = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - began
    samples = os.path.join(result.run_dir, "samples")
    with open(cfg.data.eval_prompts, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    per = cfg.eval.images_per_prompt

    def scores_at(step: int) -> dict[str, list[float]]:
        scores = torch.load(os.path.join(samples, f"scores_{step:06d}.pt"), weights_only=True)
        return per_prompt(scores, prompts, os.path.join(samples, f"step_{step:06d}.png"), per)

    when = {"base": scores_at(0), "tuned": scores_at(result.step)}
    teacher_path = os.path.join(samples, "teacher_scores.pt")
    if os.path.isfile(teacher_path):
        for kind, scores in torch.load(teacher_path, weights_only=True).items():
            when[f"teacher {kind}"] = per_prompt(scores, prompts, os.path.join(samples, f"teacher_{kind}.png"), per)
    record = {
        split: {name: {k: v[lo:hi] for k, v in values.items()} for name, values in when.items()}
        for split, (lo, hi) in (("validation", (0, job.validation)), ("heldout", (job.validation, len(prompts))))
    }
    record["s_per_step"] = statistics.median(m["perf/step_seconds"] for m in timed_steps(result.run_dir))
    record["seconds"] = seconds  # 0-ish when the run was read back
    return record


def run_jobs(jobs: list[Job], workers: int, threads: int) -> list[dict]:
    """Train ``jobs`` with ``workers`` processes of ``threads`` torch threads each (1 worker: in this
    process), records in the jobs' order."""
    if workers == 1 or len(jobs) <= 1:
        return [train(job, threads) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(train, jobs, [threads] * len(jobs)))


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


# ------------------------------------------------------------------------------------------------ records


def per_prompt(scores: dict[str, torch.Tensor], prompts: list[str], grid: str, per: int) -> dict[str, list[float]]:
    """Per-image (or per-prompt) scores averaged to one value per prompt, and ``adherence``: the share of a
    prompt's samples that follow it (colours and shape read from the pixels of the saved grid)."""
    out = {name: v.float().view(len(prompts), -1).mean(dim=1).tolist() for name, v in scores.items()}
    out["adherence"] = adherence(grid, prompts, per)
    return out


def adherence(grid: str, prompts: list[str], per: int) -> list[float]:
    """Per prompt, the share of its ``per`` samples in the evaluation grid (one prompt a row, 1 px
    padding) whose colours and shape ``pipeline.toyworld.measure`` reads as the prompt's."""
    import numpy as np
    from PIL import Image

    from pipeline.toyworld.measure import prompt_checks

    with Image.open(grid) as png:
        image = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
    side = (image.shape[-1] - 1) // per - 1
    tiles = torch.stack(
        [
            image[
                :,
                1 + row * (side + 1) : 1 + row * (side + 1) + side,
                1 + col * (side + 1) : 1 + col * (side + 1) + side,
            ]
            for row in range(len(prompts))
            for col in range(per)
        ]
    )
    combos = [parse_caption(p) for p in prompts for _ in range(per)]
    return prompt_checks(tiles, combos)["follows"].float().view(len(prompts), per).mean(dim=1).tolist()


def choose_lr(grid: dict[float, dict]) -> float:
    """The rule, fixed before the runs: among the learning rates whose validation adherence keeps at least
    ``KEEP_ADHERENCE`` of the base model's, the one with the highest validation reward (the trained one);
    if none keeps it, the one with the highest validation adherence."""
    from pipeline.toyworld.claims_report import mean_of

    keeps = [
        lr
        for lr, r in grid.items()
        if mean_of(r, "validation", "tuned", "adherence")
        >= KEEP_ADHERENCE * mean_of(r, "validation", "base", "adherence")
    ]
    if keeps:
        return max(keeps, key=lambda lr: mean_of(grid[lr], "validation", "tuned", "trained"))
    return max(grid, key=lambda lr: mean_of(grid[lr], "validation", "tuned", "adherence"))


# ------------------------------------------------------------------------------------------ fixed weights


def flops_per_step(job: Job) -> float:
    """The expected FLOPs of one optimiser step of ``job``'s config (``trainers.cost``, on the meta
    device: equal to a real step's count, averaged over the plan's random draws)."""
    from pipeline.plan import quiet_loading
    from trainers.cost import predict

    with quiet_loading():  # no warnings that the skeleton's weights are not loaded
        return predict(job_config(job))[0].total_flops


def trainer_for(config: str, overrides: list[str]):
    from pipeline.config import load_config
    from trainers.config import Config
    from trainers.loop import build_trainer

    return build_trainer(load_config(Config, config, overrides))


def lora_gradient(tr, prompts: list[str], x_T: torch.Tensor, seed: int) -> torch.Tensor:
    """The LoRA gradient ``(params,)`` of the mean reward of ``prompts`` from ``x_T`` under the trainer's
    plan, its random draws (plan flags, re-noising) seeded by ``seed``; float64."""
    from trainers.objectives import plan_loss

    gen = torch.Generator().manual_seed(seed)
    loss, scores, _, _ = plan_loss(tr, prompts, x_T, tr.objective.plan.flags(tr.cfg.sampler.num_steps, gen), gen)
    grad = torch.autograd.grad(loss / scores.shape[0], tr.params)
    return torch.cat([g.flatten() for g in grad]).double()


def draw(tr, seed: int, batch: int) -> tuple[list[str], torch.Tensor]:
    """``batch`` training prompts and initial noises drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [tr.sampler.prompts[i] for i in torch.randint(len(tr.sampler.prompts), (batch,), generator=gen)]
    return prompts, torch.randn(batch, *tr.model.latent_shape, generator=gen)


def gradient_norms(config: str, overrides: list[str], ks: list[int], draws: int) -> dict[int, list[float]]:
    """Per K, the norm of the DRaFT-K LoRA gradient (batch 4) at the base weights over ``draws`` draws
    (the same prompts and noise for every K); K = num_steps is full DRaFT."""
    norms = {}
    for k in ks:
        tr = trainer_for(config, [*overrides, "plan.name=draft_k", f"plan.k={k}"])
        norms[k] = [float(lora_gradient(tr, *draw(tr, 7919 * d, 4), seed=d).norm()) for d in range(draws)]
    return norms


def nested_gradients(tr, pairs: int, renoisings: int) -> torch.Tensor:
    """``(pairs, renoisings, params)``: the gradient of one (prompt, initial noise) pair, drawn ``pairs``
    times, each under ``renoisings`` seeds of the plan's own random draws (DRaFT-LV's re-noising)."""
    return torch.stack(
        [
            torch.stack([lora_gradient(tr, *draw(tr, 104_729 * i, 1), seed=j) for j in range(renoisings)])
            for i in range(pairs)
        ]
    )


@dataclass(frozen=True)
class PairStats:
    """Per (prompt, noise) pair: the mean gradient over its re-noisings ``(pairs, params)`` and the trace of
    their covariance ``(pairs,)`` (0 with one re-noising)."""

    means: torch.Tensor
    within: torch.Tensor
    renoisings: int

    @classmethod
    def of(cls, grads: torch.Tensor) -> PairStats:
        """From gradients ``(pairs, renoisings, params)``."""
        n = grads.shape[1]
        within = grads.var(dim=1).sum(dim=1) if n > 1 else torch.zeros(grads.shape[0], dtype=grads.dtype)
        return cls(grads.mean(dim=1), within, n)

    def decompose(self, pick: torch.Tensor | None = None) -> dict[str, float]:
        """The variance of one draw (the trace of its covariance), split into the part between samples (of
        E[g | x0]) and the part within a sample's x0 (the re-noising alone), over the pairs ``pick``
        (default all; a bootstrap passes a resample)."""
        means, within = (self.means, self.within) if pick is None else (self.means[pick], self.within[pick])
        within_mean = float(within.mean())
        between = max(float(means.var(dim=0).sum()) - within_mean / self.renoisings, 0.0)
        return {"between": between, "within": within_mean, "total": between + within_mean}


def variance_cost_ratio(
    lv: PairStats, one: PairStats, cost: float, resamples: int = 1000
) -> tuple[float, float, float]:
    """var(LV) × cost(LV) / var(DRaFT-1) × cost(DRaFT-1) (``cost`` is their ratio) and its 95% bootstrap
    interval, resampling the pairs (the same for both)."""
    gen = torch.Generator().manual_seed(0)
    ratio = lv.decompose()["total"] * cost / one.decompose()["total"]
    values = []
    for _ in range(resamples):
        idx = torch.randint(0, len(lv.within), (len(lv.within),), generator=gen)
        values.append(lv.decompose(idx)["total"] * cost / max(one.decompose(idx)["total"], 1e-30))
    low, high = torch.quantile(torch.tensor(values, dtype=torch.float64), torch.tensor([0.025, 0.975]).double())
    return ratio, float(low), float(high)

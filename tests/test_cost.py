"""The cost model (trainers/cost.py) against measurement: its FLOPs, counted on the meta skeleton, equal
``FlopCounterMode``'s count of a real optimiser step on CPU, and its peak bytes are within 20% of the peak of
tensor bytes the real step allocates; ``pipeline.plan`` and ``pipeline.train``'s fit check on top of it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.bench.cost import held_bytes
from pipeline.config import ConfigError, load_config
from trainers.config import Config
from trainers.cost import CPU_ATTENTION, Counter, measure_plan_units, predict
from trainers.loop import build_trainer, train_step

PEAK_TOLERANCE = 0.20  # the bar for predicted against measured peak bytes


def config(path: str, *overrides: str) -> Config:
    base = [f"model.path={path}", "model.device=cpu", "rewards=[{name: brightness}]", "sampler.num_steps=6"]
    return load_config(Config, None, [*base, "train.batch_size=2", *overrides])


def measured(cfg: Config) -> tuple[int, int, list]:
    """A real step's FLOPs and peak tensor bytes (its weights, buffers and AdamW state, plus the peak of what the
    step allocates), after a warm-up step that creates AdamW's state; and the plan flags the counted step drew.

    The FLOPs are ``FlopCounterMode``'s, and the cost model's :class:`Counter` (its formulas without its module
    hooks) must count the same. A DI* step is counted by the :class:`Counter` alone: ``FlopCounterMode``'s module
    hooks fail inside the ``autograd.grad`` of its divergence."""
    tr = build_trainer(cfg)
    train_step(tr)
    flags, draws = _next_flags(tr), tr.gen.get_state()
    counter = Counter()
    with counter:
        train_step(tr)
    if cfg.plan.name != "di_star":
        tr.gen.set_state(draws)  # the same plan flags again
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as flops:
            train_step(tr)
        assert flops.get_total_flops() == counter.flops
    return counter.flops, held_bytes(tr) + counter.peak, flags


def _next_flags(tr) -> list:
    gen = torch.Generator()
    gen.set_state(tr.gen.get_state())
    plan = getattr(tr.objective, "plan", None)
    return plan.flags(tr.cfg.sampler.num_steps, gen) if plan is not None else []


def assert_matches(cfg: Config) -> None:
    cost, _ = predict(cfg)
    flops, peak, _ = measured(cfg)
    assert cost.total_flops == flops
    ratio = cost.step_bytes / peak  # the step's peak, not the evaluation's
    print(f"predicted / measured peak: {ratio:.3f} ({cost.peak_at})")
    assert abs(ratio - 1) <= PEAK_TOLERANCE


SD_PLANS = {
    "draft_k K=2": ["plan.name=draft_k", "plan.k=2"],
    "draft": ["plan.name=draft"],
    "draft, no step checkpointing": ["plan.name=draft", "model.step_checkpointing=false"],
    "draft_k, UNet and VAE checkpointing": [
        "plan.name=draft_k",
        "plan.k=2",
        "model.unet_checkpointing=true",
        "model.vae_checkpointing=true",
    ],
    "draft_lv with the chain": ["plan.name=draft_lv", "plan.lv_include_chain=true"],
    "draft_k, DRaFT+": ["plan.name=draft_k", "plan.kl_coeff=0.1"],
    "draft_k, LoRA not folded": ["plan.name=draft_k", "model.fold_lora=false"],
    "draft_k, full fine-tune": ["plan.name=draft_k", "trainable.kind=full"],
}


@pytest.mark.parametrize("overrides", SD_PLANS.values(), ids=SD_PLANS.keys())
def test_a_plans_predicted_step_matches_a_real_step(tiny_sd_dir, overrides):
    assert_matches(config(tiny_sd_dir, *overrides))


@pytest.mark.parametrize("family", ["sdxl", "pixart", "sd3", "flux"])
def test_every_family_matches_a_real_step(family, request):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    extra = ["model.resolution=16"] if family == "flux" else []
    assert_matches(config(folder, "plan.name=draft_k", "plan.k=2", *extra))


@pytest.mark.parametrize("shared", ["false", "true"])
def test_a_distillation_step_matches_a_real_step(tiny_sd_dir, shared):
    """DI*: the fake score's updates and the generator's loss (three UNets, or one base with two adapters)."""
    assert_matches(config(tiny_sd_dir, "plan.name=di_star", "distill.fake_updates=2", f"distill.shared_base={shared}"))


@pytest.mark.parametrize(
    "plan", [["plan.name=drtune", "plan.k=2", "plan.early_stop=3"], ["plan.name=refl", "plan.early_stop=3"]]
)
def test_a_random_plans_walk_with_the_drawn_flags_matches_a_real_step(tiny_sd_dir, plan):
    """DRTune and ReFL draw their trained and stop steps: the walk with the flags the real step drew counts its
    FLOPs exactly (the plan's figure is the mean over draws)."""
    from rewards.build import reward_skeleton
    from trainers.models import skeleton_model
    from trainers.objectives import build_objective

    cfg = config(tiny_sd_dir, *plan)
    model = skeleton_model(cfg.model)
    objective = build_objective(cfg, model)
    units = measure_plan_units(cfg, model, objective, reward_skeleton(cfg.rewards))
    flops, _, flags = measured(cfg)
    assert sum(units.walk(flags, 0, True).flops.values()) == flops


def test_the_minimum_is_the_step_without_checkpointing(tiny_sd_dir):
    """Recomputation is what checkpointing adds: the minimum of a checkpointed step is the FLOPs of the same
    step with no checkpointing at all."""
    on = ["model.unet_checkpointing=true", "model.vae_checkpointing=true"]
    checkpointed, _ = predict(config(tiny_sd_dir, "plan.name=draft_k", "plan.k=3", *on))
    plain, _ = predict(config(tiny_sd_dir, "plan.name=draft_k", "plan.k=3", "model.step_checkpointing=false"))
    assert checkpointed.flops["recomputation (checkpointing)"] > 0
    assert plain.flops["recomputation (checkpointing)"] == 0
    assert checkpointed.minimum_flops == plain.total_flops
    assert checkpointed.peak_bytes < plain.peak_bytes


def test_the_plan_reads_no_weights(tiny_sd_dir, tmp_path):
    """A pipeline folder of config files alone plans like the full one."""
    import shutil

    folder = tmp_path / "configs_only"
    shutil.copytree(tiny_sd_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with_weights, _ = predict(config(tiny_sd_dir, "plan.name=draft_k"))
    without, _ = predict(config(str(folder), "plan.name=draft_k"))
    assert (without.total_flops, without.peak_bytes) == (with_weights.total_flops, with_weights.peak_bytes)


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.plan", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_plan_cli_on_a_released_architecture(tmp_path):
    """SD 1.5 from its config files: the real UNet's size, a verdict, and a JSON whose parts add up."""
    out = tmp_path / "plan.json"
    done = run_plan("--config", "pipeline/configs/sd15_drtune_hps.yaml", "--architecture", "sd15", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "denoiser 859.5 M + " in done.stdout and "verdict: fits" in done.stdout
    report = json.loads(out.read_text())
    assert report["fits"] and report["needed_gib"] < report["available_gib"]
    assert sum(report["flops"].values()) >= report["minimum_flops"] > 0


def test_plan_cli_names_the_knobs_when_a_step_does_not_fit():
    done = run_plan(
        "--architecture",
        "sd15",
        "--gpu",
        "a100-40gb",
        "plan.name=draft",
        "sampler.num_steps=50",
        "model.step_checkpointing=false",
        "train.batch_size=2",
        "rewards=[{name: brightness}]",
    )
    assert done.returncode == 0, done.stderr
    assert "verdict: does not fit" in done.stdout
    assert "model.step_checkpointing=true" in done.stdout and "(fits)" in done.stdout


def test_plan_cli_without_the_model_folder_points_at_the_architecture():
    done = run_plan("--config", "pipeline/configs/sdxl_drtune_hps.yaml")
    assert done.returncode == 2
    assert "--architecture sdxl" in done.stderr and done.stderr.count("\n") <= 3


def test_train_refuses_a_step_that_cannot_fit_before_anything_loads(tmp_path):
    from pipeline.architectures import write_architecture
    from pipeline.train import main

    folder = write_architecture("sd15", str(tmp_path / "sd15"))
    overrides = [
        f"model.path={folder}",
        "train.gpu=a100-40gb",
        "plan.name=draft",
        "sampler.num_steps=50",
        "model.step_checkpointing=false",
        "train.batch_size=2",
        "rewards=[{name: brightness}]",
        "eval.require=[]",
        f"train.output_dir={tmp_path}",
    ]
    with pytest.raises(ConfigError) as refused:
        main(overrides)
    assert "train.gpu" in str(refused.value) and "model.step_checkpointing=true" in str(refused.value)


def test_train_prints_the_verdict_and_runs_when_the_step_fits(tmp_path, capsys):
    from pipeline.train import main

    overrides = [
        "train.gpu=l40s",
        "train.steps=1",
        "eval.every=0",
        "ray.enabled=false",
        "tracking.enabled=false",
        f"train.output_dir={tmp_path}",
    ]
    assert main(overrides) == 0
    out = capsys.readouterr().out
    assert "GiB on the L40S 48GB (train.gpu)" in out and "TFLOP per step" in out


def test_the_evaluation_matches_a_real_evaluation(tiny_sd_dir):
    """A held-out evaluation between steps (the gradients still held): its FLOPs to 0.1% (the pixel-diversity
    metric's distances, which the model leaves out, add 0.03% here), its peak within 20%."""
    from trainers.loop import evaluate

    cfg = config(tiny_sd_dir, "plan.name=draft_k", "eval.batch_size=4", "eval.max_prompts=4")
    cost, _ = predict(cfg)
    tr = build_trainer(cfg)
    train_step(tr)
    counter = Counter()
    with counter:
        evaluate(tr)
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in tr.params)
    assert counter.flops * (1 - 1e-3) <= cost.eval_flops <= counter.flops
    ratio = (sum(cost.static.values()) + cost.eval_activations) / (held_bytes(tr) + gradients + counter.peak)
    print(f"predicted / measured evaluation peak: {ratio:.3f}")
    assert abs(ratio - 1) <= PEAK_TOLERANCE

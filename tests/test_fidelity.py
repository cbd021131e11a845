"""The papers' methods as their official code runs them: ReFL's hinge loss without CFG on DDPM sampling equals a
by-hand reference on diffusers' ``DDPMScheduler``; every shipped recipe states its reward terms' effective scales
(checked against the config); DI*'s generator starts from a saved one-step LoRA; the fidelity switches refuse
being given to a plan that does not read them."""

from __future__ import annotations

import glob
import os
from dataclasses import replace

import pytest
import torch
from test_distill import distill_config
from test_training import make_config

from pipeline.config import ConfigError, from_dict, load_config, to_dict
from pipeline.preflight import REWARD_SCALES, load_checked, write_run_config
from trainers.config import Config
from trainers.grad_plan import ReFL
from trainers.loop import build_trainer, run
from trainers.models import load_model
from trainers.objectives import plan_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(f for f in glob.glob(os.path.join(ROOT, "pipeline", "configs", "*.yaml")) if "tune" not in f)
PROMPTS = ["a red circle", "a blue square"]
STEPS = 6


def refl_official_trainer(tiny_sd_dir: str, out: str, margin: float):
    """ReFL as ``ImageReward/ReFL.py`` trains: no CFG while training, DDPM sampling (DDIM at eta 1), the loss
    ``loss_scale * relu(margin - r)``; the model and its LoRA in float64."""
    data = to_dict(make_config(tiny_sd_dir, out))
    data["plan"] = {"name": "refl", "early_stop": 3, "hinge_margin": margin, "loss_scale": 1e-3}
    data["sampler"] = {"num_steps": STEPS, "guidance_scale": 7.5, "train_guidance_scale": 1.0, "eta": 1.0}
    data["rewards"] = [{"name": "brightness"}]
    cfg = from_dict(Config, data)
    model = load_model(cfg.model)
    for module in (model.denoiser, *model.frozen_modules()):
        module.double()
    tr = build_trainer(cfg, model=replace(model, dtype=torch.float64))
    for p in tr.params:
        p.data = p.data.double() + 0.1 * torch.randn(
            p.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
        )
    return tr


def ddpm_reference(tr, x_T, stop: int, margin: float | None):
    """The official loop by hand: ``DDPMScheduler`` steps without gradient up to ``stop``, one conditional UNet
    call with gradient there, its ``pred_original_sample`` decoded and scored; ``(loss, rewards)``."""
    from diffusers import DDPMScheduler

    model = tr.model
    ddpm = DDPMScheduler.from_config(model.scheduler.config)
    ddpm.alphas_cumprod = ddpm.alphas_cumprod.double()
    ddpm.set_timesteps(STEPS)
    cond = model.family.encode_prompts(model, PROMPTS).hidden_states
    gen, x = torch.Generator().manual_seed(5), x_T
    for t in ddpm.timesteps[:stop]:
        with torch.no_grad():
            x = ddpm.step(model.denoiser(x, t, encoder_hidden_states=cond).sample, t, x, generator=gen).prev_sample
    t = ddpm.timesteps[stop]
    x0 = ddpm.step(model.denoiser(x, t, encoder_hidden_states=cond).sample, t, x, generator=gen).pred_original_sample
    rewards = tr.reward(model.family.decode(model, x0), PROMPTS)
    loss = None if margin is None else torch.relu(margin - rewards).mean() * 1e-3
    return loss, rewards.detach()


def test_refl_official_hinge_without_cfg_on_ddpm_equals_the_by_hand_reference(tiny_sd_dir, tmp_path):
    x_T = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flags = ReFL(early_stop=3).flags(STEPS, torch.Generator().manual_seed(11))
    stop = len(flags) - 1
    tr = refl_official_trainer(tiny_sd_dir, str(tmp_path), margin=0.0)
    _, rewards = ddpm_reference(tr, x_T, stop, None)
    margin = float(rewards.mean())  # one image above the margin (no gradient), one below
    assert rewards.min() < margin < rewards.max()
    tr.cfg = replace(tr.cfg, plan=replace(tr.cfg.plan, hinge_margin=margin))
    want_loss, _ = ddpm_reference(tr, x_T, stop, margin)
    want = torch.autograd.grad(want_loss, tr.params)
    loss, scores, _, _ = plan_loss(tr, PROMPTS, x_T, flags, torch.Generator().manual_seed(5))
    got = torch.autograd.grad(loss, tr.params)
    torch.testing.assert_close(scores[0], rewards, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, want_loss, rtol=1e-9, atol=1e-15)
    assert sum(float(w.abs().sum()) for w in want) > 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_every_shipped_recipe_states_its_reward_scales(recipe, tmp_path):
    """The header line ``# Reward scales in the loss: ...`` says what the config computes, and a run's
    config.yaml opens with the same line."""
    cfg = load_config(Config, recipe, [])
    lines = [line for line in open(recipe, encoding="utf-8") if line.startswith(REWARD_SCALES)]
    assert lines, f"{os.path.basename(recipe)} has no '{REWARD_SCALES.strip()}' header line"
    assert lines[0][len(REWARD_SCALES) :].rstrip("\n") == cfg.reward_scales()
    write_run_config(cfg, str(tmp_path))
    assert (tmp_path / "config.yaml").read_text().splitlines()[0] == REWARD_SCALES + cfg.reward_scales()


def test_di_star_hps_recipes_weight_the_raw_hps_cosine_by_100():
    for name in ("sd15_distar_hps.yaml", "pixart_distar_hps.yaml"):
        cfg = load_config(Config, os.path.join(ROOT, "pipeline", "configs", name), [])
        assert cfg.reward_scales().startswith("hpsv2: 100 × cosine"), name
        assert cfg.distill.divergence == "sim" and cfg.distill.huber_norm == "l2"


def test_generator_starts_from_a_saved_one_step_lora(tiny_sd_dir, tmp_path):
    """``distill.generator_init``: the generator's adapter starts equal to a finished run's generator (B scaled
    when alpha differs), the fake score still starts from the teacher; another rank, or another generator
    timestep, is refused with the key named."""
    first = run(distill_config(tiny_sd_dir, str(tmp_path / "a"), {"train": {"steps": 2}}))
    final = os.path.join(first.run_dir, "final")
    trained = build_trainer(distill_config(tiny_sd_dir, str(tmp_path / "x")))
    from trainers.models import load_trained

    load_trained(trained.model, final)  # the saved LoRA as peft loads it, for reference: adapter "tuned"
    want = {n.replace(".tuned.", "."): p for n, p in trained.model.denoiser.named_parameters() if ".tuned." in n}
    warm = build_trainer(
        distill_config(tiny_sd_dir, str(tmp_path / "b"), generator_init=final, **{"fake": {"rank": 2, "alpha": 2.0}})
    )
    got = {n.replace(".default.", "."): p for n, p in warm.model.denoiser.named_parameters() if ".default." in n}
    assert got.keys() == want.keys() and any(float(p.detach().abs().sum()) > 0 for n, p in got.items() if "lora_B" in n)
    for name, p in got.items():
        torch.testing.assert_close(p, want[name], rtol=1e-6, atol=1e-8, msg=name)
    assert not any(".init." in n for n, _ in warm.model.denoiser.named_parameters())
    assert all(
        float(p.detach().abs().sum()) == 0
        for n, p in warm.objective.distill.nets.fake.named_parameters()
        if "lora_B" in n
    )
    with pytest.raises(ValueError, match="distill.generator_init: .*rank 2 cannot start an adapter of rank 4"):
        build_trainer(
            distill_config(
                tiny_sd_dir, str(tmp_path / "c"), {"trainable": {"rank": 4, "alpha": 4.0}}, generator_init=final
            )
        )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"model: {{path: {tiny_sd_dir}, device: cpu}}\nplan: {{name: di_star}}\n"
        f"trainable: {{rank: 2, alpha: 3.0}}\ntrain: {{output_dir: {tmp_path / 'runs'}}}\n"
    )
    with pytest.raises(ConfigError, match="distill.generator_init: .*at timestep 999.*set it to 999"):
        load_checked(str(cfg_path), [f"distill.generator_init={final}", "distill.generator_timestep=399"])
    with pytest.raises(ConfigError, match="distill.generator_init: .*holds no LoRA weights"):
        load_checked(str(cfg_path), [f"distill.generator_init={tmp_path}"])
    load_checked(str(cfg_path), [f"distill.generator_init={final}"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["plan.name=drtune", "plan.lv_timestep=19"], "plan.lv_timestep: only draft_lv reads it"),
        (["plan.name=draft_k", "plan.lv_include_chain=true"], "plan.lv_include_chain: only draft_lv reads it"),
        (
            ["plan.name=refl", "plan.early_stop=2", "plan.alignprop_cuts=per_call"],
            "plan.alignprop_cuts: only alignprop",
        ),
        (["plan.name=draft_lv", "plan.lv_timestep=1000"], "plan.lv_timestep: must be a training timestep"),
        (["plan.name=refl", "plan.early_stop=2", "plan.loss_scale=0"], "plan.loss_scale: must be a finite number > 0"),
        (["plan.name=di_star", "plan.hinge_margin=2"], "plan.hinge_margin: di_star weighs its reward"),
        (
            ["plan.name=drtune", "plan.k=1", "sampler.train_guidance_scale=-1"],
            "sampler.train_guidance_scale: must be >= 0",
        ),
        (["plan.name=di_star", "distill.divergence=sim_full"], "distill.divergence"),
        (["plan.name=di_star", "trainable.kind=full", "distill.generator_init=/x"], "distill.generator_init: starts"),
    ],
    ids=[
        "lv_timestep",
        "lv_chain",
        "cuts",
        "lv_range",
        "loss_scale",
        "hinge_di_star",
        "train_guidance",
        "divergence",
        "init_full",
    ],
)
def test_fidelity_switches_refuse_what_they_cannot_mean(tmp_path, overrides, message):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("model: {device: cpu}\n")
    with pytest.raises(ConfigError, match=message):
        load_checked(str(cfg_path), overrides, check_files=False)


def test_an_alignprop_draw_with_no_trained_step_is_a_zero_gradient_step(tiny_sd_dir, tmp_path):
    """A cut at T (probability 1/(T+1) per call with ``per_call``) trains no step: the step runs with a zero
    gradient instead of failing in backward."""
    from trainers.loop import train_step

    tr = build_trainer(
        make_config(tiny_sd_dir, str(tmp_path), plan={"name": "alignprop", "alignprop_cuts": "per_call"})
    )
    for seed in range(40):  # find a draw of the run's generator whose cut trains nothing
        gen = torch.Generator().manual_seed(seed)
        if not any(f.grad for f in tr.objective.plan.flags(tr.cfg.sampler.num_steps, gen)):
            break
    tr.gen.manual_seed(seed)
    metrics = train_step(tr)
    assert metrics["train/grad_norm"] == 0.0 and metrics["train/skipped_steps"] == 0

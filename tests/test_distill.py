"""Diff-Instruct*: the generator's gradient equals the divergence differentiated directly (float64, through
both score networks' input Jacobians), the shared-base mode equals three networks, resume restores the
generator, the fake score and both optimisers exactly, and bad pairs or non-finite fake losses are handled."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import pytest
import torch
from test_training import StopAt, _trained, make_config

from pipeline.config import ConfigError
from pipeline.preflight import load_checked
from pipeline.random_models import build_random_sd
from trainers.loop import TrainingAborted, build_trainer, run, train_step
from trainers.models import load_model
from trainers.replicas import Replicas

PROMPTS = ["a red square", "a blue circle", "a green triangle"]


def distill_config(model_dir: str, out: str, sections: dict | None = None, **distill):
    """A DI* config on the tiny model; ``sections`` overrides other sections (``{"train": {...}}``)."""
    return make_config(
        model_dir,
        out,
        plan={"name": "di_star"},
        **(sections or {}),
        distill={
            "alpha_rew": 0.5,
            "alpha_cfg": 3.0,
            "huber_c": 0.05,
            "fake_lr": 0.05,
            "fake": {"rank": 2, "alpha": 2.0},
            **distill,
        },
    )


def float64_trainer(model_dir: str, cfg):
    """A trainer whose every network, adapter and latent is float64, its adapters moved off zero."""
    model = load_model(cfg.model)
    for module in (model.denoiser, *model.frozen_modules()):
        module.double()
    tr = build_trainer(cfg, model=replace(model, dtype=torch.float64))
    gen = torch.Generator().manual_seed(7)
    for p in tr.params + tr.objective.distill.nets.fake_params:
        p.data = p.data.double() + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    return tr


def direct_loss(tr, prompts, gen_state) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, loss)`` written out (UNet calls, the forward process and the distance inline): the value
    ``-α_rew r̄ + mean_b w_b d(y_b)`` (the KL surrogate's for kl) and the loss whose gradient in the generator's
    weights the step must equal, ``-α_rew r̄ + mean_b w_b L_b`` with L the objective's surrogate."""
    d, c = tr.objective.distill, tr.cfg.distill
    model = tr.model
    cond = model.family.encode_prompts(model, prompts).hidden_states
    uncond = model.family.encode_prompts(model, [""] * len(prompts)).hidden_states
    gen = torch.Generator()
    gen.set_state(gen_state)
    z, t, eps = d.draw(gen, Replicas(), len(prompts))
    abar = model.scheduler.alphas_cumprod.double()
    a_g = abar[c.generator_timestep]
    x0 = (
        z - (1 - a_g).sqrt() * model.denoiser(z, c.generator_timestep, encoder_hidden_states=cond).sample
    ) / a_g.sqrt()
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    eps_fake = d.nets.fake(x_t, t, encoder_hidden_states=cond).sample
    both = d.nets.teacher(
        torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])
    ).sample
    e_u, e_c = both.chunk(2)
    eps_ref = e_u + c.alpha_cfg * (e_c - e_u)
    n = x_t[0].numel()
    if c.divergence == "kl":  # <sg(ε̂_ref - ε̂_fake), x_t> / n
        per_sample = ((eps_ref - eps_fake).detach() * x_t).flatten(1).sum(1) / n
        value = per_sample
    else:  # d(y) = sqrt(||y||² + C²) - C, y = ε̂_ref - ε̂_fake; the papers' loss d'(y)·(ε̂_fake - ε)
        y = eps_ref - eps_fake
        square = y.pow(2).flatten(1).sum(1) / (n if c.huber_norm == "rms" else 1)
        root = (square + c.huber_c**2).sqrt()
        per_element = 1 / n if c.huber_norm == "rms" else 1
        value = root - c.huber_c
        per_sample = ((y * per_element / root.view(-1, 1, 1, 1)) * (eps_fake - eps)).flatten(1).sum(1)
        if c.divergence == "sim_sampling_law":
            per_sample = per_sample + value
    snr = (abar[t] / (1 - abar[t])).clamp(max=5.0)
    w = torch.ones_like(snr) if c.weighting == "uniform" else snr
    images = model.family.decode(model, x0)
    reward = -c.alpha_rew * tr.reward(images, prompts).mean()
    return reward + (w * value).mean(), reward + (w * per_sample).mean()


@pytest.mark.parametrize(
    "distill",
    [
        {"divergence": "sim"},
        {"divergence": "sim", "huber_norm": "rms"},
        {"divergence": "sim_sampling_law", "huber_norm": "rms"},
        {"divergence": "sim", "weighting": "min_snr", "alpha_rew": 0.0},
        {"divergence": "kl"},
    ],
    ids=["di_star", "di_star_rms", "di_star_sampling_law", "sim_min_snr", "di_plus_plus"],
)
def test_generator_gradient_equals_the_divergence_differentiated_directly(tiny_sd_dir, tmp_path, distill):
    tr = float64_trainer(tiny_sd_dir, distill_config(tiny_sd_dir, str(tmp_path), **distill))
    model, d = tr.model, tr.objective.distill
    cond = model.family.encode_prompts(model, PROMPTS)
    uncond = model.family.encode_prompts(model, [""] * 3)
    state = tr.gen.get_state()
    loss, scores, _ = d.generator_loss(cond, uncond, PROMPTS, tr.reward, tr.gen, tr.replicas)
    got = torch.autograd.grad(loss, tr.params)
    want_value, want_loss = direct_loss(tr, PROMPTS, state)
    want = torch.autograd.grad(want_loss, tr.params)
    assert loss.dtype == torch.float64 and scores.shape == (3,)
    torch.testing.assert_close(loss, want_value, rtol=1e-10, atol=1e-12)
    scale = max(float(g.abs().max()) for g in want)
    assert scale > 1e-6, "the comparison must be between gradients that are not zero"
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * scale)


def flow_direct_loss(tr, prompts, gen_state) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`direct_loss` for a flow-matching model (SD3 guided by CFG, FLUX.1 [dev] by its embedded scale), the
    forward process and the velocity's conversion written out: ``σ = t/1000``, ``x0 = z - σ_g v``,
    ``x_t = (1-σ) x0 + σ ε``, ``ε̂ = x_t + (1-σ) v``, ``w = min(((1-σ)/σ)², 5)``; DI*'s surrogate (``sim``)."""
    d, c, model = tr.objective.distill, tr.cfg.distill, tr.model
    cond = model.family.encode_prompts(model, prompts)
    gen = torch.Generator()
    gen.set_state(gen_state)
    z, t, eps = d.draw(gen, Replicas(), len(prompts))

    def velocity(denoiser, x, timesteps, guidance):
        net = replace(model, denoiser=denoiser)
        if model.guidance == "embedded":
            return model.family.denoise(net, x, timesteps, cond, guidance)
        if guidance <= 1:
            return model.family.denoise(net, x, timesteps, cond)
        uncond = model.family.encode_negative(model, len(prompts))
        both = model.family.denoise(
            net, torch.cat([x, x]), torch.cat([timesteps, timesteps]), type(cond).cat([uncond, cond])
        )
        v_u, v_c = both.chunk(2)
        return v_u + guidance * (v_c - v_u)

    s_g = float(torch.tensor(c.generator_timestep / 1000, dtype=torch.float32))  # sigmas are kept in float32
    x0 = z - s_g * velocity(model.denoiser, z, torch.full((len(z),), float(c.generator_timestep)), 1.0)
    sigma = (t.double() / 1000).view(-1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * eps
    eps_fake = x_t + (1 - sigma) * velocity(d.nets.fake, x_t, t.double(), 1.0)
    eps_ref = x_t + (1 - sigma) * velocity(d.nets.teacher, x_t, t.double(), c.alpha_cfg)
    y = eps_ref - eps_fake
    root = (y.pow(2).flatten(1).sum(1) + c.huber_c**2).sqrt()
    value = root - c.huber_c
    per_sample = ((y / root.view(-1, 1, 1, 1)) * (eps_fake - eps)).flatten(1).sum(1)
    w = ((1 - sigma.flatten()) / sigma.flatten()).square().clamp(max=5.0) if c.weighting == "min_snr" else 1.0
    reward = -c.alpha_rew * tr.reward(model.family.decode(model, x0), prompts).mean()
    return reward + (w * value).mean(), reward + (w * per_sample).mean()


@pytest.mark.parametrize("family, weighting", [("sd3", "uniform"), ("flux", "min_snr")])
def test_on_a_flow_teacher_the_generator_gradient_equals_the_divergence_differentiated_directly(
    request, tmp_path, family, weighting
):
    """DI* on SD3 (CFG teacher) and FLUX.1 [dev] (embedded guidance): the generator is the x0 prediction
    ``z - σ_g v``, the scores come from the velocities, and the step's gradient is the divergence's."""
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = {"model": {"path": folder, "device": "cpu", "resolution": 16}}
    cfg = distill_config(folder, str(tmp_path), model, weighting=weighting, generator_timestep=900)
    tr = float64_trainer(folder, cfg)
    m, d = tr.model, tr.objective.distill
    cond = m.family.encode_prompts(m, PROMPTS)
    state = tr.gen.get_state()
    loss, scores, _ = d.generator_loss(
        cond, m.unconditional(3, cfg.distill.alpha_cfg), PROMPTS, tr.reward, tr.gen, tr.replicas
    )
    got = torch.autograd.grad(loss, tr.params)
    want_value, want_loss = flow_direct_loss(tr, PROMPTS, state)
    want = torch.autograd.grad(want_loss, tr.params)
    torch.testing.assert_close(loss, want_value, rtol=1e-10, atol=1e-12)
    scale = max(float(g.abs().max()) for g in want)
    assert scale > 1e-6, "the comparison must be between gradients that are not zero"
    # float64 round-off through the transformers' attention reaches 2e-10 of the scale (the UNet's stays under
    # 1e-10); a float32 step would show at 1e-7, a wrong conversion at order 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_di_star_trains_on_a_flow_teacher_and_generate_samples_the_one_step_generator(request, tmp_path, family):
    from pipeline import generate

    folder = request.getfixturevalue(f"tiny_{family}_dir")
    sections = {
        "model": {"path": folder, "device": "cpu", "resolution": 16},
        "train": {"steps": 2, "checkpoint_every": 2},
    }
    result = run(distill_config(folder, str(tmp_path / "run"), sections, generator_timestep=999))
    trained = _trained(result.run_dir)
    assert any(float(t.abs().max()) > 0 for n, t in trained["trainable"].items() if "lora_B" in n), "generator trained"
    assert any(float(t.abs().max()) > 0 for n, t in trained["objective"]["fake"].items() if "lora_B" in n)
    final = os.path.join(result.run_dir, "final")
    argv = ["--model", folder, "--weights", final, "--prompt", "a red square", "--resolution", "16"]
    assert generate.main([*argv, "--device", "cpu", "--num-images", "1", "--out", str(tmp_path / "images")]) == 0
    assert os.path.isfile(tmp_path / "images" / "grid.png")


def _generator_grads_and_fake_step(tr) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model, d = tr.model, tr.objective.distill
    cond = model.family.encode_prompts(model, PROMPTS)
    uncond = model.family.encode_prompts(model, [""] * 3)
    d.fake_update(cond, tr.gen, tr.replicas)
    loss, _, _ = d.generator_loss(cond, uncond, PROMPTS, tr.reward, tr.gen, tr.replicas)
    return list(torch.autograd.grad(loss, tr.params)), [p.detach().clone() for p in d.nets.fake_params]


@pytest.mark.parametrize(
    "family, checkpointing",
    [("sd", False), ("sd", True), ("sdxl", False), ("pixart", True)],
    ids=["sd", "sd_unet_checkpointing", "sdxl", "pixart_checkpointing"],
)
def test_shared_base_equals_three_networks(request, tmp_path, family, checkpointing):
    """Two adapters on one denoiser, the teacher its adapters-off forward: the same fake step and generator
    gradients, also when backward recomputes the denoiser's activations (the right adapter must be active
    then), for the tiny model of each family as its own teacher."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = {"model": {"path": folder, "device": "cpu", "unet_checkpointing": checkpointing}}
    separate = float64_trainer(folder, distill_config(folder, str(tmp_path / "a"), model))
    shared = float64_trainer(folder, distill_config(folder, str(tmp_path / "b"), model, shared_base=True))
    assert (
        shared.objective.distill.nets.teacher is shared.model.denoiser
        and separate.objective.distill.nets.teacher is not None
    )
    with torch.no_grad():
        for mine, theirs in zip(
            shared.params + shared.objective.distill.nets.fake_params,
            separate.params + separate.objective.distill.nets.fake_params,
            strict=True,
        ):
            mine.copy_(theirs)
    grads_a, fake_a = _generator_grads_and_fake_step(separate)
    grads_b, fake_b = _generator_grads_and_fake_step(shared)
    for a, b in zip(fake_a + grads_a, fake_b + grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    layers = [m for m in shared.model.denoiser.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m.active_adapters == ["default"] for m in layers), "the generator's adapter is active at rest"
    assert all(p.requires_grad for p in shared.params) and not any(
        p.requires_grad for p in shared.objective.distill.nets.fake_params
    )


@pytest.mark.parametrize("family", ["sdxl", "pixart"])
def test_di_star_trains_with_a_teacher_folder_of_each_family(request, tmp_path, family):
    """A generator taught by another pipeline folder of its family (``distill.teacher_path``), whose
    denoiser the family loads: two steps move both the generator and the fake score."""
    from pixart_factories import build_tiny_pixart
    from sdxl_factories import build_tiny_sdxl

    folder = request.getfixturevalue(f"tiny_{family}_dir")
    teacher = str(tmp_path / "teacher")
    if family == "sdxl":
        build_tiny_sdxl(teacher, request.getfixturevalue("clip_tokenizer_dir"), seed=1)
    else:
        build_tiny_pixart(teacher, seed=1)
    cfg = distill_config(
        folder, str(tmp_path / "run"), {"train": {"steps": 2, "checkpoint_every": 2}}, teacher_path=teacher
    )
    result = run(cfg)
    trained = _trained(result.run_dir)
    assert trained["step"] == 2
    assert any(float(t.abs().max()) > 0 for n, t in trained["trainable"].items() if "lora_B" in n), "generator trained"
    assert any(float(t.abs().max()) > 0 for n, t in trained["objective"]["fake"].items() if "lora_B" in n), (
        "fake trained"
    )


@pytest.mark.parametrize("shared", [False, True], ids=["three_networks", "shared_base"])
def test_resume_restores_generator_fake_score_and_both_optimisers(tiny_sd_dir, tmp_path, shared):
    sections = {"shared_base": shared, "fake_updates": 2}
    straight = run(distill_config(tiny_sd_dir, str(tmp_path / "a"), **sections))
    cfg = distill_config(tiny_sd_dir, str(tmp_path / "b"), **sections)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, reporters=(StopAt(3),))
    resumed = run(cfg)
    a, b = _trained(straight.run_dir), _trained(resumed.run_dir)
    assert a["step"] == b["step"] == 4
    for part in ("trainable",):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), name
    for name, tensor in a["objective"]["fake"].items():
        assert torch.equal(tensor, b["objective"]["fake"][name]), name
    for key in ("optimizer",):
        assert _same_optimizer_state(a[key], b[key])
    assert _same_optimizer_state(a["objective"]["fake_optimizer"], b["objective"]["fake_optimizer"])
    assert a["objective"]["fake_optimizer"]["state"], "the fake score's optimiser must have taken steps"
    initial = build_trainer(cfg).objective.distill.nets.fake_state_dict()
    assert any(not torch.equal(initial[n], t) for n, t in a["objective"]["fake"].items()), "the fake score must train"
    assert resumed.metrics["train/loss"] == straight.metrics["train/loss"]


def _same_optimizer_state(a: dict, b: dict) -> bool:
    return a["param_groups"] == b["param_groups"] and all(
        torch.equal(a["state"][k][s], b["state"][k][s]) for k in a["state"] for s in a["state"][k]
    )


def test_evaluation_reports_the_teacher_baselines_and_diversity(tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"train": {"steps": 2}})
    cfg = replace(cfg, eval=replace(cfg.eval, images_per_prompt=3))
    result = run(cfg)
    first = json.loads(open(os.path.join(result.run_dir, "metrics.jsonl")).readline())
    for name in ("one_step", "multi_step"):
        for key in ("trained", "diversity"):
            assert f"teacher/{name}/{key}" in first
    # the generator starts as the teacher's unguided one-step map, so with guidance off they agree
    assert first["eval/diversity"] > 0
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert set(summary["teacher"]) == {k for k in first if k.startswith("teacher/")}
    assert {"trained", "diversity"} <= set(summary["held_out"])
    assert result.metrics["teacher/multi_step/trained"] == first["teacher/multi_step/trained"]


def test_non_finite_fake_score_loss_skips_the_step_then_aborts(tiny_sd_dir, tmp_path):
    cfg = distill_config(tiny_sd_dir, str(tmp_path), {"train": {"max_bad_steps": 2}})
    tr = build_trainer(cfg)
    with torch.no_grad():
        tr.objective.distill.nets.fake_params[0].fill_(float("inf"))
    before = [p.detach().clone() for p in tr.params + tr.objective.distill.nets.fake_params[1:]]
    metrics = train_step(tr)
    assert metrics["train/skipped_steps"] == 1 and tr.bad_in_a_row == 1
    for p, old in zip(tr.params + tr.objective.distill.nets.fake_params[1:], before):
        assert torch.equal(p, old), "a skipped step changes neither network"
    # a fake-score learning rate that blows its weights up: every later fake loss is non-finite
    with pytest.raises(TrainingAborted, match="2 steps in a row had a non-finite loss"):
        run(distill_config(tiny_sd_dir, str(tmp_path / "blown"), {"train": {"max_bad_steps": 2}}, fake_lr=1e30))


def test_incompatible_teacher_fails_at_config_time(tiny_sd_dir, clip_tokenizer_dir, tmp_path):
    from transformers import CLIPTokenizer

    other = build_random_sd(str(tmp_path / "tiny"), "tiny", CLIPTokenizer.from_pretrained(clip_tokenizer_dir))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"model: {{path: {tiny_sd_dir}, device: cpu}}\nplan: {{name: di_star}}\n"
        f"train: {{output_dir: {tmp_path / 'runs'}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_checked(str(cfg_path), [f"distill.teacher_path={other}"], training=True)
    text = str(err.value)
    assert "distill.teacher_path" in text and "unet.cross_attention_dim=32" in text and "has 16" in text
    assert "text_encoder.hidden_size" in text
    with pytest.raises(ConfigError, match="distill.teacher_path.*does not exist"):
        load_checked(str(cfg_path), [f"distill.teacher_path={tmp_path / 'missing'}"], training=True)
    load_checked(str(cfg_path), [f"distill.teacher_path={tiny_sd_dir}"], training=True)  # a compatible pair passes


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["distill.shared_base=true", "trainable.kind=full"], "distill.shared_base: the generator is a LoRA adapter"),
        (
            ["distill.shared_base=true", "distill.teacher_path=/x"],
            "distill.shared_base: the teacher is the shared UNet",
        ),
        (["distill.t_min=900", "distill.t_max=100"], "distill.t_min: must be <= t_max=100"),
        (["distill.generator_timestep=1000"], "distill.generator_timestep: must be a training timestep"),
        (["plan.name=drtune", "plan.k=1", "ray.teacher_actors=1"], "ray.teacher_actors: only plan.name=di_star"),
        (["distill.shared_base=true", "ray.teacher_actors=2"], "ray.teacher_actors: with distill.shared_base"),
    ],
    ids=["shared_full", "shared_teacher_path", "t_range", "t_g", "actors_without_di_star", "actors_shared"],
)
def test_bad_distill_configs_are_refused(tmp_path, overrides, message):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("plan: {name: di_star}\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_checked(str(cfg_path), overrides, check_files=False)


def test_the_sd15_config_trains_on_a_tiny_model_with_its_own_settings(tiny_sd_dir, tmp_path):
    """The shipped SD 1.5 DI* config, with only its files pointed at the tiny model and a pixel reward."""
    from pipeline.config import load_config
    from trainers.config import Config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(
        Config,
        os.path.join(root, "pipeline", "configs", "sd15_distar_hps.yaml"),
        [
            f"model.path={tiny_sd_dir}",
            "model.device=cpu",
            "rewards=[{name: brightness}]",
            "eval.rewards=[]",
            "data.prompts=null",
            "data.eval_prompts=null",
            "train.batch_size=2",
            f"train.output_dir={tmp_path}",
            "trainable.rank=2",
            "distill.fake.rank=2",
            "sampler.num_steps=3",
        ],
    )
    assert cfg.distill.shared_base and cfg.model.dtype == "bf16" and cfg.model.unet_checkpointing
    tr = build_trainer(cfg)
    metrics = train_step(tr)
    assert metrics["train/skipped_steps"] == 0 and metrics["train/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in tr.params + tr.objective.distill.nets.fake_params)


def test_train_and_generate_command_lines_run_a_one_step_generator(tiny_sd_dir, tmp_path, capsys):
    from pipeline import generate, train

    assert (
        train.main(
            [
                f"model.path={tiny_sd_dir}",
                "model.device=cpu",
                "plan.name=di_star",
                "train.steps=2",
                "train.batch_size=2",
                "eval.max_prompts=2",
                "eval.images_per_prompt=2",
                "sampler.num_steps=3",
                "ray.enabled=false",
                "tracking.enabled=false",
                f"train.output_dir={tmp_path}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = out[out.index("held-out ") :].splitlines()
    assert table[0].endswith("teacher 1-step / multi-step"), table
    trained = next(line for line in table if line.startswith("trained "))
    assert re.fullmatch(r"trained +\S+ +\S+ +[+-]\S+ \[\S+, \S+\] +-?\d+\.\d+ / -?\d+\.\d+", trained), trained
    final = tmp_path / "di_star-seed0" / "final"
    assert json.loads((final / "one_step.json").read_text()) == {"generator_timestep": 999}
    assert (
        generate.main(
            [
                "--model",
                tiny_sd_dir,
                "--weights",
                str(final),
                "--prompt",
                "a red circle",
                "--num-images",
                "2",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert "one-step generator: x0 prediction at timestep 999" in capsys.readouterr().out
    assert (tmp_path / "gen" / "grid.png").is_file()


def test_diversity_of_pixels_and_of_image_features():
    from rewards.build import build_reward
    from rewards.config import RewardSpec
    from trainers.evaluation import diversity, feature_diversity, image_encoder

    same = torch.rand(1, 3, 16, 16).repeat(4, 1, 1, 1)
    assert diversity(same, 2).tolist() == [0.0, 0.0], "identical images per prompt: no diversity"
    black_white = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert diversity(black_white, 2).item() == pytest.approx(1.0)
    features = torch.eye(3)[[0, 1, 2, 2]]  # prompt 1: orthogonal embeddings, prompt 2: the same one twice
    assert feature_diversity(features, 2).tolist() == pytest.approx([1.0, 0.0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clip = os.path.join(root, "pipeline", "assets", "toyworld", "clip")
    mixed = build_reward(
        [
            RewardSpec(name="colourfulness"),
            RewardSpec(
                name="clip_score",
                arch_config=os.path.join(clip, "toy-clip.json"),
                checkpoint=os.path.join(clip, "toy-clip.safetensors"),
            ),
        ]
    )
    encoder = image_encoder({"trained": mixed, "symmetry": build_reward([RewardSpec(name="symmetry")])})
    assert encoder is not None and encoder.__self__ is mixed.parts()["clip_score"], "CLIP's encoder, found in a sum"
    embeddings = encoder(torch.rand(3, 3, 32, 32))
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert image_encoder({"symmetry": build_reward([RewardSpec(name="symmetry")])}) is None

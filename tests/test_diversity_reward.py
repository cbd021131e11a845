"""The diversity reward in the training loss (``plan.diversity_coeff`` with ``plan.samples_per_prompt``):
batches hold groups of one prompt, the loss gains exactly ``-lambda *`` the groups' mean pairwise cosine
distance of the trained reward's image embeddings, it spreads the samples, and misuse is refused."""

from __future__ import annotations

import pytest
import torch
from reward_factories import make_clip_score_spec
from test_training import make_config

from pipeline.config import ConfigError, from_dict, to_dict
from trainers.config import Config
from trainers.engine import sample
from trainers.evaluation import image_encoder
from trainers.loop import build_trainer, evaluate, train_step
from trainers.objectives import plan_loss, reward_loss
from trainers.prompts import PromptSampler


def config(model_dir: str, tmp_path, batch_size: int = 4, **plan) -> Config:
    data = to_dict(make_config(model_dir, str(tmp_path / "run"), train={"batch_size": batch_size}))
    data["plan"] |= plan
    data["rewards"] = [to_dict(make_clip_score_spec(str(tmp_path / "clip")))]
    return from_dict(Config, data)


def test_a_batch_holds_whole_groups_of_one_prompt(tiny_sd_dir, tmp_path):
    tr = build_trainer(config(tiny_sd_dir, tmp_path, samples_per_prompt=2, diversity_coeff=1.0))
    fresh = PromptSampler(tr.sampler.prompts, tr.cfg.train.seed)
    _, scores, prompts, metrics = reward_loss(tr)
    drawn = fresh.next_batch(2)
    assert prompts == [drawn[0], drawn[0], drawn[1], drawn[1]] and scores.shape == (1, 4)
    assert 0 < metrics["train/feature_diversity"] <= 2


def test_data_parallel_workers_get_whole_groups_of_the_one_worker_batch(tiny_sd_dir, tmp_path):
    from trainers.replicas import Replicas

    plan = {"samples_per_prompt": 2, "diversity_coeff": 1.0}
    whole = reward_loss(build_trainer(config(tiny_sd_dir, tmp_path / "one", **plan)))[2]
    halves = []
    for rank in (0, 1):
        tr = build_trainer(config(tiny_sd_dir, tmp_path / f"rank{rank}", batch_size=2, **plan))
        tr.replicas = Replicas(rank, 2)
        halves += reward_loss(tr)[2]
    assert halves == whole and whole[0] == whole[1] != whole[2] == whole[3]


@pytest.mark.parametrize(("floor", "active"), [(None, True), (1.0, True), (1e-4, False)])
def test_the_loss_gains_exactly_the_groups_feature_diversity(tiny_sd_dir, tmp_path, floor, active):
    """Without a floor, or with one above every group's diversity (about 0.02 here), the gradient gains
    ``-lambda *`` that of the by-hand diversity; with a floor below it, nothing."""
    lam = 0.7
    plain = build_trainer(config(tiny_sd_dir, tmp_path, samples_per_prompt=2))
    tr = build_trainer(config(tiny_sd_dir, tmp_path, samples_per_prompt=2, diversity_coeff=lam, diversity_floor=floor))
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    x_T = torch.randn(4, *tr.model.latent_shape, generator=torch.Generator().manual_seed(3))
    flags = tr.objective.plan.flags(tr.cfg.sampler.num_steps)
    with_term = torch.autograd.grad(plan_loss(tr, prompts, x_T, flags, None)[0], tr.params)
    without = torch.autograd.grad(plan_loss(plain, prompts, x_T, flags, None)[0], plain.params)

    model = tr.model  # the same images by hand, and the diversity pair by pair
    traj = sample(
        model,
        model.family.encode_prompts(model, prompts),
        model.family.encode_negative(model, 4),
        x_T,
        tr.schedule,
        flags,
        guidance=tr.cfg.sampler.guidance_scale,
    )
    f = image_encoder({"r": tr.reward})(model.family.decode(model, traj.finals[0]))
    pairs = [(i, j) for group in ((0, 1), (2, 3)) for i in group for j in group if i != j]
    by_hand = torch.stack([1 - f[i] @ f[j] for i, j in pairs]).mean()
    assert (by_hand < 1.0) and (by_hand > 1e-4)
    term = torch.autograd.grad(by_hand, tr.params)
    scale = max(float(g.abs().max()) for g in without)
    assert max(float(t.abs().max()) for t in term) * lam > 1e-3 * scale  # the term is not negligible here
    for got, base, extra in zip(with_term, without, term):
        torch.testing.assert_close(got, base - lam * extra if active else base, rtol=1e-4, atol=1e-6 * scale)


def test_the_diversity_reward_spreads_the_samples(tmp_path):
    """On the shipped toy world (its CLIP sees the shapes; a random one barely tells images apart)."""
    from pipeline.config import load_config
    from pipeline.train import QUICKSTART

    spreads = {}
    for lam in (0.0, 300.0):
        cfg = load_config(
            Config,
            QUICKSTART,
            [
                "rewards=[{name: clip_score, arch_config: pipeline/assets/toyworld/clip/toy-clip.json, "
                "checkpoint: pipeline/assets/toyworld/clip/toy-clip.safetensors}]",
                "plan.name=draft_k",
                "plan.k=1",
                "plan.samples_per_prompt=2",
                f"plan.diversity_coeff={lam}",
                "sampler.num_steps=4",
                "optim.lr=0.01",
                "optim.warmup_steps=1",
                "eval.images_per_prompt=4",
                "eval.max_prompts=3",
                f"train.output_dir={tmp_path}",
            ],
        )
        tr = build_trainer(cfg)
        for _ in range(10):
            train_step(tr)
        spreads[lam] = evaluate(tr)[0]["eval/feature_diversity"]
    assert spreads[300.0] > spreads[0.0] + 0.02, spreads


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"plan": {"diversity_coeff": 1.0}},
            "plan.samples_per_prompt: the diversity reward compares samples of the same prompt; set it >= 2 (got 1)",
        ),
        (
            {"plan": {"diversity_coeff": -1.0, "samples_per_prompt": 2}},
            "plan.diversity_coeff: must be a finite number >= 0, got -1.0",
        ),
        ({"plan": {"diversity_floor": 3.0}}, "plan.diversity_floor: a cosine distance in (0, 2], got 3.0"),
        (
            {"plan": {"samples_per_prompt": 3}},
            "plan.samples_per_prompt: train.batch_size=2 must hold whole groups of 3 samples of one prompt",
        ),
        (
            {"plan": {"diversity_coeff": 1.0, "samples_per_prompt": 2}},
            "plan.diversity_coeff: the diversity reward embeds the samples with a trained reward's image encoder",
        ),
    ],
)
def test_what_cannot_take_the_diversity_reward_is_refused(tiny_sd_dir, tmp_path, sections, message):
    with pytest.raises(ConfigError) as err:
        make_config(tiny_sd_dir, str(tmp_path), **sections)  # brightness and symmetry: no image encoder
    assert message in str(err.value)

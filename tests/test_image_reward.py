"""ImageReward on transformers' BLIP: the official key layout loads, scores equal the original forward,
the pixel gradient is right, and bad files stop before anything starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import shell_env
from image_reward_reference import ImageReward as ReferenceImageReward
from reward_factories import TINY_IMAGE_REWARD_ARCH, make_aesthetic_spec, make_image_reward_spec

from rewards.build import build_reward
from rewards.image_reward import CHECKPOINT_KEYS, MAX_LENGTH, ImageReward, map_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a painting of an ocean with clouds and birds, day time, low depth field effect", "a red cube on a table"]
CLIP_MEAN, CLIP_STD = (
    torch.tensor([0.48145466, 0.4578275, 0.40821073]),
    torch.tensor([0.26862954, 0.26130258, 0.27577711]),
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return make_image_reward_spec(str(tmp_path_factory.mktemp("image_reward")))


@pytest.fixture(scope="module")
def reference(spec) -> ReferenceImageReward:
    """The original module tree, loaded strictly from the same file."""
    from reward_factories import reference_image_reward

    with open(os.path.join(spec.processor, "vocab.txt"), encoding="utf-8") as f:
        model = reference_image_reward(vocab_size=len(f.read().split()), seed=1)  # other weights until loaded
    model.load_state_dict(torch.load(spec.checkpoint, weights_only=True), strict=True)
    return model.eval()


def reference_pixels(images: torch.Tensor) -> torch.Tensor:
    """The original tensor path: bicubic antialiased resize of the short side, centre crop, CLIP normalisation."""
    size = TINY_IMAGE_REWARD_ARCH["vision"]["image_size"]
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(images, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - CLIP_MEAN.view(1, 3, 1, 1)) / CLIP_STD.view(1, 3, 1, 1)


def test_the_official_layout_loads_and_scores_equal_the_original_forward(spec, reference):
    reward = build_reward([spec])
    assert isinstance(reward, ImageReward) and not reward.training
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    tokens = reward.tokenizer(
        PROMPTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    assert tokens["input_ids"].shape == (2, MAX_LENGTH) and (tokens["input_ids"][:, 0] == 2).all()  # [CLS] first
    assert tokens["attention_mask"][1].sum() < MAX_LENGTH  # the short prompt is padded
    with torch.no_grad():
        expected = reference.score(tokens["input_ids"], tokens["attention_mask"], reference_pixels(images))
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert expected.abs().max() > 0.05 and (expected[0] - expected[1]).abs() > 1e-3  # not a constant
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_every_official_tensor_is_mapped_or_dropped_by_the_table(spec, reference):
    official = reference.state_dict()
    mapped = map_checkpoint(official)
    model_keys = set(build_reward([spec]).model.state_dict())
    assert set(mapped) == model_keys
    dropped = {k for k in official if any(re.fullmatch(p, k) and t is None for p, t in CHECKPOINT_KEYS)}
    assert dropped == {
        "blip.text_encoder.embeddings.position_ids",
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
    }


def test_the_pixel_gradient_matches_finite_differences(spec):
    reward = build_reward([spec]).double()
    tokens = reward.tokenizer(
        PROMPTS[:1], padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )

    def score(images):  # the reward's own path in float64 (its public call returns float32)
        return reward.model(reward.preprocess(images), tokens["input_ids"], tokens["attention_mask"]).sum()

    gen = torch.Generator().manual_seed(1)
    images = (0.2 + 0.6 * torch.rand(1, 3, 40, 40, generator=gen, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(score(images), images)
    direction = torch.randn(images.shape, generator=gen, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        numeric = (score(images + eps * direction) - score(images - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum()
    assert analytic.abs() > 1e-4
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)
    float_images = images.detach().float().requires_grad_(True)
    build_reward([spec])(float_images, PROMPTS[:1]).sum().backward()  # the float32 call reaches the pixels too
    torch.testing.assert_close(float_images.grad.double(), grad, rtol=1e-3, atol=1e-5)


def train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.train", *overrides],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_files_exit_2_with_one_message_each_before_anything_starts(spec, tmp_path):
    not_image_reward = make_aesthetic_spec(str(tmp_path / "aesthetic")).checkpoint
    cases = [  # (checkpoint, processor, the message)
        (str(tmp_path / "ImageReward.pt"), spec.processor, "does not exist; expected the official ImageReward.pt"),
        (
            not_image_reward,
            spec.processor,
            "holds no blip.visual_encoder.* or blip.text_encoder.* or mlp.layers.* tensors",
        ),
        (spec.checkpoint, str(tmp_path), "has no vocab.txt; expected a bert-base-uncased tokeniser folder"),
    ]
    entries = ", ".join(
        f"{{name: image_reward, checkpoint: {checkpoint}, processor: {processor}, arch_config: {spec.arch_config}}}"
        for checkpoint, processor, _ in cases
    )
    result = train(f"eval.rewards=[{entries}]", f"train.output_dir={tmp_path / 'runs'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert "invalid config (3 problems)" in result.stderr, result.stderr
    for i, (_, _, message) in enumerate(cases):  # one line per bad entry, naming it
        (line,) = [line for line in result.stderr.splitlines() if f"eval.rewards.{i}." in line]
        assert message in line, result.stderr
    assert not os.path.exists(tmp_path / "runs"), "nothing may be written"


def test_image_reward_trains_in_a_weighted_mix_and_is_an_eval_metric(spec, tiny_sd_dir, tmp_path):
    from test_training import make_config

    from rewards.config import RewardSpec
    from trainers.loop import run

    cfg = make_config(tiny_sd_dir, str(tmp_path), train={"steps": 2}, eval={"every": 2})
    cfg = replace(
        cfg,
        rewards=[replace(spec, weight=0.5), RewardSpec(name="colourfulness", weight=2.0)],
        eval=replace(cfg.eval, rewards=[spec]),
    )
    result = run(cfg, run_dir=str(tmp_path / "run"))
    assert "image_reward" in result.held_out and "trained/image_reward" in result.held_out
    assert all(torch.isfinite(torch.tensor(v)) for v in result.held_out["image_reward"].values())


def test_the_score_command_prints_each_images_score(spec, tmp_path):
    """``python -m pipeline.score``, the README's check of downloaded weights, on two PNG files."""
    from PIL import Image

    images = torch.randint(0, 256, (2, 3, 40, 56), generator=torch.Generator().manual_seed(2)).float() / 255
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(paths[-1])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.score",
            "--reward",
            "image_reward",
            "--checkpoint",
            spec.checkpoint,
            "--processor",
            spec.processor,
            "--arch-config",
            spec.arch_config,
            "--prompt",
            PROMPTS[0],
            *paths,
        ],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [float(line.split()[0]) for line in result.stdout.splitlines()]
    expected = build_reward([spec])(images, PROMPTS[:1] * 2)
    torch.testing.assert_close(torch.tensor(printed), expected, atol=1e-4, rtol=0)
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.score",
            "--reward",
            "image_reward",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--processor",
            spec.processor,
            "--prompt",
            "x",
            paths[0],
        ],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "--checkpoint: " in missing.stderr and "does not exist" in missing.stderr

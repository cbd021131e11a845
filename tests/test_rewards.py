"""Reward models: tiny checkpoints written to disk and loaded back through ``build_reward``."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails fast

import pytest
import torch
from PIL import Image
from reward_factories import (
    TINY_AESTHETIC_ARCH,
    TINY_HPS_ARCH,
    TINY_OPEN_CLIP_CONFIG,
    make_aesthetic_spec,
    make_clip_score_spec,
    make_hps_spec,
    make_image_reward_spec,
    make_pickscore_spec,
    pixel_spec,
    write_open_clip_config,
    write_open_clip_weights,
)

from rewards.base import Reward, RewardLoadError, check_images
from rewards.build import REWARD_NAMES, build_reward
from rewards.combine import WeightedSum
from rewards.config import RewardSpec
from rewards.preprocess import resize_and_crop

PROMPTS = ["a red cube on a table", "a photo of a dog"]
PIXEL_NAMES = ("symmetry", "colourfulness", "sharpness", "brightness")


@pytest.fixture(scope="module")
def clip_tokenizer(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir)  # built once per session by conftest


@pytest.fixture(scope="module")
def specs(tmp_path_factory, clip_tokenizer) -> dict[str, RewardSpec]:
    root = tmp_path_factory.mktemp("rewards")
    built = {
        "hpsv2": make_hps_spec(str(root / "hps")),
        "clip_score": make_clip_score_spec(str(root / "clip_score")),
        "aesthetic": make_aesthetic_spec(str(root / "aesthetic")),
        "pickscore": make_pickscore_spec(str(root / "pickscore"), tokenizer=clip_tokenizer),
        "image_reward": make_image_reward_spec(str(root / "image_reward")),
    }
    return built | {name: pixel_spec(name) for name in PIXEL_NAMES}


def quantised_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Random images on the uint8 grid (k / 255), so PIL round trips are exact."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=gen).float() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


# ---------------------------------------------------------------- the reward protocol, every reward


def test_registry_covers_every_name(specs):
    assert set(specs) == set(REWARD_NAMES)


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_reward_scores_batch_and_differentiates(specs, name):
    reward = build_reward([specs[name]])
    images = quantised_images(size=48).requires_grad_(True)  # 48 px: exercises the resize path
    scores = reward(images, PROMPTS)
    assert isinstance(reward, Reward) and reward.name == name
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["hpsv2", "clip_score", "aesthetic", "pickscore", "image_reward"])
def test_network_rewards_are_frozen_and_stay_in_eval(specs, name):
    reward = build_reward([specs[name]])
    reward.train()
    params = list(reward.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not any(m.training for m in reward.modules())


def test_bf16_reward_returns_float32(specs):
    reward = build_reward([specs["hpsv2"]], dtype=torch.bfloat16)
    assert next(reward.parameters()).dtype == torch.bfloat16
    scores = reward(quantised_images(), PROMPTS)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


# ---------------------------------------------------------------- agreement with independent computations


def test_hps_matches_open_clip_reference(specs):
    import open_clip

    spec = specs["hpsv2"]
    images = quantised_images()
    ours = build_reward([spec])(images, PROMPTS)
    # Reference: open_clip's own loader, PIL transform and forward (which returns normalised features).
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_HPS_ARCH, pretrained=spec.checkpoint)
    pixels = torch.stack([preprocess(im) for im in to_pil(images)])
    with torch.no_grad():
        image_features, text_features, _ = model.eval()(pixels, open_clip.get_tokenizer(TINY_HPS_ARCH)(PROMPTS))
    reference = (image_features * text_features).sum(-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert ours[0] != ours[1]


def test_clip_score_is_100_times_cosine(specs):
    # Same config, seed and weights as the HPS fixture, so the cosines coincide.
    images = quantised_images()
    hps = build_reward([specs["hpsv2"]])(images, PROMPTS)
    clip_score = build_reward([specs["clip_score"]])(images, PROMPTS)
    torch.testing.assert_close(clip_score, 100 * hps, atol=1e-4, rtol=1e-5)


def test_aesthetic_matches_reference_and_ignores_prompts(specs):
    import open_clip

    spec = specs["aesthetic"]
    images = quantised_images()
    reward = build_reward([spec])
    ours = reward(images, PROMPTS)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_AESTHETIC_ARCH, pretrained=spec.clip_checkpoint)
    head = torch.load(spec.checkpoint, weights_only=True)
    with torch.no_grad():
        e = model.encode_image(torch.stack([preprocess(im) for im in to_pil(images)]), normalize=True)
        for i in (0, 2, 4, 6, 7):  # dropouts at 1, 3, 5 are inactive at inference
            e = e @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    torch.testing.assert_close(ours, e.squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reward(images, ["x", "completely different"]), ours)


def test_pickscore_preprocessing_matches_clip_processor(specs):
    from transformers import AutoProcessor

    images = quantised_images()
    reward = build_reward([specs["pickscore"]])
    processor = AutoProcessor.from_pretrained(specs["pickscore"].checkpoint)
    expected = processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(reward.preprocess(images), expected, atol=1e-6, rtol=1e-6)


def test_pickscore_matches_clip_model_logits(specs):
    from transformers import AutoModel, AutoProcessor

    folder = specs["pickscore"].checkpoint
    images = quantised_images()
    ours = build_reward([specs["pickscore"]])(images, PROMPTS)
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    inputs = processor(text=PROMPTS, images=to_pil(images), padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs).logits_per_image.diagonal()  # exp(τ) cos(image_i, text_i)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_resize_and_crop_takes_the_centre():
    images = torch.arange(2 * 3 * 64 * 96, dtype=torch.float32).view(2, 3, 64, 96)
    cropped = resize_and_crop(images, (64, 64))  # shorter side already 64: crop only
    torch.testing.assert_close(cropped, images[..., :, 16:80])
    assert resize_and_crop(images, (32, 32)).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- weighted sum


def test_weighted_sum_equals_sum_of_weighted_components(specs):
    terms = [replace(specs["hpsv2"], weight=2.0), pixel_spec("brightness", -0.5), pixel_spec("brightness", 3.0)]
    reward = build_reward(terms)
    images = quantised_images()
    components = reward.components(images, PROMPTS)
    assert list(components) == ["hpsv2", "brightness", "brightness_2"]
    singles = [build_reward([replace(s, weight=1.0)])(images, PROMPTS) for s in terms]
    expected = 2.0 * singles[0] - 0.5 * singles[1] + 3.0 * singles[2]
    torch.testing.assert_close(reward(images, PROMPTS), expected)
    torch.testing.assert_close(components["hpsv2"], singles[0])


def test_single_spec_weight_one_is_the_bare_reward_else_weighted():
    assert not isinstance(build_reward([pixel_spec("brightness")]), WeightedSum)
    reward = build_reward([pixel_spec("brightness", 2.0)])
    assert isinstance(reward, WeightedSum)
    images = torch.full((1, 3, 8, 8), 0.25)
    torch.testing.assert_close(reward(images, ["p"]), torch.tensor([0.5]))


# ---------------------------------------------------------------- pixel rewards on constructed images


def score(name: str, images: torch.Tensor) -> torch.Tensor:
    return build_reward([pixel_spec(name)])(images, [""] * images.shape[0])


def test_symmetry_prefers_mirror_symmetric_images():
    x = quantised_images(batch=1, size=32)
    symmetric = (x + x.flip(-1)) / 2
    assert score("symmetry", symmetric).item() == pytest.approx(0.0, abs=1e-7)
    assert score("symmetry", x).item() < -0.1
    left_white = torch.zeros(1, 3, 8, 8)
    left_white[..., :4] = 1.0
    assert score("symmetry", left_white).item() == pytest.approx(-1.0)


def test_brightness_is_rec601_luma():
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    torch.testing.assert_close(score("brightness", red), torch.tensor([0.299]))
    assert score("brightness", torch.ones(1, 3, 8, 8)).item() == pytest.approx(1.0)
    assert score("brightness", torch.zeros(1, 3, 8, 8)).item() == 0.0


def test_colourfulness_hasler_susstrunk():
    grey = torch.full((1, 3, 16, 16), 0.5)
    assert score("colourfulness", grey).item() < 1e-3
    red_green = torch.zeros(1, 3, 16, 16)
    red_green[:, 0, :, :8] = 1.0  # left half red, right half green
    red_green[:, 1, :, 8:] = 1.0
    # rg = ±1: μ 0, σ 1; yb = 0.5 everywhere: μ 0.5, σ 0  ->  √1 + 0.3 √0.25 = 1.15
    assert score("colourfulness", red_green).item() == pytest.approx(1.15, abs=1e-4)


def test_sharpness_prefers_detail_over_blur():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert score("sharpness", flat).item() == 0.0
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    assert score("sharpness", checker).item() == pytest.approx(16.0)
    noisy = quantised_images(batch=1, size=32)
    blurred = torch.nn.functional.avg_pool2d(noisy, 3, stride=1, padding=1, count_include_pad=False)
    assert score("sharpness", blurred).item() < 0.5 * score("sharpness", noisy).item()


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("images", "prompts", "needle"),
    [
        ([[0.5]], ["p"], "must be a torch.Tensor"),
        (torch.rand(3, 8, 8), ["p"], "got (3, 8, 8)"),
        (torch.rand(1, 4, 8, 8), ["p"], "(B, 3, H, W)"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), ["p"], "images.float() / 255"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, ["p"], "(x / 2 + 0.5).clamp(0, 1)"),
        (torch.full((1, 3, 8, 8), float("nan")), ["p"], "values in [0, 1]"),
        (torch.rand(2, 3, 8, 8), ["p"], "got 1 prompts for 2 images"),
        (torch.rand(1, 3, 8, 8), "p", "sequence of 1 strings"),
    ],
)
def test_check_images_rejects_bad_input(images, prompts, needle):
    with pytest.raises(ValueError) as info:
        check_images(images, prompts)
    assert needle in str(info.value)


def test_out_of_range_message_reports_min_and_max():
    images = torch.linspace(-0.5, 1.5, 3 * 16).view(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"min -0\.5 and max 1\.5"):
        build_reward([pixel_spec("brightness")])(images, ["p"])


def test_network_reward_checks_its_input(specs):
    reward = build_reward([specs["hpsv2"]])
    with pytest.raises(ValueError, match="got 1 prompts for 2 images"):
        reward(quantised_images(), ["only one"])


# ---------------------------------------------------------------- checkpoint errors


def test_missing_hps_checkpoint_names_the_path(tmp_path, specs):
    missing = str(tmp_path / "nowhere" / "HPS_v2.1_compressed.pt")
    spec = RewardSpec(name="hpsv2", checkpoint=missing, arch_config=specs["hpsv2"].arch_config)
    with pytest.raises(RewardLoadError) as info:
        build_reward([spec])
    assert missing in str(info.value) and "HPS_v2.1_compressed.pt" in str(info.value)


def test_mismatched_hps_tensors_name_keys_and_arch(tmp_path, specs):
    other = write_open_clip_config(str(tmp_path), "tiny-other", {**TINY_OPEN_CLIP_CONFIG, "embed_dim": 16})
    wrong = write_open_clip_weights(other, str(tmp_path / "wrong.pt"))
    spec = RewardSpec(name="hpsv2", checkpoint=wrong, arch_config=specs["hpsv2"].arch_config)
    with pytest.raises(RewardLoadError) as info:
        build_reward([spec])
    message = str(info.value)
    assert TINY_HPS_ARCH in message and "visual.proj" in message and "text_projection" in message


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, specs):
    state = torch.load(specs["hpsv2"].checkpoint, weights_only=True)
    path = str(tmp_path / "with_args.pt")
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, path)
    spec = RewardSpec(name="hpsv2", checkpoint=path, arch_config=specs["hpsv2"].arch_config)
    with pytest.raises(RewardLoadError, match="weights_only"):
        build_reward([spec])


def test_arch_config_without_model_keys_is_rejected(tmp_path, specs):
    bad = tmp_path / "broken-arch.json"
    bad.write_text('{"embed_dim": 32}')
    spec = RewardSpec(name="hpsv2", checkpoint=specs["hpsv2"].checkpoint, arch_config=str(bad))
    with pytest.raises(RewardLoadError, match="vision_cfg"):
        build_reward([spec])


def test_aesthetic_head_errors(tmp_path, specs):
    spec = specs["aesthetic"]
    missing = str(tmp_path / "absent.pth")
    with pytest.raises(RewardLoadError, match="absent.pth"):
        build_reward([replace(spec, checkpoint=missing)])
    head = torch.load(spec.checkpoint, weights_only=True)
    head["layers.0.weight"] = head["layers.0.weight"][:, :16]  # a head for 16-d embeddings
    del head["layers.7.bias"]
    torch.save(head, tmp_path / "wrong.pth")
    with pytest.raises(RewardLoadError) as info:
        build_reward([replace(spec, checkpoint=str(tmp_path / "wrong.pth"))])
    assert "layers.0.weight" in str(info.value) and "layers.7.bias" in str(info.value)


def test_pickscore_folder_errors(tmp_path, specs, clip_tokenizer):
    from safetensors.torch import load_file, save_file

    missing = str(tmp_path / "no_such_model")
    with pytest.raises(RewardLoadError, match="no_such_model"):
        build_reward([RewardSpec(name="pickscore", checkpoint=missing)])
    spec = make_pickscore_spec(str(tmp_path / "pick"), tokenizer=clip_tokenizer)
    weights = os.path.join(spec.checkpoint, "model.safetensors")
    state = load_file(weights)
    del state["visual_projection.weight"]
    state["text_projection.weight"] = state["text_projection.weight"][:5]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(RewardLoadError) as info:
        build_reward([spec])
    assert "visual_projection.weight" in str(info.value) and "text_projection.weight" in str(info.value)


# ---------------------------------------------------------------- spec validation


def test_unknown_reward_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_reward([RewardSpec(name="imagereward")])
    assert all(name in str(info.value) for name in REWARD_NAMES)
    with pytest.raises(ValueError, match="at least one"):
        build_reward([])


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (RewardSpec(name="hpsv2"), "checkpoint: hpsv2 needs checkpoint (the HPS_v2.1_compressed.pt"),
        (RewardSpec(name="aesthetic", checkpoint="head.pth"), "clip_checkpoint: aesthetic needs clip_checkpoint"),
        (RewardSpec(name="clip_score", checkpoint="w.pt"), "arch: clip_score needs arch"),
        (RewardSpec(name="brightness", checkpoint="w.pt"), "checkpoint: not used by brightness"),
        (RewardSpec(name="pickscore", checkpoint="f", arch="ViT-H-14"), "arch: not used by pickscore"),
        (RewardSpec(name="symmetry", weight=math.nan), "weight: must be a finite number"),
        (RewardSpec(name="clip_score", checkpoint="w.pt", arch="hf-hub:laion/x"), "arch: schema prefixes"),
        (
            RewardSpec(name="hpsv2", checkpoint="w.pt", arch="ViT-H-14", arch_config="cfg/tiny.json"),
            "arch: 'ViT-H-14' differs from the architecture 'tiny'",
        ),
    ],
)
def test_validate_reports_field_problems(spec, problem):
    problems = spec.validate()
    assert any(p.startswith(problem) for p in problems), problems
    with pytest.raises(ValueError, match=problem.split(":")[0]):
        build_reward([spec])


def test_valid_specs_have_no_problems(specs):
    assert all(spec.validate() == [] for spec in specs.values())
    assert RewardSpec(name="hpsv2", checkpoint="HPS_v2.1_compressed.pt").resolved_arch() == "ViT-H-14"
    assert RewardSpec(name="aesthetic", checkpoint="h", clip_checkpoint="c").resolved_arch() == "ViT-L-14-quickgelu"


def test_catalog_lists_every_descriptor_the_reward_modules_export():
    """A reward is one module with a descriptor plus one catalog line: a descriptor left out of the catalog
    would be a reward no config can name."""
    import importlib
    import pkgutil

    import rewards
    from rewards.catalog import DESCRIPTORS
    from rewards.descriptor import RewardDescriptor

    exported = set()
    for info in pkgutil.iter_modules(rewards.__path__):
        for value in vars(importlib.import_module(f"rewards.{info.name}")).values():
            values = value if isinstance(value, tuple) else (value,)
            exported |= {v.name for v in values if isinstance(v, RewardDescriptor)}
    assert exported == {d.name for d in DESCRIPTORS} == set(REWARD_NAMES)

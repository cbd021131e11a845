"""Shapes world: the generator, the train/held-out split, the prompt files, and the shipped assets."""

from __future__ import annotations

import pytest
import torch

from pipeline.toyworld import shapes
from pipeline.toyworld.measure import colour_adherence, distances_by_adherence, prompt_checks, read_colours, read_shape
from pipeline.toyworld.shapes import (
    ASSETS_DIR,
    BACKGROUND_COLOURS,
    OBJECT_COLOURS,
    SHAPES,
    Combo,
    all_combos,
    caption,
    held_out_combos,
    parse_caption,
    render,
    sample_batch,
    train_combos,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_render_is_deterministic_for_a_seed():
    combo = Combo("red", "triangle", "black")
    first, again, other = render(combo, _gen(3)), render(combo, _gen(3)), render(combo, _gen(4))
    assert first.shape == (3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sample_batch_is_deterministic_and_in_range():
    images, captions = sample_batch(16, train_combos(), _gen(0))
    images2, captions2 = sample_batch(16, train_combos(), _gen(0))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, images2) and captions == captions2
    assert len(set(captions)) > 1


@pytest.mark.parametrize("combo", all_combos(), ids=caption)
def test_drawn_colours_match_the_caption(combo):
    images = torch.stack([render(combo, _gen(seed)) for seed in range(4)]).float() / 255
    obj, bg = torch.tensor(OBJECT_COLOURS[combo.colour]), torch.tensor(BACKGROUND_COLOURS[combo.background])
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (4, 3, 4)
    assert (corners - bg[None, :, None]).abs().max() < 0.01
    if combo.shape != "triangle":  # circles and squares always cover the central 4x4 pixels
        centre = images[:, :, 14:18, 14:18].mean(dim=(2, 3))  # (4, 3)
        assert (centre - obj).abs().max() < 0.01
    assert all(read_colours(img) == read_colours(images[0]) for img in images)
    assert read_colours(images[0]).colour == combo.colour
    assert read_colours(images[0]).background == combo.background


def test_colour_adherence_detects_wrong_captions():
    combos = all_combos()
    images = torch.stack([render(c, _gen(i)) for i, c in enumerate(combos)]).float() / 255
    assert colour_adherence(images, combos) == {"object": 1.0, "background": 1.0, "both": 1.0}
    assert colour_adherence(images.flip(0), combos)["both"] < 0.2


def test_read_shape_names_every_drawn_shape():
    images = [(render(c, _gen(100 * i + seed)), c) for i, c in enumerate(all_combos()) for seed in range(3)]
    assert [read_shape(image.float() / 255) for image, _ in images] == [c.shape for _, c in images]
    assert read_shape(torch.full((3, 32, 32), 0.5)) is None


def test_following_a_prompt_needs_both_colours_and_the_shape():
    combos = held_out_combos()
    images = torch.stack([render(c, _gen(i)) for i, c in enumerate(combos)]).float() / 255
    assert prompt_checks(images, combos)["follows"].all()
    other_shape = prompt_checks(
        images, [Combo(c.colour, SHAPES[(SHAPES.index(c.shape) + 1) % 3], c.background) for c in combos]
    )
    assert other_shape["both"].all() and not other_shape["shape"].any() and not other_shape["follows"].any()
    other_colour = prompt_checks(images, [Combo(c.background, c.shape, c.colour) for c in combos])
    assert other_colour["shape"].all() and not other_colour["follows"].any()


def test_feature_distances_split_by_adherence():
    # Two prompts x 3 samples; unit embeddings on the axes, so a pair's distance is 0 (same axis) or 1.
    axes = torch.eye(4)
    features = torch.stack([axes[0], axes[0], axes[1], axes[2], axes[3], axes[3]])
    follows = torch.tensor([True, True, False, True, False, False])
    split = distances_by_adherence(features, follows, 3)
    # prompt 0: (0,1) both, d 0; (0,2), (1,2) one, d 1. prompt 1: (3,4), (3,5) one, d 1; (4,5) neither, d 0.
    assert split == {"both": 0.0, "pairs_both": 1, "one": 1.0, "pairs_one": 4, "neither": 0.0, "pairs_neither": 1}
    from trainers.evaluation import feature_diversity

    pooled = sum(split[k] * split[f"pairs_{k}"] for k in ("both", "one", "neither")) / 6
    assert pooled == pytest.approx(float(feature_diversity(features, 3).mean()))
    assert distances_by_adherence(features, torch.ones(6, dtype=torch.bool), 3)["neither"] is None


def test_report_splits_the_held_out_diversity_by_adherence(tmp_path):
    from argparse import Namespace

    from pipeline.toyworld import report

    args = Namespace(
        sd=str(ASSETS_DIR / "sd"),
        weights=None,
        clip=str(ASSETS_DIR / "clip"),
        n=3,
        n_train=0,
        steps=4,
        guidance=7.5,
        one_step=None,
        seed=1234,
        threads=2,
        grid=str(tmp_path / "grid.png"),
    )
    metrics = report.run(args)["heldout"]
    pairs = {k: metrics[f"feature_distance_pairs_{k}"] for k in ("both", "one", "neither")}
    assert sum(pairs.values()) == 9 * 3
    pooled = sum(metrics[f"feature_distance_{k}"] * n for k, n in pairs.items() if n) / 27
    assert pooled == pytest.approx(metrics["feature_diversity"], rel=1e-5)
    assert 0 < metrics["feature_diversity_real"] < metrics["feature_diversity"]
    assert metrics["reward_following"] > metrics["reward_not_following"]


def test_split_holds_out_combos_but_no_words():
    train, held = train_combos(), held_out_combos()
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(all_combos()) and len(all_combos()) == 66
    assert 0.10 <= len(held) / len(all_combos()) <= 0.15
    assert {c.colour for c in train} == set(OBJECT_COLOURS)
    assert {c.shape for c in train} == set(SHAPES)
    assert {c.background for c in train} == set(BACKGROUND_COLOURS)
    assert all(c.colour != c.background for c in all_combos())


def test_caption_round_trips_and_rejects_others():
    assert caption(Combo("red", "circle", "gray")) == "a red circle on a gray background"
    assert all(parse_caption(caption(c)) == c for c in all_combos())
    with pytest.raises(ValueError, match="no valid combo"):
        parse_caption("a blue circle on a blue background")
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        parse_caption("a photo of a cat")


def test_prompt_files_on_disk_equal_the_generator(tmp_path):
    written = shapes.write_prompt_files(tmp_path)
    for split, path in written.items():
        shipped = ASSETS_DIR / shapes.PROMPT_FILES[split]
        assert shipped.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), f"regenerate {shipped}"
    lines = (ASSETS_DIR / "prompts_heldout.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [caption(c) for c in held_out_combos()]


def test_shipped_pipeline_loads_and_generates_32px_images():
    from trainers.config import ModelConfig
    from trainers.engine import generate
    from trainers.models import load_model
    from trainers.samplers.ddim import ddim_schedule

    model = load_model(ModelConfig(path=str(ASSETS_DIR / "sd"), device="cpu"))
    assert {p.dtype for p in model.denoiser.parameters()} == {torch.float32}
    assert model.resolution == 32 and model.latent_shape == (4, 16, 16)
    combos = [c for c in train_combos()[::6] for _ in range(2)]  # 10 prompts x 2 samples
    x_T = torch.randn((len(combos), *model.latent_shape), generator=_gen(0))
    images = generate(model, [caption(c) for c in combos], x_T, ddim_schedule(model.scheduler, 10), guidance=7.5)
    assert images.shape == (len(combos), 3, 32, 32)
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    # The shipped model reads 0.70-0.75 here over noise seeds; chance is 1/25.
    assert colour_adherence(images, combos)["both"] >= 0.5


def test_shipped_pipeline_runs_in_plain_diffusers_in_its_default_dtype():
    """``from_pretrained`` with no dtype: every component must come back in one dtype (transformers takes the
    text encoder's from its config, diffusers loads the UNet and VAE as fp32) and the pipeline must run."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(ASSETS_DIR / "sd"), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.float32}, name
    images = pipe(
        ["a red circle on a blue background"], num_inference_steps=2, output_type="pt", generator=_gen(0)
    ).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_shipped_reward_prefers_matching_captions_on_held_out_images():
    from pipeline.toyworld.build_reward import load_shipped_reward

    reward = load_shipped_reward(str(ASSETS_DIR / "clip"))
    combos = held_out_combos()
    images = torch.stack([render(c, _gen(i)) for i, c in enumerate(combos)]).float() / 255
    # Mismatches change one word at a time: the colour, the shape, or the background.
    swaps = [
        Combo(next(k for k in OBJECT_COLOURS if k not in (c.colour, c.background)), c.shape, c.background)
        for c in combos
    ]
    swaps += [Combo(c.colour, SHAPES[(SHAPES.index(c.shape) + 1) % 3], c.background) for c in combos]
    swaps += [
        Combo(c.colour, c.shape, next(k for k in BACKGROUND_COLOURS if k not in (c.colour, c.background)))
        for c in combos
    ]
    with torch.no_grad():
        matched = reward(images, [caption(c) for c in combos])  # (9,)
        mismatched = reward(images.repeat(3, 1, 1, 1), [caption(c) for c in swaps]).view(3, -1)  # (3, 9)
    assert matched.shape == (len(combos),)
    assert matched.mean() > mismatched.mean() + 5  # scores are 100 * cosine
    assert (matched > mismatched).float().mean() >= 0.85


def test_audit_writes_table_plot_and_the_data_reference(tmp_path):
    from pipeline.toyworld import audit

    rows = audit.main(
        ["--out", str(tmp_path), "--n", "3", "--steps", "4", "--target-gain", "5", "--target-diversity", "0.3"]
    )
    assert set(rows) == {"base", "data"}
    assert rows["data"]["follows"] == 1.0 and rows["data"]["feature_distance_one"] is None
    assert rows["data"]["feature_diversity"] < rows["base"]["feature_diversity"]
    assert {p.name for p in tmp_path.iterdir()} == {"audit.json", "audit.md", "audit.png"}
    assert (tmp_path / "audit.md").read_text().count("\n| ") == 2  # base and data under the header


def test_audit_refuses_weights_that_are_not_a_folder(tmp_path, capsys):
    from pipeline.toyworld import audit

    with pytest.raises(SystemExit) as stop:
        audit.parse_args(["tuned=" + str(tmp_path / "missing")])
    assert stop.value.code == 2
    assert "NAME=FOLDER" in capsys.readouterr().err

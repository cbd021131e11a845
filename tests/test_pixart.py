"""The PixArt-α family: sampling with gradients off equals ``PixArtAlphaPipeline`` with a DDIM scheduler (T5
with its attention mask, learned sigma), and a LoRA saved by the family loads in plain peft + diffusers
and reproduces the tuned images."""

from __future__ import annotations

import pytest
import torch
from test_models import PROMPTS, ddim_pipeline_images, engine_images, noise, tuned_by_a_random_lora

from trainers.config import ModelConfig, TrainableConfig
from trainers.models import load_model, load_trained, make_trainable, save_trained


def pipeline_images(model, folder, x_T, steps, guidance, eta, lora_dir=None):
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        from peft import PeftModel

        pipe.transformer = PeftModel.from_pretrained(pipe.transformer, lora_dir)
    side = model.resolution
    return ddim_pipeline_images(
        pipe,
        model.scheduler.config,
        x_T,
        steps,
        guidance,
        eta,
        height=side,
        width=side,
        use_resolution_binning=False,
        clean_caption=False,
    )


@pytest.mark.parametrize("steps,guidance,eta", [(4, 4.5, 0.0), (3, 4.5, 1.0), (3, 1.0, 0.0)])
def test_sampling_matches_the_pixart_pipeline(tiny_pixart_dir, steps, guidance, eta):
    model = load_model(ModelConfig(path=tiny_pixart_dir, device="cpu"))
    assert model.family.name == "pixart" and model.denoiser.config.out_channels == 8
    assert not model.scheduler.config.clip_sample, "DDIM must not clip latents the pipeline's scheduler leaves alone"
    x_T = noise(model)
    got = engine_images(model, x_T, steps, guidance, eta)
    want = pipeline_images(model, tiny_pixart_dir, x_T, steps, guidance, eta)
    assert got.shape == want.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_the_1024_px_layout_is_conditioned_on_resolution_as_the_pipeline_does(tmp_path):
    from pixart_factories import build_tiny_pixart

    folder = build_tiny_pixart(str(tmp_path / "ms"), sample_size=128)  # PixArt-XL-2-1024-MS's sample size
    model = load_model(ModelConfig(path=folder, device="cpu"))
    assert model.denoiser.use_additional_conditions and model.resolution == 256
    cond = model.family.encode_prompts(model, PROMPTS)
    assert (
        cond.added["resolution"].tolist() == [[256.0, 256.0]] * 2 and cond.added["aspect_ratio"].tolist() == [[1.0]] * 2
    )
    x_T = noise(model)
    got = engine_images(model, x_T, 1, 1.0, 0.0)  # one step without guidance: 4096 tokens a call on CPU
    want = pipeline_images(model, folder, x_T, 1, 1.0, 0.0)
    assert got.shape == want.shape == (2, 3, 256, 256)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_the_mask_and_lowercasing_reach_the_transformer(tiny_pixart_dir):
    model = load_model(ModelConfig(path=tiny_pixart_dir, device="cpu"))
    cond = model.family.encode_prompts(model, ["A Green Square", "a green square"])
    mask = cond.added["encoder_attention_mask"]
    assert cond.hidden_states.shape[:2] == mask.shape == (2, 120)
    assert 0 < mask[0].sum() < 120 and torch.equal(mask[0], mask[1])
    torch.testing.assert_close(cond.hidden_states[0], cond.hidden_states[1])
    (negative,) = model.family.encode_negative(model, 1).added.values()
    assert negative.sum() == 1, "the empty prompt is one </s> token"


def test_pixart_lora_loads_in_plain_peft_and_through_load_trained(tiny_pixart_dir, tmp_path):
    model = load_model(ModelConfig(path=tiny_pixart_dir, device="cpu"))
    cfg = TrainableConfig(rank=4, alpha=8.0)
    x_T, tuned = tuned_by_a_random_lora(model, cfg, 3, 4.5, scale=0.3)
    lora = str(tmp_path / "lora")
    save_trained(model, cfg, lora)
    reloaded = pipeline_images(model, tiny_pixart_dir, x_T, 3, 4.5, 0.0, lora_dir=lora)
    torch.testing.assert_close(reloaded, tuned, rtol=0, atol=2e-5)

    fresh = load_model(ModelConfig(path=tiny_pixart_dir, device="cpu"))
    load_trained(fresh, lora)
    torch.testing.assert_close(engine_images(fresh, x_T, 3, 4.5, 0.0), tuned, rtol=0, atol=2e-5)


def test_preflight_reads_pixart_folders(tiny_pixart_dir, tiny_sd_dir, tmp_path):
    from pipeline.preflight import model_problems, weights_problems
    from trainers.models import pair_problems

    assert model_problems("model.path", tiny_pixart_dir, "auto") == []
    (problem,) = model_problems("model.path", tiny_pixart_dir, "sdxl")
    assert "PixArtAlphaPipeline; set model.family=auto (or pixart)" in problem
    (problem,) = pair_problems(tiny_sd_dir, tiny_pixart_dir)
    assert "is a PixArtAlphaPipeline but the generator" in problem

    model = load_model(ModelConfig(path=tiny_pixart_dir, device="cpu"))
    make_trainable(model, TrainableConfig(rank=2))
    save_trained(model, TrainableConfig(rank=2), str(tmp_path / "lora"))
    assert weights_problems("generate.weights", str(tmp_path / "lora"), tiny_pixart_dir) == []
    (problem,) = weights_problems("generate.weights", str(tmp_path / "lora"), tiny_sd_dir)
    assert "does not fit the base model" in problem and "which this model does not have" in problem

"""Loading and saving: the engine reproduces diffusers' pipeline, and saved weights reload in plain diffusers."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from trainers.config import ModelConfig, TrainableConfig
from trainers.engine import generate
from trainers.models import load_model, load_trained, make_trainable, save_trained

PROMPTS = ["a red circle on a blue background", "a green square"]


def ddim_pipeline_images(pipe, scheduler_config, x_T, steps, guidance, eta, **call):
    """A diffusers pipeline's own images of PROMPTS from ``x_T``, with DDIM on ``scheduler_config``."""
    pipe.scheduler = DDIMScheduler.from_config(scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPTS,
        latents=x_T.clone(),
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=eta,
        output_type="pt",
        generator=torch.Generator().manual_seed(1),
        **call,
    ).images


def pipeline_images(folder, x_T, steps, guidance, eta, lora_dir=None, unet=None, dtype=torch.float32):
    extra = {"unet": unet} if unet else {}
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype, **extra)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    return ddim_pipeline_images(pipe, pipe.scheduler.config, x_T, steps, guidance, eta)


def engine_images(model, x_T, steps, guidance, eta):
    return generate(
        model,
        PROMPTS,
        x_T.clone(),
        model.family.schedule(model, steps),
        guidance=guidance,
        eta=eta,
        gen=torch.Generator().manual_seed(1),
    )


def noise(model):
    return torch.randn(len(PROMPTS), *model.latent_shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps,guidance,eta", [(5, 7.5, 0.0), (4, 7.5, 1.0), (3, 1.0, 0.0), (10, 4.0, 0.3)])
def test_sampling_matches_diffusers_pipeline(tiny_sd_dir, steps, guidance, eta):
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    x_T = noise(model)
    want = pipeline_images(tiny_sd_dir, x_T, steps, guidance, eta)
    got = engine_images(model, x_T, steps, guidance, eta)
    assert got.shape == want.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_v_prediction_model_matches_pipeline(tmp_path, clip_tokenizer_dir):
    from sd_factories import build_tiny_sd

    folder = build_tiny_sd(str(tmp_path / "v"), clip_tokenizer_dir, prediction_type="v_prediction")
    model = load_model(ModelConfig(path=folder, device="cpu"))
    x_T = noise(model)
    torch.testing.assert_close(
        engine_images(model, x_T, 4, 5.0, 0.0), pipeline_images(folder, x_T, 4, 5.0, 0.0), rtol=0, atol=2e-5
    )


def _perturb(params, seed=0, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def tuned_by_a_random_lora(model, cfg, steps, guidance, scale):
    """``(x_T, images)``: the model's images after a random LoRA perturbation, which must change them."""
    x_T = noise(model)
    base = engine_images(model, x_T, steps, guidance, 0.0)
    _perturb(make_trainable(model, cfg), scale=scale)
    tuned = engine_images(model, x_T, steps, guidance, 0.0)
    assert (tuned - base).abs().max() > 1e-3, "the perturbed LoRA must change the images"
    return x_T, tuned


def test_lora_saved_in_diffusers_format_reproduces_tuned_images(tiny_sd_dir, tmp_path):
    """A plain pipeline plus load_lora_weights(dir) gives the tuned model's images (alpha != rank too)."""
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    cfg = TrainableConfig(rank=4, alpha=8.0, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    x_T, tuned = tuned_by_a_random_lora(model, cfg, 4, 7.5, scale=0.1)
    save_trained(model, cfg, str(tmp_path / "lora"))
    assert os.path.isfile(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    reloaded = pipeline_images(tiny_sd_dir, x_T, 4, 7.5, 0.0, lora_dir=str(tmp_path / "lora"))
    torch.testing.assert_close(reloaded, tuned, rtol=0, atol=2e-5)
    ours = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    load_trained(ours, str(tmp_path / "lora"))
    torch.testing.assert_close(engine_images(ours, x_T, 4, 7.5, 0.0), tuned, rtol=0, atol=2e-5)


def test_full_finetune_saved_with_save_pretrained(tiny_sd_dir, tmp_path):
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    cfg = TrainableConfig(kind="full")
    _perturb(make_trainable(model, cfg))
    x_T = noise(model)
    tuned = engine_images(model, x_T, 4, 7.5, 0.0)
    save_trained(model, cfg, str(tmp_path / "full"))
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "full" / "unet"))
    torch.testing.assert_close(pipeline_images(tiny_sd_dir, x_T, 4, 7.5, 0.0, unet=unet), tuned, rtol=0, atol=2e-5)
    ours = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    load_trained(ours, str(tmp_path / "full"))
    torch.testing.assert_close(engine_images(ours, x_T, 4, 7.5, 0.0), tuned, rtol=0, atol=2e-5)


def test_unknown_target_modules_fail_clearly(tiny_sd_dir):
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    with pytest.raises(ValueError, match="target_modules"):
        make_trainable(model, TrainableConfig(target_modules=("no_such_layer",)))


def test_missing_model_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist.*save_pretrained"):
        load_model(ModelConfig(path=str(tmp_path / "nowhere"), device="cpu"))
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        load_model(ModelConfig(path=str(tmp_path), device="cpu"))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_keeps_trained_weights_fp32(tiny_sd_dir, dtype):
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu", dtype=dtype))
    params = make_trainable(model, TrainableConfig())
    assert all(p.dtype == torch.float32 for p in params)
    assert model.vae.dtype != torch.float32

"""The SDXL family: sampling with gradients off equals ``StableDiffusionXLPipeline`` with a DDIM scheduler
(zeros for the unconditional branch, pooled embeddings and time ids), and a LoRA saved by the family loads
in plain diffusers and reproduces the tuned images."""

from __future__ import annotations

import pytest
import torch
from test_models import ddim_pipeline_images, engine_images, noise, tuned_by_a_random_lora

from trainers.config import ModelConfig, TrainableConfig
from trainers.models import load_model, make_trainable, save_trained


def pipeline_images(model, folder, x_T, steps, guidance, eta, lora_dir=None):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    return ddim_pipeline_images(pipe, model.scheduler.config, x_T, steps, guidance, eta)


@pytest.mark.parametrize("steps,guidance,eta", [(4, 5.0, 0.0), (3, 5.0, 1.0), (3, 1.0, 0.0)])
def test_sampling_matches_the_sdxl_pipeline(tiny_sdxl_dir, steps, guidance, eta):
    model = load_model(ModelConfig(path=tiny_sdxl_dir, device="cpu"))
    assert model.family.name == "sdxl" and model.pipeline_config["force_zeros_for_empty_prompt"]
    x_T = noise(model)
    got = engine_images(model, x_T, steps, guidance, eta)
    want = pipeline_images(model, tiny_sdxl_dir, x_T, steps, guidance, eta)
    assert got.shape == want.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_sdxl_lora_loads_in_plain_diffusers(tiny_sdxl_dir, tmp_path):
    model = load_model(ModelConfig(path=tiny_sdxl_dir, device="cpu"))
    cfg = TrainableConfig(rank=4, alpha=8.0)
    x_T, tuned = tuned_by_a_random_lora(model, cfg, 3, 5.0, scale=0.3)
    save_trained(model, cfg, str(tmp_path / "lora"))
    reloaded = pipeline_images(model, tiny_sdxl_dir, x_T, 3, 5.0, 0.0, lora_dir=str(tmp_path / "lora"))
    torch.testing.assert_close(reloaded, tuned, rtol=0, atol=2e-5)


def test_unsupported_or_mismatched_pipelines_are_preflight_errors(tiny_sdxl_dir, tiny_sd_dir, tmp_path):
    import json

    from pipeline.preflight import model_problems
    from trainers.models import pair_problems

    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    (problem,) = model_problems("model.path", str(qwen))
    assert "holds a QwenImagePipeline, which no model family loads" in problem
    assert (
        "StableDiffusionPipeline (sd), StableDiffusionXLPipeline (sdxl)" in problem and "FluxPipeline (flux)" in problem
    )
    (problem,) = model_problems("model.path", tiny_sdxl_dir, "sd")
    assert (
        "model.family='sd' but" in problem and "StableDiffusionXLPipeline; set model.family=auto (or sdxl)" in problem
    )
    assert model_problems("model.path", tiny_sdxl_dir, "auto") == model_problems("model.path", tiny_sd_dir, "sd") == []
    (problem,) = pair_problems(tiny_sd_dir, tiny_sdxl_dir)
    assert "is a StableDiffusionXLPipeline but the generator" in problem and "is a StableDiffusionPipeline" in problem


def test_an_sdxl_lora_on_an_sd_base_stops_before_loading(tiny_sdxl_dir, tiny_sd_dir, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.generate import check, parse_args

    model = load_model(ModelConfig(path=tiny_sdxl_dir, device="cpu"))
    make_trainable(model, TrainableConfig(rank=2))
    save_trained(model, TrainableConfig(rank=2), str(tmp_path / "lora"))
    check(parse_args(["--model", tiny_sdxl_dir, "--weights", str(tmp_path / "lora"), "--prompt", "a red circle"]))
    with pytest.raises(ConfigError) as err:
        check(parse_args(["--model", tiny_sd_dir, "--weights", str(tmp_path / "lora"), "--prompt", "a red circle"]))
    (problem,) = err.value.problems
    assert problem.startswith(f"--weights: {str(tmp_path / 'lora')!r} does not fit the base model {tiny_sd_dir!r}")
    assert "has shape" in problem and "give the base model the weights were trained on" in problem

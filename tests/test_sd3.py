"""The SD3 family and the flow-matching sampler: the sigmas equal ``FlowMatchEulerDiscreteScheduler``'s, sampling
with gradients off equals ``StableDiffusion3Pipeline`` (static and dynamic shifting, guidance on and off), a
LoRA trained for 2 steps loads in plain diffusers and reproduces ``pipeline.generate``, and a scheduler option
the sampler does not reproduce stops the command line with status 2."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_cli import cli
from test_models import PROMPTS, engine_images, noise
from torchvision.io import read_image

from trainers.config import ModelConfig
from trainers.families.sd3 import LORA_TARGETS
from trainers.models import load_model
from trainers.samplers.flow import flow_schedule


def pipeline_images(folder, x_T, steps, guidance, lora_dir=None):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    pipe.set_progress_bar_config(disable=True)
    side = 2 * x_T.shape[-1]  # the VAE's downscaling
    return pipe(
        PROMPTS,
        latents=x_T.clone(),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=side,
        width=side,
        output_type="pt",
    ).images


SCHEDULERS = [
    dict(shift=3.0),
    dict(shift=1.0),
    dict(shift=3.0, shift_terminal=0.05),
    dict(use_dynamic_shifting=True),
    dict(use_dynamic_shifting=True, time_shift_type="linear"),
    dict(use_dynamic_shifting=True, base_shift=0.3, max_shift=1.5, max_image_seq_len=1024),
]


@pytest.mark.parametrize("options", SCHEDULERS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_sigmas_equal_the_schedulers(options):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(**options)
    c = scheduler.config
    for steps in (1, 2, 3, 10, 28, 50)[1 if c.shift_terminal else 0 :]:  # diffusers' one shift_terminal step is 0/0
        for tokens in (64, 1024, 4096):  # latent patches: 128 px ... SD3.5's 1024 px
            mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
            scheduler.set_timesteps(steps, mu=mu if c.use_dynamic_shifting else None)
            got = flow_schedule(c, steps, tokens)
            assert got.sigmas.dtype == got.timesteps.dtype == torch.float32
            torch.testing.assert_close(got.sigmas, scheduler.sigmas, rtol=0, atol=1e-7)
            torch.testing.assert_close(got.timesteps, scheduler.timesteps, rtol=0, atol=1e-4)
            assert got.sigmas[-1] == 0


@pytest.mark.parametrize(
    "dynamic,steps,guidance",
    [(False, 4, 5.0), (False, 3, 1.0), (True, 3, 5.0), (True, 5, 1.0)],
    ids=["static-cfg", "static", "dynamic-cfg", "dynamic"],
)
def test_sampling_matches_the_sd3_pipeline(tiny_sd3_dir, clip_tokenizer_dir, tmp_path, dynamic, steps, guidance):
    from sd3_factories import build_tiny_sd3

    folder = (
        build_tiny_sd3(str(tmp_path / "dynamic"), clip_tokenizer_dir, dynamic_shifting=True)
        if dynamic
        else tiny_sd3_dir
    )
    model = load_model(ModelConfig(path=folder, device="cpu"))
    assert model.family.name == "sd3" and model.scheduler.config.use_dynamic_shifting == dynamic
    x_T = noise(model)
    got = engine_images(model, x_T, steps, guidance, 0.0)
    want = pipeline_images(folder, x_T, steps, guidance)
    assert got.shape == want.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    other = engine_images(model, x_T, steps, 1.0 if guidance > 1 else 5.0, 0.0)
    assert (other - got).abs().max() > 1e-2, "guidance must change the images, or the comparison proves little"


def test_the_conditioning_is_laid_out_as_the_pipeline_does(tiny_sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    model = load_model(ModelConfig(path=tiny_sd3_dir, device="cpu"))
    cond = model.family.encode_prompts(model, PROMPTS)
    assert cond.hidden_states.shape == (2, 77 + 256, 48) and cond.added["pooled_projections"].shape == (2, 32)
    assert cond.hidden_states[:, :77, 32:].abs().max() == 0, "the CLIP features are zero-padded to the T5 width"
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir, local_files_only=True)
    states, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=True
    )
    torch.testing.assert_close(cond.hidden_states, states, rtol=0, atol=2e-5)
    torch.testing.assert_close(cond.added["pooled_projections"], pooled, rtol=0, atol=2e-5)
    uncond = model.family.encode_negative(model, 2)
    torch.testing.assert_close(uncond.hidden_states, negative, rtol=0, atol=2e-5)
    torch.testing.assert_close(uncond.added["pooled_projections"], negative_pooled, rtol=0, atol=2e-5)


def test_a_lora_trained_for_two_steps_loads_in_plain_diffusers(tiny_sd3_dir, tmp_path):
    from test_training import make_config

    from pipeline import generate
    from trainers.loop import run

    cfg = make_config(
        tiny_sd3_dir,
        str(tmp_path),
        plan={"name": "drtune", "k": 2},
        sampler={"num_steps": 3, "guidance_scale": 3.0},
        trainable={"target_modules": list(LORA_TARGETS)},
        train={"steps": 2},
    )
    final = os.path.join(run(cfg).run_dir, "final")
    x_T = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))  # pipeline.generate's noise, seed 0
    base = pipeline_images(tiny_sd3_dir, x_T, 3, 3.0)
    tuned = pipeline_images(tiny_sd3_dir, x_T, 3, 3.0, lora_dir=final)
    assert (tuned - base).abs().max() > 1e-2, "two steps of training must change the images"

    out = tmp_path / "generated"
    assert (
        generate.main(
            [
                "--model",
                tiny_sd3_dir,
                "--weights",
                final,
                "--prompt",
                PROMPTS[0],
                "--prompt",
                PROMPTS[1],
                "--num-images",
                "1",
                "--steps",
                "3",
                "--guidance",
                "3.0",
                "--device",
                "cpu",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = torch.stack([read_image(str(p)).float() / 255 for p in sorted(out.glob("0*.png"))])
    torch.testing.assert_close(saved, tuned, rtol=0, atol=1 / 255 + 1e-6)  # 8-bit PNGs


def test_every_lora_tensor_reaches_the_diffusers_pipeline(tiny_sd3_dir, tmp_path):
    """A random LoRA on the image and text streams, saved and loaded by ``load_lora_weights``, gives the tuned
    images: a tensor the loader skipped would show."""
    from test_models import tuned_by_a_random_lora

    from trainers.config import TrainableConfig
    from trainers.models import save_trained

    model = load_model(ModelConfig(path=tiny_sd3_dir, device="cpu"))
    cfg = TrainableConfig(rank=4, alpha=8.0, target_modules=LORA_TARGETS)
    x_T, tuned = tuned_by_a_random_lora(model, cfg, 3, 5.0, scale=0.3)
    save_trained(model, cfg, str(tmp_path / "lora"))
    torch.testing.assert_close(
        pipeline_images(tiny_sd3_dir, x_T, 3, 5.0, lora_dir=str(tmp_path / "lora")), tuned, rtol=0, atol=2e-5
    )


def test_unsupported_sigma_options_and_eta_exit_2(clip_tokenizer_dir, tmp_path):
    from sd3_factories import build_tiny_sd3

    folder = build_tiny_sd3(str(tmp_path / "karras"), clip_tokenizer_dir, use_karras_sigmas=True)
    model = load_model(ModelConfig(path=folder, device="cpu"))
    with pytest.raises(ValueError, match="use_karras_sigmas=True is not reproduced"):
        model.family.schedule(model, 4)
    result = cli(
        "pipeline.train",
        f"model.path={folder}",
        "sampler.eta=0.5",
        "ray.enabled=false",
        "tracking.enabled=false",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    config_file = os.path.join(folder, "scheduler", "scheduler_config.json")
    assert f"model.path: {config_file} sets use_karras_sigmas=true" in result.stderr
    assert "set use_karras_sigmas=false in that file" in result.stderr
    assert "sampler.eta: 0.5 but model.path=" in result.stderr and "set sampler.eta=0" in result.stderr

    from pipeline.config import ConfigError
    from pipeline.generate import check, parse_args

    with pytest.raises(ConfigError) as err:
        check(parse_args(["--model", folder, "--prompt", "a red circle", "--eta", "0.5"]))
    karras, eta = err.value.problems
    assert karras.startswith(f"--model: {config_file} sets use_karras_sigmas=true") and "use --eta 0" in eta


def test_preflight_reads_sd3_folders(tiny_sd3_dir, tiny_sd_dir, tmp_path):
    from pipeline.preflight import model_problems, weights_problems
    from trainers.config import TrainableConfig
    from trainers.models import make_trainable, save_trained

    assert model_problems("model.path", tiny_sd3_dir, "auto") == model_problems("model.path", tiny_sd3_dir, "sd3") == []
    (problem,) = model_problems("model.path", tiny_sd3_dir, "pixart")
    assert "StableDiffusion3Pipeline; set model.family=auto (or sd3)" in problem
    model = load_model(ModelConfig(path=tiny_sd3_dir, device="cpu"))
    cfg = TrainableConfig(rank=2, target_modules=LORA_TARGETS)
    make_trainable(model, cfg)
    save_trained(model, cfg, str(tmp_path / "lora"))
    with open(tmp_path / "lora" / "pytorch_lora_weights.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert any(".attn.add_k_proj.lora_A" in k for k in header) and any(".attn2.to_q.lora_B" in k for k in header)
    assert weights_problems("generate.weights", str(tmp_path / "lora"), tiny_sd3_dir) == []
    (problem,) = weights_problems("generate.weights", str(tmp_path / "lora"), tiny_sd_dir)
    assert "does not fit the base model" in problem


def test_unset_target_modules_give_adapters_to_the_familys_modules(tiny_sd3_dir, tiny_sd_dir):
    """``trainable.target_modules`` unset: SD3 gets adapters on both streams of its joint blocks, SD on its
    attention projections only."""
    from trainers.config import TrainableConfig
    from trainers.models import make_trainable

    for folder, expected in ((tiny_sd3_dir, LORA_TARGETS), (tiny_sd_dir, ("to_q", "to_k", "to_v", "to_out.0"))):
        model = load_model(ModelConfig(path=folder, device="cpu"))
        make_trainable(model, TrainableConfig(rank=2))
        adapted = {name for name, module in model.denoiser.named_modules() if hasattr(module, "lora_A")}
        assert {target for target in expected if any(n.endswith("." + target) for n in adapted)} == set(expected)
        assert all(any(n.endswith("." + target) for target in expected) for n in adapted), sorted(adapted)[:5]

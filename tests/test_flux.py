"""The FLUX.1 family: packing is the pipeline's, the sigmas equal ``FluxPipeline``'s, sampling with gradients off
equals ``FluxPipeline`` ([dev] with embedded guidance at two scales, [schnell] without; static and dynamic
shifting; several step counts), and a LoRA trained for 2 steps loads with ``FluxPipeline.load_lora_weights``
and reproduces ``pipeline.generate``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_models import PROMPTS, engine_images

from trainers.config import ModelConfig
from trainers.families.flux import image_positions, pack, unpack
from trainers.models import load_model

SIDE = 16  # px: 8x8 latents, 16 packed patches


def load_tiny(folder: str):
    return load_model(ModelConfig(path=folder, device="cpu", resolution=SIDE))


def latent_noise(model, seed: int = 0) -> torch.Tensor:
    return torch.randn(len(PROMPTS), *model.latent_shape, generator=torch.Generator().manual_seed(seed))


def pipeline_images(folder, x_T, steps, guidance, lora_dir=None, sequence=512):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPTS,
        latents=pack(x_T.clone()),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=SIDE,
        width=SIDE,
        max_sequence_length=sequence,
        output_type="pt",
    ).images


def test_packing_and_positions_are_the_pipelines():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = pack(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack(packed, 4, 6, 8), x, rtol=0, atol=0)
    torch.testing.assert_close(
        unpack(packed, 4, 6, 8), FluxPipeline._unpack_latents(packed, 6 * 8, 8 * 8, 8), rtol=0, atol=0
    )
    want = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    torch.testing.assert_close(image_positions(3, 4, torch.device("cpu"), torch.float32), want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "variant, steps, guidance",
    [
        ("dev", 4, 3.5),
        ("dev", 2, 3.5),
        ("dev", 3, 8.0),
        ("dev-static", 3, 3.5),
        ("schnell", 3, 0.0),
        ("schnell", 1, 0.0),
    ],
)
def test_sampling_matches_the_flux_pipeline(tiny_flux_dir, clip_tokenizer_dir, tmp_path, variant, steps, guidance):
    from flux_factories import build_tiny_flux

    folder = {
        "dev": lambda: tiny_flux_dir,
        "dev-static": lambda: build_tiny_flux(str(tmp_path / "s"), clip_tokenizer_dir, use_dynamic_shifting=False),
        "schnell": lambda: build_tiny_flux(
            str(tmp_path / "s"), clip_tokenizer_dir, guidance_embeds=False, shift=1.0, use_dynamic_shifting=False
        ),
    }[variant]()
    model = load_tiny(folder)
    assert model.family.name == "flux" and model.guidance == ("none" if variant == "schnell" else "embedded")
    x_T = latent_noise(model)
    got = engine_images(model, x_T, steps, guidance, 0.0)
    want = pipeline_images(folder, x_T, steps, guidance, sequence=256 if variant == "schnell" else 512)
    assert got.shape == want.shape == (2, 3, SIDE, SIDE)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    if variant != "schnell":
        other = engine_images(model, x_T, steps, 3.5 if guidance == 8.0 else 8.0, 0.0)
        assert (other - got).abs().max() > 1e-3, "the guidance scale must change the images"


def test_every_lora_tensor_reaches_the_flux_pipeline(tiny_flux_dir, tmp_path):
    """A random LoRA on the family's default targets (both streams of the double block, q/k/v of the single
    block), saved and loaded by ``FluxPipeline.load_lora_weights``, gives the tuned images; our own loader too."""
    from test_models import _perturb

    from trainers.config import TrainableConfig
    from trainers.models import load_trained, make_trainable, save_trained

    model = load_tiny(tiny_flux_dir)
    x_T = latent_noise(model)
    base = engine_images(model, x_T, 3, 3.5, 0.0)
    cfg = TrainableConfig(rank=4, alpha=8.0)
    _perturb(make_trainable(model, cfg), scale=0.3)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.denoiser.named_parameters() if ".lora_A." in n}
    assert any(n.startswith("single_transformer_blocks.0.attn.to_q") for n in adapted)
    assert any(n.startswith("transformer_blocks.0.attn.add_q_proj") for n in adapted)
    tuned = engine_images(model, x_T, 3, 3.5, 0.0)
    assert (tuned - base).abs().max() > 1e-3, "the perturbed LoRA must change the images"
    save_trained(model, cfg, str(tmp_path / "lora"))
    torch.testing.assert_close(
        pipeline_images(tiny_flux_dir, x_T, 3, 3.5, lora_dir=str(tmp_path / "lora")), tuned, rtol=0, atol=2e-5
    )
    ours = load_tiny(tiny_flux_dir)
    load_trained(ours, str(tmp_path / "lora"))
    torch.testing.assert_close(engine_images(ours, x_T, 3, 3.5, 0.0), tuned, rtol=0, atol=2e-5)


def test_a_lora_trained_for_two_steps_loads_in_plain_diffusers_and_generate(tiny_flux_dir, tmp_path):
    from test_training import make_config
    from torchvision.io import read_image

    from pipeline import generate
    from trainers.loop import run

    cfg = make_config(
        tiny_flux_dir,
        str(tmp_path),
        model={"resolution": SIDE},
        plan={"name": "drtune", "k": 2},
        sampler={"num_steps": 3, "guidance_scale": 3.5},
        train={"steps": 2},
    )
    final = os.path.join(run(cfg).run_dir, "final")
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # pipeline.generate's noise, seed 0
    base = pipeline_images(tiny_flux_dir, x_T, 3, 3.5)
    tuned = pipeline_images(tiny_flux_dir, x_T, 3, 3.5, lora_dir=final)
    assert (tuned - base).abs().max() > 1e-2, "two steps of training must change the images"
    out = tmp_path / "generated"
    argv = ["--model", tiny_flux_dir, "--weights", final, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    argv += ["--num-images", "1", "--steps", "3", "--guidance", "3.5", "--resolution", str(SIDE)]
    assert generate.main([*argv, "--device", "cpu", "--seed", "0", "--out", str(out)]) == 0
    saved = torch.stack([read_image(str(p)).float() / 255 for p in sorted(out.glob("0*.png"))])
    torch.testing.assert_close(saved, tuned, rtol=0, atol=1 / 255 + 1e-6)  # 8-bit PNGs


def test_bad_flux_input_exits_2_before_anything_loads(tiny_flux_dir, tiny_sd3_dir, clip_tokenizer_dir, tmp_path):
    """A FLUX LoRA on an SD3 base, a guidance scale on a model without guidance ([schnell]), a scale below 1 on one
    that takes it as an input ([dev], where it does not turn CFG off), and a FLUX variant no family loads: each
    refused with status 2 and one message naming the key."""
    from flux_factories import build_tiny_flux
    from test_cli import cli

    from pipeline.config import ConfigError
    from pipeline.generate import check, parse_args
    from trainers.config import TrainableConfig
    from trainers.models import make_trainable, save_trained

    model = load_tiny(tiny_flux_dir)
    make_trainable(model, TrainableConfig(rank=2))
    save_trained(model, TrainableConfig(rank=2), str(tmp_path / "lora"))
    with pytest.raises(ConfigError) as err:
        check(parse_args(["--model", tiny_sd3_dir, "--weights", str(tmp_path / "lora"), "--prompt", "a red circle"]))
    (problem,) = err.value.problems
    assert problem.startswith(f"--weights: {str(tmp_path / 'lora')!r} does not fit the base model {tiny_sd3_dir!r}")

    schnell = build_tiny_flux(str(tmp_path / "schnell"), clip_tokenizer_dir, guidance_embeds=False)
    result = cli("pipeline.train", f"model.path={schnell}", "sampler.guidance_scale=3.5", "ray.enabled=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "sampler.guidance_scale: 3.5 but model.path=" in result.stderr
    why = "is a FluxPipeline without guidance (timestep-distilled, as FLUX.1 [schnell]), which would ignore it"
    assert f"{why}; set sampler.guidance_scale=1" in result.stderr

    dev = cli("pipeline.train", f"model.path={tiny_flux_dir}", "sampler.guidance_scale=0", "ray.enabled=false")
    assert dev.returncode == 2 and "Traceback" not in dev.stderr, dev.stderr[-2000:]
    assert "sampler.guidance_scale: 0.0 but model.path=" in dev.stderr
    assert "there is no classifier-free guidance to turn off" in dev.stderr

    eightfold = build_tiny_flux(str(tmp_path / "eightfold"), clip_tokenizer_dir)  # a VAE config of FLUX's 8x
    config = os.path.join(eightfold, "vae", "config.json")
    with open(config, encoding="utf-8") as f:
        vae = json.load(f)
    with open(config, "w", encoding="utf-8") as f:
        json.dump(vae | {"block_out_channels": [8, 16, 16, 16]}, f)
    odd = cli("pipeline.train", f"model.path={eightfold}", "model.resolution=520", "ray.enabled=false")
    assert odd.returncode == 2 and "Traceback" not in odd.stderr, odd.stderr[-2000:]
    why = "the VAE's 8x downscaling times the denoiser's patch of 2 latent pixels"
    assert f"model.resolution: 520 px is not a multiple of 16 ({why}); set model.resolution=512" in odd.stderr

    klein = tmp_path / "klein"
    klein.mkdir()
    (klein / "model_index.json").write_text('{"_class_name": "Flux2KleinPipeline"}')
    result = cli("pipeline.train", f"model.path={klein}", "ray.enabled=false")
    assert result.returncode == 2 and "holds a Flux2KleinPipeline, which no model family loads" in result.stderr

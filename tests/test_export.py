"""``pipeline.export``: trained LoRA weights as one kohya-style ``.safetensors`` file (ComfyUI's layout), which
diffusers' own loader converts back to the same images as the ``final/`` folder, for SD, SDXL and FLUX.1; with
the training alpha (not the rank) stored; and bad input refused with status 2."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from pipeline import export
from pipeline.config import ConfigError
from trainers.config import ModelConfig, TrainableConfig
from trainers.models import load_model, make_trainable, save_trained


def images(family, folder, x_T, lora_dir, weight_name=None):
    """The family's diffusers pipeline with the LoRA loaded by ``load_lora_weights``: 3 steps, guidance 3.5."""
    kwargs = {"weight_name": weight_name} if weight_name else {}
    if family == "flux":
        import test_flux

        return _flux(test_flux, folder, x_T, lora_dir, kwargs)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from test_models import ddim_pipeline_images

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        pipe.load_lora_weights(lora_dir, **kwargs)
    return ddim_pipeline_images(pipe, pipe.scheduler.config, x_T, 3, 3.5, 0.0)


def _flux(test_flux, folder, x_T, lora_dir, kwargs):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    if lora_dir:
        pipe.load_lora_weights(lora_dir, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    side = test_flux.SIDE
    out = pipe(
        test_flux.PROMPTS,
        latents=test_flux.pack(x_T.clone()),
        num_inference_steps=3,
        guidance_scale=3.5,
        height=side,
        width=side,
        output_type="pt",
    )
    return out.images


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_the_exported_file_loads_in_diffusers_and_gives_the_images_of_final(request, tmp_path, family):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = load_model(ModelConfig(path=folder, device="cpu", resolution=16))
    cfg = TrainableConfig(rank=2, alpha=5.0)  # alpha / rank = 2.5: a file that stored the rank as alpha would show
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in make_trainable(model, cfg):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    final = str(tmp_path / "final")
    save_trained(model, cfg, final)
    out = str(tmp_path / "comfy" / "lora.safetensors")
    assert export.main(["--model", folder, "--weights", final, "--out", out]) == 0

    tensors = load_file(out)
    prefix = "lora_transformer_" if family == "flux" else "lora_unet_"
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith(prefix) and "." not in k[: -len(".lora_down.weight")] for k in downs)
    assert all(float(tensors[k.replace(".lora_down.weight", ".alpha")]) == 5.0 for k in downs)
    assert len(tensors) == 3 * len(downs)
    if family == "flux":
        assert "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight" in tensors

    x_T = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    want = images(family, folder, x_T, final)
    base = images(family, folder, x_T, None)
    assert (want - base).abs().max() > 1e-3, "the LoRA must change the images, or the comparison proves little"
    got = images(family, folder, x_T, os.path.dirname(out), weight_name="lora.safetensors")
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_bad_export_input_exits_2(tiny_sd_dir, tiny_sd3_dir, tmp_path):
    model = load_model(ModelConfig(path=tiny_sd3_dir, device="cpu"))
    cfg = TrainableConfig(rank=2)
    make_trainable(model, cfg)
    save_trained(model, cfg, str(tmp_path / "sd3"))
    cases = [
        (["--model", tiny_sd3_dir, "--weights", str(tmp_path / "sd3")], "the comfyui export covers SD 1.x/2.x, SDXL"),
        (["--model", tiny_sd_dir, "--weights", str(tmp_path / "sd3")], "does not fit the base model"),
        (["--model", tiny_sd_dir, "--weights", str(tmp_path / "none")], "holds no trained weights"),
    ]
    for argv, message in cases:
        with pytest.raises(ConfigError, match=message):
            export.main([*argv, "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(ConfigError, match="must end in .safetensors"):
        export.main(["--model", tiny_sd_dir, "--weights", str(tmp_path / "sd3"), "--out", str(tmp_path / "x.pt")])
    assert not os.path.exists(tmp_path / "x.safetensors")

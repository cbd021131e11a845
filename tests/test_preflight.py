"""Pre-start checks that read only file headers and configs: reward checkpoints, LoRA targets, trained weights."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from reward_factories import make_aesthetic_spec, make_hps_spec

from pipeline.config import load_config
from pipeline.preflight import target_module_problems, weights_problems
from rewards.config import RewardSpec
from rewards.files import file_problems, tensor_names
from trainers.config import Config, ModelConfig, TrainableConfig
from trainers.models import denoiser_skeleton, load_model, make_trainable, save_trained

TOY_SD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline", "assets", "toyworld", "sd"
)


def test_intact_reward_files_pass_and_their_tensor_names_are_read_without_the_tensors(tmp_path):
    hps, aesthetic = make_hps_spec(str(tmp_path / "hps")), make_aesthetic_spec(str(tmp_path / "aesthetic"))
    assert file_problems(hps) == [] and file_problems(aesthetic) == []
    names = tensor_names(hps.checkpoint)  # {'state_dict': ...} unwrapped
    assert any(n.startswith("visual.") for n in names) and "epoch" not in names


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_corrupt_checkpoint_is_named_with_its_format(tmp_path, suffix):
    bad = tmp_path / f"random{suffix}"
    bad.write_bytes(os.urandom(4096))
    (problem,) = file_problems(RewardSpec(name="clip_score", checkpoint=str(bad), arch="ViT-B-32"))
    kind = "safetensors file" if suffix == ".safetensors" else "torch checkpoint"
    assert problem.startswith(f"checkpoint: '{bad}' is not a readable {kind} (")
    assert "intact copy" in problem and "open_clip weights file for reward 'clip_score'" in problem


def test_another_models_checkpoint_is_refused_by_its_tensor_names(tmp_path):
    aesthetic = make_aesthetic_spec(str(tmp_path / "aesthetic"))
    swapped = RewardSpec(name="hpsv2", checkpoint=aesthetic.checkpoint)  # the MLP head where HPS weights belong
    (problem,) = file_problems(swapped)
    assert "holds no visual.* tensors" in problem and "layers.0.weight" in problem and "HPSv2 checkpoint" in problem


def test_missing_files_and_folders_are_named(tmp_path):
    problems = file_problems(RewardSpec(name="pickscore", checkpoint=str(tmp_path), processor=str(tmp_path / "no")))
    assert problems == [
        f"checkpoint: '{tmp_path}' has no config.json; expected the PickScore model folder "
        "(config.json + weights) for reward 'pickscore'",
        f"processor: '{tmp_path / 'no'}' does not exist; expected the PickScore processor folder "
        "(tokenizer + image settings) for reward 'pickscore'",
    ]


def test_the_denoiser_skeleton_has_every_tensor_shape_and_no_weights(tiny_sd_dir):
    skeleton = denoiser_skeleton(tiny_sd_dir)
    real = load_model(ModelConfig(path=tiny_sd_dir, device="cpu")).denoiser
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert denoiser_skeleton("org/hub-model") is None


def _config(model_path: str, *overrides: str) -> Config:
    return load_config(Config, None, [f"model.path={model_path}", *overrides])


def test_lora_targets_must_name_layers_the_model_has(tiny_sd_dir):
    assert target_module_problems(_config(tiny_sd_dir)) == []
    assert target_module_problems(_config(tiny_sd_dir, "trainable.target_modules=[to_q, attn1.to_k]")) == []
    (problem,) = target_module_problems(_config(tiny_sd_dir, "trainable.target_modules=[to_q, nothing_here, to_out]"))
    assert problem.startswith(
        "trainable.target_modules: 'nothing_here' names no module of the model; "
        "'to_out' names only ModuleList modules, which LoRA cannot wrap"
    )
    assert target_module_problems(_config(tiny_sd_dir, "trainable.kind=full", "trainable.target_modules=[x]")) == []


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory) -> str:
    """A LoRA of the toy-world UNet (32/64 channels), saved as a run's final/ folder."""
    model = load_model(ModelConfig(path=TOY_SD, device="cpu"))
    make_trainable(model, TrainableConfig())
    folder = str(tmp_path_factory.mktemp("toy_lora"))
    save_trained(model, TrainableConfig(), folder)
    return folder


def test_a_lora_fits_its_own_base_and_not_another(toy_lora, tiny_sd_dir):
    assert weights_problems("--weights", toy_lora, TOY_SD) == []
    (problem,) = weights_problems("--weights", toy_lora, tiny_sd_dir)
    assert problem.startswith(f"--weights: '{toy_lora}' does not fit the base model '{tiny_sd_dir}': ")
    assert "which this model does not have" in problem or "features" in problem
    assert "give the base model the weights were trained on" in problem


def test_a_full_unet_must_have_the_base_models_architecture(tmp_path, tiny_sd_dir):
    shutil.copytree(os.path.join(TOY_SD, "unet"), tmp_path / "unet")
    assert weights_problems("--weights", str(tmp_path), TOY_SD) == []
    (problem,) = weights_problems("--weights", str(tmp_path), tiny_sd_dir)
    assert "tensors differ from the base model's (trained vs base: " in problem


def test_lora_shapes_are_checked_per_module(toy_lora, tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.model_checks import lora_file_problems

    path = os.path.join(toy_lora, "pytorch_lora_weights.safetensors")
    state = load_file(path)
    key = next(k for k in state if k.endswith("to_q.lora.down.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)
    save_file(state, tmp_path / "wrong.safetensors")
    (problem,) = lora_file_problems(denoiser_skeleton(TOY_SD), str(tmp_path / "wrong.safetensors"))
    assert problem.startswith(f"{key} has shape [4, {state[key].shape[1]}] but ") and "input features" in problem

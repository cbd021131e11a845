"""LoRA scaling, mixing and annealed importance guidance at inference (DRaFT, DRaFT+): scale 0 is the
base model and 1 the tuned one, a mix is the weighted sum of the adapters' weight deltas, and annealed
guidance at its two ends is the base and the tuned model."""

from __future__ import annotations

import os

import pytest
import torch
from test_models import PROMPTS, _perturb, engine_images, noise

from pipeline import evaluate, generate
from pipeline.config import ConfigError
from trainers.config import ModelConfig, TrainableConfig
from trainers.engine import annealed_weights
from trainers.models import load_model, load_trained, load_weighted, make_trainable, save_trained

LORA = TrainableConfig(rank=4, alpha=8.0, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
STEPS, GUIDANCE = 4, 7.5


@pytest.fixture(scope="module")
def two_loras(tiny_sd_dir, tmp_path_factory) -> list[str]:
    """Two random LoRAs (as if trained on two rewards), saved as a run saves them."""
    folders = []
    for seed in (1, 2):
        model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
        _perturb(make_trainable(model, LORA), seed=seed, scale=0.1)
        folders.append(str(tmp_path_factory.mktemp("lora") / f"lora{seed}"))
        save_trained(model, LORA, folders[-1])
    return folders


def images_of(tiny_sd_dir, weighted=(), tuned_weights=None, loaded=None):
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    if loaded:
        load_trained(model, loaded)
    if weighted:
        load_weighted(model, list(weighted))
    from trainers.engine import generate as sample_images

    # LoRA folding (which annealed guidance never uses) off, so that every comparison here is exact
    return sample_images(
        model,
        PROMPTS,
        noise(model),
        model.family.schedule(model, STEPS),
        guidance=GUIDANCE,
        gen=torch.Generator().manual_seed(1),
        tuned_weights=tuned_weights,
        fold_lora=False,
    )


def hand_merged_images(tiny_sd_dir, weighted) -> torch.Tensor:
    """The base model with ``sum_i w_i * Delta_i`` added to its plain weights by hand; each delta read from a
    model holding that adapter alone."""
    from peft.tuners.lora import LoraLayer

    merged = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    plain = dict(merged.denoiser.named_modules())
    for folder, w in weighted:
        single = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
        load_trained(single, folder)
        for name, layer in single.denoiser.named_modules():
            if isinstance(layer, LoraLayer):
                with torch.no_grad():
                    plain[name].weight += w * layer.get_delta_weight("tuned")
    return engine_images(merged, noise(merged), STEPS, GUIDANCE, 0.0)


def test_lora_scale_zero_is_the_base_model_and_one_the_tuned_model(tiny_sd_dir, two_loras):
    base, tuned = images_of(tiny_sd_dir), images_of(tiny_sd_dir, loaded=two_loras[0])
    assert (tuned - base).abs().max() > 1e-3, "the LoRA must change the images"
    torch.testing.assert_close(images_of(tiny_sd_dir, [(two_loras[0], 0.0)]), base, rtol=0, atol=1e-6)
    torch.testing.assert_close(images_of(tiny_sd_dir, [(two_loras[0], 1.0)]), tuned, rtol=0, atol=1e-6)
    half = images_of(tiny_sd_dir, [(two_loras[0], 0.5)])
    assert (half - base).abs().max() > 1e-4 and (half - tuned).abs().max() > 1e-4


def test_a_two_adapter_mix_is_the_weighted_sum_of_their_deltas(tiny_sd_dir, two_loras):
    weighted = [(two_loras[0], 0.6), (two_loras[1], 0.4)]
    mixed = images_of(tiny_sd_dir, weighted)
    torch.testing.assert_close(mixed, hand_merged_images(tiny_sd_dir, weighted), rtol=0, atol=2e-5)
    assert (mixed - images_of(tiny_sd_dir, [(two_loras[0], 1.0)])).abs().max() > 1e-4


def test_annealed_guidance_at_its_two_ends_is_the_base_and_the_tuned_model(tiny_sd_dir, two_loras):
    assert annealed_weights(5, 2.0) == [0.0, 1 / 16, 0.25, 9 / 16, 1.0]
    base, tuned = images_of(tiny_sd_dir), images_of(tiny_sd_dir, loaded=two_loras[0])
    torch.testing.assert_close(
        images_of(tiny_sd_dir, tuned_weights=[0.0] * STEPS, loaded=two_loras[0]), base, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        images_of(tiny_sd_dir, tuned_weights=[1.0] * STEPS, loaded=two_loras[0]), tuned, rtol=0, atol=1e-6
    )
    annealed = images_of(tiny_sd_dir, tuned_weights=annealed_weights(STEPS, 1.0), loaded=two_loras[0])
    assert (annealed - base).abs().max() > 1e-4 and (annealed - tuned).abs().max() > 1e-4


def test_generate_mixes_and_scales_from_the_command_line_and_refuses_a_full_fine_tune(tiny_sd_dir, two_loras, tmp_path):
    common = ["--model", tiny_sd_dir, "--prompt", PROMPTS[0], "--num-images", "1", "--steps", "3", "--device", "cpu"]
    assert (
        generate.main(
            [
                *common,
                "--weights",
                f"{two_loras[0]}:0.6",
                "--weights",
                f"{two_loras[1]}:0.4",
                "--lora-scale",
                "0.5",
                "--aig",
                "2",
                "--out",
                str(tmp_path / "mix"),
            ]
        )
        == 0
    )
    assert (tmp_path / "mix" / "grid.png").is_file()
    model = load_model(ModelConfig(path=tiny_sd_dir, device="cpu"))
    make_trainable(model, TrainableConfig(kind="full"))
    save_trained(model, TrainableConfig(kind="full"), str(tmp_path / "full"))
    for blend in (
        ["--weights", str(tmp_path / "full"), "--lora-scale", "0.5"],
        ["--weights", f"{tmp_path / 'full'}:0.5"],
    ):
        with pytest.raises(
            ConfigError, match="is a full fine-tune; only LoRA weights can be scaled, mixed or annealed"
        ):
            generate.main([*common, *blend])
    # one LoRA with a weight: the weight counts (0 gives the base model's images)
    assert generate.main([*common, "--weights", f"{two_loras[0]}:0", "--out", str(tmp_path / "zero")]) == 0
    assert generate.main([*common, "--out", str(tmp_path / "base")]) == 0
    assert generate.main([*common, "--weights", two_loras[0], "--out", str(tmp_path / "tuned")]) == 0
    from PIL import Image

    def pixels(folder):
        return torch.tensor(list(Image.open(next((tmp_path / folder).glob("000_*.png"))).getdata())).float()

    assert (pixels("zero") - pixels("base")).abs().max() <= 1 and (pixels("tuned") - pixels("base")).abs().max() > 1
    with pytest.raises(ConfigError, match="--aig: the power must be > 0"):
        generate.main([*common, "--weights", two_loras[0], "--aig", "0"])


def test_evaluate_sweeps_lora_scales_with_diversity_and_writes_the_plot(tiny_sd_dir, two_loras, tmp_path, capsys):
    plot, config = tmp_path / "plot.png", tmp_path / "eval.yaml"
    config.write_text("rewards: [{name: brightness}]\neval: {max_prompts: 2, images_per_prompt: 2}\n")
    assert (
        evaluate.main(
            [
                "--config",
                str(config),
                "--weights",
                two_loras[0],
                "--lora-scales",
                "0,1",
                "--aig-powers",
                "1",
                "--plot",
                str(plot),
                f"model.path={tiny_sd_dir}",
                "model.device=cpu",
                "sampler.num_steps=3",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("setting"))) :]
    assert "brightness" in table[0] and "diversity" in table[0]
    assert [line.split()[0:2] for line in table[1:4]] == [["scale", "0"], ["scale", "1"], ["AIG", "power"]]
    assert os.path.getsize(plot) > 1000
    with pytest.raises(ConfigError, match="eval.images_per_prompt: diversity needs at least 2 images per prompt"):
        evaluate.main(
            [
                "--config",
                str(config),
                "--weights",
                two_loras[0],
                "--lora-scales",
                "0,1",
                f"model.path={tiny_sd_dir}",
                "model.device=cpu",
                "eval.images_per_prompt=1",
            ]
        )

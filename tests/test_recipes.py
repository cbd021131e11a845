"""The family recipes in ``pipeline/configs`` train on the tiny model of their family: the shipped file with
its file paths pointed at tiny weights (model, rewards, prompts), and its length cut to one step."""

from __future__ import annotations

import os
from dataclasses import asdict

import pytest
import yaml
from reward_factories import make_aesthetic_spec, make_hps_spec
from test_training import _trained

from pipeline.preflight import load_checked
from trainers.loop import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["train.steps=1", "train.checkpoint_every=1", "eval.every=1", "eval.max_prompts=1", "eval.images_per_prompt=2"]


def _spec(spec) -> dict:
    return {k: v for k, v in asdict(spec).items() if v is not None}


@pytest.mark.parametrize(
    "recipe, family",
    [
        ("sdxl_drtune_hps.yaml", "sdxl"),
        ("pixart_distar_hps.yaml", "pixart"),
        ("sd35_drtune_hps.yaml", "sd3"),
        ("flux_drtune_hps.yaml", "flux"),
    ],
)
def test_family_recipe_trains_on_its_tiny_model(request, tmp_path, recipe, family):
    with open(os.path.join(ROOT, "pipeline", "configs", recipe), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n", encoding="utf-8")
    data["model"]["path"] = request.getfixturevalue(f"tiny_{family}_dir")
    data["model"].pop("resolution", None)  # the tiny model's size
    if family == "flux":  # FLUX's native size is 128 latent pixels; the tiny one is sampled at 16 px
        data["model"]["resolution"] = 16
    data["rewards"] = [_spec(make_hps_spec(str(tmp_path / "hps")))]
    data["eval"]["rewards"] = [_spec(make_aesthetic_spec(str(tmp_path / "aesthetic")))]
    data["data"] = {"prompts": str(prompts), "eval_prompts": str(prompts)}
    data["train"]["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    cfg = load_checked(str(path), SHORT, training=True)
    result = run(cfg)
    assert _trained(result.run_dir)["step"] == 1
    assert {"eval/trained", "eval/aesthetic"} <= set(result.metrics), sorted(result.metrics)  # HPS and held-out

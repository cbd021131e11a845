"""The embedded default: the quickstart config runs through Ray Train on the shipped toy world, with
the relative paths it ships, and every algorithm it lists runs on that world by swapping one line."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from pipeline.config import from_dict, load_config, to_dict
from pipeline.preflight import load_checked, preflight
from pipeline.toyworld import compare
from pipeline.train import QUICKSTART
from trainers.config import Config
from trainers.loop import run, run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = [
    "train.steps=2",
    "train.checkpoint_every=2",
    "eval.max_prompts=2",
    "eval.images_per_prompt=1",
    "eval.require=[]",
]


def plan_lines() -> list[str]:
    return compare.plan_lines(QUICKSTART)


def test_quickstart_lists_every_algorithm():
    names = {yaml.safe_load(line)["plan"]["name"] for line in plan_lines()}
    assert names == {"draft", "draft_k", "draft_lv", "drtune", "refl", "alignprop"}


def test_quickstart_is_valid_and_its_files_exist(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(Config, QUICKSTART)
    preflight(cfg)
    assert cfg.plan.name == "drtune" and cfg.ray.enabled and cfg.ray.num_workers == 1
    assert {r.name for r in cfg.rewards} == {"clip_score", "colourfulness"}


@pytest.mark.parametrize("line", plan_lines())
def test_every_algorithm_trains_on_the_toy_world_with_one_line_changed(line, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = to_dict(load_config(Config, QUICKSTART, [*SHORT, f"train.output_dir={tmp_path}", "eval.every=0"]))
    data["plan"] = yaml.safe_load(line)["plan"]
    cfg = from_dict(Config, data)
    result = run(cfg, run_dir=str(tmp_path / "run"))
    assert result.step == 2 and result.metrics["train/skipped_steps"] == 0
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))
    trained = saved_lora(result.final_model_dir)
    ups = [t for name, t in trained.items() if ".lora.up." in name]  # diffusers names B "up"
    assert ups and any(t.abs().max() > 0 for t in ups)


def saved_lora(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "pytorch_lora_weights.safetensors"))


def test_quickstart_runs_through_ray_train_from_the_repository_root(ray_session, tmp_path, monkeypatch):
    """Ray Train moves workers into its trial folder unless told not to; the shipped relative paths must work."""
    from pipeline.ray_train import fit

    monkeypatch.chdir(ROOT)
    cfg = load_checked(QUICKSTART, [*SHORT, f"train.output_dir={tmp_path}"])
    run_dir = run_folder(cfg)
    result = fit(cfg, run_dir)
    assert result.error is None and result.metrics["step"] == 2
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        held_out = json.load(f)["held_out"]
    assert {"trained", "trained/clip_score", "trained/colourfulness", "symmetry", "sharpness"} <= set(held_out)
    for name in (
        "samples/step_000000.png",
        "samples/step_000002.png",
        "final/pytorch_lora_weights.safetensors",
        "metrics.jsonl",
    ):
        assert os.path.isfile(os.path.join(run_dir, name)), name

    # the embedded MLflow store registered the checkpoint; pick it and generate from the registry
    from pipeline import generate, promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert promote.main(["--model", "toyworld", "--metric", "eval/trained", "--tracking-uri", uri]) == 0
    out = tmp_path / "generated"
    assert (
        generate.main(
            [
                "--model",
                "models:/toyworld@champion",
                "--tracking-uri",
                uri,
                "--prompt",
                "a red circle on a blue background",
                "--num-images",
                "1",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file()

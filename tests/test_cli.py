"""Command lines: bad input exits 2 with one message before loading anything; real runs work end to end."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest
from conftest import shell_env

from pipeline.config import ConfigError, from_dict, load_config
from trainers.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = shell_env(PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "*.yaml"))))
def test_shipped_config_is_valid(path):
    if os.path.basename(path).startswith("tune_"):  # a search: training config plus its search: section
        from pipeline.tune import load_search

        cfg, search = load_search(path, [])
        assert search.space
    else:
        cfg = load_config(Config, path)
    assert cfg.rewards


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "*.yaml"))))
def test_shipped_configs_find_the_shipped_files_from_any_folder(path, tmp_path, monkeypatch):
    """Started outside the repository, a shipped config given as ``pipeline/configs/<name>.yaml`` still reads the
    toy world's files: every path into the shipped files is made absolute, and exists."""
    from pipeline.config import flatten, read_yaml

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(path, ROOT)
    data = read_yaml(path)
    data.pop("search", None)
    cfg = load_config(Config, relative, data=data)
    values = [v for v in flatten(cfg).values() if isinstance(v, str)]
    assert not [v for v in values if v.startswith("pipeline/")], values
    assert all(os.path.exists(v) for v in values if v.startswith(os.path.join(ROOT, "pipeline"))), values
    if "toy" in relative or "quickstart" in relative:
        assert cfg.model.path == os.path.join(ROOT, "pipeline", "assets", "toyworld", "sd")


@pytest.mark.parametrize("module", ["pipeline.train", "pipeline.generate", "pipeline.evaluate", "pipeline.bench"])
def test_help(module):
    result = cli(module, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_bad_config_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan:\n  name: draftk\n  kk: 3\nsampler:\n  eta: 2\noptim:\n  lr: fast\n")
    start = time.perf_counter()
    result = cli("pipeline.train", "--config", str(bad), "train.steps=0")
    assert result.returncode == 2
    err = result.stderr
    assert "Traceback" not in err and result.stdout == ""
    assert "invalid config (5 problems)" in err
    assert "plan.name: expected one of" in err and "'draft_k'" in err
    assert "plan.kk: unknown key; did you mean 'k'?" in err
    assert "sampler.eta: must be in [0, 1], got 2" in err
    assert "optim.lr:" in err and "'fast'" in err
    assert "train.steps: must be >= 1, got 0" in err and "command-line override" in err
    assert time.perf_counter() - start < 60


def test_missing_files_exit_2_before_loading(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{path: {tmp_path}/no_model}}\nrewards:\n  - {{name: hpsv2, checkpoint: {tmp_path}/HPS.pt}}\n"
        f"data: {{prompts: {tmp_path}/p.txt}}\n"
    )
    result = cli("pipeline.train", "--config", str(cfg))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"model.path: '{tmp_path}/no_model' does not exist" in result.stderr
    assert f"rewards.0.checkpoint: '{tmp_path}/HPS.pt' does not exist" in result.stderr
    assert "data.prompts" in result.stderr


def test_a_corrupt_reward_checkpoint_and_missing_lora_targets_exit_2_before_ray_starts(tmp_path):
    """The quickstart with a reward file of random bytes and a LoRA target the UNet lacks: one message naming
    both, in seconds, and no Ray session."""
    corrupt = tmp_path / "toy-clip.safetensors"
    corrupt.write_bytes(os.urandom(1 << 16))
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.train",
            f"rewards.0.checkpoint={corrupt}",
            "trainable.target_modules=[nothing_here]",
            f"train.output_dir={tmp_path / 'runs'}",
        ],
        cwd=ROOT,
        env=shell_env(RAY_TMPDIR=str(tmp_path / "ray")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert f"rewards.0.checkpoint: '{corrupt}' is not a readable safetensors file (" in result.stderr
    assert "trainable.target_modules: 'nothing_here' names no module of the model" in result.stderr
    assert "invalid config (2 problems)" in result.stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "runs").exists()
    assert elapsed < 30, f"{elapsed:.1f} s"


def test_unavailable_device_is_a_config_error(tiny_sd_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from pipeline.preflight import preflight

    with pytest.raises(ConfigError, match="model.device: 'cuda' requested but no CUDA device"):
        preflight(load_config(Config, None, [f"model.path={tiny_sd_dir}", "model.device=cuda"]))


@pytest.mark.slow
def test_train_generate_evaluate_end_to_end(tiny_sd_dir, tmp_path):
    """Train through the real command line, then generate and evaluate with the trained weights."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    result = cli(
        "pipeline.train",
        "--config",
        str(empty),
        f"model.path={tiny_sd_dir}",
        "model.device=cpu",
        "sampler.num_steps=3",
        "plan.name=drtune",
        "plan.k=2",
        "train.steps=2",
        "train.batch_size=1",
        f"train.output_dir={tmp_path}",
        "train.run_name=e2e",
        f"data.prompts={prompts}",
        "eval.max_prompts=2",
        "eval.images_per_prompt=1",
        "eval.rewards=[{name: symmetry}]",
        "ray.enabled=false",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "e2e"
    assert f"run folder: {run_dir}" in result.stdout
    assert (run_dir / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert (run_dir / "samples" / "step_000000.png").is_file() and (run_dir / "samples" / "step_000002.png").is_file()

    from pipeline import evaluate, generate

    out = tmp_path / "gen"
    assert (
        generate.main(
            [
                "--model",
                tiny_sd_dir,
                "--weights",
                str(run_dir / "final"),
                "--prompt",
                "a red circle",
                "--num-images",
                "2",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file() and len(list(out.glob("0*.png"))) == 2
    assert (
        evaluate.main(
            [
                f"model.path={tiny_sd_dir}",
                "model.device=cpu",
                "sampler.num_steps=3",
                "eval.max_prompts=2",
                "eval.images_per_prompt=2",
                "eval.rewards=[{name: sharpness}]",
                "--weights",
                str(run_dir / "final"),
                "--compare-base",
            ]
        )
        == 0
    )


def test_generate_without_prompts_exits_2(tiny_sd_dir):
    result = cli("pipeline.generate", "--model", tiny_sd_dir)
    assert result.returncode == 2 and "--prompt: give at least one" in result.stderr


def test_config_round_trips_through_plain_data():
    """What the driver sends to Ray workers (to_dict) rebuilds the same config."""
    from pipeline.config import from_dict, to_dict

    cfg = load_config(
        Config, os.path.join(ROOT, "pipeline", "configs", "sd15_drtune_hps.yaml"), ["optim.betas=[0.8, 0.9]"]
    )
    assert from_dict(Config, to_dict(cfg)) == cfg and cfg.optim.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="optim.betas: expected two values"):
        load_config(Config, None, ["optim.betas=[0.9]"])


def test_resume_false_refuses_a_folder_with_checkpoints(tiny_sd_dir, tmp_path):
    from pipeline.preflight import run_folder_problems
    from trainers.checkpoint import save_checkpoint
    from trainers.loop import run_folder

    cfg = from_dict(Config, {"model": {"path": tiny_sd_dir}, "train": {"output_dir": str(tmp_path), "resume": False}})
    assert run_folder_problems(cfg) == []
    save_checkpoint(run_folder(cfg), 2, {"step": 2}, write_model=os.makedirs)
    (problem,) = run_folder_problems(cfg)
    assert run_folder(cfg) in problem and "train.run_name" in problem and "train.resume=true" in problem
    resume = from_dict(Config, {"model": {"path": tiny_sd_dir}, "train": {"output_dir": str(tmp_path)}})
    assert resume.train.resume and run_folder_problems(resume) == []


def test_resume_refuses_a_different_config_but_allows_more_steps(tiny_sd_dir, tmp_path):
    from pipeline.preflight import run_folder_problems, write_run_config
    from trainers.checkpoint import save_checkpoint
    from trainers.loop import run_folder

    def config(**train):
        return from_dict(
            Config,
            {
                "model": {"path": tiny_sd_dir},
                "optim": {"lr": train.pop("lr", 1e-4)},
                "train": {"output_dir": str(tmp_path), "run_name": "r", **train},
            },
        )

    started = config(steps=10)
    save_checkpoint(run_folder(started), 2, {"step": 2}, write_model=os.makedirs)
    write_run_config(started, run_folder(started))
    assert run_folder_problems(config(steps=50)) == []
    (problem,) = run_folder_problems(config(steps=10, lr=1e-3))
    assert "optim.lr: 0.0001 -> 0.001" in problem and "config.yaml" in problem and "train.run_name" in problem


def test_bad_inputs_that_once_got_through_exit_2_with_one_message(tmp_path):
    """A constraint on a metric no evaluation logs, a non-finite float option or config value, and a file that is
    not an image: each refused with status 2, a message naming the argument and the fix, before anything loads."""
    garbage = tmp_path / "garbage.png"
    garbage.write_text("not an image")
    cases = [
        (
            ("pipeline.train", "eval.require=[eval/no_such_metric>=1]"),
            "eval.require.0: 'eval/no_such_metric' is not a metric the evaluation logs",
        ),
        (("pipeline.train", "sampler.guidance_scale=.nan"), "sampler.guidance_scale: must be a finite number, got nan"),
        (
            ("pipeline.generate", "--model", "x", "--prompt", "a", "--guidance", "nan"),
            "argument --guidance: must be a finite number, got 'nan'",
        ),
        (
            ("pipeline.score", "--reward", "symmetry", "--prompt", "x", str(garbage)),
            f"{garbage}: not an image file Pillow can read; give a PNG, JPEG or WebP file",
        ),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "Ray" not in result.stdout, args

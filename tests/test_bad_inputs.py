"""A catalogue of bad inputs on every command: each exits with status 2 before anything loads, with one message
naming the key or argument (and, where there is one, the value), and no traceback.

The commands run in this process (their ``main`` behind ``run_cli``, as ``python -m`` runs them), so the whole
catalogue takes seconds; a case that got through would start a model or Ray and fail here on its exit status.
"""

from __future__ import annotations

import importlib
import os

import pytest

from pipeline.config import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "pipeline", "configs", "quickstart.yaml")
TUNE = os.path.join(ROOT, "pipeline", "configs", "tune_toy.yaml")
TOY_SD = os.path.join(ROOT, "pipeline", "assets", "toyworld", "sd")


def train(*overrides: str) -> tuple[str, ...]:
    return ("pipeline.train", "--config", QUICKSTART, *overrides)


def tune(*overrides: str) -> tuple[str, ...]:
    return ("pipeline.tune", "--config", TUNE, *overrides)


def generate(*args: str) -> tuple[str, ...]:
    return ("pipeline.generate", "--model", TOY_SD, "--prompt", "a red circle", *args)


def score(*args: str) -> tuple[str, ...]:
    return ("pipeline.score", "--reward", "symmetry", "--prompt", "a red circle", *args)


# (command, what the message must name); {tmp} is the test's own folder, holding the files made below
CASES = [
    # the training config, through pipeline.train
    (train("train.steps=0"), "train.steps: must be >= 1, got 0"),
    (train("train.stepz=3"), "train.stepz"),
    (train("train.batch_size=two"), "train.batch_size"),
    (train("plan.name=draft_q"), "plan.name"),
    (train("plan.k=0"), "plan.k"),
    (train("sampler.guidance_scale=.nan"), "sampler.guidance_scale: must be a finite number, got nan"),
    (train("optim.lr=.inf"), "optim.lr: must be a finite number"),
    (train("optim.lr=-1"), "optim.lr"),
    (train("trainable.rank=0"), "trainable.rank"),
    (train("eval.require=[eval/no_such_metric>=1]"), "'eval/no_such_metric' is not a metric the evaluation logs"),
    (train("eval.require=[eval/trained>>1]"), "eval.require.0"),
    (train("model.path=/no/such/model"), "model.path"),
    (train("model.device=cuda:7"), "model.device"),
    (train("rewards=[{name: no_such_reward}]"), "rewards.0.name"),
    (train("rewards=[{name: symmetry, weight: .nan}]"), "rewards.0.weight"),
    (train("rewards=[{name: hpsv2}]"), "rewards.0"),
    (train("data.prompts=/no/such/prompts.txt"), "data.prompts"),
    (train("data.prompts={tmp}/empty.txt"), "data.prompts"),
    (train("ray.num_workers=0"), "ray.num_workers"),
    (train("ray.storage_path=gs://bucket/x"), "ray.storage_path"),
    (train("ray.s3_endpoint=ftp://host"), "ray.s3_endpoint"),
    (train("ray.storage_retry_s=-1"), "ray.storage_retry_s"),
    (train("tracking.registered_model=bad/name"), "tracking.registered_model"),
    (train("train.steps"), "train.steps"),
    (("pipeline.train", "--config", "/no/such/config.yaml"), "/no/such/config.yaml"),
    (("pipeline.train", "--config", "{tmp}/broken.yaml"), "broken.yaml"),
    # searches
    (tune("search.metric=eval/no_such_metric"), "search.metric"),
    (tune("search.num_samples=0"), "search.num_samples"),
    (("pipeline.tune", "--config", QUICKSTART), "search"),
    # sampling
    (generate("--guidance", "nan"), "argument --guidance: must be a finite number, got 'nan'"),
    (generate("--lora-scale", "abc"), "argument --lora-scale"),
    (generate("--steps", "0"), "argument --steps: must be an integer >= 1, got '0'"),
    (generate("--num-images", "-1"), "argument --num-images"),
    (generate("--weights", "/no/such/weights"), "/no/such/weights"),
    (("pipeline.generate", "--model", "/no/such/model", "--prompt", "a"), "/no/such/model"),
    (("pipeline.generate", "--model", TOY_SD), "prompt"),
    # scoring and evaluation
    (score("{tmp}/garbage.png"), "garbage.png: not an image file Pillow can read"),
    (score("/no/such/image.png"), "/no/such/image.png"),
    (("pipeline.score", "--reward", "hpsv2", "--prompt", "x", "{tmp}/image.png"), "checkpoint"),
    (("pipeline.score", "--reward", "no_such", "--prompt", "x", "{tmp}/image.png"), "argument --reward"),
    (("pipeline.evaluate", "--config", QUICKSTART, "--weights", "/no/such/weights"), "/no/such/weights"),
    (("pipeline.evaluate", "--config", QUICKSTART, "--lora-scales", "a,b"), "--lora-scales"),
    # the registry and the toy world
    (("pipeline.promote", "--model", "tiny", "--require", "eval/trained>>1"), "--require"),
    (("pipeline.toyworld.claims", "--claims", "no_such_claim"), "no_such_claim"),
    (("pipeline.toyworld.claims", "--seeds", "0"), "argument --seeds: must be an integer >= 2, got '0'"),
    (("pipeline.toyworld.report", "--n", "0"), "argument --n: must be an integer >= 1"),
    (("pipeline.toyworld.audit", "--steps", "x"), "argument --steps: expected an integer, got 'x'"),
    (("pipeline.bench.plans", "--iters", "0"), "argument --iters"),
    (
        ("pipeline.bench.plans", "--family", "flux", "--baseline", "naive"),
        "--baseline: the naive loop is written for DDIM",
    ),
    (
        ("pipeline.bench.plans", "--family", "flux", "--size", "sd15"),
        "--size: the random FLUX model comes in size tiny",
    ),
    (("pipeline.export", "--model", TOY_SD, "--weights", "/no/such/weights", "--out", "x.safetensors"), "/no/such"),
    (("pipeline.export", "--model", TOY_SD, "--weights", TOY_SD, "--out", "x.pt"), "--out"),
    (("pipeline.bench.reward_actors", "--actors", "0"), "argument --actors"),
    (train("--progress-every", "0"), "argument --progress-every"),
    (train("train.gpu=h800"), "train.gpu"),
    (train("eval.batch_size=0"), "eval.batch_size"),
    (("pipeline.plan", "--config", QUICKSTART, "--utilisation", "2"), "--utilisation: a fraction in (0, 1], got 2"),
    (("pipeline.plan", "--config", QUICKSTART, "--gpu", "h800"), "argument --gpu"),
    (("pipeline.plan", "--config", QUICKSTART, "model.path=/models/FLUX.1-dev"), "--architecture flux-dev"),
    (
        ("pipeline.plan", "--config", QUICKSTART, "plan.name=di_star", "distill.teacher_path=/no/such"),
        "distill.teacher_path",
    ),
    (("pipeline.bench.cost", "--model", TOY_SD, "--steps", "0"), "argument --steps"),
]


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "broken.yaml").write_text("train: {steps: 3\n")
    (tmp_path / "garbage.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    return str(tmp_path)


@pytest.mark.parametrize("command, named", CASES, ids=[" ".join(c[0][:1] + c[0][-1:])[-60:] for c in CASES])
def test_a_bad_input_exits_2_with_one_message_naming_it(command, named, files, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{files}/mlflow.db")
    module, *argv = (part.replace("{tmp}", files) for part in command)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert exit.value.code == 2, err
    assert named.replace("{tmp}", files) in err, err
    assert "Traceback" not in err

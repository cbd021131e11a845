"""The training core: resume equals an uninterrupted run, only trainable weights change,
non-finite steps are skipped then abort, and saved weights reload through plain diffusers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.config import from_dict
from trainers.config import Config
from trainers.loop import TrainingAborted, build_trainer, run, run_folder, train_step
from trainers.models import trainable_state_dict
from trainers.reporting import Reporter


def make_config(model_dir: str, out: str, **sections) -> Config:
    data = {
        "model": {"path": model_dir, "device": "cpu"},
        "sampler": {"num_steps": 4, "guidance_scale": 3.0},
        "plan": {"name": "draft_k", "k": 2},
        "optim": {"lr": 0.05, "warmup_steps": 2},
        "trainable": {"init": "gaussian", "rank": 2, "alpha": 3.0},
        "rewards": [{"name": "brightness"}, {"name": "symmetry", "weight": 0.5}],
        "train": {"steps": 4, "batch_size": 2, "output_dir": out, "checkpoint_every": 2},
        "eval": {"every": 0, "images_per_prompt": 1, "max_prompts": 2},
        "tracking": {"enabled": False},
    }  # tests/test_tracking.py turns it on
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return from_dict(Config, data)


class StopAt(Reporter):
    """A reporter that kills the run after a given step has been reported."""

    def __init__(self, step: int):
        self.step = step

    def report(self, step, metrics, checkpoint_dir=None):
        if step == self.step:
            raise KeyboardInterrupt(f"killed after step {step}")


def _trained(run_dir: str) -> dict[str, torch.Tensor]:
    from trainers.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run_dir))


@pytest.mark.parametrize(
    "family, plan, eta",
    [
        ("sd", {"name": "drtune", "k": 2, "early_stop": 1}, 0.5),
        ("sd", {"name": "draft_lv", "k": 1}, 0.5),
        ("sdxl", {"name": "drtune", "k": 2, "early_stop": 1}, 0.5),
        ("sd3", {"name": "draft_lv", "k": 1}, 0.0),
    ],  # flow: no eta
    ids=["drtune", "draft_lv", "sdxl_drtune", "sd3_draft_lv"],
)
def test_resume_equals_uninterrupted_run(request, tmp_path, family, plan, eta):
    """2 steps, a kill after step 3 is logged, resume from the step-2 checkpoint, finish: equals 4 steps."""
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    sections = {"plan": plan, "sampler": {"eta": eta}}
    straight = run(make_config(folder, str(tmp_path / "a"), **sections))
    cfg = make_config(folder, str(tmp_path / "b"), **sections)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, reporters=(StopAt(3),))
    resumed = run(cfg)
    assert resumed.step == straight.step == 4
    a, b = _trained(straight.run_dir), _trained(resumed.run_dir)
    assert a["step"] == b["step"] == 4 and a["sampler"] == b["sampler"]
    for name, tensor in a["trainable"].items():
        assert torch.equal(tensor, b["trainable"][name]), name
    assert torch.equal(a["gen"], b["gen"])
    steps = [json.loads(line)["step"] for line in open(os.path.join(resumed.run_dir, "metrics.jsonl"))]
    assert steps == [0, 1, 2, 3, 4], "each step must be logged exactly once after a resume"
    assert resumed.metrics["train/loss"] == straight.metrics["train/loss"]


def test_step_changes_only_trainable_parameters(tiny_sd_dir, tmp_path):
    tr = build_trainer(make_config(tiny_sd_dir, str(tmp_path)))
    modules = {"unet": tr.model.denoiser, "vae": tr.model.vae, "text": tr.model.text_encoders[0]}
    before = {f"{m}.{n}": p.detach().clone() for m, mod in modules.items() for n, p in mod.named_parameters()}
    metrics = train_step(tr)
    trainable = {f"unet.{n}" for n, p in tr.model.denoiser.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    for m, mod in modules.items():
        for n, p in mod.named_parameters():
            changed = not torch.equal(before[f"{m}.{n}"], p)
            assert changed == (f"{m}.{n}" in trainable), f"{m}.{n} changed={changed}"
    assert metrics["train/grad_norm"] > 0 and metrics["train/skipped_steps"] == 0


def test_full_finetune_trains_every_unet_weight(tiny_sd_dir, tmp_path):
    tr = build_trainer(make_config(tiny_sd_dir, str(tmp_path), trainable={"kind": "full"}))
    assert len(tr.params) == len(list(tr.model.denoiser.parameters()))
    assert not any(p.requires_grad for p in tr.model.vae.parameters())


class NaNReward:
    name = "nan"

    def __call__(self, images, prompts):
        return images.mean((1, 2, 3)) * float("nan")


def test_non_finite_weights_skip_the_step_without_touching_weights(tiny_sd_dir, tmp_path):
    """A NaN adapter weight gives NaN images; the step is skipped and counted, not fed to the reward."""
    tr = build_trainer(make_config(tiny_sd_dir, str(tmp_path)))
    with torch.no_grad():
        tr.params[0].view(-1)[0] = float("nan")
    before = {k: v.clone() for k, v in trainable_state_dict(tr.model).items()}
    metrics = train_step(tr)
    assert tr.skipped == 1 and tr.bad_in_a_row == 1 and metrics["train/skipped_steps"] == 1
    for name, tensor in trainable_state_dict(tr.model).items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, equal_nan=True, msg=name)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_step_trains_fp32_adapters(tiny_sd_dir, tmp_path, dtype):
    tr = build_trainer(make_config(tiny_sd_dir, str(tmp_path), model={"dtype": dtype}))
    before = [p.detach().clone() for p in tr.params]
    metrics = train_step(tr)
    assert tr.skipped == 0 and metrics["train/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in tr.params)
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.params))


def test_non_finite_steps_are_skipped_then_abort(tiny_sd_dir, tmp_path):
    cfg = make_config(tiny_sd_dir, str(tmp_path), train={"max_bad_steps": 3, "steps": 10})
    with pytest.raises(TrainingAborted, match="3 steps in a row.*train.max_bad_steps=3"):
        run(cfg, reward=NaNReward())
    state = _trained(os.path.join(str(tmp_path), "draft_k-seed0"))
    assert state["step"] == 3 and state["skipped"] == 3
    fresh = build_trainer(cfg)
    for name, tensor in trainable_state_dict(fresh.model).items():
        assert torch.equal(tensor, state["trainable"][name]), "skipped steps must not change the weights"


def _bracket(tiny_sd_dir: str, out: str, step: int, every: int = 2, steps: int = 6) -> list[str]:
    """Constraints on the held-out trained reward that only the evaluation at ``step`` of a plain run meets."""
    run(make_config(tiny_sd_dir, out, train={"steps": steps}, eval={"every": every}))
    with open(os.path.join(out, "draft_k-seed0", "metrics.jsonl"), encoding="utf-8") as f:
        values = {m["step"]: m["eval/trained"] for m in map(json.loads, f) if "eval/trained" in m and m["step"]}
    gap = min(abs(values[step] - v) for s, v in values.items() if s != step) / 2
    assert gap > 0
    return [f"eval/trained>={values[step] - gap!r}", f"eval/trained<={values[step] + gap!r}"]


def test_the_best_checkpoint_meeting_eval_require_is_marked_and_kept(tiny_sd_dir, tmp_path):
    """Evaluations at 2, 4, 6 and a checkpoint every step: only the evaluation at step 2 meets the
    constraints, so checkpoint 2 is the best (3, judged by the same evaluation, does not beat it) and survives
    the pruning that keeps the last two."""
    require = _bracket(tiny_sd_dir, str(tmp_path / "plain"), 2)
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path / "req"),
        train={"steps": 6, "checkpoint_every": 1},
        eval={"every": 2, "require": require},
    )
    result = run(cfg)
    root = os.path.join(result.run_dir, "checkpoints")
    assert open(os.path.join(root, "best"), encoding="utf-8").read() == "step_000002"
    assert sorted(n for n in os.listdir(root) if n.startswith("step_")) == ["step_000002", "step_000005", "step_000006"]
    with open(os.path.join(result.run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["step"] == 6 and "stopped" not in summary
    assert summary["best_meeting_require"]["step"] == 2 and summary["best_meeting_require"]["evaluated"] == 2
    assert os.path.isfile(
        os.path.join(summary["best_meeting_require"]["model_dir"], "pytorch_lora_weights.safetensors")
    )
    with open(os.path.join(result.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        met = {m["step"]: m["require/met"] for m in map(json.loads, f) if "require/met" in m}
    assert met == {2: 1.0, 4: 0.0, 6: 0.0}


def test_a_run_stops_at_the_first_evaluation_that_breaks_eval_require_and_stays_stopped(tiny_sd_dir, tmp_path):
    require = _bracket(tiny_sd_dir, str(tmp_path / "plain"), 2)
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path / "req"),
        train={"steps": 6},
        eval={"every": 2, "require": require, "stop_when_broken": True},
    )
    result = run(cfg)
    assert result.step == 4 and set(result.held_out) >= {"trained"}
    with open(os.path.join(result.run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["stopped"]["step"] == 4 and summary["stopped"]["broken"][0].startswith("eval/trained")
    assert summary["best_meeting_require"]["step"] == 2
    assert run(cfg).step == 4, "running it again resumes a finished run: no more steps"
    resumed = make_config(
        tiny_sd_dir,
        str(tmp_path / "req"),
        train={"steps": 6},
        eval={"every": 2, "require": require, "stop_when_broken": False},
    )
    assert run(resumed).step == 6, "resumed with the stop turned off, the run goes on to its end"


@pytest.mark.parametrize(
    "evaluation, message",
    [
        ({"require": ["eval/trained=3"]}, "eval.require.0: 'eval/trained=3' is not METRIC OP NUMBER"),
        ({"stop_when_broken": True}, "eval.stop_when_broken: true needs constraints in eval.require"),
    ],
)
def test_bad_eval_constraints_are_refused_naming_the_key(tiny_sd_dir, tmp_path, evaluation, message):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(tiny_sd_dir, str(tmp_path), eval=evaluation)
    assert message in str(err.value)


def test_clip_frac_counts_the_steps_whose_gradient_was_clipped(tiny_sd_dir, tmp_path):
    """``train/clip_frac``: the share of steps so far whose gradient norm exceeded ``optim.grad_clip``, saved
    with the checkpoint so a resumed run counts on."""
    tiny = build_trainer(make_config(tiny_sd_dir, str(tmp_path / "a"), optim={"grad_clip": 1e-9}))
    first, second = train_step(tiny), train_step(tiny)
    assert first["train/clip_frac"] == second["train/clip_frac"] == 1.0 and tiny.state_dict()["clipped"] == 2
    loose = build_trainer(make_config(tiny_sd_dir, str(tmp_path / "b"), optim={"grad_clip": 1e9}))
    assert train_step(loose)["train/clip_frac"] == 0.0
    off = build_trainer(make_config(tiny_sd_dir, str(tmp_path / "c"), optim={"grad_clip": 0}))
    metrics = train_step(off)
    assert metrics["train/grad_norm"] > 0 and metrics["train/clip_frac"] == 0.0


def test_the_metrics_an_evaluation_logs_are_the_configs_eval_metrics(tiny_sd_dir, tmp_path):
    """``Config.eval_metrics`` (what ``eval.require`` and ``search.metric`` are checked against before anything
    starts) names exactly what the loop logs: a weighted sum's terms, every eval reward, both diversities."""
    from dataclasses import asdict

    from reward_factories import make_clip_score_spec

    clip = asdict(make_clip_score_spec(str(tmp_path / "clip"), weight=2.0))
    cfg = make_config(
        tiny_sd_dir,
        str(tmp_path / "runs"),
        train={"steps": 2},
        eval={"every": 2, "images_per_prompt": 2, "rewards": [{"name": "sharpness"}, clip]},
    )
    result = run(cfg)
    with open(os.path.join(result.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        logged = {key for line in f for key in json.loads(line) if key.startswith("eval/")}
    assert logged == set(cfg.eval_metrics()), (sorted(logged), cfg.eval_metrics())
    assert (
        "eval/feature_diversity" in logged
        and "eval/trained/symmetry" in logged
        and "eval/clip_score/clip_score" in logged
    )


@pytest.mark.parametrize("damage", ["truncate", "garble", "remove_model"])
def test_a_damaged_latest_checkpoint_is_passed_over_and_the_run_resumes_from_the_one_before(
    tiny_sd_dir, tmp_path, damage
):
    """Steps 1-6 with checkpoints at 2, 4, 6 (keep 2); the step-6 checkpoint is damaged on disk after the run;
    rerun with 8 steps: resume takes step 4 (the manifest catches the damage) and ends equal to a straight run."""
    from trainers.checkpoint import checkpoint_problem, latest_checkpoint

    straight = run(make_config(tiny_sd_dir, str(tmp_path / "a"), train={"steps": 8}))
    cfg = make_config(tiny_sd_dir, str(tmp_path / "b"), train={"steps": 6})
    first = run(cfg)
    newest = os.path.join(first.run_dir, "checkpoints", "step_000006")
    assert checkpoint_problem(newest) is None, "found intact (and remembered so) before the damage"
    if damage == "truncate":
        with open(os.path.join(newest, "state.pt"), "r+b") as f:
            f.truncate(100)
    elif damage == "garble":
        with open(os.path.join(newest, "model", "pytorch_lora_weights.safetensors"), "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"\x00garble!")
    else:
        os.remove(os.path.join(newest, "model", "pytorch_lora_weights.safetensors"))
    damaged: list[str] = []
    assert latest_checkpoint(first.run_dir, damaged) == os.path.join(first.run_dir, "checkpoints", "step_000004")
    assert len(damaged) == 1 and damaged[0].startswith(newest) and checkpoint_problem(newest)
    with pytest.raises(ValueError, match="is damaged"):
        from trainers.checkpoint import load_checkpoint

        load_checkpoint(newest)
    resumed = run(make_config(tiny_sd_dir, str(tmp_path / "b"), train={"steps": 8}))
    a, b = _trained(straight.run_dir), _trained(resumed.run_dir)
    assert a["step"] == b["step"] == 8
    for name, tensor in a["trainable"].items():
        assert torch.equal(tensor, b["trainable"][name]), name
    steps = [json.loads(line)["step"] for line in open(os.path.join(resumed.run_dir, "metrics.jsonl"))]
    assert steps == list(range(9)), "the steps after the good checkpoint are logged again, once"


def test_a_checkpoint_is_hashed_once_per_process_at_resume(tiny_sd_dir, tmp_path, monkeypatch):
    """Resume asks about the latest checkpoint several times (the run-folder check, the resume point, the load):
    its files are hashed once; a file rewritten afterwards, even to the same size, is hashed again."""
    from pipeline.preflight import run_folder_problems
    from trainers import checkpoint

    cfg = make_config(tiny_sd_dir, str(tmp_path), train={"steps": 2})
    run(cfg)
    hashed = []
    sha256 = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda path: hashed.append(path) or sha256(path))
    assert run_folder_problems(make_config(tiny_sd_dir, str(tmp_path), train={"steps": 4})) == []
    newest = checkpoint.latest_checkpoint(run_folder(cfg))
    files = len(hashed)
    assert files >= 2 and checkpoint.load_checkpoint(newest)["step"] == 2
    assert len(hashed) == files, "no second hashing"
    state = os.path.join(newest, "state.pt")
    data = open(state, "rb").read()
    with open(state, "wb") as f:
        f.write(data[:-1] + bytes([data[-1] ^ 1]))
    assert "state.pt differs" in checkpoint.checkpoint_problem(newest)


def test_a_full_disk_stops_the_run_with_one_message_and_keeps_the_last_checkpoint(tiny_sd_dir, tmp_path):
    """The step-6 checkpoint cannot be written (a file-size limit, as a full disk or quota fails a write): the run
    stops with one WriteFailed naming the folder, no partial copy is left, step 4 stays the checkpoint to resume,
    and the rerun ends equal to a straight run."""
    import subprocess
    import sys

    from trainers.checkpoint import latest_checkpoint

    straight = run(make_config(tiny_sd_dir, str(tmp_path / "a"), train={"steps": 8}))
    first = run(make_config(tiny_sd_dir, str(tmp_path / "b"), train={"steps": 4}))
    step_4 = os.path.join(first.run_dir, "checkpoints", "step_000004")
    metrics_bytes = os.path.getsize(os.path.join(first.run_dir, "metrics.jsonl"))
    limit = 4 * metrics_bytes + 4096  # room for the metrics of two more steps, none for a checkpoint's state
    assert limit < os.path.getsize(os.path.join(step_4, "state.pt"))
    script = f"""
import resource, signal, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_training import make_config
from trainers.checkpoint import WriteFailed
from trainers.loop import run
cfg = make_config({tiny_sd_dir!r}, {str(tmp_path / "b")!r}, train={{"steps": 8}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    run(cfg)
except WriteFailed as err:
    print(err)
    sys.exit(3)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    message = result.stdout.strip()
    step_6 = os.path.join(first.run_dir, "checkpoints", "step_000006")
    assert message.startswith(f"could not write {step_6} (") and "free space (df -h" in message, message
    assert len(message.splitlines()) == 1, message
    names = os.listdir(os.path.join(first.run_dir, "checkpoints"))
    assert not [n for n in names if n.startswith(".tmp_")] and "step_000006" not in names, names
    assert latest_checkpoint(first.run_dir) == step_4
    resumed = run(make_config(tiny_sd_dir, str(tmp_path / "b"), train={"steps": 8}))
    a, b = _trained(straight.run_dir), _trained(resumed.run_dir)
    for name, tensor in a["trainable"].items():
        assert torch.equal(tensor, b["trainable"][name]), name


def test_a_run_killed_before_its_first_checkpoint_logs_step_0_once(tiny_sd_dir, tmp_path):
    """Killed after step 0 is logged but before any checkpoint: the rerun starts over and its history holds each
    step once (found by tests/kill_resume.py)."""
    cfg = make_config(tiny_sd_dir, str(tmp_path), eval={"every": 2, "images_per_prompt": 2})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, reporters=(StopAt(0),))
    result = run(cfg)
    steps = [json.loads(line)["step"] for line in open(os.path.join(result.run_dir, "metrics.jsonl"))]
    assert steps == [0, 1, 2, 3, 4]

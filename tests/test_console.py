"""The main job's console (``pipeline.console``): what a run's events print on a terminal and off one,
and that a process's own output goes to the log file while the console keeps the real stdout."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from pipeline.console import Console, ConsoleReporter, held_out_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"eval/trained": 60.0, "eval/feature_diversity": 0.40}


def events_of(total: int, evals: dict[int, float], checkpoints: set[int]) -> list[dict]:
    """The events rank 0 sends for a run of ``total`` steps: through the reporter the workers use."""
    sent: list[dict] = []
    reporter = ConsoleReporter(sent.append)
    reporter.start({})
    reporter.report(0, dict(BASE))
    for step in range(1, total + 1):
        metrics = {"train/loss": -float(step), "train/reward": float(step), "perf/step_seconds": 0.5}
        if step in evals:
            metrics |= {"eval/trained": evals[step], "eval/feature_diversity": 0.30}
        reporter.report(step, metrics, f"/runs/x/checkpoints/step_{step:06d}" if step in checkpoints else None)
    return sent


def render(events: list[dict], total: int, tty: bool, models: dict[int, int] | None = None) -> str:
    out = io.StringIO()
    console = Console(total, out, out, tty=tty)
    for event in events:
        if event["kind"] == "checkpoint" and event["step"] in (models or {}):  # MLflow logs the model first
            console(
                {
                    "kind": "model",
                    "step": event["step"],
                    "uri": f"models:/m-{event['step']}",
                    "name": "toy",
                    "version": models[event["step"]],
                    "late": False,
                }
            )
        console(event)
    console.close()
    return out.getvalue()


def test_off_a_terminal_progress_is_one_line_per_tenth_with_eval_and_checkpoint_lines():
    text = render(events_of(40, {20: 70.0, 40: 75.5}, {20, 40}), 40, tty=False, models={20: 1, 40: 2})
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == [f"{s}/40" for s in range(4, 41, 4)]
    assert all("| reward " in line and "s/step | ETA " in line for line in progress)
    assert "ETA 0:00" in progress[-1]
    evals = [line for line in lines if line.startswith("eval step")]
    assert evals == [
        "eval step 0 (base): trained 60.00, feature_diversity 0.4000",
        "eval step 20: trained 70.00 (+10.00), feature_diversity 0.3000 (-0.1000)",
        "eval step 40: trained 75.50 (+15.50), feature_diversity 0.3000 (-0.1000)",
    ]
    assert [line for line in lines if line.startswith("checkpoint")] == [
        f"checkpoint step {s}: /runs/x/checkpoints/step_{s:06d} | MLflow toy version {v} (models:/m-{s})"
        for s, v in ((20, 1), (40, 2))
    ]
    assert len(lines) == len(set(lines)) == 10 + 3 + 2 and "\r" not in text


def test_on_a_terminal_one_bar_is_redrawn_and_lines_print_above_it():
    text = render(events_of(10, {5: 65.0}, {10}), 10, tty=True)
    screen = text.split("\n")
    assert sum("eval step" in line for line in screen) == 2 and sum("checkpoint step" in line for line in screen) == 1
    assert text.count("\r\033[K[") == 10 + 2, "drawn at every step, and again under the lines printed while it shows"
    final = screen[-2].rsplit("\r\033[K", 1)[-1]
    assert final.startswith("[####################] step 10/10 | reward 10 | loss -10")
    assert text.endswith("\n")


def test_an_evaluation_says_whether_it_meets_eval_require():
    sent: list[dict] = []
    reporter = ConsoleReporter(sent.append, ["eval/feature_diversity>=0.35"])
    reporter.start({})
    reporter.report(0, dict(BASE))
    reporter.report(2, {"eval/trained": 70.0, "eval/feature_diversity": 0.30})
    out = io.StringIO()
    console = Console(2, out, out, tty=False)
    for event in sent:
        console(event)
    assert out.getvalue().splitlines() == [
        "eval step 0 (base): trained 60.00, feature_diversity 0.4000 | meets eval.require",
        "eval step 2: trained 70.00 (+10.00), feature_diversity 0.3000 (-0.1000) | breaks "
        "eval/feature_diversity>=0.35 (0.3)",
    ]


def test_a_model_logged_after_an_outage_gets_its_own_line():
    out = io.StringIO()
    console = Console(4, out, out, tty=False)
    console({"kind": "checkpoint", "step": 2, "folder": "/runs/x/checkpoints/step_000002"})
    console({"kind": "model", "step": 2, "uri": "models:/m-2", "name": "toy", "version": 3, "late": True})
    console({"kind": "note", "text": "mlflow: checkpoint model logged again after the outage", "error": False})
    assert out.getvalue().splitlines() == [
        "checkpoint step 2: /runs/x/checkpoints/step_000002",
        "mlflow: checkpoint step 2 logged as toy version 3 (models:/m-2)",
        "mlflow: checkpoint model logged again after the outage",
    ]


def test_the_held_out_table_shows_each_reward_with_its_interval_and_the_teacher_for_di_star():
    held_out = {
        "trained": {"base": 67.157, "tuned": 83.673, "diff": 16.516, "diff_low": 10.784, "diff_high": 22.528},
        "sharpness": {"base": 0.0276, "tuned": 0.02462, "diff": -0.00297, "diff_low": -0.00529, "diff_high": -0.000473},
    }
    assert held_out_table(held_out).splitlines() == [
        "held-out        base      tuned  gain [95% CI]",
        "trained        67.16      83.67  +16.52 [+10.78, +22.53]",
        "sharpness    0.02760    0.02462  -0.00297 [-0.00529, -0.00047]",
    ]
    di_star = held_out_table(held_out, {"teacher/one_step/trained": 40.0, "teacher/multi_step/trained": 80.0})
    assert di_star.splitlines()[1].endswith("40.00 / 80.00")


def test_output_goes_to_the_log_and_the_console_to_the_real_stdout(tmp_path):
    """In a child process, so the test's own stdout is left alone: Python's, a child's and raw-fd output
    all land in the log; only the console's lines reach stdout, and the streams are restored after."""
    log = tmp_path / "train.log"
    script = f"""
import os, sys
from pipeline.console import output_to
with output_to({str(log)!r}) as (out, err):
    print("library print")
    print("library warning", file=sys.stderr)
    os.write(1, b"raw fd write\\n")
    os.system("echo from a child process")
    out.write("console line\\n")
    err.write("console error\\n")
print("after the block")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "console line\nafter the block\n" and result.stderr == "console error\n"
    assert log.read_text().splitlines() == ["library print", "library warning", "raw fd write", "from a child process"]

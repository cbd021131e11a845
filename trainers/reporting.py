"""The contract between the training loop and whatever watches it (files, the console, MLflow, Ray):
the loop calls ``start`` once, ``report`` after every step, and ``close`` at the end (rank 0)."""

from __future__ import annotations

import json
import os

from trainers.checkpoint import write_text_atomic


class Reporter:
    """Receives metrics (and, when one was written, a checkpoint folder) after each step; subclasses override
    :meth:`report`, and :meth:`start` and :meth:`close` when they need them."""

    def start(self, state: dict) -> None:
        """Called once before the first report with the run's ``extra`` dict, which the reporter may read and
        write (it is saved in every checkpoint and restored on resume)."""

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called on rank 0 when the run has finished."""


class JsonlLog(Reporter):
    """Metrics as one JSON object per line in ``<run>/metrics.jsonl``. The steps the run reports again are
    dropped: those past the resume point, and all of a run that starts over from step 0 (its step-0
    evaluation included)."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        kept = []
        if os.path.isfile(path) and resume_step > 0:
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if _step_of(line) is not None and _step_of(line) <= resume_step]
        write_text_atomic(path, "".join(kept))  # a kill now must not leave the history cut short

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def read_history(path: str) -> list[dict]:
    """The metrics lines of a ``metrics.jsonl`` (torn lines left out), oldest first; none without the file."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if _step_of(line) is not None]


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a blank or torn (partly written) line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None

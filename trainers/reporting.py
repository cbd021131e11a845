"""The contract between the training loop and whatever watches it (files, the console, MLflow, Ray):
the loop calls ``start`` once, ``report`` after every step, and ``close`` at the end (rank 0)."""

from __future__ import annotations


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

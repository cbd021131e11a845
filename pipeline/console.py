"""What ``python -m pipeline.train`` prints, and where everything else goes.

The console shows one progress line (redrawn on a terminal; off a terminal, as in ``ray job submit``
logs, one line every ``every`` steps), one line per evaluation with the gain over the base model, one
line per checkpoint with its MLflow model or version, notes (the MLflow run, outages), and the final
held-out table. Ray's, MLflow's and the model libraries' own output go to ``<run folder>/train.log``:
:func:`output_to` sends a process's stdout and stderr there at the file-descriptor level, so C++ and
child-process output follows too.

Rank 0 turns the training core's reports into small events (plain dicts, so they cross Ray as they
are) with :class:`ConsoleReporter`; the driver renders them with :class:`Console`. The events:

- ``{"kind": "step", "step", "reward", "loss", "seconds"}``
- ``{"kind": "eval", "step", "metrics": {eval/...}, "base": {eval/... at step 0}, "broken": [...] or None}``
- ``{"kind": "checkpoint", "step", "folder"}``
- ``{"kind": "model", "step", "uri", "name", "version"}`` (from ``pipeline.tracking.MlflowReporter``)
- ``{"kind": "note", "text", "error"}``
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from trainers.constraints import broken, parse_constraints
from trainers.reporting import Reporter

Event = dict
Emit = Callable[[Event], None]
LOG_NAME = "train.log"


def note(text: str, error: bool = False) -> Event:
    return {"kind": "note", "text": text, "error": error}


def print_event(event: Event) -> None:
    """The plain rendering, for reporters used without a console (tests, library use): notes and models only."""
    if event["kind"] == "note":
        print(event["text"], file=sys.stderr if event["error"] else sys.stdout, flush=True)
    elif event["kind"] == "model":
        print(f"mlflow: logged checkpoint step {event['step']} as {model_text(event)}", flush=True)


def model_text(event: Event) -> str:
    version = f"{event['name']} version {event['version']}" if event.get("version") is not None else None
    return f"{version} ({event['uri']})" if version else event["uri"]


class ConsoleReporter(Reporter):
    """A reporter of the training core (rank 0) that sends what the console shows to ``emit``; with
    ``require`` (``eval.require``), each evaluation says whether it meets the constraints."""

    def __init__(self, emit: Emit, require: list[str] = ()):
        self.emit = emit
        self.base: dict[str, float] = {}
        self.require = parse_constraints(require)

    def start(self, state: dict) -> None:
        self.base = _evals(state.get("eval_before", {}))  # restored on resume

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        if "train/loss" in metrics:
            self.emit(
                {
                    "kind": "step",
                    "step": step,
                    "reward": metrics["train/reward"],
                    "loss": metrics["train/loss"],
                    "seconds": metrics["perf/step_seconds"],
                }
            )
        evals = _evals(metrics)
        if evals:
            self.base = self.base or evals
            breaks = broken(self.require, evals) if self.require else None
            self.emit({"kind": "eval", "step": step, "metrics": evals, "base": self.base, "broken": breaks})
        if checkpoint_dir:
            self.emit({"kind": "checkpoint", "step": step, "folder": checkpoint_dir})


def _evals(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}


class Console:
    """Renders events on ``out`` (``err`` for error notes); call it with each event, then :meth:`close`."""

    def __init__(
        self,
        total_steps: int,
        out: TextIO | None = None,
        err: TextIO | None = None,
        every: int | None = None,
        tty: bool | None = None,
    ):
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.total = total_steps
        self.every = every or max(1, math.ceil(total_steps / 10))
        self.tty = self.out.isatty() if tty is None else tty
        self.models: dict[int, Event] = {}  # logged before their checkpoint line
        self.started: tuple[float, int] | None = None  # (time, step) of the first step seen
        self.bar = ""  # the progress line now on screen (terminal only)

    def __call__(self, event: Event) -> None:
        getattr(self, "_" + event["kind"])(event)

    def line(self, text: str, error: bool = False) -> None:
        """Print one line above the progress bar."""
        stream = self.err if error else self.out
        if self.bar:
            self.out.write("\r\033[K")
            self.out.flush()
        stream.write(text + "\n")
        stream.flush()
        if self.bar:
            self.out.write(self.bar)
            self.out.flush()

    def close(self) -> None:
        if self.bar:
            self.out.write("\n")
            self.out.flush()
            self.bar = ""

    # ------------------------------------------------------------ events

    def _note(self, event: Event) -> None:
        self.line(event["text"], event["error"])

    def _step(self, event: Event) -> None:
        step, now = event["step"], time.monotonic()
        if self.started is None:
            self.started = (now - event["seconds"], step - 1)
        since, first = self.started
        per_step = (now - since) / max(step - first, 1)
        text = (
            f"step {step}/{self.total} | reward {event['reward']:.4g} | loss {event['loss']:.4g} | "
            f"{per_step:.2f} s/step | ETA {_clock(per_step * (self.total - step))}"
        )
        if self.tty:
            done = int(20 * step / self.total)
            self.bar = f"\r\033[K[{'#' * done}{'.' * (20 - done)}] {text}"
            self.out.write(self.bar)
            self.out.flush()
        elif step % self.every == 0 or step == self.total:
            self.line(text)

    def _eval(self, event: Event) -> None:
        step, base = event["step"], event["base"]
        parts = []
        for key, value in event["metrics"].items():
            d = decimals(base.get(key, value))
            gain = f" ({value - base[key]:+.{d}f})" if step and key in base else ""
            parts.append(f"{key[len('eval/') :]} {value:.{d}f}{gain}")
        breaks = event.get("broken")
        require = "" if breaks is None else (" | breaks " + "; ".join(breaks) if breaks else " | meets eval.require")
        self.line(f"eval step {step}{' (base)' if step == 0 else ''}: " + ", ".join(parts) + require)

    def _checkpoint(self, event: Event) -> None:
        model = self.models.pop(event["step"], None)
        mlflow = f" | MLflow {model_text(model)}" if model else ""
        self.line(f"checkpoint step {event['step']}: {_short(event['folder'])}{mlflow}")

    def _model(self, event: Event) -> None:
        if event.get("late"):  # logged after an MLflow outage, its checkpoint line is long printed
            self.line(f"mlflow: checkpoint step {event['step']} logged as {model_text(event)}")
        else:
            self.models[event["step"]] = event


def held_out_table(held_out: dict[str, dict[str, float]], metrics: dict[str, float] | None = None) -> str:
    """The final table: base -> tuned per held-out reward with the 95% interval of the gain, and for a
    one-step generator (DI*) the teacher's one-step and multi-step scores."""
    metrics = metrics or {}
    teacher = any(k.startswith("teacher/") for k in metrics)
    width = max([len(name) for name in held_out] + [8])
    rows = [
        f"{'held-out':<{width}}  {'base':>9}  {'tuned':>9}  gain [95% CI]"
        + (f"{'':16}teacher 1-step / multi-step" if teacher else "")
    ]
    for name, r in held_out.items():
        d = decimals(r["base"])
        row = f"{name:<{width}}  {r['base']:>9.{d}f}  {r['tuned']:>9.{d}f}  {gain_text(r):<29}"
        if teacher:
            row += "/".join(
                f" {metrics[k]:.{d}f} " if (k := f"teacher/{kind}/{name}") in metrics else " - "
                for kind in ("one_step", "multi_step")
            )
        rows.append(row.rstrip())
    return "\n".join(rows)


def gain_text(stats: dict[str, float]) -> str:
    """A held-out gain with its 95% interval, e.g. ``+4.74 [+2.26, +7.64]``."""
    d = decimals(stats["base"])
    return f"{stats['diff']:+.{d}f} [{stats['diff_low']:+.{d}f}, {stats['diff_high']:+.{d}f}]"


def decimals(reference: float) -> int:
    """Decimals that show ``reference`` with about four significant digits (0 to 6)."""
    if not math.isfinite(reference) or reference == 0:
        return 4
    return min(6, max(0, 3 - math.floor(math.log10(abs(reference)))))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def _short(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


@contextlib.contextmanager
def output_to(path: str) -> Iterator[tuple[TextIO, TextIO]]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` (appended) for the
    block, and yield ``(out, err)`` streams on the original ones, for the console.

    When ``sys.stdout`` or ``sys.stderr`` is not a file (a caller captured them), they are left alone and
    yielded as they are.
    """
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        fds = None
    if fds is None:
        yield sys.stdout, sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    saved = [os.dup(fd) for fd in fds]
    streams = []
    try:
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd in fds:
            os.dup2(log, fd)
        os.close(log)
        streams = [os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8") for fd in saved]
        yield streams[0], streams[1]
    finally:
        for stream in (sys.stdout, sys.stderr, *streams):
            stream.flush()
        for fd, original in zip(fds, saved):
            os.dup2(original, fd)
            os.close(original)
        for stream in streams:
            stream.close()

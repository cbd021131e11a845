"""Atomic, resumable checkpoints in a run folder.

Layout: ``<run>/checkpoints/step_000010/`` holds ``state.pt`` (trainable tensors, optimiser, LR
schedule, RNG states, prompt-sampler position, counters) and ``model/`` (the trained weights in
diffusers format, loadable without this project). A checkpoint is written into a hidden
temporary folder and renamed into place, then ``latest`` is replaced atomically, so a crash
never leaves a half-written checkpoint that resume would pick up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch

LATEST = "latest"
BEST = "best"  # the best checkpoint that met eval.require, when the run has constraints


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str, step: int, state: dict, write_model: Callable[[str], None], keep: int = 2, best: int | None = None
) -> str:
    """Write ``state`` (a ``torch.save``-able dict) and the model export for ``step``; return its folder.

    Args:
        run_dir: The run folder.
        step: Number of optimiser steps taken.
        state: Everything needed to resume.
        write_model: Writes the trained weights in a portable format into the folder it is given.
        keep: How many most recent checkpoints to keep (older ones are deleted).
        best: The step of the best checkpoint (this one or an earlier one): marked in ``best`` and never pruned.
    """
    root = checkpoint_root(run_dir)
    os.makedirs(root, exist_ok=True)
    name = f"step_{step:06d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp_{name}_{os.getpid()}")
    for stale in (n for n in os.listdir(root) if n.startswith(".tmp_")):  # left by a crash mid-write
        shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
    os.makedirs(tmp)
    torch.save(state, os.path.join(tmp, "state.pt"))
    write_model(os.path.join(tmp, "model"))
    _fsync_tree(tmp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(os.path.join(root, LATEST), name)
    if best is not None:
        write_text_atomic(os.path.join(root, BEST), f"step_{best:06d}")
    _prune(root, keep, f"step_{best:06d}" if best is not None else None)
    return final


def _fsync_tree(folder: str) -> None:
    """Flush every file under ``folder`` to disk before the rename makes it visible."""
    for base, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(base, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _prune(root: str, keep: int, spare: str | None = None) -> None:
    names = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    for name in names[:-keep]:
        if name != spare:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def latest_checkpoint(run_dir: str) -> str | None:
    """Folder of the newest complete checkpoint, or None."""
    root = checkpoint_root(run_dir)
    marker = os.path.join(root, LATEST)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        folder = os.path.join(root, f.read().strip())
    if not os.path.isfile(os.path.join(folder, "state.pt")):
        raise FileNotFoundError(
            f"{marker} names {folder}, which has no state.pt; the run folder was modified by "
            "hand. Delete the marker to start over, or point it at an existing step_* folder"
        )
    return folder


def load_checkpoint(folder: str) -> dict:
    """The state dict saved by :func:`save_checkpoint`."""
    return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=False)

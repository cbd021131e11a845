"""Atomic, resumable checkpoints in a run folder.

Layout: ``<run>/checkpoints/step_000010/`` holds ``state.pt`` (trainable tensors, optimiser, LR
schedule, RNG states, prompt-sampler position, counters) and ``model/`` (the trained weights in
diffusers format, loadable without this project) and, written last, ``manifest.json`` (every file's
size and SHA-256). A checkpoint is written into a hidden temporary folder and renamed into place, then
``latest`` is replaced atomically, so a crash never leaves a half-written checkpoint that resume would pick
up; a checkpoint damaged afterwards (a truncated or garbled file) fails its manifest, and resume takes the
newest intact one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable

import torch

LATEST = "latest"
BEST = "best"  # the best checkpoint that met eval.require, when the run has constraints
MANIFEST = "manifest.json"  # written last into each checkpoint: {relative path: {"bytes", "sha256"}}


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


class WriteFailed(OSError):
    """A checkpoint or the final weights could not be written (a full disk, a quota, a file-size limit); the
    partial copy is removed and what was there before is kept."""


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

    Raises:
        WriteFailed: If anything could not be written; the latest intact checkpoint stays the one to resume.
    """
    root = checkpoint_root(run_dir)
    name = f"step_{step:06d}"

    def write(folder: str) -> None:
        torch.save(state, os.path.join(folder, "state.pt"))
        write_model(os.path.join(folder, "model"))
        write_text_atomic(os.path.join(folder, MANIFEST), json.dumps(_inventory(folder), indent=1, sort_keys=True))

    os.makedirs(root, exist_ok=True)
    for stale in (n for n in os.listdir(root) if n.startswith(".tmp_")):  # left by a crash mid-write
        shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
    final = write_folder_atomic(os.path.join(root, name), write)
    try:
        write_text_atomic(os.path.join(root, LATEST), name)
        if best is not None:
            write_text_atomic(os.path.join(root, BEST), f"step_{best:06d}")
    except OSError as err:
        raise _write_failed(root, err) from err
    _prune(root, keep, f"step_{best:06d}" if best is not None else None)
    return final


def write_folder_atomic(folder: str, write: Callable[[str], None]) -> str:
    """Fill ``folder`` through ``write(tmp)`` on a hidden sibling that is flushed and renamed into place, so the
    folder is whole or absent; return it.

    Raises:
        WriteFailed: If ``write`` or the flush fails (the partial copy removed, a previous ``folder`` kept).
    """
    parent, name = os.path.split(folder)
    tmp = os.path.join(parent, f".tmp_{name}_{os.getpid()}")
    try:
        os.makedirs(tmp)
        write(tmp)
        _fsync_tree(tmp)
    except Exception as err:  # noqa: BLE001 - torch and safetensors report a failed write as their own errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(folder, err) from err
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _write_failed(target: str, err: BaseException) -> WriteFailed:
    parent = os.path.dirname(os.path.abspath(target))
    free = shutil.disk_usage(parent).free / 2**20
    return WriteFailed(
        f"could not write {target} ({type(err).__name__}: {str(err).strip()[:300]}); {free:.0f} MiB are free "
        f"on its disk: free space (df -h {parent}) and rerun, which resumes from the latest intact checkpoint"
    )


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


def latest_checkpoint(run_dir: str, damaged: list[str] | None = None) -> str | None:
    """Folder of the newest intact checkpoint, or None: the one ``latest`` names, else, when that one is damaged
    (see :func:`checkpoint_problem`), the newest intact ``step_*`` folder before it. Each damaged checkpoint
    passed over is appended to ``damaged`` as ``"<folder>: <problem>"``."""
    root = checkpoint_root(run_dir)
    marker = os.path.join(root, LATEST)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        named = f.read().strip()
    older = sorted((n for n in os.listdir(root) if n.startswith("step_") and n < named), reverse=True)
    for name in [named, *older]:
        folder = os.path.join(root, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if damaged is not None:
            damaged.append(f"{folder}: {problem}")
    return None


# Checkpoints found intact in this process, with each file's size, inode and change times then: resume asks about
# the same checkpoint several times at start-up (the run-folder check, the resume point, the load, MLflow's
# catch-up), and a full fine-tune's checkpoint takes a minute to hash.
_intact: dict[str, dict[str, tuple[int, ...]]] = {}


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not an intact checkpoint (a missing ``state.pt``, or a file that differs from the
    manifest in size or checksum), or None. A checkpoint written before manifests existed is taken as intact.
    Checksums are computed once per process: a folder found intact whose files keep their sizes, inodes and
    change times is not hashed again."""
    if not os.path.isfile(os.path.join(folder, "state.pt")):
        return "no state.pt"
    folder = os.path.abspath(folder)
    stamps = _stamps(folder)
    if _intact.get(folder) == stamps:
        return None
    problem = _manifest_problem(folder)
    if problem is None:
        _intact[folder] = stamps
    return problem


def _stamps(folder: str) -> dict[str, tuple[int, ...]]:
    """Each file's size, inode, and modification and status-change times (the latter cannot be set back)."""
    stamps = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            info = os.stat(path)
            stamps[os.path.relpath(path, folder)] = (info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    return stamps


def _manifest_problem(folder: str) -> str | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            expected = json.load(f)
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST} ({err})"
    found = _inventory(folder)
    for name, entry in sorted(expected.items()):
        if name not in found:
            return f"{name} is missing"
        if found[name]["bytes"] != entry["bytes"]:
            return f"{name} has {found[name]['bytes']} bytes, {entry['bytes']} were written"
        if found[name] != entry:
            return f"{name} differs from what was written (SHA-256)"
    return None


def _inventory(folder: str) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": digest}}`` of every file under ``folder`` but the manifest."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder)
            if rel != MANIFEST:
                files[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    return files


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(folder: str) -> dict:
    """The state dict saved by :func:`save_checkpoint`.

    Raises:
        ValueError: If the checkpoint is damaged (:func:`checkpoint_problem`).
    """
    problem = checkpoint_problem(folder)
    if problem:
        raise ValueError(f"checkpoint {folder} is damaged: {problem}; resume from an earlier checkpoint")
    return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=False)

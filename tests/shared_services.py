"""One service for all of a test run's pytest-xdist workers: the first worker that asks starts it, the
others join it, and it stops once the last of them has left.

The worker that started a service owns its processes, so at its session's end it waits until every
other worker that joined has left (or died) before it stops the service. A worker's session ends only
when the scheduler has no more tests to give it, so that wait never holds a test up. Without xdist (a
serial run, or one test file alone) the service is simply started and stopped around the session.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from filelock import FileLock

OWNER_WAIT_S = 3600.0  # the longest an owner waits for the other workers to leave


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def shared(
    name: str, folder: str | None, start: Callable[[], tuple[dict[str, Any], Callable[[], None]]]
) -> Iterator[dict[str, Any]]:
    """Yield the description ``start()`` returned (JSON: addresses, paths) of the service ``name``.

    Args:
        name: The service's name, unique within the run.
        folder: A folder all the run's workers share, or None when there is only this process.
        start: Starts the service; returns its description and the function that stops it.
    """
    if folder is None:
        description, stop = start()
        try:
            yield description
        finally:
            stop()
        return
    state_path = os.path.join(folder, f"{name}.json")
    lock = FileLock(os.path.join(folder, f"{name}.lock"))
    me, stop = os.getpid(), None
    with lock:
        state = _read(state_path)
        if state is None or not _alive(state["owner"]):
            description, stop = start()
            state = {"owner": me, "users": [], "description": description}
        state["users"].append(me)
        _write(state_path, state)
    try:
        yield state["description"]
    finally:
        with lock:
            state = _read(state_path)
            state["users"].remove(me)
            _write(state_path, state)
        if stop is not None:
            _wait_for_the_others(state_path, lock, me)
            stop()


def _wait_for_the_others(state_path: str, lock: FileLock, me: int) -> None:
    """Until no other live worker uses the service; then remove its state, so that a late worker starts
    a new one rather than joining this one as it stops."""
    deadline = time.monotonic() + OWNER_WAIT_S
    while True:
        with lock:
            state = _read(state_path)
            if not [pid for pid in state["users"] if pid != me and _alive(pid)] or time.monotonic() > deadline:
                os.remove(state_path)
                return
        time.sleep(0.5)


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write(path: str, state: dict[str, Any]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)

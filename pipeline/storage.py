"""Ray Train's run storage: a folder every node sees, or ``s3://bucket/prefix``; and patience with S3.

An S3 endpoint that stops answering while a checkpoint goes up (or while a restarted worker downloads the
one it resumes from) does not end the run: :class:`Patience` retries the transfer with growing waits, says
so on the console each time, and gives up only after ``ray.storage_retry_s`` seconds. A local storage
folder is not retried: its errors (a full disk, a missing mount) do not pass with time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

from trainers.config import Config

T = TypeVar("T")
FIRST_WAIT_S, LONGEST_WAIT_S = 1.0, 60.0


class StorageUnavailable(RuntimeError):
    """The run storage did not answer within ``ray.storage_retry_s``."""


def run_storage(cfg: Config):
    """``(storage_path, filesystem)`` for Ray Train: a local folder (absolute, no filesystem), or for
    ``s3://bucket/prefix`` the path ``bucket/prefix`` with a pyarrow S3 filesystem whose endpoint is
    given explicitly (``ray.s3_endpoint``; the AWS environment variables alone are not reliable for
    S3-compatible stores). Credentials come from the usual AWS chain on each node, never the config."""
    r = cfg.ray
    path = r.storage_path or os.path.join(cfg.train.output_dir, "ray")
    if not is_remote(cfg):
        return os.path.abspath(path), None
    from pyarrow.fs import S3FileSystem

    options = {}
    if r.s3_endpoint:
        scheme, _, host = r.s3_endpoint.rstrip("/").partition("://")
        options = {"endpoint_override": host, "scheme": scheme}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return path[len("s3://") :].rstrip("/"), S3FileSystem(region=region or "us-east-1", **options)


def is_remote(cfg: Config) -> bool:
    return bool(cfg.ray.storage_path and cfg.ray.storage_path.startswith("s3://"))


def stored_run_exists(storage: str, filesystem, name: str) -> bool:
    """True if Ray Train's storage already holds a run folder ``name``."""
    if filesystem is None:
        return os.path.isdir(os.path.join(storage, name))
    from pyarrow.fs import FileType

    return filesystem.get_file_info(f"{storage}/{name}").type != FileType.NotFound


class Patience:
    """Runs storage transfers, retrying those that fail with an ``OSError`` (pyarrow's S3 errors: refused
    and reset connections, timeouts) after 1, 2, 4, ... 60 s, for up to ``ray.storage_retry_s`` seconds
    in all; each failure and the recovery are told through ``say(text, error=False)``."""

    def __init__(
        self,
        cfg: Config,
        say: Callable[..., None],
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.remote = is_remote(cfg)
        self.limit_s = cfg.ray.storage_retry_s if self.remote else 0.0
        self.where, self.say, self.sleep, self.clock = cfg.ray.storage_path, say, sleep, clock

    def __call__(self, what: str, transfer: Callable[[], T]) -> T:
        started, wait, failures = self.clock(), FIRST_WAIT_S, 0
        while True:
            try:
                result = transfer()
            except OSError as err:
                failures += 1
                waited = self.clock() - started
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                if waited + wait > self.limit_s:
                    if not self.limit_s:
                        raise
                    raise StorageUnavailable(
                        f"storage: {what} at {self.where} still failing after {waited:.0f} s and {failures} "
                        f"tries ({reason}); the run stops here and resumes from its last stored checkpoint "
                        "when started again; raise ray.storage_retry_s to wait longer"
                    ) from err
                self.say(
                    f"storage: {what} at {self.where} failed ({reason}); retrying in {wait:.0f} s "
                    f"(ray.storage_retry_s={self.limit_s:g})",
                    error=True,
                )
                self.sleep(wait)
                wait = min(2 * wait, LONGEST_WAIT_S)
                continue
            if failures:
                self.say(f"storage: {what} at {self.where} done after {failures} failed tries")
            return result


@contextlib.contextmanager
def local_copy(checkpoint, patience: Patience):
    """A folder on this node holding Ray checkpoint ``checkpoint``: the stored folder itself when the
    storage is local, else a temporary download, retried with ``patience``."""
    if not patience.remote:
        with checkpoint.as_directory() as folder:
            yield folder
        return
    with tempfile.TemporaryDirectory(prefix="checkpoint-") as folder:
        yield patience("downloading the checkpoint to resume from", lambda: checkpoint.to_directory(folder))

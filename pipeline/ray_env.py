"""Starting Ray safely on one machine, and the settings every local cluster shares (docs/platform.md).

``local_ray_env()`` is what a Ray that runs on this machine only needs before ``import ray``: every listener on
127.0.0.1 and token authentication on. ``init_ray`` joins a cluster or starts such a local one; the local
cluster of ``cluster/local.py`` and the tests' fixtures use the same helpers. Ray itself is imported only by
``init_ray``.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable

from trainers.config import Config

# Ray's token: its value, else a file holding it (docs/platform.md); Ray's own default file is ~/.ray/auth_token
TOKEN, TOKEN_PATH = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# Where a cluster's processes look for its state API (the dashboard); each local cluster sets its own
API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"


def say_on_console(text: str, error: bool = False) -> None:
    print(text, file=sys.stderr if error else sys.stdout, flush=True)


def init_ray(cfg: Config, say: Callable[..., None] = say_on_console) -> None:
    """Join the configured (or job's) cluster, else start a local in-process Ray on 127.0.0.1 behind token
    auth. Workers' and actors' output stays in their logs (Ray's session folder; training workers write
    theirs to the run folder's ``train.log``), not on this driver's console; ``say(text, error=False)``
    prints what to tell."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:  # Ray reads these when it is imported, so set them first
        for key, value in local_ray_env().items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "rt-ray"))
        if os.environ["RAY_AUTH_MODE"] != "token":
            say(
                f"warning: RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} turns off Ray's token authentication; "
                "anyone who reaches this machine's Ray ports can run code in the job",
                error=True,
            )
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    context = ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=own_dashboard_port(),
        object_store_memory=1 << 30,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    token = f"{TOKEN_PATH}={os.environ[TOKEN_PATH]}" if TOKEN_PATH in os.environ else f"{TOKEN} from this shell"
    auth = f"a client needs RAY_AUTH_MODE=token and {token}" if os.environ["RAY_AUTH_MODE"] == "token" else "no token"
    say(f"Ray dashboard: http://{context.dashboard_url} ({auth})")


def local_ray_env() -> dict[str, str]:
    """The environment of a Ray that runs on this machine only (docs/platform.md), set before ``import ray``:
    every Ray listener on 127.0.0.1, token authentication on (the token's file made if there is none),
    torch's gloo and NCCL data sockets on the loopback interface, and no usage statistics."""
    loopback = loopback_interface()
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        **({} if os.environ.get(TOKEN) else {TOKEN_PATH: token_file()}),
        **({"GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback} if loopback else {}),
    }


def token_file() -> str:
    """``RAY_AUTH_TOKEN_PATH``, else Ray's default ``~/.ray/auth_token``; written with a new random token if
    missing, and readable by its owner only (mode 0600)."""
    path = os.environ.get(TOKEN_PATH) or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def token_header() -> dict[str, str]:
    """``Authorization: Bearer <token>``, the header Ray's HTTP API asks for under token authentication,
    with the token of ``RAY_AUTH_TOKEN`` or of ``token_file()``."""
    token = os.environ.get(TOKEN)
    if not token:
        with open(token_file(), encoding="utf-8") as f:
            token = f.read().strip()
    return {"Authorization": f"Bearer {token}"}


def loopback_interface() -> str | None:
    """The name of the network interface holding 127.0.0.1 (``lo`` on Linux), if any."""
    import psutil

    return next(
        (name for name, addresses in psutil.net_if_addrs().items() if any(a.address == "127.0.0.1" for a in addresses)),
        None,
    )


def own_dashboard_port() -> int:
    """A free port for the dashboard of a local cluster about to start, exported as its state-API address.

    Ray's own processes (Train V2's placement-group cleaner among them) find the state API through
    ``RAY_API_SERVER_ADDRESS``, which they inherit; without it they take whichever local cluster they
    find first, so two local clusters on one machine could watch each other's controllers and never
    free their resources."""
    port = free_port()
    os.environ[API_SERVER_ADDRESS] = f"http://127.0.0.1:{port}"
    return port


def free_port() -> int:
    """A loopback TCP port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

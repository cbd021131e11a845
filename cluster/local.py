"""A local stack on one machine, bound to 127.0.0.1: an S3 endpoint (moto), an MLflow tracking server
storing its artifacts there, and a Ray head to ``ray job submit`` to.

    python -m cluster.local up [--services s3,mlflow,ray] [--port-gcs 6380] [--port-dashboard 8266]
                               [--port-s3 9050] [--port-mlflow 5050] [--num-cpus N] [--resources JSON]
    python -m cluster.local status
    python -m cluster.local down [--keep-logs]

``up`` checks its arguments and that every port is free, then starts each service in its own session
(``ray start --head --block`` for Ray), waits until the service answers its HTTP health probe and
records what it started in the state file ``<state dir>/local-stack.json``. The state directory is
``--state-dir``, else ``$REWARD_TUNING_STACK_DIR``, else ``~/.cache/reward-tuning``. ``down`` stops
exactly the processes the state file names (each checked by PID *and* start time, so a reused PID is
never signalled) plus the processes they started since (Ray workers, job drivers): SIGTERM, then
SIGKILL after a grace period. It never runs ``ray stop``, which would stop every Ray on the machine.

The Ray head follows docs/platform.md: ``pipeline.ray_env.local_ray_env()`` keeps every listener on
127.0.0.1, turns on token authentication (a client needs ``RAY_AUTH_MODE=token`` and the token file
that ``status`` names) and turns off usage stats; ``RAY_TMPDIR`` is a fresh short directory of its
own (Unix socket paths must stay under 108 bytes); the directory holding the running Python is put
first on ``PATH``, because a job's ``python`` is looked up on the head's ``PATH``; and draining on
SIGTERM is turned off so ``down`` takes seconds, not 30.

Exit status: 0 on success (also ``up`` when already up, ``down`` when nothing is up), 1 when a
service fails to start or stop (``status``: when the stack is not up and healthy), 2 for bad
arguments or a busy port, before anything starts.

A stack is a list of :class:`Service` values built from the arguments (``SERVICES``). The S3 endpoint
is moto's in-memory server, and the MLflow database lives in the server's own folder, so the stack
is for trying things: ``down`` forgets every run and artifact it held. The Ray head's environment
carries the tracking URI and S3 settings, so jobs submitted to it track to this MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from pipeline.ray_env import API_SERVER_ADDRESS, TOKEN, TOKEN_PATH, free_port, local_ray_env, token_header

STATE_FILE = "local-stack.json"
STATE_DIR_ENV = "REWARD_TUNING_STACK_DIR"
HOST = "127.0.0.1"
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range; no service port may fall inside
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL


class UsageError(ValueError):
    """A bad argument or a busy port: reported on one line, exit status 2, nothing started."""


@dataclass(frozen=True, kw_only=True)
class Service:
    """One process tree of the stack and how to tell that it is ready.

    Attributes:
        name: Short name, shown by ``status`` and used as the key in the state file.
        command: The command line; it must stay in the foreground (``down`` signals its process tree).
        env: Variables added to this process's environment for the service.
        ports: Option name -> port; all must be free on 127.0.0.1 before anything starts.
        addresses: What clients connect to, by role, for ``status``.
        probe: HTTP URL that answers 200 once the service is ready.
        workdir: The service's own directory (logs, Ray session); ``down`` removes it unless --keep-logs.
        drop_env: Variables of this process the service must not inherit.
    """

    name: str
    command: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    addresses: dict[str, str]
    probe: str
    workdir: str
    drop_env: tuple[str, ...] = ()
    after_ready: tuple[tuple[str, ...], ...] = ()  # actions once it answers, e.g. ("create_bucket", endpoint, name)


def ray_head(args: argparse.Namespace, workdir: str) -> Service:
    """The Ray head: GCS, raylet, dashboard (job API) and Ray client server, all on 127.0.0.1."""
    if args.object_store_mib < 75:
        raise UsageError(f"--object-store-mib {args.object_store_mib}: Ray needs at least 75")
    ports = {
        "--port-gcs": args.port_gcs,
        "--port-dashboard": args.port_dashboard,
        "--port-client": args.port_client,
        "--port-agent": args.port_agent,
    }
    bindir = os.path.dirname(sys.executable)  # not resolved: .venv/bin/python is a symlink out of the venv
    ray = _tool("ray")
    command = [
        ray,
        "start",
        "--head",
        "--block",
        f"--node-ip-address={HOST}",
        f"--dashboard-host={HOST}",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--port={args.port_gcs}",
        f"--dashboard-port={args.port_dashboard}",
        f"--ray-client-server-port={args.port_client}",
        f"--dashboard-agent-listen-port={args.port_agent}",
        f"--object-store-memory={args.object_store_mib << 20}",
    ]
    command += [f"--num-cpus={args.num_cpus}"] if args.num_cpus is not None else []
    command += [f"--resources={json.dumps(args.resources)}"] if args.resources else []
    dashboard = f"http://{HOST}:{args.port_dashboard}"
    ray_env = local_ray_env()
    env = {
        **ray_env,
        "RAY_TMPDIR": workdir,
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        API_SERVER_ADDRESS: dashboard,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        **client_env(args),
    }
    addresses = {
        "gcs": f"{HOST}:{args.port_gcs}",
        "dashboard": dashboard,
        "jobs": dashboard,
        "client": f"ray://{HOST}:{args.port_client}",
        "token": ray_env.get(TOKEN_PATH, f"${TOKEN} (this shell's)"),
    }
    # the job API answers only once the dashboard's job module is up, later than /api/version
    return Service(
        name="ray",
        command=command,
        env=env,
        ports=ports,
        addresses=addresses,
        probe=f"{dashboard}/api/jobs/",
        workdir=workdir,
        drop_env=("RAY_ADDRESS",),
    )


def client_env(args: argparse.Namespace) -> dict[str, str]:
    """What a client of the stack's S3 and MLflow needs; the Ray head passes it on to jobs and workers."""
    env = {}
    if "s3" in args.services:
        env |= S3_CLIENT_ENV
    if "mlflow" in args.services:
        env["MLFLOW_TRACKING_URI"] = f"http://{HOST}:{args.port_mlflow}"
    return env


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local-stack", "AWS_SECRET_ACCESS_KEY": "local-stack"}  # moto takes any
S3_CLIENT_ENV = {**S3_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "reward-tuning"


def s3_server(args: argparse.Namespace, workdir: str) -> Service:
    """An S3-compatible endpoint: moto's server, in memory (what it stores is gone after ``down``)."""
    endpoint = f"http://{HOST}:{args.port_s3}"
    command = [_tool("moto_server"), "-H", HOST, "-p", str(args.port_s3)]
    return Service(
        name="s3",
        command=command,
        env={},
        ports={"--port-s3": args.port_s3},
        addresses={"endpoint": endpoint, "bucket": f"s3://{BUCKET}"},
        probe=f"{endpoint}/moto-api/",
        workdir=workdir,
        after_ready=(("create_bucket", endpoint, BUCKET),),
    )


def mlflow_server(args: argparse.Namespace, workdir: str) -> Service:
    """A slim MLflow tracking server (one worker, no job runner; docs/platform.md): runs in sqlite in its
    folder, artifacts proxied to the S3 endpoint's bucket when the stack has one (else in its folder)."""
    ui = f"http://{HOST}:{args.port_mlflow}"
    artifacts = f"s3://{BUCKET}/mlflow" if "s3" in args.services else os.path.join(workdir, "artifacts")
    command = [
        _tool("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(args.port_mlflow),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{os.path.join(workdir, 'mlflow.db')}",
        "--artifacts-destination",
        artifacts,
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if "s3" in args.services:
        env |= {**S3_CLIENT_ENV, "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{args.port_s3}"}
    return Service(
        name="mlflow",
        command=command,
        env=env,
        ports={"--port-mlflow": args.port_mlflow},
        addresses={"ui": ui, "tracking": ui, "artifacts": artifacts},
        probe=f"{ui}/health",
        workdir=workdir,
        drop_env=("MLFLOW_TRACKING_URI",),
    )


def _tool(name: str) -> str:
    """A command installed beside the running Python (the venv's), else on ``PATH``."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.isfile(beside) else shutil.which(name) or name


def create_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)


AFTER_READY = {"create_bucket": create_bucket}
SERVICES: dict[str, Callable[[argparse.Namespace, str], Service]] = {  # started in this order
    "s3": s3_server,
    "mlflow": mlflow_server,
    "ray": ray_head,
}


# ---------------------------------------------------------------- processes (Linux /proc; no macOS yet)


@dataclass(frozen=True)
class Proc:
    """One row of the process table."""

    ppid: int
    sid: int
    start: int  # start time in clock ticks after boot: with the PID, identifies the process
    zombie: bool


def proc_table() -> dict[int, Proc]:
    """Every process on the machine, from ``/proc/<pid>/stat``."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        table[int(entry)] = Proc(int(fields[1]), int(fields[3]), int(fields[19]), fields[0] == "Z")
    return table


def alive(pid: int, start: int, table: dict[int, Proc]) -> bool:
    """True if ``pid`` runs and is still the process that started at ``start`` (not a reused PID)."""
    proc = table.get(pid)
    return proc is not None and proc.start == start and not proc.zombie


def process_tree(pid: int, start: int, table: dict[int, Proc]) -> set[tuple[int, int]]:
    """``(pid, start)`` of a live process, its session and all their descendants (Ray workers and job
    drivers leave the session but stay descendants)."""
    if not alive(pid, start, table):
        return set()
    tree = {p for p, proc in table.items() if proc.sid == pid or p == pid}
    grew = True
    while grew:
        children = {p for p, proc in table.items() if proc.ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return {(p, table[p].start) for p in tree if not table[p].zombie}


def signal_all(pids: set[tuple[int, int]], sig: int) -> None:
    """Send ``sig`` to each ``(pid, start)`` that is still that process."""
    table = proc_table()
    for pid, start in pids:
        if alive(pid, start, table):  # checked just before, so a reused PID is never signalled
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def wait_gone(pids: set[tuple[int, int]], timeout: float) -> set[tuple[int, int]]:
    """Wait until none of ``pids`` (nor what they start meanwhile) is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        table = proc_table()
        for pid, start in list(pids):
            pids |= process_tree(pid, start, table)
        left = {(p, s) for p, s in pids if alive(p, s, table)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---------------------------------------------------------------- ports and probes


def port_is_free(port: int) -> bool:
    """True if nothing listens on ``port`` on 127.0.0.1 (or on all addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def check_ports(services: list[Service]) -> None:
    """Raise :class:`UsageError` for a port out of range, in Ray's worker range, used twice, or busy
    (the argument mistakes first, so the message does not depend on what else runs)."""
    seen: dict[int, str] = {}
    ports = [(option, port) for svc in services for option, port in svc.ports.items()]
    for option, port in ports:
        if not 1024 <= port <= 65535:
            raise UsageError(f"{option} {port}: must be in 1024-65535")
        if port in RAY_WORKER_PORTS:
            raise UsageError(
                f"{option} {port}: Ray gives ports {RAY_WORKER_PORTS.start}-{RAY_WORKER_PORTS.stop - 1} "
                f"to its workers; pick one outside, e.g. {option} {free_port()}"
            )
        if port in seen:
            raise UsageError(f"{option} {port}: already used for {seen[port]}; give each service port its own number")
        seen[port] = option
    for option, port in ports:
        if not port_is_free(port):
            raise UsageError(
                f"port {port} ({option}) is already in use on {HOST}; stop what listens there "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or pick another port, "
                f"e.g. {option} {free_port()}"
            )


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` answers HTTP 200 (sent with this shell's Ray token, which the job API asks for)."""
    try:
        request = urllib.request.Request(url, headers=token_header())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- state file


def state_path(args: argparse.Namespace) -> str:
    """``<state dir>/local-stack.json``."""
    return os.path.join(args.state_dir, STATE_FILE)


def read_state(path: str) -> dict | None:
    """The recorded stack (``{"services": [record, ...]}``), or None if nothing is recorded."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_state(path: str, state: dict) -> None:
    """Replace the state file atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(f"{path}.tmp", path)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Serialise ``up``/``down``/``status`` on one state file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def live_processes(record: dict) -> set[tuple[int, int]]:
    """The processes of one recorded service that still run, with everything they started since ``up``."""
    table = proc_table()
    roots = {(record["pid"], record["start"]), *(tuple(p) for p in record.get("pids", []))}
    return set().union(*(process_tree(pid, start, table) for pid, start in roots))


# ---------------------------------------------------------------- up / status / down


def start(svc: Service) -> dict:
    """Start ``svc`` in its own session; return its state record (not yet ready)."""
    log = os.path.join(svc.workdir, f"{svc.name}.log")
    env = {k: v for k, v in os.environ.items() if k not in svc.drop_env} | svc.env
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                svc.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as err:
        shutil.rmtree(svc.workdir, ignore_errors=True)
        raise RuntimeError(f"cannot run {svc.command[0]}: {err}") from None
    start_ticks = proc_table()[proc.pid].start  # the child is not reaped before we look: it is ours
    return {**asdict(svc), "pid": proc.pid, "start": start_ticks, "log": log, "pids": [[proc.pid, start_ticks]]}


def wait_ready(record: dict, timeout: float) -> None:
    """Poll the probe until it answers; raise ``RuntimeError`` with the log's tail if the service dies or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while not healthy(record["probe"]):
        if not alive(record["pid"], record["start"], proc_table()):
            raise RuntimeError(f"{record['name']} exited while starting:\n{log_tail(record['log'])}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{record['name']} did not answer {record['probe']} within {timeout:.0f} s "
                f"(--timeout):\n{log_tail(record['log'])}"
            )
        time.sleep(0.5)
    record["pids"] = sorted(process_tree(record["pid"], record["start"], proc_table()))


def log_tail(path: str, lines: int = 15) -> str:
    """The last ``lines`` lines of a service's log, for error messages."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def stop(record: dict, keep_logs: bool) -> tuple[int, set[tuple[int, int]]]:
    """Stop one service's processes (SIGTERM, then SIGKILL); return how many needed SIGKILL and any
    that survived even that."""
    pids = live_processes(record)
    signal_all(pids, signal.SIGTERM)
    stubborn = wait_gone(pids, STOP_GRACE_S)
    signal_all(stubborn, signal.SIGKILL)
    left = wait_gone(stubborn, 5.0) if stubborn else set()
    if not left and not keep_logs:
        shutil.rmtree(record["workdir"], ignore_errors=True)
    return len(stubborn), left


def stack_up(args: argparse.Namespace) -> int:
    """``up``: check arguments and ports, start every service, wait until each answers, record it."""
    path = state_path(args)
    state = read_state(path)
    if state and any(live_processes(r) for r in state["services"]):
        print(f"local stack: already up (state file {path}); `python -m cluster.local down` first to change it")
        print_status(state)
        return 0
    if state:
        print(f"local stack: removing the state of a stack that no longer runs ({path})")
        stack_down(args, quiet=True, keep_logs=False)
    # every argument and port is checked before anything starts; the workdirs come after
    builders = [build for name, build in SERVICES.items() if name in args.services]
    check_ports([build(args, "") for build in builders])
    t0, state = time.monotonic(), {"services": []}
    try:
        for build in builders:
            svc = build(args, tempfile.mkdtemp(prefix="rt-stack-", dir=short_tmp()))
            state["services"].append(start(svc))
            write_state(path, state)  # recorded before waiting, so `down` can clean up after a crash here
            wait_ready(state["services"][-1], args.timeout)
            for action, *values in svc.after_ready:
                AFTER_READY[action](*values)
            write_state(path, state)
    except BaseException as err:  # also Ctrl-C: stop what was started
        print(f"local stack: start failed, stopping what was started: {err}", file=sys.stderr)
        stack_down(args, quiet=True, keep_logs=True)
        if state["services"]:
            print(f"local stack: logs kept in {', '.join(r['workdir'] for r in state['services'])}", file=sys.stderr)
        if isinstance(err, Exception):
            return 1
        raise
    print(f"local stack: up in {time.monotonic() - t0:.1f} s (state file {path})")
    print_status(state)
    return 0


def stack_status(args: argparse.Namespace) -> int:
    """``status``: 0 if everything recorded is up and healthy, else 1."""
    path = state_path(args)
    state = read_state(path)
    if not state:
        print(f"local stack: nothing is up (no state file {path})")
        return 1
    print(f"local stack: state file {path}")
    return 0 if print_status(state) else 1


def print_status(state: dict) -> bool:
    """Print each service's processes, health and addresses; return True if all are up and healthy."""
    ok = True
    for r in state["services"]:
        n, good = len(live_processes(r)), healthy(r["probe"])
        ok &= bool(n) and good
        health = "healthy" if good else f"NOT answering {r['probe']}"
        print(
            f"{r['name']}: {n} processes (pid {r['pid']}), {health}; logs in {r['workdir']}"
            if n
            else f"{r['name']}: not running (pid {r['pid']} is gone); `python -m cluster.local down` cleans up"
        )
        for role, address in r["addresses"].items():
            print(f"  {role:<10} {address}")
    by_name = {r["name"]: r for r in state["services"]}
    if not ok:
        return ok
    if "ray" in by_name:
        ray = by_name["ray"]
        token = ray["addresses"]["token"]
        auth = f"RAY_AUTH_MODE=token {TOKEN_PATH}={token}" if not token.startswith("$") else "RAY_AUTH_MODE=token"
        print(
            f"submit a job:  {auth} ray job submit --address {ray['addresses']['jobs']} --working-dir . "
            "-- python -m pipeline.train"
        )
        print(f"join directly: python -m pipeline.train ray.address={ray['addresses']['gcs']}")
    if "s3" in by_name or "mlflow" in by_name:
        overrides = [f"tracking.uri={by_name['mlflow']['addresses']['tracking']}"] if "mlflow" in by_name else []
        if "s3" in by_name:
            overrides += [
                f"ray.storage_path=s3://{BUCKET}/ray",
                f"ray.s3_endpoint={by_name['s3']['addresses']['endpoint']}",
            ]
            print("S3 credentials (moto takes any): " + " ".join(f"export {k}={v}" for k, v in S3_CREDENTIALS.items()))
        print(
            f"track and store: python -m pipeline.train {' '.join(overrides)}"
            + ("  (jobs on this Ray head get these settings' environment already)" if "ray" in by_name else "")
        )
    return ok


def stack_down(args: argparse.Namespace, quiet: bool = False, keep_logs: bool | None = None) -> int:
    """``down``: stop the recorded services in reverse order and remove the state file.

    Args:
        args: The parsed command line.
        quiet: Print nothing on success (used by ``up`` to clean up after itself).
        keep_logs: Keep the services' directories; None = ``--keep-logs``.
    """
    keep_logs = args.keep_logs if keep_logs is None else keep_logs
    path = state_path(args)
    state = read_state(path)
    if not state:
        if not quiet:
            print(f"local stack: nothing is up (no state file {path})")
        return 0
    failed = False
    for record in reversed(state["services"]):
        t0, n = time.monotonic(), len(live_processes(record))
        killed, left = stop(record, keep_logs)
        failed |= bool(left)
        if left:
            print(f"{record['name']}: could not stop pids {sorted(p for p, _ in left)}", file=sys.stderr)
        elif not quiet:
            print(
                f"{record['name']}: stopped {n} processes in {time.monotonic() - t0:.1f} s"
                + (f" ({killed} needed SIGKILL after {STOP_GRACE_S:.0f} s)" if killed else "")
                + (f"; logs kept in {record['workdir']}" if keep_logs else "")
            )
    if failed:
        return 1
    os.remove(path)
    return 0


def short_tmp() -> str:
    """``/tmp`` when it exists: macOS's per-user temp dir is too long for Ray's socket paths."""
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


# ---------------------------------------------------------------- command line


def resources_arg(text: str) -> dict[str, float]:
    """``--resources``: a JSON object of resource names to non-negative numbers."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}); e.g. '{{\"reward_node\": 1}}'") from None
    if not (isinstance(value, dict) and all(isinstance(v, (int, float)) and v >= 0 for v in value.values())):
        raise argparse.ArgumentTypeError(f"expected a JSON object of names to non-negative numbers, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: ``up|status|down`` with their options (bad values exit 2, from argparse)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=os.environ.get(STATE_DIR_ENV)
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reward-tuning"),
        help=f"where {STATE_FILE} lives (default: ${STATE_DIR_ENV}, else ~/.cache/reward-tuning)",
    )
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the stack")
    up.add_argument("--port-gcs", type=int, default=6380, help="Ray GCS port: the cluster address (default 6380)")
    up.add_argument("--port-dashboard", type=int, default=8266, help="dashboard and job API (default 8266)")
    up.add_argument("--port-client", type=int, default=6381, help="Ray client server, ray:// (default 6381)")
    up.add_argument("--port-agent", type=int, default=6382, help="dashboard agent HTTP port (default 6382)")
    up.add_argument("--num-cpus", type=non_negative, default=None, help="CPUs Ray may use (default: all)")
    up.add_argument("--object-store-mib", type=non_negative, default=1024, help="object store size (default 1024)")
    up.add_argument(
        "--resources",
        type=resources_arg,
        default=None,
        help="custom resources of the head, e.g. '{\"reward_node\": 1}'",
    )
    up.add_argument("--port-s3", type=int, default=9050, help="S3 endpoint (moto, in memory; default 9050)")
    up.add_argument("--port-mlflow", type=int, default=5050, help="MLflow tracking server and UI (default 5050)")
    up.add_argument(
        "--services",
        type=services_arg,
        default=tuple(SERVICES),
        help=f"comma-separated subset of {','.join(SERVICES)} (default: all)",
    )
    up.add_argument("--timeout", type=positive, default=120.0, help="seconds to wait for readiness (default 120)")
    sub.add_parser("status", parents=[common], help="show what runs and where")
    down = sub.add_parser("down", parents=[common], help="stop what `up` started")
    down.add_argument("--keep-logs", action="store_true", help="keep the services' directories (Ray logs)")
    return parser.parse_args(argv)


def services_arg(text: str) -> tuple[str, ...]:
    """``--services``: names from ``SERVICES``, comma-separated."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SERVICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown service(s) {unknown or [text]}; choose from {', '.join(SERVICES)}")
    return names


def positive(text: str) -> float:
    """``--timeout``: seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def non_negative(text: str) -> int:
    """A whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Run one command under the state file's lock; return the exit status."""
    args = parse_args(argv)
    commands = {"up": stack_up, "status": stack_status, "down": stack_down}
    with locked(state_path(args)):
        try:
            return commands[args.command](args)
        except UsageError as err:
            print(f"python -m cluster.local {args.command}: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())

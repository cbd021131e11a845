"""Cluster definitions match what the training config needs, and the local stack starts and stops cleanly.

The manifests in ``cluster/`` are parsed and checked for the fields this project relies on: the
RayJob's entrypoint names the training module and a shipped config that loads; every worker group or
node type that must host a training worker or a reward actor offers what ``ray:`` asks for (GPUs,
CPUs, the custom ``reward_node`` resource) in sufficient number; every absolute path in the config
lies on a volume that every node mounts; image and Ray version agree with ``cluster/Dockerfile``.
The local-stack tests start a real Ray head with ``python -m cluster.local`` on ports free at test
time (not the ``ray_session`` fixture) and check that ``down`` stops exactly what ``up`` recorded.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.request

import pytest
import yaml

from cluster.local import alive, free_port, proc_table
from pipeline.config import load_config, to_dict
from pipeline.ray_env import token_header
from pipeline.train import parse_args
from trainers.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE = os.path.join(ROOT, "cluster", "kubernetes")
LAUNCHER = os.path.join(ROOT, "cluster", "launcher", "aws.yaml")
DOCKERFILE = os.path.join(ROOT, "cluster", "Dockerfile")


def read_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


RAYJOB = read_yaml(os.path.join(KUBE, "rayjob.yaml"))
RAYCLUSTER = read_yaml(os.path.join(KUBE, "raycluster.yaml"))


def entrypoint_args(entrypoint: str):
    """The RayJob's command line, checked to run the training CLI, parsed by that CLI's own parser."""
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "pipeline.train"], f"unexpected entrypoint {entrypoint!r}"
    return parse_args(argv[3:])


def job_config() -> Config:
    """The training config the RayJob submits (with any overrides on its command line)."""
    args = entrypoint_args(RAYJOB["spec"]["entrypoint"])
    return load_config(Config, os.path.join(ROOT, args.config), args.overrides)


def dockerfile() -> str:
    with open(DOCKERFILE, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- what a cluster definition offers


def k8s_groups(spec: dict) -> dict[str, dict]:
    """Per group: the Ray resources one pod advertises, how many pods there can be, and its mounts."""
    groups = {"head": {**pod_view(spec["headGroupSpec"]), "count": 1}}
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    for group in spec["workerGroupSpecs"]:
        count = group.get("maxReplicas", 0) if autoscaling else group.get("replicas", 0)
        groups[group["groupName"]] = {**pod_view(group), "count": count}
    return groups


def pod_view(group: dict) -> dict:
    """KubeRay's view of one pod: num-cpus/num-gpus from rayStartParams, else the Ray container's limits,
    plus the custom resources in rayStartParams (a JSON object inside a quoted string)."""
    params, pod = group.get("rayStartParams", {}), group["template"]["spec"]
    ray_container = pod["containers"][0]
    limits = ray_container.get("resources", {}).get("limits", {})
    resources = {
        "CPU": float(params.get("num-cpus", limits.get("cpu", 0))),
        "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
    }
    if "resources" in params:
        resources |= json.loads(json.loads(params["resources"]))
    mounts = {m["mountPath"] for m in ray_container.get("volumeMounts", [])}
    images = {c["image"] for c in pod["containers"]}
    return {"resources": resources, "mounts": mounts, "images": images}


def launcher_groups(cfg: dict) -> dict[str, dict]:
    """The same view of the cluster launcher's node types; volumes come from ``docker run -v``."""
    mounts = {opt.split(":")[1] for opt in cfg["docker"].get("run_options", []) if opt.startswith("-v ")}
    groups = {}
    for name, node in cfg["available_node_types"].items():
        count = 1 if name == cfg["head_node_type"] else node.get("max_workers", 0)
        groups["head" if name == cfg["head_node_type"] else name] = {
            "resources": {k: float(v) for k, v in node["resources"].items()},
            "count": count,
            "mounts": mounts,
            "images": {cfg["docker"]["image"]},
        }
    return groups


DEFINITIONS = {
    "raycluster": lambda: k8s_groups(RAYCLUSTER["spec"]),
    "rayjob": lambda: k8s_groups(RAYJOB["spec"]["rayClusterSpec"]),
    "launcher": lambda: launcher_groups(read_yaml(LAUNCHER)),
}


# ---------------------------------------------------------------- what the training config needs


def slots(offered: dict[str, float], need: dict[str, float]) -> float:
    """How many units of ``need`` fit on one node offering ``offered``."""
    return min((math.floor(offered.get(k, 0) / v) for k, v in need.items() if v > 0), default=math.inf)


def placement_problems(cfg: Config, groups: dict[str, dict]) -> list[str]:
    """What the cluster lacks for ``cfg.ray``: training workers on groups without the reward resource,
    reward actors on groups with it, nothing of either on the head."""
    r = cfg.ray
    train_need = {"CPU": r.cpus_per_worker, "GPU": 1.0 if r.use_gpu else 0.0, **r.worker_resources}
    reward_need = {"CPU": r.reward_num_cpus, "GPU": r.reward_num_gpus, **r.reward_resources}
    workers = {name: g for name, g in groups.items() if name != "head"}
    reward_groups = {n: g for n, g in workers.items() if any(k in g["resources"] for k in r.reward_resources)}
    train_groups = {n: g for n, g in workers.items() if n not in reward_groups}
    problems = []
    train_slots = sum(g["count"] * slots(g["resources"], train_need) for g in train_groups.values())
    if train_slots < r.num_workers:
        problems.append(
            f"ray.num_workers={r.num_workers} workers needing {train_need}, but the groups without "
            f"reward resources ({sorted(train_groups)}) hold only {train_slots}"
        )
    actors = max(r.reward_actors, 1) if r.reward_resources else r.reward_actors
    reward_slots = sum(g["count"] * slots(g["resources"], reward_need) for g in reward_groups.values())
    if reward_slots < actors:
        problems.append(
            f"{actors} reward actor(s) needing {reward_need} (ray.reward_*), but groups "
            f"{sorted(reward_groups)} hold only {reward_slots}"
        )
    if groups["head"]["resources"].get("CPU", 1) != 0:
        problems.append("the head advertises CPUs, so training workers or reward actors may land on it")
    return problems


def absolute_paths(node) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in absolute_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in absolute_paths(v)]
    return [node] if isinstance(node, str) and node.startswith("/") else []


def path_problems(cfg: Config, groups: dict[str, dict]) -> list[str]:
    """Every absolute path in the config must be on a mount that every group (head included) has."""
    problems = []
    for path in absolute_paths(to_dict(cfg)):
        missing = [n for n, g in groups.items() if not any(path.startswith(m.rstrip("/") + "/") for m in g["mounts"])]
        if missing:
            problems.append(f"{path} is on no volume mounted by {missing}")
    return problems


# ---------------------------------------------------------------- the manifests


def test_rayjob_entrypoint_runs_the_training_cli_on_a_shipped_config():
    args = entrypoint_args(RAYJOB["spec"]["entrypoint"])
    assert os.path.isfile(os.path.join(ROOT, "pipeline", "train.py"))
    assert not os.path.isabs(args.config), "a relative --config resolves against the job's working_dir"
    assert os.path.isfile(os.path.join(ROOT, args.config)), f"{args.config} is not in the repository"
    cfg = job_config()
    assert cfg.ray.enabled and cfg.ray.use_gpu


def test_rayjob_takes_its_address_from_kuberay():
    cfg = job_config()
    assert cfg.ray.address is None, "KubeRay sets RAY_ADDRESS for the job; a fixed ray.address would override it"
    spec = RAYJOB["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "RAY_ADDRESS" not in runtime_env.get("env_vars", {})
    for group in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert "RAY_ADDRESS" not in {e["name"] for e in container.get("env", [])}


def test_rayjob_working_dir_is_the_project_folder_of_the_image():
    runtime_env = yaml.safe_load(RAYJOB["spec"]["runtimeEnvYAML"])
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile(), re.MULTILINE)
    assert runtime_env["working_dir"] == workdirs[-1]
    assert {".git", ".venv", "runs"} <= set(runtime_env["excludes"])
    assert RAYJOB["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode", "only the submitter pod can upload"


def test_rayjob_cluster_is_the_raycluster():
    assert RAYJOB["spec"]["rayClusterSpec"] == RAYCLUSTER["spec"], "keep rayjob.yaml's rayClusterSpec in sync"


@pytest.mark.parametrize("definition", sorted(DEFINITIONS))
def test_cluster_offers_what_the_training_config_needs(definition):
    groups, cfg = DEFINITIONS[definition](), job_config()
    assert cfg.ray.reward_resources == {"reward_node": 1} and cfg.ray.reward_num_gpus >= 1
    assert cfg.ray.worker_resources == {"train_node": 1} and cfg.ray.reward_actors >= 1
    assert placement_problems(cfg, groups) == []
    assert path_problems(cfg, groups) == []


def test_placement_check_catches_a_missing_reward_resource_and_too_few_gpu_workers():
    no_reward, no_train = copy.deepcopy(RAYCLUSTER["spec"]), copy.deepcopy(RAYCLUSTER["spec"])
    for group in no_reward["workerGroupSpecs"]:
        if group["groupName"] == "reward-gpu":
            group["rayStartParams"].pop("resources")
    for group in no_train["workerGroupSpecs"]:
        group["maxReplicas"] = 0 if group["groupName"] == "train-gpu" else group["maxReplicas"]
    (reward,) = placement_problems(job_config(), k8s_groups(no_reward))
    assert reward.startswith("1 reward actor(s) needing") and "'reward_node': 1.0" in reward
    (train,) = placement_problems(job_config(), k8s_groups(no_train))  # reward-gpu pods do not count
    assert train.startswith("ray.num_workers=1 workers needing") and "['train-gpu']" in train
    untagged = copy.deepcopy(RAYCLUSTER["spec"])
    untagged["workerGroupSpecs"][0]["rayStartParams"].pop("resources")  # train-gpu without train_node
    (train,) = placement_problems(job_config(), k8s_groups(untagged))
    assert "'train_node': 1" in train


def test_path_check_catches_a_path_off_the_shared_volume():
    cfg = load_config(Config, os.path.join(ROOT, job_config_path()), ["train.output_dir=/scratch/runs"])
    assert path_problems(cfg, DEFINITIONS["raycluster"]()) == [
        "/scratch/runs is on no volume mounted by ['head', 'train-gpu', 'reward-gpu']"
    ]


def job_config_path() -> str:
    return entrypoint_args(RAYJOB["spec"]["entrypoint"]).config


def test_every_definition_runs_the_project_image_at_the_dockerfile_ray_version():
    images = set().union(*(g["images"] for build in DEFINITIONS.values() for g in build().values()))
    assert len(images) == 1, f"one image everywhere, got {sorted(images)}"
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        version = re.search(r'^version = "(.+)"', f.read(), re.MULTILINE).group(1)
    assert images.pop().endswith(f"/reward-tuning:{version}")
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)", dockerfile(), re.MULTILINE).group(1)
    assert RAYCLUSTER["spec"]["rayVersion"] == ray_version


def test_dockerfile_installs_this_project():
    text = dockerfile()
    for folder in ("pipeline", "trainers", "rewards"):
        assert re.search(rf"^COPY .*\b{folder} {folder}$", text, re.MULTILINE), f"{folder}/ is not copied"
    assert re.search(r"pip install .*-c constraints\.txt .*-e \.$", text, re.MULTILINE)


def test_launcher_yaml_follows_the_ray_cluster_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    cfg = read_yaml(LAUNCHER)
    jsonschema.validate(cfg, schema)
    assert cfg["max_workers"] >= sum(n.get("max_workers", 0) for n in cfg["available_node_types"].values())


# ---------------------------------------------------------------- the local stack


def stack(*args: str, state_dir, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m cluster.local ARGS`` with this venv's bin first on PATH (a job's ``python``)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "cluster.local", *args, "--state-dir", str(state_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_ports(n: int) -> list[int]:
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def listening_addresses(pids: list[int]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd") if os.path.isdir(f"/proc/{pid}/fd") else []:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    raw = bytes.fromhex(fields[1].split(":")[0])
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
                    addresses.add(ipaddress.ip_address(words))
    return addresses


def is_loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
def test_local_stack_up_status_down(tmp_path):
    gcs, dashboard, client, agent, s3_port, mlflow_port = free_ports(6)
    ports = [
        "--port-gcs",
        str(gcs),
        "--port-dashboard",
        str(dashboard),
        "--port-client",
        str(client),
        "--port-agent",
        str(agent),
        "--port-s3",
        str(s3_port),
        "--port-mlflow",
        str(mlflow_port),
        "--num-cpus",
        "1",
    ]
    up = stack("up", *ports, state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        with open(tmp_path / "local-stack.json", encoding="utf-8") as f:
            s3, mlflow, ray = json.load(f)["services"]
        assert [s3["name"], mlflow["name"], ray["name"]] == ["s3", "mlflow", "ray"]
        assert ray["addresses"]["gcs"] == f"127.0.0.1:{gcs}"
        assert ray["addresses"]["jobs"] == f"http://127.0.0.1:{dashboard}"
        version = urllib.request.Request(f"http://127.0.0.1:{dashboard}/api/version", headers=token_header())
        with urllib.request.urlopen(version, timeout=10) as response:  # token auth: the session's token
            assert json.load(response)["ray_version"]
        socket.create_connection(("127.0.0.1", gcs), timeout=5).close()
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10) as response:
            assert response.status == 200
        import boto3

        buckets = boto3.client(
            "s3",
            endpoint_url=s3["addresses"]["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        ).list_buckets()["Buckets"]
        assert [b["Name"] for b in buckets] == ["reward-tuning"]
        assert mlflow["addresses"]["artifacts"] == "s3://reward-tuning/mlflow"
        assert ray["env"]["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow_port}"
        recorded = [tuple(p) for svc in (s3, mlflow, ray) for p in svc["pids"]]
        assert len(ray["pids"]) > 5 and all(alive(p, s, proc_table()) for p, s in recorded)
        listening = listening_addresses([p for p, _ in recorded])
        assert listening and all(is_loopback(a) for a in listening), f"listeners off loopback: {listening}"

        status = stack("status", state_dir=tmp_path)
        assert status.returncode == 0 and status.stdout.count("healthy") == 3
        assert f"http://127.0.0.1:{dashboard}" in status.stdout and f"127.0.0.1:{gcs}" in status.stdout
        assert f"tracking.uri=http://127.0.0.1:{mlflow_port}" in status.stdout
        assert f"ray.s3_endpoint=http://127.0.0.1:{s3_port}" in status.stdout
        again = stack("up", *ports, state_dir=tmp_path)
        assert again.returncode == 0 and "already up" in again.stdout
    finally:
        down = stack("down", state_dir=tmp_path)
    assert down.returncode == 0 and "ray: stopped" in down.stdout and "mlflow: stopped" in down.stdout, (
        down.stdout + down.stderr
    )
    table = proc_table()
    assert [p for p, s in recorded if alive(p, s, table)] == []
    assert not (tmp_path / "local-stack.json").exists() and not os.path.exists(ray["workdir"])
    second = stack("down", state_dir=tmp_path)
    assert second.returncode == 0 and "nothing is up" in second.stdout
    assert stack("status", state_dir=tmp_path).returncode == 1


def test_busy_port_exits_2_naming_the_port_before_starting_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = free_ports(3)
        result = stack(
            "up",
            "--services",
            "ray",
            "--port-dashboard",
            str(port),
            "--port-gcs",
            str(others[0]),
            "--port-client",
            str(others[1]),
            "--port-agent",
            str(others[2]),
            state_dir=tmp_path,
            timeout=60,
        )
    assert result.returncode == 2 and result.stdout == ""
    assert f"port {port} (--port-dashboard) is already in use on 127.0.0.1" in result.stderr
    assert "pick another port, e.g. --port-dashboard" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "local-stack.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port-gcs", "12000"], "--port-gcs 12000: Ray gives ports 10002-19999 to its workers"),
        (["--port-gcs", "7000", "--port-client", "7000"], "--port-client 7000: already used for --port-gcs"),
        (["--port-gcs", "80"], "--port-gcs 80: must be in 1024-65535"),
        (["--num-cpus", "two"], "argument --num-cpus: expected a whole number >= 0, got 'two'"),
        (["--resources", "reward_node=1"], "argument --resources: not JSON"),
        (["--object-store-mib", "10"], "--object-store-mib 10: Ray needs at least 75"),
        (["--services", "ray,minio"], "argument --services: unknown service(s) ['minio']; choose from s3, mlflow, ray"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, args, message):
    result = stack("up", *args, state_dir=tmp_path, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "local-stack.json").exists()

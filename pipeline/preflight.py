"""Cheap checks of everything a config points at, run before any model, Ray or tracking resource.

Each problem names the config key, the value and the fix; all are raised together as one
``ConfigError`` so the command line exits with status 2 and one message.
"""

from __future__ import annotations

import os

from pipeline.config import ConfigError, dump_yaml, flatten, load_config
from pipeline.model_checks import architecture_problems, lora_file_problems, lora_target_problems
from rewards.config import RewardSpec
from rewards.files import file_problems
from trainers.config import Config
from trainers.families import family_problem
from trainers.families.pixart import ADAPTER_WEIGHTS
from trainers.families.sd import LORA_FILE
from trainers.models import component_config, denoiser_dir, denoiser_skeleton, model_path_problem, pair_problems
from trainers.prompts import read_prompts


def model_problems(key: str, path: str, family: str = "auto") -> list[str]:
    """A local model path must be a diffusers pipeline folder of a supported family; hub ids need the
    network or the cache."""
    problem = model_path_problem(path) or family_problem(path, family)
    return [f"{key}: {problem}"] if problem else []


def flow_family(path: str, family: str = "auto"):
    """The family of the flow-matching pipeline at ``path`` (SD3), or None for another family or an unreadable path."""
    from trainers.families import family_of

    try:
        found = family_of(path, family)
    except ValueError:  # an unsupported pipeline: model_problems says so
        return None
    return found if found.sampler == "flow" else None


def flow_scheduler_problems(key: str, path: str) -> list[str]:
    """The flow sampler rebuilds the sigmas from the scheduler config: no option it does not reproduce."""
    import json

    from trainers.samplers.flow import option_fix, unsupported_options

    config_file = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(config_file):
        return []
    with open(config_file, encoding="utf-8") as f:
        found = unsupported_options(json.load(f))
    if not found:
        return []
    options = ", ".join(f"{k}={json.dumps(v)}" for k, v in found.items())
    return [
        f"{key}: {config_file} sets {options}, which the flow sampler does not reproduce; set {option_fix(found)} "
        "in that file"
    ]


def sampler_problems(cfg: Config) -> list[str]:
    """A flow-matching model (SD3) samples with deterministic Euler steps, on sigmas rebuilt from its scheduler
    config: no ``sampler.eta``, no sigma option the engine lacks."""
    family = flow_family(cfg.model.path, cfg.model.family)
    if family is None:
        return []
    what = (
        f"model.path={cfg.model.path!r} is a {family.pipeline_class}, sampled by the deterministic flow-matching "
        "Euler sampler"
    )
    problems = [f"sampler.eta: {cfg.sampler.eta} but {what}; set sampler.eta=0"] if cfg.sampler.eta > 0 else []
    return problems + guidance_problems(cfg, family) + flow_scheduler_problems("model.path", cfg.model.path)


def resolution_problems(cfg: Config) -> list[str]:
    """``model.resolution`` gives a latent side the denoiser takes: a multiple of its patch size (FLUX: of its 2x2
    packing), times the VAE's downscaling."""
    from trainers.families import family_of

    vae = component_config(cfg.model.path, "vae")
    skeleton = denoiser_skeleton(cfg.model.path)
    if cfg.model.resolution is None or skeleton is None or "block_out_channels" not in vae:
        return []
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    step = scale * family_of(cfg.model.path, cfg.model.family).latent_multiple(skeleton)
    if cfg.model.resolution % step == 0:
        return []
    nearest = max(step, round(cfg.model.resolution / step) * step)
    return [
        f"model.resolution: {cfg.model.resolution} px is not a multiple of {step} (the VAE's {scale}x downscaling "
        f"times the denoiser's patch of {step // scale} latent pixels); set model.resolution={nearest}"
    ]


def guidance_problems(cfg: Config, family) -> list[str]:
    """Guidance scales a model does not use as a CFG config means them: a model without guidance input (FLUX.1
    [schnell]) would ignore a scale above 1; one that takes the scale as an input (FLUX.1 [dev]) has no CFG to turn
    off, so a scale below 1 is not "guidance off" but an input it was not distilled for."""
    skeleton = denoiser_skeleton(cfg.model.path)
    kind = None if skeleton is None else family.guidance_of(skeleton)
    if kind not in ("none", "embedded"):
        return []
    scales = {
        "sampler.guidance_scale": cfg.sampler.guidance_scale,
        "sampler.train_guidance_scale": cfg.sampler.train_guidance_scale,
    }
    if cfg.plan.name == "di_star":
        scales["distill.alpha_cfg"] = cfg.distill.alpha_cfg
    scales = {key: value for key, value in scales.items() if value is not None}
    model = f"model.path={cfg.model.path!r} is a {family.pipeline_class}"
    if kind == "none":
        return [
            f"{key}: {value} but {model} without guidance (timestep-distilled, as FLUX.1 [schnell]), which would "
            f"ignore it; set {key}=1"
            for key, value in scales.items()
            if value > 1
        ]
    return [
        f"{key}: {value} but {model} that takes the guidance scale as an input (guidance-distilled, as FLUX.1 "
        f"[dev]): there is no classifier-free guidance to turn off, and scales below 1 are outside what it was "
        f"distilled on; set {key} between 1 and 10 (FLUX.1 [dev]: 3.5 to sample, 4.0 in the FLUX recipe)"
        for key, value in scales.items()
        if value < 1
    ]


def prompt_problems(key: str, path: str | None) -> list[str]:
    """The prompt file must exist and hold prompts in a supported format."""
    if path is None:
        return []
    try:
        read_prompts(path)
    except (OSError, ValueError) as err:
        return [f"{key}: {err}"]
    return []


RUN_CONFIG = "config.yaml"  # the resolved config, written into the run folder when a run starts
# keys a resumed run may change: how long it runs and how it is evaluated and placed, not what it trains
RESUMABLE_CHANGES = (
    "train.steps",
    "train.checkpoint_every",
    "train.max_bad_steps",
    "eval.",
    "ray.",
    "model.device",
    "tracking.",
)


def run_folder_problems(cfg: Config) -> list[str]:
    """A folder holding checkpoints is resumed only with ``train.resume=true`` and the config it started with."""
    from trainers.checkpoint import latest_checkpoint
    from trainers.loop import run_folder

    folder = run_folder(cfg)
    if not os.path.isdir(folder) or latest_checkpoint(folder) is None:
        return []
    if not cfg.train.resume:
        return [
            f"train.resume: false, but {folder} already holds checkpoints; set train.run_name to a new name, "
            "delete the folder, or set train.resume=true to continue it"
        ]
    saved = os.path.join(folder, RUN_CONFIG)
    if not os.path.isfile(saved):
        return []
    changed = config_changes(load_config(Config, saved, []), cfg)
    if not changed:
        return []
    return [
        f"train.resume: {folder} was started with a different config ({'; '.join(changed)}); resume it with "
        f"the values in {saved}, or set train.run_name to a new name to start a new run"
    ]


def config_changes(before: Config, after: Config) -> list[str]:
    """``"key: old -> new"`` for each setting that differs, except those a resumed run may change."""
    old, new = flatten(before), flatten(after)
    keys = [k for k in sorted(old.keys() | new.keys()) if not k.startswith(RESUMABLE_CHANGES)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def write_run_config(cfg: Config, run_dir: str) -> None:
    """Record the resolved config in the run folder (atomically), for resume checks and for people."""
    from trainers.checkpoint import write_text_atomic

    os.makedirs(run_dir, exist_ok=True)
    write_text_atomic(os.path.join(run_dir, RUN_CONFIG), config_text(cfg))


REWARD_SCALES = "# Reward scales in the loss: "  # the header line of shipped recipes and of a run's config.yaml


def config_text(cfg: Config) -> str:
    """The resolved config as YAML, after a comment line with each reward term's effective scale."""
    return f"{REWARD_SCALES}{cfg.reward_scales()}\n{dump_yaml(cfg)}"


def reward_problems(key: str, specs: list[RewardSpec]) -> list[str]:
    """Each reward's files exist and are readable as what they should be (tensor names only, no weights)."""
    return [f"{key}.{i}.{problem}" for i, spec in enumerate(specs) for problem in file_problems(spec)]


LORA_FILES = (LORA_FILE, ADAPTER_WEIGHTS)  # diffusers' (SD, SDXL), peft's (PixArt)


def lora_file(folder: str) -> str | None:
    """The LoRA weights file a trained-weights folder holds, or None (a full fine-tune, or nothing)."""
    return next((os.path.join(folder, f) for f in LORA_FILES if os.path.isfile(os.path.join(folder, f))), None)


def generator_init_problems(cfg: Config) -> list[str]:
    """``distill.generator_init``: a LoRA folder that fits ``model.path``, trained at the same generator timestep."""
    from trainers.distill import generator_timestep

    folder, key = cfg.distill.generator_init, "distill.generator_init"
    if folder is None:
        return []
    if not os.path.isdir(folder) or lora_file(folder) is None:
        return [
            f"{key}: {folder!r} holds no LoRA weights ({' or '.join(LORA_FILES)}); give a di_star run's final/ "
            "folder, or set model.path to a full one-step model instead"
        ]
    problems = weights_problems(key, folder, cfg.model.path)
    recorded = generator_timestep(folder)
    if recorded is not None and recorded != cfg.distill.generator_timestep:
        problems.append(
            f"{key}: {folder!r} is a one-step generator at timestep {recorded} (its one_step.json), but "
            f"distill.generator_timestep={cfg.distill.generator_timestep}; set it to {recorded}"
        )
    return problems


def weights_problems(key: str, folder: str | None, base: str) -> list[str]:
    """Trained weights: a folder with a LoRA file or a full ``unet/`` (``transformer/``) folder, whose
    tensors fit the base model ``base`` (checked against its module tree from the configs, no weights loaded)."""
    if folder is None:
        return []
    lora = lora_file(folder)
    full = denoiser_dir(folder)
    if not (lora or full):
        return [
            f"{key}: {folder!r} holds no trained weights; expected {' or '.join(LORA_FILES)}, or a unet/ "
            "(transformer/) folder, as in a run's final/ folder or a checkpoint's model/ folder"
        ]
    skeleton = denoiser_skeleton(base)
    if skeleton is None:
        return []
    if lora:
        problems = lora_file_problems(skeleton, lora)
    else:
        problems = architecture_problems(skeleton, denoiser_skeleton(folder))
    return (
        [
            f"{key}: {folder!r} does not fit the base model {base!r}: {'; '.join(problems[:3])}"
            f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}; give the base model the weights were "
            "trained on (the run's model.path), or weights trained on this base"
        ]
        if problems
        else []
    )


def target_module_problems(cfg: Config) -> list[str]:
    """Each LoRA target module exists in the model (its module tree from the configs, no weights loaded)."""
    if cfg.trainable.kind != "lora":
        return []
    skeleton = denoiser_skeleton(cfg.model.path)
    if skeleton is None or cfg.trainable.target_modules is None:  # unset: the family's, which fit its models
        return []
    problems = lora_target_problems(skeleton, cfg.trainable.target_modules)
    if not problems:
        return []
    return [
        f"trainable.target_modules: {'; '.join(problems)} (model.path={cfg.model.path!r}); name Linear or Conv "
        "layers of the UNet, such as the attention projections to_q, to_k, to_v, to_out.0 (the default)"
    ]


def device_problems(key: str, device: str) -> list[str]:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return [f"{key}: {device!r} requested but no CUDA device is visible; use {key}=cpu or auto"]
    return []


def preflight(cfg: Config, source: str = "config", training: bool = False) -> None:
    """Raise one ``ConfigError`` listing every missing file or unavailable device the config names
    (and, for ``training``, a run folder it may not write into)."""
    problems = model_problems("model.path", cfg.model.path, cfg.model.family) or target_module_problems(cfg)
    problems += sampler_problems(cfg) + resolution_problems(cfg) if not problems else []
    if not (cfg.ray.enabled and cfg.ray.use_gpu):  # Ray workers get GPUs the driver may not have
        problems += device_problems("model.device", cfg.model.device)
    problems += reward_problems("rewards", cfg.rewards) + reward_problems("eval.rewards", cfg.eval.rewards)
    if cfg.plan.name == "di_star" and cfg.distill.teacher_path is not None:
        problems += model_problems("distill.teacher_path", cfg.distill.teacher_path)
        problems += pair_problems(cfg.model.path, cfg.distill.teacher_path)
    if cfg.plan.name == "di_star":
        problems += generator_init_problems(cfg)
    problems += prompt_problems("data.prompts", cfg.data.prompts)
    problems += prompt_problems("data.eval_prompts", cfg.data.eval_prompts)
    problems += run_folder_problems(cfg) if training else []
    if problems:
        raise ConfigError(problems, f"{source} (files and devices it names)")


def load_checked(path: str | None, overrides: list[str], check_files: bool = True, training: bool = False) -> Config:
    """Load and validate a training config, then (``check_files``) preflight what it names."""
    cfg = load_config(Config, path, overrides)
    if check_files:
        preflight(cfg, path or "default config", training)
    return cfg


def service_preflight(cfg: Config) -> None:
    """Raise one ``ConfigError`` if the tracking server or the S3 run storage the config uses is not
    reachable and writable: checked before Ray or any model starts."""
    problems = tracking_problems(cfg) + storage_problems(cfg)
    if problems:
        raise ConfigError(problems, "config (the services it names)")


def tracking_problems(cfg: Config) -> list[str]:
    """The MLflow server answers ``/health``; a local sqlite store's folder can be written."""
    if not cfg.tracking.enabled:
        return []
    import urllib.request

    from pipeline.tracking import is_server, redact, strip_userinfo, tracking_uri

    uri = tracking_uri(cfg)
    fix = (
        "start it (`python -m cluster.local up` runs one on 127.0.0.1), fix tracking.uri or MLFLOW_TRACKING_URI, "
        "or set tracking.enabled=false"
    )
    if is_server(uri):
        health = strip_userinfo(uri).rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=10) as answer:
                if answer.status == 200:
                    return []
                reason = f"HTTP {answer.status}"
        except (OSError, ValueError) as err:
            reason = redact(str(getattr(err, "reason", err)))
        return [f"tracking.uri: the MLflow server {redact(uri)} does not answer {redact(health)} ({reason}); {fix}"]
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :])  # sqlite:////abs/x.db -> /abs, sqlite:///rel/x.db -> rel
        if not _writable_folder(folder or "."):
            return [f"tracking.uri: cannot create the MLflow database in {folder!r} ({uri}); pick a writable folder"]
    return []


def _writable_folder(folder: str) -> bool:
    while not os.path.exists(folder):
        folder = os.path.dirname(os.path.abspath(folder))
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def storage_problems(cfg: Config) -> list[str]:
    """An ``s3://`` run storage: the bucket exists and takes a marker object (written, then deleted)."""
    r = cfg.ray
    if not (r.enabled and r.storage_path and r.storage_path.startswith("s3://")):
        return []
    import uuid

    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, _, prefix = r.storage_path[len("s3://") :].partition("/")
    where = f"bucket {bucket!r} at {r.s3_endpoint or 'AWS S3'} (ray.storage_path={r.storage_path})"
    client = boto3.client(
        "s3",
        endpoint_url=r.s3_endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=BotoConfig(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
    )
    marker = f"{prefix.strip('/') + '/' if prefix.strip('/') else ''}.preflight-{uuid.uuid4().hex}"
    step = "reach"
    try:
        client.head_bucket(Bucket=bucket)
        step = "write to"
        client.put_object(Bucket=bucket, Key=marker, Body=b"reward-tuning preflight")
        client.delete_object(Bucket=bucket, Key=marker)
        return []
    except NoCredentialsError:
        reason = "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        reason = {
            "404": "the bucket does not exist; create it first",
            "NoSuchBucket": "the bucket does not exist",
            "403": "access denied; check the credentials and the bucket policy",
        }.get(code, f"error {code}")
    except BotoCoreError as err:
        reason = f"{err}; check ray.s3_endpoint and that the server runs"
    return [f"ray.storage_path: cannot {step} {where}: {reason}"]

"""Loading diffusion models, making them trainable, and saving what was trained.

What differs between model families (text encoding, added conditioning, decoding, the LoRA file
format) lives in one module per family under ``trainers/families``; this module dispatches to the
family ``model.family`` names (``auto``: the pipeline's class), and the sampler and trainers only see
:class:`DiffusionModel` and :class:`Conditioning`.
"""

from __future__ import annotations

import os

import torch

from trainers.adapters import add_lora, weigh
from trainers.config import ModelConfig, TrainableConfig
from trainers.families import FAMILIES, family_of
from trainers.families.base import Conditioning, DiffusionModel, ModelFamily

__all__ = [
    "DTYPES",
    "FAMILIES",
    "Conditioning",
    "DiffusionModel",
    "ModelFamily",
    "load_model",
    "make_trainable",
    "save_trained",
    "load_trained",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device={name!r} but no CUDA device is visible; use model.device=cpu or auto")
    return torch.device(name)


def model_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be loaded, or None: a local folder needs ``model_index.json``; a hub id
    (``org/name``) needs the network, or the local hub cache when ``HF_HUB_OFFLINE`` is set."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return None
    hub_id = not (os.path.isabs(path) or path.startswith(".") or os.path.exists(path)) and path.count("/") == 1
    if hub_id:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        if not offline or _in_hub_cache(path):
            return None
        return f"{path!r} is not in the local hub cache and HF_HUB_OFFLINE is set; download it first or give a folder"
    why = "does not exist" if not os.path.exists(path) else "has no model_index.json"
    return f"{path!r} {why}; point it at a folder written by a diffusers pipeline's save_pretrained"


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def load_model(cfg: ModelConfig) -> DiffusionModel:
    """Load a diffusers pipeline folder (or hub id) through its family and freeze everything.

    Raises:
        FileNotFoundError: the folder is missing or is not a diffusers pipeline.
        ValueError: the device is unavailable, or no family loads the pipeline.
    """
    problem = model_path_problem(cfg.path)
    if problem:
        raise FileNotFoundError(f"model.path: {problem}")
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    offline = os.path.isdir(cfg.path)
    return configured(family_of(cfg.path, cfg.family, offline).load(cfg.path, dtype, device, offline), cfg)


def configured(model: DiffusionModel, cfg: ModelConfig) -> DiffusionModel:
    """``model`` with the config's checkpointing and resolution."""
    if cfg.unet_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
    if cfg.vae_checkpointing:
        model.vae.enable_gradient_checkpointing()
    model.resolution = cfg.resolution or model.resolution
    return model


def skeleton_model(cfg: ModelConfig) -> DiffusionModel:
    """The model ``cfg`` names as :func:`load_model` builds it, on the meta device: every module, tensor shape
    and dtype, built from the pipeline folder's config files with no weight read (``pipeline.plan``'s input).

    Raises:
        FileNotFoundError: ``model.path`` is not a local pipeline folder.
    """
    return model_from_configs(cfg, torch.device("meta"))


def model_from_configs(cfg: ModelConfig, device: torch.device) -> DiffusionModel:
    """The model ``cfg`` names, built from its pipeline folder's config files on ``device`` with each class's own
    random initialisation (meta: shapes only); no weight file is read (``pipeline.bench.cost`` measures a real
    step of a released architecture with random weights).

    Raises:
        FileNotFoundError: ``model.path`` is not a local pipeline folder.
    """
    if not os.path.isfile(os.path.join(cfg.path, "model_index.json")):
        raise FileNotFoundError(f"model.path: {cfg.path!r} is not a pipeline folder with a model_index.json")
    import json

    with open(os.path.join(cfg.path, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    dtype, components = DTYPES[cfg.dtype], {}
    for name, entry in index.items():
        if isinstance(entry, list) and len(entry) == 2 and entry[0] in ("diffusers", "transformers"):
            module = config_module(entry[0], entry[1], os.path.join(cfg.path, name), device, dtype)
            if module is not None:
                components[name] = module
    family = family_of(cfg.path, cfg.family, offline=True)
    return configured(family.load(cfg.path, dtype, device, True, **components), cfg)


def config_module(
    library: str,
    class_name: str,
    folder: str,
    device: torch.device | str = "meta",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module | None:
    """A ``diffusers`` or ``transformers`` model class built from ``folder``'s config on ``device`` in ``dtype``,
    randomly initialised (meta: shapes only); None for a class that is not a module (a tokenizer, a scheduler)."""
    import diffusers
    import transformers

    cls = getattr(diffusers if library == "diffusers" else transformers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if library == "diffusers":
                module = cls.from_config(cls.load_config(folder))
            else:
                module = cls._from_config(transformers.AutoConfig.from_pretrained(folder))
    finally:
        torch.set_default_dtype(default)
    # a cast only where a class made tensors in another dtype (diffusers warns on every cast)
    return module.to(dtype) if any(p.dtype != dtype for p in module.parameters()) else module


def make_trainable(
    model: DiffusionModel, cfg: TrainableConfig, adapter_name: str = "default"
) -> list[torch.nn.Parameter]:
    """Add LoRA adapters named ``adapter_name`` (or unfreeze the UNet) and return the trainable
    parameters, kept in fp32. Adding an adapter makes it the only active (and trainable) one."""
    unet = model.denoiser
    if cfg.kind == "full":
        unet.to(torch.float32).requires_grad_(True)
    else:
        from peft import LoraConfig

        init = True if cfg.init == "kaiming" else "gaussian"
        targets = list(cfg.target_modules or model.family.lora_targets)
        try:
            add_lora(
                unet,
                LoraConfig(
                    r=cfg.rank,
                    lora_alpha=cfg.alpha,
                    lora_dropout=cfg.dropout,
                    target_modules=targets,
                    init_lora_weights=init,
                ),
                adapter_name,
            )
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            raise ValueError(
                f"trainable.target_modules={targets} does not fit this denoiser ({err}); "
                "use attention projection names such as to_q, to_k, to_v, to_out.0"
            ) from None
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def trainable_state_dict(model: DiffusionModel) -> dict[str, torch.Tensor]:
    """The trained tensors by name (LoRA adapters, or the full UNet), detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.denoiser.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: DiffusionModel, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by :func:`trainable_state_dict` back in place."""
    params = dict(model.denoiser.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unexpected = [n for n in state if n not in params]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the trainable parameters: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; was it written with another trainable config?"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_trained(model: DiffusionModel, cfg: TrainableConfig, folder: str) -> None:
    """Save in the family's user-facing format: a LoRA as its pipeline loads one (``save_lora``), a full
    fine-tune as ``folder/<denoiser folder>`` (``unet/``, ``transformer/``) via ``save_pretrained``."""
    if cfg.kind == "full":
        model.denoiser.save_pretrained(os.path.join(folder, model.family.denoiser_folder))
        return
    model.family.save_lora(folder, model.denoiser)


def save_denoiser_state(model: DiffusionModel, state: dict[str, torch.Tensor], folder: str) -> None:
    """Write a full denoiser from its state dict (e.g. gathered from FSDP shards) as ``folder/unet`` (or
    ``transformer``), the layout of :func:`save_trained` for a full fine-tune (``from_pretrained`` loads it)."""
    from safetensors.torch import save_file

    target = os.path.join(folder, model.family.denoiser_folder)
    os.makedirs(target, exist_ok=True)
    model.denoiser.save_config(target)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, os.path.join(target, "diffusion_pytorch_model.safetensors")
    )


def load_trained(model: DiffusionModel, folder: str, adapter_name: str = "tuned") -> None:
    """Apply weights written by :func:`save_trained`: a LoRA folder (as the adapter ``adapter_name``) or a
    full denoiser folder.

    Raises:
        FileNotFoundError: the folder holds neither.
    """
    family = model.family
    full = os.path.join(folder, family.denoiser_folder)
    if is_lora_folder(family, folder):
        family.load_lora(model.denoiser, folder, adapter_name)
    elif os.path.isdir(full):
        model.denoiser = family.load_denoiser(folder, model.dtype, True).requires_grad_(False).eval().to(model.device)
    else:
        raise FileNotFoundError(
            f"{folder!r} holds no trained weights: expected {' and '.join(family.trained_files)} "
            f"(LoRA) or a {family.denoiser_folder}/ folder (full fine-tune), as written in a "
            "run's final/ folder"
        )


def is_lora_folder(family: ModelFamily, folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in family.trained_files)


def load_weighted(model: DiffusionModel, weighted: list[tuple[str, float]]) -> list[str]:
    """Load each LoRA folder of ``weighted`` as its own adapter and activate them together, each delta
    scaled by its weight (``trainers.adapters.weigh``); the adapters' names."""
    names = [f"tuned{i}" for i in range(len(weighted))]
    for name, (folder, _) in zip(names, weighted):
        if not is_lora_folder(model.family, folder):
            raise ValueError(f"{folder!r} is not a LoRA folder; only LoRA weights can be scaled or mixed")
        load_trained(model, folder, name)
    weigh(model.denoiser, {name: w for name, (_, w) in zip(names, weighted)})
    return names


def load_denoiser(
    path: str, family: ModelFamily, dtype: torch.dtype, device: torch.device
) -> tuple[torch.nn.Module, object]:
    """The frozen denoiser and DDIM scheduler of a pipeline folder of ``family`` (a distillation teacher).

    Raises:
        FileNotFoundError: the folder is missing or is not a diffusers pipeline.
    """
    from diffusers import DDIMScheduler

    problem = model_path_problem(path)
    if problem:
        raise FileNotFoundError(f"distill.teacher_path: {problem}")
    offline = os.path.isdir(path)
    # on the meta device (pipeline.plan): the teacher's shapes from its config, no weights read
    denoiser = denoiser_skeleton(path, dtype) if device.type == "meta" else family.load_denoiser(path, dtype, offline)
    scheduler = family.scheduler(DDIMScheduler.load_config(path, subfolder="scheduler", local_files_only=offline))
    return denoiser.requires_grad_(False).eval().to(device), scheduler


# where a pipeline (or a full fine-tune) keeps its denoiser: "unet", "transformer"
DENOISER_FOLDERS = tuple(dict.fromkeys(f.denoiser_folder for f in FAMILIES.values()))


def denoiser_dir(folder: str) -> str | None:
    """``folder/unet`` or ``folder/transformer``, whichever holds a ``config.json``; None for neither (a hub id)."""
    found = [
        os.path.join(folder, d) for d in DENOISER_FOLDERS if os.path.isfile(os.path.join(folder, d, "config.json"))
    ]
    return found[0] if found else None


def denoiser_skeleton(folder: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module | None:
    """The denoiser of a pipeline folder (or of trained weights' ``unet/``/``transformer/`` folder) built from
    its config on the meta device: every module and tensor shape, no weight read. None without one."""
    import json

    found = denoiser_dir(folder)
    if found is None:
        return None
    with open(os.path.join(found, "config.json"), encoding="utf-8") as f:
        return config_module("diffusers", json.load(f)["_class_name"], found, dtype=dtype)


# what a teacher must share with the generator: (component folder, config key); latents and text conditioning
# ("denoiser" is the unet/ or transformer/ folder; CLIP and T5 name their sizes differently)
PAIR_KEYS = (
    ("denoiser", "in_channels"),
    ("denoiser", "out_channels"),
    ("denoiser", "cross_attention_dim"),
    ("denoiser", "addition_embed_type"),
    ("vae", "latent_channels"),
    ("vae", "scaling_factor"),
    ("text_encoder", "hidden_size"),
    ("text_encoder", "d_model"),
    ("text_encoder", "vocab_size"),
    ("text_encoder", "num_hidden_layers"),
    ("text_encoder", "num_layers"),
    ("scheduler", "num_train_timesteps"),
)


def component_config(folder: str, part: str) -> dict:
    """The config of a pipeline folder's component ``part`` (``denoiser`` for ``unet/`` or ``transformer/``,
    ``vae``, ``text_encoder``, ``scheduler``, ...); ``{}`` when the folder has none."""
    import json

    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    path = os.path.join(denoiser_dir(folder) or "", name) if part == "denoiser" else os.path.join(folder, part, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pair_problems(generator_path: str, teacher_path: str) -> list[str]:
    """Why a teacher cannot supervise a generator: a different latent space or text encoder, read from
    the two pipeline folders' config files (hub ids are not checked here)."""
    if not (os.path.isdir(generator_path) and os.path.isdir(teacher_path)):
        return []
    from trainers.families import pipeline_class

    mine, theirs = pipeline_class(generator_path), pipeline_class(teacher_path)
    if mine != theirs:
        return [
            f"distill.teacher_path: the teacher {teacher_path!r} is a {theirs} but the generator "
            f"(model.path={generator_path!r}) is a {mine}; give a teacher of the generator's family"
        ]
    problems = []
    denoiser = os.path.basename(denoiser_dir(generator_path) or "unet")
    for part, key in PAIR_KEYS:
        mine, theirs = component_config(generator_path, part).get(key), component_config(teacher_path, part).get(key)
        if mine != theirs:
            name = denoiser if part == "denoiser" else part
            problems.append(
                f"distill.teacher_path: the teacher {teacher_path!r} has {name}.{key}={theirs!r} but the "
                f"generator (model.path={generator_path!r}) has {mine!r}; a teacher must share the "
                "generator's latent space and text encoder"
            )
    return problems

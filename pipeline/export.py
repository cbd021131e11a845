"""Export trained LoRA weights as one ``.safetensors`` file that ComfyUI and kohya-style tools load:
``python -m pipeline.export --model BASE --weights FOLDER --out lora.safetensors``.

``FOLDER`` is a run's ``final/`` or a checkpoint's ``model/`` (diffusers' format, which diffusers loads as is).
The file holds, for each adapted layer at module path ``P`` of the denoiser, ``<prefix><P with _ for .>`` with
``.lora_down.weight`` (A, rank x in), ``.lora_up.weight`` (B, out x rank) and ``.alpha`` (the training alpha, so
the tools scale by alpha / rank as training did). The prefix is ``lora_unet_`` for SD 1.x/2.x and SDXL (ComfyUI maps
these diffusers-named keys through its UNet key table) and ``lora_transformer_`` for FLUX.1 (ComfyUI's and
OneTrainer's FLUX layout); diffusers' ``load_lora_weights`` converts both back (``tests/test_export.py``).
No model weights are read: the base model's folder only names the family.
"""

from __future__ import annotations

import argparse
import json
import os

from pipeline.config import ConfigError, run_cli

FORMATS = ("comfyui",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__)
    p.add_argument("--model", required=True, help="the base pipeline folder the weights were trained on")
    p.add_argument("--weights", required=True, help="trained LoRA weights: a run's final/ or a checkpoint's model/")
    p.add_argument("--format", default="comfyui", choices=FORMATS, help="comfyui: kohya-style keys (default)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> object:
    """The base model's family; every problem at once as a ``ConfigError``."""
    from pipeline.preflight import lora_file, model_problems, weights_problems
    from trainers.families import family_of

    problems = model_problems("--model", args.model)
    if not problems:
        problems += weights_problems("--weights", args.weights, args.model)
    if not problems and not lora_file(args.weights):
        problems.append(f"--weights: {args.weights!r} is a full fine-tune; only LoRA weights are exported")
    if not args.out.endswith(".safetensors"):
        problems.append(f"--out: {args.out!r} must end in .safetensors")
    family = None if problems else family_of(args.model, "auto")
    if family is not None and family.kohya_prefix is None:
        problems.append(
            f"--model: {args.model!r} is a {family.pipeline_class}; the comfyui export covers SD 1.x/2.x, SDXL and "
            "FLUX.1 (its diffusers-format folder loads in diffusers as it is)"
        )
    if problems:
        raise ConfigError(problems, "command line")
    return family


def kohya_state_dict(folder: str, denoiser_folder: str, prefix: str) -> dict:
    """The saved LoRA of ``folder`` in kohya-style keys (see the module docstring).

    Raises:
        ValueError: the file lacks the adapter metadata diffusers writes, or uses per-layer ranks or alphas.
    """
    import torch
    from safetensors import safe_open

    from trainers.families.sd import LORA_FILE

    tensors, metadata = {}, {}
    with safe_open(os.path.join(folder, LORA_FILE), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    alpha = metadata.get(f"{denoiser_folder}.lora_alpha")
    if alpha is None:
        raise ValueError(
            f"{folder}: {LORA_FILE} has no lora_adapter_metadata, so its alpha is unknown; export weights saved by "
            "this version's training (final/ or a checkpoint's model/)"
        )
    if metadata.get(f"{denoiser_folder}.alpha_pattern") or metadata.get(f"{denoiser_folder}.rank_pattern"):
        raise ValueError(f"{folder}: per-layer ranks or alphas have no kohya-style equivalent")
    if metadata.get(f"{denoiser_folder}.use_rslora") or metadata.get(f"{denoiser_folder}.use_dora"):
        raise ValueError(f"{folder}: rsLoRA and DoRA adapters have no kohya-style equivalent")
    ends = {".lora.down.weight": "lora_down", ".lora_A.weight": "lora_down"}
    ends |= {".lora.up.weight": "lora_up", ".lora_B.weight": "lora_up"}
    out = {}
    for key, tensor in tensors.items():
        end = next((e for e in ends if key.endswith(e)), None)
        if end is None or not key.startswith(f"{denoiser_folder}."):
            raise ValueError(f"{folder}: unexpected key {key!r} in {LORA_FILE}")
        name = prefix + key[len(denoiser_folder) + 1 : -len(end)].replace(".", "_")
        out[f"{name}.{ends[end]}.weight"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    family = check(args)
    from safetensors.torch import save_file

    try:
        tensors = kohya_state_dict(args.weights, family.denoiser_folder, family.kohya_prefix)
    except ValueError as err:
        raise ConfigError([f"--weights: {err}"], "command line") from None
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_file(tensors, out + ".partial")  # whole or absent
    os.replace(out + ".partial", out)
    layers = sum(k.endswith(".lora_down.weight") for k in tensors)
    print(f"wrote {layers} LoRA layers ({family.pipeline_class}, kohya-style keys {family.kohya_prefix}*) to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)

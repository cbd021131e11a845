"""PickScore (Kirstain et al., NeurIPS 2023, "Pick-a-Pic") as a differentiable reward.

PickScore_v1 is a transformers ``CLIPModel`` (ViT-H/14) fine-tuned on Pick-a-Pic preferences. Its
score is the CLIP logit

    r(x, c) = exp(τ) · ⟨f_I(x̂) / ‖f_I(x̂)‖, f_T(c) / ‖f_T(c)‖⟩,

with ``τ = logit_scale`` (typical values 21–23.5). The processor's tokenizer encodes the prompts; its
image settings (resize, centre crop, mean, std) are re-applied in torch so the gradient reaches ``x``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import RewardLoadError, check_images, freeze, model_device_dtype, summarise_keys
from rewards.descriptor import Folder, RewardDescriptor
from rewards.preprocess import ImagePreprocess

if TYPE_CHECKING:
    from rewards.config import RewardSpec


class PickScoreReward(nn.Module):
    """``r(x, c) = exp(logit_scale) · cos(f_I(x̂), f_T(c))`` on a transformers CLIP model.

    Args:
        model: A transformers ``CLIPModel`` (frozen here).
        tokenizer: The processor's tokenizer (a transformers tokenizer).
        preprocess: Differentiable equivalent of the processor's image preprocessing.
    """

    def __init__(self, model: nn.Module, tokenizer, preprocess: ImagePreprocess) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.max_length = model.config.text_config.max_position_embeddings
        self.name = "pickscore"

    def train(self, mode: bool = True) -> PickScoreReward:
        """Stay in eval mode whatever ``mode`` is: a reward's network is frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1] against ``B`` prompts; returns ``(B,)`` float32."""
        check_images(images, prompts)
        device, dtype = model_device_dtype(self.model)
        x_hat = self.preprocess(images.to(device=device, dtype=dtype))  # (B, 3, h, w)
        text = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        image_emb = _projected(self.model.get_image_features(pixel_values=x_hat))  # (B, D)
        text_emb = _projected(
            self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        )  # (B, D)
        cosine = (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(dim=-1)
        return (self.model.logit_scale.exp() * cosine).float()


def _projected(output) -> torch.Tensor:
    # transformers < 5 returns the projected features as a tensor; 5.x returns an output object
    # whose pooler_output holds them.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_pickscore(spec: RewardSpec) -> PickScoreReward:
    """Load PickScore from the model folder ``spec.checkpoint`` and processor folder ``spec.processor``.

    Raises:
        RewardLoadError: If a folder is missing or unreadable, the model is not a CLIP model, or its
            weights do not match its config (missing, unexpected or mismatched tensors).
    """
    assert spec.checkpoint is not None, "spec.validate() should have caught this"
    model = _load_model(spec.checkpoint)
    processor_folder = spec.processor or spec.checkpoint
    processor = _load_processor(processor_folder)
    preprocess = image_preprocess_from(processor.image_processor, processor_folder)
    return PickScoreReward(model, processor.tokenizer, preprocess)


def pickscore_skeleton(spec: RewardSpec) -> PickScoreReward:
    """PickScore built from its folder's config.json on the meta device, with its real processor
    (``RewardDescriptor.skeleton``)."""
    from transformers import AutoConfig, AutoModel

    assert spec.checkpoint is not None, "spec.validate() should have caught this"
    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(spec.checkpoint, local_files_only=True))
    processor_folder = spec.processor or spec.checkpoint
    processor = _load_processor(processor_folder)
    preprocess = image_preprocess_from(processor.image_processor, processor_folder)
    return PickScoreReward(model.eval(), processor.tokenizer, preprocess)


def _load_model(folder: str) -> nn.Module:
    from transformers import AutoModel

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise RewardLoadError(
            f"PickScore model folder {folder!r} has no config.json (or does not exist); expected a "
            "transformers CLIPModel folder (config.json + model.safetensors), e.g. yuvalkirstain/PickScore_v1"
        )
    try:
        model, info = AutoModel.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as e:
        raise RewardLoadError(f"could not load the PickScore model from {folder!r}: {e}") from e
    if not all(hasattr(model, a) for a in ("get_image_features", "get_text_features", "logit_scale")):
        raise RewardLoadError(
            f"PickScore model folder {folder!r} holds a {type(model).__name__}; "
            "expected a CLIP model (CLIPModel) with image and text towers"
        )
    _check_loading_info(folder, type(model).__name__, info)
    return model.eval()


def _check_loading_info(folder: str, arch: str, info: dict) -> None:
    # from_pretrained re-initialises missing and mismatched tensors with only a log line: fail instead.
    problems = [
        summarise_keys("missing keys", sorted(info.get("missing_keys", ()))),
        summarise_keys("unexpected keys", sorted(info.get("unexpected_keys", ()))),
        summarise_keys(
            "shape mismatches",
            sorted(
                f"{k} (checkpoint {tuple(found)}, model {tuple(expected)})"
                for k, found, expected in info.get("mismatched_keys", ())
            ),
        ),
    ]
    detail = "; ".join(p for p in problems if p)
    if detail:
        raise RewardLoadError(
            f"PickScore weights in {folder!r} do not match the {arch} described by its "
            f"config.json: {detail}; re-export the folder with save_pretrained"
        )


def _load_processor(folder: str):
    from transformers import AutoProcessor

    if not os.path.isdir(folder):
        raise RewardLoadError(
            f"PickScore processor folder {folder!r} does not exist; expected a CLIPProcessor "
            "folder (tokenizer + image-processor config), e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        )
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise RewardLoadError(f"could not load the PickScore processor from {folder!r}: {e}") from e
    if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
        raise RewardLoadError(
            f"processor in {folder!r} is a {type(processor).__name__}; expected a "
            "CLIPProcessor with both a tokenizer and an image processor"
        )
    return processor


def image_preprocess_from(image_processor, folder: str) -> ImagePreprocess:
    """Translate a CLIP image processor's settings into the differentiable :class:`ImagePreprocess`.

    Supports "resize the shortest edge to S, centre-crop to (h, w)" (CLIP's scheme) and "resize to
    (h, w)" without a crop. Rescaling must be ``1/255``, since our input is already in [0, 1].

    Args:
        image_processor: A transformers ``CLIPImageProcessor`` (or compatible).
        folder: The processor folder, for messages.

    Raises:
        RewardLoadError: If the processor asks for preprocessing we cannot reproduce.
    """
    p = image_processor
    if not p.do_resize or not p.do_rescale or abs(p.rescale_factor - 1 / 255) > 1e-9:
        raise RewardLoadError(
            f"image processor in {folder!r} has do_resize={p.do_resize}, do_rescale={p.do_rescale}, "
            f"rescale_factor={p.rescale_factor}; expected resizing and rescaling by 1/255 (CLIP's settings)"
        )
    mean, std = (tuple(p.image_mean), tuple(p.image_std)) if p.do_normalize else ((0.0,) * 3, (1.0,) * 3)
    shortest, height, width = (p.size.get(k) for k in ("shortest_edge", "height", "width"))
    if shortest and p.do_center_crop:
        crop = (p.crop_size["height"], p.crop_size["width"])
        return ImagePreprocess(size=crop, mean=mean, std=std, crop=True, resize_shortest=shortest)
    if height and width and not p.do_center_crop:
        return ImagePreprocess(size=(height, width), mean=mean, std=std, crop=False)
    raise RewardLoadError(
        f"image processor in {folder!r} has size={dict(p.size)} and do_center_crop={p.do_center_crop}; "
        "supported: shortest_edge with a centre crop, or height/width without one"
    )


DESCRIPTOR = RewardDescriptor(
    skeleton=pickscore_skeleton,
    name="pickscore",
    load=load_pickscore,
    unit="PickScore (exp(logit_scale) × cosine; about 21-23)",
    required={"checkpoint": "the PickScore_v1 model folder (config.json + weights)"},
    allowed=("processor",),
    files={
        "checkpoint": Folder(what="the PickScore model folder (config.json + weights)", must_hold="config.json"),
        "processor": Folder(what="the PickScore processor folder (tokenizer + image settings)"),
    },
)

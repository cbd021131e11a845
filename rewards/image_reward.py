"""ImageReward (Xu et al., NeurIPS 2023) as a differentiable reward, built on transformers' BLIP classes.

ImageReward scores an image against its prompt with BLIP: a ViT-L/16 reads the image (224 px, 197
tokens of width 1024), a BERT-base text encoder reads the prompt while cross-attending to every image
token in every layer, and a head maps the [CLS] feature ``f`` to a score, normalised as in the original:

    r(x, c) = (head(f) − 0.16717362830052426) / 1.0333394966054072.

The head (768→1024→128→64→16→1) has no activations in the original code, so it is one affine map.
SD 1.5 images score about 0; preference-tuned models about 1 to 1.5.

The official ``ImageReward.pt`` (a state dict of the original module) loads through the key table
``CHECKPOINT_KEYS``; the ``image-reward`` package is not needed. The tokeniser is bert-base-uncased,
read from a local folder holding ``vocab.txt`` (the spec's ``processor``), with ImageReward's
settings: max length 35, padded to it. Preprocessing is differentiable and runs on the ``[0, 1]``
image: bicubic antialiased resize of the short side to 224, centre crop, CLIP mean and std.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from rewards.base import RewardLoadError, check_images, describe_state_dict_mismatch, freeze, model_device_dtype
from rewards.descriptor import Folder, RewardDescriptor, WeightsFile
from rewards.preprocess import ImagePreprocess

if TYPE_CHECKING:
    from rewards.config import RewardSpec

SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTHS = (1024, 128, 64, 16, 1)

# The released model: BLIP ViT-L/16 at 224 px and BERT-base with cross-attention (med_config.json)
OFFICIAL_ARCH = {
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 16,
    },
    "text": {
        "vocab_size": 30524,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
    },
}

# Official key (a regular expression) -> key in ImageRewardModel; None drops a tensor the score does not use
CHECKPOINT_KEYS: tuple[tuple[str, str | None], ...] = (
    (r"blip\.visual_encoder\.cls_token", r"vision.embeddings.class_embedding"),
    (r"blip\.visual_encoder\.pos_embed", r"vision.embeddings.position_embedding"),
    (r"blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision.embeddings.patch_embedding.\1"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm1.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm2.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.qkv.\2"),
    (
        r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
        r"vision.encoder.layers.\1.self_attn.projection.\2",
    ),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision.encoder.layers.\1.mlp.\2.\3"),
    (r"blip\.visual_encoder\.norm\.(weight|bias)", r"vision.post_layernorm.\1"),
    (r"blip\.text_encoder\.embeddings\.position_ids", None),  # a buffer transformers rebuilds
    (r"blip\.text_encoder\.(.+)", r"text.\1"),  # med.py's BertModel and BlipTextModel share every name
    (r"blip\.(vision_proj|text_proj)\.(weight|bias)", None),  # retrieval projections
    (r"mlp\.layers\.(0|2|4|6|7)\.(weight|bias)", r"head.\1.\2"),
)
# tensor-name prefixes every ImageReward checkpoint has (checked before anything loads)
CHECKPOINT_PREFIXES = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.layers.")


class ImageRewardModel(nn.Module):
    """BLIP's ViT and cross-attending BERT (transformers classes) plus ImageReward's head.

    Args:
        arch: ``{"vision": BlipVisionConfig kwargs, "text": BlipTextConfig kwargs}``; ``OFFICIAL_ARCH`` is
            the released model. LayerNorm eps (1e-6 in the ViT, 1e-12 in BERT), dropout 0 and cross-attention
            to the ViT's width are set here.
    """

    def __init__(self, arch: Mapping[str, Mapping]):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision = BlipVisionConfig(**{**arch["vision"], "layer_norm_eps": 1e-6, "attention_dropout": 0.0})
        # transformers builds the cross-attention layers only when is_decoder is set; forward() then runs
        # the encoder bidirectionally (is_decoder=False), BLIP's multimodal mode
        text = BlipTextConfig(
            **{
                **arch["text"],
                "layer_norm_eps": 1e-12,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
                "is_decoder": True,
                "encoder_hidden_size": vision.hidden_size,
            }
        )
        self.vision = BlipVisionModel(vision)
        self.text = BlipTextModel(text, add_pooling_layer=False)
        widths = (text.hidden_size, *HEAD_WIDTHS)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):  # the original's Dropout slots, no activations
            layers += [nn.Linear(n_in, n_out)] + ([nn.Dropout(0.0)] if i < 3 else [])
        self.head = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ImageReward's score ``(B,)`` of normalised pixels ``(B, 3, S, S)`` and tokenised prompts."""
        image = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1 + patches, D_v), after the final LN
        image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state  # (B, L, D_t)
        return ((self.head(text[:, 0, :]) - SCORE_MEAN) / SCORE_STD).squeeze(-1)


class ImageReward(nn.Module):
    """``r(x, c)``: ImageReward's score of images ``x`` in [0, 1] for prompts ``c``.

    Args:
        model: The network, frozen here.
        tokenizer: A bert-base-uncased tokenizer.
    """

    def __init__(self, model: ImageRewardModel, tokenizer) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        size = model.vision.config.image_size
        self.preprocess = ImagePreprocess(
            size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, crop=True, resize_shortest=size
        )
        self.name = "image_reward"

    def train(self, mode: bool = True) -> ImageReward:
        """Stay in eval mode whatever ``mode`` is: a reward's network is frozen (no drop-path or dropout)."""
        return super().train(False)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``(B, 3, H, W)`` images in [0, 1] against ``B`` prompts; returns ``(B,)`` float32."""
        check_images(images, prompts)
        device, dtype = model_device_dtype(self.model)
        text = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        ).to(device)
        pixels = self.preprocess(images.to(device=device, dtype=dtype))
        return self.model(pixels, text["input_ids"], text["attention_mask"]).float()


def load_image_reward(spec: RewardSpec) -> ImageReward:
    """Load ImageReward from ``spec.checkpoint`` (the official ``ImageReward.pt``), with the tokeniser in the
    folder ``spec.processor`` and the architecture in ``spec.arch_config`` (default: the released one).

    Raises:
        RewardLoadError: If a file is missing or unreadable, or the checkpoint's tensors do not fit.
    """
    assert spec.checkpoint is not None and spec.processor is not None, "spec.validate() should have caught this"
    arch = _read_arch(spec.arch_config) if spec.arch_config else OFFICIAL_ARCH
    model = ImageRewardModel(arch)
    state = map_checkpoint(_read_checkpoint(spec.checkpoint))
    mismatch = describe_state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise RewardLoadError(
            f"ImageReward checkpoint {spec.checkpoint!r} does not fit the architecture "
            f"{'in ' + repr(spec.arch_config) if spec.arch_config else 'of the released model'}: "
            f"{mismatch}"
        )
    model.load_state_dict(state, strict=True)
    return ImageReward(model.eval(), _load_tokenizer(spec.processor))


def image_reward_skeleton(spec: RewardSpec) -> ImageReward:
    """ImageReward's modules on the meta device, with its real tokeniser (``RewardDescriptor.skeleton``)."""
    assert spec.processor is not None, "spec.validate() should have caught this"
    arch = _read_arch(spec.arch_config) if spec.arch_config else OFFICIAL_ARCH
    with torch.device("meta"):
        model = ImageRewardModel(arch)
    return ImageReward(model.eval(), _load_tokenizer(spec.processor))


def map_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official state dict's tensors to ``ImageRewardModel``'s (``CHECKPOINT_KEYS``); tensors no
    rule names are kept under their own name, so the mismatch check reports them."""
    mapped = {}
    for key, tensor in state.items():
        for pattern, target in CHECKPOINT_KEYS:
            if re.fullmatch(pattern, key):
                if target is not None:
                    mapped[re.sub(pattern, target, key)] = tensor
                break
        else:
            mapped[key] = tensor
    return mapped


def _read_checkpoint(path: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise RewardLoadError(f"ImageReward checkpoint not found at {path!r}; expected the official ImageReward.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a corrupt or foreign file
        raise RewardLoadError(f"ImageReward checkpoint {path!r} could not be read as a torch state dict: {e}") from e
    if not isinstance(state, Mapping):
        raise RewardLoadError(f"ImageReward checkpoint {path!r} holds a {type(state).__name__}, not a state dict")
    return state


def _read_arch(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            arch = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RewardLoadError(f"ImageReward arch_config {path!r} could not be read as JSON: {e}") from e
    if not (isinstance(arch, dict) and isinstance(arch.get("vision"), dict) and isinstance(arch.get("text"), dict)):
        raise RewardLoadError(
            f"ImageReward arch_config {path!r} must hold a 'vision' and a 'text' object "
            "(BlipVisionConfig and BlipTextConfig settings)"
        )
    return arch


def _load_tokenizer(folder: str):
    from transformers import BertTokenizer

    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab):
        raise RewardLoadError(
            f"ImageReward tokeniser folder {folder!r} has no vocab.txt; point processor at a "
            "bert-base-uncased folder (it holds vocab.txt)"
        )
    return BertTokenizer(vocab_file=vocab, do_lower_case=True)


DESCRIPTOR = RewardDescriptor(
    name="image_reward",
    skeleton=image_reward_skeleton,
    load=load_image_reward,
    unit="ImageReward (standardised)",
    required={"checkpoint": "the official ImageReward.pt", "processor": "a bert-base-uncased folder with vocab.txt"},
    allowed=("arch_config",),
    files={
        "checkpoint": WeightsFile(what="the official ImageReward.pt", prefixes=CHECKPOINT_PREFIXES),
        "processor": Folder(what="a bert-base-uncased tokeniser folder", must_hold="vocab.txt"),
    },
)

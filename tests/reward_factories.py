"""Tiny reward models built from configs and written to disk in the layouts real checkpoints use.

Each ``make_*_spec(folder)`` writes the files a user would download (an HPSv2-style ``{'state_dict': ...}``
checkpoint, an open_clip weights file, an aesthetic head, a PickScore model + processor folder) and
returns the :class:`~rewards.config.RewardSpec` that loads them through ``rewards.build.build_reward``.
Weights are random but seeded; the global RNG is left untouched.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from rewards.config import RewardSpec

# A 1.8 M-parameter open_clip CLIP: 64 px images, 16 px patches, the real 49408-token CLIP text vocabulary.
TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_HPS_ARCH = "tiny-ViT-hps"
# The aesthetic backbone mirrors ViT-L-14-quickgelu (OpenAI CLIP's activation).
TINY_AESTHETIC_ARCH = "tiny-ViT-aesthetic-quickgelu"
TINY_IMAGE_SIZE = 64


def write_open_clip_config(folder: str, arch: str = TINY_HPS_ARCH, config: dict | None = None) -> str:
    """Write an open_clip model-config JSON named ``<arch>.json`` into ``folder`` and return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{arch}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config if config is not None else TINY_OPEN_CLIP_CONFIG, f)
    return path


def write_open_clip_weights(config_path: str, weights_path: str, *, seed: int = 0, hps_layout: bool = True) -> str:
    """Build the open_clip model described by ``config_path`` with seeded random weights and save them.

    Args:
        config_path: A model-config JSON (see :func:`write_open_clip_config`); its stem is the architecture.
        weights_path: Where to write the weights.
        seed: Seed of the random weights.
        hps_layout: Save ``{'state_dict': sd, 'epoch': 1}`` like HPSv2 checkpoints; else a bare state dict.

    Returns:
        ``weights_path``.
    """
    import open_clip

    from rewards.open_clip_loading import register_arch_config

    arch = register_arch_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = open_clip.create_model(arch, device="cpu").state_dict()
    torch.save({"state_dict": state, "epoch": 1} if hps_layout else state, weights_path)
    return weights_path


def make_hps_spec(folder: str, *, seed: int = 0, weight: float = 1.0) -> RewardSpec:
    """Write a tiny HPSv2-style reward (config JSON + ``{'state_dict': ...}`` checkpoint) and return its spec."""
    config_path = write_open_clip_config(folder, TINY_HPS_ARCH)
    checkpoint = write_open_clip_weights(config_path, os.path.join(folder, "HPS_v2.1_tiny.pt"), seed=seed)
    return RewardSpec(name="hpsv2", weight=weight, checkpoint=checkpoint, arch_config=config_path)


def make_clip_score_spec(folder: str, *, seed: int = 0, weight: float = 1.0) -> RewardSpec:
    """Write a tiny open_clip model (bare state dict) and return a ``clip_score`` spec for it."""
    config_path = write_open_clip_config(folder, TINY_HPS_ARCH)
    weights = os.path.join(folder, "open_clip_pytorch_model.bin")
    write_open_clip_weights(config_path, weights, seed=seed, hps_layout=False)
    return RewardSpec(name="clip_score", weight=weight, checkpoint=weights, arch_config=config_path)


def write_aesthetic_head(path: str, embed_dim: int, *, seed: int = 0) -> str:
    """Write an aesthetic MLP head with the official key layout (``layers.{0,2,4,6,7}.*``) to ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )
    torch.save({f"layers.{k}": v for k, v in layers.state_dict().items()}, path)
    return path


def make_aesthetic_spec(folder: str, *, seed: int = 0, weight: float = 1.0) -> RewardSpec:
    """Write a tiny QuickGELU open_clip backbone + aesthetic head and return an ``aesthetic`` spec."""
    config = dict(TINY_OPEN_CLIP_CONFIG, quick_gelu=True)
    config_path = write_open_clip_config(folder, TINY_AESTHETIC_ARCH, config)
    clip_weights = os.path.join(folder, "tiny_clip_l14.bin")
    write_open_clip_weights(config_path, clip_weights, seed=seed, hps_layout=False)
    head = write_aesthetic_head(os.path.join(folder, "tiny-linearMSE.pth"), config["embed_dim"], seed=seed)
    return RewardSpec(
        name="aesthetic", weight=weight, checkpoint=head, clip_checkpoint=clip_weights, arch_config=config_path
    )


def tiny_clip_config():
    """The transformers ``CLIPConfig`` of the tiny PickScore-style model (64 px, 32-d, real CLIP vocab)."""
    from transformers import CLIPConfig

    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        max_position_embeddings=77,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=16,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def make_pickscore_spec(folder: str, *, tokenizer=None, seed: int = 0, weight: float = 1.0) -> RewardSpec:
    """Write a tiny ``CLIPModel`` + ``CLIPProcessor`` folder and return a ``pickscore`` spec for it.

    Args:
        folder: Where to write the model and processor.
        tokenizer: A CLIP tokenizer to ship (building the real one takes seconds; pass one to reuse it).
            Default: ``pipeline.clip_tokenizer.build_clip_tokenizer()``.
        seed: Seed of the random weights.
        weight: The spec's weight.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipeline.clip_tokenizer import build_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config()).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer or build_clip_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return RewardSpec(name="pickscore", weight=weight, checkpoint=folder)


# A tiny ImageReward: sizes for rewards.image_reward (arch_config) and the original-layout reference module
TINY_IMAGE_REWARD_ARCH = {
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 16,
    },
    "text": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 40,
        "bos_token_id": 2,
        "sep_token_id": 3,
        "eos_token_id": 3,
    },
}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_WORDS = [
    "a",
    "red",
    "cube",
    "on",
    "table",
    "photo",
    "of",
    "dog",
    "painting",
    "ocean",
    "with",
    "clouds",
    "and",
    "birds",
    ",",
    "day",
    "time",
    "low",
    "depth",
    "field",
    "effect",
]


def write_bert_vocab(folder: str) -> str:
    """A WordPiece ``vocab.txt`` (BERT's special tokens, some words, every letter alone and as ``##x``)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = BERT_SPECIALS + BERT_WORDS + [x for x in letters if x not in BERT_WORDS] + [f"##{x}" for x in letters]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return folder


def reference_image_reward(vocab_size: int, seed: int = 0):
    """The tiny ImageReward in the original module layout (``tests/image_reward_reference.py``), seeded."""
    from image_reward_reference import ImageReward

    v, t = TINY_IMAGE_REWARD_ARCH["vision"], TINY_IMAGE_REWARD_ARCH["text"]
    vision = dict(
        image=v["image_size"],
        patch=v["patch_size"],
        width=v["hidden_size"],
        depth=v["num_hidden_layers"],
        heads=v["num_attention_heads"],
        mlp=v["intermediate_size"],
    )
    text = dict(
        vocab=vocab_size,
        width=t["hidden_size"],
        layers=t["num_hidden_layers"],
        heads=t["num_attention_heads"],
        ffn=t["intermediate_size"],
        positions=t["max_position_embeddings"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageReward(vision, text).eval()
        for p in model.parameters():  # larger than the default init, so that every part moves the score
            p.data.add_(0.05 * torch.randn_like(p))
    return model


def make_image_reward_spec(folder: str, *, seed: int = 0, weight: float = 1.0) -> RewardSpec:
    """Write a tiny ImageReward (the original's ``state_dict()`` as ``ImageReward.pt``, its sizes as
    ``arch_config`` and a bert vocab folder) and return an ``image_reward`` spec for it."""
    vocab = write_bert_vocab(os.path.join(folder, "bert"))
    with open(os.path.join(vocab, "vocab.txt"), encoding="utf-8") as f:
        vocab_size = len(f.read().split())
    arch = {**TINY_IMAGE_REWARD_ARCH, "text": {**TINY_IMAGE_REWARD_ARCH["text"], "vocab_size": vocab_size}}
    arch_path = os.path.join(folder, "tiny-image-reward.json")
    with open(arch_path, "w", encoding="utf-8") as f:
        json.dump(arch, f)
    checkpoint = os.path.join(folder, "ImageReward.pt")
    torch.save(reference_image_reward(vocab_size, seed).state_dict(), checkpoint)
    return RewardSpec(name="image_reward", weight=weight, checkpoint=checkpoint, processor=vocab, arch_config=arch_path)


def pixel_spec(name: str, weight: float = 1.0) -> RewardSpec:
    """A spec for one of the weight-free pixel rewards (symmetry, colourfulness, sharpness, brightness)."""
    return RewardSpec(name=name, weight=weight)

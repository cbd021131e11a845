"""Tiny Stable Diffusion pipelines for tests: built from configs, saved to disk, loaded back like real ones."""

from __future__ import annotations

from pipeline.clip_tokenizer import build_clip_tokenizer
from pipeline.random_models import build_random_sd


def save_clip_tokenizer(folder: str) -> str:
    """Write the real CLIP tokenizer (rebuilt offline) to ``folder`` and return it."""
    build_clip_tokenizer().save_pretrained(folder)
    return folder


def build_tiny_sd(folder: str, tokenizer_folder: str, seed: int = 0, prediction_type: str = "epsilon") -> str:
    """A 16 px SD-structured pipeline (8x8x4 latents) using the saved tokenizer."""
    from transformers import CLIPTokenizer

    return build_random_sd(folder, "test", CLIPTokenizer.from_pretrained(tokenizer_folder), seed, prediction_type)

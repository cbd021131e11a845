"""A tiny FLUX.1 pipeline for tests (docs/families.md): ``pipeline.random_models.build_random_flux`` at size ``test``
(CLIP with the offline CLIP tokenizer, T5 with the offline Unigram tokenizer, one double-stream and one
single-stream block, a 4-channel VAE with FLUX's scaling and shift), saved and loaded back through the same code as
a real FLUX.1. Its native size is FLUX's 128 latent pixels (256 px here); tests sample it at
``model.resolution=16``."""

from __future__ import annotations


def build_tiny_flux(
    folder: str, tokenizer_folder: str, seed: int = 0, guidance_embeds: bool = True, **scheduler_options
) -> str:
    """``guidance_embeds=True`` is [dev]'s layout, False [schnell]'s."""
    from transformers import CLIPTokenizer

    from pipeline.random_models import build_random_flux

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    return build_random_flux(folder, "test", seed, tokenizer, guidance_embeds, **scheduler_options)

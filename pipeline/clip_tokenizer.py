"""The CLIP BPE tokenizer (SD 1.x, PickScore, HPSv2) rebuilt offline from the file open_clip ships.

open_clip carries ``bpe_simple_vocab_16e6.txt.gz``: a header line and then the BPE merges. CLIP's
vocabulary is the 256 byte-level symbols, the same symbols with the end-of-word marker ``</w>``, one
token per merge (the first 49152 - 256 - 256 merges), then ``<|startoftext|>`` and
``<|endoftext|>``: 49408 tokens in all. The result matches ``open_clip.get_tokenizer`` id for id.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level symbols in vocabulary order: printable bytes as themselves, then the
    remaining bytes mapped to ``chr(256 + n)``."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Return CLIP's ``(vocab, merges)`` read from open_clip's shipped BPE file."""
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 1 + _NUM_MERGES]
    byte_symbols = _bytes_to_unicode()
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77):
    """Build a transformers ``CLIPTokenizer`` with the real CLIP vocabulary, fully offline.

    Args:
        model_max_length: Padding/truncation length (77 for SD 1.x and CLIP ViT models).

    Returns:
        A ``transformers.CLIPTokenizer``; save it with ``save_pretrained`` to ship it in a model folder.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)

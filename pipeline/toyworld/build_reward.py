"""Train the shapes-world reward: a tiny open_clip CLIP model for the ``clip_score`` reward.

The model is built from an open_clip model-config JSON (``toy-clip.json``; its file stem is the
architecture name), with 32 px images, the real 49408-token CLIP vocabulary and 77-token context so
open_clip's bundled tokenizer works. It is trained on shapes-world image/caption pairs of the
*training* combos with the symmetric InfoNCE loss of CLIP (Radford et al., 2021, Fig. 3):

    L = ½ [CE(s · I Tᵀ, id) + CE(s · T Iᵀ, id)],

with ``I``, ``T`` the L2-normalised image and text embeddings of a batch of distinct captions and
``s = exp(logit_scale)`` learnt (clamped at 100). Images go through exactly the differentiable
preprocessing ``rewards.open_clip_loading.open_clip_preprocess`` that the reward applies, after light
augmentation (colour shift, blur, noise) so that imperfect generated images still score sensibly.
The reward then scores ``100 · cos(I, T)``.

    python -m pipeline.toyworld.build_reward --out pipeline/assets/toyworld/clip
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.toyworld.build_cli import build_main
from pipeline.toyworld.shapes import ASSETS_DIR, Combo, all_combos, caption, held_out_combos, render, train_combos

ARCH = "toy-clip"
# 0.3 M vision + 1.6 M text parameters (the text embedding table is 49408 x 32).
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 4, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}
WEIGHTS_NAME = f"{ARCH}.safetensors"
MAX_LOGIT_SCALE = 4.6052  # log(100), as in CLIP


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardBuildConfig:
    """Training settings of the shapes-world CLIP reward."""

    seed: int = 0  # seeds weights, data and augmentation
    threads: int = 2  # torch intra-op threads
    steps: int = 3000  # optimiser steps, each over every training caption once
    lr: float = 1e-3  # AdamW peak learning rate
    warmup: int = 100  # linear warm-up steps, then cosine decay to 10 %
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    images_per_combo: int = 20  # evaluation: rendered images per combo
    log_every: int = 100  # print the mean loss every this many steps


def write_config(folder: str) -> str:
    """Write ``toy-clip.json`` into ``folder`` and return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{ARCH}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(CLIP_CONFIG, f, indent=2)
    return path


def build_model(config_path: str, seed: int):
    """Register the config and build its seeded, randomly initialised open_clip model.

    Returns:
        ``(model, tokenizer, preprocess)``: the tokenizer and preprocessing are the ones the
        ``clip_score`` reward uses for this architecture.
    """
    import open_clip

    from rewards.open_clip_loading import open_clip_preprocess, register_arch_config

    arch = register_arch_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, device="cpu")
    return model, open_clip.get_tokenizer(arch), open_clip_preprocess(model)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Perturb ``(B, 3, H, W)`` images in [0, 1]: per-image RGB shift ``U(-0.08, 0.08)``, a 3x3 box blur
    on half the images, and Gaussian noise with ``σ ~ U(0, 0.06)``; clamps back to [0, 1]."""
    b = images.shape[0]
    x = images + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.16
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.5, blur, x)
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.06
    return x.clamp(0, 1)


def contrastive_loss(model, x_hat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of ``B`` preprocessed images ``(B, 3, 32, 32)`` and their distinct captions ``(B, 77)``."""
    image_emb = F.normalize(model.encode_image(x_hat), dim=-1)  # (B, D)
    text_emb = F.normalize(model.encode_text(tokens), dim=-1)  # (B, D)
    logits = model.logit_scale.exp() * image_emb @ text_emb.T  # (B, B)
    target = torch.arange(len(tokens))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def render_set(combos: list[Combo], per_combo: int, gen: torch.Generator) -> tuple[torch.Tensor, list[Combo]]:
    """``per_combo`` images of each combo: ``(len(combos) * per_combo, 3, 32, 32)`` in [0, 1], and their combos."""
    labels = [c for c in combos for _ in range(per_combo)]
    return torch.stack([render(c, gen) for c in labels]).float() / 255, labels


def train(model, tokenizer, preprocess, cfg: RewardBuildConfig, gen: torch.Generator) -> float:
    """Contrastive training on all training captions per step, one fresh image each; returns the last logged loss."""
    from pipeline.toyworld.build_base import lr_factor

    combos = train_combos()
    tokens = tokenizer([caption(c) for c in combos])  # (C, 77)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup))
    model.train()
    running, start = [], time.time()
    for step in range(cfg.steps):
        images, _ = render_set(combos, 1, gen)
        loss = contrastive_loss(model, preprocess(augment(images, gen)), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            last, running = sum(running) / len(running), []
            print(
                f"clip step {step + 1}/{cfg.steps} loss {last:.4f} scale {model.logit_scale.exp().item():.1f} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
    return last


def save_weights(model, path: str) -> str:
    """Save the state dict as fp16 safetensors (half the size; open_clip loads it into fp32 parameters)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, path)
    return path


@torch.no_grad()
def score_matrix(reward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``s · cos(f_I(x̂_n), f_T(c_p))`` for every image and prompt: ``(N, P)``.

    Uses the reward's own model, tokenizer, preprocessing and scale, so row ``n``, column ``p`` equals
    ``reward(images[n:n+1], [prompts[p]])``; the embeddings are computed once instead of ``N * P`` times.
    """
    image_emb = F.normalize(reward.model.encode_image(reward.preprocess(images)), dim=-1)  # (N, D)
    text_emb = F.normalize(reward.model.encode_text(reward.tokenizer(prompts)), dim=-1)  # (P, D)
    return reward.scale * image_emb @ text_emb.T


def retrieval_report(reward, combos: list[Combo], per_combo: int, gen: torch.Generator) -> dict[str, float]:
    """Image -> caption retrieval among all 66 captions, and matched vs mismatched mean scores.

    Returns:
        ``top1`` (the best-scoring caption is the image's own), per-attribute accuracies of the best
        caption (``colour``, ``shape``, ``background``), ``matched`` (mean score with the own caption)
        and ``mismatched`` (mean score with every other caption).
    """
    candidates = all_combos()
    images, labels = render_set(combos, per_combo, gen)
    scores = score_matrix(reward, images, [caption(c) for c in candidates])  # (N, 66)
    own = torch.tensor([candidates.index(c) for c in labels])
    best = [candidates[i] for i in scores.argmax(dim=1).tolist()]
    mask = F.one_hot(own, len(candidates)).bool()
    with torch.no_grad():
        direct = reward(images, [caption(c) for c in labels])  # (N,), the reward's forward
    assert torch.allclose(direct, scores[mask], atol=1e-3), "score_matrix disagrees with the reward's forward"
    n = len(labels)
    return {
        "top1": sum(b == c for b, c in zip(best, labels)) / n,
        "colour": sum(b.colour == c.colour for b, c in zip(best, labels)) / n,
        "shape": sum(b.shape == c.shape for b, c in zip(best, labels)) / n,
        "background": sum(b.background == c.background for b, c in zip(best, labels)) / n,
        "matched": scores[mask].mean().item(),
        "mismatched": scores[~mask].mean().item(),
    }


def load_shipped_reward(folder: str):
    """The ``clip_score`` reward loaded from ``folder`` through ``rewards.build.build_reward``."""
    from rewards.build import build_reward
    from rewards.config import RewardSpec

    spec = RewardSpec(
        name="clip_score",
        arch_config=os.path.join(folder, f"{ARCH}.json"),
        checkpoint=os.path.join(folder, WEIGHTS_NAME),
    )
    return build_reward([spec])


def build(cfg: RewardBuildConfig, out: str) -> dict:
    """Train, save to ``out``, reload through ``build_reward`` and evaluate; returns a summary."""
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    model, tokenizer, preprocess = build_model(write_config(out), cfg.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params} (visual {sum(p.numel() for p in model.visual.parameters())})", flush=True)
    start = time.time()
    loss = train(model, tokenizer, preprocess, cfg, gen)
    seconds = round(time.time() - start)
    save_weights(model.eval(), os.path.join(out, WEIGHTS_NAME))
    reward = load_shipped_reward(out)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    report = {
        split: retrieval_report(reward, combos, cfg.images_per_combo, eval_gen)
        for split, combos in (("heldout", held_out_combos()), ("train", train_combos()))
    }
    return dict(config=dataclasses.asdict(cfg), parameters=params, loss=loss, seconds=seconds, eval=report)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: build, save, and write ``build_info.json`` next to the result."""
    summary = build_main(
        RewardBuildConfig, build, "Train the shapes-world CLIP reward on CPU.", str(ASSETS_DIR / "clip"), argv
    )
    print(json.dumps(summary["eval"], indent=1))


if __name__ == "__main__":
    main()

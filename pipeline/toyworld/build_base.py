"""Pretrain the shapes-world base model: a tiny Stable-Diffusion-structured pipeline, from scratch on CPU.

Stage A trains a tiny ``AutoencoderKL`` (32 px <-> 16x16x4 latents) on the reconstruction loss
``‖D(z) - x‖² + λ_KL KL(q(z|x) ‖ N(0, I))`` with ``z ~ q(z|x)``, then sets ``scaling_factor = 1 / std(z)``
so the diffusion latents ``z0 = scaling_factor * z`` have unit variance, as SD does.

Stage B trains a ``UNet2DConditionModel`` jointly with a tiny ``CLIPTextModel`` (real 49408-token CLIP
tokenizer, 77 positions) with the DDPM epsilon objective (Ho et al., 2020, eq. 14)

    L = E_{z0, c, t, ε} [ w(t) ‖ε - ε_θ(√ᾱ_t z0 + √(1-ᾱ_t) ε, t, τ(c))‖² ],

using min-SNR weighting ``w(t) = min(SNR_t, γ) / SNR_t`` with ``SNR_t = ᾱ_t / (1 - ᾱ_t)`` (Hang et al.,
2023) and 10 % empty captions for classifier-free guidance (Ho & Salimans, 2022). An EMA of the UNet
and text-encoder weights is what ships. Everything is seeded: the same seed, step counts and thread
count give the same weights. The pipeline is saved in fp16 (half the size) and reloads as fp32.

    python -m pipeline.toyworld.build_base --out pipeline/assets/toyworld/sd
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.toyworld.build_cli import build_main
from pipeline.toyworld.shapes import ASSETS_DIR, sample_batch, train_combos

# SD 1.x noise schedule (scaled_linear 0.00085-0.012, 1000 steps), sampled with DDIM.
SCHEDULER_KWARGS = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class BaseConfig:
    """Architecture and training settings of the shapes-world base pipeline."""

    seed: int = 0  # seeds weights and every data / noise draw
    threads: int = 2  # torch intra-op threads (results are reproducible for a fixed count)
    vae_steps: int = 700  # stage A optimiser steps
    vae_batch: int = 32  # images per VAE step
    vae_lr: float = 1e-3  # VAE peak learning rate
    kl_weight: float = 1e-6  # λ_KL, as in SD's VAE: keeps latents near N(0, I) without blurring
    pool_size: int = 16384  # training images encoded once for stage B
    unet_steps: int = 4000  # stage B optimiser steps
    unet_batch: int = 32  # images per UNet step
    unet_lr: float = 1e-3  # UNet and text-encoder peak learning rate
    warmup: int = 200  # linear warm-up steps (both stages), then cosine decay to 10 % of the peak
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    ema_decay: float = 0.999  # EMA decay of the shipped UNet / text-encoder weights
    cond_dropout: float = 0.1  # fraction of captions replaced by "" (classifier-free guidance)
    snr_gamma: float = 5.0  # γ of min-SNR loss weighting; 0 = plain MSE
    unet_channels: tuple[int, ...] = (32, 64, 64)  # UNet block widths at 16, 8, 4 px
    text_hidden: int = 32  # text-encoder width = UNet cross-attention width
    text_layers: int = 3  # text-encoder transformer layers
    log_every: int = 50  # print the mean loss every this many steps


def build_vae(cfg: BaseConfig):
    """A 0.6 M-parameter ``AutoencoderKL``: ``(B, 3, 32, 32)`` in [-1, 1] <-> ``(B, 4, 16, 16)`` latents.

    No mid-block attention: at 16x16 it costs a quarter of the step time and adds nothing for flat shapes.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
        mid_block_add_attention=False,
    )


def build_unet(cfg: BaseConfig):
    """A ``UNet2DConditionModel`` on 16x16x4 latents with (self- and cross-) attention below 16 px.

    Attention over the 256 positions of the 16 px level would cost 60 % of the step time on CPU; the
    8 and 4 px levels and the mid block see the caption and the whole image.
    """
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_text_encoder(cfg: BaseConfig, tokenizer):
    """A tiny ``CLIPTextModel`` over the full CLIP vocabulary with 77 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=2 * cfg.text_hidden,
            num_attention_heads=2,
            num_hidden_layers=cfg.text_layers,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup`` steps, then cosine to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params: list[torch.nn.Parameter], lr: float, cfg: BaseConfig, total: int):
    """AdamW plus the warm-up/cosine ``LambdaLR`` of :func:`lr_factor`."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup))
    return opt, sched


def vae_loss(vae, x: torch.Tensor, gen: torch.Generator, kl_weight: float) -> tuple[torch.Tensor, float]:
    """``MSE(D(z), x) + λ_KL KL`` for ``x`` ``(B, 3, 32, 32)`` in [-1, 1]; also returns the MSE alone."""
    posterior = vae.encode(x).latent_dist
    x_rec = vae.decode(posterior.sample(generator=gen)).sample  # (B, 3, 32, 32)
    mse = F.mse_loss(x_rec, x)
    return mse + kl_weight * posterior.kl().mean(), mse.item()


def train_vae(vae, cfg: BaseConfig, gen: torch.Generator) -> float:
    """Stage A: fit the autoencoder on fresh shapes-world batches; returns the last logged MSE."""
    combos = train_combos()
    opt, sched = make_optimizer(list(vae.parameters()), cfg.vae_lr, cfg, cfg.vae_steps)
    vae.train()
    running, start = [], time.time()
    for step in range(cfg.vae_steps):
        images, _ = sample_batch(cfg.vae_batch, combos, gen)
        loss, mse = vae_loss(vae, images * 2 - 1, gen, cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(mse)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vae_steps:
            mean = sum(running) / len(running)
            print(f"vae step {step + 1}/{cfg.vae_steps} mse {mean:.5f} ({time.time() - start:.0f} s)", flush=True)
            last, running = mean, []
    return last


@dataclass(frozen=True, slots=True)
class LatentPool:
    """Posteriors ``q(z|x) = N(mean, std²)`` of a fixed set of training images, encoded once.

    Encoding every batch afresh would cost a sixth of each UNet step; a pool of 16k images (280 per
    combo, each with its own size and position) is plenty for a 1.7 M-parameter UNet.
    """

    mean: torch.Tensor  # (N, 4, 16, 16) posterior means, unscaled
    std: torch.Tensor  # (N, 4, 16, 16) posterior standard deviations
    captions: list[str]  # N captions

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """``n`` draws ``z ~ q(z|x)`` (unscaled, ``(n, 4, 16, 16)``) of uniformly chosen pool images, with captions."""
        idx = torch.randint(len(self.captions), (n,), generator=gen)
        z = self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=gen)
        return z, [self.captions[i] for i in idx.tolist()]


@torch.no_grad()
def encode_pool(vae, n: int, gen: torch.Generator) -> LatentPool:
    """Render ``n`` training images and encode them with the (frozen) VAE."""
    vae.eval()
    images, captions = sample_batch(n, train_combos(), gen)
    dists = [vae.encode(x * 2 - 1).latent_dist for x in images.split(256)]
    return LatentPool(torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists]), captions)


def latent_scale(pool: LatentPool, gen: torch.Generator) -> float:
    """``1 / std(z)`` over one posterior sample per pool image: makes the diffusion latents unit-variance."""
    z, _ = pool.sample(len(pool.captions), gen)
    return float(1.0 / z.std())


class Ema:
    """Exponential moving average ``θ̄ ← d θ̄ + (1 - d) θ`` with warm-up ``d = min(decay, (1 + k) / (10 + k))``."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend the current weights into the average after optimiser step ``step`` (0-based)."""
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the live weights with the average."""
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR weights ``min(SNR_t, γ) / SNR_t`` for epsilon prediction, shape ``(B,)``; ones when ``γ <= 0``."""
    if gamma <= 0:
        return torch.ones(t.shape)
    abar = alphas_cumprod[t]
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / snr


class CaptionIds:
    """Token ids ``(L=77,)`` per caption, padded to max length as ``trainers.models`` does, cached."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """``(B, 77)`` ids for ``B`` captions."""
        for c in set(captions) - set(self.cache):
            self.cache[c] = self.tokenizer(
                c,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return torch.stack([self.cache[c] for c in captions])


def denoiser_loss(
    parts: dict, batch: tuple[torch.Tensor, list[str]], cfg: BaseConfig, gen: torch.Generator
) -> torch.Tensor:
    """Min-SNR-weighted epsilon loss of one batch (unscaled VAE latents ``(B, 4, 16, 16)``, captions).

    Args:
        parts: ``unet``, ``text_encoder``, ``ids`` (a :class:`CaptionIds`), ``scheduler`` and ``scale``
            (the VAE scaling factor).
        batch: Latent samples ``z`` and their captions.
        cfg: Settings (caption dropout, γ).
        gen: Source of dropout, latent, timestep and noise draws.
    """
    z, captions = batch
    b = len(captions)
    drop = (torch.rand(b, generator=gen) < cfg.cond_dropout).tolist()
    captions = ["" if d else c for d, c in zip(drop, captions)]
    z0 = z * parts["scale"]  # (B, 4, 16, 16), unit variance
    t = torch.randint(0, parts["scheduler"].config.num_train_timesteps, (b,), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    x_t = parts["scheduler"].add_noise(z0, eps, t)
    cond = parts["text_encoder"](parts["ids"](captions))[0]  # (B, 77, D)
    eps_hat = parts["unet"](x_t, t, encoder_hidden_states=cond).sample
    per_item = F.mse_loss(eps_hat, eps, reduction="none").mean(dim=(1, 2, 3))  # (B,)
    return (snr_weights(parts["scheduler"].alphas_cumprod, t, cfg.snr_gamma) * per_item).mean()


def train_denoiser(parts: dict, cfg: BaseConfig, gen: torch.Generator) -> float:
    """Stage B: train UNet + text encoder jointly, then load their EMA weights; returns the last logged loss."""
    params = [p for m in (parts["unet"], parts["text_encoder"]) for p in m.parameters()]
    opt, sched = make_optimizer(params, cfg.unet_lr, cfg, cfg.unet_steps)
    ema = Ema(params, cfg.ema_decay)
    running, start = [], time.time()
    parts["unet"].train()
    parts["text_encoder"].train()
    for step in range(cfg.unet_steps):
        loss = denoiser_loss(parts, parts["pool"].sample(cfg.unet_batch, gen), cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update(step)
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.unet_steps:
            mean = sum(running) / len(running)
            print(
                f"unet step {step + 1}/{cfg.unet_steps} loss {mean:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
            last, running = mean, []
    ema.copy_to_params()
    return last


def save_pipeline(parts: dict, tokenizer, out: str) -> None:
    """Assemble the ``StableDiffusionPipeline``, cast it to fp16 and ``save_pretrained`` it to ``out``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=tokenizer,
        unet=parts["unet"],
        scheduler=DDIMScheduler(**SCHEDULER_KWARGS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.eval().to(torch.float16)
    os.makedirs(out, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    load_as_float32(os.path.join(out, "text_encoder", "config.json"))


def load_as_float32(config_path: str) -> None:
    """Make a transformers component load as fp32 by default. transformers takes the ``dtype`` its config
    names (``float16`` after the cast above), while diffusers loads the UNet and VAE as fp32, so a plain
    ``StableDiffusionPipeline.from_pretrained(folder)`` would mix the two and fail at its first call."""
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["dtype"] = "float32"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def check_reload(out: str) -> None:
    """Load ``out`` back with plain diffusers (no dtype given) and with ``trainers.models.load_model``; both
    must come back fp32.

    Raises:
        RuntimeError: If a component does not load as fp32.
    """
    from diffusers import StableDiffusionPipeline

    from trainers.config import ModelConfig
    from trainers.models import load_model

    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    model = load_model(ModelConfig(path=out, device="cpu"))
    for name, module in [
        ("unet", pipe.unet),
        ("vae", pipe.vae),
        ("text_encoder", pipe.text_encoder),
        ("load_model.denoiser", model.denoiser),
    ]:
        dtypes = {p.dtype for p in module.parameters()}
        if dtypes != {torch.float32}:
            raise RuntimeError(f"{name} reloaded from {out} with dtypes {dtypes}, expected float32")
    print(f"reloaded {out}: fp32, resolution {model.resolution}, latent {model.latent_shape}")


def build(cfg: BaseConfig, out: str) -> dict:
    """Run both stages, save the pipeline to ``out`` and return a summary (losses, scale, sizes, times)."""
    from diffusers import DDIMScheduler

    from pipeline.clip_tokenizer import build_clip_tokenizer

    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokenizer = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae, unet, text_encoder = build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tokenizer)
    counts = {
        n: sum(p.numel() for p in m.parameters())
        for n, m in [("vae", vae), ("unet", unet), ("text_encoder", text_encoder)]
    }
    print(f"parameters: {counts}", flush=True)
    start = time.time()
    vae_mse = train_vae(vae, cfg, gen)
    vae.requires_grad_(False).eval()
    pool = encode_pool(vae, cfg.pool_size, gen)
    scale = latent_scale(pool, gen)
    vae.register_to_config(scaling_factor=scale)
    vae_s = time.time() - start
    print(f"vae done in {vae_s:.0f} s, scaling_factor {scale:.4f}", flush=True)
    parts = dict(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        ids=CaptionIds(tokenizer),
        pool=pool,
        scheduler=DDIMScheduler(**SCHEDULER_KWARGS),
        scale=scale,
    )
    unet_loss = train_denoiser(parts, cfg, gen)
    save_pipeline(parts, tokenizer, out)
    check_reload(out)
    return dict(
        config=dataclasses.asdict(cfg),
        parameters=counts,
        vae_mse=vae_mse,
        scaling_factor=scale,
        unet_loss=unet_loss,
        vae_seconds=round(vae_s),
        unet_seconds=round(time.time() - start - vae_s),
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: build, save, and write ``build_info.json`` next to the result."""
    summary = build_main(
        BaseConfig, build, "Pretrain the shapes-world base SD pipeline on CPU.", str(ASSETS_DIR / "sd"), argv
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

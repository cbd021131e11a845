"""ImageReward as its original code builds it (BLIP's ``vit.py`` and ``med.py``, ImageReward's ``MLP``),
written out plainly with the original module names, so its ``state_dict()`` has the key layout of the
official ``ImageReward.pt``. Tests save a tiny one and compare ``rewards.image_reward`` with it.

Only what ImageReward's forward uses is here: the ViT's blocks, the BERT encoder in its multimodal mode
(bidirectional self-attention, cross-attention to every image token), the [CLS] feature and the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's score normalisation


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width, eps=1e-6), Attention(width, heads)
        self.norm2, self.mlp = nn.LayerNorm(width, eps=1e-6), Mlp(width, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, depth: int, heads: int, mlp: int):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))

    def forward(self, ids):
        return self.LayerNorm(
            self.word_embeddings(ids) + self.position_embeddings(self.position_ids[:, : ids.shape[1]])
        )


class BertSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key, self.value = nn.Linear(kv_width, width), nn.Linear(kv_width, width)

    def split(self, x):
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)

    def forward(self, x, context, mask):
        q, k, v = self.split(self.query(x)), self.split(self.key(context)), self.split(self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        out = scores.softmax(dim=-1) @ v
        return out.permute(0, 2, 1, 3).reshape(x.shape)


class BertSelfOutput(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(width, width), nn.LayerNorm(width, eps=1e-12)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.self, self.output = BertSelfAttention(width, heads, kv_width), BertSelfOutput(width)

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(hidden, width), nn.LayerNorm(width, eps=1e-12)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, image_width: int):
        super().__init__()
        self.attention = BertAttention(width, heads, width)
        self.crossattention = BertAttention(width, heads, image_width)
        self.intermediate, self.output = BertIntermediate(width, ffn), BertOutput(width, ffn)

    def forward(self, x, text_mask, image, image_mask):
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, image_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, **kwargs):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(**kwargs) for _ in range(layers))


class BertModel(nn.Module):
    """med.py's BertModel without its pooler, run as ImageReward runs it (``mode='multimodal'``)."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, ffn: int, image_width: int, positions: int):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, width, positions)
        self.encoder = BertEncoder(layers, width=width, heads=heads, ffn=ffn, image_width=image_width)

    def forward(self, ids, attention_mask, image):
        text_mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0  # med's extended mask
        image_mask = torch.zeros(image.shape[0], 1, 1, image.shape[1])  # all image tokens attended
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, text_mask, image, image_mask)
        return x


class BLIP(nn.Module):
    def __init__(self, vision: dict, text: dict, embed: int = 16):
        super().__init__()
        self.visual_encoder = VisionTransformer(**vision)
        self.text_encoder = BertModel(image_width=vision["width"], **text)
        self.vision_proj = nn.Linear(vision["width"], embed)  # kept in the checkpoint, unused by the reward
        self.text_proj = nn.Linear(text["width"], embed)


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


class ImageReward(nn.Module):
    """``score(ids, mask, pixels)`` = the original's ``(mlp(text_encoder(...)[:, 0]) - mean) / std``."""

    def __init__(self, vision: dict, text: dict):
        super().__init__()
        self.blip = BLIP(vision, text)
        self.mlp = MLP(text["width"])

    def score(self, ids, attention_mask, pixels):
        image = self.blip.visual_encoder(pixels)
        features = self.blip.text_encoder(ids, attention_mask, image)[:, 0, :]
        return ((self.mlp(features) - MEAN) / STD).squeeze(-1)

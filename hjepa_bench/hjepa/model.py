"""The H-JEPA model (docs/step.md, "Model"), with the upstream state-dict layout.

``context_encoder.vit.*`` / ``target_encoder.vit.*`` are timm ViTs (head removed),
``predictor.*`` a full-width transformer over context tokens + mask tokens, and
``hierarchy_projections.{l}`` a Linear(D, D) + LayerNorm per hierarchy level.
Keys and shapes match upstream's (``tests/data/upstream-state-dict-*.tsv``) so an
upstream checkpoint's ``model_state_dict`` loads into it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from ..config import MODELS


class ViTEncoder(nn.Module):
    """A timm ViT without its head, forwarded in the two ways the variants need."""

    def __init__(self, model_name: str, img_size: int, depth: int = 12):
        super().__init__()
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": img_size}
        if depth != 12:
            kwargs["depth"] = depth
        self.vit = timm.create_model(model_name, **kwargs)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def forward(self, images: torch.Tensor, zero_mask: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens (B, 1 + N, D).  ``zero_mask`` (B, N) bool zeroes those patch
        tokens before the position embedding, as the upstream context encoder does."""
        vit = self.vit
        x = vit.patch_embed(images)
        if zero_mask is not None:
            x = x * (~zero_mask).unsqueeze(-1).to(x.dtype)
        x = vit._pos_embed(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)

    def forward_visible(self, images: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Only the visible patches (I-JEPA): gather ``idx`` (B, C) after the
        position embedding, prepend CLS; padded slots are masked out of attention.
        Returns (B, 1 + C, D)."""
        vit = self.vit
        x = vit.patch_embed(images)
        pos = vit.pos_embed
        x = x + pos[:, 1:]
        x = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(torch.cat([cls, x], dim=1))
        keep = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        attn_mask = keep[:, None, None, :]  # (B, 1, 1, 1 + C): True = attend
        for blk in vit.blocks:
            x = blk(x, attn_mask=attn_mask)
        return vit.norm(x)


class PredictorBlock(nn.Module):
    """Pre-norm transformer block (LN, self-attention, LN, GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                fused: bool = True) -> torch.Tensor:
        h = self.norm1(x)
        # need_weights=True (torch's default, what upstream runs) materialises the
        # attention matrix; need_weights=False takes the fused SDPA kernel.
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=not fused)[0]
        return x + self.mlp(self.norm2(x))


class Predictor(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_predictor = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(PredictorBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_predictor, std=0.02)

    def forward(self, context: torch.Tensor, target_pos: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
        """context (B, C, D), target_pos (B, K, D) position embeddings of the
        patches to predict -> predictions (B, K, D)."""
        k = target_pos.shape[1]
        queries = self.mask_token + self.pos_embed_predictor + target_pos
        x = torch.cat([context, queries.to(context.dtype)], dim=1)
        for blk in self.blocks:
            x = blk(x, key_padding_mask=key_padding_mask, fused=fused)
        return self.head(self.norm(x[:, -k:]))


class HJEPA(nn.Module):
    def __init__(self, model_name: str, img_size: int, num_hierarchies: int, predictor_depth: int,
                 predictor_heads: int, predictor_mlp_ratio: float, encoder_depth: int = 12):
        super().__init__()
        self.context_encoder = ViTEncoder(model_name, img_size, encoder_depth)
        self.target_encoder = copy.deepcopy(self.context_encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        dim = self.context_encoder.embed_dim
        self.predictor = Predictor(dim, predictor_depth, predictor_heads, predictor_mlp_ratio)
        self.hierarchy_projections = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim)) for _ in range(num_hierarchies)
        )

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> HJEPA:
        m = values["model"]
        name = m["encoder_type"]
        assert name in MODELS, name
        return cls(
            model_name=name,
            img_size=values["data"]["image_size"],
            num_hierarchies=m["num_hierarchies"],
            predictor_depth=m["predictor"]["depth"],
            predictor_heads=m["predictor"]["num_heads"],
            predictor_mlp_ratio=float(m["predictor"]["mlp_ratio"]),
            encoder_depth=m.get("encoder_depth", 12),
        )

    @property
    def embed_dim(self) -> int:
        return self.context_encoder.embed_dim

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_counts(self) -> dict[str, int]:
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }

    def patch_pos_embed(self) -> torch.Tensor:
        """(1, N, D) position embeddings of the patches (no CLS)."""
        return self.context_encoder.vit.pos_embed[:, 1:]

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """target = m * target + (1 - m) * context."""
        tgt = [p for p in self.target_encoder.parameters()]
        src = [p.detach() for p in self.context_encoder.parameters()]
        torch._foreach_lerp_(tgt, src, 1.0 - momentum)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def pooled_features(encoder: ViTEncoder, images: torch.Tensor) -> torch.Tensor:
    """Average-pooled patch tokens (B, D), the features I-JEPA evaluates."""
    return encoder(images)[:, 1:].mean(dim=1)


__all__ = ["HJEPA", "Predictor", "ViTEncoder", "gather_tokens", "pooled_features"]

"""Hierarchical JEPA loss (docs/step.md, "Loss").

Per level l: the level's projection (Linear + LayerNorm) is applied to the
predictions and the (detached) targets; for l > 0 both are average-pooled with
kernel = stride = 2^l along the sequence of masked tokens.  Loss per level is
MSE or smooth-L1 (beta 1), optionally on L2-normalised embeddings; the total is
sum_l weight_l * L_l.  Padded target slots carry no weight.  ``combined`` adds
``vicreg_weight`` x VICReg(25, 25, 1) on pooled context vs target features.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K, D) -> (B, K // k, D) average over consecutive tokens."""
    return F.avg_pool1d(x.transpose(1, 2), kernel_size=k, stride=k).transpose(1, 2)


def hierarchical_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    projections: Sequence[nn.Module],
    weights: Sequence[float],
    loss_type: str = "mse",
    normalize: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """pred, target (B, K, D); valid (B, K) bool.  Returns (total, per-level losses)."""
    per_level: list[torch.Tensor] = []
    w_valid = valid.to(pred.dtype)
    total = pred.new_zeros((), dtype=torch.float32)
    for level, (proj, weight) in enumerate(zip(projections, weights)):
        p = proj(pred)
        with torch.no_grad():
            t = proj(target)
        w = w_valid
        if level > 0:
            k = min(2 ** level, pred.shape[1])
            p, t = _pool(p, k), _pool(t, k)
            w = _pool(w_valid.unsqueeze(-1), k).squeeze(-1)
        if normalize:
            p, t = F.normalize(p, dim=-1), F.normalize(t, dim=-1)
        if loss_type == "smooth_l1":
            err = F.smooth_l1_loss(p.float(), t.float(), reduction="none", beta=1.0).mean(-1)
        else:
            err = (p.float() - t.float()).pow(2).mean(-1)
        w = w.float()
        level_loss = (err * w).sum() / w.sum().clamp_min(1e-6)
        per_level.append(level_loss)
        total = total + float(weight) * level_loss
    return total, per_level


def vicreg(za: torch.Tensor, zb: torch.Tensor, inv: float = 25.0, var: float = 25.0, cov: float = 1.0) -> torch.Tensor:
    """VICReg (Bardes et al. 2022) between two (B, D) batches of features."""
    za, zb = za.float(), zb.float()
    invariance = F.mse_loss(za, zb)

    def variance(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        return F.relu(1.0 - std).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        c = (z.T @ z) / max(n - 1, 1)
        off = c - torch.diag(torch.diag(c))
        return off.pow(2).sum() / d

    return inv * invariance + var * (variance(za) + variance(zb)) + cov * (covariance(za) + covariance(zb))

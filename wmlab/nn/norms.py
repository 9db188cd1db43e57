"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale (DreamerV3's default norm)."""

    def __init__(self, features: int, eps: float = 1e-4):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class SimNorm(nn.Module):
    """Simplicial normalisation (TD-MPC2, arXiv:2310.16828 Sec. 3): split the last dimension into
    groups of `group_size` and softmax each, so every group sums to 1."""

    def __init__(self, group_size: int = 8):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.group_size:
            raise ValueError(f"SimNorm: {x.shape[-1]} features do not split into groups of {self.group_size}")
        grouped = x.unflatten(-1, (-1, self.group_size))
        return grouped.softmax(-1).flatten(-2)

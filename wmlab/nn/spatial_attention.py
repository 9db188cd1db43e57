"""Self-attention over the positions of a feature map: (B, C, H, W) -> (B, C, H, W).

The attention blocks of the convolutional networks here: DIAMOND's UNet and reward encoder (heads
of 8 channels, the output added to the normalised input) and IRIS's VQGAN tokenizer (one head,
the output added to the input, as taming-transformers' AttnBlock).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H x W positions after a group norm. `add_to` "input":
    x + out(attention(norm(x))); "normalized" (DIAMOND's code): norm(x) + out(attention(norm(x))).
    `zero_output`: the output projection starts at zero (DIAMOND's; taming-transformers' and so
    IRIS's keep torch's default initialisation)."""

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        groups: int = 1,
        eps: float = 1e-5,
        add_to: Literal["input", "normalized"] = "input",
        zero_output: bool = True,
    ):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"self-attention over {channels} channels: {heads} heads do not divide them")
        if add_to not in ("input", "normalized"):
            raise ValueError(f"add_to must be input or normalized, got {add_to!r}")
        self.heads, self.add_to = heads, add_to
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.output = nn.Conv2d(channels, channels, 1)
        if zero_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        # (B, 3C, H, W) -> three (B, heads, H * W, C / heads)
        q, k, v = self.qkv(h).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H * W, C / heads)
        out = self.output(attended.transpose(-1, -2).reshape(B, C, H, W))
        return (x if self.add_to == "input" else h) + out

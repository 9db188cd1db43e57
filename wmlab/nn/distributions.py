"""Distributions and value transforms shared by the families.

- symlog / symexp: Eq. 1 of arXiv:2301.04104 (DreamerV3); also TD-MPC2's reward/value transform.
- two-hot encoding over fixed bins: DreamerV3 Sec. 3 ("symexp twohot"), TD-MPC2 (101 bins).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * ln(|x| + 1)  (Eq. 1, arXiv:2301.04104)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of symlog: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot:
    """Categorical over `bins` evenly spaced points in [low, high] of a transformed space.

    A scalar y is encoded as weight on the two bins that bracket transform(y) (linear
    interpolation), so the expected bin value recovers it exactly inside the range. DreamerV3 uses
    255 bins in symlog space over [-20, 20]; TD-MPC2 101 bins over [-10, 10].
    """

    def __init__(self, bins: int = 255, low: float = -20.0, high: float = 20.0, transform: str = "symlog"):
        if bins < 2:
            raise ValueError("two-hot needs at least 2 bins")
        if transform not in ("symlog", "identity"):
            raise ValueError(f"unknown transform {transform!r}: symlog or identity")
        self.bins, self.low, self.high, self.transform = bins, low, high, transform

    def points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.linspace(self.low, self.high, self.bins, device=device, dtype=dtype)

    def _forward(self, y: torch.Tensor) -> torch.Tensor:
        return symlog(y) if self.transform == "symlog" else y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return symexp(y) if self.transform == "symlog" else y

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """y (...) -> target probabilities (..., bins)."""
        x = self._forward(y).clamp(self.low, self.high)
        position = (x - self.low) / (self.high - self.low) * (self.bins - 1)
        below = position.floor().long().clamp(0, self.bins - 2)
        weight_above = (position - below).unsqueeze(-1)
        target = torch.zeros(*y.shape, self.bins, device=y.device, dtype=torch.float32)
        target.scatter_(-1, below.unsqueeze(-1), 1.0 - weight_above)
        target.scatter_add_(-1, (below + 1).unsqueeze(-1), weight_above)
        return target

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., bins) -> the expected value in the original space (...)."""
        probabilities = logits.softmax(-1)
        return self._inverse((probabilities * self.points(logits.device, logits.dtype)).sum(-1))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy between softmax(logits) (..., bins) and the two-hot target of y (...)."""
        return -(self.encode(y.detach()) * F.log_softmax(logits, dim=-1)).sum(-1)

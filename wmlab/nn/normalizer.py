"""Running mean and standard deviation of a feature vector, kept as buffers.

The statistics are exact (Chan et al.'s parallel merge of count, mean and sum of squared
deviations, no exponential decay), so they depend only on the data seen, live in the state_dict,
and resume exactly. Under torch.distributed every rank merges the statistics of all ranks' data,
so that data-parallel replicas stay identical.
"""

from __future__ import annotations

import torch
from torch import nn

from wmlab.core.errors import ShapeError


class RunningNormalizer(nn.Module):
    """Normalises (..., D) features with the mean and standard deviation of all data passed to
    `update`. Before any update it is the identity (mean 0, std 1)."""

    count: torch.Tensor
    mean: torch.Tensor
    squared_deviations: torch.Tensor

    def __init__(self, size: int, min_std: float = 1e-3):
        super().__init__()
        self.size = size
        # A floor keeps a (nearly) constant feature from being scaled up to noise.
        self.min_std = min_std
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("squared_deviations", torch.zeros(size))

    @property
    def std(self) -> torch.Tensor:  # (D,)
        # torch.where rather than a Python branch, so that a GPU never waits on the count.
        variance = self.squared_deviations / self.count.clamp_min(1)
        return torch.where(self.count >= 2, variance.sqrt().clamp_min(self.min_std), torch.ones_like(variance))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return x * self.std + self.mean

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Merge the rows of x (..., D) where mask (...) is true into the statistics."""
        if x.shape[-1:] != (self.size,):
            raise ShapeError(f"normalizer input: expected (..., {self.size}), got {tuple(x.shape)}")
        rows = x.reshape(-1, self.size).to(self.mean.dtype)
        if mask is None:
            weights = torch.ones(rows.shape[0], device=rows.device, dtype=rows.dtype)
        else:
            weights = mask.reshape(-1).to(rows.dtype)
        weights = weights[:, None]

        count = weights.sum()
        total = (rows * weights).sum(0)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            summed = torch.cat([count[None], total])
            torch.distributed.all_reduce(summed)
            count, total = summed[0], summed[1:]
        # An empty batch (everything masked) leaves the statistics unchanged: every increment
        # below is then multiplied by count = 0.
        batch_mean = total / count.clamp_min(1)
        # Deviations from the batch's own mean, summed in one pass over the (global) batch.
        squared_deviations = (weights * (rows - batch_mean) ** 2).sum(0)
        if distributed:
            torch.distributed.all_reduce(squared_deviations)

        # Chan, Golub & LeVeque (1979): merge two sets' (count, mean, squared deviations).
        merged_count = self.count + count
        delta = batch_mean - self.mean
        self.mean += delta * (count / merged_count.clamp_min(1))
        self.squared_deviations += squared_deviations + delta**2 * (self.count * count / merged_count.clamp_min(1))
        self.count.copy_(merged_count)

"""Pixel weights of image reconstruction losses."""

from __future__ import annotations

import torch


def foreground_weights(
    frames: torch.Tensor, weight: float, threshold: float = 0.1, background: str = "mean"
) -> torch.Tensor:
    """Per-pixel weights (N, 1, H, W) of frames (N, C, H, W): `weight` where a pixel differs from
    the batch's background by more than `threshold` in its largest channel, else 1.

    The background is the batch's per-pixel `mean` or `median` frame (the median ignores an object
    that crosses a pixel in a few frames; the mean is cheaper). Not from a paper: a deviation that
    lets small moving objects (an agent's disc, MinAtar's ball) dominate a pixel loss that is
    otherwise lowest drawing the static background only."""
    if background == "mean":
        reference = frames.mean(0, keepdim=True)
    elif background == "median":
        reference = frames.median(0, keepdim=True).values
    else:
        raise ValueError(f"background must be 'mean' or 'median', got {background!r}")
    foreground = (frames - reference).abs().amax(1, keepdim=True) > threshold
    return 1.0 + (weight - 1.0) * foreground.float()

"""Frames as pixels: the one conversion from a model's float frames to uint8 images."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Frames = TypeVar("Frames", torch.Tensor, np.ndarray)


def to_pixels(frames: Frames) -> Frames:
    """Frames of any shape in [0, 1] (a float tensor or array) -> uint8 of the same kind, shape and
    device, clamped to [0, 1] and rounded to the nearest of the 256 levels; uint8 input is returned
    as it is."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype == torch.uint8:
            return frames
        return (frames.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)

"""Convolutional image encoder and decoder (DreamerV3-style), and the norm factory they share.

Each encoder stage is a stride-2 convolution with `depth * multiplier` channels, a norm over
channels and an activation, so four stages take a 64 x 64 frame to 4 x 4. The decoder mirrors it
with stride-2 transposed convolutions. DreamerV3's first paper (arXiv:2301.04104v1, Appendix on
hyperparameters) describes these stride-2 stages; its current code uses a stride-1 convolution
followed by 2 x 2 max-pooling instead, at four times the compute for the same parameters.

Shape legend: B batch (any leading dimensions), C channels, H, W image, D features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wmlab.core.errors import ShapeError
from wmlab.nn.mlp import make_activation
from wmlab.nn.norms import RMSNorm

NORMS = ("rms", "layer", "none")


def make_norm(name: str, features: int) -> nn.Module:
    """A norm over the last dimension: "rms" (DreamerV3), "layer" (DreamerV2's GRU), "none"."""
    if name == "rms":
        return RMSNorm(features, eps=1e-4)
    if name == "layer":
        return nn.LayerNorm(features, eps=1e-3)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")


class ChannelNorm(nn.Module):
    """Applies a last-dimension norm to the channels of (B, C, H, W) feature maps."""

    def __init__(self, name: str, channels: int):
        super().__init__()
        self.norm = make_norm(name, channels)
        self.identity = name == "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-2 convolution halve, and its transpose double,
    the side exactly for any kernel size."""
    padding = (kernel - 1) // 2
    return padding, 2 + 2 * padding - kernel


def _check_image_size(image_size: tuple[int, int], stages: int) -> tuple[int, int]:
    factor = 2**stages
    height, width = image_size
    if height % factor or width % factor:
        raise ValueError(
            f"an image of {height} x {width} does not halve evenly {stages} times; use a side divisible by {factor}"
        )
    return height // factor, width // factor


@dataclass(frozen=True)
class ConvStages:
    """The stride-2 stages of a conv encoder, which its decoder mirrors in reverse: stage i has
    depth * multipliers[i] channels (DreamerV3 (2, 3, 4, 4); DreamerV1/V2 and PlaNet (1, 2, 4, 8)),
    then a norm over channels ("rms", "layer", "none") and an activation; images are (H, W) =
    `image_size` at the encoder's input and the decoder's output."""

    depth: int
    multipliers: tuple[int, ...] = (2, 3, 4, 4)
    kernel: int = 5
    norm: str = "rms"
    activation: str = "silu"
    image_size: tuple[int, int] = (64, 64)


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) float -> features (B, D), D = channels of the last stage * its H * W."""

    def __init__(self, input_channels: int, stages: ConvStages):
        super().__init__()
        self.input_channels = input_channels
        self.image_size = tuple(stages.image_size)
        padding, _ = _padding(stages.kernel)
        layers: list[nn.Module] = []
        channels = input_channels
        for multiplier in stages.multipliers:
            layers += [
                nn.Conv2d(channels, stages.depth * multiplier, stages.kernel, stride=2, padding=padding),
                ChannelNorm(stages.norm, stages.depth * multiplier),
                make_activation(stages.activation),
            ]
            channels = stages.depth * multiplier
        self.net = nn.Sequential(*layers)
        height, width = _check_image_size(self.image_size, len(stages.multipliers))
        #: (C, H, W) of the last stage.
        self.output_shape = (channels, height, width)
        self.features = channels * height * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        expected = (self.input_channels, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ShapeError(
                f"ConvEncoder input: expected (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )
        return self.net(images).flatten(1)


class ConvDecoder(nn.Module):
    """Features (B, D) -> images (B, C, H, W): a linear layer to the encoder's last feature map,
    then stride-2 transposed convolutions back to full size. The output is linear (no squashing);
    the caller decides what it means (here: pixels / 255 - 0.5)."""

    def __init__(self, input_size: int, output_channels: int, stages: ConvStages):
        super().__init__()
        self.input_size = input_size
        height, width = _check_image_size(tuple(stages.image_size), len(stages.multipliers))
        channels = [stages.depth * multiplier for multiplier in stages.multipliers]
        self.start_shape = (channels[-1], height, width)
        kernel, activation = stages.kernel, stages.activation
        padding, output_padding = _padding(kernel)
        self.project = nn.Sequential(
            nn.Linear(input_size, math.prod(self.start_shape)),
            make_norm(stages.norm, math.prod(self.start_shape)),
            make_activation(activation),
        )
        layers: list[nn.Module] = []
        for current, following in zip(reversed(channels), list(reversed(channels))[1:]):
            layers += [
                nn.ConvTranspose2d(current, following, kernel, 2, padding, output_padding),
                ChannelNorm(stages.norm, following),
                make_activation(activation),
            ]
        layers.append(nn.ConvTranspose2d(channels[0], output_channels, kernel, 2, padding, output_padding))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C, H, W)
        if features.dim() != 2 or features.shape[1] != self.input_size:
            raise ShapeError(f"ConvDecoder input: expected (B, {self.input_size}), got {tuple(features.shape)}")
        return self.net(self.project(features).unflatten(1, self.start_shape))

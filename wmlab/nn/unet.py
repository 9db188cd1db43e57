"""A UNet whose every norm is an adaptive group norm: a conditioning vector sets its scale and shift.

The network of DIAMOND's denoiser (arXiv:2405.12399, Appendix on the architecture; the channels
[64, 64, 64, 64] of its Atari runs are the paper preset of wmlab.models.diffusion), of GameNGen's
and UniSim's in small. Each residual block is

    x + conv(silu(AdaGN(conv(silu(AdaGN(x, c))), c)))        AdaGN(x, c) = GN(x) * (1 + s(c)) + b(c)

(the scale-and-shift conditioning of Dhariwal & Nichol 2021, Sec. 3.3 "adaptive group
normalization"), so the noise level, the action and any other conditioning reach every layer. The
UNet has one level per entry of `channels`: `depths[i]` residual blocks, then a stride-2
convolution down (all levels but the last); the way up mirrors it with nearest-neighbour
upsampling and the skip of the same level concatenated on channels. Output convolutions start at
zero, so an untrained block is the identity and an untrained UNet outputs zeros.

Shape legend: B batch, C channels, H, W image, D conditioning features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from wmlab.core.errors import ShapeError

#: Channels per group of every group norm (DIAMOND's GroupNorm uses groups of 32 channels).
GROUP_SIZE = 32


def group_count(channels: int) -> int:
    """Groups of the group norm over `channels`: groups of GROUP_SIZE channels, at least one."""
    return max(1, channels // GROUP_SIZE)


class AdaptiveGroupNorm(nn.Module):
    """(B, C, H, W), conditioning (B, D) -> (B, C, H, W): group norm without affine parameters,
    then a scale (1 + s) and shift b computed from the conditioning (both 0 at initialisation)."""

    def __init__(self, channels: int, condition_size: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels, affine=False)
        self.modulation = nn.Linear(condition_size, 2 * channels)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(condition)[:, :, None, None].chunk(2, dim=1)
        # One fused pass for the scale and shift (shift + normed * (1 + scale)).
        return torch.addcmul(shift, F.group_norm(x, self.norm.num_groups), 1 + scale)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place where no gradient is recorded (sampling): one allocation fewer per call."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions, each after an adaptive group norm and SiLU, around a skip (a 1x1
    convolution where the channels change); the second convolution starts at zero."""

    def __init__(self, in_channels: int, out_channels: int, condition_size: int):
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(in_channels, condition_size)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = AdaptiveGroupNorm(out_channels, condition_size)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x, condition)))
        h = self.conv2(silu(self.norm2(h, condition)))
        return self.skip(x) + h


class FourierFeatures(nn.Module):
    """Scalars (B,) -> (B, size) random Fourier features [cos 2 pi w x, sin 2 pi w x] with fixed
    frequencies w ~ N(0, 1) (the noise-level embedding of EDM's and DIAMOND's networks)."""

    def __init__(self, size: int):
        super().__init__()
        if size % 2:
            raise ValueError(f"FourierFeatures needs an even size, got {size}")
        self.register_buffer("frequencies", torch.randn(1, size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * x.float()[:, None] * self.frequencies
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


def check_levels(channels: Sequence[int], depths: Sequence[int]) -> None:
    if not channels:
        raise ValueError("a UNet needs at least one level (channels is empty)")
    if len(channels) != len(depths):
        raise ValueError(f"channels {tuple(channels)} and depths {tuple(depths)} must have one entry per level")
    if any(depth < 1 for depth in depths):
        raise ValueError(f"every level needs at least one residual block, got depths {tuple(depths)}")


def check_frame_size(height: int, width: int, levels: int, name: str = "frame") -> None:
    """A UNet of `levels` levels halves the frame levels - 1 times: both sides must be multiples
    of 2 ** (levels - 1) (ShapeError naming the sizes it can take otherwise)."""
    factor = 2 ** (levels - 1)
    if height % factor or width % factor or height < factor or width < factor:
        raise ShapeError(
            f"{name}: a UNet of {levels} levels takes frames whose sides are multiples of {factor}, got {height} x {width}; "
            f"resize the frames (e.g. to {max(factor, height // factor * factor)} x {max(factor, width // factor * factor)}) or use fewer levels"
        )


class ConditionedEncoder(nn.Module):
    """The UNet's way down alone: (B, C_in, H, W), conditioning (B, D) -> the feature map of each
    level [(B, channels[i], H / 2^i, W / 2^i)]. DIAMOND's reward and end model encodes its frames
    with this half."""

    def __init__(self, in_channels: int, channels: Sequence[int], depths: Sequence[int], condition_size: int):
        super().__init__()
        check_levels(channels, depths)
        self.levels = len(channels)
        self.input = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        width = channels[0]
        for level, (out_channels, depth) in enumerate(zip(channels, depths)):
            blocks = []
            for _ in range(depth):
                blocks.append(ResidualBlock(width, out_channels, condition_size))
                width = out_channels
            self.blocks.append(nn.ModuleList(blocks))
            last = level == len(channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))

    def leading_response(self, leading: torch.Tensor) -> torch.Tensor:
        """(B, C_lead, H, W) -> (B, channels[0], H, W): the input convolution's response to the
        first C_lead input channels alone, without bias. Convolution is linear, so with it
        `forward(trailing, condition, response)` equals `forward(cat([leading, trailing]), condition)`:
        a sampler computes the response to its context frames once per frame instead of once
        per denoising step."""
        weight = self.input.weight[:, : leading.shape[1]]
        return F.conv2d(leading, weight, None, padding=1)

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, leading: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """x (B, C_in, H, W), or its trailing channels when `leading` (B, channels[0], H, W) is
        the `leading_response` to the others."""
        check_frame_size(x.shape[-2], x.shape[-1], self.levels, "UNet input")
        if leading is None:
            h = self.input(x)
        else:
            weight = self.input.weight[:, self.input.in_channels - x.shape[1] :]
            h = F.conv2d(x, weight, self.input.bias, padding=1) + leading
        skips = []
        for blocks, down in zip(self.blocks, self.downsample):
            for block in blocks:
                h = block(h, condition)
            skips.append(h)
            h = down(h)
        return skips


class UNet(nn.Module):
    """(B, C_in, H, W), conditioning (B, D) -> (B, C_out, H, W). H and W must be multiples of
    2 ** (len(channels) - 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        condition_size: int,
        channels_last: bool = True,
    ):
        super().__init__()
        self.channels, self.depths = tuple(channels), tuple(depths)
        # Activations in the channels-last layout: the CPU's (oneDNN) convolutions run on it
        # without reordering (1.2-1.6x faster forward on 64 x 64 frames here); weights keep
        # torch's layout, so checkpoints are unchanged.
        self.channels_last = channels_last
        self.encoder = ConditionedEncoder(in_channels, channels, depths, condition_size)
        self.up_blocks = nn.ModuleList()
        width = channels[-1]
        for level in reversed(range(len(channels))):
            blocks = []
            for index in range(depths[level]):
                # The first block of each level above the bottom takes the skip of its level on its
                # channels (at the bottom the skip would be the input itself).
                bottom = level == len(channels) - 1
                incoming = width + channels[level] if index == 0 and not bottom else width
                blocks.append(ResidualBlock(incoming, channels[level], condition_size))
                width = channels[level]
            self.up_blocks.append(nn.ModuleList(blocks))
        self.output_norm = nn.GroupNorm(group_count(width), width)
        self.output = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def levels(self) -> int:
        return len(self.channels)

    def leading_response(self, leading: torch.Tensor) -> torch.Tensor:
        """See `ConditionedEncoder.leading_response` (in the channels-last layout when set)."""
        return self.encoder.leading_response(self.layout(leading))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor, condition: torch.Tensor, leading: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H, W); with `leading` (see `leading_response`), x holds
        the trailing input channels only."""
        skips = self.encoder(self.layout(x), condition, leading)
        h = skips[-1]
        for position, blocks in enumerate(self.up_blocks):
            if position > 0:
                skip = skips[len(skips) - 1 - position]
                h = torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1)
            for block in blocks:
                h = block(h, condition)
        return self.output(silu(self.output_norm(h))).contiguous()

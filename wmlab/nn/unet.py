"""A UNet whose every norm is an adaptive group norm: a conditioning vector sets its scale and shift.

The network of DIAMOND's denoiser (arXiv:2405.12399, Appendix on the architecture; the channels
[64, 64, 64, 64] of its Atari runs are the paper preset of wmlab.models.diffusion), of GameNGen's
and UniSim's in small. Each residual block is

    x + conv(silu(AdaGN(conv(silu(AdaGN(x, c))), c)))        AdaGN(x, c) = GN(x) * (1 + s(c)) + b(c)

(the scale-and-shift conditioning of Dhariwal & Nichol 2021, Sec. 3.3 "adaptive group
normalization"), so the noise level, the action and any other conditioning reach every layer. The
UNet has one level per entry of `channels`: `depths[i]` residual blocks, then a stride-2
convolution down (all levels but the last); the way up mirrors it, upsampling and concatenating
the way down's feature maps of the same level on channels (two layouts: see `UNet`). Between the
way down and the way up, `middle_blocks` residual blocks each followed by self-attention over the
lowest resolution's positions (DIAMOND's UNet and reward encoder end their way down with two).
Output convolutions start at zero, so an untrained residual block is the identity and an
untrained UNet outputs zeros.

Shape legend: B batch, C channels, H, W image, D conditioning features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from wmlab.core.errors import ShapeError
from wmlab.nn.spatial_attention import SelfAttention2d

#: Channels per group of every group norm (DIAMOND's GroupNorm uses groups of 32 channels).
GROUP_SIZE = 32
#: Channels per head of the middle blocks' self-attention (DIAMOND: 8).
ATTENTION_HEAD_SIZE = 8


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


class MiddleBlock(nn.Module):
    """A residual block, then self-attention: DIAMOND's blocks at the lowest resolution."""

    def __init__(self, channels: int, condition_size: int):
        super().__init__()
        self.residual = ResidualBlock(channels, channels, condition_size)
        # DIAMOND's attention: heads of 8 channels, its group norm's groups, added to the normalised input
        self.attention = SelfAttention2d(
            channels, heads=max(1, channels // ATTENTION_HEAD_SIZE), groups=group_count(channels), add_to="normalized"
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.attention(self.residual(x, condition))


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
    level [(B, channels[i], H / 2^i, W / 2^i)], the last one after the `middle_blocks`. DIAMOND's
    reward and end model encodes its frames with this half."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        condition_size: int,
        middle_blocks: int = 0,
    ):
        super().__init__()
        check_levels(channels, depths)
        if middle_blocks < 0:
            raise ValueError(f"middle_blocks must be at least 0, got {middle_blocks}")
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
        self.middle = nn.ModuleList(MiddleBlock(width, condition_size) for _ in range(middle_blocks))

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
        the `leading_response` to the others -> each level's last feature map, the lowest one
        after the middle blocks."""
        levels, bottom = self.features(x, condition, leading)
        return [level[-1] for level in levels[:-1]] + [bottom]

    def features(
        self, x: torch.Tensor, condition: torch.Tensor, leading: torch.Tensor | None = None
    ) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """As `forward`, with every feature map: ([per level: its input, then each block's output],
        the lowest level's last map after the middle blocks)."""
        check_frame_size(x.shape[-2], x.shape[-1], self.levels, "UNet input")
        if leading is None:
            h = self.input(x)
        else:
            weight = self.input.weight[:, self.input.in_channels - x.shape[1] :]
            h = F.conv2d(x, weight, self.input.bias, padding=1) + leading
        levels = []
        for blocks, down in zip(self.blocks, self.downsample):
            level = [h]
            for block in blocks:
                h = block(h, condition)
                level.append(h)
            levels.append(level)
            h = down(h)
        for block in self.middle:
            h = block(h, condition)
        return levels, h


class UNet(nn.Module):
    """(B, C_in, H, W), conditioning (B, D) -> (B, C_out, H, W). H and W must be multiples of
    2 ** (len(channels) - 1).

    The way up has one of two layouts. Compact (`skip_every_block` False): `depths[i]` blocks per
    level, the first of each level above the bottom taking that level's last feature map of the
    way down as its one skip, nearest-neighbour upsampling. DIAMOND's (True): `depths[i] + 1` blocks
    per level, each taking one skip (the way down's feature maps of that level in reverse: each
    block's output, then the level's input), the last one returning to the level below's channels,
    and upsampling by nearest neighbour then a 3x3 convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        condition_size: int,
        channels_last: bool = True,
        middle_blocks: int = 0,
        skip_every_block: bool = False,
    ):
        super().__init__()
        self.channels, self.depths = tuple(channels), tuple(depths)
        # Activations in the channels-last layout: the CPU's (oneDNN) convolutions run on it
        # without reordering (1.2-1.6x faster forward on 64 x 64 frames here); weights keep
        # torch's layout, so checkpoints are unchanged.
        self.channels_last = channels_last
        self.skip_every_block = skip_every_block
        # The encoder ends with the middle blocks; the way up starts from its last feature map.
        self.encoder = ConditionedEncoder(in_channels, channels, depths, condition_size, middle_blocks)
        self.up_blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        width = channels[-1]
        for level in reversed(range(len(channels))):
            bottom = level == len(channels) - 1
            blocks = []
            if skip_every_block:
                self.upsample.append(nn.Identity() if bottom else nn.Conv2d(width, width, 3, padding=1))
                below = channels[max(0, level - 1)]  # the channels of the level's input
                for index in range(depths[level] + 1):
                    skip, out = (channels[level], channels[level]) if index < depths[level] else (below, below)
                    blocks.append(ResidualBlock(width + skip, out, condition_size))
                    width = out
            else:
                for index in range(depths[level]):
                    # The first block of each level above the bottom takes the skip of its level on
                    # its channels (at the bottom the skip would be the input itself).
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
        levels, h = self.encoder.features(self.layout(x), condition, leading)
        for position, blocks in enumerate(self.up_blocks):
            level = levels[len(levels) - 1 - position]
            if self.skip_every_block:
                if position > 0:
                    h = self.upsample[position](F.interpolate(h, size=level[0].shape[-2:], mode="nearest"))
                for block, skip in zip(blocks, reversed(level)):
                    h = block(torch.cat([h, skip], dim=1), condition)
                continue
            if position > 0:
                h = torch.cat([F.interpolate(h, size=level[-1].shape[-2:], mode="nearest"), level[-1]], dim=1)
            for block in blocks:
                h = block(h, condition)
        return self.output(silu(self.output_norm(h))).contiguous()

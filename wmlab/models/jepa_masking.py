"""Self-supervised JEPA pretraining by masked prediction in representation space.

- I-JEPA block masking (Assran et al. 2023, arXiv:2301.08243, Sec. 3): on a grid of patches,
  sample M target blocks (each a rectangle covering `scale` of the patches with an aspect ratio in
  `aspect`) and one large context block; the target patches are removed from the context, so the
  predictor must infer them. Paper values: M = 4, scale (0.15, 0.2), aspect (0.75, 1.5), context
  scale (0.85, 1.0) at aspect 1.
- V-JEPA tube masking (Bardes et al. 2024, arXiv:2404.08471, Sec. 3.2): spatial blocks repeated
  over every frame of a clip, so that a masked region cannot be copied from a neighbouring frame.
  Paper values: 8 blocks of scale 0.15 (short range) or 2 of scale 0.7 (long range).

`MaskedJEPA` is a tiny ViT-style model: a patch embedding and transformer encoder for the context,
its EMA copy for the targets, and a narrow transformer predictor that receives the context tokens
plus one mask token (with positional embedding) per target patch, and is trained to match the
target encoder's embeddings of those patches (L1 as in V-JEPA; I-JEPA uses L2).

Shape legend: B batch, T frames, C, H, W image, P patches per frame, D width.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmlab.core.errors import ShapeError
from wmlab.models.jepa import ema_update, scheduled_momentum


def sample_block(
    grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """A boolean (rows, columns) mask of one rectangle with area ~ scale * patches and
    height / width ~ aspect (the log of the aspect drawn uniformly, as I-JEPA does)."""
    rows, columns = grid
    low, high = scale
    area = (low + (high - low) * torch.rand((), generator=generator).item()) * rows * columns
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    ratio = math.exp(log_low + (log_high - log_low) * torch.rand((), generator=generator).item())
    height = min(max(int(round(math.sqrt(area * ratio))), 1), rows)
    width = min(max(int(round(math.sqrt(area / ratio))), 1), columns)
    top = int(torch.randint(0, rows - height + 1, (), generator=generator))
    left = int(torch.randint(0, columns - width + 1, (), generator=generator))
    mask = torch.zeros(rows, columns, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def sample_block_masks(
    grid: tuple[int, int],
    generator: torch.Generator,
    targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA masks: (context (rows, columns), targets (M, rows, columns)), booleans; the context
    excludes every target patch and keeps at least one patch."""
    target_masks = torch.stack([sample_block(grid, target_scale, target_aspect, generator) for _ in range(targets)])
    for _ in range(20):
        context = sample_block(grid, context_scale, (1.0, 1.0), generator) & ~target_masks.any(0)
        if context.any():
            return context, target_masks
    raise ValueError(f"the targets cover the whole {grid} grid; lower target_scale or targets")


def sample_tube_mask(
    frames: int,
    grid: tuple[int, int],
    generator: torch.Generator,
    blocks: int = 8,
    scale: tuple[float, float] = (0.15, 0.15),
    aspect: tuple[float, float] = (0.75, 1.5),
) -> torch.Tensor:
    """V-JEPA masks: the union of `blocks` spatial blocks, repeated over all frames: (T, rows, columns),
    True where masked (a target); the context is its complement."""
    spatial = torch.zeros(grid, dtype=torch.bool)
    for _ in range(blocks):
        spatial |= sample_block(grid, scale, aspect, generator)
    return spatial.expand(frames, *grid).clone()


@dataclass(frozen=True)
class MaskedJEPAConfig:
    """A tiny ViT-style I-JEPA / V-JEPA."""

    image_size: int = 64
    """H = W, the side of the square images, a multiple of `patch_size`."""
    patch_size: int = 8
    """Side of the square patches, one token each."""
    channels: int = 3
    """C, channels of the images."""
    width: int = 64
    """D, the token width of the encoder."""
    depth: int = 2
    """Transformer layers of the encoder."""
    predictor_width: int = 32
    """D', the token width of the narrow predictor."""
    predictor_depth: int = 1
    """Transformer layers of the predictor."""
    heads: int = 4
    """Attention heads of the encoder and of the predictor."""
    momentum_start: float = 0.996
    """EMA momentum of the target encoder at update 0 (I-JEPA: 0.996)."""
    momentum_end: float = 1.0
    """EMA momentum at `momentum_steps` updates and after."""
    momentum_steps: int = 10_000
    """Updates over which the momentum ramps from start to end."""
    momentum_schedule: str = "linear"
    """"linear" (I-JEPA ramps its EMA momentum linearly) or "cosine"."""


def _transformer(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MaskedJEPA(nn.Module):
    """`loss(images (B, C, H, W) uint8 or float, generator)` for block masking, or
    `loss(clips (B, T, C, H, W), generator)` for tube masking."""

    def __init__(self, config: MaskedJEPAConfig, max_frames: int = 8):
        super().__init__()
        self.config = config
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} must be a multiple of patch_size {config.patch_size}")
        side = config.image_size // config.patch_size
        self.grid = (side, side)
        patches = side * side
        self.patch_embedding = nn.Conv2d(config.channels, config.width, config.patch_size, stride=config.patch_size)
        self.position = nn.Parameter(0.02 * torch.randn(max_frames * patches, config.width))
        self.encoder = _transformer(config.width, config.depth, config.heads)
        self.target_patch_embedding = copy.deepcopy(self.patch_embedding).requires_grad_(False)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor_in = nn.Linear(config.width, config.predictor_width)
        self.mask_token = nn.Parameter(torch.zeros(config.predictor_width))
        self.predictor_position = nn.Parameter(0.02 * torch.randn(max_frames * patches, config.predictor_width))
        self.predictor = _transformer(config.predictor_width, config.predictor_depth, config.heads)
        self.predictor_out = nn.Linear(config.predictor_width, config.width)
        self.register_buffer("target_updates", torch.zeros((), dtype=torch.long))

    def tokens(self, patch_embedding: nn.Module, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, T, C, H, W) -> tokens (B, T * P, D) with positions."""
        B, T = clips.shape[:2]
        x = patch_embedding(clips.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B T, P, D)
        x = x.reshape(B, T * x.shape[1], -1)
        return x + self.position[: x.shape[1]]

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        clips = images if images.dim() == 5 else images[:, None]
        if clips.dim() != 5 or tuple(clips.shape[2:]) != (
            self.config.channels,
            self.config.image_size,
            self.config.image_size,
        ):
            raise ShapeError(
                f"images: expected (B, C, H, W) or (B, T, C, H, W) with C, H, W = {self.config.channels}, {self.config.image_size}, {self.config.image_size}; got {tuple(images.shape)}"
            )
        if not clips.is_floating_point():
            clips = clips.float() / 255.0 - 0.5
        B, T = clips.shape[:2]
        if T == 1:
            context, target_blocks = sample_block_masks(self.grid, generator)
            target = target_blocks.any(0)[None]
        else:
            target = sample_tube_mask(T, self.grid, generator)
            context = ~target
        context, target = context.reshape(-1), target.reshape(-1)
        context_index, target_index = context.nonzero().squeeze(1), target.nonzero().squeeze(1)

        with torch.no_grad():  # the targets: EMA encoder over the whole, unmasked input
            target_tokens = F.layer_norm(
                self.target_encoder(self.tokens(self.target_patch_embedding, clips)), (self.config.width,)
            )
        encoded = self.encoder(self.tokens(self.patch_embedding, clips)[:, context_index])  # (B, P_context, D)
        queries = self.mask_token + self.predictor_position[target_index]  # (P_target, D')
        predictor_input = torch.cat(
            [self.predictor_in(encoded) + self.predictor_position[context_index], queries.expand(B, -1, -1)], dim=1
        )
        predicted = self.predictor_out(self.predictor(predictor_input)[:, context_index.numel() :])
        loss = (predicted - target_tokens[:, target_index]).abs().mean()
        return loss, {
            "loss/masked_prediction": float(loss.detach()),
            "mask/target_fraction": float(target.float().mean()),
            "mask/context_fraction": float(context.float().mean()),
        }

    def update_target(self) -> float:
        momentum = scheduled_momentum(self.config, int(self.target_updates))
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_patch_embedding, self.patch_embedding, momentum)
        self.target_updates += 1
        return momentum

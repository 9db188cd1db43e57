"""Genie: a world model learned from video alone, with latent actions (Bruce et al. 2024, arXiv:2402.15391).

Three parts, all spatio-temporal (ST) transformers over patch tokens (Sec. 2.1): every layer
attends across the S patches of a frame (bidirectional), then along the T frames of each patch
position (causal), so a frame's output never sees a later frame.

    latent action model   a_t = VQ_8(pool_S Enc(x_{0..t})[t])        the change that led to x_t
                          x^_t = Dec(x_{0..t-1}, a_{1..t})           must predict x_t from the past
                          L = ||x^_t - x_t||^2 + VQ terms             (Sec. 2.1, "Latent Action Model")
    video tokenizer       z_t = VQ_V(Enc_ST(patches(x_{0..t}))[t])    S tokens per frame
                          x^_t = Dec_ST(e(z_{0..t}))[t],  L = ||x^ - x||^2 + VQ terms  (ST-ViViT)
    dynamics (MaskGIT)    p(z_t | z_{<t}, a_{<=t}): tokens of z_t hidden by a mask token with
                          probability r ~ U(0.5, 1) per frame; cross-entropy on the hidden ones
                          (Chang et al. 2022, arXiv:2202.04200, Eq. 1; Genie's masking rate)

The latent action bottleneck is tiny (8 codes in Genie) so that the code can hold only what the
past cannot predict about the next frame: the player's action, ideally. The actions are added to
the token embeddings of the frame they lead to (Genie: additive action embeddings improved
controllability). The dynamics model learns on the tokenizer's tokens and the latent action
model's codes with their gradients stopped; Genie trains the tokenizer first, then the latent
action model and the dynamics together. `loss(batch, parts=...)` trains any subset, so a trainer
can follow that schedule (`wmlab.models.latent_action.train_genie`) or train all three at once.

Generation (MaskGIT, Sec. 3.2 of Chang et al.): a new frame starts fully masked; each of a few
steps samples every hidden token from softmax(logits / temperature), keeps the most confident
and hides the rest again, the hidden share following cos(pi/2 * step / steps), until none is
hidden. `maskgit_fill` is that loop, apart from the network.

The WorldModel protocol with the latent action as the action: the action space is
Discrete(action_codes); `observe` takes latent actions (B, T) or infers them from the frames when
given None (`infer_actions`); `imagine` rolls the dynamics with latent actions (B, L) or a policy;
`decode` renders states with the tokenizer's decoder. Genie predicts no reward and no end of
episode: rewards are 0 and continues 1, and the protocol's reward-based suites (dream) say
nothing about it.

States are dicts of tensors (B, ...): "tokens" (B, S) the current frame's tokens, "latent"
(B, S * E) their codes (the continuous vector the evaluation suites measure), "history" (B, C, S)
and "history_actions" (B, C) the last C frames and the latent actions that led to them
(right-aligned, the current frame last; the code `action_codes` marks "no action"), and
"history_length" (B,) how many of them belong to the episode.

Deviations from Genie: sizes (the "genie" preset keeps the paper's codebooks, patch sizes, 16
frames and MaskGIT settings at a much smaller width); plain VQ with dead-code restarts; learned
position embeddings; the MaskGIT confidence is the sampled token's probability without MaskGIT's
annealed Gumbel noise. Two options of the latent action model, off by default, for video where
little moves (two-rooms: 0.4 % of the pixels change per step): `loss_scales.action_motion`
weights the next-frame error on changed pixels, and `action_sees_frames=False` gives its encoder
the change alone (docs/benchmarks.md, Genie: what they do to grounding).

Shape legend: B batch, T time, L horizon, C context frames, S tokens per frame, V tokenizer
codebook, E code size, A latent action codes, P patch pixels (p * p * Ch), D width,
H, W, Ch image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.rollout import action_source
from wmlab.core.shapes import check_shape, episode_starts
from wmlab.core.sizes import SizeTable
from wmlab.core.types import Batch, Trajectory
from wmlab.nn.transformer import Block, TransformerConfig
from wmlab.nn.vq import CodebookLossScales, VectorQuantizer

State = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class GenieSizes(Config):
    """The widths that a named size fixes (one column of SIZES)."""

    limits = ranges(
        counts="width heads tokenizer_layers action_layers dynamics_layers patch action_patch codebook_size"
        " code_size action_code_size context"
    )

    width: int
    """D, width of every transformer."""
    heads: int
    """Attention heads."""
    tokenizer_layers: int
    """ST layers of the tokenizer's encoder and of its decoder."""
    action_layers: int
    """ST layers of the latent action encoder and of its decoder."""
    dynamics_layers: int
    """ST layers of the dynamics model."""
    patch: int
    """Side of the tokenizer's square patches, one token each."""
    action_patch: int
    """Side of the latent action model's patches."""
    codebook_size: int
    """V, the tokenizer's codes."""
    code_size: int
    """E, dimension of the tokenizer's codes."""
    action_code_size: int
    """Dimension of the latent action codes."""
    context: int
    """C, frames the models see at once (Genie: 16)."""


#: "genie": the paper's codebooks (1024 tokenizer codes of 32 dimensions, 8 latent actions of 32),
#: patch sizes (4 for the tokenizer, 16 for the latent action model) and 16-frame context at a
#: width for one GPU (the paper's models are 200M-10.7B parameters); "cpu": minutes per thousand
#: updates on one core at 64 x 64; "tiny": tests.
SIZES: SizeTable[GenieSizes] = SizeTable(
    GenieSizes,
    "Genie",
    """
    size              tiny  cpu  genie
    width             32    64   512
    heads             2     4    8
    tokenizer_layers  1     2    8
    action_layers     1     2    8
    dynamics_layers   2     3    12
    patch             4     8    4
    action_patch      4     16   16
    codebook_size     64    256  1024
    code_size         8     16   32
    action_code_size  8     16   32
    context           4     6    16
    """,
)


@dataclass(frozen=True)
class GenieLossScales(CodebookLossScales):
    """Weights of the loss terms, in one place (each reported unweighted as `loss/<term>`); the
    tokenizer's codebook and commitment weights come from nn/vq.py's CodebookLossScales."""

    reconstruction: float = 1.0
    """Tokenizer: mean squared pixel error, pixels in [0, 1] (`loss/reconstruction`)."""
    action_reconstruction: float = 1.0
    """Latent action model: mean squared error of the next frame (`loss/action_reconstruction`)."""
    action_codebook: float = 1.0
    """Latent action model: codebook term (`loss/action_codebook`)."""
    action_commitment: float = 0.25
    """Latent action model: commitment term (`loss/action_commitment`)."""
    action_motion: float = 0.0
    """Latent action model: extra weight of the next-frame error on the pixels that change between
    the two frames (weight 1 + this there, 1 elsewhere). 0 is Genie's plain error; a small sprite
    (two-rooms' agent: 22 of 4,096 pixels a step) otherwise leaves the code almost nothing to gain."""
    dynamics: float = 1.0
    """Dynamics: cross-entropy of the masked tokens (`loss/dynamics`)."""


@dataclass(frozen=True)
class GenieConfig:
    """Genie's three models."""

    size: SIZES.annotation = SIZES["cpu"]
    """The widths: a named size (tiny, cpu, genie: the paper's codebooks and patches at a smaller
    width) and any changed fields (`--model.size cpu patch=16 action_patch=16`; in Python
    `SIZES.preset("cpu", patch=16)`)."""
    action_codes: int = 8
    """A, latent actions in the codebook (Genie: 8)."""
    dropout: float = 0.0
    """Dropout inside the transformers."""
    dead_code_threshold: float = 0.1
    """Restart codes (tokenizer and actions) whose share of the assignments falls below this / codes."""
    mask_rate_min: float = 0.5
    """Lowest per-frame masking rate of the dynamics' training (Genie: U(0.5, 1))."""
    maskgit_steps: int = 8
    """MaskGIT decoding steps per generated frame (Genie: 25)."""
    temperature: float = 1.0
    """Sampling temperature of generated tokens (0: the most likely; Genie: 2)."""
    action_sees_frames: bool = True
    """The latent action encoder reads (previous frame, change) per patch (Genie reads the
    frames); False: the change alone, so that at initialisation the codes already differ only by
    what moved, not by what the scene holds."""
    image_key: str = "image"
    """The observation key read (uint8 (H, W, Ch)); other keys are ignored."""
    loss_scales: GenieLossScales = field(default_factory=GenieLossScales)
    """Weights of the loss terms."""

    @property
    def sampling_steps(self) -> int:
        """maskgit_steps, under the name of `imagine`'s argument (the play page's slider reads it)."""
        return self.maskgit_steps


#: Named configurations: "genie" adds the paper's sampling (25 MaskGIT steps at temperature 2) to its size.
PRESETS: dict[str, GenieConfig] = {
    "tiny": GenieConfig(size=SIZES["tiny"], maskgit_steps=4),
    "cpu": GenieConfig(size=SIZES["cpu"]),
    "genie": GenieConfig(size=SIZES["genie"], maskgit_steps=25, temperature=2.0),
}

PARTS = ("tokenizer", "latent_action", "dynamics")


# ----------------------------------------------------------------------------------------------
# Building blocks: patches and a masked spatio-temporal stack


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """frames (..., H, W, Ch) -> patches (..., S, P), S = (H / p)(W / p) in row-major order."""
    *leading, H, W, Ch = frames.shape
    x = frames.reshape(*leading, H // patch, patch, W // patch, patch, Ch)
    x = x.movedim(-4, -3)  # (..., H/p, W/p, p, p, Ch)
    return x.reshape(*leading, (H // patch) * (W // patch), patch * patch * Ch)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """patches (..., S, P) -> frames (..., H, W, Ch)."""
    *leading, _, P = patches.shape
    channels = P // (patch * patch)
    x = patches.reshape(*leading, height // patch, width // patch, patch, patch, channels)
    x = x.movedim(-3, -4)
    return x.reshape(*leading, height, width, channels)


def patch_grid(image_shape: tuple[int, int, int], patch: int) -> tuple[int, int]:
    """(S, P) for frames (H, W, Ch) cut into patch x patch patches (`patchify`): patches per frame
    and values per patch."""
    height, width, channels = image_shape
    return (height // patch) * (width // patch), patch * patch * channels


def frame_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """Temporal attention mask (B, T, T) from segment ids (B, T): a frame sees the frames of its
    own segment (an episode; padding gets a segment of its own), and always itself (so that no
    row of the attention is empty); causality is added by the blocks."""
    same = segments[:, :, None] == segments[:, None, :]
    return same | torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)[None]


class SpatioTemporalStack(nn.Module):
    """Embedded patch tokens (B, T, S, D) -> features (B, T, S, D): learned spatial and temporal
    positions, then `layers` pairs of a bidirectional spatial block (wmlab.nn.transformer.Block)
    and a causal temporal block. Unlike nn.transformer.SpatioTemporalBlock it takes a temporal
    mask (episodes and padding within a window)."""

    def __init__(
        self,
        layers: int,
        width: int,
        heads: int,
        tokens_per_frame: int,
        frames: int,
        dropout: float,
        condition_size: int = 0,
    ):
        super().__init__()
        config = TransformerConfig(
            layers=layers,
            heads=heads,
            width=width,
            max_tokens=max(tokens_per_frame, frames),
            dropout=dropout,
            causal=True,
            condition_size=condition_size,
        )
        self.spatial_position = nn.Parameter(0.02 * torch.randn(tokens_per_frame, width))
        self.temporal_position = nn.Parameter(0.02 * torch.randn(frames, width))
        self.spatial = nn.ModuleList(Block(config, causal=False) for _ in range(layers))
        self.temporal = nn.ModuleList(Block(config, causal=True) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    @classmethod
    def at_size(
        cls, layers: int, widths: GenieSizes, tokens_per_frame: int, dropout: float, condition_size: int = 0
    ) -> SpatioTemporalStack:
        """`layers` block pairs at a Genie size's width, heads and context frames."""
        return cls(layers, widths.width, widths.heads, tokens_per_frame, widths.context, dropout, condition_size)

    def forward(
        self, x: torch.Tensor, segments: torch.Tensor | None = None, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, S, D); segments (B, T) long, frames of different segments do not attend to each
        other; condition (B, T, Dc) per frame, modulating every block by adaLN-zero when the stack
        was built with condition_size."""
        B, T, S, D = x.shape
        if T > self.temporal_position.shape[0]:
            raise ShapeError(f"{T} frames exceed this model's context of {self.temporal_position.shape[0]} frames")
        x = x + self.spatial_position[None, None] + self.temporal_position[:T, None][None]
        mask = None
        if segments is not None:
            mask = frame_attention_mask(segments).repeat_interleave(S, 0)  # (B * S, T, T)
        spatial_condition = temporal_condition = None
        if condition is not None:
            spatial_condition = condition.reshape(B * T, -1)
            temporal_condition = condition.repeat_interleave(S, 0)  # (B * S, T, Dc)
        for spatial, temporal in zip(self.spatial, self.temporal):
            x = spatial(x.reshape(B * T, S, D), spatial_condition).reshape(B, T, S, D)
            x = x.transpose(1, 2).reshape(B * S, T, D)
            x = temporal(x, temporal_condition, mask=mask).reshape(B, S, T, D).transpose(1, 2)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------
# The three models


class VideoTokenizer(nn.Module):
    """Frames (B, T, H, W, Ch) in [0, 1] <-> tokens (B, T, S) of a V-code book (ST-ViViT VQ-VAE)."""

    def __init__(
        self, image_shape: tuple[int, int, int], widths: GenieSizes, dropout: float, dead_code_threshold: float
    ):
        super().__init__()
        self.height, self.width, _ = image_shape
        self.patch = widths.patch
        self.tokens_per_frame, pixels = patch_grid(image_shape, self.patch)
        self.embed = nn.Linear(pixels, widths.width)
        self.encoder = SpatioTemporalStack.at_size(widths.tokenizer_layers, widths, self.tokens_per_frame, dropout)
        self.to_code = nn.Linear(widths.width, widths.code_size)
        self.quantizer = VectorQuantizer(
            widths.codebook_size, widths.code_size, beta=1.0, dead_code_threshold=dead_code_threshold
        )
        self.from_code = nn.Linear(widths.code_size, widths.width)
        self.decoder = SpatioTemporalStack.at_size(widths.tokenizer_layers, widths, self.tokens_per_frame, dropout)
        self.to_pixels = nn.Linear(widths.width, pixels)

    def encode(self, frames: torch.Tensor, segments: torch.Tensor | None = None):
        """frames (B, T, H, W, Ch) in [0, 1] -> `Quantized`: codes (B, T, S, E), tokens (B, T, S)."""
        features = self.encoder(self.embed(patchify(frames * 2 - 1, self.patch)), segments)
        return self.quantizer(self.to_code(features))

    def decode_codes(self, codes: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, T, S, E) -> frames (B, T, H, W, Ch), unclamped, ~[0, 1]."""
        patches = self.to_pixels(self.decoder(self.from_code(codes), segments))
        return unpatchify(patches, self.patch, self.height, self.width) * 0.5 + 0.5

    def decode(self, tokens: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T, S) -> frames (B, T, H, W, Ch) in [0, 1]."""
        return self.decode_codes(self.quantizer.lookup(tokens), segments).clamp(0, 1)


class LatentActionModel(nn.Module):
    """Frames (B, T, H, W, Ch) -> latent actions (B, T) among A codes, and the next-frame decoder
    that keeps them honest. The action of step t is read at frame t, whose encoder output has
    seen frames 0..t (causal in time); it leads from frame t - 1 to frame t."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        widths: GenieSizes,
        action_codes: int,
        dropout: float,
        dead_code_threshold: float,
        sees_frames: bool = True,
    ):
        super().__init__()
        self.height, self.width, _ = image_shape
        self.patch = widths.action_patch
        self.sees_frames = sees_frames
        tokens, pixels = patch_grid(image_shape, self.patch)
        self.embed = nn.Linear((2 if sees_frames else 1) * pixels, widths.width)
        self.encoder = SpatioTemporalStack.at_size(widths.action_layers, widths, tokens, dropout)
        self.to_action = nn.Linear(widths.width, widths.action_code_size)
        self.quantizer = VectorQuantizer(
            action_codes,
            widths.action_code_size,
            beta=1.0,
            dead_code_threshold=dead_code_threshold,
            usage_decay=0.9,
            normalize=True,
        )
        self.decoder_embed = nn.Linear(pixels, widths.width)
        self.action_embed = nn.Linear(widths.action_code_size, widths.width)
        self.decoder = SpatioTemporalStack.at_size(
            widths.action_layers, widths, tokens, dropout, condition_size=widths.action_code_size
        )
        self.to_pixels = nn.Linear(widths.width, pixels)
        nn.init.normal_(self.to_pixels.weight, std=1e-3)  # starts near copying the last frame
        nn.init.zeros_(self.to_pixels.bias)

    def encode(self, frames: torch.Tensor, segments: torch.Tensor | None = None):
        """frames (B, T, H, W, Ch) in [0, 1] -> `Quantized` with codes (B, T, Ea) and actions (B, T)
        (step 0's carries nothing: it has no earlier frame)."""
        patches = patchify(frames * 2 - 1, self.patch)  # (B, T, S, P)
        previous = torch.cat([patches[:, :1], patches[:, :-1]], 1)
        if segments is not None:  # an episode's first frame has no previous one: pair it with itself
            starts = torch.cat(
                [torch.ones_like(segments[:, :1], dtype=torch.bool), segments[:, 1:] != segments[:, :-1]], 1
            )
            previous = torch.where(starts[..., None, None], patches, previous)
        # The same information as (previous, current), with the change explicit: what the code should carry.
        change = patches - previous
        features = self.encoder(self.embed(torch.cat([previous, change], -1) if self.sees_frames else change), segments)
        return self.quantizer(self.to_action(features.mean(2)))

    def predict_next(
        self, frames: torch.Tensor, codes: torch.Tensor, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Frames 1..T-1 (B, T - 1, H, W, Ch) predicted from frames (B, T, ...) 0..T-2 and the codes
        (B, T, Ea) of the actions that led to frames 1..T-1."""
        past = self.decoder_embed(patchify(frames[:, :-1] * 2 - 1, self.patch))
        past = past + self.action_embed(codes[:, 1:])[:, :, None]
        features = self.decoder(past, None if segments is None else segments[:, :-1], codes[:, 1:])
        # The change from the last frame: copying it is free, so the code's gradient is all about motion.
        return frames[:, :-1] + unpatchify(self.to_pixels(features), self.patch, self.height, self.width)


class DynamicsModel(nn.Module):
    """MaskGIT over frame tokens: tokens (B, T, S) (the mask token V where hidden) and the latent
    actions (B, T) that led to each frame (A: none) -> logits (B, T, S, V)."""

    def __init__(self, tokens_per_frame: int, widths: GenieSizes, action_codes: int, dropout: float):
        super().__init__()
        self.mask_token = widths.codebook_size
        self.no_action = action_codes
        self.token_embed = nn.Embedding(widths.codebook_size + 1, widths.width)
        self.action_embed = nn.Embedding(action_codes + 1, widths.width)
        self.stack = SpatioTemporalStack.at_size(widths.dynamics_layers, widths, tokens_per_frame, dropout)
        self.head = nn.Linear(widths.width, widths.codebook_size)

    def forward(
        self, tokens: torch.Tensor, actions: torch.Tensor, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.token_embed(tokens) + self.action_embed(actions)[:, :, None]
        return self.head(self.stack(x, segments))


def cosine_schedule(step: int, steps: int) -> float:
    """Share of the hidden tokens still hidden after `step` of `steps` (MaskGIT, Sec. 3.2): cos(pi/2 * step / steps)."""
    return math.cos(math.pi / 2 * step / steps)


def maskgit_fill(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    hidden: torch.Tensor,
    mask_token: int,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskGIT's iterative parallel decoding of one frame per row.

    tokens (B, S) long: the known tokens (anything where hidden); hidden (B, S) bool: the tokens to
    generate; logits_of(tokens with mask_token where hidden (B, S)) -> logits (B, S, V). Each step
    samples every hidden token, keeps the most confident so that cos(pi/2 * (step + 1) / steps) of
    the originally hidden ones stay hidden, and hides the rest again; after the last step none is.
    Known tokens are never changed. Returns tokens (B, S) long."""
    tokens = tokens.clone()
    hidden = hidden.clone()
    initially = hidden.sum(1)  # (B,)
    for step in range(steps):
        if not hidden.any():
            break
        logits = logits_of(torch.where(hidden, torch.full_like(tokens, mask_token), tokens)).float()
        if temperature == 0:
            sampled = logits.argmax(-1)
            confidence = logits.softmax(-1).gather(-1, sampled[..., None])[..., 0]
        else:
            probabilities = (logits / temperature).softmax(-1)
            sampled = torch.multinomial(
                probabilities.reshape(-1, probabilities.shape[-1]), 1, generator=generator
            ).reshape(tokens.shape)
            confidence = probabilities.gather(-1, sampled[..., None])[..., 0]
        tokens = torch.where(hidden, sampled, tokens)
        keep_hidden = torch.floor(initially.float() * cosine_schedule(step + 1, steps)).long()  # (B,)
        if step == steps - 1:
            keep_hidden = torch.zeros_like(keep_hidden)
        # Rank the freshly sampled tokens by confidence (known ones never re-hidden).
        confidence = torch.where(hidden, confidence, torch.full_like(confidence, float("inf")))
        rank = confidence.argsort(1).argsort(1)
        hidden = hidden & (rank < keep_hidden[:, None])
    return tokens


# ----------------------------------------------------------------------------------------------
# The world model


class GenieWorldModel(nn.Module):
    """Genie's tokenizer, latent action model and dynamics behind the WorldModel protocol, whose
    action is the latent action (Discrete(action_codes)). `action_space` is accepted for the
    registry's signature and ignored: the model never sees real actions.

    Random numbers of imagination come from `self.generator` (None: torch's global generator)
    unless `imagine` is given one.
    """

    can_decode = True

    def __init__(self, config: GenieConfig, observation_space: spaces.Space, action_space: spaces.Space | None = None):
        super().__init__()
        if not 0 < config.mask_rate_min <= 1:
            raise ValueError(f"GenieConfig.mask_rate_min must be in (0, 1], got {config.mask_rate_min}")
        if config.maskgit_steps < 1 or config.temperature < 0 or config.action_codes < 2:
            raise ValueError("GenieConfig: maskgit_steps >= 1, temperature >= 0 and action_codes >= 2 are required")
        self.config = config
        widths = config.size
        self.generator: torch.Generator | None = None
        if isinstance(observation_space, spaces.Dict):
            if config.image_key not in observation_space.spaces:
                raise IncompatibleSpaceError(
                    f"Genie reads a uint8 image {config.image_key!r}, the observation has {list(observation_space.spaces)}"
                )
            image = observation_space[config.image_key]
        else:
            image = observation_space
        if not (
            isinstance(image, spaces.Box) and image.dtype == "uint8" and len(image.shape) == 3 and image.shape[-1] == 3
        ):
            raise IncompatibleSpaceError(
                f"Genie learns from RGB video: observation {config.image_key!r} must be uint8 (H, W, 3), got {image}"
            )
        self.image_shape = tuple(int(side) for side in image.shape)
        height, width, _ = self.image_shape
        for name, patch in (("patch", widths.patch), ("action_patch", widths.action_patch)):
            if height % patch or width % patch:
                raise IncompatibleSpaceError(
                    f"frames of {height} x {width} do not divide into patches of {patch} ({name}); resize the video or set {name}"
                )
        self.action_space = spaces.Discrete(config.action_codes)
        self.context = widths.context
        self.tokenizer = VideoTokenizer(self.image_shape, widths, config.dropout, config.dead_code_threshold)
        self.latent_action = LatentActionModel(
            self.image_shape,
            widths,
            config.action_codes,
            config.dropout,
            config.dead_code_threshold,
            sees_frames=config.action_sees_frames,
        )
        self.tokens_per_frame = self.tokenizer.tokens_per_frame
        self.dynamics = DynamicsModel(self.tokens_per_frame, widths, config.action_codes, config.dropout)

    @property
    def device(self) -> torch.device:
        return self.tokenizer.to_code.weight.device

    # --- inputs ------------------------------------------------------------------------------

    def frames(self, obs: Any, leading: Sequence[str], sizes: dict[str, int]) -> torch.Tensor:
        """obs[image_key] (*leading, H, W, Ch) uint8 -> float frames in [0, 1] on the model's device."""
        image = obs[self.config.image_key] if isinstance(obs, dict) else obs
        image = torch.as_tensor(image, device=self.device)
        check_shape(f"obs[{self.config.image_key!r}]", image, (*leading, *self.image_shape), sizes)
        return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()

    def fit_image(self, image: Any, resize: bool = True) -> torch.Tensor:
        """Any uint8 RGB image (H', W', Ch) or (B, H', W', Ch) (grey or RGBA accepted) -> uint8
        (B, H, W, 3) of this model's size: resized (bilinear, antialiased) when `resize`, else a
        frame of another size is refused with both sizes named."""
        image = torch.as_tensor(image)
        if image.dim() == 2:
            image = image[..., None]
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.dtype != torch.uint8 or image.shape[-1] not in (1, 3, 4):
            raise ShapeError(
                f"an image must be uint8 (H, W), (H, W, 1|3|4) or (B, H, W, 1|3|4), got {image.dtype} {tuple(image.shape)}"
            )
        image = image[..., :3] if image.shape[-1] == 4 else image.expand(*image.shape[:-1], 3)
        height, width, _ = self.image_shape
        if tuple(image.shape[1:3]) != (height, width):
            if not resize:
                raise ShapeError(
                    f"the image is {image.shape[1]} x {image.shape[2]}, this model takes {height} x {width} frames; resize it (resize=True)"
                )
            resized = F.interpolate(
                image.permute(0, 3, 1, 2).float(),
                size=(height, width),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            image = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return image.contiguous()

    def encode_actions(self, actions: Any, leading: Sequence[str], sizes: dict[str, int]) -> torch.Tensor:
        """Latent actions (*leading) integers in [0, A) or one-hot (*leading, A) -> long (*leading)."""
        actions = torch.as_tensor(actions, device=self.device)
        A = self.config.action_codes
        if actions.dim() == len(leading) + 1 and actions.shape[-1] == A and actions.is_floating_point():
            actions = actions.argmax(-1)
        if actions.is_floating_point() or actions.dtype == torch.bool:
            raise IncompatibleSpaceError(
                f"Genie's actions are its latent actions, integers in [0, {A}); got {actions.dtype} {tuple(actions.shape)}"
                " (real actions are never given to it: infer latent actions from video with `infer_actions`)"
            )
        check_shape("latent actions", actions, tuple(leading), sizes)
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= A):
            raise IncompatibleSpaceError(
                f"latent actions must lie in [0, {A}), got values in [{int(actions.min())}, {int(actions.max())}]"
            )
        return actions.long()

    @staticmethod
    def segments(is_first: torch.Tensor) -> torch.Tensor:
        """Episode ids (B, T) from is_first (B, T): frames attend within their episode."""
        return is_first.long().cumsum(1)

    # --- the protocol ------------------------------------------------------------------------

    def initial(self, batch_size: int) -> State:
        """An empty history for B sequences."""
        C, S, device = self.context, self.tokens_per_frame, self.device
        return {
            "tokens": torch.zeros(batch_size, S, dtype=torch.long, device=device),
            "latent": torch.zeros(batch_size, S * self.config.size.code_size, device=device),
            "history": torch.zeros(batch_size, C, S, dtype=torch.long, device=device),
            "history_actions": torch.full((batch_size, C), self.config.action_codes, dtype=torch.long, device=device),
            "history_length": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def _push(self, state: State, tokens: torch.Tensor, actions: torch.Tensor, is_first: torch.Tensor) -> State:
        """Append one frame's tokens (B, S) reached by actions (B,) to the history; rows where
        is_first (B,) start a new history."""
        keep = (~is_first).long()
        history = torch.cat([state["history"][:, 1:], tokens[:, None]], 1)
        actions = torch.where(is_first, torch.full_like(actions, self.config.action_codes), actions)
        history_actions = torch.cat([state["history_actions"][:, 1:], actions[:, None]], 1)
        length = (state["history_length"] * keep + 1).clamp_max(self.context)
        return {
            "tokens": tokens,
            "latent": self.tokenizer.quantizer.lookup(tokens).flatten(1),
            "history": history,
            "history_actions": history_actions,
            "history_length": length,
        }

    def _history_segments(self, length: torch.Tensor, frames: int) -> torch.Tensor:
        """Segment ids (B, frames) of right-aligned histories: the valid frames share segment 0,
        each padding frame has its own negative id."""
        position = torch.arange(frames, device=length.device)[None]
        valid = position >= (frames - length)[:, None]
        return torch.where(valid, torch.zeros_like(position), -1 - position)

    @torch.no_grad()
    def infer_actions(self, obs: Any, is_first: Any | None = None) -> torch.Tensor:
        """The latent actions (B, T) long the model reads in real video obs (B, T, H, W, Ch); 0
        at steps without an earlier frame (the first of a window or an episode). Windows longer
        than the context are read in overlapping chunks."""
        sizes: dict[str, int] = {}
        frames = self.frames(obs, ("B", "T"), sizes)
        B, T = sizes["B"], sizes["T"]
        first = (
            torch.zeros(B, T, dtype=torch.bool, device=self.device)
            if is_first is None
            else torch.as_tensor(is_first, device=self.device).bool()
        )
        first = first.clone()
        first[:, 0] = True
        actions = torch.zeros(B, T, dtype=torch.long, device=self.device)
        C = self.context
        start = 0
        while True:
            stop = min(start + C, T)
            chunk = self.latent_action.encode(frames[:, start:stop], self.segments(first[:, start:stop])).indices
            fresh = 0 if start == 0 else 1  # a chunk's first action has no earlier frame in the chunk
            actions[:, start + fresh : stop] = chunk[:, fresh:]
            if stop == T:
                break
            start = stop - 1
        return torch.where(first, torch.zeros_like(actions), actions)

    @torch.no_grad()
    def observe(self, obs: dict, action: Any, is_first: Any, state: State | None = None) -> tuple[State, State]:
        """Tokenize real frames obs (B, T, H, W, Ch) and push them into the history: (states
        (B, T, ...), last state (B, ...)). action (B, T): the latent actions that led to each
        frame, or None to read them from the frames (`infer_actions`); ignored where is_first.
        The tokenizer encodes the window on its own (its temporal context is this window)."""
        sizes: dict[str, int] = {}
        frames = self.frames(obs, ("B", "T"), sizes)
        B, T = sizes["B"], sizes["T"]
        is_first = episode_starts(is_first, self.device, sizes)
        actions = (
            self.infer_actions(frames, is_first) if action is None else self.encode_actions(action, ("B", "T"), sizes)
        )
        state = self.initial(B) if state is None else state
        tokens = self._encode_frames(frames, is_first)
        states = []
        for t in range(T):
            state = self._push(state, tokens[:, t], actions[:, t], is_first[:, t])
            states.append(state)
        stacked = {name: torch.stack([step[name] for step in states], 1) for name in states[0]}
        return stacked, state

    def _encode_frames(self, frames: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, S) of frames (B, T, ...) encoded in chunks of the context."""
        T = frames.shape[1]
        segments = self.segments(is_first)
        chunks = [
            self.tokenizer.encode(
                frames[:, start : start + self.context], segments[:, start : start + self.context]
            ).indices
            for start in range(0, T, self.context)
        ]
        return torch.cat(chunks, 1)

    def state_from_image(self, image: Any, resize: bool = True) -> State:
        """A state holding one frame: any uint8 image (H', W', Ch) or (B, H', W', Ch) fitted to the
        model's size (`fit_image`) — a world to step through with latent actions."""
        frames = self.fit_image(image, resize).to(self.device)
        B = frames.shape[0]
        _, last = self.observe(
            {self.config.image_key: frames[:, None]},
            torch.zeros(B, 1, dtype=torch.long),
            torch.ones(B, 1, dtype=torch.bool),
        )
        return last

    @torch.no_grad()
    def imagine(
        self,
        state: State,
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
        temperature: float | None = None,
        sampling_steps: int | None = None,
        decode: bool = False,
        generator: torch.Generator | None = None,
    ) -> Trajectory:
        """Roll the dynamics from state (B, ...) with latent actions (B, L) (or one-hot (B, L, A))
        or a policy(state) -> (B,), generating each frame by MaskGIT in `sampling_steps` steps (None: the
        config's) at a temperature (None: the config's; 0: argmax). Step l of the result is the
        state reached by action l: states (B, L, ...), actions (B, L) long, rewards 0 and
        continues 1 (B, L) (Genie predicts neither), observations when `decode`."""
        sizes = check_shape("state['history']", state["history"], ("B", self.context, self.tokens_per_frame))
        B = sizes["B"]
        choose, horizon = action_source(actions_or_policy, horizon, sizes, self.encode_actions)
        temperature = self.config.temperature if temperature is None else float(temperature)
        steps = self.config.maskgit_steps if sampling_steps is None else int(sampling_steps)
        generator = generator if generator is not None else self.generator
        S, C = self.tokens_per_frame, self.context
        current, trajectory, taken = state, [], []
        no_first = torch.zeros(B, dtype=torch.bool, device=self.device)
        for index in range(horizon):
            action = choose(index, current)
            # The window: the last C - 1 frames of the history, then the frame to generate.
            history = current["history"][:, 1:]
            window_actions = torch.cat([current["history_actions"][:, 1:], action[:, None]], 1)
            segments = self._history_segments((current["history_length"] + 1).clamp_max(C), C)

            def logits_of(
                frame_tokens: torch.Tensor, history=history, window_actions=window_actions, segments=segments
            ) -> torch.Tensor:
                window = torch.cat([history, frame_tokens[:, None]], 1)
                return self.dynamics(window, window_actions, segments)[:, -1]

            hidden = torch.ones(B, S, dtype=torch.bool, device=self.device)
            tokens = maskgit_fill(
                logits_of,
                torch.zeros(B, S, dtype=torch.long, device=self.device),
                hidden,
                self.dynamics.mask_token,
                steps,
                temperature,
                generator,
            )
            current = self._push(current, tokens, action, no_first)
            trajectory.append(current)
            taken.append(action)
        states = {name: torch.stack([step[name] for step in trajectory], 1) for name in trajectory[0]}
        zeros = torch.zeros(B, horizon, device=self.device)
        return Trajectory(
            states=states,
            actions=torch.stack(taken, 1),
            rewards=zeros,
            continues=torch.ones_like(zeros),
            observations=self.decode(states) if decode else None,
        )

    @torch.no_grad()
    def decode(self, state: State) -> dict[str, torch.Tensor]:
        """Frames of states (..., with "history" (..., C, S)) -> {image_key: (..., H, W, Ch) float
        in [0, 1]}: the tokenizer decodes each state's history and the current (last) frame is kept."""
        history, length = state["history"], state["history_length"]
        leading = history.shape[:-2]
        history = history.reshape(-1, *history.shape[-2:])
        segments = self._history_segments(length.reshape(-1), self.context)
        frames = []
        for start in range(0, history.shape[0], 256):  # bounded memory for long rollouts
            chunk = self.tokenizer.decode(history[start : start + 256], segments[start : start + 256])
            frames.append(chunk[:, -1])
        return {self.config.image_key: torch.cat(frames).reshape(*leading, *self.image_shape)}

    # --- learning ----------------------------------------------------------------------------

    def _encode_for(self, parts: Sequence[str], part: str, frames: torch.Tensor, segments: torch.Tensor) -> Any:
        """The quantised codes of frames (B, T, H, W, Ch) by the encoder `part` ("tokenizer" or
        "latent_action") when `parts` trains it or the dynamics (which learns on its indices), else
        None; gradients reach the encoder only when its own part is trained."""
        if part not in parts and "dynamics" not in parts:
            return None
        with torch.set_grad_enabled(part in parts and torch.is_grad_enabled()):
            return getattr(self, part).encode(frames, segments)

    def loss(self, batch: Batch, parts: Sequence[str] = PARTS) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) for B windows of T <= C frames; see `loss_terms`."""
        total, metrics = self.loss_terms(batch, parts)
        return total, {name: float(value) for name, value in zip(metrics, torch.stack(list(metrics.values())).tolist())}

    def loss_terms(self, batch: Batch, parts: Sequence[str] = PARTS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, metrics as 0-d tensors) of the named parts ("tokenizer", "latent_action",
        "dynamics"). batch.action is never read: the model learns from the frames alone. The
        dynamics learns on the tokenizer's tokens and the latent action model's actions, both
        detached; steps without an earlier frame in their episode are neither predicted nor
        given an action."""
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"loss parts must be a non-empty subset of {PARTS}, got {tuple(parts)}")
        scales = self.config.loss_scales
        sizes: dict[str, int] = {}
        frames = self.frames(batch.obs, ("B", "T"), sizes)
        B, T = sizes["B"], sizes["T"]
        if T > self.context:
            raise ShapeError(f"batch: windows of T={T} frames exceed the model's context of {self.context} frames")
        if T < 2:
            raise ShapeError("batch: Genie learns from changes between frames, windows need T >= 2")
        is_first = episode_starts(batch.is_first, self.device, sizes)
        segments = self.segments(is_first)
        # Step t has an earlier frame of its episode in the window.
        predicted = (~is_first).clone()
        predicted[:, 0] = False
        weight = predicted.float()
        count = weight.sum().clamp_min(1.0)
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}

        quantized = self._encode_for(parts, "tokenizer", frames, segments)
        tokens = None if quantized is None else quantized.indices.detach()
        if "tokenizer" in parts:
            reconstruction = self.tokenizer.decode_codes(quantized.quantized, segments)
            terms["reconstruction"] = (reconstruction - frames).pow(2).mean()
            terms["codebook"] = quantized.codebook_loss
            terms["commitment"] = quantized.commitment_loss
            with torch.no_grad():
                error = (reconstruction.clamp(0, 1) - frames).pow(2).flatten(2).mean(-1).clamp_min(1e-10)
                metrics["wm/reconstruction_psnr"] = (-10 * error.log10()).mean()
                metrics.update(quantized.metrics("vq"))

        latent = self._encode_for(parts, "latent_action", frames, segments)
        actions = None if latent is None else latent.indices.detach()
        if "latent_action" in parts:
            predicted_frames = self.latent_action.predict_next(frames, latent.quantized, segments)
            error = (predicted_frames - frames[:, 1:]).pow(2)  # (B, T - 1, H, W, Ch)
            if scales.action_motion > 0:
                changed = (frames[:, 1:] - frames[:, :-1]).abs().amax(-1, keepdim=True) > 0.5 / 255
                error = error * (1 + scales.action_motion * changed.float())
            error = error.flatten(2).mean(-1)  # (B, T - 1)
            terms["action_reconstruction"] = (error * weight[:, 1:]).sum() / count
            terms["action_codebook"] = latent.codebook_loss
            terms["action_commitment"] = latent.commitment_loss
            metrics.update(latent.metrics("action"))

        if "dynamics" in parts:
            actions = torch.where(predicted, actions, torch.full_like(actions, self.config.action_codes))
            rate = self.config.mask_rate_min + (1 - self.config.mask_rate_min) * torch.rand(B, T, 1, device=self.device)
            hidden = (torch.rand(B, T, self.tokens_per_frame, device=self.device) < rate) & predicted[..., None]
            inputs = torch.where(hidden, torch.full_like(tokens, self.dynamics.mask_token), tokens)
            logits = self.dynamics(inputs, actions, segments)
            hidden_count = hidden.float().sum().clamp_min(1.0)
            cross_entropy = F.cross_entropy(logits.flatten(0, 2), tokens.flatten(), reduction="none").reshape(
                tokens.shape
            )
            terms["dynamics"] = (cross_entropy * hidden.float()).sum() / hidden_count
            with torch.no_grad():
                metrics["wm/masked_token_accuracy"] = (
                    (logits.argmax(-1) == tokens).float() * hidden.float()
                ).sum() / hidden_count

        total = sum(getattr(scales, name) * value for name, value in terms.items())
        metrics.update({f"loss/{name}": value.detach() for name, value in terms.items()})
        metrics["loss/world_model"] = total.detach()
        return total, {name: value.float() for name, value in metrics.items()}

"""Token world models: IRIS's discrete autoencoder + GPT, and GAIA-1's conditioned variant in small.

A frame becomes a handful of discrete tokens and a causal transformer predicts, token by token,
the next frame, with the reward and the end of the episode (IRIS, Micheli et al. 2023,
arXiv:2209.00588, Sec. 2):

    z_t = VQ(E(x_t))  in {1..V}^K          tokenizer: conv encoder, vector quantiser (nn/vq.py)
    x_t ~ D(e(z_t))                         conv decoder from the codes
    p(z_t^k | history, a_{t-1}, z_t^{<k})   GPT over [a_{t-1}, z_t^1 .. z_t^K] per step
    r_t, d_t ~ p(. | history, a_{t-1})      reward and end heads at the action token

Here the action token comes first in each step's block, because wmlab's step t holds the action
that *led to* obs_t (wmlab.core.types): block t = [a_{t-1}, z_t^1..z_t^K], and the output at the
action token predicts z_t^1, r_t and the end flag of obs_t. It is IRIS's sequence
[z_{t-1}, a_{t-1}, z_t, ...] cut at a different place, so nothing the model sees changes.

GAIA-1 (Hu et al. 2023, arXiv:2309.17080, Sec. 2) conditions the same kind of model on text
and actions and samples with classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598):
with `text_size` > 0 each block starts with a text token (a projected sentence embedding from
wmlab.nn.text), and during training the text and the actions are replaced by learned "null"
embeddings with probabilities `text_dropout` / `action_dropout`. At sampling,

    logits = logits_uncond + s (logits_cond - logits_uncond)      (Eq. 6 of Ho & Salimans)

where "uncond" drops what `guided` names; s = 1 is the conditional model, s = 0 the
unconditional one. Continuous actions (GAIA-1's speed and curvature) are a linear embedding of
the scaled action; IRIS takes discrete actions only (`continuous_actions` False refuses a Box).

Imagination samples every frame token from softmax(logits / temperature) (temperature 0:
argmax), so K rollouts from one start differ and the calibration suite has a distribution to
measure. A key-value cache (nn/transformer.py) makes each sampled token cost one token step;
`imagine(..., use_cache=False)` recomputes the whole window for every token (the slow reference,
identical results). When the window is full the model restarts from its last `refresh_keep` steps
(half the context by default), as IRIS's imagination refreshes its cache (IRIS keeps the current
frame only). The last imagined state carries the cache, so a stepper (wmlab.envs.imagined, the
play page) calling imagine(horizon=1) pays one step of tokens per call, not the whole window.

Deviations from IRIS: no perceptual (LPIPS) loss in the tokenizer (it needs pretrained VGG
weights that nothing here may download) — the reconstruction loss is L1 plus a squared error
(L1 alone settles on the background and loses small objects: 18 dB against 30 dB on the tests'
moving square); no self-attention
layers in the conv tokenizer (IRIS has them at 8 x 8 and 16 x 16); dead-code restarts in the
quantiser (IRIS has none); tokenizer and world model are trained on one summed loss, the world
model on detached tokens (IRIS alternates them, also without gradients between them).

States are dicts of tensors (B, ...): "tokens" (B, K) the current frame's tokens, "latent"
(B, K * E) their codes (the continuous vector the evaluation suites measure), "history"
(B, C, K) and "history_actions" (B, C, A) the last C steps (right-aligned, the current frame
last), "history_length" (B,) how many of them belong to the episode, "window" (B,) how many of
those imagination's transformer sees (at most history_length; after the window restarts, fewer),
and "text" (B, Dt) when
the model is text-conditioned.

Shape legend: B batch, T time, L horizon, K tokens per frame, V codebook size, E code size,
C context steps, P tokens per step (K + 1, + 1 with text), A action features, Dt text features,
D width, H, W, Ch image.
"""

from __future__ import annotations

import math
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
from wmlab.core.shapes import check_shape, episode_starts, step_signals
from wmlab.core.sizes import SizeTable
from wmlab.core.spaces import BoxBounds, action_layout, discrete_action_input
from wmlab.core.types import Batch, Trajectory
from wmlab.losses.events import calibrated_logits, event_scores, event_weighted_mean
from wmlab.losses.pixels import foreground_weights
from wmlab.nn.distributions import TwoHot
from wmlab.nn.normalizer import RunningNormalizer
from wmlab.nn.spatial_attention import SelfAttention2d
from wmlab.nn.transformer import KeyValueCache, Transformer, TransformerConfig
from wmlab.nn.vq import CodebookLossScales, VectorQuantizer

State = dict[str, torch.Tensor]
#: State entries of a key-value cache carried between imagine calls (see TokenWorldModel.imagine).
CACHE_KEYS = ("kv_keys", "kv_values", "kv_steps", "kv_signature")


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TokenSizes(Config):
    """The widths that a named size fixes (one column of SIZES)."""

    limits = ranges(
        counts="codebook_size code_size channels residual_max_side layers heads width context",
        non_negative="residual_blocks",
    )

    codebook_size: int
    """V, codes in the tokenizer's vocabulary."""
    code_size: int
    """E, dimension of each code."""
    channels: int
    """Channels of every conv stage of the tokenizer."""
    residual_blocks: int
    """Residual blocks per resolution of the tokenizer."""
    residual_max_side: int
    """Residual blocks only at resolutions whose side is at most this (IRIS: all)."""
    layers: int
    """Transformer blocks."""
    heads: int
    """Attention heads."""
    width: int
    """Transformer width."""
    context: int
    """C, steps the transformer sees at once (IRIS: 20)."""


#: "iris": the paper (arXiv:2209.00588, Appendix A / the authors' tokenizer and world-model
#: configs: vocabulary 512, codes of 512, 64 channels, 2 residual blocks per stage; 10 layers,
#: 4 heads, width 256, 20 steps); "cpu": residual blocks only at 16 x 16 and below (at 64 x 64
#: and 32 x 32 they cost most of an update; docs/benchmarks.md has the times), a smaller code and
#: transformer; "tiny": tests.
SIZES: SizeTable[TokenSizes] = SizeTable(
    TokenSizes,
    "token model",
    """
    size               tiny  cpu  iris
    codebook_size      32    512  512
    code_size          16    64   512
    channels           8     32   64
    residual_blocks    1     1    2
    residual_max_side  4096  16   4096
    layers             2     4    10
    heads              2     4    4
    width              32    128  256
    context            8     10   20
    """,
)


#: The tokenizer's loss terms (weighted by TokenLossScales), in the order they are summed.
TOKENIZER_TERMS = ("reconstruction", "squared_error", "codebook", "commitment")


@dataclass(frozen=True)
class TokenLossScales(CodebookLossScales):
    """Weights of the loss terms, in one place (each reported unweighted as `loss/<term>`); the
    codebook and commitment weights come from nn/vq.py's CodebookLossScales."""

    reconstruction: float = 1.0
    """Mean absolute pixel error of the tokenizer, pixels in [0, 1] (`loss/reconstruction`; IRIS's L1 term)."""
    squared_error: float = 10.0
    """Mean squared pixel error of the tokenizer (`loss/squared_error`): stands in for IRIS's
    perceptual loss, which is left out; without it small objects are lost to the L1 median."""
    foreground: float = 0.0
    """Extra weight, in both reconstruction terms, of the pixels that differ from the batch's
    background (the per-pixel median of its frames): weight 1 + this; 0: off (IRIS). Without it
    small objects (MinAtar's ball and paddle, two-rooms' agent) vanish: the pixel loss is lowest
    drawing the background only (docs/benchmarks.md, IRIS agent section)."""
    tokens: float = 1.0
    """Cross-entropy of the next frame's tokens (`loss/tokens`)."""
    changed_tokens: float = 1.0
    """Weight, in the token loss, of a token that differs from the previous frame's token at its
    position, against 1 for a repeated one; 1: the plain mean (IRIS). Most tokens repeat (83 % on
    MinAtar Breakout with the patch encoder), so the few that move (ball, paddle) carry little
    of the plain loss. The weighting is undone where the logits are read (imagination, the
    metrics): weighting the classes c != previous by w makes the loss's optimum p(c) w_c / Z,
    so adding log w to the previous token's logit gives back p (as `sparse_weight` is undone)."""
    reward: float = 1.0
    """Cross-entropy of the reward's sign class (IRIS) or its two-hot bins (`loss/reward`)."""
    end: float = 1.0
    """Binary cross-entropy of the end (terminal) flag (`loss/end`)."""
    sparse_weight: float = 1.0
    """Weight, in the reward's and the end's losses, of the steps with a nonzero reward or an end,
    against 1 for the others (wmlab.losses.events); 1: the plain mean (IRIS)."""


@dataclass(frozen=True)
class TokenWorldModelConfig:
    """IRIS's token world model (and GAIA-1's conditioning)."""

    size: SIZES.annotation = SIZES["cpu"]
    """The widths: a named size (tiny, cpu, iris: the paper's) and any changed fields
    (`--agent.model.size cpu context=8`; in Python `SIZES.preset("cpu", context=8)`)."""
    stages: int | None = None
    """Stride-2 stages of the tokenizer: 4 take 64 x 64 to 4 x 4 = 16 tokens (IRIS); None: as many
    as make a 4 x 4 grid of the frame (IRIS's 16 tokens at any side 4 * 2^s; 2 for 16 x 16
    frames); a side not divisible by 2^stages is refused."""
    encoder: str = "conv"
    """The tokenizer's encoder and decoder: "vqgan" (IRIS's networks: residual blocks and
    self-attention at `attention_sides`, a middle with attention, one more residual block per
    level in the decoder), "conv" (residual blocks and convolutions across the frame without
    attention, so a token also sees its neighbours' pixels) or "patch" (each token computed from
    its own patch alone, as a per-patch MLP: identical patches always get the same token, so a
    static part of the scene keeps its tokens from frame to frame)."""
    attention_sides: tuple[int, ...] = (8, 16)
    """"vqgan": the feature-map sides whose residual blocks are followed by self-attention (IRIS:
    8 and 16 on 64 x 64 frames)."""
    action_in_tokens: bool = False
    """Also add each step's action embedding to the embeddings of that step's frame tokens, so
    every prediction of the next frame reads the action directly, not only through attention to
    the action token (IRIS: the action token alone; in the 2026-12-06 iris-cpu run the
    transformer had not learned to read it: identical predictions under any actions after about
    500 world-model updates). Alone it did not make the actions matter sooner; with
    `loss_scales.changed_tokens` 10 it did (0.039 nats per token after 400 world-model updates
    against 0.0007; docs/benchmarks.md, "IRIS's world model reads the actions")."""
    refresh_keep: int | None = None
    """Steps kept when imagination's window fills the context and restarts (None: half the
    context; IRIS restarts from the current frame, 1; context - 1 keeps the most context but
    recomputes the window at every step)."""
    dropout: float = 0.1
    """Dropout in the transformer (IRIS: 0.1)."""
    dead_code_threshold: float = 0.1
    """Restart codes whose average share of the assignments falls below this / V (0: never)."""
    usage_decay: float = 0.99
    """Decay per update of each code's moving-average share (0.99: a code unused for ~230 updates is dead)."""
    restart_on: str = "random"
    """Where dead codes restart: "random" encoder outputs, or those with the largest quantisation
    "error" (what the codebook represents worst: small objects; nn/vq.py)."""
    image_key: str = "image"
    """The observation key tokenized (uint8 (H, W, Ch)); other keys are ignored."""
    continuous_actions: bool = False
    """Accept a bounded 1-D Box action space, embedded linearly (GAIA-1); IRIS takes Discrete only."""
    reward_head: str = "sign"
    """"sign": 3 classes -1 / 0 / +1 (IRIS, for clipped Atari rewards); "twohot": symlog two-hot, any scale."""
    temperature: float = 1.0
    """Sampling temperature of imagined tokens (0: the most likely token)."""
    text_size: int = 0
    """Dt of a text embedding conditioning every step (GAIA-1); 0: no text token."""
    text_dropout: float = 0.0
    """Training: probability that a sequence's text is replaced by the null embedding (GAIA-1: classifier-free guidance)."""
    text_standardize: bool = False
    """Standardise the text embedding per dimension, with the exact running statistics of every
    embedding the training loss has seen (wmlab.nn.normalizer), before its projection; as the
    diffusion model's `condition_standardize` (short captions' embeddings share most of their
    direction). False: as measured before 2026-12-07 21:30."""
    action_dropout: float = 0.0
    """Training: probability that a sequence's actions are replaced by the null embedding."""
    guided: str = "text"
    """What the unconditional pass of guidance drops: "text", "action" or "both"."""
    loss_scales: TokenLossScales = field(default_factory=TokenLossScales)
    """Weights of the loss terms."""

    def __post_init__(self) -> None:
        if self.reward_head not in ("sign", "twohot"):
            raise ValueError(f"TokenWorldModelConfig.reward_head must be sign or twohot, got {self.reward_head!r}")
        if self.encoder not in ("vqgan", "conv", "patch"):
            raise ValueError(f"TokenWorldModelConfig.encoder must be vqgan, conv or patch, got {self.encoder!r}")
        if self.guided not in ("text", "action", "both"):
            raise ValueError(f"TokenWorldModelConfig.guided must be text, action or both, got {self.guided!r}")
        if self.temperature < 0:
            raise ValueError(f"TokenWorldModelConfig.temperature must be >= 0, got {self.temperature}")
        for name in ("text_dropout", "action_dropout", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TokenWorldModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.stages is not None and self.stages < 1:
            raise ValueError(f"TokenWorldModelConfig.stages must be at least 1, got {self.stages}")
        if self.loss_scales.changed_tokens <= 0:
            raise ValueError(f"TokenLossScales.changed_tokens must be > 0, got {self.loss_scales.changed_tokens}")
        if self.refresh_keep is not None and self.refresh_keep < 1:
            raise ValueError(f"TokenWorldModelConfig.refresh_keep must be at least 1, got {self.refresh_keep}")


def grid_stages(image_size: tuple[int, int], stages: int | None) -> int:
    """The tokenizer's stride-2 stages: `stages`, or (None) those that take the frame to a 4 x 4
    grid of tokens, refusing sides that are not 4 * 2^s."""
    if stages is not None:
        return int(stages)
    height, width = image_size
    side = min(height, width)
    count = max(0, (side // 4).bit_length() - 1)
    if count < 1 or height % (4 * 2**count) or width % (4 * 2**count) or side != 4 * 2**count:
        raise IncompatibleSpaceError(
            f"the tokenizer makes a 4 x 4 grid of tokens from square frames of side 4 * 2^s (16, 32, 64, ...);"
            f" got {height} x {width}: set `stages` (e.g. 2 halvings of 16 x 16) or resize the frames"
        )
    return count


# ----------------------------------------------------------------------------------------------
# Tokenizer: conv encoder -> vector quantiser -> conv decoder


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv 3x3, twice, plus the input (the VQGAN / IRIS residual block;
    `groups` None: gcd(channels, 8))."""

    def __init__(self, channels: int, groups: int | None = None, eps: float = 1e-5):
        super().__init__()
        groups = math.gcd(channels, 8) if groups is None else groups
        self.layers = nn.Sequential(
            nn.GroupNorm(groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def compact_networks(
    image_channels: int, widths: TokenSizes, stages: int, side: int, patch: bool
) -> tuple[nn.Sequential, nn.Sequential]:
    """The "conv" (or, with `patch`, "patch") encoder and the decoder of `Tokenizer`."""
    channels = widths.channels

    def blocks_at(side: int) -> list[nn.Module]:
        count = widths.residual_blocks if side <= widths.residual_max_side else 0
        return [ResidualBlock(channels) for _ in range(count)]

    factor = 2**stages
    if patch:  # one patch per token, read by 1 x 1 convolutions: an MLP per patch
        encoder: list[nn.Module] = [nn.Conv2d(image_channels, channels, factor, stride=factor), nn.SiLU()]
        encoder += [nn.Conv2d(channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, widths.code_size, 1)]
    else:
        encoder = [nn.Conv2d(image_channels, channels, 3, padding=1)]
        for stage in range(stages):
            encoder += blocks_at(side >> stage)
            encoder.append(nn.Conv2d(channels, channels, 4, stride=2, padding=1))
        encoder += blocks_at(side >> stages)
        encoder += [
            nn.GroupNorm(math.gcd(channels, 8), channels),
            nn.SiLU(),
            nn.Conv2d(channels, widths.code_size, 1),
        ]
    decoder: list[nn.Module] = [nn.Conv2d(widths.code_size, channels, 3, padding=1)]
    decoder += blocks_at(side >> stages)
    for stage in reversed(range(stages)):
        decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)]
        decoder += blocks_at(side >> stage)
    decoder += [
        nn.GroupNorm(math.gcd(channels, 8), channels),
        nn.SiLU(),
        nn.Conv2d(channels, image_channels, 3, padding=1),
    ]
    return nn.Sequential(*encoder), nn.Sequential(*decoder)


#: Group norm of IRIS's tokenizer (taming-transformers' Normalize): 32 groups, eps 1e-6.
VQGAN_GROUPS, VQGAN_EPS = 32, 1e-6


def vqgan_networks(
    image_channels: int, widths: TokenSizes, stages: int, side: int, attention_sides: tuple[int, ...]
) -> tuple[nn.Sequential, nn.Sequential]:
    """IRIS's tokenizer networks (its nets.py, from taming-transformers, at one width): the
    encoder and the decoder of `Tokenizer` with encoder "vqgan"."""
    channels, blocks = widths.channels, widths.residual_blocks
    groups = math.gcd(channels, VQGAN_GROUPS)

    def norm() -> nn.GroupNorm:
        return nn.GroupNorm(groups, channels, eps=VQGAN_EPS)

    def residual() -> ResidualBlock:
        return ResidualBlock(channels, groups, VQGAN_EPS)

    def attention() -> SelfAttention2d:
        return SelfAttention2d(channels, heads=1, groups=groups, eps=VQGAN_EPS, add_to="input", zero_output=False)

    def level(side: int, count: int) -> list[nn.Module]:
        with_attention = side in attention_sides
        return [
            module for _ in range(count) for module in ([residual(), attention()] if with_attention else [residual()])
        ]

    def middle() -> list[nn.Module]:
        return [residual(), attention(), residual()]

    encoder: list[nn.Module] = [nn.Conv2d(image_channels, channels, 3, padding=1)]
    for stage in range(stages + 1):
        encoder += level(side >> stage, blocks)
        if stage < stages:  # a stride-2 convolution padded on the right and bottom only, as IRIS's
            encoder += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2)]
    encoder += middle()
    encoder += [norm(), nn.SiLU(), nn.Conv2d(channels, widths.code_size, 3, padding=1)]
    encoder.append(nn.Conv2d(widths.code_size, widths.code_size, 1))  # IRIS's pre-quantisation convolution
    decoder: list[nn.Module] = [
        nn.Conv2d(widths.code_size, widths.code_size, 1),  # IRIS's post-quantisation convolution
        nn.Conv2d(widths.code_size, channels, 3, padding=1),
    ]
    decoder += middle()
    for stage in reversed(range(stages + 1)):
        decoder += level(side >> stage, blocks + 1)
        if stage > 0:
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)]
    decoder += [norm(), nn.SiLU(), nn.Conv2d(channels, image_channels, 3, padding=1)]
    return nn.Sequential(*encoder), nn.Sequential(*decoder)


class Tokenizer(nn.Module):
    """Frames (N, Ch, H, W) in [0, 1] <-> K = (H / 2^s) (W / 2^s) tokens of a V-code book.

    Encoder ("conv"): conv in, then per stage residual blocks and a stride-2 conv; residual
    blocks at the bottom; a 1x1 conv to the code size. The decoder mirrors it with nearest
    upsampling. "vqgan" is IRIS's (taming-transformers' VQGAN without the GAN): per level
    residual blocks, each followed by self-attention where the side is in `attention_sides`; a
    middle of residual block, attention, residual block; a 3x3 then a 1x1 conv to the code size;
    the decoder has one residual block more per level. "patch": one patch per token.
    """

    def __init__(
        self,
        image_channels: int,
        image_size: tuple[int, int],
        widths: TokenSizes,
        stages: int,
        dead_code_threshold: float,
        usage_decay: float = 0.99,
        restart_on: str = "random",
        encoder_kind: str = "conv",
        attention_sides: tuple[int, ...] = (),
    ):
        super().__init__()
        factor = 2**stages
        height, width = image_size
        if height % factor or width % factor:
            raise IncompatibleSpaceError(
                f"the tokenizer halves frames {stages} times, so sides must be divisible by {factor}; got {height} x {width}"
                f" (IRIS: 64 x 64 with 4 stages; set `stages` or resize the frames)"
            )
        self.grid = (height // factor, width // factor)
        self.tokens_per_frame = self.grid[0] * self.grid[1]
        self.image_channels = image_channels
        side = max(height, width)
        if encoder_kind == "vqgan":
            self.encoder, self.decoder = vqgan_networks(image_channels, widths, stages, side, attention_sides)
        else:
            self.encoder, self.decoder = compact_networks(image_channels, widths, stages, side, encoder_kind == "patch")
        self.quantizer = VectorQuantizer(
            widths.codebook_size,
            widths.code_size,
            beta=1.0,
            dead_code_threshold=dead_code_threshold,
            usage_decay=usage_decay,
            restart_on=restart_on,
        )

    def encode(self, frames: torch.Tensor):
        """frames (N, Ch, H, W) in [0, 1] -> `Quantized` with codes (N, K, E) and tokens (N, K)."""
        z = self.encoder(frames * 2 - 1)  # (N, E, h, w)
        return self.quantizer(z.flatten(2).transpose(1, 2))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, K, E) -> frames (N, Ch, H, W), unclamped, ~[0, 1]."""
        N = codes.shape[0]
        grid = codes.transpose(1, 2).reshape(N, -1, *self.grid)
        return self.decoder(grid) * 0.5 + 0.5

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, K) -> frames (N, Ch, H, W) in [0, 1]."""
        return self.decode_codes(self.quantizer.lookup(tokens)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# The world model


class TokenWorldModel(nn.Module):
    """IRIS's world model (with GAIA-1's optional text and action conditioning).

    Random numbers come from `self.generator` (None: torch's global generator) unless `imagine`
    is given one.
    """

    can_decode = True

    def __init__(self, config: TokenWorldModelConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        widths = config.size
        self.generator: torch.Generator | None = None
        # Observation: one uint8 image key.
        if not isinstance(observation_space, spaces.Dict) or config.image_key not in observation_space.spaces:
            raise IncompatibleSpaceError(
                f"the token world model reads a Dict observation with a uint8 image {config.image_key!r}, got {observation_space}"
            )
        image = observation_space[config.image_key]
        if not (isinstance(image, spaces.Box) and image.dtype == "uint8" and len(image.shape) == 3):
            raise IncompatibleSpaceError(
                f"observation {config.image_key!r} must be a uint8 image (H, W, Ch), got {image}"
            )
        self.image_shape = tuple(int(side) for side in image.shape)
        # Action: one-hot of a Discrete space, or a Box scaled to [-1, 1] when allowed.
        if isinstance(action_space, spaces.Box) and not config.continuous_actions:
            raise IncompatibleSpaceError(
                f"IRIS's token world model takes a Discrete action space, got the continuous {action_space};"
                " set continuous_actions=True (GAIA-1's linear action embedding) to accept it"
            )
        self.action_size, self.discrete = action_layout(action_space, "the token world model", bounded=True)
        self.action_bounds = None if self.discrete else BoxBounds(action_space, min_half_range=1e-6)

        self.stages = grid_stages(self.image_shape[:2], config.stages)
        self.tokenizer = Tokenizer(
            self.image_shape[2],
            self.image_shape[:2],
            widths,
            self.stages,
            config.dead_code_threshold,
            config.usage_decay,
            config.restart_on,
            config.encoder,
            config.attention_sides,
        )
        K = self.tokens_per_frame = self.tokenizer.tokens_per_frame
        self.context = widths.context
        self.text_size = int(config.text_size)
        self.offset = 1 if self.text_size else 0  # position of the action token in a block
        self.tokens_per_step = K + 1 + self.offset
        D = widths.width
        self.transformer = Transformer(
            TransformerConfig(
                layers=widths.layers,
                heads=widths.heads,
                width=D,
                max_tokens=self.context * self.tokens_per_step,
                dropout=config.dropout,
                causal=True,
            )
        )
        self.token_embedding = nn.Embedding(widths.codebook_size, D)
        self.action_embedding = nn.Linear(self.action_size, D)
        self.null_action = nn.Parameter(torch.zeros(D))
        if self.text_size:
            self.text_embedding = nn.Linear(self.text_size, D)
            self.null_text = nn.Parameter(torch.zeros(D))
        self.text_normalizer = RunningNormalizer(self.text_size) if self.text_size and config.text_standardize else None
        self.two_hot = TwoHot() if config.reward_head == "twohot" else None

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, out))

        self.token_head = head(widths.codebook_size)
        self.reward_head = head(3 if self.two_hot is None else self.two_hot.bins)
        self.end_head = head(1)
        for module in (self.token_embedding, self.action_embedding):
            nn.init.normal_(module.weight, std=0.02)
        # The action embedding starts as IRIS's (an embedding table of std 0.02): a Linear's default
        # bias (uniform, +-1/sqrt(A)) would be about 16 times the actions' own columns, shared by every
        # action, and the transformer would see nearly the same action token whatever was done.
        nn.init.zeros_(self.action_embedding.bias)

    @property
    def device(self) -> torch.device:
        return self.null_action.device

    @property
    def conditioned(self) -> bool:
        """Whether classifier-free guidance has something to drop."""
        return bool(self.text_size) or self.config.action_dropout > 0

    # --- states ------------------------------------------------------------------------------

    def initial(self, batch_size: int) -> State:
        """The empty state (B, ...): no frame yet (history_length 0)."""
        B, K, C = batch_size, self.tokens_per_frame, self.context
        state = {
            "tokens": torch.zeros(B, K, dtype=torch.long, device=self.device),
            "latent": torch.zeros(B, K * self.config.size.code_size, device=self.device),
            "history": torch.zeros(B, C, K, dtype=torch.long, device=self.device),
            "history_actions": torch.zeros(B, C, self.action_size, device=self.device),
            "history_length": torch.zeros(B, dtype=torch.long, device=self.device),
            "window": torch.zeros(B, dtype=torch.long, device=self.device),
        }
        if self.text_size:
            state["text"] = torch.zeros(B, self.text_size, device=self.device)
        return state

    @staticmethod
    def features(state: State) -> torch.Tensor:
        """(..., K * E): the codes of the current frame."""
        return state["latent"]

    def with_text(self, state: State, text: Any) -> State:
        """The state with its text embedding (B, Dt) replaced (the prompt of what follows)."""
        if not self.text_size:
            raise ShapeError("this token model is not text-conditioned (text_size is 0)")
        text = torch.as_tensor(text, device=self.device).float()
        check_shape("text", text, (state["tokens"].shape[0], self.text_size))
        # A carried key-value cache holds the old text's keys: drop it.
        return {**{name: value for name, value in state.items() if name not in CACHE_KEYS}, "text": text}

    def encode_action(self, action: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """Environment actions -> (*leading, A): one-hot from indices (or kept when given one-hot),
        Box actions scaled from their bounds to [-1, 1] and clipped."""
        action = torch.as_tensor(action, device=self.device)
        if not self.discrete:
            check_shape("action", action, (*leading, self.action_size), sizes)
            return self.action_bounds.to_unit(action.float()).clamp(-1, 1)
        return discrete_action_input(action, self.action_size, leading, sizes, check_range=True)

    def frames(self, obs: dict, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """obs[image_key] uint8 (*leading, H, W, Ch) -> floats (N, Ch, H, W) in [0, 1], N = prod(leading)."""
        key = self.config.image_key
        if key not in obs:
            raise ShapeError(f"obs has no {key!r} key (keys: {', '.join(obs)})")
        image = torch.as_tensor(obs[key], device=self.device)
        check_shape(f"obs[{key!r}]", image, (*leading, *self.image_shape), sizes)
        return image.reshape(-1, *self.image_shape).permute(0, 3, 1, 2).float() / 255.0

    @torch.no_grad()
    def tokenize(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (N, H, W, Ch) -> (tokens (N, K), codes (N, K * E))."""
        frames = torch.as_tensor(images, device=self.device)
        check_shape("images", frames, ("N", *self.image_shape))
        quantized = self.tokenizer.encode(frames.permute(0, 3, 1, 2).float() / 255.0)
        return quantized.indices, quantized.quantized.flatten(1)

    def observe(
        self, obs: dict, action: Any, is_first: Any, state: State | None = None, text: Any = None
    ) -> tuple[State, State]:
        """Filter a real sequence: obs {image_key: (B, T, H, W, Ch)}, action (B, T, A) or indices
        (B, T) (the action that led to each frame), is_first (B, T), text (B, Dt) when
        text-conditioned -> (states over time (B, T, ...), last state (B, ...)). Filtering a
        token model is tokenizing the frames and keeping the last C steps of the episode."""
        sizes: dict[str, int] = {}
        frames = self.frames(obs, ("B", "T"), sizes)
        actions = self.encode_action(action, ("B", "T"), sizes)
        is_first = episode_starts(is_first, self.device, sizes)
        B, T = sizes["B"], sizes["T"]
        state = self.initial(B) if state is None else state
        if text is not None:
            state = self.with_text(state, text)
        was_training = self.tokenizer.training
        self.tokenizer.eval()  # filtering must not restart codes or move usage statistics
        with torch.no_grad():
            quantized = self.tokenizer.encode(frames)
        self.tokenizer.train(was_training)
        tokens = quantized.indices.reshape(B, T, -1)
        codes = quantized.quantized.reshape(B, T, -1)
        actions = actions * (~is_first).float()[..., None]
        steps = []
        for t in range(T):
            state = self._push(state, tokens[:, t], codes[:, t], actions[:, t], is_first[:, t])
            steps.append(state)
        states = {name: torch.stack([step[name] for step in steps], 1) for name in steps[0]}
        return states, state

    def _push(
        self, state: State, tokens: torch.Tensor, codes: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor
    ) -> State:
        """Append one step (tokens (B, K), codes (B, K * E), the action that led to it (B, A))
        to the history; is_first (B,) forgets the earlier steps."""
        length = torch.where(is_first, torch.zeros_like(state["history_length"]), state["history_length"])
        pushed = {
            **state,
            "tokens": tokens,
            "latent": codes,
            "history": torch.cat([state["history"][:, 1:], tokens[:, None]], 1),
            "history_actions": torch.cat([state["history_actions"][:, 1:], action[:, None]], 1),
            "history_length": (length + 1).clamp_max(self.context),
            "window": (torch.where(is_first, 0, state.get("window", length)) + 1).clamp_max(self.context),
        }
        return pushed

    # --- the sequence ------------------------------------------------------------------------

    def embed_steps(
        self,
        tokens: torch.Tensor,
        actions: torch.Tensor,
        text: torch.Tensor | None,
        drop_text: torch.Tensor | None,
        drop_action: torch.Tensor | None,
    ) -> torch.Tensor:
        """Blocks of tokens (B, T, K), actions (B, T, A), text (B, Dt) or per step (B, T, Dt) -> embeddings (B, T * P, D):
        per step [text?, action, frame tokens]. drop_text / drop_action (B,) bool put the null
        embeddings in place of the sequence's text / actions."""
        B, T = tokens.shape[:2]
        action_embedding = self.action_embedding(actions)  # (B, T, D)
        if drop_action is not None:
            action_embedding = torch.where(
                drop_action[:, None, None], self.null_action.expand_as(action_embedding), action_embedding
            )
        frame_embedding = self.token_embedding(tokens)  # (B, T, K, D)
        if self.config.action_in_tokens:
            frame_embedding = frame_embedding + action_embedding[:, :, None]
        parts = [action_embedding[:, :, None], frame_embedding]
        if self.text_size:
            if text is None:
                raise ShapeError(
                    "this token model is text-conditioned: pass text (B, Dt) (the null text is dropped conditioning)"
                )
            text = text.float()
            if self.text_normalizer is not None:
                text = self.text_normalizer.normalize(text)
            text_embedding = self.text_embedding(text)
            text_embedding = (text_embedding[:, None] if text_embedding.dim() == 2 else text_embedding)[
                :, :, None
            ].expand(B, T, 1, -1)
            if drop_text is not None:
                text_embedding = torch.where(
                    drop_text[:, None, None, None], self.null_text.expand_as(text_embedding), text_embedding
                )
            parts.insert(0, text_embedding)
        return torch.cat(parts, 2).reshape(B, T * self.tokens_per_step, -1)

    def episode_positions(self, is_first: torch.Tensor) -> torch.Tensor:
        """Token positions (B, T * P) counted from the start of each token's episode in the
        window (is_first (B, T)), so a frame sits at the same position in training and in
        imagination, whatever came before its episode."""
        T = is_first.shape[1]
        steps = torch.arange(T, device=is_first.device)[None].expand_as(is_first)
        starts = (
            torch.where(is_first, steps, torch.zeros_like(steps)).cummax(1).values
        )  # last episode start at or before t
        within = torch.arange(self.tokens_per_step, device=is_first.device)
        return ((steps - starts)[..., None] * self.tokens_per_step + within).flatten(1)

    def step_mask(self, valid: torch.Tensor, queries: int) -> torch.Tensor:
        """Attention mask (B, queries, T * P) from valid steps (B, T): keys of invalid steps are hidden."""
        keys = valid.repeat_interleave(self.tokens_per_step, dim=1)
        return keys[:, None, :].expand(-1, queries, -1)

    def heads(self, features: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transformer outputs (B, T * P, D) -> (token logits (B, T, K, V) for each step's frame
        tokens, reward outputs (B, T, 3 or bins), end logits (B, T)) read where IRIS reads them:
        the action token and the frame tokens before the last predict the frame's tokens."""
        B = features.shape[0]
        blocks = features.reshape(B, T, self.tokens_per_step, -1)
        predictors = blocks[
            :, :, self.offset : self.offset + self.tokens_per_frame
        ]  # action token + K - 1 frame tokens
        at_action = blocks[:, :, self.offset]
        return self.token_head(predictors), self.reward_head(at_action), self.end_head(at_action)[..., 0]

    def calibrated(self, reward_output: torch.Tensor, end_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward head's output (..., 3 or bins) and end logits (...) with the loss's event
        weighting undone (`loss_scales.sparse_weight`; wmlab.losses.events.calibrated_logits;
        the two-hot head is not weighted): what `imagine` uses."""
        sparse = self.config.loss_scales.sparse_weight
        if self.two_hot is None:
            reward_output = calibrated_logits(reward_output, (0, 2), sparse)
        return reward_output, calibrated_logits(end_logit, None, sparse)

    def calibrated_token_logits(self, logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Token logits (..., V) with the loss's weighting of changed tokens undone
        (`loss_scales.changed_tokens`): log w added to the logit of the previous frame's token at
        the same position, previous (...) (the logits unchanged when w is 1)."""
        weight = self.config.loss_scales.changed_tokens
        if weight == 1.0:
            return logits
        return logits + math.log(weight) * F.one_hot(previous, logits.shape[-1]).to(logits.dtype)

    def reward_value(self, output: torch.Tensor) -> torch.Tensor:
        """Expected reward (...) from the reward head's output (..., 3 or bins)."""
        if self.two_hot is not None:
            return self.two_hot.decode(output)
        return (output.softmax(-1) * torch.tensor([-1.0, 0.0, 1.0], device=output.device)).sum(-1)

    # --- imagination -------------------------------------------------------------------------

    @torch.no_grad()
    def imagine(
        self,
        state: State,
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
        temperature: float | None = None,
        guidance_scale: float = 1.0,
        use_actions: bool = True,
        use_cache: bool = True,
        decode: bool = False,
        generator: torch.Generator | None = None,
    ) -> Trajectory:
        """Roll forward from state (B, ...) with actions (B, L, A) (indices (B, L) when discrete)
        or a policy(state) -> action (B, A) | (B,), sampling every token from softmax(logits /
        temperature) (None: the config's; 0: argmax) with classifier-free guidance at
        `guidance_scale` for conditioned models (1: conditional). use_actions False puts the null
        action everywhere (generation from text alone; the actions only set the horizon). use_cache False recomputes the
        whole window for every token (the slow reference). Step l of the result is the state
        reached by action l: states (B, L, ...), actions (B, L, A), rewards (B, L), continues
        (B, L), observations when `decode`. With the cache, the last state also carries it
        ("kv_keys", "kv_values", "kv_steps", "kv_signature"), so that a call continuing from that
        state (a stepper's imagine(horizon=1)) costs one step of tokens, not the whole window."""
        sizes = check_shape("state['tokens']", state["tokens"], ("B", self.tokens_per_frame))
        check_shape("state['history']", state["history"], ("B", self.context, self.tokens_per_frame), sizes)
        B = sizes["B"]
        choose, horizon = action_source(actions_or_policy, horizon, sizes, self.encode_action)
        temperature = self.config.temperature if temperature is None else float(temperature)
        generator = generator if generator is not None else self.generator
        guided = self.conditioned and guidance_scale != 1.0
        if not use_actions and self.config.action_dropout == 0:
            raise ValueError(
                "use_actions=False needs a model trained with action_dropout > 0 (its null action is untrained otherwise)"
            )
        K, C, P = self.tokens_per_frame, self.context, self.tokens_per_step
        text = state.get("text") if self.text_size else None

        # Streams: the conditional rows, and with guidance the same rows with conditioning dropped.
        streams = 2 if guided else 1
        no_drop = torch.zeros(B, dtype=torch.bool, device=self.device)
        drop_text = drop_action = None
        if guided:
            drops_text = self.config.guided in ("text", "both") and self.text_size > 0
            drops_action = self.config.guided in ("action", "both")
            drop_text = torch.cat([no_drop, no_drop | drops_text]) if self.text_size else None
            drop_action = torch.cat([no_drop | (not use_actions), no_drop | drops_action | (not use_actions)])
            text = None if text is None else text.repeat(2, 1)
        elif not use_actions:
            drop_action = ~no_drop

        def rows(x):
            return x.repeat(streams, *([1] * (x.dim() - 1))) if streams > 1 else x

        # The step sequence: the history, then the imagined steps. Each row sees its last
        # `row_window` steps; the batch's window spans the longest, the others padded on the left
        # (masked), so a row's predictions do not depend on the other rows.
        row_window = torch.minimum(state.get("window", state["history_length"]), state["history_length"])
        all_tokens = [state["history"][:, c] for c in range(C)]
        all_actions = [state["history_actions"][:, c] for c in range(C)]
        signature = self._cache_signature(streams, use_actions)
        carried = self._carried_cache(state, signature, streams, int(row_window.max())) if use_cache else None
        if carried is not None:
            cache, span = carried
            fed = span * P - 1  # every token of the window but the current frame's last
        else:
            cache, fed = None, 0
            span = max(1, int(row_window.max()))
        window_start = C - span
        keep = self.refresh_keep
        current = state
        steps, taken, rewards, ends = [], [], [], []
        memo: dict[str, Any] = {}

        def window_sequence(new_tokens: list[torch.Tensor], action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Embeddings (S*B, n, D) and key mask (S*B, n) of the window: its complete steps
            (embedded once per step), then the step in progress."""
            count = len(all_tokens) - window_start
            if memo.get("window") != (window_start, count):
                tokens = torch.stack(all_tokens[window_start:], 1)
                acts = torch.stack(all_actions[window_start:], 1)
                valid = torch.arange(count, device=self.device)[None] >= (count - row_window)[:, None]  # (B, n)
                memo["embedded"] = self.embed_steps(rows(tokens), rows(acts), text, drop_text, drop_action)
                memo["keys"] = rows(valid).repeat_interleave(P, 1)
                # Rows padded on the left count positions from their first valid step.
                memo["padding"] = rows((~valid).long().sum(1)) * P
                memo["window"] = (window_start, count)
            done = len(new_tokens)
            partial_tokens = torch.zeros(B, 1, K, dtype=torch.long, device=self.device)
            if done:
                partial_tokens[:, 0, :done] = torch.stack(new_tokens, 1)
            partial = self.embed_steps(rows(partial_tokens), rows(action[:, None]), text, drop_text, drop_action)[
                :, : self.offset + 1 + done
            ]
            keys = torch.cat([memo["keys"], torch.ones(partial.shape[:2], dtype=torch.bool, device=self.device)], 1)
            return torch.cat([memo["embedded"], partial], 1), keys

        for index in range(horizon):
            action = choose(index, current)
            # A row whose window is full restarts from its last `keep` steps (and the cache with it).
            full = row_window + 1 > C
            if bool(full.any()):
                row_window = torch.where(full, keep, row_window)
                window_start = len(all_tokens) - max(1, int(row_window.max()))
                cache = None
                memo.clear()
            new_tokens: list[torch.Tensor] = []
            reward_output = end_logit = None
            for position in range(K):
                sequence, keys = window_sequence(new_tokens, action)
                total = sequence.shape[1]
                if use_cache and cache is None:
                    cache, fed = self.transformer.new_cache(sequence.shape[0], self.device), 0
                start = fed if use_cache else 0
                positions = (torch.arange(start, total, device=self.device)[None] - memo["padding"][:, None]).clamp_min(
                    0
                )
                mask = keys[:, None, :].expand(-1, total - start, -1)
                features = self.transformer(
                    sequence[:, start:], mask=mask, cache=cache if use_cache else None, positions=positions
                )
                if use_cache:
                    fed = total
                last = features[:, -1]  # (S*B, D): predicts frame token `position`
                logits = self.calibrated_token_logits(self.token_head(last), rows(all_tokens[-1][:, position]))
                if position == 0:
                    reward_output, end_logit = self.calibrated(
                        self.reward_head(last[:B]), self.end_head(last[:B])[..., 0]
                    )
                if guided:
                    logits = logits[B:] + guidance_scale * (logits[:B] - logits[B:])
                new_tokens.append(self.sample(logits, temperature, generator))
            tokens = torch.stack(new_tokens, 1)
            codes = self.tokenizer.quantizer.lookup(tokens).flatten(1)
            all_tokens.append(tokens)
            all_actions.append(action)
            row_window = row_window + 1
            current = self._push(current, tokens, codes, action, torch.zeros(B, dtype=torch.bool, device=self.device))
            current["window"] = row_window
            for name in CACHE_KEYS:
                current.pop(name, None)
            steps.append(current)
            taken.append(action)
            rewards.append(self.reward_value(reward_output))
            ends.append(end_logit)
        states = {name: torch.stack([step[name] for step in steps], 1) for name in steps[0]}
        if use_cache and cache is not None:
            states.update(self._cache_in_states(cache, len(all_tokens) - window_start, signature, streams, horizon))
        end_logits = torch.stack(ends, 1)
        return Trajectory(
            states=states,
            actions=torch.stack(taken, 1),
            rewards=torch.stack(rewards, 1),
            continues=1.0 - torch.sigmoid(end_logits),
            observations=self.decode(states) if decode else None,
            extras={"end_logits": end_logits},
        )

    # --- the key-value cache carried in states ----------------------------------------------

    @property
    def refresh_keep(self) -> int:
        """Steps an imagination window keeps when it fills the context and restarts."""
        keep = self.config.refresh_keep
        return max(1, self.context // 2) if keep is None else min(int(keep), self.context - 1)

    def _cache_signature(self, streams: int, use_actions: bool) -> int:
        """What a carried cache must have been made under: these weights (their in-place update
        counters: an optimiser step or load_state_dict changes them), the same streams and
        actions, and no dropout."""
        version = sum(parameter._version for parameter in self.parameters())
        return ((version * 4 + streams) * 2 + int(use_actions)) * 2 + int(self.training)

    def _carried_cache(self, state: State, signature: int, streams: int, span: int) -> tuple[KeyValueCache, int] | None:
        """(a copy of the cache of S*B rows, its window in steps) from a state that carries a
        valid one made under `signature` over the `span` steps the rows' windows need, else None."""
        if not all(name in state for name in CACHE_KEYS):
            return None
        steps, signatures = state["kv_steps"], state["kv_signature"]
        window = int(steps[0])
        valid = window >= 1 and window == max(1, span) and window <= self.context
        if not valid or bool((steps != window).any()) or bool((signatures != signature).any()):
            return None
        keys, values = state["kv_keys"], state["kv_values"]
        B, layers = keys.shape[0], self.config.size.layers
        if keys.shape[1] != streams * layers:
            return None
        cache = self.transformer.new_cache(streams * B, self.device)

        def per_layer(tensor: torch.Tensor) -> list[torch.Tensor]:
            # (B, S * layers, H, N, Dh) -> layers x (S * B, H, N, Dh), copied: the state stays as it was.
            split = tensor.reshape(B, streams, layers, *tensor.shape[2:]).permute(2, 1, 0, 3, 4, 5)
            return list(split.reshape(layers, streams * B, *tensor.shape[2:]).clone().unbind(0))

        cache.keys, cache.values = per_layer(keys), per_layer(values)
        cache.length = window * self.tokens_per_step - 1
        return cache, window

    def _cache_in_states(
        self, cache: KeyValueCache, window: int, signature: int, streams: int, horizon: int
    ) -> dict[str, torch.Tensor]:
        """The cache as state entries over L steps (B, L, ...): valid in the last step only
        (kv_steps 0 before it), its tensors views of one copy."""
        layers = len(cache.keys)
        B = cache.batch_size // streams

        def per_row(tensors: list[torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack(tensors)  # (layers, S * B, H, N, Dh)
            stacked = stacked.reshape(layers, streams, B, *stacked.shape[2:]).permute(2, 1, 0, 3, 4, 5)
            return stacked.reshape(B, streams * layers, *stacked.shape[3:])[:, None].expand(B, horizon, -1, -1, -1, -1)

        steps = torch.zeros(B, horizon, dtype=torch.long, device=self.device)
        steps[:, -1] = window
        return {
            "kv_keys": per_row(cache.keys),
            "kv_values": per_row(cache.values),
            "kv_steps": steps,
            "kv_signature": torch.full((B, horizon), signature, dtype=torch.long, device=self.device),
        }

    @staticmethod
    def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens (B,) from logits (B, V) at a temperature (0: argmax)."""
        if temperature == 0:
            return logits.argmax(-1)
        probabilities = (logits.float() / temperature).softmax(-1)
        return torch.multinomial(probabilities, 1, generator=generator)[:, 0]

    def decode(self, state: State) -> dict[str, torch.Tensor]:
        """Frames of states (..., K tokens) -> {image_key: (..., H, W, Ch) float in [0, 1]}."""
        tokens = state["tokens"] if isinstance(state, dict) else state
        leading = tokens.shape[:-1]
        frames = self.tokenizer.decode(tokens.reshape(-1, self.tokens_per_frame))
        return {self.config.image_key: frames.permute(0, 2, 3, 1).reshape(*leading, *self.image_shape)}

    # --- learning ----------------------------------------------------------------------------

    def loss(self, batch: Batch, text: Any = None, drop: str | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) for B windows of T <= C steps, with text embeddings (B, Dt) or
        per step (B, T, Dt) (GAIA-1's captions) when text-conditioned; see `loss_terms`."""
        total, metrics = self.loss_terms(batch, text, drop)
        return total, {name: float(value) for name, value in zip(metrics, torch.stack(list(metrics.values())).tolist())}

    def foreground_weights(self, frames: torch.Tensor) -> torch.Tensor:
        """Pixel weights (N, 1, H, W) of frames (N, Ch, H, W): 1 + loss_scales.foreground where a
        pixel differs (by more than 0.1 in any channel) from the batch's background, the
        per-pixel median of its N frames (all ones when foreground is 0 or N is 1)."""
        scale = self.config.loss_scales.foreground
        if scale <= 0 or frames.shape[0] < 2:
            return torch.ones_like(frames[:, :1])
        return foreground_weights(frames, 1.0 + scale, threshold=0.1, background="median")

    def tokenizer_terms(self, frames: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any, torch.Tensor]:
        """The tokenizer's loss terms for frames (N, Ch, H, W) in [0, 1], pixels weighted by
        `foreground_weights`: ({reconstruction, squared_error, codebook, commitment}, the
        `Quantized` result, reconstructions (N, Ch, H, W))."""
        quantized = self.tokenizer.encode(frames)
        reconstruction = self.tokenizer.decode_codes(quantized.quantized)
        error = reconstruction - frames
        weights = self.foreground_weights(frames)
        terms = {
            "reconstruction": (weights * error.abs()).mean(),
            "squared_error": (weights * error.pow(2)).mean(),
            "codebook": quantized.codebook_loss,
            "commitment": quantized.commitment_loss,
        }
        return terms, quantized, reconstruction

    def tokenizer_loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any, torch.Tensor]:
        """The tokenizer's own step (IRIS trains it apart from the transformer): (the terms of
        `tokenizer_terms` weighted by loss_scales, the terms, the `Quantized` result,
        reconstructions (N, Ch, H, W)) for frames (N, Ch, H, W) in [0, 1]."""
        terms, quantized, reconstruction = self.tokenizer_terms(frames)
        scales = self.config.loss_scales
        return sum(getattr(scales, name) * terms[name] for name in TOKENIZER_TERMS), terms, quantized, reconstruction

    def loss_terms(
        self, batch: Batch, text: Any = None, drop: str | None = None, tokenizer: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, metrics as 0-d tensors). The tokenizer learns to reconstruct every frame;
        the transformer learns, on the tokenizer's (detached) tokens, each frame's tokens, reward
        and end flag from the steps before it in the same episode. Steps that start an episode
        (and the first step of each window) have no earlier frame and are not predicted. `drop`
        ("text", "action", "both") puts the null embeddings in every row: the unconditional
        model's loss, for evaluation. `tokenizer` False leaves the tokenizer's terms out and
        tokenizes without gradients or code restarts (IRIS's separate world-model step)."""
        if drop not in (None, "text", "action", "both"):
            raise ValueError(f"drop must be None, text, action or both, got {drop!r}")
        config, scales = self.config, self.config.loss_scales
        sizes: dict[str, int] = {}
        frames = self.frames(batch.obs, ("B", "T"), sizes)
        actions = self.encode_action(batch.action, ("B", "T"), sizes)
        B, T = sizes["B"], sizes["T"]
        if T > self.context:
            raise ShapeError(f"batch: windows of T={T} steps exceed the model's context of {self.context} steps")
        reward, is_first, is_terminal = step_signals(batch, self.device, sizes)
        if self.text_size:
            if text is None:
                raise ShapeError("this token model is text-conditioned: loss needs text (B, Dt) or per step (B, T, Dt)")
            text = torch.as_tensor(text, device=self.device).float()
            check_shape("text", text, ("B", self.text_size) if text.dim() == 2 else ("B", "T", self.text_size), sizes)
            if self.text_normalizer is not None and self.training:
                self.text_normalizer.update(text)

        if tokenizer:
            terms, quantized, reconstruction = self.tokenizer_terms(frames)
        else:
            terms, reconstruction = {}, None
            was_training = self.tokenizer.training
            self.tokenizer.eval()
            with torch.no_grad():
                quantized = self.tokenizer.encode(frames)
            self.tokenizer.train(was_training)
        tokens = quantized.indices.detach().reshape(B, T, -1)

        actions = actions * (~is_first).float()[..., None]
        drop_text = drop_action = None
        if self.training and self.text_size and config.text_dropout > 0:
            drop_text = torch.rand(B, device=self.device) < config.text_dropout
        if self.training and config.action_dropout > 0:
            drop_action = torch.rand(B, device=self.device) < config.action_dropout
        everything = torch.ones(B, dtype=torch.bool, device=self.device)
        if drop in ("text", "both") and self.text_size:
            drop_text = everything
        if drop in ("action", "both"):
            drop_action = everything
        sequence = self.embed_steps(tokens, actions, text, drop_text, drop_action)
        # Tokens attend within their own episode only.
        episode = is_first.long().cumsum(1).repeat_interleave(self.tokens_per_step, 1)  # (B, T * P)
        mask = episode[:, :, None] == episode[:, None, :]
        positions = self.episode_positions(is_first)
        token_logits, reward_output, end_logit = self.heads(
            self.transformer(sequence, mask=mask, positions=positions), T
        )

        predicted = ~is_first
        predicted[:, 0] = False
        weight = predicted.float()
        count = weight.sum().clamp_min(1.0)
        token_loss = F.cross_entropy(token_logits.flatten(0, 2), tokens.flatten(), reduction="none").reshape(B, T, -1)
        previous = torch.cat([tokens[:, :1], tokens[:, :-1]], 1)  # (B, T, K): defined where a step is predicted
        if scales.changed_tokens != 1.0:
            changed = (tokens != previous).float()
            token_loss = token_loss * (1.0 + (scales.changed_tokens - 1.0) * changed)
        terms["tokens"] = (token_loss.mean(-1) * weight).sum() / count
        if self.two_hot is not None:
            reward_loss = self.two_hot.loss(reward_output, reward)
        else:
            reward_loss = F.cross_entropy(
                reward_output.flatten(0, 1), (torch.sign(reward) + 1).long().flatten(), reduction="none"
            ).reshape(B, T)
        sparse = scales.sparse_weight
        reward_events = reward != 0 if self.two_hot is None else torch.zeros_like(reward, dtype=torch.bool)
        terms["reward"] = event_weighted_mean(reward_loss, reward_events, sparse, weight)
        terms["end"] = event_weighted_mean(
            F.binary_cross_entropy_with_logits(end_logit, is_terminal, reduction="none"),
            is_terminal > 0,
            sparse,
            weight,
        )
        total = sum(getattr(scales, name) * value for name, value in terms.items())
        metrics = {f"loss/{name}": value.detach() for name, value in terms.items()}
        metrics["loss/world_model"] = total.detach()
        with torch.no_grad():
            token_logits = self.calibrated_token_logits(token_logits, previous)
            hits = (token_logits.argmax(-1) == tokens).float().mean(-1)
            metrics["wm/token_accuracy"] = (hits * weight).sum() / count
            nll = F.cross_entropy(token_logits.flatten(0, 2), tokens.flatten(), reduction="none").reshape(B, T, -1)
            metrics["wm/token_nll"] = (nll.mean(-1) * weight).sum() / count  # unweighted, as imagination reads it
            reward_output, end_logit = self.calibrated(reward_output, end_logit)
            metrics.update(event_scores("wm/end", (end_logit > 0) & predicted, (is_terminal > 0) & predicted))
            if self.two_hot is None:
                nonzero = reward_output.argmax(-1) != 1
                metrics.update(event_scores("wm/reward", nonzero & predicted, (reward != 0) & predicted))
            if reconstruction is None:
                return total, metrics
            metrics.update({name: value.float() for name, value in quantized.metrics("vq").items()})
            error = (reconstruction.clamp(0, 1) - frames).pow(2).flatten(1).mean(-1).clamp_min(1e-10)
            metrics["wm/reconstruction_psnr"] = (-10 * error.log10()).mean()
        return total, metrics

"""Transformer blocks (GPT-2 / nanoGPT layout), with a key-value cache and adaLN-zero conditioning.

One pre-norm block (Radford et al. 2019; nanoGPT's model.py):

    x = x + Attention(LN(x))          multi-head self-attention, causal or bidirectional
    x = x + MLP(LN(x))                 Linear(D, 4D) -> GELU -> Linear(4D, D)

With a condition vector c (a diffusion time step, a class, a text embedding), adaLN-zero (Peebles
& Xie 2023, DiT, arXiv:2212.09748, Sec. 3.2) replaces the norms' affine parameters by ones
regressed from c and gates each residual branch, the regression initialised at zero so that
every block starts as the identity:

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))
    x = x + gate1 * Attention(LN(x) * (1 + scale1) + shift1)
    x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)

Incremental decoding (autoregressive sampling, a world model's imagination) keeps each layer's
keys and values in a `KeyValueCache`, so a new token costs one query against the cached keys
instead of a forward pass over the whole sequence (IRIS, arXiv:2209.00588, Sec. 2.2). Positions
are learned embeddings; a cached call continues the positions where the cache left off.

`SpatioTemporalBlock` factorises attention over video tokens (B, T, S, D) into a bidirectional
spatial attention within each frame and a causal temporal attention along each position (Genie's
ST-transformer, arXiv:2402.15391, Sec. 2.1), at O(T S^2 + S T^2) rather than O((T S)^2).

Shape legend: B batch, T tokens (time for the spatio-temporal block), S tokens per frame,
D width, H heads, Dh = D / H, P cached positions, Dc condition features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmlab.core.errors import ShapeError


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of pre-norm transformer blocks."""

    layers: int = 4
    """Number of blocks."""
    heads: int = 4
    """Attention heads per block (the width must be divisible by it)."""
    width: int = 128
    """D, the model width."""
    max_tokens: int = 256
    """Longest sequence (and cache) the learned position embedding covers."""
    dropout: float = 0.0
    """Dropout on attention weights, residual branches and the input embedding (training only)."""
    causal: bool = True
    """Each token attends to itself and earlier tokens only (a GPT); False: bidirectional (BERT, ViT, MaskGIT)."""
    condition_size: int = 0
    """Dc: features of a condition vector modulating every block by adaLN-zero; 0 turns it off."""
    bias: bool = True
    """Biases in the linear layers and norms."""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"TransformerConfig: width {self.width} is not divisible by {self.heads} heads")
        if min(self.layers, self.heads, self.width, self.max_tokens) < 1:
            raise ValueError("TransformerConfig: layers, heads, width and max_tokens must be positive")


class KeyValueCache:
    """Keys and values of every layer for B sequences of up to `capacity` tokens.

    keys[layer], values[layer]: (B, H, capacity, Dh), filled up to `length`.
    """

    def __init__(
        self, layers: int, batch_size: int, heads: int, head_size: int, capacity: int, device=None, dtype=torch.float32
    ):
        shape = (batch_size, heads, capacity, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.capacity = capacity
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys / values (B, H, T, Dh) of one layer at positions [length, length + T)
        and return all of that layer's keys / values so far (B, H, length + T, Dh). The length
        advances once every layer has appended (see `advance`)."""
        start, stop = self.length, self.length + keys.shape[2]
        if stop > self.capacity:
            raise ShapeError(
                f"key-value cache: {stop} tokens exceed its capacity of {self.capacity}; reset it or enlarge max_tokens"
            )
        self.keys[layer][:, :, start:stop] = keys
        self.values[layer][:, :, start:stop] = values
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]

    def advance(self, tokens: int) -> None:
        self.length += tokens

    def select_rows(self, rows: torch.Tensor) -> "KeyValueCache":
        """A cache of the chosen batch rows (len(rows), ...) (e.g. to fork sampled continuations)."""
        chosen = KeyValueCache.__new__(KeyValueCache)
        chosen.keys = [key[rows] for key in self.keys]
        chosen.values = [value[rows] for value in self.values]
        chosen.capacity, chosen.length = self.capacity, self.length
        return chosen


class SelfAttention(nn.Module):
    """Multi-head self-attention (B, T, D) -> (B, T, D), optionally through a key-value cache."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, causal: bool = True, bias: bool = True):
        super().__init__()
        self.heads, self.head_size, self.causal, self.dropout = heads, width // heads, causal, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KeyValueCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D); mask (B or 1, T, P + T) bool, True where a query may attend to a key, over
        the P cached and T new keys (combined with the causal mask); cache: appends this call's
        keys and values for `layer`."""
        B, T, D = x.shape
        query, key, value = self.qkv(x).split(D, dim=-1)
        query, key, value = (
            part.view(B, T, self.heads, self.head_size).transpose(1, 2) for part in (query, key, value)
        )
        past = 0
        if cache is not None:
            past = cache.length
            key, value = cache.append(layer, key, value)  # (B, H, P + T, Dh)
        allowed = mask
        if self.causal:
            # Query i sits at absolute position past + i and sees keys 0 .. past + i.
            causal = (
                torch.arange(past + T, device=x.device)[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
            )
            allowed = causal[None] if allowed is None else allowed & causal[None]
        if allowed is not None:
            allowed = allowed[:, None]  # (B or 1, 1, T, P + T): the same for every head
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.residual_dropout(self.out(attended.transpose(1, 2).reshape(B, T, D)))


def zero_modulation(condition_size: int, outputs: int) -> nn.Sequential:
    """adaLN-zero's regression from the condition: SiLU then Linear(Dc, outputs), weights and
    biases initialised at zero so that the conditioned layer starts as the identity."""
    modulation = nn.Sequential(nn.SiLU(), nn.Linear(condition_size, outputs))
    nn.init.zeros_(modulation[1].weight)
    nn.init.zeros_(modulation[1].bias)
    return modulation


class Block(nn.Module):
    """One pre-norm transformer block, with adaLN-zero when condition_size > 0."""

    def __init__(self, config: TransformerConfig, causal: bool | None = None):
        super().__init__()
        width = config.width
        conditioned = config.condition_size > 0
        # adaLN-zero supplies the norms' scale and shift, so they carry no affine parameters.
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not conditioned, bias=config.bias)
        self.attention = SelfAttention(
            width, config.heads, config.dropout, config.causal if causal is None else causal, config.bias
        )
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not conditioned, bias=config.bias)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width, bias=config.bias),
            nn.GELU(),
            nn.Linear(4 * width, width, bias=config.bias),
            nn.Dropout(config.dropout),
        )
        # shift, scale and gate of each of the two branches
        self.modulation = zero_modulation(config.condition_size, 6 * width) if conditioned else None

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KeyValueCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D); condition (B, Dc) or (B, T, Dc) when adaLN-zero is on -> (B, T, D)."""
        if self.modulation is None:
            x = x + self.attention(self.norm1(x), mask, cache, layer)
            return x + self.mlp(self.norm2(x))
        if condition is None:
            raise ShapeError("this block is conditioned (adaLN-zero): pass a condition (B, Dc)")
        parameters = self.modulation(condition)
        if parameters.dim() == 2:
            parameters = parameters[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = parameters.chunk(6, dim=-1)
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1, mask, cache, layer)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Transformer(nn.Module):
    """Embedded tokens (B, T, D) -> features (B, T, D): learned positions, `layers` blocks, a final norm.

    The caller owns the token embeddings and the output heads, so one stack serves a GPT over
    frame and action tokens (IRIS), a bidirectional MaskGIT (Genie) and a DiT over patches.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.position = nn.Embedding(config.max_tokens, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        conditioned = config.condition_size > 0
        self.norm = nn.LayerNorm(config.width, elementwise_affine=not conditioned, bias=config.bias)
        # DiT's final layer: shift and scale from c
        self.final_modulation = zero_modulation(config.condition_size, 2 * config.width) if conditioned else None
        self.apply(_init_weights)

    def new_cache(self, batch_size: int, device=None, dtype=torch.float32) -> KeyValueCache:
        """An empty cache of max_tokens positions for B sequences."""
        config = self.config
        return KeyValueCache(
            config.layers, batch_size, config.heads, config.width // config.heads, config.max_tokens, device, dtype
        )

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KeyValueCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) embedded tokens; condition (B, Dc) or (B, T, Dc) for adaLN-zero; mask
        (B or 1, T, P + T) bool extra attention mask (True: may attend), e.g. to keep episodes
        apart; cache: continue from its P tokens and append these T; positions (B, T) long: each
        token's position embedding (default P .. P + T - 1), e.g. counted from where each row's
        sequence starts when rows are padded on the left."""
        if x.dim() != 3 or x.shape[-1] != self.config.width:
            raise ShapeError(f"transformer input: expected (B, T, {self.config.width}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.max_tokens:
            raise ShapeError(f"transformer input: {past + T} tokens exceed max_tokens={self.config.max_tokens}")
        if cache is not None and cache.batch_size != B:
            raise ShapeError(f"key-value cache holds {cache.batch_size} sequences, the input {B}")
        if positions is None:
            position = self.position(torch.arange(past, past + T, device=x.device))[None]
        else:
            check = (
                positions.shape == (B, T)
                and int(positions.min()) >= 0
                and int(positions.max()) < self.config.max_tokens
            )
            if not check:
                raise ShapeError(
                    f"positions: expected (B, T) = ({B}, {T}) in [0, {self.config.max_tokens}), got {tuple(positions.shape)}"
                )
            position = self.position(positions)
        x = self.dropout(x + position)
        for index, block in enumerate(self.blocks):
            x = block(x, condition, mask, cache, index)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(condition).chunk(2, dim=-1)
            if shift.dim() == 2:
                shift, scale = shift[:, None], scale[:, None]
            x = x * (1 + scale) + shift
        return x


class SpatioTemporalBlock(nn.Module):
    """Factorised attention over video tokens (B, T, S, D) -> (B, T, S, D): a bidirectional block
    across the S tokens of each frame, then a block along the T frames of each position (causal
    when config.causal). No cache: Genie-style models decode a whole frame at a time."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.spatial = Block(config, causal=False)
        self.temporal = Block(config, causal=config.causal)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ShapeError(f"spatio-temporal block input: expected (B, T, S, D), got {tuple(x.shape)}")
        B, T, S, D = x.shape
        spatial_condition = None if condition is None else condition.repeat_interleave(T, 0)
        x = self.spatial(x.reshape(B * T, S, D), spatial_condition).reshape(B, T, S, D)
        temporal_condition = None if condition is None else condition.repeat_interleave(S, 0)
        x = x.transpose(1, 2).reshape(B * S, T, D)
        return self.temporal(x, temporal_condition).reshape(B, S, T, D).transpose(1, 2)


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: normal(0, 0.02) weights, zero biases (adaLN-zero layers keep their zeros)."""
    if isinstance(module, nn.Linear):
        if module.weight.abs().sum() == 0:  # a zero-initialised modulation layer
            return
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)

"""JEPA world model: an action-conditioned predictor in representation space, with no decoder.

An encoder maps each observation to an embedding z_t (a conv encoder for 64 x 64 pixels, an MLP
for vectors); a predictor maps (z_t, a_{t+1}) to z_{t+1}. Training compares predicted and target
embeddings, never pixels, so something must stop the trivial solution where every observation maps
to the same point (collapse). Two remedies, chosen by `collapse_prevention`:

- "vicreg": variance and covariance terms on the embeddings (VICReg, Bardes et al. 2022,
  arXiv:2105.04906, Eqs. 1-4), as the EB-JEPA two-rooms model and PLDM (Sobal et al. 2025,
  arXiv:2502.14819) do, plus a temporal-smoothness term and an optional inverse-dynamics head
  that ties the embedding to what the actions control.
- "ema": targets come from an exponential moving average of the encoder with gradients stopped
  (BYOL / I-JEPA / V-JEPA). The momentum ramps from 0.996 to 1.0 over training, linearly as in
  I-JEPA (arXiv:2301.08243, Sec. 4) or along BYOL's cosine (arXiv:2006.07733, Sec. 3.2).

The predictor is trained two ways at once (V-JEPA 2-AC, arXiv:2506.09985, Sec. 3): teacher
forcing, one step from every encoded z_t, and an open-loop rollout from z_0 over the whole window,
which teaches it to live with its own errors as a planner will make it do.

Collapse diagnostics, logged with every loss: the smallest per-dimension standard deviation of
the embeddings ("jepa/embedding_std_min") and their effective rank ("jepa/effective_rank",
RankMe: exp of the entropy of the normalised singular values; Garrido et al. 2023,
arXiv:2210.02885, Eq. 1). A collapsed encoder has std ~ 0 and rank ~ 1.

Shape legend: B batch, T time, L horizon, A action dim, D embedding, C, H, W image.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, between, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Trajectory
from wmlab.nn.conv import ConvEncoder, ConvStages
from wmlab.nn.mlp import MLP

COLLAPSE_PREVENTIONS = ("vicreg", "ema")
ENCODER_HEADS = ("keypoints", "linear", "spatial", "hybrid")
MOMENTUM_SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class JEPALossScales:
    """Weights of the loss terms, in one place (each is also reported unweighted as `loss/<term>`)."""

    teacher_forcing: float = 1.0
    """One-step prediction from every encoded embedding."""
    rollout: float = 1.0
    """Open-loop multi-step prediction from the first embedding of the window."""
    variance: float = 1.0
    """VICReg variance hinge (vicreg only); Bardes et al. use 25 against an invariance weight of 25."""
    covariance: float = 0.04
    """VICReg off-diagonal covariance (vicreg only); Bardes et al. use 1 against 25, i.e. 0.04."""
    smoothness: float = 1.0
    """Squared distance between consecutive embeddings (PLDM's temporal smoothness; vicreg only).
    With `temporal_variance` on, this is slow feature analysis's slowness term: at 0.1 the
    within-window spread was met by frame-to-frame jitter (one step moved the embedding as far as
    eight), so the spread is made to come from slowly varying features (the agent's position)."""
    inverse_dynamics: float = 1.0
    """Action regressed from (z_t, z_{t+1}) when `inverse_dynamics` is on."""
    temporal_variance: float = 1.0
    """Hinge on the embeddings' spread over time within each window (vicreg only), the variance
    constraint of slow feature analysis (Wiskott & Sejnowski 2002) as a single scalar: VICReg's
    batch variance is met by what differs between episodes (on two-rooms the goal disc and door),
    so the agent, the one thing that moves, kept ~1e-4 of the variance and the predictor's 8-step
    error exceeded the agent's true displacement (ratio 2.8) without it. 0 turns it off."""


@dataclass(frozen=True)
class JEPAConfig(Config):
    """An action-conditioned JEPA world model; the defaults are a small CPU-sized model."""

    limits = ranges(
        counts="embedding_size encoder_depth layout_size keypoints predictor_channels hidden_size predictor_layers"
        " momentum_steps",
        positive="keypoint_temperature temporal_variance_target variance_target",
        fractions="momentum_start",
        momentum_end=between("momentum_start", 1),
    )

    embedding_size: int = 32
    """D, the size of the representation that is predicted and planned in."""
    encoder_depth: int = 16
    """Channels of the first conv stage (pixels); later stages multiply it by `encoder_multipliers`."""
    encoder_multipliers: tuple[int, ...] = (1, 2, 3, 4)
    """Channel multipliers of the stride-2 conv stages: all four (64 x 64 -> 4 x 4) for the
    "linear" head, the first `keypoint_stages` for the "keypoints" head."""
    encoder_head: str = "keypoints"
    """How pixels' conv features become the embedding (images only):
    - "keypoints": a spatial soft-argmax (Levine et al. 2016, arXiv:1504.00702, Sec. 4.1): each of
      `keypoints` feature maps becomes the expected (x, y) of its softmax over positions, and a
      linear layer maps those coordinates to D. Positions of small objects (the two-rooms agent is
      a disc of ~2 pixels radius) are then first-class features;
    - "linear": flatten the 4 x 4 map and project it (DreamerV3-style). On two-rooms it encodes the
      large, per-episode-constant goal disc and door but not the agent: a linear probe of the agent's
      position from its embedding had R^2 < 0.35 after 600 steps;
    - "spatial": keep a feature map as the embedding (PLDM, arXiv:2502.14819, and EB-JEPA's
      two-rooms model): `spatial_stages` conv stages, then a 1 x 1 conv to
      embedding_size / (grid cells) channels, flattened; the predictor is then convolutional
      (`predictor_channels`), so what happens next to the agent (a wall, a door) is local evidence
      shared across positions;
    - "hybrid": both kinds of evidence in one embedding, the moving and the static part of the scene
      apart: the first `embedding_size - layout_size` dimensions are the "keypoints" head on the
      first `keypoint_stages` conv stages (where the agent is, precisely), the last `layout_size`
      the remaining stages flattened and projected as the "linear" head does (the door and goal,
      which the soft-argmax loses: door R^2 0.37-0.72 for keypoints, 0.91-0.98 for a flat map).
      The predictor is the MLP, so planning costs what it costs with keypoints."""
    layout_size: int = 16
    """"hybrid" head: dimensions of the embedding given to the flattened conv map (the layout);
    the rest go to the keypoints."""
    keypoints: int = 32
    """K, feature maps turned into (x, y) coordinates by the "keypoints" head."""
    keypoint_stages: int = 2
    """Conv stages before the soft-argmax (2: 64 x 64 -> 16 x 16)."""
    keypoint_temperature: float = 1.0
    """Initial inverse temperature of the soft-argmax (learned afterwards). (10 was tried on
    two-rooms: sharper maps locked onto the large goal disc and lost the agent.)"""
    spatial_stages: int = 3
    """Conv stages before the "spatial" head (3: 64 x 64 -> an 8 x 8 grid); `embedding_size` must
    be a multiple of the grid's cells (e.g. 512 = 8 channels x 8 x 8)."""
    predictor_channels: int = 32
    """Hidden channels of the convolutional predictor ("spatial" head only)."""
    temporal_variance_target: float = 1.0
    """vicreg: the root of the within-window variance sum_d Var_t(z_t^d) is pushed up to this (see
    `JEPALossScales.temporal_variance`)."""
    hidden_size: int = 256
    """Width of the MLP encoder (vectors), the predictor and the inverse-dynamics head."""
    predictor_layers: int = 2
    """Hidden layers of the predictor MLP."""
    residual_predictor: bool = True
    """Predict z_{t+1} - z_t rather than z_{t+1}: small moves then need small outputs."""
    collapse_prevention: str = "vicreg"
    """"vicreg" (variance/covariance terms) or "ema" (stop-gradient EMA target encoder)."""
    variance_target: float = 1.0
    """gamma of the VICReg variance hinge: each dimension's std is pushed up to this."""
    momentum_start: float = 0.996
    """EMA momentum at step 0 (I-JEPA: 0.996; V-JEPA: 0.998)."""
    momentum_end: float = 1.0
    """EMA momentum at `momentum_steps` and after."""
    momentum_steps: int = 10_000
    """Updates over which the momentum ramps from start to end."""
    momentum_schedule: str = "cosine"
    """"linear" (I-JEPA) or "cosine" (BYOL)."""
    inverse_dynamics: bool = True
    """Add a head that regresses the action from consecutive embeddings."""
    loss_scales: JEPALossScales = field(default_factory=JEPALossScales)
    """Weights of the loss terms."""

    def __post_init__(self):
        super().__post_init__()
        if self.collapse_prevention not in COLLAPSE_PREVENTIONS:
            raise ValueError(
                f"collapse_prevention must be one of {COLLAPSE_PREVENTIONS}, got {self.collapse_prevention!r}"
            )
        if self.momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"momentum_schedule must be one of {MOMENTUM_SCHEDULES}, got {self.momentum_schedule!r}")
        if not 0 <= self.momentum_start <= self.momentum_end <= 1:
            raise ValueError(
                f"need 0 <= momentum_start <= momentum_end <= 1, got {self.momentum_start}, {self.momentum_end}"
            )
        if self.encoder_head not in ENCODER_HEADS:
            raise ValueError(f"encoder_head must be one of {ENCODER_HEADS}, got {self.encoder_head!r}")
        if not 1 <= self.keypoint_stages <= len(self.encoder_multipliers) or self.keypoints < 1:
            raise ValueError("need keypoints >= 1 and 1 <= keypoint_stages <= len(encoder_multipliers)")
        if not 1 <= self.spatial_stages <= len(self.encoder_multipliers) or self.predictor_channels < 1:
            raise ValueError("need 1 <= spatial_stages <= len(encoder_multipliers) and predictor_channels >= 1")
        if self.encoder_head == "hybrid" and not (
            1 <= self.layout_size < self.embedding_size and self.keypoint_stages < len(self.encoder_multipliers)
        ):
            raise ValueError(
                "the hybrid head needs 1 <= layout_size < embedding_size and keypoint_stages < len(encoder_multipliers)"
            )
        if self.embedding_size < 1 or self.momentum_steps < 1:
            raise ValueError("embedding_size and momentum_steps must be at least 1")


# ------------------------------------------------------------------------------ pure functions


def vicreg_variance(embeddings: torch.Tensor, target: float = 1.0, epsilon: float = 1e-4) -> torch.Tensor:
    """mean_j max(0, target - sqrt(Var(z^j) + epsilon)) over embeddings (N, D) (Eq. 1, arXiv:2105.04906)."""
    std = torch.sqrt(embeddings.var(dim=0) + epsilon)
    return F.relu(target - std).mean()


def vicreg_covariance(embeddings: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} C_ij^2 / D, C the (unbiased) covariance of embeddings (N, D) (Eqs. 3-4, arXiv:2105.04906)."""
    N, D = embeddings.shape
    centred = embeddings - embeddings.mean(dim=0)
    covariance = centred.T @ centred / (N - 1)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / D


def temporal_variance(
    embeddings: torch.Tensor, valid: torch.Tensor, target: float = 1.0, epsilon: float = 1e-4
) -> torch.Tensor:
    """max(0, target - sqrt(mean_b sum_d Var_t(z_bt^d) + epsilon)) over windows (B, T, D) that hold
    one episode throughout (valid (B, T-1): 1 while no episode has started since step 0)."""
    whole = valid[:, -1] if valid.shape[1] else torch.ones(embeddings.shape[0], device=embeddings.device)
    centred = embeddings - embeddings.mean(dim=1, keepdim=True)
    spread = centred.pow(2).sum(-1).mean(-1)  # (B,)
    return F.relu(target - torch.sqrt(_masked_mean(spread, whole) + epsilon))


def effective_rank(embeddings: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """exp(-sum_k p_k log p_k), p_k = sigma_k / sum sigma + epsilon, over the singular values of
    embeddings (N, D) (RankMe, arXiv:2210.02885, Eq. 1): between 1 (collapsed) and min(N, D)."""
    singular_values = torch.linalg.svdvals(embeddings.float())
    p = singular_values / (singular_values.sum() + epsilon) + epsilon
    return torch.exp(-(p * p.log()).sum())


def ema_momentum(step: int, start: float, end: float, total_steps: int, schedule: str) -> float:
    """The EMA momentum at `step`: linear (I-JEPA) or cosine, 1 - (1 - start)(cos(pi k/K) + 1)/2
    scaled to reach `end` (BYOL, arXiv:2006.07733, Sec. 3.2); constant at `end` after K steps."""
    progress = min(max(step, 0) / total_steps, 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
    raise ValueError(f"unknown momentum schedule {schedule!r}; choose one of {MOMENTUM_SCHEDULES}")


def scheduled_momentum(config: Any, updates: int) -> float:
    """`ema_momentum` after `updates` target updates, on the schedule of a config's
    momentum_start, momentum_end, momentum_steps and momentum_schedule fields."""
    return ema_momentum(
        updates, config.momentum_start, config.momentum_end, config.momentum_steps, config.momentum_schedule
    )


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    for target_parameter, online_parameter in zip(target.parameters(), online.parameters()):
        target_parameter.lerp_(online_parameter.detach(), 1.0 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)


def collapse_diagnostics(embeddings: torch.Tensor, prefix: str = "jepa") -> dict[str, float]:
    """Per-dimension std (min and mean) and effective rank of embeddings (N, D), as metrics."""
    embeddings = embeddings.detach().reshape(-1, embeddings.shape[-1]).float()
    std = embeddings.std(dim=0) if embeddings.shape[0] > 1 else torch.zeros(embeddings.shape[-1])
    return {
        f"{prefix}/embedding_std_min": float(std.min()),
        f"{prefix}/embedding_std_mean": float(std.mean()),
        f"{prefix}/effective_rank": float(effective_rank(embeddings)),
    }


def is_collapsed(metrics: dict[str, float], prefix: str = "jepa", min_std: float = 1e-3, min_rank: float = 1.5) -> bool:
    """Whether diagnostics say the representation has collapsed (no dimension varies, or all
    variation lies along one direction)."""
    return metrics[f"{prefix}/embedding_std_mean"] < min_std or metrics[f"{prefix}/effective_rank"] < min_rank


# ------------------------------------------------------------------------------ the model


class SpatialSoftArgmax(nn.Module):
    """Flat conv features (B, C*H*W) of shape (C, H, W) -> keypoints (B, 2K): a 1 x 1 conv to K
    maps, a softmax over each map's H*W positions (learned temperature), and the expected (x, y)
    in [-1, 1] (Levine et al. 2016, arXiv:1504.00702, Sec. 4.1)."""

    def __init__(self, feature_shape: tuple[int, int, int], keypoints: int, temperature: float = 1.0):
        super().__init__()
        channels, height, width = feature_shape
        self.feature_shape = tuple(feature_shape)
        self.project = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), -ys.flatten()], dim=-1), persistent=False)  # (H*W, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.project(features.reshape(-1, *self.feature_shape)).flatten(2)  # (B, K, H*W)
        attention = torch.softmax(maps * self.log_temperature.exp(), dim=-1)
        return (attention @ self.grid).flatten(1)  # (B, 2K)


class SpatialHead(nn.Module):
    """Flat conv features (B, C*H*W) of shape (C, H, W) -> a flat feature map (B, C'*H*W): a 1 x 1
    conv to C' channels, the positions kept."""

    def __init__(self, feature_shape: tuple[int, int, int], channels: int):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.project = nn.Conv2d(feature_shape[0], channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features.reshape(-1, *self.feature_shape)).flatten(1)


class HybridHead(nn.Module):
    """Flat conv features (B, C*H*W) of shape (C, H, W) -> [keypoint part, layout part] (B, D): the
    keypoint part a spatial soft-argmax and a linear map to `keypoint_size`; the layout part more
    stride-2 conv stages (`layout_encoder`), flattened and mapped to `layout_size`."""

    def __init__(
        self,
        feature_shape: tuple[int, int, int],
        keypoints: int,
        temperature: float,
        keypoint_size: int,
        layout_encoder: ConvEncoder,
        layout_size: int,
    ):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.keypoints = nn.Sequential(
            SpatialSoftArgmax(feature_shape, keypoints, temperature), nn.Linear(2 * keypoints, keypoint_size)
        )
        self.layout_encoder = layout_encoder
        self.layout = nn.Linear(layout_encoder.features, layout_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        layout = self.layout(self.layout_encoder(features.reshape(-1, *self.feature_shape)))
        return torch.cat([self.keypoints(features), layout], dim=-1)


class ConvPredictor(nn.Module):
    """[z_t, a_{t+1}] (B, C*H*W + A) -> (B, C*H*W): the action broadcast over the grid as A extra
    channels, then three 3 x 3 convs (GroupNorm + SiLU between), as PLDM's predictor conditions a
    conv net on the action."""

    def __init__(self, grid_shape: tuple[int, int, int], action_size: int, hidden_channels: int):
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        self.action_size = action_size
        channels = grid_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(channels + action_size, hidden_channels, 3, padding=1),
            nn.GroupNorm(1, hidden_channels),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.GroupNorm(1, hidden_channels),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, channels, 3, padding=1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        leading = inputs.shape[:-1]
        flat = inputs.reshape(-1, inputs.shape[-1])
        z, action = flat[:, : -self.action_size], flat[:, -self.action_size :]
        channels, height, width = self.grid_shape
        grid = torch.cat(
            [z.reshape(-1, *self.grid_shape), action[:, :, None, None].expand(-1, -1, height, width)], dim=1
        )
        return self.net(grid).reshape(*leading, channels * height * width)


class JEPAWorldModel(nn.Module):
    """Encoder + action-conditioned predictor; states are embeddings (B, D).

    `observation_space` is a Dict with one key: "image" (H, W, C) uint8 or "vector" (D_obs,);
    `action_space` a 1-D Box.
    """

    #: JEPA predicts in representation space; there is no way back to pixels.
    can_decode = False

    def __init__(self, config: JEPAConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
            raise IncompatibleSpaceError(f"the JEPA world model takes a 1-D Box action space, got {action_space}")
        keys = list(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else []
        if keys not in (["image"], ["vector"]):
            raise IncompatibleSpaceError(
                f"the JEPA world model takes a Dict with one 'image' or 'vector' key, got {observation_space}"
            )
        self.observation_key = keys[0]
        self.observation_shape = tuple(observation_space[self.observation_key].shape)
        self.action_size = int(action_space.shape[0])
        D = config.embedding_size
        if self.observation_key == "image":
            height, width, channels = self.observation_shape
            if config.encoder_head == "keypoints":
                multipliers = config.encoder_multipliers[: config.keypoint_stages]
                conv = ConvEncoder(channels, ConvStages(config.encoder_depth, multipliers, image_size=(height, width)))
                self.encoder = nn.Sequential(
                    conv,
                    SpatialSoftArgmax(conv.output_shape, config.keypoints, config.keypoint_temperature),
                    nn.Linear(2 * config.keypoints, D),
                )
            elif config.encoder_head == "hybrid":
                stages = config.keypoint_stages
                conv = ConvEncoder(
                    channels,
                    ConvStages(config.encoder_depth, config.encoder_multipliers[:stages], image_size=(height, width)),
                )
                layout_encoder = ConvEncoder(
                    conv.output_shape[0],
                    ConvStages(
                        config.encoder_depth, config.encoder_multipliers[stages:], image_size=conv.output_shape[1:]
                    ),
                )
                head = HybridHead(
                    conv.output_shape,
                    config.keypoints,
                    config.keypoint_temperature,
                    D - config.layout_size,
                    layout_encoder,
                    config.layout_size,
                )
                self.encoder = nn.Sequential(conv, head)
            elif config.encoder_head == "spatial":
                multipliers = config.encoder_multipliers[: config.spatial_stages]
                conv = ConvEncoder(channels, ConvStages(config.encoder_depth, multipliers, image_size=(height, width)))
                cells = conv.output_shape[1] * conv.output_shape[2]
                if D % cells:
                    raise ValueError(
                        f"the spatial head's {conv.output_shape[1]} x {conv.output_shape[2]} grid needs an embedding_size that is a multiple of {cells}, got {D}"
                    )
                self.grid_shape = (D // cells, *conv.output_shape[1:])
                self.encoder = nn.Sequential(conv, SpatialHead(conv.output_shape, D // cells))
            else:
                stages = ConvStages(config.encoder_depth, config.encoder_multipliers, image_size=(height, width))
                conv = ConvEncoder(channels, stages)
                self.encoder = nn.Sequential(conv, nn.Linear(conv.features, D))
        else:
            if config.encoder_head in ("spatial", "hybrid"):
                raise IncompatibleSpaceError(
                    f"the {config.encoder_head} encoder head needs image observations; vectors take the default head"
                )
            self.encoder = MLP(self.observation_shape[0], D, config.hidden_size, 2, layer_norm=True)
        if config.encoder_head == "spatial":
            self.predictor = ConvPredictor(self.grid_shape, self.action_size, config.predictor_channels)
        else:
            self.predictor = MLP(D + self.action_size, D, config.hidden_size, config.predictor_layers, layer_norm=True)
        self.inverse_dynamics = MLP(2 * D, self.action_size, config.hidden_size, 1) if config.inverse_dynamics else None
        self.target_encoder = None
        if config.collapse_prevention == "ema":
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        #: EMA updates done so far (drives the momentum schedule).
        self.register_buffer("target_updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ encoding and predicting

    def preprocess(self, observation: Any) -> torch.Tensor:
        """(..., H, W, C) uint8 -> (..., C, H, W) float in [-0.5, 0.5]; vectors -> float."""
        x = torch.as_tensor(observation, device=self.device)
        if self.observation_key == "image":
            return x.movedim(-1, -3).float() / 255.0 - 0.5
        return x.float()

    def _encode_with(self, encoder: nn.Module, observation: Any) -> torch.Tensor:
        x = self.preprocess(observation)
        trailing = 3 if self.observation_key == "image" else 1
        leading = x.shape[: x.dim() - trailing]
        expected = (
            self.observation_shape
            if self.observation_key == "vector"
            else (self.observation_shape[2], *self.observation_shape[:2])
        )
        if tuple(x.shape[x.dim() - trailing :]) != expected:
            raise ShapeError(
                f"obs[{self.observation_key!r}]: expected (..., {', '.join(map(str, self.observation_shape))}), got {tuple(torch.as_tensor(observation).shape)}"
            )
        return encoder(x.reshape(-1, *expected)).reshape(*leading, self.config.embedding_size)

    def encode(self, observation: Any) -> torch.Tensor:
        """Observations (..., H, W, C) or (..., D_obs) -> embeddings (..., D)."""
        return self._encode_with(self.encoder, observation)

    def predict(self, embedding: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """z_t (..., D), a_{t+1} (..., A) -> predicted z_{t+1} (..., D)."""
        output = self.predictor(torch.cat([embedding, action.to(embedding.dtype)], dim=-1))
        return embedding + output if self.config.residual_predictor else output

    def rollout(self, embedding: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Open loop: z_0 (N, D), actions (N, L, A) -> predicted z_1..z_L (N, L, D)."""
        sizes = check_shape("embedding", embedding, ("N", self.config.embedding_size))
        check_shape("actions", actions, ("N", "L", self.action_size), sizes)
        states, z = [], embedding
        for step in range(actions.shape[1]):
            z = self.predict(z, actions[:, step])
            states.append(z)
        return torch.stack(states, dim=1)

    # ------------------------------------------------------------------ WorldModel protocol

    def initial(self, batch_size: int) -> torch.Tensor:
        """Zeros (B, D): JEPA is not recurrent, so the state before any observation is a placeholder."""
        return torch.zeros(batch_size, self.config.embedding_size, device=self.device)

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's embedding (B, T, D) and the last one (B, D): the encoder sees one frame,
        so neither the actions nor the previous state change the posterior."""
        embeddings = self.encode(obs[self.observation_key])
        return embeddings, embeddings[:, -1]

    def imagine(self, state: torch.Tensor, actions_or_policy: ActionsOrPolicy, horizon: int) -> Trajectory:
        """Roll the predictor from embeddings (B, D) under actions (B, L, A) or `policy(z) -> (B, A)`."""
        if callable(actions_or_policy):
            actions, states, z = [], [], state
            for _ in range(horizon):
                action = torch.as_tensor(actions_or_policy(z), device=self.device, dtype=z.dtype)
                z = self.predict(z, action)
                actions.append(action)
                states.append(z)
            actions, states = torch.stack(actions, 1), torch.stack(states, 1)
        else:
            actions = torch.as_tensor(actions_or_policy, device=self.device, dtype=state.dtype)[:, :horizon]
            states = self.rollout(state, actions)
        B, L = actions.shape[:2]
        # Reward-free: goals are given at planning time, so the model predicts no reward.
        return Trajectory(
            states=states,
            actions=actions,
            rewards=torch.zeros(B, L, device=self.device),
            continues=torch.ones(B, L, device=self.device),
        )

    def decode(self, state: Any) -> dict:
        raise NotImplementedError(
            "a JEPA world model predicts in representation space and has no decoder: it is trained "
            "to match embeddings, never pixels, so there is no observation to return. Probe the "
            "embeddings (e.g. a linear read-out of positions) or plan toward a goal embedding instead."
        )

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Teacher-forcing and rollout prediction losses plus the collapse-prevention terms."""
        config, scales = self.config, self.config.loss_scales
        observation = torch.as_tensor(batch.obs[self.observation_key], device=self.device)
        action = torch.as_tensor(batch.action, device=self.device).float()
        sizes = check_shape("action", action, ("B", "T", self.action_size))
        check_shape(f"obs[{self.observation_key!r}]", observation, ("B", "T", *self.observation_shape), sizes)
        if sizes["T"] < 2:
            raise ShapeError("the JEPA loss needs windows of at least T=2 steps")
        is_first = torch.as_tensor(batch.is_first, device=self.device).bool()

        z = self.encode(observation)  # (B, T, D)
        if self.target_encoder is not None:
            with torch.no_grad():
                target = self._encode_with(self.target_encoder, observation)
        else:
            target = z
        # Step t+1 continues step t unless a new episode starts there; the rollout from z_0 stays
        # valid only until the first episode start in the window.
        transition = (~is_first[:, 1:]).float()  # (B, T-1)
        rollout_valid = transition.cumprod(dim=1)
        next_actions = action[:, 1:]
        terms = self.prediction_terms(z, target, next_actions, transition)

        flat = z.reshape(-1, config.embedding_size)
        if config.collapse_prevention == "vicreg":
            terms["variance"] = vicreg_variance(flat, config.variance_target)
            terms["covariance"] = vicreg_covariance(flat)
            terms["smoothness"] = _masked_mean((z[:, 1:] - z[:, :-1]).pow(2).mean(-1), transition)
            if scales.temporal_variance > 0:
                terms["temporal_variance"] = temporal_variance(z, rollout_valid, config.temporal_variance_target)
        if self.inverse_dynamics is not None:
            predicted_action = self.inverse_dynamics(torch.cat([z[:, :-1], z[:, 1:]], dim=-1))
            terms["inverse_dynamics"] = _masked_mean((predicted_action - next_actions).pow(2).mean(-1), transition)

        total = sum(getattr(scales, name) * value for name, value in terms.items())
        metrics = {f"loss/{name}": float(value.detach()) for name, value in terms.items()}
        metrics["loss/total"] = float(total.detach())
        metrics.update(collapse_diagnostics(flat))
        if self.target_encoder is not None:
            metrics["jepa/ema_momentum"] = self.current_momentum()
        return total, metrics

    def prediction_terms(
        self, z: torch.Tensor, target: torch.Tensor, next_actions: torch.Tensor, transition: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The predictor's two losses on windows: one-step prediction from every embedding
        ("teacher_forcing") and the open-loop rollout from the first ("rollout"), each the mean
        squared error against `target` (B, T, D). z (B, T, D) is the input, next_actions (B, T-1, A)
        the actions from step t to t+1; transition (B, T-1) is 1 where step t+1 continues step t's
        episode (all ones when omitted), and the rollout counts only until the first 0."""
        if transition is None:
            transition = torch.ones(z.shape[:1] + (z.shape[1] - 1,), device=z.device)
        one_step = self.predict(z[:, :-1], next_actions)
        rolled = self.rollout(z[:, 0], next_actions)
        return {
            "teacher_forcing": _masked_mean((one_step - target[:, 1:]).pow(2).mean(-1), transition),
            "rollout": _masked_mean((rolled - target[:, 1:]).pow(2).mean(-1), transition.cumprod(dim=1)),
        }

    # ------------------------------------------------------------------ EMA target

    def current_momentum(self) -> float:
        return scheduled_momentum(self.config, int(self.target_updates))

    def update_target(self) -> float:
        """After each optimiser step: move the EMA target toward the encoder; returns the momentum
        used. Does nothing (returns 0) without an EMA target."""
        if self.target_encoder is None:
            return 0.0
        momentum = self.current_momentum()
        ema_update(self.target_encoder, self.encoder, momentum)
        self.target_updates += 1
        return momentum


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


DISTANCE_NORMS = ("squared", "euclidean")


def goal_distance_returns(
    model: JEPAWorldModel, goal: torch.Tensor, terminal_only: bool = False, norm: str = "squared"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A planner's `rollout_fn(z (1, D) or (D,), actions (N, L, A)) -> (N,)`: minus the distance of
    the predicted embeddings to the goal embedding (D,), summed over the horizon (or the last step
    only), the EB-JEPA / PLDM planning cost. norm: "squared" (||z - g||^2, PLDM's) or "euclidean"
    (||z - g||, EB-JEPA's `repr_dist`), whose sum over a long horizon weighs the steps still far
    from the goal less, closer to the time the plan takes to arrive."""
    if norm not in DISTANCE_NORMS:
        raise ValueError(f"norm must be one of {DISTANCE_NORMS}, got {norm!r}")

    def rollout_fn(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        start = state.reshape(1, -1).expand(actions.shape[0], -1)
        predicted = model.rollout(start, actions.to(start.dtype))
        distance = (predicted - goal.reshape(1, 1, -1)).pow(2).sum(-1)  # (N, L)
        if norm == "euclidean":
            distance = distance.sqrt()
        return -(distance[:, -1] if terminal_only else distance.sum(1))

    return rollout_fn

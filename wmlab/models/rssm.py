"""The Recurrent State-Space Model (RSSM): PlaNet's world model, and Dreamer V1, V2 and V3's.

The latent state has a deterministic part h (a GRU's state) and a stochastic part z:

    h_t = f(h_{t-1}, z_{t-1}, a_{t-1})        sequence model (GRU, or DreamerV3's block GRU)
    z_t ~ q(z_t | h_t, embed(x_t))            posterior (filtering with the observation)
    z_t ~ p(z_t | h_t)                         prior (imagining without it)
    x_t, r_t, c_t ~ p(. | h_t, z_t)            decoder, reward and continue heads

(PlaNet, arXiv:1811.04551, Eq. 1-2 and Sec. 3; DreamerV3, Eq. 3, arXiv:2301.04104v1.) The
stochastic part is a diagonal Gaussian (PlaNet, DreamerV1) or S categorical variables of K
classes with straight-through gradients (DreamerV2) and 1 % uniform mixing (DreamerV3). Every
difference between the papers is a field of `RSSMConfig`; the presets live with the agents.

Observations are a dict: uint8 images (H, W, C) go through one conv encoder (keys concatenated
along channels), float vectors through one MLP (optionally symlog-squashed first); the embeddings
are concatenated. The decoder mirrors both.

States are dicts of tensors: "deter" (..., D) and "stoch" (..., S * K) or (..., S), plus the
distribution they were sampled from: "logits" (..., S, K) (unimixed log-probabilities) or
"mean" and "std" (..., S).

Shape legend: B batch, T time, L horizon, A action dim, D deterministic size, S x K stochastic
latent, F features (D + S * K), C, H, W image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, at_least, ranges
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.rollout import action_source
from wmlab.core.shapes import check_shape, episode_starts, step_signals
from wmlab.core.sizes import SizeTable
from wmlab.core.spaces import BoxBounds, discrete_action_input
from wmlab.core.spaces import action_layout as space_action_layout
from wmlab.core.types import Batch, Trajectory
from wmlab.losses.kl import categorical_kl, gaussian_kl, gaussian_kl_free_nats, kl_balanced, kl_balanced_gaussian
from wmlab.losses.pixels import foreground_weights
from wmlab.nn.categorical import categorical_entropy, sample_one_hot, unimix_logits
from wmlab.nn.conv import ConvDecoder, ConvEncoder, ConvStages, make_norm
from wmlab.nn.distributions import TwoHot, symexp, symlog
from wmlab.nn.gru import BlockGRUCell, NormGRUCell
from wmlab.nn.mlp import dense_layers, make_activation

State = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class RSSMSizes(Config):
    """The widths that a named size fixes (one column of SIZES)."""

    limits = ranges(counts="deterministic_size hidden_size cnn_depth units", non_negative="classes")

    deterministic_size: int
    """D, the GRU state size."""
    hidden_size: int
    """Units of the RSSM's hidden layers: GRU input, prior and posterior."""
    classes: int
    """K, classes per categorical variable (ignored for Gaussian latents)."""
    cnn_depth: int
    """Channels of the first conv stage are cnn_depth * cnn_multipliers[0]."""
    units: int
    """Units of the vector encoder / decoder and the reward / continue heads."""


#: DreamerV3's named sizes (authors' configs.yaml: size1m ... size400m set rssm deter / hidden /
#: classes, the conv depth and every MLP's units), plus "tiny" for tests.
SIZES: SizeTable[RSSMSizes] = SizeTable(
    RSSMSizes,
    "RSSM",
    """
    size                tiny  size1m  size12m  size25m  size50m  size100m  size200m  size400m
    deterministic_size  64    512     2048     3072     4096     6144      8192      12288
    hidden_size         32    64      256      384      512      768       1024      1536
    classes             4     4       16       24       32       48        64        96
    cnn_depth           4     4       16       24       32       48        64        96
    units               32    64      256      384      512      768       1024      1536
    """,
)


@dataclass(frozen=True)
class RSSMLossScales:
    """Weights of the world-model loss terms, in one place (each reported unweighted as `loss/<term>`)."""

    image: float = 1.0
    """Sum of squared pixel errors per frame (pixels scaled to [-0.5, 0.5]); 0.5 makes it a
    unit-variance Gaussian log-likelihood, as in PlaNet and DreamerV1/V2 (`loss/image`)."""
    vector: float = 1.0
    """Sum of squared errors of vector observations, in symlog space when `vector_loss` is
    symlog_mse (`loss/vector`)."""
    reward: float = 1.0
    """Two-hot cross-entropy, or squared error, of the reward (`loss/reward`)."""
    continuation: float = 1.0
    """Binary cross-entropy of the continue flag 1 - is_terminal (`loss/continue`)."""
    dynamics: float = 1.0
    """KL(sg(posterior) || prior), trains the prior (`loss/dyn`; used when `kl_balancing`)."""
    representation: float = 0.1
    """KL(posterior || sg(prior)), regularises the posterior (`loss/rep`; used when `kl_balancing`)."""
    kl: float = 1.0
    """The unbalanced KL(posterior || prior) with gradients into both (`loss/kl`; used when not
    `kl_balancing`)."""
    overshooting: float = 1.0
    """Latent overshooting's KL, averaged over distances (`loss/overshooting`; used when
    `overshooting_distance` > 0)."""


@dataclass(frozen=True)
class RSSMConfig(Config):
    """The RSSM world model. Defaults are DreamerV3's (authors' current configs) at size1m; the
    agents' presets set PlaNet's and DreamerV1/V2's values. The optimiser belongs to the agent."""

    limits = ranges(
        counts="stochastic_size blocks core_layers prior_layers posterior_layers"
        " cnn_kernel encoder_layers decoder_layers reward_layers continue_layers",
        positive="min_std",
        non_negative="free_nats overshooting_distance",
        fractions="unimix foreground_threshold",
        reward_bins=at_least(2),
        foreground_weight=at_least(1),
    )

    size: SIZES.annotation = SIZES["size1m"]
    """The widths: a named size (tiny, size1m, size12m, size25m, size50m, size100m, size200m,
    size400m) and any changed fields (`--agent.model.size size12m units=300`; in Python
    `SIZES.preset("size12m", units=300)`)."""
    stochastic_size: int = 32
    """S: categorical variables, or Gaussian dimensions."""
    latent: str = "categorical"
    """Stochastic latent: "categorical" (DreamerV2/V3) or "gaussian" (PlaNet, DreamerV1)."""
    min_std: float = 0.1
    """Gaussian latents: std = softplus(raw) + min_std."""
    unimix: float = 0.01
    """Categorical latents: weight of the uniform distribution mixed into every latent distribution."""
    core: str = "block_gru"
    """Sequence model: "gru" (Dreamer's GRU: one input layer on [z, a], norm over gates) or
    "block_gru" (DreamerV3's block-diagonal GRU with separate input layers for h, z and a)."""
    blocks: int = 8
    """Blocks of the block GRU (D must be divisible by it)."""
    core_layers: int = 1
    """Hidden block-linear layers of the block GRU before its gates."""
    gru_norm: str = "layer"
    """Norm over the gates of the plain "gru" core: layer (DreamerV2), rms, none (PlaNet, DreamerV1)."""
    prior_layers: int = 2
    """Hidden layers of the prior p(z | h)."""
    posterior_layers: int = 1
    """Hidden layers of the posterior q(z | h, embed)."""
    norm: str = "rms"
    """Norm after every hidden layer and conv stage: rms (DreamerV3), layer, none."""
    activation: str = "silu"
    """Activation of every hidden layer: silu, elu, relu, gelu, tanh, mish."""
    cnn_multipliers: tuple[int, ...] = (2, 3, 4, 4)
    """Channel multipliers of the stride-2 conv stages; four stages take 64 x 64 to 4 x 4."""
    cnn_kernel: int = 5
    """Kernel size of the conv stages."""
    encoder_layers: int = 3
    """Hidden layers of the vector encoder."""
    decoder_layers: int = 3
    """Hidden layers of the vector decoder."""
    reward_layers: int = 1
    """Hidden layers of the reward head."""
    continue_layers: int = 1
    """Hidden layers of the continue head."""
    symlog_inputs: bool = True
    """Squash vector observations with symlog before encoding them (DreamerV3)."""
    vector_loss: str = "symlog_mse"
    """Vector reconstruction: "symlog_mse" (squared error against symlog(x), DreamerV3) or "mse"."""
    reward_head: str = "twohot"
    """"twohot" (symexp two-hot over `reward_bins` bins, DreamerV3) or "mse" (a scalar, squared error)."""
    reward_bins: int = 255
    """Bins of the two-hot reward head, evenly spaced over [-20, 20] in symlog space."""
    predict_continue: bool = True
    """Learn a continue head (DreamerV2/V3); without it every imagined state continues (PlaNet, DreamerV1)."""
    kl_balancing: bool = True
    """Balanced KL (dynamics and representation terms with their own scales, DreamerV2/V3) rather than
    one KL(posterior || prior) with the `kl` scale (PlaNet, DreamerV1)."""
    free_nats: float = 1.0
    """KL below this many nats is not penalised (DreamerV3: 1, PlaNet and DreamerV1: 3)."""
    free_nats_average_first: bool = False
    """Apply free nats to the batch mean of the KL (DreamerV1/V2's code) rather than to each step (DreamerV3)."""
    overshooting_distance: int = 0
    """Latent overshooting (PlaNet, Eq. 7): also train the prior's d-step open-loop predictions, d up to
    this distance, towards the posterior; 0 turns it off."""
    loss_scales: RSSMLossScales = field(default_factory=RSSMLossScales)
    """Weights of the loss terms."""
    foreground_weight: float = 1.0
    """Weight, in the image reconstruction loss, of the pixels that differ from the batch's mean
    frame by more than `foreground_threshold` in some channel (the objects that move between
    frames or episodes); the rest weigh 1. 1 is every paper's plain sum of squared errors; larger
    values are a deviation that makes small objects dominate the loss early."""
    foreground_threshold: float = 0.1
    """How far (pixel / 255) a target pixel must lie from the batch's mean frame, in its largest
    channel, to count as foreground for `foreground_weight`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "latent": ("categorical", "gaussian"),
            "core": ("gru", "block_gru"),
            "vector_loss": ("symlog_mse", "mse"),
            "reward_head": ("twohot", "mse"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"RSSMConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 <= self.unimix < 1:
            raise ValueError(f"RSSMConfig.unimix must be in [0, 1), got {self.unimix}")


# ----------------------------------------------------------------------------------------------
# Spaces


@dataclass(frozen=True)
class ObservationLayout:
    """Which observation keys are images and which vectors, and their sizes."""

    image_keys: tuple[str, ...]
    image_channels: tuple[int, ...]
    image_size: tuple[int, int]
    vector_keys: tuple[str, ...]
    vector_sizes: tuple[int, ...]


def observation_layout(observation_space: spaces.Space) -> ObservationLayout:
    if not isinstance(observation_space, spaces.Dict):
        raise IncompatibleSpaceError(
            f"the RSSM reads a Dict of 'image' / 'vector' observations, got {observation_space}"
        )
    image_keys, channels, sizes, vector_keys, vector_sizes = [], [], set(), [], []
    for key in sorted(observation_space.spaces):
        space = observation_space[key]
        if isinstance(space, spaces.Box) and space.dtype == "uint8" and len(space.shape) == 3:
            image_keys.append(key)
            channels.append(int(space.shape[2]))
            sizes.add(tuple(int(side) for side in space.shape[:2]))
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            vector_keys.append(key)
            vector_sizes.append(int(space.shape[0]))
        else:
            raise IncompatibleSpaceError(
                f"the RSSM encodes uint8 images (H, W, C) and 1-D vectors; observation {key!r} is {space}"
                " (a Discrete 'state' needs one-hot encoding into a vector first)"
            )
    if len(sizes) > 1:
        raise IncompatibleSpaceError(f"the RSSM's image keys must share one size, got {sorted(sizes)}")
    return ObservationLayout(
        tuple(image_keys), tuple(channels), sizes.pop() if sizes else (0, 0), tuple(vector_keys), tuple(vector_sizes)
    )


def action_layout(action_space: spaces.Space) -> tuple[int, bool]:
    """(A, discrete) for a bounded 1-D Box or a Discrete space starting at 0."""
    return space_action_layout(action_space, "the RSSM", bounded=True)


def dense_stack(input_size: int, units: int, layers: int, norm: str, activation: str) -> nn.Sequential:
    """`layers` x (Linear -> norm -> activation); the identity when layers is 0."""
    return nn.Sequential(
        *dense_layers(
            input_size, units, layers, lambda size: make_norm(norm, size), lambda: make_activation(activation)
        )
    )


#: Loss terms that an observation key must not shadow.
_RESERVED_TERMS = ("reward", "continue", "dyn", "rep", "kl", "overshooting", "world_model")


def term_name(key: str) -> str:
    """The loss term of observation `key`: `loss/image`, `loss/vector`, ... (prefixed with obs_
    where a key would shadow another term)."""
    return f"obs_{key}" if key in _RESERVED_TERMS else key


def stack_width(input_size: int, units: int, layers: int) -> int:
    return units if layers > 0 else input_size


# ----------------------------------------------------------------------------------------------
# Encoder and decoder


def conv_stages(layout: ObservationLayout, config: RSSMConfig, widths: RSSMSizes) -> ConvStages:
    """The conv stack's stages, the same for the encoder and its mirror the decoder."""
    return ConvStages(
        widths.cnn_depth, config.cnn_multipliers, config.cnn_kernel, config.norm, config.activation, layout.image_size
    )


class MultiEncoder(nn.Module):
    """obs {key: (N, ...)} -> embedding (N, E): images through one conv stack, vectors through one MLP."""

    def __init__(self, layout: ObservationLayout, config: RSSMConfig, widths: RSSMSizes):
        super().__init__()
        self.layout = layout
        self.symlog_inputs = config.symlog_inputs
        self.features = 0
        self.conv = None
        if layout.image_keys:
            self.conv = ConvEncoder(sum(layout.image_channels), conv_stages(layout, config, widths))
            self.features += self.conv.features
        self.mlp = None
        if layout.vector_keys:
            size = sum(layout.vector_sizes)
            self.mlp = dense_stack(size, widths.units, config.encoder_layers, config.norm, config.activation)
            self.features += stack_width(size, widths.units, config.encoder_layers)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.conv is not None:
            images = torch.cat([obs[key] for key in self.layout.image_keys], -1)  # (N, H, W, C) uint8
            parts.append(self.conv(images.permute(0, 3, 1, 2).float() / 255.0 - 0.5))
        if self.mlp is not None:
            vector = torch.cat([obs[key].float() for key in self.layout.vector_keys], -1)
            parts.append(self.mlp(symlog(vector) if self.symlog_inputs else vector))
        return torch.cat(parts, -1)


class MultiDecoder(nn.Module):
    """features (N, F) -> {image key: (N, C, H, W) in pixel / 255 - 0.5 units, vector key: (N, D)
    in the loss's space (symlog when `vector_loss` is symlog_mse)}."""

    def __init__(self, layout: ObservationLayout, feature_size: int, config: RSSMConfig, widths: RSSMSizes):
        super().__init__()
        self.layout = layout
        self.conv = None
        if layout.image_keys:
            self.conv = ConvDecoder(feature_size, sum(layout.image_channels), conv_stages(layout, config, widths))
        self.mlp = None
        if layout.vector_keys:
            self.mlp = nn.Sequential(
                dense_stack(feature_size, widths.units, config.decoder_layers, config.norm, config.activation),
                nn.Linear(stack_width(feature_size, widths.units, config.decoder_layers), sum(layout.vector_sizes)),
            )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        predictions = {}
        if self.conv is not None:
            images = self.conv(features)
            for key, part in zip(self.layout.image_keys, images.split(list(self.layout.image_channels), 1)):
                predictions[key] = part
        if self.mlp is not None:
            vectors = self.mlp(features)
            for key, part in zip(self.layout.vector_keys, vectors.split(list(self.layout.vector_sizes), -1)):
                predictions[key] = part
        return predictions


# ----------------------------------------------------------------------------------------------
# The model


class RSSM(nn.Module):
    """WorldModel: the RSSM with its encoder, decoder, reward and continue heads.

    Random numbers come from `self.generator` (None: torch's global generator); an agent that
    checkpoints that generator resumes exactly.
    """

    can_decode = True

    def __init__(self, config: RSSMConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        widths = config.size
        self.layout = observation_layout(observation_space)
        self.action_size, self.discrete = action_layout(action_space)
        self.generator: torch.Generator | None = None
        self.action_bounds = None if self.discrete else BoxBounds(action_space)

        S, D, H = config.stochastic_size, widths.deterministic_size, widths.hidden_size
        self.categorical = config.latent == "categorical"
        self.classes = widths.classes if self.categorical else 0
        #: Size of the flattened stochastic state z: S * K, or S.
        self.stochastic_features = S * self.classes if self.categorical else S
        self.deterministic_size = D
        #: F = D + S * K (or D + S): the features every head reads.
        self.feature_size = D + self.stochastic_features
        statistics = S * self.classes if self.categorical else 2 * S
        norm, activation = config.norm, config.activation

        self.encoder = MultiEncoder(self.layout, config, widths)
        if config.core == "block_gru":
            self.deter_in = dense_stack(D, H, 1, norm, activation)
            self.stoch_in = dense_stack(self.stochastic_features, H, 1, norm, activation)
            self.action_in = dense_stack(self.action_size, H, 1, norm, activation)
            self.cell = BlockGRUCell(3 * H, D, config.blocks, config.core_layers, norm, activation)
        else:
            self.core_in = dense_stack(self.stochastic_features + self.action_size, H, 1, norm, activation)
            self.cell = NormGRUCell(H, D, norm=config.gru_norm)
        self.prior_net = nn.Sequential(
            dense_stack(D, H, config.prior_layers, norm, activation),
            nn.Linear(stack_width(D, H, config.prior_layers), statistics),
        )
        self.posterior_net = nn.Sequential(
            dense_stack(D + self.encoder.features, H, config.posterior_layers, norm, activation),
            nn.Linear(stack_width(D + self.encoder.features, H, config.posterior_layers), statistics),
        )
        self.decoder = MultiDecoder(self.layout, self.feature_size, config, widths)
        self.two_hot = TwoHot(config.reward_bins) if config.reward_head == "twohot" else None
        self.reward_head = nn.Sequential(
            dense_stack(self.feature_size, widths.units, config.reward_layers, norm, activation),
            nn.Linear(
                stack_width(self.feature_size, widths.units, config.reward_layers),
                config.reward_bins if self.two_hot else 1,
            ),
        )
        if self.two_hot is not None:
            # DreamerV3 zero-initialises the two-hot output layer, so that every initial prediction
            # is exactly 0 instead of a random large reward.
            nn.init.zeros_(self.reward_head[-1].weight)
            nn.init.zeros_(self.reward_head[-1].bias)
        self.continue_head = None
        if config.predict_continue:
            self.continue_head = nn.Sequential(
                dense_stack(self.feature_size, widths.units, config.continue_layers, norm, activation),
                nn.Linear(stack_width(self.feature_size, widths.units, config.continue_layers), 1),
            )

    # --- basics ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.prior_net[-1].weight.device

    def initial(self, batch_size: int) -> State:
        """The zero state {"deter": (B, D), "stoch": (B, S * K)} before any observation."""
        return {
            "deter": torch.zeros(batch_size, self.deterministic_size, device=self.device),
            "stoch": torch.zeros(batch_size, self.stochastic_features, device=self.device),
        }

    @staticmethod
    def features(state: State) -> torch.Tensor:
        """(..., F): the concatenation [h, z] that every head reads."""
        return torch.cat([state["deter"], state["stoch"]], -1)

    def encode_action(self, action: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """Environment actions -> model inputs (*leading, A): Box actions scaled from their bounds to
        [-1, 1], Discrete ones one-hot from indices (*leading) or kept as given when one-hot /
        relaxed (*leading, A) floats, so that gradients flow through a policy's samples."""
        action = torch.as_tensor(action, device=self.device)
        if not self.discrete:
            check_shape("action", action, (*leading, self.action_size), sizes)
            scaled = self.action_bounds.to_unit(action.float())
            # DreamerV3 divides by max(1, |a|) with a stop-gradient: a policy's unbounded sample
            # cannot push the dynamics outside the range they were trained on.
            return scaled / scaled.detach().abs().clamp_min(1.0)
        return discrete_action_input(action, self.action_size, leading, sizes)

    def model_space_action(self, action: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """Actions already in the model's units ([-1, 1] for a Box, one-hot floats for a Discrete
        space) -> the same tensor, checked as (*leading, A): `imagine`'s `model_space` inputs."""
        action = torch.as_tensor(action, device=self.device)
        check_shape("action", action, (*leading, self.action_size), sizes)
        return action

    def environment_action(self, action: torch.Tensor) -> torch.Tensor:
        """Model-space actions (..., A) in [-1, 1] -> the environment's bounds (Box only)."""
        return self.action_bounds.from_unit(action.clamp(-1.0, 1.0))

    # --- distributions -----------------------------------------------------------------------

    def statistics(self, raw: torch.Tensor) -> State:
        """Network outputs (..., statistics) -> {"logits": (..., S, K)} or {"mean", "std": (..., S)}."""
        if self.categorical:
            logits = raw.unflatten(-1, (self.config.stochastic_size, self.classes))
            return {"logits": unimix_logits(logits, self.config.unimix)}
        mean, std = raw.chunk(2, -1)
        return {"mean": mean, "std": F.softplus(std) + self.config.min_std}

    def draw_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Noise for `shape` leading dimensions of latents, drawn from the model's generator:
        uniforms (..., S) for categorical latents, standard normals (..., S) for Gaussian ones."""
        full = (*shape, self.config.stochastic_size)
        if self.categorical:
            return torch.rand(full, generator=self.generator, device=self.device)
        return torch.randn(full, generator=self.generator, device=self.device)

    def sample(self, statistics: State, noise: torch.Tensor) -> torch.Tensor:
        """A differentiable sample (..., S * K) or (..., S) from the statistics, given its noise."""
        if self.categorical:
            return sample_one_hot(statistics["logits"], uniform=noise).flatten(-2)
        return statistics["mean"] + statistics["std"] * noise

    def entropy(self, statistics: State) -> torch.Tensor:
        """Entropy (...) of a latent distribution, summed over its S variables."""
        if self.categorical:
            return categorical_entropy(statistics["logits"]).sum(-1)
        return (0.5 * math.log(2 * math.pi * math.e) + statistics["std"].log()).sum(-1)

    # --- one step ----------------------------------------------------------------------------

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """h_t = f(h_{t-1}, z_{t-1}, a_{t-1}): (B, D), (B, S * K), (B, A) -> (B, D)."""
        if self.config.core == "block_gru":
            inputs = torch.cat([self.deter_in(deter), self.stoch_in(stoch), self.action_in(action)], -1)
        else:
            inputs = self.core_in(torch.cat([stoch, action], -1))
        return self.cell(inputs, deter)

    def prior(self, deter: torch.Tensor) -> State:
        """p(z | h): deter (..., D) -> statistics."""
        return self.statistics(self.prior_net(deter))

    def posterior(self, deter: torch.Tensor, embedding: torch.Tensor) -> State:
        """q(z | h, embed): (..., D), (..., E) -> statistics."""
        return self.statistics(self.posterior_net(torch.cat([deter, embedding], -1)))

    def imagine_step(self, state: State, action: torch.Tensor, noise: torch.Tensor) -> State:
        """One prior step from state {"deter", "stoch"} (B, ...) with an encoded action (B, A)."""
        deter = self.core(state["deter"], state["stoch"], action)
        statistics = self.prior(deter)
        return {"deter": deter, "stoch": self.sample(statistics, noise), **statistics}

    # --- the WorldModel protocol -------------------------------------------------------------

    def embed(
        self, obs: dict[str, Any], leading: tuple[str, ...] = ("B", "T"), sizes: dict[str, int] | None = None
    ) -> torch.Tensor:
        """Observations {key: (*leading, ...)} -> embeddings (*leading, E)."""
        sizes = {} if sizes is None else sizes
        flat = {}
        layout = self.layout
        for key, channels in zip(layout.image_keys, layout.image_channels):
            value = torch.as_tensor(obs[key], device=self.device)
            check_shape(f"obs[{key!r}]", value, (*leading, *layout.image_size, channels), sizes)
            flat[key] = value.flatten(0, len(leading) - 1)
        for key, size in zip(layout.vector_keys, layout.vector_sizes):
            value = torch.as_tensor(obs[key], device=self.device)
            check_shape(f"obs[{key!r}]", value, (*leading, size), sizes)
            flat[key] = value.flatten(0, len(leading) - 1)
        embedding = self.encoder(flat)
        return embedding.unflatten(0, tuple(sizes[letter] for letter in leading))

    def observe(self, obs: dict, action: Any, is_first: Any, state: State | None = None) -> tuple[State, State]:
        """Filter a real sequence: obs {key: (B, T, ...)}, action (B, T, A) or indices (B, T) (the
        action that led to each observation), is_first (B, T) -> (posterior states (B, T, ...)
        with their statistics, last state {"deter", "stoch"} (B, ...)). Where is_first is set the
        state and action restart from zero; `state` None starts from `initial`."""
        sizes: dict[str, int] = {}
        embedding = self.embed(obs, ("B", "T"), sizes)
        actions = self.encode_action(action, ("B", "T"), sizes)
        is_first = episode_starts(is_first, self.device, sizes)
        return self.observe_embedded(embedding, actions, is_first, state)

    @torch.no_grad()
    def filter_step(self, obs: dict[str, Any], action: torch.Tensor, is_first: torch.Tensor, state: State) -> State:
        """One step of filtering while acting: the newest observations {key: (B, ...)}, the encoded
        action that led to them (B, A), is_first (B,) and the previous state {"deter", "stoch"}
        -> the posterior state {"deter", "stoch"} (B, ...)."""
        B = action.shape[0]
        keys = self.layout.image_keys + self.layout.vector_keys
        embedding = self.embed({key: torch.as_tensor(obs[key])[:, None] for key in keys}, ("B", "T"), {"B": B, "T": 1})
        is_first = torch.as_tensor(is_first, device=self.device).bool().reshape(B, 1)
        _, latent = self.observe_embedded(embedding, action[:, None], is_first, state)
        return latent

    def observe_embedded(
        self, embedding: torch.Tensor, actions: torch.Tensor, is_first: torch.Tensor, state: State | None = None
    ) -> tuple[State, State]:
        """`observe` from embeddings (B, T, E) and encoded actions (B, T, A)."""
        B, T = embedding.shape[:2]
        state = self.initial(B) if state is None else state
        deter, stoch = state["deter"], state["stoch"]
        keep = (~is_first.bool()).float().unsqueeze(-1)  # (B, T, 1)
        actions = actions * keep
        noise = self.draw_noise((B, T))
        deters, stochs, statistics = [], [], []
        for t in range(T):
            deter = self.core(deter * keep[:, t], stoch * keep[:, t], actions[:, t])
            posterior = self.posterior(deter, embedding[:, t])
            stoch = self.sample(posterior, noise[:, t])
            deters.append(deter)
            stochs.append(stoch)
            statistics.append(posterior)
        posteriors = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1)}
        for name in statistics[0]:
            posteriors[name] = torch.stack([step[name] for step in statistics], 1)
        return posteriors, {"deter": deter, "stoch": stoch}

    def imagine(
        self,
        state: State,
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
        decode: bool = False,
        noise: torch.Tensor | None = None,
        model_space: bool = False,
        step: Callable[[State, torch.Tensor, torch.Tensor], State] | None = None,
    ) -> Trajectory:
        """Roll the prior forward from state {"deter" (B, D), "stoch" (B, S * K)} with actions
        (B, L, A) (indices (B, L) when discrete) or a policy(state) -> action (B, A) | (B,).

        Step l of the result is the state reached by action l: states {"deter", "stoch", and
        the prior's statistics} (B, L, ...), actions (B, L, A) as the model saw them, rewards
        (B, L), continues (B, L), and decoded observations when `decode`. Differentiable; wrap in
        torch.no_grad() when planning.

        Options for an agent that learns in imagination (Dreamer): `noise` (B, L, S), the latent
        noise drawn ahead with `draw_noise` (else drawn here); `model_space`, the actions (or the
        policy's) are already the model's inputs ([-1, 1] for a Box, one-hot floats for a Discrete
        space) and are used as given, so that gradients reach an unbounded sample unchanged;
        `step`, the one-step function with `imagine_step`'s signature (e.g. a torch.compile'd
        `imagine_step`)."""
        sizes = check_shape("state['deter']", state["deter"], ("B", self.deterministic_size))
        check_shape("state['stoch']", state["stoch"], ("B", self.stochastic_features), sizes)
        encode = self.model_space_action if model_space else self.encode_action
        choose, horizon = action_source(actions_or_policy, horizon, sizes, encode)
        if noise is None:
            noise = self.draw_noise((sizes["B"], horizon))
        else:
            check_shape("noise", noise, ("B", horizon, self.config.stochastic_size), sizes)
        step = self.imagine_step if step is None else step
        current = {"deter": state["deter"], "stoch": state["stoch"]}
        steps, taken = [], []
        for index in range(horizon):
            action = choose(index, current)
            current = step(current, action, noise[:, index])
            steps.append(current)
            taken.append(action)
        states = {name: torch.stack([one[name] for one in steps], 1) for name in steps[0]}
        features = self.features(states)
        continue_logits = self.continue_logits(features)
        return Trajectory(
            states=states,
            actions=torch.stack(taken, 1),
            rewards=self.reward(features),
            continues=torch.ones_like(features[..., 0]) if continue_logits is None else torch.sigmoid(continue_logits),
            observations=self.decode(states) if decode else None,
            extras={} if continue_logits is None else {"continue_logits": continue_logits},
        )

    # --- heads -------------------------------------------------------------------------------

    def reward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted reward (...) received on arriving at the state with features (..., F)."""
        output = self.reward_head(features)
        return self.two_hot.decode(output) if self.two_hot is not None else output[..., 0]

    def continue_logits(self, features: torch.Tensor) -> torch.Tensor | None:
        """Logit (...) that the state is not terminal; None without a continue head."""
        return None if self.continue_head is None else self.continue_head(features)[..., 0]

    def decode(self, state: State) -> dict[str, torch.Tensor]:
        """Predicted observations for states (..., ...): images (..., H, W, C) float in [0, 1],
        vectors (..., D) in the environment's units."""
        features = self.features(state)
        leading = features.shape[:-1]
        predictions = self.decoder(features.reshape(-1, self.feature_size))
        decoded = {}
        for key in self.layout.image_keys:
            decoded[key] = (predictions[key] + 0.5).clamp(0, 1).permute(0, 2, 3, 1).unflatten(0, leading)
        for key in self.layout.vector_keys:
            value = predictions[key]
            decoded[key] = (symexp(value) if self.config.vector_loss == "symlog_mse" else value).unflatten(0, leading)
        return decoded

    # --- learning ----------------------------------------------------------------------------

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) for B windows of T steps; see `loss_and_posterior`."""
        total, metrics, _ = self.loss_and_posterior(batch)
        return total, {name: float(value) for name, value in zip(metrics, torch.stack(list(metrics.values())).tolist())}

    def loss_and_posterior(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        """(scalar loss, metrics as 0-d tensors (one host sync for all of them later), posterior
        states (B, T, ...)). Every step t is reconstructed from its posterior state; its reward
        and continue flag are those received on arriving at obs_t (wmlab.core.types)."""
        config, scales = self.config, self.config.loss_scales
        sizes: dict[str, int] = {}
        embedding = self.embed(batch.obs, ("B", "T"), sizes)
        actions = self.encode_action(batch.action, ("B", "T"), sizes)
        reward, is_first, is_terminal = step_signals(batch, self.device, sizes)

        posterior, _ = self.observe_embedded(embedding, actions, is_first)
        prior = self.prior(posterior["deter"])
        features = self.features(posterior)  # (B, T, F)
        flat_features = features.flatten(0, 1)

        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        image_errors: dict[str, torch.Tensor] = {}  # unweighted squared error per frame (B * T,)
        predictions = self.decoder(flat_features)
        for key in self.layout.image_keys:
            target = (
                torch.as_tensor(batch.obs[key], device=self.device).flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
                - 0.5
            )
            squared = (predictions[key] - target).pow(2)  # (B * T, C, H, W)
            image_errors[key] = squared.detach().sum((1, 2, 3))
            if config.foreground_weight != 1.0:
                squared = squared * foreground_weights(target, config.foreground_weight, config.foreground_threshold)
            terms[term_name(key)] = squared.sum((1, 2, 3)).unflatten(0, (sizes["B"], sizes["T"]))
            weights[term_name(key)] = scales.image
        for key in self.layout.vector_keys:
            target = torch.as_tensor(batch.obs[key], device=self.device).flatten(0, 1).float()
            if config.vector_loss == "symlog_mse":
                target = symlog(target)
            terms[term_name(key)] = (predictions[key] - target).pow(2).sum(-1).unflatten(0, (sizes["B"], sizes["T"]))
            weights[term_name(key)] = scales.vector

        reward_output = self.reward_head(features)
        if self.two_hot is not None:
            terms["reward"] = self.two_hot.loss(reward_output, reward)
        else:
            terms["reward"] = (reward_output[..., 0] - reward).pow(2)
        weights["reward"] = scales.reward
        continue_logit = self.continue_logits(features)
        if continue_logit is not None:
            terms["continue"] = F.binary_cross_entropy_with_logits(continue_logit, 1.0 - is_terminal, reduction="none")
            weights["continue"] = scales.continuation

        total = sum(weights[name] * value.mean() for name, value in terms.items())
        metrics = {f"loss/{name}": value.mean() for name, value in terms.items()}

        kl_total, kl_metrics, kl_value = self._kl_loss(posterior, prior)
        total = total + kl_total
        metrics.update(kl_metrics)
        if config.overshooting_distance > 0:
            overshooting = self._overshooting(posterior, actions, is_first)
            total = total + scales.overshooting * overshooting
            metrics["loss/overshooting"] = overshooting
        metrics["loss/world_model"] = total
        with torch.no_grad():
            metrics["wm/kl"] = kl_value
            metrics["wm/prior_entropy"] = self.entropy(prior).mean()
            metrics["wm/posterior_entropy"] = self.entropy(
                {k: v for k, v in posterior.items() if k not in ("deter", "stoch")}
            ).mean()
            predicted_reward = self.two_hot.decode(reward_output) if self.two_hot is not None else reward_output[..., 0]
            metrics["wm/reward_mse"] = (predicted_reward - reward).pow(2).mean()
            for key in self.layout.image_keys:
                metrics[f"wm/{key}_mse"] = image_errors[key].mean() / math.prod(predictions[key].shape[1:])
        posterior = {name: value.detach() for name, value in posterior.items()}
        return total, metrics, posterior

    def _kl_loss(self, posterior: State, prior: State) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        config, scales = self.config, self.config.loss_scales
        if config.kl_balancing:
            if self.categorical:
                terms = kl_balanced(
                    posterior["logits"],
                    prior["logits"],
                    config.free_nats,
                    scales.dynamics,
                    scales.representation,
                    config.free_nats_average_first,
                )
            else:
                terms = kl_balanced_gaussian(
                    posterior["mean"],
                    posterior["std"],
                    prior["mean"],
                    prior["std"],
                    config.free_nats,
                    scales.dynamics,
                    scales.representation,
                    config.free_nats_average_first,
                )
            metrics = {"loss/dyn": terms.dynamics.mean(), "loss/rep": terms.representation.mean()}
            return terms.loss.mean(), metrics, terms.dynamics.detach().mean()
        if self.categorical:
            raise ValueError("the unbalanced KL (kl_balancing False) is implemented for Gaussian latents only")
        clipped, kl = gaussian_kl_free_nats(
            posterior["mean"],
            posterior["std"],
            prior["mean"],
            prior["std"],
            config.free_nats,
            config.free_nats_average_first,
        )
        return scales.kl * clipped.mean(), {"loss/kl": kl.mean()}, kl.detach().mean()

    def _overshooting(self, posterior: State, actions: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
        """Latent overshooting (PlaNet, Eq. 7, arXiv:1811.04551): from every posterior state,
        predict d = 1..distance steps open-loop with the real actions and pull each prediction
        towards the posterior d steps later (held fixed, so only the prior learns from it),
        skipping predictions that would cross an episode start. The mean over d of the
        free-nats-clipped KL."""
        config = self.config
        B, T = posterior["deter"].shape[:2]
        # episode_index[b, t]: how many episode starts are at or before t; a prediction from t to
        # t + d is valid when no start lies in (t, t + d].
        episode_index = is_first.long().cumsum(1)
        current = {"deter": posterior["deter"], "stoch": posterior["stoch"]}
        losses = []
        for distance in range(1, min(config.overshooting_distance, T - 1) + 1):
            count = T - distance  # start times 0 .. T - 1 - distance
            start = {name: value[:, :count] for name, value in current.items()}
            flat = {name: value.flatten(0, 1) for name, value in start.items()}
            step = self.imagine_step(flat, actions[:, distance:].flatten(0, 1), self.draw_noise((B * count,)))
            current = {name: step[name].unflatten(0, (B, count)) for name in ("deter", "stoch")}
            valid = (episode_index[:, distance:] == episode_index[:, :count]).float()
            target = {
                name: posterior[name][:, distance:].detach() for name in ("logits", "mean", "std") if name in posterior
            }
            if self.categorical:
                kl = categorical_kl(target["logits"], step["logits"].unflatten(0, (B, count))).sum(-1)
            else:
                prediction = {name: step[name].unflatten(0, (B, count)) for name in ("mean", "std")}
                kl = gaussian_kl(target["mean"], target["std"], prediction["mean"], prediction["std"]).sum(-1)
            losses.append((kl.clamp_min(config.free_nats) * valid).sum() / valid.sum().clamp_min(1.0))
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack(losses).mean()

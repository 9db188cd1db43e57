"""World Models' V and M (Ha & Schmidhuber 2018, arXiv:1803.10122): a convolutional VAE that
compresses each 64x64 frame to a small code z, and an LSTM whose mixture-density head predicts
the next code as a mixture of diagonal Gaussians (the MDN-RNN), plus heads for the reward and
the end of the episode, so that the pair can stand in for the environment ("the dream").

V (Sec. 2.1 and Appendix A.1): four 4x4 stride-2 convolutions (32, 64, 128, 256 channels, ReLU)
take the frame to 2x2x256, two linear layers give the mean and log-variance of q(z | x); the
decoder maps z to a 1x1x1024 map and four transposed convolutions (5, 5, 6, 6 wide, stride 2)
grow it back to 64x64x3 with a sigmoid.

M (Sec. 2.2 and Appendix A.2): h_{t+1} = LSTM([z_t, a_t], h_t), and from h_{t+1}
P(z_{t+1} | a_t, z_t, h_t) = sum_k pi_k N(z_{t+1}; mu_k, diag(sigma_k^2)). Sampling with a
temperature tau divides the mixture logits by tau and multiplies every standard deviation by
sqrt(tau) (the paper's way, as in the authors' released code); tau -> 0 gives the mean of the most
likely component, and tau > 1 a more uncertain dream that is harder to exploit (the VizDoom
experiment, "Cheating the World Model").

The model's state for B sequences is a dict of tensors:
    {"latent": z_t (B, Z), "hidden": h_t (B, D), "cell": c_t (B, D)}
where h_t has seen (z_0, a_0) ... (z_{t-1}, a_{t-1}), so the controller reads [z_t, h_t]
exactly as in the paper, and imagining from it with a_t predicts step t + 1.

Shape legend: B batch, T time, L horizon, A action dim (the number of actions, one-hot, for a
Discrete space), Z latent features, D LSTM units, K mixture components, G mixture groups (1 for
one mixture over the whole code, Z for one mixture per latent dimension), C, H, W image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.images import to_pixels
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.rollout import action_source, roll_steps
from wmlab.core.shapes import check_shape, episode_starts, signal_tensors
from wmlab.core.spaces import action_layout, discrete_action_input
from wmlab.core.types import Batch, Trajectory

#: V takes and produces square frames of this side (the architecture fixes it).
IMAGE_SIZE = 64
_LOG_SQRT_TWO_PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ConvVAEConfig(Config):
    """V: the convolutional variational autoencoder."""

    limits = ranges(counts="latent_size", non_negative="free_nats")

    latent_size: int = 32
    """Z, the size of the code (32 for CarRacing, 64 for DoomTakeCover in the paper)."""
    channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    """Output channels of the four 4x4 stride-2 convolutions; the decoder's transposed convolutions
    mirror them (the paper: 32, 64, 128, 256 and back through 128, 64, 32, 3)."""
    free_nats: float = 0.5
    """Floor on the KL term per latent dimension: below latent_size * free_nats the KL term is
    constant and gives no gradient, so V spends its capacity on reconstruction (the authors'
    `kl_tolerance` of 0.5; 0 turns the floor off)."""


@dataclass(frozen=True)
class MDNRNNConfig(Config):
    """M: the LSTM with a mixture-density head and reward / done heads."""

    limits = ranges(counts="hidden_size mixtures")

    hidden_size: int = 256
    """D, the LSTM's units (256 for CarRacing, 512 for DoomTakeCover in the paper)."""
    mixtures: int = 5
    """K, the Gaussian components of the mixture over the next code (5 in the paper)."""
    per_dimension_mixture: bool = False
    """False: one mixture of K diagonal Gaussians over the whole next code, with one set of mixture
    weights. True: an independent K-component mixture for each latent dimension, as the authors'
    released code factorises it."""
    predict_reward: bool = True
    """Learn the reward received on arriving at the next step (needed to train C in the dream;
    the paper's CarRacing M did not predict it)."""
    predict_done: bool = True
    """Learn the probability that the next step ends the episode (the paper's Doom M does)."""


@dataclass(frozen=True)
class VAEMDNRNNLossScales:
    """Weights of the loss terms, in one place (reported unweighted as `loss/<term>`)."""

    reconstruction: float = 1.0
    """Weight of V's summed squared pixel error per frame (`loss/reconstruction`)."""
    kl: float = 1.0
    """Weight of V's KL term, after the free-nats floor (`loss/kl`)."""
    next_latent: float = 1.0
    """Weight of M's negative log-likelihood of the next code, per latent dimension (`loss/next_latent`)."""
    reward: float = 1.0
    """Weight of M's squared reward error (`loss/reward`)."""
    done: float = 1.0
    """Weight of M's binary cross-entropy of the terminal flag (`loss/done`)."""


@dataclass(frozen=True)
class VAEMDNRNNConfig(Config):
    """The combined V + M world model. Optimisers belong to the algorithm that trains it."""

    limits = ranges(positive="temperature")

    vae: ConvVAEConfig = field(default_factory=ConvVAEConfig)
    """V's sizes and KL floor."""
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    """M's sizes and heads."""
    temperature: float = 1.0
    """Default tau for sampling the next code in `imagine` (a call may override it)."""
    loss_scales: VAEMDNRNNLossScales = field(default_factory=VAEMDNRNNLossScales)
    """Weights of the reconstruction, KL, next-code, reward and done terms."""


# ----------------------------------------------------------------------------------------------
# Frames


def prepare_frames(images: Any, crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> np.ndarray:
    """Frames as V takes them: uint8 (..., H, W, C) -> uint8 (..., 64, 64, C).

    `crop` removes (top, bottom, left, right) pixels first (the authors drop CarRacing's bottom
    dashboard: rows 84-95 of 96); the rest is resized with an antialiased bilinear filter. Frames
    already 64x64 with no crop come back unchanged.
    """
    images = np.asarray(images)
    if images.ndim < 3 or images.dtype != np.uint8:
        raise ShapeError(f"frames: expected uint8 (..., H, W, C), got {images.dtype} {tuple(images.shape)}")
    top, bottom, left, right = (int(value) for value in crop)
    height, width = images.shape[-3], images.shape[-2]
    if min(top, bottom, left, right) < 0 or top + bottom >= height or left + right >= width:
        raise ValueError(f"crop {crop} (top, bottom, left, right) does not leave any of a {height}x{width} frame")
    if (top, bottom, left, right) != (0, 0, 0, 0):
        images = images[..., top : height - bottom, left : width - right, :]
    if images.shape[-3:-1] == (IMAGE_SIZE, IMAGE_SIZE):
        return images
    leading = images.shape[:-3]
    flat = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).float()
    resized = F.interpolate(flat, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    resized = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return resized.reshape(*leading, IMAGE_SIZE, IMAGE_SIZE, images.shape[-1]).numpy()


def image_channels(observation_space: spaces.Space) -> int:
    """C of a Dict space's 'image' entry, which must be uint8 (H, W, C)."""
    space = (
        observation_space["image"]
        if isinstance(observation_space, spaces.Dict) and "image" in observation_space.spaces
        else None
    )
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8 or len(space.shape) != 3:
        keys = sorted(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else observation_space
        raise IncompatibleSpaceError(
            f"the VAE-MDN-RNN world model reads 'image' frames, uint8 (H, W, C), and this environment gives {keys}; "
            "for vector observations use the MLP or RSSM models"
        )
    return int(space.shape[-1])


def action_size(action_space: spaces.Space) -> tuple[int, bool]:
    """(A, whether actions are discrete) for a 1-D Box or a Discrete space starting at 0."""
    return action_layout(action_space, "the VAE-MDN-RNN world model")


# ----------------------------------------------------------------------------------------------
# V


class ConvVAE(nn.Module):
    """V: frames (N, C, 64, 64) in [0, 1] <-> codes (N, Z)."""

    def __init__(self, config: ConvVAEConfig, channels: int = 3):
        super().__init__()
        self.config = config
        widths = tuple(config.channels)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"channels must be four positive widths, got {config.channels}")
        layers: list[nn.Module] = []
        previous = channels
        for width in widths:  # 64 -> 31 -> 14 -> 6 -> 2
            layers += [nn.Conv2d(previous, width, kernel_size=4, stride=2), nn.ReLU()]
            previous = width
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        features = widths[-1] * 2 * 2
        self.mean = nn.Linear(features, config.latent_size)
        self.log_variance = nn.Linear(features, config.latent_size)
        # The decoder starts from a 1x1 map of 2*2*c4 features (1024 in the paper): 1 -> 5 -> 13 -> 30 -> 64.
        self.expand = nn.Linear(config.latent_size, features)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(features, widths[2], kernel_size=5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(widths[2], widths[1], kernel_size=5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(widths[1], widths[0], kernel_size=6, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(widths[0], channels, kernel_size=6, stride=2),
            nn.Sigmoid(),
        )

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (N, C, 64, 64) -> (mean (N, Z), log-variance (N, Z)) of q(z | x)."""
        features = self.encoder(frames)
        return self.mean(features), self.log_variance(features)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """codes (N, Z) -> frames (N, C, 64, 64) in [0, 1]."""
        return self.decoder(self.expand(latent)[:, :, None, None])


def gaussian_kl_to_standard_normal(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) summed over the last dim:
    -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)  (Eq. 10, arXiv:1312.6114)."""
    return -0.5 * (1.0 + log_variance - mean.square() - log_variance.exp()).sum(-1)


# ----------------------------------------------------------------------------------------------
# The mixture density


def mixture_log_likelihood(
    target: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor
) -> torch.Tensor:
    """log p(target) under a mixture of diagonal Gaussians (Sec. 2.2, arXiv:1803.10122):

        G = 1: log sum_k pi_k prod_j N(x_j; mu_kj, sigma_kj)
        G = Z: sum_j log sum_k pi_kj N(x_j; mu_kj, sigma_kj)

    target (..., Z), logits (..., K, G) (pi = softmax over K), means and log_stds (..., K, Z)
    -> (...). Computed with logsumexp, so far-away targets stay finite.
    """
    groups = logits.shape[-1]
    if groups not in (1, target.shape[-1]):
        raise ShapeError(
            f"mixture logits: expected (..., K, 1) or (..., K, {target.shape[-1]}), got {tuple(logits.shape)}"
        )
    standardised = (target.unsqueeze(-2) - means) * torch.exp(-log_stds)
    log_normal = -0.5 * standardised.square() - log_stds - _LOG_SQRT_TWO_PI  # (..., K, Z)
    if groups == 1:
        log_normal = log_normal.sum(-1, keepdim=True)  # (..., K, 1): one diagonal Gaussian per component
    log_weights = F.log_softmax(logits, dim=-2)
    return torch.logsumexp(log_weights + log_normal, dim=-2).sum(-1)


def sample_mixture(
    logits: torch.Tensor,
    means: torch.Tensor,
    log_stds: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sample per row with temperature tau: component ~ softmax(logits / tau), then
    x = mu_k + sigma_k * sqrt(tau) * eps (the paper's temperature, as in its VizDoom experiment). tau = 0 returns the
    mean of the most likely component.

    logits (..., K, G), means and log_stds (..., K, Z) -> (..., Z).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    K, G = logits.shape[-2:]
    Z = means.shape[-1]
    if temperature == 0:
        component = logits.argmax(-2)  # (..., G)
    else:
        probabilities = F.softmax(logits / temperature, dim=-2).movedim(-2, -1).reshape(-1, K)
        component = torch.multinomial(probabilities, 1, generator=generator).reshape(*logits.shape[:-2], G)
    index = component.unsqueeze(-2).expand(*component.shape[:-1], 1, Z)  # G = 1 broadcasts to every dim
    mean = means.gather(-2, index).squeeze(-2)
    if temperature == 0:
        return mean
    std = log_stds.gather(-2, index).squeeze(-2).exp()
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * math.sqrt(temperature) * noise


# ----------------------------------------------------------------------------------------------
# M


class MDNRNN(nn.Module):
    """M: an LSTM over [z_t, a_t] and, from its output h_{t+1}, the mixture over z_{t+1}, the
    reward on arriving at t + 1 and the logit that t + 1 is terminal."""

    def __init__(self, config: MDNRNNConfig, latent_size: int, action_size: int):
        super().__init__()
        if config.mixtures < 1 or config.hidden_size < 1:
            raise ValueError(
                f"mixtures and hidden_size must be positive, got {config.mixtures} and {config.hidden_size}"
            )
        self.config = config
        self.latent_size = latent_size
        self.groups = latent_size if config.per_dimension_mixture else 1
        K, Z, D = config.mixtures, latent_size, config.hidden_size
        self.lstm = nn.LSTM(Z + action_size, D, batch_first=True)
        self.mixture_head = nn.Linear(D, K * self.groups + 2 * K * Z)
        self.reward_head = nn.Linear(D, 1) if config.predict_reward else None
        self.done_head = nn.Linear(D, 1) if config.predict_done else None

    def mixture(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (..., D) -> (logits (..., K, G), means (..., K, Z), log_stds (..., K, Z))."""
        K, Z, G = self.config.mixtures, self.latent_size, self.groups
        output = self.mixture_head(hidden)
        logits, means, log_stds = output.split([K * G, K * Z, K * Z], dim=-1)
        shape = hidden.shape[:-1]
        return logits.reshape(*shape, K, G), means.reshape(*shape, K, Z), log_stds.reshape(*shape, K, Z)

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (...)
        if self.reward_head is None:
            return hidden.new_zeros(hidden.shape[:-1])
        return self.reward_head(hidden).squeeze(-1)

    def done_logit(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (...); -inf: never done
        if self.done_head is None:
            return hidden.new_full(hidden.shape[:-1], -math.inf)
        return self.done_head(hidden).squeeze(-1)

    def step(self, inputs: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step: inputs (B, Z + A), hidden and cell (B, D) -> the next (hidden, cell)."""
        _, (hidden, cell) = self.lstm(inputs[:, None], (hidden[None].contiguous(), cell[None].contiguous()))
        return hidden[0], cell[0]

    def unroll(
        self,
        inputs: torch.Tensor,
        is_first: torch.Tensor,
        hidden: torch.Tensor,
        cell: torch.Tensor,
        keep_cells: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """h_t = 0 where is_first_t, else LSTM(inputs_t, h_{t-1}), for inputs (B, T, Z + A),
        is_first (B, T) bool, and the state before the sequence (B, D) twice.

        Returns (hidden states (B, T, D), cell states (B, T, D) when keep_cells else None,
        (last hidden, last cell) (B, D)). Without resets after the first step, the fused
        multi-step LSTM does the work; otherwise it goes one step at a time.
        """
        T = inputs.shape[1]
        keep = ~is_first[..., None]
        if not keep_cells and not bool(is_first[:, 1:].any()):
            hidden, cell = self.step(inputs[:, 0], hidden, cell)
            hidden, cell = hidden * keep[:, 0], cell * keep[:, 0]
            if T == 1:
                return hidden[:, None], None, (hidden, cell)
            rest, (last_hidden, last_cell) = self.lstm(
                inputs[:, 1:], (hidden[None].contiguous(), cell[None].contiguous())
            )
            return torch.cat([hidden[:, None], rest], 1), None, (last_hidden[0], last_cell[0])
        hiddens, cells = [], []
        for t in range(T):
            hidden, cell = self.step(inputs[:, t], hidden, cell)
            hidden, cell = hidden * keep[:, t], cell * keep[:, t]
            hiddens.append(hidden)
            cells.append(cell)
        return torch.stack(hiddens, 1), torch.stack(cells, 1) if keep_cells else None, (hidden, cell)


# ----------------------------------------------------------------------------------------------
# V + M: the WorldModel


class VAEMDNRNN(nn.Module):
    """WorldModel: V encodes frames, M imagines forward in V's code space, V decodes."""

    can_decode = True

    def __init__(self, config: VAEMDNRNNConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        self.channels = image_channels(observation_space)
        self.action_size, self.discrete = action_size(action_space)
        self.latent_size = config.vae.latent_size
        self.hidden_size = config.mdnrnn.hidden_size
        self.vae = ConvVAE(config.vae, self.channels)
        self.mdnrnn = MDNRNN(config.mdnrnn, self.latent_size, self.action_size)

    @property
    def device(self) -> torch.device:
        return self.vae.mean.weight.device

    @property
    def feature_size(self) -> int:
        """Size of `features(state)`: [z, h]."""
        return self.latent_size + self.hidden_size

    # --- inputs ------------------------------------------------------------------------------

    def frames(self, images: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """uint8 images (*leading, 64, 64, C) -> float frames (N, C, 64, 64) in [0, 1]."""
        images = torch.as_tensor(images, device=self.device)
        check_shape("obs['image']", images, (*leading, IMAGE_SIZE, IMAGE_SIZE, self.channels), sizes)
        if images.dtype != torch.uint8:
            raise ShapeError(f"obs['image'] must be uint8 frames, got {images.dtype}")
        return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, self.channels).permute(0, 3, 1, 2).float() / 255.0

    def encode_action(self, action: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """(*leading, A) float actions: Box actions as given; Discrete ones from indices
        (*leading) or one-hot vectors (*leading, A)."""
        action = torch.as_tensor(action, device=self.device)
        if not self.discrete:
            check_shape("action", action, (*leading, self.action_size), sizes)
            return action.float()
        return discrete_action_input(action, self.action_size, leading, sizes)

    def check_state(self, state: dict[str, torch.Tensor], sizes: dict[str, int] | None = None) -> dict[str, int]:
        sizes = {} if sizes is None else sizes
        if not isinstance(state, dict) or not {"latent", "hidden", "cell"} <= set(state):
            raise ShapeError("state: expected a dict with 'latent' (B, Z), 'hidden' (B, D) and 'cell' (B, D)")
        check_shape("state['latent']", state["latent"], ("B", self.latent_size), sizes)
        check_shape("state['hidden']", state["hidden"], ("B", self.hidden_size), sizes)
        check_shape("state['cell']", state["cell"], ("B", self.hidden_size), sizes)
        return sizes

    # --- V -----------------------------------------------------------------------------------

    def encode(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (..., 64, 64, C) -> (mean, log-variance) of q(z | x), each (..., Z)."""
        images = torch.as_tensor(images, device=self.device)
        leading = images.shape[:-3]
        letters = tuple(f"N{index}" for index in range(len(leading)))
        mean, log_variance = self.vae.encode(self.frames(images, letters, {}))
        return mean.reshape(*leading, -1), log_variance.reshape(*leading, -1)

    def decode(self, state: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        """state (a dict with 'latent' (..., Z), or the code itself) -> {"image": uint8 (..., 64, 64, C)}."""
        latent = state["latent"] if isinstance(state, dict) else state
        leading = latent.shape[:-1]
        frames = self.vae.decode(latent.reshape(-1, self.latent_size))
        images = to_pixels(frames).permute(0, 2, 3, 1)
        return {"image": images.reshape(*leading, IMAGE_SIZE, IMAGE_SIZE, self.channels)}

    # --- the WorldModel protocol -------------------------------------------------------------

    def initial(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Zero code and LSTM state for B sequences."""
        zeros = lambda size: torch.zeros(batch_size, size, device=self.device)  # noqa: E731
        return {"latent": zeros(self.latent_size), "hidden": zeros(self.hidden_size), "cell": zeros(self.hidden_size)}

    def features(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the controller reads: [z, h] (..., Z + D) (Sec. 2.3, arXiv:1803.10122)."""
        return torch.cat([state["latent"], state["hidden"]], -1)

    def observe(
        self,
        obs: dict,
        action: Any,
        is_first: Any,
        state: dict[str, torch.Tensor] | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Filter real frames: obs {"image": uint8 (B, T, 64, 64, C)}, action (B, T, A) (or indices
        (B, T)) where action_t led to frame t, is_first (B, T) -> (states {"latent" (B, T, Z),
        "hidden" (B, T, D), "cell" (B, T, D)}, last state (B, ...)).

        z_t is the mean of q(z | x_t), or a sample with `sample=True` (the authors' agent samples).
        """
        images = torch.as_tensor(obs["image"], device=self.device)
        sizes = check_shape("obs['image']", images, ("B", "T", IMAGE_SIZE, IMAGE_SIZE, self.channels))
        actions = self.encode_action(action, ("B", "T"), sizes)
        is_first = episode_starts(is_first, self.device, sizes)
        B, T = sizes["B"], sizes["T"]
        state = self.initial(B) if state is None else state
        self.check_state(state, sizes)
        mean, log_variance = self.vae.encode(self.frames(images, ("B", "T"), sizes))
        latents = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latents = mean + (0.5 * log_variance).exp() * noise
        latents = latents.reshape(B, T, self.latent_size)
        previous = torch.cat([state["latent"][:, None], latents[:, :-1]], 1)
        hiddens, cells, (hidden, cell) = self.mdnrnn.unroll(
            torch.cat([previous, actions], -1), is_first, state["hidden"], state["cell"], keep_cells=True
        )
        states = {"latent": latents, "hidden": hiddens, "cell": cells}
        return states, {"latent": latents[:, -1], "hidden": hidden, "cell": cell}

    def step(
        self,
        state: dict[str, torch.Tensor],
        action: torch.Tensor,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One dream step: state (B, ...), encoded action (B, A) -> (next state, reward (B,),
        probability of continuing (B,))."""
        temperature = self.config.temperature if temperature is None else temperature
        hidden, cell = self.mdnrnn.step(torch.cat([state["latent"], action], -1), state["hidden"], state["cell"])
        latent = sample_mixture(*self.mdnrnn.mixture(hidden), temperature=temperature, generator=generator)
        continues = torch.sigmoid(-self.mdnrnn.done_logit(hidden))
        return {"latent": latent, "hidden": hidden, "cell": cell}, self.mdnrnn.reward(hidden), continues

    def imagine(
        self,
        state: dict[str, torch.Tensor],
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        decode: bool = False,
    ) -> Trajectory:
        """Dream forward from state (B, ...) with actions (B, L, A) (indices (B, L) when discrete)
        or a policy(state) -> action (B, A) | (B,). Step l holds the state reached by action l,
        the reward received there and the probability that it is not terminal: states
        {"latent" (B, L, Z), "hidden" (B, L, D), "cell" (B, L, D)}, actions (B, L, A), rewards and
        continues (B, L), and with `decode=True` observations {"image": (B, L, 64, 64, C)}.

        `temperature` (default: the config's) scales the uncertainty of the dream; `generator`
        makes the sampling reproducible.
        """
        sizes = self.check_state(state)
        choose, horizon = action_source(actions_or_policy, horizon, sizes, self.encode_action)
        taken, (reached, rewards, continues) = roll_steps(
            lambda current, action: self.step(current, action, temperature, generator), state, horizon, choose
        )
        states = {key: torch.stack([step[key] for step in reached], 1) for key in ("latent", "hidden", "cell")}
        observations = self.decode(states) if decode else None
        return Trajectory(
            states=states,
            actions=torch.stack(taken, 1),
            rewards=torch.stack(rewards, 1),
            continues=torch.stack(continues, 1),
            observations=observations,
        )

    # --- losses ------------------------------------------------------------------------------

    def vae_terms(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """V's terms for frames (N, C, 64, 64) in [0, 1] -> ({reconstruction, kl, raw kl}, codes (N, Z))."""
        mean, log_variance = self.vae.encode(frames)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latent = mean + (0.5 * log_variance).exp() * noise  # the reparameterisation trick
        reconstruction = self.vae.decode(latent)
        # The frame's log-likelihood under a fixed-variance Gaussian, up to constants: the summed
        # squared error, as the authors' V is trained (Eq. 10's second term, arXiv:1312.6114).
        squared_error = (reconstruction - frames).square().flatten(1).sum(-1).mean()
        kl = gaussian_kl_to_standard_normal(mean, log_variance)
        floor = self.config.vae.free_nats * self.latent_size
        return {"reconstruction": squared_error, "kl": kl.clamp(min=floor).mean(), "kl_raw": kl.mean()}, latent

    def vae_loss(self, images: Any, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """V alone on uint8 frames (N, 64, 64, C): (weighted loss, metrics)."""
        terms, _ = self.vae_terms(self.frames(images, ("N",), {}), generator)
        scales = self.config.loss_scales
        loss = scales.reconstruction * terms["reconstruction"] + scales.kl * terms["kl"]
        return loss, {
            "loss/reconstruction": float(terms["reconstruction"].detach()),
            "loss/kl": float(terms["kl"].detach()),
            "wm/kl_raw": float(terms["kl_raw"].detach()),
        }

    def mdnrnn_terms(
        self, latents: torch.Tensor, action: Any, reward: Any, is_first: Any, is_terminal: Any, mask: Any = None
    ) -> dict[str, torch.Tensor]:
        """M's terms on codes (B, T, Z) of real sequences with action (B, T, A) (action_t led to
        step t), reward, is_first and is_terminal (B, T). Step t is predicted from h_t, which has
        seen steps < t; each window starts afresh, so its first step is not predicted. `mask`
        (B, T) marks the steps that exist, when windows are padded past an episode's end."""
        sizes = check_shape("latents", latents, ("B", "T", self.latent_size))
        actions = self.encode_action(action, ("B", "T"), sizes)
        reward, is_first, is_terminal = signal_tensors(reward, is_first, is_terminal, self.device, sizes)
        is_first = is_first.clone()
        is_first[:, 0] = True
        exists = torch.ones_like(is_first) if mask is None else torch.as_tensor(mask, device=self.device).bool()
        check_shape("mask", exists, ("B", "T"), sizes)
        previous = torch.cat([torch.zeros_like(latents[:, :1]), latents[:, :-1]], 1)
        zeros = latents.new_zeros(sizes["B"], self.hidden_size)
        hiddens, _, _ = self.mdnrnn.unroll(torch.cat([previous, actions], -1), is_first, zeros, zeros)
        predicted = (~is_first & exists).float()
        count = predicted.sum().clamp(min=1.0)
        # -log P(z_t | h_t) per latent dimension (Sec. 2.2, arXiv:1803.10122), so that its scale
        # does not grow with Z; the authors average the per-dimension mixture loss the same way.
        log_likelihood = mixture_log_likelihood(latents, *self.mdnrnn.mixture(hiddens))
        terms = {"next_latent": -(log_likelihood * predicted).sum() / count / self.latent_size}
        if self.mdnrnn.reward_head is not None:
            terms["reward"] = ((self.mdnrnn.reward(hiddens) - reward).square() * predicted).sum() / count
        if self.mdnrnn.done_head is not None:
            cross_entropy = F.binary_cross_entropy_with_logits(
                self.mdnrnn.done_logit(hiddens), is_terminal, reduction="none"
            )
            terms["done"] = (cross_entropy * predicted).sum() / count
        return terms

    def mdnrnn_loss(
        self, latents: torch.Tensor, action: Any, reward: Any, is_first: Any, is_terminal: Any, mask: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """M alone on codes (B, T, Z): (weighted loss, metrics)."""
        terms = self.mdnrnn_terms(latents, action, reward, is_first, is_terminal, mask)
        scales = self.config.loss_scales
        loss = sum(getattr(scales, name) * value for name, value in terms.items())
        return loss, {f"loss/{name}": float(value.detach()) for name, value in terms.items()}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """V and M on real sequences: obs {"image": uint8 (B, T, 64, 64, C)}, action (B, T, A),
        reward / is_first / is_terminal (B, T). M learns from V's sampled codes with the gradient
        stopped, so V is shaped by reconstruction alone, as when the paper trains them in turn."""
        images = torch.as_tensor(batch.obs["image"], device=self.device)
        sizes = check_shape("obs['image']", images, ("B", "T", IMAGE_SIZE, IMAGE_SIZE, self.channels))
        vae_terms, latents = self.vae_terms(self.frames(images, ("B", "T"), sizes))
        terms = {"reconstruction": vae_terms["reconstruction"], "kl": vae_terms["kl"]}
        latents = latents.detach().reshape(sizes["B"], sizes["T"], self.latent_size)
        terms.update(self.mdnrnn_terms(latents, batch.action, batch.reward, batch.is_first, batch.is_terminal))
        scales = self.config.loss_scales
        loss = sum(getattr(scales, name) * value for name, value in terms.items())
        metrics = {f"loss/{name}": float(value.detach()) for name, value in terms.items()}
        metrics["wm/kl_raw"] = float(vae_terms["kl_raw"].detach())
        return loss, metrics

"""TD-MPC2's implicit world model (Hansen, Su & Wang, arXiv:2310.16828): no decoder.

Five components (Sec. 3.1), all MLPs with LayerNorm and Mish:
- encoder      z = h(s): an MLP for vectors, a small conv net for 64x64 pixels, ending in SimNorm;
- dynamics     z' = d(z, a): ending in SimNorm, so latents stay on a product of simplices;
- reward       r = R(z, a): logits over 101 two-hot bins in symlog space;
- value        q = Q(z, a): an ensemble of Q-functions (dropout 1% on the first layer), with a
               slowly moving copy (Polyak average, tau 0.01) for TD targets;
- policy prior a ~ p(z): a tanh-squashed Gaussian (a categorical for Discrete actions, a wmlab
               extension), trained for high Q and a little entropy.

The latent state is learned without reconstruction: the dynamics must predict the encoder's own
latent of the next observation (the joint-embedding "consistency" term), and the latent must
support reward and value prediction. `decode` therefore raises NotImplementedError.

Actions enter the networks in model units: a Box is rescaled to [-1, 1] (TD-MPC2 assumes that
range), a Discrete action is one-hot. `to_model_action` / `to_env_action` convert.

Multi-task (the paper's generalist agents, trained on up to 80 tasks): when the observation space
has a `task` entry (a Discrete(n) index, as `wmlab.envs.multitask` gives), the model learns one embedding of
`task_embedding_size` (96) per task, kept within the unit ball (an nn.Embedding with max_norm=1),
and appends it to the input of the encoder, dynamics, reward, Q-functions, policy prior and
termination head. With an `action_mask` entry (A,) as well, the policy prior's mean, log std and
noise are zeroed outside the task's own action dimensions, whose log-density alone is counted,
and actions entering the model in training are masked the same way. Every method that needs the
task takes `task` (indices whose shape is a prefix of the input's leading shape) and, where the
policy is involved, `action_mask` (the same prefix, then A); a single-task model ignores `task`.

Shape legend: B batch, T time, H training horizon (T - 1), L imagination horizon, N candidates,
A action dim (K discrete actions), D latent size, E ensemble members, C, H, W image,
M task embedding size.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, above, at_least, between, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.rollout import action_source, roll_steps
from wmlab.core.shapes import check_shape
from wmlab.core.sizes import SizeTable
from wmlab.core.spaces import BoxBounds, action_layout, discrete_action_input
from wmlab.core.types import Batch, Trajectory
from wmlab.nn.activations import Mish
from wmlab.nn.distributions import TwoHot
from wmlab.nn.ensemble import EnsembleMLP
from wmlab.nn.mlp import dense_layers
from wmlab.nn.norms import SimNorm


@dataclass(frozen=True)
class TDMPCSizes(Config):
    """The widths that a size preset fixes (one column of SIZES)."""

    limits = ranges(counts="encoder_width mlp_width latent_size encoder_layers", q_functions=at_least(2))

    encoder_width: int
    """Units of the vector encoder's hidden layers."""
    mlp_width: int
    """Units of the hidden layers of dynamics, reward, value and policy."""
    latent_size: int
    """Latent size D, a multiple of `simnorm_group`."""
    encoder_layers: int
    """Layers of the vector encoder, the output layer included."""
    q_functions: int
    """Members of the Q ensemble, at least 2: the TD targets take the min of two (5 for 5M-48M, 2 for
    1M, 8 for 317M)."""


#: TD-MPC2's model sizes (its common/__init__.py MODEL_SIZE). The names are the paper's parameter
#: counts for its multi-task setting; the measured counts for a given task differ (see the README).
SIZES: SizeTable[TDMPCSizes] = SizeTable(
    TDMPCSizes,
    "TD-MPC2",
    """
    size            1M   5M   19M   48M   317M
    encoder_width   256  256  1024  1792  4096
    mlp_width       384  512  1024  1792  4096
    latent_size     128  512  768   768   1376
    encoder_layers  2    2    3     4     5
    q_functions     2    5    5     5     8
    """,
)


@dataclass(frozen=True)
class TDMPCLossScales:
    """Weights of the joint model loss (reported unweighted as `loss/<term>`)."""

    consistency: float = 20.0
    """Weight of the latent consistency (joint-embedding prediction) term."""
    reward: float = 0.1
    """Weight of the two-hot reward cross-entropy."""
    value: float = 0.1
    """Weight of the two-hot TD-target cross-entropy, averaged over the Q ensemble."""
    termination: float = 1.0
    """Weight of the termination head's binary cross-entropy (only with `episodic`)."""


@dataclass(frozen=True)
class TDMPCModelConfig(Config):
    """TD-MPC2's world model; the defaults are the paper's (its config.yaml). The optimisers belong
    to the algorithm that trains it."""

    limits = ranges(
        counts="conv_channels simnorm_group task_embedding_size",
        non_negative="entropy_coef image_shift",
        fractions="target_tau scale_tau",
        bins=at_least(2),
        value_high=above("value_low"),
        dropout=between(0, 1, high_open=True),
        log_std_max=above("log_std_min"),
        rho=between(0, 1, low_open=True),
        discount=between(0, 1, low_open=True),
    )

    size: SIZES.annotation = SIZES["5M"]
    """The widths: a size preset (1M, 5M, 19M, 48M or 317M: TD-MPC2's) and any changed fields
    (`--agent.model.size 1M latent_size=64`; in Python `SIZES.preset("1M", latent_size=64)`)."""
    conv_channels: int = 32
    """Channels of each layer of the pixel encoder."""
    simnorm_group: int = 8
    """Size of each SimNorm group of the latent."""
    bins: int = 101
    """Two-hot bins of the reward and value heads."""
    value_low: float = -10.0
    """Lowest bin, in symlog space."""
    value_high: float = 10.0
    """Highest bin, in symlog space."""
    dropout: float = 0.01
    """Dropout on the first layer of each Q-function."""
    log_std_min: float = -10.0
    """Lowest log standard deviation of the policy prior."""
    log_std_max: float = 2.0
    """Highest log standard deviation of the policy prior."""
    entropy_coef: float = 1e-4
    """Weight beta of the policy's entropy bonus."""
    rho: float = 0.5
    """Per-step weight rho^t of every loss term along the training horizon."""
    discount: float = 0.99
    """Discount of the TD targets and of planning. TD-MPC2 sets it from the episode length:
    clip((L/5 - 1) / (L/5), 0.95, 0.995), which is 0.99 for DMC's 500 steps (1000 with action repeat 2)."""
    target_tau: float = 0.01
    """Polyak rate of the target Q ensemble (a momentum of 0.99)."""
    scale_tau: float = 0.01
    """Rate of the running 5-95 percentile range that scales Q in the policy loss."""
    episodic: bool = False
    """Learn a termination head on the rolled-out latents and stop planned returns at predicted
    terminals (the authors' later `episodic` option, off in the paper's continuous-control tasks;
    worth turning on where episodes end on failure, like CartPole)."""
    image_shift: int = 3
    """Pixels of random-shift augmentation of image observations in training (DrQ's; 0: none)."""
    task_embedding_size: int = 96
    """Size M of the learned task embedding of a multi-task model (TD-MPC2's task_dim); used only
    when the observations carry a `task` index."""
    task_discounts: tuple[float, ...] = ()
    """Multi-task: the discount of each task, by task index (TD-MPC2 sets each from its episode
    length with the heuristic of `discount`); empty: `discount` for every task."""
    loss_scales: TDMPCLossScales = field(default_factory=TDMPCLossScales)
    """Weights of the consistency, reward and value terms."""


class PolicyOutput(NamedTuple):
    """action: a sample (B, A) in [-1, 1] (continuous) or one-hot (B, K) (discrete); mode: the
    squashed mean or the most probable one-hot; log_prob (B,) of the sample; entropy (B,) of the
    discrete distribution or -log_prob of the sample; probabilities (B, K) when discrete, else None."""

    action: torch.Tensor
    mode: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    probabilities: torch.Tensor | None


@dataclass
class TDMPCLoss:
    """The joint loss and what the policy update reuses: the latents rolled out by the dynamics
    (B, H + 1, D), which of them are valid (B, H + 1) (no episode boundary crossed) and, for a
    multi-task model, each window's task (B,) and action mask (B, A) (else None)."""

    total: torch.Tensor
    metrics: dict[str, float]
    latents: torch.Tensor
    valid: torch.Tensor
    task: torch.Tensor | None = None
    action_mask: torch.Tensor | None = None


def rho_weights(rho: float, steps: int, device=None) -> torch.Tensor:
    """rho^t for t = 0..steps-1: later steps of a rollout count less (the model objective,
    Sec. 3.1 of arXiv:2310.16828)."""
    return rho ** torch.arange(steps, device=device, dtype=torch.float32)


def masked_step_means(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each step's valid entries: values, valid (B, S) -> (S,). With every
    entry valid this is TD-MPC2's per-step batch mean."""
    valid = valid.to(values.dtype)
    return (values * valid).sum(0) / valid.sum(0).clamp_min(1.0)


def horizon_loss(values: torch.Tensor, valid: torch.Tensor, rho: float) -> torch.Tensor:
    """(1/H) sum_t rho^t mean_b values[b, t] over valid entries (the model objective, Sec. 3.1 of
    arXiv:2310.16828): one loss term over a horizon of H steps; values, valid (B, H) -> ()."""
    steps = values.shape[1]
    return (rho_weights(rho, steps, values.device) * masked_step_means(values, valid)).sum() / steps


def td_target(reward: torch.Tensor, terminal: torch.Tensor, next_value: torch.Tensor, discount: float) -> torch.Tensor:
    """q_t = r_t + discount * (1 - terminal_t) * V(z_{t+1}) (TD-MPC2's TD target, Sec. 3.1 of
    arXiv:2310.16828, with bootstrapping cut at true terminal states)."""
    return reward + discount * (1.0 - terminal.to(reward.dtype)) * next_value


def min_of_two(values: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """The smaller of two ensemble members' values: values (E, ...), members (2,) -> (...)."""
    return torch.minimum(values[members[0]], values[members[1]])


def gaussian_log_prob(noise: torch.Tensor, log_std: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log N(mean + std * noise; mean, std) summed over the action dimension: (B, A) -> (B,);
    with a mask (B, A), over the dimensions where it is 1 only (TD-MPC2's multi-task policy)."""
    terms = -0.5 * noise.pow(2) - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    return (terms if mask is None else terms * mask).sum(-1)


def squash_log_prob(log_prob: torch.Tensor, squashed: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The log-density after tanh: log p(u) - sum log(1 - tanh(u)^2) (SAC's change of variables);
    the small constant keeps log finite where tanh saturates. A mask (B, A) keeps the sum to the
    dimensions where it is 1."""
    corrections = torch.log(F.relu(1 - squashed.pow(2)) + 1e-6)
    return log_prob - (corrections if mask is None else corrections * mask).sum(-1)


def expand_to(values: torch.Tensor, leading: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """values (*prefix, F) -> (*leading, F), where prefix is a prefix of leading: per-sample (or
    per-window) task quantities broadcast over the trailing dims (time, candidates) of an input."""
    while values.ndim - 1 < len(leading):
        values = values.unsqueeze(-2)
    return values.expand(*leading, values.shape[-1])


class ShiftAugmentation(nn.Module):
    """Random integer shifts of up to `pad` pixels (replicate padding, then a random crop), DrQ's
    augmentation that TD-MPC2 uses for pixels. images (B, C, H, W) float -> same shape."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pad <= 0 or not self.training:
            return images
        B, _, H, W = images.shape
        padded = F.pad(images, (self.pad,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * self.pad + 1, (2, B), device=images.device)
        rows = (offsets[0][:, None] + torch.arange(H, device=images.device))[:, :, None]  # (B, H, 1)
        columns = (offsets[1][:, None] + torch.arange(W, device=images.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(B, device=images.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, columns].permute(0, 3, 1, 2)


class PixelEncoder(nn.Module):
    """TD-MPC2's conv encoder: pixels in [-0.5, 0.5], four convs (7/2, 5/2, 3/2, 3/1) with ReLU,
    flattened; a linear map to the latent size where the features differ from it; SimNorm.
    images (B, H, W, C) uint8 -> (B, D)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: int, latent_size: int, group: int, shift: int):
        super().__init__()
        height, width, colors = image_shape
        self.augment = ShiftAugmentation(shift)
        self.convs = nn.Sequential(
            nn.Conv2d(colors, channels, 7, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1),
            nn.Flatten(),
        )
        with torch.no_grad():
            features = self.convs(torch.zeros(1, colors, height, width)).shape[-1]
        self.projection = nn.Identity() if features == latent_size else nn.Linear(features, latent_size)
        self.simnorm = SimNorm(group)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.simnorm(self.projection(self.convs(self.augment(x))))


def normed_head(input_size: int, output_size: int, group: int) -> nn.Module:
    """The last layer of encoder and dynamics: Linear -> LayerNorm -> SimNorm."""
    return nn.Sequential(nn.Linear(input_size, output_size), nn.LayerNorm(output_size), SimNorm(group))


def trunk(input_size: int, width: int, layers: int) -> nn.Sequential:
    """`layers` hidden layers Linear -> LayerNorm -> Mish, TD-MPC2's block (the fast Mish of
    wmlab.nn.activations: it was 39% of planning time with aten::mish)."""
    return nn.Sequential(*dense_layers(input_size, width, layers, nn.LayerNorm, Mish))


class TDMPCModel(nn.Module):
    """WorldModel whose state is the SimNorm latent z (B, D)."""

    can_decode = False

    def __init__(self, config: TDMPCModelConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        sizes = config.size
        if sizes.latent_size % config.simnorm_group:
            raise ValueError(
                f"latent_size {sizes.latent_size} is not a multiple of simnorm_group {config.simnorm_group}"
            )
        D, width = sizes.latent_size, sizes.mlp_width
        self.latent_size = D
        self.observation_key, self.observation_shape = observation_entry(observation_space)
        self.discrete, self.action_size = action_entry(action_space)
        self.action_bounds = None if self.discrete else BoxBounds(action_space)
        A = self.action_size
        self.num_tasks, self.masks_actions = task_entries(observation_space, self.action_size, self.discrete)
        if self.num_tasks and self.observation_key == "image":
            raise IncompatibleSpaceError(
                "multi-task TD-MPC2 here encodes state vectors (the authors' multi-task models are state-based too); "
                "observe the tasks from states"
            )
        # Multi-task: one learned embedding per task, renormalised to at most unit L2 norm when looked
        # up, appended to every network's input (TD-MPC2's task_dim 96; 0 without tasks).
        M = config.task_embedding_size if self.num_tasks else 0
        self.task_embedding = nn.Embedding(self.num_tasks, M, max_norm=1.0) if self.num_tasks else None
        if config.task_discounts and len(config.task_discounts) != self.num_tasks:
            raise ValueError(
                f"task_discounts holds {len(config.task_discounts)} discounts for {self.num_tasks} tasks; give one per task (or none)"
            )
        if config.task_discounts:
            self.register_buffer(
                "task_discounts", torch.tensor(config.task_discounts, dtype=torch.float32), persistent=False
            )
        else:
            self.task_discounts = None

        if self.observation_key == "image":
            self.encoder = PixelEncoder(
                self.observation_shape, config.conv_channels, D, config.simnorm_group, config.image_shift
            )
        else:
            hidden = max(sizes.encoder_layers - 1, 1)
            self.encoder = nn.Sequential(
                trunk(self.observation_shape[0] + M, sizes.encoder_width, hidden),
                normed_head(sizes.encoder_width, D, config.simnorm_group),
            )
        self.dynamics = nn.Sequential(trunk(D + M + A, width, 2), normed_head(width, D, config.simnorm_group))
        self.reward_head = nn.Sequential(trunk(D + M + A, width, 2), nn.Linear(width, config.bins))
        self.policy = nn.Sequential(trunk(D + M, width, 2), nn.Linear(width, A if self.discrete else 2 * A))
        self.q_functions = EnsembleMLP(
            sizes.q_functions, D + M + A, config.bins, width, layers=2, activation="mish", dropout=config.dropout
        )
        self.termination_head = nn.Sequential(trunk(D + M, width, 2), nn.Linear(width, 1)) if config.episodic else None
        self._initialise()
        self.target_q_functions = copy.deepcopy(self.q_functions).requires_grad_(False)
        self.two_hot = TwoHot(config.bins, config.value_low, config.value_high, transform="symlog")
        # The running 5-95 percentile range of Q that the policy loss divides by (starts at 1).
        self.register_buffer("value_scale", torch.ones(()))

    def _initialise(self) -> None:
        """TD-MPC2's initialisation: truncated normal (std 0.02) weights, zero biases, and zero
        output weights for reward and Q, so that both start out predicting 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for layer in list(self.q_functions.linears) + [self.q_functions.output]:
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.reward_head[-1].weight)
        nn.init.zeros_(self.q_functions.output.weight)
        if self.task_embedding is not None:
            nn.init.uniform_(self.task_embedding.weight, -0.02, 0.02)  # the authors' embedding initialisation

    def train(self, mode: bool = True) -> "TDMPCModel":
        super().train(mode)
        self.target_q_functions.train(False)  # target values never use dropout
        return self

    @property
    def device(self) -> torch.device:
        return self.value_scale.device

    # --- actions ------------------------------------------------------------------------------

    def to_model_action(
        self, action: Any, leading: tuple[str, ...], sizes: dict[str, int] | None = None
    ) -> torch.Tensor:
        """Environment actions -> model units (*leading, A): a Box rescaled to [-1, 1]; Discrete
        indices (*leading) one-hot (a float (*leading, K) one-hot or probability vector is kept)."""
        sizes = {} if sizes is None else sizes
        action = torch.as_tensor(action, device=self.device)
        if self.discrete:
            return discrete_action_input(action, self.action_size, leading, sizes)
        check_shape("action", action, (*leading, self.action_size), sizes)
        return self.action_bounds.to_unit(action.float()).clamp(-1.0, 1.0)

    def to_env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Model units -> environment actions: (..., A) in the Box's bounds, or indices (...)."""
        if self.discrete:
            return action.argmax(-1)
        return self.action_bounds.from_unit(action)

    # --- tasks (multi-task models only) -------------------------------------------------------

    def task_inputs(self, obs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The task indices (*leading,) int64 and action masks (*leading, A) float of obs, on the
        model's device; None for what this model does not use (both for a single-task model)."""
        task = mask = None
        if self.task_embedding is not None:
            if "task" not in obs:
                raise ShapeError("this multi-task TD-MPC2 model needs obs['task'], the task index of each observation")
            task = torch.as_tensor(obs["task"], device=self.device).long()
            if task.numel() and (task.min() < 0 or task.max() >= self.num_tasks):
                raise ShapeError(
                    f"obs['task']: indices must lie in 0..{self.num_tasks - 1}, got {task.unique().tolist()}"
                )
        if self.masks_actions:
            if "action_mask" not in obs:
                raise ShapeError("this TD-MPC2 model masks actions and needs obs['action_mask'] (..., A)")
            mask = torch.as_tensor(obs["action_mask"], device=self.device).float()
            if mask.shape[-1:] != (self.action_size,):
                raise ShapeError(f"obs['action_mask']: expected (..., {self.action_size}), got {tuple(mask.shape)}")
        return task, mask

    def task_features(self, task: torch.Tensor) -> torch.Tensor:
        """Task indices (...) -> their embeddings (..., M), each of L2 norm at most 1 (nn.Embedding's
        max_norm renormalises the looked-up rows in place, as in the authors' code)."""
        if self.task_embedding is None:
            raise ValueError("this model has no task embedding: its observations carry no 'task' index")
        return self.task_embedding(torch.as_tensor(task, device=self.device).long())

    def with_task(self, x: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """x (..., F) -> (..., F + M), the task's embedding appended (TD-MPC2's task conditioning);
        x itself in a single-task model. task: indices whose shape is a prefix of x's leading shape."""
        if self.task_embedding is None:
            return x
        if task is None:
            raise ValueError("this multi-task TD-MPC2 model needs the task index of its inputs (task=...)")
        return torch.cat([x, expand_to(self.task_features(task), x.shape[:-1])], -1)

    def task_discount(self, task: torch.Tensor | None = None) -> float | torch.Tensor:
        """The discount of each task, task indices (...) -> (...), or `config.discount` (a float)
        without task discounts or without a task."""
        if task is None or self.task_discounts is None:
            return self.config.discount
        return self.task_discounts[torch.as_tensor(task, device=self.device).long()]

    @contextmanager
    def frozen_task_embedding(self):
        """Within this block the task embedding receives no gradient (the policy update's, as the
        authors freeze it with the Q-functions)."""
        if self.task_embedding is None:
            yield
            return
        self.task_embedding.requires_grad_(False)
        try:
            yield
        finally:
            self.task_embedding.requires_grad_(True)

    # --- the five components -----------------------------------------------------------------

    def encode(self, obs: dict, task: torch.Tensor | None = None) -> torch.Tensor:
        """obs {key: (*leading, ...)} -> latents (*leading, D), for any number of leading dims. A
        multi-task model reads obs['task'] (*leading,) unless `task` is given."""
        x = torch.as_tensor(obs[self.observation_key], device=self.device)
        feature_dims = len(self.observation_shape)
        if tuple(x.shape[x.ndim - feature_dims :]) != self.observation_shape or x.ndim <= feature_dims:
            raise ShapeError(
                f"obs[{self.observation_key!r}]: expected (..., {', '.join(map(str, self.observation_shape))}), got {tuple(x.shape)}"
            )
        leading = x.shape[: x.ndim - feature_dims]
        flat = x.reshape(-1, *self.observation_shape)
        if self.observation_key == "vector":
            flat = flat.float()
        if self.task_embedding is not None:
            if task is None:
                task = self.task_inputs(obs)[0]
            task = torch.as_tensor(task, device=self.device)
            flat = self.with_task(flat, torch.broadcast_to(task, leading).reshape(-1))
        return self.encoder(flat).reshape(*leading, self.latent_size)

    def next(self, latent: torch.Tensor, action: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """z' = d(z, a): (..., D), (..., A) -> (..., D)."""
        return self.dynamics(torch.cat([self.with_task(latent, task), action], -1))

    def reward_logits(
        self, latent: torch.Tensor, action: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(..., D), (..., A) -> two-hot logits (..., bins) of the reward received for a in z."""
        return self.reward_head(torch.cat([self.with_task(latent, task), action], -1))

    def reward(
        self, latent: torch.Tensor, action: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:  # -> (...)
        return self.two_hot.decode(self.reward_logits(latent, action, task))

    def q_logits(
        self,
        latent: torch.Tensor,
        action: torch.Tensor,
        members: torch.Tensor | None = None,
        target: bool = False,
        detach: bool = False,
        dropout: bool = True,
        task: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(..., D), (..., A) -> logits (E', ..., bins) of the selected ensemble members."""
        ensemble = self.target_q_functions if target else self.q_functions
        return ensemble(
            torch.cat([self.with_task(latent, task), action], -1), members=members, detach=detach, dropout=dropout
        )

    def q_values(self, latent: torch.Tensor, action: torch.Tensor, **kwargs) -> torch.Tensor:
        """Decoded values (E', ...) of the selected members; keywords as for q_logits."""
        return self.two_hot.decode(self.q_logits(latent, action, **kwargs))

    def two_members(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two distinct random members of the Q ensemble, (2,) on the model's device."""
        return torch.randperm(self.config.size.q_functions, generator=generator)[:2].to(self.device)

    def policy_distribution(
        self,
        latent: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """The policy prior at latent (B, D). Continuous: mean and log std from the network, the
        log std squashed into [log_std_min, log_std_max], a reparameterised sample through tanh.
        Discrete: a categorical over K actions, sampled with `generator` (not differentiable: the
        discrete policy loss takes the exact expectation instead); with sample=False the discrete
        action is the mode, which saves the draw where only the probabilities are needed.
        action_mask (a prefix of B, then A): mean, log std and noise are zeroed outside the task's
        action dimensions (so are the sample and the mode), and the log-density counts only its own
        dimensions (TD-MPC2's multi-task policy)."""
        output = self.policy(self.with_task(latent, task))
        if self.discrete:
            log_probabilities = output.log_softmax(-1)
            probabilities = log_probabilities.exp()
            mode_index = probabilities.argmax(-1)
            if sample:
                flat = probabilities.reshape(-1, self.action_size).detach().cpu()
                index = (
                    torch.multinomial(flat, 1, generator=generator).reshape(probabilities.shape[:-1]).to(latent.device)
                )
            else:
                index = mode_index
            action = F.one_hot(index, self.action_size).float()
            mode = F.one_hot(mode_index, self.action_size).float()
            entropy = -(probabilities * log_probabilities).sum(-1)
            log_prob = log_probabilities.gather(-1, index[..., None])[..., 0]
            return PolicyOutput(action, mode, log_prob, entropy, probabilities)
        mean, raw_log_std = output.chunk(2, -1)
        config = self.config
        log_std = config.log_std_min + 0.5 * (config.log_std_max - config.log_std_min) * (torch.tanh(raw_log_std) + 1)
        if noise is None:
            noise = (
                torch.randn(mean.shape, generator=generator).to(mean.device)
                if generator is not None
                else torch.randn_like(mean)
            )
        mask = None
        if action_mask is not None:
            mask = expand_to(torch.as_tensor(action_mask, device=mean.device, dtype=mean.dtype), mean.shape[:-1])
            mean, log_std, noise = mean * mask, log_std * mask, noise * mask
        squashed = torch.tanh(mean + noise * log_std.exp())
        log_prob = squash_log_prob(gaussian_log_prob(noise, log_std, mask), squashed, mask)
        return PolicyOutput(squashed, torch.tanh(mean), log_prob, -log_prob, None)

    def value(
        self,
        latent: torch.Tensor,
        reduction: str = "min",
        target: bool = False,
        generator: torch.Generator | None = None,
        members: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """V(z) = Q(z, a ~ p(z)) over two random ensemble members, their min or average:
        (..., D) -> (...). Discrete policies take the exact expectation over the K actions.
        `members` (2,) and the policy's `noise` (..., A) may be drawn by the caller, which keeps
        this function free of random draws (and so one graph under torch.compile)."""
        if members is None:
            members = self.two_members(generator)
        policy = self.policy_distribution(
            latent, noise=noise, generator=generator, sample=not self.discrete, task=task, action_mask=action_mask
        )
        if self.discrete:
            actions = torch.eye(self.action_size, device=latent.device)  # (K, K)
            expanded = latent.unsqueeze(-2).expand(*latent.shape[:-1], self.action_size, self.latent_size)
            values = self.q_values(
                expanded,
                actions.expand(*latent.shape[:-1], -1, -1),
                members=members,
                target=target,
                dropout=False,
                task=task,
            )  # (2, ..., K)
        else:
            values = self.q_values(
                latent, policy.action, members=members, target=target, dropout=False, task=task
            )  # (2, ...)
        combined = torch.minimum(values[0], values[1]) if reduction == "min" else (values[0] + values[1]) / 2
        if self.discrete:
            combined = (policy.probabilities * combined).sum(-1)
        return combined

    # --- the WorldModel protocol ---------------------------------------------------------------

    def initial(self, batch_size: int) -> torch.Tensor:
        """The uniform point of every simplex, (B, D): a latent that favours nothing."""
        return torch.full((batch_size, self.latent_size), 1.0 / self.config.simnorm_group, device=self.device)

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, T, ...) -> (latents (B, T, D), last latent (B, D)). The encoder sees one
        observation at a time, so neither the actions nor the previous state change the latents."""
        latents = self.encode(obs)
        sizes = check_shape("latents", latents, ("B", "T", self.latent_size))
        self.to_model_action(action, ("B", "T"), sizes)
        check_shape("is_first", torch.as_tensor(is_first), ("B", "T"), sizes)
        return latents, latents[:, -1]

    def imagine(
        self,
        state: torch.Tensor,
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> Trajectory:
        """Roll the dynamics from latent (B, D) with environment actions (B, L, A) / indices (B, L),
        or a policy(latent (B, D)) -> environment action. Step l holds the latent reached by action
        l and the reward predicted for taking it; continues are 1 - P(terminal) of the reached latent
        with an episodic model, else 1 (TD-MPC2 predicts no termination).
        extras["values"] (B, L): V of each reached latent (average of two Qs).
        A multi-task model needs `task` (B,) and, if it masks actions, `action_mask` (B, A)."""
        sizes = check_shape("state", state, ("B", self.latent_size))
        if self.masks_actions and action_mask is None:
            raise ValueError("this TD-MPC2 model masks actions; imagine needs action_mask (B, A)")
        given, horizon = action_source(actions_or_policy, horizon, sizes, self.to_model_action)
        mask = None if action_mask is None else torch.as_tensor(action_mask, device=self.device).float()

        def choose(index: int, latent: torch.Tensor) -> torch.Tensor:
            action = given(index, latent)
            return action if mask is None else action * mask

        def step(latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            reward = self.reward(latent, action, task)  # for taking `action` in `latent`
            return self.next(latent, action, task), reward

        taken, (latents, rewards) = roll_steps(step, state, horizon, choose)
        states = torch.stack(latents, 1)
        rewards_tensor = torch.stack(rewards, 1)
        return Trajectory(
            states=states,
            actions=self.to_env_action(torch.stack(taken, 1)),
            rewards=rewards_tensor,
            continues=1 - torch.sigmoid(self.termination_logits(states, task))
            if self.termination_head is not None
            else torch.ones_like(rewards_tensor),
            observations=None,
            extras={"values": self.value(states, reduction="avg", task=task, action_mask=mask)},
        )

    def termination_logits(self, latent: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Logit that latent (..., D) is terminal, (...); only for an episodic model."""
        if self.termination_head is None:
            raise ValueError("this model has no termination head; build it with episodic=True")
        return self.termination_head(self.with_task(latent, task))[..., 0]

    def decode(self, state: Any) -> dict:
        raise NotImplementedError(
            "TD-MPC2's world model is decoder-free (arXiv:2310.16828, Sec. 3.1): its latent is trained "
            "only to predict its own next latent, rewards and values, never to reconstruct observations, "
            "so there is nothing that maps a latent back to an observation. Use a family with a decoder "
            "(the RSSM, IRIS, diffusion) to see predicted observations."
        )

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(joint loss, metrics) for B windows of T = H + 1 steps; see `compute_loss`."""
        result = self.compute_loss(batch)
        return result.total, result.metrics

    def compute_loss(self, batch: Batch) -> TDMPCLoss:
        """TD-MPC2's model objective (Sec. 3.1, arXiv:2310.16828) over B windows of H + 1 steps:

            sum_{t<H} rho^t [ c ||d(z_t, a_t) - sg(h(s_{t+1}))||^2 + r CE(R(z_t, a_t), r_t)
                              + v mean_e CE(Q_e(z_t, a_t), q_t) ] / H,

        z_0 = h(s_0) and z_{t+1} = d(z_t, a_t) (the latent rollout), q_t the TD target from the
        target ensemble. Step t+1 of the window holds a_t and r_t (wmlab.core.types); transitions
        after an episode boundary inside the window are left out. A multi-task model conditions the
        window on the task of its first step, masks its actions with that step's action mask, and
        discounts each TD target with its task's discount.
        """
        batch = batch.to_torch(self.device)
        observation = batch.obs[self.observation_key]
        sizes = check_shape(f"obs[{self.observation_key!r}]", observation, ("B", "T", *self.observation_shape))
        for name in ("reward", "is_first", "is_terminal"):
            check_shape(name, getattr(batch, name), ("B", "T"), sizes)
        if sizes["T"] < 2:
            raise ShapeError(f"the TD-MPC2 loss needs windows of T >= 2 steps, got T={sizes['T']}")
        H = sizes["T"] - 1
        actions = self.to_model_action(batch.action, ("B", "T"), sizes)[:, 1:]  # (B, H, A)
        rewards = batch.reward[:, 1:].float()
        terminal = batch.is_terminal[:, 1:]
        # A transition counts while the window is still in the episode of its first step.
        valid = torch.cumprod((~batch.is_first[:, 1:].bool()).float(), 1)  # (B, H)
        tasks, masks = self.task_inputs(batch.obs)  # (B, T), (B, T, A) or None
        if tasks is not None:
            check_shape("obs['task']", tasks, ("B", "T"), sizes)
        if masks is not None:
            check_shape("obs['action_mask']", masks, ("B", "T", self.action_size), sizes)
        task = None if tasks is None else tasks[:, 0]  # (B,)
        action_mask = None if masks is None else masks[:, 0]  # (B, A)
        if action_mask is not None:
            actions = actions * action_mask[:, None]
        next_tasks = None if tasks is None else tasks[:, 1:]
        next_masks = None if masks is None else masks[:, 1:]

        with torch.no_grad():
            next_latents = self.encode({self.observation_key: observation[:, 1:]}, task=next_tasks)  # (B, H, D)
            next_values = self.value(next_latents, "min", target=True, task=next_tasks, action_mask=next_masks)
            targets = td_target(rewards, terminal, next_values, self.task_discount(next_tasks))

        latent = self.encode({self.observation_key: observation[:, 0]}, task=task)
        latents, consistency = [latent], []
        for t in range(H):
            latent = self.next(latent, actions[:, t], task)
            consistency.append((latent - next_latents[:, t]).pow(2).mean(-1))
            latents.append(latent)
        rollout = torch.stack(latents, 1)  # (B, H + 1, D)
        reward_loss = self.two_hot.loss(self.reward_logits(rollout[:, :-1], actions, task), rewards)  # (B, H)
        value_loss = self.two_hot.loss(
            self.q_logits(rollout[:, :-1], actions, task=task), targets.expand(self.config.size.q_functions, -1, -1)
        ).mean(0)

        rho = self.config.rho
        terms = {
            "consistency": horizon_loss(torch.stack(consistency, 1), valid, rho),
            "reward": horizon_loss(reward_loss, valid, rho),
            "value": horizon_loss(value_loss, valid, rho),
        }
        scales = self.config.loss_scales
        total = (
            scales.consistency * terms["consistency"] + scales.reward * terms["reward"] + scales.value * terms["value"]
        )
        if self.termination_head is not None:
            # Unweighted by rho, as in the authors' code: a plain mean over the reached latents.
            errors = F.binary_cross_entropy_with_logits(
                self.termination_logits(rollout[:, 1:], task), terminal.float(), reduction="none"
            )
            terms["termination"] = (errors * valid).sum() / valid.sum().clamp_min(1.0)
            total = total + scales.termination * terms["termination"]
        with torch.no_grad():
            values = torch.stack(
                [*terms.values(), total, masked_step_means(targets, valid).mean(), valid.mean()]
            ).tolist()
        names = [f"loss/{name}" for name in terms] + ["loss/total", "wm/td_target", "wm/valid_fraction"]
        valid_latents = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
        return TDMPCLoss(total, dict(zip(names, values)), rollout, valid_latents, task, action_mask)

    def policy_loss(
        self,
        latents: torch.Tensor,
        valid: torch.Tensor,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """TD-MPC2's policy-prior objective (Sec. 3.1, arXiv:2310.16828) on latents (B, S, D), valid (B, S):

            mean_t rho^t mean_b [ beta * log p(a|z_t) - Q(z_t, a) / S_Q ],  a ~ p(z_t),

        Q the average of two random members (weights held fixed, no dropout) and S_Q the running
        5-95 percentile range of Q (at least 1). Discrete policies take the exact expectation over
        actions: beta * sum p log p - sum p Q / S_Q. Updates the running scale in training mode.
        A multi-task model takes each window's task (B,) and action mask (B, A) (`TDMPCLoss`); the
        task embedding is held fixed here, as the authors do."""
        latents = latents.detach()
        members = self.two_members()
        with self.frozen_task_embedding():
            policy = self.policy_distribution(latents, sample=not self.discrete, task=task, action_mask=action_mask)
            if self.discrete:
                K = self.action_size
                expanded = latents.unsqueeze(-2).expand(*latents.shape[:-1], K, self.latent_size)
                one_hots = torch.eye(K, device=latents.device).expand(*latents.shape[:-1], K, K)
                q = self.q_values(expanded, one_hots, members=members, detach=True, dropout=False, task=task).mean(
                    0
                )  # (B, S, K)
                expected_q = (policy.probabilities * q).sum(-1)
                negative_entropy = -policy.entropy
            else:
                expected_q = self.q_values(
                    latents, policy.action, members=members, detach=True, dropout=False, task=task
                ).mean(0)  # (B, S)
                negative_entropy = policy.log_prob
        if self.training:
            self.update_value_scale(expected_q[:, 0])
        per_entry = self.config.entropy_coef * negative_entropy - expected_q / self.value_scale
        steps = per_entry.shape[1]
        loss = (rho_weights(self.config.rho, steps, latents.device) * masked_step_means(per_entry, valid)).mean()
        with torch.no_grad():
            metrics = {
                "loss/policy": float(loss),
                "policy/entropy": float(masked_step_means(policy.entropy, valid).mean()),
                "policy/value_scale": float(self.value_scale),
                "policy/q": float(masked_step_means(expected_q, valid).mean()),
            }
        return loss, metrics

    @torch.no_grad()
    def update_value_scale(self, values: torch.Tensor) -> None:
        """Move S_Q toward max(1, 95th - 5th percentile of values) at rate scale_tau; under
        torch.distributed the ranks average their percentile ranges so replicas stay equal."""
        low, high = torch.quantile(values.flatten().float(), torch.tensor([0.05, 0.95], device=values.device))
        spread = (high - low).clamp_min(1.0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(spread)
            spread /= torch.distributed.get_world_size()
        self.value_scale.lerp_(spread, self.config.scale_tau)

    @torch.no_grad()
    def update_target(self) -> None:
        """Polyak-average the Q ensemble into its target copy: target += tau * (online - target)."""
        for online, target in zip(self.q_functions.parameters(), self.target_q_functions.parameters()):
            target.lerp_(online, self.config.target_tau)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the optimiser that updates them: the encoder (a lower learning rate in
        TD-MPC2), the rest of the joint model (the task embedding included, as in the authors'
        code), and the policy prior (its own optimiser)."""
        return {
            "encoder": list(self.encoder.parameters()),
            "model": list(self.dynamics.parameters())
            + list(self.reward_head.parameters())
            + list(self.q_functions.parameters())
            + (list(self.termination_head.parameters()) if self.termination_head is not None else [])
            + (list(self.task_embedding.parameters()) if self.task_embedding is not None else []),
            "policy": list(self.policy.parameters()),
        }


def observation_entry(observation_space: spaces.Space) -> tuple[str, tuple[int, ...]]:
    """('vector', (D,)) or ('image', (H, W, C)) from a wmlab Dict space; vectors win when both exist."""
    space = observation_space
    if isinstance(space, spaces.Dict):
        if "vector" in space.spaces and len(space["vector"].shape) == 1:
            return "vector", tuple(space["vector"].shape)
        if "image" in space.spaces and len(space["image"].shape) == 3:
            return "image", tuple(space["image"].shape)
        raise IncompatibleSpaceError(
            f"TD-MPC2 encodes a 'vector' (D,) or an 'image' (H, W, C) observation, and this space has {sorted(space.spaces)}"
        )
    raise IncompatibleSpaceError(f"TD-MPC2 takes wmlab's Dict observation spaces, got {space}")


def task_entries(observation_space: spaces.Space, action_size: int, discrete: bool) -> tuple[int, bool]:
    """(number of tasks, whether actions are masked) from the `task` (a Discrete(n) index) and
    `action_mask` (a Box (A,)) entries of a multi-task observation space; (0, False) without them."""
    if not isinstance(observation_space, spaces.Dict):
        return 0, False
    num_tasks = 0
    task_space = observation_space.spaces.get("task")
    if task_space is not None:
        if not (isinstance(task_space, spaces.Discrete) and int(task_space.start) == 0):
            raise IncompatibleSpaceError(
                f"TD-MPC2 reads obs['task'] as a task index, a Discrete(n) space starting at 0; got {task_space}"
            )
        num_tasks = int(task_space.n)
    mask_space = observation_space.spaces.get("action_mask")
    if mask_space is not None:
        if discrete:
            raise IncompatibleSpaceError("TD-MPC2 masks continuous (Box) actions only; this action space is Discrete")
        if not (isinstance(mask_space, spaces.Box) and tuple(mask_space.shape) == (action_size,)):
            raise IncompatibleSpaceError(
                f"obs['action_mask'] must be a Box of the action's shape ({action_size},), got {mask_space}"
            )
    return num_tasks, mask_space is not None


def action_entry(action_space: spaces.Space) -> tuple[bool, int]:
    """(discrete, A or K) for a bounded 1-D Box or a Discrete space starting at 0."""
    size, discrete = action_layout(action_space, "TD-MPC2", bounded=True)
    return discrete, size

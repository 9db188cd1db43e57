"""A feed-forward world model for vector observations (Nagabandi et al. 2018, arXiv:1708.02596).

The state is the observation itself: one MLP maps (obs_t, a) to the change obs_{t+1} - obs_t, the
reward received on arrival, and the logit of the probability that obs_{t+1} is not terminal.
Inputs and targets are normalised with exact running statistics (buffers, so they are saved,
restored and shared across data-parallel ranks like the weights). Predicting the normalised delta
rather than the next observation follows the paper's dynamics model: consecutive observations
are similar, so the delta is the part that carries information.

Shape legend: B batch, T time, L horizon, A action dim (the number of actions, one-hot, for a
Discrete space), D observation features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.config import Config, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.rollout import action_source, roll_steps
from wmlab.core.shapes import check_shape
from wmlab.core.spaces import action_layout, discrete_action_input
from wmlab.core.types import Batch, Trajectory
from wmlab.nn.mlp import MLP
from wmlab.nn.normalizer import RunningNormalizer


@dataclass(frozen=True)
class MLPLossScales:
    """Weights of the loss terms, in one place (reported unweighted as `loss/<term>`)."""

    next_state: float = 1.0
    """Weight of the squared error of the normalised next-state prediction (`loss/next_state`)."""
    reward: float = 1.0
    """Weight of the squared error of the normalised reward prediction (`loss/reward`)."""
    continuation: float = 1.0
    """Weight of the binary cross-entropy of the continue flag (`loss/continue`)."""


@dataclass(frozen=True)
class MLPWorldModelConfig(Config):
    """The feed-forward dynamics model. The optimiser belongs to the algorithm that trains it."""

    limits = ranges(counts="hidden_size layers", positive="min_std")

    hidden_size: int = 256
    """Units in each hidden layer."""
    layers: int = 2
    """Number of hidden layers."""
    activation: str = "silu"
    """Hidden activation: silu, relu, elu, gelu, tanh or mish."""
    layer_norm: bool = False
    """LayerNorm after each hidden linear layer (not in the paper; it slowed learning of a small model
    on the linear system of the tests, so it is off by default)."""
    predict_deltas: bool = True
    """Predict obs_{t+1} - obs_t rather than obs_{t+1} itself (as the paper does)."""
    normalize: bool = True
    """Normalise inputs and targets with running statistics of the training data; when off, they
    enter the network as they are."""
    min_std: float = 1e-3
    """Floor on the normalising standard deviation, so that a constant feature is not scaled up to noise."""
    loss_scales: MLPLossScales = field(default_factory=MLPLossScales)
    """Weights of the next-state, reward and continue terms."""


def vector_size(observation_space: spaces.Space) -> int:
    """D for a 1-D Box, or for a Dict space's 'vector' entry."""
    space = observation_space
    if isinstance(space, spaces.Dict):
        if "vector" not in space.spaces:
            raise IncompatibleSpaceError(
                f"the MLP world model reads 1-D 'vector' observations, and this space has only {sorted(space.spaces)}; "
                "pixel observations need a world model with an image encoder"
            )
        space = space["vector"]
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise IncompatibleSpaceError(f"the MLP world model needs a 1-D Box of observation features, got {space}")
    return int(space.shape[0])


def action_size(action_space: spaces.Space) -> tuple[int, bool]:
    """(A, whether actions are discrete) for a 1-D Box or a Discrete space."""
    return action_layout(action_space, "the MLP world model")


class MLPWorldModel(nn.Module):
    """WorldModel for vector observations whose state is the observation vector (B, D)."""

    can_decode = True

    def __init__(self, config: MLPWorldModelConfig, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__()
        self.config = config
        self.observation_size = vector_size(observation_space)
        self.action_size, self.discrete = action_size(action_space)
        D, A = self.observation_size, self.action_size
        # One trunk, three heads in one output layer: D next-state values, a reward, a continue logit.
        self.network = MLP(D + A, D + 2, config.hidden_size, config.layers, config.activation, config.layer_norm)
        self.observation_normalizer = RunningNormalizer(D, config.min_std)
        self.action_normalizer = RunningNormalizer(A, config.min_std)
        # Of the delta or of the next observation, whichever the network predicts.
        self.target_normalizer = RunningNormalizer(D, config.min_std)
        self.reward_normalizer = RunningNormalizer(1, config.min_std)

    @property
    def device(self) -> torch.device:
        return self.observation_normalizer.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.observation_normalizer.mean.dtype

    # --- inputs ------------------------------------------------------------------------------

    def encode_action(self, action: Any, leading: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """(*leading, A) float actions: Box actions as they are; Discrete ones from indices
        (*leading) or from one-hot / probability vectors (*leading, A), kept as given so that
        gradients flow through a relaxed policy."""
        action = torch.as_tensor(action, device=self.device)
        if not self.discrete:
            check_shape("action", action, (*leading, self.action_size), sizes)
            return action.to(self.dtype)
        return discrete_action_input(action, self.action_size, leading, sizes, self.dtype)

    def network_input(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # state (..., D), encoded action (..., A) -> (..., D + A)
        if not self.discrete:  # a one-hot needs no scaling
            action = self.action_normalizer.normalize(action)
        return torch.cat([self.observation_normalizer.normalize(state), action], -1)

    def heads(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised outputs for state (..., D) and encoded action (..., A): (target (..., D),
        reward (...), continue logit (...))."""
        output = self.network(self.network_input(state, action))
        D = self.observation_size
        return output[..., :D], output[..., D], output[..., D + 1]

    def next_state(self, state: torch.Tensor, normalized_target: torch.Tensor) -> torch.Tensor:
        target = self.target_normalizer.denormalize(normalized_target)
        return state + target if self.config.predict_deltas else target

    # --- prediction: one step, and the WorldModel protocol ------------------------------------

    def step(self, state: torch.Tensor, action: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One predicted step: state (B, D), action (B, A) or indices (B,) ->
        (next state (B, D), reward (B,), continue logit (B,))."""
        sizes = check_shape("state", state, ("B", self.observation_size))
        encoded = self.encode_action(action, ("B",), sizes)
        state = state.to(self.dtype)
        target, reward, continue_logit = self.heads(state, encoded)
        reward = self.reward_normalizer.denormalize(reward[..., None])[..., 0]
        return self.next_state(state, target), reward, continue_logit

    def initial(self, batch_size: int) -> torch.Tensor:  # -> (B, D)
        return torch.zeros(batch_size, self.observation_size, device=self.device, dtype=self.dtype)

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """obs {"vector": (B, T, D)}, action (B, T, A) or (B, T), is_first (B, T) ->
        (states (B, T, D), last state (B, D)). A feed-forward model's state is the observation,
        so neither the previous state nor is_first changes it."""
        vector = torch.as_tensor(obs["vector"], device=self.device)
        sizes = check_shape("obs['vector']", vector, ("B", "T", self.observation_size))
        self.encode_action(action, ("B", "T"), sizes)
        check_shape("is_first", torch.as_tensor(is_first), ("B", "T"), sizes)
        states = vector.to(self.dtype)
        return states, states[:, -1]

    def imagine(
        self,
        state: torch.Tensor,
        actions_or_policy: ActionsOrPolicy,
        horizon: int | None = None,
    ) -> Trajectory:
        """Roll forward from state (B, D) with actions (B, L, A) (indices (B, L) when discrete)
        or a policy(state (B, D)) -> action (B, A) | (B,). Step l of the result is the state
        reached by action l, with the reward received on arriving there and the probability that
        it is not terminal: states (B, L, D), actions (B, L, A), rewards (B, L), continues (B, L).
        Differentiable; wrap in torch.no_grad() when planning."""
        sizes = check_shape("state", state, ("B", self.observation_size))
        choose, horizon = action_source(actions_or_policy, horizon, sizes, self.encode_action)
        taken, (states, rewards, logits) = roll_steps(self.step, state.to(self.dtype), horizon, choose)
        states_tensor = torch.stack(states, 1)
        logits_tensor = torch.stack(logits, 1)
        return Trajectory(
            states=states_tensor,
            actions=torch.stack(taken, 1),
            rewards=torch.stack(rewards, 1),
            continues=torch.sigmoid(logits_tensor),
            observations={"vector": states_tensor},
            extras={"continue_logits": logits_tensor},
        )

    def decode(self, state: torch.Tensor) -> dict[str, torch.Tensor]:  # (..., D) -> {"vector": (..., D)}
        return {"vector": state}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Prediction losses over the consecutive pairs t -> t+1 of B windows of T steps.

        Step t+1 holds the action that led to obs_{t+1} and the reward received on arrival
        (wmlab.core.types); a pair where is_first[t+1] is set crosses into a new episode and is
        left out. The continue target is 1 - is_terminal[t+1]. In training mode the running
        statistics first take in this batch's valid pairs.
        """
        batch = batch.to_torch(self.device)
        vector = batch.obs["vector"]
        sizes = check_shape("obs['vector']", vector, ("B", "T", self.observation_size))
        action = self.encode_action(batch.action, ("B", "T"), sizes)
        for name in ("reward", "is_first", "is_terminal"):
            check_shape(name, getattr(batch, name), ("B", "T"), sizes)
        if sizes["T"] < 2:
            raise ShapeError(
                f"obs['vector']: the loss needs windows of T >= 2 steps to see a transition, got T={sizes['T']}"
            )

        observations = vector.to(self.dtype)
        state, next_observation, action = observations[:, :-1], observations[:, 1:], action[:, 1:]  # (B, T-1, ...)
        reward = batch.reward[:, 1:].to(self.dtype)
        continue_target = 1.0 - batch.is_terminal[:, 1:].to(self.dtype)
        valid = ~batch.is_first[:, 1:].bool()  # (B, T-1)
        target = next_observation - state if self.config.predict_deltas else next_observation

        if self.training and self.config.normalize:
            self.observation_normalizer.update(state, valid)
            self.action_normalizer.update(action, valid)
            self.target_normalizer.update(target, valid)
            self.reward_normalizer.update(reward[..., None], valid)

        predicted_target, predicted_reward, continue_logit = self.heads(state, action)
        weights = valid.to(self.dtype)
        pairs = weights.sum().clamp_min(1.0)

        def masked_mean(error: torch.Tensor) -> torch.Tensor:  # (B, T-1) -> ()
            return (error * weights).sum() / pairs

        normalized_target = self.target_normalizer.normalize(target)
        normalized_reward = self.reward_normalizer.normalize(reward[..., None])[..., 0]
        terms = {
            "next_state": masked_mean((predicted_target - normalized_target).pow(2).mean(-1)),
            "reward": masked_mean((predicted_reward - normalized_reward).pow(2)),
            "continue": masked_mean(
                F.binary_cross_entropy_with_logits(continue_logit, continue_target, reduction="none")
            ),
        }
        scales = self.config.loss_scales
        total = (
            scales.next_state * terms["next_state"]
            + scales.reward * terms["reward"]
            + scales.continuation * terms["continue"]
        )

        with torch.no_grad():  # errors in the environment's own units, for reading off the logs
            state_error = (self.next_state(state, predicted_target) - next_observation).pow(2).mean(-1)
            reward_error = (self.reward_normalizer.denormalize(predicted_reward[..., None])[..., 0] - reward).pow(2)
            continue_correct = ((continue_logit > 0).to(self.dtype) == continue_target).to(self.dtype)
            values = torch.stack(
                [
                    *terms.values(),
                    total,
                    masked_mean(state_error),
                    masked_mean(reward_error),
                    masked_mean(continue_correct),
                ]
            ).tolist()
        names = [
            "loss/next_state",
            "loss/reward",
            "loss/continue",
            "loss/total",
            "wm/next_state_mse",
            "wm/reward_mse",
            "wm/continue_accuracy",
        ]
        return total, dict(zip(names, values))

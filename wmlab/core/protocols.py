"""The three protocols that every world model, planner and agent implements.

Planners, imagination-trained agents, the evaluation suite and the report work against these,
never against a model's internals.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

from wmlab.core.types import Batch, Observation, Trajectory, Transition


@runtime_checkable
class WorldModel(Protocol):
    """A learned simulator.

    `state` is whatever the family filters: an RSSM's (deterministic, stochastic) pair, a
    feed-forward model's last observation, a tabular model's cell index.
    """

    #: Whether `decode` can map a state back to observation space.
    can_decode: bool

    def initial(self, batch_size: int) -> Any:
        """The state before any observation, for B sequences."""

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any) -> tuple[Any, Any]:
        """Filter a real sequence: obs (B, T, ...), action (B, T, A), is_first (B, T).

        Returns (posterior states over time (B, T, ...), last state (B, ...)).
        """

    def imagine(self, state: Any, actions_or_policy: Any, horizon: int) -> Trajectory:
        """Roll forward with no observations from state (B, ...), given actions (B, L, A) or a
        policy `policy(state) -> action (B, A)`."""

    def decode(self, state: Any) -> dict:
        """Predicted observation for state; families that cannot decode raise NotImplementedError
        with the reason (JEPA, TD-MPC2)."""

    def loss(self, batch: Batch) -> tuple[Any, dict[str, float]]:
        """(scalar loss, metrics) for a batch of real sequences; terms are namespaced 'loss/...'
        and weighted by the model's one `loss_scales` config."""


#: rollout(state, actions (N, L, A)) -> returns (N,)
RolloutFn = Callable[[Any, Any], Any]


@runtime_checkable
class Planner(Protocol):
    """Searches action sequences against a rollout function; never sees the model."""

    def plan(self, rollout_fn: RolloutFn, state: Any, action_space: Any) -> Any:
        """Return the best action sequence (L, A) found for `state`."""


@runtime_checkable
class Agent(Protocol):
    """Acts in an environment and learns.

    `learns_from` tells the training loop what to feed it: "transitions" (each real step as it
    happens, via `observe`: tabular Dyna) or "replay" (B x T windows sampled from the replay
    buffer at the configured train ratio, via `update`).
    """

    learns_from: Literal["transitions", "replay"]

    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs: dict of (B, ...) arrays for B environments; returns (actions (B, ...), state).
        `state` is the agent's recurrent state (None at the start of a run); rows where
        obs['is_first'] is set start a new episode."""

    def observe(self, transition: Transition) -> dict[str, float]:
        """Learn from one real (batched) transition; agents that learn from replay return {}."""

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient update (or planning sweep) from a replay batch; returns metrics."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

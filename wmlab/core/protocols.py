"""The three protocols that every world model, planner and agent implements, and the rest of the
contract that the trainers, the evaluation suites and the imagined environment rely on.

Planners, imagination-trained agents, the evaluation suite and the report work against these,
never against a model's internals.

Construction (how the registry's entries are called; `wmlab.core.registry`):
- a world-model family: `Family(config, observation_space, action_space)` with its frozen config
  dataclass, a gymnasium Dict observation space (`image` / `vector` / `state` keys) and the action
  space; a space it cannot take raises `IncompatibleSpaceError`. A family whose registry entry
  names a config class and that is an `nn.Module` can be trained offline (`wmlab.train.offline`).
- an agent: `Agent(config, observation_space, action_space, seed=SEED, device=DEVICE)`.
- a planner: `Planner(config, generator=None, seed=None, device="cpu")`.

What is optional, and who looks for it (absent means "does not apply"):
- WorldModel `features(state) -> (..., F)`: the feature vector the metrics compare and the
  imagined environment returns (else the state's floating tensors, flattened).
- WorldModel `generator`: its own torch.Generator; the metrics seed it beside torch's global one.
- WorldModel `deterministic = True`: no predictive distribution, so calibration says so.
- WorldModel `discrete` / `action_size`: how the imagined environment encodes actions.
- WorldModel `update_target()`: called after each optimiser step by the offline trainer (an EMA
  target encoder follows the trained one).
- Agent `world_model` (or, in TD-MPC2 and the JEPA planner, `model`): the WorldModel it plans or
  learns with; `wmlab eval --suite ...` evaluates it.
- Agent `modules() -> {name: nn.Module}`: every network, broadcast from rank 0 under torchrun.
- Agent `on_run_end(run_dir, replay)`: after the last checkpoint (open-loop videos, figures).
- Planner `reset()`: forget the warm start at the start of an episode (MPPI).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

from wmlab.core.types import Batch, Observation, Trajectory, Transition

#: The second argument of every world model's `imagine`: the actions to take (B, L, ...) (indices
#: (B, L) or one-hot / continuous (B, L, A), as the family encodes its action space), or a policy
#: `policy(state) -> action (B, ...)` asked at every imagined step for the state reached so far.
ActionsOrPolicy = Any | Callable[[Any], Any]


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

    def imagine(self, state: Any, actions_or_policy: ActionsOrPolicy, horizon: int) -> Trajectory:
        """Roll forward with no observations from state (B, ...), given actions (B, L, A) or a
        policy `policy(state) -> action (B, A)`. The Trajectory's states, rewards and continues
        are what the planners and the metrics read; its observations are the decoded predictions
        where `can_decode`, else None. Families that sample take keyword options such as
        `generator` or `temperature`, which callers pass only where the family accepts them."""

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

    def plan(self, rollout_fn: RolloutFn, state: Any, action_space: Any, **options: Any) -> Any:
        """Return the action sequence (L, A) (indices (L,) for a Discrete space) found for
        `state`; `rollout_fn(state, candidates (N, L, A)) -> returns (N,)` scores candidates.
        Every planner takes the three positional arguments; MPPI also takes the keyword options
        `prior_actions` (P, L, A) scored beside its samples (TD-MPC2's policy trajectories),
        `explore` (draw an elite by its weight, plus noise) and `shift` (environment steps since
        the previous plan, by which its warm start moves forward)."""


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
        """Everything a resumed run needs to continue exactly as this one would have: weights,
        optimiser moments, step counters, random generators (tensors, arrays, numbers, strings,
        lists and dicts only: checkpoints are safetensors + JSON)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""

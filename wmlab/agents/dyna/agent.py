"""The Dyna family: learning, planning and acting with one tabular model.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed.), chapter 8:
- `DynaQAgent`: Q-learning on each real step, plus n Q-learning updates on transitions replayed
  from the learned model (section 8.2, "Tabular Dyna-Q").
- `DynaQPlusAgent`: the same with an exploration bonus kappa * sqrt(tau) in planning (8.3).
- `PrioritizedSweepingAgent`: planning updates taken from a queue ordered by how much they would
  change, propagated backwards through the model's predecessors (8.4).
- `TrajectorySamplingAgent`: planning updates along simulated on-policy trajectories from the
  current state (8.6).
Silver, Sutton & Mueller, "Sample-Based Learning and Search with Permanent and Transient
Memories" (ICML 2008):
- `Dyna2Agent`: a permanent linear value learned from real experience plus a transient one
  learned by search from the current state and forgotten at the start of each episode.

The hot loops are plain Python on lists of floats: a planning update touches a handful of
numbers, far below the cost of dispatching a numpy or torch call.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import gymnasium
import numpy as np

from wmlab.agents.dyna.config import Dyna2Config, DynaConfig
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.tabular import TabularModel


def discrete_sizes(algorithm: str, observation_space: Any, action_space: Any) -> tuple[int, int, int, int]:
    """(number of states, number of actions, first state index, first action index), or an
    IncompatibleSpaceError that says which environments a tabular agent can run on."""
    state_space = (
        observation_space.spaces.get("state") if isinstance(observation_space, gymnasium.spaces.Dict) else None
    )
    if not isinstance(state_space, gymnasium.spaces.Discrete):
        raise IncompatibleSpaceError(
            f"{algorithm} needs a discrete state observation (a Dict space whose 'state' entry is Discrete); "
            f"got {observation_space} — tabular agents work on dyna-maze, blocking-maze, shortcut-maze "
            "or any env with a Discrete observation space"
        )
    if not isinstance(action_space, gymnasium.spaces.Discrete):
        raise IncompatibleSpaceError(
            f"{algorithm} needs a Discrete action space; got {action_space} — tabular agents choose among "
            "finitely many actions (dyna-maze, blocking-maze, shortcut-maze have 4)"
        )
    return int(state_space.n), int(action_space.n), int(state_space.start), int(action_space.start)


class TabularAgent:
    """What the tabular agents share: spaces, the random generator, acting, and the batched
    `act`/`observe` protocol around the one-transition `choose`/`learn` of each subclass."""

    learns_from = "transitions"
    algorithm = "tabular"
    #: Whether the model assumes untried actions stay put (Dyna-Q+).
    model_untried_actions = False

    def __init__(self, config: Any, observation_space: Any, action_space: Any, seed: int, device: str = "cpu"):
        self.config = config
        self.num_states, self.num_actions, self.state_offset, self.action_offset = discrete_sizes(
            self.algorithm, observation_space, action_space
        )
        self.seed = seed
        self.device = device  # accepted for the common constructor; tables live in CPU memory
        self.rng = np.random.default_rng(seed)
        self.model = TabularModel(self.num_states, self.num_actions, self.model_untried_actions)
        self.real_steps = 0
        self.updates = 0  # value updates of any kind, real or planned
        self.planning_updates = 0

    # ------------------------------------------------------------------------------------------
    # The Agent protocol: batched over B environments

    def act(self, obs: Observation, state: Any = None, explore: bool = True) -> tuple[np.ndarray, Any]:
        """obs["state"] (B,) -> actions (B,) int64; epsilon-greedy when exploring, greedy
        otherwise, ties broken at random in both."""
        cells = np.asarray(obs["state"]).reshape(-1)
        if "is_first" in obs:
            for first in np.asarray(obs["is_first"]).reshape(-1):
                if first:
                    self.begin_episode()
                    break
        actions = [self.choose(int(cell) - self.state_offset, explore) for cell in cells]
        return np.asarray(actions, dtype=np.int64) + self.action_offset, state

    def observe(self, transition: Transition) -> dict[str, float]:
        """Learn from one batched real step: direct update, model learning, then planning."""
        cells = np.asarray(transition.obs["state"]).reshape(-1)
        next_cells = np.asarray(transition.next_obs["state"]).reshape(-1)
        actions = np.asarray(transition.action).reshape(-1)
        rewards = np.asarray(transition.reward, dtype=np.float64).reshape(-1)
        terminated = np.asarray(transition.terminated).reshape(-1)
        truncated = np.asarray(transition.truncated).reshape(-1)
        planned_before = self.planning_updates
        errors = []
        for row in range(cells.shape[0]):
            errors.append(
                self.learn(
                    int(cells[row]) - self.state_offset,
                    int(actions[row]) - self.action_offset,
                    float(rewards[row]),
                    int(next_cells[row]) - self.state_offset,
                    bool(terminated[row]),
                    bool(truncated[row]),
                )
            )
        metrics = {
            "train/td_error": sum(abs(error) for error in errors) / len(errors),
            "plan/updates": float(self.planning_updates - planned_before),
            "plan/total_updates": float(self.updates),
            "model/pairs": float(len(self.model.pairs)),
        }
        metrics.update(self.extra_metrics())
        return metrics

    def update(self, batch: Batch) -> dict[str, float]:
        raise TypeError(
            f"{self.algorithm} learns from transitions, one real step at a time (agent.observe); "
            "it has no replay update (learns_from == 'transitions')"
        )

    # ------------------------------------------------------------------------------------------
    # One transition at a time: what subclasses implement

    def choose(self, state: int, explore: bool) -> int:
        """One action for one state: epsilon-greedy when exploring, else greedy."""
        if explore and self.rng.random() < self.config.epsilon:
            return int(self.rng.random() * self.num_actions)
        return self.best_action(self.action_values(state))

    def learn(
        self, state: int, action: int, reward: float, next_state: int, terminal: bool, truncated: bool = False
    ) -> float:
        """Learn from one real transition; returns the direct TD error."""
        raise NotImplementedError

    def action_values(self, state: int) -> list[float]:
        raise NotImplementedError

    def begin_episode(self) -> None:
        """Called when an environment starts a new episode (obs["is_first"])."""

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------------------------------
    # Helpers

    def best_action(self, values: list[float]) -> int:
        """Argmax with ties broken uniformly at random (the book's tie rule)."""
        best = max(values)
        ties = [action for action, value in enumerate(values) if value == best]
        if len(ties) == 1:
            return ties[0]
        return ties[int(self.rng.random() * len(ties))]

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "rng": self.rng.bit_generator.state,
            "real_steps": self.real_steps,
            "updates": self.updates,
            "planning_updates": self.planning_updates,
            "model": self.model.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["algorithm"] != self.algorithm:
            raise ValueError(f"checkpoint is for {state['algorithm']}, this agent is {self.algorithm}")
        self.rng.bit_generator.state = state["rng"]
        self.real_steps = int(state["real_steps"])
        self.updates = int(state["updates"])
        self.planning_updates = int(state["planning_updates"])
        self.model.load_state_dict(state["model"])


class DynaQAgent(TabularAgent):
    """Tabular Dyna-Q (Sutton & Barto 8.2): each real step makes one Q-learning update, records
    the outcome in the model, and makes `planning_steps` more Q-learning updates on pairs drawn
    uniformly from the model (a random observed state, then a random action taken in it)."""

    algorithm = "dyna-q"

    def __init__(self, config: DynaConfig, observation_space: Any, action_space: Any, seed: int, device: str = "cpu"):
        super().__init__(config, observation_space, action_space, seed, device)
        self.q = [[0.0] * self.num_actions for _ in range(self.num_states)]

    def action_values(self, state: int) -> list[float]:
        return self.q[state]

    def q_update(self, state: int, action: int, reward: float, next_state: int, terminal: bool) -> float:
        """One Q-learning update (book Eq. 6.8); returns the TD error."""
        row = self.q[state]
        target = reward if terminal else reward + self.config.gamma * max(self.q[next_state])
        error = target - row[action]
        row[action] += self.config.alpha * error
        self.updates += 1
        return error

    def learn(
        self, state: int, action: int, reward: float, next_state: int, terminal: bool, truncated: bool = False
    ) -> float:
        error = self.q_update(state, action, reward, next_state, terminal)
        self.model.record(state, action, reward, next_state, terminal)
        self.real_steps += 1
        self.plan()
        return error

    def planning_reward(self, pair: int) -> float:
        return self.model.reward[pair]

    def plan(self) -> None:
        model, q = self.model, self.q
        gamma, alpha, num_actions = self.config.gamma, self.config.alpha, self.num_actions
        pairs = model.sample(self.rng, self.config.planning_steps)
        for state, action in pairs:
            pair = state * num_actions + action
            reward = self.planning_reward(pair)
            target = reward if model.terminal[pair] else reward + gamma * max(q[model.next_state[pair]])
            row = q[state]
            row[action] += alpha * (target - row[action])
        self.updates += len(pairs)
        self.planning_updates += len(pairs)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "q": np.array(self.q, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.q = np.asarray(state["q"], dtype=np.float64).tolist()


class DynaQPlusAgent(DynaQAgent):
    """Dyna-Q+ (Sutton & Barto 8.3): planning rewards carry a bonus kappa * sqrt(tau), tau the
    real steps since the pair was last tried, and the model assumes untried actions from a
    visited state lead back to it with reward 0, so planning keeps trying them."""

    algorithm = "dyna-q-plus"
    model_untried_actions = True

    def planning_reward(self, pair: int) -> float:
        model = self.model
        return model.reward[pair] + self.config.kappa * math.sqrt(model.time - model.last_tried[pair])


class PrioritizedSweepingAgent(DynaQAgent):
    """Prioritized sweeping for a deterministic environment (Sutton & Barto 8.4, Moore & Atkeson
    1993). Every value update, the real one included, goes through a queue of pairs ordered by
    the size of their TD error; after a pair is updated, its predecessors in the model are queued
    if their own change would exceed `theta`. Up to `planning_steps` pairs leave the queue per
    real step, and none when the queue is empty, which is where the savings come from."""

    algorithm = "prioritized-sweeping"

    def __init__(self, config: DynaConfig, observation_space: Any, action_space: Any, seed: int, device: str = "cpu"):
        super().__init__(config, observation_space, action_space, seed, device)
        # A heap of (-priority, sequence, pair); `queued` maps each pair to the (priority,
        # sequence) of its live entry, so a raised priority simply pushes a new entry and the old
        # one is skipped when it surfaces. Sequence numbers make equal priorities leave first in,
        # first out.
        self.heap: list[tuple[float, int, int]] = []
        self.queued: dict[int, tuple[float, int]] = {}
        self.pushes = 0

    def push(self, pair: int, priority: float) -> None:
        """Queue a pair, or raise its priority if it is queued lower (the book's "insert")."""
        live = self.queued.get(pair)
        if live is not None and live[0] >= priority:
            return
        self.pushes += 1
        self.queued[pair] = (priority, self.pushes)
        heapq.heappush(self.heap, (-priority, self.pushes, pair))

    def pop(self) -> int | None:
        """The pair of highest priority, removed from the queue; None when it is empty."""
        while self.heap:
            _, sequence, pair = heapq.heappop(self.heap)
            live = self.queued.get(pair)
            if live is not None and live[1] == sequence:
                del self.queued[pair]
                return pair
        return None

    def learn(
        self, state: int, action: int, reward: float, next_state: int, terminal: bool, truncated: bool = False
    ) -> float:
        self.model.record(state, action, reward, next_state, terminal)
        self.real_steps += 1
        target = reward if terminal else reward + self.config.gamma * max(self.q[next_state])
        error = target - self.q[state][action]
        if abs(error) > self.config.theta:
            self.push(state * self.num_actions + action, abs(error))
        self.plan()
        return error

    def plan(self) -> None:
        model, q = self.model, self.q
        gamma, alpha, theta, num_actions = self.config.gamma, self.config.alpha, self.config.theta, self.num_actions
        for _ in range(self.config.planning_steps):
            pair = self.pop()
            if pair is None:
                break
            state, action = divmod(pair, num_actions)
            reward = model.reward[pair]
            target = reward if model.terminal[pair] else reward + gamma * max(q[model.next_state[pair]])
            row = q[state]
            row[action] += alpha * (target - row[action])
            self.updates += 1
            self.planning_updates += 1
            state_value = max(row)
            for predecessor in model.predecessors[state]:
                predecessor_state, predecessor_action = divmod(predecessor, num_actions)
                predecessor_reward = model.reward[predecessor]
                predecessor_target = (
                    predecessor_reward if model.terminal[predecessor] else predecessor_reward + gamma * state_value
                )
                priority = abs(predecessor_target - q[predecessor_state][predecessor_action])
                if priority > theta:
                    self.push(predecessor, priority)

    def extra_metrics(self) -> dict[str, float]:
        return {"plan/queue_size": float(len(self.queued))}

    def state_dict(self) -> dict[str, Any]:
        # Only live entries are saved; their (priority, sequence) keys are unique, so the
        # rebuilt heap pops in exactly the same order as the one it replaces.
        pairs = list(self.queued)
        return {
            **super().state_dict(),
            "queue_pairs": np.array(pairs, dtype=np.int64),
            "queue_priorities": np.array([self.queued[pair][0] for pair in pairs], dtype=np.float64),
            "queue_sequences": np.array([self.queued[pair][1] for pair in pairs], dtype=np.int64),
            "queue_pushes": self.pushes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        pairs = np.asarray(state["queue_pairs"]).tolist()
        priorities = np.asarray(state["queue_priorities"]).tolist()
        sequences = np.asarray(state["queue_sequences"]).tolist()
        self.queued = {pair: (priority, sequence) for pair, priority, sequence in zip(pairs, priorities, sequences)}
        self.heap = [(-priority, sequence, pair) for pair, (priority, sequence) in self.queued.items()]
        heapq.heapify(self.heap)
        self.pushes = int(state["queue_pushes"])


class TrajectorySamplingAgent(DynaQAgent):
    """Dyna-Q whose planning updates follow simulated on-policy trajectories (Sutton & Barto 8.6).

    After each real step, `planning_steps` updates are made along trajectories simulated in the
    model with the current epsilon-greedy policy, starting from the state the agent has just
    reached (from the episode's start state once the episode has ended). A trajectory restarts
    when it terminates, reaches a state the model has never acted from, or has run
    `max_trajectory_length` steps. The simulated policy chooses among the actions the model
    knows in each state, since only those can be simulated.
    """

    algorithm = "trajectory-sampling"

    def __init__(self, config: DynaConfig, observation_space: Any, action_space: Any, seed: int, device: str = "cpu"):
        if config.max_trajectory_length < 1:
            raise ValueError(f"max_trajectory_length must be at least 1, got {config.max_trajectory_length}")
        super().__init__(config, observation_space, action_space, seed, device)
        self.episode_start = -1  # the first state of the current episode, -1 before it is seen

    def learn(
        self, state: int, action: int, reward: float, next_state: int, terminal: bool, truncated: bool = False
    ) -> float:
        if self.episode_start < 0:
            self.episode_start = state
        error = self.q_update(state, action, reward, next_state, terminal)
        self.model.record(state, action, reward, next_state, terminal)
        self.real_steps += 1
        self.plan_from(self.episode_start if terminal else next_state)
        if terminal or truncated:
            self.episode_start = -1
        return error

    def simulated_action(self, state: int, actions: list[int]) -> int:
        """Epsilon-greedy among the modelled actions `actions` of `state`."""
        if self.rng.random() < self.config.epsilon:
            return actions[int(self.rng.random() * len(actions))]
        row = self.q[state]
        best = max(row[action] for action in actions)
        ties = [action for action in actions if row[action] == best]
        return ties[0] if len(ties) == 1 else ties[int(self.rng.random() * len(ties))]

    def plan_from(self, origin: int) -> None:
        model, q = self.model, self.q
        gamma, alpha, num_actions = self.config.gamma, self.config.alpha, self.num_actions
        state, length, done = origin, 0, 0
        while done < self.config.planning_steps:
            actions = model.state_actions[state]
            if not actions or length >= self.config.max_trajectory_length:
                if state == origin and length == 0:
                    break  # the model cannot simulate anything from here yet
                state, length = origin, 0
                continue
            action = self.simulated_action(state, actions)
            pair = state * num_actions + action
            reward = model.reward[pair]
            terminal = model.terminal[pair]
            next_state = model.next_state[pair]
            target = reward if terminal else reward + gamma * max(q[next_state])
            row = q[state]
            row[action] += alpha * (target - row[action])
            done += 1
            state, length = (origin, 0) if terminal else (next_state, length + 1)
        self.updates += done
        self.planning_updates += done

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "episode_start": self.episode_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.episode_start = int(state["episode_start"])


#: Eligibility traces below this are dropped: it keeps the trace dictionaries short, and such an
#: entry would move its weight by less than a thousandth of a fresh feature's update.
TRACE_CUTOFF = 1e-3


class Dyna2Agent(TabularAgent):
    """Dyna-2 (Silver, Sutton & Mueller 2008), on a tabular model.

    Two linear action-value functions over the same features:
    - the permanent memory theta, learned by Sarsa(lambda) from real experience only: general
      knowledge that is kept for the whole run;
    - the transient memory theta_bar, learned by Sarsa(lambda) on episodes simulated in the
      learned model from the current state (the search), and cleared when an episode begins:
      knowledge specialised to the situation at hand.
    The agent acts epsilon-greedily on their sum, Q_bar = phi . (theta + theta_bar); the search
    bootstraps from Q_bar and the permanent update from the permanent value alone, as in the
    paper. Features (two active per pair): a one-hot of (state, action), which alone would make
    the permanent memory a Sarsa table, and a one-hot of (coarse tile of the state, action), which
    generalises across neighbouring cells. Step sizes are shared among the active features.
    """

    algorithm = "dyna-2"

    def __init__(self, config: Dyna2Config, observation_space: Any, action_space: Any, seed: int, device: str = "cpu"):
        if config.coarse_block < 1 or config.max_simulation_length < 1:
            raise ValueError("coarse_block and max_simulation_length must be at least 1")
        super().__init__(config, observation_space, action_space, seed, device)
        self.tile_of = self._coarse_tiles()
        num_tiles = max(self.tile_of) + 1
        self.num_features = self.num_states * self.num_actions + (
            num_tiles * self.num_actions if config.coarse_block > 1 else 0
        )
        self.permanent = [0.0] * self.num_features
        self.transient = [0.0] * self.num_features
        self.traces: dict[int, float] = {}  # permanent memory's eligibility traces
        self.pending: tuple[int, int] | None = None  # (state, action) Sarsa chose for the next step
        self.new_episode = True

    def _coarse_tiles(self) -> list[int]:
        block, columns = self.config.coarse_block, self.config.grid_columns
        if columns <= 0:
            return [state // block for state in range(self.num_states)]
        tiles_per_row = -(-columns // block)
        return [
            (state // columns // block) * tiles_per_row + (state % columns) // block for state in range(self.num_states)
        ]

    def features(self, state: int, action: int) -> tuple[int, ...]:
        table_feature = state * self.num_actions + action
        if self.config.coarse_block == 1:
            return (table_feature,)
        return table_feature, self.num_states * self.num_actions + self.tile_of[state] * self.num_actions + action

    def permanent_value(self, state: int, action: int) -> float:
        permanent = self.permanent
        return sum(permanent[feature] for feature in self.features(state, action))

    def combined_value(self, state: int, action: int) -> float:
        permanent, transient = self.permanent, self.transient
        return sum(permanent[feature] + transient[feature] for feature in self.features(state, action))

    def action_values(self, state: int) -> list[float]:
        return [self.combined_value(state, action) for action in range(self.num_actions)]

    # ------------------------------------------------------------------------------------------
    # Acting and learning from real experience

    def begin_episode(self) -> None:
        self.new_episode = True

    def choose(self, state: int, explore: bool) -> int:
        if self.new_episode:
            # The paper searches from the first state before acting; the transient memory is
            # forgotten first, since it was specialised to the episode that ended.
            self.new_episode = False
            self.transient = [0.0] * self.num_features
            self.search(state)
        pending, self.pending = self.pending, None
        if explore and pending is not None and pending[0] == state:
            return pending[1]  # the action Sarsa already bootstrapped from
        return super().choose(state, explore)

    def learn(
        self, state: int, action: int, reward: float, next_state: int, terminal: bool, truncated: bool = False
    ) -> float:
        self.model.record(state, action, reward, next_state, terminal)
        self.real_steps += 1
        target = reward
        next_action = -1
        if not terminal:
            self.search(next_state)
            next_action = super().choose(next_state, explore=True)
            target += self.config.gamma * self.permanent_value(next_state, next_action)
        error = target - self.permanent_value(state, action)
        self.traces = self._sarsa_update(
            self.permanent, self.traces, state, action, error, self.config.alpha, self.config.trace_decay
        )
        self.updates += 1
        if terminal or truncated:
            self.traces = {}
            self.pending = None
            self.new_episode = True
        else:
            self.pending = (next_state, next_action)
        return error

    def _sarsa_update(
        self,
        weights: list[float],
        traces: dict[int, float],
        state: int,
        action: int,
        error: float,
        alpha: float,
        trace_decay: float,
    ) -> dict[int, float]:
        """Accumulating-trace Sarsa(lambda) on linear weights (Sutton & Barto 12.7); returns the
        decayed traces with this pair's features added."""
        active = self.features(state, action)
        decay = self.config.gamma * trace_decay
        traces = {feature: trace * decay for feature, trace in traces.items() if trace * decay >= TRACE_CUTOFF}
        for feature in active:
            traces[feature] = traces.get(feature, 0.0) + 1.0
        step = alpha / len(active) * error
        for feature, trace in traces.items():
            weights[feature] += step * trace
        return traces

    # ------------------------------------------------------------------------------------------
    # Search: learning the transient memory from simulated experience

    def simulated_action(self, state: int) -> int:
        """Epsilon-greedy on the combined value among the modelled actions of `state` (all
        actions when the model knows none, so a bootstrap value always exists)."""
        actions = self.model.state_actions[state] or range(self.num_actions)
        if self.rng.random() < self.config.transient_epsilon:
            return actions[int(self.rng.random() * len(actions))]
        values = [self.combined_value(state, action) for action in actions]
        best = max(values)
        ties = [action for action, value in zip(actions, values) if value == best]
        return ties[0] if len(ties) == 1 else ties[int(self.rng.random() * len(ties))]

    def search(self, origin: int) -> None:
        """`planning_steps` steps of Sarsa(lambda) on the transient memory along episodes
        simulated in the model from `origin`."""
        model, config = self.model, self.config
        if not model.state_actions[origin]:
            return
        state, action, length, traces = origin, self.simulated_action(origin), 0, {}
        for _ in range(config.planning_steps):
            reward, next_state, terminal = model.predict(state, action)
            length += 1
            restart = terminal or length >= config.max_simulation_length or not model.state_actions[next_state]
            target = reward
            if not terminal:
                next_action = self.simulated_action(next_state)
                target += config.gamma * self.combined_value(next_state, next_action)
            error = target - self.combined_value(state, action)
            traces = self._sarsa_update(
                self.transient, traces, state, action, error, config.transient_alpha, config.transient_trace_decay
            )
            if restart:
                state, action, length, traces = origin, self.simulated_action(origin), 0, {}
            else:
                state, action = next_state, next_action
        self.updates += config.planning_steps
        self.planning_updates += config.planning_steps

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "permanent": np.array(self.permanent, dtype=np.float64),
            "transient": np.array(self.transient, dtype=np.float64),
            "trace_features": np.array(list(self.traces), dtype=np.int64),
            "trace_values": np.array(list(self.traces.values()), dtype=np.float64),
            "pending": [-1, -1] if self.pending is None else list(self.pending),
            "new_episode": self.new_episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.permanent = np.asarray(state["permanent"], dtype=np.float64).tolist()
        self.transient = np.asarray(state["transient"], dtype=np.float64).tolist()
        features = np.asarray(state["trace_features"]).tolist()
        self.traces = dict(zip(features, np.asarray(state["trace_values"]).tolist()))
        pending = [int(value) for value in state["pending"]]
        self.pending = None if pending[0] < 0 else (pending[0], pending[1])
        self.new_episode = bool(state["new_episode"])

"""The learned model of tabular Dyna (Sutton & Barto, RL: An Introduction, 2nd ed., chapter 8).

For every (state, action) pair the agent has tried, the table remembers the last reward, next
state and termination it saw: a deterministic sample model, exact in a deterministic world and
quick to follow a changing one. Around that it keeps what the planners of chapter 8 need:

- the observed pairs in first-seen order, so that "a random previously observed state, then a
  random action previously taken in it" is reproducible from a numpy Generator (Dyna-Q, 8.2);
- the time each pair was last tried for real (Dyna-Q+'s exploration bonus, 8.3);
- the predecessors of every state (prioritized sweeping, 8.4);
- optionally, Dyna-Q+'s assumption that an untried action from a visited state leads back to
  that state with reward 0.

The table is fitted by counting, not by gradients: `record` overwrites an entry, and `loss` only
measures how many real transitions the table would have predicted wrongly.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.types import Batch, Trajectory

# What a table entry is based on.
UNKNOWN, OBSERVED, ASSUMED = 0, 1, 2


class TabularModel:
    """A table (state, action) -> (reward, next state, terminal) of the last real outcome.

    Pairs are numbered `state * num_actions + action`. States are integer cells 0..S-1.
    """

    #: The model's state is the observation itself, so decoding is the identity.
    can_decode = True

    def __init__(self, num_states: int, num_actions: int, model_untried_actions: bool = False):
        self.num_states = num_states
        self.num_actions = num_actions
        self.model_untried_actions = model_untried_actions
        self.clear()

    def clear(self) -> None:
        pairs = self.num_states * self.num_actions
        self.time = 0  # real transitions recorded so far: the clock of Dyna-Q+'s bonus
        self.kind = [UNKNOWN] * pairs
        self.reward = [0.0] * pairs
        self.next_state = [-1] * pairs
        self.terminal = [False] * pairs
        self.last_tried = [0] * pairs
        self.pairs: list[int] = []  # every modelled pair, first-seen order
        self.states: list[int] = []  # every state with a modelled pair, first-seen order
        self.state_actions: list[list[int]] = [[] for _ in range(self.num_states)]
        # predecessors[s] holds the pairs predicted to lead to s, as an insertion-ordered dict
        # used as a set: iteration order must not depend on hashing for runs to be reproducible.
        self.predecessors: list[dict[int, None]] = [{} for _ in range(self.num_states)]

    # ------------------------------------------------------------------------------------------
    # Learning

    def record(self, state: int, action: int, reward: float, next_state: int, terminal: bool) -> None:
        """Remember one real transition (overwriting what the pair predicted before)."""
        self.time += 1
        if not self.state_actions[state]:
            self._first_visit(state)
        pair = state * self.num_actions + action
        if self.kind[pair] == UNKNOWN:
            self._add_pair(pair, state, action)
        self.kind[pair] = OBSERVED
        self._predict(pair, reward, next_state, terminal)
        self.last_tried[pair] = self.time

    def _first_visit(self, state: int) -> None:
        if not self.model_untried_actions:
            return
        # Dyna-Q+ (Sutton & Barto 8.3): untried actions "would lead back to the same state with
        # a reward of zero", and count as last tried now, when the state was first met.
        for action in range(self.num_actions):
            pair = state * self.num_actions + action
            self._add_pair(pair, state, action)
            self.kind[pair] = ASSUMED
            self._predict(pair, 0.0, state, False)
            self.last_tried[pair] = self.time

    def _add_pair(self, pair: int, state: int, action: int) -> None:
        if not self.state_actions[state]:
            self.states.append(state)
        self.state_actions[state].append(action)
        self.pairs.append(pair)

    def _predict(self, pair: int, reward: float, next_state: int, terminal: bool) -> None:
        previous = self.next_state[pair]
        if previous != next_state:
            if previous >= 0:
                del self.predecessors[previous][pair]
            self.predecessors[next_state][pair] = None
        self.reward[pair] = float(reward)
        self.next_state[pair] = int(next_state)
        self.terminal[pair] = bool(terminal)

    def fit(self, batch: Batch) -> dict[str, float]:
        """Record every transition of a batch of real sequences (see `transitions_in`)."""
        count = 0
        for state, action, reward, next_state, terminal in transitions_in(batch):
            self.record(state, action, reward, next_state, terminal)
            count += 1
        return {"model/recorded": float(count)}

    # ------------------------------------------------------------------------------------------
    # Queries used by the planners

    def knows(self, state: int, action: int) -> bool:
        return self.kind[state * self.num_actions + action] != UNKNOWN

    def predict(self, state: int, action: int) -> tuple[float, int, bool]:
        """(reward, next state, terminal) for a modelled pair."""
        pair = state * self.num_actions + action
        if self.kind[pair] == UNKNOWN:
            raise KeyError(f"the model has never seen action {action} in state {state}")
        return self.reward[pair], self.next_state[pair], self.terminal[pair]

    def steps_since_tried(self, state: int, action: int) -> int:
        """Dyna-Q+'s tau: real steps since the pair was last tried (or assumed)."""
        return self.time - self.last_tried[state * self.num_actions + action]

    def sample(self, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
        """`count` pairs, each a uniformly random previously observed state and then a uniformly
        random action modelled in it (step (f) of the book's tabular Dyna-Q).

        All the randomness is drawn in one call, which keeps planning loops fast and makes the
        sequence a function of the generator's state alone.
        """
        if not self.states:
            return []
        uniforms = rng.random(2 * count).tolist()
        states, state_actions = self.states, self.state_actions
        chosen = []
        for index in range(count):
            state = states[int(uniforms[2 * index] * len(states))]
            actions = state_actions[state]
            chosen.append((state, actions[int(uniforms[2 * index + 1] * len(actions))]))
        return chosen

    def predecessors_of(self, state: int) -> list[tuple[int, int]]:
        """The (state, action) pairs the table predicts to lead to `state`."""
        return [divmod(pair, self.num_actions) for pair in self.predecessors[state]]

    # ------------------------------------------------------------------------------------------
    # The WorldModel protocol

    def initial(self, batch_size: int) -> np.ndarray:
        """(B,) cells; -1 means "no observation yet"."""
        return np.full((batch_size,), -1, dtype=np.int64)

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any) -> tuple[np.ndarray, np.ndarray]:
        """Filtering is the identity: the cell is observed directly. obs["state"] (B, T)."""
        cells = np.asarray(obs["state"], dtype=np.int64)
        return cells, cells[:, -1]

    def imagine(self, state: Any, actions_or_policy: ActionsOrPolicy, horizon: int) -> Trajectory:
        """Follow the table for `horizon` steps from cells (B,).

        Actions are (B, L) indices, (B, L, A) one-hot, or a policy `policy(cells (B,)) -> (B,)`.
        A pair the table has never seen is imagined as staying put with reward 0 and is flagged
        in `extras["known"]`; after a terminal step the rollout stays put with continue 0.
        """
        cells = np.asarray(state, dtype=np.int64).copy()  # (B,)
        batch_size = cells.shape[0]
        policy: Callable | None = actions_or_policy if callable(actions_or_policy) else None
        planned = None
        if policy is None:
            planned = np.asarray(actions_or_policy)
            if planned.ndim == 3:  # one-hot (B, L, A)
                planned = planned.argmax(axis=-1)
            if planned.shape[:2] != (batch_size, horizon):
                raise ValueError(f"actions must be (B={batch_size}, L={horizon}) or (B, L, A); got {planned.shape}")
        states = np.empty((batch_size, horizon), dtype=np.int64)
        actions = np.empty((batch_size, horizon), dtype=np.int64)
        rewards = np.zeros((batch_size, horizon), dtype=np.float32)
        continues = np.ones((batch_size, horizon), dtype=np.float32)
        known = np.zeros((batch_size, horizon), dtype=bool)
        ended = np.zeros(batch_size, dtype=bool)
        for step in range(horizon):
            chosen = np.asarray(policy(cells.copy())) if policy is not None else planned[:, step]
            for row in range(batch_size):
                action = int(chosen[row])
                actions[row, step] = action
                if ended[row]:
                    continues[row, step] = 0.0
                    continue
                pair = int(cells[row]) * self.num_actions + action
                if cells[row] >= 0 and self.kind[pair] != UNKNOWN:
                    known[row, step] = True
                    rewards[row, step] = self.reward[pair]
                    cells[row] = self.next_state[pair]
                    if self.terminal[pair]:
                        ended[row] = True
                        continues[row, step] = 0.0
            states[:, step] = cells
        return Trajectory(
            states=states,
            actions=actions,
            rewards=rewards,
            continues=continues,
            observations={"state": states.copy()},
            extras={"known": known},
        )

    def decode(self, state: Any) -> dict[str, np.ndarray]:
        return {"state": np.asarray(state, dtype=np.int64)}

    def loss(self, batch: Batch) -> tuple[float, dict[str, float]]:
        """Fraction of the batch's real transitions that the table mispredicts (unknown pairs
        count as wrong). Not differentiable: tables are fitted by counting, not gradients."""
        total = wrong = 0
        for state, action, reward, next_state, terminal in transitions_in(batch):
            total += 1
            pair = state * self.num_actions + action
            if self.kind[pair] != OBSERVED or (self.reward[pair], self.next_state[pair], self.terminal[pair]) != (
                reward,
                next_state,
                terminal,
            ):
                wrong += 1
        mismatch = wrong / total if total else 0.0
        return mismatch, {"loss/mismatch": mismatch}

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Numpy arrays and ints. Predecessor sets are stored in their iteration order, which
        prioritized sweeping depends on."""
        predecessor_counts = np.array([len(entries) for entries in self.predecessors], dtype=np.int64)
        predecessor_pairs = np.array([pair for entries in self.predecessors for pair in entries], dtype=np.int64)
        return {
            "num_states": self.num_states,
            "num_actions": self.num_actions,
            "model_untried_actions": self.model_untried_actions,
            "time": self.time,
            "kind": np.array(self.kind, dtype=np.int8),
            "reward": np.array(self.reward, dtype=np.float64),
            "next_state": np.array(self.next_state, dtype=np.int64),
            "terminal": np.array(self.terminal, dtype=bool),
            "last_tried": np.array(self.last_tried, dtype=np.int64),
            "pairs": np.array(self.pairs, dtype=np.int64),
            "predecessor_counts": predecessor_counts,
            "predecessor_pairs": predecessor_pairs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape = (int(state["num_states"]), int(state["num_actions"]))
        if shape != (self.num_states, self.num_actions):
            raise ValueError(
                f"checkpoint is for {shape[0]} states x {shape[1]} actions, this model has {self.num_states} x {self.num_actions}"
            )
        self.model_untried_actions = bool(state["model_untried_actions"])
        self.clear()
        self.time = int(state["time"])
        self.kind = [int(value) for value in np.asarray(state["kind"])]
        self.reward = [float(value) for value in np.asarray(state["reward"])]
        self.next_state = [int(value) for value in np.asarray(state["next_state"])]
        self.terminal = [bool(value) for value in np.asarray(state["terminal"])]
        self.last_tried = [int(value) for value in np.asarray(state["last_tried"])]
        for pair in np.asarray(state["pairs"]).tolist():
            self._add_pair(pair, *divmod(pair, self.num_actions))
        offset = 0
        pairs = np.asarray(state["predecessor_pairs"]).tolist()
        for target, count in enumerate(np.asarray(state["predecessor_counts"]).tolist()):
            self.predecessors[target] = dict.fromkeys(pairs[offset : offset + count])
            offset += count


def transitions_in(batch: Batch):
    """Yield (state, action, reward, next_state, terminal) for every real transition in a batch.

    Follows wmlab's time convention: step t holds the action that led to obs_t and the reward
    received on arriving there, so the transition into step t starts from step t-1 unless step t
    begins an episode. obs["state"], action, reward, is_first, is_terminal: (B, T).
    """
    cells = np.asarray(batch.obs["state"]).astype(np.int64)
    actions = np.asarray(batch.action)
    if actions.ndim == 3:  # one-hot (B, T, A)
        actions = actions.argmax(axis=-1)
    rewards = np.asarray(batch.reward, dtype=np.float64)
    is_first = np.asarray(batch.is_first, dtype=bool)
    is_terminal = np.asarray(batch.is_terminal, dtype=bool)
    batch_size, length = rewards.shape[:2]
    for row in range(batch_size):
        for step in range(1, length):
            if is_first[row, step]:
                continue
            yield (
                int(cells[row, step - 1]),
                int(actions[row, step]),
                float(rewards[row, step]),
                int(cells[row, step]),
                bool(is_terminal[row, step]),
            )

"""Settings of the Dyna family. Defaults follow Sutton & Barto's Dyna maze (Example 8.1) where the
book gives a value; the others are this library's choices and say so."""

from __future__ import annotations

from dataclasses import dataclass

from wmlab.core.config import Config, between, ranges


@dataclass(frozen=True)
class DynaConfig(Config):
    """Dyna-Q, Dyna-Q+, prioritized sweeping and trajectory sampling (Sutton & Barto ch. 8)."""

    limits = ranges(
        counts="max_trajectory_length",
        non_negative="planning_steps kappa theta",
        fractions="gamma epsilon",
        alpha=between(0, 1, low_open=True),
    )

    gamma: float = 0.95
    """Discount factor (the book's Dyna maze uses 0.95)."""

    alpha: float = 0.1
    """Step size of every Q-learning update, real or planned (book: 0.1)."""

    epsilon: float = 0.1
    """Probability of a uniformly random action when exploring (book: 0.1)."""

    planning_steps: int = 5
    """Planning updates after each real step: n in the book (Figure 8.2 compares 0, 5 and 50).
    For prioritized sweeping it is the most taken from the queue per real step."""

    kappa: float = 1e-3
    """Dyna-Q+ only: planning uses reward r + kappa * sqrt(tau), tau the real steps since the
    pair was last tried. The book gives no value; this library's choice (see the README)."""

    theta: float = 1e-4
    """Prioritized sweeping only: a pair enters the queue when its priority (the size of the
    change its update would make) exceeds this threshold. The book gives no value."""

    max_trajectory_length: int = 200
    """Trajectory sampling only: a simulated trajectory that has not terminated after this many
    steps is restarted from the current state (a bound so planning cannot circle forever)."""


@dataclass(frozen=True)
class Dyna2Config(Config):
    """Dyna-2 (Silver, Sutton & Mueller 2008): a permanent memory learned from real experience
    and a transient memory learned by search from the current state, both linear in features."""

    limits = ranges(
        counts="max_simulation_length coarse_block grid_columns",
        non_negative="transient_alpha planning_steps",
        fractions="gamma epsilon transient_epsilon trace_decay transient_trace_decay",
        alpha=between(0, 1, low_open=True),
    )

    gamma: float = 0.95
    """Discount factor for both memories (the paper's Go experiments are undiscounted; the maze
    needs discounting to prefer short paths)."""

    alpha: float = 0.1
    """Step size of the permanent memory's Sarsa(lambda) updates, shared among the active
    features (each of the two active features moves by alpha / 2 of the error)."""

    transient_alpha: float = 0.1
    """Step size of the transient memory's Sarsa(lambda) updates during search, shared among
    the active features like `alpha`."""

    epsilon: float = 0.1
    """Probability of a random action in the real environment."""

    transient_epsilon: float = 0.1
    """Probability of a random action inside the search's simulated episodes."""

    trace_decay: float = 0.0
    """lambda of the permanent memory's eligibility traces (0: one-step Sarsa)."""

    transient_trace_decay: float = 0.0
    """lambda of the transient memory's eligibility traces during search."""

    planning_steps: int = 20
    """Simulated steps of search after each real step (and at the start of each episode)."""

    max_simulation_length: int = 100
    """A simulated episode that has not terminated after this many steps restarts from the
    current real state."""

    coarse_block: int = 2
    """Side of the coarse feature tiles: states share a coarse feature (per action) when they
    fall in the same coarse_block x coarse_block square of the grid (or, with grid_columns 0,
    the same run of coarse_block consecutive state indices). 1 leaves only the table."""

    grid_columns: int = 9
    """Columns of the grid, so that row-major cell indices can be tiled in squares: 9 fits the
    book's mazes (dyna-maze, blocking-maze, shortcut-maze at resolution 1). 0 tiles consecutive
    indices instead, which on a grid groups cells across row ends and generalises poorly."""

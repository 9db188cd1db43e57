"""The grid mazes of Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed.), chapter 8.

- `DynaMaze`: the 6 x 9 maze of Example 8.1 / Figure 8.2, optionally at a finer resolution (each
  cell split into `resolution` x `resolution` cells, as in the prioritized-sweeping comparison
  of Example 8.4).
- `BlockingMaze`: Example 8.2 / Figure 8.4: the short way round the wall closes after
  `change_step` steps and a longer way opens.
- `ShortcutMaze`: Example 8.3 / Figure 8.5: a shortcut opens after `change_step` steps.

Cells are (row, column) with row 0 at the top; a cell's observation is `row * columns + column`.
Moves are deterministic; moving into a wall or off the grid leaves the agent where it is.
Reward is +1 on entering the goal (which ends the episode), 0 otherwise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

import gymnasium
import numpy as np

Cell = tuple[int, int]

#: Row and column offsets of the four actions, in action-index order.
MOVES: tuple[Cell, ...] = ((-1, 0), (1, 0), (0, 1), (0, -1))
ACTION_NAMES = ("up", "down", "right", "left")


@dataclass(frozen=True)
class MazeLayout:
    """Where the walls, the start and the goal of a grid maze are."""

    rows: int
    columns: int
    start: Cell
    goal: Cell
    walls: frozenset[Cell]

    def __post_init__(self) -> None:
        for name, cell in (("start", self.start), ("goal", self.goal)):
            if not (0 <= cell[0] < self.rows and 0 <= cell[1] < self.columns):
                raise ValueError(f"{name} {cell} is outside the {self.rows} x {self.columns} grid")
            if cell in self.walls:
                raise ValueError(f"{name} {cell} is inside a wall")

    def scaled(self, factor: int) -> "MazeLayout":
        """The same maze with every cell split into factor x factor cells.

        Walls cover whole blocks; the start and the goal become the top-left cell of their block,
        so that start and goal stay single cells and the shortest path grows with the factor.
        """
        if factor < 1:
            raise ValueError(f"the resolution factor must be a positive integer, got {factor}")
        walls = frozenset(
            (row * factor + inner_row, column * factor + inner_column)
            for row, column in self.walls
            for inner_row in range(factor)
            for inner_column in range(factor)
        )
        return MazeLayout(
            rows=self.rows * factor,
            columns=self.columns * factor,
            start=(self.start[0] * factor, self.start[1] * factor),
            goal=(self.goal[0] * factor, self.goal[1] * factor),
            walls=walls,
        )

    def shortest_path_length(self) -> int:
        """Number of moves on a shortest path from start to goal (breadth-first search)."""
        distance = {self.start: 0}
        frontier = deque([self.start])
        while frontier:
            cell = frontier.popleft()
            if cell == self.goal:
                return distance[cell]
            for row_offset, column_offset in MOVES:
                neighbour = (cell[0] + row_offset, cell[1] + column_offset)
                if neighbour in distance or neighbour in self.walls:
                    continue
                if 0 <= neighbour[0] < self.rows and 0 <= neighbour[1] < self.columns:
                    distance[neighbour] = distance[cell] + 1
                    frontier.append(neighbour)
        raise ValueError("the goal cannot be reached from the start")

    @property
    def open_cells(self) -> int:
        return self.rows * self.columns - len(self.walls)


def _wall_row(row: int, first_column: int, last_column: int) -> frozenset[Cell]:
    return frozenset((row, column) for column in range(first_column, last_column + 1))


DYNA_MAZE = MazeLayout(
    rows=6,
    columns=9,
    start=(2, 0),
    goal=(0, 8),
    walls=frozenset({(1, 2), (2, 2), (3, 2), (0, 7), (1, 7), (2, 7), (4, 5)}),
)
BLOCKING_MAZE_BEFORE = MazeLayout(rows=6, columns=9, start=(5, 3), goal=(0, 8), walls=_wall_row(3, 0, 7))
BLOCKING_MAZE_AFTER = MazeLayout(rows=6, columns=9, start=(5, 3), goal=(0, 8), walls=_wall_row(3, 1, 8))
SHORTCUT_MAZE_BEFORE = MazeLayout(rows=6, columns=9, start=(5, 3), goal=(0, 8), walls=_wall_row(3, 1, 8))
SHORTCUT_MAZE_AFTER = MazeLayout(rows=6, columns=9, start=(5, 3), goal=(0, 8), walls=_wall_row(3, 1, 7))

# Colours for render(): floor, wall, start, goal, agent.
_FLOOR = (235, 235, 235)
_WALL = (60, 60, 70)
_START = (150, 190, 240)
_GOAL = (120, 200, 120)
_AGENT = (220, 60, 50)


class GridMaze(gymnasium.Env):
    """A deterministic grid maze whose walls may change once, after a given number of steps.

    The step count that triggers the change is the total over all episodes since construction
    (a reset does not restart it), as in the book's blocking and shortcut experiments. An agent
    standing in a cell that becomes a wall is not moved; walls only stop it from entering.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        layout: MazeLayout,
        later_layout: MazeLayout | None = None,
        change_step: int | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        cell_pixels: int = 8,
    ):
        if (later_layout is None) != (change_step is None):
            raise ValueError("give both later_layout and change_step, or neither")
        if later_layout is not None:
            same_frame = (later_layout.rows, later_layout.columns, later_layout.start, later_layout.goal)
            if same_frame != (layout.rows, layout.columns, layout.start, layout.goal):
                raise ValueError("a changing maze may move its walls, not its size, start or goal")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.layout = layout
        self.later_layout = later_layout
        self.change_step = change_step
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.cell_pixels = cell_pixels
        self.observation_space = gymnasium.spaces.Discrete(layout.rows * layout.columns)
        self.action_space = gymnasium.spaces.Discrete(len(MOVES))
        self.start_index = self.index(layout.start)
        self.goal_index = self.index(layout.goal)
        # Successor tables indexed [cell][action]: one lookup per step keeps step() cheap.
        self._successors = self._successor_table(layout.walls)
        self._later_successors = None if later_layout is None else self._successor_table(later_layout.walls)
        self.position = self.start_index
        self.total_steps = 0
        self.episode_steps = 0

    # --------------------------------------------------------------------------------------
    # Cell indexing

    def index(self, cell: Cell) -> int:
        return cell[0] * self.layout.columns + cell[1]

    def cell(self, index: int) -> Cell:
        return divmod(int(index), self.layout.columns)

    def _successor_table(self, walls: Iterable[Cell]) -> list[list[int]]:
        walls = frozenset(walls)
        rows, columns = self.layout.rows, self.layout.columns
        table = []
        for row in range(rows):
            for column in range(columns):
                successors = []
                for row_offset, column_offset in MOVES:
                    target = (row + row_offset, column + column_offset)
                    inside = 0 <= target[0] < rows and 0 <= target[1] < columns
                    successors.append(self.index(target) if inside and target not in walls else row * columns + column)
                table.append(successors)
        return table

    # --------------------------------------------------------------------------------------
    # Dynamics

    @property
    def walls_changed(self) -> bool:
        """Whether the next step uses the later layout."""
        return self.change_step is not None and self.total_steps >= self.change_step

    @property
    def current_layout(self) -> MazeLayout:
        return self.later_layout if self.walls_changed else self.layout

    def successor(self, position: int, action: int) -> int:
        """Where `action` leads from cell index `position` under the walls now in force,
        without taking a step (for planning checks and tests)."""
        table = self._later_successors if self.walls_changed else self._successors
        return table[position][action]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.position = self.start_index
        self.episode_steps = 0
        return self.position, {}

    def step(self, action: Any) -> tuple[int, float, bool, bool, dict]:
        table = self._later_successors if self.walls_changed else self._successors
        self.position = table[self.position][int(action)]
        self.total_steps += 1
        self.episode_steps += 1
        terminated = self.position == self.goal_index
        truncated = (
            not terminated and self.max_episode_steps is not None and self.episode_steps >= self.max_episode_steps
        )
        return self.position, 1.0 if terminated else 0.0, terminated, truncated, {}

    # --------------------------------------------------------------------------------------
    # Rendering and exact resumption

    def render(self) -> np.ndarray | None:
        """An RGB image (rows * cell_pixels, columns * cell_pixels, 3) of the current grid."""
        if self.render_mode != "rgb_array":
            return None
        layout = self.current_layout
        grid = np.empty((layout.rows, layout.columns, 3), dtype=np.uint8)
        grid[:] = _FLOOR
        for wall in layout.walls:
            grid[wall] = _WALL
        grid[layout.start] = _START
        grid[layout.goal] = _GOAL
        grid[self.cell(self.position)] = _AGENT
        return np.repeat(np.repeat(grid, self.cell_pixels, axis=0), self.cell_pixels, axis=1)

    def world_state(self) -> dict[str, Any]:
        """The part of the state that outlives episodes (the step count that moves the walls):
        evaluation copies it so that it scores the layout the agent trains on now."""
        return {"total_steps": int(self.total_steps)}

    def load_world_state(self, state: dict[str, Any]) -> None:
        self.total_steps = int(state["total_steps"])

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as JSON-serialisable values."""
        return {
            "position": int(self.position),
            "total_steps": int(self.total_steps),
            "episode_steps": int(self.episode_steps),
            "rng": self.np_random.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.total_steps = int(state["total_steps"])
        self.episode_steps = int(state["episode_steps"])
        self.np_random.bit_generator.state = state["rng"]


class DynaMaze(GridMaze):
    """The 6 x 9 Dyna maze (Sutton & Barto Example 8.1), or a finer version of it.

    `resolution` splits every cell into resolution x resolution cells (Example 8.4's
    "gridworld resolution"); 1 is the book's maze, with a shortest path of 14 steps.
    """

    def __init__(self, resolution: int = 1, max_episode_steps: int | None = None, render_mode: str | None = None):
        super().__init__(DYNA_MAZE.scaled(resolution), max_episode_steps=max_episode_steps, render_mode=render_mode)
        self.resolution = resolution


class ChangingMaze(GridMaze):
    """A maze of the book whose walls change once: `before` until `change_step` steps have been
    taken (None: the maze's `default_change_step`), `after` from then on."""

    before: MazeLayout
    after: MazeLayout
    default_change_step: int

    def __init__(
        self, change_step: int | None = None, max_episode_steps: int | None = None, render_mode: str | None = None
    ):
        super().__init__(
            self.before,
            later_layout=self.after,
            change_step=self.default_change_step if change_step is None else change_step,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
        )


class BlockingMaze(ChangingMaze):
    """Sutton & Barto Example 8.2: after `change_step` steps (1000 by default) the gap at the right
    end of the wall closes and one opens at the left end, so a learned short path becomes a dead end."""

    before, after, default_change_step = BLOCKING_MAZE_BEFORE, BLOCKING_MAZE_AFTER, 1000


class ShortcutMaze(ChangingMaze):
    """Sutton & Barto Example 8.3: after `change_step` steps (3000 by default) a gap opens at the
    right end of the wall, a shortcut that an agent which trusts its model never discovers."""

    before, after, default_change_step = SHORTCUT_MAZE_BEFORE, SHORTCUT_MAZE_AFTER, 3000

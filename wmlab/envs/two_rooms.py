"""Two rooms: a point agent navigates through a door in a wall to reach a goal (pure numpy).

The arena is the unit square [0, 1]^2 with y pointing up. A vertical wall at x = 0.5 splits it
into a left and a right room; a door, an opening of `door_height`, sits at a height drawn anew
each episode. The agent is a disc of `agent_radius`; each step it moves by `action * max_step`
(actions in [-1, 1]^2) and slides along whatever it bumps into. By default it starts in one
room and the goal lies in the other, so every episode needs the door.

Observations (`observation=`):
- "pixels": a (64, 64, 3) uint8 RGB frame: background, wall, goal disc (the success region)
  and the agent disc drawn on top, each in its own colour (see the *_RGB constants).
- "state": float32 [agent x, agent y, goal x, goal y, door centre y], all in [0, 1].

Rewards (`reward=`):
- "sparse": 1.0 on reaching the goal (centre distance < `goal_radius`), which ends the episode.
- "dense": each step, the decrease of the path length to the goal (straight when in the goal's
  room, via the door otherwise), plus the same 1.0 bonus on success.
- "distance": minus the path length after the step (a function of where the agent stands, not of
  its last move), plus the same 1.0 bonus on success.
`success_bonus` changes that 1.0 (0 with the dense reward: the decrease of the path length alone).
Episodes are truncated after `max_episode_steps`. `info` always carries "success" (bool),
"agent" and "goal" (x, y), "door" (the door centre, x = 0.5) and "distance" (the path length).

Physics works in configuration space: the agent's centre is a point, and every obstacle is
grown by the agent's radius. Moves are swept against those boxes, so no step, however long,
can tunnel through the wall; a blocked move keeps its component along the wall (sliding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

BACKGROUND_RGB = (24, 24, 40)
WALL_RGB = (150, 150, 150)
GOAL_RGB = (40, 200, 80)
AGENT_RGB = (230, 60, 50)
#: The moves of `discrete_actions=True` (for agents of discrete actions, such as DIAMOND): stay,
#: up, down, left, right, each a full step.
DISCRETE_MOVES = ((0.0, 0.0), (0.0, 1.0), (0.0, -1.0), (-1.0, 0.0), (1.0, 0.0))
DISCRETE_MOVE_NAMES = ("NOOP", "UP", "DOWN", "LEFT", "RIGHT")

# The arena's middle: the wall is centred on it and "which side" is decided by it.
MIDDLE_X = 0.5

_INFINITY = math.inf
# How far inside a box (arena units) rounding may leave the agent and still count as touching it.
_CONTACT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TwoRoomsGeometry:
    """Sizes of the arena, in units of its side length, and the quantities derived from them."""

    wall_thickness: float = 0.04
    door_height: float = 0.2
    agent_radius: float = 0.03
    goal_radius: float = 0.06
    max_step: float = 0.05
    door_y_range: tuple[float, float] = (0.2, 0.8)  # where the door centre is drawn from

    def __post_init__(self) -> None:
        if self.wall_thickness <= 0 or self.max_step <= 0 or self.goal_radius <= 0 or self.agent_radius < 0:
            raise ValueError("wall_thickness, max_step and goal_radius must be positive, agent_radius non-negative")
        if self.door_height <= 2 * self.agent_radius:
            raise ValueError(
                f"door_height {self.door_height} must exceed the agent's diameter {2 * self.agent_radius}, "
                "or the agent could never pass"
            )
        if self.wall_left <= self.agent_radius:
            raise ValueError("the wall and agent are too large to leave any room on either side")
        low, high = self.door_y_range
        if not (self.door_height / 2 <= low <= high <= 1 - self.door_height / 2):
            raise ValueError(f"door_y_range {self.door_y_range} must keep the whole door inside [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for snapshots."""
        return {**asdict(self), "door_y_range": list(self.door_y_range)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TwoRoomsGeometry":
        return cls(**{**values, "door_y_range": tuple(values["door_y_range"])})

    # The wall as the agent's centre sees it: grown by the agent's radius on both sides.
    @property
    def wall_left(self) -> float:
        return MIDDLE_X - self.wall_thickness / 2 - self.agent_radius

    @property
    def wall_right(self) -> float:
        return MIDDLE_X + self.wall_thickness / 2 + self.agent_radius

    @property
    def lowest(self) -> float:
        """The smallest coordinate the agent's centre can take (the outer walls)."""
        return self.agent_radius

    @property
    def highest(self) -> float:
        return 1.0 - self.agent_radius

    def corridor(self, door_y: float) -> tuple[float, float]:
        """The range of centre heights at which the agent fits through the door."""
        return door_y - self.door_height / 2 + self.agent_radius, door_y + self.door_height / 2 - self.agent_radius

    def room_x_range(self, side: int) -> tuple[float, float]:
        """The centre's x range inside the left (side -1) or right (side +1) room."""
        return (self.lowest, self.wall_left) if side < 0 else (self.wall_right, self.highest)

    def in_wall_band(self, x: float) -> bool:
        return self.wall_left < x < self.wall_right

    def is_free(self, x: float, y: float, door_y: float) -> bool:
        """Whether the agent's centre may be at (x, y): inside the arena and not in the wall."""
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        # Rounding may leave a resting agent a hair inside a face; that still counts as free.
        tolerance = _CONTACT_TOLERANCE
        return not any(
            x_low + tolerance < x < x_high - tolerance and y_low + tolerance < y < y_high - tolerance
            for x_low, x_high, y_low, y_high in self.obstacles(door_y)
        )

    def obstacles(self, door_y: float) -> list[tuple[float, float, float, float]]:
        """Open boxes (x_low, x_high, y_low, y_high) that the agent's centre must stay out of."""
        corridor_low, corridor_high = self.corridor(door_y)
        return [
            (-_INFINITY, self.lowest, -_INFINITY, _INFINITY),  # the outer walls
            (self.highest, _INFINITY, -_INFINITY, _INFINITY),
            (-_INFINITY, _INFINITY, -_INFINITY, self.lowest),
            (-_INFINITY, _INFINITY, self.highest, _INFINITY),
            (self.wall_left, self.wall_right, -_INFINITY, corridor_low),  # the wall below the door
            (self.wall_left, self.wall_right, corridor_high, _INFINITY),  # and above it
        ]


def _slab(position: float, motion: float, low: float, high: float) -> tuple[float, float] | None:
    """The fractions of a move spent entering and leaving the open interval (low, high), on one axis."""
    if motion == 0.0:
        return (-_INFINITY, _INFINITY) if low < position < high else None
    to_low, to_high = (low - position) / motion, (high - position) / motion
    return (to_low, to_high) if to_low < to_high else (to_high, to_low)


def sweep(
    x: float, y: float, dx: float, dy: float, boxes: Sequence[tuple[float, float, float, float]]
) -> tuple[float, float]:
    """Move (x, y) by (dx, dy), stopping at the first box face hit and sliding along it.

    Each hit removes the motion across the face; two hits stop the move on both axes, so two
    rounds are all that can happen (the third is a guard against rounding).
    """
    for _ in range(3):
        if dx == 0.0 and dy == 0.0:
            break
        first_fraction, first_axis, face = _INFINITY, -1, 0.0
        for x_low, x_high, y_low, y_high in boxes:
            along_x = _slab(x, dx, x_low, x_high)
            if along_x is None:
                continue
            along_y = _slab(y, dy, y_low, y_high)
            if along_y is None:
                continue
            if along_x[0] >= along_y[0]:
                enter, axis, speed = along_x[0], 0, abs(dx)
            else:
                enter, axis, speed = along_y[0], 1, abs(dy)
            leave = min(along_x[1], along_y[1])
            if not (enter < leave and leave > 0.0 and enter <= 1.0 and enter < first_fraction):
                continue
            # A start "inside" by a rounding error is a contact; deeper inside there is no face to
            # stop at, and we let the move out rather than jump to a far face.
            if enter < 0.0 and -enter * speed > _CONTACT_TOLERANCE:
                continue
            first_fraction, first_axis = enter, axis
            if axis == 0:
                face = x_low if dx > 0 else x_high
            else:
                face = y_low if dy > 0 else y_high
        if first_axis < 0:
            return x + dx, y + dy
        fraction = max(first_fraction, 0.0)
        x, y = x + fraction * dx, y + fraction * dy
        remaining = 1.0 - fraction
        if first_axis == 0:
            x, dx, dy = face, 0.0, dy * remaining
        else:
            y, dx, dy = face, dx * remaining, 0.0
    return x, y


def path_length(agent: Sequence[float], goal: Sequence[float], door_y: float, geometry: TwoRoomsGeometry) -> float:
    """The distance from agent to goal, through the door when they are on opposite sides.

    Through the door, the path bends at the point of the door's corridor nearest to where the
    straight line crosses the middle: exact for a thin wall, close for this one. The two cases
    agree when the agent stands in the doorway, so the dense reward has no jumps.
    """
    agent_x, agent_y = agent
    goal_x, goal_y = goal
    if (agent_x < MIDDLE_X) == (goal_x < MIDDLE_X):
        return math.hypot(goal_x - agent_x, goal_y - agent_y)
    crossing_y = agent_y + (goal_y - agent_y) * (MIDDLE_X - agent_x) / (goal_x - agent_x)
    corridor_low, corridor_high = geometry.corridor(door_y)
    bend_y = min(max(crossing_y, corridor_low), corridor_high)
    return math.hypot(MIDDLE_X - agent_x, bend_y - agent_y) + math.hypot(goal_x - MIDDLE_X, goal_y - bend_y)


class TwoRooms(gymnasium.Env):
    """Navigate a point agent through the door between two rooms to a goal; see the module doc."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        observation: str = "pixels",
        reward: str = "sparse",
        max_episode_steps: int = 200,
        goal_in_other_room: bool = True,
        wall_thickness: float = 0.04,
        door_height: float = 0.2,
        agent_radius: float = 0.03,
        goal_radius: float = 0.06,
        max_step: float = 0.05,
        door_y_range: tuple[float, float] = (0.2, 0.8),
        image_size: int = 64,
        render_mode: str | None = "rgb_array",
        discrete_actions: bool = False,
        success_bonus: float = 1.0,
    ):
        if observation not in ("pixels", "state"):
            raise ValueError(f"observation must be 'pixels' or 'state', not {observation!r}")
        if reward not in ("sparse", "dense", "distance"):
            raise ValueError(f"reward must be 'sparse', 'dense' or 'distance', not {reward!r}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be at least 1, not {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, not {render_mode!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, not {image_size}")
        self.geometry = TwoRoomsGeometry(
            wall_thickness=wall_thickness,
            door_height=door_height,
            agent_radius=agent_radius,
            goal_radius=goal_radius,
            max_step=max_step,
            door_y_range=tuple(door_y_range),
        )
        self.observation_mode = observation
        self.reward_mode = reward
        # The reward on reaching the goal (sparse), or the bonus added to the step's decrease of
        # the path length then (dense; 0 leaves the decrease alone).
        self.success_bonus = float(success_bonus)
        self.max_episode_steps = int(max_episode_steps)
        self.goal_in_other_room = bool(goal_in_other_room)
        self.image_size = int(image_size)
        self.render_mode = render_mode

        self.discrete_actions = bool(discrete_actions)
        if self.discrete_actions:
            # DISCRETE_MOVES[i] is the unit move of action i: stay, up, down, left, right.
            self.action_space = spaces.Discrete(len(DISCRETE_MOVES))
        else:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        if observation == "pixels":
            self.observation_space = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        else:
            self.observation_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)

        # Pixel centres in arena coordinates; row 0 is the top of the image, where y = 1.
        centres = (np.arange(image_size) + 0.5) / image_size
        self._pixel_x = centres
        self._pixel_y = 1.0 - centres

        # A valid episode before the first reset, so that render() and get_state() always work.
        middle = (self.geometry.door_y_range[0] + self.geometry.door_y_range[1]) / 2
        self._set_layout(agent=(self.geometry.lowest, middle), goal=(self.geometry.highest, middle), door_y=middle)
        self._elapsed_steps = 0

    # ----------------------------------------------------------------------------------- episode

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        """Start an episode; `options` may fix "door_y", "agent" and/or "goal" (the rest is drawn)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"door_y", "agent", "goal"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the known ones are agent, goal, door_y")
        geometry = self.geometry

        door_y = options.get("door_y")
        door_y = float(self.np_random.uniform(*geometry.door_y_range)) if door_y is None else float(door_y)
        if not (geometry.door_height / 2 <= door_y <= 1 - geometry.door_height / 2):
            raise ValueError(f"door_y {door_y} puts part of the door outside the arena")
        agent, goal = options.get("agent"), options.get("goal")
        agent = None if agent is None else self._checked_position("agent", agent, door_y)
        goal = None if goal is None else self._checked_position("goal", goal, door_y)
        if agent is None:
            if goal is not None and self.goal_in_other_room:
                agent_side = 1 if goal[0] < MIDDLE_X else -1
            else:
                agent_side = self._random_side()
            agent = self._random_position(agent_side, avoid=goal)
        if goal is None:
            agent_side = -1 if agent[0] < MIDDLE_X else 1
            goal_side = -agent_side if self.goal_in_other_room else self._random_side()
            goal = self._random_position(goal_side, avoid=agent)

        self._set_layout(agent, goal, door_y)
        self._elapsed_steps = 0
        return self._observation(), self._info(success=self._distance_to_goal() < geometry.goal_radius)

    def get_action_meanings(self) -> list[str]:
        """Names of the discrete moves, in Atari's words (the play page maps keys from them)."""
        if not self.discrete_actions:
            raise ValueError("two rooms has continuous actions here: its actions have no names")
        return list(DISCRETE_MOVE_NAMES)

    def step(self, action):
        if self.discrete_actions:
            if not self.action_space.contains(int(np.asarray(action).reshape(()))):
                raise ValueError(f"the action must be an index in [0, {len(DISCRETE_MOVES)}), not {action}")
            action = DISCRETE_MOVES[int(np.asarray(action).reshape(()))]
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"the action must be finite, not {action}")
        dx, dy = (np.clip(action, -1.0, 1.0) * self.geometry.max_step).tolist()
        before = self._path_length()
        self._agent = sweep(*self._agent, dx, dy, self._boxes)
        self._elapsed_steps += 1

        success = self._distance_to_goal() < self.geometry.goal_radius
        reward = self.success_bonus if success else 0.0
        if self.reward_mode == "dense":
            reward += before - self._path_length()
        elif self.reward_mode == "distance":
            reward -= self._path_length()
        truncated = self._elapsed_steps >= self.max_episode_steps
        return self._observation(), float(reward), bool(success), bool(truncated), self._info(success)

    def render(self) -> np.ndarray:
        """The current frame, (image_size, image_size, 3) uint8, in either observation mode."""
        return self._frame(self._agent)

    def frame_at(self, agent: Sequence[float]) -> np.ndarray:
        """The frame of the current layout with the agent drawn at `agent` (x, y) instead, e.g. to
        probe a model over positions; the environment's state is not changed."""
        return self._frame((float(agent[0]), float(agent[1])))

    def goal_observation(self) -> np.ndarray:
        """The observation the agent would see standing on the goal (a goal image for planners)."""
        if self.observation_mode == "pixels":
            return self._frame(self._goal)
        return self._state_vector(self._goal)

    # ------------------------------------------------------------------------ exact resumption

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain JSON types (random state included)."""
        return {
            "agent": list(self._agent),
            "goal": list(self._goal),
            "door_y": self._door_y,
            "elapsed_steps": self._elapsed_steps,
            "geometry": self.geometry.to_dict(),
            "rng": self.np_random.bit_generator.state,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a `get_state()` snapshot, random state included, from this same configuration."""
        saved_geometry = TwoRoomsGeometry.from_dict(state["geometry"])
        if saved_geometry != self.geometry:
            raise ValueError(
                f"the state was saved with geometry {saved_geometry}, but this environment has {self.geometry}"
            )
        rng_state = state["rng"]
        generator = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
        generator.bit_generator.state = rng_state
        self.np_random = generator
        door_y = float(state["door_y"])
        agent = self._checked_position("agent", state["agent"], door_y)
        goal = self._checked_position("goal", state["goal"], door_y)
        self._set_layout(agent, goal, door_y)
        self._elapsed_steps = int(state["elapsed_steps"])

    # ---------------------------------------------------------------------------------- helpers

    @property
    def agent_position(self) -> tuple[float, float]:
        return self._agent

    @property
    def goal_position(self) -> tuple[float, float]:
        return self._goal

    @property
    def door_y(self) -> float:
        return self._door_y

    def _set_layout(self, agent: Sequence[float], goal: Sequence[float], door_y: float) -> None:
        self._agent = (float(agent[0]), float(agent[1]))
        self._goal = (float(goal[0]), float(goal[1]))
        self._door_y = float(door_y)
        self._boxes = self.geometry.obstacles(self._door_y)
        self._background = self._draw_background()

    def _checked_position(self, name: str, position: Sequence[float], door_y: float) -> tuple[float, float]:
        x, y = (float(value) for value in np.asarray(position, dtype=np.float64).reshape(2))
        if not self.geometry.is_free(x, y, door_y):
            raise ValueError(
                f"{name} position ({x}, {y}) is not a free position: the centre must lie in "
                f"[{self.geometry.lowest}, {self.geometry.highest}]^2 and outside the wall (grown by the agent radius)"
            )
        return x, y

    def _random_side(self) -> int:
        return 1 if self.np_random.random() < 0.5 else -1

    def _random_position(self, side: int, avoid: tuple[float, float] | None) -> tuple[float, float]:
        """A uniform point of one room, away from `avoid` so that no episode starts already solved."""
        x_low, x_high = self.geometry.room_x_range(side)
        for _ in range(1000):
            x = float(self.np_random.uniform(x_low, x_high))
            y = float(self.np_random.uniform(self.geometry.lowest, self.geometry.highest))
            if avoid is None or math.hypot(x - avoid[0], y - avoid[1]) >= 2 * self.geometry.goal_radius:
                return x, y
        raise RuntimeError("could not place a position away from the other one; the goal radius is too large")

    def _distance_to_goal(self) -> float:
        return math.hypot(self._goal[0] - self._agent[0], self._goal[1] - self._agent[1])

    def _path_length(self) -> float:
        return path_length(self._agent, self._goal, self._door_y, self.geometry)

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": bool(success),
            "agent": np.array(self._agent),
            "goal": np.array(self._goal),
            "door": np.array([MIDDLE_X, self._door_y]),
            "distance": self._path_length(),
        }

    def _observation(self) -> np.ndarray:
        if self.observation_mode == "pixels":
            return self._frame(self._agent)
        return self._state_vector(self._agent)

    def _state_vector(self, agent: tuple[float, float]) -> np.ndarray:
        return np.array([agent[0], agent[1], self._goal[0], self._goal[1], self._door_y], dtype=np.float32)

    # -------------------------------------------------------------------------------- rendering

    def _draw_background(self) -> np.ndarray:
        """The parts of the frame fixed for an episode: background and the wall with its door."""
        size, geometry = self.image_size, self.geometry
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = BACKGROUND_RGB
        wall_columns = np.abs(self._pixel_x - MIDDLE_X) <= geometry.wall_thickness / 2
        door_rows = np.abs(self._pixel_y - self._door_y) <= geometry.door_height / 2
        frame[np.ix_(~door_rows, wall_columns)] = WALL_RGB
        return frame

    def _frame(self, agent: tuple[float, float]) -> np.ndarray:
        frame = self._background.copy()
        self._draw_disc(frame, self._goal, self.geometry.goal_radius, GOAL_RGB)
        self._draw_disc(frame, agent, self.geometry.agent_radius, AGENT_RGB)
        return frame

    def _draw_disc(self, frame: np.ndarray, centre: tuple[float, float], radius: float, colour) -> None:
        """Colour the pixels whose centres lie within `radius` of `centre`, never fewer than one."""
        size = self.image_size
        # Half a pixel's diagonal always reaches the nearest pixel centre: small discs stay visible.
        radius = max(radius, 0.71 / size)
        x, y = centre
        column_low = max(int((x - radius) * size), 0)
        column_high = min(int(math.ceil((x + radius) * size)), size)
        row_low = max(int((1.0 - y - radius) * size), 0)
        row_high = min(int(math.ceil((1.0 - y + radius) * size)), size)
        if column_low >= column_high or row_low >= row_high:
            return
        offset_x = self._pixel_x[column_low:column_high] - x
        offset_y = self._pixel_y[row_low:row_high] - y
        inside = offset_y[:, None] ** 2 + offset_x[None, :] ** 2 <= radius * radius
        frame[row_low:row_high, column_low:column_high][inside] = colour


# ------------------------------------------------------------------------------ scripted expert


def scripted_action(
    source: TwoRooms | gymnasium.Env | Mapping[str, Any] | Sequence[float] | np.ndarray,
    geometry: TwoRoomsGeometry | None = None,
) -> np.ndarray:
    """A near-optimal action: line up with the door, pass through it, then head for the goal.

    `source` is the environment (wrapped or not), a `get_state()` dict, or a state vector
    [agent x, agent y, goal x, goal y, door y] (with `geometry`, defaulting to the default sizes).
    Returns a float32 action in [-1, 1]^2 that keeps the direction of the intended move.
    """
    if isinstance(source, gymnasium.Env):
        environment = source.unwrapped
        geometry = environment.geometry
        (agent_x, agent_y), (goal_x, goal_y), door_y = (
            environment.agent_position,
            environment.goal_position,
            environment.door_y,
        )
    elif isinstance(source, Mapping):
        geometry = geometry or TwoRoomsGeometry.from_dict(source["geometry"])
        (agent_x, agent_y), (goal_x, goal_y), door_y = source["agent"], source["goal"], source["door_y"]
    else:
        agent_x, agent_y, goal_x, goal_y, door_y = np.asarray(source, dtype=np.float64).reshape(5).tolist()
    geometry = geometry or TwoRoomsGeometry()

    corridor_low, corridor_high = geometry.corridor(door_y)
    # A margin inside the corridor, and how far past the wall to aim: both small against the door.
    margin = min(0.01, (corridor_high - corridor_low) / 4)
    clearance = geometry.max_step / 2
    agent_in_band = geometry.in_wall_band(agent_x)
    goal_in_band = geometry.in_wall_band(goal_x)
    same_side = (agent_x < MIDDLE_X) == (goal_x < MIDDLE_X)
    lined_up = corridor_low + margin <= agent_y <= corridor_high - margin

    if same_side and not agent_in_band and not goal_in_band:
        # A room is convex: the straight line is free.
        target = (goal_x, goal_y)
    elif not agent_in_band and not lined_up:
        # Slide to the front of the door on the agent's own side first.
        own_side = -1 if agent_x < MIDDLE_X else 1
        front_x = geometry.wall_left - clearance if own_side < 0 else geometry.wall_right + clearance
        target = (front_x, door_y)
    elif goal_in_band:
        # Lined up with (or in) the corridor, whose straight lines to the goal stay inside it.
        target = (goal_x, goal_y)
    else:
        # Through the door, to just past the wall on the goal's side.
        exit_x = geometry.wall_left - clearance if goal_x < MIDDLE_X else geometry.wall_right + clearance
        target = (exit_x, min(max(agent_y, corridor_low + margin), corridor_high - margin))

    action = np.array([target[0] - agent_x, target[1] - agent_y]) / geometry.max_step
    largest = np.abs(action).max()
    if largest > 1.0:
        action /= largest
    return action.astype(np.float32)


# ------------------------------------------------------------------------------------ factories


def make_two_rooms_pixels(**kwargs: Any) -> TwoRooms:
    """Two rooms observed as 64 x 64 RGB frames (the registry's `two-rooms`)."""
    return TwoRooms(**{"observation": "pixels", **kwargs})


def make_two_rooms_discrete(**kwargs: Any) -> TwoRooms:
    """Two rooms from 64 x 64 RGB frames with 5 discrete moves (the registry's `two-rooms-discrete`)."""
    return TwoRooms(**{"observation": "pixels", "discrete_actions": True, **kwargs})


def make_two_rooms_state(**kwargs: Any) -> TwoRooms:
    """Two rooms observed as the state vector [agent x, agent y, goal x, goal y, door y]."""
    return TwoRooms(**{"observation": "state", **kwargs})

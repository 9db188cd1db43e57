"""Several environments presented as one multi-task environment, the way TD-MPC2 trains one agent on
many tasks (Hansen, Su & Wang, arXiv:2310.16828: one model on 80 tasks of different embodiments,
observation sizes and action spaces).

    make_env("multitask", tasks=["dmc:cartpole-swingup", "dmc:reacher-easy", "dmc:walker-walk"],
             shared_kwargs={"action_repeat": 2})
    wmlab train --algo tdmpc2 --env multitask \\
        --env-kwargs '{"tasks": ["dmc:cartpole-swingup", "dmc:reacher-easy"], "shared_kwargs": {"action_repeat": 2}}'

Each task is any id `make_env` accepts, or a mapping {"id": ..., "name": ..., **options} with
options of its own (they override `shared_kwargs`). Every episode runs one task:

- `schedule="cycle"` (the default): the k-th episode since the environment was built runs task
  k mod n, so n consecutive episodes (an evaluation of n episodes, say) visit every task once;
  seeding a reset does not restart the cycle.
- `schedule="random"`: each episode draws its task uniformly from the environment's own
  generator, which `reset(seed=...)` seeds.
- `reset(options={"task": index or name})` runs that task next, whatever the schedule.

Observations (a dict, as every wmlab environment's):
- `vector` (D_max,) float32: the task's state vector, padded with zeros to the largest state
  size among the tasks (the authors pad the same way); other keys (`image`) pass through and
  must have the same space in every task;
- `task` () int64: the index of the current task in `tasks` (a Discrete(n) space);
- `action_mask` (A_max,) float32: 1 for the task's own action dimensions, 0 for the padding.

Actions: a Box [-1, 1]^A_max, A_max the largest action size. The first A_i dimensions are
clipped to [-1, 1] and rescaled to task i's bounds; the rest are ignored. Only continuous (Box)
tasks can be combined: padding a Discrete action has no meaning that the underlying environment
could ignore.

`info` carries "task" (the task's name: its id without the suite prefix, unless names would
clash, or the "name" given) and "task_index", which the training loop and the evaluation use to
report returns per task (`train/return/<task>`, `eval/return/<task>`).

Exact resume: `get_state()` holds every task environment's state (None when one of them cannot
export it), the episode counter, pending seeds and the task generator.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, WmlabError
from wmlab.core.registry import UnknownNameError
from wmlab.envs.adapter import make_env

#: Observation keys the multi-task environment adds; a task may not use them itself.
TASK_KEY = "task"
ACTION_MASK_KEY = "action_mask"
SCHEDULES = ("cycle", "random")


class MultiTaskEnv(gymnasium.Env):
    """One environment per task behind one padded observation and action space (see the module
    docstring). `tasks`: ids (or {"id": ..., "name": ..., **options}); `schedule`: "cycle" or
    "random"; `shared_kwargs`: options given to every task's `make_env`."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        tasks: Sequence[str | Mapping[str, Any]] | None = None,
        schedule: str = "cycle",
        shared_kwargs: Mapping[str, Any] | None = None,
    ):
        if isinstance(tasks, (str, Mapping)) or not tasks:
            raise WmlabError(
                "the multitask environment needs a list of at least one task id, e.g. "
                '--env-kwargs \'{"tasks": ["dmc:cartpole-swingup", "dmc:reacher-easy"]}\''
                + ("" if not tasks else f"; got {tasks!r}")
            )
        if schedule not in SCHEDULES:
            raise WmlabError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        self.schedule = schedule
        ids, names, options = _parse_tasks(tasks, dict(shared_kwargs or {}))
        self.task_ids: tuple[str, ...] = tuple(ids)
        self.task_names: tuple[str, ...] = tuple(names)
        self.envs = [_make_task(index, task_id, kwargs) for index, (task_id, kwargs) in enumerate(zip(ids, options))]
        try:
            self._build_spaces()
        except WmlabError:
            self.close()
            raise
        self.render_mode = "rgb_array"
        self._episodes = 0  # episodes started since construction: the clock of the cycle
        self._current = 0
        self._next_task: int | None = None
        self._pending_seeds: list[int | None] = [None] * len(self.envs)

    # ------------------------------------------------------------------------------- spaces

    def _build_spaces(self) -> None:
        observation_spaces = [env.observation_space for env in self.envs]
        key_sets = [tuple(sorted(space.spaces)) for space in observation_spaces]
        if len(set(key_sets)) > 1:
            described = "; ".join(f"{task_id} gives {list(keys)}" for task_id, keys in zip(self.task_ids, key_sets))
            raise IncompatibleSpaceError(
                f"the tasks are observed differently ({described}); a multi-task environment needs every task "
                "observed the same way: all from state vectors, or all from pixels of one size "
                '(e.g. pass the same "observation" option to every DMC task)'
            )
        keys = key_sets[0]
        reserved = sorted({TASK_KEY, ACTION_MASK_KEY} & set(keys))
        if reserved:
            raise IncompatibleSpaceError(
                f"the tasks already observe {reserved}, which the multi-task environment adds itself"
            )
        entries: dict[str, spaces.Space] = {}
        self.observation_sizes: tuple[int, ...] = ()
        for key in keys:
            per_task = [space[key] for space in observation_spaces]
            if key == "vector":
                self.observation_sizes = tuple(int(space.shape[0]) for space in per_task)
                entries[key] = spaces.Box(-np.inf, np.inf, (max(self.observation_sizes),), np.float32)
            elif all(space == per_task[0] for space in per_task):
                entries[key] = per_task[0]
            else:
                described = "; ".join(f"{task_id}: {space}" for task_id, space in zip(self.task_ids, per_task))
                raise IncompatibleSpaceError(
                    f"observation {key!r} differs between the tasks ({described}); only state vectors are padded"
                )

        action_spaces = [env.action_space for env in self.envs]
        discrete = [isinstance(space, spaces.Discrete) for space in action_spaces]
        if any(discrete) and not all(discrete):
            described = "; ".join(f"{task_id}: {space}" for task_id, space in zip(self.task_ids, action_spaces))
            raise IncompatibleSpaceError(
                f"the tasks mix discrete and continuous action spaces ({described}); combine tasks of one kind"
            )
        for task_id, space in zip(self.task_ids, action_spaces):
            if not (isinstance(space, spaces.Box) and len(space.shape) == 1):
                raise IncompatibleSpaceError(
                    f"{task_id} has the action space {space}; the multi-task environment combines continuous 1-D Box "
                    "actions only (a padded Discrete action would have nothing the environment could ignore)"
                )
            if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
                raise IncompatibleSpaceError(
                    f"{task_id} has unbounded actions {space}; they are rescaled from [-1, 1] and need finite bounds"
                )
        self.action_sizes: tuple[int, ...] = tuple(int(space.shape[0]) for space in action_spaces)
        largest = max(self.action_sizes)
        self._action_low = [np.asarray(space.low, np.float64) for space in action_spaces]
        self._action_high = [np.asarray(space.high, np.float64) for space in action_spaces]
        self._masks = np.zeros((len(self.envs), largest), np.float32)
        for index, size in enumerate(self.action_sizes):
            self._masks[index, :size] = 1.0
        entries[TASK_KEY] = spaces.Discrete(len(self.envs))
        entries[ACTION_MASK_KEY] = spaces.Box(0.0, 1.0, (largest,), np.float32)
        self.observation_space = spaces.Dict(entries)
        self.action_space = spaces.Box(-1.0, 1.0, (largest,), np.float32)

    # ------------------------------------------------------------------------------ episodes

    @property
    def num_tasks(self) -> int:
        return len(self.envs)

    @property
    def current_task(self) -> int:
        """Index of the task of the current episode."""
        return self._current

    def action_mask(self, task: int) -> np.ndarray:
        """(A_max,) float32: 1 for the task's own action dimensions."""
        return self._masks[task].copy()

    @property
    def episode_lengths(self) -> tuple[int | None, ...]:
        """Agent steps per episode of each task where it is known (a DMC time limit over the action
        repeat, or a gymnasium TimeLimit), else None: what TD-MPC2's per-task discount heuristic reads."""
        return tuple(_episode_length(env) for env in self.envs)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # Each task's environment gets its own seed, used when that task next starts.
            self._pending_seeds = [_child_seed(seed, index) for index in range(self.num_tasks)]
        if options and TASK_KEY in options:
            self._next_task = self._task_index(options[TASK_KEY])
        if self._next_task is not None:
            task = self._next_task
        elif self.schedule == "cycle":
            task = self._episodes % self.num_tasks
        else:
            task = int(self.np_random.integers(self.num_tasks))
        self._next_task = None
        self._episodes += 1
        self._current = task
        task_seed, self._pending_seeds[task] = self._pending_seeds[task], None
        observation, info = self.envs[task].reset(seed=task_seed)
        return self._observation(observation), self._info(info)

    def step(self, action):
        task = self._current
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"the multi-task environment takes actions of shape {self.action_space.shape}, not {action.shape}"
            )
        own = np.clip(action[: self.action_sizes[task]], -1.0, 1.0)
        low, high = self._action_low[task], self._action_high[task]
        scaled = (low + (own + 1.0) / 2.0 * (high - low)).astype(self.envs[task].action_space.dtype)
        observation, reward, terminated, truncated, info = self.envs[task].step(scaled)
        return self._observation(observation), reward, terminated, truncated, self._info(info)

    def render(self) -> np.ndarray:
        return self.envs[self._current].render()

    def close(self) -> None:
        for env in getattr(self, "envs", []):
            env.close()

    def _task_index(self, task: int | str) -> int:
        if isinstance(task, str):
            for index, (task_id, name) in enumerate(zip(self.task_ids, self.task_names)):
                if task in (task_id, name):
                    return index
            raise WmlabError(f"unknown task {task!r}; the tasks are {', '.join(self.task_names)}")
        index = int(task)
        if not 0 <= index < self.num_tasks:
            raise WmlabError(f"task index {index} is out of range for {self.num_tasks} tasks")
        return index

    def _observation(self, observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        padded = {}
        for key, value in observation.items():
            if key == "vector":
                vector = np.zeros(self.observation_space["vector"].shape, np.float32)
                vector[: value.shape[0]] = value
                value = vector
            padded[key] = value
        padded[TASK_KEY] = np.int64(self._current)
        padded[ACTION_MASK_KEY] = self._masks[self._current].copy()
        return padded

    def _info(self, info: Mapping[str, Any]) -> dict[str, Any]:
        return {**info, "task": self.task_names[self._current], "task_index": self._current}

    # ----------------------------------------------------------------------- exact resumption

    def get_state(self) -> dict[str, Any] | None:
        """Plain JSON types: every task environment's state, the episode counter, the pending seeds
        and the task generator; None when a task environment cannot export its state."""
        task_states = [env.get_state() for env in self.envs]
        if any(state is None for state in task_states):
            return None
        return {
            "tasks": list(self.task_ids),
            "task_states": task_states,
            "episodes": self._episodes,
            "current": self._current,
            "next_task": self._next_task,
            "pending_seeds": list(self._pending_seeds),
            "generator": _jsonable(self.np_random.bit_generator.state),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if list(state["tasks"]) != list(self.task_ids):
            raise ValueError(
                f"the state was saved from the tasks {state['tasks']}, but this environment runs {list(self.task_ids)}"
            )
        for env, task_state in zip(self.envs, state["task_states"]):
            env.set_state(task_state)
        self._episodes = int(state["episodes"])
        self._current = int(state["current"])
        self._next_task = state["next_task"]
        self._pending_seeds = list(state["pending_seeds"])
        self.np_random.bit_generator.state = state["generator"]


def _parse_tasks(
    tasks: Sequence[str | Mapping[str, Any]], shared: dict[str, Any]
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(ids, names, options) of the task list; names are unique."""
    ids, given_names, options = [], [], []
    for index, task in enumerate(tasks):
        if isinstance(task, str):
            task_id, name, own = task, None, {}
        elif isinstance(task, Mapping) and isinstance(task.get("id"), str):
            own = {key: value for key, value in task.items() if key not in ("id", "name")}
            task_id, name = task["id"], task.get("name")
        else:
            raise WmlabError(f'task {index} must be an environment id or a mapping with an "id", got {task!r}')
        if task_id == "multitask":
            raise WmlabError("a multitask environment cannot hold another multitask environment")
        ids.append(task_id)
        given_names.append(name)
        options.append({**shared, **own})
    short = [task_id.partition(":")[2] if ":" in task_id else task_id for task_id in ids]
    defaults = short if len(set(short)) == len(short) else list(ids)
    names = [given or default for given, default in zip(given_names, defaults)]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise WmlabError(
            f'the task names {repeated} appear more than once; give each repeated task a "name" of its own'
        )
    return ids, names, options


def _make_task(index: int, task_id: str, kwargs: dict[str, Any]):
    try:
        return make_env(task_id, **kwargs)
    except UnknownNameError as error:
        raise UnknownNameError(f"task {index} of the multitask environment: {error}") from None


def _child_seed(seed: int, index: int) -> int:
    """A seed for task `index` of an environment reset with `seed` (distinct per pair)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, index]).generate_state(1)[0])


def _episode_length(env: gymnasium.Env) -> int | None:
    base = env.unwrapped
    if hasattr(base, "time_limit") and hasattr(base, "action_repeat"):
        return math.ceil(base.time_limit / base.action_repeat)
    spec = getattr(env, "spec", None) or getattr(base, "spec", None)
    steps = getattr(spec, "max_episode_steps", None)
    return int(steps) if steps else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    return value


__all__ = ["MultiTaskEnv", "TASK_KEY", "ACTION_MASK_KEY"]

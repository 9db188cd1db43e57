"""DeepMind Control Suite tasks as gymnasium environments, set up the way world-model papers use them.

Ids are `domain-task` with the first hyphen as the separator: `cartpole-swingup`,
`walker-walk`, `cheetah-run`, `reacher-easy`, `finger-spin`, `ball_in_cup-catch` (also
`cup-catch`). Through wmlab: `make_env("dmc:walker-walk", observation="pixels")`.

Observations (`observation=`):
- "state" (the default): the task's observations flattened into one float32 vector. The order
  is the task's own, the order of dm_control's `observation_spec()` (which is also what
  dm_control's `flat_observation=True` produces): cartpole = position (3), velocity (2);
  walker = orientations (14), height (1), velocity (9); cheetah = position (8), velocity (9);
  reacher = position (2), to_target (2), velocity (2); finger = position (4), velocity (3),
  touch (2); ball_in_cup = position (4), velocity (4). `env.state_layout` lists (key, size)
  in that order for any task.
- "pixels": a (size, size, 3) uint8 RGB frame rendered from the task's camera (camera 0;
  quadruped 2) — 64 x 64 by default, as PlaNet and Dreamer feed it.
- "both": a Dict space with "image" and "vector".
`render()` returns the same frame in every mode.

Action repeat: each agent step repeats its action `action_repeat` times and sums the rewards.
The default follows PlaNet (arXiv 1811.04551), whose authors' task table
(google-research/planet, planet/scripts/tasks.py) repeats cartpole 8, walker 2, cheetah 4,
finger 2, reacher 4 and ball_in_cup 6 times; other domains repeat 2, as DreamerV3's dmc
configuration does for every domain.

Time limit: `time_limit` counts underlying control steps (1000 by default, dm_control's own
episode length for these tasks), so an agent sees ceil(1000 / action_repeat) steps: 125 for
cartpole with repeat 8. When the limit falls inside a repeat (ball_in_cup: 1000 / 6), the last
agent step repeats only the steps left, so every episode lasts exactly `time_limit` control
steps and its return is dm_control's episode return. Reaching the limit sets `truncated`, never
`terminated`; `terminated` is set only when the task itself ends the episode (discount 0).

Rendering: unless the user has chosen one, the module sets `MUJOCO_GL=egl` (on Linux, before
dm_control is imported), so frames come from a headless EGL context (a GPU's, or Mesa's
software renderer). The frame is rendered with shadows, reflections and the skybox off
(MuJoCo's render flags, set once on the one camera kept for the environment's life): with
Mesa's llvmpipe software renderer on a shared 2-core machine that made a 64 x 64 frame 6 to 17
times faster across our runs of `wmlab bench envs` (cartpole on a lightly loaded machine: 12.8 ms
with them, 1.5 ms without). Pass `fast_render=False` for frames like dm_control's
`physics.render` default (shadows, reflections, skybox on), which the papers' code renders.

Exact resume: `get_state()` returns plain JSON types — the MuJoCo integration state (time,
positions, velocities, activations, controls, solver warm start), the model fields that the
suite's tasks change at each reset (target positions, sizes, colours, the quadruped's height
field: about 0.7 MB of JSON for quadruped-escape, 8 kB for reacher, finger or ball_in_cup), the
number of control steps taken, and the task's random state — and `set_state()` restores it into
an environment built with the same settings, after which the same actions give bit-identical
observations and rewards.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import WmlabError

# Headless rendering needs a GL backend chosen before dm_control is first imported; EGL works on
# Linux without a display. macOS has no EGL, and there dm_control's own default (glfw) is right.
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

#: Action repeat per domain, from PlaNet's task table (google-research/planet, tasks.py).
PLANET_ACTION_REPEAT = {"cartpole": 8, "walker": 2, "cheetah": 4, "finger": 2, "reacher": 4, "ball_in_cup": 6}
#: Repeat for domains outside PlaNet's table: DreamerV3's dmc setting (repeat 2 everywhere).
DEFAULT_ACTION_REPEAT = 2
#: The camera Dreamer's dmc wrappers render each domain from; the rest use camera 0.
DEFAULT_CAMERA = {"quadruped": 2}
#: Short names the papers' code uses (PlaNet's and Dreamer's `cup_catch`).
DOMAIN_ALIASES = {"cup": "ball_in_cup"}
OBSERVATION_MODES = ("state", "pixels", "both")

# Model fields the suite's tasks write at reset (finger's target, reacher's and fish's targets,
# swimmer's light, point_mass's tendon wrap, quadruped's terrain): a snapshot must carry them,
# because MuJoCo's data state does not.
_TASK_MODEL_FIELDS = (
    "body_pos",
    "geom_pos",
    "geom_size",
    "geom_rgba",
    "site_pos",
    "site_size",
    "site_rgba",
    "light_pos",
    "dof_damping",
    "wrap_prm",
    "hfield_data",
)


def parse_task(task: str) -> tuple[str, str]:
    """`"walker-walk"` -> ("walker", "walk"); unknown ids name the close matches."""
    from dm_control import suite

    domain, separator, task_name = task.partition("-")
    domain = DOMAIN_ALIASES.get(domain, domain)
    if separator and (domain, task_name) in suite.ALL_TASKS:
        return domain, task_name

    known = [f"{name}-{level}" for name, level in suite.ALL_TASKS]
    close = difflib.get_close_matches(task.replace("_", "-") if not separator else task, known, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise WmlabError(
        f"unknown dm_control task {task!r}; ids are domain-task, e.g. cartpole-swingup, ball_in_cup-catch.{hint}"
    )


def make_dmc(task: str, **options: Any) -> "DeepMindControlEnv":
    """The dm_control task `task` (e.g. "cartpole-swingup") as a gymnasium environment; `options`
    are DeepMindControlEnv's:

    `observation`: "state", "pixels" or "both" (see the module docstring). `action_repeat`:
    control steps per agent step (None: PlaNet's table). `size`: the square frame's side in
    pixels. `camera`: camera index or name (None: the papers' camera for the domain).
    `time_limit`: control steps per episode. `seed`: seeds the task's random state (episodes
    are also reseeded by `reset(seed=...)`). `fast_render`: render without shadows,
    reflections and skybox. `task_kwargs`: passed on to the dm_control task.
    """
    domain, task_name = parse_task(task)
    return DeepMindControlEnv(domain, task_name, **options)


class DeepMindControlEnv(gymnasium.Env):
    """One dm_control suite task with action repeat, a control-step time limit and 64 x 64 pixels."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        domain: str,
        task: str,
        observation: str = "state",
        action_repeat: int | None = None,
        size: int = 64,
        camera: int | str | None = None,
        time_limit: int = 1000,
        seed: int | None = None,
        fast_render: bool = True,
        task_kwargs: Mapping[str, Any] | None = None,
    ):
        from dm_control import suite

        if observation not in OBSERVATION_MODES:
            raise ValueError(f"observation must be one of {OBSERVATION_MODES}, not {observation!r}")
        action_repeat = (
            PLANET_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT) if action_repeat is None else int(action_repeat)
        )
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be at least 1, not {action_repeat}")
        if int(time_limit) < 1:
            raise ValueError(f"time_limit must be at least 1 control step, not {time_limit}")
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, not {size}")

        self.task_id = f"{domain}-{task}"
        self.observation_mode = observation
        self.action_repeat = action_repeat
        self.time_limit = int(time_limit)
        self.size = int(size)
        self.camera = DEFAULT_CAMERA.get(domain, 0) if camera is None else camera
        self.fast_render = bool(fast_render)
        self.render_mode = "rgb_array"

        # The task draws every episode's initial state from this generator; keeping a reference
        # lets reset(seed=...) reseed it in place, so seed s gives suite.load(..., random=s)'s episodes.
        self._random = np.random.RandomState(seed)
        # wmlab counts the time limit itself (in control steps), so dm_control's is switched off.
        kwargs = {**dict(task_kwargs or {}), "random": self._random, "time_limit": float("inf")}
        self._env = suite.load(domain, task, task_kwargs=kwargs)
        self._physics = self._env.physics
        # Real time: one agent step lasts action_repeat control steps of the task.
        self.metadata = {**self.metadata, "render_fps": 1.0 / (self._env.control_timestep() * action_repeat)}

        action_spec = self._env.action_spec()
        self.action_space = spaces.Box(
            action_spec.minimum.astype(np.float32), action_spec.maximum.astype(np.float32), dtype=np.float32
        )
        self.state_layout: tuple[tuple[str, int], ...] = tuple(
            (key, int(np.prod(spec.shape, dtype=int))) for key, spec in self._env.observation_spec().items()
        )
        self._state_keys = tuple(key for key, _ in self.state_layout)
        vector_size = sum(length for _, length in self.state_layout)
        vector_space = spaces.Box(-np.inf, np.inf, shape=(vector_size,), dtype=np.float32)
        image_space = spaces.Box(0, 255, shape=(self.size, self.size, 3), dtype=np.uint8)
        if observation == "state":
            self.observation_space = vector_space
        elif observation == "pixels":
            self.observation_space = image_space
        else:
            self.observation_space = spaces.Dict({"image": image_space, "vector": vector_space})

        self._pristine_model = {name: getattr(self._physics.model, name).copy() for name in _TASK_MODEL_FIELDS}
        self._camera = None  # created at the first frame: state-only use never opens a GL context
        self._frame: np.ndarray | None = None  # the frame of the current physics state, once rendered
        self._elapsed_steps = 0
        self._needs_reset = True

    # ----------------------------------------------------------------------------------- episode

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._random.seed(seed)
        time_step = self._env.reset()
        self._elapsed_steps = 0
        self._needs_reset = False
        self._frame = None
        return self._observation(time_step.observation), {}

    def step(self, action):
        if self._needs_reset:
            raise gymnasium.error.ResetNeeded("call reset() before step(), and again after an episode ends")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            if action.size != self.action_space.shape[0]:
                raise ValueError(f"{self.task_id} takes actions of shape {self.action_space.shape}, not {action.shape}")
            action = action.reshape(self.action_space.shape)
        if not np.isfinite(action).all():
            raise ValueError(f"the action must be finite, not {action}")
        repeats = min(self.action_repeat, self.time_limit - self._elapsed_steps)
        reward = 0.0
        terminated = False
        for _ in range(repeats):
            time_step = self._env.step(action)
            self._elapsed_steps += 1
            reward += time_step.reward or 0.0
            # dm_control's own time limit is off, so a last step here is the task ending the episode.
            if time_step.last():
                terminated = time_step.discount == 0.0
                break
        truncated = not terminated and self._elapsed_steps >= self.time_limit
        # A last step with a non-zero discount (no suite task has one) still ends the episode.
        self._needs_reset = terminated or truncated or time_step.last()
        self._frame = None
        return self._observation(time_step.observation), float(reward), terminated, truncated, {}

    def render(self) -> np.ndarray:
        """The current frame, (size, size, 3) uint8, in every observation mode."""
        if self._frame is None:
            self._frame = self._render_frame()
        return self._frame

    def close(self) -> None:
        if self._camera is not None:
            self._camera.scene.free()
            self._camera = None
        self._env.close()

    @property
    def physics(self):
        """The dm_control Physics, for users who need more than the observations."""
        return self._physics

    @property
    def elapsed_steps(self) -> int:
        """Control steps since the last reset (the unit of `time_limit`)."""
        return self._elapsed_steps

    # ------------------------------------------------------------------------ exact resumption

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain JSON types (random state included)."""
        import mujoco

        random_state = self._random.get_state(legacy=False)
        model = self._physics.model
        changed = {
            name: getattr(model, name).ravel().tolist()
            for name, pristine in self._pristine_model.items()
            if not np.array_equal(getattr(model, name), pristine)
        }
        return {
            "task": self.task_id,
            "physics": self._physics.get_state(sig=mujoco.mjtState.mjSTATE_INTEGRATION).tolist(),
            "model": changed,
            "elapsed_steps": self._elapsed_steps,
            "needs_reset": self._needs_reset,
            "random": {
                **random_state,
                "state": {"key": random_state["state"]["key"].tolist(), "pos": int(random_state["state"]["pos"])},
            },
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a `get_state()` snapshot into an environment built with the same settings."""
        import mujoco

        if state["task"] != self.task_id:
            raise ValueError(f"the state was saved from {state['task']}, but this environment runs {self.task_id}")
        if self._env._reset_next_step:  # noqa: SLF001 — dm_control would otherwise reset at the next step
            self._env.reset()
        model = self._physics.model
        unknown = set(state["model"]) - set(_TASK_MODEL_FIELDS)
        if unknown:
            raise ValueError(f"the state holds unknown model fields {sorted(unknown)}")
        for name, pristine in self._pristine_model.items():
            values = state["model"].get(name)
            field = getattr(model, name)
            field[...] = pristine if values is None else np.asarray(values, dtype=field.dtype).reshape(field.shape)
        if model.nhfield and self._camera is not None:
            # The renderer holds its own copy of the terrain; a context made later uploads the new one.
            contexts = self._physics.contexts
            with contexts.gl.make_current() as context:
                for index in range(model.nhfield):
                    context.call(mujoco.mjr_uploadHField, model.ptr, contexts.mujoco.ptr, index)
        with self._physics.reset_context():
            self._physics.set_state(
                np.asarray(state["physics"], dtype=np.float64), sig=mujoco.mjtState.mjSTATE_INTEGRATION
            )
        random_state = dict(state["random"])
        random_state["state"] = {
            "key": np.asarray(random_state["state"]["key"], dtype=np.uint32),
            "pos": random_state["state"]["pos"],
        }
        self._random.set_state(random_state)
        self._elapsed_steps = int(state["elapsed_steps"])
        self._needs_reset = bool(state["needs_reset"])
        self._frame = None

    # ---------------------------------------------------------------------------------- helpers

    def _observation(self, observation: Mapping[str, Any]) -> Any:
        if self.observation_mode == "state":
            return self._vector(observation)
        if self.observation_mode == "pixels":
            return self.render()
        return {"image": self.render(), "vector": self._vector(observation)}

    def _vector(self, observation: Mapping[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(observation[key], dtype=np.float32).ravel() for key in self._state_keys])

    def _render_frame(self) -> np.ndarray:
        if self._camera is None:
            self._camera = self._make_camera()
        # The camera reuses one buffer; the observation must not change under the caller.
        return self._camera.render().copy()

    def _make_camera(self):
        import mujoco
        from dm_control.mujoco.engine import Camera

        # One camera for the environment's life: physics.render builds (and frees) a scene per frame.
        camera = Camera(self._physics, height=self.size, width=self.size, camera_id=self.camera)
        if self.fast_render:
            for flag in (
                mujoco.mjtRndFlag.mjRND_SHADOW,
                mujoco.mjtRndFlag.mjRND_REFLECTION,
                mujoco.mjtRndFlag.mjRND_SKYBOX,
            ):
                camera.scene.flags[flag] = 0
        return camera


__all__ = ["DeepMindControlEnv", "make_dmc", "parse_task", "PLANET_ACTION_REPEAT"]

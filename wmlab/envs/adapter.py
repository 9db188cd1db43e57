"""Resolve an environment id and present every environment with dict observations.

Ids, in the order they are tried:
- a suite prefix: `dmc:cartpole-swingup`, `atari:Pong`, `minigrid:MiniGrid-Empty-8x8-v0`,
  `crafter:reward` (each suite's optional dependency is an extra: `pip install 'wmlab[dmc]'`)
- a wmlab built-in or user-registered name (`wmlab list`): `dyna-maze`, `two-rooms`, ...
- any gymnasium id, including one from the user's own package: `CartPole-v1`,
  `my_package.envs:MyEnv-v0` (gymnasium imports `my_package.envs`, which registers the id).

Observations become dicts of arrays so that every world model reads them the same way:
`image` (H, W, C) uint8, `vector` (D,) float32, `state` () int64 for a Discrete space.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, RunDirectoryError, WmlabError
from wmlab.core.registry import ENVIRONMENTS, UnknownNameError, _load
from wmlab.envs.images import area_resizer

#: `module:EnvId` ids that the person running this command typed (confirm_environment).
_NAMED_BY_USER: set[str] = set()


def confirm_environment(env_id: str) -> None:
    """Record that the user named `env_id` on the command line, so that a run directory naming the
    same `module:EnvId` may have its module imported (check_run_environment)."""
    _NAMED_BY_USER.add(env_id)


def check_run_environment(env_id: str, run_dir: str | Path) -> None:
    """Refuse to import code that a run directory names: a `module:EnvId` id read from its
    config.json passes only if the user named the same id on the command line, or if the module
    is an installed package, found on sys.path without the current directory or the run directory.
    That module is then imported here with those two left off the path, so that a file beside the
    run cannot stand in for it; gymnasium finds it imported. Raises RunDirectoryError otherwise."""
    module, separator, _ = env_id.partition(":")
    if not separator or module in SUITES or env_id in _NAMED_BY_USER:
        return
    local = {Path.cwd().resolve(), Path(run_dir).resolve()}
    safe_path = [entry for entry in sys.path if not _is_local_path(entry, local)]
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        installed = origin is None or not _is_local_path(str(Path(origin).parent), local)
    else:
        found = (
            importlib.machinery.PathFinder.find_spec(top, safe_path) if top not in sys.builtin_module_names else True
        )
        installed = found is not None
    if not installed:
        raise RunDirectoryError(
            f"{Path(run_dir) / 'config.json'} names the environment {env_id!r}, whose module {module!r} is not an "
            "installed package: wmlab does not import code that a run directory names, nor from the run directory or "
            f"the current directory. If you trust it, install the package, or name it yourself: --env {env_id}"
        )
    with _import_path(safe_path):
        importlib.import_module(module)


def _is_local_path(entry: str, local: set[Path]) -> bool:
    """True for the current directory ('' or '.') and for the run directory or a folder inside it."""
    path = Path(entry or os.curdir).resolve()
    return path in local or any(directory in path.parents for directory in local if directory != Path.cwd().resolve())


@contextlib.contextmanager
def _import_path(entries: list[str]):
    saved = sys.path[:]
    sys.path[:] = entries
    try:
        yield
    finally:
        sys.path[:] = saved


def observation_key(space: spaces.Space) -> str:
    if isinstance(space, spaces.Discrete):
        return "state"
    if isinstance(space, spaces.Box):
        if space.dtype == np.uint8 and len(space.shape) == 3:
            return "image"
        if len(space.shape) == 1:
            return "vector"
    raise IncompatibleSpaceError(
        f"wmlab cannot map the observation space {space} to one of its keys "
        "(image: uint8 (H, W, C); vector: 1-D Box; state: Discrete); wrap the environment to flatten it"
    )


def convert_space(space: spaces.Space) -> spaces.Dict:
    """A Dict space: a single space under its key; a Dict keeps its keys (vectors as float32)."""
    if isinstance(space, spaces.Dict):
        return spaces.Dict({key: as_float32(sub) for key, sub in space.spaces.items()})
    return spaces.Dict({observation_key(space): as_float32(space)})


def as_float32(space: spaces.Space) -> spaces.Space:
    if isinstance(space, spaces.Box) and space.dtype != np.uint8:
        return spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
    return space


class DictObservations(gymnasium.ObservationWrapper):
    """Present any environment's observations as a dict of `image` / `vector` / `state` arrays."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self._inner_is_dict = isinstance(env.observation_space, spaces.Dict)
        self._key = None if self._inner_is_dict else observation_key(env.observation_space)
        self.observation_space = convert_space(env.observation_space)

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        if self._inner_is_dict:
            return {
                key: np.asarray(value, dtype=self.observation_space[key].dtype) for key, value in observation.items()
            }
        return {self._key: np.asarray(observation, dtype=self.observation_space[self._key].dtype)}

    # Exact resume for environments that can export their state (the built-in ones can).
    def get_state(self) -> dict | None:
        base = self.env.unwrapped
        return base.get_state() if hasattr(base, "get_state") else None

    def set_state(self, state: dict) -> None:
        self.env.unwrapped.set_state(state)


def make_env(env_id: str, seed: int | None = None, **kwargs: Any) -> DictObservations:
    """Build the environment `env_id` with dict observations; unknown ids name the close matches."""
    env = _make_raw(env_id, **kwargs)
    wrapped = DictObservations(env)
    if seed is not None:
        wrapped.reset(seed=seed)
        wrapped.action_space.seed(seed)
    return wrapped


def make_wrapped(
    wrapper: Callable[..., gymnasium.Env], name: str, env: str, env_kwargs: Mapping[str, Any] | None, options: Any
) -> gymnasium.Env:
    """`make_env(env, **env_kwargs)` wrapped in `wrapper(inner, **options)`, for a registered
    environment `name` that wraps another (occluded, perturbed); the inner environment is closed
    when the options are refused."""
    inner = make_env(env, **dict(env_kwargs or {}))
    try:
        return wrapper(inner, **options)
    except TypeError as error:
        inner.close()
        raise WmlabError(f"the {name} environment does not take these options {sorted(options)}: {error}") from None
    except WmlabError:
        inner.close()
        raise


class SeededWrapper(gymnasium.Wrapper):
    """A wrapper of a registered environment that wraps another (occluded, perturbed) and draws
    from its own generator `_random`: seeded by `seed`, reseeded by `reset(seed=...)`, with the
    subclass's `seed_tag` mixed in so that it never shares the environment's random stream. It
    exports no state: a resumed run restores the inner environment and restarts this stream."""

    seed_tag: int = 0

    def __init__(self, env: gymnasium.Env, seed: int = 0):
        super().__init__(env)
        self._random = np.random.default_rng((int(seed), self.seed_tag))

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._random = np.random.default_rng((int(seed), self.seed_tag))
        return observation, info


class Suite(NamedTuple):
    """An environment suite reached through a prefix (`atari:Pong`)."""

    factory: str
    """"module:function" of `make(task, **kwargs)`."""
    extra: str
    """The pip extra that installs it (`pip install 'wmlab[EXTRA]'`)."""
    module: str
    """The third-party module it needs (what the extra installs)."""


#: prefix -> Suite
SUITES = {
    "dmc": Suite("wmlab.envs.dmc:make_dmc", "dmc", "dm_control"),
    "atari": Suite("wmlab.envs.atari:make_atari", "atari", "ale_py"),
    "minigrid": Suite("wmlab.envs.minigrid:make_minigrid", "minigrid", "minigrid"),
    "crafter": Suite("wmlab.envs.crafter:make_crafter", "crafter", "crafter"),
    "minatar": Suite("wmlab.envs.minatar:make_minatar", "minatar", "minatar"),
}


def _make_suite(env_id: str, **kwargs: Any) -> gymnasium.Env:
    prefix, _, task = env_id.partition(":")
    suite = SUITES[prefix]
    try:
        factory = _load(suite.factory)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("wmlab"):
            raise
        raise WmlabError(
            f"{env_id!r} needs the {suite.extra} suite: pip install 'wmlab[{suite.extra}]' (missing module {error.name!r})"
        ) from None
    return factory(task, **kwargs)


def _make_raw(env_id: str, **kwargs: Any) -> gymnasium.Env:
    prefix = env_id.partition(":")[0] if ":" in env_id else None
    if prefix in SUITES:
        return _make_suite(env_id, **kwargs)
    if prefix is not None and "." not in prefix and importlib.util.find_spec(prefix) is None:
        close = difflib.get_close_matches(prefix, list(SUITES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown suite {prefix!r} in {env_id!r}.{hint} Suites: {', '.join(SUITES)} (`wmlab envs`); "
            "for your own package use `my_package.module:EnvId-v0` with the package installed"
        )
    if env_id in ENVIRONMENTS:
        try:
            return ENVIRONMENTS.get(env_id).load()(**kwargs)
        except TypeError as error:
            raise WmlabError(f"{env_id!r} does not take these options {sorted(kwargs)}: {error}") from None
    if kwargs.get("observation") == "pixels":
        kwargs.pop("observation")
        return _gymnasium_pixels(env_id, **kwargs)
    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.NameNotFound:
        pass
    except gymnasium.error.VersionNotFound as error:
        raise UnknownNameError(f"unknown environment {env_id!r}: {error}") from None
    except gymnasium.error.DependencyNotInstalled as error:
        raise WmlabError(f"environment {env_id!r} needs an optional dependency: {error}") from None
    except ModuleNotFoundError as error:
        raise UnknownNameError(
            f"unknown environment {env_id!r}: {error} "
            "(for your own package use `my_package.module:EnvId-v0` with the package installed)"
        ) from None
    gym_ids = list(gymnasium.registry.keys())
    raise UnknownNameError(ENVIRONMENTS.unknown_message(env_id, extra_candidates=gym_ids))


def _gymnasium_pixels(env_id: str, size: int = 64, **kwargs: Any) -> gymnasium.Env:
    """A gymnasium environment observed through its rendered frames, resized to size x size."""
    try:
        env = gymnasium.make(env_id, render_mode="rgb_array", **kwargs)
    except (TypeError, gymnasium.error.Error) as error:
        raise WmlabError(
            f"{env_id!r} cannot be observed from pixels: it does not render rgb_array frames ({error})"
        ) from None
    if "rgb_array" not in (env.metadata.get("render_modes") or []):
        env.close()
        raise WmlabError(
            f"{env_id!r} cannot be observed from pixels: it does not render rgb_array frames; use its state observations"
        )
    from gymnasium.wrappers import AddRenderObservation, TransformObservation

    resize = area_resizer(size, 3)[0]
    frames = AddRenderObservation(env, render_only=True)
    space = spaces.Box(0, 255, (size, size, 3), dtype=np.uint8)
    return TransformObservation(frames, lambda frame: resize(np.asarray(frame, dtype=np.uint8)), space)


def environment_names() -> list[str]:
    return ENVIRONMENTS.names()


def close_matches(env_id: str) -> list[str]:
    return difflib.get_close_matches(env_id, ENVIRONMENTS.names() + list(gymnasium.registry.keys()), n=5)

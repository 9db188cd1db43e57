"""Offline datasets: episodes recorded once, then trained on without the environment.

Layout of a dataset directory::

    directory/manifest.json             what was recorded: environment, spaces, policy, seed, files
    directory/episodes/000000-151.npz   one compressed npz per episode, "<index>-<stored steps>.npz"

Each episode file holds the keys of a replay step (`wmlab.data.replay`), one row per stored step:
the observation keys ("image", "vector", "state", ...) plus "action", "reward", "is_first",
"is_last", "is_terminal", in the time convention of `wmlab.core.types` (row 0 is the reset
observation with a zero action and reward 0; row t holds the action that led to observation t).
An episode of L environment steps therefore has L + 1 rows. A dataset recorded with
`store_actions=False` has no "action" key: it is video without labels, for latent-action and
JEPA models, and loads only with `load_dataset(..., with_actions=False)`.

Episode i is recorded from `env.reset(seed=seed + i)`, so any single episode can be reproduced on
its own; the random policy samples from the action space seeded with `seed`.

The manifest is written last: a directory without one is a recording that did not finish.

    record_dataset("minigrid:DoorKey-5x5", "random", episodes=100, directory="data/doorkey", seed=0)
    dataset = load_dataset("data/doorkey")
    batch = dataset.sample(batch_size=16, length=64)   # wmlab.core.types.Batch, numpy (B, T, ...)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro
from gymnasium import spaces

from wmlab.core.config import parse_json_object
from wmlab.core.errors import DatasetError
from wmlab.core.progress import StageProgress
from wmlab.core.spaces import describe_space, space_from_description
from wmlab.core.types import Batch
from wmlab.data.replay import ReplayBuffer
from wmlab.envs.adapter import make_env
from wmlab.runs.directory import load_trained_agent

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "describe_space",
    "load_dataset",
    "read_manifest",
    "record_command",
    "record_dataset",
    "space_from_description",
]

#: Bumped whenever the manifest or the files change meaning.
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
EPISODE_DIR = "episodes"
_FLAG_KEYS = ("is_first", "is_last", "is_terminal")
_FIXED_DTYPES = {"reward": np.dtype(np.float32), **{key: np.dtype(bool) for key in _FLAG_KEYS}}
#: What the replay stores as "action" when the batches carry none: one byte per step.
_PLACEHOLDER_ACTION = np.zeros((), np.uint8)

Policy = str | Callable[[dict[str, np.ndarray], Any], tuple[Any, Any]] | Any


# ---------------------------------------------------------------------- recording


def record_dataset(
    env_id: str,
    policy: Policy,
    episodes: int,
    directory: str | Path,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    store_actions: bool = True,
    max_episode_steps: int | None = None,
    explore: bool = False,
    force: bool = False,
    policy_name: str | None = None,
) -> dict[str, Any]:
    """Record `episodes` episodes of `policy` in `env_id` to `directory`; returns the manifest.

    policy: "random"; a callable `policy(obs, state) -> (action, state)` where obs is a dict of
        (1, ...) arrays plus "is_first" (1,) and state starts as None; or an agent with the
        Agent protocol's `act(obs, state, explore)`.
    store_actions: False records video without action labels.
    max_episode_steps: end (truncate) episodes after this many environment steps, else the
        environment's own limit.
    explore: passed to an agent's `act`.
    force: replace a dataset already in `directory` (only its manifest and episode files).
    policy_name: how the manifest names the policy (default: "random", the callable's or the
        agent's class name).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    directory = Path(directory)
    env_kwargs = dict(env_kwargs or {})
    env = make_env(env_id, **env_kwargs)
    _prepare_directory(directory, force)
    choose_action, default_policy_name = _action_chooser(policy, env.action_space, seed, explore)
    action_dtype = _action_dtype(env.action_space)
    files = []
    try:
        with StageProgress(progress) as stages:
            advance = stages.task("record", episodes)
            for episode in range(episodes):
                columns, summary = _record_episode(
                    env, choose_action, seed + episode, action_dtype, store_actions, max_episode_steps
                )
                length = len(columns["reward"])
                name = f"{EPISODE_DIR}/{episode:06d}-{length}.npz"
                _write_compressed(directory / name, columns)
                files.append({"file": name, "length": length, **summary})
                advance(1)
    finally:
        env.close()

    manifest = {
        "format": FORMAT_VERSION,
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
        "actions": store_actions,
        "policy": policy_name or default_policy_name,
        "seed": seed,
        "max_episode_steps": max_episode_steps,
        "num_episodes": episodes,
        "num_steps": sum(entry["length"] for entry in files),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wmlab_version": _wmlab_version(),
        "episodes": files,
    }
    _write_text_atomically(directory / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


def _record_episode(
    env, choose_action, seed: int, action_dtype: np.dtype, store_actions: bool, max_episode_steps: int | None
):
    """The columns of one episode, and its summary (return, environment steps, terminated)."""
    action_shape = env.action_space.shape or ()
    observation, _ = env.reset(seed=seed)
    rows = [_row(observation, np.zeros(action_shape, action_dtype), 0.0, True, False, False)]
    state, total, terminated, truncated = None, 0.0, False, False
    while not (terminated or truncated):
        action, state = choose_action(observation, state, is_first=len(rows) == 1)
        observation, reward, terminated, truncated, _ = env.step(action)
        if max_episode_steps is not None and len(rows) >= max_episode_steps:
            truncated = True
        total += float(reward)
        rows.append(
            _row(observation, np.asarray(action, action_dtype), reward, False, terminated or truncated, terminated)
        )
    columns = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    if not store_actions:
        del columns["action"]
    return columns, {"return": total, "terminated": bool(terminated)}


def _row(observation, action, reward, first, last, terminal) -> dict[str, np.ndarray]:
    return {
        **observation,
        "action": action,
        "reward": np.float32(reward),
        "is_first": np.bool_(first),
        "is_last": np.bool_(last),
        "is_terminal": np.bool_(terminal),
    }


def _action_chooser(policy: Policy, action_space: spaces.Space, seed: int, explore: bool):
    """(choose(observation, state, is_first) -> (env action, state), the policy's name)."""
    if isinstance(policy, str):
        if policy != "random":
            raise ValueError(f"the only policy given by name is 'random', got {policy!r}; pass a callable or an agent")
        action_space.seed(seed)
        return (lambda observation, state, is_first: (action_space.sample(), None)), "random"

    if hasattr(policy, "act"):

        def call(batched, state):
            return policy.act(batched, state, explore=explore)

        name = type(policy).__name__
    elif callable(policy):
        call, name = policy, getattr(policy, "__name__", type(policy).__name__)
    else:
        raise TypeError(f"policy must be 'random', a callable or an agent with act(), got {type(policy).__name__}")

    def choose(observation, state, is_first):
        batched = {key: np.asarray(value)[None] for key, value in observation.items()}
        batched["is_first"] = np.array([is_first])
        action, state = call(batched, state)
        action = np.asarray(action)
        if action.shape == (1, *action_space.shape):  # batched by the policy: take its one row
            action = action[0]
        return (action.item() if action.ndim == 0 else action), state

    return choose, name


def _action_dtype(space: spaces.Space) -> np.dtype:
    if isinstance(space, spaces.Discrete):
        return np.dtype(np.int64)
    return np.dtype(space.dtype)


# ---------------------------------------------------------------------- loading


@dataclass
class OfflineDataset:
    """A recorded dataset in memory, sampled through a ReplayBuffer as B x T windows.

    Windows run across episode boundaries as in replay (the flags say where episodes start).
    """

    directory: Path
    manifest: dict[str, Any]
    with_actions: bool
    replay: ReplayBuffer

    @property
    def num_steps(self) -> int:
        """Stored steps (rows), first steps included."""
        return len(self.replay)

    @property
    def num_episodes(self) -> int:
        return self.replay.num_episodes

    @property
    def observation_space(self) -> spaces.Space:
        return space_from_description(self.manifest["observation_space"])

    @property
    def action_space(self) -> spaces.Space:
        return space_from_description(self.manifest["action_space"])

    def __len__(self) -> int:
        return self.num_steps

    def sample(self, batch_size: int, length: int) -> Batch:
        """B windows of T steps: obs dict of (B, T, ...), action (B, T, ...) or None, flags (B, T)."""
        batch = self.replay.sample(batch_size, length)
        return batch if self.with_actions else dataclasses.replace(batch, action=None)

    def sampler_state(self) -> dict[str, Any]:
        """The window sampler's random state (JSON values), for resuming a trainer exactly."""
        return self.replay.state_dict()["rng"]

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self.replay._rng.bit_generator.state = state

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Each episode in recording order, as a dict of (length, ...) arrays."""
        for episode in self.replay.episodes():
            if not self.with_actions:
                del episode["action"]
            yield episode


def load_dataset(directory: str | Path, with_actions: bool = True, seed: int = 0) -> OfflineDataset:
    """Load the dataset in `directory`; `seed` seeds the window sampler.

    with_actions=False gives batches whose action is None (and reads no actions into memory);
    a dataset recorded without actions loads only that way.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if with_actions and not manifest["actions"]:
        raise DatasetError(
            f"the dataset in {directory} was recorded without actions (video only); "
            "load it with load_dataset(..., with_actions=False)"
        )
    expected = _expected_columns(manifest)
    replay = ReplayBuffer(directory=None, num_envs=1, seed=seed)
    for entry in manifest["episodes"]:
        path = directory / entry["file"]
        columns = _read_episode(path, expected, entry["length"])
        if not with_actions:
            columns.pop("action", None)
        for row in range(entry["length"]):
            step = {key: column[row] for key, column in columns.items()}
            if not with_actions:
                step["action"] = _PLACEHOLDER_ACTION
            replay.add(step)
    return OfflineDataset(directory=directory, manifest=manifest, with_actions=with_actions, replay=replay)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the dataset in `directory`, checked for the fields that loading needs."""
    path = Path(directory) / MANIFEST_FILE
    if not Path(directory).is_dir():
        raise DatasetError(f"dataset directory {directory} does not exist")
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: {directory} is not a wmlab dataset, or its recording did not finish "
            "(record it again with `wmlab record`)"
        )
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
        for field in ("env_id", "observation_space", "action_space", "actions", "episodes"):
            if field not in manifest:
                raise ValueError(f"the field {field!r} is missing")
        for entry in manifest["episodes"]:
            if not isinstance(entry.get("file"), str) or not isinstance(entry.get("length"), int):
                raise ValueError(f"episode entry {entry!r} needs a 'file' and a 'length'")
        space_from_description(manifest["observation_space"])
        space_from_description(manifest["action_space"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise DatasetError(f"dataset manifest {path} is corrupt ({error})") from None
    return manifest


def _expected_columns(manifest: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of one row of each key, as the manifest's spaces say."""
    observation_space = space_from_description(manifest["observation_space"])
    expected = {}
    for key, space in observation_space.spaces.items():
        expected[key] = (
            space.shape,
            np.dtype(np.int64) if isinstance(space, spaces.Discrete) else np.dtype(space.dtype),
        )
    if manifest["actions"]:
        action_space = space_from_description(manifest["action_space"])
        expected["action"] = (action_space.shape, _action_dtype(action_space))
    expected.update({key: ((), dtype) for key, dtype in _FIXED_DTYPES.items()})
    return expected


def _read_episode(
    path: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]], length: int
) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} is missing (listed in the manifest)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            columns = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise DatasetError(f"dataset file {path} is corrupt or unreadable ({type(error).__name__}: {error})") from None
    found = {key: (array.shape[1:], array.dtype) for key, array in columns.items()}
    problem = None
    if found.keys() != expected.keys():
        problem = f"it holds the keys {sorted(found)}, the manifest says {sorted(expected)}"
    elif any(array.ndim == 0 or len(array) != length for array in columns.values()):
        problem = f"the manifest says {length} steps, the arrays have shapes { ({key: array.shape for key, array in columns.items()}) }"
    elif found != expected:
        problem = f"its layout {found} differs from the manifest's {expected}"
    elif length and not (columns["is_first"][0] and not columns["is_first"][1:].any()):
        problem = "is_first must be set on its first step only"
    if problem is not None:
        raise DatasetError(f"dataset file {path} does not hold a valid episode: {problem}")
    return columns


# ---------------------------------------------------------------------- files


def _prepare_directory(directory: Path, force: bool) -> None:
    manifest, episodes = directory / MANIFEST_FILE, directory / EPISODE_DIR
    if manifest.exists() or (episodes.is_dir() and any(episodes.iterdir())):
        if not force:
            raise DatasetError(
                f"{directory} already holds a dataset (or an unfinished recording); pass force=True (--force) to replace it or choose another directory"
            )
        manifest.unlink(missing_ok=True)
        for path in episodes.glob("*.npz"):
            path.unlink()
    episodes.mkdir(parents=True, exist_ok=True)


def _write_compressed(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """Write atomically, so that an interrupted recording never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        np.savez_compressed(file, **columns)
    os.replace(temporary, path)


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _wmlab_version() -> str:
    import wmlab

    return wmlab.__version__


# ---------------------------------------------------------------------- command line


@dataclass(frozen=True)
class RecordArguments:
    """Record episodes of a policy to an offline dataset (one compressed npz per episode)."""

    env: str
    """Environment id (a wmlab name, a gymnasium id, minigrid:..., crafter:...)."""
    out: Path
    """Directory to write the dataset to."""
    episodes: int = 10
    """Episodes to record."""
    policy: str = "random"
    """'random', or a run directory whose trained agent acts."""
    seed: int = 0
    """Episode i starts from reset(seed=seed + i); the random policy is seeded with seed."""
    env_kwargs: str = "{}"
    """Keyword arguments of the environment as a JSON object, e.g. '{"observation": "rgb_partial"}'."""
    max_episode_steps: int | None = None
    """Truncate episodes after this many environment steps (default: the environment's limit)."""
    actions: bool = True
    """Store the actions; --no-actions records video without action labels."""
    explore: bool = False
    """Let a trained agent explore (sample) instead of acting greedily."""
    force: bool = False
    """Replace a dataset already in --out."""
    progress: bool = True
    """Show a progress bar."""


def record_command(argv: list[str]) -> int:
    """`wmlab record --env ID --episodes N --policy random --out DIR [--seed S] [--no-actions]`."""
    arguments = tyro.cli(RecordArguments, args=argv, prog="wmlab record")
    env_kwargs = parse_json_object("--env-kwargs", arguments.env_kwargs, DatasetError)
    policy: Policy = arguments.policy
    if arguments.policy != "random":
        spec, policy = load_trained_agent(Path(arguments.policy))
        if (spec.env, spec.env_kwargs) != (arguments.env, env_kwargs):
            raise DatasetError(
                f"the agent in {arguments.policy} was trained on {spec.env} with {spec.env_kwargs}; "
                f"record with --env {spec.env} --env-kwargs '{json.dumps(spec.env_kwargs)}'"
            )
    manifest = record_dataset(
        arguments.env,
        policy,
        arguments.episodes,
        arguments.out,
        seed=arguments.seed,
        env_kwargs=env_kwargs,
        progress=arguments.progress,
        store_actions=arguments.actions,
        max_episode_steps=arguments.max_episode_steps,
        explore=arguments.explore,
        force=arguments.force,
        policy_name=None if arguments.policy == "random" else f"run:{arguments.policy}",
    )
    print(
        f"recorded {manifest['num_episodes']} episodes ({manifest['num_steps']} steps) of {arguments.env} to {arguments.out}"
    )
    return 0

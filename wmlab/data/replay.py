"""Sequence replay: whole episodes from vector environments, sampled as fixed-length windows.

What is stored. A step is a dict of numpy arrays without a batch dimension: the observation keys
(for example "image" uint8 (64, 64, 3), "vector" float32 (D,), "state" int64 ()) plus "action",
"reward" (float32) and the flags "is_first", "is_last", "is_terminal" (bool), following the time
convention of `wmlab.core.types`. Each frame is stored once, in the dtype it arrived in.

The stream. Sampling treats the buffer as one stream: the completed episodes in the order they
completed, then the episode in progress of each environment (env 0 first). A window of T steps
starts uniformly at any position with at least T steps after it in the stream; when it runs past
the end of an episode it continues into the next one, and the flags (is_first of the new episode,
is_last / is_terminal of the old one) tell the model where to reset its state. This is the way
Dreamer samples replay.

Memory. Completed episodes live in one ring buffer per key: evicting the oldest episode only moves
the front of the ring, and the ring grows by doubling, so storing a step costs amortised O(1)
copies. Each environment's episode in progress lives in its own growing buffer until it ends.

Disk layout (with a directory)::

    directory/episodes/000000-500.npz   one file per completed episode, "<index>-<length>.npz",
                                        written as soon as the episode ends
    directory/ongoing/env0.npz          episode in progress of env 0, written by checkpoint()
    directory/ongoing/env0.previous.npz the snapshot before that one (see checkpoint())
    directory/replay.json               the state written by save()

Evicted episodes keep their files: they are data, and only the state dict says which files belong
to the buffer.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wmlab.core.errors import RunDirectoryError
from wmlab.core.faults import kill_point
from wmlab.core.files import sync
from wmlab.core.types import STEP_KEYS, Batch

__all__ = ["ReplayBuffer", "read_episode"]

#: Bumped whenever the state dict or the file layout changes meaning.
FORMAT_VERSION = 1
EPISODE_DIR = "episodes"
ONGOING_DIR = "ongoing"
STATE_FILE = "replay.json"

_FLAG_KEYS = ("is_first", "is_last", "is_terminal")
#: Keys whose dtype the buffer fixes, whatever the environment hands over.
_FIXED_DTYPES = {"reward": np.dtype(np.float32), **{key: np.dtype(bool) for key in _FLAG_KEYS}}
#: Names that np.savez takes as its own arguments, plus the snapshot token stored next to the data.
_TOKEN_KEY = "checkpoint_token"
_RESERVED_KEYS = frozenset({"file", "allow_pickle", _TOKEN_KEY})
_EPISODE_NAME = re.compile(r"^(\d{6,})-(\d+)\.npz$")
#: Smallest allocation, so that short episodes do not reallocate on every few steps.
_MIN_ROWS = 64

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]
Columns = dict[str, np.ndarray]


class ReplayBuffer:
    """Episodes of `num_envs` environments, sampled as B x T windows across episode boundaries.

    directory: where completed episodes are written (and checkpoints); None keeps everything in
        memory only.
    capacity: most steps kept; beyond it the oldest completed episodes are evicted whole. Episodes
        in progress are never evicted, so the buffer can exceed capacity while they are longer.
    num_envs: number of environments adding steps (`add(step, env_index)` or `add_batch`).
    seed: seed of the sampler's random generator.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        capacity: int | None = None,
        num_envs: int = 1,
        seed: int = 0,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be a positive number of steps or None, got {capacity}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.directory = Path(directory) if directory is not None else None
        self.capacity = capacity
        self.num_envs = num_envs
        self._rng = np.random.default_rng(seed)
        # The layout of a step, fixed by the first step (or the first file) the buffer sees.
        self._spec: Spec | None = None
        self._completed: _RingColumns | None = None
        self._ongoing: list[_RingColumns | None] = [None] * num_envs
        # (file index, length) of each stored completed episode, oldest first.
        self._episodes: deque[tuple[int, int]] = deque()
        self._next_episode_index = 0
        self._steps_added = 0
        # Token of the snapshot on disk that still equals env i's episode in progress, else None.
        self._snapshot_tokens: list[str | None] = [None] * num_envs
        if self.directory is not None:
            (self.directory / EPISODE_DIR).mkdir(parents=True, exist_ok=True)
            # Never overwrite episodes this object does not know about; load_state_dict() resets
            # the counter to the checkpoint's.
            existing = [index for index, _, _ in self._episode_files()]
            self._next_episode_index = max(existing, default=-1) + 1

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """Steps stored: completed episodes plus the episodes in progress."""
        completed = len(self._completed) if self._completed is not None else 0
        return completed + sum(len(ongoing) for ongoing in self._ongoing if ongoing is not None)

    @property
    def num_episodes(self) -> int:
        """Completed episodes stored (evicted ones are not counted)."""
        return len(self._episodes)

    @property
    def num_steps_added(self) -> int:
        """Steps ever added in this run, evicted ones included."""
        return self._steps_added

    @property
    def num_episodes_added(self) -> int:
        """Episodes ever completed in this run, evicted ones included."""
        return self._next_episode_index

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer(steps={len(self)}, episodes={self.num_episodes}, capacity={self.capacity}, "
            f"num_envs={self.num_envs}, directory={str(self.directory) if self.directory else None!r})"
        )

    # ------------------------------------------------------------------ adding

    def add(self, step: Mapping[str, Any], env_index: int = 0) -> None:
        """Append one step of environment `env_index`; a step with is_last ends its episode.

        A step with is_first on an environment whose episode has not ended closes that episode as
        truncated (its last step gets is_last=True): this is what happens when the environments are
        restarted after a restore.
        """
        if not 0 <= env_index < self.num_envs:
            raise ValueError(f"env_index must be in [0, {self.num_envs}), got {env_index}")
        # The first step fixes the layout, but only once it has proved to be a valid step.
        spec = self._spec if self._spec is not None else _spec_of_step(step)
        step = _conform(step, spec, env_index)
        in_progress = len(self._ongoing[env_index]) if self._spec is not None else 0
        if step["is_first"]:
            if in_progress:
                self._finish_episode(env_index, truncated=True)
        elif not in_progress:
            raise ValueError(
                f"env {env_index}: an episode must begin with a step whose is_first is True, but this "
                "step has is_first=False and no episode is in progress"
            )
        if self._spec is None:
            self._set_spec(spec)
        self._ongoing[env_index].append(step)
        self._snapshot_tokens[env_index] = None
        self._steps_added += 1
        # Evict before the episode joins the completed ring, so that the ring never holds more
        # than `capacity` rows and stops growing at that size.
        self._evict()
        if step["is_last"]:
            self._finish_episode(env_index)

    def add_batch(self, steps: Mapping[str, Any]) -> None:
        """Append one step for every environment: each value has a leading num_envs dimension."""
        for key, value in steps.items():
            if np.shape(value)[:1] != (self.num_envs,):
                raise ValueError(
                    f"add_batch expects a leading dimension of num_envs={self.num_envs} on every key, "
                    f"but {key!r} has shape {np.shape(value)}"
                )
        arrays = {key: np.asarray(value) for key, value in steps.items()}
        for env_index in range(self.num_envs):
            self.add({key: value[env_index] for key, value in arrays.items()}, env_index)

    # ------------------------------------------------------------------ reading

    def sample(self, batch_size: int, length: int) -> Batch:
        """B windows of T consecutive steps of the stream, numpy arrays shaped (B, T, ...)."""
        if batch_size < 1 or length < 1:
            raise ValueError(f"batch_size and length must be positive, got {batch_size} and {length}")
        total = len(self)
        if total < length:
            raise ValueError(
                f"cannot sample windows of {length} steps: the replay buffer holds only {total} "
                "steps; collect more steps first or sample shorter windows"
            )
        starts = self._rng.integers(0, total - length + 1, size=batch_size)
        positions = (starts[:, None] + np.arange(length)).reshape(-1)

        # The stream is made of segments: the completed ring, then each non-empty episode in
        # progress. Find each position's segment once, then gather every key segment by segment.
        segments = [store for store in (self._completed, *self._ongoing) if store is not None and len(store)]
        offsets = np.cumsum([0] + [len(store) for store in segments[:-1]])
        owner = np.searchsorted(offsets, positions, side="right") - 1
        selections = []
        for index, (offset, store) in enumerate(zip(offsets, segments)):
            mask = owner == index
            if mask.any():
                selections.append((store, mask, positions[mask] - offset))

        gathered = {}
        for key, (shape, dtype) in self._spec.items():
            if len(selections) == 1:
                store, _, local = selections[0]
                values = store.gather(key, local)
            else:
                values = np.empty((positions.size, *shape), dtype)
                for store, mask, local in selections:
                    values[mask] = store.gather(key, local)
            gathered[key] = values.reshape(batch_size, length, *shape)
        return Batch(
            obs={key: gathered[key] for key in self.observation_keys},
            action=gathered["action"],
            reward=gathered["reward"],
            is_first=gathered["is_first"],
            is_last=gathered["is_last"],
            is_terminal=gathered["is_terminal"],
        )

    @property
    def observation_keys(self) -> tuple[str, ...]:
        """The observation keys of a step (empty until the first step is added)."""
        if self._spec is None:
            return ()
        return tuple(key for key in self._spec if key not in STEP_KEYS)

    def episodes(self) -> Iterator[Columns]:
        """Yield each stored completed episode, oldest first, as a dict of (length, ...) copies."""
        first = 0
        for _, length in list(self._episodes):
            yield self._completed.read(first, length)
            first += length

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The buffer's state as plain JSON values: counters, the sampler's RNG, the episode files.

        Episodes in progress are only restorable from a state returned by checkpoint() (or from
        state_dict() called before any step was added since); load_state_dict() says so otherwise.
        """
        return {
            "format": FORMAT_VERSION,
            "num_envs": self.num_envs,
            "capacity": self.capacity,
            "episodes": [f"{EPISODE_DIR}/{_episode_name(index, length)}" for index, length in self._episodes],
            "ongoing": [
                {"length": len(store) if store is not None else 0, "token": token}
                for store, token in zip(self._ongoing, self._snapshot_tokens)
            ],
            "next_episode_index": self._next_episode_index,
            "steps_added": self._steps_added,
            "rng": self._rng.bit_generator.state,
            # The layout of a step, so that a file of another layout is the one blamed on restore.
            "layout": _spec_to_json(self._spec) if self._spec is not None else None,
        }

    def checkpoint(self) -> dict[str, Any]:
        """Write each environment's episode in progress to disk and return state_dict().

        Completed episodes are already on disk, so together with the returned state this is enough
        to rebuild the buffer exactly. The snapshot replaced by this call is kept as
        `env<i>.previous.npz`: if the run dies after this call but before the caller stored the
        new state, the previous state still finds its snapshot.
        """
        directory = self._require_directory("checkpoint()")
        (directory / ONGOING_DIR).mkdir(parents=True, exist_ok=True)
        for env_index, store in enumerate(self._ongoing):
            if self._snapshot_tokens[env_index] is not None:
                continue  # unchanged since the last snapshot, which still matches
            latest, previous = self._snapshot_paths(env_index)
            if latest.exists():
                os.replace(latest, previous)
            kill_point("checkpoint-snapshot")
            if store is not None and len(store):
                token = uuid.uuid4().hex
                _write_npz(latest, {**store.head(), _TOKEN_KEY: np.array(token)})
                self._snapshot_tokens[env_index] = token
        return self.state_dict()

    def save(self) -> dict[str, Any]:
        """checkpoint() and also write the state to `directory/replay.json`; returns the state."""
        state = self.checkpoint()
        path = self.directory / STATE_FILE
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, path)
        return state

    @classmethod
    def restore(
        cls,
        directory: str | Path,
        state: Mapping[str, Any] | None = None,
        capacity: int | None = None,
    ) -> ReplayBuffer:
        """A buffer rebuilt from `state` (default: the one save() wrote to `directory`).

        capacity: None keeps the capacity recorded in the state.
        """
        directory = Path(directory)
        if state is None:
            path = directory / STATE_FILE
            try:
                state = json.loads(path.read_text())
            except FileNotFoundError:
                raise RunDirectoryError(f"no replay state at {path}: pass the state returned by save()") from None
            except (OSError, ValueError) as error:
                raise RunDirectoryError(f"replay state {path} is unreadable ({error})") from error
        buffer = cls(
            directory,
            capacity=state.get("capacity") if capacity is None else capacity,
            num_envs=state.get("num_envs", 1),
        )
        buffer.load_state_dict(state)
        return buffer

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the content with exactly the episodes and snapshots that `state` lists.

        Episode files written after that state (a run that died later) are deleted, so that the
        resumed run writes them again without duplicates. Nothing is deleted unless every listed
        file loaded.
        """
        directory = self._require_directory("load_state_dict()")
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"replay state has format {state.get('format')!r}; this version reads {FORMAT_VERSION}")
        if state["num_envs"] != self.num_envs:
            raise ValueError(f"replay state is for num_envs={state['num_envs']}, this buffer has {self.num_envs}")

        # Load into fresh stores first, so that a bad file leaves this buffer untouched.
        named = []
        for name in state["episodes"]:
            match = _EPISODE_NAME.match(Path(name).name)
            if match is None:
                raise RunDirectoryError(f"replay state lists {name!r}, which is not an episode file name")
            named.append((directory / name, int(match.group(1)), int(match.group(2))))
        loaded = [(path, _read_npz(path), length) for path, _, length in named]
        snapshots: list[tuple[Path, Columns] | None] = [None] * self.num_envs
        for env_index, entry in enumerate(state["ongoing"]):
            if entry["length"] == 0:
                continue
            if entry["token"] is None:
                raise ValueError(
                    f"replay state has {entry['length']} steps in progress for env {env_index} that were "
                    "never written to disk: it came from state_dict() after steps were added; store the "
                    "state that checkpoint() returns instead"
                )
            snapshots[env_index] = self._find_snapshot(env_index, entry["token"])
            loaded.append((*snapshots[env_index], entry["length"]))
        # Each file is checked against the layout the state recorded (else the buffer's own, else
        # the one most files share), so that the error names the file that differs.
        spec = _spec_from_json(state["layout"]) if state.get("layout") else self._spec
        if spec is None:
            spec = _common_layout([columns for _, columns, _ in loaded])
        for path, columns, length in loaded:
            spec = _check_columns(columns, spec, path, length)

        completed = None
        episodes: deque[tuple[int, int]] = deque()
        for (path, index, length), (_, columns, _) in zip(named, loaded):
            if completed is None:
                completed = _RingColumns(spec, ceiling=self.capacity)
                completed.reserve(sum(length for _, _, length in named))
            completed.extend(columns, length)
            episodes.append((index, length))

        ongoing: list[_RingColumns | None] = [None] * self.num_envs
        chosen_snapshots: list[Path | None] = [None] * self.num_envs
        tokens: list[str | None] = [None] * self.num_envs
        for env_index, entry in enumerate(state["ongoing"]):
            if snapshots[env_index] is None:
                continue
            path, columns = snapshots[env_index]
            store = _RingColumns(spec)
            store.extend(columns, entry["length"])
            ongoing[env_index] = store
            chosen_snapshots[env_index] = path
            tokens[env_index] = entry["token"]

        self._spec = spec
        self._completed = completed
        self._episodes = episodes
        if spec is not None:
            if self._completed is None:
                self._completed = _RingColumns(spec, ceiling=self.capacity)
            self._ongoing = [store if store is not None else _RingColumns(spec) for store in ongoing]
        else:
            self._ongoing = [None] * self.num_envs
        self._snapshot_tokens = tokens
        self._next_episode_index = int(state["next_episode_index"])
        self._steps_added = int(state["steps_added"])
        self._rng.bit_generator.state = state["rng"]

        self._discard_files_after_checkpoint(chosen_snapshots)
        self._evict()

    # ------------------------------------------------------------------ internals

    def _set_spec(self, spec: Spec) -> None:
        self._spec = spec
        self._completed = _RingColumns(spec, ceiling=self.capacity)
        self._ongoing = [_RingColumns(spec) for _ in range(self.num_envs)]

    def _finish_episode(self, env_index: int, truncated: bool = False) -> None:
        """Move env_index's episode in progress to the completed ring (and to disk)."""
        store = self._ongoing[env_index]
        columns = store.head()
        if truncated:
            columns["is_last"][-1] = True
        index = self._next_episode_index
        if self.directory is not None:
            # Disk first: once the episode is complete, a crash must not lose it.
            _write_npz(self.directory / EPISODE_DIR / _episode_name(index, len(store)), columns)
            kill_point("episode-saved")
        self._completed.extend(columns, len(store))
        self._episodes.append((index, len(store)))
        self._next_episode_index += 1
        store.clear()
        self._snapshot_tokens[env_index] = None

    def _evict(self) -> None:
        if self.capacity is None:
            return
        excess = len(self) - self.capacity
        while excess > 0 and self._episodes:
            _, length = self._episodes.popleft()
            self._completed.drop_front(length)
            excess -= length

    def _require_directory(self, caller: str) -> Path:
        if self.directory is None:
            raise ValueError(f"{caller} needs a replay directory: create the buffer with ReplayBuffer(directory=...)")
        return self.directory

    def _episode_files(self) -> list[tuple[int, int, Path]]:
        """(index, length, path) of every episode file in the directory."""
        found = []
        for path in (self.directory / EPISODE_DIR).iterdir():
            match = _EPISODE_NAME.match(path.name)
            if match is not None:
                found.append((int(match.group(1)), int(match.group(2)), path))
        return found

    def _snapshot_paths(self, env_index: int) -> tuple[Path, Path]:
        folder = self.directory / ONGOING_DIR
        return folder / f"env{env_index}.npz", folder / f"env{env_index}.previous.npz"

    def _find_snapshot(self, env_index: int, token: str) -> tuple[Path, Columns]:
        """The snapshot of env_index written with `token`: the latest one, else the one before."""
        candidates = self._snapshot_paths(env_index)
        for path in candidates:
            if path.exists():
                columns = _read_npz(path)
                if str(columns.pop(_TOKEN_KEY, "")) == token:
                    return path, columns
        raise RunDirectoryError(
            f"no snapshot of env {env_index}'s episode in progress matches the replay state: "
            f"{candidates[0]} and {candidates[1]} are missing or were written by another checkpoint"
        )

    def _discard_files_after_checkpoint(self, chosen_snapshots: list[Path | None]) -> None:
        """Delete what a run wrote after the restored checkpoint, so it is neither lost nor duplicated."""
        for index, _, path in self._episode_files():
            if index >= self._next_episode_index:
                path.unlink()
        for path in (self.directory / EPISODE_DIR).glob(".*.tmp"):
            path.unlink()  # a write that the crash interrupted
        for env_index, chosen in enumerate(chosen_snapshots):
            latest, previous = self._snapshot_paths(env_index)
            # The restored snapshot becomes the latest, so that the next checkpoint keeps it as
            # the previous one; any other snapshot belongs to the abandoned run.
            if chosen == previous:
                os.replace(previous, latest)
            elif chosen is None:
                latest.unlink(missing_ok=True)
            previous.unlink(missing_ok=True)


class _RingColumns:
    """Equal-length columns in ring buffers: rows join at the back and leave from the front.

    Dropping the oldest rows only moves the front index, and storage grows by doubling (up to
    `ceiling` rows when more will never be needed), so appending costs amortised O(1) copies.
    """

    def __init__(self, spec: Spec, ceiling: int | None = None) -> None:
        self._ceiling = ceiling
        self._rows = 0
        self._front = 0
        self._size = 0
        self._columns = {key: np.empty((0, *shape), dtype) for key, (shape, dtype) in spec.items()}

    def __len__(self) -> int:
        return self._size

    def reserve(self, rows: int) -> None:
        """Make room for `rows` rows in all, so that filling them moves nothing."""
        if rows > self._rows:
            self._grow(rows, exact=True)

    def append(self, step: Mapping[str, np.ndarray]) -> None:
        if self._size == self._rows:
            self._grow(self._size + 1)
        row = (self._front + self._size) % self._rows
        for key, column in self._columns.items():
            column[row] = step[key]
        self._size += 1

    def extend(self, columns: Mapping[str, np.ndarray], count: int) -> None:
        if self._size + count > self._rows:
            self._grow(self._size + count)
        row = (self._front + self._size) % self._rows
        before_wrap = min(count, self._rows - row)
        for key, column in self._columns.items():
            source = columns[key]
            column[row : row + before_wrap] = source[:before_wrap]
            column[: count - before_wrap] = source[before_wrap:count]
        self._size += count

    def drop_front(self, count: int) -> None:
        self._front = (self._front + count) % self._rows
        self._size -= count

    def clear(self) -> None:
        """Forget all rows but keep the storage, which the next episode reuses."""
        self._front = 0
        self._size = 0

    def gather(self, key: str, positions: np.ndarray) -> np.ndarray:
        """Rows at `positions` counted from the front, as a new array."""
        return self._columns[key][(self._front + positions) % self._rows]

    def read(self, first: int, count: int) -> Columns:
        positions = np.arange(first, first + count)
        return {key: self.gather(key, positions) for key in self._columns}

    def head(self) -> Columns:
        """Views of all rows, valid while they do not wrap (always so for an episode in progress)."""
        assert self._front + self._size <= self._rows or self._size == 0
        return {key: column[self._front : self._front + self._size] for key, column in self._columns.items()}

    def _grow(self, needed: int, exact: bool = False) -> None:
        rows = needed if exact else max(needed, 2 * self._rows, _MIN_ROWS)
        if self._ceiling is not None:
            rows = max(needed, min(rows, self._ceiling))
        before_wrap = min(self._size, self._rows - self._front)
        for key, old in self._columns.items():
            new = np.empty((rows, *old.shape[1:]), old.dtype)
            # Unwrap: the front moves to row 0.
            new[:before_wrap] = old[self._front : self._front + before_wrap]
            new[before_wrap : self._size] = old[: self._size - before_wrap]
            self._columns[key] = new
        self._rows = rows
        self._front = 0


# ---------------------------------------------------------------------- helpers


def _episode_name(index: int, length: int) -> str:
    return f"{index:06d}-{length}.npz"


def _spec_of_step(step: Mapping[str, Any]) -> Spec:
    missing = [key for key in STEP_KEYS if key not in step]
    if missing:
        raise ValueError(f"a replay step needs the keys {list(STEP_KEYS)}; missing {missing}")
    if len(step) == len(STEP_KEYS):
        raise ValueError("a replay step needs at least one observation key (e.g. 'image', 'vector')")
    spec = {}
    for key, value in step.items():
        if not isinstance(key, str) or key in _RESERVED_KEYS:
            raise ValueError(f"{key!r} cannot be a step key (reserved: {sorted(_RESERVED_KEYS)})")
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"step[{key!r}] holds Python objects; replay stores numeric arrays only")
        spec[key] = (value.shape, _FIXED_DTYPES.get(key, value.dtype))
    return spec


def _conform(step: Mapping[str, Any], spec: Spec, env_index: int) -> dict[str, np.ndarray]:
    """The step as arrays of the stored dtypes; a clear error when it does not fit the layout."""
    if step.keys() != spec.keys():
        raise ValueError(f"env {env_index}: step has keys {sorted(step)}, but this buffer stores {sorted(spec)}")
    arrays = {}
    for key, (shape, dtype) in spec.items():
        value = np.asarray(step[key])
        if value.shape != shape:
            raise ValueError(f"env {env_index}: step[{key!r}] has shape {value.shape}, expected {shape}")
        if key in _FIXED_DTYPES:
            value = value.astype(dtype, copy=False)
        elif not _casts_safely(value.dtype, dtype):
            raise ValueError(f"env {env_index}: step[{key!r}] has dtype {value.dtype}, expected {dtype}")
        arrays[key] = value
    return arrays


def _casts_safely(source: np.dtype, target: np.dtype) -> bool:
    """True unless the cast loses the kind of value (a float into an integer, a number into a bool)."""
    return np.can_cast(source, target, casting="same_kind") or (source.kind in "iu" and target.kind in "iu")


def read_episode(path: str | Path) -> Columns:
    """One episode file "<index>-<length>.npz", checked as a restore checks it: readable without
    pickles, every array `length` steps long, the step keys present with their dtypes. Anything
    else raises RunDirectoryError naming the file."""
    path = Path(path)
    match = _EPISODE_NAME.match(path.name)
    if match is None:
        raise RunDirectoryError(f"{path} is not a replay episode file (expected a name like 000000-500.npz)")
    columns = _read_npz(path)
    columns.pop(_TOKEN_KEY, None)
    _check_columns(columns, None, path, int(match.group(2)))
    return columns


def _spec_to_json(spec: Spec) -> dict[str, list]:
    return {key: [list(shape), dtype.str] for key, (shape, dtype) in spec.items()}


def _spec_from_json(layout: Mapping[str, Any]) -> Spec:
    return {key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype) in layout.items()}


def _common_layout(files: list[Columns]) -> Spec | None:
    """The step layout most of `files` share (None without files): the reference to blame the odd
    one out when the state predates recorded layouts."""
    layouts = [{key: (array.shape[1:], array.dtype) for key, array in columns.items()} for columns in files]
    counts = [(sum(other == layout for other in layouts), -index) for index, layout in enumerate(layouts)]
    return layouts[-max(counts)[1]] if layouts else None


def _check_columns(columns: Columns, spec: Spec | None, path: Path, length: int) -> Spec:
    """Check that a loaded file holds `length` steps of the layout `spec`; return the layout."""
    found = {key: (array.shape[1:], array.dtype) for key, array in columns.items()}
    problem = None
    if any(array.ndim == 0 or len(array) != length for array in columns.values()):
        problem = f"expected {length} steps in every array, found shapes " + str(
            {key: array.shape for key, array in columns.items()}
        )
    elif spec is not None and found != spec:
        problem = f"its layout {found} differs from the buffer's {spec}"
    elif spec is None:
        missing = [key for key in STEP_KEYS if key not in found]
        wrong = [key for key, dtype in _FIXED_DTYPES.items() if key in found and found[key][1] != dtype]
        if missing or wrong:
            problem = f"missing keys {missing}, wrong dtypes for {wrong}"
    if problem is not None:
        raise RunDirectoryError(f"replay file {path} does not hold a valid episode: {problem}")
    return found


def _read_npz(path: Path) -> Columns:
    if not path.is_file():
        raise RunDirectoryError(f"replay file {path} is missing")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:
        raise RunDirectoryError(
            f"replay file {path} is corrupt or unreadable ({type(error).__name__}: {error})"
        ) from error


def _write_npz(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """Write atomically: a crash leaves either the old file or the complete new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        np.savez(file, **columns)
        file.flush()
        os.fsync(file.fileno())
    if path.parent.name == EPISODE_DIR:
        kill_point("episode-write")
    os.replace(temporary, path)
    sync(path.parent)

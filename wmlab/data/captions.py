"""Captioned episodes: video with actions and a true caption for every step, for text-conditioned
world models (GAIA-1 in small, UniSim, text-prompted DiTs).

wmlab writes them itself from the built-in two-rooms task, whose state says what happened, so
every caption is true by construction. Layout of a captioned dataset directory::

    directory/manifest.json            the offline-dataset manifest (wmlab.data.dataset): spaces,
                                       seed, one entry per episode file
    directory/episodes/000000-41.npz   one compressed npz per episode, the keys of a replay step
    directory/captions.json            {"format": 1, "source": ..., "captions": [the vocabulary],
                                        "episodes": [{"file", "length", "steps": [caption per row]}]}

Row t of an episode holds obs_t and the action that led to it (wmlab.core.types); its caption says
what that action did, from the agent's positions before and after:

    "reach the goal"           the step ended the episode at the goal
    "pass through the door"    the agent changed rooms, or is inside the doorway
    "move left" / "move right" / "move up" / "move down"   the larger component of the move
    "stay still"               the agent moved less than a fifth of a full step (blocked or idle)

Row 0 (the reset) has the caption "start". `load_captioned` refuses a caption file that does not
match its episodes (a missing or extra episode, a length that differs, an empty caption).

The recording policy mixes the scripted expert (`wmlab.envs.two_rooms.scripted_action`, which
passes the door and reaches the goal) with stretches of a held random direction, so that every
caption is common: each episode is an expert episode with probability `expert_share`, and an
expert's action is replaced by a held random direction with probability `wander`.

    record_captioned_two_rooms("data/two-rooms-captions", episodes=200, seed=0)
    dataset = load_captioned("data/two-rooms-captions")
    batch, captions = dataset.sample(batch_size=16, length=10)   # Batch (B, T, ...), [[str] * T] * B

Shape legend: B windows, T steps, H, W, C image.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmlab.core.files import read_json
from wmlab.core.types import Batch
from wmlab.data.dataset import (
    EPISODE_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    DatasetError,
    _prepare_directory,
    _row,
    _write_compressed,
    _write_text_atomically,
    describe_space,
    read_manifest,
)
from wmlab.envs.adapter import make_env
from wmlab.envs.two_rooms import scripted_action

CAPTIONS_FILE = "captions.json"
CAPTIONS_FORMAT = 1
MOVES = ("move left", "move right", "move up", "move down")
#: The recorder's held directions, in the env's action units (x right, y up), one per move caption.
MOVE_DIRECTIONS = {"move left": (-1.0, 0.0), "move right": (1.0, 0.0), "move up": (0.0, 1.0), "move down": (0.0, -1.0)}
CAPTIONS = ("start", *MOVES, "pass through the door", "reach the goal", "stay still")


def caption_step(
    before: tuple[float, float],
    after: tuple[float, float],
    success: bool,
    in_doorway: bool,
    max_step: float,
    middle_x: float = 0.5,
) -> str:
    """The true caption of one two-rooms step from the agent's centre before and after it."""
    if success:
        return "reach the goal"
    if (before[0] < middle_x) != (after[0] < middle_x) or in_doorway:
        return "pass through the door"
    dx, dy = after[0] - before[0], after[1] - before[1]
    if max(abs(dx), abs(dy)) < 0.2 * max_step:
        return "stay still"
    if abs(dx) >= abs(dy):
        return "move right" if dx > 0 else "move left"
    return "move up" if dy > 0 else "move down"  # y points up in two-rooms


def record_captioned_two_rooms(
    directory: str | Path,
    episodes: int,
    seed: int = 0,
    max_episode_steps: int = 60,
    expert_share: float = 0.5,
    wander: float = 0.3,
    hold: tuple[int, int] = (3, 8),
    force: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record `episodes` captioned two-rooms episodes (64 x 64 pixels, actions in [-1, 1]^2) to
    `directory`; returns the captions file's content. Episode i starts from reset(seed=seed + i)."""

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    directory = Path(directory)
    env_kwargs = {"max_episode_steps": max_episode_steps, **(env_kwargs or {})}
    env = make_env("two-rooms", **env_kwargs)
    _prepare_directory(directory, force)
    (directory / CAPTIONS_FILE).unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    world = env.unwrapped
    geometry = world.geometry
    entries, caption_entries = [], []
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            expert = rng.random() < expert_share
            rows = [_row(observation, np.zeros(2, np.float32), 0.0, True, False, False)]
            captions = ["start"]
            held, held_steps = np.zeros(2, np.float32), 0
            total, done = 0.0, False
            while not done:
                if held_steps == 0 and (not expert or rng.random() < wander):
                    direction = rng.integers(4)
                    held = np.array(MOVE_DIRECTIONS[MOVES[direction]], np.float32) * rng.uniform(0.6, 1.0)
                    held_steps = int(rng.integers(hold[0], hold[1] + 1))
                action = held if held_steps > 0 else scripted_action(env)
                held_steps = max(held_steps - 1, 0)
                before = world.agent_position
                observation, reward, terminated, truncated, info = env.step(action)
                after = world.agent_position
                captions.append(
                    caption_step(
                        before, after, bool(info["success"]), geometry.in_wall_band(after[0]), geometry.max_step
                    )
                )
                if captions[-1] == "stay still":
                    held_steps = 0  # blocked by a wall: choose again
                total += float(reward)
                done = terminated or truncated
                rows.append(_row(observation, np.asarray(action, np.float32), reward, False, done, terminated))
            columns = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
            name = f"{EPISODE_DIR}/{episode:06d}-{len(rows)}.npz"
            _write_compressed(directory / name, columns)
            entries.append({"file": name, "length": len(rows), "return": total, "terminated": bool(terminated)})
            caption_entries.append({"file": name, "length": len(rows), "expert": bool(expert), "steps": captions})
    finally:
        env.close()
    manifest = {
        "format": FORMAT_VERSION,
        "env_id": "two-rooms",
        "env_kwargs": env_kwargs,
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
        "actions": True,
        "policy": f"scripted expert in {expert_share:.0%} of episodes (wander {wander}), else held random directions",
        "seed": seed,
        "max_episode_steps": max_episode_steps,
        "num_episodes": episodes,
        "num_steps": sum(entry["length"] for entry in entries),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "episodes": entries,
    }
    content = {
        "format": CAPTIONS_FORMAT,
        "source": "two-rooms state (wmlab.data.captions.caption_step)",
        "captions": list(CAPTIONS),
        "episodes": caption_entries,
    }
    _write_text_atomically(directory / CAPTIONS_FILE, json.dumps(content, indent=1))
    _write_text_atomically(directory / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return content


@dataclass
class CaptionedDataset:
    """Episodes (dicts of (steps, ...) arrays) with one caption per step, sampled as windows."""

    directory: Path
    episodes: list[dict[str, np.ndarray]]
    captions: list[list[str]]
    vocabulary: tuple[str, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def sample(self, batch_size: int, length: int) -> tuple[Batch, list[list[str]]]:
        """B windows of T steps inside episodes (each equally likely) and their captions [B][T]."""
        lengths = np.array([len(episode["reward"]) for episode in self.episodes])
        starts = np.clip(lengths - length + 1, 0, None)
        if starts.sum() == 0:
            raise DatasetError(
                f"no episode in {self.directory} holds {length} steps (the longest holds {lengths.max()})"
            )
        chosen = self.rng.choice(int(starts.sum()), size=batch_size)
        offsets = np.cumsum(starts) - starts
        windows, captions = [], []
        for position in chosen:
            index = int(np.searchsorted(offsets, position, side="right") - 1)
            start = int(position - offsets[index])
            windows.append({key: value[start : start + length] for key, value in self.episodes[index].items()})
            captions.append(self.captions[index][start : start + length])
        stacked = {key: np.stack([window[key] for window in windows]) for key in windows[0]}
        flags = ("action", "reward", "is_first", "is_last", "is_terminal")
        batch = Batch(
            {key: value for key, value in stacked.items() if key not in flags},
            stacked["action"],
            stacked["reward"],
            stacked["is_first"],
            stacked["is_last"],
            stacked["is_terminal"],
        )
        return batch, captions


def load_captioned(directory: str | Path, seed: int = 0) -> CaptionedDataset:
    """Load a captioned dataset, refusing a caption file that does not match its episodes."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    path = directory / CAPTIONS_FILE
    content = read_json(path, DatasetError, f"{path} is missing: {directory} holds episodes without captions")
    if content.get("format") != CAPTIONS_FORMAT:
        raise DatasetError(f"{path}: caption format {content.get('format')!r}, this version reads {CAPTIONS_FORMAT}")
    listed = {entry["file"]: entry["length"] for entry in manifest["episodes"]}
    captioned = {entry.get("file"): entry for entry in content.get("episodes", [])}
    missing, extra = sorted(set(listed) - set(captioned)), sorted(set(captioned) - set(listed))
    if missing or extra:
        raise DatasetError(
            f"{path} does not match the episodes of {directory}: captions missing for {missing[:3]}, captions for unknown episodes {extra[:3]}"
        )
    episodes, captions = [], []
    for name, length in listed.items():
        steps = captioned[name].get("steps")
        if not isinstance(steps, list) or len(steps) != length:
            raise DatasetError(
                f"{path}: episode {name} has {length} steps but {len(steps) if isinstance(steps, list) else 'no'} captions"
            )
        empty = [index for index, caption in enumerate(steps) if not isinstance(caption, str) or not caption.strip()]
        if empty:
            raise DatasetError(f"{path}: episode {name} has empty captions at steps {empty[:5]}")
        with np.load(directory / name, allow_pickle=False) as archive:
            episode = {key: archive[key] for key in archive.files}
        if len(episode["reward"]) != length:
            raise DatasetError(f"{directory / name} holds {len(episode['reward'])} steps, the manifest says {length}")
        episodes.append(episode)
        captions.append(steps)
    vocabulary = tuple(content.get("captions") or sorted({caption for steps in captions for caption in steps}))
    return CaptionedDataset(directory, episodes, captions, vocabulary, seed)

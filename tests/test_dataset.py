"""Offline datasets: exact round trips with and without actions, sampling, clear errors, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmlab.core.errors import WmlabError
from wmlab.data.dataset import DatasetError, load_dataset, record_command, record_dataset
from wmlab.envs.adapter import make_env

ENV_ID = "minigrid:DoorKey-5x5"
EPISODES = 3
MAX_STEPS = 15
SEED = 7


def reference_episodes(env_id: str, episodes: int, seed: int, max_steps: int) -> list[dict[str, np.ndarray]]:
    """The seeded random policy's episodes, stepped by hand: what a recording must hold."""
    env = make_env(env_id)
    env.action_space.seed(seed)
    result = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        rows = [
            dict(observation, action=np.int64(0), reward=np.float32(0), is_first=True, is_last=False, is_terminal=False)
        ]
        for step in range(1, max_steps + 1):
            action = env.action_space.sample()
            observation, reward, terminated, truncated, _ = env.step(action)
            last = terminated or truncated or step == max_steps
            rows.append(
                dict(
                    observation,
                    action=action,
                    reward=np.float32(reward),
                    is_first=False,
                    is_last=last,
                    is_terminal=terminated,
                )
            )
            if last:
                break
        result.append({key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]})
    return result


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dataset")
    manifest = record_dataset(
        ENV_ID, "random", EPISODES, directory, seed=SEED, progress=False, max_episode_steps=MAX_STEPS
    )
    return directory, manifest


def test_round_trip_is_exact(recorded):
    directory, manifest = recorded
    dataset = load_dataset(directory)
    expected = reference_episodes(ENV_ID, EPISODES, SEED, MAX_STEPS)
    loaded = list(dataset.episodes())
    assert len(loaded) == EPISODES == dataset.num_episodes
    for episode, reference in zip(loaded, expected):
        assert episode.keys() == {"image", "action", "reward", "is_first", "is_last", "is_terminal"}
        for key, array in reference.items():
            assert np.array_equal(episode[key], array), key
        assert episode["image"].dtype == np.uint8 and episode["action"].dtype == np.int64
        assert episode["reward"].dtype == np.float32 and episode["is_last"].dtype == bool
    assert dataset.num_steps == manifest["num_steps"] == sum(len(episode["reward"]) for episode in expected)
    assert dataset.observation_space == make_env(ENV_ID).observation_space
    assert dataset.action_space == make_env(ENV_ID).action_space


def test_manifest_describes_the_recording(recorded):
    directory, manifest = recorded
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert on_disk == manifest
    assert (manifest["env_id"], manifest["policy"], manifest["seed"], manifest["actions"]) == (
        ENV_ID,
        "random",
        SEED,
        True,
    )
    assert manifest["num_episodes"] == EPISODES and len(manifest["episodes"]) == EPISODES
    for entry in manifest["episodes"]:
        with np.load(directory / entry["file"]) as archive:
            assert len(archive["reward"]) == entry["length"]
    assert manifest["observation_space"]["spaces"]["image"] == {
        "type": "Box",
        "shape": [64, 64, 3],
        "dtype": "uint8",
        "low": 0,
        "high": 255,
    }
    assert manifest["created"]


def test_sampled_windows_are_slices_of_the_recorded_stream(recorded):
    directory, _ = recorded
    dataset = load_dataset(directory, seed=1)
    stream = {
        key: np.concatenate([episode[key] for episode in dataset.episodes()])
        for key in ("image", "action", "reward", "is_first")
    }
    batch = dataset.sample(batch_size=6, length=8)
    assert batch.shape == (6, 8) and batch.obs["image"].shape == (6, 8, 64, 64, 3)
    for row in range(6):
        starts = [
            start
            for start in range(len(stream["reward"]) - 7)
            if all(
                np.array_equal(stream[key][start : start + 8], window)
                for key, window in (
                    ("image", batch.obs["image"][row]),
                    ("action", batch.action[row]),
                    ("is_first", batch.is_first[row]),
                )
            )
        ]
        assert starts, f"window {row} is not a slice of the recorded episodes"


def test_a_dataset_with_actions_loads_as_video(recorded):
    directory, _ = recorded
    dataset = load_dataset(directory, with_actions=False)
    batch = dataset.sample(batch_size=2, length=5)
    assert batch.action is None and batch.obs["image"].shape == (2, 5, 64, 64, 3)
    assert all("action" not in episode for episode in dataset.episodes())


def test_recording_without_actions_keeps_everything_else(recorded, tmp_path):
    directory, _ = recorded
    record_dataset(
        ENV_ID,
        "random",
        EPISODES,
        tmp_path,
        seed=SEED,
        progress=False,
        max_episode_steps=MAX_STEPS,
        store_actions=False,
    )
    with pytest.raises(DatasetError, match="without actions"):
        load_dataset(tmp_path)
    video = load_dataset(tmp_path, with_actions=False)
    for episode, labelled in zip(video.episodes(), load_dataset(directory).episodes()):
        assert episode.keys() == labelled.keys() - {"action"}
        assert all(np.array_equal(episode[key], labelled[key]) for key in episode)
    assert video.sample(3, 4).action is None


def test_callable_and_agent_policies(tmp_path):
    seen = []

    def turn_left_then_forward(observation, state):
        seen.append((observation["image"].shape, bool(observation["is_first"][0])))
        count = 0 if state is None else state + 1
        return np.array([0 if count % 2 == 0 else 2]), count  # batched, as an agent returns it

    manifest = record_dataset(
        ENV_ID, turn_left_then_forward, 1, tmp_path / "callable", seed=0, progress=False, max_episode_steps=6
    )
    assert manifest["policy"] == "turn_left_then_forward"
    assert seen[0] == ((1, 64, 64, 3), True) and not any(first for _, first in seen[1:])
    actions = next(load_dataset(tmp_path / "callable").episodes())["action"]
    assert actions.tolist() == [0, 0, 2, 0, 2, 0, 2]

    class ForwardAgent:
        learns_from = "replay"

        def act(self, observation, state, explore):
            assert explore is False
            return np.full(len(observation["is_first"]), 2), state

    manifest = record_dataset(
        ENV_ID, ForwardAgent(), 1, tmp_path / "agent", seed=0, progress=False, max_episode_steps=4
    )
    assert manifest["policy"] == "ForwardAgent"
    assert next(load_dataset(tmp_path / "agent").episodes())["action"].tolist() == [0, 2, 2, 2, 2]


def test_vector_observations_round_trip(tmp_path):
    record_dataset("CartPole-v1", "random", 2, tmp_path, seed=3, progress=False)
    expected = reference_episodes("CartPole-v1", 2, 3, max_steps=10_000)
    for episode, reference in zip(load_dataset(tmp_path).episodes(), expected):
        assert all(np.array_equal(episode[key], reference[key]) for key in reference)
        assert episode["vector"].dtype == np.float32 and episode["is_terminal"][-1]


def test_missing_and_corrupt_files_are_named(recorded, tmp_path):
    directory, manifest = recorded
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")

    copy = tmp_path / "copy"
    (copy / "episodes").mkdir(parents=True)
    for entry in manifest["episodes"]:
        (copy / entry["file"]).write_bytes((directory / entry["file"]).read_bytes())
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json is corrupt"):
        load_dataset(copy)

    (copy / "manifest.json").write_text(json.dumps(manifest))
    damaged = copy / manifest["episodes"][1]["file"]
    damaged.write_bytes(b"not an npz archive")
    with pytest.raises(DatasetError, match=damaged.name + ".*corrupt"):
        load_dataset(copy)
    damaged.unlink()
    with pytest.raises(DatasetError, match=damaged.name + ".*missing"):
        load_dataset(copy)

    wrong_length = dict(manifest, episodes=[dict(manifest["episodes"][0], length=99)])
    (copy / "manifest.json").write_text(json.dumps(wrong_length))
    with pytest.raises(DatasetError, match="99 steps"):
        load_dataset(copy)


def test_record_command_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    arguments = [
        "--env",
        "CartPole-v1",
        "--episodes",
        "2",
        "--policy",
        "random",
        "--out",
        str(out),
        "--seed",
        "4",
        "--no-progress",
    ]
    assert record_command(arguments) == 0
    assert "recorded 2 episodes" in capsys.readouterr().out
    assert load_dataset(out).manifest["seed"] == 4
    with pytest.raises(WmlabError, match="already holds a dataset"):
        record_command(arguments)
    assert record_command(arguments + ["--force", "--no-actions", "--max-episode-steps", "3"]) == 0
    assert load_dataset(out, with_actions=False).num_steps == 2 * 4

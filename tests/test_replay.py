"""The sequence replay buffer: windows across episode boundaries, eviction, checkpoints, crashes.

Every step carries its own identity: "state" is a counter that the test chooses (for one
environment, the step's position in the stream), so a sampled window can be checked against what
it must contain.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wmlab.core.errors import RunDirectoryError
from wmlab.data.replay import ReplayBuffer


def make_step(value: int, first: bool, last: bool = False, terminal: bool = False) -> dict:
    """A step whose every field is derived from `value`, so that it can be recognised later."""
    return {
        "image": np.full((4, 4, 3), value % 256, np.uint8),
        "state": np.int64(value),
        # The action that led here: none at the first step of an episode.
        "action": np.zeros(2, np.float32) if first else np.array([value, -value], np.float32),
        "reward": np.float32(0.0 if first else value / 10),
        "is_first": first,
        "is_last": last,
        "is_terminal": terminal,
    }


def episode_steps(start: int, length: int, terminal: bool = False, complete: bool = True) -> list[dict]:
    """`length` steps valued start, start + 1, ...; the last ends the episode when `complete`."""
    return [
        make_step(
            start + t,
            first=t == 0,
            last=complete and t == length - 1,
            terminal=complete and terminal and t == length - 1,
        )
        for t in range(length)
    ]


def fill(buffer: ReplayBuffer, lengths: list[int], ongoing: int = 0, start: int = 0) -> int:
    """Add complete episodes of `lengths` (every other one terminal), then `ongoing` steps of one
    more episode, all to env 0 with values counting up from `start`; returns the next value."""
    for number, length in enumerate(lengths):
        for step in episode_steps(start, length, terminal=number % 2 == 0):
            buffer.add(step)
        start += length
    for step in episode_steps(start, ongoing, complete=False):
        buffer.add(step)
    return start + ongoing


def assert_batches_equal(first, second) -> None:
    assert first.obs.keys() == second.obs.keys()
    for key in first.obs:
        np.testing.assert_array_equal(first.obs[key], second.obs[key])
    for name in ("action", "reward", "is_first", "is_last", "is_terminal"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def assert_episodes_equal(first: ReplayBuffer, second: ReplayBuffer) -> None:
    first_episodes, second_episodes = list(first.episodes()), list(second.episodes())
    assert len(first_episodes) == len(second_episodes)
    for one, other in zip(first_episodes, second_episodes):
        assert one.keys() == other.keys()
        for key in one:
            assert one[key].dtype == other[key].dtype
            np.testing.assert_array_equal(one[key], other[key])


LENGTHS = [5, 3, 7, 1, 4]  # then 2 steps in progress: 22 steps in the stream
STARTS = {0, 5, 8, 15, 16, 20}
ENDS = {4, 7, 14, 15, 19}
TERMINAL_ENDS = {4, 14, 19}  # every other episode ends terminal


def test_windows_are_contiguous_in_the_stream_and_flag_episode_starts():
    buffer = ReplayBuffer(seed=1)
    assert fill(buffer, LENGTHS, ongoing=2) == 22
    assert len(buffer) == 22 and buffer.num_episodes == 5

    batch = buffer.sample(256, 6)
    assert batch.shape == (256, 6)
    state = batch.obs["state"]
    assert state.shape == (256, 6)
    np.testing.assert_array_equal(np.diff(state, axis=1), 1)  # consecutive steps of the stream
    np.testing.assert_array_equal(batch.is_first, np.isin(state, list(STARTS)))
    np.testing.assert_array_equal(batch.is_last, np.isin(state, list(ENDS)))
    np.testing.assert_array_equal(batch.is_terminal, np.isin(state, list(TERMINAL_ENDS)))
    # The other fields travel with their step.
    expected_image = np.broadcast_to((state % 256)[..., None, None, None], (256, 6, 4, 4, 3))
    np.testing.assert_array_equal(batch.obs["image"], expected_image)
    expected_action = np.where(batch.is_first[..., None], 0, np.stack([state, -state], axis=-1))
    np.testing.assert_array_equal(batch.action, expected_action)
    np.testing.assert_array_equal(batch.reward, np.where(batch.is_first, 0, state / 10).astype(np.float32))
    # Windows do cross boundaries, and run from a completed episode into the one in progress.
    assert batch.is_first[:, 1:].any()
    assert ((state[:, 0] < 20) & (state[:, -1] >= 20)).any()


def test_no_window_starts_with_fewer_than_length_steps_left():
    buffer = ReplayBuffer(seed=2)
    fill(buffer, LENGTHS, ongoing=2)

    starts = buffer.sample(64, 21).obs["state"][:, 0]
    assert set(starts.tolist()) == {0, 1}
    np.testing.assert_array_equal(buffer.sample(8, 22).obs["state"], np.tile(np.arange(22), (8, 1)))
    with pytest.raises(ValueError, match="holds only 22 steps"):
        buffer.sample(1, 23)


def test_too_few_steps_is_a_clear_error():
    buffer = ReplayBuffer()
    with pytest.raises(ValueError, match="holds only 0 steps"):
        buffer.sample(4, 1)
    fill(buffer, [3])
    with pytest.raises(ValueError, match="windows of 4 steps.*only 3 steps"):
        buffer.sample(4, 4)


def test_dtypes_are_kept():
    buffer = ReplayBuffer()
    fill(buffer, [3, 300], ongoing=1)
    batch = buffer.sample(4, 8)
    assert batch.obs["image"].dtype == np.uint8
    assert batch.obs["state"].dtype == np.int64
    assert batch.action.dtype == np.float32 and batch.reward.dtype == np.float32
    assert batch.is_first.dtype == batch.is_last.dtype == batch.is_terminal.dtype == np.bool_
    assert all(episode["image"].dtype == np.uint8 for episode in buffer.episodes())
    assert batch.to_torch().obs["image"].dtype.is_floating_point is False


def test_sampling_is_deterministic_given_the_seed():
    first, second, other = ReplayBuffer(seed=7), ReplayBuffer(seed=7), ReplayBuffer(seed=8)
    for buffer in (first, second, other):
        fill(buffer, LENGTHS, ongoing=2)
    assert_batches_equal(first.sample(16, 4), second.sample(16, 4))
    assert_batches_equal(first.sample(16, 4), second.sample(16, 4))
    assert not np.array_equal(first.sample(16, 4).obs["state"], other.sample(16, 4).obs["state"])


def test_interleaved_environments_keep_their_episodes_apart():
    # Env e plays episodes of e + 2 steps; its values are 1000 * e + its own step counter.
    num_envs, num_steps = 3, 30
    buffer = ReplayBuffer(num_envs=num_envs, seed=3)
    for t in range(num_steps):
        steps = []
        for env in range(num_envs):
            length = env + 2
            position = t % length
            steps.append(make_step(1000 * env + t, first=position == 0, last=position == length - 1))
        buffer.add_batch({key: np.stack([step[key] for step in steps]) for key in steps[0]})

    assert len(buffer) == num_envs * num_steps
    episodes = list(buffer.episodes())
    assert buffer.num_episodes == len(episodes) == sum(num_steps // (env + 2) for env in range(num_envs))
    for episode in episodes:
        env = int(episode["state"][0]) // 1000
        assert len(episode["state"]) == env + 2
        np.testing.assert_array_equal(np.diff(episode["state"]), 1)
        np.testing.assert_array_equal(episode["is_first"], np.arange(env + 2) == 0)
        np.testing.assert_array_equal(episode["is_last"], np.arange(env + 2) == env + 1)
    # Episodes are kept in the order they completed: by time step, then by env at the same step.
    last_values = [int(episode["state"][-1]) for episode in episodes]
    completion = [(value % 1000, value // 1000) for value in last_values]
    assert completion == sorted(completion)

    # Inside a window, each next step either continues the same episode or starts a new one.
    batch = buffer.sample(128, 10)
    state = batch.obs["state"]
    continues = state[:, 1:] == state[:, :-1] + 1
    np.testing.assert_array_equal(continues | batch.is_first[:, 1:], True)
    assert batch.is_first[:, 1:].any()


def test_a_new_episode_before_the_old_one_ended_truncates_it():
    buffer = ReplayBuffer()
    fill(buffer, [], ongoing=3)
    buffer.add(make_step(10, first=True, last=True))
    first, second = buffer.episodes()
    np.testing.assert_array_equal(first["state"], [0, 1, 2])
    np.testing.assert_array_equal(first["is_last"], [False, False, True])
    assert not first["is_terminal"].any()  # truncated, not terminated
    np.testing.assert_array_equal(second["state"], [10])


def test_bad_steps_are_refused_clearly():
    buffer = ReplayBuffer(num_envs=2)
    with pytest.raises(ValueError, match="must begin with a step whose is_first is True"):
        buffer.add(make_step(0, first=False))
    with pytest.raises(ValueError, match="missing"):
        buffer.add({"image": np.zeros((4, 4, 3), np.uint8), "is_first": True})
    buffer.add(make_step(0, first=True))
    wrong_shape = make_step(1, first=False) | {"image": np.zeros((8, 8, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"step\['image'\] has shape"):
        buffer.add(wrong_shape)
    float_image = make_step(1, first=False) | {"image": np.zeros((4, 4, 3), np.float32)}
    with pytest.raises(ValueError, match="dtype float32"):
        buffer.add(float_image)
    with pytest.raises(ValueError, match="env_index"):
        buffer.add(make_step(1, first=True), env_index=2)
    with pytest.raises(ValueError, match="leading dimension"):
        buffer.add_batch(make_step(1, first=True))


def test_capacity_evicts_the_oldest_episodes_whole():
    buffer = ReplayBuffer(capacity=10)
    value = 0
    for length in [4, 4, 4, 3, 5, 2]:
        for step in episode_steps(value, length):
            buffer.add(step)
            assert len(buffer) <= 10
        value += length
    # 22 steps went in; the newest whole episodes that fit remain: lengths 3, 5, 2 from value 12.
    assert len(buffer) == 10 and buffer.num_episodes == 3
    np.testing.assert_array_equal(
        np.concatenate([episode["state"] for episode in buffer.episodes()]), np.arange(12, 22)
    )
    np.testing.assert_array_equal(buffer.sample(4, 10).obs["state"], np.tile(np.arange(12, 22), (4, 1)))
    assert buffer.num_steps_added == 22 and buffer.num_episodes_added == 6


def test_capacity_eviction_in_a_long_run_stays_correct():
    # Many wrap-arounds of the ring: the content is always the newest whole episodes.
    buffer = ReplayBuffer(capacity=50, seed=4)
    rng = np.random.default_rng(0)
    value, lengths = 0, []
    for _ in range(120):
        length = int(rng.integers(1, 12))
        fill(buffer, [length], start=value)
        value += length
        lengths.append(length)
        kept = np.concatenate([episode["state"] for episode in buffer.episodes()])
        np.testing.assert_array_equal(kept, np.arange(value - len(kept), value))
        assert len(kept) <= 50
        if len(lengths) > buffer.num_episodes:  # something was evicted: the next older did not fit
            assert len(kept) + lengths[-buffer.num_episodes - 1] > 50
    state = buffer.sample(64, 8).obs["state"]
    np.testing.assert_array_equal(np.diff(state, axis=1), 1)


def test_episode_files_are_plain_npz(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    fill(buffer, [4, 3], ongoing=2)
    names = sorted(path.name for path in (tmp_path / "episodes").iterdir())
    assert names == ["000000-4.npz", "000001-3.npz"]
    with np.load(tmp_path / "episodes" / "000001-3.npz", allow_pickle=False) as episode:
        assert episode["image"].dtype == np.uint8
        np.testing.assert_array_equal(episode["state"], [4, 5, 6])


def test_round_trip_restores_content_and_future_samples(tmp_path):
    original = ReplayBuffer(tmp_path / "run", num_envs=2, seed=5)
    value = fill_two_envs(original, 0, 17)
    original.sample(8, 5)  # the sampler's position must survive too
    state = json.loads(json.dumps(original.checkpoint()))  # the state is plain JSON
    shutil.copytree(tmp_path / "run", tmp_path / "copy")

    restored = ReplayBuffer.restore(tmp_path / "copy", state)
    assert len(restored) == len(original) and restored.num_episodes == original.num_episodes
    assert restored.num_steps_added == original.num_steps_added
    assert_episodes_equal(restored, original)
    for _ in range(3):
        assert_batches_equal(restored.sample(8, 5), original.sample(8, 5))

    # Both carry on identically, episodes in progress included.
    fill_two_envs(original, value, 9)
    fill_two_envs(restored, value, 9)
    assert_episodes_equal(restored, original)
    assert_batches_equal(restored.sample(16, 7), original.sample(16, 7))
    assert sorted(path.name for path in (tmp_path / "copy" / "episodes").iterdir()) == sorted(
        path.name for path in (tmp_path / "run" / "episodes").iterdir()
    )


def fill_two_envs(buffer: ReplayBuffer, start: int, num_steps: int) -> int:
    """Env 0 plays episodes of 4 steps and env 1 of 3 steps, from global step `start`."""
    for t in range(start, start + num_steps):
        for env, length in enumerate((4, 3)):
            position = t % length
            step = make_step(100 * t + env, first=position == 0, last=position == length - 1)
            buffer.add(step, env_index=env)
    return start + num_steps


def test_save_writes_a_state_that_restore_finds(tmp_path):
    buffer = ReplayBuffer(tmp_path, seed=6)
    fill(buffer, LENGTHS, ongoing=2)
    buffer.save()
    restored = ReplayBuffer.restore(tmp_path)
    assert_episodes_equal(restored, buffer)
    assert_batches_equal(restored.sample(8, 6), buffer.sample(8, 6))


def test_restore_ignores_what_a_crashed_run_wrote_after_the_checkpoint(tmp_path):
    # The run that never crashed, for reference, in memory.
    after_checkpoint = episode_steps(7, 5)[2:] + episode_steps(12, 2)
    reference = ReplayBuffer(seed=9)
    fill(reference, [4, 3], ongoing=2)
    for step in after_checkpoint:
        reference.add(step)

    run = ReplayBuffer(tmp_path, seed=9)
    fill(run, [4, 3], ongoing=2)
    state = run.checkpoint()
    # After the checkpoint: the episode in progress ends (5 steps), another completes, a later
    # checkpoint is taken but its state never reaches the caller, and the run dies.
    for step in after_checkpoint:
        run.add(step)
    run.checkpoint()
    assert len(list((tmp_path / "episodes").iterdir())) == 4

    restored = ReplayBuffer.restore(tmp_path, state)
    assert len(restored) == 9 and restored.num_episodes == 2
    assert sorted(path.name for path in (tmp_path / "episodes").iterdir()) == ["000000-4.npz", "000001-3.npz"]
    np.testing.assert_array_equal(restored.sample(2, 9).obs["state"], np.tile(np.arange(9), (2, 1)))

    # The resumed run writes the same episodes again: nothing lost, nothing twice.
    for step in after_checkpoint:
        restored.add(step)
    assert sorted(path.name for path in (tmp_path / "episodes").iterdir()) == [
        "000000-4.npz",
        "000001-3.npz",
        "000002-5.npz",
        "000003-2.npz",
    ]
    assert_episodes_equal(restored, reference)
    assert_batches_equal(restored.sample(8, 6), reference.sample(8, 6))


def test_restarted_environments_truncate_the_restored_episode(tmp_path):
    run = ReplayBuffer(tmp_path)
    fill(run, [4], ongoing=3)
    restored = ReplayBuffer.restore(tmp_path, run.checkpoint())
    # After a crash the environment starts afresh: the restored episode is closed as truncated.
    for step in episode_steps(100, 2):
        restored.add(step)
    assert sorted(path.name for path in (tmp_path / "episodes").iterdir()) == [
        "000000-4.npz",
        "000001-3.npz",
        "000002-2.npz",
    ]
    truncated = list(restored.episodes())[1]
    np.testing.assert_array_equal(truncated["is_last"], [False, False, True])
    assert not truncated["is_terminal"].any()


def test_state_dict_without_checkpoint_cannot_restore_steps_in_progress(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    fill(buffer, [3], ongoing=2)
    with pytest.raises(ValueError, match="checkpoint"):
        ReplayBuffer.restore(tmp_path, buffer.state_dict())
    # Without steps in progress, state_dict() alone is enough.
    buffer.add(make_step(5, first=False, last=True))
    assert ReplayBuffer.restore(tmp_path, buffer.state_dict()).num_episodes == 2


def test_checkpoint_needs_a_directory():
    buffer = ReplayBuffer()
    fill(buffer, [3])
    with pytest.raises(ValueError, match="directory"):
        buffer.checkpoint()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_corrupt_or_missing_file_is_named_in_the_error(tmp_path, damage):
    buffer = ReplayBuffer(tmp_path)
    fill(buffer, [4, 3])
    state = buffer.checkpoint()
    path = tmp_path / "episodes" / "000001-3.npz"
    if damage == "garbage":
        path.write_bytes(b"not an archive at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.unlink()
    with pytest.raises(RunDirectoryError, match="000001-3.npz"):
        ReplayBuffer.restore(tmp_path, state)
    assert (tmp_path / "episodes" / "000000-4.npz").exists()  # a failed restore deletes nothing


def test_a_wrong_length_in_a_file_is_named_in_the_error(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    fill(buffer, [4, 3])
    state = buffer.checkpoint()
    shutil.copy(tmp_path / "episodes" / "000000-4.npz", tmp_path / "episodes" / "000001-3.npz")
    with pytest.raises(RunDirectoryError, match="000001-3.npz.*expected 3 steps"):
        ReplayBuffer.restore(tmp_path, state)

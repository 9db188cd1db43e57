"""Fault injection (issue 25): a short training run killed with SIGKILL at 28 moments, resumed
after each, ends exactly as the same run uninterrupted. The kills (tests/fault_driver.py) land
inside every step of the checkpoint write, while episodes are saved, inside and after metric lines,
after updates, steps and evaluations, and at random moments; the comparison covers the weights,
the optimiser, every counter and random state, the replay (episode files, their content, the
episode in progress), metrics.jsonl line by line, TensorBoard's scalars and the summary."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from wmlab.core.serialization import load_state

DRIVER = Path(__file__).with_name("fault_driver.py")
#: Values that measure wall-clock time: they differ between any two runs.
CLOCK_FIELDS = ("time", "train/steps_per_second")


def arrays_digest(path: Path) -> dict[str, str]:
    with np.load(path, allow_pickle=False) as archive:
        return {
            key: hashlib.sha256(np.ascontiguousarray(archive[key]).tobytes()).hexdigest()
            for key in archive.files
            if key != "checkpoint_token"
        }


def run_record(run_dir: Path) -> dict:
    """Everything a run leaves that must not depend on how often it was killed."""
    checkpoint = run_dir / "checkpoints" / "rank0"
    loop = load_state(checkpoint, "loop")
    counters = dict(loop["counters"])
    counters.pop("elapsed_seconds")
    replay = json.loads(loop["replay"])
    for index, entry in enumerate(replay["ongoing"]):
        token = entry.pop("token")
        if token is not None:
            with np.load(run_dir / "replay" / "rank0" / "ongoing" / f"env{index}.npz") as archive:
                assert str(archive["checkpoint_token"]) == token, run_dir
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in CLOCK_FIELDS:
            line.pop(key, None)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_seconds")
    replay_dir = run_dir / "replay" / "rank0"
    return {
        "agent": load_state(checkpoint, "agent"),
        "counters": counters,
        "rng": {key: value for key, value in loop["rng"].items()},
        "environments": loop["environments"],
        "observations": loop["observations"],
        "replay_state": replay,
        "episodes": {path.name: arrays_digest(path) for path in sorted((replay_dir / "episodes").iterdir())},
        # The snapshot of the episode in progress that the checkpoint refers to (the one before it,
        # env<i>.previous.npz, is a spare whose presence depends on when the run was last resumed).
        "in_progress": {path.name: arrays_digest(path) for path in sorted((replay_dir / "ongoing").glob("env?.npz"))},
        "lines": lines,
        "summary": summary,
        "checkpoints": sorted(path.name for path in (run_dir / "checkpoints").iterdir()),
    }


def assert_equal_nested(first, second, path="") -> None:
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), path
    elif isinstance(first, np.ndarray):
        np.testing.assert_array_equal(first, second, err_msg=path)
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), path
        for key in first:
            assert_equal_nested(first[key], second[key], f"{path}/{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), path
        for index, (a, b) in enumerate(zip(first, second)):
            assert_equal_nested(a, b, f"{path}/{index}")
    else:
        assert first == second, path


def tensorboard_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, None if tag in CLOCK_FIELDS else event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_a_run_killed_28_times_ends_exactly_as_if_never_killed(tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    environment.pop("WMLAB_TEST_KILL_AT", None)
    finished = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reference"]["outcome"] == "exit 0", finished.stderr[-3000:]
    sessions = report["sessions"]
    kills = [session for session in sessions[:-1] if session["outcome"] == "killed"]
    assert not [session for session in sessions[:-1] if session["outcome"] not in ("killed", "exit 0")], (
        finished.stderr[-3000:]
    )
    assert len(kills) >= 20, sessions
    assert sessions[-1]["outcome"] == "exit 0", finished.stderr[-3000:]

    reference, killed = run_record(tmp_path / "reference"), run_record(tmp_path / "killed")
    assert killed["counters"]["env_steps"] == 800 and killed["counters"]["updates"] > 0
    assert len(killed["episodes"]) == len(reference["episodes"]) > 0
    assert killed["checkpoints"] == ["rank0"]
    assert_equal_nested(killed, reference)
    assert tensorboard_scalars(tmp_path / "killed") == tensorboard_scalars(tmp_path / "reference")
    # What the report in docs/reliability.md counts.
    print(
        json.dumps(
            {
                "kills": len(kills),
                "points": sorted({session["kill"] for session in kills}),
                "seconds": report["seconds"],
            }
        )
    )

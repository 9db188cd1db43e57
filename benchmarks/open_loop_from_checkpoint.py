"""Write the open-loop videos and reward figure of a run from its latest checkpoint, e.g. for a run
that was stopped before its end (the agent writes them itself when a run finishes).

    python benchmarks/open_loop_from_checkpoint.py runs/dreamer-v3-size1m-two-rooms-dense

Reads the completed episodes under RUN_DIR/replay/rank0/episodes into an in-memory buffer (the
run's files are not changed) and writes RUN_DIR/videos/open_loop_*.gif and RUN_DIR/figures/open_loop_*.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wmlab.data.replay import ReplayBuffer
from wmlab.eval.open_loop import write_open_loop_report
from wmlab.runs.directory import load_trained_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--length", type=int, default=50)
    arguments = parser.parse_args()
    _, agent = load_trained_agent(arguments.run_dir)
    replay = ReplayBuffer(None, seed=0)
    for path in sorted((arguments.run_dir / "replay" / "rank0" / "episodes").glob("*.npz")):
        with np.load(path) as episode:
            columns = {key: episode[key] for key in episode.files}
        for index in range(len(columns["reward"])):
            replay.add({key: value[index] for key, value in columns.items()})
    for path in write_open_loop_report(
        agent.world_model, replay, arguments.run_dir, arguments.sequences, arguments.length
    ):
        print(path)


if __name__ == "__main__":
    main()

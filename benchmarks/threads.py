"""One torch thread against two, with and without a competing busy process (issue 24).

    python benchmarks/threads.py --updates 10

Times `--updates` updates of the main job's PlaNet world model (wmlab pipeline main) on random
64 x 64 frames, B x T = 16 x 16, for 1 and 2 torch threads, first alone, then beside
`python -c "while True: pass"` (a program holding one core, as on a laptop). Prints the median
wall seconds per update and the load average before and after each case: on a shared machine the
numbers mean only what the load beside them allows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def time_updates(threads: int, updates: int) -> dict:
    import torch

    from wmlab.agents.planet.agent import PlaNetAgent
    from wmlab.core.types import Batch
    from wmlab.envs.adapter import make_env
    from wmlab.pipelines.main_job import MAIN_AGENT, MAIN_ENV, MAIN_ENV_KWARGS

    torch.set_num_threads(threads)
    env = make_env(MAIN_ENV, **MAIN_ENV_KWARGS)
    agent = PlaNetAgent(MAIN_AGENT, env.observation_space, env.action_space, seed=0)
    B, T = 16, 16
    rng = np.random.default_rng(0)
    batch = Batch(
        obs={"image": rng.integers(0, 255, (B, T, 64, 64, 3), dtype=np.uint8)},
        action=rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        reward=np.zeros((B, T), np.float32),
        is_first=np.zeros((B, T), bool),
        is_last=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )
    agent.update(batch)  # warm-up
    walls, cpus = [], []
    for _ in range(updates):
        wall, cpu = time.perf_counter(), time.process_time()
        agent.update(batch)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"threads": threads, "median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in a fresh process
    arguments = parser.parse_args()
    if arguments.case:
        print(json.dumps(time_updates(int(arguments.case), arguments.updates)))
        return
    rows = []
    for competing in (False, True):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing else None
        try:
            for threads in (1, 2):
                before = os.getloadavg()[0]
                output = subprocess.run(
                    [sys.executable, __file__, "--case", str(threads), "--updates", str(arguments.updates)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                ).stdout
                row = {
                    **json.loads(output.strip().splitlines()[-1]),
                    "competing_process": competing,
                    "load_before": before,
                    "load_after": os.getloadavg()[0],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


if __name__ == "__main__":
    main()

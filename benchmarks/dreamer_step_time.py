"""Wall time of one Dreamer update (world model + actor + critic) on random data, on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/dreamer_step_time.py --version v3 --size size1m --obs pixels --batch 16 --length 64

Prints one JSON line: parameters and the median seconds per update over `--repeats` updates after
`--warmup` updates.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import numpy as np
import torch
from gymnasium import spaces
from step_timing import timed_calls

from wmlab.agents.dreamer.agent import DreamerAgent
from wmlab.agents.dreamer.config import PRESETS
from wmlab.core.types import Batch
from wmlab.models.rssm import SIZES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v3", choices=sorted(PRESETS))
    parser.add_argument(
        "--size", default=None, help="RSSM size preset (v3 default size1m; v1/v2 use their papers' widths)"
    )
    parser.add_argument("--obs", default="pixels", choices=["pixels", "vectors"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    config = PRESETS[arguments.version]()
    if arguments.size is not None:
        config = replace(
            config,
            model=replace(
                config.model,
                size=SIZES[arguments.size],
            ),
        )
    if arguments.obs == "pixels":
        observation_space = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    else:
        observation_space = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (5,), np.float32)})
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    agent = DreamerAgent(config, observation_space, action_space, seed=0)
    parameters = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in agent.modules().items()
        if name != "slow_critic"
    }

    rng = np.random.default_rng(0)
    B, T = arguments.batch, arguments.length
    obs = (
        {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)}
        if arguments.obs == "pixels"
        else {"vector": rng.normal(size=(B, T, 5)).astype(np.float32)}
    )
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    batch = Batch(
        obs,
        rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
        rng.normal(size=(B, T)).astype(np.float32),
        is_first,
        np.zeros((B, T), bool),
        np.zeros((B, T), bool),
    )
    times = timed_calls(lambda: agent.update(batch), arguments.warmup, arguments.repeats)
    print(
        json.dumps(
            {
                "version": arguments.version,
                "size": config.model.size,
                "obs": arguments.obs,
                "batch": B,
                "length": T,
                "threads": arguments.threads,
                "parameters": parameters,
                "parameters_total": sum(parameters.values()),
                "seconds_per_update_median": round(statistics.median(times), 4),
                "seconds_per_update_min": round(min(times), 4),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Eager against compiled imagination (`--agent.compile`) for one Dreamer update, alternating in
one process so that both see the same machine load; prints the medians and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/dreamer_compile.py 1.0   # REINFORCE (dreamer-cpu's actor)
    OMP_NUM_THREADS=1 python benchmarks/dreamer_compile.py 0.0   # returns backpropagated through the dynamics
"""

import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.dreamer.agent import DreamerAgent
from wmlab.agents.dreamer.config import PRESETS
from wmlab.core.types import Batch

torch.set_num_threads(1)
rho = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
config = replace(PRESETS["v3-cpu"](), reinforce_continuous=rho)
space = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (5,), np.float32)})
box = spaces.Box(-1.0, 1.0, (1,), np.float32)
eager = DreamerAgent(config, space, box, seed=0)
compiled = DreamerAgent(replace(config, compile=True), space, box, seed=0)
rng = np.random.default_rng(0)
B, T = 16, 16
is_first = np.zeros((B, T), bool)
is_first[:, 0] = True
batch = Batch(
    {"vector": rng.normal(size=(B, T, 5)).astype(np.float32)},
    rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
    rng.normal(size=(B, T)).astype(np.float32),
    is_first,
    np.zeros((B, T), bool),
    np.zeros((B, T), bool),
)
t = time.perf_counter()
compiled.update(batch)
print("first compiled update (compiles)", round(time.perf_counter() - t, 1), "s", flush=True)
eager.update(batch)
compiled.update(batch)
times = {"eager": [], "compiled": []}
for r in range(8):
    for name, agent in (
        (("eager", eager), ("compiled", compiled)) if r % 2 == 0 else (("compiled", compiled), ("eager", eager))
    ):
        t = time.perf_counter()
        agent.update(batch)
        times[name].append(time.perf_counter() - t)
e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
print(f"rho={rho} eager {e:.3f} s, compiled {c:.3f} s, ratio {e / c:.2f}")

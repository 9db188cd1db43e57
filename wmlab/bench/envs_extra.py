"""`wmlab bench envs`, second half: what the MiniGrid and Crafter adapters cost (the first half,
dm_control and Atari, is wmlab/bench/envs.py; wmlab/bench/envs_command.py runs both).

Overhead. For MiniGrid from 64 x 64 RGB and for Crafter, the same random action sequence is
stepped through `wmlab.envs.make_env` and through the library alone (MiniGrid: gymnasium.make
plus its own RGBImgObsWrapper and ImgObsWrapper; Crafter: crafter.Env with its old API), in the
same process, alternating which goes first, for several repetitions. Both start each repetition
from the same seed, so they simulate the same episodes. Only `step` calls are timed (resets, a
world generation in Crafter, are left out: they are rare and the adapters add nothing to them).
Overhead is the median over repetitions of raw / wmlab steps per second, minus 1, in percent;
the target is under 10 %.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wmlab.envs.adapter import make_env

#: The MiniGrid task measured: an 8 x 8 grid, drawn at 8 pixels per cell, is exactly 64 x 64 in
#: both pipelines, so they render the same image.
MINIGRID_TASK = "MiniGrid-DoorKey-8x8-v0"
DEFAULT_STEPS = {"minigrid": 2000, "crafter": 500}
DEFAULT_REPETITIONS = 5


# ---------------------------------------------------------------------- the two pipelines


class _RawMiniGrid:
    """MiniGrid alone: its own wrappers give the 64 x 64 full-grid RGB image."""

    def __init__(self) -> None:
        import gymnasium
        from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper

        self.env = ImgObsWrapper(RGBImgObsWrapper(gymnasium.make(MINIGRID_TASK), tile_size=8))

    def reset(self, seed: int | None) -> None:
        self.env.reset(seed=seed)

    def step(self, action: int) -> bool:
        _, _, terminated, truncated, _ = self.env.step(action)
        return terminated or truncated


class _RawCrafter:
    """crafter.Env alone, with its gym-era API; a seed means a new world sequence, as in wmlab."""

    def __init__(self) -> None:
        import crafter

        self._crafter = crafter
        self.env = crafter.Env()

    def reset(self, seed: int | None) -> None:
        if seed is not None:
            self.env = self._crafter.Env(seed=seed)
        self.env.reset()

    def step(self, action: int) -> bool:
        return self.env.step(action)[2]


class _Wmlab:
    def __init__(self, env_id: str) -> None:
        self.env = make_env(env_id)

    def reset(self, seed: int | None) -> None:
        self.env.reset(seed=seed)

    def step(self, action: int) -> bool:
        _, _, terminated, truncated, _ = self.env.step(action)
        return terminated or truncated


#: suite -> (wmlab id, raw pipeline, number of actions)
MEASURED: dict[str, tuple[str, Callable[[], Any], int]] = {
    "minigrid": (f"minigrid:{MINIGRID_TASK}", _RawMiniGrid, 7),
    "crafter": ("crafter:reward", _RawCrafter, 17),
}


def _steps_per_second(pipeline, actions: np.ndarray, seed: int) -> float:
    pipeline.reset(seed)
    stepping = 0.0
    for action in actions.tolist():
        start = time.perf_counter()
        done = pipeline.step(action)
        stepping += time.perf_counter() - start
        if done:
            pipeline.reset(None)
    return len(actions) / stepping


def measure_overhead(suite: str, steps: int, repetitions: int, seed: int = 0) -> dict[str, Any]:
    """One result row: median steps per second of each pipeline and the median overhead."""
    env_id, make_raw, num_actions = MEASURED[suite]
    pipelines = {"wmlab": _Wmlab(env_id), "raw": make_raw()}
    rng = np.random.default_rng(seed)
    # Untimed warm-up: MiniGrid caches rendered tiles for the whole process, so whichever
    # pipeline ran first would otherwise pay for filling the cache.
    warm_up = rng.integers(0, num_actions, size=min(steps, 200))
    for pipeline in pipelines.values():
        _steps_per_second(pipeline, warm_up, seed)
    speeds: dict[str, list[float]] = {"wmlab": [], "raw": []}
    for repetition in range(repetitions):
        actions = rng.integers(0, num_actions, size=steps)
        order = ("wmlab", "raw") if repetition % 2 == 0 else ("raw", "wmlab")
        for name in order:
            speeds[name].append(_steps_per_second(pipelines[name], actions, seed + repetition))
    ratios = [raw / wrapped for raw, wrapped in zip(speeds["raw"], speeds["wmlab"])]
    return {
        "suite": suite,
        "wmlab_steps_per_second": statistics.median(speeds["wmlab"]),
        "raw_steps_per_second": statistics.median(speeds["raw"]),
        "overhead_percent": 100.0 * (statistics.median(ratios) - 1.0),
    }


def run_envs_benchmark(
    suites: tuple[str, ...] = ("minigrid", "crafter"),
    steps: dict[str, int] | None = None,
    repetitions: int = DEFAULT_REPETITIONS,
    quick: bool = False,
) -> dict[str, Any]:
    """Rows {"suite", "wmlab_steps_per_second", "raw_steps_per_second", "overhead_percent"}."""
    steps = dict(DEFAULT_STEPS, **(steps or {}))
    if quick:
        steps, repetitions = {suite: 20 for suite in steps}, 1
    rows = [measure_overhead(suite, steps[suite], repetitions) for suite in suites]
    settings = {
        "suites": {suite: MEASURED[suite][0] for suite in suites},
        "steps_per_repetition": {suite: steps[suite] for suite in suites},
        "repetitions": repetitions,
        "quick": quick,
    }
    return {"rows": rows, "settings": settings}

"""`wmlab bench envs`: what wmlab's environment layer costs, in environment steps per second.

Each row times the same work twice in one process: through wmlab (`make_env`, with the dict
observation wrapper the training loop sees) and through the raw library, written as the minimal
loop that produces the same observations:
- dm_control from pixels: the suite task with the same action repeat, the same 64 x 64 frame from
  the same camera with the same render flags (one dm_control `Camera` kept for the run, as wmlab
  keeps one), reset at dm_control's own 1000-step limit;
- Atari 64 x 64: ale-py's ALE driven directly — 4 frames per step, the last two max-pooled, the
  same area resize, the same no-op starts.
Both loops play the same pre-drawn random actions from the same seed, so they visit the same
states. Within a repetition the two loops take turns in short chunks (wmlab-raw, raw-wmlab, ...),
so that a change of load on a shared machine falls on both; each repetition gives a ratio of
times, and a row reports the median ratio as `overhead_percent` = (median wmlab time / raw
time - 1) * 100, beside the median steps per second of each. A second table times one
dm_control frame with and without shadows, reflections and skybox (blocks of frames taken in
turn, the median block).

Results: {"settings", "rows": [{"suite", "wmlab_steps_per_second", "raw_steps_per_second",
"overhead_percent", ...}], "render": [...], "tables": [...]}. Other suites append rows (see
`wmlab/bench/envs_extra.py`) and rebuild the tables with `envs_tables(results)`.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from wmlab.core.progress import StageProgress
from wmlab.envs import make_env
from wmlab.envs.atari import MAX_FRAMES, NOOP_MAX, ale_game_name, area_resizer
from wmlab.envs.dmc import DEFAULT_ACTION_REPEAT, DEFAULT_CAMERA, PLANET_ACTION_REPEAT, make_dmc, parse_task


@dataclass(frozen=True)
class EnvCase:
    """One benchmark row: a wmlab id with its keyword arguments, timed against the raw library."""

    suite: str
    env_id: str
    kwargs: dict[str, Any]
    chunk_steps: int  # agent steps timed in one go before switching to the other loop
    chunks: int  # chunks per repetition (full benchmark); quick runs time two


CASES = (
    EnvCase("dmc pixels cartpole-swingup (repeat 8)", "dmc:cartpole-swingup", {"observation": "pixels"}, 50, 12),
    EnvCase("dmc pixels walker-walk (repeat 2)", "dmc:walker-walk", {"observation": "pixels"}, 50, 12),
    EnvCase("atari Pong 64x64 RGB", "atari:Pong", {}, 200, 10),
    EnvCase("atari Pong 64x64 grayscale", "atari:Pong", {"grayscale": True}, 200, 10),
)
QUICK_CHUNKS = 2
QUICK_CHUNK_STEPS = 20
RENDER_TASKS = ("cartpole-swingup", "walker-walk", "cheetah-run")


class Loop:
    """An environment driven by pre-drawn actions: `run(steps)` times the next `steps` of them."""

    def __init__(self, step: Callable[[Any], None], actions: list[Any], close: Callable[[], None]):
        self._step, self._actions, self._close = step, actions, close
        self._position = 0

    def run(self, steps: int) -> float:
        actions = self._actions[self._position : self._position + steps]
        self._position += steps
        step = self._step
        start = time.perf_counter()
        for action in actions:
            step(action)
        return time.perf_counter() - start

    def close(self) -> None:
        self._close()


def run_envs_benchmark(quick: bool = False, seeds: int = 5, progress: bool = True) -> dict[str, Any]:
    """Time every case through wmlab and raw, `seeds` repetitions each (repetition r uses seed r)."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    started = time.time()
    rows = []
    render_rows = []
    frames = 20 if quick else 100
    with StageProgress(progress) as stages:
        advance = stages.task("envs", len(CASES) * seeds + len(RENDER_TASKS))
        for case in CASES:
            advance(0, case.suite)
            rows.append(_measure_case(case, quick, seeds, advance))
        for task in RENDER_TASKS:
            advance(0, f"render {task}")
            render_rows.append(_measure_render(task, frames))
            advance(1)
    results = {
        "settings": {
            "quick": quick,
            "repetitions": seeds,
            "steps_per_run": {case.suite: _chunking(case, quick)[0] * _chunking(case, quick)[1] for case in CASES},
            "chunk_steps": {case.suite: _chunking(case, quick)[0] for case in CASES},
            "frames_per_render_block": frames,
            "order": "each repetition times wmlab and raw in alternating chunks (wmlab-raw, raw-wmlab, ...) on the same actions",
            "statistic": "median over repetitions of (wmlab time / raw time); steps per second are medians",
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "gl_renderer": _gl_renderer(),
        },
        "rows": rows,
        "render": render_rows,
    }
    results["tables"] = envs_tables(results)
    results["wall_time_s"] = round(time.time() - started, 1)
    return results


# ----------------------------------------------------------------------------------------------
# Measuring


def _chunking(case: EnvCase, quick: bool) -> tuple[int, int]:
    return (QUICK_CHUNK_STEPS, QUICK_CHUNKS) if quick else (case.chunk_steps, case.chunks)


def _measure_case(case: EnvCase, quick: bool, repetitions: int, advance: Callable[..., None]) -> dict[str, Any]:
    chunk_steps, chunks = _chunking(case, quick)
    steps = chunk_steps * chunks
    wmlab_times, raw_times = [], []
    for repetition in range(repetitions):
        loops = {"wmlab": _wmlab_loop(case, repetition, steps), "raw": _raw_loop(case, repetition, steps)}
        seconds = {"wmlab": 0.0, "raw": 0.0}
        # Alternating short chunks spreads any change of load on a shared machine over both loops.
        for chunk in range(chunks):
            for name in ("wmlab", "raw") if chunk % 2 == 0 else ("raw", "wmlab"):
                seconds[name] += loops[name].run(chunk_steps)
        for loop in loops.values():
            loop.close()
        wmlab_times.append(seconds["wmlab"])
        raw_times.append(seconds["raw"])
        advance(1)
    ratios = [mine / raw for mine, raw in zip(wmlab_times, raw_times)]
    return {
        "suite": case.suite,
        "env_id": case.env_id,
        "kwargs": case.kwargs,
        "wmlab_steps_per_second": round(statistics.median(steps / seconds for seconds in wmlab_times), 1),
        "raw_steps_per_second": round(statistics.median(steps / seconds for seconds in raw_times), 1),
        "overhead_percent": round((statistics.median(ratios) - 1) * 100, 1),
        "ratios": [round(ratio, 4) for ratio in ratios],
        "steps_per_run": steps,
    }


def _actions(sampler: Callable[[np.random.Generator], Any], steps: int, seed: int) -> list[Any]:
    generator = np.random.default_rng(seed)
    return [sampler(generator) for _ in range(steps)]


def _wmlab_loop(case: EnvCase, seed: int, steps: int) -> Loop:
    env = make_env(case.env_id, seed=seed, **case.kwargs)

    def step(action: Any) -> None:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    return Loop(step, _actions(_sampler(env.action_space), steps, seed), env.close)


def _raw_loop(case: EnvCase, seed: int, steps: int) -> Loop:
    if case.env_id.startswith("dmc:"):
        return _raw_dmc_loop(case, seed, steps)
    return _raw_atari_loop(case, seed, steps)


def _raw_dmc_loop(case: EnvCase, seed: int, steps: int) -> Loop:
    import mujoco
    from dm_control import suite
    from dm_control.mujoco.engine import Camera

    domain, task = parse_task(case.env_id.removeprefix("dmc:"))
    repeat = case.kwargs.get("action_repeat") or PLANET_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)
    size = case.kwargs.get("size", 64)
    env = suite.load(domain, task, task_kwargs={"random": seed})
    camera = Camera(env.physics, height=size, width=size, camera_id=DEFAULT_CAMERA.get(domain, 0))
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
        camera.scene.flags[flag] = 0
    env.reset()
    camera.render().copy()

    def step(action: np.ndarray) -> None:
        for _ in range(repeat):
            time_step = env.step(action)
            if time_step.last():
                break
        camera.render().copy()
        if time_step.last():
            env.reset()
            camera.render().copy()

    def close() -> None:
        camera.scene.free()
        env.close()

    spec = env.action_spec()
    return Loop(step, _actions(_sampler_box(spec.minimum, spec.maximum), steps, seed), close)


def _raw_atari_loop(case: EnvCase, seed: int, steps: int) -> Loop:
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    game = ale_game_name(case.env_id.removeprefix("atari:"))
    grayscale = case.kwargs.get("grayscale", False)
    size = case.kwargs.get("size", 64)
    env = gymnasium.make(
        f"ALE/{game}-v5",
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=MAX_FRAMES,
    )
    ale = env.unwrapped.ale
    legal = ale.getMinimalActionSet()
    grab = ale.getScreenGrayscale if grayscale else ale.getScreenRGB
    height, width = ale.getScreenDims()
    shape = (height, width) if grayscale else (height, width, 3)
    previous, last = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    resize = area_resizer(size, 1 if grayscale else 3)[0]
    # Drawn as wmlab's AtariEnv draws them (the emulator's seed first, then each reset's no-op
    # count), so both loops start their games alike.
    noops = np.random.default_rng(seed)

    def start_game(emulator_seed: int | None = None) -> None:
        env.reset(seed=emulator_seed)
        for _ in range(int(noops.integers(1, NOOP_MAX + 1))):
            ale.act(ale_py.Action.NOOP)
            if ale.game_over():
                ale.reset_game()
        grab(last)
        resize(last)

    def step(action: int) -> None:
        pooled = False
        for frame in range(4):
            ale.act(legal[action])
            if ale.game_over():
                break
            if frame == 2:
                grab(previous)
                pooled = True
        grab(last)
        image = resize(np.maximum(previous, last) if pooled else last)
        if grayscale:
            image = image[..., None]
        if ale.game_over():
            start_game()

    start_game(emulator_seed=int(noops.integers(2**31)))
    return Loop(step, _actions(lambda generator: int(generator.integers(len(legal))), steps, seed), env.close)


def _sampler(space) -> Callable[[np.random.Generator], Any]:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return lambda generator: int(generator.integers(space.n))
    return _sampler_box(space.low, space.high)


def _sampler_box(low: np.ndarray, high: np.ndarray) -> Callable[[np.random.Generator], np.ndarray]:
    # float64 draws and then float32, so that wmlab (float32 Box) and raw dm_control see equal actions.
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return lambda generator: generator.uniform(low, high).astype(np.float32)


def _measure_render(task: str, frames: int, blocks: int = 3) -> dict[str, Any]:
    """Milliseconds per frame with the effects on and off: median of blocks taken in turn."""

    environments = {fast: make_dmc(task, observation="state", seed=0, fast_render=fast) for fast in (False, True)}
    for env in environments.values():
        env.reset()
        env.render()  # the first frame opens the GL context
    times: dict[bool, list[float]] = {False: [], True: []}
    for block in range(blocks):
        for fast in (False, True) if block % 2 == 0 else (True, False):
            render = environments[fast]._render_frame
            start = time.perf_counter()
            for _ in range(frames):
                render()
            times[fast].append((time.perf_counter() - start) / frames * 1e3)
    for env in environments.values():
        env.close()
    full, fast = statistics.median(times[False]), statistics.median(times[True])
    return {
        "task": task,
        "size": 64,
        "full_ms_per_frame": round(full, 3),
        "fast_ms_per_frame": round(fast, 3),
        "speedup": round(full / fast, 2),
    }


def _gl_renderer() -> str | None:
    """Which OpenGL implementation rendered the frames (a GPU's driver, or Mesa's llvmpipe)."""
    try:
        from OpenGL import GL

        env = make_dmc("cartpole-swingup", observation="state", seed=0)
        env.reset()
        env.render()
        with env.physics.contexts.gl.make_current() as context:
            name = context.call(GL.glGetString, GL.GL_RENDERER)
        env.close()
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as error:  # the renderer's name is a note in the settings, never a reason to fail
        return f"unknown ({type(error).__name__})"


# ----------------------------------------------------------------------------------------------
# Tables, text and markdown


def envs_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The result tables, rebuilt from "rows" (and "render"), so appended rows show up."""
    tables = [
        {
            "title": "Environment steps per second: wmlab (make_env, dict observations) against the raw library doing the same work",
            "columns": ["suite", "wmlab steps/s", "raw steps/s", "overhead %"],
            "rows": [
                [row["suite"], row["wmlab_steps_per_second"], row["raw_steps_per_second"], row["overhead_percent"]]
                for row in results.get("rows", [])
            ],
        }
    ]
    if results.get("render"):
        tables.append(
            {
                "title": "dm_control 64 x 64 frame time (ms): shadows, reflections, skybox on (dm_control's default) and off (wmlab's default)",
                "columns": ["task", "on", "off", "speed-up"],
                "rows": [
                    [row["task"], row["full_ms_per_frame"], row["fast_ms_per_frame"], row["speedup"]]
                    for row in results["render"]
                ],
            }
        )
    return tables


def format_envs_table(results: dict[str, Any]) -> str:
    """The result tables as aligned plain text for the terminal."""
    blocks = []
    for table in envs_tables(results):
        rows = [[str(value) for value in row] for row in [table["columns"], *table["rows"]]]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = [_aligned(row, widths) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        blocks.append(table["title"] + "\n" + "\n".join(lines))
    settings = results.get("settings", {})
    blocks.append(
        f"{settings.get('repetitions', '?')} repetitions per row; GL renderer: {settings.get('gl_renderer', '?')}; "
        f"wall time: {results.get('wall_time_s', '?')} s"
    )
    return "\n\n".join(blocks)


def _aligned(row: list[str], widths: list[int]) -> str:
    # Names to the left, numbers to the right.
    cells = [row[0].ljust(widths[0])] + [value.rjust(width) for value, width in zip(row[1:], widths[1:])]
    return "  ".join(cells)


def envs_markdown(results: dict[str, Any]) -> str:
    """A docs/benchmarks.md section with the settings and both tables."""
    settings = results["settings"]
    steps = ", ".join(f"{suite} {count}" for suite, count in settings["steps_per_run"].items())
    lines = [
        "## Environment throughput (wmlab against the raw libraries)",
        "",
        f"Command: `wmlab bench envs{' --quick' if settings['quick'] else ''} --seeds {settings['repetitions']}` — "
        f"{settings['repetitions']} repetitions per row, agent steps per repetition: {steps}; "
        f"MUJOCO_GL={settings['mujoco_gl']}, GL renderer {settings['gl_renderer']}; wall time {results.get('wall_time_s', '?')} s. "
        "Overhead = median over repetitions of wmlab time / raw time, minus 1.",
        "",
    ]
    for table in envs_tables(results):
        lines += [
            f"### {table['title']}",
            "",
            "| " + " | ".join(table["columns"]) + " |",
            "|" + "---|" * len(table["columns"]),
        ]
        lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table["rows"]]
        lines.append("")
    return "\n".join(lines)

"""Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed.), chapter 8, measured.

(a) Figure 8.2: steps per episode on the Dyna maze for n = 0, 5 and 50 planning steps, against
    the reference values of /work/shared/REFERENCE.md (an independent re-run of that setting).
(b) Figures 8.4 and 8.5: cumulative reward of Dyna-Q and Dyna-Q+ on the blocking and shortcut
    mazes, whose walls change part-way through.
(c) Example 8.4: value updates (real and planned) until the greedy policy follows a shortest
    path, prioritized sweeping against Dyna-Q, on the Dyna maze at several resolutions.

Run `wmlab bench dyna`; every run index r seeds its agent with r, so results are reproducible.
The agents are driven through their one-transition methods (`choose`, `learn`), the core that the
batched `act` / `observe` protocol wraps, to keep a full run within a few minutes.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np

from wmlab.agents.dyna.agent import DynaQAgent, DynaQPlusAgent, PrioritizedSweepingAgent, TabularAgent
from wmlab.agents.dyna.config import DynaConfig
from wmlab.core.progress import StageProgress
from wmlab.envs.mazes import BlockingMaze, DynaMaze, GridMaze, ShortcutMaze

# Figure 8.2's setting (the book's values): gamma 0.95, alpha 0.1, epsilon 0.1, 50 episodes.
DYNA_MAZE_CONFIG = DynaConfig(gamma=0.95, alpha=0.1, epsilon=0.1)
DYNA_MAZE_PLANNING_STEPS = (0, 5, 50)
DYNA_MAZE_EPISODES = 50

# Mean steps per episode from REFERENCE.md. Cells written "~17" there are stored as 17 and
# flagged approximate.
REFERENCE_STEPS = {
    0: {2: 573, 3: 501, 5: 296, 10: 109, 20: 46, 30: 19},
    5: {2: 170, 3: 49, 5: 27, 10: 17.6, 20: 17, 30: 17},
    50: {2: 38, 3: 16.9, 5: 17, 10: 17, 20: 17, 30: 17},
}
APPROXIMATE_REFERENCE = {(5, 20), (5, 30), (50, 5), (50, 10), (50, 20), (50, 30)}
# REFERENCE.md: the first episode is a random walk of about 870 steps in expectation.
RANDOM_WALK_STEPS = 870
TOLERANCE = 0.2

# The book gives no step size, n or kappa for Examples 8.2-8.4. These are this library's choices:
# alpha 1 because the mazes are deterministic, so one update can set a value exactly; kappa 1e-3
# because with 1e-4 Dyna-Q+ did not find the shortcut within 6000 steps in our runs.
CHANGING_MAZE_CONFIG = DynaConfig(gamma=0.95, alpha=1.0, epsilon=0.1, planning_steps=10, kappa=1e-3)
CHANGING_MAZES = {
    # name: (factory, total steps, the cell that opens when the walls change)
    "blocking": (BlockingMaze, 3000, (3, 0)),
    "shortcut": (ShortcutMaze, 6000, (3, 8)),
}
CURVE_EVERY = 10  # keep every 10th point of the cumulative-reward curves in the results

# Example 8.4: "both systems made at most n = 5 updates per environmental interaction".
SWEEPING_CONFIG = DynaConfig(gamma=0.95, alpha=1.0, epsilon=0.1, planning_steps=5, theta=1e-4)
# (resolution, alpha): the first row is Figure 8.2's step size, for comparison.
SWEEPING_SETTINGS = ((1, 0.1), (1, 1.0), (2, 1.0), (3, 1.0))
MAX_STEPS_PER_RUN = 200_000  # a run that has not found a shortest path by then counts as never


def observation_space_of(env: gymnasium.Env) -> gymnasium.spaces.Dict:
    return gymnasium.spaces.Dict({"state": env.observation_space})


def make_agent(agent_class: type[TabularAgent], config: DynaConfig, env: gymnasium.Env, seed: int) -> TabularAgent:
    return agent_class(config, observation_space_of(env), env.action_space, seed)


# ----------------------------------------------------------------------------------------------
# The three experiments, one run each


def steps_per_episode(config: DynaConfig, episodes: int, seed: int) -> list[int]:
    """Figure 8.2: one Dyna-Q run on the Dyna maze; the length of each episode."""
    env = DynaMaze()
    agent = make_agent(DynaQAgent, config, env, seed)
    state, _ = env.reset(seed=seed)
    lengths = []
    for _ in range(episodes):
        agent.begin_episode()
        steps, terminated = 0, False
        while not terminated:
            action = agent.choose(state, explore=True)
            next_state, reward, terminated, truncated, _ = env.step(action)
            agent.learn(state, action, reward, next_state, terminated, truncated)
            state, steps = next_state, steps + 1
        lengths.append(steps)
        state, _ = env.reset()
    return lengths


def cumulative_reward(
    agent_class: type[TabularAgent],
    config: DynaConfig,
    make_env: Callable[[], GridMaze],
    total_steps: int,
    opening: tuple[int, int],
    seed: int,
) -> tuple[list[float], bool]:
    """Figures 8.4 / 8.5: cumulative reward after each step, and whether the greedy path at the
    end goes through the cell that opened when the walls changed (the agent has learned to use
    the new way rather than stumbled through it)."""
    env = make_env()
    agent = make_agent(agent_class, config, env, seed)
    state, _ = env.reset(seed=seed)
    total, curve = 0.0, []
    for _ in range(total_steps):
        action = agent.choose(state, explore=True)
        next_state, reward, terminated, truncated, _ = env.step(action)
        agent.learn(state, action, reward, next_state, terminated, truncated)
        total += reward
        curve.append(total)
        if terminated or truncated:
            agent.begin_episode()
            next_state, _ = env.reset()
        state = next_state
    return curve, env.index(opening) in greedy_path(agent, env)


def greedy_path(agent: TabularAgent, env: GridMaze) -> list[int]:
    """Cells visited by the greedy action (lowest index among ties) from the start, until the
    goal or a cell visited before."""
    cell, path = env.start_index, [env.start_index]
    while cell != env.goal_index:
        values = agent.action_values(cell)
        cell = env.successor(cell, values.index(max(values)))
        if cell in path:
            break
        path.append(cell)
    return path


def greedy_path_is_shortest(agent: TabularAgent, env: GridMaze, shortest: int) -> bool:
    """Whether following the greedy action (lowest index among ties) from the start reaches the
    goal within `shortest` moves, that is, along a shortest path."""
    cell = env.start_index
    for _ in range(shortest):
        values = agent.action_values(cell)
        cell = env.successor(cell, values.index(max(values)))
        if cell == env.goal_index:
            return True
    return False


def updates_until_optimal(
    agent_class: type[TabularAgent], config: DynaConfig, resolution: int, seed: int, max_steps: int
) -> tuple[int | None, int]:
    """Example 8.4: (value updates, real steps) when the greedy policy first follows a shortest
    path, checked after every real step; (None, max_steps) if it never did."""
    env = DynaMaze(resolution=resolution)
    shortest = env.layout.shortest_path_length()
    agent = make_agent(agent_class, config, env, seed)
    state, _ = env.reset(seed=seed)
    for step in range(1, max_steps + 1):
        action = agent.choose(state, explore=True)
        next_state, reward, terminated, truncated, _ = env.step(action)
        updates_before = agent.updates
        agent.learn(state, action, reward, next_state, terminated, truncated)
        if terminated or truncated:
            agent.begin_episode()
            next_state, _ = env.reset()
        state = next_state
        # Values that did not move cannot have changed the greedy path (prioritized sweeping
        # often has nothing queued): skipping those checks changes no result.
        if agent.updates != updates_before and greedy_path_is_shortest(agent, env, shortest):
            return agent.updates, step
    return None, max_steps


def median_or_none(values: list[int | None]) -> float | None:
    """Median where None (never reached) counts as infinitely large; None if that is the median."""
    ordered = sorted(math.inf if value is None else value for value in values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return None if math.isinf(median) else float(median)


# ----------------------------------------------------------------------------------------------
# The benchmark


def run_dyna_benchmark(
    seeds: int = 30, quick: bool = False, figures_dir: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (a), (b) and (c) and return every measured figure with its settings, as JSON values.

    `seeds` independent runs per curve (run r seeds its agent with r). `quick` is a smoke test
    of a few seconds: at most 5 runs and only the book's resolution for (c); its numbers are
    not comparable. With `figures_dir`, PNG plots are written there and named in "figures".
    """
    started = time.time()
    runs = min(seeds, 5) if quick else seeds
    sweeping_settings = SWEEPING_SETTINGS[1:2] if quick else SWEEPING_SETTINGS
    max_steps = 50_000 if quick else MAX_STEPS_PER_RUN
    total_runs = runs * (len(DYNA_MAZE_PLANNING_STEPS) + 2 * len(CHANGING_MAZES) + 2 * len(sweeping_settings))
    with StageProgress(progress) as stages:
        advance = stages.task("dyna", total_runs)
        dyna_maze = _dyna_maze(runs, advance)
        changing = {name: _changing_maze(name, runs, advance) for name in CHANGING_MAZES}
        sweeping = [_sweeping(resolution, alpha, runs, max_steps, advance) for resolution, alpha in sweeping_settings]
    results: dict[str, Any] = {
        "benchmark": "dyna",
        "settings": {
            "runs": runs,
            "seeds": list(range(runs)),
            "quick": quick,
            "dyna_maze": {
                "config": _config_dict(DYNA_MAZE_CONFIG),
                "planning_steps": list(DYNA_MAZE_PLANNING_STEPS),
                "episodes": DYNA_MAZE_EPISODES,
            },
            "changing_mazes": {"config": _config_dict(CHANGING_MAZE_CONFIG), "curve_every": CURVE_EVERY},
            "prioritized_sweeping": {"config": _config_dict(SWEEPING_CONFIG), "max_steps_per_run": max_steps},
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "dyna_maze": dyna_maze,
        "changing_mazes": changing,
        "prioritized_sweeping": sweeping,
    }
    results["tables"] = _tables(results)
    results["figures"] = _write_figures(results, figures_dir) if figures_dir is not None else []
    results["wall_time_s"] = round(time.time() - started, 1)
    return results


def _config_dict(config: DynaConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _dyna_maze(runs: int, advance: Callable[..., None]) -> dict[str, Any]:
    mean_steps, cells = {}, []
    for planning_steps in DYNA_MAZE_PLANNING_STEPS:
        advance(0, f"Dyna maze, n = {planning_steps}")
        config = replace(DYNA_MAZE_CONFIG, planning_steps=planning_steps)
        lengths = []
        for seed in range(runs):
            lengths.append(steps_per_episode(config, DYNA_MAZE_EPISODES, seed))
            advance(1)
        lengths = np.array(lengths, dtype=np.float64)  # (runs, episodes)
        mean = lengths.mean(axis=0)
        # Standard error of the mean over runs: how far a mean of this many runs may wander.
        standard_error = lengths.std(axis=0, ddof=1) / np.sqrt(runs) if runs > 1 else np.full_like(mean, np.nan)
        mean_steps[str(planning_steps)] = [round(float(value), 2) for value in mean]
        references = {1: RANDOM_WALK_STEPS, **REFERENCE_STEPS[planning_steps]}
        for episode, reference in references.items():
            approximate = episode == 1 or (planning_steps, episode) in APPROXIMATE_REFERENCE
            cells.append(
                _cell(planning_steps, episode, mean[episode - 1], standard_error[episode - 1], reference, approximate)
            )
    return {"mean_steps_per_episode": mean_steps, "reference_cells": cells}


def _cell(
    planning_steps: int, episode: int, ours: float, standard_error: float, reference: float, approximate: bool
) -> dict[str, Any]:
    return {
        "planning_steps": planning_steps,
        "episode": episode,
        "ours": round(float(ours), 1),
        "standard_error": None if math.isnan(standard_error) else round(float(standard_error), 1),
        "reference": reference,
        "reference_approximate": approximate,
        "within_20_percent": bool(abs(ours - reference) <= TOLERANCE * reference),
    }


def _changing_maze(name: str, runs: int, advance: Callable[..., None]) -> dict[str, Any]:
    make_env, total_steps, opening = CHANGING_MAZES[name]
    change_step = make_env().change_step
    result: dict[str, Any] = {"total_steps": total_steps, "change_step": change_step, "opening": list(opening)}
    for label, agent_class in (("dyna-q", DynaQAgent), ("dyna-q-plus", DynaQPlusAgent)):
        advance(0, f"{name} maze, {label}")
        curves, openings = [], 0
        for seed in range(runs):
            curve, uses_opening = cumulative_reward(
                agent_class, CHANGING_MAZE_CONFIG, make_env, total_steps, opening, seed
            )
            curves.append(curve)
            openings += uses_opening
            advance(1)
        mean = np.mean(np.array(curves), axis=0)
        result[label] = {
            "cumulative_reward": [round(float(value), 3) for value in mean[CURVE_EVERY - 1 :: CURVE_EVERY]],
            "final_cumulative_reward": round(float(mean[-1]), 2),
            "reward_after_change": round(float(mean[-1] - mean[change_step - 1]), 2),
            "runs_greedy_path_through_opening": int(openings),
        }
    return result


def _sweeping(resolution: int, alpha: float, runs: int, max_steps: int, advance: Callable[..., None]) -> dict[str, Any]:
    layout = DynaMaze(resolution=resolution).layout
    config = replace(SWEEPING_CONFIG, alpha=alpha)
    result: dict[str, Any] = {
        "resolution": resolution,
        "alpha": alpha,
        "open_cells": layout.open_cells,
        "shortest_path": layout.shortest_path_length(),
    }
    for label, agent_class in (("dyna-q", DynaQAgent), ("prioritized-sweeping", PrioritizedSweepingAgent)):
        advance(0, f"Example 8.4, resolution {resolution}, alpha {alpha}, {label}")
        updates, steps = [], []
        for seed in range(runs):
            update_count, step_count = updates_until_optimal(agent_class, config, resolution, seed, max_steps)
            updates.append(update_count)
            steps.append(step_count)
            advance(1)
        result[label] = {
            "updates": updates,
            "real_steps": steps,
            "median_updates": median_or_none(updates),
            "runs_reaching_optimal": sum(value is not None for value in updates),
        }
    dyna, sweeping = result["dyna-q"]["median_updates"], result["prioritized-sweeping"]["median_updates"]
    result["ratio"] = round(dyna / sweeping, 2) if dyna is not None and sweeping else None
    return result


# ----------------------------------------------------------------------------------------------
# Tables, text and markdown


def _tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = results["settings"]["runs"]
    maze_rows = [
        [
            cell["planning_steps"],
            cell["episode"],
            cell["ours"],
            "-" if cell["standard_error"] is None else cell["standard_error"],
            ("~" if cell["reference_approximate"] else "") + f"{cell['reference']:g}",
            "yes" if cell["within_20_percent"] else "no",
        ]
        for cell in results["dyna_maze"]["reference_cells"]
    ]
    changing_rows = []
    for name, maze in results["changing_mazes"].items():
        dyna, plus = maze["dyna-q"], maze["dyna-q-plus"]
        changing_rows.append(
            [
                name,
                maze["total_steps"],
                maze["change_step"],
                dyna["final_cumulative_reward"],
                plus["final_cumulative_reward"],
                dyna["reward_after_change"],
                plus["reward_after_change"],
                f"{dyna['runs_greedy_path_through_opening']} / {plus['runs_greedy_path_through_opening']} of {runs}",
            ]
        )
    sweeping_rows = [
        [
            row["resolution"],
            row["open_cells"],
            row["shortest_path"],
            row["alpha"],
            _or_never(row["dyna-q"]["median_updates"]),
            _or_never(row["prioritized-sweeping"]["median_updates"]),
            "-" if row["ratio"] is None else row["ratio"],
            f"{row['dyna-q']['runs_reaching_optimal']} / {row['prioritized-sweeping']['runs_reaching_optimal']} of {runs}",
        ]
        for row in results["prioritized_sweeping"]
    ]
    return [
        {
            "title": f"Dyna maze (Fig. 8.2): mean steps per episode over {runs} runs, against the reference",
            "columns": ["n", "episode", "ours", "standard error", "reference", "within 20 %"],
            "rows": maze_rows,
        },
        {
            "title": f"Blocking and shortcut mazes (Figs. 8.4, 8.5): mean cumulative reward over {runs} runs",
            "columns": [
                "maze",
                "steps",
                "walls change at",
                "Dyna-Q",
                "Dyna-Q+",
                "after change: Dyna-Q",
                "after change: Dyna-Q+",
                "final greedy path through the new opening (runs, Q / Q+)",
            ],
            "rows": changing_rows,
        },
        {
            "title": f"Example 8.4: median value updates until the greedy path is a shortest path ({runs} runs)",
            "columns": [
                "resolution",
                "open cells",
                "shortest path",
                "alpha",
                "Dyna-Q",
                "prioritized sweeping",
                "ratio",
                "runs reaching it (Q / PS)",
            ],
            "rows": sweeping_rows,
        },
    ]


def _or_never(value: float | None) -> Any:
    return "never" if value is None else int(value) if float(value).is_integer() else value


def format_dyna_table(results: dict[str, Any]) -> str:
    """The result tables as aligned plain text for the terminal."""
    blocks = []
    for table in results["tables"]:
        rows = [[str(value) for value in row] for row in [table["columns"], *table["rows"]]]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(value.rjust(width) for value, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        blocks.append(table["title"] + "\n" + "\n".join(lines))
    blocks.append(f"wall time: {results.get('wall_time_s', '?')} s")
    return "\n\n".join(blocks)


def dyna_markdown(results: dict[str, Any]) -> str:
    """A docs/benchmarks.md section: our numbers beside the reference, with the settings."""
    settings = results["settings"]
    maze = _config_text(settings["dyna_maze"]["config"], ("gamma", "alpha", "epsilon"))
    changing = _config_text(
        settings["changing_mazes"]["config"], ("gamma", "alpha", "epsilon", "planning_steps", "kappa")
    )
    sweeping = _config_text(settings["prioritized_sweeping"]["config"], ("gamma", "epsilon", "planning_steps", "theta"))
    lines = [
        "## Dyna (Sutton & Barto, RL: An Introduction, 2nd ed., chapter 8)",
        "",
        f"Command: `wmlab bench dyna{' --quick' if settings['quick'] else ''}` — {settings['runs']} runs (seeds 0..{settings['runs'] - 1}), "
        f"wall time {results.get('wall_time_s', '?')} s. Tabular agents in plain Python; no GPU involved.",
        "",
        f"### Dyna maze, steps per episode (Figure 8.2)\n\nSettings: {maze}, {settings['dyna_maze']['episodes']} episodes. "
        "Reference: an independent re-run of the book's setting (REFERENCE.md); episode 1 is a random walk "
        f'whose expected length is about {RANDOM_WALK_STEPS}. "~" marks reference values given as approximate. '
        "The reference is itself a mean of 30 runs, so it carries noise of the size of our standard error at 30 runs.",
        "",
        *_markdown_table(results["tables"][0]),
        "",
        f"### Blocking and shortcut mazes (Figures 8.4, 8.5)\n\nSettings (ours; the book gives none): {changing}. "
        "Reference (qualitative): Dyna-Q+ ends ahead of Dyna-Q in cumulative reward, and only Dyna-Q+ finds the shortcut.",
        "",
        *_markdown_table(results["tables"][1]),
        "",
        f"### Prioritized sweeping against Dyna-Q (Example 8.4)\n\nSettings: {sweeping} , alpha per row (n = 5 as in the book). "
        "An update is any change of a value, real or planned; the count stops when the greedy policy (lowest action index "
        f"among ties) first follows a shortest path, checked after every real step; runs that never do within "
        f"{settings['prioritized_sweeping']['max_steps_per_run']} real steps count as infinitely many updates in the median. "
        'Reference (qualitative): prioritized sweeping needs "often by a factor of 5 to 10" fewer updates on mazes.',
        "",
        *_markdown_table(results["tables"][2]),
        "",
    ]
    return "\n".join(lines)


def _config_text(config: dict[str, Any], names: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {config[name]:g}" for name in names)


def _markdown_table(table: dict[str, Any]) -> list[str]:
    return [
        "| " + " | ".join(table["columns"]) + " |",
        "|" + "---|" * len(table["columns"]),
        *("| " + " | ".join(str(value) for value in row) + " |" for row in table["rows"]),
    ]


# ----------------------------------------------------------------------------------------------
# Figures


def _write_figures(results: dict[str, Any], figures_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    runs = results["settings"]["runs"]
    names = []

    figure, axes = plt.subplots(figsize=(6, 4))
    for planning_steps, mean in results["dyna_maze"]["mean_steps_per_episode"].items():
        episodes = np.arange(2, len(mean) + 1)
        axes.plot(episodes, mean[1:], label=f"{planning_steps} planning steps")
    axes.set(
        xlabel="episode",
        ylabel="steps per episode",
        title=f"Dyna maze (Fig. 8.2 style), mean of {runs} runs",
        ylim=(0, 800),
    )
    axes.axhline(14, color="grey", linewidth=0.8, linestyle=":", label="shortest path (14)")
    axes.legend()
    names.append(_save(figure, figures_dir, "dyna_maze_steps_per_episode.png"))

    figure, all_axes = plt.subplots(1, 2, figsize=(11, 4))
    every = results["settings"]["changing_mazes"]["curve_every"]
    for axes, (name, maze) in zip(all_axes, results["changing_mazes"].items()):
        for label, title in (("dyna-q", "Dyna-Q"), ("dyna-q-plus", "Dyna-Q+")):
            curve = maze[label]["cumulative_reward"]
            axes.plot(np.arange(1, len(curve) + 1) * every, curve, label=title)
        axes.axvline(maze["change_step"], color="grey", linewidth=0.8, linestyle=":", label="walls change")
        axes.set(xlabel="time step", ylabel="cumulative reward", title=f"{name} maze, mean of {runs} runs")
        axes.legend()
    names.append(_save(figure, figures_dir, "changing_mazes_cumulative_reward.png"))

    figure, axes = plt.subplots(figsize=(7, 4))
    rows = results["prioritized_sweeping"]
    positions = np.arange(len(rows))
    for offset, label, title in ((-0.2, "dyna-q", "Dyna-Q"), (0.2, "prioritized-sweeping", "prioritized sweeping")):
        heights = [row[label]["median_updates"] or np.nan for row in rows]
        axes.bar(positions + offset, heights, width=0.4, label=title)
    axes.set_xticks(positions, [f"{row['open_cells']} cells\nalpha {row['alpha']:g}" for row in rows])
    axes.set(yscale="log", ylabel="updates until optimal (median)", title=f"Example 8.4 style, {runs} runs")
    axes.legend()
    names.append(_save(figure, figures_dir, "prioritized_sweeping_updates.png"))
    return names


def _save(figure: Any, directory: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(directory / name, dpi=110)
    plt.close(figure)
    return name

"""Evaluate an agent's greedy policy in the real environment."""

from __future__ import annotations

from typing import Any

import numpy as np

from wmlab.envs.adapter import make_env


def evaluate_agent(
    agent: Any,
    env_id: str,
    episodes: int,
    seed: int,
    env_kwargs: dict | None = None,
    max_steps: int = 10_000,
    world_state: dict | None = None,
) -> dict[str, float]:
    """Run `episodes` greedy episodes on fresh environments seeded `seed, seed + 1, ...`.

    `world_state`: for environments that change over a run (the blocking and shortcut mazes), the
    training environment's `world_state()`, so that evaluation sees the world as it is now.

    Returns eval/return (mean), eval/return_std, eval/length, where the environment reports
    `info["success"]`, eval/success (fraction of episodes), and where it names the episode's task
    in `info["task"]` (multi-task environments), eval/return/<task> (mean over that task's episodes).
    """
    returns, lengths, successes = [], [], []
    task_returns: dict[str, list[float]] = {}
    env = make_env(env_id, **(env_kwargs or {}))
    if world_state is not None and hasattr(env.unwrapped, "load_world_state"):
        env.unwrapped.load_world_state(world_state)
    try:
        for episode in range(episodes):
            observation, info = env.reset(seed=seed + episode)
            agent_state, total, length, success = None, 0.0, 0, None
            is_first = True
            while True:
                batched = {key: value[None] for key, value in observation.items()}
                batched["is_first"] = np.array([is_first])
                action, agent_state = agent.act(batched, agent_state, explore=False)
                observation, reward, terminated, truncated, info = env.step(unbatch_action(action))
                total += float(reward)
                length += 1
                is_first = False
                if "success" in info:
                    success = bool(info["success"]) or bool(success)
                if terminated or truncated or length >= max_steps:
                    break
            returns.append(total)
            lengths.append(length)
            task = episode_task(info)
            if task is not None:
                task_returns.setdefault(task, []).append(total)
            if success is not None:
                successes.append(success)
    finally:
        env.close()
    metrics = {
        "eval/return": float(np.mean(returns)),
        "eval/return_std": float(np.std(returns)),
        "eval/length": float(np.mean(lengths)),
    }
    if successes:
        metrics["eval/success"] = float(np.mean(successes))
    for task, values in sorted(task_returns.items()):
        metrics[f"eval/return/{task}"] = float(np.mean(values))
    return metrics


def episode_task(info: dict) -> str | None:
    """The task an episode ran, from the `info` of its last step: the name a multi-task
    environment reports in info["task"] (wmlab.envs.multitask), else None."""
    task = info.get("task") if isinstance(info, dict) else None
    return task if isinstance(task, str) else None


def unbatch_action(action: Any) -> Any:
    """The first row of a batched action, as the environment expects it (int for Discrete)."""
    row = np.asarray(action)[0]
    return row.item() if row.ndim == 0 else row

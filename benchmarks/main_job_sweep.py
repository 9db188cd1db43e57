"""Learning per update of the main job's world model: train the RSSM on random two-rooms episodes
(the main job's task), and every `--eval-every` updates measure the open-loop moving-pixel error
at horizon 10 against the repeat-last-frame baseline (held-out random episodes) and the greedy
CEM planner's success. Used to choose the main job's settings (docs/benchmarks.md, "The main job").

    python benchmarks/main_job_sweep.py --updates 1500 --eval-every 250 --set foreground_weight=10

`--set NAME=VALUE` overrides a field of the main job's RSSM config (JSON values); `--agent
NAME=VALUE` one of its PlaNet config (learning_rate, ...). Prints one JSON line per evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
        if isinstance(overrides[name], list):
            overrides[name] = tuple(overrides[name])
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--episodes", type=int, default=150, help="random training episodes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--picture", default="", help="write real / imagined rows of 4 held-out windows to this PNG")
    parser.add_argument("--set", action="append", default=[], help="RSSM config field=JSON value")
    parser.add_argument("--scale", action="append", default=[], help="RSSM loss scale name=value")
    parser.add_argument("--agent", action="append", default=[], help="PlaNet config field=JSON value")
    parser.add_argument("--planner", action="append", default=[], help="CEM config field=JSON value")
    parser.add_argument("--env", action="append", default=[], help="env kwarg=JSON value")
    parser.add_argument("--diagnose", action="store_true", help="per-episode distances and reward-model agreement")
    parser.add_argument(
        "--run", default="", help="only diagnose the trained agent of this run directory (a main job's)"
    )
    arguments = parser.parse_args()
    if arguments.run:
        diagnose_run(arguments.run, arguments.eval_episodes, arguments.seed)
        return

    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    from wmlab.agents.planet.agent import PlaNetAgent
    from wmlab.envs.adapter import make_env
    from wmlab.eval.returns import evaluate_agent
    from wmlab.eval.suites import SuiteSettings, collect_episodes, episode_windows, evaluate_suite, windows_for
    from wmlab.pipelines.main_job import MAIN_AGENT, MAIN_ENV, MAIN_ENV_KWARGS, RandomPolicy

    env_kwargs = {**MAIN_ENV_KWARGS, **parse_overrides(arguments.env)}
    model = replace(MAIN_AGENT.model, **parse_overrides(arguments.set))
    model = replace(model, loss_scales=replace(model.loss_scales, **parse_overrides(arguments.scale)))
    planner = replace(MAIN_AGENT.planner, **parse_overrides(arguments.planner))
    config = replace(MAIN_AGENT, model=model, planner=planner, random_steps=0, **parse_overrides(arguments.agent))
    env = make_env(MAIN_ENV, **env_kwargs)
    agent = PlaNetAgent(config, env.observation_space, env.action_space, seed=arguments.seed)
    random_policy = RandomPolicy(env.action_space, seed=arguments.seed)
    started = time.process_time()
    train = collect_episodes(random_policy, MAIN_ENV, env_kwargs, arguments.episodes, seed=arguments.seed)
    held_out_policy = RandomPolicy(env.action_space, seed=arguments.seed + 20_000)
    held_out = collect_episodes(held_out_policy, MAIN_ENV, env_kwargs, 16, seed=arguments.seed + 20_000)
    settings = SuiteSettings(sequences=16, context=5, horizon=20, seed=arguments.seed)
    windows = windows_for(held_out, settings)
    print(
        json.dumps(
            {"collect_cpu_s": round(time.process_time() - started, 1), "steps": sum(len(e["reward"]) for e in train)}
        )
    )
    update_cpu = 0.0
    averaged: dict[str, list[float]] = {}
    for update in range(1, arguments.updates + 1):
        batch = episode_windows(
            train, arguments.batch_size, arguments.sequence_length, seed=arguments.seed * 100_003 + update
        )
        started = time.process_time()
        metrics = agent.update(batch)
        update_cpu += time.process_time() - started
        for name in ("loss/image", "wm/image_mse", "loss/reward", "loss/dyn", "loss/rep", "loss/kl", "wm/kl"):
            if name in metrics:
                averaged.setdefault(name, []).append(metrics[name])
        if update % arguments.eval_every == 0 or update == arguments.updates:
            started = time.process_time()
            agent.world_model.eval()
            with torch.no_grad():
                result = evaluate_suite(agent.world_model, windows, "horizon", settings)
            agent.world_model.train()
            at = result["at_horizon"]
            moving = at["open_loop"]["image/moving_mse"]
            baseline = at["repeat_last_frame"]["image/moving_mse"]
            if arguments.diagnose:
                success = diagnose_agent(agent, env_kwargs, arguments.eval_episodes, seed=10_000_000 + update)
            else:
                success = evaluate_agent(
                    agent, MAIN_ENV, episodes=arguments.eval_episodes, seed=10_000_000 + update, env_kwargs=env_kwargs
                )
            row = {
                "update": update,
                "update_cpu_s": round(update_cpu, 1),
                "eval_cpu_s": round(time.process_time() - started, 1),
                "ratio_h1": round(moving["1"] / baseline["1"], 3),
                "ratio_h10": round(moving["10"] / baseline["10"], 3),
                "success": success.get("eval/success"),
                "return": round(success["eval/return"], 3),
                **{name: value for name, value in success.items() if name.startswith("diagnose/")},
                **{name: round(float(np.mean(values)), 4) for name, values in averaged.items()},
            }
            averaged.clear()
            print(json.dumps(row), flush=True)
    if arguments.picture:
        write_picture(agent.world_model, windows, settings.context, arguments.picture)


def diagnose_run(run_dir: str, episodes: int, seed: int) -> None:
    """Greedy episodes of a finished run's agent on fresh seeds (30,000,000 + seed), diagnosed."""
    from wmlab.runs.directory import load_trained_agent

    torch.set_num_threads(1)
    spec, agent = load_trained_agent(run_dir)
    started = time.process_time()
    result = diagnose_agent(agent, spec.env_kwargs, episodes, seed=30_000_000 + seed)
    print(
        json.dumps({"run": run_dir, "episodes": episodes, "cpu_s": round(time.process_time() - started, 1), **result})
    )


@torch.no_grad()
def diagnose_agent(agent, env_kwargs: dict, episodes: int, seed: int) -> dict:
    """Greedy episodes with why they fail: the path length to the goal at the start, at its
    smallest and at the end, and how well the model's reward for each executed action (one
    imagined step from the filtered state) agrees with the real reward."""
    from wmlab.envs.adapter import make_env
    from wmlab.pipelines.main_job import MAIN_ENV

    env = make_env(MAIN_ENV, **env_kwargs)
    model = agent.world_model
    model.eval()
    rows, imagined, real = [], [], []
    for episode in range(episodes):
        observation, info = env.reset(seed=seed + episode)
        start = closest = info["distance"]
        state, total, is_first = None, 0.0, True
        while True:
            batched = {key: value[None] for key, value in observation.items()}
            batched["is_first"] = np.array([is_first])
            action, state = agent.act(batched, state, explore=False)
            latent = {"deter": state["deter"], "stoch": state["stoch"]}
            step = model.imagine(latent, torch.as_tensor(action, dtype=torch.float32)[:, None])
            imagined.append(float(step.rewards[0, 0]))
            observation, reward, terminated, truncated, info = env.step(action[0])
            real.append(float(reward))
            total += float(reward)
            closest = min(closest, info["distance"])
            is_first = False
            if terminated or truncated:
                break
        rows.append((bool(info["success"]), start, closest, info["distance"], total))
    env.close()
    success = np.array([row[0] for row in rows])
    failed = [row for row in rows if not row[0]]
    imagined_array, real_array = np.array(imagined), np.array(real)
    return {
        "eval/success": float(success.mean()),
        "eval/return": float(np.mean([row[4] for row in rows])),
        "diagnose/start_distance_failed": [round(row[1], 2) for row in failed],
        "diagnose/closest_failed": [round(row[2], 2) for row in failed],
        "diagnose/final_failed": [round(row[3], 2) for row in failed],
        "diagnose/start_distance_succeeded": round(float(np.mean([r[1] for r in rows if r[0]] or [np.nan])), 2),
        "diagnose/reward_correlation": round(float(np.corrcoef(imagined_array, real_array)[0, 1]), 3),
        "diagnose/reward_abs_error": round(float(np.abs(imagined_array - real_array).mean()), 4),
        "diagnose/real_reward_std": round(float(real_array.std()), 4),
    }


@torch.no_grad()
def write_picture(model, windows, context: int, path: str) -> None:
    """Rows of real and open-loop imagined frames (context then 12 imagined steps) of 4 windows."""
    from PIL import Image

    from wmlab.eval.world_model_metrics import filter_sequence

    model.eval()
    _, last = filter_sequence(model, windows, context)
    steps = 12
    imagined = model.decode(model.imagine(last, windows.action[:, context : context + steps], steps).states)["image"]
    rows = []
    for index in range(4):
        real = np.asarray(windows.obs["image"][index, context - 1 : context + steps])
        dream = np.concatenate([real[:1], (imagined[index].numpy() * 255).astype(np.uint8)])
        rows += [np.concatenate(list(real), 1), np.concatenate(list(dream), 1)]
    Image.fromarray(np.concatenate(rows, 0)).resize((32 * 13 * 3, 32 * 8 * 3), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()

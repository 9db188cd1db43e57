"""TD-MPC2 benchmarks: learning runs and speed measurements (results go to docs/benchmarks.md).

    python benchmarks/tdmpc2.py dmc --run-dir runs/tdmpc2-dmc-cartpole-swingup-1M --steps 100000 --size 1M
    python benchmarks/tdmpc2.py dmc --run-dir runs/tdmpc2-dmc-cartpole-swingup-1M --steps 100000 --size 1M --resume
    python benchmarks/tdmpc2.py cartpole --run-dir runs/tdmpc2-cartpole-v1-1M-episodic --steps 20000 --size 1M
    python benchmarks/tdmpc2.py speed --sizes 1M,5M --compile off,on --steps 40
    python benchmarks/tdmpc2.py simnorm --steps 30
    python benchmarks/tdmpc2.py multitask --run-dir runs/tdmpc2-multitask --steps 300000 --size 1M

`dmc` trains on dmc:cartpole-swingup from states with TD-MPC2's setting: action repeat 2 (500 agent
steps per episode, discount 0.99 by the paper's heuristic), batch 256 windows of horizon + 1 = 4
steps, one update per environment step (train ratio 256 x 4 = 1024), 2500 seed steps of random
actions before planning and before the first update. The CLI has no flag for environment
arguments (action_repeat), which is why this goes through the Python API; the run directory
records every setting in config.json; `--resume` continues it from its last checkpoint (exactly:
the DMC adapter exports its state).

`multitask` trains one agent on three DMC tasks from states (`--tasks`, by default cartpole-swingup,
reacher-easy and walker-walk: 1, 2 and 6 action dimensions, 5, 6 and 24 state features) through
wmlab's multi-task environment, with `dmc`'s settings otherwise; it prints the per-task evaluation
returns (`eval/return/<task>`) with the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wmlab.agents.tdmpc2.config import TDMPC2Config, heuristic_discount
from wmlab.models.tdmpc import SIZES, TDMPCModelConfig
from wmlab.planners.mppi import MPPIConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer


def dmc_spec(steps: int, seed: int, size: str) -> RunSpec:
    train = TrainConfig(
        steps=steps,
        seed=seed,
        batch_size=256,
        sequence_length=4,
        train_ratio=1024.0,
        learning_starts=2500,
        eval_every=5000,
        eval_episodes=2,
        checkpoint_every=5000,
        log_every=1000,
        threads=1,
        progress=False,
    )
    agent = TDMPC2Config(model=TDMPCModelConfig(size=SIZES[size]), random_steps=2500)
    return RunSpec("tdmpc2", "dmc:cartpole-swingup", train=train, agent=agent, env_kwargs={"action_repeat": 2})


def cartpole_spec(steps: int, seed: int, size: str, episodic: bool = True) -> RunSpec:
    """CartPole-v1 with discrete MPPI: 500-step episodes (discount 0.99 by the paper's heuristic),
    TD-MPC2's model, losses and update schedule, 1000 seed steps (the authors' minimum). MPPI keeps
    its horizon (3), iterations (6) and temperature, but scores 64 sequences (8 of them from the
    policy prior, 8 elites) instead of 512: two actions over three steps make only 8 distinct
    sequences, and 512 samples would score each about 64 times per iteration. The episode ends on
    failure with a constant reward of 1, so the model learns a termination head (`episodic`)."""
    train = TrainConfig(
        steps=steps,
        seed=seed,
        batch_size=256,
        sequence_length=4,
        train_ratio=1024.0,
        learning_starts=1000,
        eval_every=2500,
        eval_episodes=2,
        checkpoint_every=2500,
        log_every=500,
        threads=1,
        progress=False,
    )
    planner = MPPIConfig(samples=64, elites=8, policy_trajectories=8)
    model = TDMPCModelConfig(size=SIZES[size], episodic=episodic)
    agent = TDMPC2Config(model=model, planner=planner, random_steps=1000)
    return RunSpec("tdmpc2", "CartPole-v1", train=train, agent=agent)


#: The multi-task benchmark's tasks: three embodiments with 1, 2 and 6 action dimensions.
MULTITASK_TASKS = ("dmc:cartpole-swingup", "dmc:reacher-easy", "dmc:walker-walk")


def multitask_spec(
    steps: int, seed: int, size: str, tasks: tuple[str, ...] = MULTITASK_TASKS, eval_per_task: int = 1
) -> RunSpec:
    """One TD-MPC2 agent on several DMC tasks from states, action repeat 2 (500 agent steps per
    episode). The multi-task environment pads the states and actions to the largest task's and
    gives the task index and action mask; the model learns a 96-d embedding per task; each task's
    discount comes from its episode length by TD-MPC2's heuristic (0.99 for 500 steps). Episodes
    cycle through the tasks; each evaluation runs `eval_per_task` episodes of every task. Batch,
    update schedule and seed steps are `dmc`'s (the authors' multi-task runs are offline, on their
    mt30 / mt80 datasets; this online run is wmlab's)."""
    from wmlab.envs.adapter import make_env

    env_kwargs = {"tasks": list(tasks), "shared_kwargs": {"action_repeat": 2}}
    env = make_env("multitask", **env_kwargs)
    lengths = env.unwrapped.episode_lengths
    env.close()
    default = TDMPCModelConfig().discount
    discounts = tuple(heuristic_discount(length) if length else default for length in lengths)
    train = TrainConfig(
        steps=steps,
        seed=seed,
        batch_size=256,
        sequence_length=4,
        train_ratio=1024.0,
        learning_starts=2500,
        eval_every=10_000,
        eval_episodes=eval_per_task * len(tasks),
        checkpoint_every=5000,
        log_every=1000,
        threads=1,
        progress=False,
    )
    agent = TDMPC2Config(model=TDMPCModelConfig(size=SIZES[size], task_discounts=discounts), random_steps=2500)
    return RunSpec("tdmpc2", "multitask", train=train, agent=agent, env_kwargs=env_kwargs)


def train(spec: RunSpec, run_dir: Path, resume: bool) -> dict:
    torch.set_num_threads(1)
    summary = Trainer(spec, run_dir, resume=resume).run()
    print(json.dumps(summary, indent=2))
    return summary


def speed(steps: int, sizes: list[str], compile_modes: list[bool]) -> None:
    """Planning latency per step (act at the default MPPI settings) and update time (batch 256 x 4)
    on dmc:cartpole-swingup from states, one thread; prints one JSON line per setting.

    Both wall time and this thread's CPU time are reported (medians after warm-up): on a machine
    shared with other jobs the wall time grows with the load, the CPU time much less."""
    import os

    from wmlab.agents.tdmpc2.agent import TDMPC2Agent
    from wmlab.core.types import Batch
    from wmlab.envs.adapter import make_env

    torch.set_num_threads(1)
    env = make_env("dmc:cartpole-swingup", action_repeat=2)
    rng = np.random.default_rng(0)
    D = env.observation_space["vector"].shape[0]
    batch = Batch(
        obs={"vector": rng.normal(size=(256, 4, D)).astype(np.float32)},
        action=rng.uniform(-1, 1, (256, 4, 1)).astype(np.float32),
        reward=rng.uniform(0, 1, (256, 4)).astype(np.float32),
        is_first=np.zeros((256, 4), bool),
        is_last=np.zeros((256, 4), bool),
        is_terminal=np.zeros((256, 4), bool),
    )

    def timed(function):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = function()
        return result, time.perf_counter() - wall, time.thread_time() - cpu

    for size in sizes:
        for compiled in compile_modes:
            config = TDMPC2Config(model=TDMPCModelConfig(size=SIZES[size]), random_steps=0, compile=compiled)
            agent = TDMPC2Agent(config, env.observation_space, env.action_space, seed=0)
            observation, _ = env.reset(seed=0)
            state, first, acts, updates = None, True, [], []
            for step in range(steps):
                batched = {key: value[None] for key, value in observation.items()}
                batched["is_first"] = np.array([first])
                (action, state), wall, cpu = timed(lambda: agent.act(batched, state, explore=True))
                acts.append((wall, cpu))
                observation, _, terminated, truncated, _ = env.step(action[0])
                first = terminated or truncated
                _, wall, cpu = timed(lambda: agent.update(batch))
                updates.append((wall, cpu))
            warm = max(3, steps // 5)  # the first calls compile (or warm caches): leave them out
            act_wall, act_cpu = (1000 * np.median([t[i] for t in acts[warm:]]) for i in (0, 1))
            update_wall, update_cpu = (1000 * np.median([t[i] for t in updates[warm:]]) for i in (0, 1))
            parameters = sum(p.numel() for p in agent.model.parameters() if p.requires_grad)
            print(
                json.dumps(
                    {
                        "size": size,
                        "compile": compiled,
                        "parameters": parameters,
                        "steps_timed": steps - warm,
                        "plan_ms": round(act_wall, 1),
                        "plan_cpu_ms": round(act_cpu, 1),
                        "update_ms": round(update_wall, 1),
                        "update_cpu_ms": round(update_cpu, 1),
                        "env_steps_per_second_cpu": round(1000 / (act_cpu + update_cpu), 2),
                        "first_plan_s": round(acts[0][0], 1),
                        "first_update_s": round(updates[0][0], 1),
                        "load_average": round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )


def simnorm_speed(steps: int, rounds: int) -> None:
    """SimNorm's written-out group softmax against torch.softmax inside TD-MPC2 (1M, planning at
    the default MPPI settings, one thread): alternating rounds of `steps` plans each, this
    thread's CPU time per plan; prints the medians and the median ratio."""
    from wmlab.agents.tdmpc2.agent import TDMPC2Agent
    from wmlab.envs.adapter import make_env
    from wmlab.nn import norms

    torch.set_num_threads(1)
    env = make_env("dmc:cartpole-swingup", action_repeat=2)
    agent = TDMPC2Agent(
        TDMPC2Config(model=TDMPCModelConfig(size=SIZES["1M"]), random_steps=0),
        env.observation_space,
        env.action_space,
        seed=0,
    )
    observation, _ = env.reset(seed=0)
    batched = {key: value[None] for key, value in observation.items()}
    batched["is_first"] = np.array([True])
    written = norms.SimNorm.forward

    def with_torch_softmax(self, x):
        return x.unflatten(-1, (-1, self.group_size)).softmax(-1).flatten(-2)

    times: dict[str, list[float]] = {"torch.softmax": [], "written out": []}
    for round_index in range(2 * rounds + 1):
        name = ("torch.softmax", "written out")[round_index % 2]
        norms.SimNorm.forward = with_torch_softmax if name == "torch.softmax" else written
        start = time.thread_time()
        for _ in range(steps):
            agent.act(batched, None, explore=True)
        if round_index:  # the first round warms up
            times[name].append((time.thread_time() - start) / steps * 1000)
    norms.SimNorm.forward = written
    ratios = [old / new for old, new in zip(times["torch.softmax"], times["written out"])]
    print(
        json.dumps(
            {
                "plan_cpu_ms": {name: round(float(np.median(values)), 1) for name, values in times.items()},
                "speed_up_median": round(float(np.median(ratios)), 3),
                "ratios": [round(r, 3) for r in ratios],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["dmc", "cartpole", "speed", "simnorm", "multitask"])
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="1M")
    parser.add_argument("--sizes", default="1M,5M", help="speed: comma-separated presets")
    parser.add_argument("--compile", default="off,on", help="speed: off, on or off,on")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-episodic", action="store_true", help="cartpole: no termination head")
    parser.add_argument("--tasks", default=",".join(MULTITASK_TASKS), help="multitask: comma-separated task ids")
    parser.add_argument("--eval-per-task", type=int, default=1, help="multitask: evaluation episodes of each task")
    arguments = parser.parse_args()
    if arguments.benchmark == "simnorm":
        simnorm_speed(min(arguments.steps, 100), rounds=5)
        return
    if arguments.benchmark == "speed":
        modes = [{"off": False, "on": True}[mode] for mode in arguments.compile.split(",")]
        speed(min(arguments.steps, 100), arguments.sizes.split(","), modes)
        return
    if arguments.benchmark == "multitask":
        tasks = tuple(task.strip() for task in arguments.tasks.split(",") if task.strip())
        spec = multitask_spec(arguments.steps, arguments.seed, arguments.size, tasks, arguments.eval_per_task)
        summary = train(spec, arguments.run_dir, arguments.resume)
        for key, value in summary.items():
            if key.startswith("eval/return/"):
                print(f"{key.removeprefix('eval/return/'):>24}  {value:9.1f}")
        return
    if arguments.benchmark == "dmc":
        spec = dmc_spec(arguments.steps, arguments.seed, arguments.size)
    else:
        spec = cartpole_spec(arguments.steps, arguments.seed, arguments.size, episodic=not arguments.no_episodic)
    train(spec, arguments.run_dir, arguments.resume)


if __name__ == "__main__":
    main()

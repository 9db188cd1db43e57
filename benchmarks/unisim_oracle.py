"""Can the zero-shot row's actor-critic learn two-rooms at all in the updates it gets? (issue 27)
The same learner as `wmlab pipeline unisim` (diamond-cpu's, choosing instructions), trained in an
oracle simulator instead of the diffusion model: two-rooms itself. Each update's burn-in windows
are drawn from the UniSim run's dataset as in the pipeline; the oracle reads the agent, the goal
and the door from each window's last frame (diffusion_generation.frame_geometry), resets a copy
of the environment to that situation, and plays the policy's instructions there as their moves
for `horizon` steps. Rewards are the signs of the true rewards (what DIAMOND's reward model is
trained to predict: -1, 0, +1), continues 0 after the goal. Every `--evaluate-every` updates, the
policy plays the pipeline's 50 real evaluation episodes (seeds 1,000,000 + i), and its instruction
shares over one rollout from each of 32 fixed windows inside the oracle are logged.

If this learner does not beat random play with a perfect simulator in as many updates, the
zero-shot row is bounded by the actor-critic, not by the simulator.

`--oracle frame-rewards` keeps the UniSim simulator's frames and replaces only its rewards: the
sign of two-rooms' dense reward read from each pair of generated frames
(diffusion_generation.path_decreases; |decrease| under 0.01 reads as 0, an unread step as 0), so
that the reward model and the dynamics can be told apart.

    python benchmarks/unisim_oracle.py /work/runs/unisim-std/run --updates 1500 --evaluate-every 250 --json oracle.json
    python benchmarks/unisim_oracle.py /work/runs/unisim-std/run --oracle frame-rewards --updates 750 --json frame_rewards.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusion_generation import frame_geometry, path_decreases  # this folder, first on the path when run as a script

from wmlab.agents.diamond.config import DiamondCPUConfig
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core.types import Trajectory
from wmlab.data.dataset import load_dataset
from wmlab.envs.two_rooms import make_two_rooms_discrete
from wmlab.eval.returns import evaluate_agent
from wmlab.nn.text import load_text_encoder
from wmlab.pipelines.unisim import (
    INSTRUCTION_MOVES,
    InstructionSimulator,
    RandomAgent,
    ZeroShotAgent,
    instruction_moves,
    load_simulator,
)

#: Offsets (arena units) tried in order of length when a read position is refused: up to 2 pixels of 64.
NUDGE = 2 / 64
NUDGES = sorted(
    ((dx, dy) for dx in np.linspace(-NUDGE, NUDGE, 9) for dy in np.linspace(-NUDGE, NUDGE, 9)),
    key=lambda offset: (offset[0] ** 2 + offset[1] ** 2, offset),
)


class TwoRoomsOracle:
    """The world-model interface of ImaginationLearner over copies of two-rooms itself, each reset
    to the situation read from a burn-in window's last frame; actions are instruction indices."""

    def __init__(self, moves: np.ndarray, env_kwargs: dict, seed: int):
        self.moves, self.env_kwargs = moves, env_kwargs
        self.rng = np.random.default_rng(seed)
        self.read, self.unread = 0, 0  # windows whose situation was read / drawn at random instead

    def initial(self, batch_size: int) -> None:
        return None

    def observe(self, obs: dict, actions, is_first, state) -> tuple[None, dict]:
        last = np.asarray(obs["image"])[:, -1]  # (B, H, W, C) uint8
        agents, goals, doors = frame_geometry(last[:, None])
        envs, frames = [], []
        for b in range(len(last)):
            env = make_two_rooms_discrete(**self.env_kwargs)
            seed = int(self.rng.integers(1 << 31))
            observation = None
            if not (np.isnan(agents[b, 0]).any() or np.isnan(goals[b]).any() or np.isnan(doors[b])):
                observation = self._reset_near(env, seed, agents[b, 0], goals[b], float(doors[b]))
            if observation is None:  # unreadable, or no free position within NUDGE of the one read
                observation, _ = env.reset(seed=seed)
                self.unread += 1
            else:
                self.read += 1
            envs.append(env)
            frames.append(observation)
        return None, {"envs": envs, "frame": self._frames(frames), "done": np.zeros(len(envs), bool)}

    def _reset_near(self, env, seed: int, agent: np.ndarray, goal: np.ndarray, door_y: float):
        """Reset `env` to the situation read, the agent and goal moved by the smallest offset (at
        most NUDGE) that the environment accepts: a centre read from pixels next to a wall can lie
        a pixel inside the wall's margin. -> the first observation, or None."""
        for dx, dy in NUDGES:
            for gx, gy in ((0.0, 0.0), (dx, dy)):
                options = {"agent": (agent[0] + dx, agent[1] + dy), "goal": (goal[0] + gx, goal[1] + gy)}
                try:
                    return env.reset(seed=seed, options={**options, "door_y": door_y})[0]
                except ValueError:
                    continue
        return None

    @staticmethod
    def _frames(observations) -> torch.Tensor:
        return torch.as_tensor(np.stack(observations)).float() / 255

    def decode(self, state: dict) -> dict:
        return {"image": state["frame"]}

    def imagine(self, state: dict, policy, horizon: int, **options) -> Trajectory:
        envs, done = state["envs"], state["done"].copy()
        current = dict(state)
        taken, rewards, continues, frames = [], [], [], []
        for _ in range(horizon):
            instructions = policy(current).cpu().numpy()
            step_rewards, step_continues, observations = [], [], []
            for b, env in enumerate(envs):
                if done[b]:  # after the goal: the last frame again, nothing more paid
                    observations.append((current["frame"][b] * 255).round().byte().numpy())
                    step_rewards.append(0.0)
                    step_continues.append(0.0)
                    continue
                observation, reward, terminated, _, _ = env.step(int(self.moves[instructions[b]]))
                done[b] = terminated
                observations.append(observation)
                step_rewards.append(float(np.sign(reward)))
                step_continues.append(0.0 if terminated else 1.0)
            current = {"envs": envs, "frame": self._frames(observations), "done": done.copy()}
            taken.append(torch.as_tensor(instructions))
            rewards.append(step_rewards)
            continues.append(step_continues)
            frames.append(current["frame"])
        return Trajectory(
            states=None,
            actions=torch.stack(taken, 1),
            rewards=torch.tensor(rewards).T,
            continues=torch.tensor(continues).T,
            observations={"image": torch.stack(frames, 1)},
        )


class FrameRewards:
    """The UniSim simulator (InstructionSimulator) with its rewards replaced by the signs of the
    dense reward read from its own frames; its frames and continues kept."""

    def __init__(self, simulator, still: float = 0.01):
        self.simulator, self.still = simulator, still

    def initial(self, batch_size: int):
        return self.simulator.initial(batch_size)

    def observe(self, obs, actions, is_first, state):
        return self.simulator.observe(obs, actions, is_first, state)

    def decode(self, state) -> dict:
        return self.simulator.decode(state)

    def imagine(self, state, policy, horizon: int, **options) -> Trajectory:
        start = self.simulator.decode(state)["image"]
        trajectory = self.simulator.imagine(state, policy, horizon, **options)
        frames = torch.cat([start[:, None], trajectory.observations["image"]], 1).float().numpy()
        read = np.nan_to_num(path_decreases(frames), nan=0.0)
        signs = np.where(np.abs(read) < self.still, 0.0, np.sign(read))
        return replace(trajectory, rewards=torch.as_tensor(signs, dtype=torch.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the UniSim run whose dataset gives the burn-in windows")
    parser.add_argument("--updates", type=int, default=750)
    parser.add_argument("--evaluate-every", type=int, default=250)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-kwargs", default='{"reward": "dense"}')
    parser.add_argument("--oracle", choices=["environment", "frame-rewards"], default="environment")
    parser.add_argument("--guidance", type=float, default=1.0, help="the simulator's, with --oracle frame-rewards")
    parser.add_argument("--json", type=Path, required=True)
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    env_kwargs = json.loads(arguments.env_kwargs)
    spec, model = load_simulator(arguments.run)
    dataset = load_dataset(spec.dataset, seed=arguments.seed)
    instructions = tuple(INSTRUCTION_MOVES)
    env = make_two_rooms_discrete(**env_kwargs)
    meanings = env.get_action_meanings()
    image_shape = env.observation_space.shape if hasattr(env.observation_space, "shape") else None
    env.close()
    moves = instruction_moves(instructions, list(instructions), meanings, "two-rooms-discrete")
    config = DiamondCPUConfig().learner
    generator = torch.Generator().manual_seed(arguments.seed)
    learner = ImaginationLearner(config, tuple(image_shape), len(instructions), torch.device("cpu"), generator)
    options: dict = {}
    if arguments.oracle == "environment":
        oracle = TwoRoomsOracle(moves, env_kwargs, arguments.seed)
    else:
        with torch.no_grad():
            table = torch.as_tensor(load_text_encoder().encode(list(instructions))).float()
        oracle = FrameRewards(InstructionSimulator(model, table))
        options = {"guidance": arguments.guidance, "generator": generator}

    def evaluate() -> dict:
        return evaluate_agent(
            ZeroShotAgent(learner, moves), "two-rooms-discrete", arguments.episodes, 1_000_000, env_kwargs
        )

    drawn_from = dataset.sampler_state()  # the probe's windows leave training's draws as they were
    probe = dataset.sample(32, config.burn_in)
    dataset.load_sampler_state(drawn_from)
    rows, started = [], time.time()
    random_play = evaluate_agent(
        RandomAgent(len(meanings), arguments.seed), "two-rooms-discrete", arguments.episodes, 1_000_000, env_kwargs
    )
    print("random", json.dumps(random_play), flush=True)
    trace = []
    while True:
        if learner.updates % arguments.evaluate_every == 0 or learner.updates == arguments.updates:
            row = {"updates": learner.updates, "seconds": round(time.time() - started), **evaluate()}
            # the policy's choices inside the oracle: the instruction shares of one rollout from each probe window
            draws = torch.Generator().manual_seed(arguments.seed + 17)
            inside = learner.imagined_return(oracle, probe, "sample", draws, **{**options, "generator": draws})
            row["action_shares"] = [round(share, 3) for share in inside["action_shares"]]
            if trace:
                recent = trace[-arguments.evaluate_every :]
                row["imagined_reward"] = float(np.mean([m["ac/imagined_reward"] for m in recent]))
                row["entropy"] = float(np.mean([m["ac/entropy"] for m in recent]))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if learner.updates >= arguments.updates:
            break
        trace.append(learner.update(oracle, dataset.sample(arguments.batch_size, config.burn_in), **options))
    result = {
        "run": str(arguments.run),
        "seed": arguments.seed,
        "learner": "diamond-cpu's (DiamondCPUConfig().learner)",
        "oracle": arguments.oracle,
        "windows_read": getattr(oracle, "read", None),
        "windows_drawn_at_random": getattr(oracle, "unread", None),
        "random": random_play,
        "rows": rows,
    }
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What a UniSim zero-shot policy does in the real environment (issue 27), beside uniform random
moves on the same episodes: over `--episodes` evaluation episodes (seeds 1,000,000 + i, as the
pipeline's evaluation, actions sampled), the share of each move, the share of moves that leave
the agent where it was (blocked by a wall: its centre, read from the frames, moved less than
`--still` arena units), and the success and return.

    python benchmarks/unisim_action_shares.py OUT/zero-shot-seed0 --episodes 10

OUT/zero-shot-seedS: an output directory of `wmlab pipeline unisim` (its config.json and the
actor-critic's checkpoint are read).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from wmlab.core.config import parse_json_object
from wmlab.envs.adapter import make_env
from wmlab.eval.returns import evaluate_agent
from wmlab.pipelines.gaia import agent_centre
from wmlab.pipelines.unisim import RandomAgent, ZeroShotAgent, load_zero_shot


class WatchedAgent:
    """An agent of the real environment, counting the moves it makes and those after which the
    agent's centre (read from the next frame) stayed within `still` of where it was."""

    def __init__(self, agent, still: float):
        self.agent, self.still = agent, still
        self.moves: Counter = Counter()
        self.blocked = 0
        self.previous: tuple[np.ndarray, int] | None = None  # (centre, move) of the last step

    def act(self, obs, state, explore: bool):
        centre = agent_centre(np.asarray(obs["image"])[0])
        if self.previous is not None and not obs["is_first"][0]:
            before, move = self.previous
            if move != 0 and np.linalg.norm(centre - before) < self.still:  # move 0 is NOOP
                self.blocked += 1
        actions, state = self.agent.act(obs, state, explore)
        self.moves.update(np.asarray(actions).tolist())
        self.previous = (centre, int(np.asarray(actions)[0]))
        return actions, state

    def summary(self, meanings: list[str], result: dict) -> dict:
        total = sum(self.moves.values())
        moving = total - self.moves[0]
        return {
            "success": result["eval/success"],
            "return": result["eval/return"],
            "shares": {meaning: round(self.moves[index] / total, 3) for index, meaning in enumerate(meanings)},
            "blocked_share_of_moves": round(self.blocked / moving, 3) if moving else float("nan"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an output directory of `wmlab pipeline unisim`")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a kept actor-critic (OUT/kept/update-N)")
    parser.add_argument("--still", type=float, default=0.01, help="a move that shifts the agent less is blocked")
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    config, learner, moves = load_zero_shot(arguments.out, arguments.checkpoint)
    env_kwargs = parse_json_object("env_kwargs", config["env_kwargs"])
    env = make_env(config["env"], **env_kwargs)
    meanings = list(env.unwrapped.get_action_meanings())
    env.close()
    if meanings[0] != "NOOP":
        raise SystemExit(f"{config['env']}'s move 0 is {meanings[0]}, not NOOP: the blocked moves cannot be told")
    rows = {}
    players = {"zero_shot": ZeroShotAgent(learner, moves), "random": RandomAgent(len(meanings), config["seed"])}
    for name, player in players.items():
        watched = WatchedAgent(player, arguments.still)
        result = evaluate_agent(watched, config["env"], arguments.episodes, config["evaluation_seed"], env_kwargs)
        rows[name] = watched.summary(meanings, result)
        print(name, json.dumps(rows[name]), flush=True)


if __name__ == "__main__":
    main()

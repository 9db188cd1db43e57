"""What a UniSim zero-shot policy does in the real environment (issue 27): the share of each
instruction it chooses over `--episodes` evaluation episodes (seeds 1,000,000 + i, as the
pipeline's evaluation, actions sampled), with its success and return on them.

    python benchmarks/unisim_action_shares.py OUT/zero-shot-seed0 --episodes 10

OUT/zero-shot-seedS: an output directory of `wmlab pipeline unisim` (its config.json and the
actor-critic's checkpoint are read).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core.config import parse_json_object
from wmlab.eval.returns import evaluate_agent
from wmlab.pipelines.unisim import ZeroShotAgent, load_zero_shot


class CountingAgent(ZeroShotAgent):
    """The zero-shot agent, counting the instructions it chooses."""

    def __init__(self, learner: ImaginationLearner, moves, counts: Counter):
        super().__init__(learner, moves)
        self.counts = counts

    def act(self, obs, state, explore: bool):
        instructions, recurrent = self.learner.act(obs["image"], state, obs["is_first"], explore)
        self.counts.update(instructions.cpu().tolist())
        return self.moves[instructions.cpu().numpy()], recurrent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an output directory of `wmlab pipeline unisim`")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a kept actor-critic (OUT/kept/update-N)")
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    config, learner, moves = load_zero_shot(arguments.out, arguments.checkpoint)
    instructions, env_kwargs = tuple(config["instructions"]), parse_json_object("env_kwargs", config["env_kwargs"])
    counts: Counter = Counter()
    result = evaluate_agent(
        CountingAgent(learner, moves, counts), config["env"], arguments.episodes, config["evaluation_seed"], env_kwargs
    )
    total = sum(counts.values())
    shares = {text: round(counts[index] / total, 3) for index, text in enumerate(instructions)}
    print(json.dumps({"success": result["eval/success"], "return": result["eval/return"], "shares": shares}))


if __name__ == "__main__":
    main()

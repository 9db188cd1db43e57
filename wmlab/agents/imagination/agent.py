"""What every agent that learns only in a world model's imagination shares (DIAMOND's, IRIS's):
acting through the learner's actor-critic, checkpoints of the world model, the learner, the
optimisers, the update counter and the acting generator, and open-loop videos at the end of a run.

A subclass sets `world_model`, `learner` (an ImaginationLearner), `generator`, `updates` and
`config` (with `open_loop_report`), and says which optimisers it owns (`optimizers`) and how many
real frames its open-loop videos start from (`open_loop_context`); it writes `update` itself.

Shape legend: B environments, H, W, C image, M LSTM size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core import distributed
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.types import Observation, Transition
from wmlab.eval.open_loop import write_open_loop_report


def require_discrete(action_space: spaces.Space, algorithm: str) -> int:
    """The number of actions of a Discrete space; a clear refusal of anything else."""
    if not isinstance(action_space, spaces.Discrete):
        raise IncompatibleSpaceError(
            f"{algorithm} learns discrete actions (Atari, MinAtar), got the action space {action_space}; "
            "for two rooms use --env two-rooms-discrete"
        )
    return int(action_space.n)


class ImaginationAgent:
    """The shared half of an agent made of a world model and an `ImaginationLearner`."""

    learns_from = "replay"
    #: The observation key of the frames the actor reads.
    image_key = "image"

    world_model: Any
    learner: ImaginationLearner
    generator: torch.Generator
    updates: int
    config: Any

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The world model's optimisers by name (the learner keeps its own)."""
        raise NotImplementedError

    def open_loop_context(self) -> int:
        """Real frames that start the open-loop videos written at the end of a run."""
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model, "actor_critic": self.learner.network}

    # --- acting ------------------------------------------------------------------------------

    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs {image_key: (B, H, W, C) uint8, "is_first": (B,)} -> (actions (B,) int64, the
        actor-critic's LSTM state (hidden, cell) (B, M) each)."""
        actions, recurrent = self.learner.act(obs[self.image_key], state, obs["is_first"], explore)
        return actions.cpu().numpy().astype(np.int64), recurrent

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}  # learns from replay windows in `update`

    def on_run_end(self, run_dir: str | Path, replay: Any) -> None:
        """Write open-loop videos of the world model (wmlab.eval.open_loop)."""
        if not self.config.open_loop_report or replay is None or not distributed.is_main_process():
            return

        write_open_loop_report(self.world_model, replay, run_dir, length=20, context=self.open_loop_context())

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser moments, counters and the acting generator."""
        return {
            "world_model": dict(self.world_model.state_dict()),
            "learner": self.learner.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers().items()},
            "updates": self.updates,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.learner.load_state_dict(state["learner"])
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"].cpu())

"""DIAMOND (Alonso et al. 2024, arXiv:2405.12399): a diffusion world model learned from replay, and
an actor-critic learned only on the frames it generates.

One update (`update`, on a replay batch of B windows of T steps):
1. world model: the denoiser's EDM loss on the last frame(s) of each window and the reward / end
   model's cross-entropies along it (wmlab.models.diffusion), each part with its own AdamW and
   gradient clipping, as in the authors' trainer;
2. actor-critic: from the first `burn_in` real steps of each window, `horizon` imagined steps,
   lambda-returns, REINFORCE with a value baseline and an entropy bonus
   (wmlab.agents.imagination, shared with IRIS).

Acting: the actor-critic reads the real frames with its LSTM (the agent's recurrent state) and
samples its action, uniform with probability epsilon while collecting.

Shape legend: B batch (environments when acting), T time, H, W, C image, M LSTM size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.diamond.config import DiamondConfig
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core import distributed
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.diffusion import DiffusionWorldModel


class DiamondAgent:
    """DIAMOND's agent: a `DiffusionWorldModel` (`world_model`) and an `ImaginationLearner`."""

    learns_from = "replay"

    def __init__(
        self,
        config: DiamondConfig,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        if not isinstance(action_space, spaces.Discrete):
            raise IncompatibleSpaceError(
                f"DIAMOND learns discrete actions (Atari), got {action_space}; for two rooms use --env two-rooms-discrete"
            )
        self.config = config
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.world_model = DiffusionWorldModel(config.model, observation_space, action_space).to(self.device).eval()
            H, W = self.world_model.image_size
            self.learner = ImaginationLearner(
                config.learner,
                (H, W, self.world_model.image_channels),
                int(action_space.n),
                self.device,
                self.generator,
            )
        if config.learner.burn_in < 1 or config.learner.burn_in > 64:
            raise ValueError(f"learner.burn_in must be between 1 and 64, got {config.learner.burn_in}")
        self.denoiser_optimizer = torch.optim.AdamW(
            self.world_model.denoiser.parameters(),
            lr=config.denoiser_learning_rate,
            weight_decay=config.weight_decay,
            eps=config.adam_epsilon,
        )
        self.reward_end_optimizer = torch.optim.AdamW(
            self.world_model.reward_end.parameters(),
            lr=config.reward_end_learning_rate,
            weight_decay=config.weight_decay,
            eps=config.adam_epsilon,
        )
        self.updates = 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model, "actor_critic": self.learner.network}

    # --- acting ------------------------------------------------------------------------------

    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs {"image": (B, H, W, C) uint8, "is_first": (B,)} -> (actions (B,) int64, the
        actor-critic's LSTM state (hidden, cell) (B, M) each)."""
        actions, recurrent = self.learner.act(obs["image"], state, obs["is_first"], explore)
        return actions.cpu().numpy().astype(np.int64), recurrent

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}  # learns from replay windows in `update`

    # --- learning ----------------------------------------------------------------------------

    def update(self, batch: Batch) -> dict[str, float]:
        """One world-model update and (after `actor_critic_starts` of them) one actor-critic
        update on the same replay batch."""
        config = self.config
        T = batch.shape[1]
        needed = max(config.model.context + 1, config.learner.burn_in)
        if T < needed:
            raise ShapeError(
                f"DIAMOND trains on windows of at least {needed} steps (context + 1 and burn-in), got T={T}; pass --train.sequence-length 19"
            )
        warmup = min(1.0, (self.updates + 1) / config.warmup_updates) if config.warmup_updates > 0 else 1.0
        for optimizer, rate in (
            (self.denoiser_optimizer, config.denoiser_learning_rate),
            (self.reward_end_optimizer, config.reward_end_learning_rate),
        ):
            for group in optimizer.param_groups:
                group["lr"] = rate * warmup
        self.world_model.train()
        self.denoiser_optimizer.zero_grad(set_to_none=True)
        self.reward_end_optimizer.zero_grad(set_to_none=True)
        total, metrics = self.world_model.loss_terms(batch)
        total.backward()
        distributed.average_gradients(self.world_model)
        denoiser_norm = torch.nn.utils.clip_grad_norm_(
            self.world_model.denoiser.parameters(), config.denoiser_grad_clip
        )
        reward_norm = torch.nn.utils.clip_grad_norm_(
            self.world_model.reward_end.parameters(), config.reward_end_grad_clip
        )
        self.denoiser_optimizer.step()
        self.reward_end_optimizer.step()
        self.world_model.eval()
        self.updates += 1
        result = {name: float(value) for name, value in metrics.items()}
        result["wm/denoiser_grad_norm"] = float(denoiser_norm)
        result["wm/reward_end_grad_norm"] = float(reward_norm)
        if self.updates > config.actor_critic_starts:
            steps = config.imagination_denoising_steps
            result.update(
                self.learner.update(self.world_model, batch, **({"denoising_steps": steps} if steps > 0 else {}))
            )
        return result

    def on_run_end(self, run_dir: str | Path, replay: Any) -> None:
        """Write open-loop videos of the world model (wmlab.eval.open_loop)."""
        if not self.config.open_loop_report or replay is None or not distributed.is_main_process():
            return
        from wmlab.eval.open_loop import write_open_loop_report

        write_open_loop_report(self.world_model, replay, run_dir, length=20, context=self.config.model.context)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser moments, counters and the acting generator."""
        return {
            "world_model": dict(self.world_model.state_dict()),
            "learner": self.learner.state_dict(),
            "optimizers": {
                "denoiser": self.denoiser_optimizer.state_dict(),
                "reward_end": self.reward_end_optimizer.state_dict(),
            },
            "updates": self.updates,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.learner.load_state_dict(state["learner"])
        self.denoiser_optimizer.load_state_dict(state["optimizers"]["denoiser"])
        self.reward_end_optimizer.load_state_dict(state["optimizers"]["reward_end"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"].cpu())

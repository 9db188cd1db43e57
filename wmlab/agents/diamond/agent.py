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

import torch
from gymnasium import spaces

from wmlab.agents.diamond.config import DiamondConfig
from wmlab.agents.imagination.agent import ImaginationAgent, require_discrete
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core import distributed
from wmlab.core.errors import ShapeError
from wmlab.core.optim import clipped_step, make_module_optimizer
from wmlab.core.seeding import seeded
from wmlab.core.types import Batch
from wmlab.models.diffusion import DiffusionWorldModel


class DiamondAgent(ImaginationAgent):
    """DIAMOND's agent: a `DiffusionWorldModel` (`world_model`) and an `ImaginationLearner`
    (acting, checkpoints and open-loop videos: wmlab.agents.imagination.agent)."""

    def __init__(
        self,
        config: DiamondConfig,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        actions = require_discrete(action_space, "DIAMOND")
        self.config = config
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        with seeded(seed):
            self.world_model = DiffusionWorldModel(config.model, observation_space, action_space).to(self.device).eval()
            H, W = self.world_model.image_size
            self.learner = ImaginationLearner(
                config.learner,
                (H, W, self.world_model.image_channels),
                actions,
                self.device,
                self.generator,
            )
        if config.learner.burn_in < 1 or config.learner.burn_in > 64:
            raise ValueError(f"learner.burn_in must be between 1 and 64, got {config.learner.burn_in}")
        self.denoiser_optimizer = make_module_optimizer(self.world_model.denoiser, config.denoiser_optimizer)
        self.reward_end_optimizer = make_module_optimizer(self.world_model.reward_end, config.reward_end_optimizer)
        self.updates = 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"denoiser": self.denoiser_optimizer, "reward_end": self.reward_end_optimizer}

    def open_loop_context(self) -> int:
        return self.config.model.context

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
        self.world_model.train()
        self.denoiser_optimizer.zero_grad(set_to_none=True)
        self.reward_end_optimizer.zero_grad(set_to_none=True)
        total, metrics = self.world_model.loss_terms(batch)
        total.backward()
        distributed.average_gradients(self.world_model)
        denoiser_norm = clipped_step(
            self.denoiser_optimizer, self.world_model.denoiser.parameters(), config.denoiser_optimizer, self.updates
        )
        reward_norm = clipped_step(
            self.reward_end_optimizer,
            self.world_model.reward_end.parameters(),
            config.reward_end_optimizer,
            self.updates,
        )
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

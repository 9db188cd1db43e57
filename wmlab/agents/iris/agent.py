"""IRIS (Micheli et al. 2023, arXiv:2209.00588): a token world model (discrete autoencoder + GPT)
learned from replay, and an actor-critic learned only on the frames it generates.

One update (`update`, on a replay batch of B windows of T steps), IRIS's three stages in turn:
1. tokenizer: `tokenizer_frames` frames drawn from the batch, L1 + squared reconstruction error,
   codebook and commitment terms (Sec. 2.1; wmlab.models.tokens), its own Adam;
2. world model (after `world_model_starts` updates): the transformer's cross-entropies of the
   next frame's tokens, the reward and the end flag on the batch's windows, tokenized by the
   current tokenizer without gradients (Sec. 2.2), its own AdamW;
3. actor-critic (after `actor_critic_starts` updates): from the first `burn_in` real steps of
   each window, `horizon` imagined steps, lambda-returns, REINFORCE with a value baseline and an
   entropy bonus (Sec. 2.3; wmlab.agents.imagination, the learner DIAMOND uses too).

Acting: the actor-critic reads the tokenizer's reconstruction of each real frame with its LSTM
(the agent's recurrent state) and samples its action, uniform with probability epsilon while
collecting.

Shape legend: B batch (environments when acting), T time, N frames, H, W, C image, M LSTM size.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces

from wmlab.agents.imagination.agent import ImaginationAgent, require_discrete
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.agents.iris.config import IrisConfig
from wmlab.core import distributed
from wmlab.core.errors import ShapeError
from wmlab.core.images import to_pixels
from wmlab.core.optim import clipped_step, make_optimizer, weight_decay_groups
from wmlab.core.seeding import seeded
from wmlab.core.types import Batch
from wmlab.models.tokens import TokenWorldModel


class IrisAgent(ImaginationAgent):
    """IRIS's agent: a `TokenWorldModel` (`world_model`) and an `ImaginationLearner` (acting,
    checkpoints and open-loop videos: wmlab.agents.imagination.agent)."""

    def __init__(
        self,
        config: IrisConfig,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        require_discrete(action_space, "IRIS")
        if config.model.continuous_actions or config.model.text_size:
            raise ValueError(
                "IRIS's world model takes neither continuous actions nor text: leave model.continuous_actions False and model.text_size 0"
            )
        if config.tokenizer_frames < 1:
            raise ValueError(f"tokenizer_frames must be at least 1, got {config.tokenizer_frames}")
        self.config = config
        self.image_key = config.model.image_key
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        with seeded(seed):
            self.world_model = TokenWorldModel(config.model, observation_space, action_space).to(self.device).eval()
            if config.learner.burn_in > self.world_model.context:
                raise ValueError(
                    f"learner.burn_in ({config.learner.burn_in}) must not exceed the world model's context of {self.world_model.context} steps"
                )
            view = self.reconstruct if config.reconstructed_inputs else None
            self.learner = ImaginationLearner(
                config.learner,
                self.world_model.image_shape,
                int(action_space.n),
                self.device,
                self.generator,
                view=view,
            )
        self.tokenizer_optimizer = make_optimizer(self.world_model.tokenizer.parameters(), config.tokenizer_optimizer)
        self.world_model_optimizer = make_optimizer(self.transformer_groups(), config.world_model_optimizer)
        self.updates = 0

    def transformer_groups(self) -> list[dict[str, Any]]:
        """The world model's parameters outside the tokenizer: the weights of linear layers decay;
        biases, norms, embeddings (positions included) and the null action do not (IRIS's
        configure_optimizer)."""
        decay = self.config.world_model_optimizer.weight_decay
        # the action embedding is IRIS's nn.Embedding
        return weight_decay_groups(self.world_model, decay, (torch.nn.Linear,), ("tokenizer.",), ("embedding",))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"tokenizer": self.tokenizer_optimizer, "world_model": self.world_model_optimizer}

    def open_loop_context(self) -> int:
        return min(self.config.learner.burn_in, self.world_model.context - 1)

    @torch.no_grad()
    def reconstruct(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, H, W, C) in [0, 1] -> the tokenizer's reconstructions (N, H, W, C) in [0, 1]."""
        tokens, _ = self.world_model.tokenize(to_pixels(frames))
        return self.world_model.decode({"tokens": tokens})[self.config.model.image_key].clamp(0, 1)

    # --- learning ----------------------------------------------------------------------------

    def update(self, batch: Batch) -> dict[str, float]:
        """One tokenizer update, then one world-model update and one actor-critic update once
        their starts are passed, on the same replay batch (the first `model_rows` of it for the
        tokenizer and the world model, when set)."""
        config, model = self.config, self.world_model
        B, T = batch.shape
        if T < config.learner.burn_in or T < 2:
            raise ShapeError(
                f"IRIS trains on windows of at least {max(2, config.learner.burn_in)} steps (the burn-in), got T={T}"
            )
        if config.model_rows > B:
            raise ShapeError(f"model_rows {config.model_rows} exceeds the replay batch of {B} windows")
        model_batch = batch.rows(config.model_rows) if config.model_rows else batch
        result: dict[str, float] = {}

        # 1. tokenizer, on frames drawn from the batch
        frames = model.frames(model_batch.obs, ("B", "T"), {})
        count = min(config.tokenizer_frames, frames.shape[0])
        chosen = torch.randperm(frames.shape[0], generator=self.generator)[:count].to(self.device)
        # No dead-code restarts after `restart_codes_until` (IRIS: none): they re-mean tokens.
        restarting = self.updates < config.restart_codes_until
        model.tokenizer.quantizer.dead_code_threshold = config.model.dead_code_threshold if restarting else 0.0
        model.tokenizer.train()
        loss, terms, quantized, reconstruction = model.tokenizer_loss(frames[chosen])
        self.tokenizer_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(model.tokenizer)
        norm = clipped_step(
            self.tokenizer_optimizer, model.tokenizer.parameters(), config.tokenizer_optimizer, self.updates
        )
        model.tokenizer.eval()
        with torch.no_grad():
            error = (reconstruction.clamp(0, 1) - frames[chosen]).pow(2).flatten(1).mean(-1).clamp_min(1e-10)
            result["wm/reconstruction_psnr"] = float((-10 * error.log10()).mean())
        result.update({f"loss/{name}": float(value.detach()) for name, value in terms.items()})
        result.update({name: float(value) for name, value in quantized.metrics("vq").items()})
        result["wm/tokenizer_grad_norm"] = float(norm)
        self.updates += 1

        # 2. world model, on the windows tokenized without gradients
        if self.updates > config.world_model_starts:
            model.train()
            total, metrics = model.loss_terms(model_batch, tokenizer=False)
            self.world_model_optimizer.zero_grad(set_to_none=True)
            total.backward()
            distributed.average_gradients(model)
            parameters = [p for group in self.world_model_optimizer.param_groups for p in group["params"]]
            norm = clipped_step(self.world_model_optimizer, parameters, config.world_model_optimizer, self.updates)
            model.eval()
            result.update({name: float(value) for name, value in metrics.items()})
            result["wm/world_model_grad_norm"] = float(norm)

        # 3. actor-critic, in imagination
        if self.updates > config.actor_critic_starts:
            result.update(self.learner.update(model, batch))
        return result

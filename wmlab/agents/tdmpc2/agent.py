"""TD-MPC2 (Hansen, Su & Wang, arXiv:2310.16828): learn an implicit world model, a Q ensemble and a
policy prior from replay by TD learning; act by MPPI in the latent space, with the policy prior's
sequences mixed into the samples and the learned value closing each sequence.

Multi-task (observations with `task` and `action_mask` entries, `wmlab.envs.multitask`): each
environment's plan is conditioned on its task, the planner's candidates and the prior's sequences
are masked to the task's action dimensions before they are scored, and the executed actions, the
warm-start plans and the random seed-step actions are zero outside them.

Shape legend: B environments (or batch), T time, N candidates, P prior sequences, L horizon,
A action dim (K discrete actions), D latent size.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.tdmpc2.config import TDMPC2Config
from wmlab.core.distributed import average_gradients
from wmlab.core.errors import ShapeError
from wmlab.core.seeding import seeded
from wmlab.core.serialization import load_module_states, module_states
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.tdmpc import TDMPCModel
from wmlab.planners.mppi import MPPI


class TDMPC2Agent:
    """Agent: uniform random actions for the first `random_steps` steps, then MPPI planning through
    the latent model at every step (warm-started from the previous step's plan, which is the
    agent's recurrent state, one plan per environment)."""

    learns_from = "replay"

    def __init__(
        self,
        config: TDMPC2Config,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)
        # One CPU generator draws every random number of acting, so that its state alone makes
        # acting resumable whatever the device; updates draw from torch's global generator, which
        # the training loop checkpoints.
        self.generator = torch.Generator().manual_seed(seed)
        with seeded(seed):
            model = TDMPCModel(config.model, observation_space, action_space)
        self.model = model.to(self.device).eval()
        groups = model.parameter_groups()
        self.optimizer = torch.optim.Adam(
            [
                {"params": groups["encoder"], "lr": config.learning_rate * config.encoder_learning_rate_scale},
                {"params": groups["model"]},
            ],
            lr=config.learning_rate,
        )
        self.policy_optimizer = torch.optim.Adam(groups["policy"], lr=config.learning_rate, eps=1e-5)
        A = model.action_size
        extra = config.extra_iterations_for_large_actions if (not model.discrete and A >= 20) else 0
        self.planner = MPPI(
            replace(config.planner, iterations=config.planner.iterations + extra),
            generator=self.generator,
            device=self.device,
        )
        # The planner searches in model units: [-1, 1] per dimension, or indices.
        self.planning_space = spaces.Discrete(A) if model.discrete else spaces.Box(-1.0, 1.0, (A,), np.float32)
        self.horizon = config.planner.horizon
        self.estimate_value = self._estimate_value
        self.rollout_return = torch.compile(self._rollout_return) if config.compile else self._rollout_return
        self.compute_loss = torch.compile(self.model.compute_loss) if config.compile else self.model.compute_loss
        #: Environment steps taken while exploring (summed over environments): the clock of `random_steps`.
        self.steps = 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.model}

    # --- acting ------------------------------------------------------------------------------

    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs {key: (B, ...), "is_first": (B,)} -> (actions (B, A) float or (B,) int64, state).
        The state is the last plan of each environment, (B, L, A) means or (B, L, K)
        probabilities, which the next plan starts from (None before any plan); rows where
        is_first is set start afresh."""
        is_first = np.asarray(obs["is_first"], dtype=bool)
        B = is_first.shape[0]
        if explore and self.steps < self.config.random_steps:
            actions, next_state = self.random_actions(B, self.model.task_inputs(obs)[1]), None
        else:
            actions, next_state = self._plan_actions(obs, state, is_first, explore)
        if explore:
            self.steps += B
        if self.model.discrete:
            return actions.cpu().numpy().astype(np.int64), next_state
        return actions.cpu().numpy().astype(self.action_space.dtype, copy=False), next_state

    @torch.no_grad()
    def _plan_actions(
        self, obs: Observation, state: Any, is_first: np.ndarray, explore: bool
    ) -> tuple[torch.Tensor, Any]:
        tasks, masks = self.model.task_inputs(obs)  # (B,), (B, A) or None
        latents = self.model.encode({self.model.observation_key: obs[self.model.observation_key]}, task=tasks)
        check_shape("latents", latents, (is_first.shape[0], self.model.latent_size))
        if not self.config.plan:
            policy = self.model.policy_distribution(latents, generator=self.generator, task=tasks, action_mask=masks)
            return self.model.to_env_action(policy.action if explore else policy.mode), None
        actions, plans = [], []
        for index, latent in enumerate(latents):
            task = None if tasks is None else tasks[index]
            mask = None if masks is None else masks[index]
            fresh = state is None or bool(is_first[index])
            self.planner.previous_plan = None if fresh else torch.as_tensor(state[index], device=self.device)
            start = latent[None]
            rollout = (
                self.estimate_value
                if task is None and mask is None
                else partial(self.estimate_value, task=task, action_mask=mask)
            )
            prior = self.prior_actions(start, task=task, action_mask=mask)
            sequence = self.planner.plan(rollout, start, self.planning_space, prior_actions=prior, explore=explore)
            plan = self.planner.previous_plan
            if mask is not None:
                # The planner searches every dimension, but only the masked candidates were scored:
                # what it returns and keeps is zeroed outside the task's actions.
                sequence, plan = sequence * mask, plan * mask
            plans.append(plan)
            first = sequence[0]
            actions.append(first if self.model.discrete else self.model.to_env_action(first))
        return torch.stack(actions), torch.stack(plans).cpu()

    def prior_actions(
        self, latent: torch.Tensor, task: torch.Tensor | None = None, action_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """P sequences from the policy prior rolled through the dynamics from latent (1, D):
        (P, L, A) in [-1, 1] (zero outside a task's `action_mask` (A,)), or indices (P, L)."""
        count = self.config.planner.policy_trajectories
        if count == 0:
            return None
        z = latent.expand(count, -1)
        actions = []
        for step in range(self.horizon):
            action = self.model.policy_distribution(
                z, generator=self.generator, task=task, action_mask=action_mask
            ).action
            actions.append(action)
            if step < self.horizon - 1:
                z = self.model.next(z, action, task)
        sequences = torch.stack(actions, 1)
        return sequences.argmax(-1) if self.model.discrete else sequences

    def _estimate_value(
        self,
        latent: torch.Tensor,
        candidates: torch.Tensor,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rollout function handed to MPPI: latent (1, D), candidates (N, L, A) in [-1, 1] or
        indices (N, L) -> sum_t discount^t R(z_t, a_t) + discount^L V(z_L), V the average of two
        random Qs at a ~ p(z_L) (TD-MPC2's return estimate, Sec. 3.2 of arXiv:2310.16828).
        The random draws happen here, so that the rollout itself is deterministic (and compilable).
        A multi-task plan passes its task () and action mask (A,): candidates are masked before
        they are scored, as the authors mask their samples."""
        actions = (
            torch.nn.functional.one_hot(candidates, self.model.action_size).float()
            if self.model.discrete
            else candidates
        )
        if action_mask is not None:
            actions = actions * action_mask
        members = self.model.two_members(self.generator)
        noise = (
            None
            if self.model.discrete
            else torch.randn((actions.shape[0], self.model.action_size), generator=self.generator).to(self.device)
        )
        if task is None and action_mask is None:
            return self.rollout_return(latent, actions, members, noise)
        return self.rollout_return(latent, actions, members, noise, task, action_mask)

    def _rollout_return(
        self,
        latent: torch.Tensor,
        actions: torch.Tensor,
        members: torch.Tensor,
        noise: torch.Tensor | None,
        task: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        z = latent.expand(actions.shape[0], -1)
        total, discount = torch.zeros(actions.shape[0], device=self.device), 1.0
        gamma = self.model.task_discount(task)  # config.discount, or the task's own
        # With a termination head, nothing counts after a latent predicted terminal (P > 0.5), as
        # in the authors' episodic planning.
        alive = torch.ones(actions.shape[0], device=self.device)
        for step in range(actions.shape[1]):
            total = total + discount * alive * self.model.reward(z, actions[:, step], task)
            z = self.model.next(z, actions[:, step], task)
            discount *= gamma
            if self.model.termination_head is not None:
                alive = alive * (self.model.termination_logits(z, task) <= 0).float()
        return total + discount * alive * self.model.value(
            z, reduction="avg", members=members, noise=noise, task=task, action_mask=action_mask
        )

    def random_actions(self, count: int, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Uniform random environment actions: (count, A) within the bounds (zero outside a task's
        action_mask (count, A) in model units), or indices (count,)."""
        if self.model.discrete:
            return torch.randint(self.model.action_size, (count,), generator=self.generator)
        unit = torch.rand((count, self.model.action_size), generator=self.generator) * 2 - 1
        unit = unit.to(self.device)
        if action_mask is not None:
            unit = unit * action_mask
        return self.model.to_env_action(unit)

    # --- learning ----------------------------------------------------------------------------

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}  # learns from replay windows in `update`

    def update(self, batch: Batch) -> dict[str, float]:
        """One update of model and Q ensemble, one of the policy prior, one Polyak step of the
        target ensemble (TD-MPC2's update), on the first horizon + 1 steps of B windows."""
        T = batch.shape[1]
        if T < self.horizon + 1:
            raise ShapeError(
                f"TD-MPC2 trains on windows of horizon + 1 = {self.horizon + 1} steps, got T={T}; "
                f"pass --train.sequence-length {self.horizon + 1}"
            )
        window = slice(0, self.horizon + 1)
        batch = Batch(
            obs={key: value[:, window] for key, value in batch.obs.items()},
            action=batch.action[:, window],
            reward=batch.reward[:, window],
            is_first=batch.is_first[:, window],
            is_last=batch.is_last[:, window],
            is_terminal=batch.is_terminal[:, window],
        )
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.policy_optimizer.zero_grad(set_to_none=True)
        result = self.compute_loss(batch)
        result.total.backward()
        average_gradients(self.model)  # a no-op in one process; the mean over ranks under torchrun
        model_parameters = [parameter for group in self.optimizer.param_groups for parameter in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(model_parameters, self.config.grad_clip)
        self.optimizer.step()

        policy_loss, policy_metrics = self.model.policy_loss(
            result.latents, result.valid, task=result.task, action_mask=result.action_mask
        )
        policy_loss.backward()
        average_gradients(self.model.policy)
        policy_grad_norm = torch.nn.utils.clip_grad_norm_(self.model.policy.parameters(), self.config.grad_clip)
        self.policy_optimizer.step()
        self.model.update_target()
        self.model.eval()
        return {
            **result.metrics,
            **policy_metrics,
            "wm/grad_norm": float(grad_norm),
            "policy/grad_norm": float(policy_grad_norm),
        }

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights (target ensemble and Q scale included), both optimisers, the step clock and the
        acting generator: everything a resumed run needs to continue exactly."""
        return {
            **module_states(self.modules()),
            "optimizer": self.optimizer.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints written before 2026-12-06 name the model "model".
        load_module_states(self.modules(), state, aliases={"world_model": "model"})
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"].cpu())

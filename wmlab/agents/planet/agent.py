"""PlaNet (Hafner et al. 2019, arXiv:1811.04551): learn an RSSM from replay, act by planning in its
latent space with the cross-entropy method, replanning at every step.

Shape legend: B environments (or batch), T time, N candidates, L horizon, A action dim.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.planet.config import PlaNetConfig
from wmlab.core import distributed
from wmlab.core.distributed import average_gradients
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.rssm import RSSM, State
from wmlab.planners.cem import CEM


class PlaNetAgent:
    """Agent: random actions for the first `random_steps` steps, then the first action of the CEM
    plan over the RSSM's imagined rewards. The recurrent state between `act` calls is
    {"deter" (B, D), "stoch" (B, S), "action" (B, A)}, the action as the model encodes it."""

    learns_from = "replay"

    def __init__(
        self,
        config: PlaNetConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        self.config = config
        self.observation_space, self.action_space = observation_space, action_space
        self.device = torch.device(device)
        # A CPU generator for the planner (it draws on the CPU) and one on the device for the
        # model's latent samples; their states make acting and learning resumable.
        self.generator = torch.Generator().manual_seed(seed)
        self.model_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RSSM(config.model, observation_space, action_space)
        self.world_model = model.to(self.device)
        self.world_model.generator = self.model_generator
        self.optimizer = torch.optim.Adam(
            self.world_model.parameters(), lr=config.learning_rate, eps=config.adam_epsilon
        )
        self.planner = CEM(config.planner, generator=self.generator, device=self.device)
        self.steps = 0
        self.plan_statistics: list[
            tuple[float, float]
        ] = []  # (imagined return of the plan, its final std) per exploring plan

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model}

    # --- acting ------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """obs {key: (B, ...), "is_first": (B,)} -> (actions (B, A) float for a Box, (B,) int64 for
        a Discrete space; the new recurrent state)."""
        model = self.world_model
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
        B = check_shape("obs['is_first']", is_first, ("B",))["B"]
        if state is None:
            state = {**model.initial(B), "action": torch.zeros(B, model.action_size, device=self.device)}
        state = {name: value.to(self.device) for name, value in state.items()}
        latent = model.filter_step(obs, state["action"], is_first, state)
        if explore and self.steps < self.config.random_steps:
            actions = self.random_actions(B)
        else:
            plans = []
            for row in range(B):
                start = {name: value[row : row + 1] for name, value in latent.items()}
                plans.append(self.planner.plan(self.rollout, start, self.action_space))
                if explore:  # what the planner expects of its plan, logged with the next update
                    self.plan_statistics.append(
                        (
                            float(self.rollout(start, plans[-1][None].to(self.device))[0]),
                            float(self.planner.distribution["std"].mean())
                            if "std" in self.planner.distribution
                            else math.nan,
                        )
                    )
            actions = torch.stack([plan[0] for plan in plans]).cpu()
            if explore:
                actions = self.add_noise(actions)
        if explore:
            self.steps += B
        encoded = model.encode_action(actions.to(self.device), ("B",), {"B": B})
        environment_actions = actions.numpy().astype(
            np.int64 if model.discrete else self.action_space.dtype, copy=False
        )
        return environment_actions, {"deter": latent["deter"], "stoch": latent["stoch"], "action": encoded}

    @torch.no_grad()
    def rollout(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        """The planner's rollout function: one filtered state (1, ...), candidates (N, L, A) or
        indices (N, L) -> the sum of imagined rewards (N,) (PlaNet's objective, no discount)."""
        N = actions.shape[0]
        starts = {name: value.expand(N, -1) for name, value in state.items()}
        return self.world_model.imagine(starts, actions).rewards.sum(1)

    def random_actions(self, count: int) -> torch.Tensor:  # -> (count, A) float or (count,) int64
        if isinstance(self.action_space, spaces.Discrete):
            return torch.randint(int(self.action_space.n), (count,), generator=self.generator)
        low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        return low + torch.rand((count, low.shape[0]), generator=self.generator) * (high - low)

    def add_noise(self, actions: torch.Tensor) -> torch.Tensor:
        noise = self.config.exploration_noise
        if noise <= 0:
            return actions
        if isinstance(self.action_space, spaces.Discrete):
            replace = torch.rand(actions.shape, generator=self.generator) < noise
            return torch.where(replace, self.random_actions(actions.shape[0]), actions)
        low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        jitter = torch.randn(actions.shape, generator=self.generator) * noise * (high - low) / 2
        return torch.clamp(actions + jitter, low, high)

    # --- learning ----------------------------------------------------------------------------

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step on the RSSM loss for B windows of T steps; also reports the planner's
        imagined return of its plans (`plan/imagined_return`) and the final CEM std (`plan/std`)
        averaged over the plans made while exploring since the last update."""
        loss, metrics, _ = self.world_model.loss_and_posterior(batch.to_torch(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.world_model)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        metrics["wm/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), max_norm)
        self.optimizer.step()
        names = list(metrics)
        values = dict(zip(names, torch.stack([metrics[name].float() for name in names]).tolist()))
        if self.plan_statistics:
            returns, spreads = np.array(self.plan_statistics).T
            values["plan/imagined_return"] = float(returns.mean())
            if np.isfinite(spreads).all():
                values["plan/std"] = float(spreads.mean())
            self.plan_statistics.clear()
        return values

    def on_run_end(self, run_dir: str | Path, replay: Any) -> None:
        """Open-loop prediction videos and an imagined-vs-real reward figure (wmlab.eval.open_loop)."""
        if not self.config.open_loop_report or replay is None or not distributed.is_main_process():
            return
        from wmlab.eval.open_loop import write_open_loop_report

        write_open_loop_report(self.world_model, replay, run_dir)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_model": dict(self.world_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
            "model_generator": self.model_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        self.model_generator.set_state(torch.as_tensor(state["model_generator"]).cpu())

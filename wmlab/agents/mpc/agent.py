"""Model-predictive control: learn a world model from replay, act by planning through it,
replanning at every step. One agent, two presets:

- MPC (Nagabandi et al. 2018, arXiv:1708.02596, `MPCConfig`): a feed-forward dynamics model of
  'vector' observations, random shooting;
- PlaNet (Hafner et al. 2019, arXiv:1811.04551, `PlaNetConfig`): an RSSM filtered along the
  episode, the cross-entropy method over its latent space.

The model and the planner are built from the config's `model` and `planner` fields; every
candidate is scored by `wmlab.planners.rollout.imagined_return`.

Shape legend: B environments (or batch), T time, N candidates, L horizon, A action dim, D features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.mpc.config import PlanningConfig
from wmlab.core import distributed
from wmlab.core.distributed import average_gradients
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.seeding import seeded
from wmlab.core.serialization import load_module_states, module_states
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Observation, Transition
from wmlab.eval.open_loop import write_open_loop_report
from wmlab.models.mlp import MLPWorldModel, MLPWorldModelConfig
from wmlab.models.rssm import RSSM, RSSMConfig
from wmlab.planners.cem import CEM, CEMConfig
from wmlab.planners.mppi import MPPI, MPPIConfig
from wmlab.planners.rollout import imagined_return
from wmlab.planners.shooting import RandomShooting, RandomShootingConfig, check_action_space

#: The world-model families and planners a preset may name, by their config class.
MODEL_FAMILIES = {MLPWorldModelConfig: MLPWorldModel, RSSMConfig: RSSM}
PLANNERS = {RandomShootingConfig: RandomShooting, CEMConfig: CEM, MPPIConfig: MPPI}


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """What the feed-forward model (MPC's preset) needs."""
    if not isinstance(observation_space, spaces.Dict) or "vector" not in observation_space.spaces:
        keys = sorted(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else observation_space
        raise IncompatibleSpaceError(
            f"mpc plans with a feed-forward model of 'vector' observations, and this environment gives {keys}. "
            "Pixel observations need a world model with an image encoder: PlaNet, Dreamer (V1-V3), IRIS or "
            "TD-MPC2 from pixels; `wmlab list` shows which are available."
        )
    vector = observation_space["vector"]
    if not isinstance(vector, spaces.Box) or len(vector.shape) != 1:
        raise IncompatibleSpaceError(f"mpc needs the 'vector' observation to be a 1-D Box, got {vector}")
    check_action_space(action_space)
    if isinstance(action_space, spaces.Discrete) and int(action_space.start) != 0:
        raise IncompatibleSpaceError(f"mpc takes Discrete actions that start at 0, got {action_space}")


def lookup(table: dict[type, Any], config: Any, what: str) -> Any:
    for config_class, built in table.items():
        if isinstance(config, config_class):
            return built
    names = ", ".join(config_class.__name__ for config_class in table)
    raise TypeError(f"the model-predictive-control agent has no {what} for {type(config).__name__}; one of {names}")


class MPCAgent:
    """Agent: random actions for the first `random_steps` steps, then the first action of the plan
    over the model's imagined returns (plus exploration noise while exploring), replanned at every
    step. A model that filters (the RSSM) carries the recurrent state {"deter" (B, D), "stoch"
    (B, S), "action" (B, A)} between `act` calls, the action as the model encodes it; a
    feed-forward model plans from the newest observation and carries None."""

    learns_from = "replay"

    def __init__(
        self,
        config: PlanningConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        family = lookup(MODEL_FAMILIES, config.model, "world model")
        if family is MLPWorldModel:
            check_spaces(observation_space, action_space)
        self.config = config
        self.observation_space, self.action_space = observation_space, action_space
        self.device = torch.device(device)
        # One CPU generator draws the planner's and the exploration's random numbers (so that a plan
        # does not depend on the device); a model that samples its latents has its own on the
        # device. Their states make acting and learning resumable.
        self.generator = torch.Generator().manual_seed(seed)
        # Seed the initial weights without disturbing the caller's global random state.
        with seeded(seed):
            model = family(config.model, observation_space, action_space)
        self.world_model = model.to(self.device)
        self.model_generator: torch.Generator | None = None
        if hasattr(model, "generator"):
            self.model_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
            self.world_model.generator = self.model_generator
        #: Whether the model filters observations into a recurrent state (else it plans from them).
        self.filters = hasattr(model, "filter_step")
        self.optimizer = torch.optim.Adam(
            self.world_model.parameters(), lr=config.learning_rate, eps=config.adam_epsilon
        )
        planner = lookup(PLANNERS, config.planner, "planner")
        self.planner = planner(config.planner, generator=self.generator, device=self.device)
        #: Environment steps taken while exploring (summed over environments): the clock of `random_steps`.
        self.steps = 0
        #: Imagined return of each plan made while exploring, and its final spread (planners that
        #: have one: CEM), logged with the next update.
        self.plan_returns: list[float] = []
        self.plan_spreads: list[float] = []

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model}

    # --- acting ------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, dict[str, torch.Tensor] | None]:
        """obs {key: (B, ...), "is_first": (B,)} -> (actions (B, A) float for a Box, (B,) int64 for
        a Discrete space; the new recurrent state, None for a feed-forward model)."""
        model = self.world_model
        if self.filters:
            is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
            B = check_shape("obs['is_first']", is_first, ("B",))["B"]
            if state is None:
                state = {**model.initial(B), "action": torch.zeros(B, model.action_size, device=self.device)}
            state = {name: value.to(self.device) for name, value in state.items()}
            latent = model.filter_step(obs, state["action"], is_first, state)
            starts = [{name: value[row : row + 1] for name, value in latent.items()} for row in range(B)]
        else:
            vector = torch.as_tensor(np.asarray(obs["vector"]), dtype=torch.float32)
            B = check_shape("obs['vector']", vector, ("B", model.observation_size))["B"]
            starts = list(vector.to(self.device))
        if explore and self.steps < self.config.random_steps:
            actions = self.random_actions(B)
        else:
            actions = torch.stack([self.plan(start, explore)[0] for start in starts]).cpu()
            if explore:
                actions = self.add_noise(actions)
        if explore:
            self.steps += B
        environment_actions = actions.numpy().astype(
            np.int64 if isinstance(self.action_space, spaces.Discrete) else self.action_space.dtype, copy=False
        )
        if not self.filters:
            return environment_actions, None
        encoded = model.encode_action(actions.to(self.device), ("B",), {"B": B})
        return environment_actions, {"deter": latent["deter"], "stoch": latent["stoch"], "action": encoded}

    def plan(self, start: Any, explore: bool) -> torch.Tensor:
        """The planner's sequence (L, A) or indices (L,) from one start; while exploring, what the
        planner expects of it is kept for the next update's metrics."""
        plan = self.planner.plan(self.rollout, start, self.action_space)
        if explore:
            self.plan_returns.append(float(self.rollout(start, plan[None].to(self.device))[0]))
            spread = getattr(self.planner, "distribution", {}).get("std")
            if spread is not None:
                self.plan_spreads.append(float(spread.mean()))
        return plan

    @torch.no_grad()
    def rollout(self, state: Any, actions: torch.Tensor) -> torch.Tensor:
        """The planner's rollout function: one start (a filtered state (1, ...) or an observation
        (D,)), candidates (N, L, A) or indices (N, L) -> their imagined discounted returns (N,)."""
        return imagined_return(self.world_model, state, actions, self.config.discount)

    def random_actions(self, count: int) -> torch.Tensor:  # -> (count, A) float or (count,) int64
        if isinstance(self.action_space, spaces.Discrete):
            return torch.randint(int(self.action_space.n), (count,), generator=self.generator)
        low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        return low + torch.rand((count, low.shape[0]), generator=self.generator) * (high - low)

    def add_noise(self, actions: torch.Tensor) -> torch.Tensor:
        """Exploration noise (`PlanningConfig.exploration_noise`): Gaussian with that std in units of
        half the action range for a Box (clipped to the bounds); a random action with that
        probability for a Discrete space."""
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
        return {}  # learns from replay windows in `update`

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step on the world-model loss for B windows of T steps; also reports the imagined
        return of the plans made while exploring since the last update (`plan/imagined_return`) and,
        for a planner with a spread (CEM), its final std (`plan/std`)."""
        self.world_model.train()
        loss, metrics = self.world_model.loss(batch.to_torch(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.world_model)  # a no-op in one process; the mean over ranks under torchrun
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), max_norm)
        self.optimizer.step()
        metrics["wm/grad_norm"] = float(grad_norm)
        if self.plan_returns:
            metrics["plan/imagined_return"] = float(np.array(self.plan_returns).mean())
        if self.plan_spreads:
            metrics["plan/std"] = float(np.array(self.plan_spreads).mean())
        self.plan_returns.clear()
        self.plan_spreads.clear()
        return metrics

    def on_run_end(self, run_dir: str | Path, replay: Any) -> None:
        """Open-loop prediction videos and an imagined-vs-real reward figure (wmlab.eval.open_loop)."""
        if not self.config.open_loop_report or replay is None or not distributed.is_main_process():
            return
        write_open_loop_report(self.world_model, replay, run_dir)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser moments, the step clock and the random state: everything that a
        resumed run needs to continue exactly as this one would have."""
        state = {
            **module_states(self.modules()),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
            # Plans made since the last update: their statistics belong to the next update's metrics.
            "plan_returns": torch.tensor(self.plan_returns, dtype=torch.float64),
            "plan_spreads": torch.tensor(self.plan_spreads, dtype=torch.float64),
        }
        if self.model_generator is not None:
            state["model_generator"] = self.model_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints of the MPC preset written before 2026-12-06 name the model "model".
        load_module_states(self.modules(), state, aliases={"world_model": "model"})
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        # Absent from checkpoints written before 2026-12-06.
        self.plan_returns = torch.as_tensor(state.get("plan_returns", [])).tolist()
        self.plan_spreads = torch.as_tensor(state.get("plan_spreads", [])).tolist()
        if self.model_generator is not None:
            self.model_generator.set_state(torch.as_tensor(state["model_generator"]).cpu())

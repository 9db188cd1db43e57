"""Dreamer V1, V2 and V3: learn an RSSM world model from replay, and an actor and a critic
entirely inside it (arXiv:1912.01603, arXiv:2010.02193, arXiv:2301.04104).

One update:
1. world model: the RSSM loss on a replay batch of B x T steps (wmlab.models.rssm);
2. imagination: from each of the B * T posterior states, H steps of the prior driven by the actor;
3. actor: lambda-returns of the imagined rewards and critic values; the actor follows REINFORCE
   with the (normalised) advantage, the return backpropagated through the dynamics, or a mix,
   plus an entropy bonus;
4. critic: regresses the lambda-returns (two-hot or squared error), optionally towards a slow
   copy of itself; the slow copy then moves towards it.

The versions differ only in settings (wmlab.agents.dreamer.config).

Shape legend: B batch (environments when acting), T time, N = B * T imagination starts,
H horizon, A action dim, F features, K actions of a Discrete space.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.agents.dreamer.config import DreamerConfig
from wmlab.agents.dreamer.hooks import UpdateHook, hooks_from_config
from wmlab.agents.dreamer.optim import Optimizer
from wmlab.core import distributed
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.seeding import seeded
from wmlab.core.serialization import load_module_states, module_states
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Observation, Trajectory, Transition
from wmlab.eval.open_loop import write_open_loop_report
from wmlab.losses.returns import lambda_returns, return_scale, update_return_percentiles
from wmlab.models.rssm import RSSM, State, dense_stack
from wmlab.nn.categorical import categorical_entropy, log_softmax, sample_one_hot, unimix_logits
from wmlab.nn.distributions import TwoHot

# ----------------------------------------------------------------------------------------------
# Action distributions: sample (differentiable), log_prob, entropy, mode — all over (..., A)


class OneHotPolicy:
    """Categorical over K actions (one-hot (..., K)); samples carry straight-through gradients."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # (..., K), already unimixed log-probabilities

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        return sample_one_hot(self.logits, generator)

    def sample_from(self, noise: torch.Tensor) -> torch.Tensor:
        """The sample for uniform noise (...) drawn ahead (see `Actor.draw_noise`)."""
        return sample_one_hot(self.logits, uniform=noise)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return (action * log_softmax(self.logits)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return categorical_entropy(self.logits)

    def mode(self) -> torch.Tensor:
        return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).float()


class NormalPolicy:
    """Independent Normals over A dimensions (DreamerV3's bounded normal: the mean is squashed by
    tanh and the std bounded; samples may leave [-1, 1] and are clipped by whoever uses them)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        return self.sample_from(torch.randn(self.mean.shape, generator=generator, device=self.mean.device))

    def sample_from(self, noise: torch.Tensor) -> torch.Tensor:
        """The sample for standard normal noise (..., A) drawn ahead (see `Actor.draw_noise`)."""
        return self.mean + self.std * noise

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 * math.log(2 * math.pi * math.e) + self.std.log()).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.mean


class TanhNormalPolicy(NormalPolicy):
    """tanh of independent Normals (DreamerV1): samples lie in (-1, 1)."""

    def sample_from(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().sample_from(noise))

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        action = action.clamp(-1 + 1e-6, 1 - 1e-6)
        # Change of variables: log p(a) = log N(atanh a) - sum log(1 - a^2).
        return super().log_prob(torch.atanh(action)) - torch.log1p(-action.pow(2) + 1e-6).sum(-1)

    def entropy(self) -> torch.Tensor:
        # No closed form (DreamerV1 estimates it from samples). The Normal's entropy plus the
        # log-Jacobian at the mean is a deterministic approximation that draws no random numbers;
        # DreamerV1 gives the entropy no weight, so here it is mostly a metric.
        return super().entropy() + torch.log1p(-torch.tanh(self.mean).pow(2) + 1e-6).sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)


class Actor(nn.Module):
    """features (..., F) -> an action distribution in model space ([-1, 1]^A or one-hot over K)."""

    def __init__(
        self,
        feature_size: int,
        action_size: int,
        discrete: bool,
        config: DreamerConfig,
        units: int,
        norm: str,
        activation: str,
    ):
        super().__init__()
        self.config, self.discrete, self.action_size = config, discrete, action_size
        self.trunk = dense_stack(feature_size, units, config.actor_layers, norm, activation)
        width = units if config.actor_layers > 0 else feature_size
        self.output = nn.Linear(width, action_size if discrete else 2 * action_size)
        with torch.no_grad():
            self.output.weight.mul_(config.actor_output_scale)
            self.output.bias.mul_(config.actor_output_scale)
        if not discrete:
            # Where the raw std output is 0 the tanh-normal has init_std: softplus(raw + shift).
            self.std_shift = math.log(math.expm1(config.actor_init_std))

    def draw_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """The noise of `shape` samples, drawn ahead: uniforms (...) for a discrete actor,
        standard normals (..., A) for a continuous one; turned into actions by `sample_from`."""
        if self.discrete:
            return torch.rand(shape, generator=generator, device=device)
        return torch.randn((*shape, self.action_size), generator=generator, device=device)

    def forward(self, features: torch.Tensor):
        return self.distribution(self.raw(features))

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """The network's outputs (..., K or 2A), before they become a distribution."""
        return self.output(self.trunk(features))

    def distribution(self, output: torch.Tensor):
        """The action distribution of raw outputs (..., K or 2A)."""
        config = self.config
        if self.discrete:
            return OneHotPolicy(unimix_logits(output, config.actor_unimix))
        mean, std = output.chunk(2, -1)
        if config.continuous_actor == "tanh_normal":
            mean = config.actor_mean_scale * torch.tanh(mean / config.actor_mean_scale)
            return TanhNormalPolicy(mean, F.softplus(std + self.std_shift) + config.actor_min_std)
        # DreamerV3's bounded normal: std = (max - min) * sigmoid(raw + 2) + min.
        std = (config.actor_max_std - config.actor_min_std) * torch.sigmoid(std + 2.0) + config.actor_min_std
        return NormalPolicy(torch.tanh(mean), std)


class Critic(nn.Module):
    """features (..., F) -> value (...), via symexp two-hot bins or a scalar."""

    def __init__(self, feature_size: int, config: DreamerConfig, units: int, norm: str, activation: str):
        super().__init__()
        self.two_hot = TwoHot(config.critic_bins) if config.critic_head == "twohot" else None
        self.trunk = dense_stack(feature_size, units, config.critic_layers, norm, activation)
        width = units if config.critic_layers > 0 else feature_size
        self.output = nn.Linear(width, config.critic_bins if self.two_hot else 1)
        if self.two_hot is not None:
            # Zero-initialised so that the first value predictions are exactly 0 (DreamerV3).
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw outputs (..., bins) or (..., 1)."""
        return self.output(self.trunk(features))

    def value(self, output: torch.Tensor) -> torch.Tensor:
        return self.two_hot.decode(output) if self.two_hot is not None else output[..., 0]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (...) of `target` (...): two-hot cross-entropy, or 0.5 * squared
        error (a unit-variance Gaussian, DreamerV1/V2)."""
        if self.two_hot is not None:
            return self.two_hot.loss(output, target)
        return 0.5 * (output[..., 0] - target.detach()).pow(2)


def check_spaces(config: DreamerConfig, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if config.continuous_actor not in ("bounded_normal", "tanh_normal"):
        raise ValueError(f"continuous_actor must be bounded_normal or tanh_normal, got {config.continuous_actor!r}")
    if config.critic_head not in ("twohot", "mse"):
        raise ValueError(f"critic_head must be twohot or mse, got {config.critic_head!r}")
    if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
        raise IncompatibleSpaceError(f"Dreamer takes a bounded 1-D Box or a Discrete action space, got {action_space}")


# ----------------------------------------------------------------------------------------------


class DreamerAgent:
    """Agent: acts with the actor on the RSSM's filtered state; learns world model, actor and
    critic from replay. The recurrent state passed between `act` calls is
    {"deter" (B, D), "stoch" (B, S * K), "action" (B, A)} in model space."""

    learns_from = "replay"

    def __init__(
        self,
        config: DreamerConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        check_spaces(config, observation_space, action_space)
        self.config = config
        self.observation_space, self.action_space = observation_space, action_space
        self.device = torch.device(device)
        # One generator on the agent's device draws every random number of acting and learning,
        # so that its state makes the agent resumable.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        with seeded(seed):
            model = RSSM(config.model, observation_space, action_space)
            units = config.units if config.units is not None else config.model.size.units
            norm, activation = config.model.norm, config.model.activation
            actor = Actor(model.feature_size, model.action_size, model.discrete, config, units, norm, activation)
            critic = Critic(model.feature_size, config, units, norm, activation)
        self.world_model = model.to(self.device)
        self.world_model.generator = self.generator
        self.actor = actor.to(self.device)
        self.critic = critic.to(self.device)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.model_optimizer = Optimizer(self.world_model, config.model_optimizer)
        self.actor_optimizer = Optimizer(self.actor, config.actor_optimizer)
        self.critic_optimizer = Optimizer(self.critic, config.critic_optimizer)
        # Running return percentiles (DreamerV3's return normalisation), start at 0 as the authors' do.
        self.return_low = torch.zeros((), device=self.device)
        self.return_high = torch.zeros((), device=self.device)
        #: Study interventions in the update (wmlab.agents.dreamer.hooks), run in order.
        self.hooks: list[UpdateHook] = hooks_from_config(config)
        self.updates = 0
        #: Environment steps taken while exploring (summed over environments): the clock of `random_steps`.
        self.steps = 0

    def modules(self) -> dict[str, nn.Module]:
        return {
            "world_model": self.world_model,
            "actor": self.actor,
            "critic": self.critic,
            "slow_critic": self.slow_critic,
        }

    @property
    def reinforce_weight(self) -> float:
        return self.config.reinforce_discrete if self.world_model.discrete else self.config.reinforce_continuous

    # --- acting ------------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        state = self.world_model.initial(batch_size)
        state["action"] = torch.zeros(batch_size, self.world_model.action_size, device=self.device)
        return state

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """obs {key: (B, ...), "is_first": (B,)} -> (actions (B, A) float for a Box, (B,) int64 for
        a Discrete space; the new recurrent state)."""
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
        sizes = check_shape("obs['is_first']", is_first, ("B",))
        B = sizes["B"]
        state = (
            self.initial_state(B) if state is None else {name: value.to(self.device) for name, value in state.items()}
        )
        model = self.world_model
        latent = model.filter_step(obs, state["action"], is_first, state)
        features = model.features(latent)
        if explore and self.steps < self.config.random_steps:
            action = self.random_actions(B)
        else:
            policy = self.actor(features)
            action = policy.sample(self.generator) if explore else policy.mode()
            if explore and self.config.exploration_noise > 0:
                action = self.add_noise(action)
        if model.discrete:
            action = F.one_hot(action.argmax(-1), model.action_size).float()
            environment_action = action.argmax(-1).cpu().numpy().astype(np.int64)
        else:
            action = action.clamp(-1.0, 1.0)
            environment_action = (
                model.environment_action(action).cpu().numpy().astype(self.action_space.dtype, copy=False)
            )
        if explore:
            self.steps += B
        return environment_action, {"deter": latent["deter"], "stoch": latent["stoch"], "action": action}

    def random_actions(self, count: int) -> torch.Tensor:  # -> (count, A) in model space
        A = self.world_model.action_size
        if self.world_model.discrete:
            index = torch.randint(A, (count,), generator=self.generator, device=self.device)
            return F.one_hot(index, A).float()
        return torch.rand((count, A), generator=self.generator, device=self.device) * 2 - 1

    def add_noise(self, action: torch.Tensor) -> torch.Tensor:
        noise = self.config.exploration_noise
        if self.world_model.discrete:
            replace = torch.rand(action.shape[:1], generator=self.generator, device=self.device) < noise
            return torch.where(replace[:, None], self.random_actions(action.shape[0]), action)
        jitter = torch.randn(action.shape, generator=self.generator, device=self.device) * noise
        return (action + jitter).clamp(-1.0, 1.0)

    # --- learning ----------------------------------------------------------------------------

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}  # learns from replay windows in `update`

    def update(self, batch: Batch) -> dict[str, float]:
        """One update of world model, actor and critic from B windows of T steps."""
        batch = batch.to_torch(self.device)
        model_loss, metrics, posterior = self.world_model.loss_and_posterior(batch)
        metrics["wm/grad_norm"] = self.model_optimizer.step(loss=model_loss)

        starts = {"deter": posterior["deter"].flatten(0, 1), "stoch": posterior["stoch"].flatten(0, 1)}
        start_continue = 1.0 - batch.is_terminal.flatten(0, 1).float()  # (N,)
        for hook in self.hooks:
            starts = hook.starts(self.world_model, starts, self.generator)
        metrics.update(self.learn_behaviour(starts, start_continue))

        self.updates += 1
        if self.updates % self.config.slow_critic_every == 0:
            with torch.no_grad():
                for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                    slow.lerp_(fast, self.config.slow_critic_fraction)
        names = list(metrics)
        values = torch.stack(
            [torch.as_tensor(metrics[name], dtype=torch.float32, device=self.device) for name in names]
        ).tolist()
        return dict(zip(names, values))  # one host synchronisation per update

    def imagine(self, starts: State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Trajectory]:
        """H steps of the prior driven by the actor from N start states (the RSSM's own `imagine`):
        features (N, H + 1, F) with the start first, model-space actions (N, H, A), the actor's
        raw outputs (N, H, K or 2A) on the (detached) features it acted from, with their graph
        kept whatever the grad mode, so that the actor's loss reuses this forward pass instead of
        running the actor again, and the trajectory (rewards and continues (N, H) of the states
        reached). The actions are differentiable where grad is enabled, so that returns can be
        backpropagated through the dynamics. All random numbers are drawn ahead, so that one
        world-model step is a pure function (compilable)."""
        model, horizon = self.world_model, self.config.imagination_horizon
        N = starts["deter"].shape[0]
        latent_noise = model.draw_noise((N, horizon))
        action_noise = self.actor.draw_noise((N, horizon), self.generator, self.device)
        actor_outputs = []

        def policy(state: State) -> torch.Tensor:  # (N, A) in model space
            with torch.enable_grad():
                actor_outputs.append(self.actor.raw(model.features(state).detach()))
            return self.actor.distribution(actor_outputs[-1]).sample_from(action_noise[:, len(actor_outputs) - 1])

        trajectory = model.imagine(
            starts, policy, horizon, noise=latent_noise, model_space=True, step=self._imagination_step()
        )
        features = torch.cat([model.features(starts)[:, None], model.features(trajectory.states)], 1)
        with torch.enable_grad():
            actor_outputs = torch.stack(actor_outputs, 1)
        return features, trajectory.actions, actor_outputs, trajectory

    def _imagination_step(self):
        """The RSSM's step function: compiled once with `config.compile`, else the plain method."""
        if not self.config.compile:
            return self.world_model.imagine_step
        if getattr(self, "_compiled_imagine_step", None) is None:
            self._compiled_imagine_step = torch.compile(self.world_model.imagine_step, dynamic=False)
        return self._compiled_imagine_step

    def learn_behaviour(self, starts: State, start_continue: torch.Tensor) -> dict[str, torch.Tensor]:
        """One actor and one critic update from imagined trajectories (Sec. 3 of each paper)."""
        config = self.config
        rho = self.reinforce_weight
        # Pure REINFORCE needs no gradient through the imagined dynamics: imagine without a graph.
        with torch.set_grad_enabled(rho < 1):
            features, actions, actor_outputs, trajectory = self.imagine(starts)  # (N, H + 1, F), (N, H, A), (N, H, .)
            rewards = trajectory.rewards  # (N, H), received on arriving at states 1 .. H
            # The start's continue flag is the replay's; the imagined states' are predicted.
            continues = torch.cat([start_continue[:, None], trajectory.continues], 1)  # (N, H + 1)
            N, H = actions.shape[:2]
            if config.critic_targets_from_slow:
                critic_output = None
                values = self.slow_critic.value(self.slow_critic(features))  # (N, H + 1)
            else:
                # One pass of the critic serves its own targets and, with its graph, its loss.
                with torch.enable_grad():
                    critic_output = self.critic(features.detach().reshape(N * (H + 1), -1)).view(N, H + 1, -1)
                values = self.critic.value(critic_output).detach()  # (N, H + 1)
            # Eq. 7, arXiv:2301.04104v1: R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}).
            returns = lambda_returns(
                rewards, values[:, 1:], continues[:, 1:], values[:, -1], config.return_lambda, config.discount
            )
            for hook in self.hooks:
                returns = hook.targets(returns, values[:, :-1])
        # Weight of step t: the probability that the trajectory is still alive, discounted
        # (DreamerV3: cumprod(gamma * c) / gamma), so that steps after a predicted end count less.
        weights = (torch.cumprod(config.discount * continues.detach(), 1) / config.discount)[:, :-1]  # (N, H)

        if config.return_normalization:
            low, high = update_return_percentiles(
                returns,
                self.return_low,
                self.return_high,
                config.return_normalization_decay,
                *config.return_percentiles,
            )
            if distributed.is_initialized():  # keep the replicas' statistics identical
                both = torch.stack([low, high])
                torch.distributed.all_reduce(both)
                low, high = both / distributed.world_size()
            self.return_low, self.return_high = low.detach(), high.detach()
            scale = return_scale(self.return_low, self.return_high, config.return_scale_limit)
        else:
            scale = torch.ones((), device=self.device)

        # Actor (Eq. 11, arXiv:2301.04104v1; Eq. 6, arXiv:2010.02193): REINFORCE with the
        # normalised advantage, weighted rho, plus the return backpropagated through the
        # dynamics, weighted 1 - rho, plus the entropy bonus.
        # The actor's outputs on the H states it acted from, kept from imagination.
        policy = self.actor.distribution(actor_outputs.reshape(N * H, -1))
        advantage = ((returns - values[:, :-1]) / scale).detach()
        log_probability = policy.log_prob(actions.detach().reshape(N * H, -1)).view(N, H)
        entropy = policy.entropy().view(N, H)
        objective = config.entropy_scale * entropy
        if rho > 0:
            objective = objective + rho * log_probability * advantage
        if rho < 1:
            objective = objective + (1 - rho) * returns / scale
        actor_loss = -(weights * objective).mean()
        actor_gradients = torch.autograd.grad(actor_loss, self.actor_optimizer.parameters, allow_unused=True)
        actor_norm = self.actor_optimizer.step(
            gradients=[
                torch.zeros_like(p) if g is None else g
                for p, g in zip(self.actor_optimizer.parameters, actor_gradients)
            ]
        )

        # Critic (Eq. 10, arXiv:2301.04104v1): the lambda-returns' likelihood on the imagined states,
        # plus the likelihood of the slow critic's prediction (DreamerV3's regulariser).
        # The critic reads the H states as one contiguous (N * H, F) matrix: a strided 3-D
        # input would make every linear layer copy it.
        inputs = features[:, :-1].detach().reshape(N * H, -1)
        output = self.critic(inputs) if critic_output is None else critic_output[:, :-1].reshape(N * H, -1)
        critic_terms = self.critic.loss(output, returns.detach().reshape(N * H))
        if config.slow_critic_regularizer > 0:
            with torch.no_grad():
                slow_value = self.slow_critic.value(self.slow_critic(inputs))
            critic_terms = critic_terms + config.slow_critic_regularizer * self.critic.loss(output, slow_value)
        critic_loss = (weights * critic_terms.view(N, H)).mean()
        critic_norm = self.critic_optimizer.step(loss=critic_loss)

        with torch.no_grad():
            return {
                "loss/actor": actor_loss.detach(),
                "loss/critic": critic_loss.detach(),
                "actor/entropy": entropy.detach().mean(),
                "actor/grad_norm": actor_norm,
                "actor/return_scale": scale,
                "critic/value": values.detach().mean(),
                "critic/grad_norm": critic_norm,
                "imagination/return": returns.detach().mean(),
                "imagination/reward": rewards.detach().mean(),
                "imagination/continue": continues.detach()[:, 1:].mean(),
            }

    # --- end of run --------------------------------------------------------------------------

    def on_run_end(self, run_dir: str | Path, replay: Any) -> None:
        """Write open-loop prediction videos and an imagined-vs-real reward figure (wmlab.eval.open_loop)."""
        if not self.config.open_loop_report or replay is None or not distributed.is_main_process():
            return
        write_open_loop_report(self.world_model, replay, run_dir)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser moments, return statistics, counters and the random state."""
        return {
            **module_states(self.modules()),
            "optimizers": {
                "model": self.model_optimizer.state_dict(),
                "actor": self.actor_optimizer.state_dict(),
                "critic": self.critic_optimizer.state_dict(),
            },
            "return_low": self.return_low,
            "return_high": self.return_high,
            "updates": self.updates,
            "steps": self.steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_module_states(self.modules(), state)
        self.model_optimizer.load_state_dict(state["optimizers"]["model"])
        self.actor_optimizer.load_state_dict(state["optimizers"]["actor"])
        self.critic_optimizer.load_state_dict(state["optimizers"]["critic"])
        self.return_low = torch.as_tensor(state["return_low"], device=self.device).float()
        self.return_high = torch.as_tensor(state["return_high"], device=self.device).float()
        self.updates = int(state["updates"])
        self.steps = int(state["steps"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())

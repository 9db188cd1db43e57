"""Goal-reaching by model-predictive control in a JEPA world model's representation space.

Two planning objectives over the predicted embeddings z_1..z_L of a candidate action sequence:

- distance (EB-JEPA, PLDM): minimise sum_l ||z_l - z_goal||^2;
- value (value-guided JEPA, Destrade et al., arXiv:2601.00844): maximise a goal-conditioned value
  V(z, g) = -||phi(z) - phi(g)|| learned offline, so that a distance in a learned space
  approximates the negative value of the -1-per-step reaching problem. The value is trained with
  IQL's expectile loss (Kostrikov et al., arXiv:2110.06169, Sec. 4.1) on a TD target, the
  action-free form of HIQL (Park et al., arXiv:2307.11949), on hindsight-relabelled goals.

The paper shapes the JEPA encoder itself with the value loss: `ValueConfig.shaping_scale` > 0
does so (EncoderShaping); at 0 (the default) the value is a separate head (phi) trained on the
frozen embeddings afterwards, which leaves the world model untouched.

Shape legend: B batch, N candidates, L horizon, A action dim, D embedding, P projection.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, ValueConfig
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.jepa import JEPAWorldModel, goal_distance_returns
from wmlab.nn.mlp import MLP
from wmlab.planners.mppi import MPPI
from wmlab.runs.config import OfflineTrainConfig


def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1(u < 0)| u^2 for u = target - prediction (IQL's L_2^tau, arXiv:2110.06169, Sec. 4.1)."""
    weight = torch.where(difference < 0, 1.0 - expectile, expectile)
    return (weight * difference.pow(2)).mean()


class EmbeddingScale(nn.Module):
    """phi(z) = exp(s) z with one learned log-scale s: the value is a distance between embeddings."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding * self.log_scale.exp()


class GoalValue(nn.Module):
    """V(z, g) = -||phi(z) - phi(g)||_2: zero at the goal, symmetric, a distance in phi's space
    (phi an MLP, or the embedding itself times a learned scale; see ValueConfig.space)."""

    def __init__(self, embedding_size: int, config: ValueConfig):
        super().__init__()
        self.config = config
        if config.space == "embedding":
            self.phi = EmbeddingScale()
        else:
            self.phi = MLP(embedding_size, config.projection_size, config.hidden_size, 2, layer_norm=True)

    def forward(self, embedding: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:  # (..., D), (..., D) -> (...)
        difference = self.phi(embedding) - self.phi(goal)
        # The epsilon keeps the gradient finite where the two coincide.
        return -torch.sqrt(difference.pow(2).sum(-1) + 1e-6)


def hindsight_pairs(
    lengths: np.ndarray, config: ValueConfig, rng: np.random.Generator, count: int
) -> list[tuple[int, int, int]]:
    """(episode, t, j > t) triples for `count` hindsight goals: t uniform over an episode's
    transitions (episodes weighted by length), the goal j geometric ahead (Geom(1 - gamma), capped
    at the episode's end) for `geometric_goal_fraction` of them, else uniform among later steps."""
    usable = np.flatnonzero(lengths >= 2)
    if len(usable) == 0:
        raise ValueError("hindsight goals need at least one episode of two or more steps")
    chosen = rng.choice(usable, size=count, p=(lengths[usable] - 1) / (lengths[usable] - 1).sum())
    triples = []
    for index in chosen:
        length = int(lengths[index])
        t = int(rng.integers(0, length - 1))
        if rng.random() < config.geometric_goal_fraction:
            j = min(t + int(rng.geometric(1.0 - config.discount)), length - 1)
        else:
            j = int(rng.integers(t + 1, length))
        triples.append((int(index), t, j))
    return triples


def value_td_loss(
    value: GoalValue,
    target_value: GoalValue,
    z: torch.Tensor,
    goal: torch.Tensor,
    target_next: torch.Tensor,
    target_goal: torch.Tensor,
    reached: torch.Tensor,
    config: ValueConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IQL's expectile loss on the TD target of the -1-per-step reaching problem (arriving ends it):
    V(z, g) against -1 + gamma (1 - reached) V_target(z', g), the target's embeddings given
    separately (they come from a target encoder when the encoder is trained). Returns (loss, mean V)."""
    with torch.no_grad():
        target = -1.0 + config.discount * (~reached).float() * target_value(target_next, target_goal)
    prediction = value(z, goal)
    return expectile_loss(target - prediction, config.expectile), prediction.mean().detach()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    for target_parameter, parameter in zip(target.parameters(), online.parameters()):
        target_parameter.lerp_(parameter, rate)


class ValueLearner:
    """Expectile TD on hindsight goals over per-episode embeddings [(length_i, D)]."""

    def __init__(self, value: GoalValue, config: ValueConfig, seed: int = 0):
        self.value, self.config = value, config
        self.target = copy.deepcopy(value).requires_grad_(False)
        self.optimizer = torch.optim.Adam(value.parameters(), lr=config.learning_rate)
        self.generator = np.random.default_rng(seed)

    def sample(self, episodes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, z_{t+1}, goal z_j, goal reached at t+1) for B random (t, j > t) pairs."""
        lengths = np.array([len(episode) for episode in episodes])
        triples = hindsight_pairs(lengths, self.config, self.generator, self.config.batch_size)
        states = torch.stack([episodes[e][t] for e, t, _ in triples])
        following = torch.stack([episodes[e][t + 1] for e, t, _ in triples])
        goals = torch.stack([episodes[e][j] for e, _, j in triples])
        return states, following, goals, torch.tensor([j == t + 1 for _, t, j in triples])

    def update(self, episodes: list[torch.Tensor]) -> dict[str, float]:
        z, z_next, goal, reached = self.sample(episodes)
        loss, mean = value_td_loss(self.value, self.target, z, goal, z_next, goal, reached, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        polyak_update(self.target, self.value, self.config.target_rate)
        return {"loss/value": float(loss.detach()), "value/mean": float(mean)}


class PredictorRefiner:
    """Trains a JEPA model's predictor alone on its frozen encoder's embeddings of recorded
    episodes: teacher forcing plus the open-loop rollout over windows of `length` steps, Adam with
    the learning rate decayed to 0 over `steps` (cosine). The embeddings are computed once, so a
    step costs what the predictor MLP costs, not the conv encoder; many more steps then fit the
    budget, and the wall's sharp edge at the door, which the joint training leaves blurred, is
    learnt (see docs/benchmarks.md, JEPA section)."""

    def __init__(
        self,
        model: JEPAWorldModel,
        steps: int,
        batch_size: int = 256,
        length: int = 8,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ):
        if steps < 1 or batch_size < 1 or length < 2:
            raise ValueError(f"need steps >= 1, batch_size >= 1 and length >= 2, got {steps}, {batch_size}, {length}")
        self.model, self.batch_size, self.length = model, batch_size, length
        self.optimizer = torch.optim.Adam(model.predictor.parameters(), lr=learning_rate)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, steps)
        self.generator = np.random.default_rng(seed)

    def sample(self, embeddings: list[torch.Tensor], actions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """B windows inside episodes: embeddings (B, T, D) and the actions into each step (B, T, A)."""
        lengths = np.array([len(episode) for episode in embeddings])
        long_enough = np.flatnonzero(lengths >= self.length)
        if len(long_enough) == 0:
            raise ValueError(f"no episode has the {self.length} steps a window needs")
        chosen = self.generator.choice(long_enough, self.batch_size)
        starts = self.generator.integers(0, lengths[chosen] - self.length + 1)
        windows = [slice(start, start + self.length) for start in starts]
        return (
            torch.stack([embeddings[e][window] for e, window in zip(chosen, windows)]),
            torch.stack([actions[e][window] for e, window in zip(chosen, windows)]),
        )

    def update(self, embeddings: list[torch.Tensor], actions: list[torch.Tensor]) -> dict[str, float]:
        """One step on [(length_i, D)] embeddings and [(length_i, A)] actions (action t leads into step t)."""
        self.model.predictor.train()
        z, action = self.sample(embeddings, actions)
        terms = self.model.prediction_terms(z, z, action[:, 1:].to(z.dtype))
        scales = self.model.config.loss_scales
        loss = scales.teacher_forcing * terms["teacher_forcing"] + scales.rollout * terms["rollout"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {f"refine/{name}": float(value.detach()) for name, value in terms.items()}


def state_pairs(lengths: np.ndarray, rng: np.random.Generator, count: int, same_episode_share: float) -> np.ndarray:
    """(episode, t, episode', j) rows, (count, 4), for QRL's push: every state drawn uniformly over
    the dataset; for `same_episode_share` of the rows the second state is another step of the
    first's episode (both then share a layout), for the rest a state drawn independently, as QRL
    pairs random states (what lets the push reach pairs that no episode holds together)."""
    usable = np.flatnonzero(lengths >= 2)
    if len(usable) == 0:
        raise ValueError("state pairs need at least one episode of two or more steps")
    weights = lengths[usable] / lengths[usable].sum()
    first, second = rng.choice(usable, size=count, p=weights), rng.choice(usable, size=count, p=weights)
    same = rng.random(count) < same_episode_share
    second = np.where(same, first, second)
    t = rng.integers(0, lengths[first])
    j_other = rng.integers(0, lengths[second])
    j_same = (t + rng.integers(1, lengths[first])) % lengths[first]  # any step of the episode but t
    return np.stack([first, t, second, np.where(same, j_same, j_other)], axis=1)


def quasimetric_losses(
    value: GoalValue, z: torch.Tensor, z_next: torch.Tensor, start: torch.Tensor, end: torch.Tensor, config: ValueConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QRL's two terms (arXiv:2304.01203, Eq. 4) with d = -V: the push, mean softplus(offset - d(start,
    end)) with sharpness beta (small once the pairs are far apart), and the one-step constraint's
    violation, mean relu(d(z, z') - 1)^2 - epsilon^2 (at most 0 when the constraint holds).
    Returns (push, violation, mean distance of the pairs)."""
    distance = -value(start, end)
    push = F.softplus(config.quasimetric_offset - distance, beta=config.quasimetric_beta).mean()
    step = -value(z, z_next)
    violation = F.relu(step - 1.0).pow(2).mean() - config.quasimetric_epsilon**2
    return push, violation, distance.mean().detach()


class QuasimetricLearner:
    """QRL on per-episode embeddings [(length_i, D)]: the value's distance is pushed apart on pairs
    of states (see `state_pairs`) while every recorded transition is held within one step by a Lagrange
    multiplier lambda = softplus(raw), raised by dual ascent while the constraint is violated."""

    def __init__(self, value: GoalValue, config: ValueConfig, seed: int = 0):
        self.value, self.config = value, config
        self.optimizer = torch.optim.Adam(value.parameters(), lr=config.learning_rate)
        # QRL starts the multiplier at 0.01.
        self.raw_multiplier = torch.tensor(float(np.log(np.expm1(0.01))), requires_grad=True)
        self.multiplier_optimizer = torch.optim.Adam([self.raw_multiplier], lr=config.lagrange_learning_rate)
        self.generator = np.random.default_rng(seed)
        # The constraint's transitions: (episode, t) uniform over the data (the goal index is unused).
        self.transition_sampling = replace(config, geometric_goal_fraction=0.0)

    def update(self, episodes: list[torch.Tensor]) -> dict[str, float]:
        lengths = np.array([len(episode) for episode in episodes])
        pairs = state_pairs(lengths, self.generator, self.config.batch_size, self.config.quasimetric_same_episode_share)
        transitions = hindsight_pairs(lengths, self.transition_sampling, self.generator, self.config.batch_size)
        z = torch.stack([episodes[e][t] for e, t, _ in transitions])
        z_next = torch.stack([episodes[e][t + 1] for e, t, _ in transitions])
        start = torch.stack([episodes[e][t] for e, t, _, _ in pairs])
        end = torch.stack([episodes[e][j] for _, _, e, j in pairs])
        push, violation, distance = quasimetric_losses(self.value, z, z_next, start, end, self.config)
        multiplier = F.softplus(self.raw_multiplier)
        loss = push + multiplier.detach() * violation
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Dual ascent: lambda grows while the constraint is violated and shrinks while it has slack.
        self.multiplier_optimizer.zero_grad(set_to_none=True)
        (-multiplier * violation.detach()).backward()
        self.multiplier_optimizer.step()
        return {
            "loss/value": float(push.detach()),
            "value/mean": -float(distance),
            "value/constraint_violation": float(violation.detach()),
            "value/lagrange_multiplier": float(multiplier.detach()),
        }


def make_value_learner(value: GoalValue, config: ValueConfig, seed: int = 0) -> "ValueLearner | QuasimetricLearner":
    """The learner that trains `value` on frozen embeddings by `config.objective`."""
    return (
        QuasimetricLearner(value, config, seed)
        if config.objective == "quasimetric"
        else ValueLearner(value, config, seed)
    )


class EncoderShaping:
    """The value loss with its gradient into the world model's encoder (Destrade et al.,
    arXiv:2601.00844: the representation is shaped so that a distance between embeddings
    approximates minus the goal-conditioned value). Hindsight triples are drawn from raw episodes
    [(length_i, ...) observations]; the TD target uses a Polyak copy of encoder and value."""

    def __init__(self, model: JEPAWorldModel, value: GoalValue, config: ValueConfig, seed: int = 0):
        self.model, self.value, self.config = model, value, config
        self.target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        self.target_value = copy.deepcopy(value).requires_grad_(False)
        self.generator = np.random.default_rng(seed)

    def loss(self, episodes: list[np.ndarray]) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        lengths = np.array([len(episode) for episode in episodes])
        triples = hindsight_pairs(lengths, config, self.generator, config.shaping_batch_size)
        frames = np.stack(
            [episodes[e][t] for e, t, _ in triples]
            + [episodes[e][t + 1] for e, t, _ in triples]
            + [episodes[e][j] for e, _, j in triples]
        )
        B = len(triples)
        z_all = self.model.encode(frames)
        with torch.no_grad():
            target_all = self.model._encode_with(self.target_encoder, frames)
        reached = torch.tensor([j == t + 1 for _, t, j in triples], device=z_all.device)
        loss, mean = value_td_loss(
            self.value,
            self.target_value,
            z_all[:B],
            z_all[2 * B :],
            target_all[B : 2 * B],
            target_all[2 * B :],
            reached,
            config,
        )
        return loss, {"loss/value_shaping": float(loss.detach()), "value/shaping_mean": float(mean)}

    def update_targets(self) -> None:
        polyak_update(self.target_encoder, self.model.encoder, self.config.target_rate)
        polyak_update(self.target_value, self.value, self.config.target_rate)


def value_returns(model: JEPAWorldModel, value: GoalValue, goal: torch.Tensor, terminal_only: bool = False):
    """rollout_fn(z (1, D), actions (N, L, A)) -> (N,): the mean over the horizon (or the last step)
    of V(z_l, goal) along the predicted embeddings."""

    def rollout_fn(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        start = state.reshape(1, -1).expand(actions.shape[0], -1)
        predicted = model.rollout(start, actions.to(start.dtype))  # (N, L, D)
        values = value(predicted, goal.reshape(1, 1, -1).expand_as(predicted))  # (N, L)
        return values[:, -1] if terminal_only else values.mean(1)

    return rollout_fn


class JEPAPlannerAgent:
    """Agent protocol: given a goal observation (`set_goal`), plans with MPPI in the model's
    representation space and replans every `replan_every` steps. One environment (B = 1)."""

    learns_from: Literal["transitions", "replay"] = "replay"

    def __init__(
        self,
        config: JEPAPlannerConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        model: JEPAWorldModel | None = None,
        value: GoalValue | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        training: OfflineTrainConfig | None = None,
    ):
        self.config = config
        self.action_space = action_space
        self.device = torch.device(device)
        self.model = (model or JEPAWorldModel(config.model, observation_space, action_space)).to(self.device)
        self.value = (value or GoalValue(config.model.embedding_size, config.value)).to(self.device)
        # `update`'s Adam step size and gradient-norm clip (the pipeline trains with the offline trainer).
        self.training = training or OfflineTrainConfig(grad_clip=10.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.training.learning_rate)
        self.planner = MPPI(config.planner, seed=seed, device=self.device)
        self.goal_embedding: torch.Tensor | None = None

    def set_goal(self, goal_observation: np.ndarray) -> None:
        """The observation to reach, e.g. TwoRooms.goal_observation(); call at every episode start."""
        with torch.no_grad():
            self.goal_embedding = self.model.encode(np.asarray(goal_observation)[None])[0]
        self.planner.reset()

    def rollout_fn(self):
        if self.goal_embedding is None:
            raise RuntimeError("call set_goal(goal_observation) before act(): the planner needs a goal")
        if self.config.objective == "value":
            return value_returns(self.model, self.value, self.goal_embedding, terminal_only=self.config.value_at_end)
        return goal_distance_returns(
            self.model, self.goal_embedding, terminal_only=self.config.distance_at_end, norm=self.config.distance_norm
        )

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs: dict of (1, ...) arrays; state: {"plan": (L, A), "step": int} or None."""
        first = state is None or bool(np.asarray(obs.get("is_first", [False])).reshape(-1)[0])
        if first:
            self.planner.reset()
            state = {"plan": None, "step": 0}
        if state["plan"] is None or state["step"] % self.config.replan_every == 0:
            embedding = self.model.encode(np.asarray(obs[self.model.observation_key]))  # (1, D)
            # The warm start moves the last plan past the steps executed from it since.
            shift = 1 if state["plan"] is None else self.config.replan_every
            state["plan"] = self.planner.plan(
                self.rollout_fn(), embedding, self.action_space, explore=explore, shift=shift
            )
        action = state["plan"][state["step"] % self.config.replan_every].cpu().numpy().astype(np.float32)
        state["step"] += 1
        return action[None], state

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}

    def update(self, batch: Batch) -> dict[str, float]:
        """One world-model gradient step on the JEPA loss (and the EMA target's update when
        configured); the value is trained apart (`make_value_learner`), or with the world model by
        the pipeline's value shaping."""
        self.model.train()
        loss, metrics = self.model.loss(batch.to_torch(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm/grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.training.grad_clip))
        self.optimizer.step()
        self.model.update_target()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "value": self.value.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.value.load_state_dict(state["value"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

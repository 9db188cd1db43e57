"""An actor-critic learned only on frames that a world model generates (DIAMOND, arXiv:2405.12399,
Sec. 3.4 and Appendix on the RL agent; IRIS, arXiv:2209.00588, Sec. 2.3, trains the same way).

One update:
1. burn-in: the world model filters `burn_in` real steps of a replay batch (`observe`), and the
   actor-critic's LSTM reads the same real frames, so both start from the real situation;
2. imagination: the world model rolls `horizon` steps forward, the actor choosing each action
   from the newest generated frame (`imagine` with a policy; no gradients through the model);
3. the actor-critic re-reads the start frame and the generated frames with gradients:
   values V(s_0..s_L), action logits at s_0..s_{L-1};
4. targets: lambda-returns R_t = r_t + gamma c_t ((1 - lambda) V(s_{t+1}) + lambda R_{t+1}),
   R_L = V(s_L) (wmlab.losses.returns.lambda_returns; DIAMOND Eq. 7-8);
5. losses, each step weighted by the predicted probability that the episode is still running:
   critic (V(s_t) - sg(R_t))^2, actor -log pi(a_t | s_t) sg(R_t - V(s_t)) - eta H(pi(. | s_t))
   (REINFORCE with the value baseline and an entropy bonus, DIAMOND Eq. 9).

The interface a world model needs, and nothing else (the diffusion model's internals stay its own):

    model.initial(B) -> state
    model.observe(obs {"image": (B, T, H, W, C) uint8}, actions (B, T), is_first (B, T), state)
        -> (states over time, last state)
    model.imagine(state, policy, horizon, **imagine_kwargs) -> Trajectory with actions (B, L)
        (indices, or one-hot (B, L, A)), rewards (B, L),
        continues (B, L) in [0, 1] and observations {"image": (B, L, H, W, C) floats in [0, 1]}
        (the generated frames; where `observations` is None, decode(trajectory.states) is used)
    model.decode(state) -> {"image": (B, H, W, C) floats in [0, 1]}: the frame the actor sees
    policy(state) -> action indices (B,)       (called by `imagine` once per step)

Discrete actions only (DIAMOND's and IRIS's Atari setting).

Shape legend: B batch, T time, L horizon, H, W, C image, A actions, M LSTM size.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.core.errors import ShapeError
from wmlab.core.optim import clipped_step, make_optimizer
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Trajectory
from wmlab.losses.returns import lambda_returns
from wmlab.nn.lstm import diamond_lstm_init
from wmlab.nn.unet import group_count

Recurrent = tuple[torch.Tensor, torch.Tensor]  # LSTM (hidden, cell), each (B, M)


class ResidualStage(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W): x' + conv(silu(group_norm(x))), x' the input or its
    1x1 projection where the channels change (a stage of DIAMOND's actor-critic encoder)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(in_channels), in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv(F.silu(self.norm(x)))


def frame_encoder(config: ImaginationConfig, in_channels: int) -> nn.Sequential:
    """The actor-critic's CNN, (B, C, H, W) -> (B, C_last, H / 2^stages, W / 2^stages), in the
    layout `config.encoder` names."""
    stages: list[nn.Module] = []
    width = in_channels
    if config.encoder == "residual":
        stages.append(nn.Conv2d(in_channels, config.channels[0], 3, padding=1))
        width = config.channels[0]
    for channels in config.channels:
        if config.encoder == "residual":
            stages += [ResidualStage(width, channels), nn.MaxPool2d(2)]
        else:
            activation = nn.ReLU() if config.encoder == "relu" else nn.SiLU()
            stages += [nn.Conv2d(width, channels, 3, padding=1), activation, nn.MaxPool2d(2)]
        width = channels
    return nn.Sequential(*stages)


class ActorCritic(nn.Module):
    """frames (B, H, W, C) in [0, 1], LSTM state -> (action logits (B, A), value (B,), new state).
    A CNN (`frame_encoder`: DIAMOND's residual stages, IRIS's convolutions with ReLU, or plain
    ones) encodes the frame, an LSTM carries the past, and two linear heads read it."""

    def __init__(self, config: ImaginationConfig, image_shape: tuple[int, int, int], actions: int):
        super().__init__()
        H, W, C = image_shape
        stages = len(config.channels)
        H, W = H // 2**stages, W // 2**stages
        if H < 1 or W < 1:
            raise ShapeError(
                f"the actor-critic's {stages} pooling stages need frames of at least {2**stages} pixels a side, got {image_shape[:2]}"
            )
        self.encoder = nn.Sequential(*frame_encoder(config, C), nn.Flatten())
        self.lstm = nn.LSTMCell(config.channels[-1] * H * W, config.lstm_size)
        if config.diamond_lstm_init:
            diamond_lstm_init(self.lstm)
        self.actor = nn.Linear(config.lstm_size, actions)
        self.critic = nn.Linear(config.lstm_size, 1)
        for head in (self.actor, self.critic):  # a uniform policy and zero values at the start (DIAMOND)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.lstm_size = config.lstm_size

    def initial(self, batch_size: int, device: torch.device) -> Recurrent:
        zeros = torch.zeros(batch_size, self.lstm_size, device=device)
        return zeros, zeros.clone()

    def forward(self, frames: torch.Tensor, recurrent: Recurrent) -> tuple[torch.Tensor, torch.Tensor, Recurrent]:
        x = frames.movedim(-1, -3) * 2 - 1  # (B, C, H, W) in [-1, 1]
        hidden, cell = self.lstm(self.encoder(x), recurrent)
        return self.actor(hidden), self.critic(hidden)[:, 0], (hidden, cell)


def unit_frames(images: Any, device: torch.device) -> torch.Tensor:
    """uint8 frames (..., H, W, C) or floats in [0, 1] -> floats in [0, 1]."""
    images = torch.as_tensor(images, device=device)
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


class ImaginationLearner:
    """Acts from real frames and learns in the imagination of any world model with the interface
    of the module docstring. `generator` draws the actions' random numbers (acting and imagining),
    so that its state alone makes acting resumable. `view` (None: the frames as they are) maps
    real frames (N, H, W, C) in [0, 1] to what the actor reads of them, when acting and in the
    burn-in (IRIS: the tokenizer's reconstructions, so that real and imagined frames look alike)."""

    def __init__(
        self,
        config: ImaginationConfig,
        image_shape: tuple[int, int, int],
        actions: int,
        device: torch.device,
        generator: torch.Generator,
        view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if config.horizon < 1 or config.burn_in < 1:
            raise ValueError(f"horizon and burn_in must be at least 1, got {config.horizon} and {config.burn_in}")
        self.config = config
        self.actions = actions
        self.device = device
        self.generator = generator
        # Evaluation draws its own numbers (training's are untouched), reseeded at each round from
        # the update count, so a resumed run evaluates as the uninterrupted one.
        self.evaluation_generator = torch.Generator()
        self.evaluation_seed = generator.initial_seed()
        self.evaluated_at: int | None = None
        self.view = view
        self.network = ActorCritic(config, image_shape, actions).to(device)
        self.optimizer = make_optimizer(self.network.parameters(), config.optimizer)
        self.updates = 0

    # --- acting ------------------------------------------------------------------------------

    def sample(
        self, logits: torch.Tensor, epsilon: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Actions (B,) drawn from softmax(logits (B, A)), uniform with probability epsilon."""
        probabilities = logits.softmax(-1)
        if epsilon > 0:
            probabilities = (1 - epsilon) * probabilities + epsilon / self.actions
        generator = self.generator if generator is None else generator
        return torch.multinomial(probabilities.cpu(), 1, generator=generator)[:, 0].to(logits.device)

    def evaluation_action(self, logits: torch.Tensor) -> torch.Tensor:
        """Actions (B,) of an evaluation episode: sampled at `evaluation_temperature` (0: argmax)
        from the evaluation generator, seeded afresh when the update count has changed."""
        temperature = self.config.evaluation_temperature
        if temperature == 0:
            return logits.argmax(-1)
        if self.evaluated_at != self.updates:
            self.evaluation_generator.manual_seed(self.evaluation_seed * 1_000_003 + self.updates)
            self.evaluated_at = self.updates
        return self.sample(logits / temperature, generator=self.evaluation_generator)

    @torch.no_grad()
    def act(
        self, images: Any, recurrent: Recurrent | None, is_first: Any, explore: bool
    ) -> tuple[torch.Tensor, Recurrent]:
        """Real frames (B, H, W, C), the LSTM state (None at the start), is_first (B,) ->
        (actions (B,), new LSTM state). While collecting, actions are sampled from the policy,
        uniform with probability epsilon; evaluating, as `evaluation_action` (its own random
        numbers, so evaluating does not change training)."""
        frames = self.seen(unit_frames(images, self.device))
        B = frames.shape[0]
        recurrent = self.reset(
            recurrent, torch.as_tensor(np.asarray(is_first), device=self.device).bool().reshape(B), B
        )
        logits, _, recurrent = self.network(frames, recurrent)
        if not explore:
            return self.evaluation_action(logits), recurrent
        return self.sample(logits, self.config.epsilon), recurrent

    def seen(self, frames: torch.Tensor) -> torch.Tensor:
        """Real frames (..., H, W, C) in [0, 1] as the actor reads them (through `view`)."""
        if self.view is None:
            return frames
        return self.view(frames.reshape(-1, *frames.shape[-3:])).reshape(frames.shape)

    def reset(self, recurrent: Recurrent | None, is_first: torch.Tensor, batch_size: int) -> Recurrent:
        if recurrent is None:
            return self.network.initial(batch_size, self.device)
        keep = (~is_first).float()[:, None]
        return recurrent[0] * keep, recurrent[1] * keep

    # --- learning ----------------------------------------------------------------------------

    def rollout(
        self,
        world_model: Any,
        batch: Batch,
        choose: Callable[[torch.Tensor], torch.Tensor],
        every_row: bool = False,
        **imagine_kwargs: Any,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, Recurrent]:
        """Steps 1-2 of an update without gradients: burn-in on the first `burn_in` steps of B replay
        windows (the first `starts` rows when set and not `every_row`), then `horizon` imagined steps, each action
        choose(logits (B, A)) -> (B,) from the newest generated frame. -> (trajectory, generated
        frames (B, L, H, W, C), the last burn-in frame as the model decodes it (B, H, W, C), the
        LSTM state after the burn-in before that frame)."""
        config = self.config
        B, T = batch.shape
        rows = slice(0, B if every_row else config.starts or B)
        if T < config.burn_in:
            raise ShapeError(
                f"the actor-critic burns in on {config.burn_in} real steps, but the replay windows hold T={T}"
            )
        head = slice(0, config.burn_in)
        images = batch.obs["image"][rows, head]
        actions = batch.action[rows, head]
        is_first = batch.is_first[rows, head]
        count = int(np.shape(images)[0])

        with torch.no_grad():
            _, start = world_model.observe({"image": images}, actions, is_first, world_model.initial(count))
            recurrent = self.network.initial(count, self.device)
            real = self.seen(unit_frames(images, self.device))
            first_flags = torch.as_tensor(np.asarray(is_first), device=self.device).bool()
            for t in range(config.burn_in - 1):  # the last real frame is read again in step 3
                recurrent = self.reset(recurrent, first_flags[:, t], count)
                _, _, recurrent = self.network(real[:, t], recurrent)
            burned_in = self.reset(recurrent, first_flags[:, -1], count)
            acting = [burned_in]

            def policy(state: Any) -> torch.Tensor:
                logits, _, acting[0] = self.network(world_model.decode(state)["image"].float(), acting[0])
                return choose(logits)

            trajectory = world_model.imagine(start, policy, config.horizon, **imagine_kwargs)
            generated = (
                trajectory.observations["image"]
                if trajectory.observations is not None
                else world_model.decode(trajectory.states)["image"]
            )
            start_frame = world_model.decode(start)["image"]
        return trajectory, generated, start_frame, burned_in

    def chooser(self, policy: str, draws: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        """logits (B, A) -> actions (B,): sampled from the policy ("sample"), its argmax ("greedy")
        or uniform ("uniform"), random numbers drawn from `draws`."""
        if policy not in ("sample", "greedy", "uniform"):
            raise ValueError(f"policy must be 'sample', 'greedy' or 'uniform', not {policy!r}")

        def choose(logits: torch.Tensor) -> torch.Tensor:
            if policy == "greedy":
                return logits.argmax(-1)
            return self.sample(torch.zeros_like(logits) if policy == "uniform" else logits, generator=draws)

        return choose

    def read_trajectory(self, trajectory: Trajectory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """An imagined trajectory -> (undiscounted returns (B,), each step's reward weighted by the
        predicted probability that the episode still runs; the actions as indices (B, L); the
        share of each action (A,)), on the CPU."""
        rewards = torch.as_tensor(trajectory.rewards).float().cpu()
        continues = torch.as_tensor(trajectory.continues).float().cpu()
        alive = torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1].cumprod(1)], 1)
        taken = torch.as_tensor(trajectory.actions).cpu()
        if taken.dim() == 3:  # one-hot (B, L, A) -> indices
            taken = taken.argmax(-1)
        taken = taken.long()
        shares = torch.bincount(taken.reshape(-1), minlength=self.actions).float() / taken.numel()
        return (rewards * alive).sum(1), taken, shares

    def imagined_return(
        self, world_model: Any, batch: Batch, policy: str, draws: torch.Generator, **imagine_kwargs: Any
    ) -> dict[str, Any]:
        """The undiscounted return of one rollout from each of the batch's B starts (`rollout`) inside the world model,
        rewards weighted by the predicted probability that the episode still runs, with actions
        sampled from the policy ("sample"), its argmax ("greedy") or uniform ("uniform", the
        baseline), drawn from `draws` (training's numbers are untouched; pass the same generator as
        imagine_kwargs' `generator` to seed the model's sampling too).
        -> {"return": mean, "return_std", "action_shares": the share of each action}"""
        trajectory, _, _, _ = self.rollout(
            world_model, batch, self.chooser(policy, draws), every_row=True, **imagine_kwargs
        )
        returns, _, shares = self.read_trajectory(trajectory)
        return {
            "return": float(returns.mean()),
            "return_std": float(returns.std()) if len(returns) > 1 else 0.0,
            "action_shares": [float(share) for share in shares],
        }

    def update(self, world_model: Any, batch: Batch, **imagine_kwargs: Any) -> dict[str, float]:
        """One actor-critic update from the first `burn_in` steps of B replay windows (the first
        `starts` rows when set); `imagine_kwargs` pass to the world model's `imagine`."""
        config = self.config
        trajectory, generated, start_frame, burned_in = self.rollout(world_model, batch, self.sample, **imagine_kwargs)
        count = generated.shape[0]
        L = config.horizon
        sizes = check_shape("imagined frames", generated, (count, L, *start_frame.shape[1:]))
        rewards = torch.as_tensor(trajectory.rewards, device=self.device).float()
        continues = torch.as_tensor(trajectory.continues, device=self.device).float()
        taken = torch.as_tensor(trajectory.actions, device=self.device)
        if taken.dim() == 3:  # one-hot (B, L, A) (the token model's) -> indices
            taken = taken.argmax(-1)
        taken = taken.long()
        check_shape("imagined rewards", rewards, (count, L), sizes)
        check_shape("imagined continues", continues, (count, L), sizes)

        self.network.train()
        frames = torch.cat([start_frame[:, None], generated], 1).float()  # (B, L + 1, H, W, C)
        recurrent = (burned_in[0].detach(), burned_in[1].detach())
        logits, values = [], []
        for step in range(L + 1):
            step_logits, value, recurrent = self.network(frames[:, step], recurrent)
            logits.append(step_logits)
            values.append(value)
        logits = torch.stack(logits[:L], 1)  # (B, L, A)
        values = torch.stack(values, 1)  # (B, L + 1)
        returns = lambda_returns(
            rewards, values[:, 1:].detach(), continues, values[:, -1].detach(), config.lambda_, config.discount
        )
        # The probability that the episode still runs at each start state (DreamerV3's weights).
        weights = torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1].cumprod(1)], 1)
        log_probabilities = logits.log_softmax(-1)
        chosen = log_probabilities.gather(-1, taken[..., None])[..., 0]
        entropy = -(log_probabilities.exp() * log_probabilities).sum(-1)
        advantage = (returns - values[:, :L]).detach()
        actor_loss = -(weights * (chosen * advantage + config.entropy_weight * entropy)).mean()
        critic_loss = (weights * (values[:, :L] - returns.detach()).pow(2)).mean()
        loss = actor_loss + config.value_weight * critic_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clipped_step(self.optimizer, self.network.parameters(), config.optimizer, self.updates)
        self.network.eval()
        self.updates += 1
        return {
            "loss/actor": float(actor_loss.detach()),
            "loss/critic": float(critic_loss.detach()),
            "ac/return": float(returns.mean()),
            "ac/value": float(values.detach().mean()),
            "ac/entropy": float(entropy.detach().mean()),
            "ac/imagined_reward": float(rewards.sum(1).mean()),
            "ac/imagined_continue": float(continues.mean()),
            "ac/grad_norm": float(grad_norm),
        }

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "network": dict(self.network.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])

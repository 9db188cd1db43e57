"""Any world model as a batched environment (DIAMOND's WorldModelEnv idea, arXiv:2405.12399).

`ImaginedEnv` starts each of its B rows from real frames (a pool of initial observation
sequences, filtered once with the model's `observe`) and then steps on the model alone through
`imagine`, one step per call, returning the predicted reward and termination. So a controller can
be trained "entirely inside the dream" (Ha & Schmidhuber 2018, Sec. 4) with the same
reset / step loop it would run in the real environment, and `render` shows the dream where the
model can decode.

It relies on the WorldModel protocol only (initial / observe / imagine / decode), plus two
optional extras: a `features(state)` method gives the vector a controller reads, and keyword
arguments of the model's `imagine` (a sampling `temperature`, say) pass through `imagine_kwargs`;
when `imagine` takes a `generator`, the environment's seeded one is passed so dreams replay.

    env = ImaginedEnv(model, {"image": first_frames}, batch_size=1024, max_episode_steps=1000,
                      imagine_kwargs={"temperature": 1.15}, seed=0)
    observation, info = env.reset()
    while not env.done.all():
        observation, reward, terminated, truncated, info = env.step(policy(observation))

Rows do not reset themselves: once a row has terminated or been truncated it stays finished,
returning reward 0 and its final flags, until the next `reset` (a batch of rollouts, such as the
B evaluations of one CMA-ES generation, ends when every row has).

Shape legend: B batch (rows), P pool of start sequences, T0 frames per start sequence, A action
dim, D features, H, W, C image.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Mapping

import numpy as np
import torch

from wmlab.core.errors import ShapeError
from wmlab.core.images import to_pixels
from wmlab.core.protocols import WorldModel


def map_state(state: Any, function) -> Any:
    """Apply `function` to every tensor of a (nested dict / tuple / list) model state."""
    if isinstance(state, torch.Tensor):
        return function(state)
    if isinstance(state, dict):
        return {key: map_state(value, function) for key, value in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(value, function) for value in state)
    return state


def concatenate_states(states: list[Any]) -> Any:
    """Join states of B_1, B_2, ... rows into one of sum(B_i) rows, along dim 0."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, 0)
    if isinstance(first, dict):
        return {key: concatenate_states([state[key] for state in states]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concatenate_states([state[index] for state in states]) for index in range(len(first)))
    return first


def batch_size_of(state: Any) -> int:
    """The number of rows of a model state (the first dimension of its first tensor)."""
    found: list[int] = []
    map_state(state, lambda tensor: found.append(tensor.shape[0]) or tensor)
    if not found:
        raise ShapeError("the model state holds no tensor, so its batch size is unknown")
    return found[0]


class ImaginedEnv:
    """A batch of B dream rollouts of `world_model`, started from real observations.

    world_model: any WorldModel.
    initial_observations: the pool of start sequences, a dict of (P, T0, ...) arrays in the
        environment's observation format (T0 = 1: single first frames).
    initial_actions: (P, T0, A) actions that led to those observations (default zeros: the
        start of an episode); indices (P, T0) for a discrete space.
    initial_is_first: (P, T0) flags (default: only the first step of each sequence).
    batch_size: B, the rows stepped together.
    max_episode_steps: rows are truncated after this many steps.
    imagine_kwargs: extra keyword arguments of `world_model.imagine` (e.g. {"temperature": 1.15}).
    sample_terminations: end a row with the predicted probability 1 - continue (True), or when
        that probability exceeds one half (False).
    observations: what `reset` and `step` return: "state" gives {"state": the model state,
        "features": features(state) when the model has them}; "decoded" gives the decoded
        observation, so a pixel policy can act in the dream unchanged.
    seed: seeds the start-row draws, the terminations and, where `imagine` takes a generator, the
        model's sampling.
    pool_chunk: start sequences filtered per `observe` call when the pool is encoded.
    """

    def __init__(
        self,
        world_model: WorldModel,
        initial_observations: Mapping[str, Any],
        batch_size: int,
        max_episode_steps: int,
        initial_actions: Any = None,
        initial_is_first: Any = None,
        imagine_kwargs: Mapping[str, Any] | None = None,
        sample_terminations: bool = True,
        observations: Literal["state", "decoded"] = "state",
        seed: int | None = None,
        pool_chunk: int = 256,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
        if observations not in ("state", "decoded"):
            raise ValueError(f"observations must be 'state' or 'decoded', got {observations!r}")
        if observations == "decoded" and not getattr(world_model, "can_decode", False):
            raise NotImplementedError(
                f"{type(world_model).__name__} cannot decode its states, so it cannot give decoded observations"
            )
        self.world_model = world_model
        self.batch_size = int(batch_size)
        self.max_episode_steps = int(max_episode_steps)
        self.imagine_kwargs = dict(imagine_kwargs or {})
        self.sample_terminations = sample_terminations
        self.observation_mode = observations
        self.device = getattr(world_model, "device", torch.device("cpu"))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else int(seed))
        self._passes_generator = "generator" in inspect.signature(world_model.imagine).parameters
        self.pool = self._encode_pool(initial_observations, initial_actions, initial_is_first, pool_chunk)
        self.pool_size = batch_size_of(self.pool)
        self.state: Any = None
        self.elapsed_steps = 0
        self.terminated = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        self.truncated = torch.zeros_like(self.terminated)

    # --- the start pool ------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_pool(self, observations: Mapping[str, Any], actions: Any, is_first: Any, chunk: int) -> Any:
        """Filter every start sequence once; a reset then only picks rows of the result."""
        observations = {key: np.asarray(value) for key, value in observations.items()}
        if not observations:
            raise ValueError("initial_observations is empty: the dream needs real observations to start from")
        first = next(iter(observations.values()))
        if first.ndim < 2:
            raise ShapeError(f"initial observations: expected (P, T0, ...) arrays, got {tuple(first.shape)}")
        P, T0 = first.shape[:2]
        for key, value in observations.items():
            if value.shape[:2] != (P, T0):
                raise ShapeError(
                    f"initial_observations[{key!r}]: expected (P, T0, ...) with P={P}, T0={T0}, got {tuple(value.shape)}"
                )
        if is_first is None:
            is_first = np.zeros((P, T0), dtype=bool)
            is_first[:, 0] = True
        if actions is None:
            actions = self._zero_actions(P, T0)
        states = []
        for start in range(0, P, chunk):
            rows = slice(start, min(start + chunk, P))
            part = {key: value[rows] for key, value in observations.items()}
            size = rows.stop - rows.start
            _, last = self.world_model.observe(
                part, np.asarray(actions)[rows], np.asarray(is_first)[rows], self.world_model.initial(size)
            )
            states.append(last)
        return concatenate_states(states)

    def _zero_actions(self, P: int, T0: int) -> np.ndarray:
        if getattr(self.world_model, "discrete", False):
            return np.zeros((P, T0), dtype=np.int64)
        size = getattr(self.world_model, "action_size", None)
        if size is None:
            raise ValueError("pass initial_actions: this world model does not say its action size")
        return np.zeros((P, T0, size), dtype=np.float32)

    # --- the environment -----------------------------------------------------------------------

    @property
    def done(self) -> torch.Tensor:
        """(B,) rows that have terminated or been truncated since the last reset."""
        return self.terminated | self.truncated

    @torch.no_grad()
    def reset(self, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start every row from a start sequence of the pool, drawn uniformly, or from
        options["indices"] (B,). Returns (observation, {"start_index": (B,)})."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        options = dict(options or {})
        if "indices" in options:
            indices = torch.as_tensor(options["indices"], device=self.device).long()
            if (
                indices.shape != (self.batch_size,)
                or bool((indices < 0).any())
                or bool((indices >= self.pool_size).any())
            ):
                raise ValueError(f"options['indices'] must be {self.batch_size} indices in [0, {self.pool_size})")
        else:
            indices = torch.randint(self.pool_size, (self.batch_size,), generator=self.generator, device=self.device)
        self.state = map_state(self.pool, lambda tensor: tensor[indices])
        self.elapsed_steps = 0
        self.terminated.zero_()
        self.truncated.zero_()
        return self.observation(), {"start_index": indices}

    @torch.no_grad()
    def step(self, action: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every row by one imagined step with action (B, A) (indices (B,) for a discrete
        space) -> (observation, reward (B,), terminated (B,), truncated (B,), {"continue": (B,)})."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        action = torch.as_tensor(
            np.asarray(action) if not isinstance(action, torch.Tensor) else action, device=self.device
        )
        if action.shape[:1] != (self.batch_size,):
            raise ShapeError(
                f"action: expected ({self.batch_size}, ...) for B={self.batch_size}, got {tuple(action.shape)}"
            )
        kwargs = dict(self.imagine_kwargs)
        if self._passes_generator:
            kwargs.setdefault("generator", self.generator)
        trajectory = self.world_model.imagine(self.state, action[:, None], 1, **kwargs)
        finished = self.done.clone()
        next_state = map_state(trajectory.states, lambda tensor: tensor[:, -1])
        # A finished row keeps its last state, so that render() shows where it ended.
        self.state = _where_rows(finished, self.state, next_state) if bool(finished.any()) else next_state
        reward = trajectory.rewards[:, -1].float().masked_fill(finished, 0.0)
        continues = trajectory.continues[:, -1].float()
        if self.sample_terminations:
            ends = torch.rand(continues.shape, generator=self.generator, device=self.device) >= continues
        else:
            ends = continues < 0.5
        self.elapsed_steps += 1
        self.terminated |= ends & ~finished
        if self.elapsed_steps >= self.max_episode_steps:
            self.truncated |= ~self.terminated
        return self.observation(), reward, self.terminated.clone(), self.truncated.clone(), {"continue": continues}

    def observation(self) -> Any:
        if self.observation_mode == "decoded":
            return self.world_model.decode(self.state)
        observation = {"state": self.state}
        if hasattr(self.world_model, "features"):
            observation["features"] = self.world_model.features(self.state)
        return observation

    @torch.no_grad()
    def render(self) -> np.ndarray:
        """The decoded frames of every row, uint8 (B, H, W, C), for models that can decode."""
        if not getattr(self.world_model, "can_decode", False):
            raise NotImplementedError(
                f"{type(self.world_model).__name__} cannot decode its states, so the dream cannot be rendered"
            )
        if self.state is None:
            raise RuntimeError("call reset() before render()")
        image = self.world_model.decode(self.state)["image"]
        image = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        return to_pixels(image)


def _where_rows(rows: torch.Tensor, kept: Any, new: Any) -> Any:
    """Per row: the `kept` state where rows (B,) is set, else the `new` one."""
    if isinstance(new, torch.Tensor):
        mask = rows.reshape(-1, *([1] * (new.dim() - 1)))
        return torch.where(mask, kept, new)
    if isinstance(new, dict):
        return {key: _where_rows(rows, kept[key], value) for key, value in new.items()}
    if isinstance(new, (tuple, list)):
        return type(new)(_where_rows(rows, old, value) for old, value in zip(kept, new))
    return new

"""Episodes of many candidate controllers at once, in the dream or in the real environment.

Both return the (N, R) returns of N candidates over R episodes each, which is all CMA-ES needs.
- In the dream, the N * R episodes are the rows of one `ImaginedEnv`: one batched M step per
  time step for the whole population.
- In reality, environments are stepped in lockstep in groups of `envs_per_batch`, with one
  batched V, M and C forward pass per time step for the group's running episodes; with
  `workers > 1`, groups are spread over worker processes, each holding its own copy of V and M.

Shape legend: N candidates, R rollouts per candidate, B rows (N * R), P controller parameters,
F features, A action dim.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wmlab.agents.world_models.agent import LinearController, controller_features
from wmlab.envs.adapter import make_env
from wmlab.envs.imagined import ImaginedEnv, map_state
from wmlab.models.vae_mdnrnn import VAEMDNRNN, VAEMDNRNNConfig, prepare_frames


@torch.no_grad()
def dream_returns(
    env: ImaginedEnv, controller: LinearController, parameters: torch.Tensor, inputs: str, start_indices: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run one batch of dream episodes: parameters (N, P) and an env of B = N * R rows, row
    n * R + r being candidate n's r-th episode -> (returns (N, R), lengths (N, R)).

    start_indices: (B,) pool rows to start from (random when None)."""
    N = parameters.shape[0]
    if env.batch_size % N:
        raise ValueError(f"the dream has {env.batch_size} rows, not a multiple of the {N} candidates")
    R = env.batch_size // N
    options = None if start_indices is None else {"indices": start_indices}
    observation, _ = env.reset(options=options)
    totals = torch.zeros(env.batch_size, device=env.device)
    lengths = torch.zeros(env.batch_size, dtype=torch.long, device=env.device)
    parameters = parameters.to(env.device)
    while not bool(env.done.all()):
        running = ~env.done
        features = controller_features(observation["state"], inputs)
        actions = controller(parameters, features.reshape(N, R, -1))
        observation, reward, _, _, _ = env.step(actions.reshape(env.batch_size, *actions.shape[2:]))
        totals += reward
        lengths += running.long()
    return totals.reshape(N, R).cpu().numpy().astype(np.float64), lengths.reshape(N, R).cpu().numpy()


@dataclass(frozen=True)
class RealRolloutSettings:
    """Everything a process needs to run real episodes of candidate controllers (picklable)."""

    env_id: str
    """The environment (a wmlab name or a gymnasium id)."""
    env_kwargs: dict = field(default_factory=dict)
    """Its keyword arguments."""
    frame_crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Pixels removed from (top, bottom, left, right) before frames are resized for V."""
    inputs: str = "latent_and_hidden"
    """What C reads: "latent_and_hidden" ([z, h]) or "latent" (z)."""
    sample_latents: bool = True
    """Feed a sample of q(z | x) rather than its mean."""
    max_steps: int = 0
    """Cap on an episode's steps; 0 keeps the environment's own limit."""
    envs_per_batch: int = 64
    """Environments stepped in lockstep by one process."""


class RealRollouts:
    """Runs real episodes of many candidate controllers: in this process, or in `workers`
    processes that each rebuild V and M from their weights once."""

    def __init__(self, model: VAEMDNRNN, controller: LinearController, settings: RealRolloutSettings, workers: int = 1):
        self.model = model
        self.controller = controller
        self.settings = settings
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None
        self._envs: list[Any] = []

    def __enter__(self) -> "RealRollouts":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        for env in self._envs:
            env.close()
        self._envs = []

    def returns(
        self, parameters: np.ndarray, seeds: np.ndarray, max_steps: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """parameters (N, P), environment seeds (N, R) -> (returns (N, R), lengths (N, R)).
        `max_steps` overrides the settings' episode cap (0: the environment's own limit)."""
        max_steps = self.settings.max_steps if max_steps is None else int(max_steps)
        parameters = np.asarray(parameters, dtype=np.float32)
        seeds = np.asarray(seeds, dtype=np.int64)
        N, R = seeds.shape
        rows = np.repeat(parameters, R, axis=0)  # (B, P): row n * R + r is candidate n
        flat_seeds = seeds.reshape(-1)
        if self.workers == 1 or len(flat_seeds) == 1:
            settings = dataclasses.replace(self.settings, max_steps=max_steps)
            totals, lengths = run_real_episodes(self.model, self.controller, settings, rows, flat_seeds, self._envs)
        else:
            pool = self._ensure_pool()
            chunks = np.array_split(np.arange(len(flat_seeds)), min(self.workers, len(flat_seeds)))
            futures = [pool.submit(_worker_episodes, rows[chunk], flat_seeds[chunk], max_steps) for chunk in chunks]
            results = [future.result() for future in futures]
            totals = np.concatenate([result[0] for result in results])
            lengths = np.concatenate([result[1] for result in results])
        return totals.reshape(N, R), lengths.reshape(N, R)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            weights = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
            payload = (self.model.config, weights, self.settings)
            # spawn: a fresh interpreter per worker, never a fork of a process holding torch threads.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_initialise_worker,
                initargs=payload,
            )
        return self._pool


@torch.no_grad()
def run_real_episodes(
    model: VAEMDNRNN,
    controller: LinearController,
    settings: RealRolloutSettings,
    parameters: np.ndarray,
    seeds: np.ndarray,
    envs: list[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One real episode per row: parameters (B, P), seeds (B,) -> (returns (B,), lengths (B,)).

    Rows run in lockstep groups of `envs_per_batch`; `envs` is a cache of environments reused
    across calls (filled as needed)."""

    envs = [] if envs is None else envs
    B = len(seeds)
    totals = np.zeros(B)
    lengths = np.zeros(B, dtype=np.int64)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(int(seeds[0]) if B else 0)
    group = max(1, settings.envs_per_batch)
    for start in range(0, B, group):
        rows = np.arange(start, min(start + group, B))
        while len(envs) < len(rows):
            envs.append(make_env(settings.env_id, **settings.env_kwargs))
        observations = [envs[index].reset(seed=int(seeds[row]))[0] for index, row in enumerate(rows)]
        limit = settings.max_steps or _step_limit(envs[0])
        state = model.initial(len(rows))
        last_action = torch.zeros(len(rows), model.action_size, device=device)
        is_first = np.ones(len(rows), dtype=bool)
        running = np.ones(len(rows), dtype=bool)
        parameter_rows = torch.as_tensor(parameters[rows], device=device)
        while running.any():
            active = np.flatnonzero(running)
            frames = prepare_frames(np.stack([observations[index]["image"] for index in active]), settings.frame_crop)
            active_state = map_state(state, lambda tensor: tensor[active])
            _, new_state = model.observe(
                {"image": frames[:, None]},
                last_action[active][:, None],
                is_first[active][:, None],
                active_state,
                sample=settings.sample_latents,
                generator=generator,
            )
            for key, value in new_state.items():
                state[key][active] = value
            actions = controller(parameter_rows[active], controller_features(new_state, settings.inputs)[:, None])[:, 0]
            last_action[active] = model.encode_action(actions, ("B",), {"B": len(active)})
            is_first[active] = False
            for action, index in zip(controller.to_env(actions), active):
                observation, reward, terminated, truncated, _ = envs[index].step(
                    action.item() if action.ndim == 0 else action
                )
                observations[index] = observation
                row = rows[index]
                totals[row] += float(reward)
                lengths[row] += 1
                if terminated or truncated or (limit and lengths[row] >= limit):
                    running[index] = False
    return totals, lengths


def _step_limit(env: Any) -> int:
    """The environment's own episode limit, or 0 when it has none."""
    spec = getattr(env, "spec", None) or getattr(getattr(env, "unwrapped", None), "spec", None)
    limit = getattr(spec, "max_episode_steps", None)
    return int(limit or 0)


# --- worker processes ----------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _initialise_worker(
    config: VAEMDNRNNConfig, weights: dict[str, torch.Tensor], settings: RealRolloutSettings
) -> None:
    torch.set_num_threads(1)
    env = make_env(settings.env_id, **settings.env_kwargs)
    model = VAEMDNRNN(config, env.observation_space, env.action_space)
    model.load_state_dict(weights)
    model.eval()
    features = model.latent_size + (model.hidden_size if settings.inputs == "latent_and_hidden" else 0)
    _worker.update(model=model, controller=LinearController(features, env.action_space), settings=settings, envs=[env])


def _worker_episodes(parameters: np.ndarray, seeds: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    settings = dataclasses.replace(_worker["settings"], max_steps=max_steps)
    return run_real_episodes(_worker["model"], _worker["controller"], settings, parameters, seeds, _worker["envs"])

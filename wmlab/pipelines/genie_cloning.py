"""`wmlab pipeline genie-cloning RUN_DIR`: Genie's behavioural cloning in small (Bruce et al. 2024,
arXiv:2402.15391, Sec. 3 "Training agents"): a policy that imitates unlabeled expert video in the
latent action space, plus a map from latent to real actions fitted on a few labelled transitions,
against behavioural cloning on every real label (the oracle) and a random policy.

    wmlab train --algo genie --dataset data/rooms-discrete --run-dir runs/genie-rooms ...
    wmlab pipeline genie-cloning runs/genie-rooms --labels 50 --seeds 3
    wmlab pipeline genie-cloning runs/genie-minigrid --env-kwargs '{"agent_start_pos": null}'

The environment is the one the Genie run's video was recorded from (its id and keyword arguments,
which `--env-kwargs` may extend: MiniGrid's Empty rooms start every episode in the same corner
unless `agent_start_pos` is null).

1. Expert video: `expert_episodes` episodes of a scripted expert: on two rooms
   wmlab.envs.two_rooms.scripted_action turned into the nearest of the 5 discrete moves; on
   MiniGrid the first action of a shortest path to the goal (breadth-first search over cell and
   direction with left, right, forward). Its actions are kept apart.
2. The Genie run's latent action model reads the latent action of every expert transition
   (`infer_actions`): the action a_{t+1} that leads from frame x_t to x_{t+1}.
3. Latent policy: a CNN on frame x_t trained by cross-entropy to predict a_{t+1}.
4. Latent -> real map: from `labels` transitions drawn at random (with their real action), each
   latent action maps to the real action it was most often seen with; a latent action never seen
   maps to the real action seen most often overall.
5. Oracle: the same CNN trained on the real action of every expert transition.
6. Random: actions drawn uniformly.

Each policy plays `eval_episodes` fresh episodes (the same reset seeds for all); reported:
success rate (the goal reached) and the expert's own success on those episodes. Seeds change the
policies' initial weights, their batches and the labelled transitions.

Shape legend: N transitions, B batch, H, W, C image, A actions, K latent actions.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import nn

from wmlab.core.config import parse_json_object
from wmlab.core.errors import WmlabError
from wmlab.data.dataset import read_manifest
from wmlab.envs.adapter import make_env
from wmlab.envs.two_rooms import DISCRETE_MOVES, TwoRooms, scripted_action
from wmlab.eval.grounding import confusion_matrix, grounding_scores
from wmlab.nn.conv import ConvEncoder, ConvStages
from wmlab.pipelines.genie import load_genie_run

#: MiniGrid's DIR_TO_VEC: the cell step of directions 0-3 (right, down, left, up).
MINIGRID_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


@dataclass(frozen=True)
class CloningConfig:
    """Few-label behavioural cloning from a Genie run's latent actions."""

    run_dir: tyro.conf.Positional[Path]
    """A Genie run (`wmlab train --algo genie`) trained on video of two-rooms-discrete or a MiniGrid task."""
    env_kwargs: str = "{}"
    """Keyword arguments added to those the video was recorded with, as a JSON object."""
    labels: int = 50
    """Labelled transitions the latent -> real map is fitted on."""
    expert_episodes: int = 100
    """Episodes of expert video (unlabeled for the latent policy)."""
    episode_steps: int = 60
    """Longest episode (expert and evaluation)."""
    updates: int = 400
    """Adam updates of each policy."""
    batch_size: int = 64
    """Frames per update."""
    downsample: int = 2
    """The policies read frames average-pooled by this factor (1: full resolution)."""
    learning_rate: float = 1e-3
    """Adam's step size."""
    eval_episodes: int = 50
    """Evaluation episodes per policy (reset seeds 100000 + i, the same for every policy)."""
    seeds: int = 3
    """Seeds 0 .. seeds - 1."""
    out: Path | None = None
    """Write the JSON here (default RUN_DIR/eval/cloning.json)."""


def expert_action(env) -> int:
    """The scripted expert's action in two-rooms-discrete or a MiniGrid task."""

    if isinstance(env.unwrapped, TwoRooms):
        return two_rooms_expert_action(env)
    if hasattr(env.unwrapped, "agent_pos") and hasattr(env.unwrapped, "grid"):
        return minigrid_expert_action(env)
    raise WmlabError(
        f"no scripted expert for {type(env.unwrapped).__name__}: the cloning benchmark plays two-rooms-discrete or MiniGrid"
    )


def minigrid_expert_action(env) -> int:
    """The first action (0 left, 1 right, 2 forward) of a shortest path from the agent's cell and
    direction to the goal, by breadth-first search; forward where no path exists."""
    world = env.unwrapped

    def cell(x: int, y: int):
        return world.grid.get(x, y)

    start = (int(world.agent_pos[0]), int(world.agent_pos[1]), int(world.agent_dir))
    first: dict[tuple[int, int, int], int | None] = {start: None}
    frontier = deque([start])
    while frontier:
        state = frontier.popleft()
        x, y, direction = state
        here = cell(x, y)
        if here is not None and here.type == "goal":
            return 2 if first[state] is None else int(first[state])
        dx, dy = MINIGRID_STEPS[direction]
        ahead = cell(x + dx, y + dy)
        moves = [(0, (x, y, (direction - 1) % 4)), (1, (x, y, (direction + 1) % 4))]
        if ahead is None or ahead.can_overlap():
            moves.append((2, (x + dx, y + dy, direction)))
        for action, following in moves:
            if following not in first:
                first[following] = action if first[state] is None else first[state]
                frontier.append(following)
    return 2


def two_rooms_expert_action(env) -> int:
    """The discrete move (stay, up, down, left, right) nearest the scripted expert's continuous move."""

    move = scripted_action(env)
    if np.abs(move).max() < 1e-6:
        return 0
    return int(np.argmax([np.dot(move, candidate) for candidate in DISCRETE_MOVES]))


def record_expert(
    env_id: str, env_kwargs: dict[str, Any], episodes: int, steps: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(frames per episode (T + 1, H, W, C), actions per episode (T,), success rate) of the expert."""
    env = make_env(env_id, max_episode_steps=steps, **env_kwargs)
    frames, actions, successes = [], [], 0
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        episode_frames, episode_actions, done = [observation["image"]], [], False
        while not done:
            action = expert_action(env)
            observation, _, terminated, truncated, info = env.step(action)
            episode_frames.append(observation["image"])
            episode_actions.append(action)
            done = terminated or truncated
            successes += int(info.get("success", terminated))
        frames.append(np.stack(episode_frames))
        actions.append(np.asarray(episode_actions, dtype=np.int64))
    env.close()
    return frames, actions, successes / episodes


def latent_labels(model, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The latent action (T,) the model reads for each transition of each episode (T + 1 frames)."""
    labels = []
    for episode in frames:
        inferred = model.infer_actions({"image": torch.as_tensor(episode)[None]})[0].cpu().numpy()
        labels.append(inferred[1:])  # the action read at frame t + 1 led from x_t to x_{t+1}
    return labels


class FramePolicy(nn.Module):
    """Frames (B, H, W, C) uint8 -> logits (B, A), read at half the resolution (CPU budget)."""

    def __init__(self, actions: int, image_size: tuple[int, int], downsample: int = 2):
        super().__init__()
        self.downsample = downsample
        reduced = (image_size[0] // downsample, image_size[1] // downsample)
        self.encoder = ConvEncoder(3, ConvStages(16, (1, 2, 4), kernel=4, image_size=reduced))
        self.head = nn.Linear(self.encoder.features, actions)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        if self.downsample > 1:
            images = F.avg_pool2d(images, self.downsample)
        return self.head(self.encoder(images))


def fit_policy(frames: np.ndarray, targets: np.ndarray, actions: int, config: CloningConfig, seed: int) -> FramePolicy:
    """A FramePolicy fitted by cross-entropy to targets (N,) of frames (N, H, W, C)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = FramePolicy(actions, frames.shape[1:3], config.downsample)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    images, labels = torch.as_tensor(frames), torch.as_tensor(targets)
    for _ in range(config.updates):
        index = torch.as_tensor(rng.integers(0, len(frames), config.batch_size))
        loss = F.cross_entropy(policy(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return policy.eval()


def latent_to_real(latent: np.ndarray, real: np.ndarray, codes: int, actions: int) -> np.ndarray:
    """Map (K,): each latent action's most frequent real action among the labelled pairs (N,), the
    most frequent real action overall for latent actions never seen."""
    counts = np.zeros((codes, actions), dtype=np.int64)
    np.add.at(counts, (latent, real), 1)
    fallback = int(np.bincount(real, minlength=actions).argmax())
    return np.where(counts.sum(1) > 0, counts.argmax(1), fallback)


def evaluate(choose, env_id: str, env_kwargs: dict[str, Any], episodes: int, steps: int) -> float:
    """Success rate of choose(frame (H, W, C), env) -> action in `episodes` fresh episodes."""
    env = make_env(env_id, max_episode_steps=steps, **env_kwargs)
    successes = 0
    for episode in range(episodes):
        observation, _ = env.reset(seed=100_000 + episode)
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(choose(observation["image"], env))
            done = terminated or truncated
            successes += int(info.get("success", terminated))
    env.close()
    return successes / episodes


def greedy(policy: FramePolicy, mapping: np.ndarray | None = None):
    def choose(frame: np.ndarray, env: Any = None) -> int:
        with torch.no_grad():
            action = int(policy(torch.as_tensor(frame)[None]).argmax(-1))
        return int(mapping[action]) if mapping is not None else action

    return choose


def recorded_env(dataset: str | Path) -> tuple[str, dict[str, Any]]:
    """(environment id, keyword arguments) a `wmlab record` dataset was recorded from."""

    manifest = read_manifest(Path(dataset))
    if not manifest.get("env_id"):
        raise WmlabError(f"{dataset} names no environment: the cloning benchmark plays the video's environment")
    return manifest["env_id"], dict(manifest.get("env_kwargs", {}))


def run_cloning(config: CloningConfig) -> dict[str, Any]:
    model, info = load_genie_run(config.run_dir)
    env_id, env_kwargs = recorded_env(info["dataset"])
    env_kwargs.update(parse_json_object("--env-kwargs", config.env_kwargs))
    started = time.perf_counter()
    frames, actions, expert_success = record_expert(
        env_id, env_kwargs, config.expert_episodes, config.episode_steps, seed=50_000
    )
    if tuple(frames[0].shape[1:]) != tuple(model.image_shape):
        raise WmlabError(
            f"{config.run_dir}: {env_id} draws frames of {frames[0].shape[1:]}, the model takes {model.image_shape}"
        )
    latents = latent_labels(model, frames)
    inputs = np.concatenate([episode[:-1] for episode in frames])  # x_t of every transition
    real = np.concatenate(actions)
    latent = np.concatenate(latents)
    with make_env(env_id, **env_kwargs) as env:
        moves = int(env.action_space.n)
    codes = int(model.config.action_codes)

    def play(choose) -> float:
        return evaluate(choose, env_id, env_kwargs, config.eval_episodes, config.episode_steps)

    expert_eval = play(lambda _, env: expert_action(env))
    rows = []
    for seed in range(config.seeds):
        rng = np.random.default_rng(seed)
        labelled = rng.choice(len(real), size=min(config.labels, len(real)), replace=False)
        mapping = latent_to_real(latent[labelled], real[labelled], codes, moves)
        latent_policy = fit_policy(inputs, latent, codes, config, seed)
        oracle = fit_policy(inputs, real, moves, config, seed)
        random_rng = np.random.default_rng(1000 + seed)
        rows.append(
            {
                "seed": seed,
                "latent_policy": play(greedy(latent_policy, mapping)),
                "oracle_all_labels": play(greedy(oracle)),
                "random": play(lambda *_: int(random_rng.integers(moves))),
                "map": mapping.tolist(),
            }
        )
    summary = {
        name: {"mean": float(np.mean([row[name] for row in rows])), "std": float(np.std([row[name] for row in rows]))}
        for name in ("latent_policy", "oracle_all_labels", "random")
    }

    confusion = confusion_matrix(real, latent, moves, codes)
    return {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "env": env_id,
        "env_kwargs": env_kwargs,
        "expert_transitions": int(len(real)),
        "expert_success_on_its_video": expert_success,
        "expert_success_on_eval_episodes": expert_eval,
        "expert_video_grounding": {"confusion": confusion.tolist(), **grounding_scores(confusion)},
        "seeds": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }


def pipeline_command(argv: list[str]) -> int:
    """`wmlab pipeline genie-cloning RUN_DIR [...]`."""
    config = tyro.cli(CloningConfig, args=argv, prog="wmlab pipeline genie-cloning")
    result = run_cloning(config)
    out = config.out or config.run_dir / "eval" / "cloning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, value in result["summary"].items():
        print(f"{name}: success {value['mean']:.3f} +- {value['std']:.3f} over {config.seeds} seeds")
    print(f"expert: {result['expert_success_on_eval_episodes']:.3f}; written to {out}")
    return 0

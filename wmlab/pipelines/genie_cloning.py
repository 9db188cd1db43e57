"""`wmlab pipeline genie-cloning RUN_DIR`: Genie's behavioural cloning in small (Bruce et al. 2024,
arXiv:2402.15391, Sec. 3 "Training agents"): a policy that imitates unlabeled expert video in the
latent action space, plus a map from latent to real actions fitted on a few labelled transitions,
against behavioural cloning on every real label (the oracle) and a random policy.

    wmlab train --algo genie --dataset data/rooms-discrete --run-dir runs/genie-rooms ...
    wmlab pipeline genie-cloning runs/genie-rooms --labels 50 --seeds 3

1. Expert video: `expert_episodes` episodes of the scripted expert of two rooms
   (wmlab.envs.two_rooms.scripted_action, turned into the nearest of the 5 discrete moves); its
   actions are kept apart.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import nn

from wmlab.core.errors import WmlabError
from wmlab.envs.adapter import make_env
from wmlab.nn.conv import ConvEncoder

ENV = "two-rooms-discrete"


@dataclass(frozen=True)
class CloningConfig:
    """Few-label behavioural cloning from a Genie run's latent actions."""

    run_dir: tyro.conf.Positional[Path]
    """A Genie run (`wmlab train --algo genie`) trained on two-rooms-discrete video."""
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
    learning_rate: float = 1e-3
    """Adam's step size."""
    eval_episodes: int = 50
    """Evaluation episodes per policy (reset seeds 100000 + i, the same for every policy)."""
    seeds: int = 3
    """Seeds 0 .. seeds - 1."""
    out: Path | None = None
    """Write the JSON here (default RUN_DIR/eval/cloning.json)."""


def expert_action(env) -> int:
    """The discrete move (stay, up, down, left, right) nearest the scripted expert's continuous move."""
    from wmlab.envs.two_rooms import DISCRETE_MOVES, scripted_action

    move = scripted_action(env)
    if np.abs(move).max() < 1e-6:
        return 0
    return int(np.argmax([np.dot(move, candidate) for candidate in DISCRETE_MOVES]))


def record_expert(episodes: int, steps: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(frames per episode (T + 1, H, W, C), actions per episode (T,), success rate) of the expert."""
    env = make_env(ENV, max_episode_steps=steps)
    frames, actions, successes = [], [], 0
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        episode_frames, episode_actions, done = [observation["image"]], [], False
        while not done:
            action = expert_action(env)
            observation, _, terminated, truncated, _ = env.step(action)
            episode_frames.append(observation["image"])
            episode_actions.append(action)
            done = terminated or truncated
            successes += int(terminated)
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

    def __init__(self, actions: int, image_size: tuple[int, int]):
        super().__init__()
        half = (image_size[0] // 2, image_size[1] // 2)
        self.encoder = ConvEncoder(3, 16, (1, 2, 4), kernel=4, image_size=half)
        self.head = nn.Linear(self.encoder.features, actions)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = F.avg_pool2d(frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5, 2)
        return self.head(self.encoder(images))


def fit_policy(frames: np.ndarray, targets: np.ndarray, actions: int, config: CloningConfig, seed: int) -> FramePolicy:
    """A FramePolicy fitted by cross-entropy to targets (N,) of frames (N, H, W, C)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = FramePolicy(actions, frames.shape[1:3])
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


def evaluate(choose, episodes: int, steps: int) -> float:
    """Success rate of choose(frame (H, W, C), env) -> action in `episodes` fresh episodes."""
    env = make_env(ENV, max_episode_steps=steps)
    successes = 0
    for episode in range(episodes):
        observation, _ = env.reset(seed=100_000 + episode)
        done = False
        while not done:
            observation, _, terminated, truncated, _ = env.step(choose(observation["image"], env))
            done = terminated or truncated
            successes += int(terminated)
    env.close()
    return successes / episodes


def greedy(policy: FramePolicy, mapping: np.ndarray | None = None):
    def choose(frame: np.ndarray, env: Any = None) -> int:
        with torch.no_grad():
            action = int(policy(torch.as_tensor(frame)[None]).argmax(-1))
        return int(mapping[action]) if mapping is not None else action

    return choose


def run_cloning(config: CloningConfig) -> dict[str, Any]:
    from wmlab.pipelines.genie import load_genie_run

    model, _ = load_genie_run(config.run_dir)
    if tuple(model.image_shape) != (64, 64, 3):
        raise WmlabError(
            f"{config.run_dir}: the cloning benchmark plays {ENV} at 64 x 64, the model takes {model.image_shape}"
        )
    started = time.perf_counter()
    frames, actions, expert_success = record_expert(config.expert_episodes, config.episode_steps, seed=50_000)
    latents = latent_labels(model, frames)
    inputs = np.concatenate([episode[:-1] for episode in frames])  # x_t of every transition
    real = np.concatenate(actions)
    latent = np.concatenate(latents)
    codes, moves = int(model.config.action_codes), 5
    expert_eval = evaluate(lambda _, env: expert_action(env), config.eval_episodes, config.episode_steps)
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
                "latent_policy": evaluate(greedy(latent_policy, mapping), config.eval_episodes, config.episode_steps),
                "oracle_all_labels": evaluate(greedy(oracle), config.eval_episodes, config.episode_steps),
                "random": evaluate(
                    lambda *_: int(random_rng.integers(moves)), config.eval_episodes, config.episode_steps
                ),
                "map": mapping.tolist(),
            }
        )
    summary = {
        name: {"mean": float(np.mean([row[name] for row in rows])), "std": float(np.std([row[name] for row in rows]))}
        for name in ("latent_policy", "oracle_all_labels", "random")
    }
    from wmlab.eval.grounding import confusion_matrix, grounding_scores

    confusion = confusion_matrix(real, latent, moves, codes)
    return {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "env": ENV,
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

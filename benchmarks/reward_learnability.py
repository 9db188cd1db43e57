"""Can a reward model learn a dataset's reward sign from frame pairs? (issue 27, UniSim's row)

Trains one reward classifier alone on a recorded dataset's episodes, as the diffusion world model's
reward / end model is trained (windows of B x T steps, the sign of the reward at every step t >= 1
from the frames t - 1 and t and the action that led to t), and reports, every --every updates, the
rank AUC of its probability of a positive reward on the last --held-out episodes, which it never
sees in training. AUC 0.5: it outputs the prior.

    python benchmarks/reward_learnability.py DATASET --model diamond   # the world model's own
    python benchmarks/reward_learnability.py DATASET --model reference
    python benchmarks/reward_learnability.py DATASET --model reference-lstm

- diamond: wmlab's RewardEndModel (DIAMOND's: the UNet's conditioned encoder on the frame pair, an
  LSTM cell, a two-layer head) at the sizes given, its LSTM reset at each window's start.
- reference: a plain classifier, three strided ReLU convolutions on (previous, next, next -
  previous), the action one-hot, a ReLU layer and the head; no memory.
- reference-lstm: the same convolutions feeding an LSTM cell and DIAMOND's head: what the memory
  alone changes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusion_generation import rank_auc  # this folder, first on the path when run as a script
from torch import nn

from wmlab.data.dataset import load_dataset
from wmlab.models.diffusion import RewardEndConfig, RewardEndModel

MODELS = ("diamond", "reference", "reference-lstm")


class ReferenceClassifier(nn.Module):
    """(previous, next) frames (B, C, H, W) in [-1, 1], action (B,), LSTM state -> reward logits
    (B, 3), new state; `memory` puts an LSTM cell between the features and the head."""

    def __init__(self, channels: int, size: tuple[int, int], actions: int, width: int, memory: bool):
        super().__init__()
        self.actions = actions
        self.convolutions = nn.Sequential(
            nn.Conv2d(3 * channels, 16, 5, 2, 2), nn.ReLU(),
            nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
        )  # fmt: skip
        features = 32 * (size[0] // 8) * (size[1] // 8) + actions
        self.memory = nn.LSTMCell(features, width) if memory else None
        if memory:
            self.head = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 3))
        else:
            self.head = nn.Sequential(nn.Linear(features, 2 * width), nn.ReLU(), nn.Linear(2 * width, 3))

    def forward(self, previous, following, action, hidden, cell):
        features = self.convolutions(torch.cat([previous, following, following - previous], 1)).flatten(1)
        features = torch.cat([features, F.one_hot(action, self.actions).float()], 1)
        if self.memory is None:
            return self.head(features), hidden, cell
        hidden, cell = self.memory(features, (hidden, cell))
        return self.head(hidden), hidden, cell


class WorldModelRewards(nn.Module):
    """The world model's RewardEndModel, its reward logits alone."""

    def __init__(self, config: RewardEndConfig, channels: int, size: tuple[int, int], actions: int):
        super().__init__()
        self.model = RewardEndModel(config, channels, size, actions)

    def forward(self, previous, following, action, hidden, cell):
        reward_logits, _, hidden, cell = self.model(previous, following, action, hidden, cell)
        return reward_logits, hidden, cell


def reward_logits_along(classifier: nn.Module, width: int, frames: torch.Tensor, actions: torch.Tensor):
    """frames (B, T, C, H, W), actions (B, T) -> reward logits (B, T - 1, 3) for the steps 1..T-1,
    the memory starting from zero."""
    hidden = frames.new_zeros(frames.shape[0], width)
    cell = torch.zeros_like(hidden)
    logits = []
    for t in range(1, frames.shape[1]):
        step_logits, hidden, cell = classifier(frames[:, t - 1], frames[:, t], actions[:, t], hidden, cell)
        logits.append(step_logits)
    return torch.stack(logits, 1)


def to_frames(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-1, 1]."""
    return torch.as_tensor(images).movedim(-1, -3).float() / 127.5 - 1


def run(arguments) -> dict:
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    generator = np.random.default_rng(arguments.seed)
    dataset = load_dataset(arguments.dataset)
    episodes = [episode for episode in dataset.episodes() if len(episode["reward"]) >= arguments.length]
    if len(episodes) <= arguments.held_out:
        raise SystemExit(f"{arguments.dataset} has {len(episodes)} episodes of {arguments.length}+ steps; "
                         f"--held-out {arguments.held_out} leaves none to train on")  # fmt: skip
    train, held_out = episodes[: -arguments.held_out], episodes[-arguments.held_out :]
    height, width_pixels, channels = train[0]["image"].shape[1:]
    actions = dataset.action_space.n
    if arguments.model == "diamond":
        config = RewardEndConfig(
            channels=tuple(arguments.channels),
            depths=tuple(arguments.depths),
            condition_size=arguments.condition_size,
            lstm_size=arguments.width,
            middle_blocks=arguments.middle_blocks,
            feature_skip=arguments.feature_skip,
        )
        classifier = WorldModelRewards(config, channels, (height, width_pixels), actions)
    else:
        memory = arguments.model == "reference-lstm"
        classifier = ReferenceClassifier(channels, (height, width_pixels), actions, arguments.width, memory)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=arguments.learning_rate)

    def held_out_auc() -> float:
        scores, labels = [], []
        with torch.no_grad():
            for episode in held_out:
                frames, moves = to_frames(episode["image"])[None], torch.as_tensor(episode["action"])[None]
                logits = reward_logits_along(classifier, arguments.width, frames, moves)[0]
                scores.append(logits.softmax(-1)[:, 2].numpy())
                labels.append(episode["reward"][1:] > 0)
        return rank_auc(np.concatenate(scores), np.concatenate(labels))

    log, losses, start = [], [], time.time()
    for update in range(1, arguments.updates + 1):
        windows = []
        for _ in range(arguments.batch_size):
            episode = train[generator.integers(len(train))]
            first = generator.integers(0, len(episode["reward"]) - arguments.length + 1)
            windows.append(
                {key: episode[key][first : first + arguments.length] for key in ("image", "action", "reward")}
            )
        frames = to_frames(np.stack([window["image"] for window in windows]))
        moves = torch.as_tensor(np.stack([window["action"] for window in windows]))
        target = torch.as_tensor(np.stack([window["reward"] for window in windows]))[:, 1:].sign().long() + 1
        logits = reward_logits_along(classifier, arguments.width, frames, moves)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if update % arguments.every == 0:
            log.append({"update": update, "loss": float(np.mean(losses[-arguments.every :])),
                        "held_out_auc": held_out_auc(), "seconds": round(time.time() - start, 1)})  # fmt: skip
            print(json.dumps(log[-1]), flush=True)
    return {"dataset": str(arguments.dataset), "arguments": {k: str(v) for k, v in vars(arguments).items()}, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a recorded dataset (wmlab record, wmlab.data.instructions)")
    parser.add_argument("--model", choices=MODELS, default="diamond")
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 8, 16, 16], help="diamond: encoder levels")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 1, 1, 1], help="diamond: blocks per level")
    parser.add_argument("--condition-size", type=int, default=32, help="diamond: action embedding size")
    parser.add_argument("--feature-skip", action="store_true", help="diamond: RewardEndConfig.feature_skip")
    parser.add_argument(
        "--middle-blocks", type=int, default=0, help="diamond: RewardEndConfig.middle_blocks (attention at the end)"
    )
    parser.add_argument("--width", type=int, default=128, help="LSTM size (reference: the ReLU layer has twice it)")
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=8, help="steps per window")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--held-out", type=int, default=20, help="last episodes kept out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args()
    result = run(arguments)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

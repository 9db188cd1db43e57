"""Which training setting keeps the diffusion world model's reward model at its prior? (issue 27)

Trains only the reward / end model of an offline diffusion run (its config: sizes, `sparse_weight`;
its dataset) with the world model's own `reward_end_loss`, from the same initialisation (seed 0)
and the same batches, one setting changed at a time, and prints the reward loss averaged over each
100 updates (a model at the prior stays at about 0.88 with the plain mean, 0.73 with weight 10).

    python benchmarks/reward_optimizer_bisect.py RUN --optimizer adam
    python benchmarks/reward_optimizer_bisect.py RUN --optimizer adamw --windows episodes --end-loss

RUN: an offline diffusion run directory (`wmlab train --model diffusion --dataset ...`; only its
config.json and dataset are read).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from wmlab.data.dataset import load_dataset
from wmlab.runs.directory import build_world_model, load_offline_run_spec

KEYS = ("image", "action", "reward", "is_first", "is_terminal")


def episode_windows(episodes: list[dict], generator: np.random.Generator, batch: int, length: int) -> dict:
    """B windows of T steps inside episodes (the standalone benchmark's sampling)."""
    windows = []
    for _ in range(batch):
        episode = episodes[generator.integers(len(episodes))]
        first = generator.integers(0, len(episode["reward"]) - length + 1)
        windows.append({key: episode[key][first : first + length] for key in KEYS})
    return {key: np.stack([window[key] for window in windows]) for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="an offline diffusion run directory")
    parser.add_argument(
        "--optimizer", choices=("adam", "adamw"), default="adam", help="adamw: torch's, weight decay 1e-2"
    )
    parser.add_argument("--windows", choices=("dataset", "episodes"), default="dataset",
                        help="dataset: the offline trainer's sampler (windows may cross episodes); episodes: inside episodes")  # fmt: skip
    parser.add_argument("--end-loss", action="store_true", help="add the end flag's loss to the reward's")
    parser.add_argument("--updates", type=int, default=1500)
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = load_offline_run_spec(arguments.run)
    model = build_world_model(spec)
    dataset = load_dataset(spec.dataset, seed=0)
    episodes = [episode for episode in dataset.episodes() if len(episode["reward"]) >= 8]
    generator = np.random.default_rng(0)
    parameters = list(model.reward_end.parameters())
    optimizer = (torch.optim.AdamW if arguments.optimizer == "adamw" else torch.optim.Adam)(parameters, lr=3e-4)
    losses, start = [], time.time()
    for update in range(1, arguments.updates + 1):
        if arguments.windows == "episodes":
            batch = episode_windows(episodes, generator, 8, 8)
        else:
            sampled = dataset.sample(8, 8)
            batch = {"image": sampled.obs["image"], "action": sampled.action, "reward": sampled.reward,
                     "is_first": sampled.is_first, "is_terminal": sampled.is_terminal}  # fmt: skip
        frames = torch.as_tensor(batch["image"]).movedim(-1, -3).float() / 127.5 - 1
        terms, _ = model.reward_end_loss(
            frames,
            torch.as_tensor(batch["action"]).long().reshape(8, 8),
            torch.as_tensor(batch["reward"]).float(),
            torch.as_tensor(batch["is_first"]).bool(),
            torch.as_tensor(batch["is_terminal"]).bool(),
        )
        loss = terms["reward"] + (terms["end"] if arguments.end_loss else 0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(terms["reward"].item())
        if update % 100 == 0:
            record = {"update": update, "reward_loss": round(float(np.mean(losses[-100:])), 4)}
            print(json.dumps({**record, "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()

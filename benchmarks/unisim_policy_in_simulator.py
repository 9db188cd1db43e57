"""Does a UniSim zero-shot policy learn inside its simulator, and is what it learns true of the
simulator's own frames? (issue 27). For each kept actor-critic of a `wmlab pipeline unisim
--evaluate-every` output, rollouts inside the simulator from `--probe` burn-in windows of the
simulator's dataset (the same windows and random numbers for every checkpoint and policy), with
the policy's sampled instructions and with uniform random ones, each read two ways:

- predicted: the return the simulator's reward / end model gives (what the actor-critic maximises);
- read: two-rooms' dense reward read from the generated frames (diffusion_generation.path_decreases:
  the decrease of the path length from the agent to the goal between consecutive frames, summed
  over the steps where both frames show the agent), in the real environment's units, and as signs
  (+1 closer, -1 further, 0 under `--still`), the units of DIAMOND's reward model.

A policy whose predicted return beats uniform's but whose read return does not exploits the
reward model; one whose read return beats uniform's too learns something true of the frames, and
a failure in the real environment is then the simulator's dynamics (transfer).

    python benchmarks/unisim_policy_in_simulator.py OUT/seed0 --probe 64 --out policy_in_simulator.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from diffusion_generation import path_decreases  # this folder, first on the path when run as a script

from wmlab.data.dataset import load_dataset
from wmlab.nn.text import load_text_encoder
from wmlab.pipelines.unisim import InstructionSimulator, load_simulator, load_zero_shot


def kept_checkpoints(out: Path, updates: list[int] | None = None) -> list[Path]:
    """OUT/kept/update-N in the order of N (those N in `updates` when given), or OUT's final
    checkpoint where none was kept."""
    kept = [path for path in (out / "kept").glob("update-*") if re.fullmatch(r"update-\d+", path.name)]
    kept = [path for path in kept if updates is None or int(path.name.split("-")[1]) in updates]
    kept.sort(key=lambda path: int(path.name.split("-")[1]))
    return kept or [out / "checkpoints" / "rank0"]


def read_rollout(learner, simulator, batch, policy: str, seed: int, still: float, options: dict, names) -> dict:
    """One rollout per window under `policy`; its predicted and frame-read returns, and per
    instruction `names[i]` the mean predicted reward and read sign of the steps that chose it."""
    draws = torch.Generator().manual_seed(seed)
    trajectory, generated, start_frame, _ = learner.rollout(
        simulator, batch, learner.chooser(policy, draws), every_row=True, **options, generator=draws
    )
    frames = torch.cat([start_frame[:, None], generated], 1).float().numpy()  # (B, L + 1, H, W, C)
    read = path_decreases(frames)  # (B, L), NaN where a frame shows no agent
    predicted, taken, shares = learner.read_trajectory(trajectory)
    rewards = torch.as_tensor(trajectory.rewards).float().cpu()
    signs = np.where(np.abs(read) < still, 0.0, np.sign(read))
    per_instruction = {}
    for index, name in enumerate(names):
        chosen = (taken == index).numpy() & ~np.isnan(read)
        if chosen.any():
            per_instruction[name] = {
                "steps": int(chosen.sum()),
                "predicted_reward": round(float(rewards.numpy()[chosen].mean()), 3),
                "read_sign": round(float(signs[chosen].mean()), 3),
            }
    return {
        "predicted_return": float(predicted.mean()),
        "read_return": float(np.nansum(read, 1).mean()),
        # in the reward model's units: +1 a step closer, -1 further, 0 still (|decrease| < still)
        "read_sign_return": float(np.nansum(signs, 1).mean()),
        "read_share": float((~np.isnan(read)).mean()),
        "action_shares": [round(float(share), 3) for share in shares],
        "per_instruction": per_instruction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an output directory of `wmlab pipeline unisim`")
    parser.add_argument("--probe", type=int, default=64, help="burn-in windows (rollouts per checkpoint and policy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--updates", type=int, nargs="+", default=None, help="read only OUT/kept/update-N of these N")
    parser.add_argument("--still", type=float, default=0.01, help="|path decrease| below this reads as no move")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True, help="where to write the rows")
    arguments = parser.parse_args()

    torch.set_num_threads(arguments.threads)
    checkpoints = kept_checkpoints(arguments.out, arguments.updates)
    settings, learner, _ = load_zero_shot(arguments.out, checkpoints[0])  # a stopped run has no final one
    spec, model = load_simulator(Path(settings["run"]))
    encoder = load_text_encoder(settings["text_encoder"] or None)
    with torch.no_grad():
        table = torch.as_tensor(encoder.encode(list(settings["instructions"]))).float()
    simulator = InstructionSimulator(model, table)
    names = list(settings["instructions"])
    batch = load_dataset(spec.dataset, seed=arguments.seed + 29).sample(arguments.probe, learner.config.burn_in)
    options = {"guidance": settings["guidance"]}
    if settings["denoising_steps"]:
        options["denoising_steps"] = settings["denoising_steps"]
    rows = []
    uniform = read_rollout(learner, simulator, batch, "uniform", arguments.seed, arguments.still, options, names)
    print("uniform", json.dumps(uniform), flush=True)
    for checkpoint in checkpoints:
        _, learner, _ = load_zero_shot(arguments.out, checkpoint)
        row = {"checkpoint": checkpoint.name, "updates": learner.updates}
        row.update(read_rollout(learner, simulator, batch, "sample", arguments.seed, arguments.still, options, names))
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "out": str(arguments.out),
        "probe": arguments.probe,
        "horizon": learner.config.horizon,
        "instructions": settings["instructions"],
        "uniform": uniform,
        "policy": rows,
    }
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

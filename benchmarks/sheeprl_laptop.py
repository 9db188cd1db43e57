"""The SheepRL peer row of the laptop budget: SheepRL 0.8.4's DreamerV3 run for the same wall-clock
budget (2 hours) on the same task as `wmlab bench laptop --task dreamer-cartpole-swingup`, several
seeds side by side at one torch thread each, then evaluated from its checkpoints.

    bash benchmarks/sheeprl_setup.sh                       # once: the separate SheepRL environment
    .venv/bin/python benchmarks/sheeprl_laptop.py train    # 2 hours, both cores
    .venv/bin/python benchmarks/sheeprl_laptop.py evaluate --markdown runs/sheeprl-laptop/table.md

SheepRL's settings: its DreamerV3 of the Nature paper (`exp=dreamer_v3_5`) with the 1M model of
the official implementation (`algo=dreamer_v3_5_1M`, the size closest to wmlab's `dreamer-cpu`,
which is DreamerV3 size1m), the paper's DMC settings (action repeat 2, train ratio 512: replay
ratio 0.5 at batch 16 x 64), DMC cartpole-swingup from its state vector, one environment.
SheepRL evaluates nothing during training, so it saves a checkpoint every 2500 environment steps
(1250 policy steps) and `evaluate` plays each one afterwards: 5 greedy episodes (the mode of the
actor, as wmlab's evaluation), with SheepRL's own agent and test loop, outside the timed budget.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = ROOT / ".bench" / "sheeprl-venv" / "bin" / "python"
ACTION_REPEAT = 2
CHECKPOINT_POLICY_STEPS = 1250


def sheeprl_overrides(seed: int, log_root: Path) -> list[str]:
    """The Hydra overrides of one SheepRL run."""
    return [
        "exp=dreamer_v3_5",
        "algo=dreamer_v3_5_1M",
        "env=dmc",
        "env.wrapper.domain_name=cartpole",
        "env.wrapper.task_name=swingup",
        "env.wrapper.from_vectors=True",
        "env.wrapper.from_pixels=False",
        f"env.action_repeat={ACTION_REPEAT}",
        "env.num_envs=1",
        "env.max_episode_steps=-1",
        "env.capture_video=False",
        "algo.cnn_keys.encoder=[]",
        "algo.mlp_keys.encoder=[state]",
        "algo.replay_ratio=0.5",
        "algo.per_rank_batch_size=16",
        "algo.per_rank_sequence_length=64",
        "algo.learning_starts=1024",
        "algo.total_steps=500000",
        "algo.run_test=False",
        f"checkpoint.every={CHECKPOINT_POLICY_STEPS}",
        "checkpoint.keep_last=1000",
        "buffer.size=500000",
        "buffer.memmap=False",
        "buffer.checkpoint=False",
        "metric.log_every=2500",
        "model_manager.disabled=True",
        "num_threads=1",
        f"seed={seed}",
        f"log_root={log_root}",
        "root_dir=dmc_cartpole_swingup",
        f"run_name=seed{seed}",
    ]


def train(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    processes = []
    for seed in range(args.seeds):
        log = open(args.out / f"seed{seed}.log", "w")
        command = [
            "timeout",
            "--signal=TERM",
            str(int(args.time_limit)),
            str(args.sheeprl_python),
            "-m",
            "sheeprl",
            *sheeprl_overrides(seed, args.out / "logs"),
        ]
        started = time.time()
        processes.append(
            (seed, started, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.out))
        )
        (args.out / f"seed{seed}.started").write_text(f"{started}\n")
    for seed, started, process in processes:
        code = process.wait()
        print(
            f"seed {seed}: exit code {code} after {time.time() - started:.0f} s "
            "(124: stopped at the time limit, as intended)"
        )


def checkpoints(out: Path, seed: int) -> list[tuple[int, Path]]:
    found = []
    for path in (out / "logs").glob(f"**/seed{seed}/**/checkpoint/ckpt_*_0.ckpt"):
        match = re.match(r"ckpt_(\d+)_0\.ckpt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def training_episodes(log: Path) -> list[tuple[int, float]]:
    """(policy step, return) of each training episode SheepRL printed to its log."""
    pattern = re.compile(r"policy_step=(\d+), reward_env_0=([-\d.eE+]+)")
    return [(int(m.group(1)), float(m.group(2))) for m in pattern.finditer(log.read_text())] if log.exists() else []


EVALUATE_SNIPPET = r"""
import json, sys, torch
from lightning import Fabric
from omegaconf import OmegaConf
import gymnasium as gym
from sheeprl.algos.dreamer_v3_5.agent import build_agent
from sheeprl.algos.dreamer_v3.utils import prepare_obs
from sheeprl.utils.env import make_env
from sheeprl.utils.utils import dotdict

config_path, episodes, checkpoints = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
torch.set_num_threads(1)
cfg = dotdict(OmegaConf.to_container(OmegaConf.load(config_path), resolve=True))
fabric = Fabric(accelerator="cpu", devices=1)
for checkpoint in checkpoints:
    state = fabric.load(checkpoint, weights_only=False)
    returns, player = [], None
    for episode in range(episodes):
        env = make_env(cfg, 10_000 + episode, 0, None, "test")()
        if player is None:
            _, _, _, _, player = build_agent(fabric, tuple(env.action_space.shape),
                                             isinstance(env.action_space, gym.spaces.Box), cfg,
                                             env.observation_space, state["world_model"], state["actor"])
        obs = env.reset(seed=10_000 + episode)[0]
        player.num_envs = 1
        player.init_states()
        done, total = False, 0.0
        while not done:
            torch_obs = prepare_obs(fabric, obs, cnn_keys=cfg.algo.cnn_keys.encoder)
            with torch.no_grad():
                actions = player.get_actions(torch_obs, True, {})
            actions = torch.stack(actions, -1).cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(actions.reshape(env.action_space.shape))
            done = terminated or truncated
            total += float(reward)
        returns.append(total)
        env.close()
    print(json.dumps({"checkpoint": checkpoint, "returns": returns}), flush=True)
"""


def evaluate(args: argparse.Namespace) -> None:
    """Plays every checkpoint greedily: one process per seed (all checkpoints), the seeds in parallel."""
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    jobs = {}
    for seed in range(args.seeds):
        found = checkpoints(args.out, seed)
        if not found:
            raise SystemExit(f"no checkpoints for seed {seed} under {args.out / 'logs'}")
        config = found[0][1].parents[1] / "config.yaml"
        command = [
            str(args.sheeprl_python),
            "-c",
            EVALUATE_SNIPPET,
            str(config),
            str(args.episodes),
            *(str(path) for _, path in found),
        ]
        jobs[seed] = (
            found,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        )
    results = {}
    for seed, (found, process) in jobs.items():
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"evaluation of seed {seed} failed:\n{stderr[-3000:]}")
        started = float((args.out / f"seed{seed}.started").read_text())
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        by_path = {line["checkpoint"]: line["returns"] for line in lines}
        results[str(seed)] = [
            {
                "env_steps": policy_step * ACTION_REPEAT,
                "seconds": round(path.stat().st_mtime - started, 1),
                "return": statistics.fmean(by_path[str(path)]),
                "returns": by_path[str(path)],
            }
            for policy_step, path in found
        ]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| seed | best eval return | at step | at seconds | final eval return | env steps at the last checkpoint |",
        "|---|---|---|---|---|---|",
    ]
    for seed, rows in results.items():
        best = max(rows, key=lambda row: row["return"])
        lines.append(
            f"| {seed} | {best['return']:.0f} | {best['env_steps']} | {best['seconds']:.0f} | "
            f"{rows[-1]['return']:.0f} | {rows[-1]['env_steps']} |"
        )
    lines += ["", "Training episodes (stochastic policy, SheepRL's own log):", ""]
    for seed in results:
        episodes = training_episodes(args.out / f"seed{seed}.log")
        if episodes:
            best_step, best = max(episodes, key=lambda item: item[1])
            last = [value for _, value in episodes[-5:]]
            lines.append(
                f"- seed {seed}: {len(episodes)} episodes, best {best:.1f} (ending at "
                f"{best_step * ACTION_REPEAT} env steps), mean of the last {len(last)} {statistics.fmean(last):.1f}"
            )
    curves = [
        f"- seed {seed}: " + ", ".join(f"{row['env_steps'] / 1000:g}k: {row['return']:.1f}" for row in rows)
        for seed, rows in results.items()
    ]
    text = "\n".join(lines) + "\n\nEvaluation return against environment steps:\n" + "\n".join(curves) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("train", "evaluate"))
    parser.add_argument("--out", type=Path, default=Path("runs/sheeprl-laptop"))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=7200.0, help="wall-clock seconds per run")
    parser.add_argument("--episodes", type=int, default=5, help="greedy evaluation episodes per checkpoint")
    parser.add_argument("--sheeprl-python", type=Path, default=DEFAULT_PYTHON)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.sheeprl_python.exists():
        raise SystemExit(f"{args.sheeprl_python} not found: run `bash benchmarks/sheeprl_setup.sh` first")
    train(args) if args.stage == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())

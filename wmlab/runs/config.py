"""The training loop's own settings (each algorithm has its own config next to its agent)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from wmlab.core.config import Config, ranges


def command_option(name: str, kind: Any, help_text: str, default: Any) -> tuple[str, Any, Any]:
    """One field of a command's dataclass (for dataclasses.make_dataclass), documented for --help."""
    return (name, Annotated[kind, tyro.conf.arg(help=help_text)], dataclasses.field(default=default))


def run_directory_options(default_location: str) -> list[tuple[str, Any, Any]]:
    """run_dir, force and resume: the options of every command that trains into a run directory."""
    return [
        command_option("run_dir", Path | None, f"Run directory (default {default_location}).", None),
        command_option("force", bool, "Replace a run directory that already holds a run.", False),
        command_option("resume", Path | None, "Continue the run in this directory from its last checkpoint.", None),
    ]


@dataclass(frozen=True)
class SessionConfig(Config):
    """Where and how visibly a training command runs: the options that the online and the offline
    trainer share (their own fields follow these)."""

    device: str = "cpu"
    """Torch device for the agent or model ('cpu', 'cuda', 'cuda:1', 'mps')."""
    threads: int = 0
    """Torch CPU threads (0: leave torch's default)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Also write TensorBoard event files under RUN_DIR/tensorboard."""

    limits = ranges(non_negative="threads")


@dataclass(frozen=True)
class TrainConfig(SessionConfig):
    """How long to train and how to schedule collection, updates, evaluation and checkpoints."""

    steps: int = 20_000
    """Total environment steps to collect (summed over environments); `--resume` may raise it."""
    num_envs: int = 1
    """Environments stepped in lockstep by each process."""
    seed: int = 0
    """Seed for environments, replay sampling and the agent's random generators."""
    train_ratio: float = 64.0
    """Replayed steps per environment step (DreamerV3's definition): updates per environment step
    = train_ratio / (batch_size * sequence_length). Ignored by agents that learn from transitions."""
    batch_size: int = 16
    """Sequences per replay batch (B)."""
    sequence_length: int = 16
    """Steps per sampled sequence (T)."""
    time_limit: float = 0.0
    """Wall-clock budget in seconds, summed over resumed sessions (0: no limit): training stops
    early enough that the final evaluation and checkpoint fit in it (by what the last ones took),
    and the run ends as at `steps`. Checked after every step (with several ranks, every
    `log_every` steps). A laptop budget is `--train.time-limit 7200`."""
    learning_starts: int = 1_000
    """Environment steps collected before the first update."""
    replay_capacity: int = 1_000_000
    """Replay capacity in steps; the oldest whole episodes are evicted first."""
    eval_every: int = 5_000
    """Evaluate the greedy agent every this many environment steps (0: only at the end)."""
    eval_starts: int = 0
    """No periodic evaluation before this many environment steps (e.g. while a long random
    collection has not yet let the agent learn anything); the final one always runs."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    checkpoint_every: int = 5_000
    """Write a resumable checkpoint every this many environment steps (and always at the end)."""
    log_every: int = 1_000
    """Write averaged training metrics every this many environment steps."""
    keep_every: int = 0
    """Keep the agent's weights every this many environment steps in RUN_DIR/kept/step-N, a run
    directory of its own (config.json, checkpoints/) that `wmlab eval` reads like any run, to
    measure the agent along training afterwards (0: keep none; the checkpoint is overwritten)."""

    limits = ranges(
        counts="steps num_envs batch_size sequence_length replay_capacity eval_episodes checkpoint_every log_every",
        non_negative="train_ratio time_limit learning_starts eval_every eval_starts keep_every",
    )


@dataclass(frozen=True)
class OfflineTrainConfig(SessionConfig):
    """How the offline trainer (`wmlab train --model FAMILY --dataset DIR`) fits a world model to
    a recorded dataset: Adam on the model's own `loss` over B x T windows."""

    updates: int = 10_000
    """Gradient updates in all; `--resume` may raise it."""
    batch_size: int = 16
    """Windows per batch (B)."""
    sequence_length: int = 32
    """Steps per window (T); windows may cross episode boundaries, where is_first marks the reset."""
    learning_rate: float = 3e-4
    """Adam's step size."""
    adam_epsilon: float = 1e-8
    """Adam's epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW; DIAMOND's models: 1e-2), per step times the learning rate,
    on every parameter or on the parts named by `weight_decay_parts`; 0: plain Adam."""
    weight_decay_parts: tuple[str, ...] = ()
    """The model's top-level modules that the weight decay applies to (the diffusion model's
    `reward_end` or `denoiser`); the other parameters take plain Adam steps. Empty: every parameter."""
    grad_clip: float = 100.0
    """Clip the global gradient norm to this (0: no clipping)."""
    grad_clip_parts: tuple[str, ...] = ()
    """The model's top-level modules whose gradient norm is clipped on its own (to `grad_clip`),
    apart from the global norm of the rest: a part with large gradients (UniSim's reward model
    once it learns) then no longer shrinks the steps of the others, as with DIAMOND's separate
    optimisers. Empty: one global norm."""
    seed: int = 0
    """Seed of the model's initialisation, the window sampler and the model's own random draws."""
    time_limit: float = 0.0
    """Stop after this many seconds of training, summed over resumed sessions (0: no limit)."""
    log_every: int = 100
    """Write averaged training metrics every this many updates."""
    checkpoint_every: int = 1_000
    """Write a resumable checkpoint every this many updates (and always at the end)."""

    limits = ranges(
        counts="updates batch_size sequence_length log_every checkpoint_every",
        positive="learning_rate adam_epsilon",
        non_negative="weight_decay grad_clip time_limit",
    )

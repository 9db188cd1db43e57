"""Runs that survive anything (issue 25): each test reproduces one defect of a run a user shares,
kills or mistypes, and asserts the behaviour the fix promises. The SIGKILL fault injection is in
tests/test_fault_injection.py."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wmlab.agents.mpc.config import MPCConfig
from wmlab.cli import main
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.planners.shooting import RandomShootingConfig
from wmlab.train.config import TrainConfig
from wmlab.train.loop import RunSpec, Trainer

TINY_TRAIN = TrainConfig(
    steps=80, learning_starts=20, train_ratio=8.0, batch_size=4, sequence_length=4, eval_every=0,
    eval_episodes=1, checkpoint_every=20, log_every=10, progress=False, tensorboard=False,
)
TINY_MPC = MPCConfig(
    model=MLPWorldModelConfig(hidden_size=16, layers=1), planner=RandomShootingConfig(horizon=2, candidates=8),
    random_steps=30,
)
TINY_ENV = {"max_episode_steps": 15}


def tiny_spec(steps: int, **train) -> RunSpec:
    return RunSpec("mpc", "two-rooms-state", train=replace(TINY_TRAIN, steps=steps, **train), agent=TINY_MPC, env_kwargs=TINY_ENV)


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def checkpoint_steps(monkeypatch) -> list[int]:
    """Record the env step of every checkpoint written from now on."""
    written = []
    original = Trainer.save_checkpoint

    def recording(self):
        written.append(self.counters.env_steps)
        original(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", recording)
    return written


# ------------------------------------------------------------------------------------------------
# Defect 5: every resume wrote an extra checkpoint one step later.


def test_resume_writes_checkpoints_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    written = checkpoint_steps(monkeypatch)
    Trainer(tiny_spec(80), tmp_path / "straight").run()
    straight = list(written)
    written.clear()
    Trainer(tiny_spec(40), tmp_path / "resumed").run()
    Trainer(tiny_spec(80), tmp_path / "resumed", resume=True).run()
    assert straight == [20, 40, 60, 80]
    assert written == [20, 40, 60, 80]

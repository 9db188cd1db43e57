"""The IRIS agent: the token world model trained in IRIS's stages and the shared imagination
learner on its generated frames, through the CLI and the loop."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.imagination.config import ACTOR_CRITIC_OPTIMIZER, ImaginationConfig
from wmlab.agents.iris.agent import IrisAgent
from wmlab.agents.iris.config import IrisConfig, IrisCPUConfig
from wmlab.cli import main
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.registry import ALGORITHMS
from wmlab.core.serialization import load_state
from wmlab.core.types import Batch
from wmlab.models.tokens import SIZES, TokenWorldModelConfig

TINY_MODEL = TokenWorldModelConfig(size=SIZES["tiny"], stages=2)
TINY_LEARNER = ImaginationConfig(
    channels=(4, 4), lstm_size=16, horizon=3, burn_in=2, starts=2, optimizer=replace(ACTOR_CRITIC_OPTIMIZER, warmup=0)
)
IMAGES = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)})

TINY_ARGUMENTS = [
    "--env-kwargs",
    '{"image_size": 16, "max_episode_steps": 20, "reward": "dense"}',
    "--train.steps",
    50,
    "--train.learning-starts",
    30,
    "--train.batch-size",
    2,
    "--train.sequence-length",
    5,
    "--train.train-ratio",
    10,
    "--train.eval-every",
    0,
    "--train.eval-episodes",
    1,
    "--train.log-every",
    25,
    "--train.checkpoint-every",
    50,
    "--train.no-progress",
    "--train.no-tensorboard",
    "--agent.model.size",
    "tiny",
    "--agent.tokenizer-frames",
    8,
    "--agent.learner.channels",
    4,
    4,
    "--agent.learner.lstm-size",
    16,
    "--agent.learner.horizon",
    3,
    "--agent.learner.starts",
    2,
    "--agent.learner.burn-in",
    2,
    "--agent.world-model-starts",
    1,
    "--agent.actor-critic-starts",
    2,
]


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def test_iris_and_iris_cpu_are_registered_with_the_papers_settings():
    assert ALGORITHMS.get("iris").load() is IrisAgent and ALGORITHMS.get("iris-cpu").load() is IrisAgent
    paper = IrisConfig()
    assert paper.model.size == SIZES["iris"] and paper.learner.horizon == 20 and paper.learner.burn_in == 20
    assert paper.learner.discount == 0.995 and paper.learner.lambda_ == 0.95 and paper.learner.entropy_weight == 0.001
    assert IrisCPUConfig().learner.horizon == 20


def test_cli_smoke_iris_cpu_writes_a_checkpoint_evaluates_and_resumes(tmp_path):
    run_dir = tmp_path / "iris"
    assert (
        run_cli("train", "--algo", "iris-cpu", "--env", "two-rooms-discrete", "--run-dir", run_dir, *TINY_ARGUMENTS)
        == 0
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 50 and summary["updates"] > 2
    assert any((run_dir / "checkpoints").rglob("*.safetensors"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/reconstruction" in line and "loss/tokens" in line and "loss/actor" in line for line in lines)
    assert (run_dir / "videos" / "open_loop_image.gif").is_file()
    assert run_cli("eval", run_dir, "--suite", "horizon", "--sequences", 2, "--horizon", 3, "--context", 2) == 0
    assert (run_dir / "eval" / "horizon.json").is_file()
    assert run_cli("train", "--resume", run_dir, "--train.steps", 60, "--train.no-progress") == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 60


def test_a_resumed_iris_run_equals_an_uninterrupted_one(straight_and_resumed, tmp_path):
    agent = IrisConfig(
        model=TINY_MODEL,
        learner=TINY_LEARNER,
        tokenizer_frames=8,
        world_model_starts=1,
        actor_critic_starts=2,
        open_loop_report=False,
    )
    straight, resumed = straight_and_resumed(
        "iris-cpu", agent, {"image_size": 16, "max_episode_steps": 15, "reward": "dense"}
    )
    # Not eval/return: the interrupted run's final evaluation advances the loop's evaluation
    # counter, so its step-40 evaluation runs on another seed; the weights are compared instead.
    for key in ("env_steps", "updates", "episodes"):
        assert resumed[key] == straight[key], key
    a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")
    b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")
    for name, tensor in a["world_model"].items():
        assert torch.equal(tensor, b["world_model"][name]), name
    for name, tensor in a["learner"]["network"].items():
        assert torch.equal(tensor, b["learner"]["network"][name]), name


def test_a_continuous_action_space_is_refused():
    config = IrisConfig(model=TINY_MODEL, learner=TINY_LEARNER)
    with pytest.raises(IncompatibleSpaceError, match="discrete actions"):
        IrisAgent(config, IMAGES, spaces.Box(-1, 1, (2,), np.float32), seed=0)


def random_batch(B: int = 2, T: int = 4) -> Batch:
    """B windows of T steps of random 16 x 16 frames, actions and rewards, no episode boundary."""
    rng = np.random.default_rng(0)
    return Batch(
        obs={"image": rng.integers(0, 256, (B, T, 16, 16, 3), dtype=np.uint8)},
        action=rng.integers(0, 3, (B, T)),
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
        is_last=np.zeros((B, T), bool),
    )


def test_stages_start_in_order_and_the_actor_reads_reconstructions():
    config = IrisConfig(
        model=TINY_MODEL, learner=TINY_LEARNER, tokenizer_frames=8, world_model_starts=2, actor_critic_starts=3
    )
    agent = IrisAgent(config, IMAGES, spaces.Discrete(3), seed=0)
    batch = random_batch()
    B, T = batch.shape
    seen = [set(agent.update(batch)) for _ in range(4)]
    assert "loss/reconstruction" in seen[0] and "loss/tokens" not in seen[0] and "loss/actor" not in seen[0]
    assert "loss/tokens" in seen[2] and "loss/actor" not in seen[2]
    assert "loss/tokens" in seen[3] and "loss/actor" in seen[3] and "loss/reconstruction" in seen[3]
    frames = torch.as_tensor(batch.obs["image"][:, 0]).float() / 255
    assert torch.allclose(agent.learner.seen(frames), agent.reconstruct(frames))


def test_code_restarts_stop_at_restart_codes_until():
    # A fast usage decay kills the unused codes within a few updates; restarts happen only in the
    # first `restart_codes_until` updates (IRIS: none at all, the default; the CPU preset: until
    # the world model starts).
    assert IrisConfig().restart_codes_until == 0
    assert IrisCPUConfig().restart_codes_until == IrisCPUConfig().world_model_starts
    model = TokenWorldModelConfig(size=SIZES["tiny"], stages=2, usage_decay=0.5)
    config = IrisConfig(
        model=model,
        learner=TINY_LEARNER,
        tokenizer_frames=8,
        world_model_starts=100,
        actor_critic_starts=100,
        restart_codes_until=8,
    )
    agent = IrisAgent(config, IMAGES, spaces.Discrete(3), seed=0)
    batch = random_batch()
    restarted = [agent.update(batch)["vq/restarted"] for _ in range(16)]
    assert sum(restarted[:8]) > 0, restarted
    assert sum(restarted[8:]) == 0, restarted


def test_model_rows_train_the_models_on_the_first_rows_and_the_actor_critic_on_all():
    config = IrisConfig(
        model=TINY_MODEL,
        learner=replace(TINY_LEARNER, starts=0),
        tokenizer_frames=64,
        world_model_starts=0,
        actor_critic_starts=0,
        model_rows=2,
    )
    agent = IrisAgent(config, IMAGES, spaces.Discrete(3), seed=0)
    seen = {}

    def recorded(name, function, size):
        """`function`, writing size(its arguments) under `name` in `seen` when called."""

        def call(*arguments, **keywords):
            seen[name] = size(*arguments)
            return function(*arguments, **keywords)

        return call

    model, learner = agent.world_model, agent.learner
    model.tokenizer_loss = recorded("tokenizer", model.tokenizer_loss, lambda frames: frames.shape[0])
    model.loss_terms = recorded("world_model", model.loss_terms, lambda batch: batch.shape)
    learner.update = recorded("actor_critic", learner.update, lambda model, batch: batch.shape)
    agent.update(random_batch(B=5, T=4))
    assert seen == {"tokenizer": 2 * 4, "world_model": (2, 4), "actor_critic": (5, 4)}
    with pytest.raises(ShapeError, match="model_rows 2 exceeds the replay batch of 1"):
        agent.update(random_batch(B=1, T=4))

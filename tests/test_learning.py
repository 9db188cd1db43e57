"""Learning tests: Dreamer, PlaNet, TD-MPC2 and World Models (V-M-C) each solve a tiny task with a
fixed seed in well under a minute of one CPU thread. They fail when an algorithm stops learning,
not only when it crashes.

The task: move a point on a line to the origin. s' = clip(s + 0.25 a, -2, 2), reward -|s'|, 15
steps from |s| in [1, 2]. Random actions return about -20 (-22.1 over the 20 seeded episodes of
`random_return`); driving straight to the origin and staying there returns about -5 (between -3.8
from |s| = 1.5 and -7 from |s| = 2). V-M-C sees it as 64 x 64 frames of a bright band at the
point's position.
"""

from __future__ import annotations

import dataclasses
import json

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.dreamer.config import V3_OPTIMIZER, DreamerCPUConfig
from wmlab.agents.planet.config import PlaNetConfig
from wmlab.agents.tdmpc2.config import TDMPC2Config
from wmlab.core.registry import register_env
from wmlab.models.rssm import SIZES as RSSM_SIZES
from wmlab.models.rssm import RSSMConfig
from wmlab.models.tdmpc import TDMPCModelConfig, TDMPCSizes
from wmlab.pipelines.world_models.pipeline import pipeline_command
from wmlab.planners.cem import CEMConfig
from wmlab.planners.mppi import MPPIConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

#: Halfway from random actions (about -20) to the optimum (about -5): an agent above it learned.
LEARNED = -12.0


class PointToOrigin(gymnasium.Env):
    """s' = clip(s + 0.25 a, -2, 2), reward -|s'|, 15 steps from |s| in [1, 2] with a random sign."""

    length = 15

    def __init__(self):
        self.observation_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(1, 2) * self.np_random.choice([-1, 1]))
        self.steps = 0
        return self.observation(), {}

    def observation(self):
        return np.array([self.position], np.float32)

    def step(self, action):
        push = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.position = float(np.clip(self.position + 0.25 * push, -2, 2))
        self.steps += 1
        return self.observation(), -abs(self.position), False, self.steps >= self.length, {}


class PixelPointToOrigin(PointToOrigin):
    """The same task seen as a 64 x 64 frame: a bright vertical band at the point's position."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)

    def observation(self):
        image = np.zeros((64, 64, 3), np.uint8)
        centre = int(round(32 + 14 * self.position))
        image[:, max(0, centre - 4) : centre + 4] = 255
        return image


register_env(
    "test-point-to-origin", PointToOrigin, "a point on a line driven to the origin (learning tests)", overwrite=True
)
register_env(
    "test-pixel-point-to-origin", PixelPointToOrigin, "the same seen in 64 x 64 frames (learning tests)", overwrite=True
)


def random_return(episodes: int = 20) -> float:
    env = PointToOrigin()
    env.action_space.seed(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=10_000 + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train(tmp_path, algorithm: str, agent, steps: int, **train) -> tuple[dict, list[dict]]:
    """Train on the vector task; (summary, metrics records)."""
    settings = dict(
        steps=steps,
        learning_starts=100,
        batch_size=4,
        sequence_length=8,
        eval_every=0,
        eval_episodes=10,
        log_every=100,
        checkpoint_every=10**9,
        threads=1,
        progress=False,
        tensorboard=False,
    )
    settings.update(train)
    spec = RunSpec(algorithm=algorithm, env="test-point-to-origin", train=TrainConfig(**settings), agent=agent)
    summary = Trainer(spec, tmp_path / algorithm).run()
    records = [json.loads(line) for line in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def first_and_last(records: list[dict], key: str) -> tuple[float, float]:
    values = [record[key] for record in records if key in record]
    return values[0], values[-1]


def test_random_actions_are_far_below_the_bar():
    assert random_return() < LEARNED - 5


def test_dreamer_learns_to_drive_the_point_home(tmp_path):
    fast = dataclasses.replace(V3_OPTIMIZER, learning_rate=1e-3, warmup=0)
    sizes = RSSM_SIZES.preset("tiny", deterministic_size=32, hidden_size=32, units=32)
    model = RSSMConfig(size=sizes, stochastic_size=4, reward_bins=31)
    agent = dataclasses.replace(
        DreamerCPUConfig(),
        model=model,
        units=32,
        actor_layers=1,
        critic_layers=1,
        critic_bins=31,
        imagination_horizon=6,
        discount=0.9,
        model_optimizer=fast,
        actor_optimizer=fast,
        critic_optimizer=fast,
        open_loop_report=False,
    )
    summary, records = train(tmp_path, "dreamer-cpu", agent, steps=600, train_ratio=64.0)
    first, last = first_and_last(records, "loss/vector")
    assert last < 0.5 * first
    assert summary["eval/return"] > LEARNED, summary


def test_planet_learns_to_drive_the_point_home(tmp_path):
    model = PlaNetConfig().model
    sizes = dataclasses.replace(model.size, deterministic_size=32, hidden_size=32, units=32)
    model = dataclasses.replace(model, size=sizes, stochastic_size=4, free_nats=1.0)
    agent = PlaNetConfig(
        model=model,
        planner=CEMConfig(horizon=8, iterations=4, candidates=100, elites=10),
        random_steps=100,
        open_loop_report=False,
    )
    summary, records = train(tmp_path, "planet", agent, steps=500, train_ratio=64.0)
    first, last = first_and_last(records, "loss/reward")
    assert last < 0.5 * first
    assert summary["eval/return"] > LEARNED, summary


def test_tdmpc2_learns_to_drive_the_point_home(tmp_path):
    sizes = TDMPCSizes(encoder_width=32, mlp_width=32, latent_size=16, encoder_layers=1, q_functions=2)
    model = TDMPCModelConfig(size=sizes, bins=31, discount=0.9)
    planner = MPPIConfig(horizon=3, samples=64, elites=8, iterations=3, policy_trajectories=8)
    agent = TDMPC2Config(model=model, planner=planner, random_steps=100, learning_rate=1e-3)
    summary, records = train(tmp_path, "tdmpc2", agent, steps=500, batch_size=8, sequence_length=4, train_ratio=32.0)
    first, last = first_and_last(records, "loss/consistency")
    assert last < 0.5 * first
    assert summary["eval/return"] > LEARNED, summary


@pytest.mark.filterwarnings("ignore:no recorded episode terminated")
def test_world_models_learns_to_drive_the_point_home_in_its_dream(tmp_path):
    """V on 64 x 64 frames, M on V's codes, C by CMA-ES in M's dream only, scored in reality."""
    run_dir = tmp_path / "vmc"
    code = pipeline_command(
        [
            "--env",
            "test-pixel-point-to-origin",
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--threads",
            "1",
            "--model.vae.latent-size",
            "4",
            "--model.vae.channels",
            "8",
            "16",
            "16",
            "16",
            "--model.mdnrnn.hidden-size",
            "32",
            "--model.mdnrnn.mixtures",
            "2",
            "--collect.episodes",
            "60",
            "--vae.epochs",
            "10",
            "--vae.batch-size",
            "32",
            "--vae.learning-rate",
            "1e-3",
            "--mdnrnn.updates",
            "800",
            "--mdnrnn.batch-size",
            "8",
            "--mdnrnn.sequence-length",
            "16",
            "--controller.generations",
            "12",
            "--controller.population",
            "8",
            "--controller.rollouts",
            "8",
            "--controller.eval-every",
            "100",
            "--controller.eval-episodes",
            "4",
            "--controller.envs-per-batch",
            "64",
            "--dream",
            "--temperature",
            "0.5",
            "--evaluation-episodes",
            "10",
            "--dream-evaluation-episodes",
            "8",
            "--video-steps",
            "3",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("vae/loss", "mdnrnn/loss"):
        first, last = first_and_last(records, key)
        assert last < 0.5 * first, key
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dream"] is True and summary["eval/return"] > LEARNED, summary

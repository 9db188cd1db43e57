"""Dreamer V1 / V2 / V3 and PlaNet: every preset at a tiny size, the action distributions, smoke
runs through the CLI, and resuming a Dreamer run mid-training."""

import dataclasses
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_rssm import BOX, DISCRETE, PIXELS, VECTORS, random_batch

from wmlab.agents.dreamer.agent import DreamerAgent, NormalPolicy, TanhNormalPolicy
from wmlab.agents.dreamer.config import PRESETS, DreamerConfig, at_size
from wmlab.agents.planet.agent import PlaNetAgent
from wmlab.agents.planet.config import PlaNetConfig
from wmlab.cli import main
from wmlab.core.optim import LaProp
from wmlab.core.serialization import load_state
from wmlab.planners.cem import CEMConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer


def tiny(config: DreamerConfig) -> DreamerConfig:
    """The preset at the tiny size: its latent type, heads and losses, small widths."""
    return replace(at_size(config, "tiny", stochastic_size=4), imagination_horizon=4, random_steps=0)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
@pytest.mark.parametrize("observation_space", [PIXELS, VECTORS], ids=["pixels", "vectors"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_every_preset_updates_and_acts(version, observation_space, action_space):
    agent = DreamerAgent(tiny(PRESETS[version]()), observation_space, action_space, seed=0)
    before = {name: value.clone() for name, value in agent.actor.state_dict().items()}
    metrics = agent.update(random_batch(observation_space, action_space, B=3, T=5))
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    for name in ("loss/world_model", "loss/actor", "loss/critic", "imagination/return", "wm/kl"):
        assert name in metrics
    assert any(not torch.equal(before[name], value) for name, value in agent.actor.state_dict().items())

    batch = random_batch(observation_space, action_space, B=2, T=1)
    obs = {key: value[:, 0] for key, value in batch.obs.items()}
    action, state = agent.act({**obs, "is_first": np.ones(2, bool)}, None, explore=True)
    action, state = agent.act({**obs, "is_first": np.zeros(2, bool)}, state, explore=False)
    if action_space is DISCRETE:
        assert action.shape == (2,) and action.dtype == np.int64 and set(action) <= {0, 1, 2}
    else:
        assert action.shape == (2, 2) and action.dtype == np.float32 and np.all(np.abs(action) <= 2.0)
    assert set(state) == {"deter", "stoch", "action"}


@pytest.mark.parametrize("observation_space", [PIXELS, VECTORS], ids=["pixels", "vectors"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_planet_updates_and_plans(observation_space, action_space):
    model = PlaNetConfig().model
    model = replace(
        model, size=replace(model.size, deterministic_size=16, hidden_size=16, cnn_depth=4, units=16), stochastic_size=4
    )
    config = PlaNetConfig(
        model=model, planner=CEMConfig(horizon=3, iterations=2, candidates=16, elites=4), random_steps=0
    )
    agent = PlaNetAgent(config, observation_space, action_space, seed=0)
    metrics = agent.update(random_batch(observation_space, action_space, B=2, T=5))
    assert all(math.isfinite(value) for value in metrics.values()) and "loss/kl" in metrics
    batch = random_batch(observation_space, action_space, B=2, T=1)
    obs = {key: value[:, 0] for key, value in batch.obs.items()}
    action, state = agent.act({**obs, "is_first": np.ones(2, bool)}, None, explore=True)
    action, state = agent.act({**obs, "is_first": np.zeros(2, bool)}, state, explore=False)
    assert action.shape == ((2,) if action_space is DISCRETE else (2, 2))
    assert PlaNetConfig().model.size.deterministic_size == 200 and PlaNetConfig().planner == CEMConfig(
        horizon=12, iterations=10, candidates=1000, elites=100
    )


def test_presets_differ_where_the_papers_do():
    v1, v2, v3 = (PRESETS[name]() for name in ("v1", "v2", "v3"))
    assert (v1.model.latent, v1.model.stochastic_size, v1.model.size.deterministic_size, v1.model.free_nats) == (
        "gaussian",
        30,
        200,
        3.0,
    )
    assert (v1.continuous_actor, v1.reinforce_continuous) == ("tanh_normal", 0.0)
    assert (v2.model.latent, v2.model.stochastic_size, v2.model.size.classes) == ("categorical", 32, 32)
    assert (v2.model.loss_scales.dynamics, v2.model.loss_scales.representation) == (0.8, 0.2)
    assert 0 < v2.reinforce_discrete < 1
    assert (
        v3.model.loss_scales.dynamics,
        v3.model.loss_scales.representation,
        v3.model.free_nats,
        v3.model.unimix,
    ) == (1.0, 0.1, 1.0, 0.01)
    assert (v3.critic_head, v3.model.reward_head, v3.return_normalization, v3.entropy_scale) == (
        "twohot",
        "twohot",
        True,
        3e-4,
    )
    assert v3.discount == pytest.approx(0.997, abs=1e-4)


def test_action_distributions():
    mean, std = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.5, 1.5]])
    action = torch.tensor([[0.1, 0.4]])
    reference = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(NormalPolicy(mean, std).log_prob(action), reference.log_prob(action).sum(-1))
    torch.testing.assert_close(NormalPolicy(mean, std).entropy(), reference.entropy().sum(-1))
    squashed = torch.distributions.TransformedDistribution(reference, [torch.distributions.TanhTransform()])
    torch.testing.assert_close(
        TanhNormalPolicy(mean, std).log_prob(action), squashed.log_prob(action).sum(-1), atol=1e-4, rtol=1e-4
    )
    sample = TanhNormalPolicy(mean, std).sample(torch.Generator().manual_seed(0))
    assert torch.all(sample.abs() < 1)


def test_laprop_normalises_before_momentum():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = LaProp([parameter], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    parameter.grad = torch.tensor([250.0])
    optimizer.step()
    # first step: g / sqrt(v_hat) = sign(g), debiased momentum = 1: the step is lr whatever |g|
    assert parameter.item() == pytest.approx(-0.1)


# --------------------------------------------------------------------------------------------
# Through the CLI and the loop

TINY_ARGUMENTS = [
    "--train.steps",
    60,
    "--train.learning-starts",
    30,
    "--train.batch-size",
    3,
    "--train.sequence-length",
    8,
    "--train.train-ratio",
    24,
    "--train.eval-every",
    0,
    "--train.eval-episodes",
    1,
    "--train.log-every",
    30,
    "--train.checkpoint-every",
    60,
    "--train.no-progress",
    "--train.no-tensorboard",
    "--agent.model.size",
    "tiny",
    "--agent.model.stochastic-size",
    4,
]


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def test_cli_smoke_dreamer_on_pixels_writes_open_loop_videos(tmp_path):
    run_dir = tmp_path / "dreamer"
    assert (
        run_cli(
            "train",
            "--algo",
            "dreamer",
            "--env",
            "two-rooms",
            "--run-dir",
            run_dir,
            *TINY_ARGUMENTS,
            "--agent.imagination-horizon",
            3,
        )
        == 0
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 60 and summary["updates"] > 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/image" in line and "loss/actor" in line for line in lines)
    assert (run_dir / "videos" / "open_loop_image.gif").stat().st_size > 1000
    assert (run_dir / "figures" / "open_loop_reward.png").is_file()
    # config.json round-trips (nested optimiser and model configs, tuples) and the run extends
    assert run_cli("train", "--resume", run_dir, "--train.steps", 70, "--train.no-progress") == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 70


def test_cli_smoke_planet_on_vectors(tmp_path):
    run_dir = tmp_path / "planet"
    code = run_cli(
        "train",
        "--algo",
        "planet",
        "--env",
        "two-rooms-state",
        "--run-dir",
        run_dir,
        *TINY_ARGUMENTS[:-4],
        "--agent.model.size",
        "tiny",
        "deterministic_size=16",
        "hidden_size=16",
        "units=16",
        "--agent.model.stochastic-size",
        4,
        "--agent.planner.candidates",
        20,
        "--agent.planner.elites",
        4,
        "--agent.planner.iterations",
        2,
        "--agent.planner.horizon",
        3,
        "--agent.random-steps",
        30,
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 60 and summary["updates"] > 0
    assert (run_dir / "figures" / "open_loop_reward.png").is_file()


def test_help_documents_every_dreamer_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "--algo", "dreamer-v1", "--help")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(DreamerConfig):
        if not dataclasses.is_dataclass(field.type) and field.name not in ("model",):
            assert f"--agent.{field.name.replace('_', '-')}" in help_text, field.name
    assert "--agent.model.free-nats" in help_text and "(default: 3.0)" in help_text


RESUME_TRAIN = TrainConfig(
    steps=120,
    learning_starts=30,
    train_ratio=24.0,
    batch_size=3,
    sequence_length=8,
    eval_every=60,
    eval_episodes=1,
    checkpoint_every=60,
    log_every=30,
    progress=False,
    tensorboard=False,
)


def resume_spec(steps: int) -> RunSpec:
    agent = replace(tiny(DreamerConfig()), open_loop_report=False)
    return RunSpec(
        "dreamer",
        "two-rooms-state",
        train=replace(RESUME_TRAIN, steps=steps),
        agent=agent,
        env_kwargs={"max_episode_steps": 25, "reward": "dense"},
    )


def test_a_resumed_dreamer_run_equals_an_uninterrupted_one(tmp_path):
    straight = Trainer(resume_spec(120), tmp_path / "straight").run()
    Trainer(resume_spec(60), tmp_path / "resumed").run()
    resumed = Trainer(resume_spec(120), tmp_path / "resumed", resume=True).run()
    for key in ("env_steps", "updates", "episodes", "eval/return"):
        assert resumed[key] == straight[key], key

    def losses(run):
        lines = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in line.items() if k.startswith(("loss/", "eval/", "imagination/")) or k == "step"}
            for line in lines
        ]

    assert losses("resumed") == losses("straight")
    a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")
    b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")
    for part in ("world_model", "actor", "critic", "slow_critic"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    assert torch.equal(a["return_high"], b["return_high"])


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_imagination_keeps_the_actor_outputs_its_loss_reuses(version, action_space):
    """The actor's outputs kept from imagination are the actor on the states it acted from, and
    its loss has the same gradient through them as through a second forward pass."""
    agent = DreamerAgent(tiny(PRESETS[version]()), VECTORS, action_space, seed=0)
    starts = agent.world_model.initial(6)
    starts = {**starts, "deter": starts["deter"] + torch.randn_like(starts["deter"])}
    with torch.no_grad():
        features, actions, outputs, _ = agent.imagine(starts)
    N, H = actions.shape[:2]
    assert outputs.requires_grad and outputs.shape[:2] == (N, H) and features.shape[1] == H + 1
    again = agent.actor.raw(features[:, :-1].reshape(N * H, -1))
    torch.testing.assert_close(outputs.reshape(N * H, -1), again)

    def gradients(raw):
        log_probability = agent.actor.distribution(raw).log_prob(actions.reshape(N * H, -1))
        return torch.autograd.grad(log_probability.sum(), list(agent.actor.parameters()))

    for kept, recomputed in zip(gradients(outputs.reshape(N * H, -1)), gradients(again)):
        torch.testing.assert_close(kept, recomputed)

"""TD-MPC2: the latent, the loss terms against hand-computed values, the min-of-two target, every
preset at a tiny width on vectors and pixels with Box and Discrete actions, the agent, a CLI smoke
run and exact resume."""

import json
import math
from dataclasses import replace

import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium import spaces

from wmlab.agents.tdmpc2 import TDMPC2Agent, TDMPC2Config
from wmlab.agents.tdmpc2.config import heuristic_discount
from wmlab.cli import main
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import Agent, WorldModel
from wmlab.core.registry import register_env
from wmlab.core.serialization import load_state
from wmlab.core.types import Batch
from wmlab.models.tdmpc import (
    SIZES,
    TDMPCModel,
    TDMPCModelConfig,
    horizon_loss,
    min_of_two,
    td_target,
)
from wmlab.nn.activations import mish
from wmlab.nn.ensemble import EnsembleMLP
from wmlab.planners.mppi import MPPIConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer

VECTOR = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
PIXELS = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
BOX = spaces.Box(-2.0, 2.0, (2,), np.float32)
DISCRETE = spaces.Discrete(3)


def tiny_model_config(size: str = "1M", **overrides) -> TDMPCModelConfig:
    """The preset's structure (encoder layers, ensemble size) at widths of 16."""
    return TDMPCModelConfig(
        size=SIZES.preset(size, encoder_width=16, mlp_width=16, latent_size=16), conv_channels=4, **overrides
    )


TINY_AGENT = TDMPC2Config(
    model=tiny_model_config(),
    planner=MPPIConfig(horizon=3, samples=32, elites=4, iterations=2, policy_trajectories=4),
    random_steps=4,
)


def random_batch(observation_space, action_space, B=4, T=4, seed=0) -> Batch:
    rng = np.random.default_rng(seed)
    if "image" in observation_space.spaces:
        obs = {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)}
    else:
        obs = {"vector": rng.normal(size=(B, T, 3)).astype(np.float32)}
    if isinstance(action_space, spaces.Discrete):
        action = rng.integers(0, action_space.n, (B, T))
    else:
        action = rng.uniform(-2, 2, (B, T, 2)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    return Batch(
        obs=obs,
        action=action,
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=is_first,
        is_last=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )


# --- building blocks ---------------------------------------------------------------------------


def test_fast_mish_matches_torch_and_its_gradient_is_exact():
    x = torch.linspace(-30, 40, 2001)
    torch.testing.assert_close(mish(x), F.mish(x), atol=2e-6, rtol=1e-6)
    points = (torch.randn(30, dtype=torch.float64) * 6).requires_grad_()
    assert torch.autograd.gradcheck(mish, (points,))


def test_ensemble_members_are_independent_and_selectable():
    torch.manual_seed(0)
    ensemble = EnsembleMLP(members=3, input_size=4, output_size=2, hidden_size=8, layers=2).eval()
    x = torch.randn(5, 4)
    everything = ensemble(x)
    assert everything.shape == (3, 5, 2)
    torch.testing.assert_close(ensemble(x, members=torch.tensor([2, 0])), everything[[2, 0]])
    assert not torch.allclose(everything[0], everything[1])
    loss = ensemble(x, detach=True).sum()
    assert not loss.requires_grad  # detached weights and an input without grad: nothing to train


# --- the model ---------------------------------------------------------------------------------


def test_latents_are_simnorm_groups_that_sum_to_one():
    model = TDMPCModel(tiny_model_config(), VECTOR, BOX)
    assert isinstance(model, WorldModel) and model.can_decode is False
    latent = model.encode({"vector": torch.randn(7, 3)})
    assert latent.shape == (7, 16) and (latent >= 0).all()
    torch.testing.assert_close(latent.view(7, -1, 8).sum(-1), torch.ones(7, 2))
    following = model.next(latent, torch.rand(7, 2) * 2 - 1)
    torch.testing.assert_close(following.view(7, -1, 8).sum(-1), torch.ones(7, 2))
    torch.testing.assert_close(model.initial(2).view(2, -1, 8).sum(-1), torch.ones(2, 2))


def test_rho_weighting_and_masking_by_hand():
    values = torch.tensor([[1.0, 2.0, 4.0], [3.0, 6.0, 8.0]])
    every = torch.ones(2, 3)
    # per-step batch means 2, 4, 6 weighted 1, 0.5, 0.25 over H = 3: (2 + 2 + 1.5) / 3
    assert horizon_loss(values, every, rho=0.5).item() == pytest.approx(5.5 / 3)
    # the second window crossed an episode boundary after its first step: only row 0 counts there
    masked = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert horizon_loss(values, masked, rho=0.5).item() == pytest.approx((2 + 0.5 * 2 + 0.25 * 4) / 3)


def test_td_target_by_hand():
    reward = torch.tensor([1.0, 0.5])
    terminal = torch.tensor([False, True])
    next_value = torch.tensor([10.0, 10.0])
    torch.testing.assert_close(td_target(reward, terminal, next_value, 0.99), torch.tensor([1.0 + 9.9, 0.5]))
    assert heuristic_discount(500) == pytest.approx(0.99) and heuristic_discount(200) == pytest.approx(0.975)
    assert heuristic_discount(10) == 0.95 and heuristic_discount(100_000) == 0.995


def test_two_hot_reward_loss_of_known_targets():
    model = TDMPCModel(tiny_model_config(), VECTOR, BOX)
    # Zero output weights (TD-MPC2's initialisation): uniform over 101 bins, CE = log 101 for any
    # target, at each of H = 3 steps weighted 1, 0.5, 0.25 and divided by H.
    batch = random_batch(VECTOR, BOX)
    _, metrics = model.eval().loss(batch)
    expected = math.log(101) * (1 + 0.5 + 0.25) / 3
    assert metrics["loss/reward"] == pytest.approx(expected, abs=1e-5)
    assert metrics["loss/value"] == pytest.approx(expected, abs=1e-5)
    # A target whose symlog falls on bin 51 (value 0.2) is one-hot: CE is -log softmax there.
    target = torch.sign(torch.tensor(0.2)) * torch.expm1(torch.tensor(0.2))
    logits = torch.zeros(101)
    logits[51] = 5.0
    expected = -torch.log_softmax(logits, -1)[51]
    torch.testing.assert_close(model.two_hot.loss(logits, target), expected)
    assert model.two_hot.encode(target)[51].item() == pytest.approx(1.0, abs=1e-5)


def test_consistency_term_by_hand():
    model = TDMPCModel(tiny_model_config(rho=0.5), VECTOR, BOX).eval()
    batch = random_batch(VECTOR, BOX, B=3, T=3)
    result = model.compute_loss(batch)
    obs = torch.as_tensor(batch.obs["vector"])
    actions = model.to_model_action(batch.action, ("B", "T"))
    with torch.no_grad():
        z = model.encode({"vector": obs[:, 0]})
        terms = []
        for t in range(2):
            z = model.next(z, actions[:, t + 1])
            terms.append(0.5**t * (z - model.encode({"vector": obs[:, t + 1]})).pow(2).mean())
    assert result.metrics["loss/consistency"] == pytest.approx(float(sum(terms) / 2), rel=1e-5)
    assert result.latents.shape == (3, 3, 16) and result.valid.shape == (3, 3)
    scales = model.config.loss_scales
    total = (
        scales.consistency * result.metrics["loss/consistency"]
        + scales.reward * result.metrics["loss/reward"]
        + scales.value * result.metrics["loss/value"]
    )
    assert result.metrics["loss/total"] == pytest.approx(total, rel=1e-5)


def set_constant_values(ensemble: EnsembleMLP, values: list[float]) -> None:
    """Make member e predict values[e] everywhere: zero output weights and logits peaked on the
    bin whose symlog point is values[e] (bins lie 0.2 apart from -10 in symlog space)."""
    with torch.no_grad():
        ensemble.output.weight.zero_()
        ensemble.output.bias.zero_()
        for member, value in enumerate(values):
            bin_index = round((math.copysign(math.log1p(abs(value)), value) + 10) / 0.2)
            ensemble.output.bias[member, 0, bin_index] = 40.0


def symexp(x: float) -> float:
    return math.copysign(math.expm1(abs(x)), x)


def test_min_of_two_random_target_qs():
    model = TDMPCModel(tiny_model_config(size="5M"), VECTOR, BOX).eval()  # 5 members
    target_values = [symexp(0.2 * k) for k in range(1, 6)]  # exactly on bins 51..55
    set_constant_values(model.target_q_functions, target_values)
    set_constant_values(model.q_functions, [symexp(3.0)] * 5)  # the online ensemble must not be used
    latent = model.encode({"vector": torch.randn(6, 3)})
    for seed in range(5):
        members = model.two_members(torch.Generator().manual_seed(seed))
        assert members[0] != members[1]
        value = model.value(latent, "min", target=True, generator=torch.Generator().manual_seed(seed))
        expected = min(target_values[int(members[0])], target_values[int(members[1])])
        torch.testing.assert_close(value, torch.full((6,), expected), atol=1e-4, rtol=1e-4)
    average = model.value(latent, "avg", target=False)
    torch.testing.assert_close(average, torch.full((6,), symexp(3.0)), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(
        min_of_two(torch.tensor([[3.0], [1.0], [2.0]]), torch.tensor([0, 2])), torch.tensor([2.0])
    )


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("observation_space", [VECTOR, PIXELS], ids=["vector", "pixels"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_every_preset_at_a_tiny_width_has_shapes_and_finite_losses(size, observation_space, action_space):
    torch.manual_seed(0)
    model = TDMPCModel(tiny_model_config(size), observation_space, action_space).train()
    assert model.config.size.q_functions == SIZES[size].q_functions
    assert model.config.size.encoder_layers == SIZES[size].encoder_layers
    batch = random_batch(observation_space, action_space)
    result = model.compute_loss(batch)
    assert result.total.ndim == 0 and torch.isfinite(result.total)
    assert all(math.isfinite(value) for value in result.metrics.values())
    result.total.backward()
    policy_loss, policy_metrics = model.policy_loss(result.latents, result.valid)
    assert torch.isfinite(policy_loss) and all(math.isfinite(value) for value in policy_metrics.values())

    latents, last = model.observe(batch.obs, batch.action, batch.is_first, model.initial(4))
    assert latents.shape == (4, 4, 16) and last.shape == (4, 16)
    trajectory = model.imagine(last, batch.action[:, 1:])
    assert trajectory.states.shape == (4, 3, 16) and trajectory.rewards.shape == (4, 3)
    assert trajectory.continues.shape == (4, 3) and trajectory.observations is None
    assert trajectory.extras["values"].shape == (4, 3)
    if isinstance(action_space, spaces.Discrete):
        assert trajectory.actions.dtype == torch.int64
    else:
        assert (trajectory.actions.abs() <= 2).all()


def test_the_paper_presets_widths_and_parameter_counts():
    assert SIZES["1M"].latent_size == 128 and SIZES["5M"].mlp_width == 512 and SIZES["317M"].latent_size == 1376
    dmc_cartpole = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (5,), np.float32)})
    counts = {}
    for size in ("1M", "5M"):
        model = TDMPCModel(TDMPCModelConfig(size=SIZES[size]), dmc_cartpole, spaces.Box(-1.0, 1.0, (1,), np.float32))
        counts[size] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0.9e6 < counts["1M"] < 1.5e6 and 4e6 < counts["5M"] < 6e6  # measured 1,198,257 and 4,932,704


def test_policy_prior_is_squashed_and_decode_says_why_it_cannot():
    model = TDMPCModel(tiny_model_config(), VECTOR, BOX)
    policy = model.policy_distribution(model.initial(5))
    assert policy.action.shape == (5, 2) and (policy.action.abs() <= 1).all() and torch.isfinite(policy.log_prob).all()
    discrete = TDMPCModel(tiny_model_config(), VECTOR, DISCRETE).policy_distribution(model.initial(5))
    torch.testing.assert_close(discrete.probabilities.sum(-1), torch.ones(5))
    assert (discrete.entropy <= math.log(3) + 1e-6).all()
    with pytest.raises(NotImplementedError, match="decoder-free"):
        model.decode(model.initial(1))


def test_bad_inputs():
    with pytest.raises(IncompatibleSpaceError, match="finite bounds"):
        TDMPCModel(tiny_model_config(), VECTOR, spaces.Box(-np.inf, np.inf, (2,), np.float32))
    with pytest.raises(IncompatibleSpaceError, match="'vector'"):
        TDMPCModel(tiny_model_config(), spaces.Dict({"state": spaces.Discrete(4)}), BOX)
    with pytest.raises(ValueError, match="unknown TD-MPC2 size"):
        TDMPCModelConfig(size=SIZES["2M"])
    with pytest.raises(ValueError, match="q_functions = 1 is out of range; allowed: at least 2"):
        SIZES.preset("1M", q_functions=1)
    model = TDMPCModel(tiny_model_config(), VECTOR, BOX)
    with pytest.raises(ShapeError, match="obs\\['vector'\\]"):
        model.loss(replace(random_batch(VECTOR, BOX), obs={"vector": np.zeros((4, 4, 5), np.float32)}))
    agent = TDMPC2Agent(TINY_AGENT, VECTOR, BOX, seed=0)
    with pytest.raises(ShapeError, match="sequence-length 4"):
        agent.update(random_batch(VECTOR, BOX, T=3))


# --- the agent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_agent_explores_then_plans_with_warm_starts(action_space):
    agent = TDMPC2Agent(TINY_AGENT, VECTOR, action_space, seed=0)
    assert isinstance(agent, Agent) and agent.learns_from == "replay"
    obs = {"vector": np.zeros((2, 3), np.float32), "is_first": np.array([True, True])}
    actions, state = agent.act(obs, None, explore=True)  # 2 of the 4 random steps
    actions, state = agent.act(obs, state, explore=True)
    assert state is None
    obs["is_first"] = np.array([False, False])
    actions, state = agent.act(obs, state, explore=True)  # now planning
    width = 3 if isinstance(action_space, spaces.Discrete) else 2
    assert state.shape == (2, 3, width)
    if isinstance(action_space, spaces.Discrete):
        assert actions.dtype == np.int64 and actions.shape == (2,) and ((actions >= 0) & (actions < 3)).all()
    else:
        assert actions.shape == (2, 2) and (np.abs(actions) <= 2).all()
    greedy, _ = agent.act(obs, state, explore=False)
    assert agent.steps == 6  # evaluation steps are not counted
    metrics = agent.update(random_batch(VECTOR, action_space, T=6))  # longer windows are cut to 4 steps
    assert all(math.isfinite(value) for value in metrics.values()) and "loss/policy" in metrics


def test_agent_acts_from_pixels_and_with_the_policy_alone():
    agent = TDMPC2Agent(replace(TINY_AGENT, random_steps=0, plan=False), PIXELS, BOX, seed=0)
    obs = {"image": np.zeros((1, 64, 64, 3), np.uint8), "is_first": np.array([True])}
    actions, state = agent.act(obs, None, explore=True)
    assert actions.shape == (1, 2) and state is None
    agent = TDMPC2Agent(replace(TINY_AGENT, random_steps=0), PIXELS, DISCRETE, seed=0)
    actions, state = agent.act(obs, None, explore=False)
    assert actions.shape == (1,) and state.shape == (1, 3, 3)


def test_target_ensemble_follows_by_polyak_averaging():
    agent = TDMPC2Agent(TINY_AGENT, VECTOR, BOX, seed=0)
    before = [p.clone() for p in agent.model.target_q_functions.parameters()]
    agent.update(random_batch(VECTOR, BOX))
    for old, target, online in zip(
        before, agent.model.target_q_functions.parameters(), agent.model.q_functions.parameters()
    ):
        torch.testing.assert_close(target, old + 0.01 * (online - old))


# --- through the training loop -----------------------------------------------------------------


def test_cli_smoke_run_on_pendulum(tmp_path):
    run_dir = tmp_path / "pendulum"
    code = main(
        [
            "train",
            "--algo",
            "tdmpc2",
            "--env",
            "Pendulum-v1",
            "--run-dir",
            str(run_dir),
            "--train.steps",
            "300",
            "--train.learning-starts",
            "100",
            "--train.batch-size",
            "8",
            "--train.sequence-length",
            "4",
            "--train.train-ratio",
            "16",
            "--train.eval-every",
            "0",
            "--train.eval-episodes",
            "1",
            "--train.log-every",
            "100",
            "--train.no-progress",
            "--train.no-tensorboard",
            "--agent.random-steps",
            "100",
            "--agent.model.size",
            "1M",
            "latent_size=16",
            "mlp_width=16",
            "encoder_width=16",
            "--agent.planner.samples",
            "16",
            "--agent.planner.elites",
            "2",
            "--agent.planner.iterations",
            "1",
            "--agent.planner.policy-trajectories",
            "4",
        ]
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 300 and summary["updates"] > 0 and math.isfinite(summary["eval/return"])
    assert json.loads((run_dir / "config.json").read_text())["agent"]["model"]["size"]["latent_size"] == 16


class Line(gymnasium.Env):
    """A point on a line, actions left / stay / right by 0.1, reward -|x - 0.5|: a discrete task
    that can export its state, so that a resumed run continues its episode exactly."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(3)

    def __init__(self, max_episode_steps: int = 30):
        self.max_episode_steps, self.position, self.elapsed = max_episode_steps, 0.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.elapsed = -0.5, 0  # no randomness: the state below is all there is
        return np.array([self.position], np.float32), {}

    def step(self, action):
        self.position = float(np.clip(self.position + 0.1 * (int(action) - 1), -1, 1))
        self.elapsed += 1
        return (
            np.array([self.position], np.float32),
            -abs(self.position - 0.5),
            False,
            self.elapsed >= self.max_episode_steps,
            {},
        )

    def get_state(self):
        return {"position": self.position, "elapsed": self.elapsed}

    def set_state(self, state):
        self.position, self.elapsed = state["position"], state["elapsed"]


register_env("test-line", Line, "a discrete line task for TD-MPC2's resume test", overwrite=True)


def tiny_spec(steps: int, env: str) -> RunSpec:
    train = TrainConfig(
        steps=steps,
        learning_starts=60,
        train_ratio=8.0,
        batch_size=4,
        sequence_length=4,
        eval_every=100,
        eval_episodes=1,
        checkpoint_every=100,
        log_every=50,
        progress=False,
        tensorboard=False,
    )
    return RunSpec(
        "tdmpc2", env, train=train, agent=replace(TINY_AGENT, random_steps=60), env_kwargs={"max_episode_steps": 50}
    )


@pytest.mark.parametrize("env", ["two-rooms-state", "test-line"], ids=["box", "discrete"])
def test_resume_matches_an_uninterrupted_run(tmp_path, env):
    straight = Trainer(tiny_spec(200, env), tmp_path / "straight")
    straight_summary = straight.run()
    Trainer(tiny_spec(100, env), tmp_path / "resumed").run()
    resumed_summary = Trainer(tiny_spec(200, env), tmp_path / "resumed", resume=True).run()

    for key in ("env_steps", "updates", "episodes", "eval/return"):
        assert resumed_summary[key] == straight_summary[key], key

    def lines(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k.startswith(("loss/", "eval/", "policy/q"))} for row in rows]

    assert lines(tmp_path / "resumed") == lines(tmp_path / "straight")
    weights_a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")["world_model"]
    weights_b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")["world_model"]
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name


def test_episodic_model_learns_termination_and_planning_stops_at_predicted_terminals():
    model = TDMPCModel(tiny_model_config(episodic=True), VECTOR, DISCRETE).train()
    batch = random_batch(VECTOR, DISCRETE)
    batch.is_terminal[:, 2] = True
    result = model.compute_loss(batch)
    assert math.isfinite(result.metrics["loss/termination"]) and result.metrics["loss/termination"] > 0
    trajectory = model.imagine(model.initial(2), np.zeros((2, 3), np.int64))
    assert ((trajectory.continues > 0) & (trajectory.continues < 1)).all()

    agent = TDMPC2Agent(replace(TINY_AGENT, model=tiny_model_config(episodic=True)), VECTOR, DISCRETE, seed=0)
    reward = symexp(0.2)  # on bin 51 exactly
    with torch.no_grad():  # that reward everywhere, values 0 (zero-initialised Q outputs)
        agent.model.reward_head[-1].bias.zero_()
        agent.model.reward_head[-1].bias[51] = 40.0
        agent.model.termination_head[-1].bias.fill_(-50.0)  # never terminal
    candidates = torch.zeros(4, 3, dtype=torch.int64)
    members, latent = torch.tensor([0, 1]), agent.model.initial(1)
    actions = F.one_hot(candidates, 3).float()
    never = agent.rollout_return(latent, actions, members, None)
    with torch.no_grad():
        agent.model.termination_head[-1].bias.fill_(50.0)  # every reached latent is terminal
    always = agent.rollout_return(latent, actions, members, None)
    gamma = agent.model.config.discount
    torch.testing.assert_close(never, torch.full((4,), reward * (1 + gamma + gamma**2)), atol=1e-4, rtol=0)
    torch.testing.assert_close(always, torch.full((4,), reward), atol=1e-4, rtol=0)  # only the first step counts

"""Multi-task TD-MPC2: the multi-task environment (padding, masks, task schedule, errors, exact
state), the task embedding (unit ball, conditioning, gradients), action masking in the policy prior
and the planner, per-task discounts, and CLI runs with per-task returns and an exact resume."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from wmlab.agents.tdmpc2 import TDMPC2Agent, TDMPC2Config
from wmlab.cli import main
from wmlab.core.errors import IncompatibleSpaceError, WmlabError
from wmlab.core.registry import UnknownNameError
from wmlab.core.serialization import load_state
from wmlab.core.types import Batch
from wmlab.envs.adapter import make_env
from wmlab.models.tdmpc import SIZES, TDMPCModel, TDMPCModelConfig, gaussian_log_prob, squash_log_prob
from wmlab.planners.mppi import MPPIConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer

# two-rooms-state: 5 state features, 2 actions in [-1, 1]; Pendulum-v1: 3 features, 1 action in [-2, 2].
TASKS = ["two-rooms-state", "Pendulum-v1"]


def tiny_model(**overrides) -> TDMPCModelConfig:
    return TDMPCModelConfig(size=SIZES.preset("1M", encoder_width=16, mlp_width=16, latent_size=16), **overrides)


TINY_AGENT = TDMPC2Config(
    model=tiny_model(),
    planner=MPPIConfig(horizon=3, samples=32, elites=4, iterations=2, policy_trajectories=4),
    random_steps=2,
)


@pytest.fixture(scope="module")
def env():
    env = make_env("multitask", tasks=TASKS)
    yield env
    env.close()


def batched(*observations, first=True) -> dict:
    obs = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    obs["is_first"] = np.full(len(observations), first)
    return obs


# --- the environment ---------------------------------------------------------------------------


def test_env_pads_observations_masks_actions_and_cycles_tasks(env):
    space = env.observation_space
    assert space["vector"].shape == (5,) and space["task"].n == 2 and space["action_mask"].shape == (2,)
    assert env.action_space.shape == (2,) and (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    seen = []
    for episode in range(4):
        observation, info = env.reset(seed=episode)
        seen.append(int(observation["task"]))
        assert info["task"] == TASKS[seen[-1]] and info["task_index"] == seen[-1]
    assert seen == [0, 1, 0, 1]  # seeding a reset does not restart the cycle
    observation, _ = env.reset(options={"task": "Pendulum-v1"})
    assert int(observation["task"]) == 1
    np.testing.assert_array_equal(observation["action_mask"], [1.0, 0.0])
    assert (observation["vector"][3:] == 0).all() and (observation["vector"][:3] != 0).any()
    # The first action dimension is rescaled to Pendulum's [-2, 2]; the second is ignored.
    observation, reward, terminated, truncated, info = env.step(np.array([0.5, 0.9], np.float32))
    assert env.unwrapped.envs[1].unwrapped.last_u == pytest.approx(1.0)
    assert info["task"] == "Pendulum-v1" and (observation["vector"][3:] == 0).all()
    observation, _ = env.reset(options={"task": 0})
    np.testing.assert_array_equal(observation["action_mask"], [1.0, 1.0])
    assert env.unwrapped.episode_lengths == (None, 200)


def test_env_is_deterministic_under_seeds_and_its_state_resumes_exactly():
    def rollout(env, steps=6):
        values = []
        for step in range(steps):
            observation, reward, *_ = env.step(np.full(2, 0.3 * (step % 3) - 0.3, np.float32))
            values.append((observation["vector"].copy(), reward))
        return values

    tasks = [{"id": "two-rooms-state", "name": "sparse"}, {"id": "two-rooms-state", "name": "dense", "reward": "dense"}]
    first, second = (make_env("multitask", tasks=tasks, schedule="random") for _ in range(2))
    drawn = [[int(env.reset(seed=7 + k)[0]["task"]) for k in range(8)] for env in (first, second)]
    assert drawn[0] == drawn[1] and set(drawn[0]) == {0, 1}
    assert first.unwrapped.task_names == ("sparse", "dense")
    state = json.loads(json.dumps(first.get_state()))  # plain JSON types
    second.reset(seed=123)
    rollout(second)
    expected = rollout(first)
    second.set_state(state)
    for (a, r), (b, s) in zip(expected, rollout(second)):
        np.testing.assert_array_equal(a, b)
        assert r == s
    assert make_env("multitask", tasks=TASKS).get_state() is None  # Pendulum cannot export its state


def test_env_bad_inputs_are_named():
    with pytest.raises(WmlabError, match="at least one task"):
        make_env("multitask", tasks=[])
    with pytest.raises(WmlabError, match="at least one task"):
        make_env("multitask")
    with pytest.raises(UnknownNameError, match="task 1 of the multitask environment"):
        make_env("multitask", tasks=["Pendulum-v1", "no-such-env"])
    with pytest.raises(IncompatibleSpaceError, match="observed differently"):
        make_env("multitask", tasks=["two-rooms", "two-rooms-state"])  # pixels and states
    with pytest.raises(IncompatibleSpaceError, match="mix discrete and continuous"):
        make_env("multitask", tasks=["CartPole-v1", "Pendulum-v1"])
    with pytest.raises(IncompatibleSpaceError, match="continuous 1-D Box"):
        make_env("multitask", tasks=["CartPole-v1", "Acrobot-v1"])
    with pytest.raises(WmlabError, match="more than once"):
        make_env("multitask", tasks=["Pendulum-v1", "Pendulum-v1"])
    with pytest.raises(WmlabError, match="schedule"):
        make_env("multitask", tasks=["Pendulum-v1"], schedule="round-robin")


# --- the model ---------------------------------------------------------------------------------


def test_task_embeddings_lie_in_the_unit_ball_and_condition_every_network(env):
    model = TDMPCModel(tiny_model(), env.observation_space, env.action_space)
    assert model.num_tasks == 2 and model.task_embedding.embedding_dim == 96  # TD-MPC2's task_dim
    assert model.encoder[0][0].in_features == 5 + 96 and model.dynamics[0][0].in_features == 16 + 96 + 2
    assert model.policy[0][0].in_features == 16 + 96
    with torch.no_grad():
        model.task_embedding.weight.mul_(0).add_(torch.tensor([[3.0], [0.1]]))  # norms 3 * sqrt(96) and ~1
    norms = model.task_features(torch.tensor([0, 1])).norm(dim=-1)
    assert (norms <= 1 + 1e-5).all() and norms[0].item() == pytest.approx(1.0, abs=1e-4)
    latent = model.initial(1)
    action = torch.zeros(1, 2)
    assert not torch.allclose(
        model.next(latent, action, torch.tensor([0])), model.next(latent, action, torch.tensor([1]))
    )
    with pytest.raises(ValueError, match="task index"):
        model.next(latent, action)  # a multi-task model needs to know the task


def test_policy_prior_is_masked_and_its_log_density_counts_only_real_dimensions(env):
    torch.manual_seed(0)
    model = TDMPCModel(tiny_model(), env.observation_space, env.action_space)
    latents = model.initial(6) + 0.01 * torch.randn(6, 16)
    tasks = torch.tensor([1, 0, 1, 0, 1, 1])
    masks = torch.tensor([[1.0, 1.0], [1.0, 0.0]])[tasks]  # Pendulum (task 1) has one action
    noise = torch.randn(6, 2)
    policy = model.policy_distribution(latents, noise=noise, task=tasks, action_mask=masks)
    assert (policy.action[tasks == 1, 1] == 0).all() and (policy.mode[tasks == 1, 1] == 0).all()
    assert (policy.action[tasks == 0] != 0).all()
    # Only the first dimension of Pendulum's rows counts: the 1-D Gaussian through tanh.
    output = model.policy(model.with_task(latents, tasks))
    mean, raw = output.chunk(2, -1)
    log_std = -10 + 0.5 * 12 * (torch.tanh(raw) + 1)
    squashed = torch.tanh(mean[:, :1] + noise[:, :1] * log_std[:, :1].exp())
    one_dimension = squash_log_prob(gaussian_log_prob(noise[:, :1], log_std[:, :1]), squashed)
    torch.testing.assert_close(policy.log_prob[tasks == 1], one_dimension[tasks == 1])
    assert torch.isfinite(policy.log_prob).all()


def test_multitask_losses_train_the_embedding_but_not_through_the_policy(env):
    model = TDMPCModel(tiny_model(task_discounts=(0.9, 0.99)), env.observation_space, env.action_space).train()
    rng = np.random.default_rng(0)
    B, T = 6, 4
    tasks = np.repeat(rng.integers(0, 2, (B, 1)), T, 1)
    batch = Batch(
        obs={
            "vector": rng.normal(size=(B, T, 5)).astype(np.float32),
            "task": tasks,
            "action_mask": np.stack([[[1, 1], [1, 0]][t] for t in tasks.ravel()]).reshape(B, T, 2).astype(np.float32),
        },
        action=rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=np.eye(T, dtype=bool)[np.zeros(B, int)],
        is_last=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )
    result = model.compute_loss(batch)
    result.total.backward()
    assert model.task_embedding.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    loss, metrics = model.policy_loss(result.latents, result.valid, task=result.task, action_mask=result.action_mask)
    loss.backward()
    assert model.task_embedding.weight.grad is None and model.task_embedding.weight.requires_grad
    assert all(math.isfinite(value) for value in {**result.metrics, **metrics}.values())
    torch.testing.assert_close(model.task_discount(torch.tensor([1, 0])), torch.tensor([0.99, 0.9]))
    with pytest.raises(ValueError, match="one per task"):
        TDMPCModel(tiny_model(task_discounts=(0.9,)), env.observation_space, env.action_space)
    with pytest.raises(IncompatibleSpaceError, match="state vectors"):
        TDMPCModel(tiny_model(), make_env("multitask", tasks=["two-rooms"]).observation_space, env.action_space)


# --- the agent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", [True, False], ids=["planner", "policy"])
def test_masked_action_dimensions_are_exactly_zero(env, plan):
    agent = TDMPC2Agent(replace(TINY_AGENT, plan=plan), env.observation_space, env.action_space, seed=0)
    pendulum, _ = env.reset(options={"task": 1})
    rooms, _ = env.reset(options={"task": 0})
    obs = batched(pendulum, rooms, pendulum)
    actions, state = agent.act(obs, None, explore=True)  # the random seed steps, masked too
    assert actions.shape == (3, 2) and (actions[[0, 2], 1] == 0).all() and (actions[1] != 0).all()
    obs["is_first"][:] = False
    for explore in (True, True, False):
        actions, state = agent.act(obs, state, explore=explore)
        assert (actions[[0, 2], 1] == 0).all() and (actions[1] != 0).all() and (np.abs(actions) <= 1).all()
        if plan:
            assert (state[[0, 2], :, 1] == 0).all()  # the warm-start plans too
    if plan:
        sequences = agent.prior_actions(
            agent.model.initial(1), task=torch.tensor(1), action_mask=torch.tensor([1.0, 0.0])
        )
        assert (sequences[..., 1] == 0).all()


def test_planning_uses_the_task_discount(env):
    agent = TDMPC2Agent(
        replace(TINY_AGENT, model=tiny_model(task_discounts=(0.5, 0.9))),
        env.observation_space,
        env.action_space,
        seed=0,
    )
    reward = math.expm1(0.2)  # on bin 51 exactly; values start at 0 (zero Q outputs)
    with torch.no_grad():
        agent.model.reward_head[-1].bias.zero_()
        agent.model.reward_head[-1].bias[51] = 40.0
    actions, members, latent = torch.zeros(4, 3, 2), torch.tensor([0, 1]), agent.model.initial(1)
    mask = torch.tensor([1.0, 1.0])
    for task, gamma in ((0, 0.5), (1, 0.9)):
        value = agent.rollout_return(latent, actions, members, torch.zeros(4, 2), torch.tensor(task), mask)
        torch.testing.assert_close(value, torch.full((4,), reward * (1 + gamma + gamma**2)), atol=1e-4, rtol=0)


# --- through the training loop -----------------------------------------------------------------

DMC_TASKS = ["dmc:cartpole-swingup", "dmc:reacher-easy", "dmc:cartpole-balance"]
SHORT_EPISODES = {"action_repeat": 4, "time_limit": 100}  # 25 agent steps per episode


def test_cli_smoke_run_reports_returns_per_task(tmp_path):
    pytest.importorskip("dm_control")
    run_dir = tmp_path / "multitask"
    env_kwargs = {"tasks": DMC_TASKS, "shared_kwargs": SHORT_EPISODES}
    code = main(
        [
            "train",
            "--algo",
            "tdmpc2",
            "--env",
            "multitask",
            "--env-kwargs",
            json.dumps(env_kwargs),
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
            "3",
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
            "--agent.model.task-embedding-size",
            "8",
            "--agent.model.task-discounts",
            "0.95",
            "0.95",
            "0.95",
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
    assert summary["env_steps"] == 300 and summary["updates"] > 0
    names = ["cartpole-swingup", "reacher-easy", "cartpole-balance"]
    assert all(math.isfinite(summary[f"eval/return/{name}"]) for name in names)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(any(f"train/return/{name}" in row for row in rows) for name in names)
    assert json.loads((run_dir / "config.json").read_text())["agent"]["model"]["task_discounts"] == [0.95, 0.95, 0.95]


def tiny_spec(steps: int) -> RunSpec:
    train = TrainConfig(
        steps=steps,
        learning_starts=40,
        train_ratio=8.0,
        batch_size=4,
        sequence_length=4,
        eval_every=60,
        eval_episodes=2,
        checkpoint_every=60,
        log_every=30,
        progress=False,
        tensorboard=False,
    )
    agent = replace(TINY_AGENT, model=tiny_model(task_embedding_size=8), random_steps=40)
    return RunSpec(
        "tdmpc2",
        "multitask",
        train=train,
        agent=agent,
        env_kwargs={"tasks": DMC_TASKS[:2], "shared_kwargs": SHORT_EPISODES},
    )


def test_resume_matches_an_uninterrupted_run(tmp_path):
    pytest.importorskip("dm_control")
    straight_summary = Trainer(tiny_spec(120), tmp_path / "straight").run()
    Trainer(tiny_spec(60), tmp_path / "resumed").run()
    resumed_summary = Trainer(tiny_spec(120), tmp_path / "resumed", resume=True).run()
    for key in (
        "env_steps",
        "updates",
        "episodes",
        "eval/return",
        "eval/return/cartpole-swingup",
        "eval/return/reacher-easy",
    ):
        assert resumed_summary[key] == straight_summary[key], key

    def lines(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k.startswith(("loss/", "eval/", "train/return"))} for row in rows]

    assert lines(tmp_path / "resumed") == lines(tmp_path / "straight")
    weights_a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")["world_model"]
    weights_b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")["world_model"]
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name

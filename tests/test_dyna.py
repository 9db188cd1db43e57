"""The Dyna family and its tabular model: learning behaviour, the protocol, checkpoints, errors."""

import copy
import json
from dataclasses import replace

import gymnasium
import numpy as np
import pytest

from wmlab.agents.dyna import (
    Dyna2Agent,
    Dyna2Config,
    DynaConfig,
    DynaQAgent,
    DynaQPlusAgent,
    PrioritizedSweepingAgent,
    TrajectorySamplingAgent,
)
from wmlab.bench.dyna import (
    cumulative_reward,
    dyna_markdown,
    format_dyna_table,
    run_dyna_benchmark,
    steps_per_episode,
    updates_until_optimal,
)
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.protocols import Agent, WorldModel
from wmlab.core.types import Batch, Transition
from wmlab.envs.mazes import BlockingMaze, DynaMaze
from wmlab.models.tabular import TabularModel

ALL_AGENTS = [DynaQAgent, DynaQPlusAgent, PrioritizedSweepingAgent, TrajectorySamplingAgent, Dyna2Agent]


def spaces(env=None):
    env = env or DynaMaze()
    return gymnasium.spaces.Dict({"state": env.observation_space}), env.action_space


def make(agent_class, seed=0, **changes):
    config = Dyna2Config() if agent_class is Dyna2Agent else DynaConfig()
    return agent_class(replace(config, **changes), *spaces(), seed=seed)


def run_episodes(agent, episodes, env=None):
    """Drive an agent through the batched protocol (act / observe); episode lengths."""
    env = env or DynaMaze()
    lengths = []
    for _ in range(episodes):
        state, _ = env.reset()
        first, steps, done = True, 0, False
        while not done:
            obs = {"state": np.array([state]), "is_first": np.array([first])}
            actions, _ = agent.act(obs, None, explore=True)
            next_state, reward, terminated, truncated, _ = env.step(int(actions[0]))
            metrics = agent.observe(
                Transition(
                    obs={"state": np.array([state])},
                    action=actions,
                    reward=np.array([reward], dtype=np.float32),
                    next_obs={"state": np.array([next_state])},
                    terminated=np.array([terminated]),
                    truncated=np.array([truncated]),
                )
            )
            assert all("/" in name for name in metrics)
            state, first, steps, done = next_state, False, steps + 1, terminated or truncated
        lengths.append(steps)
    return lengths


# ----------------------------------------------------------------------------------------------
# Learning behaviour


def test_dyna_q_with_50_planning_steps_learns_the_maze_within_five_episodes():
    config = DynaConfig(planning_steps=50)
    lengths = np.array([steps_per_episode(config, episodes=5, seed=seed) for seed in range(10)])
    assert lengths[:, 4].mean() <= 20  # the shortest path is 14, the epsilon-greedy plateau about 17


def test_planning_speeds_up_learning():
    early = {
        n: np.mean([sum(steps_per_episode(DynaConfig(planning_steps=n), 5, seed)[1:]) for seed in range(5)])
        for n in (0, 50)
    }
    assert early[50] < early[0] / 3


@pytest.mark.parametrize("agent_class", [TrajectorySamplingAgent, Dyna2Agent, PrioritizedSweepingAgent])
def test_other_planners_learn_the_maze(agent_class):
    late = [np.mean(run_episodes(make(agent_class, seed=seed, alpha=0.5), 30)[-5:]) for seed in range(3)]
    assert np.mean(late) < 30


def test_dyna_q_plus_models_untried_actions_and_plain_dyna_q_does_not():
    plus, plain = make(DynaQPlusAgent), make(DynaQAgent)
    for agent in (plus, plain):
        agent.learn(18, 2, 0.0, 19, False)  # (2, 0) -> right -> (2, 1)
    assert plus.model.predict(18, 2) == (0.0, 19, False)
    assert all(plus.model.knows(18, action) for action in range(4))
    assert plus.model.predict(18, 0) == (0.0, 18, False)  # assumed: back to the same state, reward 0
    assert plain.model.state_actions[18] == [2] and not plain.model.knows(18, 0)


def test_dyna_q_plus_bonus_grows_with_time_since_tried():
    agent = make(DynaQPlusAgent, kappa=0.5)
    agent.learn(18, 2, 0.0, 19, False)
    for _ in range(8):
        agent.learn(19, 3, 0.0, 18, False)
    pair = 18 * 4 + 2
    assert agent.model.steps_since_tried(18, 2) == 8
    assert agent.planning_reward(pair) == pytest.approx(0.5 * np.sqrt(8))


def test_dyna_q_plus_recovers_from_the_blocking_maze_better_than_dyna_q():
    config = DynaConfig(alpha=1.0, planning_steps=10, kappa=1e-3)
    final = {
        agent_class: np.mean(
            [cumulative_reward(agent_class, config, BlockingMaze, 3000, (3, 0), seed)[0][-1] for seed in range(4)]
        )
        for agent_class in (DynaQAgent, DynaQPlusAgent)
    }
    assert final[DynaQPlusAgent] > final[DynaQAgent]


def test_prioritized_sweeping_needs_fewer_updates_than_dyna_q():
    config = DynaConfig(alpha=1.0, planning_steps=5)
    counts = {
        agent_class: [updates_until_optimal(agent_class, config, 1, seed, 100_000)[0] for seed in range(5)]
        for agent_class in (DynaQAgent, PrioritizedSweepingAgent)
    }
    median = {
        agent_class: np.median([np.inf if value is None else value for value in values])
        for agent_class, values in counts.items()
    }
    assert median[PrioritizedSweepingAgent] * 5 < median[DynaQAgent]


def test_prioritized_sweeping_queue_pops_highest_priority_first_and_keeps_the_larger():
    agent = make(PrioritizedSweepingAgent)
    agent.push(10, 0.5)
    agent.push(11, 0.9)
    agent.push(10, 0.2)  # lower than queued: ignored
    agent.push(12, 0.5)
    assert [agent.pop() for _ in range(4)] == [11, 10, 12, None]


# ----------------------------------------------------------------------------------------------
# The protocol


@pytest.mark.parametrize("agent_class", ALL_AGENTS)
def test_agent_protocol_batched_act_and_update_error(agent_class):
    agent = make(agent_class)
    assert isinstance(agent, Agent) and agent.learns_from == "transitions"
    actions, state = agent.act({"state": np.array([18, 0, 53])}, None, explore=False)
    assert actions.dtype == np.int64 and actions.shape == (3,) and state is None
    assert all(0 <= action < 4 for action in actions)
    with pytest.raises(TypeError, match="learns from transitions"):
        agent.update(None)


def test_act_observe_matches_choose_learn():
    batched, direct = make(DynaQAgent, seed=7), make(DynaQAgent, seed=7)
    run_episodes(batched, 3)
    env = DynaMaze()
    for _ in range(3):
        state, _ = env.reset()
        direct.begin_episode()
        done = False
        while not done:
            action = direct.choose(state, explore=True)
            next_state, reward, terminated, truncated, _ = env.step(action)
            direct.learn(state, action, reward, next_state, terminated, truncated)
            state, done = next_state, terminated or truncated
    assert batched.q == direct.q


def test_greedy_ties_are_broken_at_random():
    agent = make(DynaQAgent)
    chosen = {int(agent.act({"state": np.array([18])}, None, explore=False)[0][0]) for _ in range(50)}
    assert chosen == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "observation_space, action_space, message",
    [
        (
            gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)}),
            gymnasium.spaces.Discrete(4),
            "discrete state observation",
        ),
        (gymnasium.spaces.Discrete(54), gymnasium.spaces.Discrete(4), "discrete state observation"),
        (
            gymnasium.spaces.Dict({"state": gymnasium.spaces.Discrete(54)}),
            gymnasium.spaces.Box(-1, 1, (2,)),
            "Discrete action space",
        ),
    ],
)
def test_incompatible_spaces_are_refused_with_a_clear_message(observation_space, action_space, message):
    with pytest.raises(IncompatibleSpaceError, match=message) as error:
        DynaQAgent(DynaConfig(), observation_space, action_space, seed=0)
    assert "dyna-q" in str(error.value)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def as_json_safe(value):
    """Arrays to lists, to show that everything else in a state_dict is JSON-serialisable."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: as_json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_json_safe(item) for item in value]
    return value


@pytest.mark.parametrize("agent_class", ALL_AGENTS)
def test_state_dict_round_trip_gives_identical_behaviour(agent_class):
    agent = make(agent_class, seed=3)
    run_episodes(agent, 2)
    # Stop mid-episode so that per-episode state (queues, traces, pending actions) is saved too.
    env = DynaMaze()
    state, _ = env.reset()
    for _ in range(5):
        action = agent.choose(state, explore=True)
        next_state, reward, terminated, truncated, _ = env.step(action)
        agent.learn(state, action, reward, next_state, terminated, truncated)
        state = next_state
    saved = agent.state_dict()
    json.dumps(as_json_safe(saved))
    restored = make(agent_class, seed=12345)
    restored.load_state_dict(copy.deepcopy(saved))

    def continue_run(learner, env):
        trace = []
        current = state
        for _ in range(200):
            action = learner.choose(current, explore=True)
            next_state, reward, terminated, truncated, _ = env.step(action)
            learner.learn(current, action, reward, next_state, terminated, truncated)
            trace.append(action)
            if terminated:
                learner.begin_episode()
                next_state, _ = env.reset()
            current = next_state
        return trace, learner.action_values(18), learner.updates

    env_copy = DynaMaze()
    env_copy.reset()
    env_copy.set_state(env.get_state())
    assert continue_run(agent, env) == continue_run(restored, env_copy)


# ----------------------------------------------------------------------------------------------
# The tabular model


def test_model_records_predicts_and_tracks_predecessors():
    model = TabularModel(num_states=6, num_actions=2)
    model.record(0, 1, 0.0, 1, False)
    model.record(2, 0, 0.0, 1, False)
    model.record(1, 1, 1.0, 5, True)
    assert model.predict(1, 1) == (1.0, 5, True)
    assert model.predecessors_of(1) == [(0, 1), (2, 0)]
    model.record(0, 1, 0.0, 3, False)  # the world changed: the pair now leads elsewhere
    assert model.predecessors_of(1) == [(2, 0)] and model.predecessors_of(3) == [(0, 1)]
    assert model.pairs == [1, 4, 3] and model.states == [0, 2, 1]
    with pytest.raises(KeyError):
        model.predict(4, 0)


def test_model_sampling_is_deterministic_given_the_generator():
    model = TabularModel(num_states=10, num_actions=4)
    for state in range(10):
        model.record(state, state % 4, 0.0, (state + 1) % 10, False)
    first = model.sample(np.random.default_rng(5), 20)
    assert first == model.sample(np.random.default_rng(5), 20)
    assert all(model.knows(state, action) for state, action in first)


def test_model_is_a_world_model_that_imagines_and_scores_batches():
    model = TabularModel(num_states=4, num_actions=2)
    model.record(0, 1, 0.0, 1, False)
    model.record(1, 1, 1.0, 3, True)
    assert isinstance(model, WorldModel) and model.can_decode
    trajectory = model.imagine(np.array([0, 2]), np.array([[1, 1, 1], [0, 0, 0]]), horizon=3)
    assert trajectory.states.tolist() == [[1, 3, 3], [2, 2, 2]]
    assert trajectory.rewards.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert trajectory.continues.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert trajectory.extras["known"].tolist() == [[True, True, False], [False, False, False]]
    by_policy = model.imagine(np.array([0]), lambda cells: np.ones_like(cells), horizon=2)
    assert by_policy.states.tolist() == [[1, 3]]
    assert model.decode(np.array([3]))["state"].tolist() == [3]

    # Two sequences under the time convention (action and reward of step t led to obs t).
    batch = Batch(
        obs={"state": np.array([[0, 1, 3], [0, 1, 2]])},
        action=np.array([[0, 1, 1], [0, 1, 1]]),
        reward=np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=np.float32),
        is_first=np.array([[True, False, False], [True, False, False]]),
        is_last=np.array([[False, False, True], [False, False, False]]),
        is_terminal=np.array([[False, False, True], [False, False, False]]),
    )
    loss, metrics = model.loss(batch)
    assert loss == pytest.approx(0.25) and metrics == {"loss/mismatch": pytest.approx(0.25)}  # only 1 -> 2 is wrong
    model.fit(batch)
    assert model.loss(batch)[0] == pytest.approx(0.25)  # the last seen outcome of (1, 1) now leads to 2


def test_model_state_dict_round_trip():
    model = TabularModel(num_states=6, num_actions=2, model_untried_actions=True)
    for transition in [(0, 1, 0.0, 1, False), (2, 0, 0.0, 1, False), (0, 1, 0.0, 3, False), (1, 1, 1.0, 5, True)]:
        model.record(*transition)
    restored = TabularModel(num_states=6, num_actions=2)
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    for name in (
        "time",
        "kind",
        "reward",
        "next_state",
        "terminal",
        "last_tried",
        "pairs",
        "states",
        "state_actions",
        "predecessors",
        "model_untried_actions",
    ):
        assert getattr(restored, name) == getattr(model, name), name


# ----------------------------------------------------------------------------------------------
# The benchmark


def test_quick_benchmark_is_complete_and_serialisable(tmp_path):
    results = run_dyna_benchmark(seeds=2, quick=True, figures_dir=tmp_path, progress=False)
    json.dumps(results)
    assert [len(table["rows"]) for table in results["tables"]] == [21, 2, 1]
    assert len(results["dyna_maze"]["mean_steps_per_episode"]["50"]) == 50
    assert all((tmp_path / name).is_file() for name in results["figures"])
    assert "Dyna-Q+" in format_dyna_table(results) and dyna_markdown(results).startswith("## Dyna")

"""Registry, configs, safe serialisation and the environment adapter."""

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from wmlab.core.config import differences, from_dict
from wmlab.core.errors import IncompatibleSpaceError, RunDirectoryError
from wmlab.core.registry import ALGORITHMS, ENVIRONMENTS, MODELS, UnknownNameError, register_env
from wmlab.core.rollout import action_source
from wmlab.core.serialization import load_state, save_state
from wmlab.core.shapes import check_shape
from wmlab.envs import make_env


def test_import_is_light():
    code = "import sys, wmlab, wmlab.core.registry; heavy = [m for m in ('torch', 'matplotlib', 'dm_control', 'ale_py', 'ray', 'gymnasium') if m in sys.modules]; print(heavy)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_every_registered_entry_loads():
    for registry in (ALGORITHMS, MODELS, ENVIRONMENTS):
        for entry in registry.entries():
            assert callable(entry.load()), entry.name
            if entry.config:
                assert entry.load_config().__dataclass_fields__


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match="dyna-maze"):
        ENVIRONMENTS.get("dyna-maez")
    with pytest.raises(UnknownNameError, match="CartPole-v1"):
        make_env("CartPol-v1")
    with pytest.raises(UnknownNameError, match="No module named"):
        make_env("no_such_package.envs:Thing-v0")


@dataclass(frozen=True)
class Inner:
    width: int = 4
    sizes: tuple = (1, 2)


@dataclass(frozen=True)
class Outer:
    rate: float = 0.1
    inner: Inner = Inner()


def test_config_round_trip_and_errors():
    config = from_dict(Outer, {"rate": 0.5, "inner": {"width": 8, "sizes": [3, 4]}})
    assert config == Outer(rate=0.5, inner=Inner(width=8, sizes=(3, 4)))
    assert differences(Outer(), config) == ["rate", "inner.width", "inner.sizes"]
    with pytest.raises(ValueError, match="no field.*widht"):
        from_dict(Outer, {"inner": {"widht": 3}})


def test_serialisation_is_exact_and_refuses_objects(tmp_path):
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": np.random.default_rng(3).bit_generator.state,
        "pair": (1, "a"),
        "array": np.arange(4, dtype=np.int16),
    }
    save_state(state, tmp_path, "state")
    loaded = load_state(tmp_path, "state")
    assert loaded["rng"] == state["rng"] and loaded["pair"] == (1, "a")
    assert loaded["array"].dtype == np.int16 and np.array_equal(loaded["array"], state["array"])
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot serialise"):
        save_state({"bad": object()}, tmp_path, "bad")


def test_corrupt_and_missing_checkpoint_files_are_named(tmp_path):
    save_state({"weights": torch.ones(3)}, tmp_path, "agent")
    path = tmp_path / "agent.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(RunDirectoryError, match="corrupt"):
        load_state(tmp_path, "agent")
    with pytest.raises(RunDirectoryError, match="missing"):
        load_state(tmp_path, "nothing")


def test_adapter_gives_dict_observations():
    env = make_env("CartPole-v1", seed=0)
    observation, _ = env.reset(seed=0)
    assert set(observation) == {"vector"} and observation["vector"].dtype == np.float32
    assert env.observation_space["vector"].shape == (4,)
    maze = make_env("dyna-maze", seed=0)
    observation, _ = maze.reset(seed=0)
    assert set(observation) == {"state"} and observation["state"].dtype == np.int64


def test_register_env_makes_a_short_name():
    import gymnasium

    register_env(
        "test-pendulum", lambda **kwargs: gymnasium.make("Pendulum-v1", **kwargs), "a test entry", overwrite=True
    )
    env = make_env("test-pendulum")
    assert env.observation_space["vector"].shape == (3,)


def test_unmappable_observation_space_is_refused():
    import gymnasium

    class Grid(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(0, 1, (3, 3), dtype=np.float32)
        action_space = gymnasium.spaces.Discrete(2)

    from wmlab.envs.adapter import DictObservations

    with pytest.raises(IncompatibleSpaceError, match="flatten"):
        DictObservations(Grid())


def test_a_users_own_package_env_by_module_prefix(tmp_path, monkeypatch):
    package = tmp_path / "my_world_envs"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import gymnasium\n"
        "from gymnasium.envs.classic_control import PendulumEnv\n"
        "gymnasium.register('MyPendulum-v0', entry_point=PendulumEnv, max_episode_steps=7)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("my_world_envs:MyPendulum-v0", seed=1)
    env.reset(seed=1)
    steps = 0
    while True:
        steps += 1
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert steps == 7 and env.observation_space["vector"].shape == (3,)


def test_pixels_from_a_gymnasium_env_and_a_clear_refusal(tmp_path, monkeypatch):
    import gymnasium

    from wmlab.core.errors import WmlabError

    env = make_env("CartPole-v1", observation="pixels")
    observation, _ = env.reset(seed=0)
    assert observation["image"].shape == (64, 64, 3) and observation["image"].dtype == np.uint8
    assert observation["image"].std() > 0  # a real frame, not a blank

    class NoRender(gymnasium.Env):
        metadata = {"render_modes": []}
        observation_space = gymnasium.spaces.Box(-1, 1, (2,), dtype=np.float32)
        action_space = gymnasium.spaces.Discrete(2)

        def __init__(self, render_mode=None):
            self.render_mode = render_mode

    gymnasium.register("WmlabNoRender-v0", entry_point=NoRender)
    with pytest.raises(WmlabError, match="cannot be observed from pixels"):
        make_env("WmlabNoRender-v0", observation="pixels")
    with pytest.raises(UnknownNameError, match="Did you mean: dmc"):
        make_env("dmx:cartpole-swingup")
    with pytest.raises(WmlabError, match="does not take these options"):
        make_env("dyna-maze", observation="pixels")


def test_action_source_serves_given_actions_by_column_and_a_policy_encoded():
    def encode(actions, leading, sizes):  # indices -> one-hot, checking the leading dimensions
        actions = torch.as_tensor(actions)
        check_shape("actions", actions, leading, sizes)
        return torch.nn.functional.one_hot(actions, 3).float()

    given = np.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    sizes = {"B": 2}
    choose, horizon = action_source(given, None, sizes, encode)
    assert horizon == 4 and sizes["L"] == 4
    assert torch.equal(choose(2, None), torch.eye(3)[[2, 0]])
    with pytest.raises(ValueError):  # a horizon that disagrees with the actions' length
        action_source(given, 3, {"B": 2}, encode)

    seen = []

    def policy(state):
        seen.append(state)
        return np.array([1, 0])

    choose, horizon = action_source(policy, 5, {"B": 2}, encode)
    assert horizon == 5 and torch.equal(choose(0, "state"), torch.eye(3)[[1, 0]]) and seen == ["state"]
    for bad in (None, 0):
        with pytest.raises(ValueError, match="positive horizon"):
            action_source(policy, bad, {"B": 2}, encode)

"""Random shooting on analytic rollout functions whose optimum is known."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import Planner
from wmlab.planners.shooting import RandomShooting, RandomShootingConfig

torch.set_num_threads(1)


def distance_to_target(state, actions):  # actions (N, L, A) -> (N,), best at a = 0.3 everywhere
    return -((actions - 0.3) ** 2).sum((1, 2))


def test_box_finds_the_optimum_within_sampling_resolution():
    space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    planner = RandomShooting(RandomShootingConfig(horizon=1, candidates=1000), seed=0)
    assert isinstance(planner, Planner)
    plan = planner.plan(distance_to_target, None, space)
    assert plan.shape == (1, 1)
    assert abs(plan.item() - 0.3) < 0.01  # 1000 uniform draws on [-1, 1] land ~0.002 apart

    # Four dimensions (L=2, A=2): the best of 4000 draws lies within ~0.25 of the optimum.
    space = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 0.5], np.float32))
    planner = RandomShooting(RandomShootingConfig(horizon=2, candidates=4000), seed=0)
    plan = planner.plan(distance_to_target, None, space)
    assert plan.shape == (2, 2)
    assert distance_to_target(None, plan[None]).item() > -0.1
    assert (plan >= torch.tensor([-1.0, 0.0])).all() and (plan <= torch.tensor([1.0, 0.5])).all()


def test_discrete_picks_the_best_index():
    payoff = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.0])

    def rollout(state, indices):  # indices (N, L) -> (N,)
        assert indices.dtype == torch.int64 and indices.shape[1:] == (3,)
        return payoff[indices].sum(1)

    planner = RandomShooting(RandomShootingConfig(horizon=3, candidates=2000), seed=1)
    plan = planner.plan(rollout, None, spaces.Discrete(5))
    assert plan.tolist() == [2, 2, 2]


def test_the_same_seed_gives_the_same_plan_and_a_generator_can_be_shared():
    space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    config = RandomShootingConfig(horizon=3, candidates=50)
    first = RandomShooting(config, seed=7).plan(distance_to_target, None, space)
    second = RandomShooting(config, seed=7).plan(distance_to_target, None, space)
    assert torch.equal(first, second)

    generator = torch.Generator().manual_seed(7)
    shared = RandomShooting(config, generator=generator)
    assert torch.equal(shared.plan(distance_to_target, None, space), first)
    assert not torch.equal(shared.plan(distance_to_target, None, space), first)  # the stream moved on


def test_bad_inputs():
    planner = RandomShooting(RandomShootingConfig(horizon=2, candidates=10), seed=0)
    with pytest.raises(ShapeError, match=r"expected \(N,\) with N=10, got \(10, 1\)"):
        planner.plan(lambda state, actions: torch.zeros(10, 1), None, spaces.Discrete(3))
    with pytest.raises(IncompatibleSpaceError, match="unbounded"):
        planner.plan(distance_to_target, None, spaces.Box(-np.inf, np.inf, (2,), np.float32))
    with pytest.raises(IncompatibleSpaceError, match="1-D Box or a Discrete"):
        planner.plan(distance_to_target, None, spaces.MultiDiscrete([2, 2]))


def test_a_nan_return_never_wins():
    def rollout(state, actions):
        returns = distance_to_target(state, actions)
        returns[0] = float("nan")
        return returns

    planner = RandomShooting(RandomShootingConfig(horizon=1, candidates=20), seed=0)
    candidates = RandomShooting(RandomShootingConfig(horizon=1, candidates=20), seed=0).sample(
        spaces.Box(-1.0, 1.0, (1,)), 20
    )
    plan = planner.plan(rollout, None, spaces.Box(-1.0, 1.0, (1,)))
    assert not torch.equal(plan, candidates[0])

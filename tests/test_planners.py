"""CEM, MPPI and random shooting on analytic rollout functions whose optimum is known: no model."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import Planner
from wmlab.planners import CEM, MPPI, CEMConfig, MPPIConfig, RandomShooting, RandomShootingConfig
from wmlab.planners.common import colored_noise

BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)
TARGET = torch.tensor([0.3, -0.5])


def quadratic(state, actions):  # (N, L, A) -> (N,): best at TARGET at every step, return 0
    return -((actions - TARGET) ** 2).sum((1, 2))


def make(name: str, horizon: int, seed: int = 0):
    if name == "cem":
        return CEM(CEMConfig(horizon=horizon, iterations=6, candidates=300, elites=30), seed=seed)
    if name == "mppi":
        return MPPI(MPPIConfig(horizon=horizon), seed=seed)
    return RandomShooting(RandomShootingConfig(horizon=horizon, candidates=4000), seed=seed)


PLANNERS = ["cem", "mppi", "random-shooting"]


@pytest.mark.parametrize("name", PLANNERS)
def test_quadratic_cost_optimum(name):
    planner = make(name, horizon=3)
    assert isinstance(planner, Planner)
    plan = planner.plan(quadratic, None, BOX)
    assert plan.shape == (3, 2)
    error = (plan - TARGET).abs().max().item()
    # CEM returns its converged mean; MPPI executes one weighted elite, which its final mean
    # (within 0.02) is the centre of; random shooting keeps the best of 4000 draws in 6 dimensions.
    tolerance = {"cem": 0.01, "mppi": 0.15, "random-shooting": 0.5}[name]
    assert error < tolerance
    if name == "mppi":
        assert (planner.previous_plan - TARGET).abs().max().item() < 0.02
    assert (plan >= -1).all() and (plan <= 1).all()


def point_mass(goal: float = 1.0, dt: float = 0.1):
    """1-D point mass, acceleration a in [-1, 1]: v += a dt, x += v dt; return -sum (x - goal)^2."""

    def step(state, action):  # state (..., 2), action (...) -> (..., 2)
        velocity = state[..., 1] + action * dt
        return torch.stack([state[..., 0] + velocity * dt, velocity], -1)

    def rollout(state, actions):  # state (2,), actions (N, L, 1) -> (N,)
        current = state.expand(actions.shape[0], 2)
        total = torch.zeros(actions.shape[0])
        for t in range(actions.shape[1]):
            current = step(current, actions[:, t, 0])
            total = total - (current[:, 0] - goal) ** 2
        return total

    return step, rollout


@pytest.mark.parametrize("name", PLANNERS)
def test_drives_a_point_mass_to_the_goal(name):
    step, rollout = point_mass(goal=1.0)
    space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    planner = {
        "cem": CEM(CEMConfig(horizon=12, iterations=5, candidates=200, elites=20), seed=0),
        "mppi": MPPI(MPPIConfig(horizon=12), seed=0),
        "random-shooting": RandomShooting(RandomShootingConfig(horizon=12, candidates=500), seed=0),
    }[name]
    state = torch.zeros(2)
    for _ in range(40):  # receding horizon: execute the first action, replan
        state = step(state, planner.plan(rollout, state, space)[0, 0])
    position, velocity = state.tolist()
    assert abs(position - 1.0) < 0.05 and abs(velocity) < 0.1  # from rest at 0 to rest at 1 in 4 s


def chain(length: int = 6):
    """States 0..length-1, action 1 moves right, 0 left (walls at both ends); reward 1 for every
    step that ends at the last state. From state 0 with horizon `length`, only all-right reaches it
    in time to collect twice: the unique optimum, return 2."""

    def rollout(state, indices):  # indices (N, L) int64 -> (N,)
        assert indices.dtype == torch.int64
        position = torch.full((indices.shape[0],), int(state))
        total = torch.zeros(indices.shape[0])
        for t in range(indices.shape[1]):
            position = (position + 2 * indices[:, t] - 1).clamp(0, length - 1)
            total = total + (position == length - 1).float()
        return total

    return rollout


@pytest.mark.parametrize("name", PLANNERS)
def test_solves_a_discrete_chain(name):
    planner = {
        "cem": CEM(CEMConfig(horizon=6, iterations=5, candidates=300, elites=30), seed=0),
        "mppi": MPPI(MPPIConfig(horizon=6), seed=0),
        "random-shooting": RandomShooting(RandomShootingConfig(horizon=6, candidates=1000), seed=0),
    }[name]
    plan = planner.plan(chain(6), 0, spaces.Discrete(2))
    assert plan.dtype == torch.int64 and plan.tolist() == [1] * 6


def test_mppi_warm_start_shifts_the_previous_plan():
    seen = []

    def recording(state, actions):
        seen.append(actions.clone())
        return torch.zeros(actions.shape[0])

    # With a negligible spread, every sample sits on the distribution's starting mean.
    tiny = MPPIConfig(horizon=3, iterations=1, samples=16, elites=4, min_std=1e-6, max_std=1e-6)
    space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    planner = MPPI(tiny, seed=0)
    planner.previous_plan = torch.tensor([[0.1], [0.2], [0.3]])
    planner.plan(recording, None, space)
    torch.testing.assert_close(seen[-1][0], torch.tensor([[0.2], [0.3], [0.0]]), atol=1e-4, rtol=0)
    planner.reset()
    planner.plan(recording, None, space)
    torch.testing.assert_close(seen[-1][0], torch.zeros(3, 1), atol=1e-4, rtol=0)
    # An agent that executed two steps of the last plan asks for a shift of two; a shift of the
    # whole horizon or more leaves nothing to carry over.
    planner.previous_plan = torch.tensor([[0.1], [0.2], [0.3]])
    planner.plan(recording, None, space, shift=2)
    torch.testing.assert_close(seen[-1][0], torch.tensor([[0.3], [0.0], [0.0]]), atol=1e-4, rtol=0)
    planner.previous_plan = torch.tensor([[0.1], [0.2], [0.3]])
    planner.plan(recording, None, space, shift=3)
    torch.testing.assert_close(seen[-1][0], torch.zeros(3, 1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="shift"):
        planner.plan(recording, None, space, shift=0)

    # The real thing: after planning toward a per-step target, the next plan starts from it shifted.
    targets = torch.tensor([[0.5], [-0.5], [0.25]])
    planner = MPPI(MPPIConfig(horizon=3), seed=0)
    planner.plan(lambda state, actions: -((actions - targets) ** 2).sum((1, 2)), None, space)
    torch.testing.assert_close(planner.previous_plan, targets, atol=0.03, rtol=0)


def test_mppi_discrete_warm_start_shifts_probabilities():
    planner = MPPI(MPPIConfig(horizon=3, iterations=1, samples=2000, elites=2000, uniform_mix=0.0), seed=0)
    planner.previous_plan = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    seen = []
    planner.plan(lambda state, indices: seen.append(indices) or torch.zeros(indices.shape[0]), None, spaces.Discrete(2))
    indices = seen[0]
    assert (indices[:, 0] == 1).all() and (indices[:, 1] == 0).all()  # steps 1 and 2 moved forward
    assert 0.4 < indices[:, 2].float().mean() < 0.6  # the new last step starts uniform


def test_mppi_scores_the_policy_prior_sequences():
    needle = torch.tensor([[0.9, -0.9], [-0.7, 0.7], [0.8, 0.1]])

    def narrow(state, actions):  # only sequences within 0.01 of the needle score
        return -((actions - needle).abs().amax((1, 2)) > 0.01).float()

    planner = MPPI(MPPIConfig(horizon=3, iterations=1, samples=64, elites=1), seed=0)
    plan = planner.plan(narrow, None, BOX, prior_actions=needle[None].repeat(2, 1, 1))
    torch.testing.assert_close(plan, needle)
    with pytest.raises(ShapeError, match=r"prior_actions: expected \(P, 3, 2\)"):
        planner.plan(narrow, None, BOX, prior_actions=torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="leave none"):
        planner.plan(narrow, None, BOX, prior_actions=torch.zeros(64, 3, 2))


def test_exploration_noise_and_bounds():
    space = spaces.Box(np.array([0.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32))
    planner = MPPI(MPPIConfig(horizon=2), seed=0)
    greedy = planner.plan(lambda s, a: -((a - torch.tensor([0.5, 1.0])) ** 2).sum((1, 2)), None, space)
    assert (greedy[:, 0] >= 0).all() and (greedy[:, 0] <= 1).all() and (greedy[:, 1].abs() <= 2).all()
    # the spread is in units of half the range, so the refit std of the wide dimension is wider
    std = planner.distribution["std"]
    assert std.shape == (2, 2) and (std[:, 1] >= std[:, 0]).all()
    explored = planner.plan(lambda s, a: -((a - torch.tensor([0.5, 1.0])) ** 2).sum((1, 2)), None, space, explore=True)
    assert (explored[:, 0] >= 0).all() and (explored[:, 0] <= 1).all()


def test_cem_momentum_and_min_std():
    config = CEMConfig(horizon=2, iterations=4, candidates=200, elites=20, momentum=0.5, min_std=0.2)
    planner = CEM(config, seed=0)
    plan = planner.plan(quadratic, None, BOX)
    assert (planner.distribution["std"] >= 0.2 - 1e-6).all()  # the floor holds on the refit
    assert (plan - TARGET).abs().max() < 0.2  # smoothing slows convergence but still gets close


@pytest.mark.parametrize(
    "planner_class, config",
    [
        (CEM, CEMConfig(horizon=3, candidates=50, elites=5, iterations=2)),
        (MPPI, MPPIConfig(horizon=3, samples=50, elites=5, iterations=2)),
    ],
)
def test_same_seed_same_plan_and_bad_inputs(planner_class, config):
    first = planner_class(config, seed=3).plan(quadratic, None, BOX)
    second = planner_class(config, seed=3).plan(quadratic, None, BOX)
    assert torch.equal(first, second)
    planner = planner_class(config, seed=0)
    with pytest.raises(ShapeError, match=r"expected \(N,\) with N=50"):
        planner.plan(lambda state, actions: torch.zeros(50, 1), None, BOX)
    with pytest.raises(IncompatibleSpaceError, match="unbounded"):
        planner.plan(quadratic, None, spaces.Box(-np.inf, np.inf, (2,), np.float32))
    with pytest.raises(IncompatibleSpaceError, match="start at 0"):
        planner.plan(chain(), 0, spaces.Discrete(2, start=1))


def test_a_nan_return_is_never_an_elite():
    def rollout(state, actions):
        returns = quadratic(state, actions)
        returns[::2] = float("nan")  # half the candidates diverge
        return returns

    for planner in (
        CEM(CEMConfig(horizon=2, candidates=100, elites=10, iterations=3), seed=0),
        MPPI(MPPIConfig(horizon=2, samples=100, elites=10, iterations=3), seed=0),
    ):
        assert torch.isfinite(planner.plan(rollout, None, BOX)).all()


def test_configs_refuse_impossible_settings():
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(candidates=10, elites=20)
    with pytest.raises(ValueError, match="min_std"):
        MPPIConfig(min_std=3.0, max_std=2.0)
    with pytest.raises(ValueError, match="noise_exponent"):
        MPPIConfig(noise_exponent=-1.0)
    with pytest.raises(ValueError, match="noise_exponent"):
        CEMConfig(noise_exponent=-0.5)


@pytest.mark.parametrize("length", [1, 2, 7, 32])
def test_colored_noise_has_unit_variance_at_every_step(length):
    generator = torch.Generator().manual_seed(0)
    for exponent in (0.0, 1.0, 2.0, 3.0):
        noise = colored_noise(20000, length, 2, exponent, generator)
        assert noise.shape == (20000, length, 2) and noise.dtype == torch.float32
        assert (noise.std(0) - 1).abs().max() < 0.05
        assert noise.mean(0).abs().max() < 0.05


def test_colored_noise_correlation_grows_with_the_exponent():
    """Lag-one correlation along the horizon: about 0 for white noise, near 1 for brown noise."""
    generator = torch.Generator().manual_seed(1)
    lag_one = []
    for exponent in (0.0, 1.0, 2.0):
        noise = colored_noise(5000, 32, 1, exponent, generator)
        lag_one.append((noise[:, 1:] * noise[:, :-1]).mean().item())
    assert abs(lag_one[0]) < 0.03
    assert 0.3 < lag_one[1] < lag_one[2]
    assert lag_one[2] > 0.85
    # Same generator state, same noise: plans stay reproducible.
    first = colored_noise(3, 8, 2, 2.0, torch.Generator().manual_seed(5))
    assert torch.equal(first, colored_noise(3, 8, 2, 2.0, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("name", ["cem", "mppi"])
def test_colored_noise_planners_still_reach_the_goal(name):
    step, rollout = point_mass(goal=1.0)
    space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    planner = {
        "cem": CEM(CEMConfig(horizon=12, iterations=5, candidates=200, elites=20, noise_exponent=2.0), seed=0),
        "mppi": MPPI(MPPIConfig(horizon=12, noise_exponent=2.0), seed=0),
    }[name]
    state = torch.zeros(2)
    for _ in range(40):
        state = step(state, planner.plan(rollout, state, space)[0, 0])
    position, velocity = state.tolist()
    assert abs(position - 1.0) < 0.05 and abs(velocity) < 0.1

"""The feed-forward world model: protocol shapes, the episode-boundary mask, shape errors, and
that it learns a known linear system."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import WorldModel
from wmlab.core.types import Batch
from wmlab.models.mlp import MLPLossScales, MLPWorldModel, MLPWorldModelConfig
from wmlab.nn.mlp import MLP
from wmlab.nn.normalizer import RunningNormalizer

torch.set_num_threads(1)

VECTOR = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)
SMALL = MLPWorldModelConfig(hidden_size=32, layers=2)


def make_model(action_space=BOX, config=SMALL, seed=0):
    torch.manual_seed(seed)
    return MLPWorldModel(config, VECTOR, action_space)


def random_batch(B=4, T=7, D=3, action=None, seed=0):
    rng = np.random.default_rng(seed)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    return Batch(
        obs={"vector": rng.normal(size=(B, T, D)).astype(np.float32)},
        action=rng.uniform(-1, 1, (B, T, 2)).astype(np.float32) if action is None else action,
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=is_first,
        is_last=np.zeros((B, T), bool),
        is_terminal=rng.random((B, T)) < 0.1,
    )


@pytest.mark.parametrize("action_space", [BOX, spaces.Discrete(4)], ids=["box", "discrete"])
def test_protocol_shapes_and_finite_loss(action_space):
    model = make_model(action_space)
    assert isinstance(model, WorldModel) and model.can_decode
    discrete = isinstance(action_space, spaces.Discrete)
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 4, (4, 7)) if discrete else None
    batch = random_batch(action=actions)

    loss, metrics = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    assert {"loss/next_state", "loss/reward", "loss/continue", "loss/total"} <= set(metrics)
    assert all(np.isfinite(value) for value in metrics.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())

    assert model.initial(5).shape == (5, 3)
    states, last = model.observe(batch.obs, batch.action, batch.is_first, model.initial(4))
    assert states.shape == (4, 7, 3) and torch.equal(last, states[:, -1])
    assert torch.equal(model.decode(last)["vector"], last)

    plan = torch.randint(0, 4, (4, 5)) if discrete else torch.rand(4, 5, 2) * 2 - 1
    trajectory = model.imagine(last, plan, 5)
    assert trajectory.states.shape == (4, 5, 3)
    assert trajectory.actions.shape == (4, 5, action_space.shape[0] if not discrete else 4)
    assert trajectory.rewards.shape == trajectory.continues.shape == (4, 5)
    assert ((trajectory.continues >= 0) & (trajectory.continues <= 1)).all()
    assert trajectory.observations["vector"] is trajectory.states

    def policy(state):  # (B, D) -> (B,) indices or (B, A)
        return torch.zeros(state.shape[0], dtype=torch.long) if discrete else torch.zeros(state.shape[0], 2)

    assert model.imagine(last, policy, 3).states.shape == (4, 3, 3)


def test_loss_leaves_out_pairs_that_cross_an_episode_start():
    # eval: the statistics stay put, so the three losses are comparable; LayerNorm keeps the
    # untrained network's outputs small for inputs near a thousand.
    model = make_model(config=MLPWorldModelConfig(hidden_size=32, layer_norm=True)).eval()
    # Two episodes of three steps in one window; the second starts a thousand units away, so the
    # pair (t=2 -> t=3) would dominate the loss if it were counted as a transition.
    batch = random_batch(B=2, T=6, seed=3)
    batch.obs["vector"][:, 3:] += 1000.0
    batch.is_first[:, 3] = True
    first, second = (
        Batch(
            {"vector": batch.obs["vector"][:, part]},
            *(getattr(batch, name)[:, part] for name in ("action", "reward", "is_first", "is_last", "is_terminal")),
        )
        for part in (slice(0, 3), slice(3, 6))
    )
    with torch.no_grad():
        whole = model.loss(batch)[0]
        # Both halves hold two pairs per row, so the masked mean is the mean of the halves.
        expected = (model.loss(first)[0] + model.loss(second)[0]) / 2
        batch.is_first[:, 3] = False
        crossing = model.loss(batch)[0]
    assert torch.allclose(whole, expected, rtol=1e-5)
    assert crossing > 1000 * whole

    # In training mode the statistics take in only the valid pairs: no delta of a thousand.
    model.train()
    batch.is_first[:, 3] = True
    model.loss(batch)
    assert model.target_normalizer.mean.abs().max() < 10


def test_shape_errors_name_the_expected_shape():
    model = make_model()
    batch = random_batch(B=4, T=7)
    batch.action = np.zeros((4, 7, 3), np.float32)
    with pytest.raises(ShapeError, match=r"action: expected \(B, T, 2\) with B=4, T=7, got \(4, 7, 3\)"):
        model.loss(batch)
    with pytest.raises(ShapeError, match=r"state: expected \(B, 3\), got \(4, 5\)"):
        model.imagine(torch.zeros(4, 5), torch.zeros(4, 2, 2))
    discrete = make_model(spaces.Discrete(4))
    with pytest.raises(ShapeError, match=r"expected indices \(B, L\) with B=2 or one-hot \(B, L, 4\) with B=2"):
        discrete.imagine(torch.zeros(2, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ShapeError, match="T >= 2"):
        model.loss(random_batch(T=1))


def test_incompatible_spaces():
    pixels = spaces.Dict({"image": spaces.Box(0, 255, (8, 8, 3), np.uint8)})
    with pytest.raises(IncompatibleSpaceError, match="image encoder"):
        MLPWorldModel(SMALL, pixels, BOX)
    with pytest.raises(IncompatibleSpaceError, match="Discrete"):
        MLPWorldModel(SMALL, VECTOR, spaces.MultiBinary(3))


def linear_system_batch(rng, B=128):
    """Pairs of s' = s + 0.1 a, reward -|s'|^2, terminal when s'_0 > 0.8; D = A = 2."""
    state = rng.uniform(-1, 1, (B, 2))
    action = rng.uniform(-1, 1, (B, 2))
    next_state = state + 0.1 * action
    vector = np.stack([state, next_state], 1).astype(np.float32)
    actions = np.stack([np.zeros_like(action), action], 1).astype(np.float32)
    reward = np.stack([np.zeros(B), -(next_state**2).sum(-1)], 1).astype(np.float32)
    is_terminal = np.stack([np.zeros(B, bool), next_state[:, 0] > 0.8], 1)
    is_first = np.stack([np.ones(B, bool), np.zeros(B, bool)], 1)
    return Batch({"vector": vector}, actions, reward, is_first, is_terminal.copy(), is_terminal)


def test_learns_a_linear_system():
    observation_space = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    torch.manual_seed(0)
    model = MLPWorldModel(MLPWorldModelConfig(hidden_size=64), observation_space, BOX)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(400):
        loss, metrics = model.loss(linear_system_batch(rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        _, metrics = model.loss(linear_system_batch(rng, B=1024))
        # Five imagined steps against the true system, from inside the training distribution.
        start = torch.tensor([[0.2, -0.3], [-0.5, 0.1]])
        actions = torch.tensor([[[1.0, 0.5]] * 5, [[-0.5, 1.0]] * 5])
        trajectory = model.imagine(start, actions, 5)
    assert metrics["wm/next_state_mse"] < 1e-4  # the deltas themselves are ~0.1
    assert metrics["wm/reward_mse"] < 1e-3
    assert metrics["wm/continue_accuracy"] > 0.97
    truth = start[:, None] + 0.1 * torch.cumsum(actions, 1)
    assert torch.allclose(trajectory.states, truth, atol=0.02)
    assert torch.allclose(trajectory.rewards, -(truth**2).sum(-1), atol=0.05)


def test_statistics_are_buffers_and_exact():
    model = make_model()
    names = set(model.state_dict())
    assert {"observation_normalizer.mean", "target_normalizer.squared_deviations", "reward_normalizer.count"} <= names

    normalizer = RunningNormalizer(2)
    data = torch.randn(50, 2) * 3 + 1
    for chunk in data.split(7):  # merged in uneven pieces, as batches arrive
        normalizer.update(chunk)
    assert torch.allclose(normalizer.mean, data.mean(0), atol=1e-5)
    assert torch.allclose(normalizer.std, data.std(0, unbiased=False), atol=1e-5)
    normalizer.update(torch.full((3, 2), 1e6), mask=torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(normalizer.mean, data.mean(0), atol=1e-5)


def test_loss_scales_weight_the_terms():
    batch = random_batch()
    _, metrics = make_model().loss(batch)
    scaled = make_model(
        config=MLPWorldModelConfig(
            hidden_size=32, loss_scales=MLPLossScales(next_state=2.0, reward=0.0, continuation=0.5)
        )
    )
    total, scaled_metrics = scaled.loss(batch)
    expected = 2.0 * metrics["loss/next_state"] + 0.5 * metrics["loss/continue"]
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_mlp_block():
    trunk = MLP(5, None, hidden_size=8, layers=2, layer_norm=True)
    assert trunk(torch.zeros(3, 4, 5)).shape == (3, 4, 8) and trunk.features == 8
    assert MLP(5, 2, layers=0)(torch.zeros(1, 5)).shape == (1, 2)
    with pytest.raises(ShapeError, match=r"expected \(\.\.\., 5\), got \(3, 4\)"):
        trunk(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(5, 2, activation="swish")

"""JEPA world models: masking, EMA, VICReg terms, collapse diagnostics, planning, shapes."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from wmlab.agents.jepa_planner.agent import (
    EncoderShaping,
    GoalValue,
    JEPAPlannerAgent,
    PredictorRefiner,
    QuasimetricLearner,
    ValueLearner,
    expectile_loss,
    hindsight_pairs,
    make_value_learner,
    quasimetric_losses,
    state_pairs,
    value_returns,
)
from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, ValueConfig
from wmlab.core.errors import ConfigError, IncompatibleSpaceError
from wmlab.core.types import Batch
from wmlab.models.jepa import (
    JEPAConfig,
    JEPAWorldModel,
    SpatialSoftArgmax,
    collapse_diagnostics,
    ema_momentum,
    ema_update,
    goal_distance_returns,
    is_collapsed,
    temporal_variance,
    vicreg_covariance,
    vicreg_variance,
)
from wmlab.models.jepa_masking import MaskedJEPA, MaskedJEPAConfig, sample_block, sample_block_masks, sample_tube_mask
from wmlab.planners.mppi import MPPI, MPPIConfig

TINY = JEPAConfig(embedding_size=8, encoder_depth=4, hidden_size=32)
ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)
PIXELS = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
VECTORS = spaces.Dict({"vector": spaces.Box(-1.0, 1.0, (5,), np.float32)})


def make_batch(observation_space, B=3, T=4, seed=0):
    rng = np.random.default_rng(seed)
    key, space = next(iter(observation_space.spaces.items()))
    if key == "image":
        obs = rng.integers(0, 256, (B, T, *space.shape), dtype=np.uint8)
    else:
        obs = rng.uniform(-1, 1, (B, T, *space.shape)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[0, 2] = True  # an episode boundary inside a window
    return Batch(
        obs={key: obs},
        action=rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        reward=np.zeros((B, T), np.float32),
        is_first=is_first,
        is_last=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )


# ----------------------------------------------------------------------------- masking


def test_block_has_requested_scale_and_aspect():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = sample_block((16, 16), (0.15, 0.2), (0.75, 1.5), generator)
        rows, columns = mask.any(1).sum().item(), mask.any(0).sum().item()
        assert mask.sum() == rows * columns  # one rectangle
        # Rounding to whole patches moves the area by at most one row and one column.
        assert 0.15 * 256 - rows - columns - 1 <= mask.sum() <= 0.2 * 256 + rows + columns + 1
        assert 0.75 * 0.7 <= rows / columns <= 1.5 / 0.7


def test_block_masks_separate_context_from_targets():
    generator = torch.Generator().manual_seed(1)
    context, targets = sample_block_masks((8, 8), generator, targets=4)
    assert context.shape == (8, 8) and targets.shape == (4, 8, 8)
    assert not (context & targets.any(0)).any()
    assert context.any()


def test_tube_mask_repeats_over_frames():
    mask = sample_tube_mask(
        4, (8, 8), torch.Generator().manual_seed(2), blocks=2, scale=(0.25, 0.25), aspect=(1.0, 1.0)
    )
    assert mask.shape == (4, 8, 8)
    assert torch.equal(mask[0], mask[3])
    assert 16 <= mask[0].sum() <= 32  # two 4 x 4 blocks, possibly overlapping


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 3, 32, 32)])
def test_masked_jepa_loss_is_finite(shape):
    model = MaskedJEPA(MaskedJEPAConfig(image_size=32, width=16, predictor_width=16, heads=2, depth=1))
    loss, metrics = model.loss(torch.randint(0, 256, shape, dtype=torch.uint8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and 0 < metrics["mask/target_fraction"] < 1
    assert model.update_target() == pytest.approx(0.996)


# ----------------------------------------------------------------------------- EMA


def test_ema_update_is_exact():
    online, target = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(2.0), online.bias.fill_(-1.0)
        target.weight.fill_(1.0), target.bias.fill_(1.0)
    ema_update(target, online, momentum=0.75)
    # 0.75 * 1 + 0.25 * 2 = 1.25 and 0.75 * 1 + 0.25 * (-1) = 0.5
    assert target.weight.item() == pytest.approx(1.25) and target.bias.item() == pytest.approx(0.5)


def test_momentum_schedules():
    assert ema_momentum(0, 0.996, 1.0, 100, "linear") == pytest.approx(0.996)
    assert ema_momentum(50, 0.996, 1.0, 100, "linear") == pytest.approx(0.998)
    assert ema_momentum(50, 0.996, 1.0, 100, "cosine") == pytest.approx(0.998)
    assert ema_momentum(25, 0.996, 1.0, 100, "cosine") == pytest.approx(1.0 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert ema_momentum(500, 0.996, 1.0, 100, "cosine") == 1.0


def test_model_target_follows_encoder_with_momentum():
    model = JEPAWorldModel(
        JEPAConfig(
            **{**TINY.__dict__, "collapse_prevention": "ema", "momentum_schedule": "linear", "momentum_steps": 2}
        ),
        VECTORS,
        ACTIONS,
    )
    online = [p.detach().clone() for p in model.encoder.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    assert model.update_target() == pytest.approx(0.996)
    for before, target in zip(online, model.target_encoder.parameters()):
        torch.testing.assert_close(target, before + 0.004)
    assert model.update_target() == pytest.approx(0.998)


# ----------------------------------------------------------------------------- VICReg and collapse


def test_vicreg_terms_match_hand_computation():
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # Var (unbiased) of each column is 2; std = sqrt(2 + 1e-4) > 1, so no variance penalty.
    assert vicreg_variance(z).item() == pytest.approx(0.0)
    # Covariance matrix [[2, 2], [2, 2]]: off-diagonal 2 * 2^2 = 8, over D = 2 -> 4.
    assert vicreg_covariance(z).item() == pytest.approx(4.0)
    small = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    # Column stds sqrt(0.125 + 1e-4) and sqrt(1e-4): mean of the two hinges.
    expected = ((1 - math.sqrt(0.125 + 1e-4)) + (1 - math.sqrt(1e-4))) / 2
    assert vicreg_variance(small).item() == pytest.approx(expected, rel=1e-5)


def test_temporal_variance_ignores_what_differs_only_between_windows():
    # Each window constant in time but windows far apart: batch variance is large, yet the
    # within-window term is at its maximum (the hinge's target).
    static = torch.arange(4.0)[:, None, None].expand(4, 5, 3) * 10
    valid = torch.ones(4, 4)
    assert temporal_variance(static, valid, target=1.0).item() == pytest.approx(1.0, abs=1e-2)
    # Moving along time by more than the target: no penalty.
    moving = static + torch.linspace(-2, 2, 5)[None, :, None]
    assert temporal_variance(moving, valid, target=1.0).item() == 0.0
    # Windows crossing an episode start are left out.
    mixed = torch.cat([static[:1], moving[1:]])
    assert temporal_variance(mixed, torch.tensor([[1.0, 1.0, 0.0, 0.0]] + [[1.0] * 4] * 3), target=1.0).item() == 0.0
    model = JEPAWorldModel(TINY, VECTORS, ACTIONS)
    assert "loss/temporal_variance" in model.loss(make_batch(VECTORS))[1]


def test_diagnostics_flag_a_constant_encoder():
    collapsed = collapse_diagnostics(torch.ones(64, 8) * 3.0)
    assert collapsed["jepa/embedding_std_min"] == 0.0
    assert collapsed["jepa/effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert is_collapsed(collapsed)
    healthy = collapse_diagnostics(torch.randn(256, 8, generator=torch.Generator().manual_seed(0)))
    assert healthy["jepa/effective_rank"] > 6 and not is_collapsed(healthy)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("observation_space", [PIXELS, VECTORS], ids=["pixels", "vectors"])
@pytest.mark.parametrize("prevention", ["vicreg", "ema"])
def test_loss_shapes_and_finite(observation_space, prevention):
    torch.manual_seed(0)
    model = JEPAWorldModel(
        JEPAConfig(**{**TINY.__dict__, "collapse_prevention": prevention}), observation_space, ACTIONS
    )
    batch = make_batch(observation_space)
    loss, metrics = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert {"loss/teacher_forcing", "loss/rollout", "jepa/embedding_std_min", "jepa/effective_rank"} <= set(metrics)
    assert ("loss/variance" in metrics) == (prevention == "vicreg")
    states, last = model.observe(batch.obs, batch.action, batch.is_first, model.initial(3))
    assert states.shape == (3, 4, 8) and last.shape == (3, 8)
    trajectory = model.imagine(last, torch.zeros(3, 5, 2), horizon=5)
    assert trajectory.states.shape == (3, 5, 8) and trajectory.rewards.shape == (3, 5)
    by_policy = model.imagine(last, lambda z: torch.zeros(z.shape[0], 2), horizon=2)
    assert by_policy.actions.shape == (3, 2, 2)


def test_spatial_soft_argmax_finds_a_bright_spot():
    head = SpatialSoftArgmax((1, 16, 16), keypoints=1)
    with torch.no_grad():
        head.project.weight.fill_(1.0)
        head.project.bias.zero_()
        head.log_temperature.fill_(math.log(50.0))
    features = torch.zeros(2, 1, 16, 16)
    features[0, 0, 0, 15] = 1.0  # top right: x = 1, y = +1 (y points up)
    features[1, 0, 15, 0] = 1.0  # bottom left
    coordinates = head(features.flatten(1))
    assert coordinates.shape == (2, 2)
    assert torch.allclose(coordinates, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), atol=0.05)


def test_keypoint_encoder_tracks_a_moving_dot():
    """The default ("keypoints") pixel encoder: embeddings move with a small dot, and the head
    reads features after `keypoint_stages` conv stages (16 x 16 for 64 x 64 frames)."""
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY, PIXELS, ACTIONS)
    assert TINY.encoder_head == "keypoints" and model.encoder[1].feature_shape[1:] == (16, 16)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 10:14, 10:14] = 255
    frames[1, 40:44, 50:54] = 255
    embeddings = model.encode(frames)
    assert embeddings.shape == (2, 8) and not torch.allclose(embeddings[0], embeddings[1])
    linear = JEPAWorldModel(JEPAConfig(**{**TINY.__dict__, "encoder_head": "linear"}), PIXELS, ACTIONS)
    assert linear.encode(frames).shape == (2, 8)
    with pytest.raises(ValueError, match="encoder_head"):
        JEPAConfig(encoder_head="pooling")


def test_spatial_head_keeps_a_grid_and_its_predictor_is_local():
    """The "spatial" head: an 8 x 8 feature map of embedding_size / 64 channels, and a conv
    predictor whose output at a cell depends only on cells within its 7 x 7 receptive field."""
    torch.manual_seed(0)
    config = JEPAConfig(**{**TINY.__dict__, "encoder_head": "spatial", "embedding_size": 128, "predictor_channels": 8})
    model = JEPAWorldModel(config, PIXELS, ACTIONS)
    assert model.grid_shape == (2, 8, 8)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 10:14, 10:14] = 255
    frames[1, 40:44, 50:54] = 255
    embeddings = model.encode(frames)
    assert embeddings.shape == (2, 128) and not torch.allclose(embeddings[0], embeddings[1])
    z = torch.randn(1, 128)
    action = torch.tensor([[0.5, -0.5]])
    perturbed = z.reshape(1, 2, 8, 8).clone()
    perturbed[:, :, 0, 0] += 5.0  # the top-left cell
    before = model.predict(z, action).reshape(2, 8, 8)
    after = model.predict(perturbed.reshape(1, 128), action).reshape(2, 8, 8)
    assert not torch.allclose(before[:, 0, 0], after[:, 0, 0])
    # GroupNorm mixes statistics over the whole grid, so far cells may shift a little, but by far
    # less than the cell itself (3 convs of 3 x 3 reach 3 cells away)
    far = (after[:, 4:, 4:] - before[:, 4:, 4:]).abs().max()
    assert far < 0.1 * (after[:, 0, 0] - before[:, 0, 0]).abs().max()
    loss, metrics = model.loss(make_batch(PIXELS))
    loss.backward()
    assert torch.isfinite(loss) and metrics["jepa/effective_rank"] > 1.0
    assert model.rollout(embeddings, torch.zeros(2, 3, 2)).shape == (2, 3, 128)
    with pytest.raises(ValueError, match="multiple of 64"):
        JEPAWorldModel(JEPAConfig(**{**config.__dict__, "embedding_size": 100}), PIXELS, ACTIONS)
    with pytest.raises(IncompatibleSpaceError, match="image"):
        JEPAWorldModel(config, VECTORS, ACTIONS)


def test_hybrid_head_splits_the_embedding_into_keypoints_and_layout():
    """The "hybrid" head: the first embedding_size - layout_size dimensions come from keypoints of
    the early conv map (they follow a moving dot wherever it is), the last layout_size from the
    flattened late map; a dot that moves changes the keypoint part, the predictor is the MLP."""
    torch.manual_seed(0)
    config = JEPAConfig(**{**TINY.__dict__, "encoder_head": "hybrid", "embedding_size": 12, "layout_size": 4})
    model = JEPAWorldModel(config, PIXELS, ACTIONS)
    head = model.encoder[1]
    assert head.keypoints[1].out_features == 8 and head.layout.out_features == 4
    assert head.layout_encoder.output_shape[1:] == (4, 4)  # two more stride-2 stages after 16 x 16
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 10:14, 10:14] = 255
    frames[1, 40:44, 50:54] = 255
    embeddings = model.encode(frames)
    assert embeddings.shape == (2, 12)
    with torch.no_grad():
        keypoint_part = head.keypoints(model.encoder[0](model.preprocess(frames)))
    assert torch.allclose(embeddings[:, :8], keypoint_part)
    assert not torch.allclose(embeddings[0, :8], embeddings[1, :8])
    assert isinstance(model.predictor, nn.Module) and model.predict(embeddings, torch.zeros(2, 2)).shape == (2, 12)
    loss, metrics = model.loss(make_batch(PIXELS))
    loss.backward()
    assert (
        torch.isfinite(loss)
        and head.layout.weight.grad.abs().sum() > 0
        and head.keypoints[1].weight.grad.abs().sum() > 0
    )
    with pytest.raises(ValueError, match="layout_size"):
        JEPAConfig(encoder_head="hybrid", embedding_size=8, layout_size=8)
    with pytest.raises(IncompatibleSpaceError, match="image"):
        JEPAWorldModel(config, VECTORS, ACTIONS)


def test_decode_refuses():
    model = JEPAWorldModel(TINY, VECTORS, ACTIONS)
    assert model.can_decode is False
    with pytest.raises(NotImplementedError, match="representation space"):
        model.decode(torch.zeros(1, 8))


def test_agent_update_and_act_on_pixels():
    config = JEPAPlannerConfig(
        model=TINY,
        value=ValueConfig(hidden_size=16, projection_size=8),
        planner=MPPIConfig(horizon=3, iterations=2, samples=16, elites=4, policy_trajectories=0),
        replan_every=2,
    )
    agent = JEPAPlannerAgent(config, PIXELS, ACTIONS)
    metrics = agent.update(make_batch(PIXELS))
    assert math.isfinite(metrics["loss/total"])
    agent.set_goal(np.zeros((64, 64, 3), np.uint8))
    action, state = agent.act(
        {"image": np.zeros((1, 64, 64, 3), np.uint8), "is_first": np.array([True])}, None, explore=False
    )
    assert action.shape == (1, 2) and np.all(np.abs(action) <= 1)


def point_episodes(lengths, size=8, seed=0):
    """Embeddings of a point that moves by 0.1 * M a each step, M fixed: [(length, size)], [(length, 2)]."""
    rng = np.random.default_rng(seed)
    mixing = torch.as_tensor(rng.standard_normal((2, size)), dtype=torch.float32)
    embeddings, actions = [], []
    for length in lengths:
        action = torch.as_tensor(rng.uniform(-1, 1, (length, 2)), dtype=torch.float32)
        action[0] = 0.0  # nothing leads into the first step
        start = torch.as_tensor(rng.standard_normal(size), dtype=torch.float32)
        embeddings.append(start + 0.1 * (action @ mixing).cumsum(0))
        actions.append(action)
    return embeddings, actions


def test_predictor_refiner_samples_windows_inside_episodes_long_enough():
    model = JEPAWorldModel(TINY, VECTORS, ACTIONS)
    embeddings, actions = point_episodes([3, 12, 9])
    refiner = PredictorRefiner(model, steps=10, batch_size=64, length=6)
    z, action = refiner.sample(embeddings, actions)
    assert z.shape == (64, 6, 8) and action.shape == (64, 6, 2)
    for window in z:  # each window is 6 consecutive steps of episode 1 or 2, never of the 3-step one
        assert any(
            torch.equal(window, episode[start : start + 6])
            for episode in embeddings[1:]
            for start in range(len(episode) - 5)
        )
    with pytest.raises(ValueError, match="steps a window needs"):
        refiner.sample(embeddings[:1], actions[:1])


def test_refine_predictor_refuses_embeddings_that_do_not_match_the_actions(tmp_path):
    from wmlab.core.errors import ShapeError
    from wmlab.pipelines.jepa.pipeline import refine_predictor

    class Recorded:
        def episodes(self):
            return iter([{"action": np.zeros((10, 2), np.float32)}, {"action": np.zeros((12, 2), np.float32)}])

    agent = JEPAPlannerAgent(JEPAPlannerConfig(model=TINY), VECTORS, ACTIONS)
    embeddings, _ = point_episodes([10, 11])
    with pytest.raises(ShapeError, match="step for step"):
        refine_predictor(
            agent, [Recorded()], embeddings, steps=1, batch_size=4, length=4, seed=0, log=tmp_path / "log.jsonl"
        )


def test_predictor_refiner_learns_known_dynamics_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY, VECTORS, ACTIONS)
    encoder_before = [parameter.clone() for parameter in model.encoder.parameters()]
    embeddings, actions = point_episodes([40] * 20)
    refiner = PredictorRefiner(model, steps=400, batch_size=64, length=6)
    first = refiner.update(embeddings, actions)
    for _ in range(399):
        last = refiner.update(embeddings, actions)
    assert last["refine/rollout"] < 0.1 * first["refine/rollout"]
    assert last["refine/teacher_forcing"] < 0.1 * first["refine/teacher_forcing"]
    assert all(torch.equal(before, after) for before, after in zip(encoder_before, model.encoder.parameters()))
    assert refiner.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # decayed over the given steps


# ----------------------------------------------------------------------------- planning and value


class PositionModel(nn.Module):
    """A toy JEPA whose dynamics are known: embedding = position, predictor = position + 0.1 action."""

    def rollout(self, embedding, actions):
        return embedding[:, None] + 0.1 * actions.cumsum(1)


def test_distance_planning_reaches_goal_on_a_known_model():
    model, goal = PositionModel(), torch.tensor([0.8, -0.6])
    planner = MPPI(
        MPPIConfig(horizon=5, iterations=6, samples=256, elites=16, policy_trajectories=0, temperature=5.0), seed=0
    )
    position = torch.zeros(2)
    rollout_fn = goal_distance_returns(model, goal)
    for _ in range(20):  # MPC: execute the first action, replan
        action = planner.plan(rollout_fn, position[None], ACTIONS)[0]
        position = position + 0.1 * action
    assert torch.linalg.norm(position - goal) < 0.05


def test_distance_norms_sum_squared_or_euclidean_distances():
    model, goal = PositionModel(), torch.tensor([0.3, 0.4])
    actions = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [-1.0, 0.0]]])  # (N=2, L=2, A=2)
    predicted = model.rollout(torch.zeros(1, 2).expand(2, -1), actions)
    distances = torch.linalg.norm(predicted - goal, dim=-1)  # (2, 2)
    start = torch.zeros(1, 2)
    assert torch.allclose(goal_distance_returns(model, goal)(start, actions), -(distances**2).sum(1))
    assert torch.allclose(goal_distance_returns(model, goal, norm="euclidean")(start, actions), -distances.sum(1))
    assert torch.allclose(
        goal_distance_returns(model, goal, terminal_only=True, norm="euclidean")(start, actions), -distances[:, -1]
    )
    with pytest.raises(ValueError, match="norm"):
        goal_distance_returns(model, goal, norm="manhattan")
    with pytest.raises(ValueError, match="distance_norm"):
        JEPAPlannerConfig(distance_norm="cosine")


def test_value_objective_scores_the_end_of_the_horizon():
    """value_at_end: a plan that ends at the goal beats one that passes it and walks on."""
    config = ValueConfig(hidden_size=8, projection_size=4)
    value = GoalValue(2, config)
    value.phi = nn.Identity()  # V(z, g) = -||z - g||
    goal = torch.tensor([0.3, 0.0])
    stop = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    overshoot = torch.tensor([[[1.0, 0.0]] * 5])
    actions = torch.cat([stop, overshoot])
    at_end = value_returns(PositionModel(), value, goal, terminal_only=True)(torch.zeros(1, 2), actions)
    assert at_end[0] > at_end[1] and at_end[0].item() == pytest.approx(0.0, abs=1e-2)
    agent_config = JEPAPlannerConfig(model=TINY)
    assert agent_config.value_at_end is True


def test_expectile_loss_and_value_learning():
    difference = torch.tensor([1.0, -2.0])
    assert expectile_loss(difference, 0.9).item() == pytest.approx((0.9 * 1 + 0.1 * 4) / 2)
    # A chain 0 -> 1 -> ... -> 9 in a 1-D embedding: V(z_t, z_j) should approach -(steps) for gamma=1.
    torch.manual_seed(0)
    episode = torch.arange(10.0)[:, None] / 10
    config = ValueConfig(
        hidden_size=32,
        projection_size=8,
        discount=0.9,
        expectile=0.5,
        batch_size=128,
        learning_rate=3e-3,
        target_rate=0.05,
    )
    value = GoalValue(1, config)
    learner = ValueLearner(value, config, seed=0)
    for _ in range(600):
        learner.update([episode])
    with torch.no_grad():
        near, far = value(episode[2], episode[3]).item(), value(episode[2], episode[9]).item()
    assert near == pytest.approx(-1.0, abs=0.35)
    assert far < near - 2.0  # farther goals have lower value


def test_quasimetric_losses_by_hand():
    """QRL's terms with V = -||phi(z) - phi(g)|| and phi = identity (embedding space, scale 1)."""
    config = ValueConfig(
        space="embedding",
        objective="quasimetric",
        quasimetric_offset=10.0,
        quasimetric_beta=0.5,
        quasimetric_epsilon=0.25,
    )
    value = GoalValue(2, config)
    z, z_next = (
        torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
        torch.tensor([[3.0, 4.0], [1.0, 1.5]]),
    )  # steps of length 5 and 0.5
    start, end = torch.tensor([[0.0, 0.0]]), torch.tensor([[6.0, 8.0]])  # a pair 10 apart
    push, violation, distance = quasimetric_losses(value, z, z_next, start, end, config)
    assert push.item() == pytest.approx(math.log(2.0) / 0.5, abs=1e-3)  # softplus(0) / beta
    assert violation.item() == pytest.approx((4.0**2 + 0.0) / 2 - 0.25**2, abs=1e-3)
    assert distance.item() == pytest.approx(10.0, abs=1e-3)
    with pytest.raises(ValueError, match="objective"):
        ValueConfig(objective="monte-carlo")


def test_state_pairs_mix_same_episode_and_independent_states():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 4, 40])
    pairs = state_pairs(lengths, rng, 4000, same_episode_share=0.5)
    assert all(
        lengths[e] >= 2 and lengths[f] >= 2 and 0 <= t < lengths[e] and 0 <= j < lengths[f] for e, t, f, j in pairs
    )
    assert np.mean(pairs[:, 0] == 2) == pytest.approx(40 / 44, abs=0.03)
    # independent seconds land in the other episode with probability 2 * (4/44) * (40/44) / 2 per row
    assert np.mean(pairs[:, 0] != pairs[:, 2]) == pytest.approx(0.5 * 2 * (4 / 44) * (40 / 44), abs=0.02)
    same = state_pairs(lengths, rng, 2000, same_episode_share=1.0)
    assert np.all(same[:, 0] == same[:, 2]) and np.all(same[:, 1] != same[:, 3])


def test_quasimetric_value_learns_shortest_paths_across_episodes():
    """Five states on a line, recorded as two episodes that each walk half of it (0-1-2 and
    2-3-4, back and forth): pushed apart as random pairs and held to one step per recorded
    transition, d(0, 4) becomes the shortest path, 4 steps, which no episode walks. The constraint
    has QRL's slack (epsilon 0.25), so a step may measure up to about 1.3."""
    torch.manual_seed(0)
    states = torch.eye(5)
    walks = [[0, 1, 2, 1, 0, 1, 2], [2, 3, 4, 3, 2, 3, 4]]
    episodes = [states[walk] for walk in walks]
    config = ValueConfig(
        objective="quasimetric",
        hidden_size=32,
        projection_size=8,
        batch_size=128,
        learning_rate=3e-3,
        quasimetric_offset=8.0,
        lagrange_learning_rate=0.05,
    )
    value = GoalValue(5, config)
    learner = make_value_learner(value, config, seed=0)
    assert isinstance(learner, QuasimetricLearner)
    for _ in range(1500):
        metrics = learner.update(episodes)
    with torch.no_grad():
        distances = [-value(states[0], states[k]).item() for k in range(5)]
    assert 0.9 < distances[1] < 1.4 and 1.8 < distances[2] < 2.8
    assert 3.5 < distances[4] < 5.4 and distances[1] < distances[2] < distances[3] < distances[4]
    assert metrics["value/lagrange_multiplier"] > 0


def test_hindsight_pairs_stay_inside_episodes_and_look_ahead():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 5, 30])
    triples = hindsight_pairs(lengths, ValueConfig(geometric_goal_fraction=0.5), rng, 2000)
    assert all(lengths[e] >= 2 and 0 <= t < j < lengths[e] for e, t, j in triples)
    assert {e for e, _, _ in triples} == {1, 2}  # a one-step episode has no transition
    share_long = np.mean([e == 2 for e, _, _ in triples])
    assert share_long == pytest.approx(29 / 33, abs=0.03)  # episodes weighted by their transitions
    with pytest.raises(ValueError, match="two or more steps"):
        hindsight_pairs(np.array([1, 1]), ValueConfig(), rng, 4)


CHAIN = spaces.Dict({"vector": spaces.Box(0.0, 1.0, (10,), np.float32)})


@pytest.mark.parametrize("space", ["projection", "embedding"])
def test_value_shaping_trains_the_encoder_to_a_distance(space):
    """On a chain of 10 one-hot states, the value loss through the encoder alone (no JEPA terms)
    makes the embedding distance count steps: V(s2, s3) ~ -1, V(s2, s9) well below (with the
    value a distance in phi's space, or between the embeddings themselves)."""
    torch.manual_seed(0)
    episode = np.eye(10, dtype=np.float32)
    config = ValueConfig(
        space=space,
        hidden_size=32,
        projection_size=8,
        discount=0.9,
        expectile=0.5,
        target_rate=0.05,
        learning_rate=3e-3,
        shaping_scale=1.0,
        shaping_batch_size=128,
    )
    model = JEPAWorldModel(TINY, CHAIN, ACTIONS)
    value = GoalValue(TINY.embedding_size, config)
    shaping = EncoderShaping(model, value, config, seed=0)
    optimizer = torch.optim.Adam([*model.encoder.parameters(), *value.parameters()], lr=3e-3)
    for step in range(400):
        loss, metrics = shaping.loss([episode])
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        optimizer.step()
        shaping.update_targets()
    with torch.no_grad():
        z = model.encode(episode)
        near, far = value(z[2], z[3]).item(), value(z[2], z[9]).item()
    assert near == pytest.approx(-1.0, abs=0.35)
    assert far < near - 2.0
    assert metrics["value/shaping_mean"] < 0


def test_embedding_space_value_is_a_scaled_distance_between_embeddings():
    value = GoalValue(3, ValueConfig(space="embedding"))
    with torch.no_grad():
        value.phi.log_scale.fill_(math.log(2.0))
    z, g = torch.tensor([[3.0, 4.0, 0.0]]), torch.zeros(1, 3)
    assert value(z, g).item() == pytest.approx(-10.0, abs=1e-4)
    assert sum(p.numel() for p in value.parameters()) == 1
    with pytest.raises(ValueError, match="value space"):
        ValueConfig(space="pixels")


def test_the_world_model_objective_adds_the_shaping_loss_only_when_asked():
    from wmlab.pipelines.jepa.pipeline import JEPATraining

    config = JEPAPlannerConfig(
        model=TINY, value=ValueConfig(hidden_size=16, projection_size=8, shaping_scale=0.5, shaping_batch_size=4)
    )
    agent = JEPAPlannerAgent(config, VECTORS, ACTIONS)
    episodes = [np.random.default_rng(0).uniform(-1, 1, (6, 5)).astype(np.float32)]

    def step(objective) -> dict:
        objective.prepare(agent.model)
        loss, metrics = objective.loss(agent.model, make_batch(VECTORS))
        loss.backward()
        objective.after_step(agent.model)
        return metrics

    before = [p.detach().clone() for p in agent.value.parameters()]
    metrics = step(JEPATraining(agent.value, config.value, episodes))
    assert "loss/value_shaping" in metrics and math.isfinite(metrics["loss/value_shaping"])
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.value.parameters()))  # the value head learned too
    assert "loss/value_shaping" not in step(JEPATraining(agent.value, config.value))  # no episodes: JEPA loss only


def test_pipeline_smoke(tmp_path):
    from wmlab.envs.two_rooms import make_two_rooms_pixels
    from wmlab.pipelines.jepa.pipeline import jepa_command, positions_from_frame

    env = make_two_rooms_pixels()
    frame, info = env.reset(seed=3)
    read = positions_from_frame(frame)
    assert np.allclose(read[:2], info["agent"], atol=0.01) and np.allclose(read[4], info["door"][1], atol=0.02)
    assert jepa_command(["--out", str(tmp_path / "jepa"), "--quick"]) == 0
    assert (tmp_path / "jepa" / "results.json").is_file()
    spatial = ["--out", str(tmp_path / "spatial"), "--quick", "--model.encoder-head", "spatial"]
    assert jepa_command([*spatial, "--evaluation.objectives", "distance"]) == 0
    settings = json.loads((tmp_path / "spatial" / "results.json").read_text())["settings"]
    assert settings["agent"]["model"]["encoder_head"] == "spatial"
    hybrid = ["--out", str(tmp_path / "hybrid"), "--quick", "--model.encoder-head", "hybrid"]
    assert jepa_command([*hybrid, "--evaluation.objectives", "value"]) == 0


def quick_arguments(out, objectives=("distance", "value"), seed=0, **changes):
    """`wmlab pipeline jepa --quick` settings without progress bars."""
    from wmlab.pipelines.jepa.pipeline import EvaluationConfig, PipelineArguments, default_training

    return PipelineArguments(
        out=out,
        quick=True,
        evaluation=EvaluationConfig(objectives=objectives),
        train=dataclasses.replace(default_training(), progress=False, seed=seed),
        **changes,
    )


def test_pipeline_smoke_records_trains_and_evaluates_both_objectives(tmp_path):
    """Smoke run of `wmlab pipeline jepa --quick` (numbers meaningless): every stage runs, the
    results name both objectives with rates in [0, 1], and the replanning interval is passed on."""
    from wmlab.pipelines.jepa.pipeline import default_agent, run_pipeline

    results = run_pipeline(quick_arguments(tmp_path, agent=dataclasses.replace(default_agent(), replan_every=1)))
    assert results["settings"]["agent"]["replan_every"] == 1
    evaluations = results["runs"][0]["evaluations"]
    assert [evaluation["objective"] for evaluation in evaluations] == ["distance", "value"]
    assert all(0.0 <= evaluation["success_rate"] <= 1.0 for evaluation in evaluations)
    # a success ends in the goal's room with nothing left to walk; a failure leaves some path
    assert all(evaluation["success_rate"] <= evaluation["reached_goal_room"] <= 1.0 for evaluation in evaluations)
    assert all(
        (evaluation["mean_final_path_length"] > 0.0) == (evaluation["success_rate"] < 1.0) for evaluation in evaluations
    )
    assert (tmp_path / "results.json").is_file() and (tmp_path / "dataset" / "manifest.json").is_file()


def test_the_world_model_stage_is_an_ordinary_offline_run(tmp_path):
    """The pipeline's world model is fitted by the offline trainer into seedK/world-model, a run
    directory `wmlab eval` reads; its weights are the ones the pipeline's agent saved."""
    from wmlab.cli import main
    from wmlab.core.serialization import load_state
    from wmlab.pipelines.jepa.pipeline import run_pipeline
    from wmlab.runs.directory import load_trained_model

    run_pipeline(quick_arguments(tmp_path, ("distance",)))
    run_dir = tmp_path / "seed0" / "world-model"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "offline" and config["model"] == "jepa"
    assert config["dataset"] == str((tmp_path / "dataset").resolve()) and config["train"]["updates"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 3
    _, model = load_trained_model(run_dir)
    saved = load_state(tmp_path / "seed0", "checkpoint")["model"]
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    assert (
        main(["eval", str(run_dir), "--suite", "horizon", "--horizon", "2", "--context", "2", "--sequences", "2"]) == 0
    )
    assert json.loads((run_dir / "eval" / "horizon.json").read_text())["open_loop"]


def test_pipeline_reuse_loads_saved_seeds_and_trains_the_missing_ones(tmp_path):
    """--reuse-checkpoints with more seeds than saved: seed 0's checkpoint is loaded as it was
    (no training time, same weights on disk), seed 1 is trained and saved beside it."""
    from wmlab.pipelines.jepa.pipeline import run_pipeline

    run_pipeline(quick_arguments(tmp_path, ("distance",)))
    saved = (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes()
    results = run_pipeline(quick_arguments(tmp_path, ("distance",), seeds=2, reuse_checkpoints=True))
    first, second = results["runs"]
    assert first["model_seconds"] == 0.0 and first["final_model_metrics"] == {}
    assert "loss/total" in second["final_model_metrics"]  # trained (its seconds may round to 0 at the quick size)
    assert (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes() == saved
    assert (tmp_path / "seed1" / "checkpoint.safetensors").is_file()
    rates = [run["evaluations"][0]["success_rate"] for run in results["runs"]]
    assert results["summary"] == {
        "distance": {
            "success_mean": pytest.approx(np.mean(rates)),
            "success_std": pytest.approx(np.std(rates)),
            "seeds": 2,
        }
    }


def test_pipeline_first_seed_trains_that_seed(tmp_path):
    """--train.seed 2 --seeds 1 trains and evaluates seed 2 only, saved under seed2."""
    from wmlab.pipelines.jepa.pipeline import run_pipeline

    results = run_pipeline(quick_arguments(tmp_path, ("distance",), seed=2))
    assert [run["seed"] for run in results["runs"]] == [2]
    assert (tmp_path / "seed2" / "checkpoint.safetensors").is_file() and not (tmp_path / "seed0").exists()


def test_the_command_line_sets_the_nested_configs():
    """--model.*, --value.*, --planner.*, --data.*, --train.*, --evaluation.* and the agent's own MPC
    settings land in the configs the pipeline composes, with no copy of their fields beside them."""
    import tyro

    from wmlab.pipelines.jepa.pipeline import DataConfig, PipelineArguments

    def parse(*argv):
        return tyro.cli(PipelineArguments, args=list(argv))

    arguments = parse(
        *("--planner.horizon", "15", "--planner.iterations", "10", "--replan-every", "5"),
        *("--value.space", "embedding", "--distance-at-end", "--model.encoder-head", "hybrid"),
        *("--model.layout-size", "8", "--model.loss-scales.covariance", "0.5", "--data.episodes", "30"),
        *("--train.updates", "7", "--evaluation.objectives", "distance"),
    )
    agent = arguments.agent
    assert (agent.planner.horizon, agent.planner.iterations, agent.replan_every) == (15, 10, 5)
    assert agent.distance_at_end and agent.value.space == "embedding"
    assert (agent.model.encoder_head, agent.model.layout_size, agent.model.loss_scales.covariance) == ("hybrid", 8, 0.5)
    assert (arguments.data.episodes, arguments.train.updates, arguments.evaluation.objectives) == (30, 7, ("distance",))
    defaults = parse()
    assert (defaults.train.updates, defaults.train.batch_size, defaults.train.sequence_length) == (3000, 32, 8)
    assert defaults.train.grad_clip == 10.0 and defaults.agent.model.momentum_steps == 3000
    with pytest.raises(SystemExit):
        parse("--planning-horizon", "15")  # the old flat flags are gone
    with pytest.raises(ValueError, match="replan_every"):
        parse("--planner.horizon", "3", "--replan-every", "4")
    with pytest.raises(ConfigError, match="shares of the episodes"):
        DataConfig(sticky_episodes=0.6, wall_episodes=0.5)


def test_evaluation_layouts_must_not_repeat_recorded_ones():
    from wmlab.pipelines.jepa.pipeline import (
        EXTRA_DATASET_SEED,
        DataConfig,
        EvaluationConfig,
        PipelineArguments,
        check_evaluation_layouts,
        run_pipeline,
    )

    def arguments(seed, evaluated=200, recorded=400, extra=0):
        return PipelineArguments(
            evaluation=EvaluationConfig(seed=seed, episodes=evaluated),
            data=DataConfig(episodes=recorded, extra_wall_episodes=extra),
        )

    check_evaluation_layouts(PipelineArguments())  # 100000.. against 0..399
    check_evaluation_layouts(arguments(200_000, extra=300))
    check_evaluation_layouts(arguments(300, recorded=300))  # just after the dataset
    with pytest.raises(ValueError, match="main dataset"):
        check_evaluation_layouts(arguments(250, evaluated=100, recorded=300))
    with pytest.raises(ValueError, match="wall-following"):
        check_evaluation_layouts(arguments(EXTRA_DATASET_SEED - 10, evaluated=20, extra=5))
    check_evaluation_layouts(arguments(EXTRA_DATASET_SEED - 10, evaluated=10, extra=5))
    with pytest.raises(ValueError, match="overlaps"):
        run_pipeline(arguments(0))


def test_sticky_exploration_holds_each_random_action_for_the_drawn_number_of_steps():
    from wmlab.envs.two_rooms import make_two_rooms_pixels
    from wmlab.pipelines.jepa.pipeline import exploration_name, exploration_policy

    env = make_two_rooms_pixels()
    frame, _ = env.reset(seed=0)
    policy, state, actions = exploration_policy(seed=1, sticky_fraction=1.0, hold_steps=(3, 5)), None, []
    for step in range(40):
        action, state = policy({"image": frame[None], "is_first": np.array([step == 0])}, state)
        actions.append(action)
    runs, length = [], 1
    for previous, current in zip(actions, actions[1:]):
        if np.array_equal(previous, current):
            length += 1
        else:
            runs.append(length)
            length = 1
    assert runs and all(3 <= run <= 5 for run in runs)  # the last, unfinished run is left out
    assert exploration_name(0.0) == "noisy-scripted-expert+random" != exploration_name(0.5)
    with pytest.raises(ValueError, match="sticky_fraction"):
        exploration_policy(seed=0, sticky_fraction=1.5)


def test_waypoint_tours_visit_both_rooms_and_move_on_from_each_waypoint():
    from wmlab.envs.two_rooms import make_two_rooms_pixels
    from wmlab.pipelines.jepa.pipeline import exploration_name, exploration_policy

    env = make_two_rooms_pixels(max_episode_steps=200)
    crossings, waypoints = 0, set()
    for episode in range(4):
        frame, _ = env.reset(seed=episode)
        policy, state, side = exploration_policy(seed=episode, waypoint_fraction=1.0), None, None
        for step in range(100):
            action, state = policy({"image": frame[None], "is_first": np.array([step == 0])}, state)
            waypoints.add(tuple(state["waypoint"]))
            frame, _, terminated, truncated, _ = env.step(action)
            x = env.unwrapped.agent_position[0]
            if side is not None and (x > 0.5) != side:
                crossings += 1
            side = x > 0.5
            if terminated or truncated:
                break
    assert crossings >= 4 and len(waypoints) >= 8  # through the door, and on to the next waypoint
    assert exploration_name(0.5, 0.5) not in (exploration_name(0.5), exploration_name(0.0, 0.5))
    with pytest.raises(ValueError, match="waypoint_fraction"):
        exploration_policy(seed=0, sticky_fraction=0.6, waypoint_fraction=0.5)


def test_wall_following_pushes_into_the_wall_at_many_heights_and_finds_the_door():
    from wmlab.envs.two_rooms import make_two_rooms_pixels
    from wmlab.pipelines.jepa.pipeline import exploration_name, exploration_policy

    env = make_two_rooms_pixels(max_episode_steps=200)
    blocked_heights, crossings = [], 0
    for episode in range(4):
        frame, _ = env.reset(seed=episode)
        policy, state = exploration_policy(seed=episode, wall_fraction=1.0), None
        for step in range(100):
            action, state = policy({"image": frame[None], "is_first": np.array([step == 0])}, state)
            before = env.unwrapped.agent_position
            frame, _, terminated, truncated, _ = env.step(action)
            after = env.unwrapped.agent_position
            pushed_into_wall = abs(before[0] - 0.5) < 0.1 and abs(action[0]) > 0.2 and abs(after[0] - before[0]) < 1e-6
            if pushed_into_wall:
                blocked_heights.append(after[1])
            crossings += int((after[0] > 0.5) != (before[0] > 0.5))
            if terminated or truncated:
                break
    assert len(blocked_heights) >= 100  # most of its steps push into the wall
    assert np.ptp(blocked_heights) > 0.4  # at heights spread along it
    assert crossings >= 4  # and the slide finds the door
    assert exploration_name(0.5, 0.0, 0.5) not in (exploration_name(0.5), exploration_name(0.5, 0.5))
    with pytest.raises(ValueError, match="wall_fraction"):
        exploration_policy(seed=0, sticky_fraction=0.6, wall_fraction=0.5)


def test_pipeline_retrains_the_value_of_a_saved_checkpoint_without_touching_it(tmp_path):
    from wmlab.pipelines.jepa.pipeline import run_pipeline

    base = quick_arguments(tmp_path, ("value",))
    run_pipeline(base)
    saved = (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes()
    quasimetric = replace(base.agent, value=replace(base.agent.value, objective="quasimetric"))
    results = run_pipeline(replace(base, reuse_checkpoints=True, retrain_value=True, agent=quasimetric))
    assert "value/lagrange_multiplier" in results["runs"][0]["final_value_metrics"]
    assert (tmp_path / "seed0" / "value-quasimetric.safetensors").is_file()
    assert (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes() == saved
    with pytest.raises(ValueError, match="reuse-checkpoints"):
        run_pipeline(replace(base, retrain_value=True))


def test_pipeline_refines_the_predictor_into_its_own_checkpoint_and_reuses_it(tmp_path):
    from wmlab.core.serialization import load_state
    from wmlab.pipelines.jepa.pipeline import run_pipeline

    base = quick_arguments(tmp_path, ("distance",))
    run_pipeline(base)
    saved = (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes()
    refined = run_pipeline(replace(base, reuse_checkpoints=True, refine_steps=3))["runs"][0]
    assert set(refined["final_refine_metrics"]) == {"refine/teacher_forcing", "refine/rollout"}
    assert (tmp_path / "seed0" / "checkpoint.safetensors").read_bytes() == saved
    original, changed = (
        load_state(tmp_path / "seed0", "checkpoint"),
        load_state(tmp_path / "seed0", "checkpoint-refined"),
    )
    predictor = [key for key in original["model"] if key.startswith("predictor.")]
    encoder = [key for key in original["model"] if key.startswith("encoder.")]
    assert predictor and encoder
    assert any(not torch.equal(original["model"][key], changed["model"][key]) for key in predictor)
    assert all(torch.equal(original["model"][key], changed["model"][key]) for key in encoder)
    again = run_pipeline(replace(base, reuse_checkpoints=True, refine_steps=3, retrain_value=True))["runs"][0]
    assert "final_refine_metrics" not in again and not again["final_value_metrics"]  # loaded: nothing trained again
    assert len(again["evaluations"]) == 1


def test_pipeline_trains_value_and_refinement_on_extra_wall_episodes(tmp_path):
    from wmlab.core.errors import RunDirectoryError
    from wmlab.pipelines.jepa.pipeline import DataConfig, run_pipeline

    base = quick_arguments(tmp_path, ("value",), data=DataConfig(extra_wall_episodes=2), refine_steps=2)
    run = run_pipeline(base)["runs"][0]
    manifest = json.loads((tmp_path / "extra-dataset" / "manifest.json").read_text())
    assert manifest["policy"] == "wall-following" and manifest["num_episodes"] == 2 and manifest["seed"] == 50_000
    assert run["refine_episodes"] == 6 + 2  # the quick run's 6 main episodes and the 2 extra ones
    assert "final_refine_metrics" in run and run["final_value_metrics"]
    with pytest.raises(RunDirectoryError, match="extra-wall-episodes"):
        run_pipeline(replace(base, data=DataConfig(extra_wall_episodes=3)))


def test_pipeline_refuses_a_dataset_recorded_by_another_exploration(tmp_path):
    from wmlab.core.errors import RunDirectoryError
    from wmlab.pipelines.jepa.pipeline import DataConfig, run_pipeline

    run_pipeline(quick_arguments(tmp_path, ("distance",)))
    with pytest.raises(RunDirectoryError, match="sticky"):
        run_pipeline(quick_arguments(tmp_path, ("distance",), data=DataConfig(sticky_episodes=0.5)))

"""The RSSM and its parts: conv / GRU blocks, categorical sampling, KL terms and returns against
hand-computed values, and the model's shapes, resets and losses at a tiny size."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.types import Batch
from wmlab.losses.kl import categorical_kl, gaussian_kl, gaussian_kl_free_nats, kl_balanced, kl_balanced_gaussian
from wmlab.losses.returns import horizon_weighted_returns, lambda_returns, return_scale, update_return_percentiles
from wmlab.models.rssm import RSSM, SIZES, RSSMConfig
from wmlab.nn.categorical import sample_one_hot, unimix_logits
from wmlab.nn.conv import ConvDecoder, ConvEncoder, ConvStages
from wmlab.nn.gru import BlockGRUCell, NormGRUCell

# --------------------------------------------------------------------------------------------
# Building blocks


@pytest.mark.parametrize("kernel, multipliers", [(4, (1, 2, 4, 8)), (5, (2, 3, 4, 4))])
def test_conv_encoder_and_decoder_round_trip_shapes(kernel, multipliers):
    stages = ConvStages(depth=4, multipliers=multipliers, kernel=kernel)
    encoder = ConvEncoder(3, stages)
    images = torch.rand(2, 3, 64, 64)
    features = encoder(images)
    assert encoder.output_shape == (4 * multipliers[-1], 4, 4)
    assert features.shape == (2, encoder.features)
    decoder = ConvDecoder(features.shape[1], 3, stages)
    assert decoder(features).shape == (2, 3, 64, 64)
    with pytest.raises(ShapeError, match=r"expected \(B, 3, 64, 64\)"):
        encoder(torch.rand(2, 64, 64, 3))


def test_gru_cells_keep_their_state_when_the_update_gate_is_shut():
    h = torch.randn(3, 16)
    x = torch.randn(3, 8)
    for cell in (NormGRUCell(8, 16, norm="layer", update_bias=-60.0), BlockGRUCell(8, 16, blocks=4, update_bias=-60.0)):
        assert cell(x, h).shape == (3, 16)
        torch.testing.assert_close(cell(x, h), h)


def test_block_gru_has_blocks_times_fewer_recurrent_weights():
    dense = BlockGRUCell(8, 64, blocks=1, hidden_layers=0)
    blocked = BlockGRUCell(8, 64, blocks=8, hidden_layers=0)
    # the state's weights to the gates: one (H/G, 3H/G) matrix per block instead of (H, 3H)
    assert dense.state_projection.weight.numel() == 64 * 192
    assert blocked.state_projection.weight.numel() == 8 * 8 * 24 == 64 * 192 // 8
    # a block's output depends on its own slice of h only
    h = torch.randn(2, 64, requires_grad=True)
    blocked(torch.randn(2, 8), h)[:, :8].sum().backward()
    assert torch.all(h.grad[:, 8:] == 0) and torch.any(h.grad[:, :8] != 0)
    with pytest.raises(ValueError, match="divisible"):
        BlockGRUCell(8, 60, blocks=8)


def test_straight_through_one_hot_samples_follow_the_probabilities():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p = [0.25, 0.75]
    generator = torch.Generator().manual_seed(0)
    samples = torch.stack([sample_one_hot(logits, generator) for _ in range(4000)])
    values = samples.detach()
    assert torch.allclose(values.round(), values, atol=1e-6) and torch.allclose(values.sum(-1), torch.ones(1))
    assert abs(samples.detach()[..., 1].mean().item() - 0.75) < 0.03
    # the gradient is that of the probabilities: d p_1 / d logit_1 = p_1 (1 - p_1)
    sample_one_hot(logits, generator)[0, 1].backward()
    assert logits.grad[0, 1].item() == pytest.approx(0.75 * 0.25, abs=1e-6)


def test_unimix_bounds_every_probability_from_below():
    logits = torch.tensor([[20.0, -20.0, -20.0, -20.0]])
    probabilities = unimix_logits(logits, 0.01).exp()
    assert probabilities.min().item() == pytest.approx(0.01 / 4, rel=1e-3)
    assert probabilities.sum().item() == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Losses against hand-computed values

HALF = torch.tensor([[[0.0, 0.0]]])  # (1, S=1, K=2): p = [0.5, 0.5]
SKEWED = torch.log(torch.tensor([[[0.8, 0.2]]]))  # q = [0.8, 0.2]
KL_HALF_SKEWED = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # = 0.5 ln 1.5625


def test_categorical_kl_by_hand():
    assert categorical_kl(HALF, SKEWED).item() == pytest.approx(KL_HALF_SKEWED)
    assert KL_HALF_SKEWED == pytest.approx(0.2231436, abs=1e-6)


def test_kl_balancing_weights_and_routes_gradients():
    posterior = HALF.clone().requires_grad_(True)
    prior = SKEWED.clone().requires_grad_(True)
    terms = kl_balanced(posterior, prior, free_nats=0.0, dyn_scale=0.5, rep_scale=0.1)
    assert terms.loss.item() == pytest.approx(0.6 * KL_HALF_SKEWED)
    assert terms.dynamics.item() == pytest.approx(KL_HALF_SKEWED)
    assert terms.representation.item() == pytest.approx(KL_HALF_SKEWED)
    # dyn only trains the prior: d KL(p || q) / d logits_q = q - p, times dyn_scale
    kl_balanced(posterior, prior, 0.0, dyn_scale=0.5, rep_scale=0.0).loss.sum().backward()
    torch.testing.assert_close(prior.grad, 0.5 * torch.tensor([[[0.8 - 0.5, 0.2 - 0.5]]]))
    assert posterior.grad is None or torch.all(posterior.grad == 0)


def test_free_nats_clip_each_term_and_stop_its_gradient():
    posterior = HALF.clone().requires_grad_(True)
    prior = SKEWED.clone().requires_grad_(True)
    terms = kl_balanced(posterior, prior, free_nats=1.0, dyn_scale=0.5, rep_scale=0.1)
    assert terms.loss.item() == pytest.approx(0.6)  # both KLs (0.223) are under 1 nat
    terms.loss.sum().backward()
    assert torch.all(prior.grad == 0) and torch.all(posterior.grad == 0)


def test_gaussian_kl_and_free_nats_by_hand():
    # KL(N(0, 1) || N(1, 2)) = ln 2 + (1 + 1) / 8 - 1/2
    expected = math.log(2.0) + 0.25 - 0.5
    one = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 2 * torch.ones(1, 1)
    assert gaussian_kl(*one).item() == pytest.approx(expected)
    clipped, kl = gaussian_kl_free_nats(*one, free_nats=3.0)
    assert (clipped.item(), kl.item()) == (pytest.approx(3.0), pytest.approx(expected))
    # averaging first (DreamerV1): per-step KLs 1 and 5 average to 3, above free nats 2 -> 3;
    # per-step clipping would give (2 + 5) / 2 = 3.5.
    means = torch.tensor([[math.sqrt(2.0)], [math.sqrt(10.0)]])
    zeros, ones = torch.zeros(2, 1), torch.ones(2, 1)
    assert gaussian_kl_free_nats(means, ones, zeros, ones, free_nats=2.0, average_first=True)[
        0
    ].item() == pytest.approx(3.0)
    assert gaussian_kl_free_nats(means, ones, zeros, ones, free_nats=2.0, average_first=False)[
        0
    ].mean().item() == pytest.approx(3.5)
    balanced = kl_balanced_gaussian(means, ones, zeros, ones, free_nats=0.0, dyn_scale=0.8, rep_scale=0.2)
    torch.testing.assert_close(balanced.loss, torch.tensor([1.0, 5.0]))


def test_lambda_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[4.0, 5.0, 6.0]])
    continues = torch.tensor([[1.0, 1.0, 0.5]])
    bootstrap = torch.tensor([6.0])
    # R_2 = 3 + 0.9 * 0.5 * (0.5 * 6 + 0.5 * 6) = 5.7
    # R_1 = 2 + 0.9 * (0.5 * 5 + 0.5 * 5.7) = 6.815
    # R_0 = 1 + 0.9 * (0.5 * 4 + 0.5 * 6.815) = 5.86675
    returns = lambda_returns(rewards, values, continues, bootstrap, lambda_=0.5, discount=0.9)
    torch.testing.assert_close(returns, torch.tensor([[5.86675, 6.815, 5.7]]))
    # lambda 0: one-step targets r + gamma c v; lambda 1: discounted rewards plus the bootstrap
    torch.testing.assert_close(
        lambda_returns(rewards, values, continues, bootstrap, 0.0, 0.9),
        torch.tensor([[1 + 0.9 * 4, 2 + 0.9 * 5, 3 + 0.45 * 6]]),
    )
    monte_carlo = lambda_returns(rewards, values, torch.ones(1, 3), bootstrap, 1.0, 0.5)
    torch.testing.assert_close(monte_carlo[:, 0], torch.tensor([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 6]))
    with pytest.raises(ShapeError):
        lambda_returns(rewards, values[:, :2], continues, bootstrap, 0.95, 0.99)


def test_horizon_weighted_returns_by_hand():
    returns = torch.tensor([[10.0, 20.0, 30.0]])
    values = torch.tensor([[0.0, 4.0, 8.0]])
    # c = 0.5 ** t = 1, 0.5, 0.25: 10, 0.5 * 20 + 0.5 * 4 = 12, 0.25 * 30 + 0.75 * 8 = 13.5
    torch.testing.assert_close(horizon_weighted_returns(returns, values, 0.5), torch.tensor([[10.0, 12.0, 13.5]]))
    assert horizon_weighted_returns(returns, values, 1.0) is returns
    torch.testing.assert_close(horizon_weighted_returns(returns, values, 0.0), torch.tensor([[10.0, 4.0, 8.0]]))
    with pytest.raises(ValueError, match="confidence_decay"):
        horizon_weighted_returns(returns, values, 1.5)


def test_percentile_return_normalisation_by_hand():
    returns = torch.arange(101.0)  # the 5th and 95th percentiles are 5 and 95
    low, high = update_return_percentiles(returns, torch.tensor(0.0), torch.tensor(0.0), decay=0.99)
    assert (low.item(), high.item()) == (pytest.approx(0.05), pytest.approx(0.95))
    assert return_scale(low, high).item() == 1.0  # a spread below 1 is never scaled up
    low, high = update_return_percentiles(returns, low, high, decay=0.0)
    assert return_scale(low, high).item() == pytest.approx(90.0)


# --------------------------------------------------------------------------------------------
# The model

PIXELS = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
VECTORS = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (5,), np.float32)})
BOTH = spaces.Dict(
    {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "vector": spaces.Box(-np.inf, np.inf, (5,), np.float32)}
)
BOX = spaces.Box(-2.0, 2.0, (2,), np.float32)
DISCRETE = spaces.Discrete(3)
TINY = RSSMConfig(size=SIZES["tiny"], stochastic_size=4)
GAUSSIAN = dataclasses.replace(
    TINY,
    latent="gaussian",
    core="gru",
    gru_norm="none",
    norm="none",
    kl_balancing=False,
    free_nats=3.0,
    free_nats_average_first=True,
    reward_head="mse",
    predict_continue=False,
    symlog_inputs=False,
    vector_loss="mse",
)


def random_batch(observation_space, action_space, B=3, T=6, seed=0) -> Batch:
    rng = np.random.default_rng(seed)
    obs = {}
    for key, space in observation_space.spaces.items():
        if space.dtype == np.uint8:
            obs[key] = rng.integers(0, 256, (B, T, *space.shape), dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=(B, T, *space.shape)).astype(np.float32)
    if isinstance(action_space, spaces.Discrete):
        action = rng.integers(0, action_space.n, (B, T))
    else:
        action = rng.uniform(action_space.low, action_space.high, (B, T, *action_space.shape)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_terminal = np.zeros((B, T), bool)
    is_terminal[0, -1] = True
    return Batch(obs, action, rng.normal(size=(B, T)).astype(np.float32), is_first, is_terminal.copy(), is_terminal)


@pytest.mark.parametrize(
    "config",
    [TINY, GAUSSIAN, dataclasses.replace(TINY, core="gru", overshooting_distance=3)],
    ids=["categorical-blockgru", "gaussian-gru", "overshooting"],
)
@pytest.mark.parametrize("observation_space", [PIXELS, VECTORS, BOTH], ids=["pixels", "vectors", "both"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_rssm_shapes_and_finite_losses(config, observation_space, action_space):
    torch.manual_seed(0)
    model = RSSM(config, observation_space, action_space)
    batch = random_batch(observation_space, action_space)
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and all(math.isfinite(value) for value in metrics.values())
    loss.backward()
    assert all(
        parameter.grad is not None
        for name, parameter in model.named_parameters()
        if not name.startswith("continue_head") or config.predict_continue
    )
    if config.overshooting_distance:
        assert metrics["loss/overshooting"] > 0

    posterior, last = model.observe(batch.obs, batch.action, batch.is_first)
    Z = model.stochastic_features
    assert posterior["deter"].shape == (3, 6, model.deterministic_size) and posterior["stoch"].shape == (3, 6, Z)
    assert last["deter"].shape == (3, model.deterministic_size)
    actions = torch.as_tensor(random_batch(observation_space, action_space, B=3, T=4, seed=1).action)
    trajectory = model.imagine(last, actions, decode=True)
    assert trajectory.rewards.shape == trajectory.continues.shape == (3, 4)
    assert trajectory.states["stoch"].shape == (3, 4, Z)
    for key, space in observation_space.spaces.items():
        assert trajectory.observations[key].shape == (3, 4, *space.shape)
    policy_actions = (
        (lambda state: torch.zeros(3, dtype=torch.long))
        if action_space is DISCRETE
        else (lambda state: torch.zeros(3, 2))
    )
    assert model.imagine(last, policy_actions, horizon=2).actions.shape == (3, 2, model.action_size)


def test_is_first_restarts_the_state_whatever_came_before():
    model = RSSM(TINY, VECTORS, BOX)
    first, second = random_batch(VECTORS, BOX, seed=1), random_batch(VECTORS, BOX, seed=2)
    for batch in (first, second):
        batch.is_first[:, 3] = True
    with torch.no_grad():
        a, _ = model.observe(first.obs, first.action, first.is_first)
        b, _ = model.observe(second.obs, second.action, second.is_first)
    # h at a reset step is f(0, 0, 0): the same for any history
    torch.testing.assert_close(a["deter"][:, 3], b["deter"][:, 3])
    assert not torch.allclose(a["deter"][:, 2], b["deter"][:, 2])


def test_rssm_rejects_bad_inputs_clearly():
    model = RSSM(TINY, PIXELS, BOX)
    batch = random_batch(PIXELS, BOX)
    bad = dataclasses.replace(batch, obs={"image": batch.obs["image"][:, :, :32]})
    with pytest.raises(ShapeError, match=r"obs\['image'\]: expected \(B, T, 64, 64, 3\)"):
        model.loss(bad)
    with pytest.raises(ShapeError, match="action"):
        model.loss(dataclasses.replace(batch, action=batch.action[..., :1]))
    with pytest.raises(IncompatibleSpaceError, match="Discrete 'state'"):
        RSSM(TINY, spaces.Dict({"state": spaces.Discrete(5)}), BOX)
    with pytest.raises(IncompatibleSpaceError, match="finite bounds"):
        RSSM(TINY, VECTORS, spaces.Box(-np.inf, np.inf, (2,), np.float32))


def test_sizes_follow_the_published_table_and_changed_widths_win():
    size200m = SIZES["size200m"]
    assert (size200m.deterministic_size, size200m.hidden_size, size200m.classes) == (8192, 1024, 64)
    model = RSSM(RSSMConfig(size=SIZES.preset("tiny", units=24), stochastic_size=4), VECTORS, BOX)
    assert model.config.size == SIZES.preset("tiny", units=24)
    assert model.reward_head[-1].in_features == 24  # the heads take the changed units
    with pytest.raises(ValueError, match="unknown RSSM size 'size13m'; choose one of tiny, size1m"):
        SIZES["size13m"]
    with pytest.raises(ValueError, match="RSSMSizes.units = 0 is out of range"):
        SIZES.preset("tiny", units=0)

"""Learning in imagination (DIAMOND, IRIS): sparse rewards and ends that the reward / end models
find (wmlab.losses.events), and the shared actor-critic's learning."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.diamond.config import DiamondConfig
from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.agents.imagination.learner import ActorCritic, ImaginationLearner
from wmlab.agents.iris.config import IrisConfig
from wmlab.core.config import from_dict
from wmlab.core.errors import ShapeError
from wmlab.core.types import Batch
from wmlab.losses.events import calibrated_logits, event_weighted_mean
from wmlab.models.diffusion import DiffusionConfig, DiffusionLossScales, DiffusionWorldModel, RewardEndConfig

SIDE = 8
#: A tiny diffusion model of 8 x 8 one-channel frames, whose reward / end model can learn; the
#: compact UNet without middle blocks (the sizes these tests were calibrated at: with the middle
#: attention blocks the plain-mean end model found the ends too, at 2 seeds of 4).
TINY = DiffusionConfig(
    channels=(8, 8),
    depths=(1, 1),
    middle_blocks=0,
    skip_every_block=False,
    action_projection=True,
    condition_size=16,
    context=2,
    reward_end=RewardEndConfig(
        channels=(8, 8), depths=(1, 1), middle_blocks=0, diamond_lstm_init=False, condition_size=8, lstm_size=32
    ),
)


def test_event_weighted_mean_against_hand_computed_values():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    events = torch.tensor([False, True, False, False])
    assert float(event_weighted_mean(losses, events, 1.0)) == pytest.approx(2.5)
    assert float(event_weighted_mean(losses, events, 3.0)) == pytest.approx((1 + 6 + 3 + 4) / 6)
    valid = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert float(event_weighted_mean(losses, events, 3.0, valid)) == pytest.approx((1 + 6 + 4) / 5)
    with pytest.raises(ShapeError, match="one shape"):
        event_weighted_mean(losses, events[:3], 2.0)
    with pytest.raises(ValueError, match="positive"):
        event_weighted_mean(losses, events, 0.0)


def test_calibrated_logits_undo_the_weighting_of_a_fitted_frequency():
    # The weighted cross-entropy of a constant classifier is lowest at odds w times the data's.
    rate, weight = 0.1, 9.0
    fitted = torch.tensor([0.0, math.log(weight * rate / (1 - rate))])  # (no event, event) logits
    probability = calibrated_logits(fitted, (1,), weight).softmax(-1)[1]
    assert float(probability) == pytest.approx(rate, abs=1e-6)
    binary = calibrated_logits(torch.tensor(math.log(weight * rate / (1 - rate))), None, weight)
    assert float(torch.sigmoid(binary)) == pytest.approx(rate, abs=1e-6)
    same = torch.randn(4, 3)
    assert torch.equal(calibrated_logits(same, (0, 2), 1.0), same)


def dot_stream(steps: int, seed: int) -> dict[str, np.ndarray]:
    """One lit pixel at a random place each step; the episode ends when it lands in the bottom
    row (1 step in 8), and a reward of +1 comes when it lands in the top row."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, SIDE, steps)
    columns = rng.integers(0, SIDE, steps)
    images = np.zeros((steps, SIDE, SIDE, 1), np.uint8)
    images[np.arange(steps), rows, columns, 0] = 255
    is_first = np.zeros(steps, bool)
    is_first[0] = True
    is_terminal = rows == SIDE - 1
    is_first[1:] = is_terminal[:-1]
    is_terminal &= ~is_first
    reward = ((rows == 0) & ~is_first).astype(np.float32)
    return {"image": images, "reward": reward, "is_first": is_first, "is_terminal": is_terminal}


def windows(stream: dict[str, np.ndarray], count: int, length: int, rng: np.random.Generator) -> Batch:
    index = rng.integers(0, len(stream["reward"]) - length + 1, count)[:, None] + np.arange(length)
    return Batch(
        {"image": stream["image"][index]},
        np.zeros(index.shape, np.int64),
        stream["reward"][index],
        stream["is_first"][index],
        stream["is_terminal"][index],
        stream["is_terminal"][index],
    )


def train_reward_end(sparse_weight: float) -> dict[str, float]:
    """A tiny reward / end model trained on the dot stream for 100 updates; its scores on
    held-out windows (precision and recall of its calibrated end predictions)."""
    torch.manual_seed(0)
    config = replace(TINY, loss_scales=DiffusionLossScales(sparse_weight=sparse_weight))
    images = spaces.Dict({"image": spaces.Box(0, 255, (SIDE, SIDE, 1), np.uint8)})
    model = DiffusionWorldModel(config, images, spaces.Discrete(2))
    optimizer = torch.optim.Adam(model.reward_end.parameters(), lr=3e-3)
    stream, rng = dot_stream(4000, 0), np.random.default_rng(0)

    def terms(batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return model.reward_end_loss(
            model.to_model_frames(batch.obs["image"], ("B", "T"), {}),
            torch.as_tensor(batch.action),
            torch.as_tensor(batch.reward),
            torch.as_tensor(batch.is_first),
            torch.as_tensor(batch.is_terminal),
        )

    for _ in range(100):
        loss = terms(windows(stream, 16, 2, rng))[0]["end"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {name: float(value) for name, value in terms(windows(dot_stream(2000, 1), 512, 2, rng))[1].items()}


def test_the_weighted_end_model_finds_sparse_ends_that_the_plain_one_misses():
    """Ends in 1 step of 8 that the next frame shows (the dot in the bottom row): with the ends
    weighted 7 times, the end model's calibrated predictions find nearly all of them within 100
    updates; with the plain mean (DIAMOND's) it stays at the base rate ("never ends")."""
    weighted = train_reward_end(7.0)
    assert weighted["wm/end_recall"] > 0.9 and weighted["wm/end_precision"] > 0.9, weighted
    plain = train_reward_end(1.0)
    assert plain["wm/end_recall"] < weighted["wm/end_recall"] - 0.3, plain


def test_the_token_model_weighs_and_calibrates_its_events_too():
    """IRIS's reward and end heads: the same weighting in the loss (events weigh more: with an
    untrained end head, predicting 'no end' everywhere, the weighted end term is larger), and
    the same shift of the logits in imagination."""
    from wmlab.models.tokens import SIZES, TokenLossScales, TokenWorldModel, TokenWorldModelConfig

    images = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    losses = {}
    for weight in (1.0, 9.0):
        torch.manual_seed(0)
        config = TokenWorldModelConfig(
            size=SIZES["tiny"], stages=2, dropout=0.0, loss_scales=TokenLossScales(sparse_weight=weight)
        )
        model = TokenWorldModel(config, images, spaces.Discrete(3)).eval()
        with torch.no_grad():
            model.end_head[-1].bias.fill_(-4.0)  # an end head at a 'never ends' base rate
        rng = np.random.default_rng(0)
        is_first = np.zeros((4, 6), bool)
        is_first[:, 0] = True
        is_terminal = np.zeros((4, 6), bool)
        is_terminal[:, 5] = True
        batch = Batch(
            {"image": rng.integers(0, 256, (4, 6, 16, 16, 3), dtype=np.uint8)},
            np.zeros((4, 6), np.int64),
            np.zeros((4, 6), np.float32),
            is_first,
            is_terminal,
            is_terminal,
        )
        with torch.no_grad():
            losses[weight] = float(model.loss_terms(batch, tokenizer=False)[1]["loss/end"])
        reward, end = model.calibrated(torch.zeros(2, 3), torch.zeros(2))
        assert torch.allclose(end, torch.full((2,), -math.log(weight)))
        assert torch.allclose(reward.softmax(-1)[:, 0], torch.full((2,), 1 / (2 + weight)))
    assert losses[9.0] > 2 * losses[1.0], losses


def test_the_denoiser_loss_weighs_the_pixels_off_the_median_frame():
    """`loss_scales.foreground`: the same noise and network give the plain mean where no target
    differs from the batch's median frame, and a larger loss (the untrained network misses the
    small object everywhere) where a dot moves over a still background."""
    from wmlab.models.diffusion import DiffusionLossScales as Scales

    images = spaces.Dict({"image": spaces.Box(0, 255, (SIDE, SIDE, 1), np.uint8)})
    stream = dot_stream(40, 0)
    still = np.zeros_like(stream["image"])
    results = {}
    for name, frames in (("moving", stream["image"]), ("still", still)):
        for foreground in (0.0, 20.0):
            torch.manual_seed(0)
            config = replace(TINY, loss_scales=Scales(foreground=foreground), targets_per_sequence=4)
            model = DiffusionWorldModel(config, images, spaces.Discrete(2))
            video = model.to_model_frames(frames.reshape(4, 10, SIDE, SIDE, 1), ("B", "T"), {})
            torch.manual_seed(1)
            loss, _ = model.denoising_loss(
                video, torch.zeros(4, 10, dtype=torch.long), torch.zeros(4, 10, dtype=torch.bool), None
            )
            results[name, foreground] = float(loss)
    assert results["still", 20.0] == pytest.approx(results["still", 0.0], rel=1e-6)
    assert results["moving", 20.0] > 1.02 * results["moving", 0.0], results


def test_evaluation_samples_at_its_temperature_without_touching_training_draws():
    config = ImaginationConfig(channels=(4,), lstm_size=8, horizon=2, burn_in=1)
    generator = torch.Generator().manual_seed(3)
    learner = ImaginationLearner(config, (8, 8, 3), 3, torch.device("cpu"), generator)
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(2000, 1)
    state_before = generator.get_state()
    actions = learner.evaluation_action(logits)
    assert torch.equal(generator.get_state(), state_before)  # training's stream untouched
    shares = torch.bincount(actions, minlength=3).float() / len(actions)
    assert torch.allclose(shares, logits[0].softmax(-1), atol=0.04), shares
    # Reseeded from the update count: the same round draws the same actions again, a new round others.
    learner.evaluated_at = None
    assert torch.equal(learner.evaluation_action(logits), actions)
    learner.updates += 1
    assert not torch.equal(learner.evaluation_action(logits), actions)
    cold = ImaginationLearner(replace(config, evaluation_temperature=0.5), (8, 8, 3), 3, torch.device("cpu"), generator)
    colder = torch.bincount(cold.evaluation_action(logits), minlength=3).float() / len(actions)
    assert torch.allclose(colder, (logits[0] / 0.5).softmax(-1), atol=0.04), colder
    greedy = ImaginationLearner(
        replace(config, evaluation_temperature=0.0), (8, 8, 3), 3, torch.device("cpu"), generator
    )
    assert torch.equal(greedy.evaluation_action(logits), torch.zeros(2000, dtype=torch.long))


class ActionPaysItsIndex:
    """A world model whose reward is the action's index and whose episodes never end: the
    imagined return of a rollout is the sum of the actions taken."""

    def initial(self, batch_size: int) -> dict:
        return {"frame": torch.zeros(batch_size, 8, 8, 3)}

    def observe(self, obs, actions, is_first, state):
        return None, {"frame": torch.as_tensor(obs["image"][:, -1]).float() / 255}

    def decode(self, state) -> dict:
        return {"image": state["frame"]}

    def imagine(self, state, policy, horizon: int, **options):
        from wmlab.core.types import Trajectory

        actions = torch.stack([policy(state) for _ in range(horizon)], 1)  # (B, L)
        frames = state["frame"][:, None].expand(-1, horizon, -1, -1, -1)
        return Trajectory(
            states=None,
            actions=actions,
            rewards=actions.float(),
            continues=torch.ones(actions.shape),
            observations={"image": frames},
        )


def test_the_imagined_return_of_the_policy_greedy_and_uniform_leaves_training_draws_alone():
    config = ImaginationConfig(channels=(4,), lstm_size=8, horizon=5, burn_in=2, starts=2)
    generator = torch.Generator().manual_seed(0)
    learner = ImaginationLearner(config, (8, 8, 3), 3, torch.device("cpu"), generator)
    rng = np.random.default_rng(0)
    B = 400  # every row is imagined, not only the `starts` of an update
    batch = Batch(
        obs={"image": rng.integers(0, 255, (B, 2, 8, 8, 3), dtype=np.uint8)},
        action=np.zeros((B, 2), np.int64),
        reward=np.zeros((B, 2), np.float32),
        is_first=np.zeros((B, 2), bool),
        is_terminal=np.zeros((B, 2), bool),
        is_last=np.zeros((B, 2), bool),
    )
    training_state = generator.get_state()
    model = ActionPaysItsIndex()
    uniform = learner.imagined_return(model, batch, "uniform", torch.Generator().manual_seed(1))
    assert uniform["return"] == pytest.approx(5 * 1.0, abs=0.15)  # horizon x mean index of 0, 1, 2
    assert np.allclose(uniform["action_shares"], 1 / 3, atol=0.03)
    greedy = learner.imagined_return(model, batch, "greedy", torch.Generator().manual_seed(1))
    assert greedy["return_std"] >= 0 and sum(greedy["action_shares"]) == pytest.approx(1.0)
    favourite = int(np.argmax(greedy["action_shares"]))
    # every greedy step of the favourite pays its index; the policy's samples lie between
    assert greedy["return"] == pytest.approx(5 * float(np.dot(greedy["action_shares"], range(3))))
    with torch.no_grad():  # raise the favourite's logit: greedy and sampled rollouts pay 5 x its index
        learner.network.actor.bias[favourite] += 50.0
    for policy in ("greedy", "sample"):
        result = learner.imagined_return(model, batch, policy, torch.Generator().manual_seed(2))
        assert result["return"] == pytest.approx(5 * favourite) and result["action_shares"][favourite] == 1.0
    assert torch.equal(generator.get_state(), training_state)
    with pytest.raises(ValueError, match="'uniform'"):
        learner.imagined_return(model, batch, "random", generator)


def test_the_paper_presets_actor_critics_are_diamonds_and_iris_networks_and_older_runs_load():
    """With 4 actions on 64 x 64 frames, DIAMOND's preset has its code's 3,229,637 parameters
    (residual stages with group norm), IRIS's its code's 3,217,957 (convolutions with ReLU); a
    config.json written before the encoder setting existed reads as the plain stages."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(ActorCritic(DiamondConfig().learner, (64, 64, 3), 4)) == 3_229_637
    assert count(ActorCritic(IrisConfig().learner, (64, 64, 3), 4)) == 3_217_957
    relu = [type(layer) for layer in ActorCritic(IrisConfig().learner, (64, 64, 3), 4).encoder]
    assert relu.count(torch.nn.ReLU) == 4 and torch.nn.SiLU not in relu
    plain = replace(ImaginationConfig(), channels=(4, 4), encoder="plain")
    torch.manual_seed(0)
    saved = ActorCritic(plain, (8, 8, 3), 2).state_dict()
    written_before = json.loads(json.dumps(dataclasses.asdict(plain)))
    del written_before["encoder"]
    read = from_dict(ImaginationConfig, written_before)
    assert read == plain
    ActorCritic(read, (8, 8, 3), 2).load_state_dict(saved)  # strict: every weight matches


def test_diamonds_lstm_initialisation_opens_the_forget_gate():
    """DIAMOND's presets initialise their LSTMs as its code does: orthogonal recurrent weights,
    zero biases but the forget gate's input bias at 1; IRIS's and the CPU presets keep torch's."""
    torch.manual_seed(0)
    diamond = ActorCritic(replace(ImaginationConfig(), channels=(4, 4), lstm_size=8), (8, 8, 3), 2).lstm
    recurrent = diamond.weight_hh.data
    assert torch.allclose(recurrent.T @ recurrent, torch.eye(8), atol=1e-5)  # (32, 8): orthonormal columns
    assert torch.equal(diamond.bias_ih.data, torch.tensor([0.0] * 8 + [1.0] * 8 + [0.0] * 16))
    assert torch.equal(diamond.bias_hh.data, torch.zeros(32))
    iris = ActorCritic(replace(IrisConfig().learner, channels=(4, 4), lstm_size=8), (8, 8, 3), 2).lstm
    assert not torch.equal(iris.bias_ih.data[8:16], torch.ones(8))
    images = spaces.Dict({"image": spaces.Box(0, 255, (SIDE, SIDE, 1), np.uint8)})
    config = replace(TINY, reward_end=replace(TINY.reward_end, diamond_lstm_init=True))
    model = DiffusionWorldModel(config, images, spaces.Discrete(2))
    assert torch.equal(model.reward_end.lstm.bias_ih.data[32:64], torch.ones(32))

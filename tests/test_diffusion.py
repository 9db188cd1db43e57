"""The diffusion world model (DIAMOND / GameNGen / guided conditioning), the actor-critic learned on
generated frames, the DIAMOND agent through the CLI, and `wmlab generate`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.diamond.agent import DiamondAgent
from wmlab.agents.diamond.config import DiamondConfig
from wmlab.agents.imagination.config import ACTOR_CRITIC_OPTIMIZER, ImaginationConfig
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.cli import main
from wmlab.core.config import from_dict
from wmlab.core.errors import IncompatibleSpaceError, ShapeError, WmlabError
from wmlab.core.serialization import load_state
from wmlab.core.types import Batch, Trajectory
from wmlab.eval.returns import evaluate_agent
from wmlab.models.diffusion import (
    DiffusionConfig,
    DiffusionWorldModel,
    RewardEndConfig,
    SamplerConfig,
    euler_sample,
    karras_levels,
    preconditioning,
)
from wmlab.nn.spatial_attention import SelfAttention2d
from wmlab.nn.unet import MiddleBlock, UNet
from wmlab.runs.directory import load_trained_agent

TINY = DiffusionConfig(
    channels=(8, 8),
    depths=(1, 1),
    condition_size=16,
    context=2,
    reward_end=RewardEndConfig(channels=(4, 4), depths=(1, 1), condition_size=8, lstm_size=16),
)
SIDE = 8
IMAGES = spaces.Dict({"image": spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8)})
ACTIONS = spaces.Discrete(3)


def make_model(config: DiffusionConfig = TINY, seed: int = 0) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    return DiffusionWorldModel(config, IMAGES, ACTIONS)


def window(images: np.ndarray, actions: np.ndarray) -> Batch:
    """A batch of B episodes from their start: images (B, T, H, W, C), actions (B, T)."""
    B, T = actions.shape
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    zeros = np.zeros((B, T), bool)
    return Batch({"image": images}, actions, np.zeros((B, T), np.float32), is_first, zeros, zeros.copy())


# ----------------------------------------------------------------------------------------------
# EDM


def test_edm_preconditioning_matches_hand_computed_values():
    sigma = torch.tensor([1.0, 2.0, 0.4])
    c_skip, c_out, c_in, c_noise = preconditioning(sigma[:2], sigma_data=0.5)
    # sigma = 1: sigma^2 + sigma_data^2 = 1.25; sigma = 2: 4.25 (EDM Table 1)
    assert c_skip.tolist() == pytest.approx([0.25 / 1.25, 0.25 / 4.25])
    assert c_out.tolist() == pytest.approx([0.5 / math.sqrt(1.25), 1.0 / math.sqrt(4.25)])
    assert c_in.tolist() == pytest.approx([1 / math.sqrt(1.25), 1 / math.sqrt(4.25)])
    assert c_noise.tolist() == pytest.approx([0.0, math.log(2) / 4])
    # DIAMOND counts its offset noise in sigma: sqrt(0.4^2 + 0.3^2) = 0.5
    c_skip, c_out, c_in, c_noise = preconditioning(sigma[2:], sigma_data=0.5, sigma_offset_noise=0.3)
    assert (c_skip.item(), c_out.item(), c_in.item(), c_noise.item()) == pytest.approx(
        (0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5), math.log(0.5) / 4)
    )


def test_karras_levels_fall_from_sigma_max_to_zero():
    levels = karras_levels(5, 0.002, 5.0, 7.0)
    assert levels.shape == (6,)
    assert (
        levels[0].item() == pytest.approx(5.0)
        and levels[-2].item() == pytest.approx(0.002)
        and levels[-1].item() == 0.0
    )
    assert bool((levels[1:] < levels[:-1]).all())
    assert karras_levels(1, 0.002, 5.0, 7.0).tolist() == pytest.approx([5.0, 0.0])


@pytest.mark.parametrize(
    ("order", "churn", "tolerance"),
    [(2, 0.0, 0.015), (2, 10.0, 0.03), (1, 0.0, 0.07), (1, 10.0, 0.12)],
    ids=["heun", "heun-churn", "euler", "euler-churn"],
)
def test_the_sampler_with_the_exact_denoiser_recovers_a_gaussian(order, churn, tolerance):
    """For data N(mu, s^2) the exact denoiser is E[x | x + sigma n] = mu + s^2 / (s^2 + sigma^2) (x - mu);
    sampling with it in 50 steps must give back the data's mean and standard deviation (within
    the first-order Euler method's own discretisation error, about 6 % of the std at 50 steps,
    which Heun's second order removes; churn enlarges the Euler steps, and their error, to about 11 %)."""
    mu, s = 0.3, 0.2

    def exact(x, sigma):
        weight = (s**2 / (s**2 + sigma**2))[:, None]
        return mu + weight * (x - mu)

    config = SamplerConfig(steps=50, sigma_min=0.002, sigma_max=80.0, order=order, churn=churn)
    samples = euler_sample(exact, (4000, 8), config, generator=torch.Generator().manual_seed(0))
    assert samples.mean().item() == pytest.approx(mu, abs=0.01)
    assert samples.std().item() == pytest.approx(s, rel=tolerance)


def test_one_denoising_step_returns_the_denoiser_output():
    config = SamplerConfig(steps=1)
    sample = euler_sample(lambda x, sigma: torch.full_like(x, 0.25), (3, 4), config)
    assert torch.allclose(sample, torch.full((3, 4), 0.25))


# ----------------------------------------------------------------------------------------------
# The model: learning, conditioning, protocol


def two_transitions() -> tuple[Batch, np.ndarray]:
    """One start frame; action 1 leads to an all-red frame, action 2 to an all-blue one."""
    rng = np.random.default_rng(0)
    start = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    red, blue = np.zeros_like(start), np.zeros_like(start)
    red[..., 0] = 220
    blue[..., 2] = 220
    images = np.stack([np.stack([start, red]), np.stack([start, blue])])  # (2, 2, H, W, C)
    return window(images, np.array([[0, 1], [0, 2]])), np.stack([red, blue])


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfitted to two transitions that differ only by the action."""
    model = make_model(replace(TINY, quantize=False))
    batch, targets = two_transitions()
    repeated = Batch(
        {"image": np.repeat(batch.obs["image"], 8, 0)},
        np.repeat(batch.action, 8, 0),
        *(np.repeat(value, 8, 0) for value in (batch.reward, batch.is_first, batch.is_last, batch.is_terminal)),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        loss, _ = model.loss_terms(repeated)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, batch, targets


def predict(model, batch, action: int, seed: int = 0, **options) -> np.ndarray:
    _, state = model.observe({"image": batch.obs["image"][:1, :1]}, batch.action[:1, :1], batch.is_first[:1, :1])
    torch.manual_seed(seed)
    trajectory = model.imagine(state, torch.tensor([[action]]), **options)
    return trajectory.observations["image"][0, 0].numpy()  # (H, W, C) in [0, 1]


def test_a_tiny_model_overfits_one_transition(trained):
    model, batch, targets = trained
    predicted = predict(model, batch, 1)
    error = float(((predicted - targets[0] / 255.0) ** 2).mean())
    assert error < 0.005, error


def test_action_conditioning_changes_the_prediction(trained):
    model, batch, targets = trained
    red, blue = predict(model, batch, 1), predict(model, batch, 2)
    assert float(np.abs(red - blue).mean()) > 0.3
    assert float(((blue - targets[1] / 255.0) ** 2).mean()) < 0.005


@pytest.mark.parametrize("feature_skip", [False, True])
def test_the_feature_skip_lets_the_reward_head_read_the_frames_past_the_lstm(feature_skip):
    """With the LSTM silenced (all its weights zero, so its output is zero for any input), DIAMOND's
    head says the same for every frame pair; with `feature_skip` it still reads the frames."""
    config = replace(TINY, reward_end=replace(TINY.reward_end, feature_skip=feature_skip))
    reward_end = make_model(config).reward_end
    for parameter in reward_end.lstm.parameters():
        parameter.data.zero_()
    torch.manual_seed(1)
    previous, following = torch.rand(2, 4, 3, SIDE, SIDE) * 2 - 1
    hidden = torch.zeros(4, TINY.reward_end.lstm_size)
    with torch.no_grad():
        reward_logits, end_logits, new_hidden, _ = reward_end(
            previous, following, torch.zeros(4, dtype=torch.long), hidden, hidden
        )
    assert torch.equal(new_hidden, hidden)
    spread = float((reward_logits - reward_logits[:1]).abs().max() + (end_logits - end_logits[:1]).abs().max())
    assert (spread > 1e-4) == feature_skip, spread


def test_imagine_samples_a_predictive_distribution_and_follows_the_protocol():
    model = make_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch, _ = two_transitions()
    states, last = model.observe(batch.obs, batch.action, batch.is_first)
    assert states["frames"].shape == (2, 2, 2, 3, SIDE, SIDE) and last["frames"].shape == (2, 2, 3, SIDE, SIDE)
    # filtering is exact: the state decodes to the real frames
    assert np.allclose(model.decode(states)["image"].numpy(), batch.obs["image"] / 255.0, atol=1e-6)
    repeated = {name: value.repeat(4, *[1] * (value.dim() - 1)) for name, value in last.items()}
    trajectory = model.imagine(repeated, torch.zeros(8, 5, dtype=torch.long))
    assert isinstance(trajectory, Trajectory)
    assert trajectory.observations["image"].shape == (8, 5, SIDE, SIDE, 3)
    assert trajectory.rewards.shape == (8, 5) and bool(
        ((trajectory.continues >= 0) & (trajectory.continues <= 1)).all()
    )
    # the imagined state at step l decodes to the frame generated at step l
    assert torch.equal(model.decode(trajectory.states)["image"], trajectory.observations["image"])
    frames = trajectory.observations["image"].reshape(4, 2, 5, -1)
    assert float((frames[1:] - frames[:1]).abs().max()) > 0  # samples from one start differ
    # frames alone (for videos) are the same frames, without rewards
    torch.manual_seed(3)
    with_rewards = model.imagine(last, torch.ones(2, 3, dtype=torch.long))
    torch.manual_seed(3)
    frames_only = model.imagine(last, torch.ones(2, 3, dtype=torch.long), predict_rewards=False)
    assert torch.equal(with_rewards.observations["image"], frames_only.observations["image"])
    assert bool((frames_only.rewards == 0).all()) and bool((frames_only.continues == 1).all())


def test_the_model_runs_as_an_imagined_environment():
    from wmlab.envs.imagined import ImaginedEnv

    model = make_model()
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, SIDE, SIDE, 3), dtype=np.uint8)
    env = ImaginedEnv(model, {"image": frames}, batch_size=2, max_episode_steps=3, observations="decoded", seed=0)
    observation, info = env.reset()
    assert observation["image"].shape == (2, SIDE, SIDE, 3)
    for _ in range(3):
        observation, reward, terminated, truncated, _ = env.step(np.array([0, 2]))
    assert reward.shape == (2,) and bool(env.done.all())
    assert env.render().dtype == np.uint8 and env.render().shape == (2, SIDE, SIDE, 3)


def capture_denoiser_inputs(model):
    seen = []
    original = model.denoiser.prepare  # training and sampling both encode their context here

    def spy(context, actions, bucket=None, condition=None, keep=None):
        seen.append({"context": context.detach().clone(), "bucket": None if bucket is None else bucket.clone()})
        return original(context, actions, bucket, condition, keep)

    model.denoiser.prepare = spy
    return seen


def test_context_noise_is_applied_in_training_and_not_at_sampling():
    config = replace(TINY, context_noise=True, targets_per_sequence=1)
    model = make_model(config)
    seen = capture_denoiser_inputs(model)
    batch, _ = two_transitions()
    many = Batch(
        {"image": np.repeat(batch.obs["image"], 32, 0)},
        np.repeat(batch.action, 32, 0),
        *(np.repeat(value, 32, 0) for value in (batch.reward, batch.is_first, batch.is_last, batch.is_terminal)),
    )
    model.loss_terms(many)
    training = seen[-1]
    clean = torch.as_tensor(many.obs["image"][:, 0]).movedim(-1, -3).float() / 127.5 - 1
    clean_context = (
        torch.cat([torch.zeros_like(clean), clean], 1) / config.sigma_data
    )  # (N, K * C, H, W): zero padding, start
    assert training["bucket"] is not None and int(training["bucket"].max()) > 0
    noisy_rows = training["bucket"] > 0
    differences = (training["context"] - clean_context).flatten(1).abs().amax(1)
    assert bool((differences[noisy_rows] > 0.1).all()) and bool((differences[~noisy_rows] < 1e-5).all())

    seen.clear()
    predict(model, batch, 1)
    assert seen and all(call["bucket"] is None for call in seen)  # bucket 0: clean context
    assert all(torch.allclose(call["context"], clean_context[:1], atol=1e-6) for call in seen)


def conditioned_batch(condition: np.ndarray) -> Batch:
    """two_transitions' windows repeated, each with its conditioning vector (B, 2, D)."""
    batch, _ = two_transitions()
    repeat = condition.shape[0] // batch.action.shape[0]
    obs = {"image": np.repeat(batch.obs["image"], repeat, 0), "condition": condition.astype(np.float32)}
    signals = (batch.reward, batch.is_first, batch.is_last, batch.is_terminal)
    return Batch(obs, np.repeat(batch.action, repeat, 0), *(np.repeat(value, repeat, 0) for value in signals))


def test_condition_standardize_projects_the_standardised_vector_learnt_in_training_only():
    config = replace(TINY, condition_size_input=3, condition_standardize=True)
    model = make_model(config)
    assert make_model(replace(TINY, condition_size_input=3)).denoiser.condition_normalizer is None  # off by default
    generator = np.random.default_rng(0)
    vectors = np.array([5.0, -2.0, 0.5]) + np.array([0.1, 3.0, 0.01]) * generator.standard_normal((64, 2, 3))
    model.eval()
    model.loss_terms(conditioned_batch(vectors))
    assert float(model.denoiser.condition_normalizer.count) == 0  # evaluation losses leave the statistics
    model.train()
    model.loss_terms(conditioned_batch(vectors))
    normalizer = model.denoiser.condition_normalizer
    flat = torch.tensor(vectors.reshape(-1, 3), dtype=torch.float32)
    assert float(normalizer.count) == 128
    assert torch.allclose(normalizer.mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(normalizer.std, flat.std(0, unbiased=False), atol=1e-5)
    # the projection reads the standardised vector
    seen = []
    original = model.denoiser.condition_projection.forward
    model.denoiser.condition_projection.forward = lambda x: seen.append(x) or original(x)
    frames = torch.zeros(4, 2, 3, SIDE, SIDE)
    model.denoise(
        torch.zeros(4, 3, SIDE, SIDE), torch.full((4,), 0.7), frames, torch.zeros(4, 2, dtype=torch.long), flat[:4]
    )
    assert torch.allclose(seen[-1], (flat[:4] - flat.mean(0)) / flat.std(0, unbiased=False), atol=1e-4)
    # the statistics are part of the checkpoint
    restored = make_model(config, seed=1)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.denoiser.condition_normalizer.mean, normalizer.mean)


def test_guidance_scale_one_is_the_conditional_model():
    config = replace(TINY, condition_size_input=3, quantize=False)
    model = make_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(4, 3, SIDE, SIDE, generator=generator)
    sigma = torch.full((4,), 0.7)
    frames = torch.rand(4, 2, 3, SIDE, SIDE, generator=generator) * 2 - 1
    actions = torch.tensor([[0, 1], [1, 2], [2, 0], [1, 1]])
    condition = torch.randn(4, 3, generator=generator)
    with torch.no_grad():
        c_skip, c_out, c_in, c_noise = (
            value[:, None, None, None] for value in preconditioning(sigma, config.sigma_data, config.sigma_offset_noise)
        )
        output = model.denoiser(
            c_in * noisy,
            c_noise[:, 0, 0, 0],
            frames.flatten(1, 2) / config.sigma_data,
            actions,
            None,
            condition,
            torch.ones(4, dtype=torch.bool),
        )
        conditional = c_skip * noisy + c_out * output
        guided_once = model.denoise(noisy, sigma, frames, actions, condition, guidance=1.0)
        unconditional = model.denoise(noisy, sigma, frames, actions, None)
        guided_twice = model.denoise(noisy, sigma, frames, actions, condition, guidance=2.0)
    assert torch.allclose(guided_once, conditional, atol=1e-6)
    assert float((conditional - unconditional).abs().max()) > 1e-3  # the conditioning matters
    assert torch.allclose(guided_twice, 2 * conditional - unconditional, atol=1e-5)
    # dropped in training: some rows use the null embedding
    seen = []
    original = model.denoiser.forward
    model.denoiser.forward = lambda *args: seen.append(args[-1]) or original(*args)
    model.loss_terms(conditioned_batch(np.ones((64, 2, 3))))
    kept = seen[-1]
    assert 0 < int((~kept).sum()) < 64


# ----------------------------------------------------------------------------------------------
# Bad input


def test_the_fast_sampling_path_equals_the_plain_network():
    """The context's input convolution computed once per frame, channels-last activations and the
    fused modulation give the network's output on the concatenated input, in either layout."""
    torch.manual_seed(0)
    unet = UNet(9, 3, (8, 8), (1, 1), 16)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    context, noisy, condition = torch.randn(2, 6, SIDE, SIDE), torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 16)
    with torch.no_grad():
        whole = unet(torch.cat([context, noisy], 1), condition)
        split = unet(noisy, condition, unet.leading_response(context))
        unet.channels_last = False
        plain = unet(torch.cat([context, noisy], 1), condition)
    assert float(whole.abs().max()) > 1e-2 and whole.is_contiguous()
    assert torch.allclose(split, whole, atol=1e-5) and torch.allclose(plain, whole, atol=1e-5)


def test_the_middle_self_attention_is_multi_head_attention_over_the_positions():
    """DIAMOND's middle blocks: heads of 8 channels over the H x W positions, added to the
    normalised input; untrained, the group norm alone. IRIS's form adds to the input instead."""
    torch.manual_seed(0)
    attention = MiddleBlock(16, 4).attention
    x = torch.randn(2, 16, 3, 5)
    h = attention.norm(x)
    assert attention.heads == 2 and torch.equal(attention(x), h)
    torch.nn.init.normal_(attention.output.weight)
    q, k, v = attention.qkv(h).flatten(2).chunk(3, dim=1)  # (B, C, HW) each, heads of 8 channels
    heads = []
    for head in range(2):
        part = slice(8 * head, 8 * head + 8)
        weights = torch.softmax(q[:, part].transpose(1, 2) @ k[:, part] / math.sqrt(8), dim=-1)  # (B, HW, HW)
        heads.append(v[:, part] @ weights.transpose(1, 2))  # (B, 8, HW)
    attended = attention.output(torch.cat(heads, 1).reshape(2, 16, 3, 5))
    assert torch.allclose(attention(x), h + attended, atol=1e-5)
    attention.add_to = "input"
    assert torch.allclose(attention(x), x + attended, atol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        SelfAttention2d(17, heads=2)


def test_the_paper_preset_has_diamonds_networks_and_an_older_run_loads_without_their_new_parts():
    """The paper preset's UNet (between its input and output convolutions), denoiser and reward
    encoder have exactly the parameter counts of DIAMOND's code (its Atari configuration:
    4,263,552, 4,405,955 and 388,160: the middle attention blocks, the way up that takes a skip
    at every block, the action embeddings summed without a projection); a config.json written
    before those settings existed reads as wmlab's earlier networks, so an older run's checkpoint
    still loads."""
    images = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    paper = DiffusionWorldModel(DiffusionConfig(), images, spaces.Discrete(4))
    count = lambda *modules: sum(p.numel() for module in modules for p in module.parameters())  # noqa: E731
    unet = paper.denoiser.unet
    assert count(unet) - count(unet.encoder.input, unet.output_norm, unet.output) == 4_263_552
    assert count(paper.denoiser) == 4_405_955  # DIAMOND's InnerModel
    assert count(paper.reward_end.encoder) == 388_160
    older = replace(
        TINY,
        middle_blocks=0,
        skip_every_block=False,
        action_projection=True,
        reward_end=replace(TINY.reward_end, middle_blocks=0),
    )
    saved = make_model(older).state_dict()
    written_before = json.loads(json.dumps(dataclasses.asdict(older)))
    for name in ("middle_blocks", "skip_every_block", "action_projection"):
        del written_before[name]
    del written_before["reward_end"]["middle_blocks"]
    read = from_dict(DiffusionConfig, written_before)
    assert read == older
    DiffusionWorldModel(read, IMAGES, ACTIONS).load_state_dict(saved)  # strict: every weight matches
    assert from_dict(DiffusionConfig, json.loads(json.dumps(dataclasses.asdict(TINY)))) == TINY


def test_a_frame_size_the_unet_cannot_take_is_refused():
    odd = spaces.Dict({"image": spaces.Box(0, 255, (60, 60, 3), np.uint8)})
    with pytest.raises(IncompatibleSpaceError, match="multiples of 8"):
        DiffusionWorldModel(replace(TINY, channels=(4, 4, 4, 4), depths=(1, 1, 1, 1)), odd, ACTIONS)
    with pytest.raises(ShapeError, match="multiples of 4, got 6 x 6"):
        UNet(3, 3, (4, 4, 4), (1, 1, 1), 8)(torch.zeros(1, 3, 6, 6), torch.zeros(1, 8))


def test_a_context_length_the_checkpoint_was_not_trained_for_is_refused():
    model = make_model()  # context 2
    other = make_model(replace(TINY, context=4, condition_size=16))
    with pytest.raises(ShapeError, match="trained with a context of 2 frames"):
        other.load_state_dict(model.state_dict())
    with pytest.raises(ShapeError, match="context of 4 frames"):
        other.imagine(model.initial(1), torch.zeros(1, 3, dtype=torch.long))


def test_zero_or_too_many_denoising_steps_are_refused():
    model = make_model()
    for steps in (0, 51):
        with pytest.raises(ValueError, match="denoising steps must be between 1 and 50"):
            model.imagine(model.initial(1), torch.zeros(1, 2, dtype=torch.long), denoising_steps=steps)
    with pytest.raises(ValueError, match="denoising steps"):
        DiffusionWorldModel(replace(TINY, sampler=SamplerConfig(steps=0)), IMAGES, ACTIONS)


def test_conditioning_for_a_model_trained_without_it_is_refused():
    model = make_model()
    with pytest.raises(WmlabError, match="trained without conditioning"):
        model.imagine(model.initial(1), torch.zeros(1, 2, dtype=torch.long), condition=torch.zeros(1, 4))
    batch, _ = two_transitions()
    with pytest.raises(WmlabError, match="trained without conditioning"):
        model.observe({**batch.obs, "condition": np.zeros((2, 2, 4), np.float32)}, batch.action, batch.is_first)


def test_continuous_actions_are_refused():
    box = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(IncompatibleSpaceError, match="two-rooms-discrete"):
        DiamondAgent(DiamondConfig(model=TINY), IMAGES, box, seed=0)


# ----------------------------------------------------------------------------------------------
# The actor-critic learned on generated frames takes any world model with the small interface


class BanditDream:
    """A world model of the interface only: constant frames, reward 1 for action 1, 0 otherwise."""

    def initial(self, batch_size):
        return {"frame": torch.zeros(batch_size, SIDE, SIDE, 3)}

    def observe(self, obs, action, is_first, state):
        frames = torch.as_tensor(obs["image"]).float() / 255
        return {"frame": frames}, {"frame": frames[:, -1]}

    def decode(self, state):
        return {"image": state["frame"]}

    def imagine(self, state, policy, horizon):
        actions = []
        for _ in range(horizon):
            actions.append(policy(state))
        actions = torch.stack(actions, 1)
        B = actions.shape[0]
        frames = state["frame"][:, None].expand(B, horizon, SIDE, SIDE, 3)
        return Trajectory({"frame": frames}, actions, (actions == 1).float(), torch.ones(B, horizon), {"image": frames})


def test_the_imagination_learner_learns_from_any_world_model_of_its_interface():
    torch.manual_seed(0)
    config = ImaginationConfig(
        channels=(4, 4),
        lstm_size=16,
        horizon=4,
        burn_in=2,
        optimizer=replace(ACTOR_CRITIC_OPTIMIZER, learning_rate=3e-3, warmup=0),
        entropy_weight=0.0,
        discount=0.9,
    )
    learner = ImaginationLearner(config, (SIDE, SIDE, 3), 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    images = np.random.default_rng(0).integers(0, 256, (16, 3, SIDE, SIDE, 3), dtype=np.uint8)
    batch = window(images, np.zeros((16, 3), np.int64))
    for _ in range(150):
        metrics = learner.update(BanditDream(), batch)
    logits, _, _ = learner.network(
        torch.as_tensor(images[:, 0]).float() / 255, learner.network.initial(16, torch.device("cpu"))
    )
    assert float(logits.softmax(-1)[:, 1].mean()) > 0.8
    assert metrics["ac/imagined_reward"] > 3.0


# ----------------------------------------------------------------------------------------------
# Through the CLI and the loop

TINY_ARGUMENTS = [
    "--env-kwargs",
    '{"image_size": 16, "max_episode_steps": 20, "reward": "dense"}',
    "--train.steps",
    50,
    "--train.learning-starts",
    30,
    "--train.batch-size",
    2,
    "--train.sequence-length",
    5,
    "--train.train-ratio",
    10,
    "--train.eval-every",
    0,
    "--train.eval-episodes",
    1,
    "--train.log-every",
    25,
    "--train.checkpoint-every",
    50,
    "--train.no-progress",
    "--train.no-tensorboard",
    "--agent.model.channels",
    8,
    8,
    "--agent.model.depths",
    1,
    1,
    "--agent.model.condition-size",
    16,
    "--agent.model.reward-end.channels",
    4,
    4,
    "--agent.model.reward-end.depths",
    1,
    1,
    "--agent.model.reward-end.lstm-size",
    16,
    "--agent.learner.channels",
    4,
    4,
    "--agent.learner.lstm-size",
    16,
    "--agent.learner.horizon",
    3,
    "--agent.learner.starts",
    2,
    "--agent.actor-critic-starts",
    2,
]


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def test_cli_smoke_diamond_cpu_then_eval_generate_and_resume(tmp_path):
    run_dir = tmp_path / "diamond"
    assert (
        run_cli("train", "--algo", "diamond-cpu", "--env", "two-rooms-discrete", "--run-dir", run_dir, *TINY_ARGUMENTS)
        == 0
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 50 and summary["updates"] > 2
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/denoising" in line and "loss/actor" in line for line in lines)
    assert (run_dir / "videos" / "open_loop_image.gif").is_file()
    # the evaluation suites see a predictive distribution
    assert (
        run_cli(
            "eval", run_dir, "--suite", "calibration", "--sequences", 2, "--horizon", 3, "--samples", 3, "--context", 4
        )
        == 0
    )
    assert json.loads((run_dir / "eval" / "calibration.json").read_text())["calibratable"] is True
    out = tmp_path / "video" / "dream.mp4"
    assert run_cli("generate", run_dir, "--steps", 6, "--denoising-steps", 1, "--out", out) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".png").is_file()
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["denoising_steps"] == 1 and len(report["psnr"]) == 6 and report["frames_per_second"] > 0
    assert (
        run_cli(
            "generate",
            run_dir,
            "--steps",
            6,
            "--denoising-steps",
            0,
            "--churn",
            1.0,
            "--actions",
            "policy",
            "--out",
            out,
        )
        == 0
    )
    assert run_cli("train", "--resume", run_dir, "--train.steps", 60, "--train.no-progress") == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 60


def test_a_resumed_diamond_run_equals_an_uninterrupted_one(straight_and_resumed, tmp_path):
    learner = ImaginationConfig(channels=(4, 4), lstm_size=16, horizon=3, starts=2)
    agent = DiamondConfig(
        model=replace(TINY, context=2),
        learner=replace(learner, burn_in=2),
        actor_critic_starts=1,
        open_loop_report=False,
    )
    straight, resumed = straight_and_resumed(
        "diamond-cpu", agent, {"image_size": 8, "max_episode_steps": 15, "reward": "dense"}
    )
    for key in ("env_steps", "updates", "episodes"):
        assert resumed[key] == straight[key], key
    # The final evaluations ran on other episode seeds (the stopped half evaluated once before
    # resuming, and each evaluation takes new seeds): the two policies, on the same seeds.
    returns = [
        evaluate_agent(agent, spec.env, 2, 0, spec.env_kwargs)["eval/return"]
        for spec, agent in (load_trained_agent(tmp_path / name) for name in ("straight", "resumed"))
    ]
    assert returns[0] == returns[1]
    a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")
    b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")
    for name, tensor in a["world_model"].items():
        assert torch.equal(tensor, b["world_model"][name]), name
    for name, tensor in a["learner"]["network"].items():
        assert torch.equal(tensor, b["learner"]["network"][name]), name


def test_two_rooms_with_discrete_moves():
    from wmlab.envs.adapter import make_env

    env = make_env("two-rooms-discrete", max_episode_steps=5)
    assert isinstance(env.action_space, spaces.Discrete) and env.action_space.n == 5
    _, info = env.reset(seed=0)
    start = np.array(info["agent"])
    _, _, _, _, info = env.step(2)  # down
    assert info["agent"][1] < start[1] and info["agent"][0] == pytest.approx(start[0])
    with pytest.raises(ValueError, match="index in \\[0, 5\\)"):
        env.step(7)
    assert env.unwrapped.get_action_meanings() == ["NOOP", "UP", "DOWN", "LEFT", "RIGHT"]
    with pytest.raises(ValueError, match="continuous"):
        make_env("two-rooms").unwrapped.get_action_meanings()


# ----------------------------------------------------------------------------------------------
# UniSim: instructions instead of actions


class HashEncoder:
    """A deterministic stand-in for the sentence encoder: the same text, the same unit vector."""

    dim = 6

    def encode(self, texts):
        rows = [torch.Generator().manual_seed(sum(map(ord, text)) * 31 + len(text)) for text in texts]
        return torch.nn.functional.normalize(
            torch.stack([torch.randn(self.dim, generator=row) for row in rows]), dim=-1
        )


def test_instruction_dataset_trains_and_guides_a_text_conditioned_model(tmp_path):
    from wmlab.data.captions import load_captioned, record_captioned_two_rooms
    from wmlab.data.dataset import load_dataset
    from wmlab.data.instructions import write_instruction_dataset

    record_captioned_two_rooms(tmp_path / "captioned", episodes=2, seed=0, max_episode_steps=10)
    manifest = write_instruction_dataset(tmp_path / "captioned", tmp_path / "instructions", HashEncoder())
    dataset = load_dataset(tmp_path / "instructions")
    assert dataset.action_space == spaces.Discrete(1) and dataset.observation_space["condition"].shape == (6,)
    # Row t's condition is the embedding of row t's caption.
    captions = load_captioned(tmp_path / "instructions").captions[0]
    episode = next(dataset.episodes())
    assert np.allclose(episode["condition"][3], HashEncoder().encode([captions[3]])[0].numpy(), atol=1e-6)
    assert set(manifest["instructions"]) == {
        caption for steps in load_captioned(tmp_path / "captioned").captions for caption in steps
    }

    config = replace(TINY, channels=(8, 8, 8), depths=(1, 1, 1), condition_size_input=6)
    torch.manual_seed(0)
    model = DiffusionWorldModel(config, dataset.observation_space, dataset.action_space)
    loss, metrics = model.loss(dataset.sample(4, 6))
    assert math.isfinite(float(loss)) and metrics["wm/denoising_targets"] == 4
    _, state = model.observe(
        {key: episode[key][None, :2] for key in ("image", "condition")},
        episode["action"][None, :2],
        episode["is_first"][None, :2],
    )
    text = HashEncoder().encode(["move left"])
    rollout = model.imagine(state, torch.zeros(1, 3, dtype=torch.long), condition=text, guidance=3.0)
    assert rollout.observations["image"].shape == (1, 3, 64, 64, 3)


def test_generate_refuses_an_instruction_for_a_model_trained_without_text():
    from wmlab.eval.generation import instruction_options

    with pytest.raises(WmlabError, match="trained without text"):
        instruction_options(make_model(), "move left", 3.0)
    assert instruction_options(make_model(), "", 3.0) == {}

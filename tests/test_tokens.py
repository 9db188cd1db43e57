"""Token world models (IRIS, GAIA-1 in small) and their building blocks: the vector quantiser,
the transformer (causal mask, key-value cache, adaLN-zero), the tokenizer's round trip, cached
against uncached imagination, overfitting a fixed sequence, conditioning and guidance, the
evaluation suites through the WorldModel protocol, and bad inputs."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import WorldModel
from wmlab.core.registry import MODELS
from wmlab.core.types import Batch
from wmlab.eval.suites import SuiteSettings, evaluate_suite
from wmlab.models.tokens import SIZES, TokenWorldModel, TokenWorldModelConfig
from wmlab.nn.transformer import SpatioTemporalBlock, Transformer, TransformerConfig
from wmlab.nn.vq import VectorQuantizer

torch.set_num_threads(1)

SIDE = 16  # 16 x 16 frames, 2 stages: 4 x 4 = 16 tokens, as IRIS's 64 x 64 with 4 stages
SMALL = spaces.Dict({"image": spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8)})
TINY = TokenWorldModelConfig(size=SIZES["tiny"], stages=2, dropout=0.0, dead_code_threshold=0.0)


def moving_square_frames(steps: int, seed: int = 0) -> np.ndarray:
    """(steps, 16, 16, 3) uint8: a 4 x 4 red square moving on a dark background past a grey bar."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((steps, SIDE, SIDE, 3), np.uint8)
    frames[..., 2] = 40
    frames[:, :, 7:9] = 150
    x, y = rng.integers(0, SIDE - 4, 2)
    for t in range(steps):
        frames[t, y : y + 4, x : x + 4] = (230, 60, 50)
        x = (x + 3) % (SIDE - 4)
        y = (y + 1 + t % 2) % (SIDE - 4)
    return frames


def sequence_batch(steps: int = 8, batch: int = 1, actions: int = 3, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    frames = np.stack([moving_square_frames(steps, seed + row) for row in range(batch)])
    is_first = np.zeros((batch, steps), bool)
    is_first[:, 0] = True
    reward = rng.choice([-1.0, 0.0, 1.0], size=(batch, steps)).astype(np.float32)
    reward[:, 0] = 0
    terminal = np.zeros((batch, steps), bool)
    terminal[:, -1] = True
    return Batch(
        obs={"image": frames},
        action=rng.integers(0, actions, (batch, steps)),
        reward=reward,
        is_first=is_first,
        is_last=terminal.copy(),
        is_terminal=terminal,
    )


def record_head_outputs(model: TokenWorldModel) -> list[torch.Tensor]:
    """Remember every output of the token head: the logits of each pass before guidance mixes them."""
    seen: list[torch.Tensor] = []
    model.token_head.register_forward_hook(lambda module, inputs, output: seen.append(output.clone()))
    return seen


def count_fed_tokens(model: TokenWorldModel) -> list[int]:
    """Make the transformer remember how many tokens each call feeds it."""
    fed: list[int] = []
    model.transformer.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0].shape[1]))
    return fed


def record_logits(model: TokenWorldModel) -> list[torch.Tensor]:
    """Make `model.sample` remember every logits it samples from."""
    seen: list[torch.Tensor] = []
    original = TokenWorldModel.sample

    def sample(logits, temperature, generator=None):
        seen.append(logits.clone())
        return original(logits, temperature, generator)

    model.sample = sample
    return seen


# ------------------------------------------------------------------------------ vector quantiser


def test_quantiser_straight_through_losses_and_metrics():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, beta=0.25)
    z = torch.randn(5, 3, 4, requires_grad=True)
    result = quantizer(z)
    assert result.indices.shape == (5, 3) and result.quantized.shape == (5, 3, 4)
    codes = quantizer.codebook.weight[result.indices]
    assert torch.allclose(result.quantized, codes, atol=1e-6)  # forward: the codes
    expected = (z.detach() - codes).pow(2).mean()
    assert result.codebook_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert result.loss.item() == pytest.approx(1.25 * expected.item(), rel=1e-5)
    result.quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # backward: straight through
    assert 1.0 <= result.perplexity.item() <= 8.0 and 0 < result.usage.item() <= 1.0
    # The nearest code is the argmin of the distances.
    distances = torch.cdist(z.detach().reshape(-1, 4), quantizer.codebook.weight)
    assert torch.equal(result.indices.reshape(-1), distances.argmin(-1))


def test_dead_codes_restart_on_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 2, dead_code_threshold=0.5, usage_decay=0.5)
    data = torch.randn(64, 2) * 0.01 + torch.tensor([5.0, 5.0])  # far from every initial code
    restarted = sum(quantizer(data).restarted for _ in range(4))
    assert restarted > 0
    # Restarted codes sit on the data, so the data now spreads over several codes.
    assert quantizer(data).perplexity.item() > 1.5
    quantizer.eval()
    assert quantizer(data).restarted == 0  # never in evaluation


def test_error_targeted_restarts_go_to_the_worst_represented_encodings():
    """restart_on="error": a rare vector far from its code (a small object sharing the
    background's code) gets the restarted codes; uniform restarts land on the common vectors."""
    common = torch.zeros(200, 2)
    rare = torch.tensor([[4.0, 4.0]])
    encodings = torch.cat([common, rare])
    errors = encodings.pow(2).sum(-1)  # every vector is quantised to a code at the origin
    for restart_on, expected in (("error", 1.0), ("random", 0.0)):
        torch.manual_seed(0)
        quantizer = VectorQuantizer(8, 2, dead_code_threshold=0.5, restart_on=restart_on)
        quantizer.average_usage[4:] = 0.0  # four dead codes
        assert quantizer.restart_dead_codes(encodings, errors) == 4
        moved = quantizer.codebook.weight[4:]
        near_rare = ((moved - rare).norm(dim=-1) < 0.1).float().mean().item()
        assert near_rare == expected
    with pytest.raises(ValueError, match="restart_on"):
        VectorQuantizer(8, 2, restart_on="nearest")


def test_foreground_weights_mark_pixels_off_the_background():
    from wmlab.models.tokens import TokenLossScales

    config = TokenWorldModelConfig(size=SIZES["tiny"], loss_scales=TokenLossScales(foreground=20.0))
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3))
    frames = torch.as_tensor(moving_square_frames(6)).permute(0, 3, 1, 2).float() / 255  # (6, 3, 16, 16)
    weights = model.foreground_weights(frames)
    square = (frames - torch.tensor([0, 0, 40 / 255])[:, None, None]).abs().amax(1, keepdim=True) > 0.5
    square &= ~(frames[:, :1] > 0.5).all(0, keepdim=True)  # the grey bar is background
    assert weights.shape == (6, 1, 16, 16) and set(weights.unique().tolist()) == {1.0, 21.0}
    assert torch.equal(
        weights == 21.0, (frames - frames.median(0, keepdim=True).values).abs().amax(1, keepdim=True) > 0.1
    )
    assert (weights[square] == 21.0).float().mean() > 0.9  # the moving square is foreground
    assert torch.equal(
        TokenWorldModel(TINY, SMALL, spaces.Discrete(3)).foreground_weights(frames), torch.ones(6, 1, 16, 16)
    )


def test_quantiser_refuses_bad_tokens_and_shapes():
    quantizer = VectorQuantizer(8, 4)
    with pytest.raises(ShapeError, match=r"\[0, 8\)"):
        quantizer.lookup(torch.tensor([8]))
    with pytest.raises(ShapeError, match="expected"):
        quantizer(torch.zeros(3, 5))


# ------------------------------------------------------------------------------ transformer


def test_causal_mask_later_tokens_never_change_earlier_outputs():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(layers=2, heads=2, width=16, max_tokens=32)).eval()
    x = torch.randn(2, 12, 16)
    changed = x.clone()
    changed[:, 7:] = torch.randn(2, 5, 16)
    before, after = model(x), model(changed)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-3)
    bidirectional = Transformer(TransformerConfig(layers=2, heads=2, width=16, max_tokens=32, causal=False)).eval()
    assert not torch.allclose(bidirectional(x)[:, :7], bidirectional(changed)[:, :7], atol=1e-4)


def test_key_value_cache_matches_the_full_forward():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(layers=3, heads=4, width=32, max_tokens=40)).eval()
    x = torch.randn(3, 20, 32)
    cache = model.new_cache(3)
    pieces = [model(x[:, :5], cache=cache)] + [model(x[:, t : t + 1], cache=cache) for t in range(5, 20)]
    assert torch.allclose(torch.cat(pieces, 1), model(x), atol=1e-5)
    with pytest.raises(ShapeError, match="max_tokens"):
        model(torch.randn(3, 21, 32), cache=cache)


def test_adaln_zero_starts_as_identity_and_learns_to_condition():
    torch.manual_seed(0)
    config = TransformerConfig(layers=1, heads=2, width=16, max_tokens=8, condition_size=4, causal=False)
    block = Transformer(config).blocks[0]
    x = torch.randn(2, 5, 16)
    assert torch.allclose(block(x, torch.randn(2, 4)), x)  # zero-initialised gates
    with pytest.raises(ShapeError, match="condition"):
        block(x)
    torch.nn.init.normal_(block.modulation[1].weight)
    assert not torch.allclose(block(x, torch.zeros(2, 4) + 1), block(x, torch.zeros(2, 4) - 1))


def test_spatio_temporal_block_is_causal_in_time():
    torch.manual_seed(0)
    block = SpatioTemporalBlock(TransformerConfig(heads=2, width=16, causal=True)).eval()
    x = torch.randn(2, 4, 6, 16)
    changed = x.clone()
    changed[:, 2:] += 1.0
    out, out_changed = block(x), block(changed)
    assert out.shape == x.shape
    assert torch.allclose(out[:, :2], out_changed[:, :2], atol=1e-6)


# ------------------------------------------------------------------------------ the token model


def test_registered_and_implements_the_protocol():
    assert MODELS.get("tokens").load() is TokenWorldModel
    model = TokenWorldModel(TINY, SMALL, spaces.Discrete(3))
    assert isinstance(model, WorldModel) and model.can_decode
    assert model.tokens_per_frame == 16


@pytest.mark.parametrize("encoder", ["conv", "vqgan"])
def test_tokenizer_round_trips_a_fitted_frame_set(encoder):
    """Both convolutional tokenizers (IRIS's VQGAN with attention at the 4 x 4 and 8 x 8 maps)."""
    torch.manual_seed(0)
    config = TokenWorldModelConfig(
        size=SIZES.preset("tiny", codebook_size=128, channels=16),
        stages=2,
        dropout=0.0,
        dead_code_threshold=0.1,
        encoder=encoder,
        attention_sides=(4, 8),
    )
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3))
    frames = moving_square_frames(8)
    images = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    optimiser = torch.optim.Adam(model.tokenizer.parameters(), lr=3e-3)
    scales = config.loss_scales
    for _ in range(250):
        terms, _, _ = model.tokenizer_terms(images)
        loss = sum(getattr(scales, name) * value for name, value in terms.items())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    tokens, _ = model.tokenize(frames)
    decoded = model.decode({"tokens": tokens})["image"]
    error = (decoded - torch.as_tensor(frames).float() / 255).pow(2).flatten(1).mean(-1)
    psnr = (-10 * error.log10()).mean().item()
    assert psnr > 24.0, f"round-trip PSNR {psnr:.1f} dB"


def test_the_paper_preset_has_iris_networks():
    """IRIS's preset on 64 x 64 frames with 4 actions: the tokenizer has the authors' 4,027,523
    parameters (VQGAN encoder and decoder with attention at 8 x 8 and 16 x 16, pre- and
    post-quantisation convolutions, 512 codes of 512) and the transformer their 7,898,112 plus
    the 340 x 256 position embedding; 16 tokens a frame, decoded back to 64 x 64."""
    from wmlab.agents.iris.config import IrisConfig

    torch.manual_seed(0)
    images = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    model = TokenWorldModel(IrisConfig().model, images, spaces.Discrete(4))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.tokenizer) == 4_027_523
    assert count(model.transformer) == 7_898_112 + 340 * 256
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    tokens, _ = model.tokenize(frames)
    assert tokens.shape == (2, 16) and model.decode({"tokens": tokens})["image"].shape == (2, 64, 64, 3)


def test_patch_encoder_gives_each_patch_its_own_token():
    """With encoder="patch" a token is a function of its own 4 x 4 patch alone: a change in one
    patch changes that patch's token at most, and a repeated patch always gets the same token;
    the conv encoder (IRIS's) lets a change reach the neighbours' encodings."""
    torch.manual_seed(0)
    patch = TokenWorldModel(replace(TINY, encoder="patch"), SMALL, spaces.Discrete(3)).eval()
    conv = TokenWorldModel(TINY, SMALL, spaces.Discrete(3)).eval()
    frame = moving_square_frames(1)[0]
    changed = frame.copy()
    changed[0, 0] = (255, 255, 255)  # one pixel of the top-left patch
    with torch.no_grad():
        encodings = {
            name: [
                model.tokenizer.encoder(torch.as_tensor(f[None]).permute(0, 3, 1, 2).float() / 255)
                for f in (frame, changed)
            ]
            for name, model in (("patch", patch), ("conv", conv))
        }
    moved = {name: (a - b).abs().amax(1).flatten() for name, (a, b) in encodings.items()}  # (16,) per token
    assert moved["patch"][0] > 0 and moved["patch"][1:].abs().max() == 0
    assert moved["conv"][1:].abs().max() > 0
    tiled = np.tile(frame[:4, :4], (4, 4, 1))  # the same patch everywhere
    tokens, _ = patch.tokenize(tiled[None])
    assert tokens.unique().numel() == 1


def test_action_in_tokens_gives_every_frame_prediction_the_action():
    """With action_in_tokens the step's action reaches each of its frame-token predictions
    directly: at initialisation (attention near uniform, action embeddings small) changing the
    action moves every token's logits of that step, more than through the action token alone."""
    batch = sequence_batch(steps=4, batch=2)
    other = replace(batch, action=(np.asarray(batch.action) + 1) % 3)
    moved = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = TokenWorldModel(replace(TINY, action_in_tokens=flag), SMALL, spaces.Discrete(3)).eval()
        logits = []
        for windows in (batch, other):
            model.token_head._forward_hooks.clear()
            seen = record_head_outputs(model)
            with torch.no_grad():
                model.loss_terms(windows)
            logits.append(torch.cat(seen))
        moved[flag] = (logits[0] - logits[1]).abs().mean().item()
    assert moved[True] > 3 * moved[False] > 0, moved


def test_model_level_causality_a_later_frame_never_changes_an_earlier_prediction():
    torch.manual_seed(0)
    model = TokenWorldModel(TINY, SMALL, spaces.Discrete(3)).eval()
    tokens = torch.randint(0, 32, (1, 6, 16))
    actions = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 6)), 3).float()
    changed = tokens.clone()
    changed[:, 4:] = torch.randint(0, 32, (1, 2, 16))
    outputs = [
        model.heads(model.transformer(model.embed_steps(t, actions, None, None, None)), 6) for t in (tokens, changed)
    ]
    for before, after in zip(*outputs):
        assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    # Within step 4, the prediction of token 0 (read at the action token) is unchanged too.
    assert torch.allclose(outputs[0][0][:, 4, 0], outputs[1][0][:, 4, 0], atol=1e-6)


@pytest.mark.parametrize(
    "text, action_in_tokens",
    [(False, False), (True, False), (False, True)],
    ids=["iris", "gaia-guided", "action-in-tokens"],
)
def test_cached_and_uncached_imagination_agree(text, action_in_tokens):
    torch.manual_seed(0)
    config = TokenWorldModelConfig(
        size=SIZES["tiny"],
        stages=2,
        dropout=0.0,
        text_size=8 if text else 0,
        text_dropout=0.1 if text else 0.0,
        action_in_tokens=action_in_tokens,
    )
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3)).eval()
    for parameter in model.transformer.parameters():  # larger weights than the init, so the logits are far from uniform
        parameter.data.mul_(3.0)
    batch = sequence_batch(steps=5, batch=2)
    _, last = model.observe(batch.obs, batch.action, batch.is_first, text=torch.randn(2, 8) if text else None)
    actions = np.random.default_rng(1).integers(0, 3, (2, 12))  # 5 + 12 > context 8: the window restarts
    runs = []
    for use_cache in (True, False):
        model.token_head._forward_hooks.clear()
        seen = record_head_outputs(model)
        trajectory = model.imagine(
            last,
            actions,
            12,
            use_cache=use_cache,
            guidance_scale=3.0 if text else 1.0,
            generator=torch.Generator().manual_seed(3),
        )
        runs.append((trajectory, torch.cat(seen)))
    (cached, cached_logits), (uncached, uncached_logits) = runs
    assert torch.equal(cached.states["tokens"], uncached.states["tokens"])
    # Each pass's logits (both streams of guidance, before they are mixed) agree to 1e-5.
    assert cached_logits.shape == uncached_logits.shape
    assert (cached_logits - uncached_logits).abs().max().item() < 1e-5
    assert torch.allclose(cached.rewards, uncached.rewards, atol=1e-5)
    assert torch.allclose(cached.continues, uncached.continues, atol=1e-5)
    assert cached.rewards.shape == (2, 12) and cached.states["history"].shape == (2, 12, 8, 16)


@pytest.mark.parametrize("text", [False, True], ids=["iris", "gaia-guided"])
def test_one_step_calls_carry_the_cache_and_match_the_uncached_stepper(text):
    """The play page's path: ImaginedEnv steps imagine(horizon=1) from the state the last call
    returned. With the cache carried in that state every step feeds the transformer one step of
    tokens (P) until the window restarts, and the rollout equals the uncached one."""
    from wmlab.envs.imagined import ImaginedEnv

    torch.manual_seed(0)
    config = TokenWorldModelConfig(
        size=SIZES["tiny"], stages=2, dropout=0.0, text_size=8 if text else 0, text_dropout=0.1 if text else 0.0
    )
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3)).eval()
    for parameter in model.transformer.parameters():
        parameter.data.mul_(3.0)
    model.end_head[-1].bias.data.fill_(-30.0)  # no predicted end: every row keeps stepping
    batch = sequence_batch(steps=3, batch=2)
    actions = np.random.default_rng(1).integers(0, 3, (12, 2))  # 3 + 12 > context 8: the window restarts
    kwargs = {"guidance_scale": 3.0} if text else {}
    runs = []
    for use_cache in (True, False):
        env = ImaginedEnv(
            model,
            batch.obs,
            batch_size=2,
            max_episode_steps=100,
            initial_actions=batch.action,
            initial_is_first=batch.is_first,
            imagine_kwargs={"use_cache": use_cache, **kwargs},
            sample_terminations=False,
            seed=5,
        )
        env.reset(options={"indices": [0, 1]})
        if text:
            env.state = model.with_text(env.state, torch.randn(2, 8, generator=torch.Generator().manual_seed(2)))
        model.transformer._forward_hooks.clear()
        fed = count_fed_tokens(model)
        frames, per_step = [], []
        for action in actions:
            before = len(fed)
            env.step(torch.as_tensor(action))
            frames.append(env.state["tokens"].clone())
            per_step.append(sum(fed[before:]))
        runs.append((torch.stack(frames), per_step, env.state))
    (cached, cached_fed, state), (uncached, uncached_fed, _) = runs
    assert torch.equal(cached, uncached)
    P = model.tokens_per_step
    # Step 1 builds the window (3 steps); steps 2-5 add one step each (P tokens) up to the context
    # of 8; step 6 restarts from the last 4 steps; steps 7-9 are one step each again.
    assert cached_fed[1:5] == [P] * 4 and cached_fed[6:9] == [P] * 3
    assert cached_fed[5] == 5 * P - 1  # the 4 kept steps and this one (its last token is sampled, not fed)
    assert sum(cached_fed) < sum(uncached_fed) / 5
    assert int(state["kv_steps"][0]) >= 1 and "kv_keys" in state
    # New weights (an optimiser step) make the carried cache stale: it is rebuilt, not reused.
    with torch.no_grad():
        model.transformer.blocks[0].mlp[0].bias.add_(0.0)
    fed.clear()
    model.imagine(state, torch.zeros(2, 1, dtype=torch.long), 1, **kwargs)
    assert fed[0] > P


def test_a_tiny_model_overfits_a_fixed_eight_step_sequence():
    torch.manual_seed(0)
    model = TokenWorldModel(TINY, SMALL, spaces.Discrete(3))
    batch = sequence_batch(steps=8)
    # The tokenizer is held fixed, so the targets (its tokens) stay put: this is the transformer's test.
    model.tokenizer.requires_grad_(False)
    optimiser = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=3e-3)
    for _ in range(300):
        loss, metrics = model.loss_terms(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    _, metrics = model.loss(batch)
    assert metrics["loss/tokens"] < 0.05 and metrics["loss/reward"] < 0.05 and metrics["loss/end"] < 0.05, metrics
    assert metrics["wm/token_accuracy"] == 1.0
    # Imagining the recorded actions at temperature 0 replays the recorded frames' tokens.
    _, last = model.observe({"image": batch.obs["image"][:, :1]}, batch.action[:, :1], batch.is_first[:, :1])
    trajectory = model.imagine(last, batch.action[:, 1:], 7, temperature=0.0)
    tokens, _ = model.tokenize(batch.obs["image"][0, 1:])
    assert (trajectory.states["tokens"][0] == tokens).float().mean().item() == 1.0
    assert np.allclose(trajectory.rewards[0].numpy(), batch.reward[0, 1:], atol=0.1)
    assert trajectory.continues[0, -1] < 0.1 and trajectory.continues[0, :-1].min() > 0.9


def test_changed_token_weighting_is_undone_where_logits_are_read():
    """`changed_tokens` w weighs the loss of tokens that differ from the previous frame's; its
    optimum is p(c) w_c / Z, and the calibrated logits give back p. Imagination reads the
    calibrated logits: with w huge, a greedy rollout copies the previous frame's tokens."""
    torch.manual_seed(0)
    weight = 4.0
    model = TokenWorldModel(
        replace(TINY, loss_scales=replace(TINY.loss_scales, changed_tokens=weight)), SMALL, spaces.Discrete(3)
    )
    p = torch.tensor([0.1, 0.2, 0.4, 0.25, 0.05])
    previous = torch.tensor(2)
    optimum = torch.log(p * torch.where(torch.arange(5) == previous, 1.0, weight))  # the weighted loss's minimiser
    assert torch.allclose(model.calibrated_token_logits(optimum, previous).softmax(-1), p, atol=1e-6)
    # The reported token loss is weighted; the token NLL metric is read from calibrated logits.
    plain = TokenWorldModel(TINY, SMALL, spaces.Discrete(3)).eval()
    _, metrics = plain.loss(sequence_batch(steps=4))
    assert metrics["wm/token_nll"] == pytest.approx(metrics["loss/tokens"], rel=1e-5)
    copying = TokenWorldModel(
        replace(TINY, loss_scales=replace(TINY.loss_scales, changed_tokens=1e12)), SMALL, spaces.Discrete(3)
    ).eval()
    copying.load_state_dict(plain.state_dict())
    batch = sequence_batch(steps=3)
    rollouts = {}
    for name, world_model in (("plain", plain), ("copying", copying)):
        _, last = world_model.observe(batch.obs, batch.action, batch.is_first)
        trajectory = world_model.imagine(last, np.zeros((1, 4), np.int64), 4, temperature=0.0)
        tokens = torch.cat([last["tokens"][:, None], trajectory.states["tokens"]], 1)
        rollouts[name] = (tokens[:, 1:] == tokens[:, :-1]).float().mean().item()
    assert rollouts["copying"] == 1.0 and rollouts["plain"] < 1.0, rollouts
    with pytest.raises(ValueError, match="changed_tokens must be > 0"):
        TokenWorldModel(
            replace(TINY, loss_scales=replace(TINY.loss_scales, changed_tokens=0.0)), SMALL, spaces.Discrete(3)
        )


def test_conditioning_changes_the_output_and_guidance_interpolates():
    torch.manual_seed(0)
    config = TokenWorldModelConfig(
        size=SIZES["tiny"], stages=2, dropout=0.0, text_size=8, text_dropout=0.2, action_dropout=0.2, guided="both"
    )
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3)).eval()
    torch.nn.init.normal_(model.text_embedding.weight)
    torch.nn.init.normal_(model.action_embedding.weight)
    batch = sequence_batch(steps=3, batch=2)
    _, last = model.observe(batch.obs, batch.action, batch.is_first, text=torch.randn(2, 8))

    def first_logits(state, actions, scale):
        seen = record_logits(model)
        model.imagine(state, actions, 1, temperature=0.0, guidance_scale=scale)
        return seen[0]

    actions = np.array([[0], [1]])
    conditional = first_logits(last, actions, 1.0)
    assert not torch.allclose(
        conditional, first_logits(model.with_text(last, torch.randn(2, 8)), actions, 1.0), atol=1e-4
    )  # text matters
    assert not torch.allclose(conditional, first_logits(last, np.array([[2], [2]]), 1.0), atol=1e-4)  # actions matter
    # Scale 0 is the unconditional model: the same network with the null text and null actions.
    unconditional = first_logits(last, actions, 0.0)
    # The window imagination sees: the last C - 1 steps of the history, then the new step.
    B, C, P = 2, model.context, model.tokens_per_step
    valid = torch.arange(C)[None] >= (C - last["history_length"])[:, None]
    valid = torch.cat([valid[:, 1:], torch.ones(B, 1, dtype=torch.bool)], 1)
    tokens = torch.cat([last["history"][:, 1:], torch.zeros(B, 1, 16, dtype=torch.long)], 1)
    acts = torch.cat(
        [
            last["history_actions"][:, 1:],
            torch.nn.functional.one_hot(torch.as_tensor(actions[:, 0]), 3).float()[:, None],
        ],
        1,
    )
    dropped = torch.ones(B, dtype=torch.bool)
    length = (C - 1) * P + model.offset + 1  # up to the new step's action token
    sequence = model.embed_steps(tokens, acts, last["text"], dropped, dropped)[:, :length]
    mask = model.step_mask(valid, length)[..., :length]
    positions = (torch.arange(length)[None] - (~valid).sum(1, keepdim=True) * P).clamp_min(0)
    reference = model.token_head(model.transformer(sequence, mask=mask, positions=positions)[:, -1])
    assert torch.allclose(unconditional, reference, atol=1e-5)
    # Any scale is the linear extrapolation u + s (c - u).
    assert torch.allclose(
        first_logits(last, actions, 3.0), unconditional + 3.0 * (conditional - unconditional), atol=1e-4
    )
    # Generating from text alone: the null action everywhere, so the actions given do not matter.
    seen = record_logits(model)
    model.imagine(last, np.array([[0], [1]]), 1, temperature=0.0, use_actions=False)
    model.imagine(last, np.array([[2], [2]]), 1, temperature=0.0, use_actions=False)
    assert torch.allclose(seen[0], seen[16]) and not torch.allclose(
        seen[0], conditional, atol=1e-4
    )  # 16 tokens per step
    # The loss with conditioning dropped is the unconditional model's, and differs.
    text = torch.randn(2, 8)
    full, dropped_loss = (
        model.loss(batch, text)[1]["loss/tokens"],
        model.loss(batch, text, drop="both")[1]["loss/tokens"],
    )
    assert full != pytest.approx(dropped_loss, abs=1e-6)


def test_text_standardize_projects_the_standardised_embedding_learnt_in_training_only():
    config = TokenWorldModelConfig(size=SIZES["tiny"], stages=2, dropout=0.0, text_size=3, text_standardize=True)
    torch.manual_seed(0)
    model = TokenWorldModel(config, SMALL, spaces.Discrete(3))
    assert TokenWorldModel(replace(config, text_standardize=False), SMALL, spaces.Discrete(3)).text_normalizer is None
    batch = sequence_batch(steps=3, batch=4)
    text = torch.tensor([5.0, -2.0, 0.5]) + torch.tensor([0.1, 3.0, 0.01]) * torch.randn(4, 3)
    model.eval()
    model.loss(batch, text)
    assert float(model.text_normalizer.count) == 0  # evaluation losses leave the statistics
    model.train()
    model.loss(batch, text)
    assert torch.allclose(model.text_normalizer.mean, text.mean(0), atol=1e-5)
    assert torch.allclose(model.text_normalizer.std, text.std(0, unbiased=False), atol=1e-5)
    seen = []
    original = model.text_embedding.forward
    model.text_embedding.forward = lambda x: seen.append(x) or original(x)
    model.eval()
    _, last = model.observe(batch.obs, batch.action, batch.is_first, text=text)
    model.imagine(last, np.zeros((4, 1), np.int64), 1, temperature=0.0)
    assert torch.allclose(seen[-1], (text - text.mean(0)) / text.std(0, unbiased=False), atol=1e-4)


def test_evaluation_suites_run_on_the_token_model():
    torch.manual_seed(0)
    model = TokenWorldModel(TINY, SMALL, spaces.Discrete(3)).eval()
    batch = sequence_batch(steps=8, batch=3)
    settings = SuiteSettings(context=3, samples=4)
    horizon = evaluate_suite(model, batch, "horizon", settings)
    assert len(horizon["open_loop"]["image/psnr"]) == 5 and "latent/distance" in horizon["open_loop"]
    calibration = evaluate_suite(model, batch, "calibration", settings)
    assert calibration["calibratable"] and calibration["space"] == "observation"
    controllability = evaluate_suite(model, batch, "controllability", settings)
    assert controllability["defined"] and "image" in controllability["delta_psnr"]


# ------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_get_clear_errors():
    with pytest.raises(IncompatibleSpaceError, match="Discrete action space.*continuous_actions"):
        TokenWorldModel(TINY, SMALL, spaces.Box(-1, 1, (2,), np.float32))
    odd = spaces.Dict({"image": spaces.Box(0, 255, (60, 60, 3), np.uint8)})
    with pytest.raises(IncompatibleSpaceError, match="divisible by 16; got 60 x 60"):
        TokenWorldModel(TokenWorldModelConfig(size=SIZES["tiny"], stages=4), odd, spaces.Discrete(3))
    with pytest.raises(IncompatibleSpaceError, match=r"4 x 4 grid .*side 4 \* 2\^s.*got 60 x 60"):
        TokenWorldModel(TokenWorldModelConfig(size=SIZES["tiny"]), odd, spaces.Discrete(3))
    for side, stages in ((16, 2), (64, 4)):  # by default the grid is 4 x 4 (IRIS's 16 tokens)
        square = spaces.Dict({"image": spaces.Box(0, 255, (side, side, 3), np.uint8)})
        assert TokenWorldModel(TokenWorldModelConfig(size=SIZES["tiny"]), square, spaces.Discrete(3)).stages == stages
    with pytest.raises(IncompatibleSpaceError, match="uint8 image"):
        TokenWorldModel(TINY, spaces.Dict({"vector": spaces.Box(-1, 1, (3,), np.float32)}), spaces.Discrete(3))
    model = TokenWorldModel(TINY, SMALL, spaces.Discrete(3))
    batch = sequence_batch(steps=9)
    with pytest.raises(ShapeError, match="context of 8"):
        model.loss(batch)
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        model.observe(batch.obs, batch.action + 5, batch.is_first)
    text_model = TokenWorldModel(
        TokenWorldModelConfig(size=SIZES["tiny"], stages=2, text_size=8), SMALL, spaces.Discrete(3)
    )
    with pytest.raises(ShapeError, match="text-conditioned"):
        text_model.loss(sequence_batch(steps=4))
    with pytest.raises(ValueError, match="action_dropout"):
        model.imagine(model.initial(1), np.zeros((1, 2), np.int64), 2, use_actions=False)
    with pytest.raises(ValueError, match="drop must be"):
        model.loss(sequence_batch(steps=4), drop="everything")
    # GAIA-1's continuous actions are accepted when asked for.
    gaia = TokenWorldModel(
        TokenWorldModelConfig(size=SIZES["tiny"], stages=2, continuous_actions=True),
        SMALL,
        spaces.Box(-1, 1, (2,), np.float32),
    )
    assert not gaia.discrete and gaia.action_size == 2

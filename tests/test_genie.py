"""Genie (wmlab.models.latent_action): latent actions learned from video, MaskGIT dynamics,
the video dataset, grounding and the two-stage pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.types import Batch
from wmlab.data.video import VideoDataset, VideoError, load_video
from wmlab.eval.grounding import (
    action_classes,
    confusion_matrix,
    grounding_scores,
    mutual_information,
)
from wmlab.models.latent_action import (
    SIZES,
    GenieConfig,
    GenieWorldModel,
    maskgit_fill,
    patchify,
    unpatchify,
)

SIZE = 16
#: The four known moves of the synthetic video, (rows, columns) in pixels.
SHIFTS = ((0, 2), (0, -2), (2, 0), (-2, 0))


def shifting_video(batch: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frames (B, T, 16, 16, 3) uint8 of a ramp texture (red grows down, green right, a random
    blue, a random offset) that moves by one of SHIFTS each step (wrapping around), and the
    shift indices (B, T) (0 at step 0)."""
    rows = np.arange(SIZE)
    offsets = rng.integers(0, SIZE, (batch, 2))
    image = np.zeros((batch, SIZE, SIZE, 3), np.float32)
    image[..., 0] = ((rows[None, :, None] + offsets[:, :1, None]) % SIZE) / SIZE
    image[..., 1] = ((rows[None, None, :] + offsets[:, 1:, None]) % SIZE) / SIZE
    image[..., 2] = rng.random((batch, 1, 1))
    frames, shifts = [image], [np.zeros(batch, np.int64)]
    for _ in range(1, length):
        move = rng.integers(0, len(SHIFTS), batch)
        frames.append(np.stack([np.roll(frames[-1][i], SHIFTS[move[i]], axis=(0, 1)) for i in range(batch)]))
        shifts.append(move)
    return (np.stack(frames, 1) * 255).round().astype(np.uint8), np.stack(shifts, 1)


def video_batch(frames: np.ndarray) -> Batch:
    B, T = frames.shape[:2]
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    zeros = np.zeros((B, T), bool)
    return Batch(
        obs={"image": frames},
        action=None,
        reward=np.zeros((B, T), np.float32),
        is_first=is_first,
        is_last=zeros,
        is_terminal=zeros,
    )


def tiny_model() -> GenieWorldModel:
    config = GenieConfig(size=SIZES.preset("tiny", heads=4), maskgit_steps=4)
    return GenieWorldModel(config, spaces.Dict({"image": spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)}))


def purity(codes: np.ndarray, truth: np.ndarray) -> float:
    return float(sum(np.bincount(truth[codes == code]).max() for code in np.unique(codes)) / len(truth))


@pytest.fixture(scope="module")
def trained():
    """A tiny Genie trained on the shifting video in Genie's two stages (40-90 s on one loaded core)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = tiny_model()
    first = torch.optim.Adam([*model.tokenizer.parameters(), *model.latent_action.parameters()], lr=3e-3)
    for _ in range(300):
        loss, _ = model.loss(video_batch(shifting_video(32, 2, rng)[0]), ("tokenizer", "latent_action"))
        first.zero_grad()
        loss.backward()
        first.step()
    second = torch.optim.Adam(model.dynamics.parameters(), lr=3e-3)
    for _ in range(200):
        loss, metrics = model.loss(video_batch(shifting_video(32, 2, rng)[0]), ("dynamics",))
        second.zero_grad()
        loss.backward()
        second.step()
    model.eval()
    return model, metrics


# ----------------------------------------------------------------------------------------------
# Learning


def test_latent_actions_separate_the_four_shifts(trained):
    model, _ = trained
    frames, shifts = shifting_video(256, 2, np.random.default_rng(1))
    codes = model.infer_actions({"image": frames}).numpy()[:, 1]
    # Chance (every code holding all shifts) is 0.25-0.3; this run reaches about 0.7.
    assert purity(codes, shifts[:, 1]) > 0.6


def test_dynamics_given_the_inferred_code_makes_the_move_it_encodes(trained):
    model, _ = trained
    frames, shifts = shifting_video(128, 2, np.random.default_rng(2))
    codes = model.infer_actions({"image": frames})
    _, state = model.observe({"image": frames[:, :1]}, None, np.ones((128, 1), bool))
    predicted = model.imagine(state, codes[:, 1:], temperature=0, decode=True).observations["image"][:, 0].numpy()
    # The generated frame is nearest to the first frame moved by the true shift, among the four moves.
    candidates = np.stack([np.roll(frames[:, 0], shift, axis=(1, 2)) for shift in SHIFTS], 1) / 255.0
    nearest = ((candidates - predicted[:, None]) ** 2).mean((2, 3, 4)).argmin(1)
    assert (nearest == shifts[:, 1]).mean() > 0.5  # chance 0.25


def test_code_use_shows_the_decoder_needs_the_code(trained):
    from wmlab.eval.grounding import code_use

    model, _ = trained
    frames, shifts = shifting_video(48, 4, np.random.default_rng(4))
    video = VideoDataset(frames=list(frames), hidden_actions=list(shifts))
    use = code_use(model, video, sequences=32, seed=0)
    # Every pixel moves: the code is needed, random codes predict the shift wrongly most of the time.
    assert use["changed_pixel_share"] > 0.5
    assert use["next_frame_error_read_codes"] < 0.5 * use["next_frame_error_random_codes"]
    assert abs(sum(use["code_shares"]) - 1) < 1e-6 and 1 <= use["code_perplexity"] <= 8


def test_tokenizer_round_trips_above_a_psnr_floor(trained):
    model, _ = trained
    frames, _ = shifting_video(64, 2, np.random.default_rng(3))
    with torch.no_grad():
        tokens = model.tokenizer.encode(torch.as_tensor(frames).float() / 255).indices
        decoded = model.tokenizer.decode(tokens)
    error = (decoded - torch.as_tensor(frames).float() / 255).pow(2).mean()
    # 16 tokens of 64 codes per frame after a minute of training: about 18-20 dB.
    assert float(-10 * torch.log10(error)) > 17.0


# ----------------------------------------------------------------------------------------------
# MaskGIT and the protocol


def test_maskgit_fills_every_hidden_token_and_keeps_the_known_ones():
    generator = torch.Generator().manual_seed(0)
    B, S, V, mask = 3, 10, 7, 7
    known = torch.randint(0, V, (B, S), generator=generator)
    hidden = torch.rand(B, S, generator=generator) < 0.6
    hidden[0] = True  # one row entirely hidden
    hidden[1] = False  # one row entirely known
    calls = []

    def logits_of(tokens):
        calls.append(tokens.clone())
        assert tokens.shape == (B, S) and int(tokens.max()) <= mask
        return torch.randn(B, S, V, generator=generator)

    filled = maskgit_fill(logits_of, known, hidden, mask, steps=4, temperature=1.0, generator=generator)
    assert filled.shape == (B, S)
    assert int(filled.max()) < V and int(filled.min()) >= 0  # no mask token left
    assert torch.equal(filled[~hidden], known[~hidden])
    # The first call sees exactly the hidden positions masked; the hidden share shrinks.
    assert torch.equal(calls[0] == mask, hidden)
    masked_counts = [int((tokens == mask).sum()) for tokens in calls]
    assert masked_counts == sorted(masked_counts, reverse=True) and len(calls) == 4
    # Temperature 0 with fixed logits is deterministic.
    fixed = torch.randn(B, S, V, generator=generator)
    first = maskgit_fill(lambda tokens: fixed, known, hidden, mask, 3, 0.0)
    assert torch.equal(first, maskgit_fill(lambda tokens: fixed, known, hidden, mask, 3, 0.0))
    assert torch.equal(first[hidden], fixed.argmax(-1)[hidden])


def test_patches_round_trip():
    frames = torch.rand(2, 3, 16, 12, 3)
    assert patchify(frames, 4).shape == (2, 3, 12, 48)
    assert torch.equal(unpatchify(patchify(frames, 4), 4, 16, 12), frames)


def test_protocol_shapes_losses_and_refusals():
    torch.manual_seed(0)
    model = tiny_model()
    frames, _ = shifting_video(2, 4, np.random.default_rng(0))
    batch = video_batch(frames)
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and {"loss/reconstruction", "loss/action_reconstruction", "loss/dynamics"} <= set(
        metrics
    )
    loss.backward()
    states, last = model.observe({"image": frames}, None, batch.is_first)
    assert states["tokens"].shape == (2, 4, model.tokens_per_frame) and int(last["history_length"][0]) == 4
    trajectory = model.imagine(last, torch.tensor([[0, 7, 3], [1, 1, 1]]), decode=True)
    assert trajectory.observations["image"].shape == (2, 3, SIZE, SIZE, 3)
    assert trajectory.rewards.abs().sum() == 0 and bool((trajectory.continues == 1).all())
    assert model.decode(states)["image"].shape == (2, 4, SIZE, SIZE, 3)
    with_policy = model.imagine(last, lambda state: torch.zeros(2, dtype=torch.long), horizon=2)
    assert with_policy.actions.shape == (2, 2)
    with pytest.raises(IncompatibleSpaceError, match="latent actions"):
        model.imagine(last, np.zeros((2, 3, 2), np.float32))  # real (Box) actions are refused
    with pytest.raises(IncompatibleSpaceError, match=r"\[0, 8\)"):
        model.imagine(last, torch.tensor([[8, 0, 0], [0, 0, 0]]))
    with pytest.raises(ShapeError, match="context"):
        model.loss(video_batch(shifting_video(1, 5, np.random.default_rng(0))[0]))
    with pytest.raises(IncompatibleSpaceError, match="patches"):
        GenieWorldModel(
            GenieConfig(size=SIZES["tiny"]), spaces.Dict({"image": spaces.Box(0, 255, (18, 16, 3), np.uint8)})
        )


def test_an_image_of_another_size_is_resized_or_refused():
    model = tiny_model()
    photo = np.random.default_rng(0).integers(0, 256, (37, 23, 4), dtype=np.uint8)  # RGBA, another size
    state = model.state_from_image(photo)
    assert state["tokens"].shape == (1, model.tokens_per_frame) and int(state["history_length"][0]) == 1
    assert model.decode(state)["image"].shape == (1, SIZE, SIZE, 3)
    with pytest.raises(ShapeError, match="37 x 23.*16 x 16"):
        model.state_from_image(photo, resize=False)
    with pytest.raises(ShapeError, match="uint8"):
        model.state_from_image(np.zeros((16, 16, 3), np.float32))


# ----------------------------------------------------------------------------------------------
# Grounding measures


def test_grounding_scores_by_hand():
    diagonal = confusion_matrix(np.array([0, 1, 2, 3] * 5), np.array([5, 2, 7, 0] * 5), 4, 8)
    assert mutual_information(diagonal) == pytest.approx(2.0)
    assert grounding_scores(diagonal)["purity"] == 1.0 and grounding_scores(diagonal)[
        "normalised_mutual_information"
    ] == pytest.approx(1.0)
    independent = np.full((4, 8), 3)
    assert mutual_information(independent) == pytest.approx(0.0, abs=1e-12)
    assert grounding_scores(independent)["purity"] == pytest.approx(0.25)
    classes, names = action_classes(
        np.array([[0.9, 0.1], [-0.5, 0.2], [0.1, 0.7], [0.0, -0.3], [0.01, 0.0]]), still_below=0.05
    )
    assert classes.tolist() == [0, 1, 2, 3, 4] and names == ["+x", "-x", "+y", "-y", "still"]


# ----------------------------------------------------------------------------------------------
# Video on disk


def _write_pngs(directory, frames):
    from PIL import Image

    directory.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(directory / f"{index:04d}.png")


def test_png_sequences_load_and_sample(tmp_path):
    frames, _ = shifting_video(2, 5, np.random.default_rng(0))
    _write_pngs(tmp_path / "a", frames[0])
    _write_pngs(tmp_path / "b", frames[1])
    video = load_video(tmp_path)
    assert len(video) == 2 and video.frame_shape == (SIZE, SIZE, 3) and video.hidden_actions is None
    assert np.array_equal(video.frames[1], frames[1])
    batch = video.sample(3, 4, np.random.default_rng(0))
    assert batch.obs["image"].shape == (3, 4, SIZE, SIZE, 3) and batch.action is None
    assert load_video(tmp_path, size=(8, 8)).frame_shape == (8, 8, 3)


def test_mixed_sizes_and_corrupt_files_are_refused(tmp_path):
    frames, _ = shifting_video(1, 3, np.random.default_rng(0))
    _write_pngs(tmp_path / "small", frames[0])
    _write_pngs(tmp_path / "large", np.zeros((3, 24, 24, 3), np.uint8))
    with pytest.raises(VideoError, match="24 x 24.*16 x 16|16 x 16.*24 x 24"):
        load_video(tmp_path)
    assert load_video(tmp_path, size=(SIZE, SIZE)).frame_shape == (SIZE, SIZE, 3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="broken.mp4"):
        load_video(tmp_path / "broken.mp4")
    (tmp_path / "small" / "0009.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoError, match="0009.png"):
        load_video(tmp_path / "small")
    with pytest.raises(VideoError, match="frame shapes"):
        VideoDataset(frames=[np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)])


def test_mp4_video_loads(tmp_path):
    imageio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    frames[:, :, :16] = 200
    imageio.imwrite(tmp_path / "clip.mp4", frames, fps=10)
    video = load_video(tmp_path)
    assert video.frame_shape == (32, 32, 3) and len(video.frames[0]) == 6
    assert abs(float(video.frames[0][:, :, :16].mean()) - 200) < 10  # lossy, but the picture is there


def test_recorded_dataset_keeps_actions_apart(tmp_path):
    from wmlab.data.dataset import record_dataset

    record_dataset(
        "two-rooms", "random", episodes=2, directory=tmp_path / "rooms", seed=0, progress=False, max_episode_steps=6
    )
    video = load_video(tmp_path / "rooms")
    assert video.frame_shape == (64, 64, 3) and [len(f) for f in video.frames] == [7, 7]
    assert video.hidden_actions[0].shape == (7, 2)
    batch, actions = video.sample_with_actions(2, 3, np.random.default_rng(0))
    assert batch.action is None and actions.shape == (2, 3, 2)
    record_dataset(
        "two-rooms",
        "random",
        episodes=1,
        directory=tmp_path / "silent",
        seed=0,
        progress=False,
        max_episode_steps=3,
        store_actions=False,
    )
    assert load_video(tmp_path / "silent").hidden_actions is None


# ----------------------------------------------------------------------------------------------
# Pipeline: CLI smoke, resume, grounding suite


def test_pipeline_cli_resume_and_grounding(tmp_path):
    from wmlab.cli import main
    from wmlab.data.dataset import record_dataset
    from wmlab.pipelines.genie import GeniePipelineConfig, GenieStages, train_genie

    record_dataset(
        "two-rooms", "random", episodes=3, directory=tmp_path / "rooms", seed=0, progress=False, max_episode_steps=6
    )
    common = [
        "--dataset",
        str(tmp_path / "rooms"),
        "--model.size",
        "tiny",
        "patch=16",
        "action_patch=16",
        "--size",
        "32",
        "32",
    ]
    stages = ["--stages.tokenizer-updates", "2", "--stages.dynamics-updates", "2", "--stages.batch-size", "2"]
    assert main(["pipeline", "genie", *common, *stages, "--run-dir", str(tmp_path / "run")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["tokenizer", "dynamics"]
    assert main(["eval", str(tmp_path / "run"), "--suite", "grounding", "--sequences", "4"]) == 0
    result = json.loads((tmp_path / "run" / "eval" / "grounding.json").read_text())
    assert np.array(result["grounding"]["confusion"]).shape == (4, 8)  # +x -x +y -y against 8 codes
    assert result["controllability"]["defined"]

    # Resume: 2 + 2 interrupted updates give the weights of 4 uninterrupted ones, bit for bit.
    model = GenieConfig(size=SIZES.preset("tiny", patch=16, action_patch=16))
    config = GeniePipelineConfig(
        dataset=str(tmp_path / "rooms"),
        model=model,
        size=(32, 32),
        stages=GenieStages(tokenizer_updates=2, dynamics_updates=2, batch_size=2),
    )
    straight, _ = train_genie(GeniePipelineConfig(**{**config.__dict__, "run_dir": str(tmp_path / "straight")}))
    train_genie(GeniePipelineConfig(**{**config.__dict__, "run_dir": str(tmp_path / "halves")}), stop_after=3)
    resumed, summary = train_genie(GeniePipelineConfig(resume=str(tmp_path / "halves")))
    assert summary["tokenizer"] == 2 and summary["dynamics"] == 2
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name

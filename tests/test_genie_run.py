"""`wmlab train --algo genie`: Genie fitted by the offline trainer to video without actions, in an
ordinary run directory (record first, resume exactly, grounding), and played with its latent
actions on keys 1 to 8 (the session, and the page in headless Chromium)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmlab.cli import main
from wmlab.core.serialization import load_state

TINY_MODEL = ["--world-model.size", "tiny", "patch=16", "action_patch=16"]
QUIET = ["--train.no-progress", "--train.no-tensorboard", "--train.batch-size", "2"]


def train(*arguments) -> int:
    return main(["train", *[str(argument) for argument in arguments]])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six random episodes of two-rooms-discrete (13 frames each), recorded by `train --env`."""
    root = tmp_path_factory.mktemp("genie-run")
    data = root / "rooms"
    assert (
        train(
            "--algo",
            "genie",
            "--env",
            "two-rooms-discrete",
            "--record.episodes",
            6,
            "--record.max-episode-steps",
            12,
            "--dataset",
            data,
            "--run-dir",
            root / "first",
            "--train.updates",
            2,
            *TINY_MODEL,
            *QUIET,
        )
        == 0
    )
    return data


@pytest.fixture(scope="module")
def run_dir(dataset) -> Path:
    directory = dataset.parent / "genie"
    assert (
        train(
            "--algo", "genie", "--dataset", dataset, "--run-dir", directory, "--train.updates", 6, *TINY_MODEL, *QUIET
        )
        == 0
    )
    return directory


def refused(capsys, *arguments) -> str:
    """The error `wmlab train ARGUMENTS` prints (it must fail)."""
    assert train(*arguments) != 0
    return capsys.readouterr().err


def test_env_records_the_video_first_then_trains(dataset, capsys):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["env_id"] == "two-rooms-discrete" and manifest["num_episodes"] == 6 and manifest["actions"]
    assert (dataset.parent / "first" / "checkpoints" / "rank0" / "model.safetensors").is_file()
    assert "already holds a dataset" in refused(
        capsys, "--algo", "genie", "--env", "two-rooms-discrete", "--dataset", dataset
    )


def test_the_run_directory_is_an_ordinary_offline_run(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "offline" and config["model"] == "genie" and config["with_actions"] is False
    assert config["env"] == "two-rooms-discrete" and config["held_out"] == 0.2
    assert config["train"]["sequence_length"] == 4  # the tiny model's context, by default
    files = {path.name for path in (run_dir / "checkpoints" / "rank0").iterdir()}
    assert {path.rsplit(".", 1)[1] for path in files} <= {"safetensors", "json"}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines and {"loss/dynamics", "loss/action_reconstruction", "action/perplexity"} <= set(lines[-1])
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 6


def test_training_sees_frames_of_the_training_episodes_only(run_dir):
    from wmlab.runs.directory import load_offline_run_spec
    from wmlab.train.video import VideoTrainer

    spec = load_offline_run_spec(run_dir)
    windows = VideoTrainer.open_dataset(None, spec, seed=0)
    assert len(windows.video) == 5  # one of the six episodes is held out
    batch = windows.sample(3, 4)
    assert batch.action is None and batch.obs["image"].shape == (3, 4, 64, 64, 3)


def test_resume_gives_the_weights_of_an_uninterrupted_run(dataset, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["--algo", "genie", "--dataset", dataset, *TINY_MODEL, *QUIET, "--train.checkpoint-every", 2]
    assert train(*common, "--run-dir", whole, "--train.updates", 4) == 0
    assert train(*common, "--run-dir", parts, "--train.updates", 2) == 0
    assert train("--resume", parts, "--train.updates", 4, "--train.no-progress") == 0
    first = load_state(whole / "checkpoints" / "rank0", "model")
    second = load_state(parts / "checkpoints" / "rank0", "model")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert "cannot change: held_out" in refused(capsys, "--resume", parts, "--held-out", 0.5)


def test_missing_video_is_named(tmp_path, capsys):
    assert "give the video" in refused(capsys, "--algo", "genie", "--run-dir", tmp_path / "run")
    assert "nowhere does not exist" in refused(capsys, "--algo", "genie", "--dataset", tmp_path / "nowhere")


def test_grounding_suite_reads_the_run(run_dir):
    assert main(["eval", str(run_dir), "--suite", "grounding", "--sequences", "4", "--seed", "0"]) == 0
    result = json.loads((run_dir / "eval" / "grounding.json").read_text())
    grounding = result["grounding"]
    assert result["held_out"] and grounding["true_classes"] == ["0", "1", "2", "3", "4"]
    assert np.asarray(grounding["confusion"]).shape == (5, 8) and grounding["steps"] == 12
    assert len(next(iter(result["controllability"]["delta_psnr"].values()))) == 4
    assert {"next_frame_error_read_codes", "next_frame_error_random_codes", "code_perplexity"} <= set(
        result["code_use"]
    )


# --- play -----------------------------------------------------------------------------------------


def png_bytes(height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_genie_run_plays_its_latent_actions_on_keys_1_to_8(run_dir):
    pytest.importorskip("starlette", reason="wmlab play needs its extra: pip install 'wmlab[play]'")
    from wmlab.play.session import PlaySession, ProtocolError, load_playable

    playable = load_playable(run_dir)
    info = playable.describe()
    keys = [action["keys"] for action in info["controls"]["actions"]]
    assert keys == [[[str(index)]] for index in range(1, 9)] and info["controls"]["turn_based"]
    assert info["real_environment"] is False and info["upload"] and info["algorithm"] == "genie"
    session = PlaySession(playable, seed=0)
    frame = session.reset()
    assert frame.real is None and frame.source == "reset" and frame.dream.shape == (64, 64, 3)
    frame = session.step(7)
    assert frame.step == 1 and frame.action == 7 and frame.real is None
    # The MaskGIT steps per frame are a slider, starting at the model's own.
    assert playable.knobs == {"temperature": 1.0, "sampling_steps": playable.model.config.maskgit_steps}
    session.settings(sampling_steps=2)
    assert session.step(0).step == 2
    # Any image starts a world: a 30 x 50 PNG is cropped and resized to 64 x 64.
    frame = session.start_from_image(png_bytes(30, 50))
    assert frame.source == "image" and frame.dream.shape == (64, 64, 3)
    assert session.step(0).step == 1
    with pytest.raises(ProtocolError, match="not an image"):
        session.start_from_image(b"no picture here")


def test_the_page_plays_genie_with_digit_keys_in_chromium(run_dir, tmp_path):
    pytest.importorskip("starlette", reason="wmlab play needs its extra: pip install 'wmlab[play]'")
    from wmlab.play.measure import browser_missing, measure, open_page
    from wmlab.play.server import BackgroundServer, create_app
    from wmlab.play.session import load_playable

    missing = browser_missing()
    if missing:
        pytest.skip(missing)

    with BackgroundServer(create_app(load_playable(run_dir))) as url:
        with open_page(url + "?speed=0", str(tmp_path / "profile")) as (page, errors):
            assert "latent 8" in page.inner_text("#keys") and page.is_disabled("#show-real")
            for expected, key in enumerate(["3", "8"], start=1):
                page.keyboard.press(key)
                page.wait_for_function(f"() => window.wmlabPlay.lastFrame.step === {expected}", timeout=10_000)
            assert page.evaluate("() => window.wmlabPlay.lastFrame.action") == 7
            upload = tmp_path / "photo.png"
            upload.write_bytes(png_bytes(90, 40))
            page.set_input_files("#upload", str(upload))
            page.wait_for_function("() => window.wmlabPlay.lastFrame.source === 'image'", timeout=10_000)
            assert errors == []
        result = measure(url, seconds=2.0)  # turn-based: the next key as soon as a frame is drawn
    assert result["frames_per_second"] > 0 and result["key_presses_measured"] >= 1


# --- few-label behavioural cloning ------------------------------------------------------------------


def test_latent_to_real_map_by_hand():
    from wmlab.pipelines.genie_cloning import latent_to_real

    latent = np.array([0, 0, 0, 2, 2, 5])
    real = np.array([1, 1, 3, 4, 4, 4])
    # Latent 0 was seen with 1, 1, 3 -> 1; latent 2 -> 4; latent 5 -> 4; unseen ones -> 4, the most frequent.
    assert latent_to_real(latent, real, codes=8, actions=5).tolist() == [1, 4, 4, 4, 4, 4, 4, 4]


@pytest.mark.parametrize(
    "env_id, env_kwargs",
    [
        ("two-rooms-discrete", {}),
        ("minigrid:Empty-8x8", {"observation": "rgb_full", "size": 64, "agent_start_pos": None}),
    ],
)
def test_the_scripted_expert_reaches_the_goal(env_id, env_kwargs):
    if env_id.startswith("minigrid"):
        pytest.importorskip("minigrid", reason="MiniGrid is an optional extra")
    from wmlab.pipelines.genie_cloning import record_expert

    frames, actions, success = record_expert(env_id, env_kwargs, episodes=3, steps=60, seed=0)
    assert success == 1.0 and [len(f) for f in frames] == [len(a) + 1 for a in actions]
    if env_id.startswith("minigrid"):
        # A shortest path on the empty 8 x 8 room (6 x 6 free cells): at most 10 steps and 3 turns.
        assert max(len(a) for a in actions) <= 13 and set(np.concatenate(actions).tolist()) <= {0, 1, 2}


def test_cloning_pipeline_smoke(run_dir, tmp_path):
    out = tmp_path / "cloning.json"
    arguments = ["pipeline", "genie-cloning", str(run_dir), "--labels", "5", "--expert-episodes", "2"]
    arguments += ["--updates", "2", "--batch-size", "4", "--eval-episodes", "1", "--episode-steps", "10"]
    assert main([*arguments, "--seeds", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["seed"] for row in result["seeds"]] == [0, 1]
    assert set(result["summary"]) == {"latent_policy", "oracle_all_labels", "random"}
    assert len(result["seeds"][0]["map"]) == 8 and np.asarray(result["expert_video_grounding"]["confusion"]).shape == (
        5,
        8,
    )


def test_a_world_model_fitted_with_actions_plays_beside_its_environment(dataset, tmp_path):
    pytest.importorskip("starlette", reason="wmlab play needs its extra: pip install 'wmlab[play]'")
    from wmlab.play.session import PlaySession, load_playable

    run = tmp_path / "rssm"
    arguments = ["--model", "rssm", "--dataset", dataset, "--run-dir", run, "--world-model.size", "tiny"]
    assert train(*arguments, "--train.updates", 2, "--train.sequence-length", 8, *QUIET) == 0
    playable = load_playable(run)
    info = playable.describe()
    assert info["real_environment"] and info["env"] == "two-rooms-discrete" and info["controls"]["idle"] == 0
    frame = PlaySession(playable, seed=0).reset()
    assert frame.real.shape == (64, 64, 3) and frame.dream.shape == (64, 64, 3)


# --- delta-PSNR beside models trained with the real actions -----------------------------------------


def test_compare_splits_the_genie_runs_episodes_and_measures_every_run_on_the_same_windows(run_dir, tmp_path):
    from wmlab.data.video import load_video
    from wmlab.pipelines.genie import load_genie_run

    split = tmp_path / "train-split"
    assert main(["pipeline", "genie-compare", "split", str(run_dir), "--out", str(split)]) == 0
    _, info = load_genie_run(run_dir)
    training, held_out = load_video(info["dataset"]).split(info["held_out"], info["seed"])
    written = json.loads((split / "manifest.json").read_text())
    names = [Path(entry["file"]).name for entry in written["episodes"]]
    assert names == [Path(source).name for source in training.sources]
    assert not set(names) & {Path(source).name for source in held_out.sources}
    assert written["num_steps"] == training.num_frames
    rssm = tmp_path / "rssm"
    tiny = ["--world-model.size", "tiny", "--world-model.stochastic-size", "4", "--world-model.reward-bins", "15"]
    assert train("--model", "rssm", "--dataset", split, "--run-dir", rssm, "--train.updates", 2, *tiny, *QUIET) == 0
    out = tmp_path / "compare.json"
    arguments = ["pipeline", "genie-compare", "table", str(run_dir), str(rssm), "--sequences", "3", "--out", str(out)]
    assert main(arguments) == 0
    result = json.loads(out.read_text())
    assert [row["model"] for row in result["rows"]] == ["GenieWorldModel", "RSSM"]
    for row in result["rows"]:
        for draw in ("uniform", "shuffled"):
            assert len(row[draw]["delta_psnr"]) == 4 and all(np.isfinite(row[draw]["delta_psnr"]))
            # delta-PSNR is the difference of the two PSNRs it reports.
            expected = np.subtract(row[draw]["psnr_real_actions"], row[draw]["psnr_random_actions"])
            np.testing.assert_allclose(row[draw]["delta_psnr"], expected, atol=1e-6)

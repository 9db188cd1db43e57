"""The main job's measurements and report: the moving-pixel error, the progress estimate under a
time limit, and (at a tiny budget) every report section of the `make run` command."""

from __future__ import annotations

import numpy as np
import pytest

from wmlab.eval import world_model_metrics as metrics


def square_clip(positions: list[int], size: int = 16) -> np.ndarray:
    """uint8 (1, len(positions), size, size, 3): a dark background with a bright 3x3 square at
    column `position` of row 6."""
    frames = np.full((1, len(positions), size, size, 3), 20, dtype=np.uint8)
    for step, column in enumerate(positions):
        frames[0, step, 6:9, column : column + 3] = 230
    return frames


def test_moving_pixel_error_of_perfect_background_and_repeated_predictions():
    clip = square_clip([1, 5, 9])  # the last context frame has the square at column 1
    reference, future = clip[:, 0], clip[:, 1:]
    perfect = metrics.moving_pixel_errors(future, future, reference)
    assert np.allclose(perfect["moving_mse"], 0.0)
    # The baseline is exactly "predict the reference frame".
    repeated = metrics.moving_pixel_errors(future, np.repeat(reference[:, None], 2, 1), reference)
    assert np.allclose(repeated["moving_mse"], repeated["moving_mse_repeat_last"])
    assert repeated["moving_mse_repeat_last"][0] == pytest.approx(((230 - 20) / 255) ** 2)
    # Drawing only the background (no square anywhere) is wrong on the new square's pixels only:
    # half the baseline's error, when the square moved clear of where it was.
    background = np.full_like(future, 20)
    drawn = metrics.moving_pixel_errors(future, background, reference)
    assert drawn["moving_mse"] == pytest.approx(drawn["moving_mse_repeat_last"] / 2)
    # 18 of 256 pixels move (two 3x3 squares).
    assert drawn["moving_fraction"][0] == pytest.approx(18 / 256)


def test_moving_pixel_error_is_nan_where_nothing_moves():
    clip = square_clip([4, 4])
    result = metrics.moving_pixel_errors(clip[:, 1:], clip[:, 1:], clip[:, 0])
    assert np.isnan(result["moving_mse"][0]) and result["moving_fraction"][0] == 0.0


# --- progress under a time limit --------------------------------------------------------------


def test_the_estimate_never_exceeds_what_is_left_of_the_time_limit():
    from wmlab.core.progress import seconds_left

    # 10^6 steps at 2 steps per second would take days; the limit leaves 60 seconds.
    assert (
        seconds_left(1000, 1_000_000, elapsed=540.0, time_limit=600.0, session_steps=1000, session_seconds=500.0)
        == 60.0
    )
    # Steps that end before the limit: their own estimate.
    assert seconds_left(
        900, 1000, elapsed=100.0, time_limit=600.0, session_steps=900, session_seconds=90.0
    ) == pytest.approx(10.0)
    # Past the limit (the final evaluation running): zero, never negative.
    assert seconds_left(10, 1000, elapsed=700.0, time_limit=600.0, session_steps=10, session_seconds=700.0) == 0.0
    # No limit and no pace yet: unknown.
    assert seconds_left(0, 1000, elapsed=0.0, time_limit=0.0, session_steps=0, session_seconds=0.0) is None


def test_a_time_limited_run_with_slow_evaluations_ends_within_its_limit(tmp_path, monkeypatch):
    import time

    from wmlab.agents.dyna.config import DynaConfig
    from wmlab.core.progress import TrainingProgress
    from wmlab.runs.config import TrainConfig
    from wmlab.train import loop

    evaluate = loop.evaluate_agent

    def slow_evaluation(*arguments, **keywords):  # every evaluation takes 0.4 s
        time.sleep(0.4)
        return evaluate(*arguments, **keywords)

    estimates = []
    update = TrainingProgress.update

    def recording_update(self, steps, elapsed, note=""):
        left = update(self, steps, elapsed, note)
        estimates.append((elapsed, left))
        return left

    monkeypatch.setattr(loop, "evaluate_agent", slow_evaluation)
    monkeypatch.setattr(TrainingProgress, "update", recording_update)
    limit = 1.5
    train = TrainConfig(
        steps=10**9,
        time_limit=limit,
        eval_every=200,
        eval_episodes=1,
        log_every=100,
        checkpoint_every=10**9,
        progress=True,
        tensorboard=False,
    )
    spec = loop.RunSpec("dyna-q", "dyna-maze", train=train, agent=DynaConfig())
    summary = loop.Trainer(spec, tmp_path / "run").run()
    assert summary["stopped_by"] == "time_limit" and "eval/return" in summary
    # The final evaluation fits inside the limit (training stopped early by its last duration).
    assert summary["wall_seconds"] <= limit + 0.3
    assert estimates and all(left is not None and elapsed + left <= limit + 1e-6 for elapsed, left in estimates)


def test_train_help_shows_the_named_algorithm_and_its_config(capsys):
    from wmlab.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--algo", "planet", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: planet)" in text and "(default: dyna-q)" not in text
    assert "--agent.planner.candidates" in text


# --- the main job's command at a tiny budget ----------------------------------------------------


def test_the_main_job_writes_every_report_section_within_its_time_limit(tmp_path, capsys, monkeypatch):
    import json
    import re

    from wmlab.cli import main
    from wmlab.core.progress import TrainingProgress

    estimates = []
    update = TrainingProgress.update

    def recording_update(self, steps, elapsed, note=""):
        estimates.append((elapsed, update(self, steps, elapsed, note), self.time_limit))
        return estimates[-1][1]

    monkeypatch.setattr(TrainingProgress, "update", recording_update)
    run_dir = tmp_path / "main"
    assert (
        main(["pipeline", "main", "--run-dir", str(run_dir), "--quick", "--time-limit", "600", "--reserve", "300"]) == 0
    )
    printed = capsys.readouterr().out
    assert "moving pixels at horizon 1" in printed and f"wmlab play {run_dir}" in printed
    result = json.loads((run_dir / "main_job.json").read_text())
    # The bar's estimate stays inside the training budget (the limit less the reserve).
    assert estimates and all(limit == 300 and elapsed + left <= limit for elapsed, left, limit in estimates)
    assert result["wall_seconds"] <= 300 and result["total_seconds"] <= 600
    page = (run_dir / "report.html").read_text()
    # The labelled open-loop dream, and how to read it.
    assert (run_dir / "videos" / "open_loop_image.gif").is_file()
    assert "columns real | imagined | error" in page and "imagines from the real actions" in page
    # The evaluation curve (return and success, several evaluations) and the loss curves of the
    # world model's terms and of the planner, one axes per metric.
    match = re.search(r'data-metric="eval/return".*?<figcaption>([^<]*)</figcaption>', page, re.DOTALL)
    assert match and "eval/success" in match.group(1) and "(4 evaluations)" in match.group(1)
    assert re.findall(r'data-namespace="([^"]+)"', page)[:4] == ["eval", "train", "loss", "plan"]
    assert "loss/image" in page and "loss/reward" in page and "plan/imagined_return" in page
    # The moving-pixel error beside the repeat-the-last-frame baseline, and how to play.
    assert "moving-pixel MSE, repeat last real frame" in page
    assert f"wmlab play {run_dir}" in page


# --- the foreground-weighted image loss ---------------------------------------------------------


def test_foreground_weights_mark_the_pixels_that_differ_from_the_batch_mean_frame():
    import torch

    from wmlab.losses.pixels import foreground_weights

    frames = torch.full((4, 3, 8, 8), -0.4)
    frames[0, 0, 2:4, 2:4] = 0.4  # a bright square in one frame of four
    weights = foreground_weights(frames, weight=10.0, threshold=0.1)
    assert weights.shape == (4, 1, 8, 8)
    # Where the square is, every frame differs from the mean frame (the square's frame by 0.6,
    # the others by 0.2): the region where something moves weighs 10, the rest 1.
    assert torch.all(weights[:, 0, 2:4, 2:4] == 10.0)
    assert weights.sum() == 4 * 64 + 9 * 4 * 4
    # A static batch has no foreground.
    assert torch.all(foreground_weights(torch.zeros(3, 3, 8, 8), 10.0, 0.1) == 1.0)


def test_the_foreground_weight_scales_the_image_loss_but_not_the_reported_mse():
    import dataclasses

    import torch
    from gymnasium import spaces

    from wmlab.core.errors import ConfigError
    from wmlab.core.types import Batch
    from wmlab.models.rssm import RSSM, SIZES, RSSMConfig

    observation_space = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    action_space = spaces.Box(-1, 1, (2,), np.float32)
    generator = np.random.default_rng(0)
    images = np.full((2, 3, 16, 16, 3), 20, dtype=np.uint8)
    images[0, :, 4:8, 4:8] = 230
    batch = Batch(
        obs={"image": images},
        action=generator.uniform(-1, 1, (2, 3, 2)).astype(np.float32),
        reward=np.zeros((2, 3), np.float32),
        is_first=np.eye(2, 3, dtype=bool)[[0, 0]],
        is_last=np.zeros((2, 3), bool),
        is_terminal=np.zeros((2, 3), bool),
    )
    config = RSSMConfig(size=SIZES["tiny"], cnn_multipliers=(1, 2), stochastic_size=4)
    results = []
    for weight in (1.0, 10.0):
        torch.manual_seed(0)
        model = RSSM(dataclasses.replace(config, foreground_weight=weight), observation_space, action_space)
        model.generator = torch.Generator().manual_seed(1)
        results.append(model.loss(batch)[1])
    plain, weighted = results
    assert weighted["loss/image"] > 1.5 * plain["loss/image"]
    assert weighted["wm/image_mse"] == pytest.approx(plain["wm/image_mse"])
    with pytest.raises(ConfigError, match="foreground_weight"):
        dataclasses.replace(config, foreground_weight=0.5)


def test_two_rooms_success_bonus_zero_leaves_the_dense_reward_the_decrease_of_the_path_length():
    from wmlab.envs.two_rooms import TwoRooms

    rewards = {}
    for bonus in (1.0, 0.0):
        env = TwoRooms(observation="state", reward="dense", goal_in_other_room=False, success_bonus=bonus)
        env.reset(seed=0, options={"door_y": 0.5, "agent": (0.2, 0.5), "goal": (0.2, 0.6)})
        _, reward, terminated, _, info = env.step(np.array([0.0, 1.0]))  # 0.05 up: inside the goal's radius
        assert terminated and info["success"]
        rewards[bonus] = reward
    assert rewards[0.0] == pytest.approx(0.05)
    assert rewards[1.0] == pytest.approx(1.05)


def test_two_rooms_distance_reward_is_minus_the_path_length_after_the_step():
    from wmlab.envs.two_rooms import TwoRooms

    env = TwoRooms(observation="state", reward="distance", goal_in_other_room=False, success_bonus=0.0)
    env.reset(seed=0, options={"door_y": 0.5, "agent": (0.2, 0.3), "goal": (0.2, 0.6)})
    _, reward, terminated, _, info = env.step(np.array([0.0, 1.0]))  # 0.05 up: 0.25 from the goal
    assert not terminated and reward == pytest.approx(-0.25) and reward == pytest.approx(-info["distance"])
    _, again, _, _, _ = env.step(np.array([0.0, 0.0]))  # standing still pays the same again
    assert again == pytest.approx(reward)
    with pytest.raises(ValueError, match="'distance'"):
        TwoRooms(reward="closer")


def test_no_periodic_evaluation_before_eval_starts(tmp_path):
    import json

    from wmlab.agents.dyna.config import DynaConfig
    from wmlab.runs.config import TrainConfig
    from wmlab.train import loop

    train = TrainConfig(
        steps=300, eval_every=50, eval_starts=200, eval_episodes=1, log_every=100, checkpoint_every=1000
    )
    loop.Trainer(loop.RunSpec("dyna-q", "dyna-maze", train=train, agent=DynaConfig()), tmp_path / "run").run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "eval/return" in line] == [200, 250, 300]

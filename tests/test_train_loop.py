"""The generic training loop: resume equality, run-directory safety, CLI errors, data parallelism."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wmlab.agents.mpc.config import MPCConfig
from wmlab.cli import main
from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.core.serialization import load_state
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.planners.shooting import RandomShootingConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec, load_trained_agent
from wmlab.train.loop import Trainer

TINY_TRAIN = TrainConfig(
    steps=300,
    learning_starts=60,
    train_ratio=32.0,
    batch_size=4,
    sequence_length=8,
    eval_every=150,
    eval_episodes=1,
    checkpoint_every=150,
    log_every=30,
    progress=False,
    tensorboard=False,
)
TINY_MPC = MPCConfig(
    model=MLPWorldModelConfig(hidden_size=32, layers=2),
    planner=RandomShootingConfig(horizon=4, candidates=32),
    random_steps=80,
    exploration_noise=0.1,
)
TINY_ENV = {"max_episode_steps": 40}


def tiny_spec(steps: int) -> RunSpec:
    return RunSpec(
        "mpc", "two-rooms-state", train=replace(TINY_TRAIN, steps=steps), agent=TINY_MPC, env_kwargs=TINY_ENV
    )


def metric_lines(run_dir: Path, prefix: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {key: value for key, value in line.items() if key == "step" or key.startswith(prefix)}
        for line in lines
        if any(key.startswith(prefix) for key in line)
    ]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = Trainer(tiny_spec(300), tmp_path / "straight")
    straight_summary = straight.run()

    first = Trainer(tiny_spec(150), tmp_path / "resumed")
    first.run()
    resumed = Trainer(tiny_spec(300), tmp_path / "resumed", resume=True)
    resumed_summary = resumed.run()

    for key in ("env_steps", "updates", "episodes"):
        assert resumed_summary[key] == straight_summary[key], key
    assert resumed_summary["env_steps"] == 300 and resumed_summary["updates"] > 0
    assert metric_lines(tmp_path / "resumed", "loss/") == metric_lines(tmp_path / "straight", "loss/")
    assert metric_lines(tmp_path / "resumed", "eval/") == metric_lines(tmp_path / "straight", "eval/")
    assert resumed_summary["eval/return"] == straight_summary["eval/return"]

    straight_episodes, resumed_episodes = list(straight.replay.episodes()), list(resumed.replay.episodes())
    assert len(straight_episodes) == len(resumed_episodes) > 0
    for a, b in zip(straight_episodes, resumed_episodes):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert len(straight.replay) == len(resumed.replay)

    weights_a = load_state(tmp_path / "straight" / "checkpoints" / "rank0", "agent")
    weights_b = load_state(tmp_path / "resumed" / "checkpoints" / "rank0", "agent")
    for name, tensor in weights_a["world_model"].items():
        assert torch.equal(tensor, weights_b["world_model"][name]), name


def test_a_time_limit_ends_the_run_like_its_last_step(tmp_path):
    spec = tiny_spec(300)
    spec = replace(spec, train=replace(spec.train, time_limit=1e-6))
    summary = Trainer(spec, tmp_path / "run").run()
    # Checked after every step: one step, then the final evaluation and checkpoint.
    assert summary["stopped_by"] == "time_limit" and summary["env_steps"] == 1
    assert "eval/return" in summary
    assert load_state(tmp_path / "run" / "checkpoints" / "rank0", "loop")["counters"]["env_steps"] == 1
    untimed = Trainer(tiny_spec(60), tmp_path / "untimed").run()
    assert untimed["stopped_by"] == "steps" and untimed["env_steps"] == 60


def test_a_run_directory_is_never_overwritten_without_force(tmp_path):
    Trainer(tiny_spec(60), tmp_path / "run").run()
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        Trainer(tiny_spec(60), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    Trainer(tiny_spec(60), tmp_path / "run", force=True).run()


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def test_cli_train_eval_report_with_dyna(tmp_path, capsys):
    run_dir = tmp_path / "maze"
    code = run_cli(
        "train",
        "--algo",
        "dyna-q",
        "--env",
        "dyna-maze",
        "--run-dir",
        run_dir,
        "--train.steps",
        2000,
        "--train.eval-every",
        1000,
        "--train.eval-episodes",
        1,
        "--train.no-progress",
        "--train.no-tensorboard",
        "--agent.planning-steps",
        10,
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 2000 and summary["episodes"] > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["agent"]["planning_steps"] == 10
    assert run_cli("eval", run_dir, "--episodes", 2) == 0
    assert json.loads((run_dir / "eval.json").read_text())["episodes"] == 2
    assert run_cli("report", run_dir) == 0
    assert (run_dir / "report.html").stat().st_size > 1000
    # resume extends the run and refuses changes that would make it another run
    assert run_cli("train", "--resume", run_dir, "--train.steps", 2500, "--train.no-progress") == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 2500
    capsys.readouterr()
    assert run_cli("train", "--resume", run_dir, "--agent.planning-steps", 3) == 2
    assert "cannot change: agent.planning_steps" in capsys.readouterr().err


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert run_cli("train", "--algo", "dyna-q", "--env", "dyna-maez", "--run-dir", tmp_path / "a") == 2
    assert "Did you mean: dyna-maze" in capsys.readouterr().err
    assert run_cli("train", "--algo", "dynaq", "--run-dir", tmp_path / "a") == 2
    assert "Did you mean: dyna-q" in capsys.readouterr().err
    assert run_cli("train", "--algo", "dyna-q", "--env", "CartPole-v1", "--run-dir", tmp_path / "b") == 2
    assert "discrete" in capsys.readouterr().err.lower()
    assert run_cli("train", "--algo", "mpc", "--env", "two-rooms", "--run-dir", tmp_path / "c") == 2
    assert "vector" in capsys.readouterr().err.lower()
    assert run_cli("train", "--resume", tmp_path / "missing") == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    Trainer(tiny_spec(60), tmp_path / "run").run()
    checkpoint = tmp_path / "run" / "checkpoints" / "rank0" / "agent.safetensors"
    checkpoint.write_bytes(b"not a checkpoint")
    assert run_cli("train", "--resume", tmp_path / "run", "--train.steps", 120) == 2
    assert "corrupt" in capsys.readouterr().err
    (tmp_path / "run" / "config.json").write_text("{ truncated")
    assert run_cli("train", "--resume", tmp_path / "run") == 2
    assert "corrupt" in capsys.readouterr().err


def test_list_shows_every_registered_name(capsys):
    from wmlab.core.registry import ALGORITHMS, ENVIRONMENTS, MODELS

    assert run_cli("list") == 0
    output = capsys.readouterr().out
    for registry in (ALGORITHMS, MODELS, ENVIRONMENTS):
        for name in registry.names():
            assert name in output


def test_data_parallel_smoke_two_processes(tmp_path):
    """Two CPU processes (gloo): rank 0 alone logs; averaged gradients keep both ranks' weights equal."""
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "wmlab.cli",
        "train",
        "--algo",
        "mpc",
        "--env",
        "two-rooms-state",
        "--run-dir",
        str(run_dir),
        "--train.steps",
        "200",
        "--train.learning-starts",
        "40",
        "--train.batch-size",
        "4",
        "--train.sequence-length",
        "8",
        "--train.eval-every",
        "0",
        "--train.eval-episodes",
        "1",
        "--train.log-every",
        "50",
        "--train.no-progress",
        "--train.no-tensorboard",
        "--agent.model.hidden-size",
        "32",
        "--agent.planner.candidates",
        "16",
        "--agent.planner.horizon",
        "3",
        "--agent.random-steps",
        "60",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["env_steps"] == 200 and summary["updates"] > 0
    log_steps = [
        line["step"]
        for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "train/updates" in line
    ]
    assert log_steps == [50, 100, 150, 200]  # global steps, each written once: by rank 0 alone
    rank0 = load_state(run_dir / "checkpoints" / "rank0", "agent")["world_model"]
    rank1 = load_state(run_dir / "checkpoints" / "rank1", "agent")["world_model"]
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # each rank collected its own data (100 steps each: the episodes are still in progress)
    ongoing0 = np.load(run_dir / "replay" / "rank0" / "ongoing" / "env0.npz")
    ongoing1 = np.load(run_dir / "replay" / "rank1" / "ongoing" / "env0.npz")
    assert len(ongoing0["vector"]) == len(ongoing1["vector"]) == 101
    assert not np.array_equal(ongoing0["vector"], ongoing1["vector"])


def test_help_documents_every_field_and_bad_overrides_fail(capsys):
    import dataclasses

    from wmlab.agents.mpc.config import MPCConfig

    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "--algo", "mpc", "--help")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(MPCConfig):
        assert f"--agent.{field.name.replace('_', '-')}" in help_text
    for field in dataclasses.fields(TrainConfig):
        assert f"--train.{field.name.replace('_', '-')}" in help_text
    assert "Replayed steps per environment step" in help_text  # field docstrings become the help
    for bad in (["--train.steps", "many"], ["--agent.no-such-field", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            run_cli("train", "--algo", "mpc", "--env", "two-rooms-state", *bad)
        assert exit_info.value.code == 2


def test_evaluation_episodes_play_with_the_eval_env_kwargs_over_the_runs(tmp_path):
    from wmlab.cli import parse_train_arguments
    from wmlab.runs.directory import load_run_spec

    spec = replace(tiny_spec(150), eval_env_kwargs={"max_episode_steps": 5})
    assert spec.evaluation_env_kwargs == {"max_episode_steps": 5}
    Trainer(spec, tmp_path / "run").run()
    evaluations = metric_lines(tmp_path / "run", "eval/length")
    training = metric_lines(tmp_path / "run", "train/length")
    assert evaluations and all(line["eval/length"] <= 5 for line in evaluations)
    assert max(line["train/length"] for line in training) > 5  # training kept the run's 40-step episodes
    assert load_run_spec(tmp_path / "run").eval_env_kwargs == {"max_episode_steps": 5}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "eval_env_kwargs": [5]}))
    with pytest.raises(RunDirectoryError, match="eval_env_kwargs must be a JSON object"):
        load_run_spec(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    # from the command line, and fixed for the run's life: a resume may not change it
    parsed, *_ = parse_train_arguments(
        ["--algo", "dyna-q", "--env", "dyna-maze", "--eval-env-kwargs", '{"max_episode_steps": 7}']
    )
    assert parsed.eval_env_kwargs == {"max_episode_steps": 7} and parsed.env_kwargs == {}
    with pytest.raises(WmlabError, match="cannot change: eval_env_kwargs"):
        parse_train_arguments(["--resume", str(tmp_path / "run"), "--eval-env-kwargs", "{}"])


def test_kept_weights_are_runs_of_their_own_and_survive_a_resume(tmp_path):
    spec = tiny_spec(300)
    spec = replace(spec, train=replace(spec.train, keep_every=100))
    straight = tmp_path / "straight"
    Trainer(spec, straight).run()
    assert sorted(p.name for p in (straight / "kept").iterdir()) == ["step-100", "step-200", "step-300"]

    # Each is a run directory: evaluation loads it; the weights move between keeps and the last
    # equals the final checkpoint (no update after step 300).
    first_spec, first = load_trained_agent(straight / "kept" / "step-100")
    assert first_spec == spec
    final = load_state(straight / "checkpoints" / "rank0", "agent")["world_model"]
    last = load_state(straight / "kept" / "step-300" / "checkpoints" / "rank0", "agent")["world_model"]
    early = first.state_dict()["world_model"]
    assert all(torch.equal(last[name], final[name]) for name in final)
    assert any(not torch.equal(early[name], final[name]) for name in final)
    with pytest.raises(RunDirectoryError, match="kept along a run"):
        Trainer(spec, straight / "kept" / "step-100", resume=True)

    # A resumed run keeps the same steps with the same weights; a keep of a lost step (written
    # after the checkpoint it resumes from, before a crash) is dropped.
    resumed = tmp_path / "resumed"
    Trainer(replace(spec, train=replace(spec.train, steps=150)), resumed).run()
    stale = resumed / "kept" / "step-250"  # never a keep step: only the resume can remove it
    stale.mkdir(parents=True)
    Trainer(spec, resumed, resume=True).run()
    assert sorted(p.name for p in (resumed / "kept").iterdir()) == ["step-100", "step-200", "step-300"]
    for step in (100, 200, 300):
        a = load_state(straight / "kept" / f"step-{step}" / "checkpoints" / "rank0", "agent")["world_model"]
        b = load_state(resumed / "kept" / f"step-{step}" / "checkpoints" / "rank0", "agent")["world_model"]
        assert all(torch.equal(a[name], b[name]) for name in a), step

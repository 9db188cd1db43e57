"""benchmarks/paper_setting.py: its jobs are the papers' settings, and its snapshots carry curves only."""

from __future__ import annotations

import argparse
import importlib.util
import tarfile
from pathlib import Path

import pytest

from wmlab.cli import parse_train_arguments
from wmlab.models.rssm import SIZES as RSSM_SIZES
from wmlab.models.tdmpc import SIZES as TDMPC_SIZES

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "paper_setting.py"


@pytest.fixture(scope="module")
def paper_setting():
    spec = importlib.util.spec_from_file_location("paper_setting", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsed(paper_setting, job: str, tmp_path: Path, smoke: bool):
    arguments = argparse.Namespace(smoke=smoke, time_limit=380.0, device="cpu", threads=2)
    argv = paper_setting.command(job, 1, tmp_path / job, arguments)
    assert argv[1:4] == ["-m", "wmlab.cli", "train"]
    spec, run_dir, resume, force = parse_train_arguments(argv[4:])
    assert run_dir == tmp_path / job and not resume and force
    return spec


def test_the_jobs_are_the_papers_settings(paper_setting, tmp_path):
    tdmpc2 = parsed(paper_setting, "tdmpc2", tmp_path, smoke=False)
    assert (tdmpc2.algorithm, tdmpc2.env, tdmpc2.env_kwargs) == ("tdmpc2", "dmc:cartpole-swingup", {"action_repeat": 2})
    assert tdmpc2.agent.model.size == TDMPC_SIZES["5M"] and tdmpc2.agent.planner.samples == 512
    assert (tdmpc2.train.batch_size, tdmpc2.train.sequence_length, tdmpc2.train.train_ratio) == (256, 4, 1024)
    assert (tdmpc2.train.time_limit, tdmpc2.train.seed, tdmpc2.train.device) == (380.0, 1, "cpu")
    dreamer = parsed(paper_setting, "dreamer", tmp_path, smoke=False)
    assert dreamer.agent.model.size == RSSM_SIZES["size12m"] and dreamer.agent.model.latent == "categorical"
    assert (dreamer.train.batch_size, dreamer.train.sequence_length, dreamer.train.train_ratio) == (16, 64, 512)
    planet = parsed(paper_setting, "planet", tmp_path, smoke=False)
    assert (
        planet.env_kwargs == {"observation": "pixels", "action_repeat": 8} and planet.agent.model.latent == "gaussian"
    )
    assert (planet.agent.planner.candidates, planet.agent.planner.horizon, planet.agent.planner.iterations) == (
        1000,
        12,
        10,
    )
    # PlaNet's 100 updates of 50 x 50 per 125-step episode
    assert planet.train.train_ratio * 125 / (planet.train.batch_size * planet.train.sequence_length) == 100


def test_smoke_runs_are_short_and_untimed(paper_setting, tmp_path):
    for job in paper_setting.JOBS:
        spec = parsed(paper_setting, job, tmp_path, smoke=True)
        assert spec.train.steps <= 100 and spec.env_kwargs["time_limit"] == 200
        assert spec.train.time_limit in (None, 0, 0.0)


def test_snapshots_carry_metrics_but_not_checkpoints(paper_setting, tmp_path):
    run = tmp_path / "runs" / "tdmpc2-seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "checkpoints" / "agent.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "runs" / "tdmpc2-seed0.log").write_text("log\n")
    archive = tmp_path / "out" / "runs.tar.gz"
    archive.parent.mkdir()
    paper_setting.snapshot(tmp_path / "runs", archive)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["runs/tdmpc2-seed0.log", "runs/tdmpc2-seed0/metrics.jsonl"]

"""Runs that survive anything (issue 25): each test reproduces one defect of a run a user shares,
kills or mistypes, and asserts the behaviour the fix promises. The SIGKILL fault injection is in
tests/test_fault_injection.py."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wmlab.agents.mpc.config import MPCConfig
from wmlab.cli import main
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.planners.shooting import RandomShootingConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer

TINY_TRAIN = TrainConfig(
    steps=80,
    learning_starts=20,
    train_ratio=8.0,
    batch_size=4,
    sequence_length=4,
    eval_every=0,
    eval_episodes=1,
    checkpoint_every=20,
    log_every=10,
    progress=False,
    tensorboard=False,
)
TINY_MPC = MPCConfig(
    model=MLPWorldModelConfig(hidden_size=16, layers=1),
    planner=RandomShootingConfig(horizon=2, candidates=8),
    random_steps=30,
)
TINY_ENV = {"max_episode_steps": 15}


def tiny_spec(steps: int, **train) -> RunSpec:
    return RunSpec(
        "mpc", "two-rooms-state", train=replace(TINY_TRAIN, steps=steps, **train), agent=TINY_MPC, env_kwargs=TINY_ENV
    )


def run_cli(*arguments) -> int:
    return main([str(argument) for argument in arguments])


def checkpoint_steps(monkeypatch) -> list[int]:
    """Record the env step of every checkpoint written from now on."""
    written = []
    original = Trainer.save_checkpoint

    def recording(self):
        written.append(self.counters.env_steps)
        original(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", recording)
    return written


# ------------------------------------------------------------------------------------------------
# Defect 5: every resume wrote an extra checkpoint one step later.


def test_resume_writes_checkpoints_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    written = checkpoint_steps(monkeypatch)
    Trainer(tiny_spec(80), tmp_path / "straight").run()
    straight = list(written)
    written.clear()
    Trainer(tiny_spec(40), tmp_path / "resumed").run()
    Trainer(tiny_spec(80), tmp_path / "resumed", resume=True).run()
    assert straight == [20, 40, 60, 80]
    assert written == [20, 40, 60, 80]


# ------------------------------------------------------------------------------------------------
# Defect 3: a crash between the two renames of a checkpoint write left a run that could not resume.


def final_state(run_dir: Path) -> dict:
    """What must not depend on interruptions: weights, optimiser, counters, replay, log lines."""
    from wmlab.core.serialization import load_state

    checkpoint = run_dir / "checkpoints" / "rank0"
    counters = dict(load_state(checkpoint, "loop")["counters"])
    counters.pop("elapsed_seconds")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time"), line.pop("train/steps_per_second", None)
    episodes = sorted(path.name for path in (run_dir / "replay" / "rank0" / "episodes").glob("*.npz"))
    return {"agent": load_state(checkpoint, "agent"), "counters": counters, "lines": lines, "episodes": episodes}


def assert_same_state(first: dict, second: dict) -> None:
    import torch

    assert first["counters"] == second["counters"]
    assert first["lines"] == second["lines"]
    assert first["episodes"] == second["episodes"]
    for name, tensor in first["agent"]["world_model"].items():
        assert torch.equal(tensor, second["agent"]["world_model"][name]), name
    assert json.dumps(first["agent"]["optimizer"]["param_groups"]) == json.dumps(
        second["agent"]["optimizer"]["param_groups"]
    )
    for index, moments in first["agent"]["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, second["agent"]["optimizer"]["state"][index][key]), (index, key)


class Crash(Exception):
    """Stands for SIGKILL in-process: the files stay exactly as the kill point leaves them."""


def crash_at(monkeypatch, point: str, hit: int = 1) -> None:
    import wmlab.core.faults

    hits = []

    def kill_point(name, before=None):
        if name == point:
            hits.append(name)
            if len(hits) == hit:
                if before is not None:
                    before()
                raise Crash(point)

    for module in ("wmlab.train.loop", "wmlab.train.logger", "wmlab.data.replay"):
        if hasattr(__import__(module, fromlist=["_"]), "kill_point"):
            monkeypatch.setattr(f"{module}.kill_point", kill_point)
    assert point in wmlab.core.faults.POINTS


@pytest.mark.parametrize(
    "point, left",
    [("checkpoint-between-renames", ["rank0.new", "rank0.old"]), ("checkpoint-complete", ["rank0", "rank0.new"])],
)
def test_a_crash_in_the_checkpoint_renames_resumes_from_the_newest_complete_checkpoint(
    tmp_path, monkeypatch, capsys, point, left
):
    Trainer(tiny_spec(80), tmp_path / "straight").run()
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at(patch, point, hit=2)  # in the checkpoint of step 40
        with pytest.raises(Crash):
            Trainer(tiny_spec(80), run_dir).run()
    checkpoints = run_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == left
    assert run_cli("train", "--resume", run_dir, "--train.steps", 80) == 0
    error = capsys.readouterr().err
    assert "recovered" in error and "rank0.new" in error and "step 40" in error
    assert sorted(path.name for path in checkpoints.iterdir()) == ["rank0"]
    assert_same_state(final_state(run_dir), final_state(tmp_path / "straight"))


def test_an_incomplete_checkpoint_is_never_recovered(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(tiny_spec(20), run_dir).run()
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "rank0").rename(checkpoints / "rank0.old")
    (checkpoints / "rank0.new").mkdir()
    (checkpoints / "rank0.new" / "agent.json").write_text("{")  # the crash came while writing it
    assert run_cli("train", "--resume", run_dir, "--train.steps", 40) == 0
    error = capsys.readouterr().err
    assert "recovered" in error and "rank0.old" in error and "step 20" in error


# ------------------------------------------------------------------------------------------------
# Defect 4: a resume appended a second copy of every log record written after the last checkpoint.


def tensorboard_scalars(run_dir: Path) -> dict[str, list]:
    """Every scalar as TensorBoard's own reader shows it: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [
            (event.step, None if tag == "train/steps_per_second" else event.value) for event in accumulator.Scalars(tag)
        ]
        for tag in accumulator.Tags()["scalars"]
    }


@pytest.mark.parametrize("point", ["log-line", "log-torn"])
def test_a_resume_logs_as_if_the_run_had_never_stopped(tmp_path, monkeypatch, point):
    spec = tiny_spec(80, eval_every=30, tensorboard=True)
    Trainer(spec, tmp_path / "straight").run()
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at(
            patch, point, hit=4
        )  # the line of step 30 (10, 20, evaluation at 30, 30), after the checkpoint of step 20
        with pytest.raises(Crash):
            Trainer(spec, run_dir).run()
    Trainer(spec, run_dir, resume=True).run()
    resumed, straight = final_state(run_dir), final_state(tmp_path / "straight")
    assert [line["step"] for line in resumed["lines"]] == [line["step"] for line in straight["lines"]]
    assert_same_state(resumed, straight)
    scalars = tensorboard_scalars(tmp_path / "straight")
    assert [step for step, _ in scalars["train/updates"]] == list(range(10, 90, 10)) and "eval/return" in scalars
    assert tensorboard_scalars(run_dir) == scalars


# ------------------------------------------------------------------------------------------------
# Defect 6: a replay episode of the wrong shape was blamed on another file.


def replay_step(value: int, first: bool = False, last: bool = False, image=(4, 4, 3)) -> dict:
    return {
        "image": np.full(image, value % 256, np.uint8),
        "action": np.zeros(2, np.float32),
        "reward": np.float32(value),
        "is_first": first,
        "is_last": last,
        "is_terminal": False,
    }


def filled_replay(directory: Path):
    """Two complete episodes (files 000000-3, 000001-2) and one of 2 steps in progress."""
    from wmlab.data.replay import ReplayBuffer

    buffer = ReplayBuffer(directory)
    for value, (first, last) in enumerate(
        [(True, False), (False, False), (False, True), (True, False), (False, True), (True, False), (False, False)]
    ):
        buffer.add(replay_step(value, first, last))
    return buffer


def rewrite_episode(path: Path, image=(5, 4, 3)) -> None:
    with np.load(path) as archive:
        columns = {key: archive[key] for key in archive.files}
    columns["image"] = np.zeros((len(columns["reward"]), *image), np.uint8)
    with open(path, "wb") as stream:
        np.savez(stream, **columns)


@pytest.mark.parametrize("tampered", ["episodes/000000-3.npz", "episodes/000001-2.npz", "ongoing/env0.npz"])
@pytest.mark.parametrize("layout_recorded", [True, False])
def test_a_replay_file_of_the_wrong_shape_is_the_one_named(tmp_path, tampered, layout_recorded):
    from wmlab.core.errors import RunDirectoryError
    from wmlab.data.replay import ReplayBuffer

    state = filled_replay(tmp_path).checkpoint()
    if not layout_recorded:  # a checkpoint written before the layout was recorded
        state.pop("layout", None)
    path = tmp_path / tampered
    if tampered.startswith("ongoing"):
        with np.load(path) as archive:
            token = str(archive["checkpoint_token"])
    rewrite_episode(path)
    if tampered.startswith("ongoing"):
        with np.load(path) as archive:
            columns = {key: archive[key] for key in archive.files}
        columns["checkpoint_token"] = np.array(token)
        with open(path, "wb") as stream:
            np.savez(stream, **columns)
    with pytest.raises(RunDirectoryError) as raised:
        ReplayBuffer(tmp_path).load_state_dict(state)
    message = str(raised.value)
    assert tampered.split("/")[1] in message and "(5, 4, 3)" in message and "(4, 4, 3)" in message
    for other in ("000000-3.npz", "000001-2.npz", "env0.npz"):
        if other not in tampered:
            assert other not in message


# ------------------------------------------------------------------------------------------------
# Defect 7: `wmlab eval --suite` read episodes without the replay's checks (raw numpy tracebacks).


@pytest.mark.parametrize("damage", ["pickled", "garbage", "wrong length"])
def test_eval_suites_name_an_unreadable_or_pickled_episode_file(tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    Trainer(tiny_spec(40), run_dir).run()
    first, path = sorted((run_dir / "replay" / "rank0" / "episodes").glob("*.npz"))[:2]
    if damage == "pickled":
        with open(path, "wb") as stream:
            np.savez(stream, image=np.array([object()], dtype=object))
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not really an archive")
    else:
        with np.load(first) as archive:
            shorter = {key: archive[key][:5] for key in archive.files}
        with open(path, "wb") as stream:
            np.savez(stream, **shorter)  # 5 steps in a file whose name says 16
    assert run_cli("eval", run_dir, "--suite", "horizon", "--sequences", 2, "--horizon", 3, "--context", 2) == 2
    error = capsys.readouterr().err
    assert path.name in error and "Traceback" not in error


# ------------------------------------------------------------------------------------------------
# Defect 1: a run directory's config.json could make wmlab import a module placed beside it.

MODULE_TEXT = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\n"


@pytest.fixture
def shared_run(tmp_path, monkeypatch):
    """A run someone sent: config.json names `sentmodule:Sent-v0`, and sentmodule.py lies in the
    run directory, from which the command is started (`python -m` puts it first on sys.path)."""
    import importlib
    import sys

    run_dir = tmp_path / "run"
    Trainer(tiny_spec(20), run_dir).run()
    config = json.loads((run_dir / "config.json").read_text())
    config["env"] = "sentmodule:Sent-v0"
    (run_dir / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "imported"
    (run_dir / "sentmodule.py").write_text(MODULE_TEXT.format(marker=str(marker)))
    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    monkeypatch.setattr("wmlab.envs.adapter._NAMED_BY_USER", set())
    importlib.invalidate_caches()
    yield run_dir, marker
    sys.modules.pop("sentmodule", None)


@pytest.mark.parametrize(
    "command", [["eval", "."], ["eval", ".", "--suite", "horizon"], ["train", "--resume", ".", "--train.steps", "40"]]
)
def test_a_run_directory_cannot_make_wmlab_import_its_module(shared_run, capsys, command):
    run_dir, marker = shared_run
    assert run_cli(*command) == 2
    assert not marker.exists()
    error = capsys.readouterr().err
    assert "sentmodule" in error and "not an installed package" in error and "--env sentmodule:Sent-v0" in error


def test_a_module_the_user_names_again_is_imported(shared_run, capsys):
    run_dir, marker = shared_run
    run_cli("eval", ".", "--env", "sentmodule:Sent-v0")
    assert marker.exists()  # the user named it: imported (the id itself registers nothing here)


def test_an_installed_module_named_by_a_run_is_imported_from_its_package_not_the_run_directory(
    shared_run, tmp_path, monkeypatch
):
    import sys

    from wmlab.envs.adapter import check_run_environment

    run_dir, marker = shared_run
    installed = tmp_path / "site"
    (installed / "sentmodule").mkdir(parents=True)
    (installed / "sentmodule" / "__init__.py").write_text("FROM = 'package'\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(installed)])  # installed, after the run directory ('')
    check_run_environment("sentmodule:Sent-v0", run_dir)
    assert sys.modules["sentmodule"].FROM == "package" and not marker.exists()


# ------------------------------------------------------------------------------------------------
# Defect 2: settings out of range trained with zero updates, or crashed after work had started.

BAD_SETTINGS = [
    ("mpc", "--train.batch-size", "-4", "TrainConfig.batch_size"),
    ("mpc", "--train.batch-size", "0", "TrainConfig.batch_size"),
    ("mpc", "--train.sequence-length", "0", "TrainConfig.sequence_length"),
    ("mpc", "--train.num-envs", "0", "TrainConfig.num_envs"),
    ("mpc", "--train.checkpoint-every", "0", "TrainConfig.checkpoint_every"),
    ("mpc", "--train.train-ratio", "-1", "TrainConfig.train_ratio"),
    ("mpc", "--agent.planner.horizon", "0", "RandomShootingConfig.horizon"),
    ("mpc", "--agent.planner.candidates", "-8", "RandomShootingConfig.candidates"),
    ("mpc", "--agent.model.hidden-size", "0", "MLPWorldModelConfig.hidden_size"),
    ("mpc", "--agent.learning-rate", "-0.1", "MPCConfig.learning_rate"),
    ("dyna-q", "--agent.gamma", "1.5", "DynaConfig.gamma"),
    ("dyna-q", "--agent.epsilon", "-0.1", "DynaConfig.epsilon"),
    ("dyna-q", "--agent.planning-steps", "-1", "DynaConfig.planning_steps"),
    ("planet", "--agent.planner.elites", "0", "CEMConfig.elites"),
    ("planet", "--agent.planner.candidates", "-5", "CEMConfig.candidates"),
    ("dreamer", "--agent.imagination-horizon", "0", "DreamerConfig.imagination_horizon"),
    ("dreamer", "--agent.discount", "1.5", "DreamerConfig.discount"),
    ("dreamer", "--agent.model.stochastic-size", "0", "RSSMConfig.stochastic_size"),
    ("tdmpc2", "--agent.planner.samples", "0", "MPPIConfig.samples"),
    ("tdmpc2", "--agent.model.rho", "0", "TDMPCModelConfig.rho"),
]


@pytest.mark.parametrize("algorithm, flag, value, field", BAD_SETTINGS)
def test_a_setting_out_of_range_is_refused_before_any_work(tmp_path, capsys, algorithm, flag, value, field):
    env = "dyna-maze" if algorithm == "dyna-q" else "two-rooms-state"
    with pytest.raises(SystemExit) as raised:
        run_cli(
            "train",
            "--algo",
            algorithm,
            "--env",
            env,
            "--run-dir",
            tmp_path / "run",
            "--train.steps",
            1,
            "--train.no-progress",
            "--train.no-tensorboard",
            flag,
            value,
        )
    assert raised.value.code == 2
    error = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert f"{field} = {value}" in error and "allowed:" in error
    assert not (tmp_path / "run").exists()


def test_ranges_are_checked_in_python_and_in_a_run_directory(tmp_path):
    from wmlab.core.errors import ConfigError, RunDirectoryError
    from wmlab.planners.cem import CEMConfig
    from wmlab.runs.directory import load_run_spec

    with pytest.raises(ConfigError, match=r"CEMConfig.elites = 20 is out of range; allowed: \[1, candidates \(10\)\]"):
        CEMConfig(candidates=10, elites=20)
    with pytest.raises(ConfigError, match=r"TrainConfig.steps = 'many' is not a number"):
        TrainConfig(steps="many")
    from wmlab.agents.world_models.config import ControllerTrainingConfig
    from wmlab.models.jepa import JEPAConfig

    with pytest.raises(
        ConfigError, match=r"JEPAConfig.momentum_end = 0.5 is out of range; allowed: \[momentum_start \(0.9\), 1\]"
    ):
        JEPAConfig(momentum_start=0.9, momentum_end=0.5)
    with pytest.raises(
        ConfigError, match=r"ControllerTrainingConfig.population = 1 is out of range; allowed: at least 2"
    ):
        ControllerTrainingConfig(population=1)
    Trainer(tiny_spec(20), tmp_path / "run").run()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["agent"]["planner"]["horizon"] = 0
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirectoryError, match="RandomShootingConfig.horizon = 0 is out of range"):
        load_run_spec(tmp_path / "run")

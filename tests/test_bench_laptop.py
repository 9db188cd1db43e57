"""`wmlab bench laptop`: the training command it launches per seed, and how it reads a run's best
evaluation."""

import json

from wmlab.bench.laptop import TASKS, LaptopArguments, markdown_table, seed_result, train_command
from wmlab.cli import main
from wmlab.core.registry import ALGORITHMS


def test_every_task_names_a_registered_algorithm():
    for task in TASKS.values():
        assert task.algorithm in ALGORITHMS.names()


def test_the_command_carries_the_budget_and_resumes_with_it(tmp_path):
    arguments = LaptopArguments(time_limit=60.0, steps=500, threads=1, extra=("--agent.horizon-confidence", "0.9"))
    command = train_command(TASKS["dreamer-cartpole-swingup"], tmp_path / "seed1", 1, arguments, resume=False)
    text = " ".join(command)
    assert "--algo dreamer-cpu" in text and "--train.seed 1" in text and "--train.time-limit 60.0" in text
    assert command[-2:] == ["--agent.horizon-confidence", "0.9"]
    resumed = train_command(TASKS["dreamer-cartpole-swingup"], tmp_path / "seed1", 1, arguments, resume=True)
    assert resumed[resumed.index("--resume") + 1] == str(tmp_path / "seed1") and "--algo" not in resumed


def test_the_best_evaluation_and_when_it_was_reached(tmp_path):
    rows = [
        {"step": 500, "time": 10.0, "train/return": 3.0},
        {"step": 1000, "time": 20.0, "eval/return": 5.0},
        {"step": 2000, "time": 40.0, "eval/return": 9.0},
        {"step": 3000, "time": 60.0, "eval/return": 7.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "summary.json").write_text(json.dumps({"env_steps": 3000, "updates": 1000, "wall_seconds": 61.0}))
    result = seed_result(tmp_path, "eval/return")
    assert (result["best"], result["best_step"], result["best_seconds"]) == (9.0, 2000, 40.0)
    assert (result["final"], result["evaluations"], result["finished"]) == (7.0, 3, True)
    table = markdown_table(
        "dreamer-cartpole-swingup", TASKS["dreamer-cartpole-swingup"], LaptopArguments(seeds=1), [result]
    )
    assert "| 0 | 9 | 2000 | 40 | 7 | 3000 | 1000 | 61.0 |" in table and "677" in table


def test_an_unknown_task_is_named(capsys):
    assert main(["bench", "laptop", "--task", "dreamer-cartpole"]) != 0
    assert "unknown laptop task" in capsys.readouterr().err


def test_only_seed_launches_that_seed_alone_and_reports_the_rest(tmp_path, monkeypatch, capsys):
    import wmlab.bench.laptop as laptop

    launched = []

    class FinishedProcess:
        def __init__(self, command, **_):
            self.args = command
            launched.append(command)
            run_dir = tmp_path / "dreamer-cartpole-swingup" / "seed1"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1000, "time": 5.0, "eval/return": 42.0}) + "\n")
            (run_dir / "summary.json").write_text(json.dumps({"env_steps": 1000, "updates": 10, "wall_seconds": 6.0}))

        def wait(self):
            return 0

    monkeypatch.setattr(laptop.subprocess, "Popen", FinishedProcess)
    assert (
        main(["bench", "laptop", "--run-dir", str(tmp_path), "--seeds", "2", "--only-seed", "1", "--time-limit", "10"])
        == 0
    )
    assert len(launched) == 1 and launched[0][launched[0].index("--train.seed") + 1] == "1"
    table = capsys.readouterr().out
    assert "| 0 | (no evaluation yet) |" in table and "| 1 | 42 | 1000 | 5 | 42 | 1000 | 10 | 6.0 |" in table


def test_only_seed_must_be_one_of_the_seeds(tmp_path, capsys):
    assert main(["bench", "laptop", "--run-dir", str(tmp_path), "--seeds", "2", "--only-seed", "2"]) != 0
    assert "not one of the seeds" in capsys.readouterr().err

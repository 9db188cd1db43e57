"""benchmarks/iris_vs_ppo.py: a wmlab run's eval/return rows become a curve, the finding names the
higher method from the numbers, and stable-baselines3's PPO trains and evaluates on a MinAtar game."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from wmlab.core.errors import RunDirectoryError, WmlabError

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "iris_vs_ppo.py"


@pytest.fixture(scope="module")
def bench():
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def write_run(run: Path, rows: list[dict], seed: int = 3) -> Path:
    run.mkdir(parents=True)
    config = {"algorithm": "iris-cpu", "env": "minatar:breakout", "env_kwargs": {"size": 16}}
    config["train"] = {"seed": seed, "eval_episodes": 10}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def test_the_reader_takes_eval_rows_by_step_and_keeps_a_resumed_runs_last(bench, tmp_path):
    rows = [
        {"step": 50, "train/return": 9.0},
        {"step": 500, "eval/return": 0.4, "eval/return_std": 0.5, "eval/length": 10.0},
        {"step": 500, "train/return": 7.0},
        {"step": 1000, "eval/return": 0.5, "eval/return_std": 0.5},
        {"step": 1000, "eval/return": 1.5, "eval/return_std": 0.1},  # the resumed run's evaluation
        {"step": 1500, "eval/return": 2.0},
    ]
    curve = bench.read_run_curve(write_run(tmp_path / "run", rows))
    assert curve["method"] == "iris-cpu" and curve["seed"] == 3 and curve["episodes"] == 10
    assert curve["env"] == "minatar:breakout" and curve["env_kwargs"] == {"size": 16}
    assert curve["steps"] == [500, 1000, 1500]
    assert curve["returns"] == [0.4, 1.5, 2.0]
    assert curve["return_std"][:2] == [0.5, 0.1] and np.isnan(curve["return_std"][2])
    assert not curve["baseline"]
    assert bench.read_run_curve(tmp_path / "run", method="iris")["method"] == "iris"


def test_the_reader_names_what_is_missing(bench, tmp_path):
    with pytest.raises(RunDirectoryError, match="metrics.jsonl is missing"):
        bench.read_run_curve(tmp_path)
    with pytest.raises(RunDirectoryError, match="no eval/return rows"):
        bench.read_run_curve(write_run(tmp_path / "untrained", [{"step": 50, "train/return": 1.0}]))


def curves(method: str, finals: list[float], steps=(0, 1000, 2000), baseline: bool = False) -> list[dict]:
    """One curve per seed: return 0 at step 0, then `finals[seed]` (a baseline: `finals[seed]` throughout)."""
    return [
        {
            "method": method,
            "env": "minatar:breakout",
            "env_kwargs": {"size": 16},
            "seed": seed,
            "steps": list(steps),
            "returns": [final if step or baseline else 0.0 for step in steps],
            "episodes": 20,
            "baseline": baseline,
        }
        for seed, final in enumerate(finals)
    ]


def test_the_summary_is_mean_and_standard_error_over_seeds(bench):
    summary = bench.summarise(curves("ppo", [1.0, 2.0, 3.0]))["ppo"]
    assert summary["steps"] == [0, 1000, 2000] and summary["seeds"] == [0, 1, 2]
    assert summary["mean"][-1] == pytest.approx(2.0)
    assert summary["standard_error"][-1] == pytest.approx(1.0 / np.sqrt(3))  # sample std 1, 3 seeds


@pytest.mark.parametrize("ppo_higher", [True, False])
def test_the_finding_names_the_higher_method_from_the_numbers(bench, tmp_path, ppo_higher):
    high, low = [3.0, 3.2, 3.4], [0.9, 1.0, 1.1]
    drawn = curves("ppo", high if ppo_higher else low) + curves(
        "iris", low if ppo_higher else high, steps=(0, 500, 1000, 1500, 2000, 2500)
    )
    drawn += curves("random", [0.5, 0.6, 0.4], steps=(0,), baseline=True)
    for curve in drawn:
        (tmp_path / f"{curve['method']}_s{curve['seed']}.json").write_text(json.dumps(curve))
    summary = bench.summarise(bench.load_curves([tmp_path]))
    sentence = bench.finding(summary, "minatar:breakout")
    winner, loser = ("PPO", "IRIS") if ppo_higher else ("IRIS", "PPO")
    # compared at the last step both evaluated (2000, not IRIS's 2500), the higher one named
    assert sentence.startswith("At 2,000 environment steps on minatar:breakout, ")
    assert f"{winner} returns 3.20 ± 0.12 and {loser} returns 1.00 ± 0.06" in sentence
    assert f": {winner} is higher;" in sentence
    assert "uniform random returns 0.00 ± 0.00" not in sentence and "uniform random returns 0.50 ± 0.06" in sentence
    figure = tmp_path / "figure.png"
    bench.plot(summary, figure, "test")
    assert figure.stat().st_size > 1000


def test_overlapping_errors_and_a_method_alone_against_random(bench):
    summary = bench.summarise(curves("ppo", [1.0, 2.0, 3.0]) + curves("iris", [1.5, 2.0, 2.5]))
    assert "PPO and IRIS are within one standard error of each other" in bench.finding(summary)
    alone = bench.summarise(curves("ppo", [1.0, 1.1, 1.2]) + curves("random", [0.4, 0.5, 0.6], (0,), True))
    assert bench.finding(alone).endswith(
        "PPO returns 1.10 ± 0.06 (mean ± s.e. over 3 seeds), above uniform random's 0.50 ± 0.06."
    )


def test_curves_of_different_environments_are_refused(bench, tmp_path):
    other = curves("iris", [1.0])[0] | {"env_kwargs": {"size": 10}}
    (tmp_path / "a.json").write_text(json.dumps(curves("ppo", [1.0])[0]))
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(WmlabError, match="different environments"):
        bench.load_curves([tmp_path])
    with pytest.raises(WmlabError, match="no learning method"):
        bench.finding(bench.summarise(curves("random", [0.5], (0,), True)))


def test_ppo_and_random_write_curves_on_minatar(bench, tmp_path):
    pytest.importorskip("stable_baselines3", reason="PPO is stable-baselines3's: pip install 'wmlab[baselines]'")
    pytest.importorskip("minatar", reason="MinAtar is an optional suite: pip install 'wmlab[minatar]'")
    common = ["--env", "minatar:breakout", "--env-kwargs", '{"size": 16}', "--seeds", "0", "--eval-episodes", "2"]
    assert (
        bench.main(["ppo", *common, "--steps", "128", "--n-steps", "64", "--eval-every", "64", "--out", str(tmp_path)])
        == 0
    )
    assert bench.main(["random", *common, "--out", str(tmp_path)]) == 0
    ppo = json.loads((tmp_path / "ppo_s0.json").read_text())
    assert ppo["steps"] == [0, 64, 128] and len(ppo["returns"]) == 3 and all(np.isfinite(ppo["returns"]))
    assert ppo["ppo"]["n_steps"] == 64 and ppo["ppo"]["policy"] == "cnn" and not ppo["baseline"]
    random = json.loads((tmp_path / "random_s0.json").read_text())
    assert random["baseline"] and random["steps"] == [0] and random["episodes"] == 2
    assert bench.main(["plot", str(tmp_path), "--figure", str(tmp_path / "figure.png")]) == 0
    assert (tmp_path / "figure.png").is_file()

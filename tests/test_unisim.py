"""UniSim's zero-shot transfer (issue 27): per-step instruction conditioning in the diffusion
model's `imagine`, the actor-critic trained in the instruction-conditioned simulator, and
`wmlab pipeline unisim` evaluating it in the real environment."""

from __future__ import annotations

import json
import math
import runpy
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from test_diffusion import TINY, TINY_ARGUMENTS, HashEncoder

from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.cli import main
from wmlab.core.errors import WmlabError
from wmlab.core.types import Batch
from wmlab.models.diffusion import DiffusionWorldModel
from wmlab.pipelines.unisim import INSTRUCTION_MOVES, InstructionSimulator, instruction_moves

D = HashEncoder.dim
SIDE = 8


def conditioned_model(seed: int = 0) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    images = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8),
            "condition": spaces.Box(-np.inf, np.inf, (D,), np.float32),
        }
    )
    model = DiffusionWorldModel(replace(TINY, condition_size_input=D), images, spaces.Discrete(1)).eval()
    with torch.no_grad():  # an untrained network's zero-initialised layers ignore the conditioning
        for parameter in model.denoiser.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def start_state(model: DiffusionWorldModel, B: int = 2):
    frames = np.random.default_rng(0).integers(0, 255, (B, 2, SIDE, SIDE, 3), dtype=np.uint8)
    is_first = np.zeros((B, 2), bool)
    is_first[:, 0] = True
    _, state = model.observe({"image": frames}, np.zeros((B, 2), np.int64), is_first)
    return state


def rollout(model, state, condition, L: int = 4):
    return model.imagine(
        state,
        torch.zeros(state["frames"].shape[0], L, dtype=torch.long),
        condition=condition,
        generator=torch.Generator().manual_seed(7),
    )


def test_per_step_conditioning_changes_the_rollout_where_it_changes_and_equals_a_constant_one():
    model = conditioned_model()
    state = start_state(model)
    first, second = HashEncoder().encode(["move left", "move right"])
    fixed = rollout(model, state, first.expand(2, -1))
    constant = rollout(model, state, first.expand(2, 4, -1))
    per_call = rollout(model, state, lambda index, current: first.expand(2, -1))
    for other in (constant, per_call):
        assert torch.equal(other.observations["image"], fixed.observations["image"])
        assert torch.equal(other.rewards, fixed.rewards)
    # the instruction changes at step 2: steps 0 and 1 as before, step 2 differs
    steps = torch.stack([first, first, second, second])[None].expand(2, -1, -1)
    switched = rollout(model, state, steps)
    images, reference = switched.observations["image"], fixed.observations["image"]
    assert torch.equal(images[:, :2], reference[:, :2])
    assert (images[:, 2] - reference[:, 2]).abs().max() > 1e-3
    assert torch.equal(switched.states["condition"][:, 2], second.expand(2, -1))
    # a callable sees the step index and each step's current state
    seen = []

    def chooser(index, current):
        seen.append((index, current["frames"].shape))
        return (first if index < 2 else second).expand(2, -1)

    chosen = rollout(model, state, chooser)
    assert torch.equal(chosen.observations["image"], images)
    assert [index for index, _ in seen] == [0, 1, 2, 3]


def test_per_step_conditioning_is_checked():
    model = conditioned_model()
    state = start_state(model)
    with pytest.raises(Exception, match="per-step condition"):
        rollout(model, state, torch.zeros(2, 3, D))  # 3 steps for a horizon of 4
    with pytest.raises(Exception, match="condition"):
        rollout(model, state, lambda index, current: torch.zeros(2, D + 1))


def test_the_learner_acts_over_instructions_inside_the_simulator():
    model = conditioned_model()
    texts = list(INSTRUCTION_MOVES)
    simulator = InstructionSimulator(model, HashEncoder().encode(texts))
    config = ImaginationConfig(channels=(4, 4), lstm_size=16, horizon=3, burn_in=2)
    learner = ImaginationLearner(
        config, (SIDE, SIDE, 3), len(texts), torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    picked = []
    policy_calls = simulator.imagine

    def recording(state, policy, horizon, **options):
        trajectory = policy_calls(state, policy, horizon, **options)
        picked.append(trajectory)
        return trajectory

    simulator.imagine = recording
    frames = np.random.default_rng(1).integers(0, 255, (3, 2, SIDE, SIDE, 3), dtype=np.uint8)
    is_first = np.zeros((3, 2), bool)
    is_first[:, 0] = True
    zeros = np.zeros((3, 2), bool)
    batch = Batch({"image": frames}, np.zeros((3, 2), np.int64), np.zeros((3, 2), np.float32), is_first, zeros, zeros)
    metrics = learner.update(simulator, batch)
    assert np.isfinite(metrics["loss/actor"]) and learner.updates == 1
    trajectory = picked[0]
    assert trajectory.actions.shape == (3, 3) and int(trajectory.actions.max()) < len(texts)
    # each imagined step was conditioned on the embedding of the instruction picked there
    assert torch.allclose(trajectory.states["condition"], simulator.table[trajectory.actions])


def test_instructions_map_to_the_real_moves_and_unknown_ones_are_refused():
    meanings = ["NOOP", "UP", "DOWN", "LEFT", "RIGHT"]
    known = ["move down", "move left", "move right", "move up", "stay still", "reach the goal"]
    moves = instruction_moves(("move left", "stay still", "move up"), known, meanings, "two-rooms-discrete")
    assert moves.tolist() == [3, 0, 1]
    with pytest.raises(WmlabError, match="unknown instruction 'jump'"):
        instruction_moves(("jump",), known, meanings, "two-rooms-discrete")
    with pytest.raises(WmlabError, match="'reach the goal' has no move"):
        instruction_moves(("reach the goal",), known, meanings, "two-rooms-discrete")


# ----------------------------------------------------------------------------------------------
# the pipeline, end to end at a tiny size

QUIET = ["--train.threads", "1", "--train.no-progress"]
#: diamond-cpu, tiny, in the real environment (test_diffusion's settings at 64 x 64 frames)
DIAMOND_ARGUMENTS = [str(argument) for argument in TINY_ARGUMENTS[2:]] + ["--agent.no-open-loop-report"]
TINY_MODEL = [
    "--world-model.channels", "8", "8",
    "--world-model.depths", "1", "1",
    "--world-model.condition-size", "16",
    "--world-model.context", "2",
    "--world-model.reward-end.channels", "4", "4",
    "--world-model.reward-end.depths", "1", "1",
    "--world-model.reward-end.condition-size", "8",
    "--world-model.reward-end.lstm-size", "16",
    "--train.batch-size", "2",
    "--train.sequence-length", "4",
]  # fmt: skip
TINY_AGENT = [
    "--learner.channels", "4", "4",
    "--learner.lstm-size", "16",
    "--learner.horizon", "2",
    "--learner.burn-in", "2",
    "--learner.starts", "2",
    "--batch-size", "2",
    "--episodes", "2",
    "--env-kwargs", '{"max_episode_steps": 15}',
    "--text-encoder", "unisim_test_encoder:encoder",
    "--instructions", "move left", "move right", "move up", "stay still",  # those of the tiny dataset
]  # fmt: skip


@pytest.fixture(scope="module")
def unisim_runs(tmp_path_factory):
    """A tiny instruction dataset, a UniSim run on it and an action-conditioned run."""
    from wmlab.data.captions import record_captioned_two_rooms
    from wmlab.data.dataset import record_dataset
    from wmlab.data.instructions import write_instruction_dataset

    sys.modules["unisim_test_encoder"] = types.SimpleNamespace(encoder=HashEncoder())
    root = tmp_path_factory.mktemp("unisim")
    record_captioned_two_rooms(root / "captioned", episodes=2, seed=0, max_episode_steps=12)
    write_instruction_dataset(root / "captioned", root / "instructions", HashEncoder())
    common = ["train", "--model", "diffusion", "--train.updates", "2", *TINY_MODEL, *QUIET]
    unisim = root / "unisim"
    arguments = [*common, "--dataset", root / "instructions", "--run-dir", unisim]
    assert main([str(argument) for argument in [*arguments, "--world-model.condition-size-input", str(D)]]) == 0
    record_dataset(
        "two-rooms-discrete", "random", 2, root / "discrete", env_kwargs={"max_episode_steps": 12}, progress=False
    )
    plain = root / "plain"
    assert main([str(argument) for argument in [*common, "--dataset", root / "discrete", "--run-dir", plain]]) == 0
    yield root, unisim, plain
    sys.modules.pop("unisim_test_encoder", None)


def test_cli_smoke_trains_in_the_simulator_and_evaluates_zero_shot(unisim_runs, capsys):
    root, unisim, _ = unisim_runs
    baseline = root / "diamond"
    real = ["train", "--algo", "diamond-cpu", "--env", "two-rooms-discrete", "--run-dir", baseline]
    arguments = [*real, *DIAMOND_ARGUMENTS, "--env-kwargs", '{"max_episode_steps": 15}']
    assert main([str(argument) for argument in arguments]) == 0
    out = root / "zero-shot"
    arguments = ["pipeline", "unisim", "--run", unisim, "--out", out, *TINY_AGENT]
    assert main([str(argument) for argument in [*arguments, "--baseline", baseline, "--match-baseline"]]) == 0
    result = json.loads((out / "result.json").read_text())
    # as many actor-critic updates in the simulator as the baseline's in the real environment
    assert result["updates"] == result["baseline"]["updates"] > 0
    assert result["instructions"]["move left"] == "LEFT"
    for player in ("zero_shot", "random", "baseline"):
        assert 0 <= result[player]["eval/success"] <= 1 and result[player]["eval/length"] <= 15
    assert (out / "checkpoints" / "rank0" / "agent.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    assert main([str(argument) for argument in arguments]) == 2
    assert "already holds a result" in capsys.readouterr().err
    assert main([str(argument) for argument in [*arguments, "--force", "--baseline", unisim]]) == 2
    assert "not an agent" in capsys.readouterr().err


def test_evaluating_along_the_way_logs_both_returns_and_leaves_training_as_it_was(unisim_runs, monkeypatch):
    from safetensors.torch import load_file

    root, unisim, _ = unisim_runs
    base = ["pipeline", "unisim", "--run", unisim, "--updates", 2, *TINY_AGENT]
    assert main([str(argument) for argument in [*base, "--out", root / "plain-ac"]]) == 0
    watched = root / "watched-ac"
    assert main([str(argument) for argument in [*base, "--out", watched, "--evaluate-every", 1, "--probe", 3]]) == 0
    rows = [json.loads(line) for line in (watched / "evaluations.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert 0 <= row["zero_shot"]["eval/success"] <= 1
        for policy in ("simulator_sample", "simulator_uniform"):
            assert math.isfinite(row[policy]["return"]) and sum(row[policy]["action_shares"]) == pytest.approx(1.0)
        assert (watched / "kept" / f"update-{row['update']}" / "agent.safetensors").is_file()
    # the uniform rollouts draw the same numbers at every evaluation
    assert rows[0]["simulator_uniform"] == rows[2]["simulator_uniform"]
    # the last row's evaluation is result.json's, and training drew what the unwatched run drew
    assert rows[-1]["zero_shot"] == json.loads((watched / "result.json").read_text())["zero_shot"]
    plain = load_file(root / "plain-ac" / "checkpoints" / "rank0" / "agent.safetensors")
    kept = load_file(watched / "checkpoints" / "rank0" / "agent.safetensors")
    assert plain.keys() == kept.keys() and all(torch.equal(plain[key], kept[key]) for key in plain)

    # the benchmark reads the kept actor-critics inside the simulator, each against uniform instructions
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "unisim_policy_in_simulator.py"
    arguments = [str(watched), "--probe", "3", "--updates", "0", "2", "--json", str(root / "inside.json")]
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", [str(script), *arguments])
        patch.syspath_prepend(str(script.parent))
        runpy.run_path(str(script), run_name="__main__")
    inside = json.loads((root / "inside.json").read_text())
    assert [row["updates"] for row in inside["policy"]] == [0, 2]
    horizon = inside["horizon"]
    for reading in [inside["uniform"], *inside["policy"]]:
        assert sum(reading["action_shares"]) == pytest.approx(1.0, abs=0.01) and 0 <= reading["read_share"] <= 1
        assert sum(row["steps"] for row in reading["per_instruction"].values()) <= 3 * horizon


def test_the_pipeline_refuses_a_run_without_instructions_and_an_unknown_instruction(unisim_runs, capsys):
    root, unisim, plain = unisim_runs
    base = ["pipeline", "unisim", "--out", root / "refused", "--updates", 1, *TINY_AGENT]

    def refused(*arguments) -> str:
        assert main([str(argument) for argument in [*base, *arguments]]) == 2
        return capsys.readouterr().err

    assert "trained without instructions" in refused("--run", plain)
    assert "unknown instruction 'jump'" in refused("--run", unisim, "--instructions", "move left", "jump")
    assert "does not exist" in refused("--run", root / "nowhere")
    assert "--episodes >= 1" in refused("--run", unisim, "--episodes", 0)
    assert "--match-baseline needs --baseline" in refused("--run", unisim, "--match-baseline")
    assert "--evaluate-every must be >= 0" in refused("--run", unisim, "--evaluate-every", -1)
    assert not (root / "refused" / "result.json").exists()


def test_the_instruction_recording_takes_two_rooms_options(tmp_path, monkeypatch):
    """`python -m wmlab.data.instructions --env-kwargs` reaches the recorder: a dense-reward
    recording pays a reward at ordinary steps, the sparse one only at the goal."""
    from wmlab.data import instructions
    from wmlab.data.captions import record_captioned_two_rooms
    from wmlab.data.dataset import load_dataset

    recorded = {}

    def record(directory, episodes, seed, force, env_kwargs):
        recorded["env_kwargs"] = env_kwargs
        return record_captioned_two_rooms(
            directory, episodes, seed, max_episode_steps=10, force=force, env_kwargs=env_kwargs
        )

    monkeypatch.setattr(instructions, "record_captioned_two_rooms", record)
    monkeypatch.setattr(instructions, "load_text_encoder", lambda *_: HashEncoder())
    for reward in ("dense", "sparse"):
        out = tmp_path / reward
        arguments = [str(out / "captioned"), str(out / "instructions"), "--record", "2", "--force"]
        assert instructions.main([*arguments, "--env-kwargs", json.dumps({"reward": reward})]) == 0
        assert recorded["env_kwargs"] == {"reward": reward}
        rows = list(load_dataset(out / "instructions").episodes())
        paid = sum(int(np.count_nonzero(episode["reward"][~episode["is_terminal"]])) for episode in rows)
        assert (paid > 0) == (reward == "dense")
    with pytest.raises(WmlabError, match="--env-kwargs"):
        instructions.main([*arguments, "--env-kwargs", "[1]"])

"""`wmlab pipeline gaia` and `wmlab generate --text` on its run: the pipeline end to end at a tiny
size, resume, the probe of the agent's move, and clear errors for an empty prompt, a caption file
that does not match its episodes, and --text on a run without text."""

import json
import shutil
import types

import numpy as np
import pytest
import torch

from wmlab.cli import main
from wmlab.core.errors import ShapeError, WmlabError
from wmlab.core.serialization import load_state
from wmlab.data.captions import CAPTIONS_FILE, CaptionedDataset
from wmlab.envs.two_rooms import AGENT_RGB
from wmlab.pipelines.gaia import action_fidelity, agent_centre, probe_moves

torch.set_num_threads(1)

TINY = [
    "--size",
    "tiny",
    "--image-size",
    "16",
    "--train-episodes",
    "4",
    "--valid-episodes",
    "3",
    "--episode-steps",
    "10",
    "--minutes",
    "0",
    "--starts",
    "2",
    "--steps",
    "2",
    "--length",
    "6",
    "--batch-size",
    "2",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
    "--tokenizer-updates",
    "1",
]


@pytest.fixture(scope="module")
def gaia_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gaia") / "run"
    assert main(["pipeline", "gaia", "--run-dir", str(run_dir), "--updates", "2", *TINY]) == 0
    return run_dir


def test_the_pipeline_trains_measures_and_resumes(gaia_run):
    result = json.loads((gaia_run / "result.json").read_text())
    assert result["updates"] == 2
    assert set(result["validation_token_loss"]) == {"text+actions", "actions only", "text only", "unconditional"}
    assert set(result["text_fidelity"]) == {"0.0", "1.0", "3.0", "7.0"}
    for scale in result["text_fidelity"].values():
        assert {"agreement", "random_caption_baseline", "moves_with_agent_visible"} <= set(scale)
    assert 0.0 <= result["agent_in_reconstructions"] <= 1.0
    actions = result["action_fidelity"]
    assert set(actions["per_move"]) == {"move left", "move right", "move up", "move down"}
    assert all(0.0 <= actions[key] <= 1.0 for key in ("agreement", "random_move_baseline", "moves_with_agent_visible"))
    assert result["probe_accuracy_on_real_moves"] > 0.7  # the probe reads real moves (16 x 16 frames: 0.83)
    config = json.loads((gaia_run / "config.json").read_text())
    assert config["kind"] == "gaia" and config["model"]["text_size"] == 384
    tokenizer_before = tokenizer_weights(gaia_run)
    assert main(["pipeline", "gaia", "--resume", str(gaia_run), "--updates", "3"]) == 0
    assert json.loads((gaia_run / "result.json").read_text())["updates"] == 3
    lines = [json.loads(line) for line in (gaia_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    # The tokenizer learns alone first (--tokenizer-updates 1), then the transformer on its frozen tokens.
    assert "loss/reconstruction" in lines[0] and "loss/tokens" not in lines[0]
    assert "loss/tokens" in lines[2] and "loss/reconstruction" not in lines[2]
    after = tokenizer_weights(gaia_run)
    assert all(torch.equal(tensor, after[name]) for name, tensor in tokenizer_before.items())


def tokenizer_weights(run_dir) -> dict[str, torch.Tensor]:
    state = load_state(run_dir / "checkpoints" / "rank0", "model")
    return {name: tensor.clone() for name, tensor in state.items() if name.startswith("tokenizer.")}


def test_generate_writes_a_video_a_contact_sheet_and_json(gaia_run, tmp_path):
    out = tmp_path / "left.mp4"
    argv = ["generate", str(gaia_run), "--text", "move left", "--actions", "random", "--steps", "3", "--out", str(out)]
    assert main(argv) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".png").stat().st_size > 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["text"] == "move left" and len(summary["probe_moves"]) == 3


def test_bad_prompts_and_caption_files_get_clear_errors(gaia_run, tmp_path, capsys):
    assert main(["generate", str(gaia_run), "--text", "   ", "--steps", "2"]) != 0
    assert "--text is empty" in capsys.readouterr().err
    for no_prompt in ([], ["--text", ""]):
        assert main(["generate", str(gaia_run), *no_prompt, "--steps", "2"]) != 0
        assert "give a prompt" in capsys.readouterr().err
    # A caption file that lost an episode is refused by name.
    dataset = tmp_path / "captions"
    shutil.copytree(gaia_run / "data" / "train", dataset)
    content = json.loads((dataset / CAPTIONS_FILE).read_text())
    content["episodes"] = content["episodes"][1:]
    (dataset / CAPTIONS_FILE).write_text(json.dumps(content))
    assert main(["pipeline", "gaia", "--run-dir", str(tmp_path / "other"), "--dataset", str(dataset), *TINY]) != 0
    assert "does not match the episodes" in capsys.readouterr().err


def test_the_probe_reads_the_agent_centroid_and_its_moves():
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[0, 8, 8] = AGENT_RGB
    frames[1, 8, 6] = AGENT_RGB  # two pixels left
    centres = agent_centre(frames)
    assert np.allclose(centres[0], [8.5 / 16, 1 - 8.5 / 16]) and np.isnan(centres[2]).all()
    assert probe_moves(frames).tolist() == ["move left", "no agent"]


def test_the_probe_finds_the_goal_by_its_colour_in_a_rendered_frame():
    from wmlab.envs.adapter import make_env
    from wmlab.envs.two_rooms import GOAL_RGB

    env = make_env("two-rooms")
    frame, info = env.reset(seed=3)
    goal = agent_centre(frame["image"], GOAL_RGB)
    assert np.allclose(goal, info["goal"], atol=1.0 / 64) and not np.allclose(goal, info["agent"], atol=0.05)
    assert np.allclose(agent_centre(frame["image"]), info["agent"], atol=1.0 / 64)


def test_the_probe_reads_the_scale_from_the_dtype_and_refuses_mixed_frames():
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[:, 8, 8] = AGENT_RGB
    as_float = frames.astype(np.float32) / 255
    assert np.allclose(agent_centre(frames), agent_centre(as_float))
    # A uint8 first frame concatenated with float generated frames is the mistake that once hid
    # every generated agent: it is refused, not silently rescaled.
    mixed = np.concatenate([frames[:1].astype(np.float32), as_float[1:]])
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        agent_centre(mixed)


class SteeredModel:
    """A stand-in for the token model on 16 x 16 frames whose imagined agent moves 2 pixels a step
    in the direction of its action (`obedient`) or stays where it is, to test `action_fidelity`'s
    way from actions to probed moves."""

    discrete, action_size = False, 2

    def __init__(self, obedient: bool):
        self.obedient = obedient

    def observe(self, obs, action, is_first, text=None):
        _, rows, columns = np.nonzero((obs["image"][:, -1] == AGENT_RGB).all(-1))  # one agent pixel a frame
        return None, np.stack([rows, columns], -1).astype(np.float64)

    def imagine(self, start, actions, horizon, guidance_scale, generator):
        step = np.stack([-np.sign(actions[..., 1]), np.sign(actions[..., 0])], -1) * 2 * self.obedient  # y is up
        return types.SimpleNamespace(states=start[:, None] + np.cumsum(step, 1))

    def decode(self, states):
        frames = torch.zeros(*states.shape[:-1], 16, 16, 3)
        for index in np.ndindex(states.shape[:-1]):
            row, column = states[index].astype(int)
            frames[index + (row, column)] = torch.tensor(AGENT_RGB) / 255.0
        return {"image": frames}


def test_action_fidelity_reads_the_moves_that_the_actions_cause():
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    frames[:, 8, 8] = AGENT_RGB
    valid = CaptionedDataset(None, [{"image": frames}], [["start"] * 5], ("start",))
    table = {"stay still": torch.zeros(4)}
    obeyed = action_fidelity(SteeredModel(obedient=True), valid, table, starts=2, steps=3, seed=0)
    assert obeyed["agreement"] == 1.0 and obeyed["moves_with_agent_visible"] == 1.0
    assert set(obeyed["per_move"].values()) == {1.0} and obeyed["random_move_baseline"] < 0.6
    ignored = action_fidelity(SteeredModel(obedient=False), valid, table, starts=2, steps=3, seed=0)
    assert ignored["agreement"] == 0.0  # an agent that stays still follows no move
    model = SteeredModel(obedient=True)
    model.action_size = 5
    with pytest.raises(WmlabError, match="2-D continuous moves"):
        action_fidelity(model, valid, table, starts=2, steps=3, seed=0)

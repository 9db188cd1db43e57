"""The offline trainer: every family that can learn from a recorded dataset trains on one into an
ordinary run directory, resumes bit for bit, and is evaluated by `wmlab eval`; bad datasets and
families that cannot train offline get clear errors naming the file or the reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from wmlab.cli import main
from wmlab.core.serialization import load_state
from wmlab.data.dataset import record_dataset
from wmlab.runs.directory import build_world_model, load_offline_run_spec
from wmlab.train.offline import OfflineTrainer

STATE_ENV, PIXEL_ENV = "two-rooms-state", "two-rooms"
FAST = ["--train.batch-size", "4", "--train.sequence-length", "6", "--train.no-progress", "--train.no-tensorboard"]
#: Tiny models of each family that trains offline, with the dataset it learns from.
FAMILIES = {
    "mlp": ("state", ["--world-model.hidden-size", "16"]),
    "rssm": (
        "state",
        ["--world-model.size", "tiny", "--world-model.stochastic-size", "4", "--world-model.reward-bins", "15"],
    ),
    "jepa": (
        "state",
        ["--world-model.embedding-size", "8", "--world-model.encoder-depth", "4", "--world-model.hidden-size", "16"],
    ),
    "vae-mdnrnn": (
        "pixels",
        [
            "--world-model.vae.latent-size",
            "4",
            "--world-model.vae.channels",
            "4",
            "4",
            "4",
            "4",
            "--world-model.mdnrnn.hidden-size",
            "16",
            "--world-model.mdnrnn.mixtures",
            "2",
        ],
    ),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    record_dataset(STATE_ENV, "random", 4, root / "state", seed=0, progress=False, max_episode_steps=20)
    record_dataset(PIXEL_ENV, "random", 3, root / "pixels", seed=0, progress=False, max_episode_steps=12)
    record_dataset(
        STATE_ENV, "random", 2, root / "video", seed=0, progress=False, max_episode_steps=10, store_actions=False
    )
    return root


def train(dataset, run_dir, family: str, updates: int, *extra: str) -> int:
    options = FAMILIES[family][1]
    return main(
        [
            "train",
            "--model",
            family,
            "--dataset",
            str(dataset),
            "--run-dir",
            str(run_dir),
            "--train.updates",
            str(updates),
            *FAST,
            *options,
            *extra,
        ]
    )


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_state(run_dir / "checkpoints" / "rank0", "model")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_offline_resumes_exactly_and_is_evaluated(datasets, tmp_path, family):
    dataset = datasets / FAMILIES[family][0]
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert train(dataset, whole, family, 6) == 0
    assert train(dataset, interrupted, family, 3) == 0
    halfway = weights(interrupted)
    assert any(not torch.equal(halfway[name], value) for name, value in weights(whole).items())  # it learns
    assert main(["train", "--resume", str(interrupted), "--train.updates", "6"]) == 0

    config = json.loads((whole / "config.json").read_text())
    assert config["kind"] == "offline" and config["model"] == family and config["env"] in (STATE_ENV, PIXEL_ENV)
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and any(key.startswith("loss/") for key in records[-1])
    assert json.loads((whole / "summary.json").read_text())["updates"] == 6

    expected, resumed = weights(whole), weights(interrupted)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), f"{family}: {name} differs after resuming"

    assert main(["eval", str(whole), "--suite", "horizon", "--horizon", "4", "--context", "2", "--sequences", "3"]) == 0
    result = json.loads((whole / "eval" / "horizon.json").read_text())
    assert f": {family} (" in result["label"] and result["open_loop"]


def test_weight_decay_is_decoupled_and_survives_a_resume(datasets, tmp_path):
    # AdamW: each step is Adam's, with the weights first shrunk by lr * weight_decay. With one update
    # from the same initialisation, the decayed run differs from the plain one by exactly that.
    rate, decay = 1e-3, 0.5
    options = ["--train.learning-rate", str(rate)]
    assert train(datasets / "state", tmp_path / "plain", "mlp", 1, *options) == 0
    assert train(datasets / "state", tmp_path / "decayed", "mlp", 1, *options, "--train.weight-decay", str(decay)) == 0
    plain, decayed = weights(tmp_path / "plain"), weights(tmp_path / "decayed")
    spec = load_offline_run_spec(tmp_path / "plain")
    torch.manual_seed(spec.train.seed)  # the trainer's initialisation, before any update
    initial = dict(build_world_model(spec).state_dict())
    for name, start in initial.items():
        if start.is_floating_point():
            torch.testing.assert_close(plain[name] - decayed[name], rate * decay * start, rtol=1e-4, atol=1e-7)
    assert any(bool((start != 0).any()) for start in initial.values() if start.is_floating_point())

    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert train(datasets / "state", whole, "mlp", 4, "--train.weight-decay", "0.1") == 0
    assert train(datasets / "state", interrupted, "mlp", 2, "--train.weight-decay", "0.1") == 0
    assert main(["train", "--resume", str(interrupted), "--train.updates", "4"]) == 0
    for name, value in weights(whole).items():
        assert torch.equal(value, weights(interrupted)[name]), name


def test_weight_decay_applies_to_the_named_parts_only(datasets, tmp_path, capsys):
    # One update from the same initialisation: the VAE's weights are shrunk by lr * weight_decay
    # beyond the plain run's, the MDN-RNN's take exactly the plain Adam step.
    rate, decay = 1e-3, 0.5
    options = ["--train.learning-rate", str(rate)]
    assert train(datasets / "pixels", tmp_path / "plain", "vae-mdnrnn", 1, *options) == 0
    decayed_run = tmp_path / "decayed"
    parts = ["--train.weight-decay", str(decay), "--train.weight-decay-parts", "vae"]
    assert train(datasets / "pixels", decayed_run, "vae-mdnrnn", 1, *options, *parts) == 0
    plain, decayed = weights(tmp_path / "plain"), weights(decayed_run)
    torch.manual_seed(0)
    initial = dict(build_world_model(load_offline_run_spec(decayed_run)).state_dict())
    for name, start in initial.items():
        if not start.is_floating_point():
            continue
        if name.startswith("vae."):
            torch.testing.assert_close(plain[name] - decayed[name], rate * decay * start, rtol=1e-4, atol=1e-7)
        else:
            assert torch.equal(plain[name], decayed[name]), name
    assert main(["train", "--resume", str(decayed_run), "--train.updates", "2"]) == 0

    unknown = ["--train.weight-decay", "0.1", "--train.weight-decay-parts", "reward_end"]
    assert train(datasets / "pixels", tmp_path / "unknown", "vae-mdnrnn", 1, *unknown) == 2
    error = capsys.readouterr().err
    assert "'reward_end'" in error and "mdnrnn, vae" in error
    assert not (tmp_path / "unknown").exists()


def test_named_parts_are_clipped_on_their_own_norms(datasets, tmp_path):
    # With a tiny limit both gradients are clipped: each part's norm ends at the limit, where one
    # global clip would leave their joint norm there.
    limit = 1e-3
    run = tmp_path / "run"
    assert (
        train(
            datasets / "pixels", run, "vae-mdnrnn", 1, "--train.grad-clip", str(limit), "--train.grad-clip-parts", "vae"
        )
        == 0
    )
    trainer = OfflineTrainer(load_offline_run_spec(run), tmp_path / "again")
    trainer.update()
    for part in ("vae", "mdnrnn"):
        grads = [p.grad.norm() for p in getattr(trainer.model, part).parameters() if p.grad is not None]
        assert float(torch.stack(grads).norm()) == pytest.approx(limit, rel=1e-3), part
    metrics = trainer.last_metrics
    assert metrics["wm/grad_norm/vae"] > limit and metrics["wm/grad_norm/rest"] > limit
    assert metrics["wm/grad_norm"] == pytest.approx(
        (metrics["wm/grad_norm/vae"] ** 2 + metrics["wm/grad_norm/rest"] ** 2) ** 0.5
    )


def test_the_report_of_an_offline_run(datasets, tmp_path):
    run_dir = tmp_path / "run"
    assert train(datasets / "state", run_dir, "mlp", 4, "--train.log-every", "2") == 0
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "loss/total" in page and "mlp" in page


def test_a_resume_may_not_change_the_model(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(datasets / "state", run_dir, "mlp", 2) == 0
    assert main(["train", "--resume", str(run_dir), "--world-model.hidden-size", "32"]) == 2
    assert "world_model.hidden_size" in capsys.readouterr().err


def test_families_that_cannot_train_offline_say_why(datasets, tmp_path, capsys):
    for family, reason in (("tabular", "counted transitions"), ("tdmpc", "policy prior")):
        assert (
            main(
                ["train", "--model", family, "--dataset", str(datasets / "state"), "--run-dir", str(tmp_path / family)]
            )
            == 2
        )
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "tabular").exists()


def test_a_dataset_without_actions_or_of_the_wrong_kind_is_refused(datasets, tmp_path, capsys):
    assert train(datasets / "video", tmp_path / "video", "mlp", 2) == 2
    error = capsys.readouterr().err
    assert "without actions" in error and str(datasets / "video" / "manifest.json") in error
    assert train(datasets / "state", tmp_path / "vae", "vae-mdnrnn", 2) == 2  # vectors, no 64 x 64 frames
    error = capsys.readouterr().err
    assert "cannot learn from the dataset" in error and "manifest.json" in error
    assert not (tmp_path / "vae").exists()


def copy_dataset(datasets, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(datasets / "state", copy)
    first = sorted((copy / "episodes").glob("*.npz"))[0]
    with np.load(first) as archive:
        columns = {key: archive[key] for key in archive.files}
    return copy, first, columns


@pytest.mark.parametrize("damage", ["pickled", "missing_reward", "wrong_shape", "wrong_action_size", "truncated"])
def test_a_corrupt_dataset_file_is_named(datasets, tmp_path, capsys, damage):
    copy, first, columns = copy_dataset(datasets, tmp_path)
    if damage == "pickled":
        with open(first, "wb") as file:
            np.savez(file, **{**columns, "vector": np.array([{"code": "runs"}], dtype=object)})
    elif damage == "missing_reward":
        del columns["reward"]
        np.savez_compressed(first, **columns)
    elif damage == "wrong_shape":
        np.savez_compressed(first, **{**columns, "vector": columns["vector"][:, :3]})
    elif damage == "wrong_action_size":
        np.savez_compressed(first, **{**columns, "action": np.zeros((len(columns["action"]), 3), np.float32)})
    else:
        first.write_bytes(first.read_bytes()[:40])
    assert train(copy, tmp_path / "run", "mlp", 2) == 2
    assert str(first) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resuming_on_a_dataset_that_changed_is_refused(datasets, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(datasets / "state", copy)
    run_dir = tmp_path / "run"
    assert train(copy, run_dir, "mlp", 2) == 0
    # Re-recorded in an environment whose actions the model cannot take (4 discrete moves).
    record_dataset("dyna-maze", "random", 2, copy, seed=0, progress=False, max_episode_steps=5, force=True)
    assert main(["train", "--resume", str(run_dir), "--train.updates", "4"]) == 2
    assert str(copy / "manifest.json") in capsys.readouterr().err


def test_an_agent_command_on_an_offline_run_says_what_it_holds(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(datasets / "state", run_dir, "mlp", 2) == 0
    assert main(["eval", str(run_dir)]) == 2  # the returns suite needs an agent
    assert "trained offline" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--suite", "dream"]) == 2
    assert "no agent" in capsys.readouterr().err

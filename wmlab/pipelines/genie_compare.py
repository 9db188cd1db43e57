"""`wmlab pipeline genie-compare`: Genie's controllability beside that of models trained with the
real actions, on the same held-out video, computed the same way.

    wmlab pipeline genie-compare split runs/genie-minigrid --out data/minigrid-train
    wmlab train --model rssm --dataset data/minigrid-train --run-dir runs/rssm-minigrid ...
    wmlab train --model diffusion --dataset data/minigrid-train --run-dir runs/diamond-minigrid ...
    wmlab pipeline genie-compare table runs/genie-minigrid runs/rssm-minigrid runs/diamond-minigrid

`split` writes the training episodes of a Genie run's dataset (the run's held-out share and seed,
wmlab.data.video.VideoDataset.split) as a dataset of their own, so that the action-conditioned
models are fitted by the offline trainer to exactly the episodes Genie trained on and never see
the held-out ones.

`table` measures every run on the same windows of the Genie run's held-out episodes: `sequences`
windows of `context + horizon` frames drawn with `seed` (the windows of `wmlab eval --suite
grounding`). Genie's delta-PSNR (arXiv:2402.15391, Sec. 3) filters `context` real frames and
generates `horizon` more, once with the actions of the real future and once with actions drawn
uniformly at random, under the same sampling noise:

    delta_PSNR_t = PSNR(x_t, xhat_t) - PSNR(x_t, xhat'_t)

For Genie "the actions of the real future" are the latent actions it reads in those frames and
the random ones are uniform over its 8 codes; for a model trained with actions they are the
recorded actions and uniform draws from the action space. A second column draws the random
actions by shuffling the batch's own actions instead (the action distribution kept).
(wmlab.eval.world_model_metrics.controllability does the measuring.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from wmlab.core.errors import WmlabError
from wmlab.data.dataset import MANIFEST_FILE, read_manifest
from wmlab.data.video import load_video
from wmlab.eval import world_model_metrics as metrics
from wmlab.eval.grounding import latent_action_batch, uniform_actions
from wmlab.pipelines.genie import load_genie_run
from wmlab.runs.directory import CONFIG_FILE, load_trained_model


@dataclass(frozen=True)
class SplitCommand:
    """Write the training episodes of a Genie run's dataset as a dataset of their own."""

    genie_run: tyro.conf.Positional[Path]
    """A Genie run (`wmlab train --algo genie`): its dataset, held-out share and seed."""
    out: Path
    """The new dataset's directory (must not exist)."""


@dataclass(frozen=True)
class TableCommand:
    """Delta-PSNR of a Genie run and of action-conditioned runs on the Genie run's held-out windows."""

    genie_run: tyro.conf.Positional[Path]
    """The Genie run whose held-out episodes are measured on."""
    runs: tyro.conf.Positional[tuple[Path, ...]] = ()
    """Offline runs of models trained with the real actions (`wmlab train --model FAMILY`)."""
    sequences: int = 32
    """Windows (the grounding suite uses 32 for delta-PSNR)."""
    context: int = 2
    """Real frames filtered before generating."""
    horizon: int = 4
    """Generated frames (Genie reports t = 4)."""
    seed: int = 0
    """Draws the windows, the random actions and the sampling noise."""
    out: Path | None = None
    """Write the JSON here (default GENIE_RUN/eval/compare.json)."""


def _genie_split(genie_run: Path):
    model, info = load_genie_run(genie_run)
    video = load_video(info["dataset"], size=info["size"])
    if info["held_out"] <= 0 or len(video) < 2:
        raise WmlabError(f"{genie_run} kept no episodes apart (held_out {info['held_out']}): nothing to compare on")
    training, held_out = video.split(info["held_out"], info["seed"])
    return model, info, training, held_out


def write_training_split(genie_run: Path, out: Path) -> Path:
    """Copy the manifest entries and episode files of the run's training episodes to `out`."""
    _, info, training, _ = _genie_split(genie_run)
    source = Path(info["dataset"])
    if out.exists():
        raise WmlabError(f"{out} already exists: give a new directory")
    manifest = read_manifest(source)
    kept = {Path(path).name for path in training.sources}
    entries = [entry for entry in manifest["episodes"] if Path(entry["file"]).name in kept]
    (out / "episodes").mkdir(parents=True)
    for entry in entries:
        shutil.copyfile(source / entry["file"], out / entry["file"])
    manifest = {
        **manifest,
        "episodes": entries,
        "num_episodes": len(entries),
        "num_steps": sum(entry["length"] for entry in entries),
        "split_of": f"{source} (training episodes of {genie_run}: held_out {info['held_out']}, seed {info['seed']})",
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out


def _row(name: str, model: Any, batch, count: int, config: TableCommand) -> dict[str, Any]:
    row: dict[str, Any] = {"run": name, "model": type(model).__name__}
    for label, draw in (("uniform", uniform_actions(count)), ("shuffled", metrics.shuffled_actions)):
        result = metrics.controllability(model, batch, config.context, random_actions=draw, seed=config.seed)
        if not result.get("delta_psnr"):
            raise WmlabError(f"{name}: delta-PSNR is not defined ({result.get('reason', 'no decoded frames')})")
        key = sorted(result["delta_psnr"])[0]
        row[label] = {
            "delta_psnr": result["delta_psnr"][key],
            "psnr_real_actions": result["psnr_real_actions"][key],
            "psnr_random_actions": result["psnr_random_actions"][key],
        }
    return row


def compare(config: TableCommand) -> dict[str, Any]:
    """One row per run (the Genie run first) on the same held-out windows."""
    genie, info, _, held_out = _genie_split(config.genie_run)
    if held_out.hidden_actions is None:
        raise WmlabError(f"{info['dataset']} stores no actions: the models trained with actions need them")
    length = config.context + config.horizon
    batch, actions = held_out.sample_with_actions(config.sequences, length, np.random.default_rng(config.seed))
    steps = metrics.window_parts(dataclasses.replace(batch, action=actions), config.context)
    rows = [
        _row(str(config.genie_run), genie, latent_action_batch(genie, batch), int(genie.config.action_codes), config)
    ]
    with_actions = dataclasses.replace(batch, action=actions)
    source_env = read_manifest(Path(info["dataset"])).get("env_id", "")
    for run in config.runs:
        if not (run / CONFIG_FILE).is_file():
            raise WmlabError(f"{run} holds no run ({run / CONFIG_FILE} is missing)")
        spec, model = load_trained_model(run)
        if isinstance(model, torch.nn.Module):
            model.eval()
        count = int(spec.action_space.get("n", 0))
        if spec.action_space.get("type") != "Discrete" or count < 1:
            raise WmlabError(f"{run}: the comparison draws random actions of a Discrete space, not {spec.action_space}")
        if spec.env != source_env or count != int(getattr(held_out.action_space, "n", -1)):
            raise WmlabError(
                f"{run} was trained on {spec.env or 'another dataset'} with {count} actions; the Genie run's video "
                f"is {source_env} with {getattr(held_out.action_space, 'n', '?')}: compare models of the same environment"
            )
        rows.append(_row(str(run), model, with_actions, count, config))
    return {
        "genie_run": str(config.genie_run),
        "dataset": info["dataset"],
        "held_out_episodes": len(held_out),
        "windows": config.sequences,
        "context": config.context,
        "horizon": config.horizon,
        "steps": int(steps[2]),
        "seed": config.seed,
        "rows": rows,
    }


def table_markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table (delta-PSNR per t, uniform and shuffled random actions)."""
    horizon = result["horizon"]
    head = " | ".join(f"t = {t + 1}" for t in range(horizon))
    lines = [f"| run | random actions | {head} | PSNR real / random, t = {horizon} |", "|---" * (horizon + 3) + "|"]
    for row in result["rows"]:
        for label in ("uniform", "shuffled"):
            cells = " | ".join(f"{value:.2f}" for value in row[label]["delta_psnr"])
            real, other = row[label]["psnr_real_actions"][-1], row[label]["psnr_random_actions"][-1]
            lines.append(f"| {row['run']} ({row['model']}) | {label} | {cells} | {real:.2f} / {other:.2f} |")
    return "\n".join(lines)


def pipeline_command(argv: list[str]) -> int:
    """`wmlab pipeline genie-compare split|table ...`."""
    command = tyro.extras.subcommand_cli_from_dict(
        {"split": SplitCommand, "table": TableCommand}, args=argv, prog="wmlab pipeline genie-compare"
    )
    if isinstance(command, SplitCommand):
        out = write_training_split(command.genie_run, command.out)
        print(f"training episodes of {command.genie_run} written to {out}")
        return 0
    result = compare(command)
    out = command.out or command.genie_run / "eval" / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table_markdown(result))
    print(f"written to {out}")
    return 0

"""Instruction datasets: captioned episodes (wmlab.data.captions) with each step's caption as a
text embedding, for a world model conditioned on instructions instead of low-level actions
(UniSim's p(x_t | x_{t-1}, c), arXiv:2310.06114, Sec. 2.2).

    write_instruction_dataset("data/two-rooms-captions", "data/two-rooms-instructions")
    wmlab train --model diffusion --dataset data/two-rooms-instructions --world-model.condition-size-input 384 ...
    wmlab generate RUN_DIR --steps 30 --text "move left" --guidance 3

The written directory is an ordinary offline dataset (`wmlab.data.dataset`) whose observations
are {"image": (64, 64, 3) uint8, "condition": (D,) float32}, where row t's condition is the
frozen sentence encoder's embedding (wmlab.nn.text, D = 384 for all-MiniLM-L6-v2) of the caption
of the step that led to frame t. The action space is Discrete(1) and every action 0: the
instruction replaces the action. The captions file is copied alongside, so the directory is also
a captioned dataset (`load_captioned`).

Shape legend: T steps, D text features.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.core.config import parse_json_object
from wmlab.core.spaces import describe_space, space_from_description
from wmlab.data.captions import CAPTIONS_FILE, load_captioned, record_captioned_two_rooms
from wmlab.data.dataset import (
    EPISODE_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    DatasetError,
    _prepare_directory,
    _write_compressed,
    _write_text_atomically,
)
from wmlab.nn.text import load_text_encoder

#: The observation key of the instruction embedding (DiffusionConfig.condition_key's default).
CONDITION_KEY = "condition"


def write_instruction_dataset(
    captioned: str | Path, out: str | Path, encoder: Any | None = None, force: bool = False
) -> dict[str, Any]:
    """Write the instruction dataset of the captioned dataset `captioned` to `out`; `encoder` is a
    text encoder (`encode(texts) -> (N, D)`, `dim`; default wmlab.nn.text's). Returns the manifest."""

    source = load_captioned(captioned)
    encoder = encoder if encoder is not None else load_text_encoder()
    vocabulary = sorted({caption for steps in source.captions for caption in steps})
    with torch.no_grad():
        table = torch.as_tensor(encoder.encode(vocabulary)).float().cpu().numpy()
    if table.shape != (len(vocabulary), int(encoder.dim)):
        raise DatasetError(
            f"the text encoder returned {table.shape} for {len(vocabulary)} captions, expected ({len(vocabulary)}, {encoder.dim})"
        )
    embedding = {caption: table[index] for index, caption in enumerate(vocabulary)}
    out = Path(out)
    _prepare_directory(out, force)
    source_manifest = json.loads((Path(captioned) / MANIFEST_FILE).read_text())
    image_space = space_from_description(source_manifest["observation_space"])["image"]
    observation_space = spaces.Dict(
        {
            "image": image_space,
            CONDITION_KEY: spaces.Box(-np.inf, np.inf, shape=(int(encoder.dim),), dtype=np.float32),
        }
    )
    entries = []
    for index, (episode, steps) in enumerate(zip(source.episodes, source.captions)):
        length = len(episode["reward"])
        columns = {
            "image": episode["image"],
            CONDITION_KEY: np.stack([embedding[caption] for caption in steps]).astype(np.float32),
            "action": np.zeros(length, dtype=np.int64),
            **{key: episode[key] for key in ("reward", "is_first", "is_last", "is_terminal")},
        }
        name = f"{EPISODE_DIR}/{index:06d}-{length}.npz"
        _write_compressed(out / name, columns)
        entries.append({"file": name, "length": length, "return": float(episode["reward"].sum())})
    shutil.copyfile(Path(captioned) / CAPTIONS_FILE, out / CAPTIONS_FILE)
    # The copied captions name the episode files of the source; rename them to ours.
    captions = json.loads((out / CAPTIONS_FILE).read_text())
    for entry, ours in zip(captions["episodes"], entries):
        entry["file"] = ours["file"]
    _write_text_atomically(out / CAPTIONS_FILE, json.dumps(captions, indent=1))
    manifest = {
        "format": FORMAT_VERSION,
        "env_id": source_manifest["env_id"],
        "env_kwargs": source_manifest.get("env_kwargs", {}),
        "observation_space": describe_space(observation_space),
        "action_space": describe_space(spaces.Discrete(1)),
        "actions": True,
        "policy": f"{source_manifest.get('policy', 'unknown')}; actions replaced by instructions (the step's caption, embedded)",
        "text_encoder": type(encoder).__name__,
        "instructions": vocabulary,
        "source": str(captioned),
        "seed": source_manifest.get("seed"),
        "num_episodes": len(entries),
        "num_steps": sum(entry["length"] for entry in entries),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "episodes": entries,
    }
    _write_text_atomically(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """python -m wmlab.data.instructions CAPTIONED OUT [--record N] [--force]"""

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captioned", type=Path, help="captioned dataset (recorded first with --record N)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--record", type=int, default=0, help="first record this many captioned two-rooms episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--env-kwargs", default="{}", help='two-rooms options of the recording, as JSON (e.g. \'{"reward": "dense"}\')'
    )
    parser.add_argument("--force", action="store_true")
    arguments = parser.parse_args(argv)
    if arguments.record > 0:
        record_captioned_two_rooms(
            arguments.captioned,
            arguments.record,
            arguments.seed,
            force=arguments.force,
            env_kwargs=parse_json_object("--env-kwargs", arguments.env_kwargs),
        )
    manifest = write_instruction_dataset(arguments.captioned, arguments.out, force=arguments.force)
    print(
        f"{manifest['num_episodes']} episodes, {manifest['num_steps']} steps, instructions {manifest['instructions']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

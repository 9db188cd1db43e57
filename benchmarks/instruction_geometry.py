"""Why a UniSim simulator follows some instructions less than others (issue 27): the share of each
caption in its recording, the cosine similarity of the movement instructions' embeddings (the
shared frozen sentence encoder, wmlab.nn.text) and their distance from their mean, and, for a run
trained with `condition_standardize`, the standard deviations its normaliser learnt.

    python benchmarks/instruction_geometry.py OUT

OUT: an output directory of benchmarks/unisim_small.sh (OUT/instructions, OUT/run).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from wmlab.nn.text import load_text_encoder

MOVES = ["move left", "move right", "move up", "move down", "stay still"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an output directory of benchmarks/unisim_small.sh")
    out = parser.parse_args().out

    torch.set_num_threads(1)
    episodes = json.loads((out / "instructions" / "captions.json").read_text())["episodes"]
    steps = [caption for episode in episodes for caption in episode["steps"]]
    shares = {caption: round(count / len(steps), 3) for caption, count in Counter(steps).most_common()}
    embeddings = load_text_encoder().encode(MOVES)  # unit vectors
    cosine = (embeddings @ embeddings.T).tolist()
    distance = (embeddings - embeddings.mean(0)).norm(dim=1).tolist()
    result = {
        "caption_shares": shares,
        "cosine": {
            first: {second: round(value, 2) for second, value in zip(MOVES, row)} for first, row in zip(MOVES, cosine)
        },
        "distance_from_the_mean": {move: round(value, 2) for move, value in zip(MOVES, distance)},
    }
    checkpoint = out / "run" / "checkpoints" / "rank0" / "model.safetensors"
    statistics = {
        name.rsplit(".", 1)[1]: value for name, value in load_file(checkpoint).items() if "condition_normalizer" in name
    }
    if statistics:
        std = (statistics["squared_deviations"] / statistics["count"]).sqrt()
        result["normalizer"] = {
            "dimensions_below_1e-3": int((std < 1e-3).sum()),
            "median_std": round(float(std.median()), 3),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

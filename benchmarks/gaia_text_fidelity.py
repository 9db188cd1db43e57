"""GAIA-1's text fidelity and guidance scale in small (issue 26, benchmarks (b) and (c)), on a
finished `wmlab pipeline gaia` run, with more starts than the pipeline's own measurement.

For each seed, the pipeline's `text_fidelity` draws `--starts` held-out first frames, generates
`--steps` frames from each under each movement prompt ("move left", ...) with the null action
(text alone) at guidance 0 (unconditional), 1, 3 and 7, and reads the agent's move between
consecutive frames with the pipeline's probe (the centroid of agent-coloured pixels). Agreement
is the share of probed moves equal to the prompt; the random-caption baseline is the share equal
to a movement caption drawn at random for each move. Per guidance scale this prints the mean over
seeds of the agreement, of the baseline and of their gap, with the standard error over seeds.

Action fidelity at the same scales ((c) asks for guidance against both): `wmlab eval`'s
controllability suite (delta-PSNR of frames imagined under the recorded actions against redrawn
ones, 3 context steps) on 16 held-out windows per seed, the model prompted with each window's first
caption and imagining at each guidance scale (its guided pass drops what the config's `guided`
names).

Action fidelity by the same probe (`wmlab.pipelines.gaia.action_fidelity`): per seed, clips from
the same number of held-out first frames under one constant action per move, the text dropped
(guidance 0), and the agreement of the probed moves with the action's move against a random move.

    python benchmarks/gaia_text_fidelity.py RUN_DIR --starts 16 --seeds 0 1 2 3 --out fidelity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from wmlab.data.captions import MOVES, load_captioned
from wmlab.eval.suites import SuiteSettings, evaluate_suite
from wmlab.nn.text import load_text_encoder
from wmlab.pipelines.gaia import TextPrompted, action_fidelity, batch_text, load_gaia_model, text_fidelity


def summary(values: list[float]) -> dict[str, float]:
    """Mean and standard error over seeds."""
    array = np.asarray(values, dtype=np.float64)
    error = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "standard_error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--starts", type=int, default=16, help="held-out first frames per seed")
    parser.add_argument("--steps", type=int, default=6, help="generated frames per clip")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    saved, model = load_gaia_model(arguments.run_dir)
    valid = load_captioned(saved["valid_dataset"])
    encoder = load_text_encoder()
    vocabulary = sorted(set(valid.vocabulary) | {*MOVES, "stay still"})
    table = dict(zip(vocabulary, torch.as_tensor(encoder.encode(vocabulary)).float()))
    per_seed, actions = {}, {}
    for seed in arguments.seeds:
        per_seed[seed] = text_fidelity(model, valid, table, arguments.starts, arguments.steps, seed)
        actions[seed] = action_fidelity(model, valid, table, arguments.starts, arguments.steps, seed)
        windows, captions = load_captioned(saved["valid_dataset"], seed=seed).sample(16, min(9, model.context))
        prompts = batch_text([[row[0]] for row in captions], table)[:, 0]
        for scale, row in per_seed[seed].items():
            torch.manual_seed(seed)
            suite = evaluate_suite(
                TextPrompted(model, prompts, float(scale)), windows, "controllability", SuiteSettings(context=3)
            )
            row["controllability_delta_psnr"] = float(suite["mean_delta_psnr"]["image"])
    scales = list(per_seed[arguments.seeds[0]])
    rows = {}
    for scale in scales:
        measured = [per_seed[seed][scale] for seed in arguments.seeds]
        rows[scale] = {
            "agreement": summary([row["agreement"] for row in measured]),
            "random_caption_baseline": summary([row["random_caption_baseline"] for row in measured]),
            "gap": summary([row["agreement"] - row["random_caption_baseline"] for row in measured]),
            "moves_with_agent_visible": summary([row["moves_with_agent_visible"] for row in measured]),
            "controllability_delta_psnr": summary([row["controllability_delta_psnr"] for row in measured]),
        }
        print(
            f"guidance {scale}: agreement {rows[scale]['agreement']['mean']:.3f}, "
            f"random caption {rows[scale]['random_caption_baseline']['mean']:.3f}, "
            f"gap {rows[scale]['gap']['mean']:+.3f} +- {rows[scale]['gap']['standard_error']:.3f}, "
            f"agent visible {rows[scale]['moves_with_agent_visible']['mean']:.2f}, "
            f"controllability {rows[scale]['controllability_delta_psnr']['mean']:.3f} dB"
        )
    action_rows = {
        key: summary([actions[seed][key] for seed in arguments.seeds])
        for key in ("agreement", "random_move_baseline", "moves_with_agent_visible")
    }
    action_rows["gap"] = summary(
        [actions[seed]["agreement"] - actions[seed]["random_move_baseline"] for seed in arguments.seeds]
    )
    print(
        f"actions alone (guidance 0): agreement {action_rows['agreement']['mean']:.3f}, "
        f"random move {action_rows['random_move_baseline']['mean']:.3f}, "
        f"gap {action_rows['gap']['mean']:+.3f} +- {action_rows['gap']['standard_error']:.3f}, "
        f"agent visible {action_rows['moves_with_agent_visible']['mean']:.2f}"
    )
    result = {
        "run": str(arguments.run_dir),
        "action_fidelity": {"per_seed": {str(seed): value for seed, value in actions.items()}, "summary": action_rows},
        "settings": {key: str(value) for key, value in vars(arguments).items()},
        "per_seed": {str(seed): value for seed, value in per_seed.items()},
        "summary": rows,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

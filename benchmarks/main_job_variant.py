"""The main job (`wmlab pipeline main`) with some of its settings changed, for choosing them
(docs/benchmarks.md, "The main job"):

    python benchmarks/main_job_variant.py '{"loss_scales": {"reward": 1000}}' -- \
        --run-dir runs/mj-reward1000 --time-limit 4000 --reserve 300 --seed 1

The JSON may hold "model" (RSSM config fields), "loss_scales" (RSSM loss scales), "planner" (CEM
fields), "agent" (PlaNet config fields) and "train" (TrainConfig fields); the arguments after `--`
are the main job's own. A long --time-limit lets every run reach its step count, so the result
depends on the settings and the seed alone, not on the machine's load.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import wmlab.pipelines.main_job as main_job

SECTIONS = ("model", "loss_scales", "planner", "agent", "train")


def apply(changes: dict) -> None:
    """Replace the main job's presets in place with `changes` applied."""
    unknown = sorted(set(changes) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    model = main_job.MAIN_MODEL
    model = replace(model, loss_scales=replace(model.loss_scales, **changes.get("loss_scales", {})))
    model = replace(model, **changes.get("model", {}))
    planner = replace(main_job.MAIN_PLANNER, **changes.get("planner", {}))
    main_job.MAIN_AGENT = replace(main_job.MAIN_AGENT, model=model, planner=planner, **changes.get("agent", {}))
    main_job.MAIN_TRAIN = replace(main_job.MAIN_TRAIN, **changes.get("train", {}))


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    apply(json.loads(sys.argv[1]))
    return main_job.main_job_command(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
